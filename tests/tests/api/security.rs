//! Hostile requests: forged tokens, one user reaching for another's
//! resources, hostile bodies and Idempotency-Keys, one key raced with two
//! bodies. Each is refused with the contract's status, and nothing changes:
//! the balances, the journal and the orders are exactly as before.

use std::time::Duration;

use api::auth::Role;
use futures::future::join_all;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tests::{Engine, SECRET, TestApp, both_engines, fresh_key, live};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEPOSIT: &str = "/api/v1/wallets/deposit";
const WITHDRAW: &str = "/api/v1/wallets/withdraw";
const TRANSFER: &str = "/api/v1/wallets/transfer";

/// Everything a refused request must leave as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    wallets: Vec<Value>,
    journal: Vec<Value>,
    orders: Vec<Value>,
}

async fn snapshot(app: &TestApp, users: &[i64]) -> Snapshot {
    let admin = app.admin();
    let (mut wallets, mut journal, mut orders) = (Vec::new(), Vec::new(), Vec::new());
    for u in users {
        let w = app
            .get_ok(&format!("/api/v1/users/{u}/wallets"), &admin)
            .await;
        wallets.push(w.body);
        let j = app
            .get_ok(&format!("/api/v1/users/{u}/transactions?limit=500"), &admin)
            .await;
        journal.push(j.body);
        let o = app
            .get_ok(&format!("/api/v1/users/{u}/orders?limit=500"), &admin)
            .await;
        orders.push(o.body);
    }
    Snapshot {
        wallets,
        journal,
        orders,
    }
}

fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// A JWT with any header and claims, signed HMAC-SHA256 with `secret`
/// whatever the header says (the algorithm-confusion attack), or unsigned.
fn jwt(header: Value, claims: Value, secret: Option<&str>) -> String {
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let signature = secret.map_or_else(String::new, |s| {
        b64url(&hmac_sha256(s.as_bytes(), input.as_bytes()))
    });
    format!("{input}.{signature}")
}

fn in_an_hour() -> i64 {
    chrono::Utc::now().timestamp() + 3600
}

#[test]
fn the_forging_kit_signs_like_the_server() {
    let claims = json!({"sub": "1", "role": "user", "exp": in_an_hour()});
    let token = jwt(json!({"alg": "HS256", "typ": "JWT"}), claims, Some(SECRET));
    let principal = api::auth::Tokens::new(SECRET).verify(&token).unwrap();
    assert_eq!(principal.sub, "1");
    assert_eq!(b64url(b"f"), "Zg");
    assert_eq!(b64url(b"foob"), "Zm9vYg");
}

/// Invariant: a token the server did not sign, or signed for something
/// else, is 401 on every kind of route, and changes nothing.
async fn forged_tokens_are_refused(engine: Engine) {
    let (app, a) = TestApp::with_funded_user(engine, "forge-a@x.io", "100").await;
    let b = app.funded_user("forge-b@x.io", "100").await;
    let before = snapshot(&app, &[a, b]).await;
    let admin = |exp: i64| json!({"sub": "root", "role": "admin", "exp": exp});
    let hs256 = json!({"alg": "HS256", "typ": "JWT"});
    let genuine_user = app.user(a);
    let parts: Vec<&str> = genuine_user.split('.').collect();
    let resign_payload = |claims: Value| {
        // The genuine header and signature around altered claims.
        format!(
            "{}.{}.{}",
            parts[0],
            b64url(claims.to_string().as_bytes()),
            parts[2]
        )
    };
    let forged = [
        (
            "alg none",
            jwt(
                json!({"alg": "none", "typ": "JWT"}),
                admin(in_an_hour()),
                None,
            ),
        ),
        (
            "alg none with a signature",
            jwt(json!({"alg": "none"}), admin(in_an_hour()), Some(SECRET)),
        ),
        (
            "another secret",
            jwt(
                hs256.clone(),
                admin(in_an_hour()),
                Some("another-secret-0123456789abcdef"),
            ),
        ),
        (
            "expired",
            jwt(
                hs256.clone(),
                admin(chrono::Utc::now().timestamp() - 3600),
                Some(SECRET),
            ),
        ),
        (
            "role raised to admin",
            resign_payload(json!({"sub": a.to_string(), "role": "admin", "exp": in_an_hour()})),
        ),
        (
            "subject changed",
            resign_payload(json!({"sub": b.to_string(), "role": "user", "exp": in_an_hour()})),
        ),
        (
            "HS512 header",
            jwt(
                json!({"alg": "HS512", "typ": "JWT"}),
                admin(in_an_hour()),
                Some(SECRET),
            ),
        ),
        (
            "RS256 header, HMAC with the secret",
            jwt(
                json!({"alg": "RS256", "typ": "JWT"}),
                admin(in_an_hour()),
                Some(SECRET),
            ),
        ),
        (
            "ES256 header",
            jwt(json!({"alg": "ES256"}), admin(in_an_hour()), Some(SECRET)),
        ),
        (
            "no exp",
            jwt(
                hs256.clone(),
                json!({"sub": "root", "role": "admin"}),
                Some(SECRET),
            ),
        ),
        (
            "empty subject",
            jwt(
                hs256.clone(),
                json!({"sub": "", "role": "admin", "exp": in_an_hour()}),
                Some(SECRET),
            ),
        ),
        (
            "unknown role",
            jwt(
                hs256.clone(),
                json!({"sub": "root", "role": "root", "exp": in_an_hour()}),
                Some(SECRET),
            ),
        ),
        ("signature stripped", format!("{}.{}.", parts[0], parts[1])),
        ("two parts", format!("{}.{}", parts[0], parts[1])),
        ("garbage", "not-a-jwt".to_owned()),
    ];
    for (what, token) in &forged {
        let writes = [
            (DEPOSIT, live(a, "5")),
            (WITHDRAW, live(b, "5")),
            (
                TRANSFER,
                json!({"from_user_id": b, "to_user_id": a, "amount": "5", "wallet": "live"}),
            ),
            (
                "/api/v1/users",
                json!({"email": format!("{}@x.io", fresh_key())}),
            ),
        ];
        for (path, body) in writes {
            app.post_new(path, token, body)
                .await
                .problem(401, "unauthorized");
        }
        for path in [
            format!("/api/v1/users/{b}/wallets"),
            format!("/api/v1/users/{b}/transactions"),
            format!("/api/v1/users/{b}"),
        ] {
            let r = app.get(&path, Some(token)).await;
            assert_eq!(r.status, 401, "{what}: GET {path}: {}", r.text);
        }
    }
    assert_eq!(snapshot(&app, &[a, b]).await, before);
    app.assert_books_balance_and_stop().await;
}

/// Invariant: a user token for A used on B's resources — in the path or in
/// the body, on every route that names a user or an order — is never 2xx:
/// 403 where the user id is named, 404 for B's orders (they look unknown),
/// and B's money, journal and orders are untouched.
async fn cross_user_access_is_refused(engine: Engine) {
    let (app, a) = TestApp::with_funded_user(engine, "cross-a@x.io", "100").await;
    let b = app.trader("cross-b@x.io", "100", ("XUSD", "10")).await;
    let order = app.opened(b, ("XUSD", "buy", "1", 10, "live")).await;
    let before = snapshot(&app, &[a, b]).await;
    let user_a = app.user(a);
    for path in [
        format!("/api/v1/users/{b}"),
        format!("/api/v1/users/{b}/wallets"),
        format!("/api/v1/users/{b}/transactions"),
        format!("/api/v1/users/{b}/orders"),
        format!("/api/v1/users/{b}/referrals"),
    ] {
        app.get(&path, Some(&user_a))
            .await
            .problem(403, "forbidden");
    }
    app.get(&format!("/api/v1/orders/{order}"), Some(&user_a))
        .await
        .problem(404, "not_found");
    let writes = [
        (WITHDRAW.to_owned(), live(b, "5"), 403),
        (
            TRANSFER.to_owned(),
            json!({"from_user_id": b, "to_user_id": a, "amount": "5", "wallet": "live"}),
            403,
        ),
        (
            "/api/v1/orders".to_owned(),
            json!({"user_id": b, "symbol": "XUSD", "side": "buy", "quantity": "1", "leverage": 10, "wallet": "live"}),
            403,
        ),
        (format!("/api/v1/orders/{order}/close"), json!({}), 404),
        // Roles a user does not have, on its own id.
        (DEPOSIT.to_owned(), live(a, "5"), 403),
        (
            "/api/v1/users".to_owned(),
            json!({"email": "sneaky@x.io"}),
            403,
        ),
        ("/api/v1/referrals/settle".to_owned(), json!({}), 403),
    ];
    for (path, body, status) in writes {
        let r = app.post_new(&path, &user_a, body).await;
        let code = if status == 403 {
            "forbidden"
        } else {
            "not_found"
        };
        r.problem(status, code);
    }
    app.put("/api/v1/prices/XUSD", &user_a, json!({"price": "1"}))
        .await
        .problem(403, "forbidden");
    assert_eq!(snapshot(&app, &[a, b]).await, before);
    let price = app.get("/api/v1/prices/XUSD", Some(&user_a)).await;
    assert_eq!(price.body["price"], "10");
    app.assert_books_balance_and_stop().await;
}

/// Invariant: bodies built to hurt the parser — too large, nested deep,
/// not UTF-8, with raw control bytes, with a duplicated field, a number
/// where money belongs — are refused with a 4xx, never a 5xx, and change
/// nothing.
async fn hostile_bodies_are_refused(engine: Engine) {
    let (app, u) = TestApp::with_funded_user(engine, "body@x.io", "100").await;
    let before = snapshot(&app, &[u]).await;
    let service = app.service();
    let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            // eight times the limit: the server reads it to the end and
            // answers 413 (far larger bodies get the connection closed)
            "512 KiB body",
            format!(
                r#"{{"user_id":{u},"amount":"1","wallet":"live","reference":"{}"}}"#,
                "x".repeat(1 << 19)
            )
            .into_bytes(),
            413,
        ),
        (
            "nested 10,000 deep",
            format!(
                r#"{{"user_id":{u},"amount":"1","wallet":"live","reference":{}}}"#,
                deep(10_000)
            )
            .into_bytes(),
            400,
        ),
        (
            "nested 100 deep in an unknown field",
            format!(
                r#"{{"user_id":{u},"amount":"1","wallet":"live","x":{}}}"#,
                deep(100)
            )
            .into_bytes(),
            400,
        ),
        (
            "invalid UTF-8",
            [
                format!(r#"{{"user_id":{u},"amount":"1","wallet":"live","reference":""#).as_bytes(),
                &[0xff, 0xfe, 0xc3, 0x28],
                br#""}"#,
            ]
            .concat(),
            400,
        ),
        (
            "raw control byte in a string",
            [
                format!(r#"{{"user_id":{u},"amount":"1","wallet":"live","reference":"a"#)
                    .as_bytes(),
                &[0x01],
                br#""}"#,
            ]
            .concat(),
            400,
        ),
        (
            "duplicated amount",
            format!(r#"{{"user_id":{u},"amount":"1","amount":"1000","wallet":"live"}}"#)
                .into_bytes(),
            400,
        ),
        (
            "amount as a number",
            format!(r#"{{"user_id":{u},"amount":1e308,"wallet":"live"}}"#).into_bytes(),
            400,
        ),
        (
            "user id past i64",
            r#"{"user_id":99999999999999999999999,"amount":"1","wallet":"live"}"#
                .as_bytes()
                .to_vec(),
            400,
        ),
        (
            "truncated JSON",
            format!(r#"{{"user_id":{u},"amount":"1""#).into_bytes(),
            400,
        ),
        ("empty body", Vec::new(), 400),
    ];
    for (what, body, status) in cases {
        let r = app
            .send(
                app.client
                    .post(format!("{}{DEPOSIT}", app.base))
                    .bearer_auth(&service)
                    .header("content-type", "application/json")
                    .header("Idempotency-Key", fresh_key())
                    .body(body),
            )
            .await;
        assert_eq!(r.status, status, "{what}: {}", r.text);
        assert_eq!(
            r.header("content-type"),
            Some("application/problem+json"),
            "{what}: {}",
            r.text
        );
    }
    assert_eq!(snapshot(&app, &[u]).await, before);
    app.stop().await;
}

/// Sends a deposit with a raw `Idempotency-Key` header value over a plain
/// TCP connection (HTTP clients refuse to send control bytes); returns the
/// status code.
async fn raw_deposit_with_key(app: &TestApp, key: &[u8], body: &str) -> u16 {
    let addr = app.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {DEPOSIT} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nIdempotency-Key: ",
        app.service(),
        body.len()
    );
    let request = [head.as_bytes(), key, b"\r\n\r\n", body.as_bytes()].concat();
    stream.write_all(&request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

/// Invariant: an Idempotency-Key that is empty, longer than 255, not ASCII
/// or holds a control character is 400 and executes nothing; the same
/// request with a proper key then goes through once.
async fn hostile_idempotency_keys_are_refused(engine: Engine) {
    let (app, u) = TestApp::with_funded_user(engine, "keys@x.io", "100").await;
    let before = snapshot(&app, &[u]).await;
    let body = live(u, "5");
    let long = "k".repeat(256);
    // An empty header is a malformed key, not a missing one.
    for key in ["", long.as_str(), "tab\there"] {
        app.post(DEPOSIT, &app.service(), Some(key), body.clone())
            .await
            .problem(400, "invalid_request");
    }
    let text = body.to_string();
    for key in [
        "ключ-1".as_bytes(),
        b"caf\xc3\xa9",
        b"\xff\xfe",
        b"a\x01b",
        b"a\x7fb",
        b"a\x00b",
        b"a\x1bb",
    ] {
        let status = raw_deposit_with_key(&app, key, &text).await;
        assert_eq!(status, 400, "key {key:?}");
    }
    assert_eq!(snapshot(&app, &[u]).await, before);
    let key = "k".repeat(255);
    app.post(DEPOSIT, &app.service(), Some(&key), body.clone())
        .await
        .expect(200);
    assert_eq!(app.balance(u, "live").await, "105");
    app.assert_books_balance_and_stop().await;
}

/// Invariant: one key sent with two different bodies at the same moment
/// executes exactly one of them; the other is told 409
/// `idempotency_in_flight` or 422 `idempotency_key_reused`; the balance
/// and the journal show one execution per key.
async fn same_key_two_bodies_concurrently_execute_once(engine: Engine) {
    let (app, u) = TestApp::with_user(engine, "race@x.io").await;
    let keys: Vec<String> = (0..15).map(|_| fresh_key()).collect();
    let service = app.service();
    let sends = keys.iter().flat_map(|key| {
        ["1", "2"].map(|amount| {
            let (app, service, key) = (&app, &service, key.clone());
            async move {
                let body = json!({"user_id": u, "amount": amount, "wallet": "live"});
                (
                    key.clone(),
                    amount,
                    app.post(DEPOSIT, service, Some(&key), body).await,
                )
            }
        })
    });
    let answers = join_all(sends).await;
    let mut expected = rust_decimal::Decimal::ZERO;
    for key in &keys {
        let pair: Vec<_> = answers.iter().filter(|(k, _, _)| k == key).collect();
        let ok: Vec<_> = pair.iter().filter(|(_, _, r)| r.status == 200).collect();
        assert_eq!(
            ok.len(),
            1,
            "key {key}: {:?}",
            pair.iter().map(|(_, _, r)| &r.text).collect::<Vec<_>>()
        );
        let (_, amount, _) = ok[0];
        expected += tests::dec(amount);
        let (_, _, other) = pair.iter().find(|(_, _, r)| r.status != 200).unwrap();
        assert!(
            matches!(
                (other.status, other.code()),
                (409, "idempotency_in_flight") | (422, "idempotency_key_reused")
            ),
            "key {key}: {} {}",
            other.status,
            other.text
        );
        // Afterwards the losing body is told the key was used for another.
        let loser = if *amount == "1" { "2" } else { "1" };
        app.post(
            DEPOSIT,
            &service,
            Some(key),
            json!({"user_id": u, "amount": loser, "wallet": "live"}),
        )
        .await
        .problem(422, "idempotency_key_reused");
    }
    assert_eq!(tests::dec(&app.balance(u, "live").await), expected);
    let deposits = app
        .journal_kinds(u, "live")
        .await
        .into_iter()
        .filter(|k| k == "deposit")
        .count();
    assert_eq!(deposits, keys.len(), "one journaled deposit per key");
    app.assert_books_balance_and_stop().await;
}

/// A role the token names but does not hold a key to: a user token whose
/// subject is a service name is still only a user.
async fn a_user_token_named_like_a_service_stays_a_user(engine: Engine) {
    let (app, u) = TestApp::with_funded_user(engine, "named@x.io", "10").await;
    let before = snapshot(&app, &[u]).await;
    let token = app.token("backoffice", Role::User);
    app.post_new(DEPOSIT, &token, live(u, "5"))
        .await
        .problem(403, "forbidden");
    app.get(&format!("/api/v1/users/{u}/wallets"), Some(&token))
        .await
        .problem(403, "forbidden");
    assert_eq!(snapshot(&app, &[u]).await, before);
    app.stop().await;
}

both_engines!(
    forged_tokens_are_refused,
    cross_user_access_is_refused,
    hostile_bodies_are_refused,
    hostile_idempotency_keys_are_refused,
    same_key_two_bodies_concurrently_execute_once,
    a_user_token_named_like_a_service_stays_a_user,
);
