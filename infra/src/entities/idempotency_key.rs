use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "idempotency_keys")]
pub struct Model {
    /// SHA-256 (hex) of principal, method, route and the client's key.
    #[sea_orm(primary_key, auto_increment = false)]
    pub key: String,
    pub principal: String,
    pub route: String,
    pub request_hash: String,
    /// `processing` or `completed`.
    pub status: String,
    /// Identifies the request that holds the claim; only it may complete it.
    pub claim_token: Uuid,
    pub response_status: Option<i32>,
    pub response_body: Option<String>,
    pub locked_until_ms: i64,
    pub expires_at_ms: i64,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
