//! Reconciliation: for every wallet, balance, margin, profit and held equal
//! the sums of its journal deltas, every entry's values-after follow from
//! the one before, the hash chain verifies up to the wallet's `last_hash`,
//! and `held` equals the sum of the wallet's active holds.
//!
//! The whole check reads one snapshot: wallets and journals are read by many
//! queries, and a deposit committed between reading a wallet and reading its
//! journal would otherwise look like a journal that sums to more than the
//! wallet holds.

use std::collections::HashMap;

use infra::entities::{journal_entry, wallet};
use sea_orm::{
    AccessMode, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait,
    IsolationLevel, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};

use crate::error::DomainResult;
use crate::ledger::journal::{GENESIS_HASH, chain_hash};
use crate::sql::statement;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discrepancy {
    pub wallet_id: i64,
    pub problem: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub wallets: u64,
    pub entries: u64,
    pub discrepancies: Vec<Discrepancy>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.discrepancies.is_empty()
    }
}

const PAGE: u64 = 1_000;

/// Checks one wallet's journal, page by page.
pub async fn check_wallet<C: ConnectionTrait>(
    conn: &C,
    w: &wallet::Model,
) -> DomainResult<(u64, Vec<Discrepancy>)> {
    let mut problems = Vec::new();
    let mut problem = |p: String| {
        problems.push(Discrepancy {
            wallet_id: w.id,
            problem: p,
        })
    };
    let (mut balance, mut margin, mut profit, mut held) = (0i64, 0i64, 0i64, 0i64);
    let mut prev = GENESIS_HASH.to_owned();
    let mut after_id = 0i64;
    let mut count = 0u64;
    loop {
        let entries = journal_entry::Entity::find()
            .filter(journal_entry::Column::WalletId.eq(w.id))
            .filter(journal_entry::Column::Id.gt(after_id))
            .order_by_asc(journal_entry::Column::Id)
            .limit(PAGE)
            .all(conn)
            .await?;
        let n = entries.len() as u64;
        for e in entries {
            count += 1;
            after_id = e.id;
            balance = balance.wrapping_add(e.balance_delta);
            margin = margin.wrapping_add(e.margin_delta);
            profit = profit.wrapping_add(e.profit_delta);
            held = held.wrapping_add(e.held_delta);
            let after = (
                e.balance_after,
                e.margin_after,
                e.profit_after,
                e.held_after,
            );
            if (balance, margin, profit, held) != after {
                problem(format!(
                    "entry {}: values after do not follow from the deltas",
                    e.id
                ));
            }
            let expected = chain_hash(&prev, &e);
            if expected != e.hash {
                problem(format!("entry {}: hash does not verify", e.id));
            }
            prev = e.hash;
        }
        if n < PAGE {
            break;
        }
    }
    if (balance, margin, profit, held) != (w.balance, w.margin, w.profit, w.held) {
        problem(format!(
            "wallet holds ({}, {}, {}, held {}) but its journal sums to \
             ({balance}, {margin}, {profit}, held {held})",
            w.balance, w.margin, w.profit, w.held
        ));
    }
    if prev != w.last_hash {
        problem("last_hash is not the hash of the last journal entry".into());
    }
    Ok((count, problems))
}

/// Checks every wallet, in one read-only transaction: on PostgreSQL
/// `REPEATABLE READ` (one snapshot for every statement); on SQLite a read
/// transaction, which in WAL mode keeps the snapshot of its first read until
/// it ends. Writers are never blocked.
pub async fn check_all(conn: &DatabaseConnection) -> DomainResult<Report> {
    let txn = match conn.get_database_backend() {
        DbBackend::Postgres => {
            conn.begin_with_config(
                Some(IsolationLevel::RepeatableRead),
                Some(AccessMode::ReadOnly),
            )
            .await?
        }
        _ => conn.begin().await?,
    };
    let report = check_every_wallet(&txn).await?;
    txn.commit().await?;
    Ok(report)
}

/// Per wallet, the sum of its active holds.
async fn active_holds<C: ConnectionTrait>(conn: &C) -> DomainResult<HashMap<i64, i64>> {
    // SUM of a BIGINT is NUMERIC on PostgreSQL: cast back for one decoding.
    let sql = "SELECT wallet_id, CAST(SUM(amount) AS BIGINT) AS held \
               FROM holds WHERE status = 'held' GROUP BY wallet_id";
    let rows = conn
        .query_all_raw(statement(conn.get_database_backend(), sql, vec![]))
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("", "wallet_id")?, row.try_get("", "held")?)))
        .collect()
}

async fn check_every_wallet<C: ConnectionTrait>(conn: &C) -> DomainResult<Report> {
    let mut report = Report::default();
    let mut holds = active_holds(conn).await?;
    let mut after_id = 0i64;
    loop {
        let wallets = wallet::Entity::find()
            .filter(wallet::Column::Id.gt(after_id))
            .order_by_asc(wallet::Column::Id)
            .limit(PAGE)
            .all(conn)
            .await?;
        let n = wallets.len() as u64;
        for w in &wallets {
            after_id = w.id;
            let (entries, problems) = check_wallet(conn, w).await?;
            report.wallets += 1;
            report.entries += entries;
            report.discrepancies.extend(problems);
            let active = holds.remove(&w.id).unwrap_or(0);
            if active != w.held {
                report.discrepancies.push(Discrepancy {
                    wallet_id: w.id,
                    problem: format!("held {} but its active holds sum to {active}", w.held),
                });
            }
        }
        if n < PAGE {
            break;
        }
    }
    Ok(report)
}
