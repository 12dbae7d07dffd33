//! Database errors classified by SQLSTATE (PostgreSQL) or result code
//! (SQLite), never by message text — except SQLite's constraint name, which
//! SQLite reports only in its message.

use sea_orm::sqlx;
use sea_orm::{ConnAcquireErr, DbErr, RuntimeErr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbErrorKind {
    /// Re-running the whole transaction may succeed (deadlock, serialization
    /// failure, lock timeout, SQLite busy/locked).
    Retryable(&'static str),
    /// The connection broke mid-transaction; the outcome of a COMMIT in flight
    /// is unknown. Safe to re-run only where an idempotency key guards it.
    ConnectionLost,
    /// No connection could be had: the database is down or refuses us.
    Unavailable,
    /// Every pooled connection stayed busy for the whole wait budget.
    PoolTimeout,
    UniqueViolation(Option<String>),
    CheckViolation(Option<String>),
    Other,
}

/// PostgreSQL SQLSTATE codes.
pub fn classify_sqlstate(code: &str, constraint: Option<&str>) -> DbErrorKind {
    match code {
        "40P01" => DbErrorKind::Retryable("deadlock"),
        "40001" => DbErrorKind::Retryable("serialization_failure"),
        "55P03" => DbErrorKind::Retryable("lock_not_available"),
        "57P01" | "57P02" | "57P03" => DbErrorKind::ConnectionLost,
        "53300" | "53400" => DbErrorKind::Unavailable,
        "23505" => DbErrorKind::UniqueViolation(constraint.map(str::to_owned)),
        "23514" => DbErrorKind::CheckViolation(constraint.map(str::to_owned)),
        c if c.starts_with("08") => DbErrorKind::ConnectionLost,
        _ => DbErrorKind::Other,
    }
}

/// SQLite (extended) result codes.
pub fn classify_sqlite(code: &str, message: &str) -> DbErrorKind {
    match code {
        // SQLITE_BUSY and its extended codes: RECOVERY, SNAPSHOT, TIMEOUT.
        "5" | "261" | "517" | "773" => DbErrorKind::Retryable("sqlite_busy"),
        // SQLITE_LOCKED, LOCKED_SHAREDCACHE.
        "6" | "262" => DbErrorKind::Retryable("sqlite_locked"),
        // SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_PRIMARYKEY.
        "2067" | "1555" => DbErrorKind::UniqueViolation(sqlite_constraint(message)),
        // SQLITE_CONSTRAINT_CHECK.
        "275" => DbErrorKind::CheckViolation(sqlite_constraint(message)),
        _ => DbErrorKind::Other,
    }
}

/// "UNIQUE constraint failed: users.email" -> "users.email";
/// "CHECK constraint failed: ck_wallets_balance_nonneg" -> that name.
fn sqlite_constraint(message: &str) -> Option<String> {
    message
        .split_once("constraint failed: ")
        .map(|(_, rest)| rest.trim().to_owned())
}

pub fn classify_sqlx(err: &sqlx::Error) -> DbErrorKind {
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                classify_sqlite(&code, db.message())
            } else {
                classify_sqlstate(&code, db.constraint())
            }
        }
        sqlx::Error::PoolTimedOut => DbErrorKind::PoolTimeout,
        sqlx::Error::PoolClosed => DbErrorKind::Unavailable,
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => DbErrorKind::ConnectionLost,
        _ => DbErrorKind::Other,
    }
}

pub fn classify(err: &DbErr) -> DbErrorKind {
    match err {
        DbErr::ConnectionAcquire(ConnAcquireErr::Timeout) => DbErrorKind::PoolTimeout,
        DbErr::ConnectionAcquire(_) => DbErrorKind::Unavailable,
        DbErr::Conn(RuntimeErr::SqlxError(e)) => match classify_sqlx(e) {
            kind @ (DbErrorKind::Retryable(_) | DbErrorKind::PoolTimeout) => kind,
            _ => DbErrorKind::Unavailable,
        },
        DbErr::Conn(_) => DbErrorKind::Unavailable,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            classify_sqlx(e)
        }
        _ => DbErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn postgres_retryable_codes() {
        assert_eq!(
            classify_sqlstate("40P01", None),
            DbErrorKind::Retryable("deadlock")
        );
        assert_eq!(
            classify_sqlstate("40001", None),
            DbErrorKind::Retryable("serialization_failure")
        );
        assert_eq!(
            classify_sqlstate("55P03", None),
            DbErrorKind::Retryable("lock_not_available")
        );
    }

    #[test]
    fn postgres_never_retries_data_or_syntax_errors() {
        for code in [
            "23505", "23514", "23503", "22003", "22P02", "42601", "42P01", "XX000",
        ] {
            assert!(
                !matches!(classify_sqlstate(code, None), DbErrorKind::Retryable(_)),
                "{code}"
            );
            // nor any other kind that becomes a transient DomainError
            assert!(
                !matches!(
                    classify_sqlstate(code, None),
                    DbErrorKind::ConnectionLost
                        | DbErrorKind::Unavailable
                        | DbErrorKind::PoolTimeout
                ),
                "{code}"
            );
        }
    }

    #[test]
    fn postgres_connection_and_constraint_codes() {
        assert_eq!(
            classify_sqlstate("08006", None),
            DbErrorKind::ConnectionLost
        );
        assert_eq!(
            classify_sqlstate("57P01", None),
            DbErrorKind::ConnectionLost
        );
        assert_eq!(classify_sqlstate("53300", None), DbErrorKind::Unavailable);
        assert_eq!(
            classify_sqlstate("23505", Some("ux_users_email")),
            DbErrorKind::UniqueViolation(Some("ux_users_email".into()))
        );
        assert_eq!(
            classify_sqlstate("23514", Some("ck_wallets_balance_nonneg")),
            DbErrorKind::CheckViolation(Some("ck_wallets_balance_nonneg".into()))
        );
    }

    #[test]
    fn sqlite_codes() {
        for code in ["5", "261", "517", "773"] {
            assert_eq!(
                classify_sqlite(code, "database is locked"),
                DbErrorKind::Retryable("sqlite_busy")
            );
        }
        assert_eq!(
            classify_sqlite("6", ""),
            DbErrorKind::Retryable("sqlite_locked")
        );
        assert_eq!(
            classify_sqlite("2067", "UNIQUE constraint failed: users.email"),
            DbErrorKind::UniqueViolation(Some("users.email".into()))
        );
        assert_eq!(
            classify_sqlite("275", "CHECK constraint failed: ck_wallets_balance_nonneg"),
            DbErrorKind::CheckViolation(Some("ck_wallets_balance_nonneg".into()))
        );
        assert_eq!(classify_sqlite("1", "syntax error"), DbErrorKind::Other);
        assert_eq!(
            classify_sqlite("787", "FOREIGN KEY constraint failed"),
            DbErrorKind::Other
        );
    }

    #[test]
    fn pool_and_io_errors() {
        let io = |kind, what| {
            RuntimeErr::SqlxError(Arc::new(sqlx::Error::Io(std::io::Error::new(kind, what))))
        };
        let cases = [
            (
                DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
                DbErrorKind::PoolTimeout,
            ),
            (
                DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed),
                DbErrorKind::Unavailable,
            ),
            (
                DbErr::Exec(io(std::io::ErrorKind::ConnectionReset, "reset")),
                DbErrorKind::ConnectionLost,
            ),
            (
                DbErr::Conn(io(std::io::ErrorKind::ConnectionRefused, "refused")),
                DbErrorKind::Unavailable,
            ),
            (
                DbErr::Query(RuntimeErr::SqlxError(Arc::new(sqlx::Error::PoolTimedOut))),
                DbErrorKind::PoolTimeout,
            ),
            (DbErr::Custom("x".into()), DbErrorKind::Other),
        ];
        for (err, kind) in cases {
            assert_eq!(classify(&err), kind, "{err:?}");
        }
    }

    #[tokio::test]
    async fn real_sqlite_errors_are_classified_by_code() {
        use sea_orm::{ConnectionTrait, Database};
        let db = Database::connect("sqlite::memory:").await.unwrap();
        db.execute_unprepared("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL CONSTRAINT ck_v CHECK (v >= 0), u TEXT UNIQUE)")
            .await
            .unwrap();
        db.execute_unprepared("INSERT INTO t (v, u) VALUES (1, 'a')")
            .await
            .unwrap();
        let dup = db
            .execute_unprepared("INSERT INTO t (v, u) VALUES (1, 'a')")
            .await
            .unwrap_err();
        assert_eq!(
            classify(&dup),
            DbErrorKind::UniqueViolation(Some("t.u".into()))
        );
        let neg = db
            .execute_unprepared("INSERT INTO t (v, u) VALUES (-1, 'b')")
            .await
            .unwrap_err();
        assert_eq!(
            classify(&neg),
            DbErrorKind::CheckViolation(Some("ck_v".into()))
        );
        let syntax = db.execute_unprepared("SELEC 1").await.unwrap_err();
        assert_eq!(classify(&syntax), DbErrorKind::Other);
    }
}
