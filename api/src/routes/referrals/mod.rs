pub mod body;

use std::sync::Arc;

use domain::trading::referrals::SettleCommissions;
use poem::Request;
use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::param::{Header, Path};
use poem_openapi::payload::Json;

use crate::auth::Auth;
use crate::error::Errors;
use crate::replay::Stored;
use crate::routes::shared::{EmptyRequest, IdempotencyKey};
use crate::routes::{ApiTags, BACK_OFFICE, Idempotent};
use crate::state::AppState;
use body::{ReferralStats, Settlement};

#[derive(Default)]
pub struct ReferralsApi;

/// The error statuses each operation can answer.
pub mod status {
    crate::statuses! {
        ReferralStats: 400, 401, 403, 404, 405, 429, 500, 503;
        /// 422: a credit beyond the largest amount (`balance_limit_exceeded`).
        Settle: 400, 401, 403, 405, 409, 413, 415, 422, 429, 500, 503;
    }
}

/// How many batches one call of the settle route may credit, in its one
/// transaction; the periodic job settles whatever remains.
const ROUTE_BATCHES: u64 = 10;

#[OpenApi]
impl ReferralsApi {
    /// Referral statistics: direct referees, and per upline level the
    /// referees and the commissions paid and pending; signup bonuses earned
    /// as a referrer. Roles: the user itself, service, admin.
    #[oai(
        path = "/api/v1/users/:id/referrals",
        method = "get",
        operation_id = "referral_stats",
        tag = "ApiTags::Referrals"
    )]
    async fn stats(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        id: Path<i64>,
    ) -> Result<Json<ReferralStats>, Errors<status::ReferralStats>> {
        auth.0.require_self_or(id.0, BACK_OFFICE)?;
        let stats = state.ledger.referral_stats(id.0).await?;
        Ok(Json(ReferralStats::from(&stats)))
    }

    /// Credit pending referral commissions to referrers' live wallets: one
    /// journal entry (`referral_commission`) per referrer, each commission
    /// paid exactly once. One call settles up to ten settlement batches in
    /// one transaction; the server also settles periodically. Roles: service,
    /// admin. Requires `Idempotency-Key`.
    #[oai(
        path = "/api/v1/referrals/settle",
        method = "post",
        operation_id = "settle_referrals",
        tag = "ApiTags::Referrals"
    )]
    async fn settle(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        req: &Request,
        #[oai(name = "Idempotency-Key")] key: Header<IdempotencyKey>,
        body: Json<EmptyRequest>,
    ) -> Result<Stored<Settlement, 200>, Errors<status::Settle>> {
        auth.0.require(BACK_OFFICE)?;
        let cmd = SettleCommissions {
            limit: state.ledger.settle_batch.saturating_mul(ROUTE_BATCHES),
        };
        Ok(Idempotent::new(&auth.0, req, &key, &body.0)
            .execute(&state.ledger, &cmd)
            .await?)
    }
}
