//! The Locks contract over HTTP, on both engines: every route's statuses,
//! codes, bodies, auth and validation.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::{Engine, Reply, TestApp, both_engines, fresh_key, time, until};

const LOCKS: &str = "/api/v1/locks";

async fn acquire(app: &TestApp, token: &str, body: Value) -> Reply {
    app.post_new(LOCKS, token, body).await
}

/// Acquire `resources` for a transaction of type `ty`, nothing else asked.
async fn acquire_for(app: &TestApp, token: &str, resources: &[&str], ty: &str) -> Reply {
    acquire(
        app,
        token,
        json!({"resources": resources, "transaction_type": ty}),
    )
    .await
}

/// Releases lock `id` (no Idempotency-Key: the route takes none).
async fn release(app: &TestApp, id: &str, token: &str, body: Value) -> Reply {
    app.post(&format!("{LOCKS}/{id}/release"), token, None, body)
        .await
}

/// Extends lock `id` (no Idempotency-Key: the route takes none).
async fn extend(app: &TestApp, id: &str, token: &str, body: Value) -> Reply {
    app.post(&format!("{LOCKS}/{id}/extend"), token, None, body)
        .await
}

/// Asks whether `resource_id` is locked (no Idempotency-Key: a read).
async fn check(app: &TestApp, token: &str, resource_id: &str) -> Reply {
    app.post(
        &format!("{LOCKS}/check"),
        token,
        None,
        json!({"resource_id": resource_id}),
    )
    .await
}

/// `acquire_for`, waiting in the queue when the resources are taken.
async fn queue_for(app: &TestApp, token: &str, resources: &[&str], ty: &str) -> Reply {
    acquire(
        app,
        token,
        json!({"resources": resources, "transaction_type": ty, "wait": "queue"}),
    )
    .await
}

async fn delete(app: &TestApp, path: &str, token: Option<&str>) -> Reply {
    let mut req = app.client.delete(format!("{}{path}", app.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    app.send(req).await
}

fn ms(rfc3339: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

#[track_caller]
fn assert_lock_shape(lock: &Value) {
    for field in [
        "lock_id",
        "resources",
        "owner_id",
        "owner_type",
        "fencing_token",
        "status",
        "priority",
        "transaction_type",
        "transaction_data",
        "idempotency_key",
        "result",
        "error",
        "acquired_at",
        "expires_at",
        "released_at",
        "released_by",
    ] {
        assert!(lock.get(field).is_some(), "Lock lacks {field}: {lock}");
    }
    assert_eq!(lock["idempotency_key"].as_str().unwrap().len(), 64);
}

#[track_caller]
fn assert_item_shape(item: &Value) {
    for field in [
        "queue_id",
        "resources",
        "owner_id",
        "priority",
        "effective_priority",
        "position",
        "estimated_wait_ms",
        "status",
        "lock",
        "queued_at",
        "deadline",
    ] {
        assert!(item.get(field).is_some(), "QueueItem lacks {field}: {item}");
    }
}

async fn acquire_contract(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (ann, bob) = (app.user(1), app.user(2));
    let body = json!({
        "resources": ["item:b", "item:a"],
        "transaction_type": "cart",
        "transaction_data": {"qty": 2, "sku": "a"},
        "ttl_ms": 10_000,
    });
    let key = fresh_key();
    let r = app.post(LOCKS, &ann, Some(&key), body.clone()).await;
    r.expect(201);
    let lock = &r.body;
    assert_lock_shape(lock);
    assert_eq!(lock["resources"], json!(["item:a", "item:b"]));
    assert_eq!(
        (&lock["owner_id"], &lock["owner_type"]),
        (&json!("user:1"), &json!("user"))
    );
    assert_eq!(
        (&lock["status"], &lock["priority"]),
        (&json!("active"), &json!(5))
    );
    assert!(lock["fencing_token"].as_i64().unwrap() >= 1);
    assert!(lock["result"].is_null() && lock["released_at"].is_null());
    assert!(lock.get("deduplicated").is_none(), "{lock}");
    let ttl = ms(&lock["expires_at"]) - ms(&lock["acquired_at"]);
    assert_eq!(ttl, 10_000);
    // the same key replays the stored answer exactly
    let again = app.post(LOCKS, &ann, Some(&key), body.clone()).await;
    again.expect(201);
    assert_eq!(again.text, r.text);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    // the same work under another key: that lock, deduplicated, whatever
    // the order of resources and data keys
    let dup = acquire(
        &app,
        &ann,
        json!({
            "resources": ["item:a", "item:b"],
            "transaction_type": "cart",
            "transaction_data": {"sku": "a", "qty": 2},
        }),
    )
    .await;
    dup.expect(200);
    assert_eq!(dup.body["lock_id"], lock["lock_id"]);
    assert_eq!(dup.body["deduplicated"], true);
    // someone else: 409 with the busy resources
    let busy = acquire_for(&app, &bob, &["item:b", "item:c"], "cart").await;
    busy.problem(409, "resource_locked");
    assert_eq!(busy.body["conflicts"], json!(["item:b"]));
    // nothing of the refused request was taken: item:c is free
    acquire_for(&app, &bob, &["item:c"], "cart")
        .await
        .expect(201);
    // or a place in the queue
    let queued = acquire(
        &app,
        &bob,
        json!({"resources": ["item:a"], "transaction_type": "cart", "wait": "queue", "priority": 2}),
    )
    .await;
    queued.expect(202);
    assert_item_shape(&queued.body);
    assert_eq!(queued.body["status"], "pending");
    assert_eq!(queued.body["position"], 1);
    assert_eq!(queued.body["effective_priority"], 2);
    assert!(queued.body["lock"].is_null());

    // a service may name the owner; a user may not name another
    let named = acquire(
        &app,
        &app.service(),
        json!({"resources": ["item:s"], "transaction_type": "t", "owner_id": "user:7"}),
    )
    .await;
    named.expect(201);
    assert_eq!(
        (&named.body["owner_id"], &named.body["owner_type"]),
        (&json!("user:7"), &json!("user"))
    );
    acquire(
        &app,
        &ann,
        json!({"resources": ["item:u"], "transaction_type": "t", "owner_id": "user:2"}),
    )
    .await
    .problem(403, "forbidden");

    // refusals: key, token, validation
    app.post(
        LOCKS,
        &ann,
        None,
        json!({"resources": ["item:z"], "transaction_type": "t"}),
    )
    .await
    .problem(400, "idempotency_key_missing");
    app.post_raw(
        LOCKS,
        None,
        Some("k"),
        r#"{"resources":["item:z"],"transaction_type":"t"}"#,
    )
    .await
    .problem(401, "unauthorized");
    let fifty_one: Vec<String> = (0..51).map(|i| format!("item:{i}")).collect();
    for bad in [
        json!({"resources": ["Item:1"], "transaction_type": "t"}),
        json!({"resources": ["item:"], "transaction_type": "t"}),
        json!({"resources": [format!("item:{}", "x".repeat(200))], "transaction_type": "t"}),
        json!({"resources": [], "transaction_type": "t"}),
        json!({"resources": fifty_one, "transaction_type": "t"}),
        json!({"resources": ["item:1", "item:1"], "transaction_type": "t"}),
        json!({"resources": ["item:1"], "transaction_type": "t", "ttl_ms": 999}),
        json!({"resources": ["item:1"], "transaction_type": "t", "ttl_ms": 600_001}),
        json!({"resources": ["item:1"], "transaction_type": "t", "priority": 0}),
        json!({"resources": ["item:1"], "transaction_type": "t", "priority": 11}),
        json!({"resources": ["item:1"], "transaction_type": ""}),
        json!({"resources": ["item:1"], "transaction_type": "t", "wait": "forever"}),
        json!({"resources": ["item:1"], "transaction_type": "t", "queue_timeout_ms": 0}),
        json!({"resources": ["item:1"], "transaction_type": "t", "surprise": 1}),
        json!({"resources": ["item:1"]}),
    ] {
        acquire(&app, &ann, bad.clone())
            .await
            .problem(400, "invalid_request");
    }
    let ttl_ok = acquire(
        &app,
        &ann,
        json!({"resources": ["item:ttl"], "transaction_type": "t", "ttl_ms": 600_000}),
    )
    .await;
    ttl_ok.expect(201);

    // reading a lock: owner and admin, not others
    let path = format!("{LOCKS}/{}", lock["lock_id"].as_str().unwrap());
    app.get_ok(&path, &ann).await;
    let by_admin = app.get_ok(&path, &app.admin()).await;
    assert_eq!(by_admin.body["lock_id"], lock["lock_id"]);
    app.get(&path, Some(&bob)).await.problem(403, "forbidden");
    app.get(&path, None).await.problem(401, "unauthorized");
    app.get(&format!("{LOCKS}/no-such-lock"), Some(&ann))
        .await
        .problem(404, "not_found");
    app.stop().await;
}

async fn extend_and_release_contract(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (ann, bob, admin) = (app.user(1), app.user(2), app.admin());
    let lock = acquire(
        &app,
        &ann,
        json!({"resources": ["trade:1:BTCUSDT:sell:s1"], "transaction_type": "trade", "ttl_ms": 5_000}),
    )
    .await
    .body
    .clone();
    let id = lock["lock_id"].as_str().unwrap().to_owned();
    let waiter = queue_for(&app, &bob, &["trade:1:BTCUSDT:sell:s1"], "trade").await;
    waiter.expect(202);
    let queue_id = waiter.body["queue_id"].as_i64().unwrap();

    tokio::time::sleep(Duration::from_millis(20)).await;
    let extended = extend(&app, &id, &ann, json!({"ttl_ms": 60_000})).await;
    extended.expect(200);
    assert_eq!(extended.body["fencing_token"], lock["fencing_token"]);
    assert!(ms(&extended.body["expires_at"]) > ms(&lock["expires_at"]));
    extend(&app, &id, &bob, json!({"ttl_ms": 60_000}))
        .await
        .problem(403, "forbidden");
    extend(&app, &id, &ann, json!({"ttl_ms": 10}))
        .await
        .problem(400, "invalid_request");
    extend(&app, &id, &ann, json!({}))
        .await
        .problem(400, "invalid_request");

    // only the owner releases; an admin only with force and a reason
    release(&app, &id, &bob, json!({}))
        .await
        .problem(403, "forbidden");
    release(&app, &id, &admin, json!({}))
        .await
        .problem(403, "forbidden");
    release(&app, &id, &ann, json!({"force": true, "reason": "mine"}))
        .await
        .problem(403, "forbidden");
    release(&app, &id, &admin, json!({"force": true}))
        .await
        .problem(400, "invalid_request");
    release(&app, &id, &ann, json!({"unknown": 1}))
        .await
        .problem(400, "invalid_request");
    let released = release(&app, &id, &ann, json!({"result": {"order_id": 9}})).await;
    released.expect(200);
    assert_lock_shape(&released.body);
    assert_eq!(released.body["status"], "released");
    assert_eq!(released.body["result"], json!({"order_id": 9}));
    assert_eq!(released.body["released_by"], "user:1");
    assert!(released.body["released_at"].is_string());
    // the queue head was granted in the same transaction, with a newer token
    let item = app.get_ok(&format!("{LOCKS}/queue/{queue_id}"), &bob).await;
    assert_eq!(item.body["status"], "granted");
    assert_eq!(item.body["position"], 0);
    let granted = &item.body["lock"];
    assert_eq!(granted["owner_id"], "user:2");
    assert!(granted["fencing_token"].as_i64() > lock["fencing_token"].as_i64());
    // a released lock is lost for good
    release(&app, &id, &ann, json!({}))
        .await
        .problem(409, "lock_lost");
    extend(&app, &id, &ann, json!({"ttl_ms": 5_000}))
        .await
        .problem(409, "lock_lost");
    release(&app, "nope", &ann, json!({}))
        .await
        .problem(404, "not_found");

    // an error ends it `failed`; an admin may force, recorded with why
    let bob_lock = granted["lock_id"].as_str().unwrap();
    let forced = release(
        &app,
        bob_lock,
        &admin,
        json!({"force": true, "reason": "stuck bot"}),
    )
    .await;
    forced.expect(200);
    assert_eq!(forced.body["released_by"], "admin:root");
    assert_eq!(forced.body["status"], "released");
    let c = acquire_for(&app, &ann, &["item:f"], "t").await;
    let failed = release(
        &app,
        c.body["lock_id"].as_str().unwrap(),
        &ann,
        json!({"error": "payment declined"}),
    )
    .await;
    failed.expect(200);
    assert_eq!(
        (&failed.body["status"], &failed.body["error"]),
        (&json!("failed"), &json!("payment declined"))
    );
    app.stop().await;
}

async fn expiry_frees_at_once(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (ann, bob) = (app.user(1), app.user(2));
    let first = acquire(
        &app,
        &ann,
        json!({"resources": ["item:x"], "transaction_type": "t", "ttl_ms": 3_000}),
    )
    .await;
    first.expect(201);
    let id = first.body["lock_id"].as_str().unwrap().to_owned();
    acquire_for(&app, &bob, &["item:x"], "t")
        .await
        .problem(409, "resource_locked");
    until(time(&first.body["expires_at"]) + chrono::Duration::milliseconds(100)).await;
    // no cleanup has run: the expired lock is free all the same
    let got = app.get(&format!("{LOCKS}/{id}"), Some(&ann)).await;
    assert_eq!(got.body["status"], "expired");
    let second = acquire_for(&app, &bob, &["item:x"], "t").await;
    second.expect(201);
    assert!(second.body["fencing_token"].as_i64() > first.body["fencing_token"].as_i64());
    extend(&app, &id, &ann, json!({"ttl_ms": 5_000}))
        .await
        .problem(409, "lock_lost");
    release(&app, &id, &ann, json!({}))
        .await
        .problem(409, "lock_lost");
    app.stop().await;
}

async fn queue_contract(engine: Engine) {
    let app = TestApp::spawn_with(engine, |c| c.locks.queue_max = 2).await;
    let (ann, bob, cy) = (app.user(1), app.user(2), app.user(3));
    let holder = acquire_for(&app, &ann, &["item:q"], "t").await;
    holder.expect(201);
    let queue = json!({"resources": ["item:q"], "transaction_type": "t", "wait": "queue"});
    let first = acquire(&app, &bob, queue.clone()).await;
    first.expect(202);
    let second = acquire(&app, &cy, queue.clone()).await;
    second.expect(202);
    assert_eq!(second.body["position"], 2);
    let mut third = queue;
    third["transaction_data"] = json!("another job");
    let full = acquire(&app, &cy, third).await;
    full.problem(429, "queue_full");
    assert!(full.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    // the whole queue, as the list and the resource view give it: each
    // waiter in its own place, its wait estimate one turn per place
    let admin = app.admin();
    for path in [
        format!("{LOCKS}?resource_id=item:q&status=pending"),
        format!("{LOCKS}/resources/item:q"),
    ] {
        let listed = app.get_ok(&path, &admin).await;
        let places: Vec<(i64, i64)> = listed.body["queue"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let place = i["position"].as_i64().unwrap();
                (place, i["estimated_wait_ms"].as_i64().unwrap())
            })
            .collect();
        assert_eq!(places.len(), 2, "{path}: {places:?}");
        assert_eq!((places[0].0, places[1].0), (1, 2), "{path}");
        let turn = places[0].1;
        assert!(turn > 0, "{path}: {places:?}");
        assert_eq!(places[1].1, 2 * turn, "{path}: {places:?}");
    }

    let (q1, q2) = (
        first.body["queue_id"].as_i64().unwrap(),
        second.body["queue_id"].as_i64().unwrap(),
    );
    let item = |id: i64| format!("{LOCKS}/queue/{id}");
    app.get(&item(q1), Some(&cy))
        .await
        .problem(403, "forbidden");
    app.get_ok(&item(q1), &app.admin()).await;
    app.get(&item(999_999), Some(&bob))
        .await
        .problem(404, "not_found");
    app.get(&format!("{}?wait_ms=30001", item(q1)), Some(&bob))
        .await
        .problem(400, "invalid_request");
    // a wait with nothing happening answers pending when the time is up
    let started = Instant::now();
    let pending = app.get_ok(&format!("{}?wait_ms=300", item(q1)), &bob).await;
    assert_eq!(pending.body["status"], "pending");
    assert!(started.elapsed() >= Duration::from_millis(300));

    // a waiting request wakes when the holder releases
    let waiting = {
        let (app, bob, path) = (&app, bob.clone(), format!("{}?wait_ms=10000", item(q1)));
        async move {
            let started = Instant::now();
            let r = app.get(&path, Some(&bob)).await;
            (r, started.elapsed())
        }
    };
    let release = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let id = holder.body["lock_id"].as_str().unwrap();
        release(&app, id, &ann, json!({})).await.expect(200);
    };
    let ((woken, waited), ()) = tokio::join!(waiting, release);
    woken.expect(200);
    assert_eq!(woken.body["status"], "granted");
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
    assert_eq!(woken.body["lock"]["owner_id"], "user:2");

    // the second waiter leaves the queue
    delete(&app, &item(q2), Some(&bob))
        .await
        .problem(403, "forbidden");
    let cancelled = delete(&app, &item(q2), Some(&cy)).await;
    cancelled.expect(200);
    assert_item_shape(&cancelled.body);
    assert_eq!(cancelled.body["status"], "cancelled");
    delete(&app, &item(q2), None)
        .await
        .problem(401, "unauthorized");
    app.stop().await;
}

async fn admin_routes_contract(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (ann, bob, admin) = (app.user(1), app.user(2), app.admin());
    let a = acquire_for(&app, &ann, &["item:1"], "t").await;
    acquire_for(&app, &bob, &["item:2"], "t").await.expect(201);
    let waiter = queue_for(&app, &bob, &["item:1"], "t").await;
    waiter.expect(202);

    // list, with filters
    let all = app.get_ok(LOCKS, &admin).await;
    assert_eq!(all.body["locks"].as_array().unwrap().len(), 2);
    assert_eq!(all.body["queue"].as_array().unwrap().len(), 1);
    let mine = app
        .get(&format!("{LOCKS}?owner_id=user:1"), Some(&admin))
        .await;
    assert_eq!(mine.body["locks"].as_array().unwrap().len(), 1);
    assert!(mine.body["queue"].as_array().unwrap().is_empty());
    let on_one = app
        .get(
            &format!("{LOCKS}?resource_id=item:1&status=active"),
            Some(&admin),
        )
        .await;
    assert_eq!(on_one.body["locks"][0]["lock_id"], a.body["lock_id"]);
    assert_eq!(on_one.body["queue"].as_array().unwrap().len(), 0);
    let pending = app
        .get(&format!("{LOCKS}?status=pending"), Some(&admin))
        .await;
    assert!(pending.body["locks"].as_array().unwrap().is_empty());
    assert_eq!(
        pending.body["queue"][0]["queue_id"],
        waiter.body["queue_id"]
    );
    app.get(&format!("{LOCKS}?status=bogus"), Some(&admin))
        .await
        .problem(400, "invalid_request");
    app.get(&format!("{LOCKS}?limit=0"), Some(&admin))
        .await
        .problem(400, "invalid_request");

    // check and resource views
    let checked = check(&app, &admin, "item:1").await;
    checked.expect(200);
    assert_eq!(
        checked.body,
        json!({"resource_id": "item:1", "is_locked": true, "active_locks": 1, "queue_length": 1})
    );
    let free = check(&app, &admin, "item:9").await;
    assert_eq!(free.body["is_locked"], false);
    check(&app, &admin, "BAD")
        .await
        .problem(400, "invalid_request");
    let res = app
        .get_ok(&format!("{LOCKS}/resources/item:1"), &admin)
        .await;
    assert_eq!(res.body["lock"]["lock_id"], a.body["lock_id"]);
    assert_eq!(res.body["queue"][0]["position"], 1);
    assert_eq!(res.body["history"].as_array().unwrap().len(), 1);

    // stats
    let stats = app.get_ok(&format!("{LOCKS}/stats"), &admin).await;
    assert_eq!(
        (&stats.body["active"], &stats.body["queued"]),
        (&json!(2), &json!(1))
    );
    for k in [
        "released",
        "expired",
        "failed",
        "avg_hold_ms",
        "avg_wait_ms",
        "p99_wait_ms",
    ] {
        assert!(stats.body[k].is_i64(), "{k}: {}", stats.text);
    }

    // DELETE by lock id: without force a live lock stays; with force it goes
    // and the queue head gets it
    let id = a.body["lock_id"].as_str().unwrap();
    let kept = delete(&app, &format!("{LOCKS}?lock_id={id}"), Some(&admin)).await;
    kept.expect(200);
    assert_eq!(kept.body["released"], 0);
    let gone = delete(
        &app,
        &format!("{LOCKS}?lock_id={id}&force=true&reason=maintenance"),
        Some(&admin),
    )
    .await;
    assert_eq!(gone.body["released"], 1);
    let after = app.get(&format!("{LOCKS}/{id}"), Some(&admin)).await;
    assert_eq!(after.body["released_by"], "admin:root");
    let granted = app
        .get(
            &format!("{LOCKS}/queue/{}", waiter.body["queue_id"]),
            Some(&bob),
        )
        .await;
    assert_eq!(granted.body["status"], "granted");
    delete(&app, LOCKS, Some(&admin))
        .await
        .problem(400, "invalid_request");
    let by_owner = delete(
        &app,
        &format!("{LOCKS}?owner_id=user:2&force=true"),
        Some(&admin),
    )
    .await;
    assert_eq!(by_owner.body["released"], 2);

    // cleanup and clear-all
    let cleanup = app
        .post(&format!("{LOCKS}/cleanup"), &admin, None, json!({}))
        .await;
    cleanup.expect(200);
    assert!(cleanup.body["expired"].is_u64() && cleanup.body["purged"].is_u64());
    acquire_for(&app, &ann, &["item:5"], "t").await.expect(201);
    queue_for(&app, &bob, &["item:5"], "t").await.expect(202);
    let clear = format!("{LOCKS}/clear-all");
    app.post(
        &clear,
        &admin,
        None,
        json!({"confirm": false, "reason": "x"}),
    )
    .await
    .problem(400, "invalid_request");
    app.post(&clear, &admin, None, json!({"reason": "x"}))
        .await
        .problem(400, "invalid_request");
    let cleared = app
        .post(
            &clear,
            &admin,
            None,
            json!({"confirm": true, "reason": "incident 7"}),
        )
        .await;
    cleared.expect(200);
    assert_eq!(cleared.body, json!({"released": 1, "cancelled": 1}));
    let stats = app.get(&format!("{LOCKS}/stats"), Some(&admin)).await;
    assert_eq!(
        (&stats.body["active"], &stats.body["queued"]),
        (&json!(0), &json!(0))
    );

    // every admin route refuses others
    let user = app.user(1);
    app.get(LOCKS, Some(&user)).await.problem(403, "forbidden");
    app.get(&format!("{LOCKS}/stats"), Some(&app.service()))
        .await
        .problem(403, "forbidden");
    app.get(&format!("{LOCKS}/resources/item:1"), Some(&user))
        .await
        .problem(403, "forbidden");
    app.get(&format!("{LOCKS}/events"), Some(&user))
        .await
        .problem(403, "forbidden");
    check(&app, &user, "item:1").await.problem(403, "forbidden");
    app.post(&format!("{LOCKS}/cleanup"), &user, None, json!({}))
        .await
        .problem(403, "forbidden");
    app.post(&clear, &user, None, json!({"confirm": true, "reason": "x"}))
        .await
        .problem(403, "forbidden");
    delete(&app, &format!("{LOCKS}?owner_id=user:1"), Some(&user))
        .await
        .problem(403, "forbidden");
    app.get(&format!("{LOCKS}/stats"), None)
        .await
        .problem(401, "unauthorized");
    app.stop().await;
}

/// Reads server-sent events until one of type `kind` arrives; returns its
/// JSON data.
async fn next_event(resp: &mut reqwest::Response, buffer: &mut String, kind: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let event = frame
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or("");
            let data = frame.lines().find_map(|l| l.strip_prefix("data: "));
            if event == kind
                && let Some(data) = data
            {
                return serde_json::from_str(data).unwrap();
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {kind} event within 10 s"))
            .unwrap()
            .unwrap();
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

async fn events_stream_every_change(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (ann, bob) = (app.user(1), app.user(2));
    let mut resp = app
        .client
        .get(format!("{}{LOCKS}/events", app.base))
        .bearer_auth(app.admin())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut buf = String::new();
    let a = acquire_for(&app, &ann, &["item:e"], "t").await;
    let acquired = next_event(&mut resp, &mut buf, "acquired").await;
    assert_eq!(acquired["type"], "acquired");
    assert_eq!(acquired["lock"]["lock_id"], a.body["lock_id"]);
    let q = queue_for(&app, &bob, &["item:e"], "t").await;
    let queued = next_event(&mut resp, &mut buf, "queued").await;
    assert_eq!(queued["queue_item"]["queue_id"], q.body["queue_id"]);
    let id = a.body["lock_id"].as_str().unwrap();
    extend(&app, id, &ann, json!({"ttl_ms": 5_000}))
        .await
        .expect(200);
    next_event(&mut resp, &mut buf, "extended").await;
    release(&app, id, &ann, json!({})).await.expect(200);
    let released = next_event(&mut resp, &mut buf, "released").await;
    assert_eq!(released["lock"]["status"], "released");
    let granted = next_event(&mut resp, &mut buf, "granted").await;
    assert_eq!(granted["queue_item"]["status"], "granted");
    assert_eq!(granted["lock"]["owner_id"], "user:2");
    app.stop().await;
}

/// The spec documents the lock routes with their own statuses and the
/// event stream as `text/event-stream`.
async fn openapi_documents_the_lock_routes(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let spec = app.get("/openapi.json", None).await;
    spec.expect(200);
    let paths = &spec.body["paths"];
    let acquire = &paths["/api/v1/locks"]["post"]["responses"];
    for status in [
        "200", "201", "202", "400", "401", "403", "409", "422", "429",
    ] {
        assert!(acquire.get(status).is_some(), "acquire lacks {status}");
    }
    assert!(acquire.get("404").is_none());
    let stats = &paths["/api/v1/locks/stats"]["get"]["responses"];
    assert!(stats.get("409").is_none() && stats.get("403").is_some());
    let events = &paths["/api/v1/locks/events"]["get"]["responses"]["200"]["content"];
    assert!(events.get("text/event-stream").is_some(), "{events}");
    for path in [
        "/api/v1/locks/{lock_id}",
        "/api/v1/locks/{lock_id}/extend",
        "/api/v1/locks/{lock_id}/release",
        "/api/v1/locks/queue/{queue_id}",
        "/api/v1/locks/check",
        "/api/v1/locks/resources/{resource_id}",
        "/api/v1/locks/cleanup",
        "/api/v1/locks/clear-all",
    ] {
        assert!(paths.get(path).is_some(), "{path} missing");
    }
    app.stop().await;
}

/// A waiter ahead is a conflict as a holder is: a refused request names
/// the resources held and those promised to a waiter before it, whether or
/// not it also met a holder; a request that may wait queues behind both.
async fn waiters_ahead_are_conflicts(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (ann, bob, cy) = (app.user(1), app.user(2), app.user(3));
    acquire_for(&app, &ann, &["item:a"], "t").await.expect(201);
    // bob waits for item:a and item:d together: item:d is free, but his
    let both = json!({"resources": ["item:a", "item:d"], "transaction_type": "t", "wait": "queue"});
    acquire(&app, &bob, both).await.expect(202);
    for (resources, conflicts) in [
        (vec!["item:d"], json!(["item:d"])),
        (vec!["item:a", "item:d"], json!(["item:a", "item:d"])),
        (vec!["item:a", "item:e"], json!(["item:a"])),
    ] {
        let refused = acquire_for(&app, &cy, &resources, "t").await;
        refused.problem(409, "resource_locked");
        assert_eq!(refused.body["conflicts"], conflicts, "{resources:?}");
    }
    let wait = json!({"resources": ["item:d"], "transaction_type": "t", "wait": "queue"});
    let queued = acquire(&app, &cy, wait).await;
    queued.expect(202);
    assert_eq!(queued.body["position"], 2);
    // and nothing of the refused requests was taken
    acquire_for(&app, &cy, &["item:e"], "t").await.expect(201);
    app.stop().await;
}

/// Rows of a resource that has had `n` grants, each also a cancelled
/// waiter before it was granted: `{"h{x}", token x, queue item x}`, written
/// straight to the database (making them through the API would take
/// minutes).
async fn long_history(app: &TestApp, resource: &str, n: u32) {
    use sea_orm::ConnectionTrait;
    let db = sea_orm::Database::connect(&app.database_url).await.unwrap();
    let numbers =
        format!("WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < {n})");
    let names = format!("'[\"{resource}\"]'");
    // within the retention (a grant a second, the last a minute ago), so
    // that the cleanup job does not purge them under the test
    let last = chrono::Utc::now().timestamp_millis() - 60_000;
    let at = format!("({last} - 1000 * ({n} - x))");
    for sql in [
        format!(
            "{numbers} INSERT INTO transaction_locks (id, resources, owner_id, owner_type, \
             created_by, status, fencing_token, priority, transaction_type, transaction_data, \
             idempotency_key, acquired_at_ms, expires_at_ms, released_at_ms, wait_ms) \
             SELECT 'h' || x, {names}, 'user:1', 'user', 'user:1', 'released', x, 5, 't', '{{}}', \
             'k' || x, {at}, {at} + 30000, {at} + 5, 0 FROM g"
        ),
        format!(
            "{numbers} INSERT INTO transaction_lock_resources (lock_id, resource_id, status, \
             fencing_token) SELECT 'h' || x, '{resource}', 'released', x FROM g"
        ),
        format!(
            "{numbers} INSERT INTO transaction_queue (id, resources, owner_id, owner_type, \
             created_by, priority, transaction_type, transaction_data, idempotency_key, ttl_ms, \
             status, queued_at_ms, deadline_ms, finished_at_ms) \
             SELECT x, {names}, 'user:1', 'user', 'user:1', 5, 't', '{{}}', 'k' || x, 30000, \
             'cancelled', {at}, {at} + 60000, {at} + 1 FROM g"
        ),
        format!(
            "{numbers} INSERT INTO transaction_queue_resources (queue_id, resource_id) \
             SELECT x, '{resource}' FROM g"
        ),
        format!("INSERT INTO lock_fencing (resource_id, fencing_token) VALUES ('{resource}', {n})"),
    ] {
        db.execute_unprepared(&sql).await.unwrap();
    }
    db.close().await.unwrap();
}

/// A resource's views read its newest records, however many it has had: a
/// hot resource has hundreds of thousands of grants a day, more than a
/// statement can take as parameters (65,535 on PostgreSQL, 32,766 on
/// SQLite), which the views once passed as a list of ids (503).
async fn a_resource_with_a_long_history_shows_its_newest(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let admin = app.admin();
    long_history(&app, "item:hot", 70_000).await;
    let tokens = |locks: &Value| -> Vec<i64> {
        locks
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["fencing_token"].as_i64().unwrap())
            .collect()
    };
    let list = app
        .get_ok(&format!("{LOCKS}?resource_id=item:hot&limit=3"), &admin)
        .await;
    assert_eq!(tokens(&list.body["locks"]), [70_000, 69_999, 69_998]);
    let view = app
        .get_ok(&format!("{LOCKS}/resources/item:hot"), &admin)
        .await;
    assert_eq!(
        tokens(&view.body["history"]),
        (69_981..=70_000).rev().collect::<Vec<_>>()
    );
    assert!(view.body["lock"].is_null() && view.body["queue"] == json!([]));
    let cancelled = app
        .get_ok(
            &format!("{LOCKS}?resource_id=item:hot&status=cancelled&limit=2"),
            &admin,
        )
        .await;
    let ids: Vec<_> = cancelled.body["queue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["queue_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [70_000, 69_999]);
    // a live grant on top of the history comes first
    let me = app.user(1);
    let live = acquire_for(&app, &me, &["item:hot"], "t").await;
    live.expect(201);
    assert_eq!(live.body["fencing_token"], 70_001);
    let view = app
        .get_ok(&format!("{LOCKS}/resources/item:hot"), &admin)
        .await;
    assert_eq!(view.body["lock"]["lock_id"], live.body["lock_id"]);
    assert_eq!(view.body["history"][0]["lock_id"], live.body["lock_id"]);
    app.stop().await;
}

/// Left out, the lease is 30 s for one resource and 5 minutes for a
/// reservation of several, and `transaction_data` is an empty object.
async fn defaults_of_a_lock_and_of_a_reservation(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let ann = app.user(1);
    let ttl = |lock: &Value| ms(&lock["expires_at"]) - ms(&lock["acquired_at"]);
    let one = acquire_for(&app, &ann, &["item:one"], "single").await;
    one.expect(201);
    assert_eq!(ttl(&one.body), 30_000);
    assert_eq!(one.body["transaction_data"], json!({}));
    let cart = acquire_for(&app, &ann, &["item:x", "item:y", "item:z"], "cart").await;
    cart.expect(201);
    assert_eq!(ttl(&cart.body), 300_000);
    // asked for, the lease is as asked, one resource or several
    let asked = acquire(
        &app,
        &ann,
        json!({"resources": ["item:p", "item:q"], "transaction_type": "cart", "ttl_ms": 5_000}),
    )
    .await;
    asked.expect(201);
    assert_eq!(ttl(&asked.body), 5_000);
    app.stop().await;
}

both_engines!(
    defaults_of_a_lock_and_of_a_reservation,
    a_resource_with_a_long_history_shows_its_newest,
    waiters_ahead_are_conflicts,
    acquire_contract,
    extend_and_release_contract,
    expiry_frees_at_once,
    queue_contract,
    admin_routes_contract,
    events_stream_every_change,
    openapi_documents_the_lock_routes,
);
