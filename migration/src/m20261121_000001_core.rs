//! Users, wallets, the append-only journal and idempotency keys.

use sea_orm_migration::prelude::*;

use crate::columns::{
    bigint, bigint_zero, check, create_table, drop_tables, foreign_key, id, integer, ix,
    natural_key, nonneg, nullable, one_of, text, ts, user_fk, uuid, ux, varchar, wallet_fk,
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
        create_table(
            manager,
            Users::Table,
            [
                id(Users::Id),
                varchar(Users::Email, 320),
                varchar(Users::AccountNumber, 32),
                varchar(Users::ReferralCode, 32),
                nullable(bigint(Users::ReferrerId)),
                ts(Users::CreatedAt),
            ],
            [
                foreign_key(
                    "fk_users_referrer",
                    Users::ReferrerId,
                    (Users::Table, Users::Id),
                ),
                check(
                    "ck_users_not_own_referrer",
                    Expr::col(Users::ReferrerId).ne(Expr::col(Users::Id)),
                ),
            ],
            [
                ux("ux_users_email", [Users::Email]),
                ux("ux_users_account_number", [Users::AccountNumber]),
                ux("ux_users_referral_code", [Users::ReferralCode]),
                ix("ix_users_referrer", [Users::ReferrerId]),
            ],
        )
        .await?;

        let mut wallet_cols = vec![
            id(Wallets::Id),
            bigint(Wallets::UserId),
            varchar(Wallets::Kind, 8),
            varchar(Wallets::Currency, 3).default("USD").to_owned(),
        ];
        wallet_cols.extend(
            [
                Wallets::Balance,
                Wallets::Margin,
                Wallets::Profit,
                Wallets::Version,
            ]
            .map(bigint_zero),
        );
        wallet_cols.extend([
            varchar(Wallets::LastHash, 64),
            ts(Wallets::CreatedAt),
            ts(Wallets::UpdatedAt),
        ]);
        create_table(
            manager,
            Wallets::Table,
            wallet_cols,
            [
                user_fk("fk_wallets_user", Wallets::UserId),
                one_of("ck_wallets_kind", Wallets::Kind, ["live", "demo"]),
                nonneg("ck_wallets_balance_nonneg", Wallets::Balance),
                nonneg("ck_wallets_margin_nonneg", Wallets::Margin),
                check(
                    "ck_wallets_balance_covers_margin",
                    Expr::col(Wallets::Balance).gte(Expr::col(Wallets::Margin)),
                ),
            ],
            [ux("ux_wallets_user_kind", [Wallets::UserId, Wallets::Kind])],
        )
        .await?;

        let mut journal_cols = vec![
            id(JournalEntries::Id),
            uuid(JournalEntries::OperationId),
            bigint(JournalEntries::WalletId),
            bigint(JournalEntries::UserId),
            varchar(JournalEntries::WalletKind, 8),
            varchar(JournalEntries::Kind, 32),
        ];
        // What each of the wallet's three amounts moved by, and came to.
        journal_cols.extend(
            [
                JournalEntries::BalanceDelta,
                JournalEntries::MarginDelta,
                JournalEntries::ProfitDelta,
                JournalEntries::BalanceAfter,
                JournalEntries::MarginAfter,
                JournalEntries::ProfitAfter,
            ]
            .map(bigint_zero),
        );
        journal_cols.extend([
            nullable(varchar(JournalEntries::Reference, 255)),
            nullable(text(JournalEntries::Metadata)),
            ts(JournalEntries::CreatedAt),
            varchar(JournalEntries::Hash, 64),
        ]);
        create_table(
            manager,
            JournalEntries::Table,
            journal_cols,
            [wallet_fk("fk_journal_wallet", JournalEntries::WalletId)],
            [
                ix(
                    "ix_journal_wallet_id",
                    [JournalEntries::WalletId, JournalEntries::Id],
                ),
                ix(
                    "ix_journal_user_id",
                    [JournalEntries::UserId, JournalEntries::Id],
                ),
                ux(
                    "ux_journal_operation_wallet_kind",
                    [
                        JournalEntries::OperationId,
                        JournalEntries::WalletId,
                        JournalEntries::Kind,
                    ],
                ),
            ],
        )
        .await?;

        create_table(
            manager,
            IdempotencyKeys::Table,
            [
                natural_key(varchar(IdempotencyKeys::Key, 64)),
                varchar(IdempotencyKeys::Principal, 300),
                varchar(IdempotencyKeys::Route, 200),
                varchar(IdempotencyKeys::RequestHash, 64),
                varchar(IdempotencyKeys::Status, 16),
                uuid(IdempotencyKeys::ClaimToken),
                nullable(integer(IdempotencyKeys::ResponseStatus)),
                nullable(text(IdempotencyKeys::ResponseBody)),
                bigint(IdempotencyKeys::LockedUntilMs),
                bigint(IdempotencyKeys::ExpiresAtMs),
                ts(IdempotencyKeys::CreatedAt),
            ],
            [one_of(
                "ck_idempotency_status",
                IdempotencyKeys::Status,
                ["processing", "completed"],
            )],
            [ix("ix_idempotency_expires", [IdempotencyKeys::ExpiresAtMs])],
        )
        .await
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
