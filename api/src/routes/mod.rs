//! HTTP routes. Each handler: check the principal, parse the input into
//! domain types, call the domain, render the result.

pub mod health;
pub mod locks;
pub mod orders;
pub mod prices;
pub mod referrals;
pub mod users;
pub mod wallets;

use domain::idempotency::{IdempotentRequest, StoredResponse, validate_client_key};
use domain::money::Amount;
use domain::{Command, Ledger};
use poem::Request;
use poem::http::StatusCode;
use poem_openapi::Tags;
use poem_openapi::types::ToJSON;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::replay::Stored;

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

/// One idempotent POST: who sent it, to which path, with which key and body
/// (see `domain::idempotency`).
pub struct Idempotent(IdempotentRequest);

impl Idempotent {
    pub fn new<B: ToJSON>(
        principal: &Principal,
        req: &Request,
        key: Option<String>,
        body: &B,
    ) -> Result<Self, ApiError> {
        let key = client_key(key)?;
        let body = body.to_json().unwrap_or(serde_json::Value::Null);
        Ok(Self(IdempotentRequest::new(
            &principal.id(),
            req.method().as_str(),
            req.uri().path(),
            &key,
            &body,
        )))
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
                |value| StoredResponse {
                    status: STATUS,
                    body: Body::from(value).to_json_string(),
                },
                |refusal| ApiError::from(refusal).to_stored(),
            )
            .await?;
        Ok(Stored::new(outcome))
    }
}
