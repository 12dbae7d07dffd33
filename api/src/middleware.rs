//! One middleware around every request: request id in and out (task-local,
//! so error bodies carry it), body size limit, one span and one log line per
//! request, metrics by route and status, and every error rendered as a problem
//! (a 405 with the `Allow` header of its path).

use std::sync::Arc;
use std::time::{Duration, Instant};

use infra::metrics::metrics;
use poem::http::{HeaderValue, StatusCode, header};
use poem::{Endpoint, IntoResponse, Request, Response};
use poem_openapi::OperationId;
use tracing::Instrument;

use crate::error::{ApiError, from_poem_error};
use crate::request_id::{REQUEST_ID, REQUEST_ID_HEADER, request_id};
use crate::routes::allowed_methods;
use crate::state::AppState;

/// While the database is known to be down, a request waits at most this for
/// a fresh look before it is refused.
const RECHECK_WAIT: Duration = Duration::from_millis(150);

/// Oversized bodies up to this multiple of the limit are drained, not cut off.
const DRAIN_FACTOR: usize = 16;

async fn limit_body(req: &mut Request, max: usize) -> Result<(), ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "Payload too large",
            format!("request body exceeds {max} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = declared.filter(|n| *n > max) {
        // Read and discard a moderately oversized body so the client, still
        // writing, gets the 413 instead of a reset connection; past the cap
        // the connection is simply closed.
        if n <= max.saturating_mul(DRAIN_FACTOR) {
            let reader = req.take_body().into_async_read();
            let _ = tokio::io::copy(
                &mut tokio::io::AsyncReadExt::take(reader, n as u64),
                &mut tokio::io::sink(),
            )
            .await;
        }
        return Err(too_large());
    }
    if declared.is_none() {
        // Chunked or undeclared: read at most `max` bytes.
        let bytes = req
            .take_body()
            .into_bytes_limit(max)
            .await
            .map_err(|_| too_large())?;
        req.set_body(bytes);
    }
    Ok(())
}

pub async fn observe<E: Endpoint>(next: Arc<E>, mut req: Request) -> poem::Result<Response> {
    let id = request_id(&req);
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let span = tracing::info_span!("request", request_id = %id, %method, %path);
    let state = req.data::<Arc<AppState>>().cloned();
    let path_is_api = path.starts_with("/api/");
    let max_body = state
        .as_ref()
        .map(|s| s.config.server.max_body_bytes)
        .unwrap_or(64 * 1024);
    // While the database is known to be unreachable, the API answers at once
    // rather than letting every request find out for itself; health and
    // metrics stay outside `/api` and are never refused.
    let mut resp = REQUEST_ID
        .scope(id.clone(), async move {
            if path_is_api
                && let Some(s) = &state
                && !s.ledger.db.health().is_up()
                && !s.ledger.db.health().look(RECHECK_WAIT).await
            {
                metrics().shed.with_label_values(&["unavailable"]).inc();
                return ApiError::unavailable().into_response();
            }
            if let Err(e) = limit_body(&mut req, max_body).await {
                return e.into_response();
            }
            match next.call(req).await {
                Ok(resp) => resp.into_response(),
                Err(err) => {
                    let route = err.data::<OperationId>().copied();
                    let mut resp = from_poem_error(err);
                    if let Some(route) = route {
                        resp.set_data(route);
                    }
                    if resp.status() == StatusCode::METHOD_NOT_ALLOWED
                        && let Some(allow) = allowed_methods(&path)
                    {
                        resp.headers_mut()
                            .insert(header::ALLOW, HeaderValue::from_static(allow));
                    }
                    resp
                }
            }
        })
        .instrument(span.clone())
        .await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let route = resp
        .data::<OperationId>()
        .map(|op| op.0)
        .unwrap_or("unmatched");
    let status = resp.status();
    let elapsed = started.elapsed();
    let m = metrics();
    m.http_requests
        .with_label_values(&[route, status.as_str()])
        .inc();
    m.http_latency
        .with_label_values(&[route])
        .observe(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            route,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
    });
    Ok(resp)
}
