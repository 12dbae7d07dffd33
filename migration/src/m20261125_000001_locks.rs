//! Resource locks: one row per grant (`transaction_locks`), one row per
//! (lock, resource) whose unique partial index on the active rows makes the
//! database itself refuse a second active grant of a resource, the waiters
//! (`transaction_queue` and its resources), and the per-resource fencing
//! counter (`lock_fencing`), whose row is also what every change to a
//! resource's locks and queue locks first, in resource order.

use sea_orm_migration::prelude::*;

use crate::columns::{
    Constraint, bigint, bigint_zero, cascade_foreign_key, check, create_table, drop_tables, id,
    integer, ix, natural_key, nullable, one_of, positive, primary_key, text, ux, varchar,
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
        let mut lock_cols = vec![natural_key(varchar(TransactionLocks::Id, 36))];
        lock_cols.extend(requester());
        lock_cols.extend([
            varchar(TransactionLocks::Status, 16),
            bigint(TransactionLocks::FencingToken),
        ]);
        lock_cols.extend(request_body());
        lock_cols.extend([
            nullable(text(TransactionLocks::Result)),
            nullable(text(TransactionLocks::Error)),
            bigint(TransactionLocks::AcquiredAtMs),
            bigint(TransactionLocks::ExpiresAtMs),
            nullable(bigint(TransactionLocks::ReleasedAtMs)),
            nullable(varchar(TransactionLocks::ReleasedBy, 300)),
            nullable(text(TransactionLocks::ReleaseReason)),
            bigint_zero(TransactionLocks::WaitMs),
            nullable(bigint(TransactionLocks::QueueId)),
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
            [
                ix(
                    "ix_transaction_locks_dedupe",
                    [
                        Request::IdempotencyKey.into_iden(),
                        TransactionLocks::AcquiredAtMs.into_iden(),
                    ],
                ),
                ix(
                    "ix_transaction_locks_status_expiry",
                    [TransactionLocks::Status, TransactionLocks::ExpiresAtMs],
                ),
                ix(
                    "ix_transaction_locks_owner",
                    [
                        Request::OwnerId.into_iden(),
                        TransactionLocks::AcquiredAtMs.into_iden(),
                    ],
                ),
                ix(
                    "ix_transaction_locks_released_at",
                    [TransactionLocks::ReleasedAtMs],
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
                    TransactionLockResources::LockId,
                    (TransactionLocks::Table, TransactionLocks::Id),
                ),
                one_of(
                    "ck_lock_resources_status",
                    TransactionLockResources::Status,
                    LOCK_STATUSES,
                ),
            ],
            [
                // The last line of defence: whatever the code does, on whichever
                // instance, a resource has at most one active grant.
                ux(
                    "ux_lock_resources_active",
                    [TransactionLockResources::ResourceId],
                )
                .and_where(Expr::col(TransactionLockResources::Status).eq("active"))
                .to_owned(),
                ix(
                    "ix_lock_resources_resource",
                    [
                        TransactionLockResources::ResourceId,
                        TransactionLockResources::LockId,
                    ],
                ),
            ],
        )
        .await?;

        let mut queue_cols = vec![id(TransactionQueue::Id)];
        queue_cols.extend(requester());
        queue_cols.extend(request_body());
        queue_cols.extend([
            bigint(TransactionQueue::TtlMs),
            varchar(TransactionQueue::Status, 16),
            nullable(varchar(TransactionQueue::LockId, 36)),
            bigint(TransactionQueue::QueuedAtMs),
            bigint(TransactionQueue::DeadlineMs),
            nullable(bigint(TransactionQueue::FinishedAtMs)),
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
            [
                ix(
                    "ix_transaction_queue_status_deadline",
                    [TransactionQueue::Status, TransactionQueue::DeadlineMs],
                ),
                ix(
                    "ix_transaction_queue_dedupe",
                    [
                        Request::IdempotencyKey.into_iden(),
                        TransactionQueue::Status.into_iden(),
                    ],
                ),
                ix(
                    "ix_transaction_queue_finished_at",
                    [TransactionQueue::FinishedAtMs],
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
                    TransactionQueueResources::QueueId,
                    (TransactionQueue::Table, TransactionQueue::Id),
                ),
            ],
            [ix(
                "ix_queue_resources_resource",
                [
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
                natural_key(varchar(LockFencing::ResourceId, 200)),
                bigint_zero(LockFencing::FencingToken),
            ],
            [],
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
