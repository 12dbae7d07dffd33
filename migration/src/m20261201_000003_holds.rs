//! Holds: funds of a wallet reserved for a while, then captured, voided or
//! expired. A `holds` table; `wallets.held` (the sum of the wallet's active
//! holds) with `CHECK held >= 0` and `CHECK balance >= margin + held`; and
//! `held_delta` / `held_after` on journal entries. Existing wallets and
//! entries migrate with 0 held, which every invariant already allows.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::columns::{
    add_column, bigint, bigint_zero, check, create_table, drop_column, drop_tables, id, ix,
    nullable, one_of, positive, ts, user_fk, varchar, wallet_fk,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Wallets {
    Table,
    Held,
}

#[derive(DeriveIden)]
enum JournalEntries {
    Table,
    HeldDelta,
    HeldAfter,
}

#[derive(DeriveIden)]
enum Holds {
    Table,
    Id,
    UserId,
    WalletId,
    WalletKind,
    Amount,
    CapturedAmount,
    Status,
    Reference,
    ExpiresAt,
    /// `expires_at` in epoch milliseconds: what expiry checks compare, the
    /// same way on both engines.
    ExpiresAtMs,
    CreatedAt,
    FinishedAt,
}

/// `ALTER TABLE wallets ADD COLUMN held` with its two checks. PostgreSQL
/// adds them as table constraints; SQLite cannot add a table constraint to
/// an existing table, but takes the same named checks on the new column
/// (SQLite lets a column check read the other columns of its row).
fn add_held_to_wallets(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Sqlite => {
            "ALTER TABLE wallets ADD COLUMN held BIGINT NOT NULL DEFAULT 0 \
             CONSTRAINT ck_wallets_held_nonneg CHECK (held >= 0) \
             CONSTRAINT ck_wallets_balance_covers_margin_and_held \
             CHECK (balance >= margin + held)"
        }
        _ => {
            "ALTER TABLE wallets ADD COLUMN held BIGINT NOT NULL DEFAULT 0, \
             ADD CONSTRAINT ck_wallets_held_nonneg CHECK (held >= 0), \
             ADD CONSTRAINT ck_wallets_balance_covers_margin_and_held \
             CHECK (balance >= margin + held)"
        }
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let conn = manager.get_connection();
        conn.execute_unprepared(add_held_to_wallets(manager.get_database_backend()))
            .await?;
        // SQLite takes one column per ALTER TABLE.
        for col in [JournalEntries::HeldDelta, JournalEntries::HeldAfter] {
            add_column(manager, JournalEntries::Table, bigint_zero(col)).await?;
        }

        create_table(
            manager,
            Holds::Table,
            [
                id(Holds::Id),
                bigint(Holds::UserId),
                bigint(Holds::WalletId),
                varchar(Holds::WalletKind, 8),
                bigint(Holds::Amount),
                bigint_zero(Holds::CapturedAmount),
                varchar(Holds::Status, 8),
                nullable(varchar(Holds::Reference, 255)),
                ts(Holds::ExpiresAt),
                bigint(Holds::ExpiresAtMs),
                ts(Holds::CreatedAt),
                nullable(ts(Holds::FinishedAt)),
            ],
            [
                user_fk("fk_holds_user", Holds::UserId),
                wallet_fk("fk_holds_wallet", Holds::WalletId),
                one_of(
                    "ck_holds_status",
                    Holds::Status,
                    ["held", "captured", "voided", "expired"],
                ),
                positive("ck_holds_amount_positive", Holds::Amount),
                check(
                    "ck_holds_captured_within_amount",
                    Expr::col(Holds::CapturedAmount)
                        .gte(0)
                        .and(Expr::col(Holds::CapturedAmount).lte(Expr::col(Holds::Amount))),
                ),
            ],
            [
                // A user's holds, newest first, optionally by status.
                ix("ix_holds_user", [Holds::UserId, Holds::Id]),
                // The active holds of one wallet that are due (lazy expiry
                // under the wallet lock), and every due hold (the cleanup job).
                ix(
                    "ix_holds_wallet_status_expiry",
                    [Holds::WalletId, Holds::Status, Holds::ExpiresAtMs],
                ),
                ix(
                    "ix_holds_status_expiry",
                    [Holds::Status, Holds::ExpiresAtMs],
                ),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_tables(manager, [Holds::Table.into_iden()]).await?;
        let conn = manager.get_connection();
        for col in [JournalEntries::HeldDelta, JournalEntries::HeldAfter] {
            drop_column(manager, JournalEntries::Table, col).await?;
        }
        match manager.get_database_backend() {
            // SQLite drops a column only when no constraint names it; its
            // checks sit on the column itself, so they go with it.
            DbBackend::Sqlite => drop_column(manager, Wallets::Table, Wallets::Held).await,
            _ => conn
                .execute_unprepared(
                    "ALTER TABLE wallets DROP CONSTRAINT ck_wallets_balance_covers_margin_and_held, \
                     DROP CONSTRAINT ck_wallets_held_nonneg, DROP COLUMN held",
                )
                .await
                .map(|_| ()),
        }
    }
}
