//! Workflows: multi-step operations that survive crashes and compensate.
//!
//! Where is X?
//! - kinds, steps, statuses and their moves, the retry backoff: `model.rs`;
//! - the circuit breakers of outside providers: `breaker.rs`;
//! - rows, leases and guarded writes: `store.rs`;
//! - starting workflows and the admin actions (approve, reject, payout
//!   result, retry): this file;
//! - the workers that run steps and compensations: `engine.rs`;
//! - the recovery manager: `recovery.rs`.
//!
//! A workflow is a `workflows` row plus one `workflow_steps` row per step.
//! A step that moves money commits its checkpoint in the same transaction
//! as its money rows (exactly once); the payout is at least once, made safe
//! by the provider's idempotency key (the workflow id). A worker owns a
//! workflow through a lease whose every write is guarded by the generation
//! it claimed; a takeover (recovery, an admin action, another instance's
//! worker after the lease lapsed) bumps the generation, so a stale worker's
//! late write changes nothing.

pub mod breaker;
pub mod engine;
pub mod model;
pub mod recovery;
pub mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use infra::config::WorkflowConfig;
use infra::entities::{workflow, workflow_step};
use infra::metrics::metrics;
use infra::payout::PayoutClient;
use sea_orm::{ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::clock::now_ms;
use crate::error::{DomainError, DomainResult};
use crate::ledger::holds::{CreateHold, HoldTtl, MAX_TTL_MS};
use crate::ledger::users::require_user;
use crate::ledger::wallets::WalletKind;
use crate::money::{Amount, format_units, to_units};
use crate::page::{Page, newest_first};
use crate::workflows::breaker::Breakers;
use crate::workflows::model::{Phase, StepName, StepStatus, WorkflowKind, WorkflowStatus};
use crate::workflows::store::{NewWorkflow, Patch, StepChange};
use crate::{Command, Ledger};

/// The rules the workflows run by, from the configuration.
#[derive(Debug, Clone)]
pub struct WorkflowRules {
    pub workers: usize,
    pub lease: Duration,
    pub poll: Duration,
    pub deadline: Duration,
    pub payout_currency: String,
    pub payout_max_attempts: u32,
    pub payout_retry_initial: Duration,
    pub payout_retry_max: Duration,
    /// Deposits of at least this (minor units) wait for a review.
    pub review_threshold: i64,
    pub recovery_interval: Duration,
}

impl WorkflowRules {
    pub fn from_config(config: &WorkflowConfig) -> DomainResult<Self> {
        if config.deadline >= Duration::from_millis(MAX_TTL_MS) {
            // A withdrawal's hold must outlive its workflow.
            return Err(DomainError::invalid(
                "workflow_deadline_ms",
                "must be shorter than a hold's longest life (7 days)",
            ));
        }
        Ok(Self {
            workers: config.workers,
            lease: config.lease,
            poll: config.poll,
            deadline: config.deadline,
            payout_currency: config.payout_currency.clone(),
            payout_max_attempts: config.payout_max_attempts,
            payout_retry_initial: config.payout_retry_initial,
            payout_retry_max: config.payout_retry_max,
            review_threshold: to_units(config.review_threshold)
                .map_err(|e| DomainError::invalid("review_threshold", e))?,
            recovery_interval: config.recovery_interval,
        })
    }

    fn deadline_from(&self, at_ms: i64) -> i64 {
        at_ms.saturating_add(i64::try_from(self.deadline.as_millis()).unwrap_or(i64::MAX))
    }

    /// The deadline of a workflow (re)started now, epoch ms.
    pub fn deadline_from_now(&self) -> i64 {
        self.deadline_from(now_ms())
    }
}

/// Runs workflows: starts them, lets the admin act on them, and (in
/// `engine`) works them through their steps.
#[derive(Clone, Debug)]
pub struct WorkflowService {
    pub ledger: Ledger,
    pub rules: Arc<WorkflowRules>,
    pub payout: Option<PayoutClient>,
    pub breakers: Breakers,
    /// Wakes this process's idle workers when it made work for them.
    wake: Arc<Notify>,
    /// This process, in lease owners: `<pid>-<random>`.
    instance: String,
    /// Workflows this process's workers took over from a lapsed lease (an
    /// owner that crashed or stalled): resumed, as recovery reports them.
    taken_over: Arc<AtomicU64>,
}

impl WorkflowService {
    pub fn new(ledger: Ledger, config: &WorkflowConfig) -> DomainResult<Self> {
        let payout = match &config.payout_url {
            Some(url) => Some(
                PayoutClient::new(url, config.payout_timeout)
                    .map_err(|e| DomainError::invalid("payout_url", e))?,
            ),
            None => None,
        };
        Ok(Self {
            ledger,
            rules: Arc::new(WorkflowRules::from_config(config)?),
            payout,
            breakers: Breakers::new(config.breaker_failures, config.breaker_open),
            wake: Arc::new(Notify::new()),
            instance: format!("{}-{:08x}", std::process::id(), rand::random::<u32>()),
            taken_over: Arc::default(),
        })
    }

    /// Tells idle workers there is work.
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }

    /// Counts a workflow a worker took over from a lapsed lease.
    fn took_over(&self) {
        self.taken_over.fetch_add(1, Ordering::Relaxed);
        metrics()
            .workflows
            .recovery
            .with_label_values(&["resumed"])
            .inc();
    }

    /// How many workflows this process's workers took over.
    pub fn taken_over(&self) -> u64 {
        self.taken_over.load(Ordering::Relaxed)
    }
}

/// A workflow as the outside sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowView {
    pub id: i64,
    pub kind: WorkflowKind,
    pub user_id: i64,
    pub status: WorkflowStatus,
    pub steps: Vec<StepView>,
    pub params: Value,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub hold_id: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepView {
    pub name: StepName,
    pub status: StepStatus,
    pub attempts: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

fn corrupt(what: &str, id: i64) -> DomainError {
    DomainError::unexpected(format!("workflow {id}: unreadable {what}"))
}

fn parse_json(text: &str, what: &str, id: i64) -> DomainResult<Value> {
    serde_json::from_str(text).map_err(|_| corrupt(what, id))
}

impl WorkflowView {
    pub fn of(row: &workflow::Model, steps: &[workflow_step::Model]) -> DomainResult<Self> {
        let id = row.id;
        let steps = steps
            .iter()
            .map(|s| {
                Ok(StepView {
                    name: StepName::parse(&s.name).ok_or_else(|| corrupt("step name", id))?,
                    status: StepStatus::parse(&s.status)
                        .ok_or_else(|| corrupt("step status", id))?,
                    attempts: u32::try_from(s.attempts).unwrap_or(0),
                    started_at: s.started_at,
                    finished_at: s.finished_at,
                    error: s.error.clone(),
                })
            })
            .collect::<DomainResult<_>>()?;
        Ok(Self {
            id,
            kind: WorkflowKind::parse(&row.kind).ok_or_else(|| corrupt("kind", id))?,
            user_id: row.user_id,
            status: WorkflowStatus::parse(&row.status).ok_or_else(|| corrupt("status", id))?,
            steps,
            params: parse_json(&row.params, "params", id)?,
            result: row
                .result
                .as_deref()
                .map(|r| parse_json(r, "result", id))
                .transpose()?,
            error: row.error.clone(),
            hold_id: row.hold_id,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// A withdrawal workflow: the hold is placed in the starting transaction
/// (so a withdrawal the free balance cannot cover is refused at once, 422
/// `insufficient_funds`, and nothing is created); the workers send the
/// payout and capture the hold, or void it if the payout fails for good.
#[derive(Debug, Clone)]
pub struct StartWithdrawal {
    pub user_id: i64,
    pub wallet: WalletKind,
    pub amount: Amount,
    pub destination: String,
    /// When it must be finished, epoch ms (from the rules' deadline).
    pub deadline_at_ms: i64,
}

/// A deposit workflow: below the review threshold it goes straight on to
/// the credit; at or above it waits in `awaiting_review`.
#[derive(Debug, Clone)]
pub struct StartDeposit {
    pub user_id: i64,
    pub wallet: WalletKind,
    pub amount: Amount,
    pub payment_method: String,
    pub reference: String,
    pub review_threshold: i64,
    pub deadline_at_ms: i64,
}

impl WorkflowRules {
    pub fn withdrawal(
        &self,
        user_id: i64,
        wallet: WalletKind,
        amount: Amount,
        destination: String,
    ) -> StartWithdrawal {
        StartWithdrawal {
            user_id,
            wallet,
            amount,
            destination,
            deadline_at_ms: self.deadline_from(now_ms()),
        }
    }

    pub fn deposit(
        &self,
        user_id: i64,
        wallet: WalletKind,
        amount: Amount,
        payment_method: String,
        reference: String,
    ) -> StartDeposit {
        StartDeposit {
            user_id,
            wallet,
            amount,
            payment_method,
            reference,
            review_threshold: self.review_threshold,
            deadline_at_ms: self.deadline_from(now_ms()),
        }
    }
}

/// The hold withdrawal `workflow_id` places: its amount, for as long as a
/// hold may live (the deadline is shorter, see `WorkflowRules::from_config`),
/// referenced `workflow:<id>`.
pub fn withdrawal_hold(
    workflow_id: i64,
    user_id: i64,
    wallet: WalletKind,
    amount: Amount,
) -> DomainResult<CreateHold> {
    Ok(CreateHold {
        user_id,
        wallet,
        amount,
        ttl: HoldTtl::from_millis(MAX_TTL_MS)?,
        reference: Some(format!("workflow:{workflow_id}")),
    })
}

impl Command for StartWithdrawal {
    type Output = WorkflowView;
    const NAME: &'static str = "start_withdrawal_workflow";

    async fn execute(
        &self,
        ledger: &Ledger,
        txn: &DatabaseTransaction,
    ) -> DomainResult<WorkflowView> {
        require_user(txn, self.user_id).await?;
        let params = json!({
            "wallet": self.wallet.as_str(),
            "amount": format_units(self.amount.units()),
            "destination": self.destination,
        });
        let row = store::insert(
            txn,
            NewWorkflow {
                kind: WorkflowKind::Withdrawal,
                user_id: self.user_id,
                wallet: self.wallet,
                amount: self.amount.units(),
                status: WorkflowStatus::Running,
                params,
                deadline_at_ms: self.deadline_at_ms,
            },
        )
        .await?;
        // Step 0: reserve the funds.
        let hold = withdrawal_hold(row.id, self.user_id, self.wallet, self.amount)?
            .execute(ledger, txn)
            .await?;
        first_step_done(
            txn,
            row.id,
            Patch {
                hold_id: Some(hold.id),
                ..Patch::default()
            },
        )
        .await?;
        store::view(txn, row.id).await
    }
}

impl Command for StartDeposit {
    type Output = WorkflowView;
    const NAME: &'static str = "start_deposit_workflow";

    async fn execute(&self, _: &Ledger, txn: &DatabaseTransaction) -> DomainResult<WorkflowView> {
        require_user(txn, self.user_id).await?;
        let review = self.amount.units() >= self.review_threshold;
        let params = json!({
            "wallet": self.wallet.as_str(),
            "amount": format_units(self.amount.units()),
            "payment_method": self.payment_method,
            "reference": self.reference,
        });
        let row = store::insert(
            txn,
            NewWorkflow {
                kind: WorkflowKind::Deposit,
                user_id: self.user_id,
                wallet: self.wallet,
                amount: self.amount.units(),
                status: if review {
                    WorkflowStatus::AwaitingReview
                } else {
                    WorkflowStatus::Running
                },
                params,
                deadline_at_ms: self.deadline_at_ms,
            },
        )
        .await?;
        // Step 0, the compliance check: passed at once below the threshold,
        // else waiting for a reviewer.
        if review {
            store::change_step(txn, row.id, 0, StepChange::attempt()).await?;
        } else {
            first_step_done(txn, row.id, Patch::default()).await?;
        }
        store::view(txn, row.id).await
    }
}

/// Step 0 of a workflow just created, done: the workflow goes on to step
/// 1, with the rest of `patch`.
async fn first_step_done(txn: &DatabaseTransaction, id: i64, patch: Patch) -> DomainResult<()> {
    store::change_step(txn, id, 0, StepChange::ran()).await?;
    store::patch_unleased(
        txn,
        id,
        Patch {
            step: Some(1),
            ..patch
        },
    )
    .await
}

/// What an admin (or the payout provider's late answer) decides.
#[derive(Debug, Clone)]
pub enum Decision {
    /// A deposit in review goes on to its credit.
    Approve,
    /// A deposit in review ends `rejected`.
    Reject { reason: Option<String> },
    /// The payout's result: `sent` goes on to the capture, `failed` voids
    /// the hold.
    Payout {
        sent: bool,
        provider_ref: Option<String>,
    },
    /// A `failed` workflow resumes from its last checkpoint.
    Retry,
}

impl Decision {
    fn name(&self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Reject { .. } => "reject",
            Self::Payout { .. } => "payout",
            Self::Retry => "retry",
        }
    }
}

/// Applies a decision to workflow `id`: taking the workflow over from any
/// worker (the generation is bumped, so an in-flight call's late answer
/// changes nothing), then moving it on. 409 `workflow_state` when the
/// workflow is not waiting for this decision.
#[derive(Debug, Clone)]
pub struct Decide {
    pub workflow_id: i64,
    pub decision: Decision,
    /// Deadline of a retried workflow, counted afresh.
    pub deadline_at_ms: i64,
}

fn not_waiting(row: &workflow::Model, decision: &Decision) -> DomainError {
    DomainError::WorkflowState {
        workflow_id: row.id,
        status: WorkflowStatus::parse(&row.status)
            .map(WorkflowStatus::as_str)
            .unwrap_or("unknown"),
        action: decision.name(),
    }
}

impl Command for Decide {
    type Output = WorkflowView;
    const NAME: &'static str = "decide_workflow";

    async fn execute(&self, _: &Ledger, txn: &DatabaseTransaction) -> DomainResult<WorkflowView> {
        let id = self.workflow_id;
        let row = store::lock(txn, id).await?;
        let steps = store::steps(txn, id).await?;
        let (kind, status, phase) = store::states(&row)?;
        let at = usize::try_from(row.step).unwrap_or(usize::MAX);
        let current = kind.steps().get(at).copied();
        let refuse = || Err(not_waiting(&row, &self.decision));
        let go_on = Patch {
            status: Some(WorkflowStatus::Running),
            next_run_at_ms: Some(now_ms()),
            ..Patch::default()
        };
        let position = i32::try_from(at).unwrap_or(i32::MAX);
        match &self.decision {
            Decision::Approve | Decision::Reject { .. }
                if status != WorkflowStatus::AwaitingReview =>
            {
                return refuse();
            }
            Decision::Approve => {
                store::change_step(txn, id, position, StepChange::done()).await?;
                store::take_over(
                    txn,
                    &row,
                    Patch {
                        step: Some(row.step + 1),
                        ..go_on
                    },
                )
                .await?;
            }
            Decision::Reject { reason } => {
                let reason = reason
                    .clone()
                    .unwrap_or_else(|| "rejected in review".into());
                store::change_step(txn, id, position, StepChange::failed(&reason)).await?;
                store::take_over(
                    txn,
                    &row,
                    Patch {
                        status: Some(WorkflowStatus::Rejected),
                        error: Some(reason),
                        ..Patch::default()
                    },
                )
                .await?;
                metrics()
                    .workflows
                    .finished
                    .with_label_values(&[kind.as_str(), "rejected"])
                    .inc();
            }
            Decision::Payout { sent, provider_ref } => {
                // The payout's result, while it is still open: waited for
                // (manual payouts), being retried, or given up as unknown.
                let open = current == Some(StepName::Payout)
                    && phase == Phase::Forward
                    && matches!(
                        status,
                        WorkflowStatus::AwaitingPayout
                            | WorkflowStatus::Running
                            | WorkflowStatus::Failed
                    );
                if !open {
                    return refuse();
                }
                if *sent {
                    store::change_step(txn, id, position, StepChange::done()).await?;
                    let result = json!({ "provider_ref": provider_ref });
                    store::take_over(
                        txn,
                        &row,
                        Patch {
                            step: Some(row.step + 1),
                            result: Some(result),
                            error: Some(String::new()),
                            ..go_on
                        },
                    )
                    .await?;
                } else {
                    let reason = "the payout failed".to_owned();
                    store::change_step(txn, id, position, StepChange::failed(&reason)).await?;
                    store::take_over(
                        txn,
                        &row,
                        Patch {
                            phase: Some(Phase::Compensate),
                            error: Some(reason),
                            ..go_on
                        },
                    )
                    .await?;
                }
            }
            Decision::Retry => {
                if status != WorkflowStatus::Failed {
                    return refuse();
                }
                // The step that stopped it runs again from its start.
                if let Some(step) = steps.iter().find(|s| s.position == row.step)
                    && step.status != StepStatus::Done.as_str()
                {
                    store::change_step(txn, id, row.step, StepChange::retry()).await?;
                }
                let review = current == Some(StepName::Compliance) && phase == Phase::Forward;
                store::take_over(
                    txn,
                    &row,
                    Patch {
                        status: Some(if review {
                            WorkflowStatus::AwaitingReview
                        } else {
                            WorkflowStatus::Running
                        }),
                        deadline_at_ms: Some(self.deadline_at_ms),
                        error: Some(String::new()),
                        ..go_on
                    },
                )
                .await?;
            }
        }
        store::view(txn, id).await
    }
}

/// Which workflows a list shows.
#[derive(Debug, Clone, Default)]
pub struct WorkflowFilter {
    pub status: Option<WorkflowStatus>,
    pub kind: Option<WorkflowKind>,
    pub user_id: Option<i64>,
}

impl Ledger {
    /// One workflow with its steps; `NotFound` when there is none.
    pub async fn workflow(&self, id: i64) -> DomainResult<WorkflowView> {
        store::view(&self.db.conn, id).await
    }

    /// Workflows, newest first.
    pub async fn workflows(
        &self,
        filter: &WorkflowFilter,
        limit: u64,
        before_id: Option<i64>,
    ) -> DomainResult<Page<WorkflowView>> {
        let conn = &self.db.conn;
        let mut query = workflow::Entity::find();
        if let Some(status) = filter.status {
            query = query.filter(workflow::Column::Status.eq(status.as_str()));
        }
        if let Some(kind) = filter.kind {
            query = query.filter(workflow::Column::Kind.eq(kind.as_str()));
        }
        if let Some(user_id) = filter.user_id {
            query = query.filter(workflow::Column::UserId.eq(user_id));
        }
        let page = newest_first(conn, query, workflow::Column::Id, limit, before_id, |w| {
            w.id
        })
        .await?;
        let ids: Vec<i64> = page.items.iter().map(|w| w.id).collect();
        let mut steps = store::steps_of(conn, &ids).await?;
        let items = page
            .items
            .iter()
            .map(|w| WorkflowView::of(w, &steps.remove(&w.id).unwrap_or_default()))
            .collect::<DomainResult<_>>()?;
        Ok(Page {
            items,
            next_before_id: page.next_before_id,
        })
    }
}

/// When a workflow's hold may not be captured or voided through the holds
/// routes: the workflow decides its ending.
pub async fn hold_owner(txn: &DatabaseTransaction, hold_id: i64) -> DomainResult<Option<i64>> {
    Ok(workflow::Entity::find()
        .filter(workflow::Column::HoldId.eq(hold_id))
        .one(txn)
        .await?
        .map(|w| w.id))
}
