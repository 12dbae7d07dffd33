//! Users, wallets, the append-only journal and idempotency keys.

use sea_orm_migration::prelude::*;

use crate::columns::{
    bigint, bigint_zero, drop_tables, foreign_key, id, index, nullable_bigint, nullable_integer,
    nullable_text, nullable_varchar, ts, uuid, varchar,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Email,
    AccountNumber,
    ReferralCode,
    ReferrerId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Wallets {
    Table,
    Id,
    UserId,
    Kind,
    Currency,
    Balance,
    Margin,
    Profit,
    Version,
    LastHash,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum JournalEntries {
    Table,
    Id,
    OperationId,
    WalletId,
    UserId,
    WalletKind,
    Kind,
    BalanceDelta,
    MarginDelta,
    ProfitDelta,
    BalanceAfter,
    MarginAfter,
    ProfitAfter,
    Reference,
    Metadata,
    CreatedAt,
    Hash,
}

#[derive(DeriveIden)]
enum IdempotencyKeys {
    Table,
    Key,
    Principal,
    Route,
    RequestHash,
    Status,
    ClaimToken,
    ResponseStatus,
    ResponseBody,
    LockedUntilMs,
    ExpiresAtMs,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .col(id(Users::Id))
                    .col(varchar(Users::Email, 320))
                    .col(varchar(Users::AccountNumber, 32))
                    .col(varchar(Users::ReferralCode, 32))
                    .col(nullable_bigint(Users::ReferrerId))
                    .col(ts(Users::CreatedAt))
                    .foreign_key(&mut foreign_key(
                        "fk_users_referrer",
                        (Users::Table, Users::ReferrerId),
                        (Users::Table, Users::Id),
                    ))
                    .check((
                        "ck_users_not_own_referrer",
                        Expr::col(Users::ReferrerId).ne(Expr::col(Users::Id)),
                    ))
                    .to_owned(),
            )
            .await?;
        for (name, col) in [
            ("ux_users_email", Users::Email),
            ("ux_users_account_number", Users::AccountNumber),
            ("ux_users_referral_code", Users::ReferralCode),
        ] {
            index(manager, name, Users::Table, vec![col], true).await?;
        }
        index(
            manager,
            "ix_users_referrer",
            Users::Table,
            vec![Users::ReferrerId],
            false,
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(Wallets::Table)
                    .col(id(Wallets::Id))
                    .col(bigint(Wallets::UserId))
                    .col(varchar(Wallets::Kind, 8))
                    .col(varchar(Wallets::Currency, 3).default("USD"))
                    .col(bigint_zero(Wallets::Balance))
                    .col(bigint_zero(Wallets::Margin))
                    .col(bigint_zero(Wallets::Profit))
                    .col(bigint_zero(Wallets::Version))
                    .col(varchar(Wallets::LastHash, 64))
                    .col(ts(Wallets::CreatedAt))
                    .col(ts(Wallets::UpdatedAt))
                    .foreign_key(&mut foreign_key(
                        "fk_wallets_user",
                        (Wallets::Table, Wallets::UserId),
                        (Users::Table, Users::Id),
                    ))
                    .check((
                        "ck_wallets_kind",
                        Expr::col(Wallets::Kind).is_in(["live", "demo"]),
                    ))
                    .check((
                        "ck_wallets_balance_nonneg",
                        Expr::col(Wallets::Balance).gte(0),
                    ))
                    .check((
                        "ck_wallets_margin_nonneg",
                        Expr::col(Wallets::Margin).gte(0),
                    ))
                    .check((
                        "ck_wallets_balance_covers_margin",
                        Expr::col(Wallets::Balance).gte(Expr::col(Wallets::Margin)),
                    ))
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "ux_wallets_user_kind",
            Wallets::Table,
            vec![Wallets::UserId, Wallets::Kind],
            true,
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(JournalEntries::Table)
                    .col(id(JournalEntries::Id))
                    .col(uuid(JournalEntries::OperationId))
                    .col(bigint(JournalEntries::WalletId))
                    .col(bigint(JournalEntries::UserId))
                    .col(varchar(JournalEntries::WalletKind, 8))
                    .col(varchar(JournalEntries::Kind, 32))
                    .col(bigint_zero(JournalEntries::BalanceDelta))
                    .col(bigint_zero(JournalEntries::MarginDelta))
                    .col(bigint_zero(JournalEntries::ProfitDelta))
                    .col(bigint_zero(JournalEntries::BalanceAfter))
                    .col(bigint_zero(JournalEntries::MarginAfter))
                    .col(bigint_zero(JournalEntries::ProfitAfter))
                    .col(nullable_varchar(JournalEntries::Reference, 255))
                    .col(nullable_text(JournalEntries::Metadata))
                    .col(ts(JournalEntries::CreatedAt))
                    .col(varchar(JournalEntries::Hash, 64))
                    .foreign_key(&mut foreign_key(
                        "fk_journal_wallet",
                        (JournalEntries::Table, JournalEntries::WalletId),
                        (Wallets::Table, Wallets::Id),
                    ))
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "ix_journal_wallet_id",
            JournalEntries::Table,
            vec![JournalEntries::WalletId, JournalEntries::Id],
            false,
        )
        .await?;
        index(
            manager,
            "ix_journal_user_id",
            JournalEntries::Table,
            vec![JournalEntries::UserId, JournalEntries::Id],
            false,
        )
        .await?;
        index(
            manager,
            "ux_journal_operation_wallet_kind",
            JournalEntries::Table,
            vec![
                JournalEntries::OperationId,
                JournalEntries::WalletId,
                JournalEntries::Kind,
            ],
            true,
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(IdempotencyKeys::Table)
                    .col(varchar(IdempotencyKeys::Key, 64).primary_key())
                    .col(varchar(IdempotencyKeys::Principal, 300))
                    .col(varchar(IdempotencyKeys::Route, 200))
                    .col(varchar(IdempotencyKeys::RequestHash, 64))
                    .col(varchar(IdempotencyKeys::Status, 16))
                    .col(uuid(IdempotencyKeys::ClaimToken))
                    .col(nullable_integer(IdempotencyKeys::ResponseStatus))
                    .col(nullable_text(IdempotencyKeys::ResponseBody))
                    .col(bigint(IdempotencyKeys::LockedUntilMs))
                    .col(bigint(IdempotencyKeys::ExpiresAtMs))
                    .col(ts(IdempotencyKeys::CreatedAt))
                    .check((
                        "ck_idempotency_status",
                        Expr::col(IdempotencyKeys::Status).is_in(["processing", "completed"]),
                    ))
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "ix_idempotency_expires",
            IdempotencyKeys::Table,
            vec![IdempotencyKeys::ExpiresAtMs],
            false,
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_tables(
            manager,
            [
                IdempotencyKeys::Table.into_iden(),
                JournalEntries::Table.into_iden(),
                Wallets::Table.into_iden(),
                Users::Table.into_iden(),
            ],
        )
        .await
    }
}
