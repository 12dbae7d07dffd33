//! `loadgen`: drives a running ledger with virtual users, each on its own
//! keep-alive connection, reports throughput, latency and errors, and checks
//! the books. Requests ride through faults (refused connections, restarts,
//! load shedding, outages): each is sent again, a write with the same
//! Idempotency-Key, until its answer is definite or `--retry-bound` passes.
//! Exits 1 on any failed request (a refusal or a server error), any request
//! never answered definitely, any balance that differs from what the run's
//! own definite successful operations imply, any hold or withdrawal
//! workflow that did not end as it should (captured, completed), or any
//! reconciliation discrepancy. Shedding and outages are reported, not
//! failed.
//!
//! A process holds at most its open-files limit of connections; `--shards N`
//! runs N child processes, each with its share of the users, and merges them.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use api::seed::{LoadFile, LoadUser};
use clap::Parser;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tests::load::client::{Call, Connection};
use tests::load::retry::Policy;
use tests::load::stats::{Latency, Stats, WireStats};
use tests::load::{self, Books, Plan, Scenario};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "loadgen",
    about = "Load generator and books checker for the ledger"
)]
struct Args {
    /// The file written by `ledger seed-load`.
    #[arg(long)]
    users_file: PathBuf,
    /// The server, host:port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: SocketAddr,
    #[arg(long, value_enum, default_value = "mixed")]
    scenario: Scenario,
    /// Virtual users (connections).
    #[arg(long, default_value_t = 50)]
    vus: usize,
    /// Ramp-up time, seconds.
    #[arg(long, default_value_t = 0.0)]
    ramp: f64,
    /// Run time after the ramp, seconds.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Think time between a user's requests, milliseconds: min.
    #[arg(long, default_value_t = 0)]
    think_min_ms: u64,
    /// Think time, milliseconds: max.
    #[arg(long, default_value_t = 0)]
    think_max_ms: u64,
    /// Stop starting iterations after this many requests.
    #[arg(long)]
    max_requests: Option<u64>,
    /// Request timeout, seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Give up on a request (a write: its outcome stays unknown, and the run
    /// fails) this many seconds after its first attempt.
    #[arg(long, default_value_t = 120.0)]
    retry_bound: f64,
    /// Wait at most this many seconds when an answer's `Retry-After` asks for
    /// more.
    #[arg(long, default_value_t = 10.0)]
    max_retry_after: f64,
    /// Comma-separated source addresses for the connections.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    sources: Vec<IpAddr>,
    /// Child processes sharing the users (each holds its own connections).
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Deposit and withdrawal amount.
    #[arg(long, default_value = "1")]
    amount: Decimal,
    /// Order quantity.
    #[arg(long, default_value = "0.01")]
    quantity: Decimal,
    /// Pause between two polls of a withdrawal workflow, milliseconds (the
    /// resolution of its end-to-end time).
    #[arg(long, default_value_t = 20)]
    poll_ms: u64,
    /// Run `ledger reconcile`'s check against this database at the end.
    #[arg(long)]
    database_url: Option<String>,
    /// Write the full report (with the per-second timeline) here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A free-form label stored in the report.
    #[arg(long, default_value = "")]
    label: String,
    /// Internal: run as shard K of --shards and print its results as JSON.
    #[arg(long, hide = true)]
    shard: Option<usize>,
}

impl Args {
    fn retry(&self) -> Policy {
        Policy {
            bound: Duration::from_secs_f64(self.retry_bound),
            max_retry_after: Duration::from_secs_f64(self.max_retry_after),
            ..Policy::default()
        }
    }

    fn plan(&self, vus: usize, max_requests: Option<u64>) -> Plan {
        Plan {
            scenario: self.scenario,
            target: self.target,
            sources: self.sources.clone(),
            vus,
            ramp: Duration::from_secs_f64(self.ramp),
            duration: Duration::from_secs_f64(self.duration),
            think: (
                Duration::from_millis(self.think_min_ms),
                Duration::from_millis(self.think_max_ms.max(self.think_min_ms)),
            ),
            max_requests,
            timeout: Duration::from_secs_f64(self.timeout),
            retry: self.retry(),
            amount: self.amount,
            quantity: self.quantity,
            poll: Duration::from_millis(self.poll_ms),
        }
    }
}

/// What a shard prints for its parent.
#[derive(Serialize, Deserialize)]
struct ShardResult {
    stats: WireStats,
    books: Books,
    elapsed_s: f64,
}

/// The users a run touches: virtual user `i` is `users[i % len]`.
fn selected_users(file: &LoadFile, args: &Args) -> Vec<LoadUser> {
    let n = match args.scenario {
        Scenario::Hot => 1,
        _ => args.vus.min(file.users.len()),
    };
    file.users.iter().take(n).cloned().collect()
}

/// Shard `k` of `n`: every n-th user, every n-th virtual user.
fn shard_of<T: Clone>(items: &[T], k: usize, n: usize) -> Vec<T> {
    items.iter().skip(k).step_by(n.max(1)).cloned().collect()
}

fn share(total: usize, k: usize, n: usize) -> usize {
    total / n + usize::from(k < total % n)
}

async fn run_shard(args: &Args, file: LoadFile, k: usize) -> Result<(), BoxError> {
    let users = shard_of(&selected_users(&file, args), k, args.shards);
    let vus = share(args.vus, k, args.shards);
    let max = args
        .max_requests
        .map(|m| m / args.shards as u64 + u64::from((k as u64) < m % args.shards as u64));
    let out = load::run(args.plan(vus, max), file, users).await;
    let result = ShardResult {
        stats: WireStats::from(&out.stats),
        books: out.books,
        elapsed_s: out.elapsed.as_secs_f64(),
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

async fn run_children(args: &Args) -> Result<(Stats, Books, f64), BoxError> {
    let exe = std::env::current_exe()?;
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut children = Vec::new();
    for k in 0..args.shards {
        let child = tokio::process::Command::new(&exe)
            .args(&raw)
            .arg("--shard")
            .arg(k.to_string())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        children.push(child);
    }
    let mut stats = Stats::default();
    let mut books = Books::default();
    let mut elapsed: f64 = 0.0;
    for child in children {
        let out = child.wait_with_output().await?;
        if !out.status.success() {
            return Err(format!("a shard failed: {}", out.status).into());
        }
        let result: ShardResult = serde_json::from_slice(&out.stdout)?;
        stats.merge(&result.stats);
        books.merge(result.books);
        elapsed = elapsed.max(result.elapsed_s);
    }
    Ok((stats, books, elapsed))
}

/// `ledger_db_begin_seconds` of every instance behind the target: summed
/// over distinct `ledger_process_id`s seen on a few fresh connections.
#[derive(Debug, Clone, Default, Serialize)]
struct BeginWait {
    instances: usize,
    count: f64,
    sum_s: f64,
    /// Upper bound (le) -> cumulative count.
    buckets: BTreeMap<String, f64>,
}

fn parse_begin_wait(text: &str) -> Option<(String, BeginWait)> {
    let mut wait = BeginWait {
        instances: 1,
        ..BeginWait::default()
    };
    let mut process = None;
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        if name == "ledger_process_id" {
            process = Some(value.to_owned());
        } else if name == "ledger_db_begin_seconds_sum" {
            wait.sum_s = v;
        } else if name == "ledger_db_begin_seconds_count" {
            wait.count = v;
        } else if let Some(le) = name
            .strip_prefix("ledger_db_begin_seconds_bucket{le=\"")
            .and_then(|s| s.strip_suffix("\"}"))
        {
            wait.buckets.insert(le.to_owned(), v);
        }
    }
    process.map(|p| (p, wait))
}

async fn scrape_begin_wait(target: SocketAddr, source: IpAddr) -> BeginWait {
    let mut seen: HashMap<String, BeginWait> = HashMap::new();
    for _ in 0..16 {
        let mut conn = Connection::new(source, target, Duration::from_secs(5));
        if let Ok(a) = conn.send(&Call::get("/metrics".into(), None)).await
            && let Some((process, wait)) = parse_begin_wait(&String::from_utf8_lossy(&a.body))
        {
            seen.insert(process, wait);
        }
    }
    seen.into_values()
        .fold(BeginWait::default(), |mut total, w| {
            total.instances += 1;
            total.count += w.count;
            total.sum_s += w.sum_s;
            for (le, n) in w.buckets {
                *total.buckets.entry(le).or_default() += n;
            }
            total
        })
}

/// Mean wait, and the share of begins that waited over 10 ms, in this run.
fn begin_wait_delta(before: &BeginWait, after: &BeginWait) -> serde_json::Value {
    let count = after.count - before.count;
    let mean_ms = if count > 0.0 {
        (after.sum_s - before.sum_s) / count * 1000.0
    } else {
        0.0
    };
    let within = |w: &BeginWait| w.buckets.get("0.01").copied().unwrap_or_default();
    let over_10ms = count - (within(after) - within(before));
    json!({
        "instances": after.instances,
        "transactions": count,
        "mean_ms": mean_ms,
        "over_10ms": if count > 0.0 { over_10ms / count } else { 0.0 },
    })
}

async fn reconcile(url: &str) -> Result<domain::ledger::reconcile::Report, BoxError> {
    let conn = sea_orm::Database::connect(url).await?;
    let report = domain::ledger::reconcile::check_all(&conn).await?;
    conn.close().await?;
    Ok(report)
}

fn print_summary(report: &serde_json::Value) {
    let l = &report["latency"];
    println!(
        "{} | {} vus | {} requests in {:.1}s = {:.0} req/s (steady {:.0}) | failed {}",
        report["scenario"].as_str().unwrap_or(""),
        report["vus"],
        report["requests"],
        report["elapsed_s"].as_f64().unwrap_or_default(),
        report["rps"].as_f64().unwrap_or_default(),
        report["steady_rps"].as_f64().unwrap_or_default(),
        report["failed"],
    );
    println!(
        "latency ms: p50 {} p95 {} p99 {} max {} mean {:.2}",
        l["p50"],
        l["p95"],
        l["p99"],
        l["max"],
        l["mean"].as_f64().unwrap_or_default()
    );
    if let Some(ops) = report["per_op"].as_object() {
        for (op, l) in ops {
            println!(
                "  {op:<18} n={:<8} p50 {:<8} p99 {:<8} max {}",
                l["count"], l["p50"], l["p99"], l["max"]
            );
        }
    }
    let (served, shed) = (&report["latency_served"], &report["latency_shed"]);
    println!(
        "served {} ({:.0}/s steady, p99 {} ms) | shed {} (p99 {} ms) | unavailable {} | outage {:.1}s | never definite: {} writes, {} reads",
        report["served"],
        report["steady_served_rps"].as_f64().unwrap_or_default(),
        served["p99"],
        report["shed"],
        shed["p99"],
        report["unavailable"],
        report["outage_s"].as_f64().unwrap_or_default(),
        report["never_definite_writes"],
        report["never_definite_reads"],
    );
    println!("outcomes: {}", report["outcomes"]);
    println!("pool wait: {}", report["begin_wait"]);
    if !report["flows"].is_null() {
        let flows = &report["flows"];
        let l = &flows["latency_cycle"];
        println!(
            "{}: done {} ({:.0}/s, steady {:.0}/s) | not done {} | cycle p50 {} p95 {} p99 {} max {} ms | ends {}",
            flows["cycle"].as_str().unwrap_or(""),
            flows["done"],
            flows["per_s"].as_f64().unwrap_or_default(),
            flows["steady_per_s"].as_f64().unwrap_or_default(),
            flows["not_done"],
            l["p50"],
            l["p95"],
            l["p99"],
            l["max"],
            flows["ends"],
        );
    }
    if !report["locks"].is_null() {
        let locks = &report["locks"];
        let null = serde_json::Value::Null;
        let grant = locks.get("latency_grant").unwrap_or(&null);
        println!(
            "locks: held {} (at once {}, from the queue {}, deduplicated {}) | released {} | unreleased {} | never granted {} | steady {:.0} grants/s | acquire-to-grant p50 {} p99 {} max {} ms | errors {}",
            locks["held"],
            locks["acquired"],
            locks["granted_from_queue"],
            locks["deduplicated"],
            locks["released"],
            locks["unreleased"],
            locks["never_granted"],
            locks["steady_grants_per_s"].as_f64().unwrap_or_default(),
            grant["p50"],
            grant["p99"],
            grant["max"],
            locks["errors"],
        );
    }
    println!("books: {}", report["books"]);
    println!("reconcile: {}", report["reconcile"]);
}

async fn main_run(args: Args) -> Result<bool, BoxError> {
    let file: LoadFile = serde_json::from_slice(&std::fs::read(&args.users_file)?)?;
    if file.users.is_empty() {
        return Err("the users file has no users".into());
    }
    if args.shards > 1
        && matches!(
            args.scenario,
            Scenario::Hot | Scenario::Locks | Scenario::LocksHot
        )
    {
        return Err("the hot-wallet and lock scenarios run in one process (--shards 1)".into());
    }
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if (limit as usize) < args.vus / args.shards.max(1) + 64 => eprintln!(
            "warning: open-files limit {limit} is below the connections of one process; use --shards"
        ),
        _ => {}
    }
    if let Some(k) = args.shard {
        run_shard(&args, file, k).await?;
        return Ok(true);
    }
    let source = args
        .sources
        .first()
        .copied()
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let users = selected_users(&file, &args);
    // The lock scenarios move no money: no books to check.
    let money = args.scenario.moves_money();
    let ids: Vec<i64> = if money {
        users.iter().map(|u| u.id).collect()
    } else {
        Vec::new()
    };
    eprintln!("reading {} balances before the run", ids.len());
    let policy = args.retry();
    let before =
        load::read_balances(args.target, source, &file.service_token, &ids, 50, &policy).await;
    let wait_before = scrape_begin_wait(args.target, source).await;
    eprintln!(
        "running {:?}: {} vus, ramp {}s, {}s",
        args.scenario, args.vus, args.ramp, args.duration
    );
    let (stats, books, elapsed) = if args.shards > 1 {
        run_children(&args).await?
    } else {
        let out = load::run(args.plan(args.vus, args.max_requests), file.clone(), users).await;
        (out.stats, out.books, out.elapsed.as_secs_f64())
    };
    let wait_after = scrape_begin_wait(args.target, source).await;
    let touched = books.users();
    eprintln!("checking the books of {} users", touched.len());
    let after = load::read_balances(
        args.target,
        source,
        &file.service_token,
        &touched,
        50,
        &policy,
    )
    .await;
    let mismatches = load::check_books(&before, &after, &books);
    let reconciled = match &args.database_url {
        Some(url) => {
            eprintln!("reconciling the database");
            Some(reconcile(url).await?)
        }
        None => None,
    };
    let timeline = stats.timeline();
    let steady: Vec<_> = timeline
        .iter()
        .skip(args.ramp.ceil() as usize)
        .take(args.duration.floor() as usize)
        .collect();
    let per_steady_second = |count: fn(&load::stats::Point) -> u64| {
        if steady.is_empty() {
            0.0
        } else {
            steady.iter().map(|p| count(p) as f64).sum::<f64>() / steady.len() as f64
        }
    };
    let steady_rps = per_steady_second(|p| p.requests);
    let steady_served_rps = per_steady_second(|p| p.served);
    let steady_grants = per_steady_second(|p| p.grants);
    let steady_flows = per_steady_second(|p| p.flows);
    let locks = (!money).then(|| {
        let t = &stats.locks;
        json!({
            "acquired": t.acquired,
            "deduplicated": t.deduplicated,
            "queued": t.queued,
            "granted_from_queue": t.granted_from_queue,
            "held": t.held(),
            "released": t.released,
            "unreleased": t.unreleased,
            "never_granted": t.never_granted,
            "errors": t.errors,
            "all_released": t.is_clean(),
            "grants_per_s": t.held() as f64 / elapsed.max(0.001),
            "steady_grants_per_s": steady_grants,
            "cycles_per_s": t.released as f64 / elapsed.max(0.001),
            "latency_grant": Latency::from(&stats.grant_latency),
            "latency_cycle": Latency::from(&stats.cycle_latency),
        })
    });
    let flows = args.scenario.has_flows().then(|| {
        let t = &stats.flows;
        json!({
            "cycle": match args.scenario {
                Scenario::WithdrawalWorkflows => "withdrawal workflow (start to a final status seen)",
                _ => "hold (create + capture)",
            },
            "done": t.done,
            "not_done": t.not_done,
            "ends": t.ends,
            "per_s": t.done as f64 / elapsed.max(0.001),
            "steady_per_s": steady_flows,
            "latency_cycle": Latency::from(&stats.flow_latency),
            "poll_ms": (args.scenario == Scenario::WithdrawalWorkflows).then_some(args.poll_ms),
        })
    });
    let never_definite_writes = books.uncertain.len();
    let report = json!({
        "label": args.label,
        "scenario": args.scenario,
        "vus": args.vus,
        "users": ids.len(),
        "shards": args.shards,
        "sources": args.sources,
        "ramp_s": args.ramp,
        "duration_s": args.duration,
        "think_ms": [args.think_min_ms, args.think_max_ms],
        "elapsed_s": elapsed,
        "requests": stats.requests,
        "failed": stats.failed,
        "rps": stats.requests as f64 / elapsed.max(0.001),
        "steady_rps": steady_rps,
        "latency": Latency::from(&stats.all),
        "per_op": stats.per_op.iter().map(|(k, h)| (k.clone(), Latency::from(h))).collect::<BTreeMap<_, _>>(),
        "per_op_rps": stats.per_op.iter().map(|(k, h)| (k.clone(), h.len() as f64 / elapsed.max(0.001))).collect::<BTreeMap<_, _>>(),
        "outcomes": stats.outcomes,
        "served": stats.served,
        "served_rps": stats.served as f64 / elapsed.max(0.001),
        "steady_served_rps": steady_served_rps,
        "latency_served": Latency::from(&stats.served_latency),
        "shed": stats.shed,
        "latency_shed": Latency::from(&stats.shed_latency),
        "unavailable": stats.unavailable,
        "outage_s": stats.outage_time().as_secs_f64(),
        "never_definite_writes": never_definite_writes,
        "never_definite_reads": stats.never_definite_reads,
        "retry_bound_s": args.retry_bound,
        "begin_wait": begin_wait_delta(&wait_before, &wait_after),
        "locks": locks,
        "flows": flows,
        "books": {
            "checked": money,
            "users_checked": touched.len(),
            "mismatch_count": mismatches.len(),
            "mismatches": mismatches.iter().take(20).collect::<Vec<_>>(),
        },
        "reconcile": reconciled.as_ref().map(|r| json!({
            "wallets": r.wallets,
            "entries": r.entries,
            "discrepancies": r.discrepancies.len(),
        })),
        "timeline": timeline,
    });
    print_summary(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    let clean = stats.failed == 0
        && stats.served > 0
        && never_definite_writes == 0
        && stats.never_definite_reads == 0
        && mismatches.is_empty()
        && reconciled.as_ref().is_none_or(|r| r.is_clean())
        && (money || stats.locks.is_clean())
        && stats.flows.is_clean();
    Ok(clean)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tests::process::runtime(true) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(main_run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!(
                "FAILED: failed requests, requests never answered definitely, a books mismatch, a reconciliation discrepancy, a lock not released, or a hold or workflow that did not end as it should"
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

// Not `mod tests`: that name would shadow this package's library crate.
#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn shards_split_users_and_counts_without_overlap() {
        let items: Vec<u32> = (0..7).collect();
        assert_eq!(shard_of(&items, 0, 2), vec![0, 2, 4, 6]);
        assert_eq!(shard_of(&items, 1, 2), vec![1, 3, 5]);
        assert_eq!(share(7, 0, 2) + share(7, 1, 2), 7);
        assert_eq!(share(7, 0, 3), 3);
        assert_eq!(share(7, 2, 3), 2);
    }

    #[test]
    fn begin_wait_is_read_from_prometheus_text() {
        let text = "ledger_process_id 42\n\
            ledger_db_begin_seconds_bucket{le=\"0.01\"} 9\n\
            ledger_db_begin_seconds_bucket{le=\"+Inf\"} 10\n\
            ledger_db_begin_seconds_sum 0.5\n\
            ledger_db_begin_seconds_count 10\n";
        let (process, wait) = parse_begin_wait(text).unwrap();
        assert_eq!(process, "42");
        assert_eq!((wait.count, wait.sum_s), (10.0, 0.5));
        let delta = begin_wait_delta(&BeginWait::default(), &wait);
        assert_eq!(delta["mean_ms"], 50.0);
        assert_eq!(delta["over_10ms"], 0.1);
    }
}
