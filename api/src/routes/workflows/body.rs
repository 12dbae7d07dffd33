//! Bodies of the Workflows and Recovery routes.

use domain::workflows::model;
use domain::workflows::recovery::RecoveryStatus;
use domain::workflows::{StepView, WorkflowView};
use poem_openapi::{Enum, Object};

use crate::routes::shared::{DecimalString, WalletKind, mirror_enum, timestamp};

/// Send `amount` of the wallet to `destination`: hold → payout → capture.
#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct WithdrawalWorkflowRequest {
    pub user_id: i64,
    pub wallet: WalletKind,
    /// At most the free balance (`balance - margin - held`) when it starts.
    pub amount: DecimalString,
    /// Where the provider pays to (an account, an IBAN, an address).
    #[oai(validator(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*$"
    ))]
    pub destination: String,
}

/// Credit `amount` after the compliance check.
#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct DepositWorkflowRequest {
    pub user_id: i64,
    pub wallet: WalletKind,
    pub amount: DecimalString,
    #[oai(validator(min_length = 1, max_length = 64, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$"))]
    pub payment_method: String,
    #[oai(validator(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*$"
    ))]
    pub reference: String,
}

/// Why, for the record (optional).
#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct DecisionRequest {
    #[oai(validator(max_length = 500, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$"))]
    pub reason: Option<String>,
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum PayoutOutcome {
    Sent,
    Failed,
}

/// The payout's result.
#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct PayoutResultRequest {
    pub outcome: PayoutOutcome,
    /// The provider's reference of the payment.
    #[oai(validator(max_length = 255, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$"))]
    pub provider_ref: Option<String>,
}

mirror_enum! {
    /// `running`, `awaiting_review`, `awaiting_payout`, `completed`,
    /// `compensated`, `rejected` or `failed` (stopped for an admin).
    #[oai(rename_all = "snake_case")]
    pub enum WorkflowStatus = model::WorkflowStatus {
        Running,
        AwaitingReview,
        AwaitingPayout,
        Completed,
        Compensated,
        Rejected,
        Failed,
    }
}

mirror_enum! {
    /// `withdrawal` or `deposit`.
    #[oai(rename_all = "lowercase")]
    pub enum WorkflowType = model::WorkflowKind { Withdrawal, Deposit }
}

mirror_enum! {
    /// A step's: `pending`, `running`, `done`, `compensated` or `failed`.
    #[oai(rename = "WorkflowStepStatus", rename_all = "lowercase")]
    pub enum StepStatus = model::StepStatus { Pending, Running, Done, Compensated, Failed }
}

#[derive(Object, Debug, Clone)]
pub struct WorkflowStep {
    /// `hold`, `payout`, `capture` (withdrawals); `compliance`, `credit`
    /// (deposits).
    pub name: String,
    pub status: StepStatus,
    /// Calls made (outbound steps: the payout); for a step the ledger runs
    /// in its own transaction (hold, capture, credit, the compliance check),
    /// 1 once it has run.
    pub attempts: u32,
    #[oai(nullable)]
    pub started_at: Option<String>,
    #[oai(nullable)]
    pub finished_at: Option<String>,
    /// The last attempt's error.
    #[oai(nullable)]
    pub error: Option<String>,
}

impl From<&StepView> for WorkflowStep {
    fn from(s: &StepView) -> Self {
        Self {
            name: s.name.as_str().to_owned(),
            status: s.status.into(),
            attempts: s.attempts,
            started_at: s.started_at.map(timestamp),
            finished_at: s.finished_at.map(timestamp),
            error: s.error.clone(),
        }
    }
}

#[derive(Object, Debug, Clone)]
pub struct Workflow {
    /// Also the payout's id and its idempotency key at the provider.
    pub id: i64,
    #[oai(rename = "type")]
    pub kind: WorkflowType,
    pub user_id: i64,
    pub status: WorkflowStatus,
    pub steps: Vec<WorkflowStep>,
    /// What it was started with (amounts as decimal strings).
    pub params: serde_json::Value,
    /// Withdrawals: `provider_ref` and `captured`; deposits: `credited`
    /// and `operation_id`.
    #[oai(nullable)]
    pub result: Option<serde_json::Value>,
    #[oai(nullable)]
    pub error: Option<String>,
    /// The funds a withdrawal holds.
    #[oai(nullable)]
    pub hold_id: Option<i64>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&WorkflowView> for Workflow {
    fn from(w: &WorkflowView) -> Self {
        Self {
            id: w.id,
            kind: w.kind.into(),
            user_id: w.user_id,
            status: w.status.into(),
            steps: w.steps.iter().map(WorkflowStep::from).collect(),
            params: w.params.clone(),
            result: w.result.clone(),
            error: w.error.clone(),
            hold_id: w.hold_id,
            created_at: timestamp(w.created_at),
            updated_at: timestamp(w.updated_at),
        }
    }
}

crate::routes::shared::page_body!(WorkflowPage, Workflow, WorkflowView);

/// The recovery manager's counts in this process since it started.
#[derive(Object, Debug, Clone)]
pub struct Recovery {
    /// Null until the first pass.
    #[oai(nullable)]
    pub last_run_at: Option<String>,
    pub runs: u64,
    /// Workflows whose worker's lease lapsed, handed to a live worker.
    pub resumed: u64,
    /// Workflows past their deadline, compensated.
    pub compensated: u64,
    /// Workflows past their deadline stopped `failed` (a payout's outcome
    /// unknown, or a credit owed).
    pub failed: u64,
    pub expired_locks: u64,
    pub expired_holds: u64,
    pub released_idempotency_claims: u64,
}

impl From<&RecoveryStatus> for Recovery {
    fn from(s: &RecoveryStatus) -> Self {
        let t = &s.totals;
        Self {
            last_run_at: s.last_run_at.map(timestamp),
            runs: s.runs,
            resumed: t.resumed,
            compensated: t.compensated,
            failed: t.failed,
            expired_locks: t.expired_locks,
            expired_holds: t.expired_holds,
            released_idempotency_claims: t.released_idempotency_claims,
        }
    }
}
