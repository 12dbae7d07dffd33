//! Real parallel requests against one app, each test stating its invariant.
//! PostgreSQL runs the counts of the contract; SQLite, whose writers
//! serialize, the same invariants at lower counts.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use futures::future::join_all;
use serde_json::json;
use tests::{Engine, Reply, TestApp, assert_no_5xx, both_engines, fresh_key, live, scale};

/// Invariant: N concurrent deposits of 0.01 into one wallet leave exactly
/// N × 0.01 and exactly N deposit journal entries (no lost update).
async fn concurrent_deposits_are_all_counted(engine: Engine) {
    let n = scale(engine, 200, 40);
    let (app, u) = TestApp::with_user(engine, "hot@x.io").await;
    let replies = join_all((0..n).map(|_| app.deposit(u, "0.01", "live"))).await;
    assert_no_5xx(&replies);
    assert!(replies.iter().all(|r| r.status == 200));
    let expected = format!("{}", rust_decimal::Decimal::new(n as i64, 2).normalize());
    assert_eq!(app.balance(u, "live").await, expected);
    let kinds = app.journal_kinds(u, "live").await;
    let deposits = kinds.iter().filter(|k| *k == "deposit").count();
    assert_eq!(deposits, n);
    app.assert_books_balance_and_stop().await;
}

/// Invariant: no double spend. 2N concurrent withdrawals of 10 from 10 × N:
/// exactly N succeed, N get 422, the balance ends at exactly 0, never below.
async fn concurrent_withdrawals_never_overdraw(engine: Engine) {
    let half = scale(engine, 50, 10);
    let (app, u) = TestApp::with_user(engine, "spend@x.io").await;
    app.deposit(u, &format!("{}", half * 10), "live")
        .await
        .expect(200);
    let token = app.user(u);
    let keys: Vec<String> = (0..half * 2).map(|_| fresh_key()).collect();
    let replies = join_all(
        keys.iter()
            .map(|key| app.post("/api/v1/wallets/withdraw", &token, Some(key), live(u, "10"))),
    )
    .await;
    assert_no_5xx(&replies);
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let refused = replies
        .iter()
        .filter(|r| r.status == 422 && r.code() == "insufficient_funds")
        .count();
    assert_eq!((ok, refused), (half, half));
    assert_eq!(app.balance(u, "live").await, "0");
    app.assert_books_balance_and_stop().await;
}

/// Invariant: interleaved transfers A→B and B→A (ascending lock order, no
/// deadlock surfaces) never create or destroy money and never go negative.
async fn crossing_transfers_conserve_the_sum(engine: Engine) {
    let n = scale(engine, 100, 20);
    let (app, a) = TestApp::with_user(engine, "a@x.io").await;
    let b = app.create_user("b@x.io").await;
    app.deposit(a, "1000", "live").await.expect(200);
    app.deposit(b, "1000", "live").await.expect(200);
    let (ta, tb) = (app.user(a), app.user(b));
    let keys: Vec<String> = (0..n).map(|_| fresh_key()).collect();
    let replies = join_all(keys.iter().enumerate().map(|(i, key)| {
        let (from, to, token) = if i % 2 == 0 { (a, b, &ta) } else { (b, a, &tb) };
        let amount = format!("{}.5", i % 7 + 1);
        app.post(
            "/api/v1/wallets/transfer",
            token,
            Some(key),
            json!({"from_user_id": from, "to_user_id": to, "amount": amount, "wallet": "live"}),
        )
    }))
    .await;
    assert_no_5xx(&replies);
    assert!(
        replies.iter().all(|r| r.status == 200),
        "every transfer fits"
    );
    let ba: rust_decimal::Decimal = app.balance(a, "live").await.parse().unwrap();
    let bb: rust_decimal::Decimal = app.balance(b, "live").await.parse().unwrap();
    assert_eq!(ba + bb, rust_decimal::Decimal::from(2000));
    assert!(ba >= rust_decimal::Decimal::ZERO && bb >= rust_decimal::Decimal::ZERO);
    app.assert_books_balance_and_stop().await;
}

/// Invariant: one execution per idempotency key. N identical concurrent
/// requests move the money once; every answer is the original response
/// (replayed byte for byte) or 409 in flight.
async fn one_key_many_requests_execute_once(engine: Engine) {
    let n = scale(engine, 50, 20);
    let (app, u) = TestApp::with_user(engine, "once@x.io").await;
    let key = fresh_key();
    let token = app.service();
    let body = live(u, "25");
    let replies = join_all(
        (0..n).map(|_| app.post("/api/v1/wallets/deposit", &token, Some(&key), body.clone())),
    )
    .await;
    assert_no_5xx(&replies);
    let originals: Vec<&Reply> = replies.iter().filter(|r| r.status == 200).collect();
    assert!(!originals.is_empty());
    let executed = originals
        .iter()
        .filter(|r| r.header("idempotent-replayed").is_none())
        .count();
    assert_eq!(executed, 1, "exactly one request executes");
    assert!(
        originals.iter().all(|r| r.text == originals[0].text),
        "replays differ from the original"
    );
    for r in replies.iter().filter(|r| r.status != 200) {
        r.problem(409, "idempotency_in_flight");
    }
    // after the dust settles the key answers with the original
    let last = app
        .post("/api/v1/wallets/deposit", &token, Some(&key), body)
        .await;
    assert_eq!(last.text, originals[0].text);
    assert_eq!(app.balance(u, "live").await, "25");
    app.assert_books_balance_and_stop().await;
}

both_engines!(
    concurrent_deposits_are_all_counted,
    concurrent_withdrawals_never_overdraw,
    crossing_transfers_conserve_the_sum,
    one_key_many_requests_execute_once
);

/// Invariant: reconciliation run while deposits commit finds no discrepancy.
/// Read outside one snapshot, a deposit committed between reading a wallet
/// and reading its journal shows up as a journal that sums to more than the
/// wallet holds: a false alarm. PostgreSQL only: it is where writers and the
/// reader truly run at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconciliation_during_deposits_reads_one_snapshot() {
    const ROUNDS: usize = 30;
    let app = TestApp::spawn(Engine::Postgres).await;
    let emails: Vec<String> = (0..10).map(|i| format!("snap{i}@x.io")).collect();
    let users = join_all(emails.iter().map(|e| app.create_user(e))).await;
    let done = AtomicBool::new(false);
    let deposits = AtomicUsize::new(0);
    let writers = join_all(users.iter().map(|&u| {
        let (app, done, deposits) = (&app, &done, &deposits);
        async move {
            while !done.load(Ordering::SeqCst) {
                app.deposit(u, "0.01", "live").await.expect(200);
                deposits.fetch_add(1, Ordering::SeqCst);
            }
        }
    }));
    let checks = async {
        // start once the writers are under way, so every round overlaps them
        while deposits.load(Ordering::SeqCst) < users.len() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let before = deposits.load(Ordering::SeqCst);
        let mut unclean = Vec::new();
        for round in 0..ROUNDS {
            let report = app.reconcile().await;
            if !report.is_clean() {
                unclean.push((round, report.discrepancies));
            }
        }
        let during = deposits.load(Ordering::SeqCst) - before;
        done.store(true, Ordering::SeqCst);
        (unclean, during)
    };
    let ((unclean, during), _) = tokio::join!(checks, writers);
    assert!(
        during >= ROUNDS,
        "only {during} deposits committed during {ROUNDS} reconciliations: they did not overlap"
    );
    assert!(
        unclean.is_empty(),
        "{} of {ROUNDS} reconciliations reported discrepancies, first: {:?}",
        unclean.len(),
        unclean.first()
    );
    app.assert_books_balance_and_stop().await;
}
