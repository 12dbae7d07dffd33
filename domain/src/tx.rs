//! TransactionService: every write runs inside `execute_with_retry`. On a
//! retryable failure the transaction is rolled back and the whole closure runs
//! again; nothing outside the database happens inside the closure.
//!
//! The closure receives the transaction as `Arc<DatabaseTransaction>` so that
//! it can borrow from its surroundings without higher-ranked lifetimes; it
//! must not keep the `Arc` past its own future.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backoff::backoff::Backoff;
use backoff::{ExponentialBackoff, ExponentialBackoffBuilder};
use infra::config::RetryConfig;
use infra::metrics::metrics;
use infra::{Backend, Database};
use sea_orm::{DatabaseTransaction, SqliteTransactionMode, TransactionOptions, TransactionTrait};

use crate::error::{DomainError, DomainResult};

/// How often and how patiently a transaction is re-run.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub max_attempts: u32,
    pub initial: Duration,
    pub multiplier: f64,
    /// Each delay is drawn from `[d*(1-jitter), d*(1+jitter)]`.
    pub jitter: f64,
    /// Re-run after a lost connection. Only safe where the outcome of an
    /// in-flight COMMIT is checked on the next attempt (the idempotency key).
    pub retry_connection_loss: bool,
}

impl RetryPolicy {
    pub fn from_config(config: &RetryConfig) -> Self {
        Self {
            max_attempts: config.max_attempts,
            initial: config.initial,
            multiplier: config.multiplier,
            jitter: config.jitter,
            retry_connection_loss: false,
        }
    }

    pub fn with_connection_loss_retry(mut self) -> Self {
        self.retry_connection_loss = true;
        self
    }

    fn backoff(&self) -> ExponentialBackoff {
        ExponentialBackoffBuilder::new()
            .with_initial_interval(self.initial)
            .with_multiplier(self.multiplier)
            .with_randomization_factor(self.jitter)
            .with_max_interval(Duration::from_secs(2))
            .with_max_elapsed_time(None)
            .build()
    }

    /// The delays between attempts: `max_attempts - 1` of them.
    pub fn delays(&self) -> Vec<Duration> {
        let mut backoff = self.backoff();
        (1..self.max_attempts)
            .map(|_| backoff.next_backoff().unwrap_or(self.initial))
            .collect()
    }

    fn should_retry(&self, error: &DomainError) -> bool {
        match error {
            DomainError::Conflict { .. } => true,
            DomainError::ConnectionLost(_) => self.retry_connection_loss,
            _ => false,
        }
    }
}

/// The retry schedule of calls outside the database (a workflow's
/// payout), from the same `backoff` crate as transaction retries. How long
/// to wait before outbound attempt `attempt + 1` after `attempt`
/// failed (`attempt` ≥ 1): from `initial`, doubling, at most `max`, each
/// drawn from ±50 % around that (the `backoff` crate's jitter), so that
/// retries of many workflows against one recovering provider spread out.
pub fn retry_delay(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let mut schedule = ExponentialBackoffBuilder::new()
        .with_initial_interval(initial)
        .with_multiplier(2.0)
        .with_randomization_factor(0.5)
        .with_max_interval(max)
        .with_max_elapsed_time(None)
        .build();
    let mut delay = initial;
    for _ in 0..attempt.clamp(1, 64) {
        delay = schedule.next_backoff().unwrap_or(max);
    }
    delay
}

#[derive(Clone, Debug)]
pub struct TransactionService {
    db: Database,
    policy: RetryPolicy,
}

fn cause_of(error: &DomainError) -> &'static str {
    match error {
        DomainError::Conflict { cause, .. } => cause,
        DomainError::ConnectionLost(_) => "connection_lost",
        _ => "other",
    }
}

impl TransactionService {
    pub fn new(db: Database, policy: RetryPolicy) -> Self {
        Self { db, policy }
    }

    pub fn db(&self) -> &Database {
        &self.db
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    async fn begin(&self) -> Result<DatabaseTransaction, sea_orm::DbErr> {
        let options = TransactionOptions {
            // SQLite has no row locks: a writer takes the database write lock
            // at BEGIN, so two writers never both read-then-write.
            sqlite_transaction_mode: (self.db.backend == Backend::Sqlite)
                .then_some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        };
        let started = std::time::Instant::now();
        let txn = self.db.conn.begin_with_options(options).await;
        metrics().db_begin.observe(started.elapsed().as_secs_f64());
        txn
    }

    pub async fn execute_with_retry<T, F, Fut>(
        &self,
        operation: &'static str,
        op: F,
    ) -> DomainResult<T>
    where
        F: Fn(Arc<DatabaseTransaction>) -> Fut,
        Fut: Future<Output = DomainResult<T>>,
    {
        self.execute_with_policy(operation, &self.policy, op).await
    }

    pub async fn execute_with_policy<T, F, Fut>(
        &self,
        operation: &'static str,
        policy: &RetryPolicy,
        op: F,
    ) -> DomainResult<T>
    where
        F: Fn(Arc<DatabaseTransaction>) -> Fut,
        Fut: Future<Output = DomainResult<T>>,
    {
        self.run(operation, policy, &op, |_| true).await
    }

    /// As [`execute_with_policy`](Self::execute_with_policy), for work that
    /// may turn out not to be wanted once it has run: `op` answering
    /// `Ok(Err(r))` rolls the transaction back, so nothing it wrote stays,
    /// and `r` is returned without a retry. An `Err` is retried or returned
    /// as usual.
    pub async fn execute_or_roll_back<T, R, F, Fut>(
        &self,
        operation: &'static str,
        policy: &RetryPolicy,
        op: F,
    ) -> DomainResult<Result<T, R>>
    where
        F: Fn(Arc<DatabaseTransaction>) -> Fut,
        Fut: Future<Output = DomainResult<Result<T, R>>>,
    {
        self.run(operation, policy, &op, Result::is_ok).await
    }

    /// The retry loop; `keep` says whether a value is committed or rolled
    /// back.
    async fn run<T, F, Fut>(
        &self,
        operation: &'static str,
        policy: &RetryPolicy,
        op: &F,
        keep: fn(&T) -> bool,
    ) -> DomainResult<T>
    where
        F: Fn(Arc<DatabaseTransaction>) -> Fut,
        Fut: Future<Output = DomainResult<T>>,
    {
        let m = metrics();
        let mut delays = policy.delays().into_iter();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            m.tx_attempts.with_label_values(&[operation]).inc();
            tracing::debug!(operation, attempt, "transaction_start");
            let error = match self.attempt(operation, op, keep).await {
                Ok(value) => {
                    tracing::debug!(operation, attempt, "transaction_success");
                    return Ok(value);
                }
                Err(e) => e,
            };
            if !error.is_transient() {
                tracing::debug!(operation, attempt, error = %error, "transaction_failure");
                return Err(error);
            }
            if policy.should_retry(&error) {
                if let Some(delay) = delays.next() {
                    let cause = cause_of(&error);
                    m.tx_retries.with_label_values(&[operation, cause]).inc();
                    tracing::warn!(
                        operation,
                        attempt,
                        cause,
                        delay_ms = delay.as_millis() as u64,
                        "transaction_retry"
                    );
                    tokio::time::sleep(delay).await;
                    continue;
                }
                m.tx_giveups.with_label_values(&[operation]).inc();
                tracing::error!(operation, attempt, error = %error, "transaction_failure: retries exhausted");
            } else {
                tracing::warn!(operation, attempt, error = %error, "transaction_failure");
            }
            return Err(match error {
                DomainError::Conflict { source, .. } => DomainError::Unavailable(source),
                DomainError::ConnectionLost(source) | DomainError::Unavailable(source) => {
                    self.db.mark_unreachable();
                    DomainError::Unavailable(source)
                }
                other => other,
            });
        }
    }

    async fn attempt<T, F, Fut>(
        &self,
        operation: &'static str,
        op: &F,
        keep: fn(&T) -> bool,
    ) -> DomainResult<T>
    where
        F: Fn(Arc<DatabaseTransaction>) -> Fut,
        Fut: Future<Output = DomainResult<T>>,
    {
        let txn = Arc::new(self.begin().await?);
        let result = op(Arc::clone(&txn)).await;
        let txn = Arc::try_unwrap(txn)
            .map_err(|_| DomainError::unexpected("transaction handle kept past its closure"))?;
        match result {
            Ok(value) if keep(&value) => {
                txn.commit().await?;
                metrics().db_commits.with_label_values(&[operation]).inc();
                Ok(value)
            }
            result => {
                if let Err(rollback) = txn.rollback().await {
                    tracing::warn!(error = %rollback, "rollback failed");
                }
                result
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: f64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            initial: Duration::from_millis(10),
            multiplier: 2.0,
            jitter,
            retry_connection_loss: false,
        }
    }

    #[test]
    fn three_attempts_mean_two_doubling_delays() {
        let delays = policy(0.0).delays();
        assert_eq!(
            delays,
            vec![Duration::from_millis(10), Duration::from_millis(20)]
        );
        let four = RetryPolicy {
            max_attempts: 4,
            ..policy(0.0)
        }
        .delays();
        assert_eq!(four[2], Duration::from_millis(40));
    }

    #[test]
    fn jitter_stays_within_its_band() {
        for _ in 0..200 {
            let d = policy(0.5).delays();
            assert!(
                d[0] >= Duration::from_millis(5) && d[0] <= Duration::from_millis(15),
                "{d:?}"
            );
            assert!(
                d[1] >= Duration::from_millis(10) && d[1] <= Duration::from_millis(30),
                "{d:?}"
            );
        }
    }

    #[test]
    fn only_retryable_kinds_are_retried() {
        let p = policy(0.0);
        let lost = || DomainError::ConnectionLost(sea_orm::DbErr::Custom("lost".into()));
        assert!(p.should_retry(&injected("40P01")));
        assert!(!p.should_retry(&lost()));
        assert!(!p.should_retry(&DomainError::Overloaded));
        assert!(!p.should_retry(&injected("23505")));
        assert!(!p.should_retry(&DomainError::Database(sea_orm::DbErr::Custom("x".into()))));
        assert!(p.with_connection_loss_retry().should_retry(&lost()));
    }

    use std::sync::atomic::AtomicU32;
    use std::sync::atomic::Ordering::SeqCst;

    /// A PostgreSQL error carrying only a SQLSTATE, for driving the loop.
    #[derive(Debug)]
    struct Sqlstate(&'static str);

    impl std::fmt::Display for Sqlstate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "sqlstate {}", self.0)
        }
    }

    impl std::error::Error for Sqlstate {}

    impl sea_orm::sqlx::error::DatabaseError for Sqlstate {
        fn message(&self) -> &str {
            "injected"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sea_orm::sqlx::error::ErrorKind {
            sea_orm::sqlx::error::ErrorKind::Other
        }
    }

    fn injected(code: &'static str) -> DomainError {
        let e = sea_orm::sqlx::Error::Database(Box::new(Sqlstate(code)));
        DomainError::from(sea_orm::DbErr::Exec(sea_orm::RuntimeErr::SqlxError(
            Arc::new(e),
        )))
    }

    async fn service(dir: &tempfile::TempDir) -> TransactionService {
        let config = crate::testing::config(dir).database;
        TransactionService::new(Database::connect(&config).await.unwrap(), policy(0.0))
    }

    #[tokio::test]
    async fn a_deadlock_reruns_the_whole_closure() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(&dir).await;
        let calls = AtomicU32::new(0);
        let result = svc
            .execute_with_retry("test", |_txn| {
                let n = calls.fetch_add(1, SeqCst);
                async move { if n < 2 { Err(injected("40P01")) } else { Ok(n) } }
            })
            .await;
        assert_eq!(result.unwrap(), 2);
        assert_eq!(calls.load(SeqCst), 3);
    }

    /// Runs a closure that always fails with `error()`; returns the result
    /// and how many times the closure ran.
    async fn always_failing(
        svc: &TransactionService,
        error: fn() -> DomainError,
    ) -> (DomainResult<()>, u32) {
        let calls = AtomicU32::new(0);
        let result = svc
            .execute_with_retry("test", |_txn| {
                calls.fetch_add(1, SeqCst);
                async move { Err(error()) }
            })
            .await;
        (result, calls.load(SeqCst))
    }

    #[tokio::test]
    async fn retries_give_up_as_unavailable_and_fatal_errors_are_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(&dir).await;
        let (result, calls) = always_failing(&svc, || injected("40001")).await;
        assert!(matches!(result, Err(DomainError::Unavailable(_))));
        assert_eq!(calls, 3);
        let (result, calls) = always_failing(&svc, || injected("23505")).await;
        assert!(matches!(result, Err(DomainError::Database(_))));
        assert_eq!(calls, 1);
        // a business refusal is returned as it is, at once
        let (result, calls) = always_failing(&svc, || DomainError::SameAccount).await;
        assert!(matches!(result, Err(DomainError::SameAccount)));
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn a_declined_result_rolls_back_and_a_kept_one_commits() {
        use sea_orm::ConnectionTrait;
        let dir = tempfile::tempdir().unwrap();
        let svc = service(&dir).await;
        let conn = &svc.db().conn;
        conn.execute_unprepared("CREATE TABLE t (n INTEGER)")
            .await
            .unwrap();
        let write = |keep: bool| {
            svc.execute_or_roll_back("test", &svc.policy, move |txn| async move {
                txn.execute_unprepared("INSERT INTO t VALUES (1)").await?;
                Ok(if keep { Ok(()) } else { Err("declined") })
            })
        };
        assert_eq!(write(false).await.unwrap(), Err("declined"));
        assert_eq!(write(true).await.unwrap(), Ok(()));
        let rows = conn
            .query_one_raw(sea_orm::Statement::from_string(
                conn.get_database_backend(),
                "SELECT COUNT(*) AS n FROM t",
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rows.try_get::<i64>("", "n").unwrap(), 1);
    }

    #[test]
    fn retry_delays_double_with_jitter_and_stop_growing_at_the_cap() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_millis(1_000));
        for _ in 0..50 {
            for (attempt, base) in [
                (1, 100u64),
                (2, 200),
                (3, 400),
                (4, 800),
                (5, 1_000),
                (20, 1_000),
            ] {
                let d = retry_delay(initial, max, attempt).as_millis() as u64;
                assert!(
                    d >= base / 2 && d <= base * 3 / 2,
                    "attempt {attempt}: {d} ms outside {base} ± 50 %"
                );
            }
        }
        // Jitter: not every draw is the same.
        let draws: std::collections::HashSet<_> =
            (0..20).map(|_| retry_delay(initial, max, 3)).collect();
        assert!(draws.len() > 1);
    }
}
