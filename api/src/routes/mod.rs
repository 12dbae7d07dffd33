//! HTTP routes. Each handler: check the principal, parse the input into
//! domain types, call the domain, render the result.

pub mod alerts;
pub mod health;
pub mod holds;
pub mod locks;
pub mod orders;
pub mod prices;
pub mod referrals;
pub mod shared;
pub mod users;
pub mod wallets;
pub mod workflows;

use std::sync::OnceLock;

use domain::idempotency::{IdempotentRequest, StoredResponse};
use domain::locks::fencing::{Fence, LockToken};
use domain::money::Amount;
use domain::{Command, DomainError, Ledger};
use poem::Request;
use poem::http::Method;
use poem_openapi::types::ToJSON;
use poem_openapi::{OpenApi, Tags};

use crate::app::Apis;
use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::replay::{Stored, stored};
use crate::request_id::current_request_id;
use crate::routes::shared::{DecimalString, IdempotencyKey, LockTokenHeader};

#[derive(Tags)]
pub enum ApiTags {
    /// Liveness and readiness for load balancers.
    Operations,
    /// Users and their wallets.
    Users,
    /// Deposits, withdrawals, transfers and the journal.
    Wallets,
    /// The price feed orders execute at.
    Prices,
    /// Leveraged market orders with margin, fees and P&L.
    Orders,
    /// Referral statistics and commission settlement.
    Referrals,
    /// Resource locks, their priority queue and multi-resource reservations.
    Locks,
    /// Funds reserved for a while, then captured or voided.
    Holds,
    /// Withdrawal payouts and deposits in review as durable, compensating
    /// workflows; the recovery manager.
    Workflows,
    /// Alerts firing now, from this process's metrics.
    Alerts,
}

/// The back office: the roles that may act for any user.
pub const BACK_OFFICE: &[Role] = &[Role::Service, Role::Admin];

/// Lets `principal` see a record of user `owner`: its own, or any for the
/// back office. To a user, someone else's record is answered exactly like
/// one that does not exist (404 `what`), so ids reveal nothing about other
/// users' holds, orders or workflows.
pub fn require_visible(
    principal: &Principal,
    owner: i64,
    what: &'static str,
) -> Result<(), ApiError> {
    principal
        .require_self_or(owner, BACK_OFFICE)
        .map_err(|_| ApiError::from(DomainError::NotFound(what)))
}

/// Parses a request amount; a refusal names the field it came from.
pub fn parse_amount(field: &str, input: &DecimalString) -> Result<Amount, ApiError> {
    Amount::parse(&input.0).map_err(|e| ApiError::invalid(format!("{field}: {e}")))
}

/// Path templates (`/api/v1/users/{id}`) split into segments, with the
/// methods each serves, from the same declarations poem routes by.
fn route_table() -> &'static [(Vec<String>, String)] {
    static TABLE: OnceLock<Vec<(Vec<String>, String)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        Apis::meta()
            .into_iter()
            .flat_map(|api| api.paths)
            .map(|path| {
                let mut methods: Vec<Method> =
                    path.operations.iter().map(|op| op.method.clone()).collect();
                // poem answers HEAD wherever it answers GET
                if methods.contains(&Method::GET) {
                    methods.push(Method::HEAD);
                }
                methods.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                let allow = methods
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                (segments(&path.path).map(str::to_owned).collect(), allow)
            })
            .collect()
    })
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

/// The `Allow` header for a request path: the methods of the route it
/// matches, literal segments winning over parameters as in poem's router.
pub fn allowed_methods(path: &str) -> Option<&'static str> {
    let request: Vec<&str> = segments(path).collect();
    route_table()
        .iter()
        .filter(|(template, _)| {
            template.len() == request.len()
                && template
                    .iter()
                    .zip(&request)
                    .all(|(t, r)| t.starts_with('{') || t == r)
        })
        .max_by_key(|(template, _)| template.iter().filter(|t| !t.starts_with('{')).count())
        .map(|(_, allow)| allow.as_str())
}

/// One idempotent POST: who sent it, to which path, with which key and body
/// (see `domain::idempotency`).
pub struct Idempotent(IdempotentRequest);

impl Idempotent {
    pub fn new<B: ToJSON>(
        principal: &Principal,
        req: &Request,
        key: &IdempotencyKey,
        body: &B,
    ) -> Self {
        let body = body.to_json().unwrap_or(serde_json::Value::Null);
        Self(IdempotentRequest::new(
            &principal.id(),
            req.method().as_str(),
            req.uri().path(),
            key.as_str(),
            &body,
        ))
    }

    /// The request as the idempotency service keys it, for use cases that
    /// answer with more than one success status.
    pub fn request(&self) -> &IdempotentRequest {
        &self.0
    }

    /// Runs `cmd` once for this key and renders its result as a `Body` with
    /// `STATUS`, or its refusal as a problem; a repeat replays either.
    pub async fn execute<C, Body, const STATUS: u16>(
        self,
        ledger: &Ledger,
        cmd: &C,
    ) -> Result<Stored<Body, STATUS>, ApiError>
    where
        C: Command,
        Body: ToJSON + for<'a> From<&'a C::Output>,
    {
        let outcome = ledger
            .execute_once(
                &self.0,
                cmd,
                |value| stored(STATUS, &Body::from(value)),
                refusal(),
            )
            .await?;
        Ok(Stored::new(outcome))
    }
}

/// The fence of a money write sent with `Lock-Token: <lock_id>:<token>`:
/// it runs only while that lock is active, the caller's and holds that
/// token, checked inside its transaction.
pub fn fence(
    principal: &Principal,
    header: Option<&LockTokenHeader>,
) -> Result<Option<Fence>, ApiError> {
    header
        .map(|h| {
            Ok(Fence {
                lock: LockToken::parse(&h.0)?,
                owner: principal.id(),
            })
        })
        .transpose()
}

/// Renders a business refusal of the request being served as the answer
/// stored under its key — also when it runs in another task (group commit,
/// a queued trade), so it carries this request's id.
pub fn refusal() -> impl Fn(&DomainError) -> StoredResponse + Clone + Send + Sync + 'static {
    let request_id = current_request_id();
    move |refusal| ApiError::from(refusal).to_stored_for(request_id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    use crate::routes::shared::PLAIN_TEXT_PATTERN;

    fn spec() -> Value {
        serde_json::from_str(&crate::app::spec_json()).unwrap()
    }

    /// `(method, path, operation)` for every operation in the document.
    fn operations(spec: &Value) -> Vec<(String, String, Value)> {
        let mut all = Vec::new();
        for (path, ops) in spec["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                all.push((method.clone(), path.clone(), op.clone()));
            }
        }
        all
    }

    fn statuses(op: &Value) -> Vec<u16> {
        op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(|s| s.parse().unwrap())
            .collect()
    }

    #[test]
    fn every_operation_documents_what_its_kind_can_answer() {
        let spec = spec();
        for (method, path, op) in operations(&spec) {
            let listed = statuses(&op);
            let name = format!("{method} {path}");
            let errors = op["responses"].as_object().unwrap().iter();
            for (status, response) in errors.filter(|(s, _)| s.as_str() >= "400") {
                assert!(
                    !response["description"].as_str().unwrap_or("").is_empty(),
                    "{name} {status}: no description"
                );
            }
            assert!(listed.contains(&405), "{name}: 405");
            let authenticated = op.get("security").is_some();
            for status in [400, 401, 429] {
                assert_eq!(listed.contains(&status), authenticated, "{name}: {status}");
            }
            // every authenticated operation reads the database
            if authenticated {
                assert!(listed.contains(&500) && listed.contains(&503), "{name}");
            }
            let has_body = op.get("requestBody").is_some();
            for status in [413, 415] {
                assert_eq!(listed.contains(&status), has_body, "{name}: {status}");
            }
            if listed.contains(&503) {
                let retry = &op["responses"]["503"]["headers"]["Retry-After"];
                assert_eq!(retry["required"], true, "{name}");
            }
            assert!(
                op["responses"]["405"]["headers"]["Allow"].is_object(),
                "{name}: Allow"
            );
            // Every POST that creates something or moves money takes a key;
            // the others act on a lock that exists (its owner's extend and
            // release, fenced by status and token), are admin reads and
            // sweeps that are safe to repeat, or move a workflow on from the
            // one state that waits for them (a repeat is 409).
            let keyless = [
                "extend_lock",
                "release_lock",
                "check_lock",
                "cleanup_locks",
                "clear_all_locks",
                "approve_workflow",
                "reject_workflow",
                "report_workflow_payout",
                "retry_workflow",
                "trigger_recovery",
            ];
            if method == "post" && !keyless.contains(&op["operationId"].as_str().unwrap_or("")) {
                let key = op["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"] == "Idempotency-Key")
                    .unwrap_or_else(|| panic!("{name}: Idempotency-Key"));
                assert_eq!(key["required"], true, "{name}");
                assert_eq!(key["schema"]["maxLength"], 255, "{name}");
                assert!(key["schema"]["pattern"].is_string(), "{name}");
            }
        }
    }

    #[test]
    fn probes_and_order_reads_list_only_what_they_can_answer() {
        let spec = spec();
        let of = |path: &str, method: &str| statuses(&spec["paths"][path][method]);
        assert_eq!(of("/health", "get"), [200, 405]);
        assert_eq!(of("/health/ready", "get"), [200, 405, 500, 503]);
        // another user's order is answered as unknown, never as forbidden
        assert!(!of("/api/v1/orders/{id}", "get").contains(&403));
        assert!(!of("/api/v1/orders/{id}/close", "post").contains(&403));
        // and so is another user's hold
        assert!(!of("/api/v1/holds/{id}", "get").contains(&403));
        assert!(!of("/api/v1/holds/{id}/void", "post").contains(&403));
        // a price is readable by any role and set without a key
        assert!(!of("/api/v1/prices/{symbol}", "get").contains(&403));
        assert!(!of("/api/v1/prices/{symbol}", "put").contains(&409));
    }

    #[test]
    fn null_fields_are_nullable_and_text_fields_refuse_control_characters() {
        let spec = spec();
        let schemas = &spec["components"]["schemas"];
        for (schema, field) in [
            ("User", "referrer_id"),
            ("Order", "close_price"),
            ("Order", "close_fee"),
            ("Order", "pnl"),
            ("Order", "written_off"),
            ("Order", "closed_at"),
            ("JournalEntry", "reference"),
            ("JournalPage", "next_before_id"),
            ("OrderPage", "next_before_id"),
            ("Hold", "reference"),
            ("Hold", "finished_at"),
            ("HoldPage", "next_before_id"),
        ] {
            assert_eq!(
                schemas[schema]["properties"][field]["nullable"], true,
                "{schema}.{field}"
            );
        }
        for (schema, field) in [
            ("DepositRequest", "reference"),
            ("DepositRequest", "payment_method"),
            ("WithdrawRequest", "destination"),
            ("CreateUserRequest", "email"),
            ("CreateUserRequest", "referral_code"),
            ("CreateHoldRequest", "reference"),
        ] {
            assert_eq!(
                schemas[schema]["properties"][field]["pattern"], PLAIN_TEXT_PATTERN,
                "{schema}.{field}"
            );
        }
        assert_eq!(
            schemas["OpenOrderRequest"]["properties"]["symbol"]["pattern"],
            "^[A-Z0-9]{2,20}$"
        );
        let symbol = spec["paths"]["/api/v1/prices/{symbol}"]["get"]["parameters"][0].clone();
        assert_eq!(symbol["schema"]["pattern"], "^[A-Z0-9]{2,20}$");
    }

    #[test]
    fn allow_lists_the_methods_of_the_matching_route() {
        assert_eq!(allowed_methods("/api/v1/orders"), Some("POST"));
        assert_eq!(allowed_methods("/api/v1/orders/7"), Some("GET, HEAD"));
        assert_eq!(allowed_methods("/api/v1/orders/7/close"), Some("POST"));
        assert_eq!(
            allowed_methods("/api/v1/prices/BTCUSD"),
            Some("GET, HEAD, PUT")
        );
        assert_eq!(allowed_methods("/api/v1/wallets/deposit"), Some("POST"));
        assert_eq!(allowed_methods("/api/v1/holds"), Some("POST"));
        assert_eq!(allowed_methods("/api/v1/holds/3"), Some("GET, HEAD"));
        assert_eq!(allowed_methods("/api/v1/holds/3/void"), Some("POST"));
        assert_eq!(allowed_methods("/health/"), Some("GET, HEAD"));
        assert_eq!(allowed_methods("/api/v1/nowhere"), None);
        assert_eq!(allowed_methods("/api/v1/orders/7/open"), None);
    }

    /// A valid body of `T` is parsed; the same with one field more is
    /// refused as an unknown field.
    fn refuses_unknown_fields<T: poem_openapi::types::ParseFromJSON + poem_openapi::types::Type>(
        valid: Value,
    ) -> String {
        let name = T::name().into_owned();
        assert!(
            T::parse_from_json(Some(valid.clone())).is_ok(),
            "{name}: {valid}"
        );
        let mut more = valid;
        more["surprise"] = 1.into();
        let refused = T::parse_from_json(Some(more))
            .err()
            .map(|e| e.into_message());
        assert!(
            refused
                .as_deref()
                .is_some_and(|m| m.contains("unknown field `surprise`")),
            "{name}: {refused:?}"
        );
        name
    }

    #[test]
    fn every_request_body_refuses_unknown_fields_as_the_document_says() {
        use serde_json::json;

        use crate::routes::holds::body::{CaptureHoldRequest, CreateHoldRequest};
        use crate::routes::locks::body::{
            AcquireLockRequest, CheckLockRequest, ClearAllRequest, ExtendLockRequest,
            ReleaseLockRequest,
        };
        use crate::routes::orders::body::{CloseOrderRequest, OpenOrderRequest};
        use crate::routes::prices::body::PriceRequest;
        use crate::routes::shared::EmptyRequest;
        use crate::routes::users::body::CreateUserRequest;
        use crate::routes::wallets::body::{DepositRequest, TransferRequest, WithdrawRequest};
        use crate::routes::workflows::body::{
            DecisionRequest, DepositWorkflowRequest, PayoutResultRequest, WithdrawalWorkflowRequest,
        };

        let money = json!({"user_id": 1, "wallet": "live", "amount": "1"});
        let with = |extra: Value| {
            let mut body = money.clone();
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            body
        };
        let mut checked = vec![
            refuses_unknown_fields::<AcquireLockRequest>(
                json!({"resources": ["item:1"], "transaction_type": "t"}),
            ),
            refuses_unknown_fields::<CaptureHoldRequest>(json!({})),
            refuses_unknown_fields::<CheckLockRequest>(json!({"resource_id": "item:1"})),
            refuses_unknown_fields::<ClearAllRequest>(json!({"confirm": true, "reason": "r"})),
            refuses_unknown_fields::<CloseOrderRequest>(json!({})),
            refuses_unknown_fields::<CreateHoldRequest>(money.clone()),
            refuses_unknown_fields::<CreateUserRequest>(json!({"email": "a@example.com"})),
            refuses_unknown_fields::<DecisionRequest>(json!({})),
            refuses_unknown_fields::<DepositRequest>(money.clone()),
            refuses_unknown_fields::<DepositWorkflowRequest>(with(
                json!({"payment_method": "card", "reference": "r"}),
            )),
            refuses_unknown_fields::<EmptyRequest>(json!({})),
            refuses_unknown_fields::<ExtendLockRequest>(json!({"ttl_ms": 1000})),
            refuses_unknown_fields::<OpenOrderRequest>(json!({
                "user_id": 1, "wallet": "live", "symbol": "BTCUSD", "side": "buy",
                "quantity": "1", "leverage": 1
            })),
            refuses_unknown_fields::<PayoutResultRequest>(json!({"outcome": "sent"})),
            refuses_unknown_fields::<PriceRequest>(json!({"price": "1"})),
            refuses_unknown_fields::<ReleaseLockRequest>(json!({})),
            refuses_unknown_fields::<TransferRequest>(json!({
                "from_user_id": 1, "to_user_id": 2, "wallet": "live", "amount": "1"
            })),
            refuses_unknown_fields::<WithdrawRequest>(money.clone()),
            refuses_unknown_fields::<WithdrawalWorkflowRequest>(with(json!({"destination": "d"}))),
        ];
        checked.sort();
        // The document states it on every request body, and on nothing else.
        let spec = spec();
        let mut stated: Vec<String> = spec["components"]["schemas"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, schema)| schema["additionalProperties"] == Value::Bool(false))
            .map(|(name, _)| name.clone())
            .collect();
        stated.sort();
        assert_eq!(stated, checked);
        assert_eq!(crate::app::request_bodies(&spec), checked);
    }
}
