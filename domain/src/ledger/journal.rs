//! The journal: append-only, one entry per wallet an operation touches,
//! each chained to the wallet's previous entry by
//! `hash = sha256(prev_hash || canonical entry)` (tamper evidence without a
//! global hot row). Every movement of money has its own entry kind.

use chrono::{DateTime, Utc};
use infra::entities::journal_entry;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::DomainResult;
use crate::ledger::users::require_user;
use crate::ledger::wallets::WalletKind;
use crate::page::{Page, newest_first};

/// The `prev_hash` of a wallet's first journal entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Journal entry kinds: every movement of money has its own.
pub mod kinds {
    pub const OPENING_BALANCE: &str = "opening_balance";
    pub const DEPOSIT: &str = "deposit";
    pub const WITHDRAWAL: &str = "withdrawal";
    pub const TRANSFER_OUT: &str = "transfer_out";
    pub const TRANSFER_IN: &str = "transfer_in";
    /// Margin set aside for an opened order (margin up, balance unchanged).
    pub const MARGIN_HOLD: &str = "margin_hold";
    /// The fee charged when an order opens (balance down).
    pub const ORDER_OPEN_FEE: &str = "order_open_fee";
    /// An order's margin given back when it closes.
    pub const MARGIN_RELEASE: &str = "margin_release";
    /// The part of a closing loss (and its fee) that the free balance could
    /// not cover, credited so that the balance never goes below zero.
    pub const LOSS_WRITE_OFF: &str = "loss_write_off";
    /// Realised profit or loss of a closed order (balance and profit).
    pub const PNL: &str = "pnl";
    /// The fee charged when an order closes (balance down).
    pub const CLOSE_FEE: &str = "close_fee";
    /// Paid to a referrer, or to a referee, when the referee signs up.
    pub const SIGNUP_BONUS: &str = "signup_bonus";
    /// Settled referral commissions credited to a referrer.
    pub const REFERRAL_COMMISSION: &str = "referral_commission";
}

/// The fields a journal entry's hash covers, in a fixed order, as a JSON
/// array: unambiguous, and recomputable from the stored row.
pub fn canonical_entry(e: &journal_entry::Model) -> String {
    serde_json::json!([
        e.wallet_id,
        e.operation_id.to_string(),
        e.kind,
        e.balance_delta,
        e.margin_delta,
        e.profit_delta,
        e.balance_after,
        e.margin_after,
        e.profit_after,
        e.reference,
        e.metadata,
        e.created_at.timestamp_micros(),
    ])
    .to_string()
}

/// `sha256(prev_hash || canonical entry)`, hex.
pub fn chain_hash(prev_hash: &str, entry: &journal_entry::Model) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(canonical_entry(entry).as_bytes());
    hex::encode(hasher.finalize())
}

/// A journal entry as the outside sees it. Amounts are minor units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalView {
    pub id: i64,
    pub operation_id: Uuid,
    pub wallet: String,
    pub kind: String,
    pub balance_delta: i64,
    pub margin_delta: i64,
    pub profit_delta: i64,
    pub balance_after: i64,
    pub margin_after: i64,
    pub profit_after: i64,
    pub reference: Option<String>,
    pub created_at: DateTime<Utc>,
    pub hash: String,
}

impl From<journal_entry::Model> for JournalView {
    fn from(e: journal_entry::Model) -> Self {
        Self {
            id: e.id,
            operation_id: e.operation_id,
            wallet: e.wallet_kind,
            kind: e.kind,
            balance_delta: e.balance_delta,
            margin_delta: e.margin_delta,
            profit_delta: e.profit_delta,
            balance_after: e.balance_after,
            margin_after: e.margin_after,
            profit_after: e.profit_after,
            reference: e.reference,
            created_at: e.created_at,
            hash: e.hash,
        }
    }
}

pub async fn list_journal<C: ConnectionTrait>(
    conn: &C,
    user_id: i64,
    wallet: Option<WalletKind>,
    limit: u64,
    before_id: Option<i64>,
) -> DomainResult<Page<JournalView>> {
    require_user(conn, user_id).await?;
    let mut query = journal_entry::Entity::find().filter(journal_entry::Column::UserId.eq(user_id));
    if let Some(kind) = wallet {
        query = query.filter(journal_entry::Column::WalletKind.eq(kind.as_str()));
    }
    let page = newest_first(
        conn,
        query,
        journal_entry::Column::Id,
        limit,
        before_id,
        |e| e.id,
    )
    .await?;
    Ok(page.map(JournalView::from))
}
