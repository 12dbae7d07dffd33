//! The bearer security scheme of every `/api` route: the token is verified
//! and the principal's rate limit checked before a handler runs.

use std::sync::Arc;

use poem::Request;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;

use crate::error::ApiError;
use crate::state::AppState;
pub use crate::tokens::{Principal, Role, Tokens};

/// `Authorization: Bearer <JWT>`, HS256, claims `sub`, `role`, `exp`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "check_bearer")]
pub struct Auth(pub Principal);

async fn check_bearer(req: &Request, bearer: Bearer) -> poem::Result<Principal> {
    let state = req
        .data::<Arc<AppState>>()
        .ok_or_else(|| poem::Error::from(ApiError::internal()))?;
    let principal = state.tokens.verify(&bearer.token)?;
    if let Some(limiter) = &state.limiter {
        limiter.check(&principal.id())?;
    }
    Ok(principal)
}
