//! One typed configuration, loaded once at start-up: built-in defaults, then an
//! optional TOML file (`LEDGER_CONFIG`), then `LEDGER_*` environment variables
//! (and `DATABASE_URL`). Validated before anything uses it; logged with the
//! secret redacted.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// A value that must never reach a log line.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds to.
    pub listen: String,
    /// Bind with SO_REUSEPORT, so that several instances on one host share
    /// the address and the kernel spreads connections across them (each
    /// process holds at most its open-files limit of connections).
    pub listen_reuse_port: bool,
    /// `sqlite://path` or `postgres://…`.
    pub database_url: String,
    pub db_max_connections: u32,
    pub db_min_connections: u32,
    /// At start-up: how long to wait for the database to accept connections.
    pub db_acquire_timeout_ms: u64,
    /// The longest a request waits for a pooled connection; past it the
    /// request is shed at once (503 `overloaded`) instead of queueing.
    pub db_wait_budget_ms: u64,
    pub db_idle_timeout_ms: u64,
    /// SQLite only: how long a writer waits for the database write lock.
    pub sqlite_busy_timeout_ms: u64,
    /// Attempts per transaction, first one included.
    pub retry_max_attempts: u32,
    pub retry_initial_ms: u64,
    pub retry_multiplier: f64,
    /// 0.5 means each delay is drawn from [50 %, 150 %] of its nominal value.
    pub retry_jitter: f64,
    pub idempotency_ttl_secs: u64,
    /// How long a `processing` claim is honoured before another request may
    /// take it over (the first one is presumed dead).
    pub idempotency_lease_ms: u64,
    pub idempotency_cleanup_interval_secs: u64,
    /// Starting balance of every new demo wallet, a decimal string.
    #[serde(deserialize_with = "decimal_text")]
    pub demo_balance: String,
    /// HS256 signing secret. Required with PostgreSQL; generated and kept
    /// beside the database file for the SQLite default when unset.
    pub jwt_secret: Secret,
    /// Requests per second per authenticated principal; 0 turns it off.
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    pub max_body_bytes: usize,
    /// Comma-separated origins allowed by CORS; `*` for any; empty for none.
    pub cors_allowed_origins: String,
    pub log_format: LogFormat,
    /// How long `/health/ready` reports 503 before the listener closes, so
    /// load balancers stop sending new work first.
    pub shutdown_drain_ms: u64,
    /// Upper bound on waiting for in-flight requests at shutdown.
    pub shutdown_timeout_secs: u64,
    /// Fee on an order's notional value (`quantity * price`), charged at
    /// open and again at close. A decimal string: "0.001" is 0.1 %.
    #[serde(deserialize_with = "decimal_text")]
    pub trade_fee_rate: String,
    /// Highest leverage an order may use (at most 100).
    pub max_leverage: u32,
    /// A second order by the same user on the same symbol within this many
    /// milliseconds is refused (429 `cooldown_active`); 0 turns it off.
    pub trade_cooldown_ms: u64,
    /// Paid to the referrer's live wallet when a referee signs up.
    #[serde(deserialize_with = "decimal_text")]
    pub referrer_bonus: String,
    /// Paid to the new user's live wallet when it signs up with a code.
    #[serde(deserialize_with = "decimal_text")]
    pub referee_bonus: String,
    /// Commission rate per upline level, comma-separated: "0.20,0.05" pays
    /// the direct referrer 20 % and the referrer's referrer 5 % of each fee.
    #[serde(deserialize_with = "decimal_text")]
    pub referral_commission_rates: String,
    /// How often pending commissions are settled; 0 turns the job off
    /// (`POST /api/v1/referrals/settle` still settles).
    pub referral_settle_interval_ms: u64,
    /// Commissions settled per transaction.
    pub referral_settle_batch: u32,
    /// A queued lock request gains one priority level per this many
    /// milliseconds of waiting (never better than 1), so nothing starves.
    pub lock_queue_aging_ms: u64,
    /// Pending queue items per resource; past it 429 `queue_full`.
    pub lock_queue_max: u32,
    /// A lock request identical to a lock that is active or finished within
    /// this many milliseconds is answered with that lock; 0 only dedupes
    /// against active locks.
    pub lock_dedupe_ms: u64,
    /// How often expired locks and queue items are finalized and old records
    /// purged; 0 turns the job off (`POST /api/v1/locks/cleanup` still runs).
    pub lock_cleanup_interval_ms: u64,
    /// Finished locks and queue items are kept this long.
    pub lock_retention_hours: u64,
    /// How often a waiting request re-reads its queue item, so that a grant
    /// made by another instance is seen without a notification.
    pub lock_poll_ms: u64,
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

/// Parses a non-negative decimal setting with at most 8 decimals.
pub fn parse_decimal_setting(name: &str, value: &str) -> Result<Decimal, ConfigError> {
    match value.trim().parse::<Decimal>() {
        Ok(d) if d >= Decimal::ZERO && d.normalize().scale() <= 8 => Ok(d),
        _ => Err(ConfigError::Invalid(format!(
            "{name} must be a non-negative decimal with at most 8 decimals, got {value:?}"
        ))),
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:3000".into(),
            listen_reuse_port: false,
            database_url: "sqlite://data/ledger.db".into(),
            db_max_connections: 50,
            db_min_connections: 0,
            db_acquire_timeout_ms: 30_000,
            db_wait_budget_ms: 250,
            db_idle_timeout_ms: 10_000,
            sqlite_busy_timeout_ms: 5_000,
            retry_max_attempts: 3,
            retry_initial_ms: 10,
            retry_multiplier: 2.0,
            retry_jitter: 0.5,
            idempotency_ttl_secs: 86_400,
            idempotency_lease_ms: 60_000,
            idempotency_cleanup_interval_secs: 300,
            demo_balance: "10000".into(),
            jwt_secret: Secret::default(),
            rate_limit_per_second: 100,
            rate_limit_burst: 200,
            max_body_bytes: 64 * 1024,
            cors_allowed_origins: String::new(),
            log_format: LogFormat::Text,
            shutdown_drain_ms: 2_000,
            shutdown_timeout_secs: 30,
            trade_fee_rate: "0.001".into(),
            max_leverage: 100,
            trade_cooldown_ms: 0,
            referrer_bonus: "10".into(),
            referee_bonus: "0".into(),
            referral_commission_rates: "0.20,0.05".into(),
            referral_settle_interval_ms: 5_000,
            referral_settle_batch: 500,
            lock_queue_aging_ms: 10_000,
            lock_queue_max: 1_000,
            lock_dedupe_ms: 60_000,
            lock_cleanup_interval_ms: 30_000,
            lock_retention_hours: 24,
            lock_poll_ms: 250,
        }
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
    /// Defaults, then `LEDGER_CONFIG` (a TOML file) if set, then the
    /// environment. `DATABASE_URL` is honoured as well as `LEDGER_DATABASE_URL`.
    pub fn load() -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Ok(path) = std::env::var("LEDGER_CONFIG") {
            figment = figment.merge(Toml::file_exact(path));
        }
        let figment = figment
            .merge(Env::raw().only(&["DATABASE_URL"]))
            .merge(Env::prefixed("LEDGER_").ignore(&["CONFIG"]));
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: &str| Err(ConfigError::Invalid(msg.to_string()));
        if self.db_max_connections == 0 {
            return bad("db_max_connections must be at least 1");
        }
        if self.db_min_connections > self.db_max_connections {
            return bad("db_min_connections must not exceed db_max_connections");
        }
        if self.db_acquire_timeout_ms == 0 || self.db_wait_budget_ms == 0 {
            return bad("db_acquire_timeout_ms and db_wait_budget_ms must be positive");
        }
        if self.retry_max_attempts == 0 {
            return bad("retry_max_attempts must be at least 1");
        }
        if self.retry_multiplier.is_nan() || self.retry_multiplier < 1.0 {
            return bad("retry_multiplier must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.retry_jitter) {
            return bad("retry_jitter must be within 0..=1");
        }
        if self.idempotency_ttl_secs == 0 || self.idempotency_lease_ms == 0 {
            return bad("idempotency_ttl_secs and idempotency_lease_ms must be positive");
        }
        parse_decimal_setting("demo_balance", &self.demo_balance)?;
        parse_decimal_setting("referrer_bonus", &self.referrer_bonus)?;
        parse_decimal_setting("referee_bonus", &self.referee_bonus)?;
        if parse_decimal_setting("trade_fee_rate", &self.trade_fee_rate)? > Decimal::ONE {
            return bad("trade_fee_rate must not exceed 1");
        }
        let rates = self.commission_rates()?;
        if rates.len() > 10 || rates.iter().sum::<Decimal>() > Decimal::ONE {
            return bad("referral_commission_rates: at most 10 levels, summing to at most 1");
        }
        if !(1..=100).contains(&self.max_leverage) {
            return bad("max_leverage must be within 1..=100");
        }
        if self.referral_settle_batch == 0 {
            return bad("referral_settle_batch must be at least 1");
        }
        if self.lock_queue_aging_ms == 0 || self.lock_queue_max == 0 {
            return bad("lock_queue_aging_ms and lock_queue_max must be positive");
        }
        if !(10..=1_000).contains(&self.lock_poll_ms) {
            return bad("lock_poll_ms must be within 10..=1000");
        }
        if self.max_body_bytes < 1024 {
            return bad("max_body_bytes must be at least 1024");
        }
        if self.rate_limit_per_second > 0 && self.rate_limit_burst == 0 {
            return bad("rate_limit_burst must be positive when rate limiting is on");
        }
        if !self.is_sqlite() && !self.database_url.starts_with("postgres") {
            return bad("database_url must start with sqlite:// or postgres://");
        }
        if !self.jwt_secret.is_empty() && self.jwt_secret.expose().len() < 16 {
            return bad("jwt_secret must be at least 16 characters");
        }
        Ok(())
    }

    /// The commission rate of each upline level, level 1 first. Empty turns
    /// commissions off.
    pub fn commission_rates(&self) -> Result<Vec<Decimal>, ConfigError> {
        self.referral_commission_rates
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(|r| parse_decimal_setting("referral_commission_rates", r))
            .collect()
    }

    pub fn is_sqlite(&self) -> bool {
        self.database_url.starts_with("sqlite:")
    }

    /// The database file of a SQLite URL (`sqlite://data/ledger.db` -> `data/ledger.db`).
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        let rest = self.database_url.strip_prefix("sqlite:")?;
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let path = rest.split('?').next().unwrap_or(rest);
        (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
    }

    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.db_acquire_timeout_ms)
    }

    pub fn wait_budget(&self) -> Duration {
        Duration::from_millis(self.db_wait_budget_ms)
    }

    /// Seconds a client should wait before retrying after a 503.
    pub fn retry_after_secs(&self) -> u64 {
        1
    }

    /// Resolves the signing secret. When none is configured and the database
    /// is the SQLite default, one is generated once and kept in
    /// `jwt-secret` beside the database file (mode 0600), so `ledger token`
    /// and `ledger serve` agree. PostgreSQL deployments must configure it.
    pub fn resolve_jwt_secret(&mut self) -> Result<Option<PathBuf>, ConfigError> {
        if !self.jwt_secret.is_empty() {
            return Ok(None);
        }
        let Some(db_path) = self.sqlite_path() else {
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
                self.jwt_secret = Secret::new(existing);
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
        self.jwt_secret = Secret::new(secret);
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
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_documented_values() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.listen, "0.0.0.0:3000");
        assert_eq!(c.database_url, "sqlite://data/ledger.db");
        assert_eq!((c.db_max_connections, c.db_min_connections), (50, 0));
        assert_eq!(
            (c.db_acquire_timeout_ms, c.db_idle_timeout_ms),
            (30_000, 10_000)
        );
        assert_eq!((c.retry_max_attempts, c.retry_initial_ms), (3, 10));
        assert_eq!(c.idempotency_ttl_secs, 86_400);
        assert_eq!(c.demo_balance, "10000");
        assert_eq!(c.trade_fee_rate, "0.001");
        assert_eq!((c.max_leverage, c.trade_cooldown_ms), (100, 0));
        assert_eq!(
            (c.referrer_bonus.as_str(), c.referee_bonus.as_str()),
            ("10", "0")
        );
        assert_eq!(
            c.commission_rates().unwrap(),
            vec![Decimal::new(20, 2), Decimal::new(5, 2)]
        );
        assert_eq!(c.referral_settle_interval_ms, 5_000);
    }

    #[test]
    fn decimal_settings_may_arrive_as_numbers() {
        let c: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Serialized::default("trade_fee_rate", 0.002))
            .merge(Serialized::default("referrer_bonus", 25))
            .merge(Serialized::default("referral_commission_rates", "0.3"))
            .extract()
            .unwrap();
        assert_eq!(c.trade_fee_rate, "0.002");
        assert_eq!(c.referrer_bonus, "25");
        assert_eq!(c.commission_rates().unwrap(), vec![Decimal::new(3, 1)]);
    }

    #[test]
    fn secret_is_redacted_in_debug_output() {
        let c = Config {
            jwt_secret: Secret::new("super-secret-value-123"),
            ..Config::default()
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("super-secret-value-123"));
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn invalid_values_are_refused() {
        let cases = [
            Config {
                db_max_connections: 0,
                ..Config::default()
            },
            Config {
                db_min_connections: 60,
                ..Config::default()
            },
            Config {
                retry_max_attempts: 0,
                ..Config::default()
            },
            Config {
                demo_balance: "-1".into(),
                ..Config::default()
            },
            Config {
                demo_balance: "1.123456789".into(),
                ..Config::default()
            },
            Config {
                trade_fee_rate: "1.5".into(),
                ..Config::default()
            },
            Config {
                referral_commission_rates: "0.7,0.4".into(),
                ..Config::default()
            },
            Config {
                referral_commission_rates: "0.1,x".into(),
                ..Config::default()
            },
            Config {
                max_leverage: 101,
                ..Config::default()
            },
            Config {
                referrer_bonus: "-5".into(),
                ..Config::default()
            },
            Config {
                database_url: "mysql://x".into(),
                ..Config::default()
            },
            Config {
                jwt_secret: Secret::new("short"),
                ..Config::default()
            },
        ];
        for c in cases {
            assert!(c.validate().is_err(), "{c:?} should be invalid");
        }
    }

    #[test]
    fn sqlite_path_is_taken_from_the_url() {
        let c = Config::default();
        assert_eq!(c.sqlite_path(), Some(PathBuf::from("data/ledger.db")));
        let c = Config {
            database_url: "sqlite:///tmp/x.db?mode=rwc".into(),
            ..Config::default()
        };
        assert_eq!(c.sqlite_path(), Some(PathBuf::from("/tmp/x.db")));
        let c = Config {
            database_url: "postgres://h/db".into(),
            ..Config::default()
        };
        assert_eq!(c.sqlite_path(), None);
    }

    #[test]
    fn a_generated_secret_is_kept_beside_the_database_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/ledger.db", dir.path().display());
        let mut first = Config {
            database_url: url.clone(),
            ..Config::default()
        };
        let path = first.resolve_jwt_secret().unwrap().unwrap();
        assert_eq!(path, dir.path().join("jwt-secret"));
        let mut second = Config {
            database_url: url,
            ..Config::default()
        };
        second.resolve_jwt_secret().unwrap();
        assert_eq!(first.jwt_secret, second.jwt_secret);
        assert_eq!(first.jwt_secret.expose().len(), 64);
    }

    #[test]
    fn postgres_without_a_secret_is_refused() {
        let mut c = Config {
            database_url: "postgres://h/db".into(),
            ..Config::default()
        };
        assert!(c.resolve_jwt_secret().is_err());
    }
}
