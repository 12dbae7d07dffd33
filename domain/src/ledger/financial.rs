//! The FinancialService of the design: the only code that changes a
//! wallet's balance, margin, held funds or profit (`post`, and its two shapes
//! `update_wallet_balance` and `perform_combined_operation`). Each posting applies its deltas to a locked wallet, enforces the
//! invariants, appends a hash-chained journal entry and logs one `financial`
//! event with the old and new values. All postings of an operation are
//! written in the caller's transaction: all of them or none.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use infra::entities::{journal_entry, wallet};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::NotSet, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter,
};
use uuid::Uuid;

use crate::clock::now;
use crate::error::{DomainError, DomainResult};
use crate::ledger::journal::chain_hash;
use crate::money::format_units;
use crate::sql::{Part, insert_json, json_rows};

/// Minor-unit changes applied together under one lock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deltas {
    pub balance: i64,
    pub margin: i64,
    pub profit: i64,
    /// Funds reserved by holds (see `holds`).
    pub held: i64,
}

impl Deltas {
    pub fn balance(delta: i64) -> Self {
        Self {
            balance: delta,
            ..Self::default()
        }
    }

    pub fn held(delta: i64) -> Self {
        Self {
            held: delta,
            ..Self::default()
        }
    }
}

/// One journaled change: its kind, deltas and annotations.
#[derive(Debug, Clone)]
pub struct Leg {
    pub kind: &'static str,
    pub deltas: Deltas,
    pub reference: Option<String>,
    pub metadata: Option<serde_json::Value>,
}

impl Leg {
    pub fn new(kind: &'static str, deltas: Deltas) -> Self {
        Self {
            kind,
            deltas,
            reference: None,
            metadata: None,
        }
    }

    pub fn reference(mut self, reference: Option<String>) -> Self {
        self.reference = reference;
        self
    }

    pub fn metadata(mut self, metadata: Option<serde_json::Value>) -> Self {
        self.metadata = metadata;
        self
    }
}

/// The changes of one operation to one locked wallet, applied in order; each
/// leg becomes one journal entry and must leave the wallet valid.
#[derive(Debug)]
pub struct Posting<'w> {
    pub wallet: &'w mut wallet::Model,
    pub legs: Vec<Leg>,
}

impl<'w> Posting<'w> {
    pub fn new(wallet: &'w mut wallet::Model, leg: Leg) -> Self {
        Self {
            wallet,
            legs: vec![leg],
        }
    }
}

fn apply(current: i64, delta: i64) -> DomainResult<i64> {
    current.checked_add(delta).ok_or(DomainError::BalanceLimit)
}

/// Computes the journal entry of one leg applied to `w` (the wallet as the
/// previous leg left it), refusing anything that would break `balance >= 0`,
/// `margin >= 0`, `held >= 0` or `balance >= margin + held`. Pure: nothing is
/// written.
pub fn prepare(
    w: &wallet::Model,
    leg: &Leg,
    operation_id: Uuid,
    at: DateTime<Utc>,
) -> DomainResult<journal_entry::Model> {
    let d = leg.deltas;
    let balance = apply(w.balance, d.balance)?;
    let margin = apply(w.margin, d.margin)?;
    let profit = apply(w.profit, d.profit)?;
    let held = apply(w.held, d.held)?;
    let wide = i128::from;
    if balance < 0 || margin < 0 || held < 0 || wide(balance) < wide(margin) + wide(held) {
        let requested = wide(d.margin) + wide(d.held) - wide(d.balance);
        return Err(DomainError::InsufficientFunds {
            available: w.balance - w.margin - w.held,
            requested: i64::try_from(requested.max(0)).unwrap_or(i64::MAX),
        });
    }
    let mut entry = journal_entry::Model {
        id: 0,
        operation_id,
        wallet_id: w.id,
        user_id: w.user_id,
        wallet_kind: w.kind.clone(),
        kind: leg.kind.to_owned(),
        balance_delta: d.balance,
        margin_delta: d.margin,
        profit_delta: d.profit,
        balance_after: balance,
        margin_after: margin,
        profit_after: profit,
        held_delta: d.held,
        held_after: held,
        reference: leg.reference.clone(),
        metadata: leg.metadata.as_ref().map(|m| m.to_string()),
        created_at: at,
        hash: String::new(),
    };
    entry.hash = chain_hash(&w.last_hash, &entry);
    Ok(entry)
}

/// Applies `legs` in order to `w` (pure: nothing is written) and returns the
/// wallet as they leave it and their journal entries, or the refusal of the
/// first leg that would break an invariant.
pub fn apply_legs(
    w: &wallet::Model,
    legs: &[Leg],
    operation_id: Uuid,
    at: DateTime<Utc>,
) -> DomainResult<(wallet::Model, Vec<journal_entry::Model>)> {
    let mut next = w.clone();
    let mut entries = Vec::with_capacity(legs.len());
    for leg in legs {
        let entry = prepare(&next, leg, operation_id, at)?;
        next.balance = entry.balance_after;
        next.margin = entry.margin_after;
        next.profit = entry.profit_after;
        next.held = entry.held_after;
        next.last_hash = entry.hash.clone();
        entries.push(entry);
    }
    if !legs.is_empty() {
        next.version += 1;
        next.updated_at = at;
    }
    Ok((next, entries))
}

/// One `financial` event per journal entry, with the old and new values.
pub fn log_entries(entries: &[journal_entry::Model]) {
    for e in entries {
        tracing::info!(
            target: "financial",
            operation_id = %e.operation_id,
            wallet_id = e.wallet_id,
            user_id = e.user_id,
            wallet = %e.wallet_kind,
            kind = %e.kind,
            old_balance = %format_units(e.balance_after - e.balance_delta),
            new_balance = %format_units(e.balance_after),
            old_margin = %format_units(e.margin_after - e.margin_delta),
            new_margin = %format_units(e.margin_after),
            old_profit = %format_units(e.profit_after - e.profit_delta),
            new_profit = %format_units(e.profit_after),
            old_held = %format_units(e.held_after - e.held_delta),
            new_held = %format_units(e.held_after),
            "financial"
        );
    }
}

/// Applies every posting of one operation: per wallet one `UPDATE` (the
/// values its legs leave, guarded by the version read under the lock), then one
/// multi-row journal `INSERT` for all legs of all wallets.
pub async fn post<C: ConnectionTrait>(
    conn: &C,
    operation_id: Uuid,
    postings: Vec<Posting<'_>>,
) -> DomainResult<Vec<journal_entry::Model>> {
    let at = now();
    let mut entries = Vec::new();
    for posting in postings {
        if posting.legs.is_empty() {
            continue;
        }
        let w = posting.wallet;
        let (next, legs) = apply_legs(w, &posting.legs, operation_id, at)?;
        log_entries(&legs);
        entries.extend(legs);
        // Under the lock and the version guard, the values the legs left.
        let updated = wallet::Entity::update_many()
            .col_expr(wallet::Column::Balance, Expr::value(next.balance))
            .col_expr(wallet::Column::Margin, Expr::value(next.margin))
            .col_expr(wallet::Column::Profit, Expr::value(next.profit))
            .col_expr(wallet::Column::Held, Expr::value(next.held))
            .col_expr(wallet::Column::Version, Expr::value(next.version))
            .col_expr(
                wallet::Column::LastHash,
                Expr::value(next.last_hash.clone()),
            )
            .col_expr(wallet::Column::UpdatedAt, Expr::value(at))
            .filter(wallet::Column::Id.eq(w.id))
            .filter(wallet::Column::Version.eq(w.version))
            .exec(conn)
            .await?;
        if updated.rows_affected != 1 {
            // The wallet changed under us: the caller did not hold its lock.
            return Err(DomainError::unexpected(format!(
                "wallet {} was not locked for this operation",
                w.id
            )));
        }
        *w = next;
    }
    insert_entries(conn, &entries).await?;
    Ok(entries)
}

/// Appends journal entries, one multi-row `INSERT` (none for no entries).
pub async fn insert_entries<C: ConnectionTrait>(
    conn: &C,
    entries: &[journal_entry::Model],
) -> DomainResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    if conn.get_database_backend() == DbBackend::Postgres {
        conn.execute_raw(entries_part(entries)?.alone()).await?;
        return Ok(());
    }
    // Every column as the entry has it but the id, which the database gives.
    let rows = entries.iter().map(|e| journal_entry::ActiveModel {
        id: NotSet,
        ..e.clone().into()
    });
    journal_entry::Entity::insert_many(rows)
        .exec_without_returning(conn)
        .await?;
    Ok(())
}

/// The journal `INSERT` of these entries on PostgreSQL, rows as one JSON
/// document (`sql`), ids given in the entries' order.
pub fn entries_part(entries: &[journal_entry::Model]) -> DomainResult<Part> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        insert_json(
            "journal_entries",
            &[
                ("operation_id", "uuid"),
                ("wallet_id", "bigint"),
                ("user_id", "bigint"),
                ("wallet_kind", "text"),
                ("kind", "text"),
                ("balance_delta", "bigint"),
                ("margin_delta", "bigint"),
                ("profit_delta", "bigint"),
                ("balance_after", "bigint"),
                ("margin_after", "bigint"),
                ("profit_after", "bigint"),
                ("held_delta", "bigint"),
                ("held_after", "bigint"),
                ("reference", "text"),
                ("metadata", "text"),
                ("created_at", "timestamptz"),
                ("hash", "text"),
            ],
        )
    });
    Ok(Part {
        sql: &SQL,
        values: vec![json_rows(entries)?],
    })
}

/// One locked wallet, any mix of balance, margin and profit changes in one
/// step: the legs are applied in order (each must leave the wallet valid and
/// becomes one journal entry) and written with one `UPDATE`. Legs with no
/// change are skipped.
pub async fn perform_combined_operation<C: ConnectionTrait>(
    conn: &C,
    wallet: &mut wallet::Model,
    operation_id: Uuid,
    legs: Vec<Leg>,
) -> DomainResult<Vec<journal_entry::Model>> {
    let legs = changes(legs);
    post(conn, operation_id, vec![Posting { wallet, legs }]).await
}

/// The legs that change something: a combined operation skips the others.
pub fn changes(legs: Vec<Leg>) -> Vec<Leg> {
    legs.into_iter()
        .filter(|l| l.deltas != Deltas::default())
        .collect()
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
    let leg = Leg::new(kind, Deltas::balance(delta))
        .reference(reference)
        .metadata(metadata);
    let mut entries = post(conn, operation_id, vec![Posting::new(wallet, leg)]).await?;
    entries
        .pop()
        .ok_or_else(|| DomainError::unexpected("posting produced no entry"))
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
        held: 0,
        profit: 0,
        version: 0,
        last_hash: crate::ledger::journal::GENESIS_HASH.into(),
        created_at: now(),
        updated_at: now(),
    }
}

#[cfg(test)]
mod tests {
    use super::test_wallet as wallet;
    use super::*;
    use crate::ledger::journal::{GENESIS_HASH, kinds};

    fn leg(deltas: Deltas) -> Leg {
        Leg::new(kinds::DEPOSIT, deltas)
    }

    #[tokio::test]
    async fn a_posting_writes_its_wallets_and_entries_or_nothing() {
        use crate::ledger::users::{Email, NewUser};
        use crate::ledger::wallets::{WalletKind, lock_wallet};
        use sea_orm::{PaginatorTrait, TransactionTrait};
        let dir = tempfile::tempdir().unwrap();
        let ledger = crate::testing::ledger(&dir).await;
        let conn = &ledger.db.conn;
        let mut ids = Vec::new();
        for email in ["p@x.io", "q@x.io"] {
            let new = NewUser {
                email: Email::parse(email).unwrap(),
                referral_code: None,
            };
            ids.push(ledger.execute(&new).await.unwrap().id);
        }
        let entries_before = journal_entry::Entity::find().count(conn).await.unwrap();
        let txn = conn.begin().await.unwrap();
        let lock = |user_id| lock_wallet(&txn, user_id, WalletKind::Live);
        let (mut p, mut q) = (lock(ids[0]).await.unwrap(), lock(ids[1]).await.unwrap());
        let (p0, q0) = (p.clone(), q.clone());
        // two wallets, one operation: both written, the models follow
        let posted = post(
            &txn,
            Uuid::new_v4(),
            vec![
                Posting::new(&mut p, leg(Deltas::balance(70))),
                Posting::new(&mut q, leg(Deltas::balance(30))),
            ],
        )
        .await
        .unwrap();
        assert_eq!(posted.len(), 2);
        assert_eq!((p.balance, p.version), (p0.balance + 70, p0.version + 1));
        assert_eq!((q.balance, q.version), (q0.balance + 30, q0.version + 1));
        // a wallet not as it was locked (an older version): nothing is
        // written and the model stays as it was
        let mut stale = p0.clone();
        let refused = post(
            &txn,
            Uuid::new_v4(),
            vec![Posting::new(&mut stale, leg(Deltas::balance(1)))],
        )
        .await;
        assert!(matches!(refused, Err(DomainError::Unexpected(..))));
        assert_eq!(stale, p0);
        txn.commit().await.unwrap();
        let entries = journal_entry::Entity::find().count(conn).await.unwrap();
        assert_eq!(entries - entries_before, 2);
        for w in [&p, &q] {
            let stored = wallet::Entity::find_by_id(w.id).one(conn).await.unwrap();
            assert_eq!(stored.as_ref(), Some(w));
        }
    }

    #[test]
    fn prepare_computes_values_after_and_a_chained_hash() {
        let w = wallet(100, 0);
        let at = now();
        let op = Uuid::new_v4();
        let e = prepare(&w, &leg(Deltas::balance(50)), op, at).unwrap();
        assert_eq!(
            (e.balance_after, e.margin_after, e.profit_after),
            (150, 0, 0)
        );
        assert_eq!(e.hash, chain_hash(GENESIS_HASH, &e));
        assert_eq!(e.hash.len(), 64);
    }

    #[test]
    fn invariants_are_enforced() {
        let w = wallet(100, 40);
        let at = now();
        let op = Uuid::new_v4();
        // balance may not drop below margin
        assert!(matches!(
            prepare(&w, &leg(Deltas::balance(-61)), op, at),
            Err(DomainError::InsufficientFunds { .. })
        ));
        assert!(prepare(&w, &leg(Deltas::balance(-60)), op, at).is_ok());
        // margin may not go negative
        let d = Deltas {
            margin: -41,
            ..Deltas::default()
        };
        assert!(prepare(&w, &leg(d), op, at).is_err());
        // overflow is refused, never wrapped
        let full = wallet(i64::MAX, 0);
        assert!(matches!(
            prepare(&full, &leg(Deltas::balance(1)), op, at),
            Err(DomainError::BalanceLimit)
        ));
    }

    #[test]
    fn held_funds_are_backed_by_the_balance_like_margin() {
        let w = wallet::Model {
            held: 300,
            ..wallet(1_000, 400)
        };
        let (op, at) = (Uuid::new_v4(), now());
        // a hold may take the free balance, no more
        let e = prepare(&w, &leg(Deltas::held(300)), op, at).unwrap();
        assert_eq!(
            (e.held_delta, e.held_after, e.balance_after),
            (300, 600, 1_000)
        );
        match prepare(&w, &leg(Deltas::held(301)), op, at) {
            Err(DomainError::InsufficientFunds {
                available,
                requested,
            }) => assert_eq!((available, requested), (300, 301)),
            other => panic!("expected insufficient funds, got {other:?}"),
        }
        // nor may the balance drop below margin plus held
        assert!(prepare(&w, &leg(Deltas::balance(-300)), op, at).is_ok());
        assert!(prepare(&w, &leg(Deltas::balance(-301)), op, at).is_err());
        // held never goes negative
        assert!(prepare(&w, &leg(Deltas::held(-301)), op, at).is_err());
        // a capture takes balance and held together
        let capture = Deltas {
            balance: -300,
            held: -300,
            ..Deltas::default()
        };
        let e = prepare(&w, &leg(capture), op, at).unwrap();
        assert_eq!((e.balance_after, e.held_after), (700, 0));
    }

    #[test]
    fn any_change_to_an_entry_changes_its_hash() {
        let w = wallet(100, 0);
        let e = prepare(&w, &leg(Deltas::balance(5)), Uuid::new_v4(), now()).unwrap();
        let mut tampered = e.clone();
        tampered.balance_after += 1;
        assert_ne!(chain_hash(GENESIS_HASH, &tampered), e.hash);
        let mut tampered = e.clone();
        tampered.reference = Some("x".into());
        assert_ne!(chain_hash(GENESIS_HASH, &tampered), e.hash);
        // and the chain depends on the previous hash
        assert_ne!(chain_hash(&e.hash, &e), e.hash);
    }

    /// A migrated SQLite database holding one user with one live wallet.
    async fn one_wallet() -> (tempfile::TempDir, infra::Database, wallet::Model) {
        use sea_orm::{ActiveModelTrait, Set};
        let dir = tempfile::tempdir().unwrap();
        let db = crate::testing::database(&dir).await;
        let user = infra::entities::user::ActiveModel {
            email: Set("f@x.io".into()),
            account_number: Set("100000000001".into()),
            referral_code: Set("FFFFFFFF".into()),
            referrer_id: Set(None),
            created_at: Set(now()),
            ..Default::default()
        }
        .insert(&db.conn)
        .await
        .unwrap();
        let w = crate::ledger::users::new_wallet(
            user.id,
            crate::ledger::wallets::WalletKind::Live,
            now(),
        )
        .insert(&db.conn)
        .await
        .unwrap();
        (dir, db, w)
    }

    #[tokio::test]
    async fn a_combined_operation_applies_its_legs_in_order_in_one_update() {
        let (_dir, db, mut w) = one_wallet().await;
        let op = Uuid::new_v4();
        update_wallet_balance(&db.conn, &mut w, 1_000, kinds::DEPOSIT, op, None, None)
            .await
            .unwrap();
        let margin = |m| Deltas {
            margin: m,
            ..Deltas::default()
        };
        let entries = perform_combined_operation(
            &db.conn,
            &mut w,
            Uuid::new_v4(),
            vec![
                Leg::new(kinds::MARGIN_HOLD, margin(400)),
                Leg::new(kinds::PNL, Deltas::default()), // nothing: skipped
                Leg::new(kinds::ORDER_OPEN_FEE, Deltas::balance(-10)),
            ],
        )
        .await
        .unwrap();
        let afters: Vec<_> = entries
            .iter()
            .map(|e| (e.kind.as_str(), e.balance_after, e.margin_after))
            .collect();
        assert_eq!(
            afters,
            vec![("margin_hold", 1_000, 400), ("order_open_fee", 990, 400)]
        );
        assert_eq!(entries[1].hash, chain_hash(&entries[0].hash, &entries[1]));
        // one UPDATE per operation: the version moved once for the two legs
        assert_eq!((w.balance, w.margin, w.version), (990, 400, 2));
        let stored = wallet::Entity::find_by_id(w.id)
            .one(&db.conn)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored, w);
        let (count, problems) = crate::ledger::reconcile::check_wallet(&db.conn, &stored)
            .await
            .unwrap();
        assert_eq!((count, problems), (3, vec![]));
        // a leg that would break an invariant refuses the whole operation
        let refused = perform_combined_operation(
            &db.conn,
            &mut w,
            Uuid::new_v4(),
            vec![
                Leg::new(kinds::MARGIN_RELEASE, margin(-400)),
                Leg::new(kinds::PNL, Deltas::balance(-991)),
            ],
        )
        .await;
        assert!(matches!(
            refused,
            Err(DomainError::InsufficientFunds { .. })
        ));
        assert_eq!((w.balance, w.margin, w.version), (990, 400, 2));
    }

    #[test]
    fn none_and_empty_reference_hash_differently() {
        let w = wallet(100, 0);
        let mut a = prepare(&w, &leg(Deltas::balance(5)), Uuid::new_v4(), now()).unwrap();
        let h1 = chain_hash(GENESIS_HASH, &a);
        a.reference = Some(String::new());
        assert_ne!(h1, chain_hash(GENESIS_HASH, &a));
    }
}
