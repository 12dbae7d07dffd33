//! Every error leaves as `application/problem+json` (RFC 9457) with a stable
//! `code`. Domain errors are mapped to statuses in one place, `From<DomainError>`.
//! 5xx bodies are opaque; their cause goes to the log with the request id.

use std::fmt;
use std::marker::PhantomData;

use domain::DomainError;
use domain::idempotency::StoredResponse;
use domain::money::format_units;
use poem::http::{HeaderValue, StatusCode, header};
use poem::{IntoResponse, Response};
use poem_openapi::ApiResponse;
use poem_openapi::error::ParseParamError;
use poem_openapi::registry::{MetaHeader, MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::{ToJSON, Type};

use infra::metrics::metrics;

use crate::request_id::current_request_id;
use crate::routes::shared::{IdempotencyKey, Problem};

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
    pub conflicts: Option<Box<[String]>>,
    /// `hold_not_active`, `workflow_state`: the state that refused it.
    pub state_of: Option<StateOf>,
}

/// The state a refusal names: `hold_not_active` the hold's (sent as
/// `hold_status`), `workflow_state` the workflow's (`workflow_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateOf {
    Hold(&'static str),
    Workflow(&'static str),
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
            state_of: None,
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

    /// Shed at once: past the in-flight limit, or no database connection
    /// within the wait budget.
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
        self.problem_for(current_request_id())
    }

    fn problem_for(&self, request_id: String) -> Problem {
        Problem {
            ty: "about:blank".into(),
            title: self.title.into(),
            status: self.status.as_u16(),
            code: self.code.into(),
            detail: self.detail.clone(),
            request_id,
            conflicts: self.conflicts.as_deref().map(<[String]>::to_vec),
            hold_status: match self.state_of {
                Some(StateOf::Hold(s)) => Some(s.to_owned()),
                _ => None,
            },
            workflow_status: match self.state_of {
                Some(StateOf::Workflow(s)) => Some(s.to_owned()),
                _ => None,
            },
        }
    }

    pub fn body(&self) -> String {
        self.problem().to_json_string()
    }

    /// The form in which a refusal of request `request_id` is stored under
    /// its idempotency key (it may be rendered by another request's task,
    /// when writes share a commit).
    pub fn to_stored_for(&self, request_id: String) -> StoredResponse {
        StoredResponse {
            status: self.status.as_u16(),
            body: self.problem_for(request_id).to_json_string(),
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
        let conflict = |code, title| Self::new(S::CONFLICT, code, title, e.to_string());
        let busy = |code, title, retry_after_ms: &u64| {
            Self::new(S::TOO_MANY_REQUESTS, code, title, e.to_string())
                .retry_after(retry_after_ms.div_ceil(1000).max(1))
        };
        match e {
            DomainError::Invalid { .. } => Self::invalid(e.to_string()),
            DomainError::NotFound(what) => Self::not_found(what),
            DomainError::InsufficientFunds {
                available,
                requested,
            } => Self::new(
                S::UNPROCESSABLE_ENTITY,
                "insufficient_funds",
                "Insufficient funds",
                format!(
                    "free balance {} < requested {}",
                    format_units(*available),
                    format_units(*requested)
                ),
            ),
            DomainError::SameAccount => unprocessable("same_account", "Same account"),
            DomainError::InsufficientMargin { .. } => {
                unprocessable("insufficient_margin", "Insufficient margin")
            }
            DomainError::NotionalTooSmall { .. } => {
                unprocessable("notional_too_small", "Order too small")
            }
            DomainError::NoPrice(_) => unprocessable("no_price", "No price"),
            DomainError::OrderNotOpen(_) => conflict("order_not_open", "Order not open"),
            DomainError::HoldNotActive { status, .. } => Self {
                state_of: Some(StateOf::Hold(status)),
                ..conflict("hold_not_active", "Hold not active")
            },
            DomainError::HoldInWorkflow { .. } => {
                conflict("hold_in_workflow", "Hold belongs to a workflow")
            }
            DomainError::WorkflowState { status, .. } => Self {
                state_of: Some(StateOf::Workflow(status)),
                ..conflict("workflow_state", "Workflow not waiting for this")
            },
            DomainError::CaptureExceedsHold { requested, held } => Self::new(
                S::UNPROCESSABLE_ENTITY,
                "capture_exceeds_hold",
                "Capture exceeds hold",
                format!(
                    "capture amount {} exceeds the held amount {}",
                    format_units(*requested),
                    format_units(*held)
                ),
            ),
            DomainError::CooldownActive { retry_after_ms, .. } => {
                busy("cooldown_active", "Trade cooldown active", retry_after_ms)
            }
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
                conflicts: Some(conflicts.clone().into_boxed_slice()),
                ..conflict("resource_locked", "Resource locked")
            },
            DomainError::LockLost(_) => conflict("lock_lost", "Lock lost"),
            DomainError::QueueFull { retry_after_ms, .. } => {
                busy("queue_full", "Lock queue full", retry_after_ms)
            }
            DomainError::DuplicateEmail => conflict("conflict", "Conflict"),
            DomainError::IdempotencyInFlight => {
                conflict("idempotency_in_flight", "Request in progress").retry_after(1)
            }
            DomainError::Overloaded => Self::overloaded(),
            DomainError::Unavailable(_)
            | DomainError::Conflict { .. }
            | DomainError::ConnectionLost(_) => {
                tracing::error!(request_id = %current_request_id(), error = %error_chain(e), "database unavailable");
                Self::unavailable()
            }
            DomainError::Database(_)
            | DomainError::Unexpected(_)
            | DomainError::ClaimLost
            | DomainError::NotInGroup
            | DomainError::LeaseLost(_) => {
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

/// What each status means, written once; every operation documents the
/// statuses it can return (see [`statuses!`]) with these words.
const STATUSES: &[(u16, &str)] = &[
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
        "Unknown user, order, hold, workflow, symbol, lock or queue item (`not_found`)",
    ),
    (
        405,
        "The path does not support this method (`method_not_allowed`); `Allow` lists the methods it does",
    ),
    (
        409,
        "Duplicate email (`conflict`); same Idempotency-Key still in flight (`idempotency_in_flight`, with Retry-After); order already closed (`order_not_open`); a resource is locked (`resource_locked`, with `conflicts`: the busy resources); the lock is no longer active, expired, or holds another fencing token (`lock_lost`); hold already captured, voided or expired (`hold_not_active`, its status in `hold_status`); a workflow's hold captured or voided through the holds routes (`hold_in_workflow`); a workflow not waiting for this action (`workflow_state`, its status in `workflow_status`)",
    ),
    (
        413,
        "Request body larger than the configured limit (`payload_too_large`)",
    ),
    (
        415,
        "The body is not sent as `application/json` (`unsupported_media_type`)",
    ),
    (
        422,
        "A business rule refuses the request (`insufficient_funds`, `insufficient_margin`, `notional_too_small`, `no_price`, `same_account`, `unknown_referral_code`, `balance_limit_exceeded`, `capture_exceeds_hold`), or the Idempotency-Key was used with a different body (`idempotency_key_reused`)",
    ),
    (
        429,
        "Rate limit for this principal (`rate_limited`), trade cooldown for this user and symbol (`cooldown_active`), or a resource's lock queue is full (`queue_full`); all with Retry-After and none stored under the Idempotency-Key",
    ),
    (500, "A bug; the body never carries internals (`internal`)"),
    (
        503,
        "Database unreachable or draining (`unavailable`), or the server at capacity (`overloaded`: more requests in flight than it takes, or no database connection within the wait budget); both with Retry-After, which for `overloaded` follows the overload (at least 1 s plus 1 s per refused request per admitted one over the last second; 1 s longer each second while more than 1 request in 8 is refused, 1 s shorter each second once fewer than 1 in 32 are; at most 30 s)",
    ),
];

/// The statuses that carry `Retry-After`.
const RETRY_AFTER: &[u16] = &[409, 429, 503];

/// The error statuses one operation can answer, declared beside it with
/// [`statuses!`].
pub trait Statuses: Send + Sync + 'static {
    const LIST: &'static [u16];
}

/// Declares an operation's error statuses: `statuses!(GetUser: 400, 401);`
/// makes the marker `GetUser`, and the operation returns `Errors<GetUser>`.
#[macro_export]
macro_rules! statuses {
    ($($(#[$doc:meta])* $name:ident: $($status:literal),+;)+) => {
        $(
            $(#[$doc])*
            pub enum $name {}

            impl $crate::error::Statuses for $name {
                const LIST: &'static [u16] = &[$($status),+];
            }
        )+
    };
}

/// An operation's error: an [`ApiError`] at run time, and in the OpenAPI
/// document exactly the statuses `S` lists.
pub struct Errors<S>(pub ApiError, PhantomData<S>);

impl<S> fmt::Debug for Errors<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<S> From<ApiError> for Errors<S> {
    fn from(e: ApiError) -> Self {
        Self(e, PhantomData)
    }
}

impl<S> From<DomainError> for Errors<S> {
    fn from(e: DomainError) -> Self {
        Self(ApiError::from(&e), PhantomData)
    }
}

impl<S> From<Errors<S>> for poem::Error {
    fn from(e: Errors<S>) -> Self {
        poem::Error::from(e.0)
    }
}

/// The documentation of one error status, with its headers.
fn documented(status: u16) -> MetaResponse {
    let description = STATUSES
        .iter()
        .find(|(s, _)| *s == status)
        .map_or("", |(_, d)| *d);
    let mut headers = Vec::new();
    if RETRY_AFTER.contains(&status) {
        headers.push(MetaHeader {
            name: "Retry-After".into(),
            description: Some("Seconds to wait before retrying".into()),
            // 409 carries it only for `idempotency_in_flight`.
            required: status != 409,
            deprecated: false,
            schema: u64::schema_ref(),
        });
    }
    if status == 405 {
        headers.push(MetaHeader {
            name: "Allow".into(),
            description: Some("The methods this path supports".into()),
            required: true,
            deprecated: false,
            schema: String::schema_ref(),
        });
    }
    MetaResponse {
        description,
        status: Some(status),
        status_range: None,
        content: vec![MetaMediaType {
            content_type: PROBLEM_JSON,
            schema: Problem::schema_ref(),
        }],
        headers,
    }
}

impl<S: Statuses> ApiResponse for Errors<S> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: S::LIST.iter().copied().map(documented).collect(),
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
    if err
        .downcast_ref::<ParseParamError>()
        .is_some_and(IdempotencyKey::is_missing)
    {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "idempotency_key_missing",
            "Idempotency-Key missing",
            "this request moves money or creates something: send an Idempotency-Key header",
        )
        .into_response();
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
                    available: 1_000_000_000,
                    requested: 2_500_000_000,
                },
                422,
                "insufficient_funds",
            ),
            (DomainError::SameAccount, 422, "same_account"),
            (
                DomainError::InsufficientMargin {
                    available: "1".into(),
                    required: "2".into(),
                },
                422,
                "insufficient_margin",
            ),
            (
                DomainError::NotionalTooSmall {
                    notional: "0.000001".into(),
                    minimum: "0.01".into(),
                },
                422,
                "notional_too_small",
            ),
            (DomainError::DuplicateEmail, 409, "conflict"),
            (
                DomainError::HoldNotActive {
                    hold_id: 4,
                    status: "voided",
                },
                409,
                "hold_not_active",
            ),
            (
                DomainError::CaptureExceedsHold {
                    requested: 3,
                    held: 2,
                },
                422,
                "capture_exceeds_hold",
            ),
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
            available: 1_000_000_000,
            requested: 2_500_000_050,
        });
        assert_eq!(api.detail, "free balance 10 < requested 25.0000005");
    }

    #[test]
    fn hold_not_active_names_the_holds_status() {
        let api = ApiError::from(DomainError::HoldNotActive {
            hold_id: 9,
            status: "expired",
        });
        assert_eq!(api.detail, "hold 9 is not active: it is expired");
        assert_eq!(api.problem().hold_status.as_deref(), Some("expired"));
        // other problems carry no such member
        let body = ApiError::from(DomainError::SameAccount).body();
        assert!(!body.contains("hold_status"), "{body}");
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
