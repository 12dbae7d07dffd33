//! Prometheus metrics, one registry for the process.

use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_latency: HistogramVec,
    pub tx_attempts: IntCounterVec,
    pub tx_retries: IntCounterVec,
    pub tx_giveups: IntCounterVec,
    pub idempotent_replays: IntCounter,
    pub pool_size: IntGauge,
    pub pool_idle: IntGauge,
    pub pool_max: IntGauge,
    /// Time to get a pooled connection and begin a write transaction: the
    /// pool wait seen by money operations.
    pub db_begin: prometheus::Histogram,
    /// Statements sent to the database (each one round trip; BEGIN and
    /// COMMIT of a transaction are two more).
    pub db_statements: IntCounter,
    /// Transactions committed, by operation.
    pub db_commits: IntCounterVec,
    /// Writes per group-commit transaction.
    pub group_size: prometheus::Histogram,
    /// Groups of planned writes (deposits, withdrawals) written together
    /// without savepoints, by how that went: `committed`, or `rerun` with
    /// savepoints because one of their keys was stored elsewhere meanwhile.
    pub group_together: IntCounterVec,
    /// 1 while the health probe sees the database answer, 0 while not.
    pub db_up: IntGauge,
    /// Requests answered 503 at once, by reason: `overloaded` (no pooled
    /// connection within the wait budget) or `unavailable` (the database is
    /// known to be unreachable).
    pub shed: IntCounterVec,
    /// API requests admitted and not yet answered (admission control).
    pub in_flight: IntGauge,
    /// Resource locks: gauges refreshed from the database (they count every
    /// instance's locks), counters and histograms of this process's work.
    pub locks: LockMetrics,
    /// Workflows, their outbound calls, circuit breakers and recovery.
    pub workflows: WorkflowMetrics,
}

pub struct WorkflowMetrics {
    /// Workflows started, by type.
    pub started: IntCounterVec,
    /// Workflows that reached a final status, by type and status
    /// (`completed`, `compensated`, `rejected`, `failed`).
    pub finished: IntCounterVec,
    /// Step runs, by step and outcome (`done`, `retry`, `failed`,
    /// `compensated`, `lease_lost`).
    pub steps: IntCounterVec,
    /// Calls to outside providers, by provider and outcome (`sent`,
    /// `failed`, `transient`, `refused_open` when the breaker refused it).
    pub provider_calls: IntCounterVec,
    /// 1 while a provider's circuit breaker is open (calls refused), 0 while
    /// closed or half-open.
    pub breaker_open: IntGaugeVec,
    /// Recovery passes run by this process.
    pub recovery_runs: IntCounter,
    /// Recovery outcomes, by kind: `resumed`, `compensated`, `failed`,
    /// `expired_locks`, `expired_holds`, `released_idempotency_claims`.
    pub recovery: IntCounterVec,
    /// Recovery passes that ended in an error.
    pub recovery_failures: IntCounter,
}

fn workflow_metrics(registry: &Registry) -> Result<WorkflowMetrics, prometheus::Error> {
    let m = WorkflowMetrics {
        started: IntCounterVec::new(
            Opts::new("workflows_started_total", "Workflows started, by type"),
            &["type"],
        )?,
        finished: IntCounterVec::new(
            Opts::new(
                "workflows_finished_total",
                "Workflows that reached a final status, by type and status",
            ),
            &["type", "status"],
        )?,
        steps: IntCounterVec::new(
            Opts::new(
                "workflow_steps_total",
                "Workflow step runs, by step and outcome",
            ),
            &["step", "outcome"],
        )?,
        provider_calls: IntCounterVec::new(
            Opts::new(
                "provider_calls_total",
                "Calls to outside providers, by provider and outcome",
            ),
            &["provider", "outcome"],
        )?,
        breaker_open: IntGaugeVec::new(
            Opts::new(
                "circuit_breaker_open",
                "1 while a provider's circuit breaker refuses calls",
            ),
            &["provider"],
        )?,
        recovery_runs: IntCounter::new("recovery_runs_total", "Recovery passes run")?,
        recovery: IntCounterVec::new(
            Opts::new(
                "recovery_actions_total",
                "What recovery passes did, by kind",
            ),
            &["kind"],
        )?,
        recovery_failures: IntCounter::new(
            "recovery_failures_total",
            "Recovery passes that ended in an error",
        )?,
    };
    registry.register(Box::new(m.started.clone()))?;
    registry.register(Box::new(m.finished.clone()))?;
    registry.register(Box::new(m.steps.clone()))?;
    registry.register(Box::new(m.provider_calls.clone()))?;
    registry.register(Box::new(m.breaker_open.clone()))?;
    registry.register(Box::new(m.recovery_runs.clone()))?;
    registry.register(Box::new(m.recovery.clone()))?;
    registry.register(Box::new(m.recovery_failures.clone()))?;
    Ok(m)
}

pub struct LockMetrics {
    /// Active, unexpired locks.
    pub active: IntGauge,
    /// Pending queue items.
    pub queue_depth: IntGauge,
    /// Grants, by how: `direct` or `queued`.
    pub grants: IntCounterVec,
    /// Requests refused 409 `resource_locked`.
    pub conflicts: IntCounter,
    /// Locks that reached their TTL.
    pub expiries: IntCounter,
    /// Locks released by an admin with `force`.
    pub forced_releases: IntCounter,
    /// Writes refused because their fencing token was stale (`lock_lost`).
    pub fencing_refusals: IntCounter,
    /// From grant to release, failure or expiry.
    pub hold_seconds: prometheus::Histogram,
    /// From joining the queue to the grant.
    pub wait_seconds: prometheus::Histogram,
}

fn lock_metrics(registry: &Registry) -> Result<LockMetrics, prometheus::Error> {
    let buckets = vec![
        0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
    ];
    let m = LockMetrics {
        active: IntGauge::new("locks_active", "Active, unexpired resource locks")?,
        queue_depth: IntGauge::new("lock_queue_depth", "Pending lock queue items")?,
        grants: IntCounterVec::new(
            Opts::new(
                "lock_grants_total",
                "Locks granted, directly or from the queue",
            ),
            &["how"],
        )?,
        conflicts: IntCounter::new(
            "lock_conflicts_total",
            "Lock requests refused because a resource was locked",
        )?,
        expiries: IntCounter::new("lock_expiries_total", "Locks that reached their TTL")?,
        forced_releases: IntCounter::new(
            "lock_forced_releases_total",
            "Locks released by an admin with force",
        )?,
        fencing_refusals: IntCounter::new(
            "lock_fencing_refusals_total",
            "Writes refused for a lost lock or a stale fencing token",
        )?,
        hold_seconds: prometheus::Histogram::with_opts(
            HistogramOpts::new("lock_hold_seconds", "How long locks were held")
                .buckets(buckets.clone()),
        )?,
        wait_seconds: prometheus::Histogram::with_opts(
            HistogramOpts::new("lock_wait_seconds", "How long queued lock requests waited")
                .buckets(buckets),
        )?,
    };
    registry.register(Box::new(m.active.clone()))?;
    registry.register(Box::new(m.queue_depth.clone()))?;
    registry.register(Box::new(m.grants.clone()))?;
    registry.register(Box::new(m.conflicts.clone()))?;
    registry.register(Box::new(m.expiries.clone()))?;
    registry.register(Box::new(m.forced_releases.clone()))?;
    registry.register(Box::new(m.fencing_refusals.clone()))?;
    registry.register(Box::new(m.hold_seconds.clone()))?;
    registry.register(Box::new(m.wait_seconds.clone()))?;
    Ok(m)
}

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new_custom(Some("ledger".into()), None)?;
    let http_requests = IntCounterVec::new(
        Opts::new("http_requests_total", "HTTP requests by route and status"),
        &["route", "status"],
    )?;
    let http_latency = HistogramVec::new(
        HistogramOpts::new("http_request_duration_seconds", "HTTP request latency").buckets(vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]),
        &["route"],
    )?;
    let tx_attempts = IntCounterVec::new(
        Opts::new("db_transaction_attempts_total", "Transaction attempts"),
        &["operation"],
    )?;
    let tx_retries = IntCounterVec::new(
        Opts::new(
            "db_transaction_retries_total",
            "Transactions retried, by cause",
        ),
        &["operation", "cause"],
    )?;
    let tx_giveups = IntCounterVec::new(
        Opts::new(
            "db_transaction_giveups_total",
            "Transactions abandoned after the last retryable failure",
        ),
        &["operation"],
    )?;
    let idempotent_replays = IntCounter::new(
        "idempotent_replays_total",
        "Responses replayed from a stored idempotency key",
    )?;
    let pool_size = IntGauge::new("db_pool_size", "Open connections in the pool")?;
    let pool_idle = IntGauge::new("db_pool_idle", "Idle connections in the pool")?;
    let pool_max = IntGauge::new("db_pool_max", "Pool capacity")?;
    registry.register(Box::new(http_requests.clone()))?;
    registry.register(Box::new(http_latency.clone()))?;
    registry.register(Box::new(tx_attempts.clone()))?;
    registry.register(Box::new(tx_retries.clone()))?;
    registry.register(Box::new(tx_giveups.clone()))?;
    registry.register(Box::new(idempotent_replays.clone()))?;
    registry.register(Box::new(pool_size.clone()))?;
    registry.register(Box::new(pool_idle.clone()))?;
    let db_begin = prometheus::Histogram::with_opts(
        HistogramOpts::new(
            "db_begin_seconds",
            "Time to acquire a pooled connection and begin a write transaction",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]),
    )?;
    // This process's id, so a scraper behind a shared port (SO_REUSEPORT)
    // can tell instances apart; set once, so only the registry keeps it.
    let process_id = IntGauge::new("process_id", "Operating-system id of this process")?;
    let db_up = IntGauge::new("db_up", "1 while the database answers the health probe")?;
    let db_statements = IntCounter::new(
        "db_statements_total",
        "Statements sent to the database (round trips besides BEGIN and COMMIT)",
    )?;
    let db_commits = IntCounterVec::new(
        Opts::new("db_commits_total", "Transactions committed, by operation"),
        &["operation"],
    )?;
    let group_size = prometheus::Histogram::with_opts(
        HistogramOpts::new("db_group_size", "Money writes per group-commit transaction")
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
    )?;
    registry.register(Box::new(group_size.clone()))?;
    let group_together = IntCounterVec::new(
        Opts::new(
            "db_group_together_total",
            "Groups of planned writes (deposits, withdrawals) written together without savepoints, by outcome",
        ),
        &["outcome"],
    )?;
    registry.register(Box::new(group_together.clone()))?;
    registry.register(Box::new(db_statements.clone()))?;
    registry.register(Box::new(db_commits.clone()))?;
    db_up.set(1);
    let shed = IntCounterVec::new(
        Opts::new(
            "requests_shed_total",
            "Requests answered 503 at once instead of waiting, by reason",
        ),
        &["reason"],
    )?;
    registry.register(Box::new(db_up.clone()))?;
    registry.register(Box::new(shed.clone()))?;
    let in_flight = IntGauge::new(
        "http_requests_in_flight",
        "API requests admitted and not yet answered",
    )?;
    registry.register(Box::new(in_flight.clone()))?;
    process_id.set(i64::from(std::process::id()));
    registry.register(Box::new(pool_max.clone()))?;
    registry.register(Box::new(db_begin.clone()))?;
    registry.register(Box::new(process_id))?;
    let locks = lock_metrics(&registry)?;
    let workflows = workflow_metrics(&registry)?;
    Ok(Metrics {
        registry,
        http_requests,
        http_latency,
        tx_attempts,
        tx_retries,
        tx_giveups,
        idempotent_replays,
        pool_size,
        pool_idle,
        pool_max,
        db_begin,
        group_size,
        group_together,
        db_statements,
        db_commits,
        db_up,
        shed,
        in_flight,
        locks,
        workflows,
    })
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    // The metric definitions are constants: a failure here is a programming
    // error, caught by the unit test below before it could ever ship, so the
    // process stops rather than run without its metrics.
    build().unwrap_or_else(|e| {
        tracing::error!(error = %e, "metric registration failed");
        std::process::abort()
    })
});

pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The registry in Prometheus text format.
pub fn render() -> String {
    let mut out = Vec::new();
    let families = metrics().registry.gather();
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        tracing::error!(error = %e, "metrics encoding failed");
    }
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn metrics_register_and_render() {
        super::build().unwrap();
        super::metrics().tx_attempts.with_label_values(&["t"]).inc();
        let text = super::render();
        assert!(text.contains("ledger_db_transaction_attempts_total"));
        super::metrics().locks.conflicts.inc();
        assert!(super::render().contains("ledger_lock_conflicts_total"));
        super::metrics().workflows.recovery_failures.inc();
        assert!(super::render().contains("ledger_recovery_failures_total"));
    }
}
