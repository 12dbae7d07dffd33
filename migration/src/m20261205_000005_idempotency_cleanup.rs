//! Stale claims found without reading every key: the recovery manager's
//! pass (every `LEDGER_RECOVERY_INTERVAL_MS` on each instance) deletes the
//! claims left `processing` past their lock. Without an index that was a
//! sequential scan of every key stored in the last day — 150 ms at 474,000
//! keys, and the table grows with every write. (The TTL cleanup has had
//! `ix_idempotency_expires` from the start.)
//!
//! The index is partial: it holds only the keys still `processing`, each a
//! write's claim for the moment of its transaction, so it stays as small as
//! the number of writes in flight.

use sea_orm_migration::prelude::*;

use crate::columns::{create_indexes, drop_indexes, ix};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum IdempotencyKeys {
    Table,
    Status,
    LockedUntilMs,
}

const STALE_CLAIMS: &str = "ix_idempotency_processing_locked_until";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_indexes(
            manager,
            IdempotencyKeys::Table,
            [ix(STALE_CLAIMS, [IdempotencyKeys::LockedUntilMs])
                .and_where(Expr::col(IdempotencyKeys::Status).eq("processing"))
                .to_owned()],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_indexes(manager, IdempotencyKeys::Table, [STALE_CLAIMS]).await
    }
}
