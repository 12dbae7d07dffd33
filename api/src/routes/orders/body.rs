//! Bodies of the Orders routes.

use domain::money::format_units;
use domain::trading::orders::OrderView;
use poem_openapi::{Enum, Object};

use crate::routes::shared::{DecimalString, WalletKind, timestamp};

/// `buy` profits when the price rises, `sell` when it falls.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum Side {
    Buy,
    Sell,
}

impl From<Side> for domain::trading::rules::Side {
    fn from(s: Side) -> Self {
        match s {
            Side::Buy => Self::Buy,
            Side::Sell => Self::Sell,
        }
    }
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum OrderStatus {
    Open,
    Closed,
}

impl From<OrderStatus> for domain::trading::orders::OrderStatus {
    fn from(s: OrderStatus) -> Self {
        match s {
            OrderStatus::Open => Self::Open,
            OrderStatus::Closed => Self::Closed,
        }
    }
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
}

impl From<&OrderView> for Order {
    fn from(o: &OrderView) -> Self {
        Self {
            id: o.id,
            user_id: o.user_id,
            wallet: o.wallet.clone(),
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
        }
    }
}

#[derive(Object, Debug, Clone)]
pub struct OrderPage {
    pub items: Vec<Order>,
    /// Pass as `before_id` for the next (older) page; null on the last page.
    #[oai(nullable)]
    pub next_before_id: Option<i64>,
}
