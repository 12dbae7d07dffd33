use serde_json::json;
use tests::{Engine, TestApp, USERS, both_engines};

async fn create_user_contract(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let r = app.try_signup("Ann@Example.com", None).await;
    r.expect(201);
    let b = &r.body;
    assert!(b["id"].as_i64().unwrap() > 0);
    assert_eq!(b["email"], "ann@example.com");
    assert_eq!(b["account_number"].as_str().unwrap().len(), 12);
    assert_eq!(b["referral_code"].as_str().unwrap().len(), 8);
    assert!(
        b["referrer_id"].is_null(),
        "referrer_id must be present as null: {}",
        r.text
    );
    assert!(b["created_at"].as_str().unwrap().ends_with('Z'));
    let wallets = b["wallets"].as_array().unwrap();
    assert_eq!(wallets.len(), 2);
    let live = wallets.iter().find(|w| w["kind"] == "live").unwrap();
    let demo = wallets.iter().find(|w| w["kind"] == "demo").unwrap();
    assert_eq!(
        (live["balance"].as_str(), live["currency"].as_str()),
        (Some("0"), Some("USD"))
    );
    assert_eq!(demo["balance"], "10000");
    assert_eq!(demo["free_margin"], "10000");
    assert_eq!(demo["margin"], "0");
    assert_eq!(demo["profit"], "0");

    // GET returns the same user
    let id = b["id"].as_i64().unwrap();
    let got = app
        .get_ok(&format!("/api/v1/users/{id}"), &app.user(id))
        .await;
    assert_eq!(got.body["email"], "ann@example.com");
    assert_eq!(got.body["wallets"].as_array().unwrap().len(), 2);

    // duplicate email, in any case
    app.post_new(USERS, &app.admin(), json!({"email": "ANN@example.com"}))
        .await
        .problem(409, "conflict");
    app.assert_books_balance_and_stop().await;
}

async fn create_user_refusals(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let path = "/api/v1/users";
    // missing key
    app.post(path, &app.service(), None, json!({"email": "a@x.io"}))
        .await
        .problem(400, "idempotency_key_missing");
    // wrong role
    app.post_new(path, &app.user(1), json!({"email": "a@x.io"}))
        .await
        .problem(403, "forbidden");
    // no token, bad token
    app.post_raw(path, None, Some("k"), r#"{"email":"a@x.io"}"#)
        .await
        .problem(401, "unauthorized");
    app.post_raw(path, Some("garbage"), Some("k"), r#"{"email":"a@x.io"}"#)
        .await
        .problem(401, "unauthorized");
    // invalid email, unknown field, malformed JSON
    app.try_signup("not-an-email", None)
        .await
        .problem(400, "invalid_request");
    app.post_new(
        path,
        &app.service(),
        json!({"email": "a@x.io", "admin": true}),
    )
    .await
    .problem(400, "invalid_request");
    app.post_raw(path, Some(&app.service()), Some("k2"), "{\"email\":")
        .await
        .problem(400, "invalid_request");
    // unknown referral code
    app.try_signup("a@x.io", Some("ZZZZ9999"))
        .await
        .problem(422, "unknown_referral_code");
    // nothing was created by any of the above
    let first = app.create_user("a@x.io").await;
    app.get_ok(&format!("/api/v1/users/{first}"), &app.admin())
        .await;
    app.stop().await;
}

async fn referral_code_links_the_referrer(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let r = app.try_signup("ref@x.io", None).await;
    let referrer = r.body["id"].as_i64().unwrap();
    let code = r.body["referral_code"].as_str().unwrap().to_lowercase();
    let r = app.try_signup("new@x.io", Some(&code)).await;
    r.expect(201);
    assert_eq!(r.body["referrer_id"], referrer);
    app.stop().await;
}

async fn reading_users_follows_ownership(engine: Engine) {
    let (app, a) = TestApp::with_user(engine, "a@x.io").await;
    let b = app.create_user("b@x.io").await;
    app.get_ok(&format!("/api/v1/users/{a}"), &app.user(a))
        .await;
    app.get(&format!("/api/v1/users/{a}"), Some(&app.user(b)))
        .await
        .problem(403, "forbidden");
    app.get_ok(&format!("/api/v1/users/{a}"), &app.service())
        .await;
    app.get(&format!("/api/v1/users/{a}"), None)
        .await
        .problem(401, "unauthorized");
    app.get("/api/v1/users/999999", Some(&app.admin()))
        .await
        .problem(404, "not_found");
    app.get("/api/v1/users/abc", Some(&app.admin()))
        .await
        .problem(400, "invalid_request");
    app.get(&format!("/api/v1/users/{a}/wallets"), Some(&app.user(b)))
        .await
        .problem(403, "forbidden");
    app.get("/api/v1/users/999999/wallets", Some(&app.admin()))
        .await
        .problem(404, "not_found");
    app.stop().await;
}

both_engines!(
    create_user_contract,
    create_user_refusals,
    referral_code_links_the_referrer,
    reading_users_follows_ownership
);
