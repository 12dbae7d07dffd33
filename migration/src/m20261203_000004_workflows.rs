//! Workflows: multi-step operations that survive crashes. A `workflows` row
//! carries what the worker needs to resume (the current step, the phase —
//! forward or compensating —, when it may run next, its deadline) and the
//! lease that makes one worker its owner at a time: `lease_owner`,
//! `lease_expires_at_ms` and `generation`, which every claim bumps, so a
//! stale worker's late write (guarded by the generation it claimed) changes
//! nothing. `workflow_steps` has one row per step with its status, attempts
//! and error.

use sea_orm_migration::prelude::*;

use crate::columns::{
    bigint, bigint_zero, drop_tables, foreign_key, id, index, integer, nullable_bigint,
    nullable_text, nullable_ts, nullable_varchar, ts, varchar,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Workflows {
    Table,
    Id,
    Kind,
    UserId,
    WalletKind,
    Amount,
    Status,
    Params,
    Result,
    Error,
    HoldId,
    /// The position of the step to run next (forward), or of the step to
    /// compensate next (compensating).
    Step,
    Phase,
    NextRunAtMs,
    DeadlineAtMs,
    LeaseOwner,
    LeaseExpiresAtMs,
    Generation,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum WorkflowSteps {
    Table,
    Id,
    WorkflowId,
    Position,
    Name,
    Status,
    Attempts,
    StartedAt,
    FinishedAt,
    Error,
}

const STATUSES: [&str; 7] = [
    "running",
    "awaiting_review",
    "awaiting_payout",
    "completed",
    "compensated",
    "rejected",
    "failed",
];

const STEP_STATUSES: [&str; 5] = ["pending", "running", "done", "compensated", "failed"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Workflows::Table)
                    .col(id(Workflows::Id))
                    .col(varchar(Workflows::Kind, 16))
                    .col(bigint(Workflows::UserId))
                    .col(varchar(Workflows::WalletKind, 8))
                    .col(bigint(Workflows::Amount))
                    .col(varchar(Workflows::Status, 16))
                    .col(ColumnDef::new(Workflows::Params).text().not_null())
                    .col(nullable_text(Workflows::Result))
                    .col(nullable_text(Workflows::Error))
                    .col(nullable_bigint(Workflows::HoldId))
                    .col(integer(Workflows::Step))
                    .col(varchar(Workflows::Phase, 12))
                    .col(bigint(Workflows::NextRunAtMs))
                    .col(bigint(Workflows::DeadlineAtMs))
                    .col(nullable_varchar(Workflows::LeaseOwner, 64))
                    .col(nullable_bigint(Workflows::LeaseExpiresAtMs))
                    .col(bigint_zero(Workflows::Generation))
                    .col(ts(Workflows::CreatedAt))
                    .col(ts(Workflows::UpdatedAt))
                    .foreign_key(&mut foreign_key(
                        "fk_workflows_user",
                        (Workflows::Table, Workflows::UserId),
                        (Users::Table, Users::Id),
                    ))
                    .check((
                        "ck_workflows_kind",
                        Expr::col(Workflows::Kind).is_in(["withdrawal", "deposit"]),
                    ))
                    .check((
                        "ck_workflows_status",
                        Expr::col(Workflows::Status).is_in(STATUSES),
                    ))
                    .check((
                        "ck_workflows_phase",
                        Expr::col(Workflows::Phase).is_in(["forward", "compensate"]),
                    ))
                    .check((
                        "ck_workflows_amount_positive",
                        Expr::col(Workflows::Amount).gt(0),
                    ))
                    .to_owned(),
            )
            .await?;
        // What the workers claim: running workflows whose time has come.
        index(
            manager,
            "ix_workflows_status_next_run",
            Workflows::Table,
            vec![Workflows::Status, Workflows::NextRunAtMs],
            false,
        )
        .await?;
        index(
            manager,
            "ix_workflows_user",
            Workflows::Table,
            vec![Workflows::UserId, Workflows::Id],
            false,
        )
        .await?;
        manager
            .create_table(
                Table::create()
                    .table(WorkflowSteps::Table)
                    .col(id(WorkflowSteps::Id))
                    .col(bigint(WorkflowSteps::WorkflowId))
                    .col(integer(WorkflowSteps::Position))
                    .col(varchar(WorkflowSteps::Name, 32))
                    .col(varchar(WorkflowSteps::Status, 12))
                    .col(
                        ColumnDef::new(WorkflowSteps::Attempts)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(nullable_ts(WorkflowSteps::StartedAt))
                    .col(nullable_ts(WorkflowSteps::FinishedAt))
                    .col(nullable_text(WorkflowSteps::Error))
                    .foreign_key(&mut foreign_key(
                        "fk_workflow_steps_workflow",
                        (WorkflowSteps::Table, WorkflowSteps::WorkflowId),
                        (Workflows::Table, Workflows::Id),
                    ))
                    .check((
                        "ck_workflow_steps_status",
                        Expr::col(WorkflowSteps::Status).is_in(STEP_STATUSES),
                    ))
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "ux_workflow_steps_position",
            WorkflowSteps::Table,
            vec![WorkflowSteps::WorkflowId, WorkflowSteps::Position],
            true,
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_tables(
            manager,
            [
                WorkflowSteps::Table.into_iden(),
                Workflows::Table.into_iden(),
            ],
        )
        .await
    }
}
