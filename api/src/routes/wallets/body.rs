//! Bodies of the Wallets routes: deposits, withdrawals, transfers and the
//! journal. Amounts are rendered as decimal strings.

use domain::ledger::journal::JournalView;
use domain::ledger::wallets::{TransferSide, WalletView};
use domain::money::format_units;
use poem_openapi::Object;

use crate::routes::shared::{DecimalString, WalletKind, timestamp};

#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct DepositRequest {
    pub user_id: i64,
    pub amount: DecimalString,
    pub wallet: WalletKind,
    #[oai(validator(max_length = 64, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$"))]
    pub payment_method: Option<String>,
    #[oai(validator(max_length = 255, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$"))]
    pub reference: Option<String>,
}

#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct WithdrawRequest {
    pub user_id: i64,
    pub amount: DecimalString,
    pub wallet: WalletKind,
    #[oai(validator(max_length = 255, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$"))]
    pub destination: Option<String>,
}

#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct TransferRequest {
    pub from_user_id: i64,
    pub to_user_id: i64,
    pub amount: DecimalString,
    pub wallet: WalletKind,
}

#[derive(Object, Debug, Clone)]
pub struct Wallet {
    pub kind: String,
    pub currency: String,
    pub balance: String,
    pub margin: String,
    /// Reserved by active holds; a hold past its expiry no longer counts.
    pub held: String,
    /// `balance - margin - held`: what a withdrawal, a transfer, an order
    /// or a new hold may use.
    pub free_margin: String,
    pub profit: String,
    pub updated_at: String,
}

impl From<&WalletView> for Wallet {
    fn from(w: &WalletView) -> Self {
        Self {
            kind: w.kind.clone(),
            currency: w.currency.clone(),
            balance: format_units(w.balance),
            margin: format_units(w.margin),
            held: format_units(w.held),
            free_margin: format_units(w.free_margin()),
            profit: format_units(w.profit),
            updated_at: timestamp(w.updated_at),
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

impl From<&domain::ledger::wallets::Operation> for Operation {
    fn from(o: &domain::ledger::wallets::Operation) -> Self {
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

impl From<&domain::ledger::wallets::Transfer> for Transfer {
    fn from(t: &domain::ledger::wallets::Transfer) -> Self {
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
    /// Change of the funds reserved by holds.
    pub held_delta: String,
    pub balance_after: String,
    pub margin_after: String,
    pub profit_after: String,
    pub held_after: String,
    /// The deposit's reference, when it had one; `order:{id}` and
    /// `hold:{id}` for the entries of orders and holds.
    #[oai(nullable)]
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
            held_delta: format_units(e.held_delta),
            balance_after: format_units(e.balance_after),
            margin_after: format_units(e.margin_after),
            profit_after: format_units(e.profit_after),
            held_after: format_units(e.held_after),
            reference: e.reference.clone(),
            created_at: timestamp(e.created_at),
            hash: e.hash.clone(),
        }
    }
}

crate::routes::shared::page_body!(JournalPage, JournalEntry, JournalView);
