//! Users, wallets, the append-only journal and idempotency keys.

use sea_orm_migration::prelude::*;

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

pub(crate) fn big(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .big_integer()
        .not_null()
        .default(0)
        .to_owned()
}

pub(crate) fn id(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .big_integer()
        .not_null()
        .auto_increment()
        .primary_key()
        .to_owned()
}

pub(crate) async fn index<T: IntoIden, C: IntoIden>(
    manager: &SchemaManager<'_>,
    name: &str,
    table: T,
    cols: Vec<C>,
    unique: bool,
) -> Result<(), DbErr> {
    let mut index = Index::create();
    index.name(name).table(table);
    for col in cols {
        index.col(col);
    }
    if unique {
        index.unique();
    }
    manager.create_index(index.to_owned()).await
}

pub(crate) fn ts(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .col(id(Users::Id))
                    .col(ColumnDef::new(Users::Email).string_len(320).not_null())
                    .col(
                        ColumnDef::new(Users::AccountNumber)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Users::ReferralCode)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Users::ReferrerId).big_integer().null())
                    .col(ts(Users::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_users_referrer")
                            .from(Users::Table, Users::ReferrerId)
                            .to(Users::Table, Users::Id),
                    )
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
                    .col(ColumnDef::new(Wallets::UserId).big_integer().not_null())
                    .col(ColumnDef::new(Wallets::Kind).string_len(8).not_null())
                    .col(
                        ColumnDef::new(Wallets::Currency)
                            .string_len(3)
                            .not_null()
                            .default("USD"),
                    )
                    .col(big(Wallets::Balance))
                    .col(big(Wallets::Margin))
                    .col(big(Wallets::Profit))
                    .col(big(Wallets::Version))
                    .col(ColumnDef::new(Wallets::LastHash).string_len(64).not_null())
                    .col(ts(Wallets::CreatedAt))
                    .col(ts(Wallets::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_wallets_user")
                            .from(Wallets::Table, Wallets::UserId)
                            .to(Users::Table, Users::Id),
                    )
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
                    .col(
                        ColumnDef::new(JournalEntries::OperationId)
                            .uuid()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(JournalEntries::WalletId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(JournalEntries::UserId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(JournalEntries::WalletKind)
                            .string_len(8)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(JournalEntries::Kind)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(big(JournalEntries::BalanceDelta))
                    .col(big(JournalEntries::MarginDelta))
                    .col(big(JournalEntries::ProfitDelta))
                    .col(big(JournalEntries::BalanceAfter))
                    .col(big(JournalEntries::MarginAfter))
                    .col(big(JournalEntries::ProfitAfter))
                    .col(
                        ColumnDef::new(JournalEntries::Reference)
                            .string_len(255)
                            .null(),
                    )
                    .col(ColumnDef::new(JournalEntries::Metadata).text().null())
                    .col(ts(JournalEntries::CreatedAt))
                    .col(
                        ColumnDef::new(JournalEntries::Hash)
                            .string_len(64)
                            .not_null(),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_journal_wallet")
                            .from(JournalEntries::Table, JournalEntries::WalletId)
                            .to(Wallets::Table, Wallets::Id),
                    )
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
                    .col(
                        ColumnDef::new(IdempotencyKeys::Key)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(IdempotencyKeys::Principal)
                            .string_len(300)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(IdempotencyKeys::Route)
                            .string_len(200)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(IdempotencyKeys::RequestHash)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(IdempotencyKeys::Status)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(IdempotencyKeys::ClaimToken)
                            .uuid()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(IdempotencyKeys::ResponseStatus)
                            .integer()
                            .null(),
                    )
                    .col(ColumnDef::new(IdempotencyKeys::ResponseBody).text().null())
                    .col(
                        ColumnDef::new(IdempotencyKeys::LockedUntilMs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(IdempotencyKeys::ExpiresAtMs)
                            .big_integer()
                            .not_null(),
                    )
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
        for table in [
            IdempotencyKeys::Table.into_iden(),
            JournalEntries::Table.into_iden(),
            Wallets::Table.into_iden(),
            Users::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
