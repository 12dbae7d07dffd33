//! Request and response bodies of the HTTP contract. These are not tables:
//! they are built from domain views, amounts rendered as decimal strings.

use chrono::{DateTime, SecondsFormat, Utc};
use domain::money::format_units;
use domain::users::UserView;
use domain::wallets::{
    JournalView, Operation as OperationView, Transfer as TransferView, TransferSide, WalletKind,
    WalletView,
};
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
