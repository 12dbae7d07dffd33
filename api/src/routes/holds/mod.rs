pub mod body;

use std::sync::Arc;

use domain::ledger::holds::{CaptureHold, CreateHold, HoldTtl, VoidHold};
use poem::Request;
use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;

use crate::auth::Auth;
use crate::error::Errors;
use crate::replay::Stored;
use crate::routes::shared::{EmptyRequest, IdempotencyKey};
use crate::routes::{ApiTags, BACK_OFFICE, Idempotent, parse_amount, require_visible};
use crate::state::AppState;
use body::{CaptureHoldRequest, CreateHoldRequest, Hold, HoldPage, HoldStatus};

#[derive(Default)]
pub struct HoldsApi;

/// The error statuses each operation can answer.
pub mod status {
    crate::statuses! {
        CreateHold: 400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 500, 503;
        /// 403 for a user, whoever owns the hold: only the back office captures.
        CaptureHold: 400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 500, 503;
        /// No 403: another user's hold is answered as unknown (404).
        VoidHold: 400, 401, 404, 405, 409, 413, 415, 422, 429, 500, 503;
        /// No 403: another user's hold is answered as unknown (404).
        GetHold: 400, 401, 404, 405, 429, 500, 503;
        ListHolds: 400, 401, 403, 404, 405, 429, 500, 503;
    }
}

#[OpenApi]
impl HoldsApi {
    /// Reserve part of a wallet's free balance until it is captured, voided
    /// or expires (`ttl_ms`, default 300,000, at most 7 days; 400 outside
    /// 1..=604,800,000). The wallet's `held` rises and its `free_margin`
    /// (`balance - margin - held`) falls by `amount`; journal kind `hold`.
    /// 422 `insufficient_funds` when `amount` exceeds the free margin. An
    /// expired hold stops counting at `expires_at` exactly. Roles: the user
    /// itself, service, admin. Requires `Idempotency-Key`.
    #[oai(
        path = "/api/v1/holds",
        method = "post",
        operation_id = "create_hold",
        tag = "ApiTags::Holds"
    )]
    async fn create_hold(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        req: &Request,
        #[oai(name = "Idempotency-Key")] key: Header<IdempotencyKey>,
        body: Json<CreateHoldRequest>,
    ) -> Result<Stored<Hold, 201>, Errors<status::CreateHold>> {
        auth.0.require_self_or(body.user_id, BACK_OFFICE)?;
        let ttl = match body.ttl_ms {
            Some(ms) => HoldTtl::from_millis(ms)?,
            None => HoldTtl::default(),
        };
        let cmd = CreateHold {
            user_id: body.user_id,
            wallet: body.wallet.into(),
            amount: parse_amount("amount", &body.amount)?,
            ttl,
            reference: body.reference.clone(),
        };
        Ok(Idempotent::new(&auth.0, req, &key, &body.0)
            .execute(&state.ledger, &cmd)
            .await?)
    }

    /// Capture an active hold: `amount` (default: all of it) leaves the
    /// wallet (balance and held fall, journal kind `hold_capture`), the rest
    /// is released (`hold_release`). 422 `capture_exceeds_hold` when
    /// `amount` is more than the hold reserves (a business refusal: it
    /// depends on the hold, not on the request's form). 409
    /// `hold_not_active` with the hold's status (`hold_status`) when it was
    /// already captured, voided or has expired. Roles: service, admin.
    /// Requires `Idempotency-Key`.
    #[oai(
        path = "/api/v1/holds/:id/capture",
        method = "post",
        operation_id = "capture_hold",
        tag = "ApiTags::Holds"
    )]
    async fn capture_hold(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        req: &Request,
        id: Path<i64>,
        #[oai(name = "Idempotency-Key")] key: Header<IdempotencyKey>,
        body: Json<CaptureHoldRequest>,
    ) -> Result<Stored<Hold, 200>, Errors<status::CaptureHold>> {
        auth.0.require(BACK_OFFICE)?;
        let cmd = CaptureHold {
            hold_id: id.0,
            amount: match &body.amount {
                Some(amount) => Some(parse_amount("amount", amount)?),
                None => None,
            },
        };
        Ok(Idempotent::new(&auth.0, req, &key, &body.0)
            .execute(&state.ledger, &cmd)
            .await?)
    }

    /// Void an active hold: all of it is released (journal kind
    /// `hold_release`). 409 `hold_not_active` with the hold's status
    /// (`hold_status`) when it already ended; 404 for an unknown hold and,
    /// to a user, for another user's hold. Roles: the hold's owner, service,
    /// admin. Requires `Idempotency-Key`.
    #[oai(
        path = "/api/v1/holds/:id/void",
        method = "post",
        operation_id = "void_hold",
        tag = "ApiTags::Holds"
    )]
    async fn void_hold(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        req: &Request,
        id: Path<i64>,
        #[oai(name = "Idempotency-Key")] key: Header<IdempotencyKey>,
        body: Json<EmptyRequest>,
    ) -> Result<Stored<Hold, 200>, Errors<status::VoidHold>> {
        let hold = state.ledger.hold(id.0).await?;
        require_visible(&auth.0, hold.user_id, "hold")?;
        Ok(Idempotent::new(&auth.0, req, &key, &body.0)
            .execute(&state.ledger, &VoidHold { hold_id: id.0 })
            .await?)
    }

    /// One hold, its status as of now (a hold past `expires_at` reads
    /// `expired` even before the cleanup job ran); 404 for an unknown hold
    /// and, to a user, for another user's hold. Roles: its owner, service,
    /// admin.
    #[oai(
        path = "/api/v1/holds/:id",
        method = "get",
        operation_id = "get_hold",
        tag = "ApiTags::Holds"
    )]
    async fn get_hold(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        id: Path<i64>,
    ) -> Result<Json<Hold>, Errors<status::GetHold>> {
        let hold = state.ledger.hold(id.0).await?;
        require_visible(&auth.0, hold.user_id, "hold")?;
        Ok(Json(Hold::from(&hold)))
    }

    /// A user's holds, newest first; `status` filters by the status as of
    /// now, `before_id` is the cursor from `next_before_id`. Roles: the user
    /// itself, service, admin.
    #[oai(
        path = "/api/v1/users/:id/holds",
        method = "get",
        operation_id = "list_holds",
        tag = "ApiTags::Holds"
    )]
    async fn list_holds(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        id: Path<i64>,
        /// `held`, `captured`, `voided` or `expired`; all when absent.
        status: Query<Option<HoldStatus>>,
        /// 1 to 500, default 50.
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))]
        limit: Query<Option<u64>>,
        /// Only holds with an id below this.
        before_id: Query<Option<i64>>,
    ) -> Result<Json<HoldPage>, Errors<status::ListHolds>> {
        auth.0.require_self_or(id.0, BACK_OFFICE)?;
        let page = state
            .ledger
            .holds(
                id.0,
                status.0.map(Into::into),
                limit.0.unwrap_or(50),
                before_id.0,
            )
            .await?;
        Ok(Json(HoldPage::from(&page)))
    }
}
