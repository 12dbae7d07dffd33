//! Request and response bodies of the HTTP contract. These are not tables:
//! they are built from domain views, amounts rendered as decimal strings.

use chrono::{DateTime, SecondsFormat, Utc};
use domain::ledger::journal::JournalView;
use domain::ledger::users::UserView;
use domain::ledger::wallets::{
    Operation as OperationView, Transfer as TransferView, TransferSide, WalletKind, WalletView,
};
use domain::money::format_units;
use domain::trading::orders::{OrderStatus as DomainOrderStatus, OrderView};
use domain::trading::prices::PriceView;
use domain::trading::referrals::{
    ReferralStats as ReferralStatsView, Settlement as SettlementView,
};
use domain::trading::rules::Side as TradeSide;
use std::borrow::Cow;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use poem_openapi::{Enum, Object};
use serde_json::Value;

/// RFC 3339, UTC, microseconds: `2026-11-21T12:00:00.123456Z`.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// An amount in a request: a JSON string in plain decimal notation. Unlike a
/// plain `String` field, a JSON number is refused here (floats lose cents);
/// the value itself is parsed by `domain::money::Amount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecimalString(pub String);

const DECIMAL_PATTERN: &str = r"^[0-9]+(\.[0-9]{1,8})?$";

impl Type for DecimalString {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "DecimalString".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            description: Some(
                "Decimal string, e.g. \"100.5\": at most 8 decimals, no sign, no exponent, > 0, \
                 at most \"92233720368.54775807\". JSON numbers are refused.",
            ),
            pattern: Some(DECIMAL_PATTERN.into()),
            max_length: Some(40),
            example: Some(Value::String("100.5".into())),
            ..MetaSchema::new("string")
        }))
    }

    fn as_raw_value(&self) -> Option<&Self> {
        Some(self)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for DecimalString {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(s)) => Ok(Self(s)),
            Some(Value::Number(_)) => Err(ParseError::custom(
                "amounts are decimal strings such as \"100.5\"; JSON numbers are refused",
            )),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl ToJSON for DecimalString {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
/// `live` or `demo`.
#[oai(rename = "WalletKind", rename_all = "lowercase")]
pub enum Wallet {
    Live,
    Demo,
}

impl From<Wallet> for WalletKind {
    fn from(w: Wallet) -> Self {
        match w {
            Wallet::Live => WalletKind::Live,
            Wallet::Demo => WalletKind::Demo,
        }
    }
}

/// An error, RFC 9457.
#[derive(Object, Debug, Clone)]
#[oai(rename = "Problem")]
pub struct Problem {
    #[oai(rename = "type")]
    pub ty: String,
    pub title: String,
    pub status: u16,
    /// Stable, machine-readable.
    pub code: String,
    pub detail: String,
    pub request_id: String,
}

#[derive(Object, Debug, Clone)]
pub struct Health {
    pub status: String,
}

#[derive(Object, Debug, Clone)]
pub struct PoolInfo {
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

#[derive(Object, Debug, Clone)]
pub struct Readiness {
    pub status: String,
    pub database: String,
    pub pool: PoolInfo,
}

/// Amounts are decimal strings: at most 8 decimals, no sign, no exponent,
/// greater than zero, at most `92233720368.54775807`. A JSON number is refused.
#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct CreateUserRequest {
    #[oai(validator(max_length = 320))]
    pub email: String,
    /// Another user's referral code: that user becomes the referrer.
    #[oai(validator(max_length = 32))]
    pub referral_code: Option<String>,
}

#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct DepositRequest {
    pub user_id: i64,
    pub amount: DecimalString,
    pub wallet: Wallet,
    #[oai(validator(max_length = 64))]
    pub payment_method: Option<String>,
    #[oai(validator(max_length = 255))]
    pub reference: Option<String>,
}

#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct WithdrawRequest {
    pub user_id: i64,
    pub amount: DecimalString,
    pub wallet: Wallet,
    #[oai(validator(max_length = 255))]
    pub destination: Option<String>,
}

#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct TransferRequest {
    pub from_user_id: i64,
    pub to_user_id: i64,
    pub amount: DecimalString,
    pub wallet: Wallet,
}

#[derive(Object, Debug, Clone)]
#[oai(rename = "Wallet")]
pub struct WalletBody {
    pub kind: String,
    pub currency: String,
    pub balance: String,
    pub margin: String,
    /// `balance - margin`.
    pub free_margin: String,
    pub profit: String,
    pub updated_at: String,
}

impl From<&WalletView> for WalletBody {
    fn from(w: &WalletView) -> Self {
        Self {
            kind: w.kind.clone(),
            currency: w.currency.clone(),
            balance: format_units(w.balance),
            margin: format_units(w.margin),
            free_margin: format_units(w.free_margin()),
            profit: format_units(w.profit),
            updated_at: timestamp(w.updated_at),
        }
    }
}

#[derive(Object, Debug, Clone)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub account_number: String,
    pub referral_code: String,
    pub referrer_id: Option<i64>,
    pub created_at: String,
    pub wallets: Vec<WalletBody>,
}

impl From<&UserView> for User {
    fn from(u: &UserView) -> Self {
        Self {
            id: u.id,
            email: u.email.clone(),
            account_number: u.account_number.clone(),
            referral_code: u.referral_code.clone(),
            referrer_id: u.referrer_id,
            created_at: timestamp(u.created_at),
            wallets: u.wallets.iter().map(WalletBody::from).collect(),
        }
    }
}

/// A deposit or a withdrawal.
#[derive(Object, Debug, Clone)]
pub struct Operation {
    pub operation_id: String,
    pub user_id: i64,
    pub wallet: String,
    /// `deposit` or `withdrawal`.
    pub kind: String,
    pub amount: String,
    pub balance_before: String,
    pub balance_after: String,
    pub created_at: String,
}

impl From<&OperationView> for Operation {
    fn from(o: &OperationView) -> Self {
        Self {
            operation_id: o.operation_id.to_string(),
            user_id: o.user_id,
            wallet: o.wallet.as_str().into(),
            kind: o.kind.into(),
            amount: format_units(o.amount),
            balance_before: format_units(o.balance_before),
            balance_after: format_units(o.balance_after),
            created_at: timestamp(o.created_at),
        }
    }
}

#[derive(Object, Debug, Clone)]
pub struct TransferParty {
    pub user_id: i64,
    pub balance_before: String,
    pub balance_after: String,
}

impl From<&TransferSide> for TransferParty {
    fn from(s: &TransferSide) -> Self {
        Self {
            user_id: s.user_id,
            balance_before: format_units(s.balance_before),
            balance_after: format_units(s.balance_after),
        }
    }
}

#[derive(Object, Debug, Clone)]
pub struct Transfer {
    pub operation_id: String,
    pub wallet: String,
    pub amount: String,
    pub from: TransferParty,
    pub to: TransferParty,
    pub created_at: String,
}

impl From<&TransferView> for Transfer {
    fn from(t: &TransferView) -> Self {
        Self {
            operation_id: t.operation_id.to_string(),
            wallet: t.wallet.as_str().into(),
            amount: format_units(t.amount),
            from: TransferParty::from(&t.from),
            to: TransferParty::from(&t.to),
            created_at: timestamp(t.created_at),
        }
    }
}

#[derive(Object, Debug, Clone)]
pub struct JournalEntry {
    pub id: i64,
    pub operation_id: String,
    pub wallet: String,
    pub kind: String,
    pub balance_delta: String,
    pub margin_delta: String,
    pub profit_delta: String,
    pub balance_after: String,
    pub margin_after: String,
    pub profit_after: String,
    pub reference: Option<String>,
    pub created_at: String,
    /// `sha256(previous entry's hash || this entry)`, chained per wallet.
    pub hash: String,
}

impl From<&JournalView> for JournalEntry {
    fn from(e: &JournalView) -> Self {
        Self {
            id: e.id,
            operation_id: e.operation_id.to_string(),
            wallet: e.wallet.clone(),
            kind: e.kind.clone(),
            balance_delta: format_units(e.balance_delta),
            margin_delta: format_units(e.margin_delta),
            profit_delta: format_units(e.profit_delta),
            balance_after: format_units(e.balance_after),
            margin_after: format_units(e.margin_after),
            profit_after: format_units(e.profit_after),
            reference: e.reference.clone(),
            created_at: timestamp(e.created_at),
            hash: e.hash.clone(),
        }
    }
}

#[derive(Object, Debug, Clone)]
pub struct JournalPage {
    pub items: Vec<JournalEntry>,
    /// Pass as `before_id` for the next (older) page; null on the last page.
    pub next_before_id: Option<i64>,
}

#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct PriceRequest {
    pub price: DecimalString,
}

#[derive(Object, Debug, Clone)]
pub struct Price {
    pub symbol: String,
    pub price: String,
    pub updated_at: String,
}

impl From<&PriceView> for Price {
    fn from(p: &PriceView) -> Self {
        Self {
            symbol: p.symbol.clone(),
            price: format_units(p.price),
            updated_at: timestamp(p.updated_at),
        }
    }
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
/// `buy` profits when the price rises, `sell` when it falls.
#[oai(rename_all = "lowercase")]
pub enum Side {
    Buy,
    Sell,
}

impl From<Side> for TradeSide {
    fn from(s: Side) -> Self {
        match s {
            Side::Buy => TradeSide::Buy,
            Side::Sell => TradeSide::Sell,
        }
    }
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum OrderStatus {
    Open,
    Closed,
}

impl From<OrderStatus> for DomainOrderStatus {
    fn from(s: OrderStatus) -> Self {
        match s {
            OrderStatus::Open => DomainOrderStatus::Open,
            OrderStatus::Closed => DomainOrderStatus::Closed,
        }
    }
}

/// A market order at the current price of `symbol`.
#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct OpenOrderRequest {
    pub user_id: i64,
    /// `^[A-Z0-9]{2,20}$`, a symbol with a price.
    #[oai(validator(max_length = 20))]
    pub symbol: String,
    pub side: Side,
    /// Greater than zero, at most 8 decimals.
    pub quantity: DecimalString,
    /// 1 to the configured maximum (100 by default).
    #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
    pub leverage: u32,
    pub wallet: Wallet,
}

/// No fields: `{}`.
#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct EmptyRequest {}

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
    pub close_price: Option<String>,
    /// Held while open: `quantity * open_price / leverage`.
    pub margin: String,
    /// `quantity * open_price * fee_rate`.
    pub open_fee: String,
    /// `quantity * close_price * fee_rate`.
    pub close_fee: Option<String>,
    /// Buy: `(close - open) * quantity`; sell: `(open - close) * quantity`.
    pub pnl: Option<String>,
    /// The part of the loss and close fee that the free balance could not
    /// cover, written off so that the balance never goes below zero.
    pub written_off: Option<String>,
    pub opened_at: String,
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
    pub next_before_id: Option<i64>,
}

#[derive(Object, Debug, Clone)]
pub struct ReferralLevel {
    /// 1 = direct referees, 2 = their referees, …
    pub level: i32,
    pub referees: i64,
    pub commission_paid: String,
    pub commission_pending: String,
}

#[derive(Object, Debug, Clone)]
pub struct ReferralStats {
    pub referral_code: String,
    /// Direct referees (level 1).
    pub referees: i64,
    pub by_level: Vec<ReferralLevel>,
    /// Signup bonuses this user earned as a referrer.
    pub signup_bonus_paid: String,
    /// Commissions credited to the live wallet.
    pub commission_paid: String,
    /// Commissions accrued and not yet settled.
    pub commission_pending: String,
}

impl From<&ReferralStatsView> for ReferralStats {
    fn from(s: &ReferralStatsView) -> Self {
        Self {
            referral_code: s.referral_code.clone(),
            referees: s.referees,
            by_level: s
                .by_level
                .iter()
                .map(|l| ReferralLevel {
                    level: l.level,
                    referees: l.referees,
                    commission_paid: format_units(l.commission_paid),
                    commission_pending: format_units(l.commission_pending),
                })
                .collect(),
            signup_bonus_paid: format_units(s.signup_bonus_paid),
            commission_paid: format_units(s.commission_paid),
            commission_pending: format_units(s.commission_pending),
        }
    }
}

#[derive(Object, Debug, Clone)]
pub struct Settlement {
    /// Commissions credited by this call.
    pub settled: u64,
    /// Their total.
    pub amount: String,
}

impl From<&SettlementView> for Settlement {
    fn from(s: &SettlementView) -> Self {
        Self {
            settled: s.settled,
            amount: format_units(s.amount),
        }
    }
}
