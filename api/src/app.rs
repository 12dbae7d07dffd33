//! Assembling the service: the OpenAPI document, the endpoint tree with its
//! middleware, the server with graceful shutdown, and background jobs.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use domain::Ledger;
use domain::workflows::WorkflowService;
use infra::metrics::{metrics, render};
use infra::{Config, Database};
use poem::endpoint::make_sync;
use poem::http::Method;
use poem::listener::TcpAcceptor;
use poem::middleware::Cors;
use poem::web::Data;
use poem::web::Html;
use poem::{Endpoint, EndpointExt, Response, Route, get, handler};
use poem_openapi::OpenApiService;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::alerts;
use crate::middleware::observe;
use crate::monitor;
use crate::routes::alerts::AlertsApi;
use crate::routes::health::HealthApi;
use crate::routes::holds::HoldsApi;
use crate::routes::locks::LocksApi;
use crate::routes::orders::OrdersApi;
use crate::routes::prices::PricesApi;
use crate::routes::referrals::ReferralsApi;
use crate::routes::users::UsersApi;
use crate::routes::wallets::WalletsApi;
use crate::routes::workflows::WorkflowsApi;
use crate::state::AppState;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

const DESCRIPTION: &str = "\
Financial ledger for trading frontends: live and demo wallets, deposits, withdrawals, transfers, \
leveraged market orders with margin and P&L, referral bonuses and commissions.

* Money is a JSON **string** in plain decimal notation (`\"100.5\"`), at most 8 decimals, no sign, \
no exponent, greater than zero, at most `92233720368.54775807`. A JSON number is refused (400). \
Arithmetic is exact.
* Every `POST` that creates something or moves money requires `Idempotency-Key` (1–255 printable \
ASCII). The same key with the same body replays the stored response exactly, with \
`idempotent-replayed: true`; with another body: 422 `idempotency_key_reused`; while the first is \
still running: 409 `idempotency_in_flight` with `Retry-After`. Business refusals (4xx) are stored and \
replayed; transient failures (5xx) are not, so the client may retry with the same key. Keys expire \
after a configurable TTL (default 24 h).
* Errors are `application/problem+json` with a stable `code`. A refused request changes nothing.
* Every response carries `x-request-id` (echoed when the client sent a valid one).
* Lists are newest first: `limit` (default 50, max 500) and `before_id` (cursor).
* Authentication: `Authorization: Bearer <JWT>` (HS256; claims `sub`, `role` of user|service|admin, `exp`).
* Derived amounts (margin, fees, P&L, commissions) are computed exactly and rounded once, half to \
even (banker's rounding), to 8 decimals.
* Referral commissions accrue on the fees of live-wallet orders only (demo money earns nothing) and \
are credited to referrers' live wallets by settlement.";

pub type Apis = (
    HealthApi,
    UsersApi,
    WalletsApi,
    PricesApi,
    OrdersApi,
    ReferralsApi,
    LocksApi,
    HoldsApi,
    WorkflowsApi,
    AlertsApi,
);

pub fn openapi() -> OpenApiService<Apis, ()> {
    OpenApiService::new(Apis::default(), "Ledger API", env!("CARGO_PKG_VERSION"))
        .description(DESCRIPTION)
}

/// The OpenAPI document as served at `/openapi.json` and in `/docs`, and as
/// `ledger openapi` prints it.
pub fn spec_json() -> String {
    closed_bodies(openapi().spec())
}

/// poem-openapi's document `spec` with `"additionalProperties": false` on
/// the schema of every request body. Every request body refuses unknown
/// fields (`#[oai(deny_unknown_fields)]`, 400), which the derive does not
/// write into the document; a test holds each body to it.
fn closed_bodies(spec: String) -> String {
    let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(&spec) else {
        return spec;
    };
    let bodies = request_bodies(&doc);
    if let Some(schemas) = doc
        .get_mut("components")
        .and_then(|c| c.get_mut("schemas"))
        .and_then(|s| s.as_object_mut())
    {
        for name in bodies {
            if let Some(schema) = schemas.get_mut(&name).and_then(|s| s.as_object_mut()) {
                schema.insert("additionalProperties".into(), false.into());
            }
        }
    }
    serde_json::to_string_pretty(&doc).unwrap_or(spec)
}

/// The names of the schemas of the request bodies of an OpenAPI document,
/// sorted, each once.
pub(crate) fn request_bodies(doc: &serde_json::Value) -> Vec<String> {
    let mut bodies: Vec<String> = doc
        .get("paths")
        .and_then(|p| p.as_object())
        .into_iter()
        .flat_map(|paths| paths.values())
        .filter_map(|ops| ops.as_object())
        .flat_map(|ops| ops.values())
        .filter_map(|op| op.pointer("/requestBody/content")?.as_object())
        .flat_map(|content| content.values())
        .filter_map(|media| media.pointer("/schema/$ref")?.as_str())
        .filter_map(|r| r.strip_prefix("#/components/schemas/"))
        .map(str::to_owned)
        .collect();
    bodies.sort();
    bodies.dedup();
    bodies
}

/// Swagger UI over the document as served (`served`), not the derive's own
/// (`derived`, which the page embeds as it is).
fn docs_html(api: &OpenApiService<Apis, ()>, derived: &str, served: &str) -> String {
    api.swagger_ui_html().replace(derived, served)
}

#[handler]
fn metrics_endpoint(state: Data<&Arc<AppState>>) -> Response {
    let stats = state.ledger.db.pool_stats();
    let m = metrics();
    m.pool_size.set(i64::from(stats.size));
    m.pool_idle.set(i64::from(stats.idle));
    m.pool_max.set(i64::from(stats.max));
    Response::builder()
        .content_type("text/plain; version=0.0.4")
        .body(render())
}

fn cors(config: &Config) -> Option<Cors> {
    let origins = config.server.cors_allowed_origins.trim();
    if origins.is_empty() {
        return None;
    }
    let mut cors = Cors::new()
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            "authorization",
            "content-type",
            "idempotency-key",
            "x-request-id",
        ])
        .expose_headers(["x-request-id", "idempotent-replayed", "retry-after"])
        .max_age(600);
    if origins != "*" {
        for origin in origins.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            cors = cors.allow_origin(origin);
        }
    }
    Some(cors)
}

pub fn endpoint(state: Arc<AppState>) -> impl Endpoint {
    let api = openapi();
    let derived = api.spec();
    let spec = closed_bodies(derived.clone());
    let docs_html = docs_html(&api, &derived, &spec);
    let docs = make_sync(move |_| Html(docs_html.clone()));
    let spec = make_sync(move |_| {
        Response::builder()
            .content_type("application/json")
            .body(spec.clone())
    });
    let route = Route::new()
        .at("/metrics", metrics_endpoint)
        .at("/admin/locks", get(monitor::page))
        .at("/admin/locks/monitor.js", get(monitor::script))
        .at("/admin/locks/monitor.css", get(monitor::style))
        .at("/openapi.json", spec)
        .nest("/docs", Route::new().at("/", docs))
        .nest("/", api);
    let cors = cors(&state.config);
    route
        .with_if(cors.is_some(), cors.unwrap_or_default())
        .around(observe)
        .data(state)
}

/// Connects, migrates and builds the services.
pub async fn prepare(config: Config) -> Result<Arc<AppState>, BoxError> {
    let db = Database::connect(&config.database).await?;
    db.migrate().await?;
    let ledger = Ledger::new(db, &config)?;
    let workflows = WorkflowService::new(ledger.clone(), &config.workflows)?;
    Ok(Arc::new(AppState::new(config, ledger, workflows)))
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<io::Result<()>>,
    jobs: Vec<JoinHandle<()>>,
}

pub async fn start(state: Arc<AppState>, listener: tokio::net::TcpListener) -> io::Result<Server> {
    let addr = listener.local_addr()?;
    let acceptor = TcpAcceptor::from_tokio(listener)?;
    let (stop, stopped) = oneshot::channel::<()>();
    let grace = state.config.server.shutdown_timeout;
    let server = poem::Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(
        endpoint(Arc::clone(&state)),
        async move {
            let _ = stopped.await;
        },
        Some(grace),
    );
    let task = tokio::spawn(server);
    let jobs = spawn_jobs(&state);
    Ok(Server {
        addr,
        state,
        stop,
        task,
        jobs,
    })
}

/// Runs `pass` every `every` (the first pass one period after start; a
/// late pass delays the next rather than bunching), logging what it did.
fn every<F, Fut>(
    every: Duration,
    state: &Arc<AppState>,
    job: &'static str,
    pass: F,
) -> JoinHandle<()>
where
    F: Fn(Arc<AppState>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = domain::DomainResult<u64>> + Send,
{
    let state = Arc::clone(state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match pass(Arc::clone(&state)).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(job, n, "background pass done"),
                Err(e) => tracing::warn!(job, error = %e, "background pass failed"),
            }
        }
    })
}

fn spawn_jobs(state: &Arc<AppState>) -> Vec<JoinHandle<()>> {
    let config = &state.config;
    let mut jobs = Vec::new();
    jobs.extend(state.ledger.db.spawn_health_probe());
    let cleanup = config
        .idempotency
        .cleanup_interval
        .max(Duration::from_secs(1));
    jobs.push(every(
        cleanup,
        state,
        "idempotency_cleanup",
        |s| async move { s.ledger.idempotency.cleanup_expired().await },
    ));
    if !config.referrals.settle_interval.is_zero() {
        let period = config.referrals.settle_interval;
        jobs.push(every(
            period,
            state,
            "referral_settlement",
            |s| async move { Ok(s.ledger.settle_pending_commissions().await?.settled) },
        ));
    }
    if !config.holds.cleanup_interval.is_zero() {
        let period = config.holds.cleanup_interval;
        jobs.push(every(period, state, "hold_expiry", |s| async move {
            s.ledger.expire_due_holds().await
        }));
    }
    jobs.extend(state.workflows.spawn_workers());
    // Recovery: once at start (a crash's leftovers), then every interval.
    let recovery = Arc::clone(state);
    let interval = config.workflows.recovery_interval;
    jobs.push(tokio::spawn(async move {
        loop {
            // A failed pass is logged and counted by the manager itself.
            let _ = recovery.recovery.run_once().await;
            if interval.is_zero() {
                return;
            }
            tokio::time::sleep(interval).await;
        }
    }));
    if state.ledger.locks.rules().cleanup_every.is_some() {
        jobs.push(tokio::spawn(state.ledger.locks.clone().run_cleanup_job()));
    }
    jobs.push(every(
        alerts::SAMPLE_EVERY,
        state,
        "alerts_sampler",
        |s| async move {
            s.alerts.sample();
            Ok(0)
        },
    ));
    if state.limiter.is_some() {
        jobs.push(every(
            Duration::from_secs(60),
            state,
            "rate_limit_forget",
            |s| async move {
                if let Some(limiter) = &s.limiter {
                    limiter.forget_idle();
                }
                Ok(0)
            },
        ));
    }
    jobs
}

impl Server {
    /// Readiness turns 503 at once; after `drain` the listener closes and
    /// in-flight requests finish (up to the configured timeout); then the
    /// pool closes.
    pub async fn shutdown(self, drain: Duration) {
        self.state.start_draining();
        tracing::info!(drain_ms = drain.as_millis() as u64, "draining");
        tokio::time::sleep(drain).await;
        let _ = self.stop.send(());
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "server stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "server task failed"),
        }
        for job in self.jobs {
            job.abort();
        }
        self.state.ledger.db.close().await;
        tracing::info!("stopped");
    }
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM: when a server process should
/// shut down gracefully.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_docs_page_shows_the_document_as_served() {
        let api = openapi();
        let derived = api.spec();
        let served = closed_bodies(derived.clone());
        assert_ne!(derived, served);
        let html = docs_html(&api, &derived, &served);
        assert!(html.contains(&served));
        assert!(!html.contains(&derived));
        assert_eq!(served, spec_json());
    }
}
