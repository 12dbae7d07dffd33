//! Lock reads that no longer grow with the history kept (24 h of grants).
//!
//! **A resource's recent grants.** The wait estimate of a queued request
//! (and the `Retry-After` of a full queue) averages how long the resource's
//! last 50 finished grants were held. With `ix_lock_resources_resource`
//! (resource, lock id) PostgreSQL either read every grant the resource ever
//! had and sorted them, or walked every grant of every resource back from
//! the newest release until it found 50 of this one: 808 ms for a resource
//! last used before 200,000 others' grants. A resource's fencing token
//! grows with each of its grants, so with (resource, fencing token) its
//! newest grants are the last entries of the index and the read walks back
//! from there: 0.3 ms whatever the history.
//!
//! The new index replaces the old one: every other read of a resource's
//! grants asks for the active one, which `ux_lock_resources_active` serves.
//!
//! **The grant of a queue item.** A waiter that has been granted reads its
//! lock by the queue item's id, which no index covered: a sequential scan of
//! every grant kept, 85 ms a read at 200,000 of them.

use sea_orm_migration::prelude::*;

use crate::columns::{create_indexes, drop_indexes, ix};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum TransactionLocks {
    Table,
    QueueId,
}

#[derive(DeriveIden)]
enum TransactionLockResources {
    Table,
    ResourceId,
    LockId,
    FencingToken,
}

const BY_LOCK: &str = "ix_lock_resources_resource";
const BY_TOKEN: &str = "ix_lock_resources_resource_token";
const BY_QUEUE_ITEM: &str = "ix_transaction_locks_queue_id";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_indexes(manager, TransactionLockResources::Table, [BY_LOCK]).await?;
        create_indexes(
            manager,
            TransactionLockResources::Table,
            [ix(
                BY_TOKEN,
                [
                    TransactionLockResources::ResourceId,
                    TransactionLockResources::FencingToken,
                ],
            )],
        )
        .await?;
        create_indexes(
            manager,
            TransactionLocks::Table,
            [ix(BY_QUEUE_ITEM, [TransactionLocks::QueueId])],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_indexes(manager, TransactionLocks::Table, [BY_QUEUE_ITEM]).await?;
        drop_indexes(manager, TransactionLockResources::Table, [BY_TOKEN]).await?;
        create_indexes(
            manager,
            TransactionLockResources::Table,
            [ix(
                BY_LOCK,
                [
                    TransactionLockResources::ResourceId,
                    TransactionLockResources::LockId,
                ],
            )],
        )
        .await
    }
}
