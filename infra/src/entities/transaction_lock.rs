use sea_orm::entity::prelude::*;

/// One grant of a lock on one or more resources. Times are epoch
/// milliseconds; `resources` is the sorted JSON array of the resource names,
/// `transaction_data` and `result` are JSON text.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "transaction_locks")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub resources: String,
    pub owner_id: String,
    pub owner_type: String,
    /// The principal that asked for it (a service may name another owner).
    pub created_by: String,
    /// `active`, `released`, `expired` or `failed`.
    pub status: String,
    pub fencing_token: i64,
    pub priority: i32,
    pub transaction_type: String,
    pub transaction_data: String,
    /// SHA-256 (hex) of owner, sorted resources, type and canonical data.
    pub idempotency_key: String,
    pub result: Option<String>,
    pub error: Option<String>,
    pub acquired_at_ms: i64,
    pub expires_at_ms: i64,
    pub released_at_ms: Option<i64>,
    pub released_by: Option<String>,
    pub release_reason: Option<String>,
    /// How long the grant waited in the queue; 0 when granted at once.
    pub wait_ms: i64,
    pub queue_id: Option<i64>,
    /// Counted in `lock_tally` (finished grants only, set by the cleanup):
    /// the lock statistics read the tally for these and the row for the
    /// others.
    pub tallied: bool,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
