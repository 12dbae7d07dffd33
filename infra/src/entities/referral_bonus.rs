use sea_orm::entity::prelude::*;

/// A signup bonus paid because `referee_id` signed up with a referral code:
/// to the referrer (`role = referrer`) or to the referee itself.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "referral_bonuses")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub referee_id: i64,
    pub beneficiary_id: i64,
    pub role: String,
    pub amount: i64,
    pub operation_id: Uuid,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
