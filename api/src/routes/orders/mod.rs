pub mod body;

use std::sync::Arc;

use domain::DomainError;
use domain::trading::orders::{CloseOrder, OpenOrder, OrderView};
use domain::trading::rules::Symbol;
use poem::Request;
use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;

use crate::auth::{Auth, Principal, Role};
use crate::error::{ApiError, Errors};
use crate::replay::Stored;
use crate::routes::shared::{EmptyRequest, IdempotencyKey};
use crate::routes::{ApiTags, Idempotent, parse_amount};
use crate::state::AppState;
use body::{OpenOrderRequest, Order, OrderPage, OrderStatus};

#[derive(Default)]
pub struct OrdersApi;

/// The error statuses each operation can answer.
pub mod status {
    crate::statuses! {
        OpenOrder: 400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 500, 503;
        /// No 403: another user's order is answered as unknown (404).
        CloseOrder: 400, 401, 404, 405, 409, 413, 415, 422, 429, 500, 503;
        /// No 403: another user's order is answered as unknown (404).
        GetOrder: 400, 401, 404, 405, 429, 500, 503;
        ListOrders: 400, 401, 403, 404, 405, 429, 500, 503;
    }
}

/// The order, if `principal` may see it. To a user, someone else's order is
/// answered exactly like an order that does not exist, so order ids reveal
/// nothing about other users' trading.
async fn visible_order(
    state: &AppState,
    principal: &Principal,
    id: i64,
) -> Result<OrderView, ApiError> {
    let order = state.ledger.order(id).await?;
    principal
        .require_self_or(order.user_id, &[Role::Service, Role::Admin])
        .map_err(|_| ApiError::from(DomainError::NotFound("order")))?;
    Ok(order)
}

#[OpenApi]
impl OrdersApi {
    /// Open a market order at the current price of `symbol`. In one
    /// transaction under the wallet lock: margin `quantity*price/leverage`
    /// is held and the fee `quantity*price*fee_rate` charged, both checked
    /// against the free margin (`balance - margin - held`); referral commissions on
    /// the fee accrue (live wallets). Derived amounts round half to even to 8
    /// decimals. 422 `notional_too_small` when `quantity*price` is below the
    /// configured minimum or the margin or fee would round to zero, 422
    /// `insufficient_margin`, 422 `no_price`, 429
    /// `cooldown_active` (with Retry-After, not stored under the key: retry
    /// after the cooldown with the same key). Roles: the user itself, admin.
    /// Requires `Idempotency-Key`.
    #[oai(
        path = "/api/v1/orders",
        method = "post",
        operation_id = "open_order",
        tag = "ApiTags::Orders"
    )]
    async fn open_order(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        req: &Request,
        #[oai(name = "Idempotency-Key")] key: Header<IdempotencyKey>,
        body: Json<OpenOrderRequest>,
    ) -> Result<Stored<Order, 201>, Errors<status::OpenOrder>> {
        auth.0.require_self_or(body.user_id, &[Role::Admin])?;
        let ledger = &state.ledger;
        let cmd = OpenOrder {
            user_id: body.user_id,
            wallet: body.wallet.into(),
            symbol: Symbol::parse(&body.symbol)?,
            side: body.side.into(),
            quantity: parse_amount("quantity", &body.quantity)?,
            leverage: ledger.trading.leverage(body.leverage)?,
        };
        Ok(Idempotent::new(&auth.0, req, &key, &body.0)
            .execute(ledger, &cmd)
            .await?)
    }

    /// Close an open order at the current price, in one transaction: margin
    /// released, P&L to balance and profit, close fee charged, referral
    /// commissions accrued. The balance never goes below zero: what the free
    /// balance cannot cover of the loss and fee is written off (journal kind
    /// `loss_write_off`, field `written_off`). 409 `order_not_open` when it is
    /// already closed; 404 for an unknown order and, to a user, for another
    /// user's order. Roles: the order's owner, service, admin. Requires
    /// `Idempotency-Key`.
    #[oai(
        path = "/api/v1/orders/:id/close",
        method = "post",
        operation_id = "close_order",
        tag = "ApiTags::Orders"
    )]
    async fn close_order(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        req: &Request,
        id: Path<i64>,
        #[oai(name = "Idempotency-Key")] key: Header<IdempotencyKey>,
        body: Json<EmptyRequest>,
    ) -> Result<Stored<Order, 200>, Errors<status::CloseOrder>> {
        visible_order(&state, &auth.0, id.0).await?;
        Ok(Idempotent::new(&auth.0, req, &key, &body.0)
            .execute(&state.ledger, &CloseOrder { order_id: id.0 })
            .await?)
    }

    /// One order; 404 for an unknown order and, to a user, for another
    /// user's order. Roles: its owner, service, admin.
    #[oai(
        path = "/api/v1/orders/:id",
        method = "get",
        operation_id = "get_order",
        tag = "ApiTags::Orders"
    )]
    async fn get_order(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        id: Path<i64>,
    ) -> Result<Json<Order>, Errors<status::GetOrder>> {
        let order = visible_order(&state, &auth.0, id.0).await?;
        Ok(Json(Order::from(&order)))
    }

    /// A user's orders, newest first; `status` filters, `before_id` is the
    /// cursor from `next_before_id`. Roles: the user itself, service, admin.
    #[oai(
        path = "/api/v1/users/:id/orders",
        method = "get",
        operation_id = "list_orders",
        tag = "ApiTags::Orders"
    )]
    async fn list_orders(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        id: Path<i64>,
        /// `open` or `closed`; both when absent.
        status: Query<Option<OrderStatus>>,
        /// 1 to 500, default 50.
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))]
        limit: Query<Option<u64>>,
        /// Only orders with an id below this.
        before_id: Query<Option<i64>>,
    ) -> Result<Json<OrderPage>, Errors<status::ListOrders>> {
        auth.0
            .require_self_or(id.0, &[Role::Service, Role::Admin])?;
        let page = state
            .ledger
            .orders(
                id.0,
                status.0.map(Into::into),
                limit.0.unwrap_or(50),
                before_id.0,
            )
            .await?;
        Ok(Json(OrderPage {
            items: page.items.iter().map(Order::from).collect(),
            next_before_id: page.next_before_id,
        }))
    }
}
