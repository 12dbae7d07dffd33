use std::sync::Arc;

use domain::users::{self, Email, NewUser, ReferralCode};
use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::param::{Header, Path};
use poem_openapi::payload::Json;

use crate::auth::{Auth, Role};
use crate::error::ApiError;
use crate::replay::Stored;
use crate::routes::{ApiTags, run_idempotent};
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
        let ledger = &state.ledger;
        let (backend, demo_balance, referral) =
            (ledger.db.backend, ledger.demo_balance, &ledger.referral);
        run_idempotent(
            &state,
            &auth.0,
            "/api/v1/users",
            "create_user",
            key.0,
            &body.0,
            |txn| {
                let cmd = &cmd;
                async move { users::create_user(&txn, backend, demo_balance, referral, cmd).await }
            },
            |u: &domain::users::UserView| User::from(u),
        )
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
        let user = users::get_user(&state.ledger.db.conn, id.0).await?;
        Ok(Json(User::from(&user)))
    }
}
