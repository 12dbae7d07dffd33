//! One typed configuration, loaded once at start-up: built-in defaults, then an
//! optional TOML file (`LEDGER_CONFIG`), then `LEDGER_*` environment variables
//! (and `DATABASE_URL`). Validated before anything uses it; logged with the
//! secret redacted.
//!
//! The file keys and variable names are flat (`db_max_connections`,
//! `LEDGER_DB_MAX_CONNECTIONS`), as operators know them; the code reads
//! sections (`config.database.max_connections`). The flat document is
//! deserialized into [`Settings`] and the sections are built from it, because
//! serde's `flatten` cannot be combined with refusing unknown keys. Money
//! settings are parsed into decimals there, once, each error naming its key.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use rust_decimal::Decimal;
use serde::Deserialize;

/// A value that must never reach a log line.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("<unset>")
        } else {
            f.write_str("<redacted>")
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub retry: RetryConfig,
    pub idempotency: IdempotencyConfig,
    pub trading: TradingConfig,
    pub referrals: ReferralConfig,
    pub group_commit: GroupCommitConfig,
    pub reads: ReadBatchConfig,
    pub locks: LockConfig,
    pub holds: HoldConfig,
    pub workflows: WorkflowConfig,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    /// Address the HTTP server binds to.
    pub listen: String,
    /// Bind with SO_REUSEPORT, so that several instances on one host share
    /// the address and the kernel spreads connections across them (each
    /// process holds at most its open-files limit of connections).
    pub reuse_port: bool,
    pub max_body_bytes: usize,
    /// Comma-separated origins allowed by CORS; `*` for any; empty for none.
    pub cors_allowed_origins: String,
    pub log_format: LogFormat,
    /// How long `/health/ready` reports 503 before the listener closes, so
    /// load balancers stop sending new work first.
    pub shutdown_drain: Duration,
    /// Upper bound on waiting for in-flight requests at shutdown.
    pub shutdown_timeout: Duration,
    /// Requests per second per authenticated principal; 0 turns it off.
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    /// API requests this process works on at once; one more is refused at
    /// once with 503 `overloaded` instead of queueing. 0 turns it off; unset,
    /// it is the pool size (see [`Config::max_in_flight`]).
    pub max_in_flight: Option<usize>,
    /// How many tasks a runtime worker runs between two looks for I/O that
    /// has become ready (tokio's `event_interval`; tokio's own default is
    /// 61). Under load a worker always has tasks to run, so this is how late
    /// it notices a database answer, and a group commit waits on one answer
    /// per statement: on two cores, 4 served 5 to 19 % more deposits than
    /// 61 in alternating runs.
    pub event_interval: u32,
    /// HS256 signing secret. Required with PostgreSQL; generated and kept
    /// beside the database file for the SQLite default when unset.
    pub jwt_secret: Secret,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:3000".into(),
            reuse_port: false,
            max_body_bytes: 64 * 1024,
            cors_allowed_origins: String::new(),
            log_format: LogFormat::Text,
            shutdown_drain: Duration::from_millis(2_000),
            shutdown_timeout: Duration::from_secs(30),
            rate_limit_per_second: 100,
            rate_limit_burst: 200,
            max_in_flight: None,
            event_interval: 4,
            jwt_secret: Secret::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct DatabaseConfig {
    /// `sqlite://path` or `postgres://…`.
    pub url: String,
    pub max_connections: u32,
    pub min_connections: u32,
    /// At start-up: how long to wait for the database to accept connections.
    pub acquire_timeout: Duration,
    /// The longest a request waits for a pooled connection; past it the
    /// request is shed at once (503 `overloaded`) instead of queueing.
    pub wait_budget: Duration,
    pub idle_timeout: Duration,
    /// SQLite only: how long a writer waits for the database write lock.
    pub sqlite_busy_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://data/ledger.db".into(),
            max_connections: 50,
            min_connections: 0,
            acquire_timeout: Duration::from_millis(30_000),
            wait_budget: Duration::from_millis(250),
            idle_timeout: Duration::from_millis(10_000),
            sqlite_busy_timeout: Duration::from_millis(5_000),
        }
    }
}

impl DatabaseConfig {
    pub(crate) fn is_sqlite(&self) -> bool {
        self.url.starts_with("sqlite:")
    }

    /// The database file of a SQLite URL (`sqlite://data/ledger.db` -> `data/ledger.db`).
    pub(crate) fn sqlite_path(&self) -> Option<PathBuf> {
        let rest = self.url.strip_prefix("sqlite:")?;
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let path = rest.split('?').next().unwrap_or(rest);
        (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
    }
}

/// How transactions that hit a deadlock, a serialization failure, a lock
/// timeout or a busy SQLite are re-run.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryConfig {
    /// Attempts per transaction, first one included.
    pub max_attempts: u32,
    pub initial: Duration,
    pub multiplier: f64,
    /// 0.5 means each delay is drawn from [50 %, 150 %] of its nominal value.
    pub jitter: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial: Duration::from_millis(10),
            multiplier: 2.0,
            jitter: 0.5,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct IdempotencyConfig {
    /// How long an Idempotency-Key is remembered.
    pub ttl: Duration,
    pub cleanup_interval: Duration,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(86_400),
            cleanup_interval: Duration::from_secs(300),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TradingConfig {
    /// Starting balance of every new demo wallet (demo wallets exist to
    /// practise trading).
    pub demo_balance: Decimal,
    /// Fee on an order's notional value (`quantity * price`), charged at
    /// open and again at close: 0.001 is 0.1 %.
    pub fee_rate: Decimal,
    /// Highest leverage an order may use (at most 100).
    pub max_leverage: u32,
    /// A second order by the same user on the same symbol within this window
    /// is refused (429 `cooldown_active`); zero turns it off.
    pub cooldown: Duration,
    /// Smallest notional value (`quantity * price`) an order may have, so
    /// that its margin and fee are never rounded away.
    pub min_notional: Decimal,
}

impl Default for TradingConfig {
    fn default() -> Self {
        Self {
            demo_balance: Decimal::from(10_000),
            fee_rate: Decimal::new(1, 3),
            max_leverage: 100,
            cooldown: Duration::ZERO,
            min_notional: Decimal::new(1, 2),
        }
    }
}

/// Resource locks and their queue.
#[derive(Clone, Debug, PartialEq)]
pub struct LockConfig {
    /// A queued lock request gains one priority level per this much waiting
    /// (never better than 1), so nothing starves.
    pub queue_aging: Duration,
    /// Pending queue items per resource; past it 429 `queue_full`.
    pub queue_max: u32,
    /// A lock request identical to a lock that is active or finished within
    /// this window is answered with that lock; zero only dedupes against
    /// active locks.
    pub dedupe: Duration,
    /// How often expired locks and queue items are finalized and old records
    /// purged; zero turns the job off (`POST /api/v1/locks/cleanup` still
    /// runs).
    pub cleanup_interval: Duration,
    /// Finished locks and queue items are kept this long.
    pub retention: Duration,
    /// How often a waiting request re-reads its queue item, so that a grant
    /// made by another instance is seen without a notification.
    pub poll: Duration,
}

impl Default for LockConfig {
    fn default() -> Self {
        Self {
            queue_aging: Duration::from_millis(10_000),
            queue_max: 1_000,
            dedupe: Duration::from_millis(60_000),
            cleanup_interval: Duration::from_millis(30_000),
            retention: Duration::from_secs(24 * 3_600),
            poll: Duration::from_millis(250),
        }
    }
}

/// Money writes that arrive together share one transaction and one commit.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupCommitConfig {
    pub enabled: bool,
    /// The most planned writes (deposits, unfenced withdrawals, and on
    /// PostgreSQL unfenced orders opened and closed) one transaction carries
    /// (their groups take a few statements whatever their size).
    pub max_size: usize,
    /// How many groups of those may run at once in this process (each holds
    /// one pooled connection).
    pub groups: usize,
    /// The most of the other writes (transfers, holds, fenced writes,
    /// orders on SQLite) one transaction carries: they run one after the other, each
    /// in a savepoint, so such a group takes longer the bigger it is.
    pub savepoint_max_size: usize,
    /// How many groups of the other writes may run at once (each holds one
    /// pooled connection).
    pub savepoint_groups: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_size: 64,
            // Fewer groups at once make bigger ones: measured with pool 50,
            // 2 against 8 served 2,265 against 1,542 deposits/s at 50
            // clients and 2,319 against 1,314 on one hot wallet (README).
            groups: 2,
            savepoint_max_size: 4,
            savepoint_groups: 8,
        }
    }
}

/// Wallet reads that arrive together share one statement.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadBatchConfig {
    pub enabled: bool,
    /// The most reads one statement carries.
    pub max_size: usize,
    /// How many batches may run at once in this process (each holds one
    /// pooled connection for one statement).
    pub batches: usize,
}

impl Default for ReadBatchConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_size: 64,
            batches: 1,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ReferralConfig {
    /// Paid to the referrer's live wallet when a referee signs up.
    pub referrer_bonus: Decimal,
    /// Paid to the new user's live wallet when it signs up with a code.
    pub referee_bonus: Decimal,
    /// Commission rate per upline level, level 1 first: [0.20, 0.05] pays
    /// the direct referrer 20 % and the referrer's referrer 5 % of each fee.
    /// Empty turns commissions off.
    pub commission_rates: Vec<Decimal>,
    /// How often pending commissions are settled; zero turns the job off
    /// (`POST /api/v1/referrals/settle` still settles).
    pub settle_interval: Duration,
    /// Commissions settled per transaction.
    pub settle_batch: u32,
}

impl Default for ReferralConfig {
    fn default() -> Self {
        Self {
            referrer_bonus: Decimal::from(10),
            referee_bonus: Decimal::ZERO,
            commission_rates: vec![Decimal::new(20, 2), Decimal::new(5, 2)],
            settle_interval: Duration::from_millis(5_000),
            settle_batch: 500,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct HoldConfig {
    /// How often the cleanup job releases holds past their expiry; zero
    /// turns it off. Expiry does not wait for it: an expired hold stops
    /// counting at once, and the next write to its wallet releases it.
    pub cleanup_interval: Duration,
}

impl Default for HoldConfig {
    fn default() -> Self {
        Self {
            cleanup_interval: Duration::from_millis(10_000),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct WorkflowConfig {
    /// Worker tasks running workflows in this process; 0 runs none (another
    /// instance's workers do the work).
    pub workers: usize,
    /// How long a claimed workflow stays its worker's: renewed at every
    /// step; once it lapses, another worker (or instance) takes over.
    pub lease: Duration,
    /// How often idle workers look for runnable workflows (they are also
    /// woken at once by this process's own new work).
    pub poll: Duration,
    /// A workflow not finished within this of its start is compensated, or
    /// stops `failed` when an outside call's outcome is unknown.
    pub deadline: Duration,
    /// The payout provider's endpoint; none: withdrawals wait in
    /// `awaiting_payout` for the payout result to be reported.
    pub payout_url: Option<String>,
    /// How long one payout call may take before it counts as a timeout.
    pub payout_timeout: Duration,
    /// The currency named in payout requests.
    pub payout_currency: String,
    /// Calls of one outbound step before the workflow stops `failed`.
    pub payout_max_attempts: u32,
    /// Backoff between outbound attempts: from `initial`, doubling, with
    /// jitter, at most `max`.
    pub payout_retry_initial: Duration,
    pub payout_retry_max: Duration,
    /// Consecutive transient failures that open a provider's breaker.
    pub breaker_failures: u32,
    /// How long an open breaker refuses calls before one trial call.
    pub breaker_open: Duration,
    /// Deposits of at least this wait in `awaiting_review`.
    pub review_threshold: Decimal,
    /// How often the recovery manager runs (also once at start); zero: only
    /// at start and when triggered.
    pub recovery_interval: Duration,
}

impl Default for WorkflowConfig {
    fn default() -> Self {
        Self {
            workers: 4,
            lease: Duration::from_millis(30_000),
            poll: Duration::from_millis(500),
            deadline: Duration::from_millis(86_400_000),
            payout_url: None,
            payout_timeout: Duration::from_millis(5_000),
            payout_currency: "USD".into(),
            payout_max_attempts: 10,
            payout_retry_initial: Duration::from_millis(200),
            payout_retry_max: Duration::from_millis(30_000),
            breaker_failures: 5,
            breaker_open: Duration::from_millis(30_000),
            review_threshold: Decimal::from(10_000),
            recovery_interval: Duration::from_millis(10_000),
        }
    }
}

/// The configuration as the file and the environment spell it: one flat
/// document, one field per documented key. Absent keys keep the defaults of
/// [`Config`].
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    listen: String,
    listen_reuse_port: bool,
    database_url: String,
    db_max_connections: u32,
    db_min_connections: u32,
    db_acquire_timeout_ms: u64,
    db_wait_budget_ms: u64,
    db_idle_timeout_ms: u64,
    sqlite_busy_timeout_ms: u64,
    retry_max_attempts: u32,
    retry_initial_ms: u64,
    retry_multiplier: f64,
    retry_jitter: f64,
    idempotency_ttl_secs: u64,
    idempotency_cleanup_interval_secs: u64,
    #[serde(deserialize_with = "decimal_text")]
    demo_balance: String,
    jwt_secret: Secret,
    rate_limit_per_second: u32,
    rate_limit_burst: u32,
    max_in_flight: Option<usize>,
    event_interval: u32,
    max_body_bytes: usize,
    cors_allowed_origins: String,
    log_format: LogFormat,
    shutdown_drain_ms: u64,
    shutdown_timeout_secs: u64,
    #[serde(deserialize_with = "decimal_text")]
    trade_fee_rate: String,
    max_leverage: u32,
    trade_cooldown_ms: u64,
    #[serde(deserialize_with = "decimal_text")]
    trade_min_notional: String,
    #[serde(deserialize_with = "decimal_text")]
    referrer_bonus: String,
    #[serde(deserialize_with = "decimal_text")]
    referee_bonus: String,
    #[serde(deserialize_with = "decimal_text")]
    referral_commission_rates: String,
    referral_settle_interval_ms: u64,
    referral_settle_batch: u32,
    group_commit: bool,
    group_commit_max_size: usize,
    group_commit_groups: usize,
    group_commit_savepoint_max_size: usize,
    group_commit_savepoint_groups: usize,
    read_batch: bool,
    read_batch_max_size: usize,
    read_batches: usize,
    lock_queue_aging_ms: u64,
    lock_queue_max: u32,
    lock_dedupe_ms: u64,
    lock_cleanup_interval_ms: u64,
    lock_retention_hours: u64,
    lock_poll_ms: u64,
    hold_cleanup_interval_ms: u64,
    workflow_workers: usize,
    workflow_lease_ms: u64,
    workflow_poll_ms: u64,
    workflow_deadline_ms: u64,
    payout_url: String,
    payout_timeout_ms: u64,
    payout_currency: String,
    payout_max_attempts: u32,
    payout_retry_initial_ms: u64,
    payout_retry_max_ms: u64,
    breaker_failures: u32,
    breaker_open_ms: u64,
    #[serde(deserialize_with = "decimal_text")]
    review_threshold: String,
    recovery_interval_ms: u64,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn decimal_list(values: &[Decimal]) -> String {
    values
        .iter()
        .map(Decimal::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The defaults of the typed sections, spelled flat: one source of truth.
impl Default for Settings {
    fn default() -> Self {
        let Config {
            server,
            database,
            retry,
            idempotency,
            trading,
            referrals,
            group_commit,
            reads,
            locks,
            holds,
            workflows,
        } = Config::default();
        Self {
            listen: server.listen,
            listen_reuse_port: server.reuse_port,
            database_url: database.url,
            db_max_connections: database.max_connections,
            db_min_connections: database.min_connections,
            db_acquire_timeout_ms: millis(database.acquire_timeout),
            db_wait_budget_ms: millis(database.wait_budget),
            db_idle_timeout_ms: millis(database.idle_timeout),
            sqlite_busy_timeout_ms: millis(database.sqlite_busy_timeout),
            retry_max_attempts: retry.max_attempts,
            retry_initial_ms: millis(retry.initial),
            retry_multiplier: retry.multiplier,
            retry_jitter: retry.jitter,
            idempotency_ttl_secs: idempotency.ttl.as_secs(),
            idempotency_cleanup_interval_secs: idempotency.cleanup_interval.as_secs(),
            demo_balance: trading.demo_balance.to_string(),
            jwt_secret: server.jwt_secret,
            rate_limit_per_second: server.rate_limit_per_second,
            rate_limit_burst: server.rate_limit_burst,
            max_in_flight: server.max_in_flight,
            event_interval: server.event_interval,
            max_body_bytes: server.max_body_bytes,
            cors_allowed_origins: server.cors_allowed_origins,
            log_format: server.log_format,
            shutdown_drain_ms: millis(server.shutdown_drain),
            shutdown_timeout_secs: server.shutdown_timeout.as_secs(),
            trade_fee_rate: trading.fee_rate.to_string(),
            max_leverage: trading.max_leverage,
            trade_cooldown_ms: millis(trading.cooldown),
            trade_min_notional: trading.min_notional.to_string(),
            referrer_bonus: referrals.referrer_bonus.to_string(),
            referee_bonus: referrals.referee_bonus.to_string(),
            referral_commission_rates: decimal_list(&referrals.commission_rates),
            referral_settle_interval_ms: millis(referrals.settle_interval),
            referral_settle_batch: referrals.settle_batch,
            group_commit: group_commit.enabled,
            group_commit_max_size: group_commit.max_size,
            group_commit_groups: group_commit.groups,
            group_commit_savepoint_max_size: group_commit.savepoint_max_size,
            group_commit_savepoint_groups: group_commit.savepoint_groups,
            read_batch: reads.enabled,
            read_batch_max_size: reads.max_size,
            read_batches: reads.batches,
            lock_queue_aging_ms: millis(locks.queue_aging),
            lock_queue_max: locks.queue_max,
            lock_dedupe_ms: millis(locks.dedupe),
            lock_cleanup_interval_ms: millis(locks.cleanup_interval),
            lock_retention_hours: locks.retention.as_secs() / 3_600,
            lock_poll_ms: millis(locks.poll),
            hold_cleanup_interval_ms: millis(holds.cleanup_interval),
            workflow_workers: workflows.workers,
            workflow_lease_ms: millis(workflows.lease),
            workflow_poll_ms: millis(workflows.poll),
            workflow_deadline_ms: millis(workflows.deadline),
            payout_url: workflows.payout_url.unwrap_or_default(),
            payout_timeout_ms: millis(workflows.payout_timeout),
            payout_currency: workflows.payout_currency,
            payout_max_attempts: workflows.payout_max_attempts,
            payout_retry_initial_ms: millis(workflows.payout_retry_initial),
            payout_retry_max_ms: millis(workflows.payout_retry_max),
            breaker_failures: workflows.breaker_failures,
            breaker_open_ms: millis(workflows.breaker_open),
            review_threshold: workflows.review_threshold.to_string(),
            recovery_interval_ms: millis(workflows.recovery_interval),
        }
    }
}

/// Accepts a decimal setting as a string or as a number: environment values
/// such as `LEDGER_TRADE_FEE_RATE=0.002` arrive as numbers.
fn decimal_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        S(String),
        I(i64),
        U(u64),
        F(f64),
    }
    Ok(match Text::deserialize(d)? {
        Text::S(s) => s,
        Text::I(i) => i.to_string(),
        Text::U(u) => u.to_string(),
        Text::F(f) => f.to_string(),
    })
}

/// How an operator sets `key`: as a file key and as a variable.
fn setting(key: &str) -> String {
    format!("{key} (LEDGER_{})", key.to_ascii_uppercase())
}

fn parse_decimal(key: &str, value: &str) -> Result<Decimal, ConfigError> {
    value.trim().parse::<Decimal>().map_err(|_| {
        ConfigError::Invalid(format!(
            "{} must be a decimal number such as 0.5, got {value:?}",
            setting(key)
        ))
    })
}

/// Comma-separated decimals; empty items are skipped, so "" is no values.
fn parse_decimal_list(key: &str, value: &str) -> Result<Vec<Decimal>, ConfigError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| parse_decimal(key, v))
        .collect()
}

/// Money and rates are stored in minor units at scale 8: a negative value or
/// a finer one cannot be represented.
fn check_amount(key: &str, value: Decimal) -> Result<(), ConfigError> {
    if value < Decimal::ZERO || value.normalize().scale() > 8 {
        return Err(ConfigError::Invalid(format!(
            "{} must be a non-negative decimal with at most 8 decimals, got {value}",
            setting(key)
        )));
    }
    Ok(())
}

impl TryFrom<Settings> for Config {
    type Error = ConfigError;

    fn try_from(s: Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            server: ServerConfig {
                listen: s.listen,
                reuse_port: s.listen_reuse_port,
                max_body_bytes: s.max_body_bytes,
                cors_allowed_origins: s.cors_allowed_origins,
                log_format: s.log_format,
                shutdown_drain: Duration::from_millis(s.shutdown_drain_ms),
                shutdown_timeout: Duration::from_secs(s.shutdown_timeout_secs),
                rate_limit_per_second: s.rate_limit_per_second,
                rate_limit_burst: s.rate_limit_burst,
                max_in_flight: s.max_in_flight,
                event_interval: s.event_interval,
                jwt_secret: s.jwt_secret,
            },
            database: DatabaseConfig {
                url: s.database_url,
                max_connections: s.db_max_connections,
                min_connections: s.db_min_connections,
                acquire_timeout: Duration::from_millis(s.db_acquire_timeout_ms),
                wait_budget: Duration::from_millis(s.db_wait_budget_ms),
                idle_timeout: Duration::from_millis(s.db_idle_timeout_ms),
                sqlite_busy_timeout: Duration::from_millis(s.sqlite_busy_timeout_ms),
            },
            retry: RetryConfig {
                max_attempts: s.retry_max_attempts,
                initial: Duration::from_millis(s.retry_initial_ms),
                multiplier: s.retry_multiplier,
                jitter: s.retry_jitter,
            },
            idempotency: IdempotencyConfig {
                ttl: Duration::from_secs(s.idempotency_ttl_secs),
                cleanup_interval: Duration::from_secs(s.idempotency_cleanup_interval_secs),
            },
            trading: TradingConfig {
                demo_balance: parse_decimal("demo_balance", &s.demo_balance)?,
                fee_rate: parse_decimal("trade_fee_rate", &s.trade_fee_rate)?,
                max_leverage: s.max_leverage,
                cooldown: Duration::from_millis(s.trade_cooldown_ms),
                min_notional: parse_decimal("trade_min_notional", &s.trade_min_notional)?,
            },
            referrals: ReferralConfig {
                referrer_bonus: parse_decimal("referrer_bonus", &s.referrer_bonus)?,
                referee_bonus: parse_decimal("referee_bonus", &s.referee_bonus)?,
                commission_rates: parse_decimal_list(
                    "referral_commission_rates",
                    &s.referral_commission_rates,
                )?,
                settle_interval: Duration::from_millis(s.referral_settle_interval_ms),
                settle_batch: s.referral_settle_batch,
            },
            group_commit: GroupCommitConfig {
                enabled: s.group_commit,
                max_size: s.group_commit_max_size,
                groups: s.group_commit_groups,
                savepoint_max_size: s.group_commit_savepoint_max_size,
                savepoint_groups: s.group_commit_savepoint_groups,
            },
            reads: ReadBatchConfig {
                enabled: s.read_batch,
                max_size: s.read_batch_max_size,
                batches: s.read_batches,
            },
            locks: LockConfig {
                queue_aging: Duration::from_millis(s.lock_queue_aging_ms),
                queue_max: s.lock_queue_max,
                dedupe: Duration::from_millis(s.lock_dedupe_ms),
                cleanup_interval: Duration::from_millis(s.lock_cleanup_interval_ms),
                retention: Duration::from_secs(s.lock_retention_hours.saturating_mul(3_600)),
                poll: Duration::from_millis(s.lock_poll_ms),
            },
            holds: HoldConfig {
                cleanup_interval: Duration::from_millis(s.hold_cleanup_interval_ms),
            },
            workflows: WorkflowConfig {
                workers: s.workflow_workers,
                lease: Duration::from_millis(s.workflow_lease_ms),
                poll: Duration::from_millis(s.workflow_poll_ms),
                deadline: Duration::from_millis(s.workflow_deadline_ms),
                payout_url: Some(s.payout_url.trim().to_owned()).filter(|u| !u.is_empty()),
                payout_timeout: Duration::from_millis(s.payout_timeout_ms),
                payout_currency: s.payout_currency,
                payout_max_attempts: s.payout_max_attempts,
                payout_retry_initial: Duration::from_millis(s.payout_retry_initial_ms),
                payout_retry_max: Duration::from_millis(s.payout_retry_max_ms),
                breaker_failures: s.breaker_failures,
                breaker_open: Duration::from_millis(s.breaker_open_ms),
                review_threshold: parse_decimal("review_threshold", &s.review_threshold)?,
                recovery_interval: Duration::from_millis(s.recovery_interval_ms),
            },
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("jwt secret file {path}: {source}")]
    SecretFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Config {
    /// How many API requests this process works on at once: as set, or the
    /// pool size. More in flight than connections only queues for the pool,
    /// and under overload that queue is the latency (BENCHMARKS.md).
    pub fn max_in_flight(&self) -> usize {
        self.server
            .max_in_flight
            .unwrap_or(self.database.max_connections as usize)
    }

    /// Defaults, then `LEDGER_CONFIG` (a TOML file) if set, then the
    /// environment. `DATABASE_URL` is honoured as well as `LEDGER_DATABASE_URL`.
    pub fn load() -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Ok(path) = std::env::var("LEDGER_CONFIG") {
            figment = figment.merge(Toml::file_exact(path));
        }
        Self::from_figment(
            figment
                .merge(Env::raw().only(&["DATABASE_URL"]))
                .merge(Env::prefixed("LEDGER_").ignore(&["CONFIG"])),
        )
    }

    /// The flat document `figment` holds, as sections, validated.
    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let settings: Settings = figment.extract().map_err(Box::new)?;
        let config = Self::try_from(settings)?;
        config.validate()?;
        Ok(config)
    }

    /// Messages name the settings as operators spell them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: &str| Err(ConfigError::Invalid(msg.to_string()));
        let Self {
            server,
            database,
            retry,
            idempotency,
            trading,
            referrals,
            group_commit,
            reads,
            locks,
            holds: _,
            workflows,
        } = self;
        if database.max_connections == 0 {
            return bad("db_max_connections must be at least 1");
        }
        if database.min_connections > database.max_connections {
            return bad("db_min_connections must not exceed db_max_connections");
        }
        if database.acquire_timeout.is_zero() || database.wait_budget.is_zero() {
            return bad("db_acquire_timeout_ms and db_wait_budget_ms must be positive");
        }
        if !database.is_sqlite() && !database.url.starts_with("postgres") {
            return bad("database_url must start with sqlite:// or postgres://");
        }
        if retry.max_attempts == 0 {
            return bad("retry_max_attempts must be at least 1");
        }
        if retry.multiplier.is_nan() || retry.multiplier < 1.0 {
            return bad("retry_multiplier must be at least 1");
        }
        if !(0.0..=1.0).contains(&retry.jitter) {
            return bad("retry_jitter must be within 0..=1");
        }
        if idempotency.ttl.is_zero() {
            return bad("idempotency_ttl_secs must be positive");
        }
        check_amount("demo_balance", trading.demo_balance)?;
        check_amount("trade_fee_rate", trading.fee_rate)?;
        check_amount("trade_min_notional", trading.min_notional)?;
        check_amount("referrer_bonus", referrals.referrer_bonus)?;
        check_amount("referee_bonus", referrals.referee_bonus)?;
        for rate in &referrals.commission_rates {
            check_amount("referral_commission_rates", *rate)?;
        }
        if trading.fee_rate > Decimal::ONE {
            return bad("trade_fee_rate must not exceed 1");
        }
        let rates = &referrals.commission_rates;
        if rates.len() > 10 || rates.iter().sum::<Decimal>() > Decimal::ONE {
            return bad("referral_commission_rates: at most 10 levels, summing to at most 1");
        }
        if !(1..=100).contains(&trading.max_leverage) {
            return bad("max_leverage must be within 1..=100");
        }
        if locks.queue_aging.is_zero() || locks.queue_max == 0 {
            return bad("lock_queue_aging_ms and lock_queue_max must be positive");
        }
        if !(10..=1_000).contains(&locks.poll.as_millis()) {
            return bad("lock_poll_ms must be within 10..=1000");
        }
        if [
            group_commit.max_size,
            group_commit.groups,
            group_commit.savepoint_max_size,
            group_commit.savepoint_groups,
        ]
        .contains(&0)
        {
            return bad(
                "group_commit_max_size, group_commit_groups, group_commit_savepoint_max_size and group_commit_savepoint_groups must be at least 1",
            );
        }
        if reads.max_size == 0 || reads.batches == 0 {
            return bad("read_batch_max_size and read_batches must be at least 1");
        }
        check_amount("review_threshold", workflows.review_threshold)?;
        if workflows.lease < Duration::from_millis(100) || workflows.poll.is_zero() {
            return bad("workflow_lease_ms must be at least 100 and workflow_poll_ms positive");
        }
        if workflows.payout_timeout.is_zero() || workflows.payout_timeout * 2 > workflows.lease {
            return bad("payout_timeout_ms must be positive and at most half of workflow_lease_ms");
        }
        if workflows.payout_max_attempts == 0 || workflows.breaker_failures == 0 {
            return bad("payout_max_attempts and breaker_failures must be at least 1");
        }
        if workflows.payout_retry_initial.is_zero()
            || workflows.payout_retry_max < workflows.payout_retry_initial
        {
            return bad("payout_retry_initial_ms must be positive and at most payout_retry_max_ms");
        }
        if workflows.deadline.is_zero() || workflows.breaker_open.is_zero() {
            return bad("workflow_deadline_ms and breaker_open_ms must be positive");
        }
        // No TLS stack is compiled in: an https provider is reached through
        // a local egress proxy that terminates TLS (see README).
        if let Some(url) = &workflows.payout_url
            && !url.starts_with("http://")
        {
            return bad("payout_url must start with http://");
        }
        if workflows.payout_currency.trim().is_empty() || workflows.payout_currency.len() > 16 {
            return bad("payout_currency must be 1 to 16 characters");
        }
        if referrals.settle_batch == 0 {
            return bad("referral_settle_batch must be at least 1");
        }
        if server.event_interval == 0 {
            return bad("event_interval must be at least 1");
        }
        if server.max_body_bytes < 1024 {
            return bad("max_body_bytes must be at least 1024");
        }
        if server.rate_limit_per_second > 0 && server.rate_limit_burst == 0 {
            return bad("rate_limit_burst must be positive when rate limiting is on");
        }
        if !server.jwt_secret.is_empty() && server.jwt_secret.expose().len() < 16 {
            return bad("jwt_secret must be at least 16 characters");
        }
        Ok(())
    }

    /// Resolves the signing secret. When none is configured and the database
    /// is the SQLite default, one is generated once and kept in
    /// `jwt-secret` beside the database file (mode 0600), so `ledger token`
    /// and `ledger serve` agree. PostgreSQL deployments must configure it.
    pub fn resolve_jwt_secret(&mut self) -> Result<Option<PathBuf>, ConfigError> {
        if !self.server.jwt_secret.is_empty() {
            return Ok(None);
        }
        let Some(db_path) = self.database.sqlite_path() else {
            return Err(ConfigError::Invalid(
                "LEDGER_JWT_SECRET must be set unless the database is a SQLite file".into(),
            ));
        };
        let dir = db_path.parent().unwrap_or_else(|| Path::new("."));
        let path = dir.join("jwt-secret");
        let io = |source| ConfigError::SecretFile {
            path: path.clone(),
            source,
        };
        if let Ok(existing) = std::fs::read_to_string(&path) {
            let existing = existing.trim();
            if existing.len() >= 16 {
                self.server.jwt_secret = Secret::new(existing);
                return Ok(Some(path));
            }
        }
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let secret: String = {
            use rand::Rng;
            let bytes: [u8; 32] = rand::rng().random();
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        };
        write_private(&path, &secret).map_err(io)?;
        self.server.jwt_secret = Secret::new(secret);
        Ok(Some(path))
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(test)]
// Jail's closures must return figment's own error type, which is large.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    use figment::Jail;
    use figment::providers::Serialized;

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    /// `Config::load` in an environment holding only `vars`.
    fn load_with(vars: &[(&str, &str)]) -> Result<Config, String> {
        let mut result = None;
        Jail::expect_with(|jail| {
            jail.clear_env();
            for (k, v) in vars {
                jail.set_env(k, v);
            }
            result = Some(Config::load().map_err(|e| e.to_string()));
            Ok(())
        });
        result.unwrap()
    }

    #[test]
    fn the_runtime_event_interval_is_set_and_never_zero() {
        let set = load_with(&[("LEDGER_EVENT_INTERVAL", "61")]).unwrap();
        assert_eq!(set.server.event_interval, 61);
        let zero = load_with(&[("LEDGER_EVENT_INTERVAL", "0")]).unwrap_err();
        assert!(zero.contains("event_interval"), "{zero}");
        assert!(load_with(&[("LEDGER_EVENT_INTERVAL", "-1")]).is_err());
    }

    #[test]
    fn the_two_kinds_of_groups_are_sized_apart_and_never_zero() {
        let defaults = load_with(&[]).unwrap().group_commit;
        assert_eq!(
            (defaults.groups, defaults.max_size),
            (2, 64),
            "deposit groups"
        );
        assert_eq!(
            (defaults.savepoint_groups, defaults.savepoint_max_size),
            (8, 4),
            "savepoint groups"
        );
        let set = load_with(&[
            ("LEDGER_GROUP_COMMIT_SAVEPOINT_GROUPS", "3"),
            ("LEDGER_GROUP_COMMIT_SAVEPOINT_MAX_SIZE", "16"),
        ])
        .unwrap()
        .group_commit;
        assert_eq!((set.savepoint_groups, set.savepoint_max_size), (3, 16));
        assert_eq!((set.groups, set.max_size), (2, 64));
        for var in [
            "LEDGER_GROUP_COMMIT_GROUPS",
            "LEDGER_GROUP_COMMIT_MAX_SIZE",
            "LEDGER_GROUP_COMMIT_SAVEPOINT_GROUPS",
            "LEDGER_GROUP_COMMIT_SAVEPOINT_MAX_SIZE",
        ] {
            let zero = load_with(&[(var, "0")]).unwrap_err();
            assert!(zero.contains("at least 1"), "{var}: {zero}");
        }
    }

    #[test]
    fn the_in_flight_limit_follows_the_pool_unless_set() {
        let pool = load_with(&[("LEDGER_DB_MAX_CONNECTIONS", "25")]).unwrap();
        assert_eq!(pool.max_in_flight(), 25);
        let set = load_with(&[
            ("LEDGER_DB_MAX_CONNECTIONS", "25"),
            ("LEDGER_MAX_IN_FLIGHT", "100"),
        ])
        .unwrap();
        assert_eq!(set.max_in_flight(), 100);
        let off = load_with(&[("LEDGER_MAX_IN_FLIGHT", "0")]).unwrap();
        assert_eq!(off.max_in_flight(), 0);
        assert!(load_with(&[("LEDGER_MAX_IN_FLIGHT", "-1")]).is_err());
    }

    #[test]
    fn defaults_are_valid_and_match_the_documented_values() {
        let c = load_with(&[]).unwrap();
        assert_eq!(c, Config::default());
        c.validate().unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:3000");
        assert!(!c.server.reuse_port);
        assert_eq!(c.server.max_body_bytes, 65_536);
        assert_eq!(c.server.log_format, LogFormat::Text);
        assert_eq!(
            (c.server.rate_limit_per_second, c.server.rate_limit_burst),
            (100, 200)
        );
        assert_eq!(c.server.max_in_flight, None);
        assert_eq!(c.max_in_flight(), 50);
        assert_eq!(c.server.event_interval, 4);
        assert_eq!(
            (c.server.shutdown_drain, c.server.shutdown_timeout),
            (Duration::from_secs(2), Duration::from_secs(30))
        );
        assert!(c.server.jwt_secret.is_empty());
        assert_eq!(c.database.url, "sqlite://data/ledger.db");
        assert_eq!(
            (c.database.max_connections, c.database.min_connections),
            (50, 0)
        );
        assert_eq!(
            (c.database.acquire_timeout, c.database.idle_timeout),
            (Duration::from_secs(30), Duration::from_secs(10))
        );
        assert_eq!(c.database.sqlite_busy_timeout, Duration::from_secs(5));
        assert_eq!(
            (
                c.retry.max_attempts,
                c.retry.initial,
                c.retry.multiplier,
                c.retry.jitter
            ),
            (3, Duration::from_millis(10), 2.0, 0.5)
        );
        assert_eq!(c.idempotency.ttl, Duration::from_secs(86_400));
        assert_eq!(c.idempotency.cleanup_interval, Duration::from_secs(300));
        assert_eq!(c.trading.demo_balance, dec("10000"));
        assert_eq!(c.trading.fee_rate, dec("0.001"));
        assert_eq!(c.trading.min_notional, dec("0.01"));
        assert_eq!(
            (c.trading.max_leverage, c.trading.cooldown),
            (100, Duration::ZERO)
        );
        assert_eq!(
            (c.referrals.referrer_bonus, c.referrals.referee_bonus),
            (dec("10"), dec("0"))
        );
        assert_eq!(c.referrals.commission_rates, vec![dec("0.20"), dec("0.05")]);
        assert_eq!(c.referrals.settle_interval, Duration::from_secs(5));
        assert_eq!(c.referrals.settle_batch, 500);
        assert_eq!(c.holds.cleanup_interval, Duration::from_secs(10));
        assert_eq!(c.workflows.review_threshold, dec("10000"));
        assert_eq!(c.workflows.payout_url, None);
        assert_eq!(c.workflows.recovery_interval, Duration::from_secs(10));
    }

    #[test]
    fn the_documented_flat_variables_set_the_sectioned_fields() {
        let c = load_with(&[
            ("LEDGER_DB_MAX_CONNECTIONS", "7"),
            ("DATABASE_URL", "postgres://h/db"),
            ("LEDGER_LISTEN_REUSE_PORT", "true"),
            ("LEDGER_SHUTDOWN_DRAIN_MS", "150"),
            ("LEDGER_TRADE_FEE_RATE", "0.002"),
            ("LEDGER_TRADE_MIN_NOTIONAL", "5"),
            ("LEDGER_TRADE_COOLDOWN_MS", "250"),
            ("LEDGER_REFERRAL_COMMISSION_RATES", "0.3,0.1"),
            ("LEDGER_DEMO_BALANCE", "500"),
            ("LEDGER_LOG_FORMAT", "json"),
            ("LEDGER_HOLD_CLEANUP_INTERVAL_MS", "2500"),
            ("LEDGER_PAYOUT_URL", "http://127.0.0.1:9100/payouts"),
            ("LEDGER_REVIEW_THRESHOLD", "500.5"),
            ("LEDGER_WORKFLOW_LEASE_MS", "2000"),
            ("LEDGER_PAYOUT_TIMEOUT_MS", "1000"),
        ])
        .unwrap();
        assert_eq!(
            c.workflows.payout_url.as_deref(),
            Some("http://127.0.0.1:9100/payouts")
        );
        assert_eq!(c.workflows.review_threshold, dec("500.5"));
        assert_eq!(c.workflows.lease, Duration::from_secs(2));
        assert_eq!(c.holds.cleanup_interval, Duration::from_millis(2_500));
        assert_eq!(c.database.max_connections, 7);
        assert_eq!(c.database.url, "postgres://h/db");
        assert!(c.server.reuse_port);
        assert_eq!(c.server.shutdown_drain, Duration::from_millis(150));
        assert_eq!(c.server.log_format, LogFormat::Json);
        assert_eq!(c.trading.fee_rate, dec("0.002"));
        assert_eq!(c.trading.min_notional, dec("5"));
        assert_eq!(c.trading.cooldown, Duration::from_millis(250));
        assert_eq!(c.trading.demo_balance, dec("500"));
        assert_eq!(c.referrals.commission_rates, vec![dec("0.3"), dec("0.1")]);
        // LEDGER_DATABASE_URL is the same setting and wins over DATABASE_URL
        let c = load_with(&[
            ("DATABASE_URL", "postgres://h/one"),
            ("LEDGER_DATABASE_URL", "postgres://h/two"),
        ])
        .unwrap();
        assert_eq!(c.database.url, "postgres://h/two");
    }

    #[test]
    fn the_file_uses_the_same_flat_keys_and_the_environment_overrides_it() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "ledger.toml",
                "db_max_connections = 9\nreferee_bonus = \"2.5\"\ntrade_fee_rate = 0.01\n",
            )?;
            jail.set_env("LEDGER_CONFIG", "ledger.toml");
            jail.set_env("LEDGER_DB_MAX_CONNECTIONS", "11");
            let c = Config::load().unwrap();
            assert_eq!(c.database.max_connections, 11);
            assert_eq!(c.referrals.referee_bonus, dec("2.5"));
            assert_eq!(c.trading.fee_rate, dec("0.01"));
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = load_with(&[("LEDGER_DB_MAX_CONECTIONS", "7")]).unwrap_err();
        assert!(e.contains("db_max_conections"), "{e}");
        // a section name is not a key
        let e = load_with(&[("LEDGER_DATABASE", "x")]).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("ledger.toml", "[database]\nmax_connections = 9\n")?;
            jail.set_env("LEDGER_CONFIG", "ledger.toml");
            let e = Config::load().unwrap_err().to_string();
            assert!(e.contains("unknown field"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn a_bad_decimal_is_refused_naming_its_setting() {
        for (var, value, named) in [
            (
                "LEDGER_TRADE_FEE_RATE",
                "abc",
                "trade_fee_rate (LEDGER_TRADE_FEE_RATE)",
            ),
            (
                "LEDGER_DEMO_BALANCE",
                "10,5",
                "demo_balance (LEDGER_DEMO_BALANCE)",
            ),
            ("LEDGER_TRADE_MIN_NOTIONAL", "-1", "trade_min_notional"),
            ("LEDGER_REFERRER_BONUS", "0.000000001", "referrer_bonus"),
            (
                "LEDGER_REFERRAL_COMMISSION_RATES",
                "0.1,x",
                "referral_commission_rates",
            ),
        ] {
            let e = load_with(&[(var, value)]).unwrap_err();
            assert!(e.contains(named), "{var}={value}: {e}");
        }
    }

    #[test]
    fn decimal_settings_may_arrive_as_numbers() {
        let c = Config::from_figment(
            Figment::new()
                .merge(Serialized::default("trade_fee_rate", 0.002))
                .merge(Serialized::default("referrer_bonus", 25))
                .merge(Serialized::default("referral_commission_rates", "0.3")),
        )
        .unwrap();
        assert_eq!(c.trading.fee_rate, dec("0.002"));
        assert_eq!(c.referrals.referrer_bonus, dec("25"));
        assert_eq!(c.referrals.commission_rates, vec![dec("0.3")]);
        // an empty list turns commissions off
        let c = Config::from_figment(
            Figment::new().merge(Serialized::default("referral_commission_rates", "")),
        )
        .unwrap();
        assert!(c.referrals.commission_rates.is_empty());
    }

    #[test]
    fn secret_is_redacted_in_debug_output() {
        let mut c = Config::default();
        c.server.jwt_secret = Secret::new("super-secret-value-123");
        let shown = format!("{c:?}");
        assert!(!shown.contains("super-secret-value-123"));
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn invalid_values_are_refused() {
        let cases: [fn(&mut Config); 13] = [
            |c| c.database.max_connections = 0,
            |c| c.database.min_connections = 60,
            |c| c.retry.max_attempts = 0,
            |c| c.trading.demo_balance = dec("-1"),
            |c| c.trading.demo_balance = dec("1.123456789"),
            |c| c.trading.fee_rate = dec("1.5"),
            |c| c.trading.min_notional = dec("-0.01"),
            |c| c.referrals.commission_rates = vec![dec("0.7"), dec("0.4")],
            |c| c.trading.max_leverage = 101,
            |c| c.referrals.referrer_bonus = dec("-5"),
            |c| c.database.url = "mysql://x".into(),
            |c| c.server.jwt_secret = Secret::new("short"),
            |c| c.referrals.settle_batch = 0,
        ];
        for tweak in cases {
            let mut c = Config::default();
            tweak(&mut c);
            assert!(c.validate().is_err(), "{c:?} should be invalid");
        }
    }

    #[test]
    fn sqlite_path_is_taken_from_the_url() {
        let mut db = DatabaseConfig::default();
        assert_eq!(db.sqlite_path(), Some(PathBuf::from("data/ledger.db")));
        db.url = "sqlite:///tmp/x.db?mode=rwc".into();
        assert_eq!(db.sqlite_path(), Some(PathBuf::from("/tmp/x.db")));
        db.url = "postgres://h/db".into();
        assert_eq!(db.sqlite_path(), None);
    }

    #[test]
    fn a_generated_secret_is_kept_beside_the_database_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/ledger.db", dir.path().display());
        let mut first = Config::default();
        first.database.url = url.clone();
        let path = first.resolve_jwt_secret().unwrap().unwrap();
        assert_eq!(path, dir.path().join("jwt-secret"));
        let mut second = Config::default();
        second.database.url = url;
        second.resolve_jwt_secret().unwrap();
        assert_eq!(first.server.jwt_secret, second.server.jwt_secret);
        assert_eq!(first.server.jwt_secret.expose().len(), 64);
    }

    #[test]
    fn postgres_without_a_secret_is_refused() {
        let mut c = Config::default();
        c.database.url = "postgres://h/db".into();
        assert!(c.resolve_jwt_secret().is_err());
    }
}
