//! Resource locks: one row per grant (`transaction_locks`), one row per
//! (lock, resource) whose unique partial index on the active rows makes the
//! database itself refuse a second active grant of a resource, the waiters
//! (`transaction_queue` and its resources), and the per-resource fencing
//! counter (`lock_fencing`), whose row is also what every change to a
//! resource's locks and queue locks first, in resource order.

use sea_orm_migration::prelude::*;

use crate::m20261121_000001_core::{id, index};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum TransactionLocks {
    Table,
    Id,
    Resources,
    OwnerId,
    OwnerType,
    CreatedBy,
    Status,
    FencingToken,
    Priority,
    TransactionType,
    TransactionData,
    IdempotencyKey,
    Result,
    Error,
    AcquiredAtMs,
    ExpiresAtMs,
    ReleasedAtMs,
    ReleasedBy,
    ReleaseReason,
    WaitMs,
    QueueId,
}

#[derive(DeriveIden)]
enum TransactionLockResources {
    Table,
    LockId,
    ResourceId,
    Status,
    FencingToken,
}

#[derive(DeriveIden)]
enum TransactionQueue {
    Table,
    Id,
    Resources,
    OwnerId,
    OwnerType,
    CreatedBy,
    Priority,
    TransactionType,
    TransactionData,
    IdempotencyKey,
    TtlMs,
    Status,
    LockId,
    QueuedAtMs,
    DeadlineMs,
    FinishedAtMs,
}

#[derive(DeriveIden)]
enum TransactionQueueResources {
    Table,
    QueueId,
    ResourceId,
}

#[derive(DeriveIden)]
enum LockFencing {
    Table,
    ResourceId,
    FencingToken,
}

fn text(col: impl IntoIden, len: u32) -> ColumnDef {
    ColumnDef::new(col).string_len(len).not_null().to_owned()
}

fn ms(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).big_integer().not_null().to_owned()
}

fn nullable_ms(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).big_integer().null().to_owned()
}

const LOCK_STATUSES: [&str; 4] = ["active", "released", "expired", "failed"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(TransactionLocks::Table)
                    .col(text(TransactionLocks::Id, 36).primary_key())
                    .col(
                        ColumnDef::new(TransactionLocks::Resources)
                            .text()
                            .not_null(),
                    )
                    .col(text(TransactionLocks::OwnerId, 200))
                    .col(text(TransactionLocks::OwnerType, 16))
                    .col(text(TransactionLocks::CreatedBy, 300))
                    .col(text(TransactionLocks::Status, 16))
                    .col(ms(TransactionLocks::FencingToken))
                    .col(
                        ColumnDef::new(TransactionLocks::Priority)
                            .integer()
                            .not_null(),
                    )
                    .col(text(TransactionLocks::TransactionType, 100))
                    .col(
                        ColumnDef::new(TransactionLocks::TransactionData)
                            .text()
                            .not_null(),
                    )
                    .col(text(TransactionLocks::IdempotencyKey, 64))
                    .col(ColumnDef::new(TransactionLocks::Result).text().null())
                    .col(ColumnDef::new(TransactionLocks::Error).text().null())
                    .col(ms(TransactionLocks::AcquiredAtMs))
                    .col(ms(TransactionLocks::ExpiresAtMs))
                    .col(nullable_ms(TransactionLocks::ReleasedAtMs))
                    .col(
                        ColumnDef::new(TransactionLocks::ReleasedBy)
                            .string_len(300)
                            .null(),
                    )
                    .col(
                        ColumnDef::new(TransactionLocks::ReleaseReason)
                            .text()
                            .null(),
                    )
                    .col(ms(TransactionLocks::WaitMs).default(0))
                    .col(nullable_ms(TransactionLocks::QueueId))
                    .check((
                        "ck_transaction_locks_status",
                        Expr::col(TransactionLocks::Status).is_in(LOCK_STATUSES),
                    ))
                    .check((
                        "ck_transaction_locks_priority",
                        Expr::col(TransactionLocks::Priority).between(1, 10),
                    ))
                    .check((
                        "ck_transaction_locks_token_positive",
                        Expr::col(TransactionLocks::FencingToken).gt(0),
                    ))
                    .to_owned(),
            )
            .await?;
        for (name, cols) in [
            (
                "ix_transaction_locks_dedupe",
                vec![
                    TransactionLocks::IdempotencyKey,
                    TransactionLocks::AcquiredAtMs,
                ],
            ),
            (
                "ix_transaction_locks_status_expiry",
                vec![TransactionLocks::Status, TransactionLocks::ExpiresAtMs],
            ),
            (
                "ix_transaction_locks_owner",
                vec![TransactionLocks::OwnerId, TransactionLocks::AcquiredAtMs],
            ),
            (
                "ix_transaction_locks_released_at",
                vec![TransactionLocks::ReleasedAtMs],
            ),
        ] {
            index(manager, name, TransactionLocks::Table, cols, false).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(TransactionLockResources::Table)
                    .col(text(TransactionLockResources::LockId, 36))
                    .col(text(TransactionLockResources::ResourceId, 200))
                    .col(text(TransactionLockResources::Status, 16))
                    .col(ms(TransactionLockResources::FencingToken))
                    .primary_key(
                        Index::create()
                            .col(TransactionLockResources::LockId)
                            .col(TransactionLockResources::ResourceId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_lock_resources_lock")
                            .from(
                                TransactionLockResources::Table,
                                TransactionLockResources::LockId,
                            )
                            .to(TransactionLocks::Table, TransactionLocks::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .check((
                        "ck_lock_resources_status",
                        Expr::col(TransactionLockResources::Status).is_in(LOCK_STATUSES),
                    ))
                    .to_owned(),
            )
            .await?;
        // The last line of defence: whatever the code does, on whichever
        // instance, a resource has at most one active grant.
        manager
            .create_index(
                Index::create()
                    .name("ux_lock_resources_active")
                    .table(TransactionLockResources::Table)
                    .col(TransactionLockResources::ResourceId)
                    .unique()
                    .and_where(Expr::col(TransactionLockResources::Status).eq("active"))
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "ix_lock_resources_resource",
            TransactionLockResources::Table,
            vec![
                TransactionLockResources::ResourceId,
                TransactionLockResources::LockId,
            ],
            false,
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(TransactionQueue::Table)
                    .col(id(TransactionQueue::Id))
                    .col(
                        ColumnDef::new(TransactionQueue::Resources)
                            .text()
                            .not_null(),
                    )
                    .col(text(TransactionQueue::OwnerId, 200))
                    .col(text(TransactionQueue::OwnerType, 16))
                    .col(text(TransactionQueue::CreatedBy, 300))
                    .col(
                        ColumnDef::new(TransactionQueue::Priority)
                            .integer()
                            .not_null(),
                    )
                    .col(text(TransactionQueue::TransactionType, 100))
                    .col(
                        ColumnDef::new(TransactionQueue::TransactionData)
                            .text()
                            .not_null(),
                    )
                    .col(text(TransactionQueue::IdempotencyKey, 64))
                    .col(ms(TransactionQueue::TtlMs))
                    .col(text(TransactionQueue::Status, 16))
                    .col(
                        ColumnDef::new(TransactionQueue::LockId)
                            .string_len(36)
                            .null(),
                    )
                    .col(ms(TransactionQueue::QueuedAtMs))
                    .col(ms(TransactionQueue::DeadlineMs))
                    .col(nullable_ms(TransactionQueue::FinishedAtMs))
                    .check((
                        "ck_transaction_queue_status",
                        Expr::col(TransactionQueue::Status).is_in([
                            "pending",
                            "granted",
                            "cancelled",
                            "expired",
                        ]),
                    ))
                    .check((
                        "ck_transaction_queue_priority",
                        Expr::col(TransactionQueue::Priority).between(1, 10),
                    ))
                    .to_owned(),
            )
            .await?;
        for (name, cols) in [
            (
                "ix_transaction_queue_status_deadline",
                vec![TransactionQueue::Status, TransactionQueue::DeadlineMs],
            ),
            (
                "ix_transaction_queue_dedupe",
                vec![TransactionQueue::IdempotencyKey, TransactionQueue::Status],
            ),
            (
                "ix_transaction_queue_finished_at",
                vec![TransactionQueue::FinishedAtMs],
            ),
        ] {
            index(manager, name, TransactionQueue::Table, cols, false).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(TransactionQueueResources::Table)
                    .col(
                        ColumnDef::new(TransactionQueueResources::QueueId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(text(TransactionQueueResources::ResourceId, 200))
                    .primary_key(
                        Index::create()
                            .col(TransactionQueueResources::QueueId)
                            .col(TransactionQueueResources::ResourceId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_queue_resources_item")
                            .from(
                                TransactionQueueResources::Table,
                                TransactionQueueResources::QueueId,
                            )
                            .to(TransactionQueue::Table, TransactionQueue::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "ix_queue_resources_resource",
            TransactionQueueResources::Table,
            vec![
                TransactionQueueResources::ResourceId,
                TransactionQueueResources::QueueId,
            ],
            false,
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(LockFencing::Table)
                    .col(text(LockFencing::ResourceId, 200).primary_key())
                    .col(ms(LockFencing::FencingToken).default(0))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            LockFencing::Table.into_iden(),
            TransactionQueueResources::Table.into_iden(),
            TransactionQueue::Table.into_iden(),
            TransactionLockResources::Table.into_iden(),
            TransactionLocks::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
