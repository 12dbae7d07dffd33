//! Infrastructure: configuration, database connection and pool, sea-orm
//! entities, metrics and telemetry. Nothing here knows business rules.

pub mod config;
pub mod db;
pub mod entities;
pub mod in_flight;
pub mod metrics;
pub mod telemetry;

pub mod payout;
pub use config::Config;
pub use db::{Backend, Database};
