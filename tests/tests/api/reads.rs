//! Coalesced wallet reads: reads that arrive while others are being read
//! share one statement. PostgreSQL runs the contract's counts, SQLite the
//! same invariants at lower ones.

use futures::future::join_all;
use rust_decimal::Decimal;
use tests::{Engine, TestApp, both_engines, dec_of, scale, shared};

/// How many read statements carried more than one read so far
/// (process-wide: a floor, not an exact count, with tests in parallel).
fn shared_batches() -> u64 {
    shared(&infra::metrics::metrics().read_batch_size)
}

fn live_balance(wallets: &serde_json::Value) -> Decimal {
    let live = wallets
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["kind"] == "live");
    dec_of(&live.unwrap()["balance"])
}

/// Invariant: reads of many users sharing statements still answer each
/// user its own wallets, as they stand after every write answered before the
/// read was asked — no read gets another user's wallets (each user deposits
/// its own step, so any mix-up shows in the balance) and none misses a
/// write it came after; an unknown user read beside them is still 404.
async fn coalesced_reads_answer_each_user_its_own(engine: Engine) {
    // one read statement at a time: the reads asked meanwhile must share
    let app = TestApp::spawn_with(engine, |c| c.reads.batches = 1).await;
    let (users, rounds) = (scale(engine, 40, 10), 5);
    let emails: Vec<String> = (0..users).map(|i| format!("reader{i}@x.io")).collect();
    let ids = join_all(emails.iter().map(|e| app.create_user(e))).await;
    let shared_before = shared_batches();
    let readers = ids.iter().enumerate().map(|(i, &u)| {
        let app = &app;
        async move {
            let (token, step) = (app.user(u), Decimal::from(i + 1));
            let mut total = Decimal::ZERO;
            for _ in 0..rounds {
                app.deposit(u, &step.to_string(), "live").await.expect(200);
                total += step;
                let r = app
                    .get_ok(&format!("/api/v1/users/{u}/wallets"), &token)
                    .await;
                assert_eq!(
                    live_balance(&r.body),
                    total,
                    "user {u}: another user's wallet, or its own deposit missed"
                );
                assert_eq!(r.body.as_array().unwrap().len(), 2, "live and demo");
            }
        }
    });
    let unknown = async {
        for _ in 0..rounds {
            app.get("/api/v1/users/999999999/wallets", Some(&app.admin()))
                .await
                .problem(404, "not_found");
        }
    };
    futures::join!(join_all(readers), unknown);
    assert!(
        shared_batches() > shared_before,
        "reads arriving together never shared a statement"
    );
    app.assert_books_balance_and_stop().await;
}

both_engines!(coalesced_reads_answer_each_user_its_own);
