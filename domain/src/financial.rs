//! FinancialService: the only code that changes a wallet's balance, margin or
//! profit. Each posting applies its deltas to a locked wallet, enforces the
//! invariants, appends a hash-chained journal entry and logs one `financial`
//! event with the old and new values. All postings of an operation are
//! written in the caller's transaction: all of them or none.

use chrono::{DateTime, SubsecRound, Utc};
use infra::entities::{journal_entry, wallet};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{DomainError, DomainResult};
use crate::money::format_units;

/// The `prev_hash` of a wallet's first journal entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Journal entry kinds written by the wallet use cases.
pub mod kinds {
    pub const OPENING_BALANCE: &str = "opening_balance";
    pub const DEPOSIT: &str = "deposit";
    pub const WITHDRAWAL: &str = "withdrawal";
    pub const TRANSFER_OUT: &str = "transfer_out";
    pub const TRANSFER_IN: &str = "transfer_in";
}

/// Minor-unit changes applied together under one lock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deltas {
    pub balance: i64,
    pub margin: i64,
    pub profit: i64,
}

impl Deltas {
    pub fn balance(delta: i64) -> Self {
        Self {
            balance: delta,
            ..Self::default()
        }
    }
}

/// One change to one locked wallet.
#[derive(Debug)]
pub struct Posting<'w> {
    pub wallet: &'w mut wallet::Model,
    pub deltas: Deltas,
    pub kind: &'static str,
    pub reference: Option<String>,
    pub metadata: Option<serde_json::Value>,
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

/// Timestamps are kept to the microsecond, the precision both engines store,
/// so a stored entry hashes to the same value it was written with.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn apply(current: i64, delta: i64) -> DomainResult<i64> {
    current.checked_add(delta).ok_or(DomainError::BalanceLimit)
}

/// Computes the new state of the posting's wallet and its journal entry,
/// refusing anything that would break `balance >= 0`, `margin >= 0` or
/// `balance >= margin`. Pure: nothing is written.
pub fn prepare(
    posting: &Posting<'_>,
    operation_id: Uuid,
    at: DateTime<Utc>,
) -> DomainResult<journal_entry::Model> {
    let w = &*posting.wallet;
    let d = posting.deltas;
    let balance = apply(w.balance, d.balance)?;
    let margin = apply(w.margin, d.margin)?;
    let profit = apply(w.profit, d.profit)?;
    if balance < 0 || margin < 0 || balance < margin {
        return Err(DomainError::InsufficientFunds {
            available: format_units(w.balance - w.margin),
            requested: format_units(Ord::max(d.margin.saturating_sub(d.balance), 0)),
        });
    }
    let mut entry = journal_entry::Model {
        id: 0,
        operation_id,
        wallet_id: w.id,
        user_id: w.user_id,
        wallet_kind: w.kind.clone(),
        kind: posting.kind.to_owned(),
        balance_delta: d.balance,
        margin_delta: d.margin,
        profit_delta: d.profit,
        balance_after: balance,
        margin_after: margin,
        profit_after: profit,
        reference: posting.reference.clone(),
        metadata: posting.metadata.as_ref().map(|m| m.to_string()),
        created_at: at,
        hash: String::new(),
    };
    entry.hash = chain_hash(&w.last_hash, &entry);
    Ok(entry)
}

/// Applies every posting of one operation. Several postings may touch the
/// same wallet; each sees the state the previous one left.
pub async fn post<C: ConnectionTrait>(
    conn: &C,
    operation_id: Uuid,
    postings: Vec<Posting<'_>>,
) -> DomainResult<Vec<journal_entry::Model>> {
    let at = now();
    let mut entries = Vec::with_capacity(postings.len());
    for posting in postings {
        let entry = prepare(&posting, operation_id, at)?;
        let w = posting.wallet;
        let updated = wallet::Entity::update_many()
            .col_expr(
                wallet::Column::Balance,
                Expr::col(wallet::Column::Balance).add(entry.balance_delta),
            )
            .col_expr(
                wallet::Column::Margin,
                Expr::col(wallet::Column::Margin).add(entry.margin_delta),
            )
            .col_expr(
                wallet::Column::Profit,
                Expr::col(wallet::Column::Profit).add(entry.profit_delta),
            )
            .col_expr(
                wallet::Column::Version,
                Expr::col(wallet::Column::Version).add(1),
            )
            .col_expr(wallet::Column::LastHash, Expr::value(entry.hash.clone()))
            .col_expr(wallet::Column::UpdatedAt, Expr::value(at))
            .filter(wallet::Column::Id.eq(w.id))
            .filter(wallet::Column::Version.eq(w.version))
            .exec(conn)
            .await?;
        if updated.rows_affected != 1 {
            // The wallet changed under us: the caller did not hold its lock.
            return Err(DomainError::Unexpected(format!(
                "wallet {} was not locked for this operation",
                w.id
            )));
        }
        tracing::info!(
            target: "financial",
            operation_id = %operation_id,
            wallet_id = w.id,
            user_id = w.user_id,
            wallet = %w.kind,
            kind = posting.kind,
            old_balance = %format_units(w.balance),
            new_balance = %format_units(entry.balance_after),
            old_margin = %format_units(w.margin),
            new_margin = %format_units(entry.margin_after),
            old_profit = %format_units(w.profit),
            new_profit = %format_units(entry.profit_after),
            "financial"
        );
        w.balance = entry.balance_after;
        w.margin = entry.margin_after;
        w.profit = entry.profit_after;
        w.version += 1;
        w.last_hash = entry.hash.clone();
        w.updated_at = at;
        entries.push(entry);
    }
    let rows = entries.iter().map(|e| journal_entry::ActiveModel {
        operation_id: Set(e.operation_id),
        wallet_id: Set(e.wallet_id),
        user_id: Set(e.user_id),
        wallet_kind: Set(e.wallet_kind.clone()),
        kind: Set(e.kind.clone()),
        balance_delta: Set(e.balance_delta),
        margin_delta: Set(e.margin_delta),
        profit_delta: Set(e.profit_delta),
        balance_after: Set(e.balance_after),
        margin_after: Set(e.margin_after),
        profit_after: Set(e.profit_after),
        reference: Set(e.reference.clone()),
        metadata: Set(e.metadata.clone()),
        created_at: Set(e.created_at),
        hash: Set(e.hash.clone()),
        ..Default::default()
    });
    journal_entry::Entity::insert_many(rows)
        .exec_without_returning(conn)
        .await?;
    Ok(entries)
}

/// One wallet, balance, margin and profit in one locked step.
pub async fn perform_combined_operation<C: ConnectionTrait>(
    conn: &C,
    wallet: &mut wallet::Model,
    deltas: Deltas,
    kind: &'static str,
    operation_id: Uuid,
    reference: Option<String>,
    metadata: Option<serde_json::Value>,
) -> DomainResult<journal_entry::Model> {
    let mut entries = post(
        conn,
        operation_id,
        vec![Posting {
            wallet,
            deltas,
            kind,
            reference,
            metadata,
        }],
    )
    .await?;
    entries
        .pop()
        .ok_or_else(|| DomainError::Unexpected("posting produced no entry".into()))
}

/// One wallet, balance only.
pub async fn update_wallet_balance<C: ConnectionTrait>(
    conn: &C,
    wallet: &mut wallet::Model,
    delta: i64,
    kind: &'static str,
    operation_id: Uuid,
    reference: Option<String>,
    metadata: Option<serde_json::Value>,
) -> DomainResult<journal_entry::Model> {
    perform_combined_operation(
        conn,
        wallet,
        Deltas::balance(delta),
        kind,
        operation_id,
        reference,
        metadata,
    )
    .await
}

/// A fresh wallet for unit tests of the rules that take one.
#[cfg(test)]
pub fn test_wallet(balance: i64, margin: i64) -> wallet::Model {
    wallet::Model {
        id: 7,
        user_id: 3,
        kind: "live".into(),
        currency: "USD".into(),
        balance,
        margin,
        profit: 0,
        version: 0,
        last_hash: GENESIS_HASH.into(),
        created_at: now(),
        updated_at: now(),
    }
}

#[cfg(test)]
mod tests {
    use super::test_wallet as wallet;
    use super::*;

    fn posting(w: &mut wallet::Model, deltas: Deltas) -> Posting<'_> {
        Posting {
            wallet: w,
            deltas,
            kind: kinds::DEPOSIT,
            reference: None,
            metadata: None,
        }
    }

    #[test]
    fn prepare_computes_values_after_and_a_chained_hash() {
        let mut w = wallet(100, 0);
        let at = now();
        let op = Uuid::new_v4();
        let e = prepare(&posting(&mut w, Deltas::balance(50)), op, at).unwrap();
        assert_eq!(
            (e.balance_after, e.margin_after, e.profit_after),
            (150, 0, 0)
        );
        assert_eq!(e.hash, chain_hash(GENESIS_HASH, &e));
        assert_eq!(e.hash.len(), 64);
    }

    #[test]
    fn invariants_are_enforced() {
        let mut w = wallet(100, 40);
        let at = now();
        let op = Uuid::new_v4();
        // balance may not drop below margin
        assert!(matches!(
            prepare(&posting(&mut w, Deltas::balance(-61)), op, at),
            Err(DomainError::InsufficientFunds { .. })
        ));
        assert!(prepare(&posting(&mut w, Deltas::balance(-60)), op, at).is_ok());
        // margin may not go negative
        let d = Deltas {
            margin: -41,
            ..Deltas::default()
        };
        assert!(prepare(&posting(&mut w, d), op, at).is_err());
        // overflow is refused, never wrapped
        let mut full = wallet(i64::MAX, 0);
        assert!(matches!(
            prepare(&posting(&mut full, Deltas::balance(1)), op, at),
            Err(DomainError::BalanceLimit)
        ));
    }

    #[test]
    fn any_change_to_an_entry_changes_its_hash() {
        let mut w = wallet(100, 0);
        let e = prepare(&posting(&mut w, Deltas::balance(5)), Uuid::new_v4(), now()).unwrap();
        let mut tampered = e.clone();
        tampered.balance_after += 1;
        assert_ne!(chain_hash(GENESIS_HASH, &tampered), e.hash);
        let mut tampered = e.clone();
        tampered.reference = Some("x".into());
        assert_ne!(chain_hash(GENESIS_HASH, &tampered), e.hash);
        // and the chain depends on the previous hash
        assert_ne!(chain_hash(&e.hash, &e), e.hash);
    }

    #[test]
    fn none_and_empty_reference_hash_differently() {
        let mut w = wallet(100, 0);
        let mut a = prepare(&posting(&mut w, Deltas::balance(5)), Uuid::new_v4(), now()).unwrap();
        let h1 = chain_hash(GENESIS_HASH, &a);
        a.reference = Some(String::new());
        assert_ne!(h1, chain_hash(GENESIS_HASH, &a));
    }
}
