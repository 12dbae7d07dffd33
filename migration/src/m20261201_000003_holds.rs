//! Holds: funds of a wallet reserved for a while, then captured, voided or
//! expired. A `holds` table; `wallets.held` (the sum of the wallet's active
//! holds) with `CHECK held >= 0` and `CHECK balance >= margin + held`; and
//! `held_delta` / `held_after` on journal entries. Existing wallets and
//! entries migrate with 0 held, which every invariant already allows.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::columns::{
    bigint, bigint_zero, drop_tables, foreign_key, id, index, nullable_ts, nullable_varchar, ts,
    varchar,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Wallets {
    Table,
    Id,
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
            manager
                .alter_table(
                    Table::alter()
                        .table(JournalEntries::Table)
                        .add_column(bigint_zero(col))
                        .to_owned(),
                )
                .await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(Holds::Table)
                    .col(id(Holds::Id))
                    .col(bigint(Holds::UserId))
                    .col(bigint(Holds::WalletId))
                    .col(varchar(Holds::WalletKind, 8))
                    .col(bigint(Holds::Amount))
                    .col(bigint_zero(Holds::CapturedAmount))
                    .col(varchar(Holds::Status, 8))
                    .col(nullable_varchar(Holds::Reference, 255))
                    .col(ts(Holds::ExpiresAt))
                    .col(bigint(Holds::ExpiresAtMs))
                    .col(ts(Holds::CreatedAt))
                    .col(nullable_ts(Holds::FinishedAt))
                    .foreign_key(&mut foreign_key(
                        "fk_holds_user",
                        (Holds::Table, Holds::UserId),
                        (Users::Table, Users::Id),
                    ))
                    .foreign_key(&mut foreign_key(
                        "fk_holds_wallet",
                        (Holds::Table, Holds::WalletId),
                        (Wallets::Table, Wallets::Id),
                    ))
                    .check((
                        "ck_holds_status",
                        Expr::col(Holds::Status).is_in(["held", "captured", "voided", "expired"]),
                    ))
                    .check(("ck_holds_amount_positive", Expr::col(Holds::Amount).gt(0)))
                    .check((
                        "ck_holds_captured_within_amount",
                        Expr::col(Holds::CapturedAmount)
                            .gte(0)
                            .and(Expr::col(Holds::CapturedAmount).lte(Expr::col(Holds::Amount))),
                    ))
                    .to_owned(),
            )
            .await?;
        // A user's holds, newest first, optionally by status.
        index(
            manager,
            "ix_holds_user",
            Holds::Table,
            vec![Holds::UserId, Holds::Id],
            false,
        )
        .await?;
        // The active holds of one wallet that are due (lazy expiry under the
        // wallet lock), and every due hold (the cleanup job).
        index(
            manager,
            "ix_holds_wallet_status_expiry",
            Holds::Table,
            vec![Holds::WalletId, Holds::Status, Holds::ExpiresAtMs],
            false,
        )
        .await?;
        index(
            manager,
            "ix_holds_status_expiry",
            Holds::Table,
            vec![Holds::Status, Holds::ExpiresAtMs],
            false,
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_tables(manager, [Holds::Table.into_iden()]).await?;
        let conn = manager.get_connection();
        for col in [JournalEntries::HeldDelta, JournalEntries::HeldAfter] {
            manager
                .alter_table(
                    Table::alter()
                        .table(JournalEntries::Table)
                        .drop_column(col)
                        .to_owned(),
                )
                .await?;
        }
        match manager.get_database_backend() {
            // SQLite drops a column only when no constraint names it; its
            // checks sit on the column itself, so they go with it.
            DbBackend::Sqlite => {
                manager
                    .alter_table(
                        Table::alter()
                            .table(Wallets::Table)
                            .drop_column(Wallets::Held)
                            .to_owned(),
                    )
                    .await
            }
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
