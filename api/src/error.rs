//! Every error leaves as `application/problem+json` (RFC 9457) with a stable
//! `code`. Domain errors are mapped to statuses in one place, `From<DomainError>`.
//! 5xx bodies are opaque; their cause goes to the log with the request id.

use std::fmt;

use domain::DomainError;
use domain::idempotency::StoredResponse;
use poem::http::{HeaderValue, StatusCode, header};
use poem::{IntoResponse, Response};
use poem_openapi::ApiResponse;
use poem_openapi::registry::{MetaHeader, MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::{ToJSON, Type};

use infra::metrics::metrics;

use crate::middleware::current_request_id;
use crate::types::Problem;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
    /// Seconds, sent as `Retry-After`.
    pub retry_after: Option<u64>,
    /// The busy resources of a `resource_locked` refusal, sent as the
    /// problem's `conflicts` member.
    pub conflicts: Option<Vec<String>>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.detail)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            title,
            detail: detail.into(),
            retry_after: None,
            conflicts: None,
        }
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Invalid request",
            detail,
        )
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail,
        )
    }

    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            "this principal may not perform this action",
        )
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "Not found",
            format!("{what} not found"),
        )
    }

    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            "the service is temporarily unavailable; retry later",
        )
        .retry_after(1)
    }

    /// Shed at once: no database connection within the wait budget.
    pub fn overloaded() -> Self {
        metrics().shed.with_label_values(&["overloaded"]).inc();
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "Overloaded",
            "the server is at capacity; retry later with the same Idempotency-Key",
        )
        .retry_after(1)
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "an unexpected error occurred; quote the request id when reporting it",
        )
    }

    pub fn problem(&self) -> Problem {
        Problem {
            ty: "about:blank".into(),
            title: self.title.into(),
            status: self.status.as_u16(),
            code: self.code.into(),
            detail: self.detail.clone(),
            request_id: current_request_id(),
        }
    }

    pub fn body(&self) -> String {
        let Some(conflicts) = &self.conflicts else {
            return self.problem().to_json_string();
        };
        let mut body = self.problem().to_json().unwrap_or_default();
        if let Some(members) = body.as_object_mut() {
            members.insert("conflicts".into(), serde_json::json!(conflicts));
        }
        body.to_string()
    }

    /// The form in which a refusal is stored under its idempotency key.
    pub fn to_stored(&self) -> StoredResponse {
        StoredResponse {
            status: self.status.as_u16(),
            body: self.body(),
        }
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        Self::from(&e)
    }
}

impl From<&DomainError> for ApiError {
    fn from(e: &DomainError) -> Self {
        use StatusCode as S;
        let unprocessable =
            |code, title| Self::new(S::UNPROCESSABLE_ENTITY, code, title, e.to_string());
        match e {
            DomainError::Invalid { .. } => Self::invalid(e.to_string()),
            DomainError::NotFound(what) => Self::not_found(what),
            DomainError::InsufficientFunds { .. } => {
                unprocessable("insufficient_funds", "Insufficient funds")
            }
            DomainError::SameAccount => unprocessable("same_account", "Same account"),
            DomainError::InsufficientMargin { .. } => {
                unprocessable("insufficient_margin", "Insufficient margin")
            }
            DomainError::NoPrice(_) => unprocessable("no_price", "No price"),
            DomainError::OrderNotOpen(_) => Self::new(
                S::CONFLICT,
                "order_not_open",
                "Order not open",
                e.to_string(),
            ),
            DomainError::CooldownActive { retry_after_ms, .. } => Self::new(
                S::TOO_MANY_REQUESTS,
                "cooldown_active",
                "Trade cooldown active",
                e.to_string(),
            )
            .retry_after(retry_after_ms.div_ceil(1000).max(1)),
            DomainError::UnknownReferralCode => {
                unprocessable("unknown_referral_code", "Unknown referral code")
            }
            DomainError::BalanceLimit => {
                unprocessable("balance_limit_exceeded", "Balance limit exceeded")
            }
            DomainError::IdempotencyKeyReused => {
                unprocessable("idempotency_key_reused", "Idempotency key reused")
            }
            DomainError::ResourceLocked { conflicts } => Self {
                conflicts: Some(conflicts.clone()),
                ..Self::new(
                    S::CONFLICT,
                    "resource_locked",
                    "Resource locked",
                    e.to_string(),
                )
            },
            DomainError::LockLost(_) => {
                Self::new(S::CONFLICT, "lock_lost", "Lock lost", e.to_string())
            }
            DomainError::QueueFull { retry_after_ms, .. } => Self::new(
                S::TOO_MANY_REQUESTS,
                "queue_full",
                "Lock queue full",
                e.to_string(),
            )
            .retry_after(retry_after_ms.div_ceil(1000).max(1)),
            DomainError::DuplicateEmail => {
                Self::new(S::CONFLICT, "conflict", "Conflict", e.to_string())
            }
            DomainError::IdempotencyInFlight => Self::new(
                S::CONFLICT,
                "idempotency_in_flight",
                "Request in progress",
                e.to_string(),
            )
            .retry_after(1),
            DomainError::Overloaded => Self::overloaded(),
            DomainError::Unavailable(_)
            | DomainError::Conflict { .. }
            | DomainError::ConnectionLost(_) => {
                tracing::error!(request_id = %current_request_id(), error = %error_chain(e), "database unavailable");
                Self::unavailable()
            }
            DomainError::Database(_) | DomainError::Unexpected(_) | DomainError::ClaimLost => {
                tracing::error!(request_id = %current_request_id(), error = %error_chain(e), "unexpected error");
                Self::internal()
            }
        }
    }
}

/// An error and its causes, for the log line (never for a response body).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl poem::error::ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn as_response(&self) -> Response {
        let mut resp = Response::builder()
            .status(self.status)
            .content_type(PROBLEM_JSON)
            .body(self.body());
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        poem::error::ResponseError::as_response(&self)
    }
}

const DOCUMENTED: &[(u16, &str)] = &[
    (
        400,
        "Malformed JSON, schema/format/range violation, or missing Idempotency-Key (`invalid_request`, `idempotency_key_missing`)",
    ),
    (
        401,
        "Missing, invalid or expired bearer token (`unauthorized`)",
    ),
    (
        403,
        "The token's role or subject may not do this (`forbidden`)",
    ),
    (
        404,
        "Unknown user, wallet, order, symbol or route (`not_found`)",
    ),
    (
        409,
        "Duplicate email (`conflict`); same Idempotency-Key still in flight (`idempotency_in_flight`, with Retry-After); order already closed (`order_not_open`)",
    ),
    (
        413,
        "Request body larger than the configured limit (`payload_too_large`)",
    ),
    (
        422,
        "A business rule refuses the request (`insufficient_funds`, `insufficient_margin`, `no_price`, `same_account`, `unknown_referral_code`, `balance_limit_exceeded`), or the Idempotency-Key was used with a different body (`idempotency_key_reused`)",
    ),
    (
        429,
        "Rate limit for this principal (`rate_limited`), or trade cooldown for this user and symbol (`cooldown_active`); both with Retry-After and neither stored under the Idempotency-Key",
    ),
    (500, "A bug; the body never carries internals (`internal`)"),
    (
        503,
        "Database unreachable or draining (`unavailable`), or no database connection within the wait budget (`overloaded`); both with Retry-After",
    ),
];

impl ApiResponse for ApiError {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: DOCUMENTED
                .iter()
                .map(|(status, description)| MetaResponse {
                    description,
                    status: Some(*status),
                    status_range: None,
                    content: vec![MetaMediaType {
                        content_type: PROBLEM_JSON,
                        schema: Problem::schema_ref(),
                    }],
                    headers: if matches!(status, 409 | 429 | 503) {
                        vec![MetaHeader {
                            name: "Retry-After".into(),
                            description: Some("Seconds to wait before retrying".into()),
                            required: false,
                            deprecated: false,
                            schema: u64::schema_ref(),
                        }]
                    } else {
                        vec![]
                    },
                })
                .collect(),
        }
    }

    fn register(registry: &mut Registry) {
        Problem::register(registry);
    }
}

/// Turns any error the framework raised (parse errors, missing auth, unknown
/// routes, oversized bodies) into a problem; passes ours through.
pub fn from_poem_error(err: poem::Error) -> Response {
    if err.is::<ApiError>() {
        return err.into_response();
    }
    let status = err.status();
    let detail = err.to_string();
    let api = match status.as_u16() {
        400 => ApiError::invalid(detail),
        401 => ApiError::unauthorized("a valid bearer token is required"),
        403 => ApiError::forbidden(),
        404 => ApiError::new(status, "not_found", "Not found", "no such route"),
        405 => ApiError::new(
            status,
            "method_not_allowed",
            "Method not allowed",
            "method not allowed on this route",
        ),
        413 => ApiError::new(
            status,
            "payload_too_large",
            "Payload too large",
            "request body too large",
        ),
        415 => ApiError::new(
            status,
            "unsupported_media_type",
            "Unsupported media type",
            "send application/json",
        ),
        s if s >= 500 => {
            tracing::error!(request_id = %current_request_id(), error = %detail, "unhandled error");
            ApiError::internal()
        }
        _ => ApiError::new(status, "invalid_request", "Request refused", detail),
    };
    api.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_errors_map_to_contract_codes() {
        let cases: Vec<(DomainError, u16, &str)> = vec![
            (
                DomainError::invalid("amount", "bad"),
                400,
                "invalid_request",
            ),
            (DomainError::NotFound("user"), 404, "not_found"),
            (
                DomainError::InsufficientFunds {
                    available: "10".into(),
                    requested: "25".into(),
                },
                422,
                "insufficient_funds",
            ),
            (DomainError::SameAccount, 422, "same_account"),
            (DomainError::DuplicateEmail, 409, "conflict"),
            (
                DomainError::UnknownReferralCode,
                422,
                "unknown_referral_code",
            ),
            (
                DomainError::IdempotencyKeyReused,
                422,
                "idempotency_key_reused",
            ),
            (
                DomainError::IdempotencyInFlight,
                409,
                "idempotency_in_flight",
            ),
            (
                DomainError::Unavailable(sea_orm::DbErr::Custom("x".into())),
                503,
                "unavailable",
            ),
            (DomainError::Overloaded, 503, "overloaded"),
            (
                DomainError::ResourceLocked {
                    conflicts: vec!["item:a".into()],
                },
                409,
                "resource_locked",
            ),
            (DomainError::LockLost("expired".into()), 409, "lock_lost"),
            (
                DomainError::QueueFull {
                    resource: "item:a".into(),
                    retry_after_ms: 1_500,
                },
                429,
                "queue_full",
            ),
            (
                DomainError::Database(sea_orm::DbErr::Custom("SELECT secret".into())),
                500,
                "internal",
            ),
        ];
        for (e, status, code) in cases {
            let api = ApiError::from(&e);
            assert_eq!((api.status.as_u16(), api.code), (status, code), "{e:?}");
        }
    }

    #[test]
    fn insufficient_funds_detail_follows_the_contract() {
        let api = ApiError::from(DomainError::InsufficientFunds {
            available: "10".into(),
            requested: "25".into(),
        });
        assert_eq!(api.detail, "free balance 10 < requested 25");
    }

    #[test]
    fn internal_errors_never_carry_their_cause() {
        let api = ApiError::from(DomainError::Database(sea_orm::DbErr::Custom(
            "SELECT * FROM wallets".into(),
        )));
        assert!(!api.body().contains("SELECT"));
        assert_eq!(api.retry_after, None);
        assert_eq!(
            ApiError::from(DomainError::Unavailable(sea_orm::DbErr::Custom("x".into())))
                .retry_after,
            Some(1)
        );
    }
}
