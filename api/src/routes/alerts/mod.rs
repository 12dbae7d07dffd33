pub mod body;

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::payload::Json;

use crate::auth::{Auth, Role};
use crate::error::Errors;
use crate::routes::ApiTags;
use crate::state::AppState;
use body::{Alert, AlertList};

#[derive(Default)]
pub struct AlertsApi;

/// The error statuses each operation can answer.
pub mod status {
    crate::statuses! {
        ListAlerts: 400, 401, 403, 405, 429, 500, 503;
    }
}

#[OpenApi]
impl AlertsApi {
    /// The alerts firing now, evaluated in this process over the last 5
    /// minutes of its own metrics (those `/metrics` exports).
    ///
    /// The same rules, by the same names, are in
    /// `deploy/prometheus/ledger.rules.yml` for Prometheus. Counts are
    /// increases over the window. A rule fires while its `value` is above its
    /// `threshold`:
    ///
    /// * `high_error_rate` (critical): 5xx responses over all responses,
    ///   threshold 0.05 (5 %); only with at least 20 requests in the window.
    /// * `high_timeout_rate` (warning): requests shed because no database
    ///   connection came within the wait budget (`ledger_requests_shed_total`
    ///   with reason `overloaded`) plus 504 responses, over all responses;
    ///   threshold 0.02 (2 %); only with at least 20 requests.
    /// * `high_latency_p99` (warning): the 99th percentile of request
    ///   latency in seconds, threshold 5, from the window's histogram buckets
    ///   as `histogram_quantile` computes it (linear inside a bucket; 10, the
    ///   last bound, when it lies beyond); only with at least 20 requests.
    /// * `recovery_failures` (critical): recovery passes that ended in an
    ///   error, threshold 0.
    /// * `deadlock_retries` (warning): transactions retried after a
    ///   deadlock, threshold 0.
    /// * `circuit_breaker_open` (critical): one alert per provider whose
    ///   circuit breaker is open now, named in `provider`; value 1,
    ///   threshold 0.
    ///
    /// `since` is when the alert started firing: it stays the same while the
    /// alert fires at every evaluation (every 10 s and at each request) and
    /// is forgotten once it stops. Roles: admin.
    #[oai(
        path = "/api/v1/alerts",
        method = "get",
        operation_id = "list_alerts",
        tag = "ApiTags::Alerts"
    )]
    async fn list_alerts(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
    ) -> Result<Json<AlertList>, Errors<status::ListAlerts>> {
        auth.0.require(&[Role::Admin])?;
        let alerts = state.alerts.firing();
        Ok(Json(AlertList {
            alerts: alerts.iter().map(Alert::from).collect(),
        }))
    }
}
