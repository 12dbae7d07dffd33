//! The Transaction Lock Monitor at `/admin/locks`: one page, its script and
//! its style, compiled into the binary (no build step, nothing fetched from
//! elsewhere). The page holds no data and needs no token to load; in the
//! browser it asks for an admin token and reads the lock admin API with it.

use poem::http::{HeaderValue, header};
use poem::{Response, handler};
use poem_openapi::OperationId;

const PAGE: &str = include_str!("monitor.html");
const SCRIPT: &str = include_str!("monitor.js");
const STYLE: &str = include_str!("monitor.css");

/// Only this origin's script, style and API; no framing, no inline code.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

fn asset(route: &'static str, content_type: &'static str, body: &'static str) -> Response {
    let mut resp = Response::builder()
        .content_type(content_type)
        // Revalidated on every load, so a new binary's page is never mixed
        // with an old cached script.
        .header(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))
        .header(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        )
        .header(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        )
        .header(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        )
        .body(body);
    // The route label the request metrics and log line carry.
    resp.set_data(OperationId(route));
    resp
}

#[handler]
pub fn page() -> Response {
    asset("lock_monitor_page", "text/html; charset=utf-8", PAGE)
}

#[handler]
pub fn script() -> Response {
    asset(
        "lock_monitor_script",
        "text/javascript; charset=utf-8",
        SCRIPT,
    )
}

#[handler]
pub fn style() -> Response {
    asset("lock_monitor_style", "text/css; charset=utf-8", STYLE)
}
