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
use crate::ledger::wallets::{WalletKind, wallet_id};
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
    /// Funds reserved by a hold (held up, balance unchanged).
    pub const HOLD: &str = "hold";
    /// Held funds given back: a voided or expired hold, or the part of a
    /// hold a capture did not take (held down).
    pub const HOLD_RELEASE: &str = "hold_release";
    /// The captured part of a hold leaving the wallet (balance and held down).
    pub const HOLD_CAPTURE: &str = "hold_capture";
}

/// The fields a journal entry's hash covers, in a fixed order, as a JSON
/// array: unambiguous, and recomputable from the stored row.
///
/// `held_delta` and `held_after` came with holds, after entries had been
/// hashed without them: they are appended only when one is non-zero, so an
/// entry of a wallet that never held funds (every entry written before
/// holds) keeps the canonical form, and the hash, it was written with.
pub fn canonical_entry(e: &journal_entry::Model) -> String {
    let mut fields = serde_json::json!([
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
    ]);
    if (e.held_delta, e.held_after) != (0, 0)
        && let Some(fields) = fields.as_array_mut()
    {
        fields.extend([e.held_delta.into(), e.held_after.into()]);
    }
    fields.to_string()
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
    pub held_delta: i64,
    pub balance_after: i64,
    pub margin_after: i64,
    pub profit_after: i64,
    pub held_after: i64,
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
            held_delta: e.held_delta,
            balance_after: e.balance_after,
            margin_after: e.margin_after,
            profit_after: e.profit_after,
            held_after: e.held_after,
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
    // One wallet's entries along its (wallet, id) index: as a (user, kind)
    // filter, the kind was checked entry after entry, back through the
    // user's whole history when the wallet's entries were old.
    let only = match wallet {
        Some(kind) => journal_entry::Column::WalletId.eq(wallet_id(conn, user_id, kind).await?),
        None => {
            require_user(conn, user_id).await?;
            journal_entry::Column::UserId.eq(user_id)
        }
    };
    let query = journal_entry::Entity::find().filter(only);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(held_delta: i64, held_after: i64) -> journal_entry::Model {
        journal_entry::Model {
            id: 1,
            operation_id: Uuid::nil(),
            wallet_id: 7,
            user_id: 3,
            wallet_kind: "live".into(),
            kind: kinds::DEPOSIT.into(),
            balance_delta: 5,
            margin_delta: 0,
            profit_delta: 0,
            balance_after: 5,
            margin_after: 0,
            profit_after: 0,
            held_delta,
            held_after,
            reference: None,
            metadata: None,
            created_at: DateTime::from_timestamp_micros(1_700_000_000_000_001).unwrap(),
            hash: String::new(),
        }
    }

    #[test]
    fn entries_without_held_funds_keep_the_canonical_form_they_were_hashed_with() {
        // the form every entry written before holds was hashed with
        assert_eq!(
            canonical_entry(&entry(0, 0)),
            r#"[7,"00000000-0000-0000-0000-000000000000","deposit",5,0,0,5,0,0,null,null,1700000000000001]"#
        );
        // held funds are covered by the hash as soon as there are any
        assert_eq!(
            canonical_entry(&entry(0, 4)),
            r#"[7,"00000000-0000-0000-0000-000000000000","deposit",5,0,0,5,0,0,null,null,1700000000000001,0,4]"#
        );
        let hashes: Vec<String> = [(0, 0), (0, 4), (-4, 0), (4, 4)]
            .iter()
            .map(|&(d, a)| chain_hash(GENESIS_HASH, &entry(d, a)))
            .collect();
        for (i, h) in hashes.iter().enumerate() {
            assert!(!hashes[i + 1..].contains(h), "{hashes:?}");
        }
    }
}
