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

#[derive(Object, Debug, Clone)]
pub struct Readiness {
    pub status: String,
    pub database: String,
    pub pool: PoolInfo,
}
