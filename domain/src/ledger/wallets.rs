//! Wallet use cases: deposit, withdraw, transfer (each a `Command` run inside
//! the caller's transaction, see `tx` and `idempotency`), the wallet locks
//! they take, and the wallet reads.
//!
//! Taking a wallet's lock also releases its expired holds (`holds`), in the
//! same transaction: whatever a write then checks against the free balance
//! counts only unexpired holds.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use infra::entities::{journal_entry, wallet};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Select,
};
use uuid::Uuid;

use crate::error::{DomainError, DomainResult};
use crate::group::Plan;
use crate::ledger::books::Books;
use crate::ledger::financial::{self, Deltas, Leg, Posting};
use crate::ledger::holds::{WalletWithExpired, release_expired, wallets_with_expired};
use crate::ledger::journal::kinds;
use crate::ledger::users::require_user;
use crate::locks::fencing::{Fence, check_optional};
use crate::money::Amount;
use crate::sql::statement;
use crate::{Command, Ledger};

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
    /// Reserved by unexpired holds.
    pub held: i64,
    pub profit: i64,
    pub updated_at: DateTime<Utc>,
}

impl WalletView {
    pub fn free_margin(&self) -> i64 {
        self.balance - self.margin - self.held
    }

    /// The wallet as it reads: holds that expired but were not released
    /// yet (nothing has written to the wallet since) no longer count.
    pub fn of(w: &wallet::Model, expired_held: i64) -> Self {
        Self {
            held: w.held - expired_held,
            ..Self::from(w)
        }
    }
}

impl From<&wallet::Model> for WalletView {
    fn from(w: &wallet::Model) -> Self {
        Self {
            kind: w.kind.clone(),
            currency: w.currency.clone(),
            balance: w.balance,
            margin: w.margin,
            held: w.held,
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
    /// Runs only behind this lock's fencing token (`Lock-Token`).
    pub fence: Option<Fence>,
}

#[derive(Debug, Clone)]
pub struct TransferRequest {
    pub from_user_id: i64,
    pub to_user_id: i64,
    pub wallet: WalletKind,
    pub amount: Amount,
    /// Runs only behind this lock's fencing token (`Lock-Token`).
    pub fence: Option<Fence>,
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

/// What a withdrawal, a transfer or a new hold may take: the balance less
/// the margin of open orders and the funds active holds reserve.
pub fn free_balance(wallet: &wallet::Model) -> i64 {
    wallet.balance - wallet.margin - wallet.held
}

fn insufficient(wallet: &wallet::Model, amount: Amount) -> DomainError {
    DomainError::InsufficientFunds {
        available: free_balance(wallet),
        requested: amount.units(),
    }
}

fn locking<S: QuerySelect>(query: S, backend: DbBackend) -> S {
    match backend {
        // SQLite has no row locks: the transaction took the database write
        // lock at BEGIN (see `tx`), which serializes writers instead.
        DbBackend::Sqlite => query,
        _ => query.lock_exclusive(),
    }
}

/// A user's wallet of one kind.
fn wallet_of(user_id: i64, kind: WalletKind) -> Select<wallet::Entity> {
    wallet::Entity::find()
        .filter(wallet::Column::UserId.eq(user_id))
        .filter(wallet::Column::Kind.eq(kind.as_str()))
}

/// The id of a user's wallet of one kind; an unknown user is 404.
pub async fn wallet_id<C: ConnectionTrait>(
    conn: &C,
    user_id: i64,
    kind: WalletKind,
) -> DomainResult<i64> {
    wallet_of(user_id, kind)
        .select_only()
        .column(wallet::Column::Id)
        .into_tuple()
        .one(conn)
        .await?
        .ok_or(DomainError::NotFound("user"))
}

/// Locks one user's wallet of one kind (`SELECT … FOR UPDATE`) and
/// releases its expired holds.
pub async fn lock_wallet(
    txn: &DatabaseTransaction,
    user_id: i64,
    kind: WalletKind,
) -> DomainResult<wallet::Model> {
    let mut wallet = locking(wallet_of(user_id, kind), txn.get_database_backend())
        .one(txn)
        .await?
        .ok_or(DomainError::NotFound("user"))?;
    release_expired(txn, &mut wallet).await?;
    Ok(wallet)
}

/// Locks several users' wallets of one kind, always in ascending wallet id
/// order (one statement: PostgreSQL sorts, then locks rows as it returns
/// them), so that two transactions touching the same wallets never wait on
/// each other in a cycle, and releases their expired holds. Returns them in
/// that order; missing ones are absent.
pub async fn lock_wallets_in_order(
    txn: &DatabaseTransaction,
    user_ids: &[i64],
    kind: WalletKind,
) -> DomainResult<Vec<wallet::Model>> {
    let query = wallet::Entity::find()
        .filter(wallet::Column::UserId.is_in(user_ids.iter().copied()))
        .filter(wallet::Column::Kind.eq(kind.as_str()))
        .order_by_asc(wallet::Column::Id);
    let mut wallets = locking(query, txn.get_database_backend()).all(txn).await?;
    for wallet in &mut wallets {
        release_expired(txn, wallet).await?;
    }
    Ok(wallets)
}

/// Locks these wallets in ascending id order, as they are: for the hold
/// cleanup, which releases their expired holds itself and counts them.
pub async fn lock_wallets_by_id(
    txn: &DatabaseTransaction,
    wallet_ids: &[i64],
) -> DomainResult<Vec<wallet::Model>> {
    let query = wallet::Entity::find()
        .filter(wallet::Column::Id.is_in(wallet_ids.iter().copied()))
        .order_by_asc(wallet::Column::Id);
    Ok(locking(query, txn.get_database_backend()).all(txn).await?)
}

/// Locks the wallets of several writes at once (a group commit), in
/// ascending id order in one statement, like `lock_wallets_in_order`, and
/// returns them as they are.
pub async fn lock_wallets_of(
    txn: &DatabaseTransaction,
    wallets: &[(i64, WalletKind)],
) -> DomainResult<Vec<wallet::Model>> {
    let backend = txn.get_database_backend();
    match wallets {
        [] => return Ok(Vec::new()),
        // One wallet (a hot wallet's group, most groups of orders) as
        // `lock_wallet` reads it: plain values, no arrays to build and
        // unnest.
        [(user_id, kind)] => {
            return Ok(locking(wallet_of(*user_id, *kind), backend)
                .all(txn)
                .await?);
        }
        _ => {}
    }
    if backend == DbBackend::Postgres {
        // The pairs as two arrays: the same text whatever their number, and
        // one plan whatever it is (see `sql`).
        let users: Vec<i64> = wallets.iter().map(|(u, _)| *u).collect();
        let kinds: Vec<String> = wallets.iter().map(|(_, k)| k.as_str().to_owned()).collect();
        let sql = "SELECT * FROM wallets WHERE (user_id, kind) IN \
             (SELECT * FROM unnest((SELECT ?::bigint[]), (SELECT ?::text[]))) \
             ORDER BY id FOR UPDATE";
        let query = statement(DbBackend::Postgres, sql, vec![users.into(), kinds.into()]);
        return Ok(wallet::Entity::find().from_raw_sql(query).all(txn).await?);
    }
    let mut of_kind = Condition::any();
    for kind in [WalletKind::Live, WalletKind::Demo] {
        let users: Vec<i64> = wallets
            .iter()
            .filter(|(_, k)| *k == kind)
            .map(|(u, _)| *u)
            .collect();
        if !users.is_empty() {
            of_kind = of_kind.add(
                Condition::all()
                    .add(wallet::Column::Kind.eq(kind.as_str()))
                    .add(wallet::Column::UserId.is_in(users)),
            );
        }
    }
    let query = wallet::Entity::find()
        .filter(of_kind)
        .order_by_asc(wallet::Column::Id);
    Ok(locking(query, backend).all(txn).await?)
}

/// A group's books over the wallets of its writes: locked as
/// `lock_wallets_of` does, their expired holds released.
pub async fn lock_books(
    txn: &DatabaseTransaction,
    wallets: &[(i64, WalletKind)],
) -> DomainResult<Books> {
    let mut locked = lock_wallets_of(txn, wallets).await?;
    for wallet in &mut locked {
        release_expired(txn, wallet).await?;
    }
    Books::new(locked)
}

/// The one way a single-wallet write takes its lock: within the caller's
/// (retried) transaction, lock the user's wallet of `kind` and hand it to
/// `op`, which changes it only through `financial`. An unknown user is 404.
pub async fn execute_with_user_lock<T>(
    txn: &DatabaseTransaction,
    user_id: i64,
    kind: WalletKind,
    op: impl AsyncFnOnce(&mut wallet::Model) -> DomainResult<T>,
) -> DomainResult<T> {
    let mut wallet = lock_wallet(txn, user_id, kind).await?;
    op(&mut wallet).await
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// A deposit: money in.
    Credit,
    /// A withdrawal: money out, at most the free margin.
    Debit,
}

/// A deposit or withdrawal: one balance change of one wallet.
struct SingleWalletOperation {
    wallet: (i64, WalletKind),
    amount: Amount,
    direction: Direction,
    reference: Option<String>,
    metadata: Option<serde_json::Value>,
}

impl SingleWalletOperation {
    /// On the wallet locked in this transaction.
    async fn execute(self, txn: &DatabaseTransaction) -> DomainResult<Operation> {
        let (user_id, wallet) = self.wallet;
        execute_with_user_lock(txn, user_id, wallet, async |w| {
            let leg = single_leg(w, self.amount, self.direction)?;
            let before = w.balance;
            let (delta, kind) = (leg.deltas.balance, leg.kind);
            let entry = financial::update_wallet_balance(
                txn,
                w,
                delta,
                kind,
                Uuid::new_v4(),
                self.reference,
                self.metadata,
            )
            .await?;
            Ok(operation_of(&entry, wallet, kind, self.amount, before))
        })
        .await
    }

    /// The same, applied to a group's books.
    fn plan(self, books: &mut Books) -> DomainResult<Operation> {
        let (user_id, wallet) = self.wallet;
        let w = books
            .wallet(user_id, wallet)
            .ok_or(DomainError::NotFound("user"))?;
        let leg = single_leg(w, self.amount, self.direction)?
            .reference(self.reference)
            .metadata(self.metadata);
        let (before, entries) =
            books.post(self.wallet, Uuid::new_v4(), std::slice::from_ref(&leg))?;
        let entry = entries
            .first()
            .ok_or_else(|| DomainError::unexpected("posting produced no entry"))?;
        Ok(operation_of(
            entry,
            wallet,
            leg.kind,
            self.amount,
            before.balance,
        ))
    }
}

/// The leg of a deposit or withdrawal on `w`: a withdrawal may take at most
/// the free margin.
fn single_leg(w: &wallet::Model, amount: Amount, direction: Direction) -> DomainResult<Leg> {
    Ok(match direction {
        Direction::Credit => Leg::new(kinds::DEPOSIT, Deltas::balance(amount.units())),
        Direction::Debit => {
            check_withdrawable(w, amount)?;
            Leg::new(kinds::WITHDRAWAL, Deltas::balance(-amount.units()))
        }
    })
}

/// What one balance change of `amount` did, from its journal entry.
fn operation_of(
    entry: &journal_entry::Model,
    wallet: WalletKind,
    kind: &'static str,
    amount: Amount,
    balance_before: i64,
) -> Operation {
    Operation {
        operation_id: entry.operation_id,
        user_id: entry.user_id,
        wallet,
        kind,
        amount: amount.units(),
        balance_before,
        balance_after: entry.balance_after,
        created_at: entry.created_at,
    }
}

impl Command for Deposit {
    type Output = Operation;
    const NAME: &'static str = "deposit";

    /// A credit needs nothing but its wallet.
    fn planned(&self) -> bool {
        true
    }

    fn plan(&self, _: &Ledger, plan: &mut Plan) -> DomainResult<Operation> {
        self.operation().plan(&mut plan.books)
    }

    fn wallets(&self) -> Option<Vec<(i64, WalletKind)>> {
        Some(vec![(self.user_id, self.wallet)])
    }

    async fn execute(&self, _: &Ledger, txn: &DatabaseTransaction) -> DomainResult<Operation> {
        self.operation().execute(txn).await
    }
}

impl Deposit {
    fn operation(&self) -> SingleWalletOperation {
        SingleWalletOperation {
            wallet: (self.user_id, self.wallet),
            amount: self.amount,
            direction: Direction::Credit,
            reference: self.reference.clone(),
            metadata: metadata(&[("payment_method", &self.payment_method)]),
        }
    }
}

/// A withdrawal may take at most the free margin (`balance - margin -
/// held`); so may a transfer and a new hold.
pub fn check_withdrawable(wallet: &wallet::Model, amount: Amount) -> DomainResult<()> {
    if amount.units() > free_balance(wallet) {
        return Err(insufficient(wallet, amount));
    }
    Ok(())
}

impl Command for Withdrawal {
    type Output = Operation;
    const NAME: &'static str = "withdraw";

    /// Behind a fencing token it must check the token in the database.
    fn planned(&self) -> bool {
        self.fence.is_none()
    }

    fn plan(&self, _: &Ledger, plan: &mut Plan) -> DomainResult<Operation> {
        self.operation().plan(&mut plan.books)
    }

    fn wallets(&self) -> Option<Vec<(i64, WalletKind)>> {
        Some(vec![(self.user_id, self.wallet)])
    }

    async fn execute(&self, _: &Ledger, txn: &DatabaseTransaction) -> DomainResult<Operation> {
        check_optional(self.fence.as_ref(), txn).await?;
        self.operation().execute(txn).await
    }
}

impl Withdrawal {
    fn operation(&self) -> SingleWalletOperation {
        SingleWalletOperation {
            wallet: (self.user_id, self.wallet),
            amount: self.amount,
            direction: Direction::Debit,
            reference: None,
            metadata: metadata(&[("destination", &self.destination)]),
        }
    }
}

pub fn check_distinct_accounts(from: i64, to: i64) -> DomainResult<()> {
    if from == to {
        return Err(DomainError::SameAccount);
    }
    Ok(())
}

impl Command for TransferRequest {
    type Output = Transfer;
    const NAME: &'static str = "transfer";

    fn wallets(&self) -> Option<Vec<(i64, WalletKind)>> {
        Some(vec![
            (self.from_user_id, self.wallet),
            (self.to_user_id, self.wallet),
        ])
    }

    async fn execute(&self, _: &Ledger, txn: &DatabaseTransaction) -> DomainResult<Transfer> {
        transfer(txn, self).await
    }
}

async fn transfer(txn: &DatabaseTransaction, cmd: &TransferRequest) -> DomainResult<Transfer> {
    check_distinct_accounts(cmd.from_user_id, cmd.to_user_id)?;
    check_optional(cmd.fence.as_ref(), txn).await?;
    let mut locked =
        lock_wallets_in_order(txn, &[cmd.from_user_id, cmd.to_user_id], cmd.wallet).await?;
    // Two distinct users, so at most two distinct rows, in id order.
    let (from, to) = match locked.as_mut_slice() {
        [a, b] if a.user_id == cmd.from_user_id => (a, b),
        [a, b] => (b, a),
        [only] if only.user_id == cmd.from_user_id => {
            return Err(DomainError::NotFound("recipient"));
        }
        _ => return Err(DomainError::NotFound("user")),
    };
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
            return Err(DomainError::unexpected(
                "transfer produced the wrong entries",
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

impl Ledger {
    /// A user's wallets; an unknown user is 404. Holds count until their
    /// expiry, whether or not they have been released yet.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn wallets(&self, user_id: i64) -> DomainResult<Vec<WalletView>> {
        let conn = &self.db.conn;
        let wallets = match &self.reads {
            Some(reads) => reads.read(user_id).await?,
            None => read_wallets(conn, &[user_id]).await?,
        };
        if wallets.is_empty() {
            require_user(conn, user_id).await?;
        }
        Ok(wallets.into_iter().map(|(_, w)| w).collect())
    }

    /// A user's journal, newest first.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn journal(
        &self,
        user_id: i64,
        wallet: Option<WalletKind>,
        limit: u64,
        before_id: Option<i64>,
    ) -> DomainResult<crate::page::Page<crate::ledger::journal::JournalView>> {
        crate::ledger::journal::list_journal(&self.db.conn, user_id, wallet, limit, before_id).await
    }
}

/// The wallets of these users as they read, each with its user's id, in
/// wallet id order: one statement (and one more for wallets with holds,
/// see [`wallet_views`]).
pub async fn read_wallets<C: ConnectionTrait>(
    conn: &C,
    user_ids: &[i64],
) -> DomainResult<Vec<(i64, WalletView)>> {
    let wallets = wallet::Entity::find()
        .filter(wallet::Column::UserId.is_in(user_ids.iter().copied()))
        .order_by_asc(wallet::Column::Id)
        .all(conn)
        .await?;
    let views = wallet_views(conn, &wallets).await?;
    Ok(wallets.iter().map(|w| w.user_id).zip(views).collect())
}

/// The wallets as they read (see [`WalletView::of`]). Only a wallet with
/// held funds can have an expired hold, so most reads cost no extra query;
/// one with held funds is read again with its expired holds in one
/// statement, so that its `held` and what is subtracted from it are of one
/// moment.
pub async fn wallet_views<C: ConnectionTrait>(
    conn: &C,
    wallets: &[wallet::Model],
) -> DomainResult<Vec<WalletView>> {
    let holding: Vec<i64> = wallets
        .iter()
        .filter(|w| w.held > 0)
        .map(|w| w.id)
        .collect();
    let fresh: HashMap<i64, WalletWithExpired> = wallets_with_expired(conn, &holding)
        .await?
        .into_iter()
        .map(|w| (w.wallet.id, w))
        .collect();
    Ok(wallets
        .iter()
        .map(|w| match fresh.get(&w.id) {
            Some(f) => WalletView::of(&f.wallet, f.expired_held),
            None => WalletView::of(w, 0),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::ledger::financial::test_wallet as wallet;

    /// Planned writes (group commit) follow the rules of the ones run in the
    /// database: a withdrawal takes at most the free margin as the books
    /// stand after the writes before it, a refused one changes nothing, and
    /// the balances answered are the ones each write saw.
    #[test]
    fn planned_writes_follow_the_same_rules_on_the_books() {
        let held = wallet::Model {
            held: 20,
            ..wallet(100, 30)
        };
        let mut books = Books::new(vec![held]).unwrap();
        let units = |u| Amount::from_units(u).unwrap();
        let withdraw = |u| Withdrawal {
            user_id: 3,
            wallet: WalletKind::Live,
            amount: units(u),
            destination: None,
            fence: None,
        };
        let deposit = |user_id, u| Deposit {
            user_id,
            wallet: WalletKind::Live,
            amount: units(u),
            payment_method: None,
            reference: None,
        };
        // free: 100 - 30 margin - 20 held
        match withdraw(51).operation().plan(&mut books) {
            Err(DomainError::InsufficientFunds {
                available,
                requested,
            }) => assert_eq!((available, requested), (50, 51)),
            other => panic!("expected insufficient funds, got {other:?}"),
        }
        let taken = withdraw(50).operation().plan(&mut books).unwrap();
        assert_eq!((taken.balance_before, taken.balance_after), (100, 50));
        assert!(withdraw(1).operation().plan(&mut books).is_err());
        let added = deposit(3, 7).operation().plan(&mut books).unwrap();
        assert_eq!((added.balance_before, added.balance_after), (50, 57));
        assert_eq!(
            withdraw(7)
                .operation()
                .plan(&mut books)
                .unwrap()
                .balance_after,
            50
        );
        assert!(matches!(
            deposit(4, 1).operation().plan(&mut books),
            Err(DomainError::NotFound("user"))
        ));
        // behind a fencing token a withdrawal runs in the database
        assert!(withdraw(1).planned() && deposit(3, 1).planned());
        let fenced = Withdrawal {
            fence: Some(Fence {
                lock: crate::locks::fencing::LockToken {
                    lock_id: "lk_1".into(),
                    fencing_token: 1,
                },
                owner: "user:3".into(),
            }),
            ..withdraw(1)
        };
        assert!(!fenced.planned());
    }

    #[test]
    fn withdrawal_is_limited_by_free_margin() {
        let w = wallet(1_000, 400);
        assert!(check_withdrawable(&w, Amount::from_units(600).unwrap()).is_ok());
        match check_withdrawable(&w, Amount::from_units(601).unwrap()) {
            Err(DomainError::InsufficientFunds {
                available,
                requested,
            }) => {
                assert_eq!(available, 600);
                assert_eq!(requested, 601);
            }
            other => panic!("expected insufficient funds, got {other:?}"),
        }
    }

    #[test]
    fn held_funds_are_not_free() {
        let w = wallet::Model {
            held: 250,
            ..wallet(1_000, 400)
        };
        assert_eq!(free_balance(&w), 350);
        assert!(check_withdrawable(&w, Amount::from_units(350).unwrap()).is_ok());
        assert!(matches!(
            check_withdrawable(&w, Amount::from_units(351).unwrap()),
            Err(DomainError::InsufficientFunds {
                available: 350,
                requested: 351
            })
        ));
        let view = WalletView::of(&w, 100);
        assert_eq!((view.held, view.free_margin()), (150, 450));
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
    fn wallet_kinds_parse_strictly() {
        assert_eq!(WalletKind::parse("live"), Some(WalletKind::Live));
        assert_eq!(WalletKind::parse("demo"), Some(WalletKind::Demo));
        assert_eq!(WalletKind::parse("LIVE"), None);
    }
}
