//! Trading and referrals: prices, orders, referral commissions and bonuses,
//! and the per-(user, symbol) trade cooldown.

use sea_orm_migration::prelude::*;

use crate::columns::{
    bigint, bigint_zero, drop_tables, foreign_key, id, index, integer, nullable_bigint,
    nullable_ts, nullable_uuid, ts, uuid, varchar,
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

fn user_fk(name: &str, table: impl IntoIden, col: impl IntoIden) -> ForeignKeyCreateStatement {
    foreign_key(name, (table, col), (Users::Table, Users::Id))
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Prices::Table)
                    .col(varchar(Prices::Symbol, 20).primary_key())
                    .col(bigint_zero(Prices::Price))
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
                    .col(bigint(Orders::UserId))
                    .col(bigint(Orders::WalletId))
                    .col(varchar(Orders::WalletKind, 8))
                    .col(varchar(Orders::Symbol, 20))
                    .col(varchar(Orders::Side, 4))
                    .col(bigint_zero(Orders::Quantity))
                    .col(integer(Orders::Leverage))
                    .col(varchar(Orders::Status, 8))
                    .col(bigint_zero(Orders::OpenPrice))
                    .col(nullable_bigint(Orders::ClosePrice))
                    .col(bigint_zero(Orders::Margin))
                    .col(bigint_zero(Orders::OpenFee))
                    .col(nullable_bigint(Orders::CloseFee))
                    .col(nullable_bigint(Orders::Pnl))
                    .col(nullable_bigint(Orders::WrittenOff))
                    .col(ts(Orders::OpenedAt))
                    .col(nullable_ts(Orders::ClosedAt))
                    .foreign_key(&mut user_fk(
                        "fk_orders_user",
                        Orders::Table,
                        Orders::UserId,
                    ))
                    .foreign_key(&mut foreign_key(
                        "fk_orders_wallet",
                        (Orders::Table, Orders::WalletId),
                        (Wallets::Table, Wallets::Id),
                    ))
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
                    .col(bigint(ReferralCommissions::OrderId))
                    .col(varchar(ReferralCommissions::FeeKind, 8))
                    .col(integer(ReferralCommissions::Level))
                    .col(bigint(ReferralCommissions::ReferrerId))
                    .col(bigint(ReferralCommissions::RefereeId))
                    .col(bigint_zero(ReferralCommissions::Fee))
                    .col(bigint_zero(ReferralCommissions::Rate))
                    .col(bigint_zero(ReferralCommissions::Amount))
                    .col(varchar(ReferralCommissions::Status, 8))
                    .col(ts(ReferralCommissions::CreatedAt))
                    .col(nullable_ts(ReferralCommissions::SettledAt))
                    .col(nullable_uuid(ReferralCommissions::SettlementId))
                    .foreign_key(&mut foreign_key(
                        "fk_commissions_order",
                        (ReferralCommissions::Table, ReferralCommissions::OrderId),
                        (Orders::Table, Orders::Id),
                    ))
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
                    .col(bigint(ReferralBonuses::RefereeId))
                    .col(bigint(ReferralBonuses::BeneficiaryId))
                    .col(varchar(ReferralBonuses::Role, 8))
                    .col(bigint_zero(ReferralBonuses::Amount))
                    .col(uuid(ReferralBonuses::OperationId))
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
                    .col(bigint(TradeCooldowns::UserId))
                    .col(varchar(TradeCooldowns::Symbol, 20))
                    .col(bigint(TradeCooldowns::LastOrderMs))
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
        drop_tables(
            manager,
            [
                TradeCooldowns::Table.into_iden(),
                ReferralBonuses::Table.into_iden(),
                ReferralCommissions::Table.into_iden(),
                Orders::Table.into_iden(),
                Prices::Table.into_iden(),
            ],
        )
        .await
    }
}
