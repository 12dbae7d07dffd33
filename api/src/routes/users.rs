use std::sync::Arc;

use domain::ledger::users::{Email, NewUser, ReferralCode};
use poem::Request;
use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::param::{Header, Path};
use poem_openapi::payload::Json;

use crate::auth::{Auth, Role};
use crate::error::ApiError;
use crate::replay::Stored;
use crate::routes::{ApiTags, Idempotent};
use crate::state::AppState;
use crate::types::{CreateUserRequest, User};

#[derive(Default)]
pub struct UsersApi;

#[OpenApi]
impl UsersApi {
    /// Create a user with a `live` wallet at 0 and a `demo` wallet at the
    /// configured demo balance. With `referral_code`, that code's owner
    /// becomes the referrer and the signup bonuses are paid to both live
    /// wallets in the same transaction (configured; referrer "10", referee
    /// "0" by default); 422 `unknown_referral_code`. Roles: service, admin.
    /// Requires `Idempotency-Key`.
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
        #[oai(name = "Idempotency-Key")] key: Header<Option<String>>,
        body: Json<CreateUserRequest>,
    ) -> Result<Stored<User, 201>, ApiError> {
        auth.0.require(&[Role::Service, Role::Admin])?;
        let cmd = NewUser {
            email: Email::parse(&body.email)?,
            referral_code: body
                .referral_code
                .as_deref()
                .map(ReferralCode::parse)
                .transpose()?,
        };
        Idempotent::new(&auth.0, req, key.0, &body.0)?
            .execute(&state.ledger, &cmd)
            .await
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
    ) -> Result<Json<User>, ApiError> {
        auth.0
            .require_self_or(id.0, &[Role::Service, Role::Admin])?;
        let user = state.ledger.user(id.0).await?;
        Ok(Json(User::from(&user)))
    }
}
