//! The one domain error type. The API maps each case to a status and a stable
//! `code` in one place (`api::error`).

use sea_orm::DbErr;

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
    #[error("no price has been set for {0}")]
    NoPrice(String),
    #[error("order {0} is not open")]
    OrderNotOpen(i64),
    /// Another order by the same user on the same symbol is too recent.
    #[error(
        "an order on {symbol} was placed less than the cooldown ago; retry in {retry_after_ms} ms"
    )]
    CooldownActive { symbol: String, retry_after_ms: u64 },
    #[error("sender and recipient are the same account")]
    SameAccount,
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
    /// The database cannot be reached, the pool is exhausted, or a retryable
    /// conflict persisted past the last attempt. The client may retry.
    #[error("the database is unavailable")]
    Unavailable(#[source] DbErr),
    /// A database error not yet classified (the transaction service does).
    #[error("database error")]
    Database(#[from] DbErr),
    #[error("unexpected: {0}")]
    Unexpected(String),
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
                | Self::NoPrice(_)
                | Self::OrderNotOpen(_)
                | Self::SameAccount
                | Self::DuplicateEmail
                | Self::UnknownReferralCode
                | Self::BalanceLimit
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
