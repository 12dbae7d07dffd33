//! Trading and referrals: prices, orders, referral commissions and bonuses,
//! and the per-(user, symbol) trade cooldown.

use sea_orm_migration::prelude::*;

use crate::m20261121_000001_core::{big, id, index, ts};

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
}

#[derive(DeriveIden)]
enum Prices {
    Table,
    Symbol,
    Price,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Orders {
    Table,
    Id,
    UserId,
    WalletId,
    WalletKind,
    Symbol,
    Side,
    Quantity,
    Leverage,
    Status,
    OpenPrice,
    ClosePrice,
    Margin,
    OpenFee,
    CloseFee,
    Pnl,
    WrittenOff,
    OpenedAt,
    ClosedAt,
}

#[derive(DeriveIden)]
enum ReferralCommissions {
    Table,
    Id,
    OrderId,
    FeeKind,
    Level,
    ReferrerId,
    RefereeId,
    Fee,
    Rate,
    Amount,
    Status,
    CreatedAt,
    SettledAt,
    SettlementId,
}

#[derive(DeriveIden)]
enum ReferralBonuses {
    Table,
    Id,
    RefereeId,
    BeneficiaryId,
    Role,
    Amount,
    OperationId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum TradeCooldowns {
    Table,
    UserId,
    Symbol,
    LastOrderMs,
}

fn nullable_big(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).big_integer().null().to_owned()
}

fn text(col: impl IntoIden, len: u32) -> ColumnDef {
    ColumnDef::new(col).string_len(len).not_null().to_owned()
}

fn user_fk(name: &str, table: impl IntoIden, col: impl IntoIden) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(name)
        .from(table, col)
        .to(Users::Table, Users::Id)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Prices::Table)
                    .col(text(Prices::Symbol, 20).primary_key())
                    .col(big(Prices::Price))
                    .col(ts(Prices::UpdatedAt))
                    .check(("ck_prices_positive", Expr::col(Prices::Price).gt(0)))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Orders::Table)
                    .col(id(Orders::Id))
                    .col(ColumnDef::new(Orders::UserId).big_integer().not_null())
                    .col(ColumnDef::new(Orders::WalletId).big_integer().not_null())
                    .col(text(Orders::WalletKind, 8))
                    .col(text(Orders::Symbol, 20))
                    .col(text(Orders::Side, 4))
                    .col(big(Orders::Quantity))
                    .col(ColumnDef::new(Orders::Leverage).integer().not_null())
                    .col(text(Orders::Status, 8))
                    .col(big(Orders::OpenPrice))
                    .col(nullable_big(Orders::ClosePrice))
                    .col(big(Orders::Margin))
                    .col(big(Orders::OpenFee))
                    .col(nullable_big(Orders::CloseFee))
                    .col(nullable_big(Orders::Pnl))
                    .col(nullable_big(Orders::WrittenOff))
                    .col(ts(Orders::OpenedAt))
                    .col(
                        ColumnDef::new(Orders::ClosedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .foreign_key(&mut user_fk(
                        "fk_orders_user",
                        Orders::Table,
                        Orders::UserId,
                    ))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_orders_wallet")
                            .from(Orders::Table, Orders::WalletId)
                            .to(Wallets::Table, Wallets::Id),
                    )
                    .check((
                        "ck_orders_side",
                        Expr::col(Orders::Side).is_in(["buy", "sell"]),
                    ))
                    .check((
                        "ck_orders_status",
                        Expr::col(Orders::Status).is_in(["open", "closed"]),
                    ))
                    .check((
                        "ck_orders_quantity_positive",
                        Expr::col(Orders::Quantity).gt(0),
                    ))
                    .check(("ck_orders_leverage", Expr::col(Orders::Leverage).gte(1)))
                    .check(("ck_orders_margin_nonneg", Expr::col(Orders::Margin).gte(0)))
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "ix_orders_user",
            Orders::Table,
            vec![Orders::UserId, Orders::Id],
            false,
        )
        .await?;
        index(
            manager,
            "ix_orders_user_status",
            Orders::Table,
            vec![Orders::UserId, Orders::Status, Orders::Id],
            false,
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(ReferralCommissions::Table)
                    .col(id(ReferralCommissions::Id))
                    .col(
                        ColumnDef::new(ReferralCommissions::OrderId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(text(ReferralCommissions::FeeKind, 8))
                    .col(
                        ColumnDef::new(ReferralCommissions::Level)
                            .integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ReferralCommissions::ReferrerId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ReferralCommissions::RefereeId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(big(ReferralCommissions::Fee))
                    .col(big(ReferralCommissions::Rate))
                    .col(big(ReferralCommissions::Amount))
                    .col(text(ReferralCommissions::Status, 8))
                    .col(ts(ReferralCommissions::CreatedAt))
                    .col(
                        ColumnDef::new(ReferralCommissions::SettledAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(ReferralCommissions::SettlementId)
                            .uuid()
                            .null(),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_commissions_order")
                            .from(ReferralCommissions::Table, ReferralCommissions::OrderId)
                            .to(Orders::Table, Orders::Id),
                    )
                    .foreign_key(&mut user_fk(
                        "fk_commissions_referrer",
                        ReferralCommissions::Table,
                        ReferralCommissions::ReferrerId,
                    ))
                    .foreign_key(&mut user_fk(
                        "fk_commissions_referee",
                        ReferralCommissions::Table,
                        ReferralCommissions::RefereeId,
                    ))
                    .check((
                        "ck_commissions_fee_kind",
                        Expr::col(ReferralCommissions::FeeKind).is_in(["open", "close"]),
                    ))
                    .check((
                        "ck_commissions_status",
                        Expr::col(ReferralCommissions::Status).is_in(["pending", "paid"]),
                    ))
                    .check((
                        "ck_commissions_amount_positive",
                        Expr::col(ReferralCommissions::Amount).gt(0),
                    ))
                    .check((
                        "ck_commissions_not_own_referrer",
                        Expr::col(ReferralCommissions::ReferrerId)
                            .ne(Expr::col(ReferralCommissions::RefereeId)),
                    ))
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "ux_commissions_order_fee_level",
            ReferralCommissions::Table,
            vec![
                ReferralCommissions::OrderId.into_iden(),
                ReferralCommissions::FeeKind.into_iden(),
                ReferralCommissions::Level.into_iden(),
            ],
            true,
        )
        .await?;
        index(
            manager,
            "ix_commissions_status",
            ReferralCommissions::Table,
            vec![ReferralCommissions::Status, ReferralCommissions::Id],
            false,
        )
        .await?;
        index(
            manager,
            "ix_commissions_referrer",
            ReferralCommissions::Table,
            vec![
                ReferralCommissions::ReferrerId,
                ReferralCommissions::Level,
                ReferralCommissions::Status,
            ],
            false,
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(ReferralBonuses::Table)
                    .col(id(ReferralBonuses::Id))
                    .col(
                        ColumnDef::new(ReferralBonuses::RefereeId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ReferralBonuses::BeneficiaryId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(text(ReferralBonuses::Role, 8))
                    .col(big(ReferralBonuses::Amount))
                    .col(
                        ColumnDef::new(ReferralBonuses::OperationId)
                            .uuid()
                            .not_null(),
                    )
                    .col(ts(ReferralBonuses::CreatedAt))
                    .foreign_key(&mut user_fk(
                        "fk_bonuses_referee",
                        ReferralBonuses::Table,
                        ReferralBonuses::RefereeId,
                    ))
                    .foreign_key(&mut user_fk(
                        "fk_bonuses_beneficiary",
                        ReferralBonuses::Table,
                        ReferralBonuses::BeneficiaryId,
                    ))
                    .check((
                        "ck_bonuses_role",
                        Expr::col(ReferralBonuses::Role).is_in(["referrer", "referee"]),
                    ))
                    .check((
                        "ck_bonuses_amount_positive",
                        Expr::col(ReferralBonuses::Amount).gt(0),
                    ))
                    .to_owned(),
            )
            .await?;
        // Once per referee: one referrer bonus and one referee bonus at most.
        index(
            manager,
            "ux_bonuses_referee_role",
            ReferralBonuses::Table,
            vec![ReferralBonuses::RefereeId, ReferralBonuses::Role],
            true,
        )
        .await?;
        index(
            manager,
            "ix_bonuses_beneficiary",
            ReferralBonuses::Table,
            vec![ReferralBonuses::BeneficiaryId],
            false,
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(TradeCooldowns::Table)
                    .col(
                        ColumnDef::new(TradeCooldowns::UserId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(text(TradeCooldowns::Symbol, 20))
                    .col(
                        ColumnDef::new(TradeCooldowns::LastOrderMs)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(TradeCooldowns::UserId)
                            .col(TradeCooldowns::Symbol),
                    )
                    .foreign_key(&mut user_fk(
                        "fk_cooldowns_user",
                        TradeCooldowns::Table,
                        TradeCooldowns::UserId,
                    ))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            TradeCooldowns::Table.into_iden(),
            ReferralBonuses::Table.into_iden(),
            ReferralCommissions::Table.into_iden(),
            Orders::Table.into_iden(),
            Prices::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
