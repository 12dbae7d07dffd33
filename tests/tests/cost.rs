//! The cost of a money write on PostgreSQL: commits and round trips per
//! deposit, withdrawal, transfer, order open and order close, from the
//! server's own counters and from `pg_stat_database.xact_commit`. Its own
//! test binary (its own process), so the process-wide counters see only this
//! test's work. A regression — a second commit, an extra statement — fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use infra::metrics::metrics;
use sea_orm::{ConnectionTrait, Database, Statement};
use tests::{Engine, TestApp, admin_url};

/// Operations of each kind measured.
const N: i64 = 30;

struct Cost {
    statements: u64,
    commits: u64,
}

fn counters() -> Cost {
    let m = metrics();
    let commits = prometheus::core::Collector::collect(&m.db_commits)
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|c| c.get_counter().get_value() as u64)
        .sum();
    Cost {
        statements: m.db_statements.get(),
        commits,
    }
}

/// Runs `op` `N` times and returns its statements and commits per operation.
async fn per_operation<F, Fut>(what: &str, mut op: F) -> (f64, f64)
where
    F: FnMut(i64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let before = counters();
    for i in 0..N {
        op(i).await;
    }
    let after = counters();
    let statements = (after.statements - before.statements) as f64 / N as f64;
    let commits = (after.commits - before.commits) as f64 / N as f64;
    println!("{what}: {statements} statements and {commits} commits per operation");
    (statements, commits)
}

async fn xact_commits(database: &str) -> i64 {
    let admin = Database::connect(admin_url()).await.unwrap();
    let row = admin
        .query_one_raw(Statement::from_string(
            admin.get_database_backend(),
            format!("SELECT xact_commit FROM pg_stat_database WHERE datname = '{database}'"),
        ))
        .await
        .unwrap()
        .unwrap();
    let n: i64 = row.try_get("", "xact_commit").unwrap();
    admin.close().await.unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_money_write_is_one_commit_with_a_fixed_number_of_round_trips() {
    // No workflow workers polling, and the recovery pass at start done
    // before counting: only the requests' own transactions commit.
    let mut app = TestApp::spawn_with(Engine::Postgres, |c| {
        c.workflows.workers = 0;
        c.workflows.recovery_interval = Duration::ZERO;
    })
    .await;
    while app.state.recovery.status().runs == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let database = app.pg_database().unwrap().to_owned();
    let commits_at_start = xact_commits(&database).await;
    let server_commits_at_start = counters().commits;
    let a = app.create_user("cost-a@x.io").await;
    let b = app.create_user("cost-b@x.io").await;
    app.set_price("COSTUSD", "100").await.expect(200);
    let user_a = app.user(a);

    let deposit = per_operation("deposit", |_| {
        let app = &app;
        async move {
            app.deposit(a, "1000", "live").await.expect(200);
        }
    })
    .await;
    let withdraw = per_operation("withdrawal", |_| {
        let (app, user_a) = (&app, &user_a);
        async move {
            app.withdraw(user_a, a, "1", "live").await.expect(200);
        }
    })
    .await;
    let transfer = per_operation("transfer", |_| {
        let (app, user_a) = (&app, &user_a);
        async move {
            app.transfer(user_a, (a, b), "1", "live").await.expect(200);
        }
    })
    .await;
    let mut opened = Vec::new();
    let before = counters();
    for _ in 0..N {
        opened.push(app.opened(a, ("COSTUSD", "buy", "1", 10, "live")).await);
    }
    let after = counters();
    let open = (
        (after.statements - before.statements) as f64 / N as f64,
        (after.commits - before.commits) as f64 / N as f64,
    );
    println!(
        "order open: {} statements and {} commits per operation",
        open.0, open.1
    );
    let close = per_operation("order close", |i| {
        let (app, user_a, id) = (&app, &user_a, opened[i as usize]);
        async move {
            app.close_order(id, user_a).await.expect(200);
        }
    })
    .await;
    let signalled = std::sync::Mutex::new(Vec::new());
    let signal_open = per_operation("order open on a signal", |i| {
        let (app, user_a, signalled) = (&app, &user_a, &signalled);
        let order = serde_json::json!({
            "user_id": a, "symbol": "COSTUSD", "side": "buy", "quantity": "1",
            "leverage": 10, "wallet": "live", "signal_id": format!("cost-open-{i}"),
        });
        async move {
            let r = app.post_new("/api/v1/orders", user_a, order).await;
            r.expect(201);
            signalled
                .lock()
                .unwrap()
                .push(r.body["id"].as_i64().unwrap());
        }
    })
    .await;
    let signalled = signalled.into_inner().unwrap();
    let signal_close = per_operation("order close on a signal", |i| {
        let (app, user_a, id) = (&app, &user_a, signalled[i as usize]);
        async move {
            let body = serde_json::json!({ "signal_id": format!("cost-close-{i}") });
            app.post_new(&format!("/api/v1/orders/{id}/close"), user_a, body)
                .await
                .expect(200);
        }
    })
    .await;

    // One commit per write: the key's claim, the money, the journal and the
    // stored answer are one transaction (on a signal, with the grant and
    // the release of its lock).
    for (what, (_, commits)) in [
        ("deposit", deposit),
        ("withdrawal", withdraw),
        ("transfer", transfer),
        ("order open", open),
        ("order close", close),
        ("order open on a signal", signal_open),
        ("order close on a signal", signal_close),
    ] {
        assert_eq!(commits, 1.0, "{what}: commits per operation");
    }
    // Statements per operation (each a round trip; BEGIN and COMMIT add two):
    // the claim with its advisory lock, the wallet lock(s), one wallet UPDATE
    // per wallet, one journal INSERT, the stored answer. A deposit, a
    // withdrawal and an order open or close go as a planned group (even
    // alone): the claim, the lock, and the wallet, the entries, the answer
    // (and the order's row, its commissions) written in one statement;
    // orders add one statement reading their price, the new order's id or
    // the order to close, and a close first reads the order to authorize
    // the caller. A user's referral upline never changes: it is read by the
    // user's first order only (all of these are one user's). A transfer runs
    // its statements one by one.
    assert_eq!(deposit.0, 3.0, "deposit: statements");
    assert_eq!(withdraw.0, 3.0, "withdrawal: statements");
    assert_eq!(transfer.0, 6.0, "transfer: statements");
    let opens = (open.0 * N as f64).round() as i64;
    assert_eq!(opens, 4 * N + 1, "order open: statements in all");
    assert_eq!(close.0, 5.0, "order close: statements");
    // On a signal, the group also takes the signal's lock, in the same
    // statements: its fencing row with the claim, whether it is free with
    // the order's reads, and the lock's grant, ended, in the write.
    assert_eq!(signal_open.0, 4.0, "order open on a signal: statements");
    assert_eq!(signal_close.0, 5.0, "order close on a signal: statements");

    // The database agrees. Its statistics are flushed when the server's
    // connections close; besides the counted transactions it has seen the
    // migrations, connection start-ups and the health probe's looks, a few
    // dozen at most — far fewer than the 150 a second commit per write adds.
    let server_commits = counters().commits - server_commits_at_start;
    app.stop_server().await;
    let mut seen = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = xact_commits(&database).await - commits_at_start;
        if now == seen && now > 0 {
            break;
        }
        seen = now;
    }
    println!("pg_stat_database: {seen} commits; the server counted {server_commits}");
    assert!(seen >= server_commits as i64, "{seen} < {server_commits}");
    assert!(
        seen < server_commits as i64 + 5 * N,
        "the database saw {seen} commits for {server_commits} counted ones"
    );
    app.stop().await;
}
