//! Connection and pool. The sqlx pool is built here, with every
//! per-connection setting in the connect options so that each pooled
//! connection gets them, then handed to sea-orm.

use std::str::FromStr;

use migration::MigratorTrait;
use sea_orm::sqlx::pool::PoolOptions;
use sea_orm::sqlx::postgres::PgConnectOptions;
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sea_orm::sqlx::{Postgres, Sqlite};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbErr, SqlxPostgresConnector, SqlxSqliteConnector,
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
}

/// A PostgreSQL row lock that waits longer than this fails with 55P03 and the
/// transaction is retried, instead of queueing without bound.
const PG_LOCK_TIMEOUT: &str = "5s";
/// No statement may run longer than this; a runaway query is an error, not a hang.
const PG_STATEMENT_TIMEOUT: &str = "30s";

/// The pool settings both engines share.
fn pool_options<DB: sea_orm::sqlx::Database>(config: &DatabaseConfig) -> PoolOptions<DB> {
    PoolOptions::<DB>::new()
        .max_connections(config.max_connections)
        .min_connections(config.min_connections)
        .acquire_timeout(config.acquire_timeout)
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
            let pool = pool_options::<Sqlite>(config)
                .connect_with(options)
                .await
                .map_err(sqlx_err)?;
            Ok(Self {
                conn: SqlxSqliteConnector::from_sqlx_sqlite_pool(pool),
                backend: Backend::Sqlite,
                max_connections: max,
            })
        } else {
            let options = PgConnectOptions::from_str(&config.url)
                .map_err(sqlx_err)?
                .application_name("ledger")
                .options([
                    ("lock_timeout", PG_LOCK_TIMEOUT),
                    ("statement_timeout", PG_STATEMENT_TIMEOUT),
                ]);
            let pool = pool_options::<Postgres>(config)
                .connect_with(options)
                .await
                .map_err(sqlx_err)?;
            Ok(Self {
                conn: SqlxPostgresConnector::from_sqlx_postgres_pool(pool),
                backend: Backend::Postgres,
                max_connections: max,
            })
        }
    }

    pub async fn migrate(&self) -> Result<(), DbErr> {
        migration::Migrator::up(&self.conn, None).await
    }

    /// One trivial round trip: is the database answering?
    pub async fn ping(&self) -> Result<(), DbErr> {
        self.conn.execute_unprepared("SELECT 1").await.map(|_| ())
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
