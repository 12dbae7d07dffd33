//! One middleware around every request: request id in and out (task-local,
//! so error bodies carry it), body size limit, one span and one log line per
//! request, metrics by route and status, and every error rendered as a problem
//! (a 405 with the `Allow` header of its path).

use std::sync::Arc;
use std::time::{Duration, Instant};

use infra::in_flight;
use infra::metrics::metrics;
use poem::http::{HeaderValue, StatusCode, header};
use poem::{Endpoint, IntoResponse, Request, Response};
use poem_openapi::OperationId;
use tracing::Instrument;

use crate::admission::Refused;
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
    // Read at most `max` bytes (declared or not), so that a JSON body can be
    // checked for duplicated keys before any handler sees it.
    let bytes = req
        .take_body()
        .into_bytes_limit(max)
        .await
        .map_err(|_| too_large())?;
    if is_json(req)
        && let Some(key) = duplicated_key(&bytes)
    {
        return Err(ApiError::invalid(format!(
            "duplicate field `{key}` in the JSON body"
        )));
    }
    req.set_body(bytes);
    Ok(())
}

fn is_json(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("json"))
}

/// The first object key that appears twice in one object of `body`, if
/// any. The JSON parser keeps the last of two equal keys, while a proxy, a
/// log or an audit tool may read the first: `{"amount":"1","amount":"1000"}`
/// must mean one thing or be refused. Malformed JSON yields `None` and is
/// left to the handler's parser, which says what is wrong with it.
fn duplicated_key(body: &[u8]) -> Option<String> {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

    struct Walk;

    impl<'de> Visitor<'de> for Walk {
        type Value = Option<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(inner) = seq.next_element_seed(Walk)? {
                found = found.or(inner);
            }
            Ok(found)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut keys = std::collections::HashSet::new();
            let mut found = None;
            while let Some(key) = map.next_key::<String>()? {
                let inner = map.next_value_seed(Walk)?;
                if found.is_none() && !keys.insert(key.clone()) {
                    found = Some(key);
                }
                found = found.or(inner);
            }
            Ok(found)
        }
    }

    impl<'de> DeserializeSeed<'de> for Walk {
        type Value = Option<String>;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    let mut de = serde_json::Deserializer::from_slice(body);
    Walk.deserialize(&mut de).ok().flatten()
}

/// An admitted request's place among those in flight.
struct Place(Arc<AppState>);

impl in_flight::Place for Place {
    fn leave(&self) {
        self.0.admission.leave();
    }

    fn rejoin(&self) {
        self.0.admission.rejoin();
    }
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
    // rather than letting every request find out for itself; past the
    // in-flight limit, too. Health and metrics stay outside `/api` and are
    // never refused.
    let mut resp = REQUEST_ID
        .scope(id.clone(), async move {
            let _admitted = match state.as_ref().map(|s| s.admission.enter(&req)) {
                Some(Err(refused)) => {
                    let mut resp = ApiError::overloaded()
                        .retry_after(refused.retry_after_secs)
                        .into_response();
                    resp.set_data(refused);
                    return resp;
                }
                admitted => admitted,
            };
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
            let handled = match (&state, &_admitted) {
                (Some(state), Some(Ok(admitted))) if admitted.counted() => {
                    let place = Arc::new(Place(Arc::clone(state)));
                    in_flight::counted(place, next.call(req)).await
                }
                _ => next.call(req).await,
            };
            match handled {
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
    // To the microsecond: `1.695`, not `1.6954690000000001`.
    let latency_ms = elapsed.as_micros() as f64 / 1000.0;
    span.in_scope(|| {
        // Refusals past the in-flight limit come by the thousand exactly
        // when the server has no time to spare; they change nothing and
        // `ledger_requests_shed_total` counts them.
        if resp.data::<Refused>().is_some() {
            tracing::debug!(status = status.as_u16(), route, latency_ms, "refused");
        } else {
            tracing::info!(status = status.as_u16(), route, latency_ms, "request");
        }
    });
    Ok(resp)
}

#[cfg(test)]
mod duplicate_keys {
    use super::duplicated_key;

    #[test]
    fn a_key_twice_in_one_object_is_found_at_any_depth() {
        assert_eq!(duplicated_key(br#"{"a":"1","a":"2"}"#), Some("a".into()));
        assert_eq!(
            duplicated_key(br#"{"x":[{"b":1,"c":{"d":1,"d":2}}]}"#),
            Some("d".into())
        );
        assert_eq!(
            duplicated_key(br#"{"a":{"a":1},"b":[{"a":1},{"a":2}]}"#),
            None
        );
        assert_eq!(duplicated_key(br#"{"a":1,"b":2}"#), None);
        assert_eq!(duplicated_key(b"{}"), None);
        // malformed: left to the handler's parser
        assert_eq!(duplicated_key(br#"{"a":1,"a""#), None);
        assert_eq!(duplicated_key(b""), None);
    }
}
