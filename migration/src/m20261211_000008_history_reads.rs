//! Reads of a user's history that no longer grow with it, or with the
//! table.
//!
//! **A hold in a workflow.** Capturing or voiding a hold first asks whether
//! a workflow owns it (`workflows.hold_id`), which no index covered: every
//! capture and void read every workflow kept, 31–142 ms at 300,000. Most
//! workflows have no hold, so the index keeps only those that do.
//!
//! **A user's holds of one status.** The list filtered `(user_id, status)`
//! along `(user_id, id)` (or the primary key), checking the status row
//! after row: a user with no hold of that status read back through all of
//! theirs, or through the whole table (86–93 ms at 500,000 holds). With
//! `(user_id, status, id)` it reads the page's rows and no others.
//!
//! **Workflows of one status.** The admin's list of a status (those waiting
//! for a review, a payout, the failed ones) walked back through every
//! workflow to find the few in it: 62 ms at 300,000. With `(status, id)` it
//! reads the page's rows.

use sea_orm_migration::prelude::*;

use crate::columns::{create_indexes, drop_indexes, ix};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Holds {
    Table,
    UserId,
    Status,
    Id,
}

#[derive(DeriveIden)]
enum Workflows {
    Table,
    HoldId,
    Status,
    Id,
}

const HOLDS_BY_STATUS: &str = "ix_holds_user_status";
const WORKFLOWS_BY_HOLD: &str = "ix_workflows_hold";
const WORKFLOWS_BY_STATUS: &str = "ix_workflows_status";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_indexes(
            manager,
            Holds::Table,
            [ix(
                HOLDS_BY_STATUS,
                [Holds::UserId, Holds::Status, Holds::Id],
            )],
        )
        .await?;
        create_indexes(
            manager,
            Workflows::Table,
            [
                ix(WORKFLOWS_BY_HOLD, [Workflows::HoldId])
                    .and_where(Expr::col(Workflows::HoldId).is_not_null())
                    .to_owned(),
                ix(WORKFLOWS_BY_STATUS, [Workflows::Status, Workflows::Id]),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_indexes(
            manager,
            Workflows::Table,
            [WORKFLOWS_BY_STATUS, WORKFLOWS_BY_HOLD],
        )
        .await?;
        drop_indexes(manager, Holds::Table, [HOLDS_BY_STATUS]).await
    }
}
