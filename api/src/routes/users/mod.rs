pub mod body;

use std::sync::Arc;

use domain::ledger::users::{Email, NewUser, ReferralCode};
use poem::Request;
use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::param::{Header, Path};
use poem_openapi::payload::Json;

use crate::auth::Auth;
use crate::error::Errors;
use crate::replay::Stored;
use crate::routes::shared::IdempotencyKey;
use crate::routes::{ApiTags, BACK_OFFICE, Idempotent};
use crate::state::AppState;
use body::{CreateUserRequest, User};

#[derive(Default)]
pub struct UsersApi;

/// The error statuses each operation can answer.
pub mod status {
    crate::statuses! {
        CreateUser: 400, 401, 403, 405, 409, 413, 415, 422, 429, 500, 503;
        GetUser: 400, 401, 403, 404, 405, 429, 500, 503;
    }
}

#[OpenApi]
impl UsersApi {
    /// Create a user with a `live` wallet at 0 and a `demo` wallet at the
    /// configured demo balance. With `referral_code`, that code's owner
    /// becomes the referrer and the signup bonuses are paid to both live
    /// wallets in the same transaction (configured; referrer "10", referee
    /// "0" by default); 422 `unknown_referral_code`, 409 duplicate email.
    /// Roles: service, admin. Requires `Idempotency-Key`.
    #[oai(
        path = "/api/v1/users",
        method = "post",
        operation_id = "create_user",
        tag = "ApiTags::Users"
    )]
    async fn create_user(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        req: &Request,
        #[oai(name = "Idempotency-Key")] key: Header<IdempotencyKey>,
        body: Json<CreateUserRequest>,
    ) -> Result<Stored<User, 201>, Errors<status::CreateUser>> {
        auth.0.require(BACK_OFFICE)?;
        let cmd = NewUser {
            email: Email::parse(&body.email)?,
            referral_code: body
                .referral_code
                .as_deref()
                .map(ReferralCode::parse)
                .transpose()?,
        };
        Ok(Idempotent::new(&auth.0, req, &key, &body.0)
            .execute(&state.ledger, &cmd)
            .await?)
    }

    /// A user with its wallets. Roles: the user itself, service, admin.
    #[oai(
        path = "/api/v1/users/:id",
        method = "get",
        operation_id = "get_user",
        tag = "ApiTags::Users"
    )]
    async fn get_user(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        id: Path<i64>,
    ) -> Result<Json<User>, Errors<status::GetUser>> {
        auth.0.require_self_or(id.0, BACK_OFFICE)?;
        let user = state.ledger.user(id.0).await?;
        Ok(Json(User::from(&user)))
    }
}
