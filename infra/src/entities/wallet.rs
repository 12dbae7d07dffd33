use sea_orm::entity::prelude::*;

/// Amounts are minor units at scale 8.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "wallets")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: i64,
    pub kind: String,
    pub currency: String,
    pub balance: i64,
    pub margin: i64,
    /// The sum of the wallet's active holds (`holds.status = 'held'`).
    pub held: i64,
    pub profit: i64,
    pub version: i64,
    pub last_hash: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
