//! Contract of the Prices and Orders routes: statuses, codes, bodies, roles,
//! validation, and the journal each order leaves.

use std::time::Duration;

use serde_json::{Value, json};
use tests::{Engine, Reply, TestApp, both_engines, dec, dec_of, fresh_key};

const ORDERS: &str = "/api/v1/orders";

fn order_body(u: i64, symbol: &str, quantity: &str, leverage: u32) -> Value {
    json!({"user_id": u, "symbol": symbol, "side": "buy", "quantity": quantity,
           "leverage": leverage, "wallet": "live"})
}

/// POSTs the order `body` as user `u` under the client key `key`.
async fn order_with_key(app: &TestApp, u: i64, key: &str, body: Value) -> Reply {
    app.post(ORDERS, &app.user(u), Some(key), body).await
}

async fn prices_contract(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let r = app.set_price("BTCUSD", "50000.5").await;
    r.expect(200);
    assert_eq!(
        (r.body["symbol"].as_str(), r.body["price"].as_str()),
        (Some("BTCUSD"), Some("50000.5"))
    );
    assert!(r.body["updated_at"].as_str().unwrap().ends_with('Z'));
    // any authenticated role reads it
    let u = app.create_user("p@x.io").await;
    let r = app.get_ok("/api/v1/prices/BTCUSD", &app.user(u)).await;
    assert_eq!(r.body["price"], "50000.5");
    // a new price replaces the old one
    app.set_price("BTCUSD", "49000").await.expect(200);
    let r = app.get("/api/v1/prices/BTCUSD", Some(&app.admin())).await;
    assert_eq!(r.body["price"], "49000");
    // unknown symbol
    app.get("/api/v1/prices/ETHUSD", Some(&app.user(u)))
        .await
        .problem(404, "not_found");
    // roles
    app.put("/api/v1/prices/BTCUSD", &app.user(u), json!({"price": "1"}))
        .await
        .problem(403, "forbidden");
    app.put("/api/v1/prices/BTCUSD", &app.admin(), json!({"price": "2"}))
        .await
        .expect(200);
    app.get("/api/v1/prices/BTCUSD", None)
        .await
        .problem(401, "unauthorized");
    // validation: symbol pattern, positive decimal strings, no unknown fields
    for (symbol, body) in [
        ("btcusd", json!({"price": "1"})),
        ("B", json!({"price": "1"})),
        ("BTC-USD", json!({"price": "1"})),
        ("BTCUSD", json!({"price": "0"})),
        ("BTCUSD", json!({"price": "-1"})),
        ("BTCUSD", json!({"price": 100})),
        ("BTCUSD", json!({"price": "1.000000001"})),
        ("BTCUSD", json!({"price": "1", "extra": true})),
        ("BTCUSD", json!({})),
    ] {
        app.put(&format!("/api/v1/prices/{symbol}"), &app.service(), body)
            .await
            .problem(400, "invalid_request");
    }
    app.get("/api/v1/prices/btc", Some(&app.admin()))
        .await
        .problem(400, "invalid_request");
    let r = app.get("/api/v1/prices/BTCUSD", Some(&app.admin())).await;
    assert_eq!(r.body["price"], "2");
    app.stop().await;
}

async fn open_order_contract(engine: Engine) {
    let (app, u) = TestApp::with_trader(engine, "o@x.io", "1000", ("BTCUSD", "100")).await;
    let r = app.open_order(u, ("BTCUSD", "buy", "2", 10, "live")).await;
    r.expect(201);
    let o = &r.body;
    assert!(o["id"].as_i64().unwrap() > 0);
    assert_eq!(o["user_id"], u);
    for (field, value) in [
        ("wallet", "live"),
        ("symbol", "BTCUSD"),
        ("side", "buy"),
        ("quantity", "2"),
        ("status", "open"),
        ("open_price", "100"),
        ("margin", "20"),    // 2 * 100 / 10
        ("open_fee", "0.2"), // 2 * 100 * 0.001
    ] {
        assert_eq!(o[field], value, "{field}: {o}");
    }
    assert_eq!(o["leverage"], 10);
    for field in [
        "close_price",
        "close_fee",
        "pnl",
        "written_off",
        "closed_at",
    ] {
        assert!(o[field].is_null(), "{field}: {o}");
    }
    assert!(o["opened_at"].as_str().unwrap().ends_with('Z'));
    let w = app.wallet(u, "live").await;
    assert_eq!(
        (&w["balance"], &w["margin"], &w["free_margin"]),
        (&json!("999.8"), &json!("20"), &json!("979.8"))
    );
    assert_eq!(
        app.journal_kinds(u, "live").await,
        ["deposit", "margin_hold", "order_open_fee"]
    );
    // the demo wallet trades too
    app.opened(u, ("BTCUSD", "sell", "1", 1, "demo")).await;
    assert_eq!(app.wallet(u, "demo").await["margin"], "100");
    // an admin may open for a user; a service may not; nor another user
    let body = order_body(u, "BTCUSD", "1", 5);
    app.post_new(ORDERS, &app.admin(), body.clone())
        .await
        .expect(201);
    app.post_new(ORDERS, &app.service(), body.clone())
        .await
        .problem(403, "forbidden");
    let other = app.create_user("other@x.io").await;
    app.post_new(ORDERS, &app.user(other), body.clone())
        .await
        .problem(403, "forbidden");
    app.post(ORDERS, &app.user(u), None, body.clone())
        .await
        .problem(400, "idempotency_key_missing");
    // unknown user
    app.post_new(ORDERS, &app.admin(), order_body(999_999, "BTCUSD", "1", 5))
        .await
        .problem(404, "not_found");
    // a replay answers the same body and changes nothing
    let key = fresh_key();
    let first = order_with_key(&app, u, &key, order_body(u, "BTCUSD", "0.5", 2)).await;
    first.expect(201);
    let before = app.wallet(u, "live").await;
    let again = order_with_key(&app, u, &key, order_body(u, "BTCUSD", "0.5", 2)).await;
    again.expect(201);
    assert_eq!(again.text, first.text);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(app.wallet(u, "live").await, before);
    app.assert_books_balance_and_stop().await;
}

async fn order_refusals_change_nothing(engine: Engine) {
    let (app, u) = TestApp::with_trader(engine, "r@x.io", "10", ("BTCUSD", "100")).await;
    let before = app.wallet(u, "live").await;
    // no price for the symbol
    let r = app.open_order(u, ("ETHUSD", "buy", "1", 1, "live")).await;
    r.problem(422, "no_price");
    // margin 10 + fee 0.1 > free 10
    let r = app.open_order(u, ("BTCUSD", "buy", "1", 10, "live")).await;
    r.problem(422, "insufficient_margin");
    assert_eq!(
        r.body["detail"],
        "free margin 10 < required 10.1 (margin plus open fee)"
    );
    // schema, range and format violations
    for body in [
        order_body(u, "BTCUSD", "1", 0),
        order_body(u, "BTCUSD", "1", 101),
        order_body(u, "BTCUSD", "0", 1),
        order_body(u, "BTCUSD", "-1", 1),
        order_body(u, "BTCUSD", "0.000000001", 1),
        order_body(u, "btcusd", "1", 1),
        order_body(u, "B", "1", 1),
        json!({"user_id": u, "symbol": "BTCUSD", "side": "hold", "quantity": "1", "leverage": 1, "wallet": "live"}),
        json!({"user_id": u, "symbol": "BTCUSD", "side": "buy", "quantity": 1, "leverage": 1, "wallet": "live"}),
        json!({"user_id": u, "symbol": "BTCUSD", "side": "buy", "quantity": "1", "leverage": 1, "wallet": "gold"}),
        json!({"user_id": u, "symbol": "BTCUSD", "side": "buy", "quantity": "1", "leverage": 1, "wallet": "live", "price": "1"}),
        json!({"user_id": u, "symbol": "BTCUSD", "side": "buy", "leverage": 1, "wallet": "live"}),
    ] {
        app.post_new(ORDERS, &app.user(u), body)
            .await
            .problem(400, "invalid_request");
    }
    assert_eq!(app.wallet(u, "live").await, before);
    let list = app
        .get(&format!("/api/v1/users/{u}/orders"), Some(&app.user(u)))
        .await;
    assert_eq!(list.body["items"], json!([]));
    app.assert_books_balance_and_stop().await;
}

/// An order below the minimum notional value, or whose margin or fee would
/// round to zero, would hold nothing and pay nothing and could only win: it is
/// refused before it touches the wallet, and the refusal is the final answer
/// for its key.
async fn orders_below_the_minimum_notional_change_nothing(engine: Engine) {
    let app = TestApp::spawn_with(engine, |c| c.trading.min_notional = dec("1")).await;
    let u = app.trader("tiny@x.io", "100", ("BTCUSD", "50")).await;
    let before = app.wallet(u, "live").await;
    let journal_before = app.journal_kinds(u, "live").await;
    // margin 0.000000005 and fee 0.0000000005 would both round to 0
    let key = fresh_key();
    let tiny = order_body(u, "BTCUSD", "0.00000001", 100);
    let r = order_with_key(&app, u, &key, tiny.clone()).await;
    r.problem(422, "notional_too_small");
    assert_eq!(
        r.body["detail"],
        "order value (quantity × price) 0.0000005 is too small: the minimum is 1, \
         and its margin and fee must not round to zero"
    );
    let replay = order_with_key(&app, u, &key, tiny).await;
    replay.problem(422, "notional_too_small");
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    // just below the minimum: 0.0199 * 50 = 0.995, although margin and fee
    // would not round to zero
    let r = app
        .open_order(u, ("BTCUSD", "buy", "0.0199", 1, "live"))
        .await;
    r.problem(422, "notional_too_small");
    assert!(
        r.body["detail"].as_str().unwrap().contains(" 0.995 "),
        "{}",
        r.text
    );
    // nothing changed: balance, margin, no order, no journal entry
    assert_eq!(app.wallet(u, "live").await, before);
    assert_eq!(app.journal_kinds(u, "live").await, journal_before);
    let list = app
        .get(&format!("/api/v1/users/{u}/orders"), Some(&app.user(u)))
        .await;
    assert_eq!(list.body["items"], json!([]));
    // at the minimum the order opens
    let r = app
        .open_order(u, ("BTCUSD", "buy", "0.02", 1, "live"))
        .await;
    r.expect(201);
    assert_eq!(
        (&r.body["margin"], &r.body["open_fee"]),
        (&json!("1"), &json!("0.001"))
    );
    app.assert_books_balance_and_stop().await;
}

async fn max_leverage_is_configurable(engine: Engine) {
    let app = TestApp::spawn_with(engine, |c| c.trading.max_leverage = 20).await;
    let u = app.trader("lev@x.io", "100", ("BTCUSD", "10")).await;
    app.open_order(u, ("BTCUSD", "buy", "1", 21, "live"))
        .await
        .problem(400, "invalid_request");
    let r = app.open_order(u, ("BTCUSD", "buy", "1", 20, "live")).await;
    r.expect(201);
    assert_eq!(r.body["margin"], "0.5");
    app.stop().await;
}

async fn close_order_contract(engine: Engine) {
    let (app, u) = TestApp::with_trader(engine, "c@x.io", "1000", ("BTCUSD", "100")).await;
    let id = app.opened(u, ("BTCUSD", "buy", "2", 10, "live")).await;
    app.set_price("BTCUSD", "110").await.expect(200);
    // to another user it does not exist; a missing key is refused
    let other = app.create_user("other@x.io").await;
    app.close_order(id, &app.user(other))
        .await
        .problem(404, "not_found");
    app.post(
        &format!("{ORDERS}/{id}/close"),
        &app.user(u),
        None,
        json!({}),
    )
    .await
    .problem(400, "idempotency_key_missing");
    app.post_new(
        &format!("{ORDERS}/{id}/close"),
        &app.user(u),
        json!({"price": "200"}),
    )
    .await
    .problem(400, "invalid_request");
    let r = app.close_order(id, &app.user(u)).await;
    r.expect(200);
    let o = &r.body;
    for (field, value) in [
        ("status", "closed"),
        ("close_price", "110"),
        ("pnl", "20"),         // (110 - 100) * 2
        ("close_fee", "0.22"), // 2 * 110 * 0.001
        ("written_off", "0"),
        ("margin", "20"),
    ] {
        assert_eq!(o[field], value, "{field}: {o}");
    }
    assert!(o["closed_at"].as_str().unwrap().ends_with('Z'));
    let w = app.wallet(u, "live").await;
    // 1000 - 0.2 + 20 - 0.22
    assert_eq!(
        (&w["balance"], &w["margin"], &w["profit"]),
        (&json!("1019.58"), &json!("0"), &json!("20"))
    );
    assert_eq!(
        app.journal_kinds(u, "live").await,
        [
            "deposit",
            "margin_hold",
            "order_open_fee",
            "margin_release",
            "pnl",
            "close_fee"
        ]
    );
    // closing again: 409, nothing changes
    app.close_order(id, &app.user(u))
        .await
        .problem(409, "order_not_open");
    assert_eq!(app.wallet(u, "live").await, w);
    // unknown order
    app.close_order(424_242, &app.service())
        .await
        .problem(404, "not_found");
    // a sell that loses, closed by a service
    let id = app.opened(u, ("BTCUSD", "sell", "1", 2, "live")).await;
    app.set_price("BTCUSD", "120.5").await.expect(200);
    let r = app.close_order(id, &app.service()).await;
    r.expect(200);
    assert_eq!(r.body["pnl"], "-10.5"); // (110 - 120.5) * 1
    assert_eq!(r.body["close_fee"], "0.1205");
    let w = app.wallet(u, "live").await;
    // 1019.58 - 0.11 (open fee) - 10.5 - 0.1205
    assert_eq!(w["balance"], "1008.8495");
    assert_eq!(w["profit"], "9.5");
    app.assert_books_balance_and_stop().await;
}

async fn a_loss_beyond_the_balance_is_written_off(engine: Engine) {
    let (app, u) = TestApp::with_trader(engine, "wo@x.io", "10", ("BTCUSD", "100")).await;
    // margin 1, fee 0.1: balance 9.9
    let id = app.opened(u, ("BTCUSD", "buy", "1", 100, "live")).await;
    app.set_price("BTCUSD", "50").await.expect(200);
    let r = app.close_order(id, &app.user(u)).await;
    r.expect(200);
    // loss 50 + close fee 0.05 against a free balance of 9.9
    assert_eq!(r.body["pnl"], "-50");
    assert_eq!(r.body["close_fee"], "0.05");
    assert_eq!(r.body["written_off"], "40.15");
    let w = app.wallet(u, "live").await;
    assert_eq!(
        (&w["balance"], &w["margin"], &w["profit"]),
        (&json!("0"), &json!("0"), &json!("-50"))
    );
    let kinds = app.journal_kinds(u, "live").await;
    assert_eq!(
        kinds,
        [
            "deposit",
            "margin_hold",
            "order_open_fee",
            "margin_release",
            "loss_write_off",
            "pnl",
            "close_fee"
        ]
    );
    // every entry's values after are valid on their own
    let j = app
        .get(
            &format!("/api/v1/users/{u}/transactions?wallet=live"),
            Some(&app.admin()),
        )
        .await;
    for e in j.body["items"].as_array().unwrap() {
        assert!(
            dec_of(&e["balance_after"]) >= dec_of(&e["margin_after"]),
            "{e}"
        );
    }
    app.assert_books_balance_and_stop().await;
}

async fn order_reads(engine: Engine) {
    let (app, u) = TestApp::with_funded_user(engine, "reads@x.io", "1000").await;
    let other = app.create_user("nosy@x.io").await;
    app.set_price("BTCUSD", "10").await.expect(200);
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.opened(u, ("BTCUSD", "buy", "1", 1, "live")).await);
    }
    app.close_order(ids[1], &app.user(u)).await.expect(200);
    app.close_order(ids[3], &app.user(u)).await.expect(200);
    // one order: owner, service, admin; to another user it does not exist
    let path = format!("{ORDERS}/{}", ids[1]);
    let r = app.get_ok(&path, &app.user(u)).await;
    assert_eq!(
        (r.body["id"].as_i64(), r.body["status"].as_str()),
        (Some(ids[1]), Some("closed"))
    );
    app.get_ok(&path, &app.service()).await;
    app.get_ok(&path, &app.admin()).await;
    app.get(&path, Some(&app.user(other)))
        .await
        .problem(404, "not_found");
    app.get(&format!("{ORDERS}/987654"), Some(&app.admin()))
        .await
        .problem(404, "not_found");
    // the list: newest first, filtered, paginated
    let list = |query: String| {
        let app = &app;
        async move {
            app.get(
                &format!("/api/v1/users/{u}/orders{query}"),
                Some(&app.user(u)),
            )
            .await
        }
    };
    let ids_of = |r: &tests::Reply| -> Vec<i64> {
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_i64().unwrap())
            .collect()
    };
    let all = list(String::new()).await;
    all.expect(200);
    assert_eq!(ids_of(&all), ids.iter().rev().copied().collect::<Vec<_>>());
    assert!(all.body["next_before_id"].is_null());
    let closed = list("?status=closed".into()).await;
    assert_eq!(ids_of(&closed), vec![ids[3], ids[1]]);
    let open = list("?status=open".into()).await;
    assert_eq!(ids_of(&open), vec![ids[4], ids[2], ids[0]]);
    let page = list("?limit=2".into()).await;
    assert_eq!(ids_of(&page), vec![ids[4], ids[3]]);
    let cursor = page.body["next_before_id"].as_i64().unwrap();
    let next = list(format!("?limit=2&before_id={cursor}")).await;
    assert_eq!(ids_of(&next), vec![ids[2], ids[1]]);
    list("?limit=0".into())
        .await
        .problem(400, "invalid_request");
    list("?limit=501".into())
        .await
        .problem(400, "invalid_request");
    list("?status=pending".into())
        .await
        .problem(400, "invalid_request");
    app.get(&format!("/api/v1/users/{u}/orders"), Some(&app.user(other)))
        .await
        .problem(403, "forbidden");
    app.get_ok(&format!("/api/v1/users/{u}/orders"), &app.service())
        .await;
    app.get("/api/v1/users/555555/orders", Some(&app.admin()))
        .await
        .problem(404, "not_found");
    app.stop().await;
}

/// An app whose trading cooldown is `ms` milliseconds.
async fn with_cooldown(engine: Engine, ms: u64) -> TestApp {
    TestApp::spawn_with(engine, |c| c.trading.cooldown = Duration::from_millis(ms)).await
}

async fn cooldown_refuses_a_second_order_on_the_symbol(engine: Engine) {
    let app = with_cooldown(engine, 60_000).await;
    let u = app.trader("cool@x.io", "1000", ("BTCUSD", "10")).await;
    app.set_price("ETHUSD", "10").await.expect(200);
    app.opened(u, ("BTCUSD", "buy", "1", 1, "live")).await;
    let before = app.wallet(u, "live").await;
    let key = fresh_key();
    let body = order_body(u, "BTCUSD", "1", 1);
    let r = order_with_key(&app, u, &key, body.clone()).await;
    r.problem(429, "cooldown_active");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // not stored under the key: the same key is refused again, not replayed
    let again = order_with_key(&app, u, &key, body).await;
    again.problem(429, "cooldown_active");
    assert!(again.header("idempotent-replayed").is_none());
    assert_eq!(app.wallet(u, "live").await, before);
    // another symbol, or another user, is not held back
    app.opened(u, ("ETHUSD", "buy", "1", 1, "live")).await;
    let v = app.funded_user("warm@x.io", "1000").await;
    app.opened(v, ("BTCUSD", "buy", "1", 1, "live")).await;
    // a refused order does not start a cooldown
    let poor = app.funded_user("poor@x.io", "1").await;
    app.open_order(poor, ("BTCUSD", "buy", "1", 1, "live"))
        .await
        .problem(422, "insufficient_margin");
    app.opened(poor, ("BTCUSD", "buy", "0.01", 1, "live")).await;
    app.stop().await;
}

async fn cooldown_passes_after_the_window(engine: Engine) {
    let app = with_cooldown(engine, 2_000).await;
    let u = app.trader("later@x.io", "100", ("BTCUSD", "10")).await;
    app.opened(u, ("BTCUSD", "buy", "1", 1, "live")).await;
    app.open_order(u, ("BTCUSD", "buy", "1", 1, "live"))
        .await
        .problem(429, "cooldown_active");
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    app.opened(u, ("BTCUSD", "buy", "1", 1, "live")).await;
    app.stop().await;
}

/// A user cannot tell another user's order from one that does not exist:
/// reading or closing either answers the same 404, and the order is
/// untouched; the back office keeps its access.
async fn other_users_orders_look_unknown(engine: Engine) {
    let (app, owner) = TestApp::with_funded_user(engine, "owner@x.io", "1000").await;
    let nosy = app.trader("nosy@x.io", "1000", ("BTCUSD", "100")).await;
    let id = app.opened(owner, ("BTCUSD", "buy", "1", 10, "live")).await;
    let unknown = id + 1_000;
    let before = app.wallet(owner, "live").await;
    app.assert_get_looks_alike(
        &format!("{ORDERS}/{id}"),
        &format!("{ORDERS}/{unknown}"),
        &app.user(nosy),
    )
    .await;
    let theirs = app.close_order(id, &app.user(nosy)).await;
    let missing = app.close_order(unknown, &app.user(nosy)).await;
    tests::assert_look_alike(&theirs, &missing);
    // nothing happened to the order or its wallet
    let r = app
        .get_ok(&format!("{ORDERS}/{id}"), &app.user(owner))
        .await;
    assert_eq!(r.body["status"], "open");
    assert_eq!(app.wallet(owner, "live").await, before);
    // service and admin read it, and a service may close it
    app.get_ok(&format!("{ORDERS}/{id}"), &app.admin()).await;
    let r = app.close_order(id, &app.service()).await;
    r.expect(200);
    assert_eq!(r.body["status"], "closed");
    app.assert_books_balance_and_stop().await;
}

both_engines!(
    other_users_orders_look_unknown,
    prices_contract,
    open_order_contract,
    order_refusals_change_nothing,
    orders_below_the_minimum_notional_change_nothing,
    max_leverage_is_configurable,
    close_order_contract,
    a_loss_beyond_the_balance_is_written_off,
    order_reads,
    cooldown_refuses_a_second_order_on_the_symbol,
    cooldown_passes_after_the_window,
);
