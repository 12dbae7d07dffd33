use sea_orm::entity::prelude::*;

/// One resource a queue item waits for.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "transaction_queue_resources")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub queue_id: i64,
    #[sea_orm(primary_key, auto_increment = false)]
    pub resource_id: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
