pub mod body;

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use crate::error::{ApiError, Errors};
use crate::routes::ApiTags;
use crate::state::AppState;
use body::{BreakerInfo, Health, PoolInfo, Readiness};

#[derive(Default)]
pub struct HealthApi;

/// Readiness waits at most this for the probe's fresh look.
const FRESH_LOOK: std::time::Duration = std::time::Duration::from_millis(900);

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// The database answers and the server takes work.
    #[oai(status = 200)]
    Ready(Json<Readiness>),
}

/// The error statuses each operation can answer.
pub mod status {
    crate::statuses! {
        /// Only the router refuses a liveness probe: nothing else runs.
        Live: 405;
        Ready: 405, 500, 503;
    }
}

#[OpenApi]
impl HealthApi {
    /// Liveness: 200 while the process runs.
    #[oai(
        path = "/health",
        method = "get",
        operation_id = "health",
        tag = "ApiTags::Operations"
    )]
    async fn health(&self) -> Result<Json<Health>, Errors<status::Live>> {
        Ok(Json(Health {
            status: "ok".into(),
        }))
    }

    /// Readiness: 200 when the database answers the health probe (a
    /// connection of its own, so a busy pool is not an outage); 503 when it
    /// does not or the server is draining. Never waits on the pool.
    #[oai(
        path = "/health/ready",
        method = "get",
        operation_id = "ready",
        tag = "ApiTags::Operations"
    )]
    async fn ready(
        &self,
        state: Data<&Arc<AppState>>,
    ) -> Result<ReadyResponse, Errors<status::Ready>> {
        if state.is_draining() {
            return Err(ApiError::new(
                poem::http::StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Draining",
                "the server is shutting down",
            )
            .retry_after(1)
            .into());
        }
        let db = &state.ledger.db;
        if !db.health().look(FRESH_LOOK).await {
            return Err(ApiError::unavailable().into());
        }
        let stats = db.pool_stats();
        Ok(ReadyResponse::Ready(Json(Readiness {
            status: "ready".into(),
            database: "ok".into(),
            pool: PoolInfo {
                size: stats.size,
                idle: stats.idle,
                max: stats.max,
            },
            breakers: state
                .workflows
                .breakers
                .states()
                .into_iter()
                .map(|(provider, state)| BreakerInfo {
                    provider,
                    state: state.into(),
                })
                .collect(),
        })))
    }
}
