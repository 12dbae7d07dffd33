//! The recovery manager: at start and every `recovery_interval` (and on
//! demand), one pass that
//! - resumes workflows whose worker died: a `running` workflow whose lease
//!   lapsed is released with its generation bumped (the dead worker's late
//!   writes, should it come back, change nothing) and runnable at once;
//! - compensates, or stops `failed`, workflows past their deadline (see
//!   `WorkflowService::expire`);
//! - releases expired holds and expired locks (the jobs that do this also
//!   run on their own; here it is done at once after a restart);
//! - deletes idempotency claims left `processing` past their lock (none
//!   should exist: a claim commits with its write; this finds any that an
//!   older version or a bug left behind).
//!
//! Its counts are this process's, since it started.

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use infra::entities::workflow;
use infra::metrics::metrics;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use crate::clock::{now, now_ms};
use crate::error::{DomainError, DomainResult};
use crate::workflows::WorkflowService;
use crate::workflows::model::WorkflowStatus;
use crate::workflows::store;

/// The value of one part of a pass, or nothing (its default) when it failed,
/// keeping the pass's first error.
fn kept<T: Default>(result: DomainResult<T>, first: &mut Option<DomainError>) -> T {
    result.unwrap_or_else(|e| {
        first.get_or_insert(e);
        T::default()
    })
}

/// Workflows past their deadline handled per pass.
const DEADLINE_BATCH: u64 = 100;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryStatus {
    pub last_run_at: Option<DateTime<Utc>>,
    pub runs: u64,
    /// What the passes of this process did, added up.
    pub totals: Pass,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    pub resumed: u64,
    pub compensated: u64,
    pub failed: u64,
    pub expired_locks: u64,
    pub expired_holds: u64,
    pub released_idempotency_claims: u64,
}

impl Pass {
    /// Each count under its name, the `kind` of `recovery_actions_total`.
    pub fn counts(&self) -> [(&'static str, u64); 6] {
        [
            ("resumed", self.resumed),
            ("compensated", self.compensated),
            ("failed", self.failed),
            ("expired_locks", self.expired_locks),
            ("expired_holds", self.expired_holds),
            (
                "released_idempotency_claims",
                self.released_idempotency_claims,
            ),
        ]
    }

    pub fn total(&self) -> u64 {
        self.counts().iter().map(|(_, n)| n).sum()
    }

    fn add(&mut self, other: &Pass) {
        self.resumed += other.resumed;
        self.compensated += other.compensated;
        self.failed += other.failed;
        self.expired_locks += other.expired_locks;
        self.expired_holds += other.expired_holds;
        self.released_idempotency_claims += other.released_idempotency_claims;
    }
}

#[derive(Debug, Clone)]
pub struct RecoveryManager {
    workflows: WorkflowService,
    status: Arc<Mutex<RecoveryStatus>>,
    /// One pass at a time in this process.
    running: Arc<tokio::sync::Mutex<()>>,
}

impl RecoveryManager {
    pub fn new(workflows: WorkflowService) -> Self {
        Self {
            workflows,
            status: Arc::default(),
            running: Arc::default(),
        }
    }

    /// What the passes did, and among the resumed, the workflows this
    /// process's workers took over from a lapsed lease before a pass came
    /// to them.
    pub fn status(&self) -> RecoveryStatus {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        status.totals.resumed += self.workflows.taken_over();
        status
    }

    /// One pass; the counts are added to the status, and an error counts as
    /// a recovery failure (metric and alert) after the rest of the pass ran.
    pub async fn run_once(&self) -> DomainResult<RecoveryStatus> {
        let _one = self.running.lock().await;
        let m = &metrics().workflows;
        m.recovery_runs.inc();
        let (pass, error) = self.pass().await;
        for (kind, n) in pass.counts() {
            m.recovery.with_label_values(&[kind]).inc_by(n);
        }
        {
            let mut s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            s.last_run_at = Some(now());
            s.runs += 1;
            s.totals.add(&pass);
        }
        if pass.resumed > 0 {
            self.workflows.wake();
        }
        match error {
            Some(e) => {
                m.recovery_failures.inc();
                tracing::error!(error = %e, "recovery pass failed");
                Err(e)
            }
            None => {
                if pass.total() > 0 {
                    tracing::info!(?pass, "recovery pass");
                }
                Ok(self.status())
            }
        }
    }

    /// Every part runs even if an earlier one failed; the first error is
    /// returned.
    async fn pass(&self) -> (Pass, Option<DomainError>) {
        let mut error = None;
        let ledger = &self.workflows.ledger;
        let resumed = kept(self.resume_lapsed().await, &mut error);
        let (compensated, failed) = kept(self.expire_deadlines().await, &mut error);
        let expired_holds = kept(ledger.expire_due_holds().await, &mut error);
        let locks = ledger.locks.cleanup().await.map(|r| r.expired);
        let expired_locks = kept(locks, &mut error);
        let claims = ledger.idempotency.release_stale_claims().await;
        let released_idempotency_claims = kept(claims, &mut error);
        let pass = Pass {
            resumed,
            compensated,
            failed,
            expired_locks,
            expired_holds,
            released_idempotency_claims,
        };
        (pass, error)
    }

    /// Running workflows whose lease lapsed: released, generation bumped,
    /// runnable now.
    async fn resume_lapsed(&self) -> DomainResult<u64> {
        use workflow::Column as C;
        let now = now_ms();
        let done = workflow::Entity::update_many()
            .col_expr(C::LeaseOwner, Expr::value(Option::<String>::None))
            .col_expr(C::LeaseExpiresAtMs, Expr::value(Option::<i64>::None))
            .col_expr(C::Generation, Expr::col(C::Generation).add(1))
            .col_expr(C::NextRunAtMs, Expr::value(now))
            .filter(C::Status.eq(WorkflowStatus::Running.as_str()))
            .filter(C::LeaseOwner.is_not_null())
            .filter(C::LeaseExpiresAtMs.lte(now))
            .exec(&self.workflows.ledger.db.conn)
            .await?;
        Ok(done.rows_affected)
    }

    /// Returns (compensated, failed).
    async fn expire_deadlines(&self) -> DomainResult<(u64, u64)> {
        use workflow::Column as C;
        let now = now_ms();
        let waiting = [
            WorkflowStatus::Running,
            WorkflowStatus::AwaitingReview,
            WorkflowStatus::AwaitingPayout,
        ]
        .map(WorkflowStatus::as_str);
        let due: Vec<i64> = workflow::Entity::find()
            .select_only()
            .column(C::Id)
            .filter(C::Status.is_in(waiting))
            .filter(C::DeadlineAtMs.lte(now))
            .filter(store::lease_free(now))
            .order_by_asc(C::DeadlineAtMs)
            .limit(DEADLINE_BATCH)
            .into_tuple()
            .all(&self.workflows.ledger.db.conn)
            .await?;
        let (mut compensated, mut failed) = (0, 0);
        let owner = format!("{}-recovery", self.workflows.instance);
        let lease_ms = i64::try_from(self.workflows.rules.lease.as_millis()).unwrap_or(i64::MAX);
        for id in due {
            let owner = owner.as_str();
            let lease = self
                .workflows
                .ledger
                .tx
                .execute_with_retry("workflow_seize", |txn| async move {
                    store::seize(&txn, id, owner, lease_ms).await
                })
                .await?;
            let Some(lease) = lease else { continue };
            match self.workflows.expire(&lease).await? {
                WorkflowStatus::Compensated => compensated += 1,
                _ => failed += 1,
            }
        }
        Ok((compensated, failed))
    }
}
