//! HTTP edge: poem + poem-openapi. Routes turn HTTP into a domain call and a
//! result into HTTP; nothing here holds a business rule.

pub mod admission;
pub mod alerts;
pub mod app;
pub mod auth;
pub mod error;
pub mod limiter;
pub mod middleware;
pub mod monitor;
pub mod replay;
pub mod request_id;
pub mod routes;
pub mod seed;
pub mod state;
pub mod tokens;
