//! The response of an idempotent route: the stored status and body, sent
//! byte for byte the first time and on every replay (then with
//! `idempotent-replayed: true`). A stored business refusal is replayed as the
//! problem it was.

use std::marker::PhantomData;

use domain::idempotency::{Outcome, StoredResponse};
use poem::http::{HeaderValue, StatusCode};
use poem::{IntoResponse, Response};
use poem_openapi::ApiResponse;
use poem_openapi::registry::{MetaHeader, MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::{ToJSON, Type};

use crate::error::PROBLEM_JSON;

pub const REPLAYED_HEADER: &str = "idempotent-replayed";

pub struct Stored<T, const STATUS: u16> {
    outcome: Outcome,
    _body: PhantomData<fn() -> T>,
}

impl<T, const STATUS: u16> Stored<T, STATUS> {
    pub fn outcome(self) -> Outcome {
        self.outcome
    }

    pub fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            _body: PhantomData,
        }
    }
}

impl<T: ToJSON, const STATUS: u16> Stored<T, STATUS> {
    /// `body`, answered now (not a replay).
    pub fn fresh(body: &T) -> Self {
        Self::new(Outcome {
            response: stored(STATUS, body),
            replayed: false,
        })
    }
}

/// `body` as it is stored and sent, answered `status`.
pub fn stored<T: ToJSON>(status: u16, body: &T) -> StoredResponse {
    StoredResponse {
        status,
        body: body.to_json_string(),
    }
}

impl<T: Send, const STATUS: u16> IntoResponse for Stored<T, STATUS> {
    fn into_response(self) -> Response {
        outcome_response(self.outcome)
    }
}

/// A stored answer as HTTP: its status and body byte for byte, JSON or a
/// problem, with `idempotent-replayed: true` when it is a replay.
pub fn outcome_response(outcome: Outcome) -> Response {
    let status =
        StatusCode::from_u16(outcome.response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if status.is_success() {
        "application/json; charset=utf-8"
    } else {
        PROBLEM_JSON
    };
    let mut resp = Response::builder()
        .status(status)
        .content_type(content_type)
        .body(outcome.response.body);
    if outcome.replayed {
        resp.headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    resp
}

impl<T: ToJSON + Send, const STATUS: u16> ApiResponse for Stored<T, STATUS> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "Executed once for this Idempotency-Key; a repeat with the same key and body replays this response exactly, with `idempotent-replayed: true`. Business refusals (4xx) are stored and replayed the same way.",
                status: Some(STATUS),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: "application/json; charset=utf-8",
                    schema: T::schema_ref(),
                }],
                headers: vec![MetaHeader {
                    name: REPLAYED_HEADER.into(),
                    description: Some(
                        "`true` when this response is a replay of the stored one".into(),
                    ),
                    required: false,
                    deprecated: false,
                    schema: String::schema_ref(),
                }],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}
