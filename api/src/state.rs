//! What every request can reach.

use std::sync::atomic::{AtomicBool, Ordering};

use domain::Ledger;
use infra::Config;

use crate::limiter::Limiter;
use crate::tokens::Tokens;

pub struct AppState {
    pub config: Config,
    pub ledger: Ledger,
    pub tokens: Tokens,
    pub limiter: Option<Limiter>,
    draining: AtomicBool,
}

impl AppState {
    pub fn new(config: Config, ledger: Ledger) -> Self {
        let server = &config.server;
        let tokens = Tokens::new(server.jwt_secret.expose());
        let limiter = Limiter::new(server.rate_limit_per_second, server.rate_limit_burst);
        Self {
            config,
            ledger,
            tokens,
            limiter,
            draining: AtomicBool::new(false),
        }
    }

    /// From now on readiness reports 503, so load balancers stop sending work.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}
