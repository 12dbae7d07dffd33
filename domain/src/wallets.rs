//! Wallet use cases: deposit, withdraw, transfer, and the reads. Each write
//! runs inside the caller's transaction (see `tx` and `idempotency`).

use chrono::{DateTime, Utc};
use infra::Backend;
use infra::entities::{journal_entry, user, wallet};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Select,
};
use uuid::Uuid;

use crate::error::{DomainError, DomainResult};
use crate::financial::{self, Deltas, Leg, Posting, kinds};
use crate::money::{Amount, format_units};
use crate::tx::{lock_wallet, lock_wallets_in_order};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WalletKind {
    Live,
    Demo,
}

impl WalletKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Demo => "demo",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "live" => Some(Self::Live),
            "demo" => Some(Self::Demo),
            _ => None,
        }
    }
}

/// A wallet as the outside sees it. Amounts are minor units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletView {
    pub kind: String,
    pub currency: String,
    pub balance: i64,
    pub margin: i64,
    pub profit: i64,
    pub updated_at: DateTime<Utc>,
}

impl WalletView {
    pub fn free_margin(&self) -> i64 {
        self.balance - self.margin
    }
}

impl From<&wallet::Model> for WalletView {
    fn from(w: &wallet::Model) -> Self {
        Self {
            kind: w.kind.clone(),
            currency: w.currency.clone(),
            balance: w.balance,
            margin: w.margin,
            profit: w.profit,
            updated_at: w.updated_at,
        }
    }
}

/// The result of a deposit or a withdrawal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub operation_id: Uuid,
    pub user_id: i64,
    pub wallet: WalletKind,
    pub kind: &'static str,
    pub amount: i64,
    pub balance_before: i64,
    pub balance_after: i64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferSide {
    pub user_id: i64,
    pub balance_before: i64,
    pub balance_after: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub operation_id: Uuid,
    pub wallet: WalletKind,
    pub amount: i64,
    pub from: TransferSide,
    pub to: TransferSide,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct Deposit {
    pub user_id: i64,
    pub wallet: WalletKind,
    pub amount: Amount,
    pub payment_method: Option<String>,
    pub reference: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Withdrawal {
    pub user_id: i64,
    pub wallet: WalletKind,
    pub amount: Amount,
    pub destination: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TransferRequest {
    pub from_user_id: i64,
    pub to_user_id: i64,
    pub wallet: WalletKind,
    pub amount: Amount,
}

fn metadata(pairs: &[(&str, &Option<String>)]) -> Option<serde_json::Value> {
    let map: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .filter_map(|(k, v)| {
            v.as_ref()
                .map(|v| ((*k).to_owned(), serde_json::Value::String(v.clone())))
        })
        .collect();
    (!map.is_empty()).then_some(serde_json::Value::Object(map))
}

fn insufficient(wallet: &wallet::Model, amount: Amount) -> DomainError {
    DomainError::InsufficientFunds {
        available: format_units(wallet.balance - wallet.margin),
        requested: amount.to_string(),
    }
}

pub async fn lock_user_wallet(
    txn: &DatabaseTransaction,
    backend: Backend,
    user_id: i64,
    kind: WalletKind,
) -> DomainResult<wallet::Model> {
    lock_wallet(txn, backend, user_id, kind)
        .await
        .map_err(|e| match e {
            DomainError::NotFound(_) => DomainError::NotFound("user"),
            e => e,
        })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// A deposit: money in.
    Credit,
    /// A withdrawal: money out, at most the free margin.
    Debit,
}

/// A deposit or withdrawal: one balance change on one locked wallet.
async fn single_wallet_operation(
    txn: &DatabaseTransaction,
    backend: Backend,
    target: (i64, WalletKind),
    amount: Amount,
    direction: Direction,
    reference: Option<String>,
    metadata: Option<serde_json::Value>,
) -> DomainResult<Operation> {
    let (user_id, wallet) = target;
    let mut w = lock_user_wallet(txn, backend, user_id, wallet).await?;
    let (delta, kind) = match direction {
        Direction::Credit => (amount.units(), kinds::DEPOSIT),
        Direction::Debit => {
            check_withdrawable(&w, amount)?;
            (-amount.units(), kinds::WITHDRAWAL)
        }
    };
    let before = w.balance;
    let operation_id = Uuid::new_v4();
    let entry = financial::update_wallet_balance(
        txn,
        &mut w,
        delta,
        kind,
        operation_id,
        reference,
        metadata,
    )
    .await?;
    Ok(Operation {
        operation_id,
        user_id,
        wallet,
        kind,
        amount: amount.units(),
        balance_before: before,
        balance_after: entry.balance_after,
        created_at: entry.created_at,
    })
}

pub async fn deposit(
    txn: &DatabaseTransaction,
    backend: Backend,
    cmd: &Deposit,
) -> DomainResult<Operation> {
    let metadata = metadata(&[("payment_method", &cmd.payment_method)]);
    single_wallet_operation(
        txn,
        backend,
        (cmd.user_id, cmd.wallet),
        cmd.amount,
        Direction::Credit,
        cmd.reference.clone(),
        metadata,
    )
    .await
}

/// A withdrawal may take at most the free margin (`balance - margin`).
pub fn check_withdrawable(wallet: &wallet::Model, amount: Amount) -> DomainResult<()> {
    if amount.units() > wallet.balance - wallet.margin {
        return Err(insufficient(wallet, amount));
    }
    Ok(())
}

pub async fn withdraw(
    txn: &DatabaseTransaction,
    backend: Backend,
    cmd: &Withdrawal,
) -> DomainResult<Operation> {
    let metadata = metadata(&[("destination", &cmd.destination)]);
    single_wallet_operation(
        txn,
        backend,
        (cmd.user_id, cmd.wallet),
        cmd.amount,
        Direction::Debit,
        None,
        metadata,
    )
    .await
}

pub fn check_distinct_accounts(from: i64, to: i64) -> DomainResult<()> {
    if from == to {
        return Err(DomainError::SameAccount);
    }
    Ok(())
}

pub async fn transfer(
    txn: &DatabaseTransaction,
    backend: Backend,
    cmd: &TransferRequest,
) -> DomainResult<Transfer> {
    check_distinct_accounts(cmd.from_user_id, cmd.to_user_id)?;
    let mut locked = lock_wallets_in_order(
        txn,
        backend,
        &[cmd.from_user_id, cmd.to_user_id],
        cmd.wallet,
    )
    .await?;
    let from_pos = locked.iter().position(|w| w.user_id == cmd.from_user_id);
    let to_pos = locked.iter().position(|w| w.user_id == cmd.to_user_id);
    let (Some(from_pos), Some(to_pos)) = (from_pos, to_pos) else {
        return Err(DomainError::NotFound(if from_pos.is_none() {
            "user"
        } else {
            "recipient"
        }));
    };
    // Two distinct users, so two distinct rows: split the vector to borrow both.
    let (first, second) = locked.split_at_mut(1);
    let (from, to) = if from_pos == 0 {
        (&mut first[0], &mut second[0])
    } else {
        (&mut second[0], &mut first[0])
    };
    debug_assert_eq!(to_pos, 1 - from_pos);
    check_withdrawable(from, cmd.amount)?;
    let (from_before, to_before) = (from.balance, to.balance);
    let operation_id = Uuid::new_v4();
    let amount = cmd.amount.units();
    let from_meta = serde_json::json!({ "counterparty_user_id": cmd.to_user_id });
    let to_meta = serde_json::json!({ "counterparty_user_id": cmd.from_user_id });
    let entries = financial::post(
        txn,
        operation_id,
        vec![
            Posting::new(
                from,
                Leg::new(kinds::TRANSFER_OUT, Deltas::balance(-amount)).metadata(Some(from_meta)),
            ),
            Posting::new(
                to,
                Leg::new(kinds::TRANSFER_IN, Deltas::balance(amount)).metadata(Some(to_meta)),
            ),
        ],
    )
    .await?;
    let (out, inn) = match entries.as_slice() {
        [out, inn] => (out, inn),
        _ => {
            return Err(DomainError::Unexpected(
                "transfer produced the wrong entries".into(),
            ));
        }
    };
    Ok(Transfer {
        operation_id,
        wallet: cmd.wallet,
        amount,
        from: TransferSide {
            user_id: cmd.from_user_id,
            balance_before: from_before,
            balance_after: out.balance_after,
        },
        to: TransferSide {
            user_id: cmd.to_user_id,
            balance_before: to_before,
            balance_after: inn.balance_after,
        },
        created_at: out.created_at,
    })
}

pub async fn user_exists<C: ConnectionTrait>(conn: &C, user_id: i64) -> DomainResult<bool> {
    Ok(user::Entity::find_by_id(user_id).one(conn).await?.is_some())
}

pub async fn list_wallets<C: ConnectionTrait>(
    conn: &C,
    user_id: i64,
) -> DomainResult<Vec<WalletView>> {
    let wallets = wallet::Entity::find()
        .filter(wallet::Column::UserId.eq(user_id))
        .order_by_asc(wallet::Column::Id)
        .all(conn)
        .await?;
    if wallets.is_empty() && !user_exists(conn, user_id).await? {
        return Err(DomainError::NotFound("user"));
    }
    Ok(wallets.iter().map(WalletView::from).collect())
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

/// A page of a list, newest first, with the cursor for the next page.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_before_id: Option<i64>,
}

/// Fetches `limit + 1` rows so that the cursor is offered only when another
/// page really exists.
fn paginate<T>(mut rows: Vec<T>, limit: u64, id: impl Fn(&T) -> i64) -> Page<T> {
    let more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    let next_before_id = if more { rows.last().map(&id) } else { None };
    Page {
        items: rows,
        next_before_id,
    }
}

impl<T> Page<T> {
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_before_id: self.next_before_id,
        }
    }
}

/// One page of a user's rows of `query`, newest first by `id`: at most
/// `limit` rows below `before_id`, and the next page's cursor when there is
/// one. An unknown user is 404, not an empty page.
pub async fn newest_first<C, E>(
    conn: &C,
    user_id: i64,
    mut query: Select<E>,
    id: E::Column,
    limit: u64,
    before_id: Option<i64>,
    id_of: impl Fn(&E::Model) -> i64,
) -> DomainResult<Page<E::Model>>
where
    C: ConnectionTrait,
    E: EntityTrait,
{
    if !user_exists(conn, user_id).await? {
        return Err(DomainError::NotFound("user"));
    }
    if let Some(before) = before_id {
        query = query.filter(id.lt(before));
    }
    let rows = query.order_by_desc(id).limit(limit + 1).all(conn).await?;
    Ok(paginate(rows, limit, id_of))
}

pub async fn list_journal<C: ConnectionTrait>(
    conn: &C,
    user_id: i64,
    wallet: Option<WalletKind>,
    limit: u64,
    before_id: Option<i64>,
) -> DomainResult<Page<JournalView>> {
    let mut query = journal_entry::Entity::find().filter(journal_entry::Column::UserId.eq(user_id));
    if let Some(kind) = wallet {
        query = query.filter(journal_entry::Column::WalletKind.eq(kind.as_str()));
    }
    let page = newest_first(
        conn,
        user_id,
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

    use crate::financial::test_wallet as wallet;

    #[test]
    fn withdrawal_is_limited_by_free_margin() {
        let w = wallet(1_000, 400);
        assert!(check_withdrawable(&w, Amount::from_units(600).unwrap()).is_ok());
        match check_withdrawable(&w, Amount::from_units(601).unwrap()) {
            Err(DomainError::InsufficientFunds {
                available,
                requested,
            }) => {
                assert_eq!(available, "0.000006");
                assert_eq!(requested, "0.00000601");
            }
            other => panic!("expected insufficient funds, got {other:?}"),
        }
    }

    #[test]
    fn a_transfer_needs_two_accounts() {
        assert!(matches!(
            check_distinct_accounts(4, 4),
            Err(DomainError::SameAccount)
        ));
        assert!(check_distinct_accounts(4, 5).is_ok());
    }

    #[test]
    fn pagination_offers_a_cursor_only_when_more_exist() {
        let page = paginate(vec![9, 8, 7], 2, |x| *x);
        assert_eq!(page.items, vec![9, 8]);
        assert_eq!(page.next_before_id, Some(8));
        let page = paginate(vec![9, 8], 2, |x| *x);
        assert_eq!(page.next_before_id, None);
    }

    #[test]
    fn wallet_kinds_parse_strictly() {
        assert_eq!(WalletKind::parse("live"), Some(WalletKind::Live));
        assert_eq!(WalletKind::parse("demo"), Some(WalletKind::Demo));
        assert_eq!(WalletKind::parse("LIVE"), None);
    }
}
