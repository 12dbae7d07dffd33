//! The one domain error type. The API maps each case to a status and a stable
//! `code` in one place (`api::error`). A database error is classified once,
//! here, where it becomes a `DomainError` (`From<DbErr>`): the transaction
//! loop, the idempotency service and the API only match on the result.

use sea_orm::DbErr;

use crate::db_error::{DbErrorKind, classify};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Amounts in minor units; the API renders them as decimals.
    #[error("free balance {available} < requested {requested} (minor units)")]
    InsufficientFunds { available: i64, requested: i64 },
    #[error("free margin {available} < required {required} (margin plus open fee)")]
    InsufficientMargin { available: String, required: String },
    /// Too small to carry a margin and a fee: it could only win.
    #[error(
        "order value (quantity × price) {notional} is too small: the minimum is {minimum}, and its margin and fee must not round to zero"
    )]
    NotionalTooSmall { notional: String, minimum: String },
    #[error("no price has been set for {0}")]
    NoPrice(String),
    #[error("order {0} is not open")]
    OrderNotOpen(i64),
    /// The hold already ended (`status`: captured, voided or expired).
    #[error("hold {hold_id} is not active: it is {status}")]
    HoldNotActive { hold_id: i64, status: &'static str },
    /// A capture may take at most what the hold reserves. Minor units.
    #[error("capture amount {requested} exceeds the held amount {held} (minor units)")]
    CaptureExceedsHold { requested: i64, held: i64 },
    /// Another order by the same user on the same symbol is too recent.
    #[error(
        "an order on {symbol} was placed less than the cooldown ago; retry in {retry_after_ms} ms"
    )]
    CooldownActive { symbol: String, retry_after_ms: u64 },
    #[error("sender and recipient are the same account")]
    SameAccount,
    /// Some of the requested resources are held, or wanted by waiters
    /// ahead of this request.
    #[error("resources locked: {}", conflicts.join(", "))]
    ResourceLocked { conflicts: Vec<String> },
    /// The lock is no longer active, has expired, is another owner's, or
    /// holds another fencing token: whatever it protected must not happen.
    #[error("lock lost: {0}")]
    LockLost(String),
    /// The queue of a resource is full; retry after about `retry_after_ms`.
    #[error("the lock queue of {resource} is full")]
    QueueFull {
        resource: String,
        retry_after_ms: u64,
    },
    /// The workflow is not waiting for this action (`status`: what it is).
    #[error("workflow {workflow_id} is {status}: it cannot {action} now")]
    WorkflowState {
        workflow_id: i64,
        status: &'static str,
        action: &'static str,
    },
    /// A workflow's hold ends by the workflow, not by the holds routes.
    #[error("hold {hold_id} belongs to workflow {workflow_id}, which decides its ending")]
    HoldInWorkflow { hold_id: i64, workflow_id: i64 },
    /// A worker's claim on a workflow was taken over: its write is void.
    /// Never sent to a client.
    #[error("the lease on workflow {0} was lost")]
    LeaseLost(i64),
    #[error("a user with this email already exists")]
    DuplicateEmail,
    #[error("no user has this referral code")]
    UnknownReferralCode,
    #[error("the resulting balance would exceed the largest representable amount")]
    BalanceLimit,
    #[error("this Idempotency-Key was used with a different request body")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still being processed")]
    IdempotencyInFlight,
    /// Our own idempotency claim was taken over, or completed by an earlier
    /// attempt whose COMMIT landed: the transaction rolls back and the stored
    /// answer is read. Never sent to a client as such.
    #[error("the idempotency claim was lost")]
    ClaimLost,
    /// A trade on a signal could not run inside a group (its lock was busy
    /// or deduplicated, or the group took the savepoint path): it takes the
    /// steps one by one instead. Never sent to a client as such.
    #[error("the trade could not run in its group")]
    NotInGroup,
    /// A conflict that re-running the whole transaction may resolve
    /// (deadlock, serialization failure, lock timeout, SQLite busy).
    #[error("transient database conflict ({cause})")]
    Conflict {
        cause: &'static str,
        #[source]
        source: DbErr,
    },
    /// The connection broke mid-transaction: the outcome of a COMMIT in
    /// flight is unknown, so only an idempotency-guarded write re-runs.
    #[error("the database connection was lost")]
    ConnectionLost(#[source] DbErr),
    /// The database cannot be reached, or a transient failure persisted past
    /// the last attempt. The client may retry.
    #[error("the database is unavailable")]
    Unavailable(#[source] DbErr),
    /// No database connection within the wait budget: the request is shed
    /// at once instead of queueing. The client may retry.
    #[error("no database connection within the wait budget")]
    Overloaded,
    /// A database error that is not transient and not a known constraint:
    /// a bug, answered 500 without its text.
    #[error("database error")]
    Database(#[source] DbErr),
    #[error("unexpected: {0}")]
    Unexpected(#[source] BoxError),
}

impl From<DbErr> for DomainError {
    fn from(e: DbErr) -> Self {
        match classify(&e) {
            DbErrorKind::Retryable(cause) => Self::Conflict { cause, source: e },
            DbErrorKind::ConnectionLost => Self::ConnectionLost(e),
            DbErrorKind::Unavailable => Self::Unavailable(e),
            DbErrorKind::PoolTimeout => Self::Overloaded,
            DbErrorKind::UniqueViolation(_)
            | DbErrorKind::CheckViolation(_)
            | DbErrorKind::Other => Self::Database(e),
        }
    }
}

impl DomainError {
    /// A business refusal: the request was understood and refused, nothing
    /// changed, and the refusal is the final answer for its idempotency key.
    /// A cooldown is not one: it passes, so the same key may be retried.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::NotFound(_)
                | Self::InsufficientFunds { .. }
                | Self::InsufficientMargin { .. }
                | Self::NotionalTooSmall { .. }
                | Self::NoPrice(_)
                | Self::OrderNotOpen(_)
                | Self::HoldNotActive { .. }
                | Self::CaptureExceedsHold { .. }
                | Self::WorkflowState { .. }
                | Self::HoldInWorkflow { .. }
                | Self::SameAccount
                | Self::DuplicateEmail
                | Self::UnknownReferralCode
                | Self::BalanceLimit
        )
    }

    /// The failure of a whole batch (a group commit's or a batch of reads),
    /// for each of its requests. Only transient failures (and bugs) end a
    /// batch; each request gets the same kind.
    pub fn shared(e: &DomainError) -> DomainError {
        match e {
            DomainError::Overloaded => DomainError::Overloaded,
            DomainError::Unavailable(source) => {
                DomainError::Unavailable(DbErr::Custom(source.to_string()))
            }
            other => DomainError::unexpected(other.to_string()),
        }
    }

    /// A broken expectation of the code itself, with its cause.
    pub fn unexpected(cause: impl Into<BoxError>) -> Self {
        Self::Unexpected(cause.into())
    }

    /// The client may retry the same request later (503 with Retry-After):
    /// nothing was stored under its idempotency key.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Conflict { .. }
                | Self::ConnectionLost(_)
                | Self::Unavailable(_)
                | Self::Overloaded
        )
    }

    pub fn invalid(field: &'static str, reason: impl ToString) -> Self {
        Self::Invalid {
            field,
            reason: reason.to_string(),
        }
    }
}

pub type DomainResult<T> = Result<T, DomainError>;
