use sea_orm::entity::prelude::*;

/// One resource of one lock. A unique partial index on `resource_id` where
/// `status = 'active'` allows one active grant per resource.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "transaction_lock_resources")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub lock_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub resource_id: String,
    /// Mirrors the lock's status.
    pub status: String,
    pub fencing_token: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
