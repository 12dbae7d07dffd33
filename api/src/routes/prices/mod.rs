pub mod body;

use std::sync::Arc;

use domain::trading::rules::Symbol;
use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;

use crate::auth::Auth;
use crate::error::Errors;
use crate::routes::{ApiTags, BACK_OFFICE, parse_amount};
use crate::state::AppState;
use body::{Price, PriceRequest};

#[derive(Default)]
pub struct PricesApi;

/// The error statuses each operation can answer.
pub mod status {
    crate::statuses! {
        SetPrice: 400, 401, 403, 405, 413, 415, 429, 500, 503;
        /// Any role may read a price.
        GetPrice: 400, 401, 404, 405, 429, 500, 503;
    }
}

#[OpenApi]
impl PricesApi {
    /// Set the current price of a symbol; orders open and close at it.
    /// Setting the same price again changes nothing but `updated_at`, so no
    /// Idempotency-Key is needed. Roles: service, admin.
    #[oai(
        path = "/api/v1/prices/:symbol",
        method = "put",
        operation_id = "set_price",
        tag = "ApiTags::Prices"
    )]
    async fn set_price(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        #[oai(validator(pattern = "^[A-Z0-9]{2,20}$"))] symbol: Path<String>,
        body: Json<PriceRequest>,
    ) -> Result<Json<Price>, Errors<status::SetPrice>> {
        auth.0.require(BACK_OFFICE)?;
        let symbol = Symbol::parse(&symbol.0)?;
        let price = parse_amount("price", &body.price)?;
        let view = state.ledger.set_price(&symbol, price).await?;
        Ok(Json(Price::from(&view)))
    }

    /// The current price of a symbol; 404 when none was ever set. Roles: any.
    #[oai(
        path = "/api/v1/prices/:symbol",
        method = "get",
        operation_id = "get_price",
        tag = "ApiTags::Prices"
    )]
    async fn get_price(
        &self,
        _auth: Auth,
        state: Data<&Arc<AppState>>,
        #[oai(validator(pattern = "^[A-Z0-9]{2,20}$"))] symbol: Path<String>,
    ) -> Result<Json<Price>, Errors<status::GetPrice>> {
        let symbol = Symbol::parse(&symbol.0)?;
        let view = state.ledger.price(&symbol).await?;
        Ok(Json(Price::from(&view)))
    }
}
