//! Black-box tests over HTTP against the real app, on SQLite and PostgreSQL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod alerts;
mod concurrency;
mod faults;
mod group_commit;
mod holds;
mod holds_concurrency;
mod idempotency;
mod locks;
mod locks_concurrency;
mod monitor;
mod operations;
mod reads;
mod referrals;
mod security;
mod signals;
mod trading;
mod trading_concurrency;
mod users;
mod wallets;
mod workflows;
mod workflows_concurrency;
