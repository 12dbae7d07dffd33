use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Database};
use serde_json::json;
use tests::{Engine, Reply, TestApp, admin_url, both_engines, fresh_key, live};

async fn health_metrics_and_docs(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let r = app.get("/health", None).await;
    r.expect(200);
    assert_eq!(r.body, json!({"status": "ok"}));
    let r = app.get("/health/ready", None).await;
    r.expect(200);
    assert_eq!(
        (r.body["status"].as_str(), r.body["database"].as_str()),
        (Some("ready"), Some("ok"))
    );
    assert_eq!(r.body["pool"]["max"], 20);
    assert!(r.body["pool"]["size"].as_u64().unwrap() >= r.body["pool"]["idle"].as_u64().unwrap());
    let spec = app.get("/openapi.json", None).await;
    spec.expect(200);
    for path in [
        "/api/v1/users",
        "/api/v1/users/{id}",
        "/api/v1/users/{id}/wallets",
        "/api/v1/wallets/deposit",
        "/api/v1/wallets/withdraw",
        "/api/v1/wallets/transfer",
        "/api/v1/users/{id}/transactions",
    ] {
        assert!(
            spec.body["paths"][path].is_object(),
            "{path} missing from the spec"
        );
    }
    let docs = app.get("/docs", None).await;
    docs.expect(200);
    assert!(docs.text.to_lowercase().contains("swagger"));
    // traffic shows up in the metrics by route and status
    app.funded_user("m@x.io", "1").await;
    let metrics = app.get("/metrics", None).await;
    metrics.expect(200);
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    for needle in [
        "ledger_http_requests_total{route=\"deposit\",status=\"200\"}",
        "ledger_http_request_duration_seconds_bucket",
        "ledger_db_transaction_attempts_total{operation=\"deposit\"}",
        "ledger_db_pool_max 20",
        "ledger_db_pool_size",
        "ledger_db_pool_idle",
    ] {
        assert!(metrics.text.contains(needle), "metrics lack {needle}");
    }
    app.get("/nowhere", None).await.problem(404, "not_found");
    app.stop().await;
}

/// A GET of `path` (no token) carrying `x-request-id: id`.
async fn get_with_request_id(app: &TestApp, path: &str, id: &str) -> Reply {
    let url = format!("{}{path}", app.base);
    app.send(app.client.get(url).header("x-request-id", id))
        .await
}

async fn request_ids_are_echoed_or_generated(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let r = get_with_request_id(&app, "/health", "trace-123").await;
    assert_eq!(r.header("x-request-id"), Some("trace-123"));
    let r = app.get("/health", None).await;
    let generated = r.header("x-request-id").unwrap();
    assert!(uuid::Uuid::parse_str(generated).is_ok());
    // errors carry the same id in the body
    let r = get_with_request_id(&app, "/api/v1/users/1", "abc-9").await;
    r.problem(401, "unauthorized");
    assert_eq!(r.body["request_id"], "abc-9");
    assert_eq!(r.header("x-request-id"), Some("abc-9"));
    app.stop().await;
}

async fn oversized_bodies_are_refused(engine: Engine) {
    let (app, u) = TestApp::with_user(engine, "big@x.io").await;
    let padding = "x".repeat(70 * 1024);
    let body = format!(r#"{{"user_id":{u},"amount":"1","wallet":"live","reference":"{padding}"}}"#);
    let r = app
        .post_raw(
            "/api/v1/wallets/deposit",
            Some(&app.service()),
            Some(&fresh_key()),
            &body,
        )
        .await;
    r.problem(413, "payload_too_large");
    assert_eq!(app.balance(u, "live").await, "0");
    app.stop().await;
}

async fn rate_limit_per_principal(engine: Engine) {
    let app = TestApp::spawn_with(engine, |c| {
        c.server.rate_limit_per_second = 1;
        c.server.rate_limit_burst = 3;
    })
    .await;
    let token = app.admin();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(app.get("/api/v1/users/1", Some(&token)).await);
    }
    let limited = statuses
        .iter()
        .find(|r| r.status == 429)
        .expect("the burst must run out");
    limited.problem(429, "rate_limited");
    assert!(
        limited
            .header("retry-after")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    // another principal is not affected; health is never limited
    app.get("/api/v1/users/1", Some(&app.service()))
        .await
        .problem(404, "not_found");
    app.get("/health", None).await.expect(200);
    app.stop().await;
}

async fn draining_turns_readiness_off(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    app.state.start_draining();
    let r = app.get("/health/ready", None).await;
    r.problem(503, "unavailable");
    assert!(r.header("retry-after").is_some());
    app.get("/health", None).await.expect(200);
    app.stop().await;
}

/// A method the path does not serve is a 405 problem whose `Allow` header
/// lists the methods it does.
async fn unsupported_methods_get_405_with_allow(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    for (method, path, allow) in [
        (reqwest::Method::DELETE, "/api/v1/orders/1", "GET, HEAD"),
        (reqwest::Method::GET, "/api/v1/wallets/deposit", "POST"),
        (
            reqwest::Method::POST,
            "/api/v1/prices/BTCUSD",
            "GET, HEAD, PUT",
        ),
        (reqwest::Method::PATCH, "/health", "GET, HEAD"),
    ] {
        let r = app
            .send(
                app.client
                    .request(method.clone(), format!("{}{path}", app.base))
                    .bearer_auth(app.admin()),
            )
            .await;
        r.problem(405, "method_not_allowed");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
    }
    app.stop().await;
}

both_engines!(
    unsupported_methods_get_405_with_allow,
    health_metrics_and_docs,
    request_ids_are_echoed_or_generated,
    oversized_bodies_are_refused,
    rate_limit_per_principal,
    draining_turns_readiness_off,
    cors_allows_configured_origins,
    reconciliation_detects_tampering
);

/// PostgreSQL goes away: requests get 503 + Retry-After within the acquire
/// timeout, never a hang and never SQL in the body; the failed request's key
/// is not stored, so the same key works once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_outage_gives_503_and_recovers() {
    let app = TestApp::spawn_with(Engine::Postgres, |c| {
        c.database.acquire_timeout = Duration::from_millis(1_500)
    })
    .await;
    let u = app.funded_user("outage@x.io", "1").await;
    let name = app.pg_database().unwrap().to_owned();
    let admin = Database::connect(admin_url()).await.unwrap();
    admin
        .execute_unprepared(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .await
        .unwrap();
    admin
        .execute_unprepared(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .await
        .unwrap();

    let key = fresh_key();
    let body = live(u, "2");
    let started = Instant::now();
    let r = app
        .post(
            "/api/v1/wallets/deposit",
            &app.service(),
            Some(&key),
            body.clone(),
        )
        .await;
    r.problem(503, "unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    let lower = r.text.to_lowercase();
    for leak in ["select", "insert", "sqlx", "postgres", "database \""] {
        assert!(!lower.contains(leak), "body leaks {leak}: {}", r.text);
    }
    app.get("/health/ready", None)
        .await
        .problem(503, "unavailable");
    app.get(&format!("/api/v1/users/{u}/wallets"), Some(&app.admin()))
        .await
        .problem(503, "unavailable");
    app.get("/health", None).await.expect(200);

    admin
        .execute_unprepared(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    admin.close().await.unwrap();
    let r = app
        .post("/api/v1/wallets/deposit", &app.service(), Some(&key), body)
        .await;
    r.expect(200);
    assert!(r.header("idempotent-replayed").is_none());
    assert_eq!(app.balance(u, "live").await, "3");
    app.get("/health/ready", None).await.expect(200);
    app.assert_books_balance_and_stop().await;
}

async fn cors_allows_configured_origins(engine: Engine) {
    let app = TestApp::spawn_with(engine, |c| {
        c.server.cors_allowed_origins = "https://app.example".into()
    })
    .await;
    let preflight = app
        .send(
            app.client
                .request(
                    reqwest::Method::OPTIONS,
                    format!("{}/api/v1/wallets/deposit", app.base),
                )
                .header("origin", "https://app.example")
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization,content-type,idempotency-key",
                ),
        )
        .await;
    assert!(
        preflight.status < 300,
        "preflight: {} {}",
        preflight.status,
        preflight.text
    );
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let allowed_for = |origin: &'static str| {
        let app = &app;
        async move {
            let r = app
                .send(
                    app.client
                        .get(format!("{}/health", app.base))
                        .header("origin", origin),
                )
                .await;
            r.header("access-control-allow-origin").map(str::to_owned)
        }
    };
    assert_eq!(
        allowed_for("https://app.example").await.as_deref(),
        Some("https://app.example")
    );
    assert_ne!(
        allowed_for("https://evil.example").await.as_deref(),
        Some("https://evil.example")
    );
    app.stop().await;
}

async fn assert_reconciliation_reports(conn: &sea_orm::DatabaseConnection, problem: &str) {
    let report = domain::ledger::reconcile::check_all(conn).await.unwrap();
    assert!(
        report
            .discrepancies
            .iter()
            .any(|d| d.problem.contains(problem)),
        "expected a discrepancy containing {problem:?}: {report:?}"
    );
}

/// Reconciliation is not a formality: a journal row changed behind the
/// ledger's back, or a balance changed without a journal entry, is found.
async fn reconciliation_detects_tampering(engine: Engine) {
    use infra::entities::{journal_entry, wallet};
    use sea_orm::sea_query::{Expr, ExprTrait};
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

    let (app, u) = TestApp::with_funded_user(engine, "t@x.io", "10").await;
    app.deposit(u, "5", "live").await.expect(200);
    app.assert_books_balance().await;
    let conn = &app.state.ledger.db.conn;
    let first = journal_entry::Entity::find()
        .filter(journal_entry::Column::UserId.eq(u))
        .filter(journal_entry::Column::Kind.eq("deposit"))
        .one(conn)
        .await
        .unwrap()
        .unwrap();
    journal_entry::Entity::update_many()
        .col_expr(journal_entry::Column::Reference, Expr::value("edited"))
        .filter(journal_entry::Column::Id.eq(first.id))
        .exec(conn)
        .await
        .unwrap();
    assert_reconciliation_reports(conn, "hash does not verify").await;
    // a balance moved without a journal entry
    wallet::Entity::update_many()
        .col_expr(
            wallet::Column::Balance,
            Expr::col(wallet::Column::Balance).add(1),
        )
        .filter(wallet::Column::Id.eq(first.wallet_id))
        .exec(conn)
        .await
        .unwrap();
    assert_reconciliation_reports(conn, "journal sums to").await;
    app.stop().await;
}

/// Instances started together on a new PostgreSQL database (a deploy, or a
/// restart of all of them) take turns at the migrations: every one comes
/// up and each migration is applied once. Before, they raced to create the
/// same tables and indexes and all but one could fail at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_started_together_migrate_once() {
    use migration::{Migrator, MigratorTrait};
    let pg = tests::PgDatabase::create().await;
    let config = infra::config::DatabaseConfig {
        url: pg.url.clone(),
        max_connections: 2,
        ..Default::default()
    };
    let instances: Vec<infra::db::Database> =
        futures::future::join_all((0..4).map(|_| infra::db::Database::connect(&config)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    let migrated = futures::future::join_all(instances.iter().map(|db| db.migrate())).await;
    for (i, result) in migrated.iter().enumerate() {
        assert!(result.is_ok(), "instance {i}: {result:?}");
    }
    let applied = Migrator::get_applied_migrations(&instances[0].conn)
        .await
        .unwrap();
    assert_eq!(applied.len(), Migrator::migrations().len());
    for db in instances {
        db.conn.close().await.unwrap();
    }
}
