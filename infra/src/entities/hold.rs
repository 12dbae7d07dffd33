use sea_orm::entity::prelude::*;

/// Funds of one wallet reserved until `expires_at`: `held`, then exactly
/// once `captured` (`captured_amount` left the wallet, the rest was
/// released), `voided` or `expired`. Amounts are minor units at scale 8.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "holds")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: i64,
    pub wallet_id: i64,
    pub wallet_kind: String,
    pub amount: i64,
    pub captured_amount: i64,
    pub status: String,
    pub reference: Option<String>,
    pub expires_at: DateTimeUtc,
    /// `expires_at` in epoch milliseconds, for comparisons.
    pub expires_at_ms: i64,
    pub created_at: DateTimeUtc,
    pub finished_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
