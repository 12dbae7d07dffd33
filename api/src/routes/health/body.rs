//! Bodies of the liveness and readiness probes.

use poem_openapi::Object;

#[derive(Object, Debug, Clone)]
pub struct Health {
    pub status: String,
}

#[derive(Object, Debug, Clone)]
pub struct PoolInfo {
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

/// A payout provider's circuit breaker in this process.
#[derive(Object, Debug, Clone)]
pub struct BreakerInfo {
    pub provider: String,
    /// `closed` (calls go through), `open` (calls refused for a while) or
    /// `half_open` (one trial call decides).
    pub state: String,
}

#[derive(Object, Debug, Clone)]
pub struct Readiness {
    pub status: String,
    pub database: String,
    pub pool: PoolInfo,
    /// Circuit breakers of the providers this process has called. An open
    /// breaker does not make the server unready: the ledger still serves,
    /// and the payouts wait.
    pub breakers: Vec<BreakerInfo>,
}
