//! Contract of the Holds routes on both engines: statuses, codes, bodies,
//! roles, validation, expiry, and what holds do to the wallet and journal.

use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use tests::{Engine, Reply, TestApp, both_engines, fresh_key, time, until};

const HOLDS: &str = "/api/v1/holds";

fn hold_body(user_id: i64, amount: &str) -> Value {
    json!({"user_id": user_id, "wallet": "live", "amount": amount})
}

/// Creates a hold with `token`.
async fn create(app: &TestApp, token: &str, body: Value) -> Reply {
    app.post_new(HOLDS, token, body).await
}

/// A hold of `amount` on the user's live wallet, made by the user itself;
/// returns its body.
async fn held(app: &TestApp, user_id: i64, amount: &str, ttl_ms: u64) -> Value {
    let mut body = hold_body(user_id, amount);
    body["ttl_ms"] = ttl_ms.into();
    let r = create(app, &app.user(user_id), body).await;
    r.expect(201);
    r.body
}

async fn capture(app: &TestApp, token: &str, id: i64, body: Value) -> Reply {
    app.post_new(&format!("{HOLDS}/{id}/capture"), token, body)
        .await
}

async fn void(app: &TestApp, token: &str, id: i64) -> Reply {
    app.post_new(&format!("{HOLDS}/{id}/void"), token, json!({}))
        .await
}

fn id_of(hold: &Value) -> i64 {
    hold["id"].as_i64().unwrap()
}

/// `(balance, held, free_margin)` of the user's live wallet.
async fn funds(app: &TestApp, user_id: i64) -> (String, String, String) {
    let w = app.wallet(user_id, "live").await;
    let s = |k: &str| w[k].as_str().unwrap().to_owned();
    (s("balance"), s("held"), s("free_margin"))
}

fn strings(v: [&str; 3]) -> (String, String, String) {
    (v[0].into(), v[1].into(), v[2].into())
}

/// Asserts a 409 `hold_not_active` naming `status`.
#[track_caller]
fn not_active(r: &Reply, status: &str) {
    r.problem(409, "hold_not_active");
    assert_eq!(r.body["hold_status"], status, "{}", r.text);
    assert!(
        r.body["detail"].as_str().unwrap().ends_with(status),
        "{}",
        r.text
    );
}

async fn create_capture_and_read_follow_the_contract(engine: Engine) {
    let (app, u) = TestApp::with_funded_user(engine, "hold@x.io", "1000").await;
    let mut body = hold_body(u, "300");
    body["reference"] = "payout-7".into();
    let r = create(&app, &app.user(u), body).await;
    r.expect(201);
    let hold = r.body.clone();
    let keys: Vec<&str> = hold
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = vec![
        "id",
        "user_id",
        "wallet",
        "amount",
        "captured_amount",
        "status",
        "reference",
        "expires_at",
        "created_at",
        "finished_at",
    ];
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    expected.sort_unstable();
    assert_eq!(sorted, expected);
    assert_eq!(
        (
            &hold["user_id"],
            &hold["wallet"],
            &hold["amount"],
            &hold["captured_amount"],
            &hold["status"],
            &hold["reference"],
            &hold["finished_at"],
        ),
        (
            &json!(u),
            &json!("live"),
            &json!("300"),
            &json!("0"),
            &json!("held"),
            &json!("payout-7"),
            &Value::Null
        )
    );
    // the default lifetime is 5 minutes
    let ttl = time(&hold["expires_at"]) - time(&hold["created_at"]);
    assert!((ttl.num_milliseconds() - 300_000).abs() <= 1, "{}", r.text);
    assert_eq!(funds(&app, u).await, strings(["1000", "300", "700"]));
    let user_view = app
        .get(&format!("/api/v1/users/{u}"), Some(&app.user(u)))
        .await;
    let live = user_view.body["wallets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["kind"] == "live")
        .unwrap()
        .clone();
    assert_eq!(
        (&live["held"], &live["free_margin"]),
        (&json!("300"), &json!("700"))
    );
    // reads: the owner, the back office
    let id = id_of(&hold);
    for token in [app.user(u), app.service(), app.admin()] {
        let r = app.get_ok(&format!("{HOLDS}/{id}"), &token).await;
        assert_eq!(r.body, hold);
    }
    // capture part: 120 leaves the wallet, 180 goes back to the free balance
    let r = capture(&app, &app.service(), id, json!({"amount": "120"})).await;
    r.expect(200);
    assert_eq!(
        (
            &r.body["status"],
            &r.body["captured_amount"],
            &r.body["amount"]
        ),
        (&json!("captured"), &json!("120"), &json!("300"))
    );
    assert!(r.body["finished_at"].is_string());
    assert_eq!(funds(&app, u).await, strings(["880", "0", "880"]));
    // the journal explains it, held fields included
    let j = app
        .get_ok(
            &format!("/api/v1/users/{u}/transactions?wallet=live"),
            &app.user(u),
        )
        .await;
    let entries: Vec<(&str, &str, &str, &str, &str)> = j.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| {
            (
                e["kind"].as_str().unwrap(),
                e["balance_delta"].as_str().unwrap(),
                e["held_delta"].as_str().unwrap(),
                e["balance_after"].as_str().unwrap(),
                e["held_after"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        vec![
            ("deposit", "1000", "0", "1000", "0"),
            ("hold", "0", "300", "1000", "300"),
            ("hold_capture", "-120", "-120", "880", "180"),
            ("hold_release", "0", "-180", "880", "0"),
        ]
    );
    let reference = format!("hold:{id}");
    assert!(
        j.body["items"].as_array().unwrap()[..3]
            .iter()
            .all(|e| e["reference"] == reference.as_str())
    );
    // it ended once: every later ending is 409 with its status
    not_active(
        &capture(&app, &app.admin(), id, json!({})).await,
        "captured",
    );
    not_active(&void(&app, &app.user(u), id).await, "captured");
    assert_eq!(funds(&app, u).await, strings(["880", "0", "880"]));
    // a full capture by default
    let second = held(&app, u, "80", 60_000).await;
    let r = capture(&app, &app.admin(), id_of(&second), json!({})).await;
    r.expect(200);
    assert_eq!(r.body["captured_amount"], "80");
    assert_eq!(funds(&app, u).await, strings(["800", "0", "800"]));
    app.assert_books_balance_and_stop().await;
}

async fn void_roles_and_privacy(engine: Engine) {
    let (app, owner) = TestApp::with_funded_user(engine, "owner@x.io", "100").await;
    let nosy = app.funded_user("nosy@x.io", "100").await;
    let hold = held(&app, owner, "40", 60_000).await;
    let id = id_of(&hold);
    let unknown = id + 1_000;
    // another user's hold looks unknown, as another user's order does
    app.assert_get_looks_alike(
        &format!("{HOLDS}/{id}"),
        &format!("{HOLDS}/{unknown}"),
        &app.user(nosy),
    )
    .await;
    let theirs = void(&app, &app.user(nosy), id).await;
    let missing = void(&app, &app.user(nosy), unknown).await;
    tests::assert_look_alike(&theirs, &missing);
    // users never capture, not even their own holds
    capture(&app, &app.user(owner), id, json!({}))
        .await
        .problem(403, "forbidden");
    capture(&app, &app.user(nosy), id, json!({}))
        .await
        .problem(403, "forbidden");
    // nor hold another user's funds, nor list their holds
    create(&app, &app.user(nosy), hold_body(owner, "1"))
        .await
        .problem(403, "forbidden");
    app.get(
        &format!("/api/v1/users/{owner}/holds"),
        Some(&app.user(nosy)),
    )
    .await
    .problem(403, "forbidden");
    // without a token: 401
    app.get(&format!("{HOLDS}/{id}"), None)
        .await
        .problem(401, "unauthorized");
    app.post_raw(
        HOLDS,
        None,
        Some(&fresh_key()),
        &hold_body(owner, "1").to_string(),
    )
    .await
    .problem(401, "unauthorized");
    // unknown holds and users, for the back office
    capture(&app, &app.service(), unknown, json!({}))
        .await
        .problem(404, "not_found");
    void(&app, &app.admin(), unknown)
        .await
        .problem(404, "not_found");
    create(&app, &app.service(), hold_body(owner + nosy + 100, "1"))
        .await
        .problem(404, "not_found");
    app.get("/api/v1/users/999999/holds", Some(&app.admin()))
        .await
        .problem(404, "not_found");
    assert_eq!(funds(&app, owner).await, strings(["100", "40", "60"]));
    // the owner voids it: all of it is released
    let r = void(&app, &app.user(owner), id).await;
    r.expect(200);
    assert_eq!(
        (&r.body["status"], &r.body["captured_amount"]),
        (&json!("voided"), &json!("0"))
    );
    assert_eq!(funds(&app, owner).await, strings(["100", "0", "100"]));
    not_active(&void(&app, &app.service(), id).await, "voided");
    not_active(
        &capture(&app, &app.service(), id, json!({})).await,
        "voided",
    );
    // the back office makes and voids holds too
    let r = create(&app, &app.service(), hold_body(nosy, "10")).await;
    r.expect(201);
    void(&app, &app.service(), id_of(&r.body)).await.expect(200);
    let r = create(&app, &app.admin(), hold_body(nosy, "10")).await;
    r.expect(201);
    void(&app, &app.admin(), id_of(&r.body)).await.expect(200);
    assert_eq!(
        app.journal_kinds(owner, "live").await,
        ["deposit", "hold", "hold_release"]
    );
    app.assert_books_balance_and_stop().await;
}

async fn refusals_and_validation_change_nothing(engine: Engine) {
    let (app, u) = TestApp::with_funded_user(engine, "v@x.io", "100").await;
    let token = app.user(u);
    let before = app.wallet(u, "live").await;
    // more than the free balance
    let r = create(&app, &token, hold_body(u, "100.00000001")).await;
    r.problem(422, "insufficient_funds");
    assert_eq!(
        r.body["detail"],
        "free balance 100 < requested 100.00000001"
    );
    // schema, format and range: 400
    let with = |extra: Value| {
        let mut body = hold_body(u, "1");
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    for body in [
        with(json!({"ttl_ms": 0})),
        with(json!({"ttl_ms": 604_800_001_u64})),
        with(json!({"ttl_ms": -5})),
        with(json!({"ttl_ms": "1000"})),
        with(json!({"amount": 5})),
        with(json!({"amount": "0"})),
        with(json!({"amount": "-1"})),
        with(json!({"amount": "1.000000001"})),
        with(json!({"wallet": "savings"})),
        with(json!({"reference": "a\u{0}b"})),
        with(json!({"reference": "x".repeat(256)})),
        with(json!({"extra": true})),
        json!({"user_id": u, "wallet": "live"}),
    ] {
        create(&app, &token, body.clone())
            .await
            .problem(400, "invalid_request");
    }
    app.post(HOLDS, &token, None, hold_body(u, "1"))
        .await
        .problem(400, "idempotency_key_missing");
    assert_eq!(app.wallet(u, "live").await, before);
    // the longest lifetime is 7 days
    let long = create(&app, &token, with(json!({"ttl_ms": 604_800_000_u64}))).await;
    long.expect(201);
    let ttl = time(&long.body["expires_at"]) - time(&long.body["created_at"]);
    assert!((ttl.num_milliseconds() - 604_800_000).abs() <= 1);
    let id = id_of(&long.body);
    // a capture: more than the hold is a business refusal (422), a malformed
    // amount a 400
    let r = capture(&app, &app.service(), id, json!({"amount": "1.00000001"})).await;
    r.problem(422, "capture_exceeds_hold");
    assert_eq!(
        r.body["detail"],
        "capture amount 1.00000001 exceeds the held amount 1"
    );
    for body in [
        json!({"amount": "0"}),
        json!({"amount": 1}),
        json!({"amount": "1", "all": true}),
    ] {
        capture(&app, &app.service(), id, body)
            .await
            .problem(400, "invalid_request");
    }
    app.post_raw(
        &format!("{HOLDS}/{id}/void"),
        Some(&token),
        Some(&fresh_key()),
        "{\"x\":1}",
    )
    .await
    .problem(400, "invalid_request");
    // list parameters
    for query in ["status=open", "limit=0", "limit=501", "before_id=x"] {
        app.get(&format!("/api/v1/users/{u}/holds?{query}"), Some(&token))
            .await
            .problem(400, "invalid_request");
    }
    assert_eq!(funds(&app, u).await, strings(["100", "1", "99"]));
    app.assert_books_balance_and_stop().await;
}

async fn a_repeated_key_replays_the_hold(engine: Engine) {
    let (app, u) = TestApp::with_funded_user(engine, "replay@x.io", "50").await;
    let key = fresh_key();
    let first = app
        .post(HOLDS, &app.user(u), Some(&key), hold_body(u, "20"))
        .await;
    first.expect(201);
    let again = app
        .post(HOLDS, &app.user(u), Some(&key), hold_body(u, "20"))
        .await;
    again.expect(201);
    assert_eq!(again.text, first.text);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    app.post(HOLDS, &app.user(u), Some(&key), hold_body(u, "21"))
        .await
        .problem(422, "idempotency_key_reused");
    assert_eq!(funds(&app, u).await, strings(["50", "20", "30"]));
    // a refused capture is replayed as the refusal
    let id = id_of(&first.body);
    let path = format!("{HOLDS}/{id}/capture");
    let key = fresh_key();
    let big = json!({"amount": "25"});
    let r = app
        .post(&path, &app.service(), Some(&key), big.clone())
        .await;
    r.problem(422, "capture_exceeds_hold");
    let r2 = app.post(&path, &app.service(), Some(&key), big).await;
    assert_eq!((r2.status, r2.text.as_str()), (422, r.text.as_str()));
    app.assert_books_balance_and_stop().await;
}

async fn an_expired_hold_stops_counting_at_once(engine: Engine) {
    // the cleanup job never runs here: expiry must not need it
    let app = TestApp::spawn_with(engine, |c| c.holds.cleanup_interval = Duration::ZERO).await;
    let u = app.funded_user("exp@x.io", "100").await;
    let hold = held(&app, u, "70", 1_500).await;
    let id = id_of(&hold);
    let expires_at = time(&hold["expires_at"]);
    let before_expiry = funds(&app, u).await;
    // a machine too busy to read within the TTL saw it expire already
    if Utc::now() < expires_at {
        assert_eq!(before_expiry, strings(["100", "70", "30"]));
    }
    until(expires_at + chrono::Duration::milliseconds(5)).await;
    // reads no longer count it, before anything released it
    assert_eq!(funds(&app, u).await, strings(["100", "0", "100"]));
    let r = app.get_ok(&format!("{HOLDS}/{id}"), &app.user(u)).await;
    assert_eq!(
        (&r.body["status"], &r.body["finished_at"]),
        (&json!("expired"), &hold["expires_at"])
    );
    not_active(
        &capture(&app, &app.service(), id, json!({})).await,
        "expired",
    );
    not_active(&void(&app, &app.user(u), id).await, "expired");
    // the next write to the wallet releases it and may use all the funds
    let r = app
        .post_new(
            "/api/v1/wallets/transfer",
            &app.user(u),
            json!({"from_user_id": u, "to_user_id": app.create_user("to@x.io").await,
                   "amount": "100", "wallet": "live"}),
        )
        .await;
    r.expect(200);
    assert_eq!(
        app.journal_kinds(u, "live").await,
        ["deposit", "hold", "hold_release", "transfer_out"]
    );
    let r = app.get(&format!("{HOLDS}/{id}"), Some(&app.admin())).await;
    assert_eq!(r.body["status"], "expired");
    app.assert_books_balance_and_stop().await;
}

async fn the_cleanup_job_releases_expired_holds(engine: Engine) {
    let app = TestApp::spawn_with(engine, |c| {
        c.holds.cleanup_interval = Duration::from_millis(50)
    })
    .await;
    let u = app.funded_user("job@x.io", "100").await;
    held(&app, u, "10", 50).await;
    held(&app, u, "20", 50).await;
    held(&app, u, "30", 600_000).await;
    // nothing writes to the wallet: only the job can release the two
    let mut kinds = Vec::new();
    for _ in 0..100 {
        kinds = app.journal_kinds(u, "live").await;
        if kinds.iter().filter(|k| *k == "hold_release").count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // on a busy machine the job may release a short hold before the next
    // hold is made: which entries there are is the point, not their order
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "deposit",
            "hold",
            "hold",
            "hold",
            "hold_release",
            "hold_release"
        ]
    );
    assert_eq!(funds(&app, u).await, strings(["100", "30", "70"]));
    app.assert_books_balance_and_stop().await;
}

async fn lists_are_newest_first_and_filter_by_status(engine: Engine) {
    let (app, u) = TestApp::with_funded_user(engine, "list@x.io", "100").await;
    let ids: Vec<i64> = [
        held(&app, u, "1", 60_000).await,
        held(&app, u, "2", 60_000).await,
        held(&app, u, "3", 60_000).await,
        held(&app, u, "4", 20).await,
    ]
    .iter()
    .map(id_of)
    .collect();
    void(&app, &app.user(u), ids[0]).await.expect(200);
    capture(&app, &app.service(), ids[1], json!({}))
        .await
        .expect(200);
    tokio::time::sleep(Duration::from_millis(40)).await;
    let list = |query: String| {
        let app = &app;
        async move {
            let r = app
                .get_ok(&format!("/api/v1/users/{u}/holds?{query}"), &app.user(u))
                .await;
            let items: Vec<i64> = r.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(id_of)
                .collect();
            (items, r.body["next_before_id"].as_i64())
        }
    };
    assert_eq!(
        list(String::new()).await,
        (vec![ids[3], ids[2], ids[1], ids[0]], None)
    );
    assert_eq!(
        list("limit=2".into()).await,
        (vec![ids[3], ids[2]], Some(ids[2]))
    );
    assert_eq!(
        list(format!("limit=2&before_id={}", ids[2])).await,
        (vec![ids[1], ids[0]], None)
    );
    // statuses as of now: the one past its expiry is expired, not held
    for (status, expected) in [
        ("held", vec![ids[2]]),
        ("expired", vec![ids[3]]),
        ("captured", vec![ids[1]]),
        ("voided", vec![ids[0]]),
    ] {
        assert_eq!(
            list(format!("status={status}")).await,
            (expected, None),
            "{status}"
        );
    }
    let r = app
        .get(&format!("/api/v1/users/{u}/holds"), Some(&app.service()))
        .await;
    let statuses: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["expired", "held", "captured", "voided"]);
    // `expired` is two kinds of rows, each read along its own index: holds
    // the cleanup marked expired, and holds past their expiry still held;
    // the pages merge them newest first
    let lapsing = id_of(&held(&app, u, "5", 400).await);
    let marked = id_of(&held(&app, u, "6", 20).await);
    tokio::time::sleep(Duration::from_millis(40)).await;
    app.state.ledger.expire_due_holds().await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        list("status=expired".into()).await,
        (vec![marked, lapsing, ids[3]], None)
    );
    assert_eq!(
        list("status=expired&limit=2".into()).await,
        (vec![marked, lapsing], Some(lapsing))
    );
    assert_eq!(
        list(format!("status=expired&limit=1&before_id={marked}")).await,
        (vec![lapsing], Some(lapsing))
    );
    assert_eq!(
        list(format!("status=expired&limit=2&before_id={lapsing}")).await,
        (vec![ids[3]], None)
    );
    app.stop().await;
}

/// A loss on close is kept off held funds, like another order's margin:
/// after the close the balance still backs the hold, and the hold captures
/// in full.
async fn a_closing_loss_never_eats_held_funds(engine: Engine) {
    let (app, u) = TestApp::with_trader(engine, "loss@x.io", "100", ("BTCUSD", "100")).await;
    // margin 10, open fee 0.1
    let order = app.opened(u, ("BTCUSD", "buy", "1", 10, "live")).await;
    let hold = held(&app, u, "80", 60_000).await;
    assert_eq!(funds(&app, u).await, strings(["99.9", "80", "9.9"]));
    // a loss of 60 and a close fee of 0.04: the free balance covers 19.9
    app.set_price("BTCUSD", "40").await.expect(200);
    let r = app.close_order(order, &app.user(u)).await;
    r.expect(200);
    assert_eq!(r.body["written_off"], "40.14");
    assert_eq!(funds(&app, u).await, strings(["80", "80", "0"]));
    let r = capture(&app, &app.service(), id_of(&hold), json!({})).await;
    r.expect(200);
    assert_eq!(funds(&app, u).await, strings(["0", "0", "0"]));
    app.assert_books_balance_and_stop().await;
}

/// Wallets and journal entries written before holds migrate: they hold 0,
/// their hash chains still verify, and the new checks guard them.
async fn existing_wallets_and_entries_migrate(engine: Engine) {
    use infra::entities::{journal_entry, user, wallet};
    use migration::{Migrator, MigratorTrait};
    use sea_orm::{ConnectionTrait, EntityTrait, Set};

    let dir = tempfile::tempdir().unwrap();
    let pg = match engine {
        Engine::Postgres => Some(tests::PgDatabase::create().await),
        Engine::Sqlite => None,
    };
    let url = match &pg {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}/old.db?mode=rwc", dir.path().display()),
    };
    let conn = sea_orm::Database::connect(&url).await.unwrap();
    // the schema before holds: the core and trading migrations
    Migrator::up(&conn, Some(2)).await.unwrap();
    let at = Utc::now();
    user::Entity::insert(user::ActiveModel {
        id: Set(1),
        email: Set("old@x.io".into()),
        account_number: Set("100000000009".into()),
        referral_code: Set("OLDOLDOL".into()),
        referrer_id: Set(None),
        created_at: Set(at),
    })
    .exec_without_returning(&conn)
    .await
    .unwrap();
    // two entries as the old code wrote them: a deposit, then margin held
    let mut prev = domain::ledger::journal::GENESIS_HASH.to_owned();
    let mut rows = Vec::new();
    for (kind, balance_delta, margin_delta) in [("deposit", 100, 0), ("margin_hold", 0, 40)] {
        let mut e = journal_entry::Model {
            id: 0,
            operation_id: uuid::Uuid::new_v4(),
            wallet_id: 1,
            user_id: 1,
            wallet_kind: "live".into(),
            kind: kind.into(),
            balance_delta,
            margin_delta,
            profit_delta: 0,
            balance_after: 100,
            margin_after: margin_delta,
            profit_after: 0,
            held_delta: 0,
            held_after: 0,
            reference: None,
            metadata: None,
            created_at: domain::clock::now(),
            hash: String::new(),
        };
        e.hash = domain::ledger::journal::chain_hash(&prev, &e);
        prev = e.hash.clone();
        rows.push(e);
    }
    wallet::Entity::insert(wallet::ActiveModel {
        id: Set(1),
        user_id: Set(1),
        kind: Set("live".into()),
        currency: Set("USD".into()),
        balance: Set(100),
        margin: Set(40),
        profit: Set(0),
        version: Set(2),
        last_hash: Set(prev),
        created_at: Set(at),
        updated_at: Set(at),
        ..Default::default()
    })
    .exec_without_returning(&conn)
    .await
    .unwrap();
    // only the columns the old schema has
    journal_entry::Entity::insert_many(rows.iter().map(|e| journal_entry::ActiveModel {
        operation_id: Set(e.operation_id),
        wallet_id: Set(e.wallet_id),
        user_id: Set(e.user_id),
        wallet_kind: Set(e.wallet_kind.clone()),
        kind: Set(e.kind.clone()),
        balance_delta: Set(e.balance_delta),
        margin_delta: Set(e.margin_delta),
        profit_delta: Set(e.profit_delta),
        balance_after: Set(e.balance_after),
        margin_after: Set(e.margin_after),
        profit_after: Set(e.profit_after),
        reference: Set(None),
        metadata: Set(None),
        created_at: Set(e.created_at),
        hash: Set(e.hash.clone()),
        ..Default::default()
    }))
    .exec_without_returning(&conn)
    .await
    .unwrap();
    Migrator::up(&conn, None).await.unwrap();
    let w = wallet::Entity::find_by_id(1)
        .one(&conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((w.balance, w.margin, w.held), (100, 40, 0));
    let report = domain::ledger::reconcile::check_all(&conn).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.discrepancies);
    assert_eq!((report.wallets, report.entries), (1, 2));
    // the new checks hold the migrated row: held >= 0, balance >= margin + held
    for held in [-1, 61] {
        let refused = conn
            .execute_unprepared(&format!("UPDATE wallets SET held = {held} WHERE id = 1"))
            .await;
        assert!(refused.is_err(), "held = {held} was accepted");
    }
    conn.execute_unprepared("UPDATE wallets SET held = 60 WHERE id = 1")
        .await
        .unwrap();
    // and the migration can be undone and redone (those that came after it
    // first)
    let migrations = Migrator::migrations();
    let holds = migrations
        .iter()
        .position(|m| m.name() == "m20261201_000003_holds")
        .unwrap();
    let undone = u32::try_from(migrations.len() - holds).unwrap();
    Migrator::down(&conn, Some(undone)).await.unwrap();
    assert!(
        conn.execute_unprepared("SELECT held FROM wallets")
            .await
            .is_err()
    );
    Migrator::up(&conn, None).await.unwrap();
    conn.close().await.unwrap();
}

both_engines!(
    existing_wallets_and_entries_migrate,
    create_capture_and_read_follow_the_contract,
    void_roles_and_privacy,
    refusals_and_validation_change_nothing,
    a_repeated_key_replays_the_hold,
    an_expired_hold_stops_counting_at_once,
    the_cleanup_job_releases_expired_holds,
    lists_are_newest_first_and_filter_by_status,
    a_closing_loss_never_eats_held_funds,
);
