use sea_orm::entity::prelude::*;

/// A waiter for one or more resources. Times are epoch milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "transaction_queue")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub resources: String,
    pub owner_id: String,
    pub owner_type: String,
    pub created_by: String,
    pub priority: i32,
    pub transaction_type: String,
    pub transaction_data: String,
    pub idempotency_key: String,
    /// The lease the lock gets when the item is granted.
    pub ttl_ms: i64,
    /// `pending`, `granted`, `cancelled` or `expired`.
    pub status: String,
    /// The lock it was granted as.
    pub lock_id: Option<String>,
    pub queued_at_ms: i64,
    pub deadline_ms: i64,
    pub finished_at_ms: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
