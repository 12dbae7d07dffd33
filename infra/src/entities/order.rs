use sea_orm::entity::prelude::*;

/// A leveraged market order. Quantity, prices and amounts are minor units at
/// scale 8; the close columns are null while the order is open.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
#[sea_orm(table_name = "orders")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: i64,
    pub wallet_id: i64,
    pub wallet_kind: String,
    pub symbol: String,
    pub side: String,
    pub quantity: i64,
    pub leverage: i32,
    pub status: String,
    pub open_price: i64,
    pub close_price: Option<i64>,
    pub margin: i64,
    pub open_fee: i64,
    pub close_fee: Option<i64>,
    pub pnl: Option<i64>,
    pub written_off: Option<i64>,
    pub opened_at: DateTimeUtc,
    pub closed_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
