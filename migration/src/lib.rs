//! Every table, index and constraint of the ledger, for PostgreSQL and SQLite.
//!
//! Money columns are `BIGINT` minor units at scale 8 (1 unit = 0.00000001), so
//! `balance = balance + delta` is exact on both engines. Times that the code
//! compares (leases, expiries) are epoch milliseconds, which compare the same
//! way everywhere; times shown to people are timestamps.

pub use sea_orm_migration::prelude::*;

mod columns;
mod m20261121_000001_core;
mod m20261121_000002_trading;
mod m20261125_000001_locks;
mod m20261201_000003_holds;
mod m20261203_000004_workflows;
mod m20261205_000005_idempotency_cleanup;
mod m20261207_000006_lock_history;
mod m20261209_000007_lock_reads;
mod m20261211_000008_history_reads;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261121_000001_core::Migration),
            Box::new(m20261121_000002_trading::Migration),
            Box::new(m20261125_000001_locks::Migration),
            Box::new(m20261201_000003_holds::Migration),
            Box::new(m20261203_000004_workflows::Migration),
            Box::new(m20261205_000005_idempotency_cleanup::Migration),
            Box::new(m20261207_000006_lock_history::Migration),
            Box::new(m20261209_000007_lock_reads::Migration),
            Box::new(m20261211_000008_history_reads::Migration),
        ]
    }
}
