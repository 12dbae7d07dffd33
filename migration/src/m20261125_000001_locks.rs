//! Resource locks: one row per grant (`transaction_locks`), one row per
//! (lock, resource) whose unique partial index on the active rows makes the
//! database itself refuse a second active grant of a resource, the waiters
//! (`transaction_queue` and its resources), and the per-resource fencing
//! counter (`lock_fencing`), whose row is also what every change to a
//! resource's locks and queue locks first, in resource order.

use sea_orm_migration::prelude::*;

use crate::columns::{
    Constraint, bigint, bigint_zero, cascade_foreign_key, check, create_table, drop_tables, id,
    indexes, integer, ix, nullable_bigint, nullable_text, nullable_varchar, one_of, positive,
    primary_key, text, varchar,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The columns of a lock request, the same whether it is granted
/// (`transaction_locks`) or waiting (`transaction_queue`).
#[derive(DeriveIden)]
enum Request {
    Resources,
    OwnerId,
    OwnerType,
    CreatedBy,
    Priority,
    TransactionType,
    TransactionData,
    IdempotencyKey,
}

/// Who asks for which resources: the first columns of a request.
fn requester() -> [ColumnDef; 4] {
    [
        text(Request::Resources),
        varchar(Request::OwnerId, 200),
        varchar(Request::OwnerType, 16),
        varchar(Request::CreatedBy, 300),
    ]
}

/// What the request is for, and how urgent it is.
fn request_body() -> [ColumnDef; 4] {
    [
        integer(Request::Priority),
        varchar(Request::TransactionType, 100),
        text(Request::TransactionData),
        varchar(Request::IdempotencyKey, 64),
    ]
}

fn priority_check(name: &'static str) -> Constraint {
    check(name, Expr::col(Request::Priority).between(1, 10))
}

#[derive(DeriveIden)]
enum TransactionLocks {
    Table,
    Id,
    Status,
    FencingToken,
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

const LOCK_STATUSES: [&str; 4] = ["active", "released", "expired", "failed"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut lock_cols = vec![varchar(TransactionLocks::Id, 36).primary_key().to_owned()];
        lock_cols.extend(requester());
        lock_cols.extend([
            varchar(TransactionLocks::Status, 16),
            bigint(TransactionLocks::FencingToken),
        ]);
        lock_cols.extend(request_body());
        lock_cols.extend([
            nullable_text(TransactionLocks::Result),
            nullable_text(TransactionLocks::Error),
            bigint(TransactionLocks::AcquiredAtMs),
            bigint(TransactionLocks::ExpiresAtMs),
            nullable_bigint(TransactionLocks::ReleasedAtMs),
            nullable_varchar(TransactionLocks::ReleasedBy, 300),
            nullable_text(TransactionLocks::ReleaseReason),
            bigint_zero(TransactionLocks::WaitMs),
            nullable_bigint(TransactionLocks::QueueId),
        ]);
        create_table(
            manager,
            TransactionLocks::Table,
            lock_cols,
            [
                one_of(
                    "ck_transaction_locks_status",
                    TransactionLocks::Status,
                    LOCK_STATUSES,
                ),
                priority_check("ck_transaction_locks_priority"),
                positive(
                    "ck_transaction_locks_token_positive",
                    TransactionLocks::FencingToken,
                ),
            ],
        )
        .await?;
        indexes(
            manager,
            TransactionLocks::Table,
            [
                ix(
                    "ix_transaction_locks_dedupe",
                    vec![
                        Request::IdempotencyKey.into_iden(),
                        TransactionLocks::AcquiredAtMs.into_iden(),
                    ],
                ),
                ix(
                    "ix_transaction_locks_status_expiry",
                    vec![
                        TransactionLocks::Status.into_iden(),
                        TransactionLocks::ExpiresAtMs.into_iden(),
                    ],
                ),
                ix(
                    "ix_transaction_locks_owner",
                    vec![
                        Request::OwnerId.into_iden(),
                        TransactionLocks::AcquiredAtMs.into_iden(),
                    ],
                ),
                ix(
                    "ix_transaction_locks_released_at",
                    vec![TransactionLocks::ReleasedAtMs.into_iden()],
                ),
            ],
        )
        .await?;

        create_table(
            manager,
            TransactionLockResources::Table,
            [
                varchar(TransactionLockResources::LockId, 36),
                varchar(TransactionLockResources::ResourceId, 200),
                varchar(TransactionLockResources::Status, 16),
                bigint(TransactionLockResources::FencingToken),
            ],
            [
                primary_key([
                    TransactionLockResources::LockId,
                    TransactionLockResources::ResourceId,
                ]),
                cascade_foreign_key(
                    "fk_lock_resources_lock",
                    (
                        TransactionLockResources::Table,
                        TransactionLockResources::LockId,
                    ),
                    (TransactionLocks::Table, TransactionLocks::Id),
                ),
                one_of(
                    "ck_lock_resources_status",
                    TransactionLockResources::Status,
                    LOCK_STATUSES,
                ),
            ],
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
        indexes(
            manager,
            TransactionLockResources::Table,
            [ix(
                "ix_lock_resources_resource",
                vec![
                    TransactionLockResources::ResourceId,
                    TransactionLockResources::LockId,
                ],
            )],
        )
        .await?;

        let mut queue_cols = vec![id(TransactionQueue::Id)];
        queue_cols.extend(requester());
        queue_cols.extend(request_body());
        queue_cols.extend([
            bigint(TransactionQueue::TtlMs),
            varchar(TransactionQueue::Status, 16),
            nullable_varchar(TransactionQueue::LockId, 36),
            bigint(TransactionQueue::QueuedAtMs),
            bigint(TransactionQueue::DeadlineMs),
            nullable_bigint(TransactionQueue::FinishedAtMs),
        ]);
        create_table(
            manager,
            TransactionQueue::Table,
            queue_cols,
            [
                one_of(
                    "ck_transaction_queue_status",
                    TransactionQueue::Status,
                    ["pending", "granted", "cancelled", "expired"],
                ),
                priority_check("ck_transaction_queue_priority"),
            ],
        )
        .await?;
        indexes(
            manager,
            TransactionQueue::Table,
            [
                ix(
                    "ix_transaction_queue_status_deadline",
                    vec![
                        TransactionQueue::Status.into_iden(),
                        TransactionQueue::DeadlineMs.into_iden(),
                    ],
                ),
                ix(
                    "ix_transaction_queue_dedupe",
                    vec![
                        Request::IdempotencyKey.into_iden(),
                        TransactionQueue::Status.into_iden(),
                    ],
                ),
                ix(
                    "ix_transaction_queue_finished_at",
                    vec![TransactionQueue::FinishedAtMs.into_iden()],
                ),
            ],
        )
        .await?;

        create_table(
            manager,
            TransactionQueueResources::Table,
            [
                bigint(TransactionQueueResources::QueueId),
                varchar(TransactionQueueResources::ResourceId, 200),
            ],
            [
                primary_key([
                    TransactionQueueResources::QueueId,
                    TransactionQueueResources::ResourceId,
                ]),
                cascade_foreign_key(
                    "fk_queue_resources_item",
                    (
                        TransactionQueueResources::Table,
                        TransactionQueueResources::QueueId,
                    ),
                    (TransactionQueue::Table, TransactionQueue::Id),
                ),
            ],
        )
        .await?;
        indexes(
            manager,
            TransactionQueueResources::Table,
            [ix(
                "ix_queue_resources_resource",
                vec![
                    TransactionQueueResources::ResourceId,
                    TransactionQueueResources::QueueId,
                ],
            )],
        )
        .await?;

        create_table(
            manager,
            LockFencing::Table,
            [
                varchar(LockFencing::ResourceId, 200)
                    .primary_key()
                    .to_owned(),
                bigint_zero(LockFencing::FencingToken),
            ],
            [],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_tables(
            manager,
            [
                LockFencing::Table.into_iden(),
                TransactionQueueResources::Table.into_iden(),
                TransactionQueue::Table.into_iden(),
                TransactionLockResources::Table.into_iden(),
                TransactionLocks::Table.into_iden(),
            ],
        )
        .await
    }
}
