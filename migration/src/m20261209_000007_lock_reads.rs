//! Lock reads that do not grow with the history kept: the statistics and
//! the latest locks.
//!
//! **The statistics.** `GET /api/v1/locks/stats` (the monitor asks every
//! second while it is open) and every lock cleanup pass summed and sorted
//! every grant kept: 24 h of them, 0.85–1.2 s at 1,000,000 grants, and a
//! busy day keeps millions. Now the cleanup tallies finished grants into `lock_tally`, one
//! row per (status, wait in ms) with their number and their summed hold
//! time, and the statistics read that tally plus the grants not yet in it
//! (the active ones and those finished since the last pass), which a
//! partial index on `tallied = false` finds without reading the others.
//!
//! A grant enters the tally once (the cleanup flips `tallied` with a
//! guarded UPDATE and adds what it flipped in the same transaction) and
//! leaves it when it is purged (the DELETE returns what it removed, and the
//! same transaction takes it out): so the statistics are exact, the same
//! numbers as summing every grant.
//!
//! Grants written before this migration start untallied: they are counted
//! from their rows until the cleanup has tallied them.
//!
//! **The latest locks.** The lock list without a resource or owner (which
//! the monitor also asks for every second, for its recent history) is the
//! newest grants by `acquired_at_ms`, which no index ordered: PostgreSQL
//! sorted every grant kept to find them, 0.4–0.5 s at 1,000,000 grants.
//! With `ix_transaction_locks_acquired_at` the read walks back from the
//! newest: 10–27 ms. (The owner filter has had its (owner, acquired) index
//! from the start; a resource's list walks its (resource, fencing token)
//! index.)

use sea_orm_migration::prelude::*;

use crate::columns::{
    add_column, bigint, boolean_false, create_indexes, create_table, drop_column, drop_indexes,
    drop_tables, ix, primary_key, varchar,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum TransactionLocks {
    Table,
    Status,
    Tallied,
    AcquiredAtMs,
}

#[derive(DeriveIden)]
enum LockTally {
    Table,
    Status,
    WaitMs,
    N,
    HeldMs,
}

const UNTALLIED: &str = "ix_transaction_locks_untallied";
const BY_ACQUIRED: &str = "ix_transaction_locks_acquired_at";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_column(
            manager,
            TransactionLocks::Table,
            boolean_false(TransactionLocks::Tallied),
        )
        .await?;
        create_indexes(
            manager,
            TransactionLocks::Table,
            [
                ix(UNTALLIED, [TransactionLocks::Status])
                    .and_where(Expr::col(TransactionLocks::Tallied).eq(false))
                    .to_owned(),
                ix(BY_ACQUIRED, [TransactionLocks::AcquiredAtMs]),
            ],
        )
        .await?;
        create_table(
            manager,
            LockTally::Table,
            [
                varchar(LockTally::Status, 16),
                bigint(LockTally::WaitMs),
                bigint(LockTally::N),
                bigint(LockTally::HeldMs),
            ],
            [primary_key([LockTally::Status, LockTally::WaitMs])],
            [],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_tables(manager, [LockTally::Table.into_iden()]).await?;
        drop_indexes(manager, TransactionLocks::Table, [BY_ACQUIRED, UNTALLIED]).await?;
        drop_column(manager, TransactionLocks::Table, TransactionLocks::Tallied).await
    }
}
