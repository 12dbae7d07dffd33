//! Workflow rows and their guarded writes. A worker's write is guarded by
//! its [`Lease`] (`WHERE id = … AND generation = … AND lease_owner = …`): if
//! anyone took the workflow over since the worker claimed it, the write
//! changes nothing and the worker's transaction rolls back (`LeaseLost`).

use std::collections::HashMap;

use infra::entities::{workflow, workflow_step};
use sea_orm::sea_query::{Expr, ExprTrait, Func, SimpleExpr};
use sea_orm::sea_query::{LockBehavior, LockType};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, UpdateMany,
};
use serde_json::Value;

use crate::clock::{now, now_ms};
use crate::error::{DomainError, DomainResult};
use crate::ledger::wallets::WalletKind;
use crate::workflows::model::{Phase, StepStatus, WorkflowKind, WorkflowStatus};
use crate::workflows::{WorkflowView, corrupt};

/// A worker's claim on a workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub owner: String,
    pub generation: i64,
    /// How long each renewal lasts, ms.
    pub lease_ms: i64,
    /// Taken over from an owner whose lease lapsed (it crashed or stalled):
    /// a resumption, as recovery counts them.
    pub took_over: bool,
}

pub struct NewWorkflow {
    pub kind: WorkflowKind,
    pub user_id: i64,
    pub wallet: WalletKind,
    pub amount: i64,
    pub status: WorkflowStatus,
    pub params: Value,
    pub deadline_at_ms: i64,
}

/// Inserts a workflow (at step 0, going forward, runnable now, unleased)
/// and its steps, all `pending`.
pub async fn insert(txn: &DatabaseTransaction, new: NewWorkflow) -> DomainResult<workflow::Model> {
    let at = now();
    let row = workflow::Entity::insert(workflow::ActiveModel {
        kind: Set(new.kind.as_str().to_owned()),
        user_id: Set(new.user_id),
        wallet_kind: Set(new.wallet.as_str().to_owned()),
        amount: Set(new.amount),
        status: Set(new.status.as_str().to_owned()),
        params: Set(new.params.to_string()),
        result: Set(None),
        error: Set(None),
        hold_id: Set(None),
        step: Set(0),
        phase: Set(Phase::Forward.as_str().to_owned()),
        next_run_at_ms: Set(at.timestamp_millis()),
        deadline_at_ms: Set(new.deadline_at_ms),
        lease_owner: Set(None),
        lease_expires_at_ms: Set(None),
        generation: Set(0),
        created_at: Set(at),
        updated_at: Set(at),
        ..Default::default()
    })
    .exec_with_returning(txn)
    .await?;
    let rows = new
        .kind
        .steps()
        .iter()
        .enumerate()
        .map(|(i, name)| workflow_step::ActiveModel {
            workflow_id: Set(row.id),
            position: Set(i32::try_from(i).unwrap_or(i32::MAX)),
            name: Set(name.as_str().to_owned()),
            status: Set(StepStatus::Pending.as_str().to_owned()),
            attempts: Set(0),
            started_at: Set(None),
            finished_at: Set(None),
            error: Set(None),
            ..Default::default()
        });
    workflow_step::Entity::insert_many(rows).exec(txn).await?;
    Ok(row)
}

/// A workflow's steps, first first.
pub async fn steps<C: ConnectionTrait>(
    conn: &C,
    id: i64,
) -> DomainResult<Vec<workflow_step::Model>> {
    Ok(workflow_step::Entity::find()
        .filter(workflow_step::Column::WorkflowId.eq(id))
        .order_by_asc(workflow_step::Column::Position)
        .all(conn)
        .await?)
}

/// The steps of several workflows, by workflow.
pub async fn steps_of<C: ConnectionTrait>(
    conn: &C,
    ids: &[i64],
) -> DomainResult<HashMap<i64, Vec<workflow_step::Model>>> {
    let mut by = HashMap::<i64, Vec<workflow_step::Model>>::new();
    if ids.is_empty() {
        return Ok(by);
    }
    let rows = workflow_step::Entity::find()
        .filter(workflow_step::Column::WorkflowId.is_in(ids.iter().copied()))
        .order_by_asc(workflow_step::Column::WorkflowId)
        .order_by_asc(workflow_step::Column::Position)
        .all(conn)
        .await?;
    for row in rows {
        by.entry(row.workflow_id).or_default().push(row);
    }
    Ok(by)
}

pub async fn find<C: ConnectionTrait>(conn: &C, id: i64) -> DomainResult<workflow::Model> {
    workflow::Entity::find_by_id(id)
        .one(conn)
        .await?
        .ok_or(DomainError::NotFound("workflow"))
}

/// The workflow, its row locked for this transaction (on SQLite the
/// transaction already holds the write lock).
pub async fn lock(txn: &DatabaseTransaction, id: i64) -> DomainResult<workflow::Model> {
    let query = workflow::Entity::find_by_id(id);
    let query = match txn.get_database_backend() {
        DbBackend::Sqlite => query,
        _ => query.lock(LockType::Update),
    };
    query
        .one(txn)
        .await?
        .ok_or(DomainError::NotFound("workflow"))
}

pub async fn view<C: ConnectionTrait>(conn: &C, id: i64) -> DomainResult<WorkflowView> {
    let row = find(conn, id).await?;
    WorkflowView::of(&row, &steps(conn, id).await?)
}

/// The row's kind, status and phase.
pub fn states(row: &workflow::Model) -> DomainResult<(WorkflowKind, WorkflowStatus, Phase)> {
    Ok((
        WorkflowKind::parse(&row.kind).ok_or_else(|| corrupt("kind", row.id))?,
        WorkflowStatus::parse(&row.status).ok_or_else(|| corrupt("status", row.id))?,
        Phase::parse(&row.phase).ok_or_else(|| corrupt("phase", row.id))?,
    ))
}

/// What a write changes on a workflow row; `None` leaves a field alone.
/// `error: Some("")` clears the error.
#[derive(Debug, Clone, Default)]
pub struct Patch {
    pub status: Option<WorkflowStatus>,
    pub step: Option<i32>,
    pub phase: Option<Phase>,
    pub next_run_at_ms: Option<i64>,
    pub deadline_at_ms: Option<i64>,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub hold_id: Option<i64>,
    /// Give the workflow up: any worker may claim it when it is runnable.
    pub release: bool,
}

impl Patch {
    fn apply(self, mut update: UpdateMany<workflow::Entity>) -> UpdateMany<workflow::Entity> {
        use workflow::Column as C;
        update = update.col_expr(C::UpdatedAt, Expr::value(now()));
        if let Some(s) = self.status {
            update = update.col_expr(C::Status, Expr::value(s.as_str()));
        }
        if let Some(step) = self.step {
            update = update.col_expr(C::Step, Expr::value(step));
        }
        if let Some(phase) = self.phase {
            update = update.col_expr(C::Phase, Expr::value(phase.as_str()));
        }
        if let Some(at) = self.next_run_at_ms {
            update = update.col_expr(C::NextRunAtMs, Expr::value(at));
        }
        if let Some(at) = self.deadline_at_ms {
            update = update.col_expr(C::DeadlineAtMs, Expr::value(at));
        }
        if let Some(result) = self.result {
            update = update.col_expr(C::Result, Expr::value(result.to_string()));
        }
        if let Some(error) = self.error {
            let error = Some(error).filter(|e| !e.is_empty());
            update = update.col_expr(C::Error, Expr::value(error));
        }
        if let Some(hold_id) = self.hold_id {
            update = update.col_expr(C::HoldId, Expr::value(hold_id));
        }
        if self.release {
            update = update
                .col_expr(C::LeaseOwner, Expr::value(Option::<String>::None))
                .col_expr(C::LeaseExpiresAtMs, Expr::value(Option::<i64>::None));
        }
        update
    }
}

/// A write made in the transaction that created the row.
pub async fn patch_unleased(txn: &DatabaseTransaction, id: i64, patch: Patch) -> DomainResult<()> {
    patch
        .apply(workflow::Entity::update_many())
        .filter(workflow::Column::Id.eq(id))
        .exec(txn)
        .await?;
    Ok(())
}

/// A worker's write: renews the lease (unless the patch releases it) and
/// applies `patch`, only if the worker still owns the workflow.
pub async fn leased(txn: &DatabaseTransaction, lease: &Lease, patch: Patch) -> DomainResult<()> {
    let release = patch.release;
    let mut update = patch.apply(workflow::Entity::update_many());
    if !release {
        update = update.col_expr(
            workflow::Column::LeaseExpiresAtMs,
            Expr::value(now_ms().saturating_add(lease.lease_ms)),
        );
    }
    let guarded = update
        .filter(workflow::Column::Generation.eq(lease.generation))
        .filter(workflow::Column::LeaseOwner.eq(lease.owner.as_str()));
    one_or_lease_lost(txn, guarded, lease.id).await
}

/// Takes the workflow over from whoever holds it (an admin decision, the
/// recovery of a deadline): the generation is bumped and the lease
/// dropped, so the previous owner's later writes change nothing. `row` is
/// the row as read under its lock in this transaction.
pub async fn take_over(
    txn: &DatabaseTransaction,
    row: &workflow::Model,
    patch: Patch,
) -> DomainResult<()> {
    let guarded = Patch {
        release: true,
        ..patch
    }
    .apply(workflow::Entity::update_many())
    .col_expr(
        workflow::Column::Generation,
        Expr::col(workflow::Column::Generation).add(1),
    )
    .filter(workflow::Column::Generation.eq(row.generation));
    one_or_lease_lost(txn, guarded, row.id).await
}

/// Runs a guarded write of workflow `id`: it must change that one row,
/// else the guard found newer state and the write is `LeaseLost`.
async fn one_or_lease_lost(
    txn: &DatabaseTransaction,
    guarded: UpdateMany<workflow::Entity>,
    id: i64,
) -> DomainResult<()> {
    let done = guarded
        .filter(workflow::Column::Id.eq(id))
        .exec(txn)
        .await?;
    if done.rows_affected != 1 {
        return Err(DomainError::LeaseLost(id));
    }
    Ok(())
}

/// Claims the runnable workflow due first, if any: `running`, its time
/// come, its lease free or lapsed. The claim bumps the generation. On
/// PostgreSQL the candidate is picked `FOR UPDATE SKIP LOCKED`, so workers
/// of every instance claim different workflows without waiting on each
/// other.
pub async fn claim(
    txn: &DatabaseTransaction,
    owner: &str,
    lease_ms: i64,
) -> DomainResult<Option<Lease>> {
    use workflow::Column as C;
    let now = now_ms();
    let query = workflow::Entity::find()
        .filter(C::Status.eq(WorkflowStatus::Running.as_str()))
        .filter(C::NextRunAtMs.lte(now))
        .filter(lease_free(now))
        .order_by_asc(C::NextRunAtMs)
        .limit(1);
    let query = match txn.get_database_backend() {
        DbBackend::Sqlite => query,
        _ => query.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked),
    };
    match query.one(txn).await? {
        Some(row) => lease_to(txn, &row, owner, lease_ms).await,
        None => Ok(None),
    }
}

/// Gives `row` (as read in this transaction) to `owner` for `lease_ms`,
/// bumping its generation; `None` if it changed since it was read.
async fn lease_to(
    txn: &DatabaseTransaction,
    row: &workflow::Model,
    owner: &str,
    lease_ms: i64,
) -> DomainResult<Option<Lease>> {
    use workflow::Column as C;
    let generation = row.generation + 1;
    let done = workflow::Entity::update_many()
        .col_expr(C::LeaseOwner, Expr::value(owner))
        .col_expr(
            C::LeaseExpiresAtMs,
            Expr::value(now_ms().saturating_add(lease_ms)),
        )
        .col_expr(C::Generation, Expr::value(generation))
        .filter(C::Id.eq(row.id))
        .filter(C::Generation.eq(row.generation))
        .exec(txn)
        .await?;
    Ok((done.rows_affected == 1).then(|| Lease {
        id: row.id,
        owner: owner.to_owned(),
        generation,
        lease_ms,
        took_over: row.lease_owner.is_some(),
    }))
}

/// No live lease: never leased, released, or lapsed.
pub fn lease_free(now: i64) -> Condition {
    Condition::any()
        .add(workflow::Column::LeaseExpiresAtMs.is_null())
        .add(workflow::Column::LeaseExpiresAtMs.lte(now))
}

/// What a write changes on a step row.
#[derive(Debug, Clone, Default)]
pub struct StepChange {
    status: Option<StepStatus>,
    /// Count one more attempt.
    attempt: bool,
    reset_attempts: bool,
    /// Set `started_at` if it is not set yet.
    start: bool,
    finish: bool,
    unfinish: bool,
    /// `Some(None)` clears the error.
    error: Option<Option<String>>,
}

impl StepChange {
    pub fn started() -> Self {
        Self {
            status: Some(StepStatus::Running),
            start: true,
            ..Self::default()
        }
    }

    /// One more attempt: of an outbound step, before its call; of a check
    /// that ran and now waits (a deposit sent to review).
    pub fn attempt() -> Self {
        Self {
            attempt: true,
            ..Self::started()
        }
    }

    /// A step that ran once, in the transaction that records it, and is
    /// done (a ledger step, a check passed at once).
    pub fn ran() -> Self {
        Self {
            attempt: true,
            ..Self::done()
        }
    }

    pub fn done() -> Self {
        Self {
            status: Some(StepStatus::Done),
            start: true,
            finish: true,
            error: Some(None),
            ..Self::default()
        }
    }

    pub fn failed(reason: &str) -> Self {
        Self {
            status: Some(StepStatus::Failed),
            start: true,
            finish: true,
            error: Some(Some(reason.to_owned())),
            ..Self::default()
        }
    }

    pub fn compensated() -> Self {
        Self {
            status: Some(StepStatus::Compensated),
            finish: true,
            ..Self::default()
        }
    }

    /// The last attempt's error, the step still running.
    pub fn note(error: &str) -> Self {
        Self {
            error: Some(Some(error.to_owned())),
            ..Self::default()
        }
    }

    /// Back to `pending`, attempts counted afresh (admin retry).
    pub fn retry() -> Self {
        Self {
            status: Some(StepStatus::Pending),
            reset_attempts: true,
            unfinish: true,
            error: Some(None),
            ..Self::default()
        }
    }
}

/// Changes step `position` of workflow `id`. Returns its attempts after the
/// change.
pub async fn change_step(
    txn: &DatabaseTransaction,
    id: i64,
    position: i32,
    change: StepChange,
) -> DomainResult<i32> {
    use workflow_step::Column as C;
    let at = now();
    let mut update = workflow_step::Entity::update_many();
    if let Some(status) = change.status {
        update = update.col_expr(C::Status, Expr::value(status.as_str()));
    }
    if change.attempt {
        update = update.col_expr(C::Attempts, Expr::col(C::Attempts).add(1));
    }
    if change.reset_attempts {
        update = update.col_expr(C::Attempts, Expr::value(0));
    }
    if change.start {
        let started: SimpleExpr = Func::coalesce([Expr::col(C::StartedAt), Expr::value(at)]).into();
        update = update.col_expr(C::StartedAt, started);
    }
    if change.finish {
        update = update.col_expr(C::FinishedAt, Expr::value(at));
    }
    if change.unfinish {
        update = update.col_expr(
            C::FinishedAt,
            Expr::value(Option::<chrono::DateTime<chrono::Utc>>::None),
        );
    }
    if let Some(error) = change.error {
        update = update.col_expr(C::Error, Expr::value(error));
    }
    let rows = update
        .filter(C::WorkflowId.eq(id))
        .filter(C::Position.eq(position))
        .exec_with_returning(txn)
        .await?;
    rows.first()
        .map(|s| s.attempts)
        .ok_or_else(|| corrupt("step position", id))
}

/// Seizes a workflow whose lease is free, for `owner` (the recovery
/// manager acting on a deadline): like a claim, whatever its status.
pub async fn seize(
    txn: &DatabaseTransaction,
    id: i64,
    owner: &str,
    lease_ms: i64,
) -> DomainResult<Option<Lease>> {
    let row = lock(txn, id).await?;
    if row.lease_expires_at_ms.is_some_and(|at| at > now_ms()) {
        return Ok(None);
    }
    lease_to(txn, &row, owner, lease_ms).await
}
