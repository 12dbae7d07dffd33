//! What every request can reach.

use domain::Ledger;
use domain::workflows::WorkflowService;
use domain::workflows::recovery::RecoveryManager;
use infra::Config;

use crate::admission::Admission;
use crate::alerts::Alerts;
use crate::limiter::Limiter;
use crate::tokens::Tokens;

pub struct AppState {
    pub config: Config,
    pub ledger: Ledger,
    pub workflows: WorkflowService,
    pub recovery: RecoveryManager,
    pub tokens: Tokens,
    pub limiter: Option<Limiter>,
    pub admission: Admission,
    /// The in-process alert rules over this process's metrics.
    pub alerts: Alerts,
    draining: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    pub fn new(config: Config, ledger: Ledger, workflows: WorkflowService) -> Self {
        let server = &config.server;
        let tokens = Tokens::new(server.jwt_secret.expose());
        let limiter = Limiter::new(server.rate_limit_per_second, server.rate_limit_burst);
        let admission = Admission::new(config.max_in_flight());
        Self {
            config,
            ledger,
            recovery: RecoveryManager::new(workflows.clone()),
            workflows,
            tokens,
            limiter,
            admission,
            alerts: Alerts::default(),
            draining: tokio::sync::watch::Sender::new(false),
        }
    }

    /// From now on readiness reports 503, so load balancers stop sending work.
    pub fn start_draining(&self) {
        self.draining.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Resolves when draining starts: long-lived responses (the event
    /// stream) end then, so that shutdown does not wait on them.
    pub fn drained(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut draining = self.draining.subscribe();
        async move {
            let _ = draining.wait_for(|d| *d).await;
        }
    }
}
