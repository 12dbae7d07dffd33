//! Money writes behind locks: the `Lock-Token` fence on withdraw, transfer
//! and orders, and orders run under a signal's lock. Each test states its
//! invariant.

use std::time::Duration;

use futures::future::join_all;
use serde_json::{Value, json};
use tests::{Engine, Reply, TestApp, both_engines, fresh_key, live, time, until};

const LOCKS: &str = "/api/v1/locks";
const WITHDRAW: &str = "/api/v1/wallets/withdraw";
const ORDERS: &str = "/api/v1/orders";

async fn acquire(app: &TestApp, token: &str, body: Value) -> Reply {
    app.post_new(LOCKS, token, body).await
}

/// Takes `resource` by hand, as another request holding the signal's lock
/// would; it must be granted at once. Returns the lock's id.
async fn hold(app: &TestApp, token: &str, resource: &str) -> String {
    let held = acquire(
        app,
        token,
        json!({"resources": [resource], "transaction_type": "manual"}),
    )
    .await;
    held.expect(201);
    held.body["lock_id"].as_str().unwrap().to_owned()
}

/// A POST with a `Lock-Token` header.
async fn fenced(app: &TestApp, path: &str, token: &str, lock_token: &str, body: Value) -> Reply {
    let req = app
        .client
        .post(format!("{}{path}", app.base))
        .bearer_auth(token)
        .header("Idempotency-Key", fresh_key())
        .header("Lock-Token", lock_token)
        .json(&body);
    app.send(req).await
}

fn lock_token(lock: &Value) -> String {
    format!(
        "{}:{}",
        lock["lock_id"].as_str().unwrap(),
        lock["fencing_token"].as_i64().unwrap()
    )
}

/// Invariant: a write behind a `Lock-Token` runs only while that lock is
/// active, the caller's, and holds that token. A stale holder — its lease
/// expired and the resource granted again — is refused 409 `lock_lost` and
/// the money does not move; the new holder's write runs.
async fn a_stale_holder_cannot_write(engine: Engine) {
    let (app, u) = TestApp::with_funded_user(engine, "fence@x.io", "100").await;
    let user = app.user(u);
    let resource = format!("wallet:{u}");
    let held = acquire(
        &app,
        &user,
        json!({"resources": [resource], "ttl_ms": 3000, "transaction_type": "withdrawal"}),
    )
    .await;
    held.expect(201);
    let stale = lock_token(&held.body);
    let body = live(u, "10");
    fenced(&app, WITHDRAW, &user, &stale, body.clone())
        .await
        .expect(200);
    assert_eq!(app.balance(u, "live").await, "90");

    until(time(&held.body["expires_at"]) + chrono::Duration::milliseconds(300)).await;
    // expired: refused even before anyone else holds the resource
    fenced(&app, WITHDRAW, &user, &stale, body.clone())
        .await
        .problem(409, "lock_lost");
    let service = app.service();
    let next = acquire(
        &app,
        &service,
        json!({"resources": [resource], "ttl_ms": 30000, "transaction_type": "payout", "owner_id": format!("user:{u}")}),
    )
    .await;
    next.expect(201);
    assert!(next.body["fencing_token"].as_i64() > held.body["fencing_token"].as_i64());
    fenced(&app, WITHDRAW, &user, &stale, body.clone())
        .await
        .problem(409, "lock_lost");
    assert_eq!(
        app.balance(u, "live").await,
        "90",
        "a stale write moved money"
    );
    // the current holder writes
    fenced(&app, WITHDRAW, &user, &lock_token(&next.body), body.clone())
        .await
        .expect(200);
    assert_eq!(app.balance(u, "live").await, "80");
    // another user's token is not this user's
    let other = app.funded_user("other-fence@x.io", "100").await;
    let theirs = acquire(
        &app,
        &app.user(other),
        json!({"resources": [format!("wallet:{other}")], "transaction_type": "withdrawal"}),
    )
    .await;
    fenced(
        &app,
        WITHDRAW,
        &user,
        &lock_token(&theirs.body),
        body.clone(),
    )
    .await
    .problem(409, "lock_lost");
    // a malformed token is a 400, and changes nothing
    fenced(&app, WITHDRAW, &user, "not-a-token", body)
        .await
        .problem(400, "invalid_request");
    assert_eq!(app.balance(u, "live").await, "80");
    app.assert_books_balance_and_stop().await;
}

fn order(u: i64, signal: Option<&str>, wait: Option<&str>) -> Value {
    let mut o = json!({
        "user_id": u, "symbol": "SIGUSD", "side": "buy", "quantity": "1",
        "leverage": 10, "wallet": "live",
    });
    if let Some(s) = signal {
        o["signal_id"] = json!(s);
    }
    if let Some(w) = wait {
        o["wait"] = json!(w);
    }
    o
}

async fn orders_of(app: &TestApp, u: i64) -> Vec<Value> {
    app.get(&format!("/api/v1/users/{u}/orders"), Some(&app.admin()))
        .await
        .body["items"]
        .as_array()
        .unwrap()
        .clone()
}

/// SIGUSD priced at 100 and a user funded with 1000 to trade it: the
/// user's id and token.
async fn signal_trader(app: &TestApp, email: &str) -> (i64, String) {
    app.set_price("SIGUSD", "100").await.expect(200);
    let u = app.funded_user(email, "1000").await;
    (u, app.user(u))
}

/// Invariant: one signal is one trade. The same signal again — any
/// Idempotency-Key — answers the first order (200, `"deduplicated": true`);
/// while the signal's lock is busy a request fails 409 `resource_locked` or,
/// with `"wait": "queue"`, is queued (202) and executed by the server when
/// granted, the lock's result being the order.
async fn a_signal_trades_once(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (u, user) = signal_trader(&app, "signal@x.io").await;
    let first = app
        .post_new(ORDERS, &user, order(u, Some("snipe-1"), None))
        .await;
    first.expect(201);
    let again = app
        .post_new(ORDERS, &user, order(u, Some("snipe-1"), None))
        .await;
    again.expect(200);
    assert_eq!(again.body["deduplicated"], true);
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(orders_of(&app, u).await.len(), 1);
    // the trade's lock is the execution record, its result the order
    let history = app
        .get_ok(
            &format!("{LOCKS}/resources/trade:{u}:SIGUSD:buy:snipe-1"),
            &app.admin(),
        )
        .await;
    let record = &history.body["history"][0];
    assert_eq!(record["transaction_type"], "open_order");
    assert_eq!(record["priority"], 5);
    assert_eq!(record["result"]["id"], first.body["id"]);

    // the signal's lock held elsewhere: fail, or queue and run when granted
    let resource = format!("trade:{u}:SIGUSD:buy:snipe-2");
    let holder = hold(&app, &user, &resource).await;
    app.post_new(ORDERS, &user, order(u, Some("snipe-2"), None))
        .await
        .problem(409, "resource_locked");
    let queued = app
        .post_new(ORDERS, &user, order(u, Some("snipe-2"), Some("queue")))
        .await;
    queued.expect(202);
    let queue_id = queued.body["queue_id"].as_i64().unwrap();
    assert_eq!(orders_of(&app, u).await.len(), 1, "ran before its grant");
    app.release_lock(&user, &holder).await.expect(200);
    let item = app
        .get_ok(&format!("{LOCKS}/queue/{queue_id}?wait_ms=5000"), &user)
        .await;
    assert_eq!(item.body["status"], "granted");
    let lock_id = item.body["lock"]["lock_id"].as_str().unwrap().to_owned();
    let mut result = Value::Null;
    for _ in 0..50 {
        let lock = app.get(&format!("{LOCKS}/{lock_id}"), Some(&user)).await;
        if lock.body["status"] != "active" {
            result = lock.body["result"].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        result["status"], "open",
        "the queued order's result: {result}"
    );
    let orders = orders_of(&app, u).await;
    assert_eq!(orders.len(), 2);
    assert!(orders.iter().any(|o| o["id"] == result["id"]));

    // closing on a signal: the opposite side, priority 1
    let id = first.body["id"].as_i64().unwrap();
    let close = app
        .post_new(
            &format!("{ORDERS}/{id}/close"),
            &user,
            json!({"signal_id": "exit-1"}),
        )
        .await;
    close.expect(200);
    assert_eq!(close.body["status"], "closed");
    let exit = app
        .get(
            &format!("{LOCKS}/resources/trade:{u}:SIGUSD:sell:exit-1"),
            Some(&app.admin()),
        )
        .await;
    assert_eq!(exit.body["history"][0]["priority"], 1);
    // `wait` without a signal, or a signal with a Lock-Token, is refused
    app.post_new(ORDERS, &user, order(u, None, Some("queue")))
        .await
        .problem(400, "invalid_request");
    app.assert_books_balance_and_stop().await;
}

/// Sends `body` to `ORDERS` twice under one fresh key: the first answer is
/// `status`, the second replays it byte for byte. The key and the first
/// answer.
async fn sent_twice(app: &TestApp, token: &str, body: Value, status: u16) -> (String, Reply) {
    let key = fresh_key();
    let first = app.post(ORDERS, token, Some(&key), body.clone()).await;
    first.expect(status);
    let again = app.post(ORDERS, token, Some(&key), body).await;
    assert_eq!((again.status, &again.text), (status, &first.text));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    (key, first)
}

/// Invariant: an order on a signal keeps the Idempotency-Key contract. The
/// same key and body replay the first answer exactly (`idempotent-replayed`),
/// whether it was an order, a deduplicated order or a queue item; the key
/// with another body is 422 `idempotency_key_reused` and trades nothing. An
/// admin acting for the user trades the user's signal: the first order.
async fn a_signal_order_keeps_its_idempotency_key(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (u, user) = signal_trader(&app, "signal-key@x.io").await;
    let (key, first) = sent_twice(&app, &user, order(u, Some("k-1"), None), 201).await;
    for other in [order(u, Some("k-2"), None), order(u, None, None)] {
        app.post(ORDERS, &user, Some(&key), other)
            .await
            .problem(422, "idempotency_key_reused");
    }
    assert_eq!(orders_of(&app, u).await.len(), 1);

    // another key on the same signal: the first order, and that answer is
    // the key's from then on; an admin for the user gets the same order
    let (_, dup) = sent_twice(&app, &user, order(u, Some("k-1"), None), 200).await;
    assert_eq!(dup.body["deduplicated"], true);
    assert_eq!(dup.body["id"], first.body["id"]);
    let by_admin = app
        .post_new(ORDERS, &app.admin(), order(u, Some("k-1"), None))
        .await;
    by_admin.expect(200);
    assert_eq!(by_admin.body["id"], first.body["id"]);

    // queued: the key answers the queue item again; the order runs once
    let holder = hold(&app, &user, &format!("trade:{u}:SIGUSD:buy:k-3")).await;
    let (_, queued) = sent_twice(&app, &user, order(u, Some("k-3"), Some("queue")), 202).await;
    app.release_lock(&user, &holder).await.expect(200);
    let queue_id = queued.body["queue_id"].as_i64().unwrap();
    let item = app
        .get_ok(&format!("{LOCKS}/queue/{queue_id}?wait_ms=5000"), &user)
        .await;
    assert_eq!(item.body["status"], "granted");
    let mut opened = 0;
    for _ in 0..50 {
        opened = orders_of(&app, u).await.len();
        if opened == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(opened, 2, "the queued order ran once");
    app.assert_books_balance_and_stop().await;
}

both_engines!(
    a_stale_holder_cannot_write,
    a_signal_trades_once,
    a_signal_order_keeps_its_idempotency_key
);

/// Invariant: two server instances, 20 racing orders on one signal with
/// different Idempotency-Keys — exactly one order opens; every other request
/// gets 409 `resource_locked`, 200 with the first order (`deduplicated`), or
/// 202 queued (whose execution, when granted, answers the same first order).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_bots_on_one_signal_open_one_order() {
    let (_several_servers, app, sibling) = tests::two_instances().await;
    let (u, user) = signal_trader(&app, "race-signal@x.io").await;
    let keys: Vec<String> = (0..20).map(|_| fresh_key()).collect();
    let replies = join_all(keys.iter().enumerate().map(|(i, key)| {
        let target = if i % 2 == 0 { &app } else { &sibling };
        let wait = (i % 4 == 3).then_some("queue");
        target.post(ORDERS, &user, Some(key), order(u, Some("one-signal"), wait))
    }))
    .await;
    let mut opened = 0;
    for r in &replies {
        match (r.status, r.code()) {
            (201, _) => opened += 1,
            (200, _) => assert_eq!(r.body["deduplicated"], true, "{}", r.text),
            (202, _) | (409, "resource_locked") => {}
            _ => panic!("unexpected answer: {} {}", r.status, r.text),
        }
    }
    assert_eq!(opened, 1, "orders opened by the race");
    // queued ones run when granted: still one order
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(orders_of(&app, u).await.len(), 1);
    app.assert_books_balance().await;
    sibling.stop().await;
    app.stop().await;
}

/// Invariant: many racers on one signal, on two instances, with `"wait":
/// "queue"` and without, while the signal's lock is free (the grant, the
/// order and the release commit together) or held by another request that
/// lets go halfway (the waiters are served through the queue): exactly one
/// order per signal, every answer one of the documented ones, every finished
/// lock on the signal answering that one order, and in the end no lock
/// active and nobody left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racers_on_a_free_or_busy_signal_trade_once() {
    let (_several_servers, app, sibling) = tests::two_instances().await;
    let (u, user) = signal_trader(&app, "race-queue@x.io").await;
    let rounds = 4;
    for round in 0..rounds {
        let signal = format!("race-{round}");
        let resource = format!("trade:{u}:SIGUSD:buy:{signal}");
        // every other round, the lock is held elsewhere when the race starts
        let holder = if round % 2 == 1 {
            Some(hold(&app, &user, &resource).await)
        } else {
            None
        };
        let racers = join_all((0..16).map(|i| {
            let target = if i % 2 == 0 { &app } else { &sibling };
            let wait = (i % 4 >= 2).then_some("queue");
            target.post_new(ORDERS, &user, order(u, Some(&signal), wait))
        }));
        let release = async {
            if let Some(lock_id) = &holder {
                tokio::time::sleep(Duration::from_millis(30)).await;
                app.release_lock(&user, lock_id).await.expect(200);
            }
        };
        let (replies, ()) = tokio::join!(racers, release);
        let opened = replies.iter().filter(|r| r.status == 201).count();
        for r in &replies {
            match (r.status, r.code()) {
                (201, _) => {}
                (200, _) => assert_eq!(r.body["deduplicated"], true, "{}", r.text),
                (202, _) | (409, "resource_locked") => {}
                _ => panic!("unexpected answer: {} {}", r.status, r.text),
            }
        }
        assert!(opened <= 1, "round {round}: {opened} orders answered 201");
        // the queued ones run when granted; then nothing is held or waiting
        let mut settled = Value::Null;
        for _ in 0..100 {
            let info = app
                .get_ok(&format!("{LOCKS}/resources/{resource}"), &app.admin())
                .await;
            if info.body["lock"].is_null() && info.body["queue"].as_array().unwrap().is_empty() {
                settled = info.body;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            !settled.is_null(),
            "round {round}: a lock or a waiter is left"
        );
        let answered: std::collections::BTreeSet<i64> = settled["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["transaction_type"] == "open_order")
            .map(|l| {
                assert_eq!(l["status"], "released", "{l}");
                l["result"]["id"]
                    .as_i64()
                    .unwrap_or_else(|| panic!("no order: {l}"))
            })
            .collect();
        assert_eq!(
            answered.len(),
            1,
            "round {round}: locks answered {answered:?}"
        );
    }
    assert_eq!(
        orders_of(&app, u).await.len(),
        rounds,
        "one order per signal"
    );
    app.assert_books_balance().await;
    sibling.stop().await;
    app.stop().await;
}
