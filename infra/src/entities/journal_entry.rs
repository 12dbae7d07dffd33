use sea_orm::entity::prelude::*;

/// Append-only. Amounts are minor units at scale 8.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "journal_entries")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub operation_id: Uuid,
    pub wallet_id: i64,
    pub user_id: i64,
    pub wallet_kind: String,
    pub kind: String,
    pub balance_delta: i64,
    pub margin_delta: i64,
    pub profit_delta: i64,
    pub balance_after: i64,
    pub margin_after: i64,
    pub profit_after: i64,
    pub held_delta: i64,
    pub held_after: i64,
    pub reference: Option<String>,
    pub metadata: Option<String>,
    pub created_at: DateTimeUtc,
    pub hash: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
