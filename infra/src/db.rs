//! Connection and pool. The sqlx pool is built here, with every
//! per-connection setting in the connect options so that each pooled
//! connection gets them, then handed to sea-orm.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use migration::MigratorTrait;
use sea_orm::sqlx::pool::PoolOptions;
use sea_orm::sqlx::postgres::PgConnectOptions;
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sea_orm::sqlx::{Postgres, Sqlite};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbErr, SqlxPostgresConnector, SqlxSqliteConnector,
    TransactionTrait,
};

use crate::config::DatabaseConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStats {
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

/// The application's handle on its database.
#[derive(Clone, Debug)]
pub struct Database {
    pub conn: DatabaseConnection,
    pub backend: Backend,
    max_connections: u32,
    health: Arc<Health>,
    /// How long start-up waits for the database to accept connections.
    startup_wait: Duration,
}

/// Whether the database answers, as the health probe last saw it. While it
/// is known to be unreachable, requests fail fast instead of each waiting for
/// a connection that cannot come.
#[derive(Debug)]
pub struct Health {
    up: AtomicBool,
    probe: Option<ProbeTarget>,
    /// Asks the probe to look now instead of at its next tick.
    wake: tokio::sync::Notify,
    /// Counts the probe's looks, so a waiter can tell a fresh answer.
    looked: tokio::sync::watch::Sender<u64>,
}

#[derive(Debug)]
struct ProbeTarget {
    options: PgConnectOptions,
}

/// How often the probe looks while the database answers, and while it does
/// not; a probe that gets no answer within `PROBE_TIMEOUT` counts as down.
const PROBE_EVERY_UP: Duration = Duration::from_millis(500);
const PROBE_EVERY_DOWN: Duration = Duration::from_millis(200);
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);
/// However often it is woken, the probe looks at most this often.
const PROBE_MIN_GAP: Duration = Duration::from_millis(50);

impl Health {
    fn new(probe: Option<ProbeTarget>) -> Self {
        Self {
            up: AtomicBool::new(true),
            probe,
            wake: tokio::sync::Notify::new(),
            looked: tokio::sync::watch::Sender::new(0),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Asks the probe for a fresh look and waits at most `wait` for it;
    /// returns whether the database is up. Readiness asks so that it never
    /// reports a database lost since the last tick; requests ask while the
    /// database is known to be down, so that service resumes the moment it
    /// is back rather than at the probe's next tick.
    pub async fn look(&self, wait: Duration) -> bool {
        if self.probe.is_none() {
            return self.is_up();
        }
        let mut looked = self.looked.subscribe();
        looked.mark_unchanged();
        self.wake.notify_one();
        let _ = tokio::time::timeout(wait, looked.changed()).await;
        self.is_up()
    }

    fn set(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            crate::metrics::metrics().db_up.set(i64::from(up));
            if up {
                tracing::info!("database reachable again");
            } else {
                tracing::error!("database unreachable: failing requests fast until it answers");
            }
        }
    }
}

/// A PostgreSQL row lock that waits longer than this fails with 55P03 and the
/// transaction is retried, instead of queueing without bound.
const PG_LOCK_TIMEOUT: &str = "5s";
/// No statement may run longer than this; a runaway query is an error, not a hang.
const PG_STATEMENT_TIMEOUT: &str = "30s";
/// No JIT compilation: every statement of the ledger is a short one, and
/// PostgreSQL compiles whenever a plan's estimated cost is high, which a
/// recursive walk of the referral tree always is (an estimate of a million
/// rows for a few thousand): 22 ms of compiling for a 6 ms query.
const PG_JIT: &str = "off";
/// The advisory lock that makes instances apply migrations one at a time
/// ("ledger_m" in ASCII).
const MIGRATION_LOCK: i64 = 0x6c65_6467_6572_5f6d;

/// The pool settings both engines share. Every acquire, for a read or a
/// write, waits at most the wait budget: a busy pool sheds load at once
/// instead of queueing requests for seconds.
fn pool_options<DB: sea_orm::sqlx::Database>(config: &DatabaseConfig) -> PoolOptions<DB> {
    PoolOptions::<DB>::new()
        .max_connections(config.max_connections)
        .min_connections(config.min_connections)
        .acquire_timeout(config.wait_budget)
        .idle_timeout(config.idle_timeout)
}

impl Database {
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, DbErr> {
        let max = config.max_connections;
        let sqlx_err =
            |e: sea_orm::sqlx::Error| DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e.into()));
        if config.is_sqlite() {
            if let Some(path) = config.sqlite_path()
                && let Some(dir) = path.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)
                    .map_err(|e| DbErr::Custom(format!("cannot create {}: {e}", dir.display())))?;
            }
            let options = SqliteConnectOptions::from_str(&config.url)
                .map_err(sqlx_err)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(config.sqlite_busy_timeout)
                .foreign_keys(true);
            // The first connection is opened here, within the wait budget
            // like any acquire. On a loaded machine opening the file can
            // take longer than that (it did, with a hundred tests opening
            // theirs on two busy cores): it is tried again until the
            // startup wait has passed. A file that cannot be opened fails
            // at once, not by timing out.
            let deadline = Instant::now() + config.acquire_timeout;
            let pool = loop {
                match pool_options::<Sqlite>(config)
                    .connect_with(options.clone())
                    .await
                {
                    Err(sea_orm::sqlx::Error::PoolTimedOut) if Instant::now() < deadline => {
                        tracing::warn!("opening the SQLite file took longer than the wait budget");
                    }
                    opened => break opened.map_err(sqlx_err)?,
                }
            };
            Ok(Self {
                conn: counted(SqlxSqliteConnector::from_sqlx_sqlite_pool(pool)),
                backend: Backend::Sqlite,
                max_connections: max,
                // A file on local disk: there is nothing to lose contact with.
                health: Arc::new(Health::new(None)),
                startup_wait: config.acquire_timeout,
            })
        } else {
            let options = PgConnectOptions::from_str(&config.url)
                .map_err(sqlx_err)?
                .application_name("ledger")
                .options([
                    ("lock_timeout", PG_LOCK_TIMEOUT),
                    ("statement_timeout", PG_STATEMENT_TIMEOUT),
                    ("jit", PG_JIT),
                ]);
            let pool = pool_options::<Postgres>(config).connect_lazy_with(options.clone());
            Ok(Self {
                conn: counted(SqlxPostgresConnector::from_sqlx_postgres_pool(pool)),
                backend: Backend::Postgres,
                max_connections: max,
                health: Arc::new(Health::new(Some(ProbeTarget { options }))),
                startup_wait: config.acquire_timeout,
            })
        }
    }

    /// Applies the migrations, waiting up to the configured acquire timeout
    /// for a database that is still starting to accept connections.
    pub async fn migrate(&self) -> Result<(), DbErr> {
        let deadline = Instant::now() + self.startup_wait;
        loop {
            match self.migrate_once().await {
                Err(DbErr::ConnectionAcquire(_) | DbErr::Conn(_)) if Instant::now() < deadline => {
                    tracing::warn!("waiting for the database to accept connections");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                other => return other,
            }
        }
    }

    /// On PostgreSQL, instances started together (a deploy, a restart of
    /// all of them) take turns: the pending migrations run in one
    /// transaction that first takes an advisory lock, so the next instance
    /// finds them applied instead of racing to create the same table or
    /// index (one of them failed with a duplicate-key error on
    /// `pg_class`). A migration may take longer than a request's lock and
    /// statement timeouts (an index built over a large table), so they are
    /// lifted for this transaction. SQLite has one writer at a time.
    async fn migrate_once(&self) -> Result<(), DbErr> {
        if self.backend == Backend::Sqlite {
            return migration::Migrator::up(&self.conn, None).await;
        }
        let txn = self.conn.begin().await?;
        txn.execute_unprepared(&format!(
            "SET LOCAL lock_timeout = 0; SET LOCAL statement_timeout = 0; \
             SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"
        ))
        .await?;
        migration::Migrator::up(&txn, None).await?;
        txn.commit().await
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Watches the database from a connection of its own (outside the pool,
    /// so a busy pool never looks like an outage) until the returned task is
    /// aborted. Nothing to watch on SQLite.
    pub fn spawn_health_probe(&self) -> Option<tokio::task::JoinHandle<()>> {
        let health = Arc::clone(&self.health);
        health.probe.as_ref()?;
        Some(tokio::spawn(async move {
            let Some(target) = health.probe.as_ref() else {
                return;
            };
            let mut conn: Option<sea_orm::sqlx::PgConnection> = None;
            loop {
                let up = tokio::time::timeout(PROBE_TIMEOUT, probe(&mut conn, &target.options))
                    .await
                    .unwrap_or(false);
                if !up {
                    conn = None;
                }
                health.set(up);
                health.looked.send_modify(|n| *n += 1);
                tokio::time::sleep(PROBE_MIN_GAP).await;
                let every = if up { PROBE_EVERY_UP } else { PROBE_EVERY_DOWN };
                let _ = tokio::time::timeout(every, health.wake.notified()).await;
            }
        }))
    }

    /// Marks the database unreachable until the probe sees it answer again:
    /// a request that just failed to reach it need not wait for the probe's
    /// next look before the others fail fast.
    pub fn mark_unreachable(&self) {
        self.health.set(false);
    }

    pub fn pool_stats(&self) -> PoolStats {
        let (size, idle) = match self.backend {
            Backend::Postgres => {
                let pool = self.conn.get_postgres_connection_pool();
                (pool.size(), pool.num_idle())
            }
            Backend::Sqlite => {
                let pool = self.conn.get_sqlite_connection_pool();
                (pool.size(), pool.num_idle())
            }
        };
        PoolStats {
            size,
            idle: u32::try_from(idle).unwrap_or(u32::MAX),
            max: self.max_connections,
        }
    }

    pub async fn close(&self) {
        if let Err(e) = self.conn.close_by_ref().await {
            tracing::warn!(error = %e, "closing the database pool failed");
        }
    }
}

/// Counts every statement the application sends, so that the round trips
/// of an operation can be measured (and a regression caught by a test).
fn counted(mut conn: DatabaseConnection) -> DatabaseConnection {
    conn.set_metric_callback(|_| crate::metrics::metrics().db_statements.inc());
    conn
}

/// One `SELECT 1` on the probe's own connection, opening it when needed.
async fn probe(conn: &mut Option<sea_orm::sqlx::PgConnection>, options: &PgConnectOptions) -> bool {
    use sea_orm::sqlx::{Connection, Executor};
    if conn.is_none() {
        match sea_orm::sqlx::PgConnection::connect_with(options).await {
            Ok(c) => *conn = Some(c),
            Err(_) => return false,
        }
    }
    match conn.as_mut() {
        Some(c) => c.execute("SELECT 1").await.is_ok(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opening the first SQLite connection is tried again only when it ran
    /// past the wait budget: a file that cannot be opened fails at once,
    /// even with an hour to wait for a slow one.
    #[tokio::test]
    async fn a_sqlite_file_that_cannot_be_opened_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        // the path names a directory, which SQLite cannot open as a file
        std::fs::create_dir(dir.path().join("a.db")).unwrap();
        let config = DatabaseConfig {
            url: format!("sqlite://{}/a.db", dir.path().display()),
            acquire_timeout: Duration::from_secs(3600),
            ..Default::default()
        };
        let opened = tokio::time::timeout(Duration::from_secs(60), Database::connect(&config))
            .await
            .expect("still trying after a minute");
        assert!(opened.is_err());
    }

    /// A file that opens is opened, with the usual wait budget.
    #[tokio::test]
    async fn a_sqlite_file_opens_and_migrates() {
        let dir = tempfile::tempdir().unwrap();
        let config = DatabaseConfig {
            url: format!("sqlite://{}/b.db", dir.path().display()),
            ..Default::default()
        };
        let db = Database::connect(&config).await.unwrap();
        db.migrate().await.unwrap();
    }
}
