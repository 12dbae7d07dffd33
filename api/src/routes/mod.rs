//! HTTP routes. Each handler: check the principal, parse the input into
//! domain types, call the domain, render the result.

pub mod health;
pub mod orders;
pub mod prices;
pub mod referrals;
pub mod users;
pub mod wallets;

use std::future::Future;
use std::sync::Arc;

use domain::DomainResult;
use domain::idempotency::{IdempotentRequest, StoredResponse, validate_client_key};
use domain::money::Amount;
use poem::http::StatusCode;
use poem_openapi::Tags;
use poem_openapi::types::ToJSON;
use sea_orm::DatabaseTransaction;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::replay::Stored;
use crate::state::AppState;

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
}

/// Parses a request amount; a refusal names the field it came from.
pub fn parse_amount(field: &str, input: &crate::types::DecimalString) -> Result<Amount, ApiError> {
    Amount::parse(&input.0).map_err(|e| ApiError::invalid(format!("{field}: {e}")))
}

fn client_key(header: Option<String>) -> Result<String, ApiError> {
    let key = header.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "idempotency_key_missing",
            "Idempotency-Key missing",
            "this request moves money or creates something: send an Idempotency-Key header",
        )
    })?;
    validate_client_key(&key)?;
    Ok(key)
}

/// Runs a POST once per Idempotency-Key (see `domain::idempotency`) and
/// renders its result as `STATUS` with `to_body`, or its refusal as a problem.
#[allow(clippy::too_many_arguments)]
pub async fn run_idempotent<B, T, Body, F, Fut, const STATUS: u16>(
    state: &AppState,
    principal: &Principal,
    route: &str,
    operation: &'static str,
    key: Option<String>,
    request: &B,
    op: F,
    to_body: impl Fn(&T) -> Body,
) -> Result<Stored<Body, STATUS>, ApiError>
where
    B: ToJSON,
    Body: ToJSON,
    F: Fn(Arc<DatabaseTransaction>) -> Fut,
    Fut: Future<Output = DomainResult<T>>,
{
    let key = client_key(key)?;
    let body = request.to_json().unwrap_or(serde_json::Value::Null);
    let req = IdempotentRequest::new(&principal.id(), "POST", route, &key, &body);
    let outcome = state
        .ledger
        .idempotency
        .run(
            operation,
            &req,
            op,
            |value| StoredResponse {
                status: STATUS,
                body: to_body(value).to_json_string(),
            },
            |refusal| ApiError::from(refusal).to_stored(),
        )
        .await?;
    Ok(Stored::new(outcome))
}
