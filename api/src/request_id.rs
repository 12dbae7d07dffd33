//! The request id: taken from `x-request-id` when the client sent a sane one,
//! generated otherwise; kept task-local for the request's life, so that every
//! error body and log line of the request carries it.

use poem::Request;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

tokio::task_local! {
    pub(crate) static REQUEST_ID: String;
}

/// The id of the request being served ("" outside a request).
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// A client's id is echoed when it is 1–128 visible ASCII characters;
/// anything else is replaced by a fresh UUID.
pub(crate) fn request_id(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}
