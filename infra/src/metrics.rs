//! Prometheus metrics, one registry for the process.

use std::sync::LazyLock;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
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
    pub db_begin: Histogram,
    /// Statements sent to the database (each one round trip; BEGIN and
    /// COMMIT of a transaction are two more).
    pub db_statements: IntCounter,
    /// Transactions committed, by operation.
    pub db_commits: IntCounterVec,
    /// Writes per group-commit transaction.
    pub group_size: Histogram,
    /// Wallet reads per coalesced read statement.
    pub read_batch_size: Histogram,
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

/// Makes metrics and registers each as it is made, so that none is made
/// and left out of the registry.
struct Maker<'r>(&'r Registry);

impl Maker<'_> {
    fn add<M: Collector + Clone + 'static>(
        &self,
        metric: Result<M, prometheus::Error>,
    ) -> Result<M, prometheus::Error> {
        let metric = metric?;
        self.0.register(Box::new(metric.clone()))?;
        Ok(metric)
    }

    fn counter(&self, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
        self.add(IntCounter::new(name, help))
    }

    fn counters(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, prometheus::Error> {
        self.add(IntCounterVec::new(Opts::new(name, help), labels))
    }

    fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
        self.add(IntGauge::new(name, help))
    }

    fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
    ) -> Result<Histogram, prometheus::Error> {
        self.add(Histogram::with_opts(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        ))
    }
}

fn workflow_metrics(m: &Maker) -> Result<WorkflowMetrics, prometheus::Error> {
    Ok(WorkflowMetrics {
        started: m.counters(
            "workflows_started_total",
            "Workflows started, by type",
            &["type"],
        )?,
        finished: m.counters(
            "workflows_finished_total",
            "Workflows that reached a final status, by type and status",
            &["type", "status"],
        )?,
        steps: m.counters(
            "workflow_steps_total",
            "Workflow step runs, by step and outcome",
            &["step", "outcome"],
        )?,
        provider_calls: m.counters(
            "provider_calls_total",
            "Calls to outside providers, by provider and outcome",
            &["provider", "outcome"],
        )?,
        breaker_open: m.add(IntGaugeVec::new(
            Opts::new(
                "circuit_breaker_open",
                "1 while a provider's circuit breaker refuses calls",
            ),
            &["provider"],
        ))?,
        recovery_runs: m.counter("recovery_runs_total", "Recovery passes run")?,
        recovery: m.counters(
            "recovery_actions_total",
            "What recovery passes did, by kind",
            &["kind"],
        )?,
        recovery_failures: m.counter(
            "recovery_failures_total",
            "Recovery passes that ended in an error",
        )?,
    })
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
    pub hold_seconds: Histogram,
    /// From joining the queue to the grant.
    pub wait_seconds: Histogram,
}

fn lock_metrics(m: &Maker) -> Result<LockMetrics, prometheus::Error> {
    let buckets = [
        0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
    ];
    Ok(LockMetrics {
        active: m.gauge("locks_active", "Active, unexpired resource locks")?,
        queue_depth: m.gauge("lock_queue_depth", "Pending lock queue items")?,
        grants: m.counters(
            "lock_grants_total",
            "Locks granted, directly or from the queue",
            &["how"],
        )?,
        conflicts: m.counter(
            "lock_conflicts_total",
            "Lock requests refused because a resource was locked",
        )?,
        expiries: m.counter("lock_expiries_total", "Locks that reached their TTL")?,
        forced_releases: m.counter(
            "lock_forced_releases_total",
            "Locks released by an admin with force",
        )?,
        fencing_refusals: m.counter(
            "lock_fencing_refusals_total",
            "Writes refused for a lost lock or a stale fencing token",
        )?,
        hold_seconds: m.histogram("lock_hold_seconds", "How long locks were held", &buckets)?,
        wait_seconds: m.histogram(
            "lock_wait_seconds",
            "How long queued lock requests waited",
            &buckets,
        )?,
    })
}

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new_custom(Some("ledger".into()), None)?;
    let m = Maker(&registry);
    // This process's id, so a scraper behind a shared port (SO_REUSEPORT)
    // can tell instances apart; set once, so only the registry keeps it.
    m.gauge("process_id", "Operating-system id of this process")?
        .set(i64::from(std::process::id()));
    let metrics = Metrics {
        http_requests: m.counters(
            "http_requests_total",
            "HTTP requests by route and status",
            &["route", "status"],
        )?,
        http_latency: m.add(HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency").buckets(
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            ),
            &["route"],
        ))?,
        tx_attempts: m.counters(
            "db_transaction_attempts_total",
            "Transaction attempts",
            &["operation"],
        )?,
        tx_retries: m.counters(
            "db_transaction_retries_total",
            "Transactions retried, by cause",
            &["operation", "cause"],
        )?,
        tx_giveups: m.counters(
            "db_transaction_giveups_total",
            "Transactions abandoned after the last retryable failure",
            &["operation"],
        )?,
        idempotent_replays: m.counter(
            "idempotent_replays_total",
            "Responses replayed from a stored idempotency key",
        )?,
        pool_size: m.gauge("db_pool_size", "Open connections in the pool")?,
        pool_idle: m.gauge("db_pool_idle", "Idle connections in the pool")?,
        pool_max: m.gauge("db_pool_max", "Pool capacity")?,
        db_begin: m.histogram(
            "db_begin_seconds",
            "Time to acquire a pooled connection and begin a write transaction",
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ],
        )?,
        group_size: m.histogram(
            "db_group_size",
            "Money writes per group-commit transaction",
            &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
        )?,
        read_batch_size: m.histogram(
            "db_read_batch_size",
            "Wallet reads per coalesced read statement",
            &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
        )?,
        group_together: m.counters(
            "db_group_together_total",
            "Groups of planned writes (deposits, withdrawals) written together without savepoints, by outcome",
            &["outcome"],
        )?,
        db_statements: m.counter(
            "db_statements_total",
            "Statements sent to the database (round trips besides BEGIN and COMMIT)",
        )?,
        db_commits: m.counters(
            "db_commits_total",
            "Transactions committed, by operation",
            &["operation"],
        )?,
        db_up: m.gauge("db_up", "1 while the database answers the health probe")?,
        shed: m.counters(
            "requests_shed_total",
            "Requests answered 503 at once instead of waiting, by reason",
            &["reason"],
        )?,
        in_flight: m.gauge(
            "http_requests_in_flight",
            "API requests admitted and not yet answered",
        )?,
        locks: lock_metrics(&m)?,
        workflows: workflow_metrics(&m)?,
        registry,
    };
    metrics.db_up.set(1);
    Ok(metrics)
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
