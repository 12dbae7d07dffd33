//! Bodies of the Users routes.

use domain::ledger::users::UserView;
use poem_openapi::Object;

use crate::routes::shared::timestamp;
use crate::routes::wallets::body::Wallet;

#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct CreateUserRequest {
    #[oai(validator(max_length = 320, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$"))]
    pub email: String,
    /// Another user's referral code: that user becomes the referrer.
    #[oai(validator(max_length = 32, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$"))]
    pub referral_code: Option<String>,
}

#[derive(Object, Debug, Clone)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub account_number: String,
    pub referral_code: String,
    /// The user whose referral code this user signed up with.
    #[oai(nullable)]
    pub referrer_id: Option<i64>,
    pub created_at: String,
    pub wallets: Vec<Wallet>,
}

impl From<&UserView> for User {
    fn from(u: &UserView) -> Self {
        Self {
            id: u.id,
            email: u.email.clone(),
            account_number: u.account_number.clone(),
            referral_code: u.referral_code.clone(),
            referrer_id: u.referrer_id,
            created_at: timestamp(u.created_at),
            wallets: u.wallets.iter().map(Wallet::from).collect(),
        }
    }
}
