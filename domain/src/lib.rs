//! Business rules and services. Nothing here knows HTTP.
//!
//! Where is the deposit rule? `wallets.rs`. The money-moving primitive?
//! `financial.rs`. Retries and locks? `tx.rs`. Exactly-once? `idempotency.rs`.

pub mod db_error;
pub mod error;
pub mod financial;
pub mod idempotency;
pub mod money;
pub mod reconcile;
pub mod tx;
pub mod users;
pub mod wallets;

use std::time::Duration;

pub use error::{DomainError, DomainResult};
use infra::{Config, Database};

use crate::idempotency::IdempotencyService;
use crate::tx::{RetryPolicy, TransactionService};

/// The services the API calls, built once from the configuration.
#[derive(Clone, Debug)]
pub struct Ledger {
    pub db: Database,
    pub tx: TransactionService,
    pub idempotency: IdempotencyService,
    /// Opening balance of new demo wallets, minor units.
    pub demo_balance: i64,
}

impl Ledger {
    pub fn new(db: Database, config: &Config) -> DomainResult<Self> {
        let tx = TransactionService::new(db.clone(), RetryPolicy::from_config(config));
        let idempotency = IdempotencyService::new(
            tx.clone(),
            Duration::from_secs(config.idempotency_ttl_secs),
            Duration::from_millis(config.idempotency_lease_ms),
        );
        let demo = config
            .demo_balance
            .parse()
            .map_err(|_| DomainError::invalid("demo_balance", "not a decimal"))?;
        let demo_balance =
            money::to_units(demo).map_err(|e| DomainError::invalid("demo_balance", e))?;
        Ok(Self {
            db,
            tx,
            idempotency,
            demo_balance,
        })
    }
}
