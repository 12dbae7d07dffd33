//! Real parallel requests on orders and referrals, each test stating its
//! invariant. PostgreSQL runs the counts of the contract; SQLite, whose
//! writers serialize, the same invariants at lower counts.

use std::time::Duration;

use futures::future::join_all;
use rust_decimal::Decimal;
use serde_json::json;
use tests::{Engine, Reply, TestApp, assert_no_5xx, both_engines, dec, dec_of, scale};

fn count(replies: &[Reply], status: u16, code: &str) -> usize {
    replies
        .iter()
        .filter(|r| r.status == status && (code.is_empty() || r.code() == code))
        .count()
}

/// No 5xx; exactly `won` of the `replies` answer `ok` and all the others
/// are refused with `(status, code)`.
#[track_caller]
fn assert_won(replies: &[Reply], (ok, won): (u16, usize), (status, code): (u16, &str)) {
    assert_no_5xx(replies);
    assert_eq!(count(replies, ok, ""), won);
    assert_eq!(count(replies, status, code), replies.len() - won);
}

/// Invariant: an order closes once. N concurrent closes of one order give
/// exactly one 200 and N-1 × 409 `order_not_open`; the margin is released
/// once and the P&L and fee are booked once.
async fn concurrent_closes_close_once(engine: Engine) {
    let n = scale(engine, 100, 20);
    let (app, u) = TestApp::with_trader(engine, "close@x.io", "1000", ("BTCUSD", "100")).await;
    let id = app.opened(u, ("BTCUSD", "buy", "1", 10, "live")).await;
    app.set_price("BTCUSD", "105").await.expect(200);
    let service = app.service();
    let owner = app.user(u);
    // the owner and the back office race each other, each with its own key
    let replies = join_all((0..n).map(|i| {
        let token = if i % 2 == 0 { &owner } else { &service };
        app.close_order(id, token)
    }))
    .await;
    assert_won(&replies, (200, 1), (409, "order_not_open"));
    let w = app.wallet(u, "live").await;
    // 1000 - 0.1 (open fee) + 5 (pnl) - 0.105 (close fee)
    assert_eq!(
        (&w["balance"], &w["margin"], &w["profit"]),
        (&json!("1004.795"), &json!("0"), &json!("5"))
    );
    let kinds = app.journal_kinds(u, "live").await;
    assert_eq!(kinds.iter().filter(|k| *k == "margin_release").count(), 1);
    assert_eq!(kinds.iter().filter(|k| *k == "pnl").count(), 1);
    app.assert_books_balance_and_stop().await;
}

/// Invariant: margin never exceeds balance. With free margin for exactly 10
/// orders, 5× as many concurrent opens give exactly 10 × 201 and the rest
/// 422 `insufficient_margin`.
async fn concurrent_opens_never_exceed_free_margin(engine: Engine) {
    let n = scale(engine, 50, 20);
    let app = TestApp::spawn(engine).await;
    // each order: margin 10 + fee 0.1
    let u = app.trader("open@x.io", "101", ("BTCUSD", "100")).await;
    let replies =
        join_all((0..n).map(|_| app.open_order(u, ("BTCUSD", "buy", "1", 10, "live")))).await;
    assert_won(&replies, (201, 10), (422, "insufficient_margin"));
    let w = app.wallet(u, "live").await;
    assert_eq!(
        (&w["balance"], &w["margin"], &w["free_margin"]),
        (&json!("100"), &json!("100"), &json!("0"))
    );
    assert!(dec_of(&w["margin"]) <= dec_of(&w["balance"]));
    app.assert_books_balance_and_stop().await;
}

/// Invariant: commissions are exact and hot referrers are not a lock
/// bottleneck. N referees of one referrer open and close orders
/// concurrently while the settlement job runs: no 5xx, and after the final
/// settlement the referrer's live wallet holds exactly the signup bonuses
/// plus 20 % of every fee its referees paid.
async fn many_referees_trade_while_commissions_settle(engine: Engine) {
    let n = scale(engine, 200, 20);
    let app = TestApp::spawn_with(engine, |c| {
        c.referrals.settle_interval = Duration::from_millis(200)
    })
    .await;
    let referrer = app.signup("hub@x.io", None).await;
    let rid = referrer["id"].as_i64().unwrap();
    let code = referrer["referral_code"].as_str().unwrap().to_owned();
    let referees: Vec<i64> = join_all((0..n).map(|i| {
        let (app, code) = (&app, &code);
        async move {
            app.signup(&format!("r{i}@x.io"), Some(code)).await["id"]
                .as_i64()
                .unwrap()
        }
    }))
    .await;
    let deposits = join_all(referees.iter().map(|&u| app.deposit(u, "1000", "live"))).await;
    assert_no_5xx(&deposits);
    app.set_price("BTCUSD", "123.45678901").await.expect(200);
    let trades = join_all(referees.iter().enumerate().map(|(i, &u)| {
        let app = &app;
        async move {
            let quantity = format!("0.{:08}", 1_000_000 + i * 7_919);
            let side = if i % 2 == 0 { "buy" } else { "sell" };
            let opened = app
                .open_order(u, ("BTCUSD", side, &quantity, 5, "live"))
                .await;
            if opened.status != 201 {
                return vec![opened];
            }
            let id = opened.body["id"].as_i64().unwrap();
            let closed = app.close_order(id, &app.user(u)).await;
            vec![opened, closed]
        }
    }))
    .await;
    let replies: Vec<Reply> = trades.into_iter().flatten().collect();
    assert_no_5xx(&replies);
    assert_eq!(replies.len(), 2 * n, "every order opened");
    assert!(replies.iter().all(|r| r.status == 200 || r.status == 201));
    // the open fee of each 201, the close fee of each 200
    let fees: Vec<Decimal> = replies
        .iter()
        .map(|r| {
            let field = if r.status == 201 {
                "open_fee"
            } else {
                "close_fee"
            };
            dec_of(&r.body[field])
        })
        .collect();
    // each fee's level-1 share rounds on its own, half to even, at 8 decimals
    let expected_commission: Decimal = fees
        .iter()
        .map(|fee| {
            (fee * dec("0.2"))
                .round_dp_with_strategy(8, rust_decimal::RoundingStrategy::MidpointNearestEven)
        })
        .sum();
    assert!(fees.iter().sum::<Decimal>() > Decimal::ZERO);
    // drain what the job has not settled yet: the route skips the rows the
    // job is settling (and answers 0 for them), so wait until nothing is
    // pending as committed
    let drained_by = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = app
            .post_new("/api/v1/referrals/settle", &app.service(), json!({}))
            .await;
        r.expect(200);
        let stats = app
            .get(
                &format!("/api/v1/users/{rid}/referrals"),
                Some(&app.admin()),
            )
            .await;
        if r.body["settled"] == 0 && stats.body["commission_pending"] == "0" {
            break;
        }
        assert!(
            std::time::Instant::now() < drained_by,
            "never drained: {}",
            stats.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bonuses = Decimal::from(10 * n as i64);
    assert_eq!(
        dec(&app.balance(rid, "live").await),
        bonuses + expected_commission
    );
    let stats = app
        .get(
            &format!("/api/v1/users/{rid}/referrals"),
            Some(&app.admin()),
        )
        .await;
    assert_eq!(dec_of(&stats.body["commission_paid"]), expected_commission);
    assert_eq!(stats.body["commission_pending"], "0");
    assert_eq!(stats.body["referees"], n as i64);
    app.assert_books_balance_and_stop().await;
}

/// Invariant: the cooldown holds across processes. Two app instances on one
/// database receive 20 racing orders of one user on one symbol: exactly one
/// opens, the rest get 429 `cooldown_active`.
async fn cooldown_holds_across_two_instances(engine: Engine) {
    let _several_servers = tests::heavy().await;
    let n = scale(engine, 20, 10);
    let app = TestApp::spawn_with(engine, |c| {
        c.trading.cooldown = Duration::from_millis(30_000)
    })
    .await;
    let sibling = app.sibling().await;
    let u = app.trader("twice@x.io", "1000", ("BTCUSD", "10")).await;
    let replies = join_all((0..n).map(|i| {
        let target = if i % 2 == 0 { &app } else { &sibling };
        target.open_order(u, ("BTCUSD", "buy", "1", 1, "live"))
    }))
    .await;
    assert_won(&replies, (201, 1), (429, "cooldown_active"));
    assert!(
        replies
            .iter()
            .filter(|r| r.status == 429)
            .all(|r| r.header("retry-after").is_some())
    );
    assert_eq!(app.wallet(u, "live").await["margin"], "10");
    app.assert_books_balance().await;
    sibling.stop().await;
    app.stop().await;
}

both_engines!(
    concurrent_closes_close_once,
    concurrent_opens_never_exceed_free_margin,
    many_referees_trade_while_commissions_settle,
    cooldown_holds_across_two_instances,
);
