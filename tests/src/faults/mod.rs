//! Faults as a test suite: each scenario starts server processes on one
//! database, drives the bank workload (`workload`), injects one kind of
//! fault on a schedule while the clients keep going, and then checks the
//! invariants (`check`): every write definite, each key executed at most
//! once, the books balance from the answers alone, nothing negative, and
//! the database reconciles.
//!
//! The databases: scenarios that stop or restart PostgreSQL get a private
//! cluster (`cluster`), never the shared one on 5432; the others get a
//! database of their own on the shared cluster (`PgDatabase`), reached
//! directly or through a `Proxy` when the scenario cuts the connection.
//! Network faults run the servers in a namespace of their own (`netns`).
//!
//! Holds and workflows are part of the workload (holds made, captured,
//! voided and left to expire; withdrawal workflows paid through a payout
//! provider of the run's own, `payout_sim::PayoutSim`, that fails calls
//! and refuses payouts at random; deposit workflows in and out of review)
//! while every fault happens, so each scenario checks them too. A resource
//! lock's holder paused past its lease is `lock-stall` (`stall`); a server
//! killed while its order runs inside a signal's trade lock is
//! `lock-holder-killed` (`holder_killed`); payouts in flight when every
//! instance dies are `workflow-recovery`. A new scenario is a `Scenario`
//! variant (the matches below are exhaustive, so each one lists what it
//! must say) with its operations added to `workload::Op`; one named but
//! not written yet goes in `PENDING`, which the report prints.

pub mod check;
pub mod cluster;
pub mod flows;
pub mod holder_killed;
pub mod netns;
pub mod report;
pub mod stall;
pub mod workload;

use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use rand::seq::SliceRandom;
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement, TransactionTrait};

use crate::PgDatabase;
use crate::load::client::Call;
use crate::load::retry::{Class, Policy, covered};
use crate::payout_sim::{self, PayoutSim};
use crate::process::{LedgerProcess, Placement};
use crate::proxy::{Proxy, with_host_port};
use cluster::PrivatePg;
use netns::NetNs;
pub use report::{Outcome, Row};
use workload::{Mix, User};

/// Fault scenarios not written yet, with what they will inject.
pub const PENDING: &[(&str, &str)] = &[];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// kill -9 of one of two instances; clients move to the other one; the
    /// killed one restarts on its port.
    KillOne,
    /// kill -9 of both instances, then both restart.
    KillAll,
    /// PostgreSQL restarted (fast shutdown, start) under load.
    PgRestart,
    /// PostgreSQL stopped for a while (10 s by default), then started.
    PgStop,
    /// `pg_terminate_backend` of random server connections, repeatedly.
    TerminateBackends,
    /// Small pools, and long outside transactions holding wallet rows so
    /// that requests pile up on them and the pools run dry.
    PoolExhaustion,
    /// The database unreachable for every instance, and every client told
    /// the same `Retry-After` retries in the same instant (no jitter).
    RetryStorm,
    /// Three instances; one after the other killed and restarted, again
    /// and again.
    RollingKill,
    /// The servers in a network namespace; delay and loss on its link.
    NetworkDelayLoss,
    /// A process holding a wallet's resource lock is stopped (SIGSTOP)
    /// past its lease while another client takes the lock, then resumed:
    /// its write under the old `Lock-Token` must be refused (`lock_lost`).
    LockStall,
    /// kill -9 of the instance running an order on a signal inside the
    /// signal's trade lock: the lock expires after its lease, the dead
    /// order leaves nothing, and the same signal sent to the other
    /// instance then trades exactly once.
    LockHolderKilled,
    /// Every instance killed (-9) while withdrawal payouts are in flight:
    /// the provider has paid them and answers late; after the restart each
    /// workflow resumes from its checkpoint once its lease lapses, calls
    /// the provider again with the same key and captures once.
    WorkflowRecovery,
}

impl Scenario {
    pub const ALL: [Scenario; 12] = [
        Self::KillOne,
        Self::KillAll,
        Self::PgRestart,
        Self::PgStop,
        Self::TerminateBackends,
        Self::PoolExhaustion,
        Self::RetryStorm,
        Self::RollingKill,
        Self::NetworkDelayLoss,
        Self::LockStall,
        Self::LockHolderKilled,
        Self::WorkflowRecovery,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::KillOne => "kill-one",
            Self::KillAll => "kill-all",
            Self::PgRestart => "pg-restart",
            Self::PgStop => "pg-stop",
            Self::TerminateBackends => "terminate-backends",
            Self::PoolExhaustion => "pool-exhaustion",
            Self::RetryStorm => "retry-storm",
            Self::RollingKill => "rolling-kill",
            Self::NetworkDelayLoss => "network-delay-loss",
            Self::LockStall => "lock-stall",
            Self::LockHolderKilled => "lock-holder-killed",
            Self::WorkflowRecovery => "workflow-recovery",
        }
    }

    fn instances(self) -> usize {
        match self {
            Self::RollingKill => 3,
            _ => 2,
        }
    }

    fn clients(self, base: usize) -> usize {
        match self {
            // A storm needs a crowd.
            Self::RetryStorm => base * 2,
            _ => base,
        }
    }

    /// The servers' settings: small pools, and workflows that go fast (a
    /// short lease, so a dead instance's workflows resume within seconds;
    /// quick payout retries; a breaker that opens and closes within the
    /// run) against the run's payout provider at `payout_url`.
    fn server_env(self, payout_url: &str) -> Vec<(&'static str, String)> {
        let pool = if self == Self::PoolExhaustion {
            "3"
        } else {
            "10"
        };
        let mut env: Vec<(&'static str, String)> = vec![
            ("RUST_LOG", "warn".into()),
            ("LEDGER_DB_MAX_CONNECTIONS", pool.into()),
            ("LEDGER_PAYOUT_URL", payout_url.into()),
            ("LEDGER_WORKFLOW_WORKERS", "4".into()),
            ("LEDGER_WORKFLOW_LEASE_MS", "2000".into()),
            ("LEDGER_WORKFLOW_POLL_MS", "50".into()),
            ("LEDGER_PAYOUT_TIMEOUT_MS", "1000".into()),
            ("LEDGER_PAYOUT_MAX_ATTEMPTS", "200".into()),
            ("LEDGER_PAYOUT_RETRY_INITIAL_MS", "20".into()),
            ("LEDGER_PAYOUT_RETRY_MAX_MS", "300".into()),
            ("LEDGER_BREAKER_OPEN_MS", "300".into()),
            ("LEDGER_RECOVERY_INTERVAL_MS", "500".into()),
            ("LEDGER_REVIEW_THRESHOLD", workload::REVIEW_THRESHOLD.into()),
        ];
        if self == Self::PoolExhaustion {
            env.push(("LEDGER_DB_WAIT_BUDGET_MS", "100".into()));
        }
        env
    }
}

/// The payout provider's answers in every scenario: a fifth of the calls
/// fail (503) before anything happens, a tenth of the payouts are refused
/// for good; seeded by the scenario so a run can be repeated.
fn payout_mode(s: Scenario) -> payout_sim::Mode {
    payout_sim::Mode::Random {
        transient: 0.2,
        reject: 0.1,
        seed: s as u64,
    }
}

/// How long and how hard.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The workload's length; a scenario whose fault takes longer runs as
    /// long as the fault needs plus a quiet tail.
    pub duration: Duration,
    pub clients: usize,
    /// How long `pg-stop` keeps PostgreSQL down.
    pub pg_down: Duration,
    /// A write with no definite answer this long after its first attempt
    /// counts as never definite.
    pub retry_bound: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(8),
            clients: 12,
            pg_down: Duration::from_secs(10),
            retry_bound: Duration::from_secs(60),
        }
    }
}

/// What a fault did.
#[derive(Debug, Clone, Default)]
struct Injected {
    count: u64,
    what: String,
    from: Option<Instant>,
    to: Option<Instant>,
    /// Of the terminated backends, those inside a statement or transaction;
    /// for `lock-holder-killed`, the killed instance's backend that was
    /// running the lock holder's order.
    busy: u64,
    /// Writes a paused lock holder sent under its lost lock after it ran
    /// again.
    stale_writes: u64,
    /// Writes the fault itself made (the fenced withdrawals of
    /// `lock-stall`): checked with the workload's.
    writes: Vec<workload::Write>,
    /// What the fault saw go wrong as it went.
    problems: Vec<String>,
    notes: Vec<String>,
}

impl Injected {
    fn begin(&mut self) {
        self.from.get_or_insert_with(Instant::now);
    }
    fn end(&mut self) {
        self.to = Some(Instant::now());
    }
}

/// The database of a scenario and how the servers reach it.
struct Db {
    /// For the checks: straight to the database.
    url: String,
    /// For the servers: maybe through a proxy.
    server_url: String,
    placement: Placement,
    shared: Option<PgDatabase>,
    private: Option<PrivatePg>,
    proxy: Option<Proxy>,
    netns: Option<NetNs>,
}

async fn shared_db() -> Result<PgDatabase, String> {
    AssertUnwindSafe(PgDatabase::create())
        .catch_unwind()
        .await
        .map_err(|_| "the shared PostgreSQL (TEST_DATABASE_URL) is not reachable".to_owned())
}

impl Db {
    async fn for_scenario(s: Scenario) -> Result<Result<Self, String>, String> {
        let plain = |db: PgDatabase| Self {
            url: db.url.clone(),
            server_url: db.url.clone(),
            placement: Placement::default(),
            shared: Some(db),
            private: None,
            proxy: None,
            netns: None,
        };
        Ok(Ok(match s {
            Scenario::PgRestart | Scenario::PgStop => {
                let pg = PrivatePg::start().await?;
                Self {
                    url: pg.url(),
                    server_url: pg.url(),
                    placement: Placement::default(),
                    shared: None,
                    private: Some(pg),
                    proxy: None,
                    netns: None,
                }
            }
            Scenario::RetryStorm => {
                let mut db = plain(shared_db().await?);
                let (proxy, proxied) = Proxy::for_url(&db.url).await.map_err(|e| e.to_string())?;
                db.server_url = proxied;
                db.proxy = Some(proxy);
                db
            }
            Scenario::NetworkDelayLoss => {
                // Checked first: where the kernel forbids a namespace the
                // scenario is skipped, with the kernel's reason.
                let mut ns = match NetNs::create().await {
                    Ok(ns) => ns,
                    Err(e) => return Ok(Err(format!("cannot create a network namespace: {e}"))),
                };
                // And whether tc may shape its link at all.
                if let Err(e) = ns.degrade().await {
                    return Ok(Err(format!("tc may not shape the namespace's link: {e}")));
                }
                ns.heal().await?;
                let mut db = plain(shared_db().await?);
                let upstream =
                    crate::proxy::host_port(&db.url).ok_or("the database URL has no host")?;
                let upstream = tokio::net::lookup_host((upstream.0.as_str(), upstream.1))
                    .await
                    .map_err(|e| e.to_string())?
                    .next()
                    .ok_or("the database host does not resolve")?;
                let proxy = Proxy::start_on(SocketAddr::new(ns.host_ip.into(), 0), upstream)
                    .await
                    .map_err(|e| e.to_string())?;
                db.server_url =
                    with_host_port(&db.url, proxy.addr()).ok_or("the database URL has no host")?;
                db.placement = Placement {
                    ip: ns.ns_addr(),
                    netns: Some(ns.name.clone()),
                };
                db.proxy = Some(proxy);
                db.netns = Some(ns);
                db
            }
            _ => plain(shared_db().await?),
        }))
    }
}

async fn start_server(db: &Db, env: &[(&str, &str)]) -> Result<LedgerProcess, String> {
    AssertUnwindSafe(LedgerProcess::start_at(&db.placement, &db.server_url, env))
        .catch_unwind()
        .await
        .map_err(|p| format!("a server did not start: {}", panic_text(&p)))
}

async fn restart(server: &mut LedgerProcess) -> Result<Instant, String> {
    AssertUnwindSafe(server.restart())
        .catch_unwind()
        .await
        .map_err(|p| format!("a server did not restart: {}", panic_text(&p)))
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    let text = p
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default();
    // The server log in the message can be long: its end says why.
    let mut start = text.len().saturating_sub(3000);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

/// Runs one scenario to its row; a set-up failure is a failed row.
pub async fn run(s: Scenario, settings: &Settings) -> Row {
    let started = Instant::now();
    let mut row = match run_inner(s, settings).await {
        Ok(row) => row,
        Err(e) => Row::failed_setup(s.name(), e),
    };
    row.wall_s = started.elapsed().as_secs_f64();
    row
}

async fn run_inner(s: Scenario, settings: &Settings) -> Result<Row, String> {
    let mut db = match Db::for_scenario(s).await? {
        Ok(db) => db,
        Err(reason) => return Ok(Row::skipped(s.name(), reason)),
    };
    // The run's payout provider, where the servers can reach it (in a
    // network namespace: on the host's end of its link).
    let sim_ip = db
        .netns
        .as_ref()
        .map_or(IpAddr::from([127, 0, 0, 1]), |ns| ns.host_ip.into());
    let sim = PayoutSim::start_on(SocketAddr::new(sim_ip, 0), payout_mode(s))
        .await
        .map_err(|e| format!("the payout provider did not start: {e}"))?;
    let env = s.server_env(&sim.url());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut servers = Vec::new();
    // One after the other: the first runs the migrations.
    for _ in 0..s.instances() {
        servers.push(start_server(&db, &env).await?);
    }
    let targets: Vec<SocketAddr> = servers.iter().map(LedgerProcess::addr).collect();
    let policy = Policy {
        bound: settings.retry_bound,
        ..Policy::default()
    };
    let first = targets.first().copied().ok_or("no server")?;
    let clients = s.clients(settings.clients);
    let users =
        workload::create_users(first, clients, rust_decimal::Decimal::from(500), &policy).await?;
    // The paused lock holder's wallet (or the killed holder's signal): a
    // user of its own, outside the workload, so that what the stale write
    // (or the dead order) must not change is exact.
    let lock_user = match s {
        Scenario::LockStall | Scenario::LockHolderKilled => {
            workload::create_users(first, 1, rust_decimal::Decimal::from(1000), &policy)
                .await?
                .pop()
        }
        _ => None,
    };
    let ids: Vec<i64> = users.iter().chain(lock_user.iter()).map(|u| u.id).collect();
    let opening = workload::wallets(first, &ids, &policy).await?;
    let base = check::baseline(&db.url).await?;

    let stop_feed = Arc::new(AtomicBool::new(false));
    // A first price before any order; the feed moves it from then on.
    let set_price = Call {
        method: hyper::Method::PUT,
        path: format!("/api/v1/prices/{}", workload::SYMBOL),
        token: None,
        key: None,
        lock_token: None,
        body: Some(serde_json::json!({"price": "100"}).to_string().into()),
    };
    let service = crate::token("backoffice", api::auth::Role::Service);
    workload::request(
        first,
        &Call {
            token: Some(&service),
            ..set_price
        },
        &policy,
    )
    .await?;
    let feed = tokio::spawn(workload::price_feed(
        targets.clone(),
        Arc::clone(&stop_feed),
    ));

    let lead = settings.duration / 4;
    let fault_span = match s {
        Scenario::PgStop => settings.pg_down,
        Scenario::RetryStorm => Duration::from_secs(3),
        // The load goes on while the dead holder's lease runs out.
        Scenario::LockHolderKilled => {
            Duration::from_millis(holder_killed::LEASE_MS) + Duration::from_secs(5)
        }
        _ => settings.duration / 2,
    };
    let tail = (settings.duration / 4).max(Duration::from_secs(2));
    let mix = Mix {
        clients,
        duration: settings.duration.max(lead + fault_span + tail),
        think: (Duration::from_millis(5), Duration::from_millis(40)),
        policy,
        synchronized_retries: s == Scenario::RetryStorm,
        resend_share: 0.1,
        request_timeout: Duration::from_secs(10),
    };
    let t0 = Instant::now();
    let load = {
        let (targets, users, mix) = (targets.clone(), users.clone(), mix.clone());
        tokio::spawn(async move { workload::run(&targets, &users, &mix).await })
    };
    tokio::time::sleep(lead).await;
    let injected = inject(
        s,
        &mut db,
        &mut servers,
        &users,
        lock_user.as_ref(),
        &sim,
        fault_span,
    )
    .await;
    // Whatever the fault did, every instance must serve again for the end
    // of the run and the checks.
    for server in &mut servers {
        if !server.is_running() {
            restart(server).await?;
        }
    }
    let mut injected = injected?;
    let mut run = load
        .await
        .map_err(|e| format!("the workload failed: {e}"))?;
    stop_feed.store(true, Ordering::Relaxed);
    let _ = feed.await;
    run.writes.append(&mut injected.writes);
    // The workflows' money moves in the background: each to its end first.
    let settled = flows::settle(first, &run.writes, settings.retry_bound, &policy).await?;
    let payouts = sim.records();
    let protocol_errors = sim.protocol_errors();
    sim.stop().await;

    // Read the wallets when no hold is about to expire: after the last
    // short hold's expiry, long before any long one's.
    if let Some(last) = workload::last_short_expiry(&run.writes) {
        let wait = u64::try_from(last + 200 - workload::now_ms()).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    let read_ms = workload::now_ms();
    let server_wallets = workload::wallets(first, &ids, &policy).await?;
    let mut verdict = check::verify(
        &db.url,
        base,
        &run.writes,
        &opening,
        &server_wallets,
        read_ms,
        check::Workflows {
            flows: &settled.flows,
            payouts: &payouts,
            protocol_errors,
        },
    )
    .await?;
    for body in &settled.unreadable {
        verdict.discrepancies += 1;
        verdict
            .problems
            .push(format!("a workflow answer is not a workflow: {body}"));
    }
    // What the fault saw go wrong comes first: it says the most.
    verdict.discrepancies += injected.problems.len();
    injected.problems.append(&mut verdict.problems);
    verdict.problems = std::mem::take(&mut injected.problems);

    let (from, to) = (injected.from.unwrap_or(t0), injected.to.unwrap_or(t0));
    let p99 = |pick: &dyn Fn(Instant) -> bool| {
        let mut l: Vec<Duration> = run
            .writes
            .iter()
            .filter(|w| pick(w.started))
            .map(workload::Write::latency)
            .collect();
        report::p99(&mut l)
    };
    let micros = |at: Instant| at.saturating_duration_since(t0).as_micros() as u64;
    let outages: Vec<(u64, u64)> = run
        .outages
        .iter()
        .map(|(a, b)| (micros(*a), micros(*b)))
        .collect();
    let mut notes = std::mem::take(&mut injected.notes);
    notes.push(attempt_summary(&run.attempts));
    if !run.left_open.is_empty() {
        notes.push(format!("orders left open: {:?}", run.left_open));
    }
    let wall = |at: Instant| {
        workload::now_ms() - i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX)
    };
    notes.push(hold_summary(&run.writes, read_ms, (wall(from), wall(to))));
    notes.push(flows::summary(&settled, &payouts));
    let evidence = evidence(s, &injected, &run.attempts);
    let outcome = if let Err(missing) = evidence {
        Outcome::Failed(format!("the fault left no trace: {missing}"))
    } else if verdict.clean() {
        Outcome::Passed
    } else {
        Outcome::Failed(verdict.problems.first().cloned().unwrap_or_default())
    };
    Ok(Row {
        scenario: s.name().to_owned(),
        instances: servers.len(),
        clients,
        duration_s: mix.duration.as_secs_f64(),
        operations: run.writes.len(),
        succeeded: run.writes.iter().filter(|w| w.succeeded()).count(),
        attempts: run.attempts.total,
        faults: format!("{} {}", injected.count, injected.what),
        outage_s: covered(&outages) as f64 / 1e6,
        p99_during_ms: p99(&|at| at >= from && at <= to),
        p99_after_ms: p99(&|at| at > to),
        never_definite: verdict.never_definite,
        duplicates: verdict.duplicates,
        discrepancies: verdict.discrepancies,
        journal_operations: verdict.journal_operations,
        problems: verdict.problems,
        notes,
        outcome,
        wall_s: 0.0,
    })
}

/// How the run's holds ended, by the answers, and how many of them were
/// due while the fault lasted (`fault`: Unix ms).
fn hold_summary(writes: &[workload::Write], read_ms: i64, fault: (i64, i64)) -> String {
    use workload::{Books, Ending, Op};
    let mut books = Books::default();
    for w in writes {
        books.account(w);
    }
    let (mut full, mut partial, mut voided, mut expired, mut active) = (0, 0, 0, 0, 0);
    let due_in_fault = books
        .holds
        .values()
        .filter(|h| h.ended.is_none() && (fault.0..=fault.1).contains(&h.expires_at_ms))
        .count();
    for h in books.holds.values() {
        match h.ended {
            Some(Ending::Captured(c)) if c == h.amount => full += 1,
            Some(Ending::Captured(_)) => partial += 1,
            Some(Ending::Voided) => voided += 1,
            None if h.expires_at_ms <= read_ms => expired += 1,
            None => active += 1,
        }
    }
    let refused_expired = writes
        .iter()
        .filter(|w| matches!(w.op, Op::CaptureHold | Op::VoidHold))
        .filter(|w| {
            w.answer
                .as_ref()
                .is_some_and(|(_, b)| b["hold_status"] == "expired")
        })
        .count();
    format!(
        "holds {}: captured in full {full}, in part {partial}, voided {voided}, expired {expired} \
         ({due_in_fault} of them while the fault lasted; {refused_expired} captures or voids \
         refused as expired), active at the end {active}",
        books.holds.len()
    )
}

fn attempt_summary(a: &workload::Attempts) -> String {
    let mut parts: Vec<String> = a
        .by_class
        .iter()
        .map(|(c, n)| (format!("{c:?}"), n))
        .map(|(c, n)| format!("{c} {n}"))
        .collect();
    parts.sort();
    format!("attempts {}: {}", a.total, parts.join(", "))
}

/// A scenario whose fault the clients never noticed tested nothing: each
/// names the trace its fault must leave.
fn evidence(s: Scenario, injected: &Injected, a: &workload::Attempts) -> Result<(), String> {
    let need = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_owned()) };
    need(injected.count > 0, "nothing was injected")?;
    match s {
        Scenario::KillOne | Scenario::KillAll | Scenario::RollingKill => need(
            a.of(Class::ConnectRefused) + a.of(Class::Lost) > 0,
            "no client met a refused or broken connection",
        ),
        Scenario::TerminateBackends => need(
            injected.busy > 0,
            "no terminated connection was serving a request",
        ),
        // `pg_ctl restart` succeeded (counted in `injected`): the server
        // may well ride through a fast restart without any client seeing a
        // failed request, which is the outcome wanted, not a missing fault.
        Scenario::PgRestart => Ok(()),
        Scenario::PgStop => need(
            a.not_definite() > 0,
            "no request was answered other than definitely",
        ),
        Scenario::PoolExhaustion => need(a.of(Class::Shed) > 0, "no request was shed"),
        Scenario::RetryStorm => need(
            a.of(Class::Unavailable) > 0,
            "no client was told the database is unavailable",
        ),
        Scenario::NetworkDelayLoss => Ok(()),
        Scenario::LockStall => need(
            injected.stale_writes > 0,
            "the paused holder never wrote after it resumed",
        ),
        Scenario::LockHolderKilled => need(
            injected.busy > 0,
            "the killed instance was not seen running the lock holder's order",
        ),
        Scenario::WorkflowRecovery => need(
            injected.busy > 0,
            "no payout was paid and still unrecorded when the instances were killed",
        ),
    }
}

async fn inject(
    s: Scenario,
    db: &mut Db,
    servers: &mut [LedgerProcess],
    users: &[User],
    lock_user: Option<&User>,
    sim: &PayoutSim,
    span: Duration,
) -> Result<Injected, String> {
    let mut f = Injected::default();
    match s {
        Scenario::WorkflowRecovery => {
            f.what = format!(
                "kill -9 (every instance at once) with payouts in flight, the provider answering {} ms late",
                PAYOUT_DELAY.as_millis()
            );
            let conn = Database::connect(&db.url)
                .await
                .map_err(|e| e.to_string())?;
            f.begin();
            let deadline = Instant::now() + span;
            while f.count == 0 || Instant::now() < deadline {
                // Paid at once, answered late: the calls of the last moment
                // are paid and not yet recorded by the ledger.
                sim.set_mode(payout_sim::Mode::Slow(PAYOUT_DELAY));
                tokio::time::sleep(PAYOUT_DELAY + Duration::from_millis(300)).await;
                let paid: Vec<String> = sim
                    .records()
                    .iter()
                    .filter(|r| r.payments > 0)
                    .map(|r| r.payout_id.to_string())
                    .collect();
                for server in servers.iter_mut() {
                    server.kill();
                    f.count += 1;
                }
                if !paid.is_empty() {
                    f.busy += u64::try_from(
                        check::scalar(
                            &conn,
                            &format!(
                                "SELECT COUNT(*)::bigint AS n FROM workflows \
                                 WHERE status = 'running' AND id IN ({})",
                                paid.join(",")
                            ),
                        )
                        .await?,
                    )
                    .unwrap_or(0);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                sim.set_mode(payout_mode(s));
                for server in servers.iter_mut() {
                    restart(server).await?;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            f.end();
            f.notes.push(format!(
                "{} payouts paid by the provider and not yet recorded by the ledger when it was killed",
                f.busy
            ));
            let _ = conn.close().await;
        }
        Scenario::LockStall => {
            let user = lock_user.ok_or("no user for the lock")?;
            let (Some(a), Some(b)) = (servers.first(), servers.last()) else {
                return Err("no server".into());
            };
            f.what = format!(
                "kill -STOP of a lock holder past its {} ms lease, then kill -CONT",
                stall::TTL_MS
            );
            f.begin();
            let stalls = stall::run(a.addr(), b.addr(), user, span).await?;
            f.end();
            f.count = stalls.stalls;
            f.stale_writes = stalls.stale_writes;
            f.writes = stalls.writes;
            f.problems = stalls.problems;
            f.notes = stalls.notes;
        }
        Scenario::LockHolderKilled => {
            let user = lock_user.ok_or("no user for the signal")?;
            f.what = format!(
                "kill -9 of the instance running an order inside its signal's trade lock (lease {} s)",
                holder_killed::LEASE_MS / 1000
            );
            f.begin();
            let killed = holder_killed::run(&db.url, servers, user).await?;
            f.end();
            f.count = killed.kills;
            // The fault is the kill, not the set-up before it.
            f.from = killed.killed_at.or(f.from);
            f.busy = u64::from(killed.serving);
            f.writes = killed.writes;
            f.problems = killed.problems;
            f.notes = killed.notes;
        }
        Scenario::KillOne => {
            f.what = "kill -9".into();
            f.begin();
            if let Some(server) = servers.first_mut() {
                server.kill();
                f.count += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
                let ready = restart(server).await?;
                f.notes.push(format!(
                    "ready again {:.1} s after the kill",
                    ready
                        .saturating_duration_since(f.from.unwrap_or(ready))
                        .as_secs_f64()
                ));
            }
            f.end();
        }
        Scenario::KillAll => {
            f.what = "kill -9 (every instance at once)".into();
            f.begin();
            for server in servers.iter_mut() {
                server.kill();
                f.count += 1;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            for server in servers.iter_mut() {
                restart(server).await?;
            }
            f.end();
        }
        Scenario::RollingKill => {
            f.what = "kill -9 + restart, instance by instance".into();
            f.begin();
            let deadline = Instant::now() + span;
            let mut i = 0;
            while Instant::now() < deadline || f.count < 3 {
                let n = servers.len();
                if let Some(server) = servers.get_mut(i % n) {
                    server.kill();
                    f.count += 1;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    restart(server).await?;
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
            f.end();
        }
        Scenario::PgRestart => {
            let pg = db.private.as_ref().ok_or("no private cluster")?;
            f.what = "PostgreSQL restart (private cluster, pg_ctl restart -m fast)".into();
            f.begin();
            pg.restart().await?;
            f.count += 1;
            f.end();
        }
        Scenario::PgStop => {
            let pg = db.private.as_ref().ok_or("no private cluster")?;
            f.what = format!(
                "PostgreSQL stopped {} s (private cluster, pg_ctl stop -m fast)",
                span.as_secs()
            );
            f.begin();
            pg.stop().await?;
            f.count += 1;
            tokio::time::sleep(span).await;
            pg.start_again().await?;
            f.end();
        }
        Scenario::TerminateBackends => {
            f.what = "pg_terminate_backend of server connections".into();
            let name = db
                .shared
                .as_ref()
                .map(|d| d.name.clone())
                .ok_or("no database name")?;
            let admin = Database::connect(crate::admin_url())
                .await
                .map_err(|e| e.to_string())?;
            f.begin();
            let mut busy = 0u64;
            let deadline = Instant::now() + span;
            while Instant::now() < deadline {
                // Busy connections first: an idle one is only noticed (and
                // replaced) by the pool, a busy one fails a request mid-way.
                let row = admin
                    .query_one_raw(Statement::from_string(
                        DbBackend::Postgres,
                        format!(
                            "SELECT COUNT(pg_terminate_backend(pid))::bigint AS n, \
                             COUNT(*) FILTER (WHERE state <> 'idle')::bigint AS busy FROM ( \
                             SELECT pid, state FROM pg_stat_activity WHERE datname = '{name}' \
                             AND backend_type = 'client backend' AND pid <> pg_backend_pid() \
                             ORDER BY state = 'idle', random() LIMIT 3) victims"
                        ),
                    ))
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some(row) = row {
                    f.count += row.try_get::<i64>("", "n").unwrap_or(0) as u64;
                    busy += row.try_get::<i64>("", "busy").unwrap_or(0) as u64;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            f.end();
            f.busy = busy;
            f.notes.push(format!(
                "{busy} of the {} terminated connections were inside a request",
                f.count
            ));
            let _ = admin.close().await;
        }
        Scenario::PoolExhaustion => {
            f.what = "outside transactions holding wallet rows 1.5 s (pools of 3)".into();
            let conn = Database::connect(&db.url)
                .await
                .map_err(|e| e.to_string())?;
            f.begin();
            let deadline = Instant::now() + span;
            while Instant::now() < deadline {
                let mut ids: Vec<i64> = users.iter().map(|u| u.id).collect();
                ids.shuffle(&mut rand::rng());
                let mut held = Vec::new();
                for chunk in ids.chunks(2).take(3) {
                    let txn = conn.begin().await.map_err(|e| e.to_string())?;
                    let list = chunk
                        .iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(",");
                    txn.execute_unprepared(&format!(
                        "SELECT id FROM wallets WHERE user_id IN ({list}) ORDER BY id FOR UPDATE"
                    ))
                    .await
                    .map_err(|e| e.to_string())?;
                    held.push(txn);
                    f.count += 1;
                }
                // Under the server's lock timeout (5 s): the requests wait
                // on these rows, holding their pooled connections, instead
                // of failing on the lock.
                tokio::time::sleep(Duration::from_millis(1500)).await;
                for txn in held {
                    let _ = txn.rollback().await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            f.end();
            let _ = conn.close().await;
        }
        Scenario::RetryStorm => {
            let proxy = db.proxy.as_mut().ok_or("no proxy")?;
            f.what = format!(
                "database unreachable {} s for every instance, then all clients retry at once",
                span.as_secs()
            );
            f.begin();
            proxy.cut().await;
            f.count += 1;
            tokio::time::sleep(span).await;
            proxy.restore().map_err(|e| e.to_string())?;
            f.end();
        }
        Scenario::NetworkDelayLoss => {
            let ns = db.netns.as_mut().ok_or("no namespace")?;
            f.begin();
            match ns.degrade().await {
                Ok(shaping) => {
                    f.what = shaping.describe();
                    if let netns::Shaping::Tbf { netem_error, .. } = &shaping {
                        f.notes.push(format!(
                            "netem is not available in this kernel ({netem_error}): tbf instead"
                        ));
                    }
                    f.count += 1;
                    tokio::time::sleep(span).await;
                    ns.heal().await?;
                }
                Err(e) => {
                    f.what = "none: tc refused".into();
                    f.notes.push(format!("tc could not shape the link: {e}"));
                }
            }
            f.end();
        }
    }
    Ok(f)
}

/// How late the provider answers while `workflow-recovery` kills the
/// instances (under the servers' 1 s payout timeout).
const PAYOUT_DELAY: Duration = Duration::from_millis(600);

/// Runs the scenarios one after the other (the machine is small: they
/// would measure each other).
pub async fn run_all(scenarios: &[Scenario], settings: &Settings) -> Vec<Row> {
    let mut rows = Vec::new();
    for &s in scenarios {
        println!("== {} ...", s.name());
        let row = run(s, settings).await;
        println!("{}", row.line());
        rows.push(row);
    }
    rows
}
