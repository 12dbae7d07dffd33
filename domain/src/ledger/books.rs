//! A group's books (group commit): the wallets a group of writes locked,
//! changed in memory one write after the other and then written at once —
//! one `UPDATE` for all the wallets, one journal `INSERT` for all entries.
//!
//! A write posts to the books all or nothing (`post` is pure): a refused one
//! leaves no trace, so the group needs no savepoint and never rolls back for
//! it. What is written is exactly what `financial::post` would have written
//! write by write: the same entries, the same hash chain per wallet, the
//! wallet as the last write left it, under the version it was locked at.

use std::collections::HashMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use infra::entities::{journal_entry, wallet};
use sea_orm::{ConnectionTrait, Value};
use uuid::Uuid;

use crate::clock::now;
use crate::error::{DomainError, DomainResult};
use crate::ledger::financial::{Leg, apply_legs, entries_part, insert_entries, log_entries};
use crate::ledger::wallets::WalletKind;
use crate::sql::{Part, statement};

#[derive(Debug)]
pub struct Books {
    /// Locked wallets, by owner and kind, as the writes so far left them.
    wallets: HashMap<(i64, WalletKind), wallet::Model>,
    /// Each wallet's version when it was locked: the `UPDATE`'s guard.
    locked_versions: HashMap<i64, i64>,
    entries: Vec<journal_entry::Model>,
    at: DateTime<Utc>,
}

impl Books {
    /// Books over wallets locked in this transaction (expired holds already
    /// released).
    pub fn new(locked: Vec<wallet::Model>) -> DomainResult<Self> {
        let mut wallets = HashMap::with_capacity(locked.len());
        let mut locked_versions = HashMap::with_capacity(locked.len());
        for w in locked {
            let kind = WalletKind::parse(&w.kind).ok_or_else(|| {
                DomainError::unexpected(format!("wallet {} has kind {:?}", w.id, w.kind))
            })?;
            locked_versions.insert(w.id, w.version);
            wallets.insert((w.user_id, kind), w);
        }
        Ok(Self {
            wallets,
            locked_versions,
            entries: Vec::new(),
            at: now(),
        })
    }

    /// When the group's writes happen: the time of its entries and rows.
    pub fn at(&self) -> DateTime<Utc> {
        self.at
    }

    /// The wallet as the writes so far left it; `None` for a user without
    /// one (not locked: unknown).
    pub fn wallet(&self, user_id: i64, kind: WalletKind) -> Option<&wallet::Model> {
        self.wallets.get(&(user_id, kind))
    }

    /// Applies the legs of one operation to one wallet, all or nothing, and
    /// returns the wallet before them and their entries. An unknown user is
    /// 404 like `lock_wallet`'s.
    pub fn post(
        &mut self,
        (user_id, kind): (i64, WalletKind),
        operation_id: Uuid,
        legs: &[Leg],
    ) -> DomainResult<(wallet::Model, Vec<journal_entry::Model>)> {
        let w = self
            .wallets
            .get_mut(&(user_id, kind))
            .ok_or(DomainError::NotFound("user"))?;
        let (next, entries) = apply_legs(w, legs, operation_id, self.at)?;
        log_entries(&entries);
        let before = std::mem::replace(w, next);
        self.entries.extend(entries.iter().cloned());
        Ok((before, entries))
    }

    /// The wallets the writes changed, by id, each with the version it was
    /// locked at.
    fn changed(&self) -> Vec<(&wallet::Model, i64)> {
        let mut changed: Vec<(&wallet::Model, i64)> = self
            .wallets
            .values()
            .filter_map(|w| {
                let locked = *self.locked_versions.get(&w.id)?;
                (w.version != locked).then_some((w, locked))
            })
            .collect();
        changed.sort_by_key(|(w, _)| w.id);
        changed
    }

    /// What the writes posted, as two parts of one statement on PostgreSQL
    /// (`sql::run_together`): every changed wallet in one `UPDATE` guarded by
    /// the version it was locked at (its count goes to `check_updated`),
    /// every entry in one `INSERT`. The same text whatever the group's size.
    pub fn parts(&self) -> DomainResult<Parts> {
        let changed = self.changed();
        let column = |f: fn(&wallet::Model, i64) -> i64| -> Value {
            changed
                .iter()
                .map(|(w, locked)| f(w, *locked))
                .collect::<Vec<i64>>()
                .into()
        };
        let values = vec![
            self.at.into(),
            column(|w, _| w.id),
            column(|_, locked| locked),
            column(|w, _| w.version),
            column(|w, _| w.balance),
            column(|w, _| w.margin),
            column(|w, _| w.profit),
            column(|w, _| w.held),
            changed
                .iter()
                .map(|(w, _)| w.last_hash.clone())
                .collect::<Vec<String>>()
                .into(),
        ];
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "UPDATE wallets SET {SET}, updated_at = ? FROM unnest({}, (SELECT ?::text[])) \
                 AS {V} WHERE {GUARD} RETURNING 1",
                ["(SELECT ?::bigint[])"; 7].join(", ")
            )
        });
        let wallets = Part { sql: &SQL, values };
        Ok(Parts {
            wallets,
            entries: entries_part(&self.entries)?,
            changed: changed.len() as u64,
        })
    }

    /// Writes what the writes posted, statement by statement (SQLite; on
    /// PostgreSQL the group sends `parts` in one): every changed wallet in
    /// one `UPDATE` guarded by the version it was locked at, every entry in
    /// one `INSERT`.
    pub async fn write<C: ConnectionTrait>(self, conn: &C) -> DomainResult<()> {
        let changed = self.changed();
        if changed.is_empty() {
            return Ok(());
        }
        let rows = vec!["(?, ?, ?, ?, ?, ?, ?, ?)"; changed.len()].join(", ");
        let sql = format!(
            "WITH {V} AS (VALUES {rows}) UPDATE wallets SET {SET}, updated_at = ? \
             FROM v WHERE {GUARD}"
        );
        let mut values: Vec<Value> = Vec::with_capacity(changed.len() * 8 + 1);
        for (w, locked) in &changed {
            values.extend([
                w.id.into(),
                (*locked).into(),
                w.version.into(),
                w.balance.into(),
                w.margin.into(),
                w.profit.into(),
                w.held.into(),
                w.last_hash.clone().into(),
            ]);
        }
        values.push(self.at.into());
        let backend = conn.get_database_backend();
        let updated = conn
            .execute_raw(statement(backend, &sql, values))
            .await?
            .rows_affected();
        check_updated(changed.len() as u64, updated)?;
        insert_entries(conn, &self.entries).await
    }
}

/// A group's books as parts of one statement (`Books::parts`).
#[derive(Debug)]
pub struct Parts {
    pub wallets: Part,
    pub entries: Part,
    /// How many wallets the `UPDATE` must write.
    pub changed: u64,
}

/// Every changed wallet must have been written: `updated` is how many the
/// guarded `UPDATE` wrote.
pub fn check_updated(changed: u64, updated: u64) -> DomainResult<()> {
    if updated != changed {
        // A wallet changed under us: the group did not hold its lock.
        return Err(DomainError::unexpected(format!(
            "{} of {changed} wallets were not locked for this group",
            changed.saturating_sub(updated)
        )));
    }
    Ok(())
}

/// The rows of a group's wallet `UPDATE`, the values it sets and its guard.
const V: &str = "v(id, locked_version, version, balance, margin, profit, held, last_hash)";
const SET: &str = "balance = v.balance, margin = v.margin, profit = v.profit, held = v.held, \
     version = v.version, last_hash = v.last_hash";
const GUARD: &str = "wallets.id = v.id AND wallets.version = v.locked_version";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::financial::{Deltas, test_wallet};
    use crate::ledger::journal::chain_hash;

    fn books_of(balances: &[(i64, i64)]) -> Books {
        let wallets = balances
            .iter()
            .map(|&(user_id, balance)| wallet::Model {
                id: user_id * 10,
                user_id,
                ..test_wallet(balance, 0)
            })
            .collect();
        Books::new(wallets).unwrap()
    }

    fn credit(units: i64) -> Vec<Leg> {
        vec![Leg::new("deposit", Deltas::balance(units))]
    }

    #[test]
    fn writes_to_one_wallet_chain_in_order_and_count_each_version() {
        let mut books = books_of(&[(1, 100)]);
        let genesis = books.wallet(1, WalletKind::Live).unwrap().last_hash.clone();
        let (before, first) = books
            .post((1, WalletKind::Live), Uuid::new_v4(), &credit(5))
            .unwrap();
        assert_eq!((before.balance, first[0].balance_after), (100, 105));
        let (before, second) = books
            .post((1, WalletKind::Live), Uuid::new_v4(), &credit(7))
            .unwrap();
        assert_eq!((before.balance, second[0].balance_after), (105, 112));
        // the second entry chains to the first, as two commits would
        assert_eq!(first[0].hash, chain_hash(&genesis, &first[0]));
        assert_eq!(second[0].hash, chain_hash(&first[0].hash, &second[0]));
        let w = books.wallet(1, WalletKind::Live).unwrap();
        assert_eq!(
            (w.balance, w.version, &w.last_hash),
            (112, 2, &second[0].hash)
        );
        assert_eq!(books.entries.len(), 2);
    }

    #[test]
    fn the_written_statement_is_the_same_whatever_the_group_size() {
        let posted = |users: &[i64]| {
            let balances: Vec<(i64, i64)> = users.iter().map(|&u| (u, 100)).collect();
            let mut books = books_of(&balances);
            for &u in users.iter().rev() {
                books
                    .post((u, WalletKind::Live), Uuid::new_v4(), &credit(u))
                    .unwrap();
            }
            books
        };
        let (one, three) = (posted(&[1]), posted(&[1, 2, 3]));
        let one = one.parts().unwrap();
        let Parts {
            wallets,
            entries,
            changed,
        } = three.parts().unwrap();
        assert_eq!(one.wallets.sql, wallets.sql);
        assert_eq!(one.entries.sql, entries.sql);
        assert_eq!((one.changed, changed), (1, 3));
        // one array per column, the changed wallets in id order
        assert_eq!(wallets.values.len(), 9);
        assert_eq!(
            wallets.values.get(1),
            Some(&Value::from(vec![10i64, 20, 30]))
        );
        assert_eq!(
            wallets.values.get(4),
            Some(&Value::from(vec![101i64, 102, 103]))
        );
        // the entries as posted (user 3 first), each once
        let Some(Value::String(Some(json))) = entries.values.first() else {
            panic!("the entries are one JSON document");
        };
        let rows: Vec<serde_json::Value> = serde_json::from_str(json).unwrap();
        let users: Vec<i64> = rows.iter().filter_map(|r| r["user_id"].as_i64()).collect();
        assert_eq!(users, vec![3, 2, 1]);
        assert!(check_updated(changed, 3).is_ok());
        assert!(check_updated(changed, 2).is_err());
    }

    #[test]
    fn a_refused_write_leaves_no_trace() {
        let mut books = books_of(&[(1, 100), (2, 50)]);
        let debit = vec![
            Leg::new("withdrawal", Deltas::balance(-30)),
            Leg::new("fee", Deltas::balance(-80)),
        ];
        // the first leg alone would pass; the second is refused: nothing stays
        assert!(matches!(
            books.post((1, WalletKind::Live), Uuid::new_v4(), &debit),
            Err(DomainError::InsufficientFunds { .. })
        ));
        assert!(matches!(
            books.post((3, WalletKind::Live), Uuid::new_v4(), &credit(1)),
            Err(DomainError::NotFound("user"))
        ));
        assert!(matches!(
            books.post((2, WalletKind::Demo), Uuid::new_v4(), &credit(1)),
            Err(DomainError::NotFound("user"))
        ));
        let w = books.wallet(1, WalletKind::Live).unwrap();
        assert_eq!((w.balance, w.version), (100, 0));
        assert!(books.entries.is_empty());
        // and the next write sees the wallet as it was
        books
            .post((1, WalletKind::Live), Uuid::new_v4(), &credit(1))
            .unwrap();
        assert_eq!(books.wallet(1, WalletKind::Live).unwrap().balance, 101);
    }
}
