use sea_orm::entity::prelude::*;

/// One upline level's share of one order fee: accrued `pending` in the
/// order's transaction, `paid` by settlement. Unique per (order, fee, level).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "referral_commissions")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub order_id: i64,
    pub fee_kind: String,
    pub level: i32,
    pub referrer_id: i64,
    pub referee_id: i64,
    pub fee: i64,
    /// The rate applied, minor units at scale 8 (0.2 = 20_000_000).
    pub rate: i64,
    pub amount: i64,
    pub status: String,
    pub created_at: DateTimeUtc,
    pub settled_at: Option<DateTimeUtc>,
    pub settlement_id: Option<Uuid>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
