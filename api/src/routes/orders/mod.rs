pub mod body;

use std::sync::Arc;

use domain::idempotency::StoredResponse;
use domain::trading::orders::{CloseOrder, OpenOrder, OrderView};
use domain::trading::rules::{Side, Symbol};
use domain::trading::signals::{Fenced, Signal, Trade};
use domain::{Command, Ledger};
use poem::Request;
use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;

use crate::auth::{Auth, Role};
use crate::error::{ApiError, Errors};
use crate::replay::stored;
use crate::routes::locks::body::Wait;
use crate::routes::shared::{IdempotencyKey, LockTokenHeader};
use crate::routes::{
    ApiTags, BACK_OFFICE, Idempotent, fence, parse_amount, refusal, require_visible,
};
use crate::state::AppState;
use body::{CloseOrderRequest, OpenOrderRequest, Order, OrderPage, OrderReply, OrderStatus};

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

/// The signal an order names, if any; a signal brings its own lock, so it
/// does not go with a `Lock-Token`.
fn signal(
    id: &Option<String>,
    wait: Option<Wait>,
    fence: &Option<domain::locks::fencing::Fence>,
) -> Result<Option<Signal>, ApiError> {
    let Some(id) = id else {
        if wait.is_some() {
            return Err(ApiError::invalid("wait: only with signal_id"));
        }
        return Ok(None);
    };
    if fence.is_some() {
        return Err(ApiError::invalid(
            "signal_id: the signal's lock fences the order; send no Lock-Token with it",
        ));
    }
    Ok(Some(Signal::parse(
        id,
        wait.map(Into::into).unwrap_or_default(),
    )?))
}

/// An order as stored under its key, answered `STATUS`.
fn rendered<const STATUS: u16>(order: &OrderView) -> StoredResponse {
    stored(STATUS, &Order::from(order))
}

/// Runs an order command once for its Idempotency-Key.
async fn execute<C, const STATUS: u16>(
    ledger: &Ledger,
    idempotent: Idempotent,
    cmd: &C,
) -> Result<OrderReply<STATUS>, ApiError>
where
    C: Command<Output = OrderView>,
{
    let stored = idempotent.execute::<_, Order, STATUS>(ledger, cmd).await?;
    Ok(OrderReply::executed(stored.outcome()))
}

/// Runs an order command as the trade of `signal`, under the signal's lock,
/// once for its Idempotency-Key too.
async fn execute_on_signal<C, const STATUS: u16>(
    ledger: &Ledger,
    idempotent: Idempotent,
    trade: &Trade,
    signal: &Signal,
    cmd: C,
) -> Result<OrderReply<STATUS>, ApiError>
where
    C: Fenced<Output = OrderView>,
{
    let outcome = ledger
        .execute_on_signal(
            idempotent.request(),
            trade,
            signal,
            cmd,
            rendered::<STATUS>,
            refusal(),
            OrderReply::<STATUS>::answer,
        )
        .await?;
    Ok(OrderReply::executed(outcome))
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
        /// `<lock_id>:<fencing_token>`: run only while that lock is the
        /// caller's and holds that token (else 409 `lock_lost`). Not with
        /// `signal_id`, whose own lock fences the order.
        #[oai(name = "Lock-Token")]
        lock_token: Header<Option<LockTokenHeader>>,
        body: Json<OpenOrderRequest>,
    ) -> Result<OrderReply<201>, Errors<status::OpenOrder>> {
        auth.0.require_self_or(body.user_id, &[Role::Admin])?;
        let ledger = &state.ledger;
        let cmd = OpenOrder {
            user_id: body.user_id,
            wallet: body.wallet.into(),
            symbol: Symbol::parse(&body.symbol)?,
            side: body.side.into(),
            quantity: parse_amount("quantity", &body.quantity)?,
            leverage: ledger.trading.leverage(body.leverage)?,
            fence: fence(&auth.0, lock_token.0.as_ref())?,
        };
        let idempotent = Idempotent::new(&auth.0, req, &key, &body.0);
        let Some(signal) = signal(&body.signal_id, body.wait, &cmd.fence)? else {
            return Ok(execute(ledger, idempotent, &cmd).await?);
        };
        let trade = Trade {
            user_id: cmd.user_id,
            symbol: cmd.symbol.as_str().to_owned(),
            side: cmd.side,
            kind: OpenOrder::NAME,
            principal: auth.0.id(),
        };
        Ok(execute_on_signal(ledger, idempotent, &trade, &signal, cmd).await?)
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
    // Each argument is one documented part of the request (path, headers,
    // body), as poem-openapi reads them.
    #[allow(clippy::too_many_arguments)]
    async fn close_order(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        req: &Request,
        id: Path<i64>,
        #[oai(name = "Idempotency-Key")] key: Header<IdempotencyKey>,
        /// `<lock_id>:<fencing_token>`: run only while that lock is the
        /// caller's and holds that token (else 409 `lock_lost`). Not with
        /// `signal_id`.
        #[oai(name = "Lock-Token")]
        lock_token: Header<Option<LockTokenHeader>>,
        body: Json<CloseOrderRequest>,
    ) -> Result<OrderReply<200>, Errors<status::CloseOrder>> {
        let order = state.ledger.order(id.0).await?;
        require_visible(&auth.0, order.user_id, "order")?;
        let cmd = CloseOrder::of(&order, fence(&auth.0, lock_token.0.as_ref())?)?;
        let idempotent = Idempotent::new(&auth.0, req, &key, &body.0);
        let Some(signal) = signal(&body.signal_id, body.wait, &cmd.fence)? else {
            return Ok(execute(&state.ledger, idempotent, &cmd).await?);
        };
        // A close trades the other way on the order's symbol.
        let side = match order.side.as_str() {
            "buy" => Side::Sell,
            _ => Side::Buy,
        };
        let trade = Trade {
            user_id: order.user_id,
            symbol: order.symbol,
            side,
            kind: CloseOrder::NAME,
            principal: auth.0.id(),
        };
        Ok(execute_on_signal(&state.ledger, idempotent, &trade, &signal, cmd).await?)
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
        let order = state.ledger.order(id.0).await?;
        require_visible(&auth.0, order.user_id, "order")?;
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
        auth.0.require_self_or(id.0, BACK_OFFICE)?;
        let page = state
            .ledger
            .orders(
                id.0,
                status.0.map(Into::into),
                limit.0.unwrap_or(50),
                before_id.0,
            )
            .await?;
        Ok(Json(OrderPage::from(&page)))
    }
}
