use sea_orm::entity::prelude::*;

/// A multi-step operation (`withdrawal`, `deposit`) and what a worker needs
/// to resume it: the step to run (`step`, `phase`), when (`next_run_at_ms`),
/// until when (`deadline_at_ms`), and the lease of the worker that owns it
/// (`lease_owner`, `lease_expires_at_ms`, `generation`). Amounts are minor
/// units at scale 8; `params` and `result` are JSON text.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "workflows")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub kind: String,
    pub user_id: i64,
    pub wallet_kind: String,
    pub amount: i64,
    pub status: String,
    pub params: String,
    pub result: Option<String>,
    pub error: Option<String>,
    pub hold_id: Option<i64>,
    pub step: i32,
    pub phase: String,
    pub next_run_at_ms: i64,
    pub deadline_at_ms: i64,
    pub lease_owner: Option<String>,
    pub lease_expires_at_ms: Option<i64>,
    pub generation: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
