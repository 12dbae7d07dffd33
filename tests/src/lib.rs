//! Test harness: spawns the real app on port 0 against a fresh database per
//! test — a temporary SQLite file, or on PostgreSQL a database of its own
//! created from `TEST_DATABASE_URL` — so tests run in parallel.
//! Tracing is silent unless `TEST_LOG=1`.

// The harness, the load generator and the fault suite read JSON answers by
// index and fail loudly: test tooling, not the server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::{Arc, Once};
use std::time::Duration;

use api::app::{self, Server};
use api::auth::{Role, Tokens};
use api::state::AppState;
use chrono::{DateTime, Utc};
use infra::Config;
use infra::config::Secret;
use sea_orm::{ConnectionTrait, Database, TransactionTrait};
use serde_json::Value;

mod accept;
pub mod faults;
pub mod load;
pub mod payout_sim;
pub mod process;
pub mod proxy;

/// Where users are created.
pub const USERS: &str = "/api/v1/users";

pub const SECRET: &str = "integration-test-secret-0123456789";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `postgres://h:5432/postgres?x` -> `postgres://h:5432/{name}?x`
pub fn database_url(admin: &str, name: &str) -> String {
    let (base, query) = admin
        .split_once('?')
        .map_or((admin, None), |(b, q)| (b, Some(q)));
    let root = base.rsplit_once('/').map_or(base, |(r, _)| r);
    match query {
        Some(q) => format!("{root}/{name}?{q}"),
        None => format!("{root}/{name}"),
    }
}

/// Creates a fresh PostgreSQL database from `TEST_DATABASE_URL`; returns its
/// name and URL.
pub async fn create_pg_database() -> (String, String) {
    let name = format!("ledger_test_{}", uuid::Uuid::new_v4().simple());
    let admin = Database::connect(admin_url())
        .await
        .expect("PostgreSQL must be reachable at TEST_DATABASE_URL");
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    admin.close().await.unwrap();
    let url = database_url(&admin_url(), &name);
    (name, url)
}

/// A fresh PostgreSQL database that is dropped when this value is — also
/// when a test fails half-way and never reaches its clean-up, so failed runs
/// leave nothing behind.
pub struct PgDatabase {
    pub name: String,
    pub url: String,
}

impl PgDatabase {
    pub async fn create() -> Self {
        let (name, url) = create_pg_database().await;
        Self { name, url }
    }
}

/// `Drop` cannot await, and the test's runtime may be the one unwinding
/// (blocking on it would deadlock): the drop runs on a thread of its own with
/// its own runtime, and waiting for it means the database is gone when the
/// test ends. Never panics: a panic while unwinding aborts the test binary.
impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(30), drop_database(&name))
                    .await
                    .map_err(|_| format!("dropping {name} timed out"))?
                    .map_err(|e| format!("dropping {name}: {e}"))
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("test database left behind: {e}"),
            Err(_) => eprintln!("test database left behind: the dropping thread panicked"),
        }
    }
}

/// Drops a test database, closing the connections the app still holds.
async fn drop_database(name: &str) -> Result<(), sea_orm::DbErr> {
    let admin = Database::connect(admin_url()).await?;
    let dropped = admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
    admin.close().await?;
    dropped.map(|_| ())
}

/// A token signed with `SECRET`, valid for an hour.
pub fn token(sub: &str, role: Role) -> String {
    Tokens::new(SECRET)
        .mint(sub, role, Duration::from_secs(3600))
        .unwrap()
}

fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var("TEST_LOG").is_ok_and(|v| v == "1") {
            // The test process's log writer lives as long as the process.
            std::mem::forget(infra::telemetry::init(infra::config::LogFormat::Text));
        }
    });
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Reply {
    /// Reads the whole answer.
    pub async fn from(resp: reqwest::Response) -> Self {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            text,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `Retry-After` header as a duration, if there is one that parses.
    pub fn retry_after(&self) -> Option<Duration> {
        self.header("retry-after")
            .and_then(load::retry::parse_retry_after)
    }

    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    #[track_caller]
    pub fn expect(&self, status: u16) -> &Self {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        self
    }

    /// Asserts a problem+json error with this status and code.
    #[track_caller]
    pub fn problem(&self, status: u16, code: &str) -> &Self {
        assert_eq!(
            (self.status, self.code()),
            (status, code),
            "body: {}",
            self.text
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "body: {}",
            self.text
        );
        assert_eq!(self.body["status"], status);
        assert!(self.body["title"].is_string() && self.body["detail"].is_string());
        assert_eq!(self.body["type"], "about:blank");
        assert!(!self.body["request_id"].as_str().unwrap_or("").is_empty());
        self
    }
}

pub struct TestApp {
    pub engine: Engine,
    pub base: String,
    pub client: reqwest::Client,
    pub state: Arc<AppState>,
    pub database_url: String,
    server: Option<Server>,
    pg_database: Option<PgDatabase>,
    _dir: Option<tempfile::TempDir>,
}

impl TestApp {
    pub async fn spawn(engine: Engine) -> Self {
        Self::spawn_with(engine, |_| {}).await
    }

    pub async fn spawn_with(engine: Engine, tweak: impl FnOnce(&mut Config)) -> Self {
        init_tracing();
        let mut dir = None;
        let mut pg_database = None;
        let database_url = match engine {
            Engine::Sqlite => {
                let d = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}/ledger.db", d.path().display());
                dir = Some(d);
                url
            }
            Engine::Postgres => {
                let db = PgDatabase::create().await;
                let url = db.url.clone();
                pg_database = Some(db);
                url
            }
        };
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".into();
        config.database.url = database_url.clone();
        config.database.max_connections = 20;
        // These tests fire bursts of concurrent requests and check the books,
        // not shedding: they wait for a connection as long as a patient
        // client would retry. Shedding has tests of its own.
        config.database.wait_budget = Duration::from_secs(30);
        config.server.max_in_flight = Some(0);
        config.server.jwt_secret = Secret::new(SECRET);
        config.server.rate_limit_per_second = 0;
        config.server.shutdown_drain = Duration::ZERO;
        tweak(&mut config);
        config.validate().unwrap();
        Self::start(engine, config, dir, pg_database).await
    }

    /// A fresh app (`spawn`) and one user created on it (`create_user`).
    pub async fn with_user(engine: Engine, email: &str) -> (Self, i64) {
        let app = Self::spawn(engine).await;
        let u = app.create_user(email).await;
        (app, u)
    }

    /// A fresh app (`spawn`) and one user on it with `amount` in its live
    /// wallet (`funded_user`).
    pub async fn with_funded_user(engine: Engine, email: &str, amount: &str) -> (Self, i64) {
        let app = Self::spawn(engine).await;
        let u = app.funded_user(email, amount).await;
        (app, u)
    }

    /// A fresh app (`spawn`) and a trader on it (`trader`): a user with
    /// `amount` in its live wallet, and the symbol of `priced` at its price.
    pub async fn with_trader(
        engine: Engine,
        email: &str,
        amount: &str,
        priced: (&str, &str),
    ) -> (Self, i64) {
        let app = Self::spawn(engine).await;
        let u = app.trader(email, amount, priced).await;
        (app, u)
    }

    /// A second server on the same database (two processes behind one balancer).
    pub async fn sibling(&self) -> TestApp {
        self.sibling_with(|_| {}).await
    }

    /// A second server on the same database with settings of its own.
    pub async fn sibling_with(&self, tweak: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = self.state.config.clone();
        tweak(&mut config);
        Self::start(self.engine, config, None, None).await
    }

    async fn start(
        engine: Engine,
        config: Config,
        dir: Option<tempfile::TempDir>,
        pg_database: Option<PgDatabase>,
    ) -> Self {
        let database_url = config.database.url.clone();
        let state = app::prepare(config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = app::start(Arc::clone(&state), listener).await.unwrap();
        let base = format!("http://{}", server.addr);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build()
            .unwrap();
        Self {
            engine,
            base,
            client,
            state,
            database_url,
            server: Some(server),
            pg_database,
            _dir: dir,
        }
    }

    /// The PostgreSQL database of this test, if any.
    pub fn pg_database(&self) -> Option<&str> {
        self.pg_database.as_ref().map(|db| db.name.as_str())
    }

    pub fn token(&self, sub: &str, role: Role) -> String {
        token(sub, role)
    }

    pub fn admin(&self) -> String {
        self.token("root", Role::Admin)
    }

    pub fn service(&self) -> String {
        self.token("backoffice", Role::Service)
    }

    pub fn user(&self, id: i64) -> String {
        self.token(&id.to_string(), Role::User)
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        Reply::from(req.send().await.expect("request failed")).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.send(req).await
    }

    /// GET with `token` that must answer 200; returns the answer.
    pub async fn get_ok(&self, path: &str, token: &str) -> Reply {
        let r = self.get(path, Some(token)).await;
        r.expect(200);
        r
    }

    /// `assert_look_alike` for a GET with `token` of another user's
    /// resource at `theirs` and of a missing one at `missing`.
    pub async fn assert_get_looks_alike(&self, theirs: &str, missing: &str, token: &str) {
        let theirs = self.get(theirs, Some(token)).await;
        let missing = self.get(missing, Some(token)).await;
        assert_look_alike(&theirs, &missing);
    }

    /// POST a raw body (for malformed-input tests).
    pub async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: &str,
    ) -> Reply {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        self.send(req).await
    }

    pub async fn post(&self, path: &str, token: &str, key: Option<&str>, body: Value) -> Reply {
        self.post_raw(path, Some(token), key, &body.to_string())
            .await
    }

    /// POST with an `Idempotency-Key` of its own: a new operation.
    pub async fn post_new(&self, path: &str, token: &str, body: Value) -> Reply {
        self.post(path, token, Some(&fresh_key()), body).await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> Reply {
        let req = self
            .client
            .put(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body);
        self.send(req).await
    }

    /// Sets a price as the back office does.
    pub async fn set_price(&self, symbol: &str, price: &str) -> Reply {
        self.put(
            &format!("/api/v1/prices/{symbol}"),
            &self.service(),
            serde_json::json!({ "price": price }),
        )
        .await
    }

    /// Opens an order as the user itself: `(symbol, side, quantity,
    /// leverage, wallet)`.
    pub async fn open_order(
        &self,
        user_id: i64,
        (symbol, side, quantity, leverage, wallet): (&str, &str, &str, u32, &str),
    ) -> Reply {
        self.post(
            "/api/v1/orders",
            &self.user(user_id),
            Some(&fresh_key()),
            serde_json::json!({
                "user_id": user_id, "symbol": symbol, "side": side,
                "quantity": quantity, "leverage": leverage, "wallet": wallet,
            }),
        )
        .await
    }

    /// Opens an order that must be accepted; returns its id.
    pub async fn opened(&self, user_id: i64, order: (&str, &str, &str, u32, &str)) -> i64 {
        let r = self.open_order(user_id, order).await;
        r.expect(201);
        r.body["id"].as_i64().unwrap()
    }

    /// Releases lock `lock_id` with `token`, nothing reported (no
    /// Idempotency-Key: the route takes none).
    pub async fn release_lock(&self, token: &str, lock_id: &str) -> Reply {
        self.post(
            &format!("/api/v1/locks/{lock_id}/release"),
            token,
            None,
            serde_json::json!({}),
        )
        .await
    }

    /// Closes an order with `token`.
    pub async fn close_order(&self, order_id: i64, token: &str) -> Reply {
        self.post(
            &format!("/api/v1/orders/{order_id}/close"),
            token,
            Some(&fresh_key()),
            serde_json::json!({}),
        )
        .await
    }

    /// Asks the back office to create a user, optionally with a referral
    /// code; returns the answer, whatever it is.
    pub async fn try_signup(&self, email: &str, referral_code: Option<&str>) -> Reply {
        let mut body = serde_json::json!({ "email": email });
        if let Some(code) = referral_code {
            body["referral_code"] = code.into();
        }
        self.post_new(USERS, &self.service(), body).await
    }

    /// Creates a user, optionally with a referral code; returns the body.
    pub async fn signup(&self, email: &str, referral_code: Option<&str>) -> Value {
        let r = self.try_signup(email, referral_code).await;
        r.expect(201);
        r.body
    }

    /// The wallet as the API reports it.
    pub async fn wallet(&self, user_id: i64, wallet: &str) -> Value {
        let r = self
            .get_ok(&format!("/api/v1/users/{user_id}/wallets"), &self.admin())
            .await;
        r.body
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["kind"] == wallet)
            .cloned()
            .unwrap()
    }

    /// Creates a user with `amount` deposited into its live wallet.
    pub async fn funded_user(&self, email: &str, amount: &str) -> i64 {
        let u = self.create_user(email).await;
        self.deposit(u, amount, "live").await.expect(200);
        u
    }

    /// A funded user (`funded_user`) and `symbol` priced at `price`: the
    /// set-up of a trading test.
    pub async fn trader(&self, email: &str, amount: &str, (symbol, price): (&str, &str)) -> i64 {
        let u = self.funded_user(email, amount).await;
        self.set_price(symbol, price).await.expect(200);
        u
    }

    /// Creates a user through the API and returns its id.
    pub async fn create_user(&self, email: &str) -> i64 {
        self.signup(email, None).await["id"].as_i64().unwrap()
    }

    pub async fn deposit(&self, user_id: i64, amount: &str, wallet: &str) -> Reply {
        self.post_new(
            "/api/v1/wallets/deposit",
            &self.service(),
            serde_json::json!({ "user_id": user_id, "amount": amount, "wallet": wallet }),
        )
        .await
    }

    /// Withdraws `amount` from the user's `wallet` with `token`, under a key
    /// of its own.
    pub async fn withdraw(&self, token: &str, user_id: i64, amount: &str, wallet: &str) -> Reply {
        self.post_new(
            "/api/v1/wallets/withdraw",
            token,
            serde_json::json!({ "user_id": user_id, "amount": amount, "wallet": wallet }),
        )
        .await
    }

    /// Transfers `amount` between the `wallet`s of `(from, to)` with `token`,
    /// under a key of its own.
    pub async fn transfer(
        &self,
        token: &str,
        (from, to): (i64, i64),
        amount: &str,
        wallet: &str,
    ) -> Reply {
        self.post_new(
            "/api/v1/wallets/transfer",
            token,
            serde_json::json!({
                "from_user_id": from, "to_user_id": to, "amount": amount, "wallet": wallet,
            }),
        )
        .await
    }

    /// The wallet's balance as the API reports it.
    pub async fn balance(&self, user_id: i64, wallet: &str) -> String {
        self.wallet(user_id, wallet).await["balance"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The kinds of the user's journal entries, oldest first.
    pub async fn journal_kinds(&self, user_id: i64, wallet: &str) -> Vec<String> {
        let r = self
            .get_ok(
                &format!("/api/v1/users/{user_id}/transactions?wallet={wallet}&limit=500"),
                &self.admin(),
            )
            .await;
        let mut kinds: Vec<String> = r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect();
        kinds.reverse();
        kinds
    }

    /// What `ledger reconcile` reports for this test's database.
    pub async fn reconcile(&self) -> domain::ledger::reconcile::Report {
        domain::ledger::reconcile::check_all(&self.state.ledger.db.conn)
            .await
            .unwrap()
    }

    /// Balances equal journal sums and hash chains verify, for every wallet.
    pub async fn assert_books_balance(&self) -> domain::ledger::reconcile::Report {
        let report = self.reconcile().await;
        assert!(
            report.is_clean(),
            "reconciliation failed: {:?}",
            report.discrepancies
        );
        report
    }

    /// Asserts the books balance (`assert_books_balance`), then stops: the
    /// end of most tests.
    pub async fn assert_books_balance_and_stop(self) {
        self.assert_books_balance().await;
        self.stop().await;
    }

    /// Locks `user`'s wallets from outside, in a transaction of its own, so
    /// that the next write to them waits (and the writes behind it queue
    /// up) until the transaction ends. Returns the connection and the
    /// transaction.
    pub async fn block_wallets_of(
        &self,
        user: i64,
    ) -> (sea_orm::DatabaseConnection, sea_orm::DatabaseTransaction) {
        let outside = Database::connect(&self.database_url).await.unwrap();
        let blocker = outside.begin().await.unwrap();
        let sql = match self.engine {
            Engine::Postgres => format!("SELECT id FROM wallets WHERE user_id = {user} FOR UPDATE"),
            // SQLite: a write takes the database write lock
            Engine::Sqlite => {
                format!("UPDATE wallets SET version = version WHERE user_id = {user}")
            }
        };
        blocker.execute_unprepared(&sql).await.unwrap();
        (outside, blocker)
    }

    /// Stops the server and closes its pool, keeping the database.
    pub async fn stop_server(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown(Duration::ZERO).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown(Duration::ZERO).await;
        }
        // dropping it drops the database
        self.pg_database.take();
    }
}

/// Balances equal journal sums and hash chains verify, for every wallet of
/// the database at `url` (one a server process, not this test, runs on).
pub async fn assert_books_balance_at(url: &str) {
    let conn = Database::connect(url).await.unwrap();
    let report = domain::ledger::reconcile::check_all(&conn).await.unwrap();
    conn.close().await.unwrap();
    assert!(
        report.is_clean(),
        "reconciliation failed: {:?}",
        report.discrepancies
    );
}

/// Tests that run several servers or server processes (each with a pool of
/// its own) take this first and so run one at a time: beside the other
/// tests of the binary running in parallel, they then stay within
/// PostgreSQL's default 100 connections.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// Two servers on one fresh PostgreSQL database (two processes behind one
/// balancer), and the `heavy` guard to hold while they run.
pub async fn two_instances() -> (tokio::sync::MutexGuard<'static, ()>, TestApp, TestApp) {
    let several_servers = heavy().await;
    let app = TestApp::spawn(Engine::Postgres).await;
    let sibling = app.sibling().await;
    (several_servers, app, sibling)
}

pub fn fresh_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A count chosen per engine: PostgreSQL runs the contract's numbers,
/// SQLite, whose writers serialize, lower ones.
pub fn scale(engine: Engine, postgres: usize, sqlite: usize) -> usize {
    match engine {
        Engine::Postgres => postgres,
        Engine::Sqlite => sqlite,
    }
}

/// Another user's resource looks unknown: `theirs` (an answer about it)
/// and `missing` (the same question about one that does not exist) are
/// both 404 `not_found`, alike in type, title, status, code and detail.
#[track_caller]
pub fn assert_look_alike(theirs: &Reply, missing: &Reply) {
    theirs.problem(404, "not_found");
    missing.problem(404, "not_found");
    for field in ["type", "title", "status", "code", "detail"] {
        assert_eq!(
            theirs.body[field], missing.body[field],
            "{field}: {} / {}",
            theirs.text, missing.text
        );
    }
}

#[track_caller]
pub fn assert_no_5xx(replies: &[Reply]) {
    for r in replies {
        assert!(r.status < 500, "server error: {} {}", r.status, r.text);
    }
}

/// The body of a deposit or withdrawal of `amount` on `user`'s live wallet.
pub fn live(user: i64, amount: &str) -> Value {
    serde_json::json!({ "user_id": user, "amount": amount, "wallet": "live" })
}

/// How many observations of a batch-size histogram (group commit's groups,
/// coalesced reads) were above one: batches that were shared.
pub fn shared(sizes: &prometheus::Histogram) -> u64 {
    let alone = prometheus::core::Collector::collect(sizes)
        .iter()
        .flat_map(|f| f.get_metric())
        .flat_map(|m| m.get_histogram().get_bucket())
        .find(|b| b.upper_bound() == 1.0)
        .map_or(0, |b| b.cumulative_count());
    sizes.get_sample_count() - alone
}

/// A decimal string as a number, for comparing amounts.
pub fn dec(s: &str) -> rust_decimal::Decimal {
    s.parse().unwrap()
}

/// A JSON amount field as a number.
pub fn dec_of(v: &Value) -> rust_decimal::Decimal {
    dec(v.as_str().unwrap_or_else(|| panic!("not an amount: {v}")))
}

/// Declares one test per engine from one async body taking an `Engine`.
#[macro_export]
macro_rules! both_engines {
    ($($name:ident),* $(,)?) => {
        pub mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::Engine::Sqlite).await
                }
            )*
        }
        pub mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::Engine::Postgres).await
                }
            )*
        }
    };
}

/// The instant an RFC 3339 timestamp of a response body names.
pub fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

/// Sleeps until `at` (at once when it has passed).
pub async fn until(at: DateTime<Utc>) {
    if let Ok(wait) = (at - Utc::now()).to_std() {
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether PostgreSQL knows a database of this name.
    async fn database_exists(name: &str) -> bool {
        let admin = Database::connect(admin_url()).await.unwrap();
        let row = admin
            .query_one_raw(sea_orm::Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "SELECT count(*) AS n FROM pg_database WHERE datname = $1",
                [name.into()],
            ))
            .await
            .unwrap()
            .unwrap();
        admin.close().await.unwrap();
        row.try_get::<i64>("", "n").unwrap() == 1
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_test_that_panics_still_drops_its_database() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let failed = tokio::spawn(async move {
            let app = TestApp::spawn(Engine::Postgres).await;
            let name = app.pg_database().unwrap().to_owned();
            assert!(database_exists(&name).await);
            tx.send(name).unwrap();
            panic!("a failing test: its database must be dropped all the same");
        })
        .await;
        assert!(failed.unwrap_err().is_panic());
        let name = rx.await.unwrap();
        assert!(!database_exists(&name).await, "{name} was left behind");
    }

    #[test]
    fn database_url_swaps_the_database_name() {
        assert_eq!(
            super::database_url("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            super::database_url("postgres://h/db?sslmode=disable", "t2"),
            "postgres://h/t2?sslmode=disable"
        );
    }
}
