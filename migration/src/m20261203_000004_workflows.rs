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
    bigint, bigint_zero, cascade_foreign_key, create_table, drop_tables, id, integer, ix, nullable,
    one_of, positive, text, ts, user_fk, ux, varchar,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

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
        create_table(
            manager,
            Workflows::Table,
            [
                id(Workflows::Id),
                varchar(Workflows::Kind, 16),
                bigint(Workflows::UserId),
                varchar(Workflows::WalletKind, 8),
                bigint(Workflows::Amount),
                varchar(Workflows::Status, 16),
                text(Workflows::Params),
                nullable(text(Workflows::Result)),
                nullable(text(Workflows::Error)),
                nullable(bigint(Workflows::HoldId)),
                integer(Workflows::Step),
                varchar(Workflows::Phase, 12),
                bigint(Workflows::NextRunAtMs),
                bigint(Workflows::DeadlineAtMs),
                nullable(varchar(Workflows::LeaseOwner, 64)),
                nullable(bigint(Workflows::LeaseExpiresAtMs)),
                bigint_zero(Workflows::Generation),
                ts(Workflows::CreatedAt),
                ts(Workflows::UpdatedAt),
            ],
            [
                user_fk("fk_workflows_user", Workflows::UserId),
                one_of(
                    "ck_workflows_kind",
                    Workflows::Kind,
                    ["withdrawal", "deposit"],
                ),
                one_of("ck_workflows_status", Workflows::Status, STATUSES),
                one_of(
                    "ck_workflows_phase",
                    Workflows::Phase,
                    ["forward", "compensate"],
                ),
                positive("ck_workflows_amount_positive", Workflows::Amount),
            ],
            [
                // What the workers claim: running workflows whose time has come.
                ix(
                    "ix_workflows_status_next_run",
                    [Workflows::Status, Workflows::NextRunAtMs],
                ),
                ix("ix_workflows_user", [Workflows::UserId, Workflows::Id]),
            ],
        )
        .await?;
        create_table(
            manager,
            WorkflowSteps::Table,
            [
                id(WorkflowSteps::Id),
                bigint(WorkflowSteps::WorkflowId),
                integer(WorkflowSteps::Position),
                varchar(WorkflowSteps::Name, 32),
                varchar(WorkflowSteps::Status, 12),
                integer(WorkflowSteps::Attempts).default(0).to_owned(),
                nullable(ts(WorkflowSteps::StartedAt)),
                nullable(ts(WorkflowSteps::FinishedAt)),
                nullable(text(WorkflowSteps::Error)),
            ],
            [
                cascade_foreign_key(
                    "fk_workflow_steps_workflow",
                    WorkflowSteps::WorkflowId,
                    (Workflows::Table, Workflows::Id),
                ),
                one_of(
                    "ck_workflow_steps_status",
                    WorkflowSteps::Status,
                    STEP_STATUSES,
                ),
            ],
            [ux(
                "ux_workflow_steps_position",
                [WorkflowSteps::WorkflowId, WorkflowSteps::Position],
            )],
        )
        .await
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
