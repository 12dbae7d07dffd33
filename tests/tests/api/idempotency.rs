use api::routes::shared::{DecimalString, WalletKind};
use api::routes::wallets::body::DepositRequest;
use domain::idempotency::{fingerprint, storage_key};
use infra::entities::idempotency_key as key;
use poem_openapi::types::ToJSON;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, Set};
use serde_json::{Value, json};
use tests::{Engine, Reply, TestApp, both_engines, fresh_key, live};

const DEPOSIT: &str = "/api/v1/wallets/deposit";
const WITHDRAW: &str = "/api/v1/wallets/withdraw";

/// POSTs `body` to `path` as the back office under the client key `key`.
async fn keyed(app: &TestApp, path: &str, key: &str, body: Value) -> Reply {
    app.post(path, &app.service(), Some(key), body).await
}

async fn same_key_same_body_replays_exactly(engine: Engine) {
    let (app, u) = TestApp::with_user(engine, "i@x.io").await;
    let k = fresh_key();
    let body = live(u, "7");
    let first = keyed(&app, DEPOSIT, &k, body.clone()).await;
    first.expect(200);
    // same JSON, other key order and spacing: the same request
    let reordered = format!(r#"{{ "wallet": "live", "amount": "7",  "user_id": {u} }}"#);
    let again = app
        .post_raw(DEPOSIT, Some(&app.service()), Some(&k), &reordered)
        .await;
    again.expect(200);
    assert_eq!(again.text, first.text, "replay must be byte for byte");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(app.balance(u, "live").await, "7");
    // same key, different body
    keyed(&app, DEPOSIT, &k, live(u, "8"))
        .await
        .problem(422, "idempotency_key_reused");
    // the same client key from another principal is another key
    let admin = app
        .post(DEPOSIT, &app.admin(), Some(&k), body.clone())
        .await;
    admin.expect(200);
    assert!(admin.header("idempotent-replayed").is_none());
    assert_eq!(app.balance(u, "live").await, "14");
    // ... and on another route too
    let w = keyed(&app, WITHDRAW, &k, body).await;
    w.expect(200);
    assert_eq!(w.body["kind"], "withdrawal");
    assert_eq!(app.balance(u, "live").await, "7");
    app.stop().await;
}

async fn refusals_are_stored_and_replayed(engine: Engine) {
    let (app, u) = TestApp::with_user(engine, "r@x.io").await;
    let k = fresh_key();
    let body = live(u, "5");
    let refused = keyed(&app, WITHDRAW, &k, body.clone()).await;
    refused.problem(422, "insufficient_funds");
    // money arrives, but the key's answer stays the stored refusal
    app.deposit(u, "100", "live").await.expect(200);
    let replay = keyed(&app, WITHDRAW, &k, body).await;
    replay.problem(422, "insufficient_funds");
    assert_eq!(replay.text, refused.text);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(app.balance(u, "live").await, "100");
    // validation errors are not stored: the same key may be used once the body is right
    let k2 = fresh_key();
    keyed(&app, DEPOSIT, &k2, live(u, "-1"))
        .await
        .problem(400, "invalid_request");
    keyed(&app, DEPOSIT, &k2, live(u, "1")).await.expect(200);
    app.stop().await;
}

fn deposit_fingerprint(user_id: i64, amount: &str) -> String {
    let request = DepositRequest {
        user_id,
        amount: DecimalString(amount.into()),
        wallet: WalletKind::Live,
        payment_method: None,
        reference: None,
    };
    fingerprint(&request.to_json().unwrap())
}

async fn in_flight_then_stale_claims(engine: Engine) {
    let (app, u) = TestApp::with_user(engine, "s@x.io").await;
    let client_key = fresh_key();
    let stored_key = storage_key("service:backoffice", "POST", DEPOSIT, &client_key);
    let now = chrono::Utc::now().timestamp_millis();
    // a request that claimed the key and is still within its lease
    key::Entity::insert(key::ActiveModel {
        key: Set(stored_key.clone()),
        principal: Set("service:backoffice".into()),
        route: Set(format!("POST {DEPOSIT}")),
        request_hash: Set(deposit_fingerprint(u, "3")),
        status: Set("processing".into()),
        claim_token: Set(uuid::Uuid::new_v4()),
        response_status: Set(None),
        response_body: Set(None),
        locked_until_ms: Set(now + 60_000),
        expires_at_ms: Set(now + 3_600_000),
        created_at: Set(chrono::Utc::now()),
    })
    .exec_without_returning(&app.state.ledger.db.conn)
    .await
    .unwrap();
    let body = live(u, "3");
    let busy = keyed(&app, DEPOSIT, &client_key, body.clone()).await;
    busy.problem(409, "idempotency_in_flight");
    assert_eq!(busy.header("retry-after"), Some("1"));
    assert_eq!(app.balance(u, "live").await, "0");
    // its owner died: the lease runs out, and the next request takes the key over
    key::Entity::update_many()
        .col_expr(key::Column::LockedUntilMs, Expr::value(now - 1))
        .filter(key::Column::Key.eq(stored_key.clone()))
        .exec(&app.state.ledger.db.conn)
        .await
        .unwrap();
    let done = keyed(&app, DEPOSIT, &client_key, body.clone()).await;
    done.expect(200);
    assert!(done.header("idempotent-replayed").is_none());
    let replay = keyed(&app, DEPOSIT, &client_key, body).await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.text, done.text);
    assert_eq!(app.balance(u, "live").await, "3");
    app.stop().await;
}

async fn expired_keys_are_cleaned_up_and_free_again(engine: Engine) {
    let (app, u) = TestApp::with_user(engine, "x@x.io").await;
    let k = fresh_key();
    let body = live(u, "2");
    keyed(&app, DEPOSIT, &k, body.clone()).await.expect(200);
    let conn = &app.state.ledger.db.conn;
    let cleanup = || async {
        app.state
            .ledger
            .idempotency
            .cleanup_expired()
            .await
            .unwrap()
    };
    // nothing has expired yet
    assert_eq!(cleanup().await, 0);
    key::Entity::update_many()
        .col_expr(key::Column::ExpiresAtMs, Expr::value(0_i64))
        .exec(conn)
        .await
        .unwrap();
    // an expired key is free even before the cleanup job runs
    let r = keyed(&app, DEPOSIT, &k, body.clone()).await;
    r.expect(200);
    assert!(r.header("idempotent-replayed").is_none());
    assert_eq!(app.balance(u, "live").await, "4");
    key::Entity::update_many()
        .col_expr(key::Column::ExpiresAtMs, Expr::value(0_i64))
        .exec(conn)
        .await
        .unwrap();
    let removed = cleanup().await;
    assert!(removed >= 2, "removed {removed}");
    assert_eq!(key::Entity::find().all(conn).await.unwrap().len(), 0);
    // a backlog is deleted in batches (5,000 a statement) until none is
    // left, and a key still within its TTL stays
    let now = chrono::Utc::now().timestamp_millis();
    let row = |i: i64, expires_at_ms: i64| key::ActiveModel {
        key: Set(format!("backlog-{i}")),
        principal: Set("service:backoffice".into()),
        route: Set(format!("POST {DEPOSIT}")),
        request_hash: Set("0".repeat(64)),
        status: Set("completed".into()),
        claim_token: Set(uuid::Uuid::new_v4()),
        response_status: Set(Some(200)),
        response_body: Set(Some("{}".into())),
        locked_until_ms: Set(0),
        expires_at_ms: Set(expires_at_ms),
        created_at: Set(chrono::Utc::now()),
    };
    const BACKLOG: i64 = 12_001;
    for start in (0..BACKLOG).step_by(1_000) {
        key::Entity::insert_many((start..(start + 1_000).min(BACKLOG)).map(|i| row(i, now - 1)))
            .exec_without_returning(conn)
            .await
            .unwrap();
    }
    key::Entity::insert(row(BACKLOG, now + 3_600_000))
        .exec_without_returning(conn)
        .await
        .unwrap();
    assert_eq!(cleanup().await, BACKLOG.unsigned_abs());
    let kept: Vec<String> = key::Entity::find()
        .all(conn)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.key)
        .collect();
    assert_eq!(kept, [format!("backlog-{BACKLOG}")]);
    app.stop().await;
}

both_engines!(
    same_key_same_body_replays_exactly,
    refusals_are_stored_and_replayed,
    in_flight_then_stale_claims,
    expired_keys_are_cleaned_up_and_free_again,
    transient_failures_release_the_key,
    key_cleanups_read_through_an_index
);

/// The recovery pass (every 10 s on each instance) looks for claims left
/// `processing` past their lock, and the TTL cleanup for expired keys,
/// through an index each: the table holds a day of writes, and reading all
/// of it cost 150 ms a pass at 474,000 keys. On this small table the
/// planners are told to use an index: PostgreSQL with sequential scans
/// priced out, SQLite with `INDEXED BY`, which fails unless the index
/// exists and serves the search.
async fn key_cleanups_read_through_an_index(engine: Engine) {
    use sea_orm::{ConnectionTrait, Statement, TransactionTrait};
    let app = TestApp::spawn(engine).await;
    let txn = app.state.ledger.db.conn.begin().await.unwrap();
    let backend = txn.get_database_backend();
    if engine == Engine::Postgres {
        txn.execute_unprepared("SET LOCAL enable_seqscan = off")
            .await
            .unwrap();
    }
    for (search, index) in [
        (
            "status = 'processing' AND locked_until_ms < 1",
            "ix_idempotency_processing_locked_until",
        ),
        ("expires_at_ms <= 1", "ix_idempotency_expires"),
    ] {
        let (sql, column) = match engine {
            Engine::Postgres => (
                format!("EXPLAIN DELETE FROM idempotency_keys WHERE {search}"),
                "QUERY PLAN",
            ),
            Engine::Sqlite => (
                format!(
                    "EXPLAIN QUERY PLAN DELETE FROM idempotency_keys INDEXED BY {index} \
                     WHERE {search}"
                ),
                "detail",
            ),
        };
        let plan: Vec<String> = txn
            .query_all_raw(Statement::from_string(backend, sql))
            .await
            .unwrap()
            .iter()
            .map(|row| row.try_get::<String>("", column).unwrap())
            .collect();
        assert!(
            plan.iter().any(|line| line.contains(index)),
            "{search}: {plan:?}"
        );
    }
    txn.rollback().await.unwrap();
    app.stop().await;
}

/// A transient failure after the key was claimed is not stored: the claim is
/// released, and the same key executes once the failure has passed.
async fn transient_failures_release_the_key(engine: Engine) {
    use domain::DomainError;
    use domain::idempotency::{IdempotentRequest, StoredResponse};

    let app = TestApp::spawn(engine).await;
    let idem = &app.state.ledger.idempotency;
    let req = IdempotentRequest::new("service:test", "POST", "/test", "k-1", &json!({"n": 1}));
    let ok = |v: &i32| StoredResponse {
        status: 200,
        body: v.to_string(),
    };
    let refused = |_: &DomainError| StoredResponse {
        status: 422,
        body: "refused".into(),
    };
    let failed = idem
        .run(
            "test",
            &req,
            |_txn| async {
                Err::<i32, _>(DomainError::Unavailable(sea_orm::DbErr::Custom(
                    "down".into(),
                )))
            },
            ok,
            refused,
        )
        .await;
    assert!(matches!(failed, Err(DomainError::Unavailable(_))));
    let conn = &app.state.ledger.db.conn;
    assert!(
        key::Entity::find_by_id(req.key.clone())
            .one(conn)
            .await
            .unwrap()
            .is_none(),
        "a 5xx must not be stored"
    );
    let done = idem
        .run("test", &req, |_txn| async { Ok(42) }, ok, refused)
        .await
        .unwrap();
    assert_eq!(
        (
            done.response.status,
            done.response.body.as_str(),
            done.replayed
        ),
        (200, "42", false)
    );
    let again = idem
        .run("test", &req, |_txn| async { Ok(7) }, ok, refused)
        .await
        .unwrap();
    assert_eq!((again.response.body.as_str(), again.replayed), ("42", true));
    app.stop().await;
}

/// PostgreSQL: while a request holds its key (its transaction is waiting on
/// the wallet's row lock), the same key gets 409 `idempotency_in_flight` at
/// once — not a wait; once the first commits, the same key replays its answer
/// and the money moved once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_concurrent_duplicate_is_told_in_flight_at_once() {
    use std::time::{Duration, Instant};

    let app = TestApp::spawn(Engine::Postgres).await;
    let u = app.create_user("dup@x.io").await;
    let (outside, blocker) = app.block_wallets_of(u).await;
    let k = fresh_key();
    let body = live(u, "4");
    let first = {
        let (base, client, token, k, body) = (
            app.base.clone(),
            app.client.clone(),
            app.service(),
            k.clone(),
            body.clone(),
        );
        tokio::spawn(async move {
            client
                .post(format!("{base}{DEPOSIT}"))
                .bearer_auth(token)
                .header("Idempotency-Key", k)
                .json(&body)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    // the first request is inside its transaction, holding the key
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let busy = keyed(&app, DEPOSIT, &k, body.clone()).await;
    busy.problem(409, "idempotency_in_flight");
    assert_eq!(busy.header("retry-after"), Some("1"));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the duplicate waited {:?}",
        started.elapsed()
    );
    blocker.rollback().await.unwrap();
    let first = first.await.unwrap();
    let replay = keyed(&app, DEPOSIT, &k, body).await;
    replay.expect(200);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.text, first);
    assert_eq!(app.balance(u, "live").await, "4");
    outside.close().await.unwrap();
    app.stop().await;
}
