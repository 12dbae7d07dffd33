//! Bodies of the Orders routes.

use domain::idempotency::{Outcome, StoredResponse};
use domain::money::format_units;
use domain::trading::orders::OrderView;
use domain::trading::signals::SignalRun;
use poem::{IntoResponse, Response};
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiResponse, Object};

use crate::replay::{Stored, outcome_response, stored};
use crate::routes::locks::body::QueueItemBody;

use crate::routes::locks::body::Wait;
use crate::routes::shared::{DecimalString, WalletKind, mirror_enum, timestamp};

mirror_enum! {
    /// `buy` profits when the price rises, `sell` when it falls.
    #[oai(rename_all = "lowercase")]
    pub enum Side = domain::trading::rules::Side { Buy, Sell }
}

mirror_enum! {
    /// `open` or `closed`.
    #[oai(rename_all = "lowercase")]
    pub enum OrderStatus = domain::trading::orders::OrderStatus { Open, Closed }
}

/// A market order at the current price of `symbol`.
#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct OpenOrderRequest {
    pub user_id: i64,
    /// A symbol with a price.
    #[oai(validator(pattern = "^[A-Z0-9]{2,20}$"))]
    pub symbol: String,
    pub side: Side,
    /// Greater than zero, at most 8 decimals.
    pub quantity: DecimalString,
    /// 1 to the configured maximum (100 by default).
    #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
    pub leverage: u32,
    pub wallet: WalletKind,
    /// The client's id of the trading decision: the order then runs under
    /// the lock `trade:{user_id}:{symbol}:{side}:{signal_id}`, once per
    /// signal.
    #[oai(validator(pattern = "^[A-Za-z0-9_.-]{1,64}$"))]
    pub signal_id: Option<String>,
    /// With `signal_id`, when the signal's lock is busy: `fail` (409
    /// `resource_locked`, the default) or `queue` (202 QueueItem; the server
    /// executes the order when granted).
    pub wait: Option<Wait>,
}

/// Closing an order: `{}`, or with a signal (see opening).
#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct CloseOrderRequest {
    #[oai(validator(pattern = "^[A-Za-z0-9_.-]{1,64}$"))]
    pub signal_id: Option<String>,
    pub wait: Option<Wait>,
}

#[derive(Object, Debug, Clone)]
pub struct Order {
    pub id: i64,
    pub user_id: i64,
    pub wallet: String,
    pub symbol: String,
    pub side: String,
    pub quantity: String,
    pub leverage: i32,
    /// `open` or `closed`.
    pub status: String,
    pub open_price: String,
    /// Null while open.
    #[oai(nullable)]
    pub close_price: Option<String>,
    /// Held while open: `quantity * open_price / leverage`.
    pub margin: String,
    /// `quantity * open_price * fee_rate`.
    pub open_fee: String,
    /// `quantity * close_price * fee_rate`; null while open.
    #[oai(nullable)]
    pub close_fee: Option<String>,
    /// Buy: `(close - open) * quantity`; sell: `(open - close) * quantity`;
    /// null while open.
    #[oai(nullable)]
    pub pnl: Option<String>,
    /// The part of the loss and close fee that the free balance could not
    /// cover, written off so that the balance never goes below zero; null
    /// while open.
    #[oai(nullable)]
    pub written_off: Option<String>,
    pub opened_at: String,
    /// Null while open.
    #[oai(nullable)]
    pub closed_at: Option<String>,
    /// Present (`true`) only when a signal already traded answers with this,
    /// its first order.
    #[oai(skip_serializing_if_is_none)]
    pub deduplicated: Option<bool>,
}

impl From<&OrderView> for Order {
    fn from(o: &OrderView) -> Self {
        Self {
            id: o.id,
            user_id: o.user_id,
            wallet: o.wallet_kind.clone(),
            symbol: o.symbol.clone(),
            side: o.side.clone(),
            quantity: format_units(o.quantity),
            leverage: o.leverage,
            status: o.status.clone(),
            open_price: format_units(o.open_price),
            close_price: o.close_price.map(format_units),
            margin: format_units(o.margin),
            open_fee: format_units(o.open_fee),
            close_fee: o.close_fee.map(format_units),
            pnl: o.pnl.map(format_units),
            written_off: o.written_off.map(format_units),
            opened_at: timestamp(o.opened_at),
            closed_at: o.closed_at.map(timestamp),
            deduplicated: None,
        }
    }
}

crate::routes::shared::page_body!(OrderPage, Order, OrderView);

/// The answer of an order route: the order executed now (`STATUS`), or on a
/// signal already traded its first order (200, `"deduplicated": true`), or a
/// place in the signal's lock queue (202 QueueItem). Stored answers replay
/// byte for byte.
pub struct OrderReply<const STATUS: u16>(Outcome);

impl<const STATUS: u16> OrderReply<STATUS> {
    pub fn executed(outcome: Outcome) -> Self {
        Self(outcome)
    }

    /// How a trade on a signal is answered: the order (or its refusal), the
    /// first trade's order, or the queue item.
    pub fn answer(run: SignalRun) -> StoredResponse {
        match run {
            SignalRun::Executed(outcome) => outcome.response,
            SignalRun::Deduplicated(first) => mark_deduplicated(first),
            SignalRun::Queued(item) => stored(202, &QueueItemBody::from(item.as_ref())),
        }
    }
}

/// The first trade's answer for a repeat of its signal: an order gains
/// `"deduplicated": true` and is answered 200; a refusal replays as stored.
fn mark_deduplicated(first: StoredResponse) -> StoredResponse {
    if !(200..300).contains(&first.status) {
        return first;
    }
    match serde_json::from_str::<serde_json::Value>(&first.body) {
        Ok(serde_json::Value::Object(mut order)) => {
            order.insert("deduplicated".into(), serde_json::Value::Bool(true));
            StoredResponse {
                status: 200,
                body: serde_json::Value::Object(order).to_string(),
            }
        }
        _ => first,
    }
}

impl<const STATUS: u16> IntoResponse for OrderReply<STATUS> {
    fn into_response(self) -> Response {
        outcome_response(self.0)
    }
}

impl<const STATUS: u16> ApiResponse for OrderReply<STATUS> {
    fn meta() -> MetaResponses {
        let mut responses = Stored::<Order, STATUS>::meta().responses;
        let json = |schema| {
            vec![MetaMediaType {
                content_type: "application/json; charset=utf-8",
                schema,
            }]
        };
        if STATUS != 200 {
            responses.push(MetaResponse {
                description: "A signal already traded, asked again under another Idempotency-Key or by an admin for the user: its first order, with `\"deduplicated\": true` (the same key replays its own first answer).",
                status: Some(200),
                status_range: None,
                content: json(Order::schema_ref()),
                headers: vec![],
            });
        }
        responses.push(MetaResponse {
            description: "With `signal_id` and `\"wait\": \"queue\"`, the signal's lock is busy: queued; the server executes the order when granted and the lock's result is the order (or the problem). Poll `GET /api/v1/locks/queue/{queue_id}?wait_ms=`.",
            status: Some(202),
            status_range: None,
            content: json(QueueItemBody::schema_ref()),
            headers: vec![],
        });
        MetaResponses { responses }
    }

    fn register(registry: &mut Registry) {
        Order::register(registry);
        QueueItemBody::register(registry);
    }
}
