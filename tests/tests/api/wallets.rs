use serde_json::json;
use tests::{Engine, TestApp, both_engines, fresh_key, live};

const DEPOSIT: &str = "/api/v1/wallets/deposit";
const WITHDRAW: &str = "/api/v1/wallets/withdraw";

/// Nothing moved: the user's live balance is `balance` and its live
/// journal holds `entries` entries.
async fn assert_live(app: &TestApp, u: i64, balance: &str, entries: usize) {
    assert_eq!(app.balance(u, "live").await, balance);
    let journal = app
        .get(
            &format!("/api/v1/users/{u}/transactions?wallet=live"),
            Some(&app.admin()),
        )
        .await;
    assert_eq!(journal.body["items"].as_array().unwrap().len(), entries);
}

async fn deposit_contract(engine: Engine) {
    let (app, u) = TestApp::with_user(engine, "d@x.io").await;
    let r = app
        .post_new(
            DEPOSIT,
            &app.service(),
            json!({"user_id": u, "amount": "100.5", "wallet": "live", "payment_method": "card", "reference": "psp-1"}),
        )
        .await;
    r.expect(200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    assert!(r.header("idempotent-replayed").is_none());
    let b = &r.body;
    assert_eq!(
        uuid::Uuid::parse_str(b["operation_id"].as_str().unwrap())
            .unwrap()
            .get_version_num(),
        4
    );
    assert_eq!(
        (
            b["user_id"].as_i64(),
            b["wallet"].as_str(),
            b["kind"].as_str()
        ),
        (Some(u), Some("live"), Some("deposit"))
    );
    assert_eq!(
        (
            b["amount"].as_str(),
            b["balance_before"].as_str(),
            b["balance_after"].as_str()
        ),
        (Some("100.5"), Some("0"), Some("100.5"))
    );
    assert!(b["created_at"].as_str().unwrap().ends_with('Z'));
    // into the demo wallet too
    let r = app.deposit(u, "5", "demo").await;
    r.expect(200);
    assert_eq!(r.body["balance_after"], "10005");
    // roles: a user may not credit itself; unknown user is 404
    app.post_new(DEPOSIT, &app.user(u), live(u, "1"))
        .await
        .problem(403, "forbidden");
    app.deposit(999_999, "1", "live")
        .await
        .problem(404, "not_found");
    assert_eq!(app.balance(u, "live").await, "100.5");
    app.assert_books_balance_and_stop().await;
}

async fn bad_amounts_are_refused_and_change_nothing(engine: Engine) {
    let (app, u) = TestApp::with_funded_user(engine, "v@x.io", "10").await;
    let token = app.service();
    let bodies = [
        format!(r#"{{"user_id":{u},"amount":"-1","wallet":"live"}}"#),
        format!(r#"{{"user_id":{u},"amount":"0","wallet":"live"}}"#),
        format!(r#"{{"user_id":{u},"amount":"0.000000001","wallet":"live"}}"#),
        format!(r#"{{"user_id":{u},"amount":10,"wallet":"live"}}"#),
        format!(r#"{{"user_id":{u},"amount":10.5,"wallet":"live"}}"#),
        format!(r#"{{"user_id":{u},"amount":"1e3","wallet":"live"}}"#),
        format!(r#"{{"user_id":{u},"amount":"92233720368.54775808","wallet":"live"}}"#),
        format!(r#"{{"user_id":{u},"amount":"abc","wallet":"live"}}"#),
        format!(r#"{{"user_id":{u},"amount":"1","wallet":"savings"}}"#),
        format!(r#"{{"user_id":{u},"amount":"1","wallet":"live","surprise":1}}"#),
        format!(r#"{{"user_id":{u},"wallet":"live"}}"#),
        format!(r#"{{"user_id":"{u}","amount":"1","wallet":"live"}}"#),
        "not json".to_string(),
    ];
    for body in &bodies {
        for path in [DEPOSIT, WITHDRAW] {
            let r = app
                .post_raw(path, Some(&token), Some(&fresh_key()), body)
                .await;
            r.problem(400, "invalid_request");
        }
    }
    // missing key
    app.post(DEPOSIT, &token, None, live(u, "1"))
        .await
        .problem(400, "idempotency_key_missing");
    // a key that is not printable ASCII
    app.post(DEPOSIT, &token, Some(&"k".repeat(256)), live(u, "1"))
        .await
        .problem(400, "invalid_request");
    assert_live(&app, u, "10", 1).await;
    app.stop().await;
}

async fn amounts_are_exact(engine: Engine) {
    let (app, u) = TestApp::with_user(engine, "e@x.io").await;
    for _ in 0..10 {
        app.deposit(u, "0.1", "live").await.expect(200);
    }
    assert_eq!(app.balance(u, "live").await, "1");
    let big = app.create_user("big@x.io").await;
    let r = app.deposit(big, "92233720368.54775807", "live").await;
    r.expect(200);
    assert_eq!(r.body["balance_after"], "92233720368.54775807");
    assert_eq!(app.balance(big, "live").await, "92233720368.54775807");
    // one more unit would overflow: refused, nothing changes
    app.deposit(big, "0.00000001", "live")
        .await
        .problem(422, "balance_limit_exceeded");
    assert_eq!(app.balance(big, "live").await, "92233720368.54775807");
    app.assert_books_balance_and_stop().await;
}

async fn withdraw_contract(engine: Engine) {
    let (app, u) = TestApp::with_funded_user(engine, "w@x.io", "10").await;
    let other = app.create_user("o@x.io").await;
    let r = app
        .post_new(
            WITHDRAW,
            &app.user(u),
            json!({"user_id": u, "amount": "3.25", "wallet": "live", "destination": "iban:DE00"}),
        )
        .await;
    r.expect(200);
    assert_eq!(
        (
            r.body["kind"].as_str(),
            r.body["balance_before"].as_str(),
            r.body["balance_after"].as_str()
        ),
        (Some("withdrawal"), Some("10"), Some("6.75"))
    );
    let r = app.withdraw(&app.user(u), u, "25", "live").await;
    r.problem(422, "insufficient_funds");
    assert_eq!(r.body["detail"], "free balance 6.75 < requested 25");
    // another user may not withdraw from u; service may
    app.withdraw(&app.user(other), u, "1", "live")
        .await
        .problem(403, "forbidden");
    app.withdraw(&app.service(), u, "6.75", "live")
        .await
        .expect(200);
    assert_eq!(app.balance(u, "live").await, "0");
    app.assert_books_balance_and_stop().await;
}

async fn transfer_contract(engine: Engine) {
    let (app, a) = TestApp::with_funded_user(engine, "a@x.io", "50").await;
    let b = app.create_user("b@x.io").await;
    let r = app.transfer(&app.user(a), (a, b), "20", "live").await;
    r.expect(200);
    let body = &r.body;
    assert_eq!(
        (body["wallet"].as_str(), body["amount"].as_str()),
        (Some("live"), Some("20"))
    );
    assert_eq!(
        body["from"],
        json!({"user_id": a, "balance_before": "50", "balance_after": "30"})
    );
    assert_eq!(
        body["to"],
        json!({"user_id": b, "balance_before": "0", "balance_after": "20"})
    );
    assert!(body["operation_id"].is_string() && body["created_at"].is_string());
    // refusals
    app.transfer(&app.user(a), (a, a), "1", "live")
        .await
        .problem(422, "same_account");
    app.transfer(&app.user(a), (a, 999_999), "1", "live")
        .await
        .problem(404, "not_found");
    app.transfer(&app.user(a), (a, b), "30.00000001", "live")
        .await
        .problem(422, "insufficient_funds");
    app.transfer(&app.user(b), (a, b), "1", "live")
        .await
        .problem(403, "forbidden");
    app.transfer(&app.service(), (a, b), "1", "live")
        .await
        .problem(403, "forbidden");
    app.transfer(&app.admin(), (a, b), "1", "live")
        .await
        .expect(200);
    // demo wallets move separately
    let r = app.transfer(&app.user(a), (a, b), "100", "demo").await;
    r.expect(200);
    assert_eq!(app.balance(a, "live").await, "29");
    assert_eq!(app.balance(b, "live").await, "21");
    assert_eq!(app.balance(a, "demo").await, "9900");
    assert_eq!(app.balance(b, "demo").await, "10100");
    app.assert_books_balance_and_stop().await;
}

async fn journal_is_paginated_newest_first(engine: Engine) {
    let (app, u) = TestApp::with_user(engine, "j@x.io").await;
    for i in 1..=5 {
        app.post_new(DEPOSIT, &app.service(), json!({"user_id": u, "amount": format!("{i}"), "wallet": "live", "reference": format!("r{i}")}))
            .await
            .expect(200);
    }
    let page = app
        .get_ok(
            &format!("/api/v1/users/{u}/transactions?limit=2&wallet=live"),
            &app.user(u),
        )
        .await;
    let items = page.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["balance_delta"], "5");
    assert_eq!(items[0]["balance_after"], "15");
    assert_eq!(items[0]["reference"], "r5");
    assert_eq!(items[0]["kind"], "deposit");
    assert_eq!(items[0]["wallet"], "live");
    assert_eq!(items[0]["margin_delta"], "0");
    assert_eq!(items[0]["hash"].as_str().unwrap().len(), 64);
    assert!(items[0]["id"].as_i64().unwrap() > items[1]["id"].as_i64().unwrap());
    let mut seen = 2;
    let mut cursor = page.body["next_before_id"].as_i64().unwrap();
    loop {
        let page = app
            .get(
                &format!("/api/v1/users/{u}/transactions?limit=2&wallet=live&before_id={cursor}"),
                Some(&app.user(u)),
            )
            .await;
        let items = page.body["items"].as_array().unwrap();
        assert!(items.iter().all(|e| e["id"].as_i64().unwrap() < cursor));
        seen += items.len();
        match page.body["next_before_id"].as_i64() {
            Some(next) => cursor = next,
            None => break,
        }
    }
    assert_eq!(seen, 5);
    // both wallets: 5 deposits + the demo opening balance; null reference shows as null
    let all = app
        .get(
            &format!("/api/v1/users/{u}/transactions"),
            Some(&app.admin()),
        )
        .await;
    let items = all.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 6);
    assert!(all.body["next_before_id"].is_null());
    let opening = items
        .iter()
        .find(|e| e["kind"] == "opening_balance")
        .unwrap();
    assert!(opening["reference"].is_null());
    assert_eq!(opening["wallet"], "demo");
    // validation and ownership
    let other = app.create_user("k@x.io").await;
    app.get(
        &format!("/api/v1/users/{u}/transactions"),
        Some(&app.user(other)),
    )
    .await
    .problem(403, "forbidden");
    for query in ["limit=0", "limit=501", "wallet=gold"] {
        app.get(
            &format!("/api/v1/users/{u}/transactions?{query}"),
            Some(&app.admin()),
        )
        .await
        .problem(400, "invalid_request");
    }
    app.get("/api/v1/users/999999/transactions", Some(&app.admin()))
        .await
        .problem(404, "not_found");
    app.stop().await;
}

/// A control character in a free-text field (PostgreSQL cannot store a NUL)
/// is refused at the edge as a 400 naming the field, and nothing changes.
async fn control_characters_in_text_fields_are_refused(engine: Engine) {
    let (app, u) = TestApp::with_funded_user(engine, "ctl@x.io", "10").await;
    let nul = "psp\u{0}1";
    let refused = [
        (
            DEPOSIT,
            "reference",
            json!({"user_id": u, "amount": "5", "wallet": "live", "reference": nul}),
        ),
        (
            DEPOSIT,
            "payment_method",
            json!({"user_id": u, "amount": "5", "wallet": "live", "payment_method": "card\n"}),
        ),
        (
            WITHDRAW,
            "destination",
            json!({"user_id": u, "amount": "5", "wallet": "live", "destination": "iban\u{7f}"}),
        ),
        ("/api/v1/users", "email", json!({"email": "nul\u{0}@x.io"})),
        (
            "/api/v1/users",
            "referral_code",
            json!({"email": "ref@x.io", "referral_code": "AB\u{0}CD"}),
        ),
    ];
    for (path, field, body) in refused {
        let r = app.post_new(path, &app.service(), body).await;
        r.problem(400, "invalid_request");
        let detail = r.body["detail"].as_str().unwrap();
        assert!(detail.contains(&format!("`{field}`")), "{field}: {detail}");
    }
    assert_live(&app, u, "10", 1).await;
    // printable text, non-ASCII included, still goes through
    app.post_new(
        DEPOSIT,
        &app.service(),
        json!({"user_id": u, "amount": "5", "wallet": "live", "reference": "Zürich €-1"}),
    )
    .await
    .expect(200);
    assert_eq!(app.balance(u, "live").await, "15");
    app.assert_books_balance_and_stop().await;
}

both_engines!(
    control_characters_in_text_fields_are_refused,
    deposit_contract,
    bad_amounts_are_refused_and_change_nothing,
    amounts_are_exact,
    withdraw_contract,
    transfer_contract,
    journal_is_paginated_newest_first
);
