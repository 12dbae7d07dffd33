//! Contract of referrals: signup bonuses, commissions on fees, settlement,
//! statistics.

use std::time::Duration;

use sea_orm::ConnectionTrait;
use serde_json::json;
use tests::{Engine, TestApp, both_engines, dec, fresh_key};

const SETTLE: &str = "/api/v1/referrals/settle";

async fn settle(app: &TestApp) -> serde_json::Value {
    let r = app.post_new(SETTLE, &app.service(), json!({})).await;
    r.expect(200);
    r.body
}

async fn stats(app: &TestApp, u: i64) -> serde_json::Value {
    let r = app
        .get_ok(&format!("/api/v1/users/{u}/referrals"), &app.user(u))
        .await;
    r.body
}

/// The settlement job is off in these tests, so what they settle is theirs.
async fn spawn(engine: Engine, referee_bonus: &str) -> TestApp {
    let bonus = referee_bonus.to_owned();
    TestApp::spawn_with(engine, move |c| {
        c.referrals.settle_interval = Duration::ZERO;
        c.referrals.referee_bonus = dec(&bonus);
    })
    .await
}

/// Signs up `emails` in order, each referred by the one before it (the
/// first by nobody); returns their ids.
async fn chain<const N: usize>(app: &TestApp, emails: [&str; N]) -> [i64; N] {
    let mut ids = [0; N];
    let mut code: Option<String> = None;
    for (id, email) in ids.iter_mut().zip(emails) {
        let user = app.signup(email, code.as_deref()).await;
        *id = user["id"].as_i64().unwrap();
        code = user["referral_code"].as_str().map(str::to_owned);
    }
    ids
}

async fn signup_bonuses_are_paid_once_to_live_wallets(engine: Engine) {
    let app = spawn(engine, "5").await;
    let referrer = app.signup("ref@x.io", None).await;
    let code = referrer["referral_code"].as_str().unwrap();
    let rid = referrer["id"].as_i64().unwrap();
    // the code is matched case-insensitively
    let referee = app.signup("new@x.io", Some(&code.to_lowercase())).await;
    let eid = referee["id"].as_i64().unwrap();
    assert_eq!(referee["referrer_id"], rid);
    // the response already shows the referee's bonus
    let live = referee["wallets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["kind"] == "live")
        .unwrap();
    assert_eq!(live["balance"], "5");
    assert_eq!(app.balance(rid, "live").await, "10");
    assert_eq!(app.balance(eid, "live").await, "5");
    assert_eq!(app.balance(rid, "demo").await, "10000");
    assert_eq!(app.journal_kinds(rid, "live").await, ["signup_bonus"]);
    assert_eq!(app.journal_kinds(eid, "live").await, ["signup_bonus"]);
    // a replayed signup pays nothing again
    let key = fresh_key();
    let body = json!({"email": "twice@x.io", "referral_code": code});
    let first = app
        .post("/api/v1/users", &app.service(), Some(&key), body.clone())
        .await;
    first.expect(201);
    let again = app
        .post("/api/v1/users", &app.service(), Some(&key), body)
        .await;
    assert_eq!(again.text, first.text);
    assert_eq!(app.balance(rid, "live").await, "20");
    // a refused signup pays nothing
    app.try_signup("new@x.io", Some(code))
        .await
        .problem(409, "conflict");
    app.try_signup("lost@x.io", Some("NOSUCHCODE"))
        .await
        .problem(422, "unknown_referral_code");
    assert_eq!(app.balance(rid, "live").await, "20");
    let s = stats(&app, rid).await;
    assert_eq!(s["referral_code"], code);
    assert_eq!(s["referees"], 2);
    assert_eq!(s["signup_bonus_paid"], "20");
    // without a code nobody is paid
    let plain = app.signup("plain@x.io", None).await;
    assert_eq!(
        app.balance(plain["id"].as_i64().unwrap(), "live").await,
        "0"
    );
    app.assert_books_balance_and_stop().await;
}

async fn commissions_accrue_on_fees_and_settle_once(engine: Engine) {
    let app = spawn(engine, "0").await;
    // a <- b <- c: b referred c, a referred b
    let [aid, bid, cid] = chain(&app, ["a@x.io", "b@x.io", "c@x.io"]).await;
    app.deposit(cid, "10000", "live").await.expect(200);
    app.set_price("BTCUSD", "1000").await.expect(200);
    // notional 2000: open fee 2
    let order = app
        .open_order(cid, ("BTCUSD", "buy", "2", 10, "live"))
        .await;
    order.expect(201);
    assert_eq!(order.body["open_fee"], "2");
    // level 1 (b) earns 20 % = 0.4, level 2 (a) 5 % = 0.1, pending
    let sb = stats(&app, bid).await;
    assert_eq!(sb["commission_pending"], "0.4");
    assert_eq!(sb["commission_paid"], "0");
    let sa = stats(&app, aid).await;
    assert_eq!(sa["commission_pending"], "0.1");
    assert_eq!(
        sa["by_level"],
        json!([
            {"level": 1, "referees": 1, "commission_paid": "0", "commission_pending": "0"},
            {"level": 2, "referees": 1, "commission_paid": "0", "commission_pending": "0.1"}
        ])
    );
    // demo-wallet fees earn nothing
    app.opened(cid, ("BTCUSD", "buy", "1", 1, "demo")).await;
    assert_eq!(stats(&app, bid).await["commission_pending"], "0.4");
    // nothing is credited before settlement (b's wallet holds its bonus only)
    assert_eq!(app.balance(bid, "live").await, "10");
    // the close fee earns too: notional 2400 -> fee 2.4 -> 0.48 and 0.12
    app.set_price("BTCUSD", "1200").await.expect(200);
    let id = order.body["id"].as_i64().unwrap();
    app.close_order(id, &app.user(cid)).await.expect(200);
    let s = settle(&app).await;
    assert_eq!(s["settled"], 4);
    assert_eq!(s["amount"], "1.1"); // 0.4 + 0.1 + 0.48 + 0.12
    assert_eq!(app.balance(bid, "live").await, "10.88");
    assert_eq!(app.balance(aid, "live").await, "10.22");
    assert!(
        app.journal_kinds(bid, "live")
            .await
            .ends_with(&["referral_commission".to_owned()])
    );
    let sb = stats(&app, bid).await;
    assert_eq!(
        (&sb["commission_paid"], &sb["commission_pending"]),
        (&json!("0.88"), &json!("0"))
    );
    assert_eq!(sb["by_level"][0]["commission_paid"], "0.88");
    // settling again pays nothing
    let s = settle(&app).await;
    assert_eq!((&s["settled"], &s["amount"]), (&json!(0), &json!("0")));
    assert_eq!(app.balance(bid, "live").await, "10.88");
    app.assert_books_balance_and_stop().await;
}

async fn referral_routes_check_roles_and_input(engine: Engine) {
    let app = spawn(engine, "0").await;
    let u = app.create_user("r@x.io").await;
    let other = app.create_user("o@x.io").await;
    let path = format!("/api/v1/users/{u}/referrals");
    app.get(&path, Some(&app.user(other)))
        .await
        .problem(403, "forbidden");
    app.get_ok(&path, &app.service()).await;
    let s = app.get_ok(&path, &app.admin()).await;
    assert_eq!(s.body["referees"], 0);
    assert_eq!(s.body["by_level"].as_array().unwrap().len(), 2);
    app.get("/api/v1/users/777777/referrals", Some(&app.admin()))
        .await
        .problem(404, "not_found");
    app.post_new(SETTLE, &app.user(u), json!({}))
        .await
        .problem(403, "forbidden");
    app.post(SETTLE, &app.service(), None, json!({}))
        .await
        .problem(400, "idempotency_key_missing");
    app.post_new(SETTLE, &app.admin(), json!({"all": true}))
        .await
        .problem(400, "invalid_request");
    let key = fresh_key();
    let first = app.post(SETTLE, &app.admin(), Some(&key), json!({})).await;
    first.expect(200);
    let again = app.post(SETTLE, &app.admin(), Some(&key), json!({})).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.text, first.text);
    app.stop().await;
}

async fn the_settlement_job_credits_pending_commissions(engine: Engine) {
    let app = TestApp::spawn_with(engine, |c| {
        c.referrals.settle_interval = Duration::from_millis(100)
    })
    .await;
    let [aid, bid] = chain(&app, ["job-a@x.io", "job-b@x.io"]).await;
    app.deposit(bid, "200", "live").await.expect(200);
    app.set_price("BTCUSD", "100").await.expect(200);
    // fee 0.1: a earns 0.02
    app.opened(bid, ("BTCUSD", "buy", "1", 1, "live")).await;
    let mut settled = false;
    for _ in 0..100 {
        if app.balance(aid, "live").await == "10.02" {
            settled = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(settled, "the job did not settle the commission");
    assert_eq!(stats(&app, aid).await["commission_pending"], "0");
    app.assert_books_balance_and_stop().await;
}

/// A user is never its own upline: the database refuses a self-referral,
/// the API never changes a referrer, and even a cycle forced in by hand is
/// not followed past the trader itself.
async fn a_user_is_never_its_own_upline(engine: Engine) {
    let app = TestApp::spawn_with(engine, |c| {
        c.referrals.settle_interval = Duration::ZERO;
        c.referrals.commission_rates = vec![dec("0.2"), dec("0.1"), dec("0.05")];
    })
    .await;
    let [aid, bid, cid] = chain(&app, ["cy-a@x.io", "cy-b@x.io", "cy-c@x.io"]).await;
    let db = &app.state.ledger.db.conn;
    let own = db
        .execute_unprepared(&format!(
            "UPDATE users SET referrer_id = {aid} WHERE id = {aid}"
        ))
        .await;
    assert!(own.is_err(), "a self-referral must be refused");
    // force a -> c, closing the loop a <- b <- c <- a
    db.execute_unprepared(&format!(
        "UPDATE users SET referrer_id = {cid} WHERE id = {aid}"
    ))
    .await
    .unwrap();
    app.deposit(cid, "1000", "live").await.expect(200);
    app.set_price("BTCUSD", "1000").await.expect(200);
    // fee 1: level 1 (b) 0.2, level 2 (a) 0.1; level 3 would be c itself
    app.opened(cid, ("BTCUSD", "buy", "1", 10, "live")).await;
    assert_eq!(stats(&app, bid).await["commission_pending"], "0.2");
    assert_eq!(stats(&app, aid).await["commission_pending"], "0.1");
    assert_eq!(stats(&app, cid).await["commission_pending"], "0");
    app.stop().await;
}

both_engines!(
    a_user_is_never_its_own_upline,
    signup_bonuses_are_paid_once_to_live_wallets,
    commissions_accrue_on_fees_and_settle_once,
    referral_routes_check_roles_and_input,
    the_settlement_job_credits_pending_commissions,
);
