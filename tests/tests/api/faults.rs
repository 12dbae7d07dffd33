//! Fault tests, PostgreSQL only, against the real `ledger` binary as a
//! child process (`tests::process`): a kill -9 under load, the database
//! made unreachable by a proxy (`tests::proxy`), and a saturated pool.
//! Each test has a database of its own, so they run in parallel with the
//! rest. Build the server first: `cargo build -p api --bin ledger`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use api::auth::Role;
use futures::future::join_all;
use rand::Rng;
use rust_decimal::Decimal;
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
use serde_json::{Value, json};
use tests::load::client::{Call, Connection};
use tests::load::retry::{self, Class, Next, Policy, Retrying};
use tests::load::until_definite;
use tests::process::LedgerProcess;
use tests::proxy::Proxy;
use tests::{PgDatabase, Reply, dec, fresh_key, token};

const SHED_OR_DOWN: [&str; 2] = ["unavailable", "overloaded"];

/// HTTP to a server process, with a client timeout so that a hang shows as
/// a failed request instead of a stuck test.
struct Http {
    base: String,
    client: reqwest::Client,
}

impl Http {
    fn new(base: String, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(64)
            .build()
            .unwrap();
        Self { base, client }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Result<Reply, reqwest::Error> {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Ok(Reply::from(req.send().await?).await)
    }

    async fn post(
        &self,
        path: &str,
        token: &str,
        key: &str,
        body: &Value,
    ) -> Result<Reply, reqwest::Error> {
        let req = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(body);
        Ok(Reply::from(req.send().await?).await)
    }

    /// Sends the same request (same key) as the load generator would: until
    /// a definite answer, honouring Retry-After, within `policy.bound`.
    async fn post_until_definite(
        &self,
        path: &str,
        token: &str,
        key: &str,
        body: &Value,
        policy: &Policy,
    ) -> Result<Reply, String> {
        let mut retrying = Retrying::start();
        loop {
            let (class, retry_after, reply) = match self.post(path, token, key, body).await {
                Ok(r) => (
                    retry::classify_answer(r.status, r.code()),
                    r.retry_after(),
                    Ok(r),
                ),
                Err(e) if e.is_connect() => (Class::ConnectRefused, None, Err(e.to_string())),
                Err(e) => (Class::Lost, None, Err(e.to_string())),
            };
            let jitter = rand::random::<f64>();
            match retrying.after(policy, class, retry_after, jitter) {
                Next::Done => return reply,
                Next::RetryAfter(pause) => tokio::time::sleep(pause).await,
                Next::GiveUp => {
                    let last = reply.map_or_else(|e| e, |r| format!("{} {}", r.status, r.text));
                    return Err(format!(
                        "no definite answer within {:?}; the last attempt: {last}",
                        policy.bound
                    ));
                }
            }
        }
    }

    async fn create_users(&self, n: usize) -> Vec<i64> {
        let service = token("backoffice", Role::Service);
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let email = format!("fault-{i}-{}@x.io", fresh_key());
            let r = self
                .post(
                    "/api/v1/users",
                    &service,
                    &fresh_key(),
                    &json!({ "email": email }),
                )
                .await
                .unwrap();
            r.expect(201);
            ids.push(r.body["id"].as_i64().unwrap());
        }
        ids
    }

    /// A deposit that must succeed; returns its operation id.
    async fn fund(&self, user: i64, amount: &str) -> String {
        let r = self
            .post(
                "/api/v1/wallets/deposit",
                &token("backoffice", Role::Service),
                &fresh_key(),
                &json!({ "user_id": user, "amount": amount, "wallet": "live" }),
            )
            .await
            .unwrap();
        r.expect(200);
        r.body["operation_id"].as_str().unwrap().to_owned()
    }

    async fn live_balance(&self, user: i64) -> Decimal {
        let r = self
            .get(
                &format!("/api/v1/users/{user}/wallets"),
                Some(&token("root", Role::Admin)),
            )
            .await
            .unwrap();
        r.expect(200);
        let live = r
            .body
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["kind"] == "live")
            .unwrap();
        dec(live["balance"].as_str().unwrap())
    }
}

/// Journal entries of the money kinds these tests use, counted per
/// (operation id, kind).
async fn journal(url: &str) -> BTreeMap<(String, String), i64> {
    let conn = sea_orm::Database::connect(url).await.unwrap();
    let rows = conn
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT operation_id::text AS op, kind, COUNT(*) AS n FROM journal_entries \
             WHERE kind IN ('deposit', 'withdrawal', 'transfer_out', 'transfer_in') \
             GROUP BY 1, 2",
        ))
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for row in rows {
        let op: String = row.try_get("", "op").unwrap();
        let kind: String = row.try_get("", "kind").unwrap();
        let n: i64 = row.try_get("", "n").unwrap();
        out.insert((op, kind), n);
    }
    conn.close().await.unwrap();
    out
}

/// The end of a long server log, for an assertion message.
fn tail(log: &str) -> &str {
    let mut start = log.len().saturating_sub(6000);
    while !log.is_char_boundary(start) {
        start += 1;
    }
    &log[start..]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Deposit,
    Withdraw,
    Transfer,
}

/// One write of the load and what became of it.
#[derive(Debug)]
struct Write {
    kind: Kind,
    user: i64,
    to: i64,
    amount: Decimal,
    /// The definite answer's status and body; `None`: never definite.
    answer: Option<(u16, Value)>,
    /// Some attempt was not definite (refused, reset, timed out, 409, 503).
    interrupted: bool,
    /// What the last attempt came to (why a write stayed open).
    last: String,
    settled_at: Instant,
}

impl Write {
    fn succeeded(&self) -> bool {
        self.answer
            .as_ref()
            .is_some_and(|(s, _)| (200..300).contains(s))
    }
}

/// One client of the kill test: `writes` writes one after the other, each
/// sent with its own key until definite, over one keep-alive connection.
async fn client(
    target: SocketAddr,
    user: i64,
    others: Vec<i64>,
    writes: usize,
    policy: Policy,
    settled: Arc<AtomicUsize>,
) -> Vec<Write> {
    let service = token("backoffice", Role::Service);
    let own = token(&user.to_string(), Role::User);
    let mut conn = Connection::new(
        IpAddr::from([127, 0, 0, 1]),
        target,
        Duration::from_secs(10),
    );
    let mut out = Vec::with_capacity(writes);
    for _ in 0..writes {
        let (kind, to, amount) = {
            let mut rng = rand::rng();
            let to = others[rng.random_range(0..others.len())];
            match rng.random_range(0..3) {
                0 => (Kind::Deposit, user, Decimal::new(15, 1)),
                1 => (Kind::Withdraw, user, Decimal::ONE),
                _ => (Kind::Transfer, to, Decimal::new(25, 2)),
            }
        };
        let (path, tok, body) = match kind {
            Kind::Deposit => (
                "/api/v1/wallets/deposit",
                &service,
                json!({ "user_id": user, "amount": amount.to_string(), "wallet": "live" }),
            ),
            Kind::Withdraw => (
                "/api/v1/wallets/withdraw",
                &own,
                json!({ "user_id": user, "amount": amount.to_string(), "wallet": "live" }),
            ),
            Kind::Transfer => (
                "/api/v1/wallets/transfer",
                &own,
                json!({ "from_user_id": user, "to_user_id": to, "amount": amount.to_string(), "wallet": "live" }),
            ),
        };
        let key = fresh_key();
        let call = Call::post(path, tok, &key, &body);
        let mut interrupted = false;
        let mut last = String::new();
        let result = until_definite(&mut conn, &call, &policy, |a| {
            interrupted |= !a.class.is_definite();
            last = match a.result {
                Ok(answer) => format!("{} {}", answer.status, answer.code()),
                Err(t) => t.label().to_owned(),
            };
        })
        .await;
        settled.fetch_add(1, Ordering::Relaxed);
        out.push(Write {
            kind,
            user,
            to,
            amount,
            answer: result.answer.map(|a| (a.status, a.json())),
            interrupted,
            last,
            settled_at: result.at,
        });
        let think = rand::rng().random_range(0..20);
        tokio::time::sleep(Duration::from_millis(think)).await;
    }
    out
}

/// Invariant: a kill -9 of the server under a mixed write load loses no
/// write and executes none twice. After a restart on the same port, every
/// write, retried with its Idempotency-Key, reaches a definite answer; the
/// writes the kill interrupted are answered within 2 s of the server being
/// ready again (no orphaned `processing` claim makes them wait out a
/// lease); every balance equals the opening balance plus its definite
/// successful operations; each of those operations is in the journal
/// exactly once and nothing else is; the books reconcile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_and_doubles_nothing() {
    let _several_servers = tests::heavy().await;
    const CLIENTS: usize = 30;
    const WRITES: usize = 12;
    // The bound only keeps a failing run short: the contract is 2 s.
    let policy = Policy {
        bound: Duration::from_secs(30),
        ..Policy::default()
    };
    let db = PgDatabase::create().await;
    let url = db.url.clone();
    let mut server = LedgerProcess::start(&url, &[]).await;
    let http = Http::new(server.base(), Duration::from_secs(30));
    let users = http.create_users(CLIENTS).await;
    let mut expected: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut opening = HashMap::new();
    for &u in &users {
        let op = http.fund(u, "1000").await;
        expected.insert((op, "deposit".into()), 1);
        opening.insert(u, http.live_balance(u).await);
    }

    let settled = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = users
        .iter()
        .map(|&u| {
            let others = users.iter().copied().filter(|&o| o != u).collect();
            tokio::spawn(client(
                server.addr(),
                u,
                others,
                WRITES,
                policy,
                Arc::clone(&settled),
            ))
        })
        .collect();
    let total = CLIENTS * WRITES;
    while settled.load(Ordering::Relaxed) < total / 3 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.kill();
    let killed_at = Instant::now();
    // Long enough for every client to meet a refused connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready_at = server.restart().await;
    let mut writes = Vec::with_capacity(total);
    for c in join_all(clients).await {
        writes.extend(c.unwrap());
    }
    println!(
        "killed after {} of {total} writes; ready again {:?} after the kill",
        total / 3,
        ready_at - killed_at
    );

    let never: Vec<&Write> = writes.iter().filter(|w| w.answer.is_none()).collect();
    let mut last_answers: BTreeMap<&str, usize> = BTreeMap::new();
    for w in &never {
        *last_answers.entry(w.last.as_str()).or_default() += 1;
    }
    assert!(
        never.is_empty(),
        "{} of {total} writes never got a definite answer within {:?}; their last attempts: \
         {last_answers:?}; e.g. {:?}\nserver log:\n{}",
        never.len(),
        policy.bound,
        never.first(),
        tail(&server.log())
    );
    let refused: Vec<&Write> = writes.iter().filter(|w| !w.succeeded()).collect();
    assert!(
        refused.is_empty(),
        "every write has the funds to succeed, yet {} were refused, e.g. {:?}",
        refused.len(),
        refused.first()
    );

    let interrupted: Vec<&Write> = writes.iter().filter(|w| w.interrupted).collect();
    assert!(
        !interrupted.is_empty(),
        "the kill interrupted no write: nothing was tested"
    );
    let after_ready = |w: &&Write| w.settled_at.saturating_duration_since(ready_at);
    let first = interrupted.iter().map(after_ready).min().unwrap();
    let slowest = interrupted.iter().map(after_ready).max().unwrap();
    println!(
        "{} writes interrupted; answered {first:?} (first) to {slowest:?} (last) after the restart",
        interrupted.len()
    );
    assert!(
        first < Duration::from_secs(2),
        "the first retry succeeded only {first:?} after the server was ready again"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "an interrupted write was answered only {slowest:?} after the server was ready again \
         (an orphaned idempotency claim?)"
    );

    let mut books = opening.clone();
    for w in &writes {
        let (_, body) = w.answer.as_ref().unwrap();
        let op = body["operation_id"].as_str().unwrap().to_owned();
        let mut entry = |kind: &str| *expected.entry((op.clone(), kind.into())).or_default() += 1;
        match w.kind {
            Kind::Deposit => {
                entry("deposit");
                *books.get_mut(&w.user).unwrap() += w.amount;
            }
            Kind::Withdraw => {
                entry("withdrawal");
                *books.get_mut(&w.user).unwrap() -= w.amount;
            }
            Kind::Transfer => {
                entry("transfer_out");
                entry("transfer_in");
                *books.get_mut(&w.user).unwrap() -= w.amount;
                *books.get_mut(&w.to).unwrap() += w.amount;
            }
        }
    }
    for &u in &users {
        assert_eq!(
            http.live_balance(u).await,
            books[&u],
            "user {u}: the balance is not the opening balance plus its definite successes"
        );
    }
    let found = journal(&url).await;
    let doubled: Vec<_> = found.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "executed twice: {doubled:?}");
    let unexplained: Vec<_> = found
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    assert!(
        unexplained.is_empty(),
        "journal entries no definite answer accounts for: {unexplained:?}"
    );
    assert_eq!(found, expected, "journal != definite successes");
    tests::assert_books_balance_at(&url).await;
}

/// What one request during the outage came to.
#[derive(Debug)]
struct Timed {
    what: String,
    took: Duration,
    reply: Result<Reply, String>,
}

async fn timed(
    what: String,
    request: impl Future<Output = Result<Reply, reqwest::Error>>,
) -> Timed {
    let sent = Instant::now();
    let reply = request.await.map_err(|e| e.to_string());
    Timed {
        what,
        took: sent.elapsed(),
        reply,
    }
}

/// Invariant: with PostgreSQL unreachable (the proxy between the server
/// and the database cut), every request — writes, reads, readiness — is
/// answered 503 `unavailable` or `overloaded` with `Retry-After` within
/// 1 s; none hangs. A refused write changes nothing and its key is not
/// stored: once the database is reachable again, service resumes within a
/// few seconds and the same keys execute, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_unreachable_answers_503_fast_and_recovers() {
    let _several_servers = tests::heavy().await;
    let db = PgDatabase::create().await;
    let url = db.url.clone();
    let (mut proxy, proxied) = Proxy::for_url(&url).await.unwrap();
    let server = LedgerProcess::start(&proxied, &[]).await;
    let http = Http::new(server.base(), Duration::from_secs(10));
    let users = http.create_users(2).await;
    let (a, b) = (users[0], users[1]);
    http.fund(a, "100").await;
    http.fund(b, "100").await;
    let opening = (http.live_balance(a).await, http.live_balance(b).await);
    assert!(
        proxy.accepted() > 0,
        "the server did not reach the database through the proxy"
    );
    let service = token("backoffice", Role::Service);
    let (admin, user_a) = (
        token("root", Role::Admin),
        token(&a.to_string(), Role::User),
    );

    proxy.cut().await;
    let mut deposits = Vec::new();
    let mut withdrawals = Vec::new();
    let mut answers = Vec::new();
    // Round 0 finds the pool's connections dead; later rounds meet a
    // database already known to be down.
    for round in 0..3 {
        let mut requests = Vec::new();
        for i in 0..10 {
            let key = fresh_key();
            let body = json!({ "user_id": if i % 2 == 0 { a } else { b }, "amount": "1", "wallet": "live" });
            deposits.push((key.clone(), body.clone()));
            let http = &http;
            let service = &service;
            requests.push(Box::pin(async move {
                timed(
                    format!("round {round}: deposit"),
                    http.post("/api/v1/wallets/deposit", service, &key, &body),
                )
                .await
            })
                as std::pin::Pin<Box<dyn Future<Output = Timed> + Send>>);
        }
        for _ in 0..4 {
            let key = fresh_key();
            let body = json!({ "user_id": a, "amount": "2", "wallet": "live" });
            withdrawals.push((key.clone(), body.clone()));
            let (http, user_a) = (&http, &user_a);
            requests.push(Box::pin(async move {
                timed(
                    format!("round {round}: withdraw"),
                    http.post("/api/v1/wallets/withdraw", user_a, &key, &body),
                )
                .await
            }));
        }
        for path in [
            format!("/api/v1/users/{a}/wallets"),
            format!("/api/v1/users/{b}/transactions?limit=5"),
            format!("/api/v1/users/{a}"),
            "/health/ready".to_owned(),
        ] {
            let (http, admin) = (&http, &admin);
            requests.push(Box::pin(async move {
                timed(
                    format!("round {round}: GET {path}"),
                    http.get(&path, Some(admin)),
                )
                .await
            }));
        }
        answers.extend(join_all(requests).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let slowest = answers.iter().map(|t| t.took).max().unwrap();
    println!(
        "{} requests with the database unreachable; slowest answer {slowest:?}",
        answers.len()
    );
    for t in &answers {
        let r = t
            .reply
            .as_ref()
            .unwrap_or_else(|e| panic!("{}: no answer after {:?} ({e})", t.what, t.took));
        assert!(
            r.status == 503 && SHED_OR_DOWN.contains(&r.code()),
            "{}: {} {}",
            t.what,
            r.status,
            r.text
        );
        assert!(
            r.retry_after().is_some(),
            "{}: 503 without a Retry-After",
            t.what
        );
        assert!(
            t.took < Duration::from_secs(1),
            "{}: answered only after {:?}",
            t.what,
            t.took
        );
    }

    proxy.restore().unwrap();
    let restored_at = Instant::now();
    let policy = Policy {
        bound: Duration::from_secs(20),
        ..Policy::default()
    };
    let body = json!({ "user_id": b, "amount": "5", "wallet": "live" });
    let resumed = http
        .post_until_definite(
            "/api/v1/wallets/deposit",
            &service,
            &fresh_key(),
            &body,
            &policy,
        )
        .await;
    let took = restored_at.elapsed();
    assert_eq!(
        resumed.as_ref().map(|r| r.status),
        Ok(200),
        "no write succeeded after the database came back: {resumed:?}\nserver log:\n{}",
        tail(&server.log())
    );
    println!("a write succeeded {took:?} after the database came back");
    assert!(
        took < Duration::from_secs(5),
        "service resumed only {took:?} after the database came back"
    );

    for (path, tok, sent) in [
        ("/api/v1/wallets/deposit", &service, &deposits),
        ("/api/v1/wallets/withdraw", &user_a, &withdrawals),
    ] {
        for (key, body) in sent {
            let r = http
                .post_until_definite(path, tok, key, body, &policy)
                .await
                .unwrap_or_else(|e| panic!("{path} {key}: {e}"));
            r.expect(200);
            assert_eq!(
                r.header("idempotent-replayed"),
                None,
                "{path} {key}: a request answered 503 was stored"
            );
        }
    }
    let deposited = |user: i64| {
        Decimal::from(
            deposits
                .iter()
                .filter(|(_, b)| b["user_id"] == user)
                .count(),
        )
    };
    let withdrawn = Decimal::from(2 * withdrawals.len());
    assert_eq!(
        http.live_balance(a).await,
        opening.0 + deposited(a) - withdrawn
    );
    assert_eq!(
        http.live_balance(b).await,
        opening.1 + deposited(b) + Decimal::from(5)
    );
    tests::assert_books_balance_at(&url).await;
}

/// A server started with `env`, one user funded with 100, `n` deposit keys
/// and that user's wallet row locked from outside, so that every deposit
/// that reaches the database blocks until [`BlockedDeposits::release`].
struct BlockedDeposits {
    _db: PgDatabase,
    url: String,
    server: LedgerProcess,
    http: Arc<Http>,
    user: i64,
    opening: Decimal,
    keys: Vec<String>,
    amount: &'static str,
    /// The service's token, minted once: a client retries a write with the
    /// token it sent it with (a token minted in another second differs, and
    /// the server knows a retried write by its Authorization and key).
    service: String,
    /// The outside connection and its transaction holding the row lock.
    lock: Option<(sea_orm::DatabaseConnection, sea_orm::DatabaseTransaction)>,
}

/// One deposit of the first round: its key, its answer (or why there was
/// none), how long it took and when it came back.
type Sent = (String, Result<Reply, String>, Duration, Instant);

impl BlockedDeposits {
    async fn start(env: &[(&str, &str)], n: usize, amount: &'static str) -> Self {
        let db = PgDatabase::create().await;
        let url = db.url.clone();
        let server = LedgerProcess::start(&url, env).await;
        let http = Arc::new(Http::new(server.base(), Duration::from_secs(30)));
        let user = http.create_users(1).await[0];
        http.fund(user, "100").await;
        let opening = http.live_balance(user).await;
        let outside = sea_orm::Database::connect(&url).await.unwrap();
        let lock = outside.begin().await.unwrap();
        lock.execute_unprepared(&format!(
            "SELECT id FROM wallets WHERE user_id = {user} FOR UPDATE"
        ))
        .await
        .unwrap();
        Self {
            _db: db,
            url,
            server,
            http,
            user,
            opening,
            keys: (0..n).map(|_| fresh_key()).collect(),
            amount,
            service: token("backoffice", Role::Service),
            lock: Some((outside, lock)),
        }
    }

    fn body(&self) -> Value {
        json!({ "user_id": self.user, "amount": self.amount, "wallet": "live" })
    }

    /// Sends every deposit at once.
    fn send_all(&self) -> Vec<tokio::task::JoinHandle<Sent>> {
        self.send(&self.keys)
    }

    /// Sends the deposits of `keys` at once.
    fn send(&self, keys: &[String]) -> Vec<tokio::task::JoinHandle<Sent>> {
        let service = &self.service;
        let body = self.body();
        keys.iter()
            .map(|key| {
                let (http, service, key, body) = (
                    Arc::clone(&self.http),
                    service.clone(),
                    key.clone(),
                    body.clone(),
                );
                tokio::spawn(async move {
                    let sent = Instant::now();
                    let r = http
                        .post("/api/v1/wallets/deposit", &service, &key, &body)
                        .await;
                    let at = Instant::now();
                    (key, r.map_err(|e| e.to_string()), at - sent, at)
                })
            })
            .collect()
    }

    /// Waits until `n` of the server's connections wait on a lock (the
    /// wallet's, locked from outside).
    async fn until_blocked(&self, n: i64) {
        let db = sea_orm::Database::connect(&self.url).await.unwrap();
        let mut waiting = 0;
        for _ in 0..400 {
            let row = db
                .query_one_raw(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Postgres,
                    "SELECT COUNT(*)::bigint AS n FROM pg_stat_activity \
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                ))
                .await
                .unwrap()
                .unwrap();
            waiting = row.try_get::<i64>("", "n").unwrap();
            if waiting >= n {
                db.close().await.unwrap();
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{waiting} connections wait on the wallet's lock, expected {n}");
    }

    /// Unlocks the wallet; returns when.
    async fn release(&mut self) -> Instant {
        let released_at = Instant::now();
        let (outside, lock) = self.lock.take().expect("released once");
        lock.rollback().await.unwrap();
        outside.close().await.unwrap();
        released_at
    }

    /// Retries every deposit with its key until it has a definite answer:
    /// those `served` the first time are replayed, the others execute now.
    /// Then the balance is the opening balance plus each deposit once, the
    /// journal has one entry per deposit (and the funding one), and
    /// reconciliation is clean.
    async fn every_deposit_executes_once(&self, served: &[String]) {
        let (http, url, keys) = (&self.http, self.url.as_str(), &self.keys);
        let service = token("backoffice", Role::Service);
        let body = self.body();
        let policy = Policy {
            bound: Duration::from_secs(30),
            ..Policy::default()
        };
        for key in keys {
            let r = http
                .post_until_definite("/api/v1/wallets/deposit", &service, key, &body, &policy)
                .await
                .unwrap_or_else(|e| panic!("deposit {key}: {e}"));
            r.expect(200);
            assert_eq!(
                r.header("idempotent-replayed") == Some("true"),
                served.contains(key),
                "deposit {key}: replayed iff it was served the first time"
            );
        }
        assert_eq!(
            http.live_balance(self.user).await,
            self.opening + dec(self.amount) * Decimal::from(keys.len()),
            "the balance is not the opening balance plus each deposit once"
        );
        let deposits: i64 = journal(url)
            .await
            .iter()
            .filter(|((_, kind), _)| kind == "deposit")
            .map(|(_, n)| *n)
            .sum();
        assert_eq!(deposits, 1 + keys.len() as i64, "deposit journal entries");
        tests::assert_books_balance_at(url).await;
    }
}

/// Invariant: with every pooled connection busy (a pool of 2, both held by
/// deposits sent first and blocked on a wallet row locked from outside), a
/// request waits no longer than its wait budget and is shed with 503
/// `overloaded` and `Retry-After` — well within 1 s — instead of queueing;
/// a shed request is neither executed nor stored. Once the lock is released
/// the blocked deposits complete, and every shed deposit retried with its
/// key executes exactly once: the balance is the opening balance plus every
/// deposit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn saturated_pool_sheds_fast_and_retries_succeed() {
    let _several_servers = tests::heavy().await;
    const N: usize = 40;
    const POOL: usize = 2;
    let env = [
        ("LEDGER_DB_MAX_CONNECTIONS", "2"),
        ("LEDGER_DB_WAIT_BUDGET_MS", "100"),
    ];
    let mut blocked = BlockedDeposits::start(&env, N, "0.5").await;
    // One at a time until both pooled connections wait on the lock, each
    // deposit in a group of its own; only then the rest. Sent all at once,
    // on a busy machine they could all be queued before the first group
    // starts, and all share it: nothing would wait for a connection.
    let mut first_round = Vec::new();
    for (n, key) in (1..).zip(&blocked.keys[..POOL]) {
        first_round.extend(blocked.send(std::slice::from_ref(key)));
        blocked.until_blocked(n).await;
    }
    first_round.extend(blocked.send(&blocked.keys[POOL..]));
    // Well under the server's lock_timeout (5 s), so the blocked deposits
    // wait for this lock instead of failing on it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let released_at = blocked.release().await;
    let server = &blocked.server;

    let mut served = Vec::new();
    let mut shed = Vec::new();
    for task in join_all(first_round).await {
        let (key, reply, took, at) = task.unwrap();
        let r = reply.unwrap_or_else(|e| panic!("deposit {key}: no answer after {took:?} ({e})"));
        match (r.status, r.code()) {
            (200, _) => served.push((key, at)),
            (503, "overloaded") => {
                assert!(
                    r.retry_after().is_some(),
                    "shed without a Retry-After: {}",
                    r.text
                );
                shed.push((key, took));
            }
            _ => panic!(
                "deposit {key}: {} {} (expected 200 or 503 overloaded)\nserver log:\n{}",
                r.status,
                r.text,
                tail(&server.log())
            ),
        }
    }
    let slowest_shed = shed.iter().map(|(_, t)| *t).max().unwrap_or_default();
    println!(
        "{} served, {} shed; slowest shed answer {slowest_shed:?}",
        served.len(),
        shed.len()
    );
    // The two first, one group each, were let in; the rest found no
    // connection within the wait budget and were shed.
    assert!(
        served.len() == POOL && shed.len() == N - POOL,
        "{} served and none shed while the wallet was locked with a pool of {POOL}",
        served.len()
    );
    assert!(
        served.iter().all(|(_, at)| *at >= released_at),
        "a deposit completed while its wallet was locked: the lock did not hold"
    );
    for (key, took) in &shed {
        assert!(
            *took < Duration::from_secs(1),
            "deposit {key} was shed only after {took:?}"
        );
    }

    let served: Vec<String> = served.into_iter().map(|(k, _)| k).collect();
    blocked.every_deposit_executes_once(&served).await;
}

/// Invariant: past the in-flight limit a request is refused at once, and a
/// refused write retried comes before new work. With
/// `LEDGER_MAX_IN_FLIGHT=8` (2 places kept for retried writes), group commit
/// off (a write queued for a group does not count: see the next test) and
/// every admitted deposit blocked on a wallet row locked from outside (the
/// pool has room and the wait budget is long, so nothing is shed by the pool),
/// 40 concurrent deposits: exactly 6 are let in and the 34 others are
/// answered 503 `overloaded` with `Retry-After` while the 6 are still
/// blocked — they never waited for the database. Two of the refused,
/// retried with their keys, take the kept places; a third is refused again.
/// Health, readiness and metrics answer meanwhile, and the metrics show what
/// is in flight and what was shed. After the release the 8 complete, and
/// every refused deposit retried with its key executes exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_in_flight_limit_requests_are_refused_at_once() {
    let _several_servers = tests::heavy().await;
    const N: usize = 40;
    const NEW: usize = 6;
    let env = [
        ("LEDGER_DB_MAX_CONNECTIONS", "10"),
        ("LEDGER_DB_WAIT_BUDGET_MS", "30000"),
        ("LEDGER_MAX_IN_FLIGHT", "8"),
        ("LEDGER_GROUP_COMMIT", "false"),
    ];
    let mut blocked = BlockedDeposits::start(&env, N, "0.25").await;
    let http = Arc::clone(&blocked.http);
    let metrics = || async {
        let m = http.get("/metrics", None).await.unwrap();
        let of = |name| metric(&m.text, name);
        (
            of("ledger_http_requests_in_flight"),
            of("ledger_requests_shed_total{reason=\"overloaded\"}"),
        )
    };
    let until_metrics = |want: (usize, usize)| async move {
        let mut seen = (None, None);
        for _ in 0..200 {
            seen = metrics().await;
            if seen == (Some(want.0), Some(want.1)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("in flight and shed: {seen:?}, expected {want:?}");
    };
    let first_round = blocked.send_all();
    // the refusals come back at once, with the admitted still blocked
    until_metrics((NEW, N - NEW)).await;
    // counted before sent: wait for the refusals to reach the client too
    for _ in 0..200 {
        if first_round.iter().filter(|t| t.is_finished()).count() >= N - NEW {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (finished, waiting): (Vec<_>, Vec<_>) =
        first_round.into_iter().partition(|t| t.is_finished());
    assert_eq!(
        finished.len(),
        N - NEW,
        "answered while the wallet was locked"
    );
    let mut refused = Vec::new();
    for task in finished {
        let (key, reply, _, _) = task.await.unwrap();
        let r = reply.unwrap_or_else(|e| panic!("deposit {key}: no answer ({e})"));
        r.problem(503, "overloaded");
        let retry_after = r.retry_after();
        assert!(
            retry_after.is_some(),
            "refused without a Retry-After: {}",
            r.text
        );
        refused.push(key);
    }
    // two retried writes take the kept places; a third is refused again
    let retried = blocked.send(&refused[..2]);
    until_metrics((NEW + 2, N - NEW)).await;
    let again = http
        .post(
            "/api/v1/wallets/deposit",
            &blocked.service,
            &refused[2],
            &blocked.body(),
        )
        .await
        .unwrap();
    again.problem(503, "overloaded");
    until_metrics((NEW + 2, N - NEW + 1)).await;
    for probe in ["/health", "/health/ready"] {
        http.get(probe, None).await.unwrap().expect(200);
    }
    let released_at = blocked.release().await;

    let mut served = Vec::new();
    for task in waiting.into_iter().chain(retried) {
        let (key, reply, _, at) = task.await.unwrap();
        let r = reply.unwrap_or_else(|e| panic!("deposit {key}: no answer ({e})"));
        r.expect(200);
        assert!(at >= released_at, "deposit {key} completed while locked");
        served.push(key);
    }
    assert_eq!(served.len(), NEW + 2);
    blocked.every_deposit_executes_once(&served).await;
}

/// Invariant: a money write waiting in the group-commit queue holds no
/// connection and does not count against the in-flight limit. With
/// `LEDGER_MAX_IN_FLIGHT=8`, group commit on and 40 concurrent deposits all
/// waiting on one wallet row locked from outside, none is refused: while
/// they wait the in-flight gauge counts none of them, nothing is shed, and a
/// read is let in and answered. After the release all 40 are served, each
/// executed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_queued_for_group_commit_leave_the_in_flight_limit_free() {
    let _several_servers = tests::heavy().await;
    const N: usize = 40;
    let env = [
        ("LEDGER_DB_MAX_CONNECTIONS", "10"),
        ("LEDGER_DB_WAIT_BUDGET_MS", "30000"),
        ("LEDGER_MAX_IN_FLIGHT", "8"),
    ];
    let mut blocked = BlockedDeposits::start(&env, N, "0.25").await;
    let http = Arc::clone(&blocked.http);
    let first_round = blocked.send_all();
    // Well under the server's lock_timeout (5 s): the deposits wait.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        first_round.iter().all(|t| !t.is_finished()),
        "a deposit was answered while the wallet was locked"
    );
    let m = http.get("/metrics", None).await.unwrap();
    assert_eq!(metric(&m.text, "ledger_http_requests_in_flight"), Some(0));
    let shed = metric(&m.text, "ledger_requests_shed_total{reason=\"overloaded\"}");
    assert!(shed.unwrap_or(0) == 0, "shed: {shed:?}");
    let service = token("backoffice", Role::Service);
    let wallets = format!("/api/v1/users/{}/wallets", blocked.user);
    http.get(&wallets, Some(&service))
        .await
        .unwrap()
        .expect(200);
    let released_at = blocked.release().await;
    let mut served = Vec::new();
    for task in first_round {
        let (key, reply, _, at) = task.await.unwrap();
        let r = reply.unwrap_or_else(|e| panic!("deposit {key}: no answer ({e})"));
        r.expect(200);
        assert!(at >= released_at, "deposit {key} completed while locked");
        served.push(key);
    }
    assert_eq!(served.len(), N);
    blocked.every_deposit_executes_once(&served).await;
}

/// The value of the sample `name` (with its labels) in a Prometheus text
/// exposition.
fn metric(text: &str, name: &str) -> Option<usize> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as usize)
}

/// Invariant: a server killed while a group of writes is in flight commits
/// none of it (no partial group is ever visible), and every write reaches a
/// definite answer after the restart, executed exactly once. One group at a
/// time: the first write waits on a row lock held from outside while the
/// others queue behind it; the kill comes with all of them in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_group_commits_nothing_partial() {
    let _several_servers = tests::heavy().await;
    const N: usize = 24;
    let db = PgDatabase::create().await;
    let url = db.url.clone();
    // A patient wait budget: the queued writes must still be in flight (not
    // shed) when the kill comes.
    let mut server = LedgerProcess::start(
        &url,
        &[
            ("LEDGER_GROUP_COMMIT_GROUPS", "1"),
            ("LEDGER_DB_WAIT_BUDGET_MS", "30000"),
        ],
    )
    .await;
    let http = Arc::new(Http::new(server.base(), Duration::from_secs(30)));
    let users = http.create_users(3).await;
    for &u in &users {
        http.fund(u, "10").await;
    }
    let service = token("backoffice", Role::Service);
    // Every write on the wallet locked below: whichever group forms first,
    // it waits on that lock, so nothing can commit before the kill.
    let writes: Vec<(String, Value)> = (0..N)
        .map(|_| {
            (
                fresh_key(),
                json!({ "user_id": users[0], "amount": "1", "wallet": "live" }),
            )
        })
        .collect();

    let outside = sea_orm::Database::connect(&url).await.unwrap();
    let lock = outside.begin().await.unwrap();
    lock.execute_unprepared(&format!(
        "SELECT id FROM wallets WHERE user_id = {} FOR UPDATE",
        users[0]
    ))
    .await
    .unwrap();
    let in_flight: Vec<_> = writes
        .iter()
        .map(|(key, body)| {
            let (http, service, key, body) = (
                Arc::clone(&http),
                service.clone(),
                key.clone(),
                body.clone(),
            );
            tokio::spawn(async move {
                http.post("/api/v1/wallets/deposit", &service, &key, &body)
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    server.kill();
    lock.rollback().await.unwrap();
    outside.close().await.unwrap();
    for task in join_all(in_flight).await {
        assert!(
            task.unwrap().is_err(),
            "a write was answered although its group never committed"
        );
    }
    let deposits = |j: &BTreeMap<(String, String), i64>| -> i64 {
        j.iter()
            .filter(|((_, kind), _)| kind == "deposit")
            .map(|(_, n)| *n)
            .sum()
    };
    assert_eq!(
        deposits(&journal(&url).await),
        users.len() as i64,
        "a write of the killed group was committed"
    );

    server.restart().await;
    let policy = Policy {
        bound: Duration::from_secs(30),
        ..Policy::default()
    };
    for (key, body) in &writes {
        let r = http
            .post_until_definite("/api/v1/wallets/deposit", &service, key, body, &policy)
            .await
            .unwrap_or_else(|e| panic!("deposit {key}: {e}"));
        r.expect(200);
    }
    for (i, &u) in users.iter().enumerate() {
        let mine = if i == 0 { N } else { 0 };
        assert_eq!(
            http.live_balance(u).await,
            Decimal::from(10 + mine as i64),
            "user {u}: each deposit exactly once"
        );
    }
    assert_eq!(
        deposits(&journal(&url).await),
        (users.len() + N) as i64,
        "deposit journal entries"
    );
    tests::assert_books_balance_at(&url).await;
}
