//! Trading and referrals: prices, orders, referral commissions and bonuses,
//! and the per-(user, symbol) trade cooldown.

use sea_orm_migration::prelude::*;

use crate::columns::{
    bigint, bigint_zero, check, create_table, drop_tables, foreign_key, id, integer, ix,
    natural_key, nonneg, nullable, one_of, positive, primary_key, ts, user_fk, uuid, ux, varchar,
    wallet_fk,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

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

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_table(
            manager,
            Prices::Table,
            [
                natural_key(varchar(Prices::Symbol, 20)),
                bigint_zero(Prices::Price),
                ts(Prices::UpdatedAt),
            ],
            [positive("ck_prices_positive", Prices::Price)],
            [],
        )
        .await?;

        create_table(
            manager,
            Orders::Table,
            [
                id(Orders::Id),
                bigint(Orders::UserId),
                bigint(Orders::WalletId),
                varchar(Orders::WalletKind, 8),
                varchar(Orders::Symbol, 20),
                varchar(Orders::Side, 4),
                bigint_zero(Orders::Quantity),
                integer(Orders::Leverage),
                varchar(Orders::Status, 8),
                bigint_zero(Orders::OpenPrice),
                nullable(bigint(Orders::ClosePrice)),
                bigint_zero(Orders::Margin),
                bigint_zero(Orders::OpenFee),
                nullable(bigint(Orders::CloseFee)),
                nullable(bigint(Orders::Pnl)),
                nullable(bigint(Orders::WrittenOff)),
                ts(Orders::OpenedAt),
                nullable(ts(Orders::ClosedAt)),
            ],
            [
                user_fk("fk_orders_user", Orders::UserId),
                wallet_fk("fk_orders_wallet", Orders::WalletId),
                one_of("ck_orders_side", Orders::Side, ["buy", "sell"]),
                one_of("ck_orders_status", Orders::Status, ["open", "closed"]),
                positive("ck_orders_quantity_positive", Orders::Quantity),
                check("ck_orders_leverage", Expr::col(Orders::Leverage).gte(1)),
                nonneg("ck_orders_margin_nonneg", Orders::Margin),
            ],
            [
                ix("ix_orders_user", [Orders::UserId, Orders::Id]),
                ix(
                    "ix_orders_user_status",
                    [Orders::UserId, Orders::Status, Orders::Id],
                ),
            ],
        )
        .await?;

        create_table(
            manager,
            ReferralCommissions::Table,
            [
                id(ReferralCommissions::Id),
                bigint(ReferralCommissions::OrderId),
                varchar(ReferralCommissions::FeeKind, 8),
                integer(ReferralCommissions::Level),
                bigint(ReferralCommissions::ReferrerId),
                bigint(ReferralCommissions::RefereeId),
                bigint_zero(ReferralCommissions::Fee),
                bigint_zero(ReferralCommissions::Rate),
                bigint_zero(ReferralCommissions::Amount),
                varchar(ReferralCommissions::Status, 8),
                ts(ReferralCommissions::CreatedAt),
                nullable(ts(ReferralCommissions::SettledAt)),
                nullable(uuid(ReferralCommissions::SettlementId)),
            ],
            [
                foreign_key(
                    "fk_commissions_order",
                    ReferralCommissions::OrderId,
                    (Orders::Table, Orders::Id),
                ),
                user_fk("fk_commissions_referrer", ReferralCommissions::ReferrerId),
                user_fk("fk_commissions_referee", ReferralCommissions::RefereeId),
                one_of(
                    "ck_commissions_fee_kind",
                    ReferralCommissions::FeeKind,
                    ["open", "close"],
                ),
                one_of(
                    "ck_commissions_status",
                    ReferralCommissions::Status,
                    ["pending", "paid"],
                ),
                positive(
                    "ck_commissions_amount_positive",
                    ReferralCommissions::Amount,
                ),
                check(
                    "ck_commissions_not_own_referrer",
                    Expr::col(ReferralCommissions::ReferrerId)
                        .ne(Expr::col(ReferralCommissions::RefereeId)),
                ),
            ],
            [
                ux(
                    "ux_commissions_order_fee_level",
                    [
                        ReferralCommissions::OrderId,
                        ReferralCommissions::FeeKind,
                        ReferralCommissions::Level,
                    ],
                ),
                ix(
                    "ix_commissions_status",
                    [ReferralCommissions::Status, ReferralCommissions::Id],
                ),
                ix(
                    "ix_commissions_referrer",
                    [
                        ReferralCommissions::ReferrerId,
                        ReferralCommissions::Level,
                        ReferralCommissions::Status,
                    ],
                ),
            ],
        )
        .await?;

        create_table(
            manager,
            ReferralBonuses::Table,
            [
                id(ReferralBonuses::Id),
                bigint(ReferralBonuses::RefereeId),
                bigint(ReferralBonuses::BeneficiaryId),
                varchar(ReferralBonuses::Role, 8),
                bigint_zero(ReferralBonuses::Amount),
                uuid(ReferralBonuses::OperationId),
                ts(ReferralBonuses::CreatedAt),
            ],
            [
                user_fk("fk_bonuses_referee", ReferralBonuses::RefereeId),
                user_fk("fk_bonuses_beneficiary", ReferralBonuses::BeneficiaryId),
                one_of(
                    "ck_bonuses_role",
                    ReferralBonuses::Role,
                    ["referrer", "referee"],
                ),
                positive("ck_bonuses_amount_positive", ReferralBonuses::Amount),
            ],
            [
                // Once per referee: one referrer bonus and one referee bonus at most.
                ux(
                    "ux_bonuses_referee_role",
                    [ReferralBonuses::RefereeId, ReferralBonuses::Role],
                ),
                ix("ix_bonuses_beneficiary", [ReferralBonuses::BeneficiaryId]),
            ],
        )
        .await?;

        create_table(
            manager,
            TradeCooldowns::Table,
            [
                bigint(TradeCooldowns::UserId),
                varchar(TradeCooldowns::Symbol, 20),
                bigint(TradeCooldowns::LastOrderMs),
            ],
            [
                primary_key([TradeCooldowns::UserId, TradeCooldowns::Symbol]),
                user_fk("fk_cooldowns_user", TradeCooldowns::UserId),
            ],
            [],
        )
        .await
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
