//! Locks under real concurrency on PostgreSQL, each test stating its
//! invariant. Several server instances share one database, as behind a
//! load balancer; a sampler reads the database while the requests run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use rand::seq::IndexedRandom;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde_json::{Value, json};
use tests::process::LedgerProcess;
use tests::{Engine, Reply, TestApp, assert_no_5xx, fresh_key, token};

const LOCKS: &str = "/api/v1/locks";

async fn acquire(app: &TestApp, token: &str, body: Value) -> Reply {
    app.post_new(LOCKS, token, body).await
}

/// Polls the queue item until it is no longer pending; returns it.
async fn granted(app: &TestApp, token: &str, queue_id: i64) -> Value {
    loop {
        let r = app
            .get_ok(&format!("{LOCKS}/queue/{queue_id}?wait_ms=10000"), token)
            .await;
        if r.body["status"] != "pending" {
            return r.body;
        }
    }
}

async fn scalar(db: &DatabaseConnection, sql: &str) -> i64 {
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

const MAX_ACTIVE_PER_RESOURCE: &str = "SELECT COALESCE(MAX(n), 0) FROM (SELECT COUNT(*) AS n \
     FROM transaction_lock_resources WHERE status = 'active' GROUP BY resource_id) t";

/// Samples `sql` (by default the most active grants any one resource has)
/// until stopped; returns the largest value and the number of samples.
fn sampler(db: DatabaseConnection, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(i64, u64)> {
    sampling(db, stop, MAX_ACTIVE_PER_RESOURCE)
}

fn sampling(
    db: DatabaseConnection,
    stop: Arc<AtomicBool>,
    sql: &'static str,
) -> tokio::task::JoinHandle<(i64, u64)> {
    tokio::spawn(async move {
        let (mut worst, mut samples) = (0, 0u64);
        while !stop.load(Ordering::SeqCst) {
            worst = worst.max(scalar(&db, sql).await);
            samples += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (worst, samples)
    })
}

/// Every grant of every resource, from the database: no two overlap in
/// time, and tokens grow in grant order.
async fn assert_grants_never_overlap(db: &DatabaseConnection) -> usize {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT r.resource_id, l.acquired_at_ms, COALESCE(l.released_at_ms, l.expires_at_ms) AS end_ms, \
             l.fencing_token FROM transaction_lock_resources r JOIN transaction_locks l ON l.id = r.lock_id",
        ))
        .await
        .unwrap();
    let mut by_resource: BTreeMap<String, Vec<(i64, i64, i64)>> = BTreeMap::new();
    for row in &rows {
        by_resource
            .entry(row.try_get("", "resource_id").unwrap())
            .or_default()
            .push((
                row.try_get("", "fencing_token").unwrap(),
                row.try_get("", "acquired_at_ms").unwrap(),
                row.try_get("", "end_ms").unwrap(),
            ));
    }
    for (resource, mut grants) in by_resource {
        grants.sort();
        for pair in grants.windows(2) {
            let ((t1, _, end1), (t2, start2, _)) = (pair[0], pair[1]);
            assert!(t1 < t2, "{resource}: token {t1} reused");
            assert!(
                end1 <= start2,
                "{resource}: grant {t2} began at {start2} before grant {t1} ended at {end1}"
            );
        }
    }
    rows.len()
}

fn count(replies: &[Reply], status: u16) -> usize {
    replies.iter().filter(|r| r.status == status).count()
}

/// Invariant: a resource has at most one active grant at any moment, on
/// every instance. 200 concurrent requests for one resource spread over 3
/// server instances (half fail fast, half queue; each winner holds briefly
/// and releases): the sampled number of active grants per resource never
/// exceeds 1, grants never overlap in time and their tokens grow, every
/// request is answered 201, 202 or 409 `resource_locked`, and every queued
/// one is granted in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_active_grant_per_resource_across_instances() {
    let _several_servers = tests::heavy().await;
    let app = TestApp::spawn(Engine::Postgres).await;
    let (b, c) = (app.sibling().await, app.sibling().await);
    let instances = [&app, &b, &c];
    let db = sea_orm::Database::connect(&app.database_url).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sampling = sampler(db.clone(), Arc::clone(&stop));
    let replies = join_all((0..200).map(|i| {
        let server = instances[i % 3];
        async move {
            let me = server.user(1_000 + i as i64);
            let wait = if i % 2 == 0 { "fail" } else { "queue" };
            let r = acquire(
                server,
                &me,
                json!({"resources": ["trade:1:BTCUSDT:sell:s1"], "transaction_type": "trade",
                       "transaction_data": i, "wait": wait}),
            )
            .await;
            let lock_id = match r.status {
                201 => Some(r.body["lock_id"].as_str().unwrap().to_owned()),
                202 => {
                    let item = granted(server, &me, r.body["queue_id"].as_i64().unwrap()).await;
                    assert_eq!(item["status"], "granted", "{item}");
                    Some(item["lock"]["lock_id"].as_str().unwrap().to_owned())
                }
                _ => None,
            };
            if let Some(id) = lock_id {
                tokio::time::sleep(Duration::from_millis(3)).await;
                server.release_lock(&me, &id).await.expect(200);
            }
            r
        }
    }))
    .await;
    stop.store(true, Ordering::SeqCst);
    let (worst, samples) = sampling.await.unwrap();
    assert_no_5xx(&replies);
    assert!(samples > 10, "the sampler barely ran ({samples})");
    assert_eq!(worst, 1, "a resource had {worst} active grants at once");
    let refused = replies
        .iter()
        .filter(|r| r.status == 409)
        .inspect(|r| assert_eq!(r.code(), "resource_locked", "{}", r.text))
        .count();
    let (won, queued) = (count(&replies, 201), count(&replies, 202));
    assert_eq!(won + queued + refused, 200);
    assert!(won >= 1 && queued >= 1, "won {won}, queued {queued}");
    assert_eq!(assert_grants_never_overlap(&db).await, won + queued);
    b.stop().await;
    c.stop().await;
    app.stop().await;
}

/// An app on PostgreSQL whose queued lock requests gain a priority level
/// every `aging`.
async fn aging_every(aging: std::time::Duration) -> TestApp {
    TestApp::spawn_with(Engine::Postgres, |c| c.locks.queue_aging = aging).await
}

/// Invariant: the queue serves in (effective priority, queued_at, id)
/// order. 100 waiters with mixed priorities queue behind a holder (aging
/// off in effect: one level per hour); releasing the current holder 100
/// times grants them exactly in that order, each with a larger token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_grants_in_priority_then_arrival_order() {
    let app = aging_every(std::time::Duration::from_secs(3_600)).await;
    let resource = "item:hot";
    let holder = acquire(
        &app,
        &app.user(1),
        json!({"resources": [resource], "transaction_type": "t"}),
    )
    .await;
    holder.expect(201);
    let queued = join_all((0..100).map(|i| {
        let app = &app;
        async move {
            let priority = [1, 5, 10, 3, 5][i % 5];
            let r = acquire(
                app,
                &app.user(100 + i as i64),
                json!({"resources": [resource], "transaction_type": "t", "priority": priority,
                       "wait": "queue"}),
            )
            .await;
            r.expect(202);
            r.body
        }
    }))
    .await;
    let mut expected: Vec<(i64, String, i64, String)> = queued
        .iter()
        .map(|q| {
            (
                q["priority"].as_i64().unwrap(),
                q["queued_at"].as_str().unwrap().to_owned(),
                q["queue_id"].as_i64().unwrap(),
                q["owner_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    expected.sort();
    // every waiter reads its item at once (their places are read together):
    // each is told its own place in that order
    let places = join_all(queued.iter().map(|q| {
        let app = &app;
        async move {
            let owner = q["owner_id"].as_str().unwrap();
            let user = owner.strip_prefix("user:").unwrap().parse().unwrap();
            let item = app
                .get_ok(&format!("{LOCKS}/queue/{}", q["queue_id"]), &app.user(user))
                .await;
            assert_eq!(item.body["status"], "pending");
            (owner.to_owned(), item.body["position"].as_i64().unwrap())
        }
    }))
    .await;
    for (owner, place) in places {
        let at = expected.iter().position(|e| e.3 == owner).unwrap();
        assert_eq!(place, i64::try_from(at).unwrap() + 1, "{owner}");
    }
    let admin = app.admin();
    let mut order = Vec::new();
    let mut current = holder.body.clone();
    for _ in 0..=100 {
        let owner = current["owner_id"].as_str().unwrap();
        let sub = owner.strip_prefix("user:").unwrap();
        app.release_lock(
            &app.user(sub.parse().unwrap()),
            current["lock_id"].as_str().unwrap(),
        )
        .await
        .expect(200);
        let view = app
            .get(&format!("{LOCKS}/resources/{resource}"), Some(&admin))
            .await;
        if view.body["lock"].is_null() {
            break;
        }
        let next = view.body["lock"].clone();
        assert!(next["fencing_token"].as_i64() > current["fencing_token"].as_i64());
        order.push(next["owner_id"].as_str().unwrap().to_owned());
        current = next;
    }
    let expected: Vec<String> = expected.into_iter().map(|e| e.3).collect();
    assert_eq!(order, expected);
    app.stop().await;
}

/// Invariant: aging prevents starvation. A priority-10 waiter, while
/// priority-1 work keeps arriving and the resource changes hands every
/// ~40 ms, gains a level per 200 ms and is granted once it reaches 1
/// (after 9 × 200 ms), plus the hand-offs in flight: within 3 s. Without
/// aging it would wait behind every priority-1 request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aging_grants_a_low_priority_waiter_within_its_bound() {
    let app = aging_every(std::time::Duration::from_millis(200)).await;
    let resource = "item:contended";
    let body = |priority: u8| {
        json!({"resources": [resource], "transaction_type": "t", "priority": priority,
               "wait": "queue", "transaction_data": fresh_key()})
    };
    acquire(&app, &app.user(1), body(1)).await.expect(201);
    // some priority-1 work is already waiting
    for n in 0..3 {
        acquire(&app, &app.user(10 + n), body(1)).await.expect(202);
    }
    let low = acquire(&app, &app.user(2), body(10)).await;
    low.expect(202);
    let started = Instant::now();
    let low_id = low.body["queue_id"].as_i64().unwrap();
    let admin = app.admin();
    let next_user = AtomicI64::new(1_000);
    let mut before_low = 0;
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "the priority-10 waiter starved"
        );
        let n = next_user.fetch_add(1, Ordering::SeqCst);
        acquire(&app, &app.user(n), body(1)).await.expect(202);
        let view = app
            .get(&format!("{LOCKS}/resources/{resource}"), Some(&admin))
            .await;
        let lock = &view.body["lock"];
        if lock["owner_id"] == "user:2" {
            break;
        }
        before_low += 1;
        let sub: i64 = lock["owner_id"].as_str().unwrap()[5..].parse().unwrap();
        app.release_lock(&app.user(sub), lock["lock_id"].as_str().unwrap())
            .await
            .expect(200);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let waited = started.elapsed();
    let item = app
        .get(&format!("{LOCKS}/queue/{low_id}"), Some(&app.user(2)))
        .await;
    assert_eq!(item.body["status"], "granted");
    assert!(before_low >= 3, "priority-1 work went first: {before_low}");
    assert!(waited < Duration::from_secs(3), "granted after {waited:?}");
    app.stop().await;
}

/// Invariant: reservations are all or nothing. 100 carts race for 3 of 10
/// overlapping items each over 2 instances (half fail fast, half queue):
/// no item is ever in two active locks (sampled, and from the grant
/// history), every 201 holds exactly its cart, a refused cart holds
/// nothing, and every queued cart is granted whole in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn carts_are_reserved_all_or_nothing() {
    let (_several_servers, app, sibling) = tests::two_instances().await;
    let db = sea_orm::Database::connect(&app.database_url).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sampling = sampler(db.clone(), Arc::clone(&stop));
    let items: Vec<String> = (0..10).map(|i| format!("item:sku-{i}")).collect();
    let carts: Vec<Vec<String>> = (0..100)
        .map(|_| {
            let mut rng = rand::rng();
            let cart: BTreeSet<String> = items.choose_multiple(&mut rng, 3).cloned().collect();
            cart.into_iter().collect()
        })
        .collect();
    let results = join_all(carts.iter().enumerate().map(|(i, cart)| {
        let server = if i % 2 == 0 { &app } else { &sibling };
        async move {
            let me = server.user(5_000 + i as i64);
            let wait = if i % 4 < 2 { "fail" } else { "queue" };
            let r = acquire(
                server,
                &me,
                json!({"resources": cart, "transaction_type": "cart", "wait": wait}),
            )
            .await;
            let lock = match r.status {
                201 => Some(r.body.clone()),
                202 => {
                    let item = granted(server, &me, r.body["queue_id"].as_i64().unwrap()).await;
                    assert_eq!(item["status"], "granted", "{item}");
                    Some(item["lock"].clone())
                }
                _ => None,
            };
            if let Some(lock) = &lock {
                assert_eq!(lock["resources"], json!(cart), "a cart granted in part");
                tokio::time::sleep(Duration::from_millis(5)).await;
                server
                    .release_lock(&me, lock["lock_id"].as_str().unwrap())
                    .await
                    .expect(200);
            }
            (r, lock.is_some())
        }
    }))
    .await;
    stop.store(true, Ordering::SeqCst);
    let (worst, _) = sampling.await.unwrap();
    let replies: Vec<Reply> = results.iter().map(|(r, _)| r.clone()).collect();
    assert_no_5xx(&replies);
    assert_eq!(worst, 1, "an item was in {worst} active locks at once");
    let held = results.iter().filter(|(_, held)| *held).count();
    let refused: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, (r, _))| r.status == 409)
        .map(|(i, (r, _))| {
            assert_eq!(r.code(), "resource_locked", "{}", r.text);
            assert!(!r.body["conflicts"].as_array().unwrap().is_empty());
            i
        })
        .collect();
    assert_eq!(held + refused.len(), 100);
    // a refused cart left nothing behind
    for i in refused {
        let owner = format!("user:{}", 5_000 + i);
        let n = scalar(
            &db,
            &format!("SELECT COUNT(*) FROM transaction_locks WHERE owner_id = '{owner}'"),
        )
        .await;
        assert_eq!(n, 0, "{owner} was refused but holds a lock");
    }
    assert_eq!(assert_grants_never_overlap(&db).await, held * 3);
    sibling.stop().await;
    app.stop().await;
}

/// Invariant: a dead holder's lock ends at its TTL and the queue head gets
/// the resource, once. A `ledger` process holds a lock (TTL 2 s) with a
/// waiter queued on another instance; the process is killed with SIGKILL
/// (no release is ever sent); the waiter is granted after the TTL, within
/// the poll interval, with a larger token, and the resource then has
/// exactly one active grant and two grants in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_holders_lock_expires_and_the_queue_head_is_granted() {
    let _several_servers = tests::heavy().await;
    let app = TestApp::spawn(Engine::Postgres).await;
    let mut process = LedgerProcess::start(&app.database_url, &[]).await;
    let client = reqwest::Client::new();
    let holder = token("1", api::auth::Role::User);
    let resp = client
        .post(format!("{}{LOCKS}", process.base()))
        .bearer_auth(&holder)
        .header("Idempotency-Key", fresh_key())
        .json(
            &json!({"resources": ["trade:1:ETHUSDT:buy:k9"], "transaction_type": "trade",
                      "ttl_ms": 2_000}),
        )
        .send()
        .await
        .unwrap();
    let held = Reply::from(resp).await;
    held.expect(201);
    let waiter = acquire(
        &app,
        &app.user(2),
        json!({"resources": ["trade:1:ETHUSDT:buy:k9"], "transaction_type": "trade", "wait": "queue"}),
    )
    .await;
    waiter.expect(202);
    process.kill();
    let expires = chrono::DateTime::parse_from_rfc3339(held.body["expires_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    let item = granted(
        &app,
        &app.user(2),
        waiter.body["queue_id"].as_i64().unwrap(),
    )
    .await;
    let granted_at = chrono::Utc::now().timestamp_millis();
    assert_eq!(item["status"], "granted", "{item}");
    assert!(
        granted_at - expires < 1_500,
        "granted {} ms after the expiry",
        granted_at - expires
    );
    assert!(item["lock"]["fencing_token"].as_i64() > held.body["fencing_token"].as_i64());
    let first = app
        .get(
            &format!("{LOCKS}/{}", held.body["lock_id"].as_str().unwrap()),
            Some(&app.admin()),
        )
        .await;
    assert_eq!(first.body["status"], "expired");
    let db = sea_orm::Database::connect(&app.database_url).await.unwrap();
    assert_eq!(scalar(&db, MAX_ACTIVE_PER_RESOURCE).await, 1);
    assert_eq!(assert_grants_never_overlap(&db).await, 2);
    // the cleanup finds nothing left to expire on that resource
    let cleanup = app
        .post(&format!("{LOCKS}/cleanup"), &app.admin(), None, json!({}))
        .await;
    cleanup.expect(200);
    assert_eq!(cleanup.body["expired"], 0);
    app.stop().await;
}

/// Invariant: expiry hands off in the expiring transaction without any
/// request touching the resource. With the cleanup job every 200 ms and a
/// holder that never releases (TTL 1 s), the queue head is granted by the
/// job; a second expiry hands it to the next; nothing is granted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cleanup_job_expires_holders_and_grants_heads() {
    let app = TestApp::spawn_with(Engine::Postgres, |c| {
        c.locks.cleanup_interval = std::time::Duration::from_millis(200)
    })
    .await;
    let body = json!({"resources": ["item:job"], "transaction_type": "t", "ttl_ms": 1_000,
                      "wait": "queue"});
    acquire(&app, &app.user(1), body.clone()).await.expect(201);
    let mut waiters = Vec::new();
    for u in 2..=3 {
        let r = acquire(&app, &app.user(u), body.clone()).await;
        r.expect(202);
        waiters.push(r.body["queue_id"].as_i64().unwrap());
    }
    let db = sea_orm::Database::connect(&app.database_url).await.unwrap();
    let granted_count = "SELECT COUNT(*) FROM transaction_queue WHERE status = 'granted'";
    let started = Instant::now();
    // nobody reads the queue items: only the job can grant them
    while scalar(&db, granted_count).await < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "the job did not hand off"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(assert_grants_never_overlap(&db).await, 3);
    for (u, id) in (2..=3).zip(waiters) {
        let item = app
            .get(&format!("{LOCKS}/queue/{id}"), Some(&app.user(u)))
            .await;
        assert_eq!(item.body["status"], "granted");
    }
    app.stop().await;
}

/// The tally of finished grants, less the same grants grouped from their
/// rows, and the other way round: 0 when each tallied grant kept is in the
/// tally once and nothing else is. One statement, so one snapshot however
/// the cleanups run meanwhile.
const TALLY_DRIFT: &str = "WITH rows AS (SELECT status, wait_ms, COUNT(*) AS n, \
     SUM(CASE WHEN status IN ('released', 'failed') THEN released_at_ms - acquired_at_ms ELSE 0 END) AS held_ms \
     FROM transaction_locks WHERE tallied GROUP BY status, wait_ms), \
     tally AS (SELECT status, wait_ms, n, held_ms FROM lock_tally) \
     SELECT (SELECT COUNT(*) FROM (SELECT * FROM tally EXCEPT SELECT * FROM rows) a) \
     + (SELECT COUNT(*) FROM (SELECT * FROM rows EXCEPT SELECT * FROM tally) b)";

/// The lock statistics as sums over every grant kept (what
/// `GET /api/v1/locks/stats` computed before the tally), for a moment when
/// no grant is active.
async fn summed_stats(db: &DatabaseConnection) -> Value {
    let count =
        |status: &str| format!("SELECT COUNT(*) FROM transaction_locks WHERE status = '{status}'");
    let n = scalar(db, "SELECT COUNT(*) FROM transaction_locks").await;
    let p99 = if n == 0 {
        0
    } else {
        let offset = (n * 99 + 99) / 100 - 1;
        scalar(
            db,
            &format!(
                "SELECT wait_ms FROM transaction_locks ORDER BY wait_ms LIMIT 1 OFFSET {offset}"
            ),
        )
        .await
    };
    json!({
        "active": scalar(db, &count("active")).await,
        "released": scalar(db, &count("released")).await,
        "expired": scalar(db, &count("expired")).await,
        "failed": scalar(db, &count("failed")).await,
        "avg_hold_ms": scalar(db, "SELECT CAST(COALESCE(AVG(released_at_ms - acquired_at_ms), 0) AS BIGINT) \
            FROM transaction_locks WHERE status IN ('released', 'failed')").await,
        "avg_wait_ms": scalar(db, "SELECT CAST(COALESCE(AVG(wait_ms), 0) AS BIGINT) FROM transaction_locks").await,
        "p99_wait_ms": p99,
        "queued": 0,
    })
}

/// Invariant: every finished grant enters the statistics' tally once and
/// leaves it when it is purged, whichever cleanups run at the same time. Two
/// instances clean up every 20 ms — one of them purging grants finished
/// more than 3 s ago (long enough for a waiter to read its granted queue
/// item before it goes) —, admins fire cleanups at both in parallel, and
/// 120 users take, hold and release (or fail, or let expire) locks on 6
/// resources, most of them waiting in the queue. A sampler compares the
/// tally with the tallied grants kept all along: never a difference. Then,
/// the purging instance stopped, the statistics equal the sums over every
/// grant kept, and grants were both tallied and purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_finished_grant_is_tallied_once_and_untallied_when_purged() {
    let _several_servers = tests::heavy().await;
    let app = TestApp::spawn_with(Engine::Postgres, |c| {
        c.locks.cleanup_interval = Duration::from_millis(20)
    })
    .await;
    let purger = app
        .sibling_with(|c| c.locks.retention = Duration::from_millis(3_000))
        .await;
    let instances = [&app, &purger];
    let db = sea_orm::Database::connect(&app.database_url).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let drift = sampling(db.clone(), Arc::clone(&stop), TALLY_DRIFT);
    let cleanups = join_all((0..4).map(|i| {
        let (server, stop) = (instances[i % 2], Arc::clone(&stop));
        async move {
            let mut runs = 0;
            while !stop.load(Ordering::SeqCst) {
                let r = server
                    .post(
                        &format!("{LOCKS}/cleanup"),
                        &server.admin(),
                        None,
                        json!({}),
                    )
                    .await;
                r.expect(200);
                runs += 1;
            }
            runs
        }
    }));
    let load = join_all((0..120).map(|i| {
        let server = instances[i % 2];
        async move {
            let me = server.user(2_000 + i as i64);
            let mut granted_here = 0;
            for round in 0..3 {
                let expire = i % 40 == 0 && round == 0;
                // an expiring grant has a resource of its own, so that the
                // queues do not wait for it
                let (resource, ttl) = if expire {
                    (format!("item:own:{i}"), 1_000)
                } else {
                    (format!("item:{}", (i + round) % 6), 30_000)
                };
                let r = acquire(
                    server,
                    &me,
                    json!({"resources": [resource], "transaction_type": "t",
                           "transaction_data": {"i": i, "round": round}, "wait": "queue",
                           "ttl_ms": ttl}),
                )
                .await;
                let lock = match r.status {
                    201 => r.body,
                    202 => granted(server, &me, r.body["queue_id"].as_i64().unwrap()).await["lock"]
                        .clone(),
                    _ => panic!("{}", r.text),
                };
                granted_here += 1;
                if expire {
                    continue;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                let id = lock["lock_id"].as_str().unwrap();
                let end = if round == 1 {
                    json!({"error": "gave up"})
                } else {
                    json!({})
                };
                server
                    .post(&format!("{LOCKS}/{id}/release"), &me, None, end)
                    .await
                    .expect(200);
            }
            granted_here
        }
    }));
    let (granted_total, _) = tokio::join!(
        async {
            let granted: Vec<i64> = load.await;
            // the unreleased grants expire and the cleanups mark them; the
            // grants finished first pass the retention and are purged
            tokio::time::sleep(Duration::from_millis(3_500)).await;
            stop.store(true, Ordering::SeqCst);
            granted.iter().sum::<i64>()
        },
        cleanups
    );
    let (worst, samples) = drift.await.unwrap();
    assert!(samples > 10, "the sampler barely ran ({samples})");
    assert_eq!(worst, 0, "the tally and the tallied grants differed");
    purger.stop().await;
    // the last of the grants tallied, and none purged any more
    app.post(&format!("{LOCKS}/cleanup"), &app.admin(), None, json!({}))
        .await
        .expect(200);
    assert_eq!(scalar(&db, TALLY_DRIFT).await, 0);
    let kept = scalar(&db, "SELECT COUNT(*) FROM transaction_locks").await;
    let tallied = scalar(
        &db,
        "SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM lock_tally",
    )
    .await;
    assert_eq!(granted_total, 360);
    assert!(kept < granted_total, "nothing was purged ({kept} kept)");
    assert_eq!(tallied, kept, "a finished grant kept is not tallied");
    let stats = app.get_ok(&format!("{LOCKS}/stats"), &app.admin()).await;
    assert_eq!(stats.body, summed_stats(&db).await);
    app.stop().await;
}
