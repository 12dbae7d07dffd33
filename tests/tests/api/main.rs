//! Black-box tests over HTTP against the real app, on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod concurrency;
mod idempotency;
mod operations;
mod users;
mod wallets;
