//! `faults`: the fault suite. Runs each scenario (`tests::faults`) one after
//! the other against real `ledger` processes, prints one line per scenario,
//! the table at the end, and optionally writes `RELIABILITY.md`. Exits 1 if
//! any scenario lost, doubled or mis-booked a write, or its fault left no
//! trace; a fault the kernel forbids here is skipped with the reason.
//!
//! Needs `target/<profile>/ledger` (or `LEDGER_BIN`), the PostgreSQL of
//! `TEST_DATABASE_URL`, and for the private cluster the PostgreSQL server
//! binaries (`PG_BIN` or `/usr/lib/postgresql/*/bin`).
//!
//! `faults lock-holder …` (hidden) is not for people: it is the lock holder
//! process the `lock-stall` scenario starts, stops and resumes
//! (`tests::faults::stall`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tests::faults::{self, Scenario, Settings, stall};

#[derive(Parser, Debug)]
#[command(
    name = "faults",
    about = "Fault scenarios against the ledger, with the books checked"
)]
struct Args {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Scenarios to run (default: all), e.g. `--scenario kill-one --scenario pg-stop`.
    #[arg(long, value_enum)]
    scenario: Vec<Scenario>,
    /// Seconds of load per scenario (a fault that needs longer gets longer).
    #[arg(long, default_value_t = 8.0)]
    seconds: f64,
    /// Clients (one user each); `retry-storm` runs twice as many.
    #[arg(long, default_value_t = 12)]
    clients: usize,
    /// Seconds `pg-stop` keeps PostgreSQL down.
    #[arg(long, default_value_t = 10.0)]
    pg_down: f64,
    /// Seconds after which a write without a definite answer counts as lost.
    #[arg(long, default_value_t = 60.0)]
    retry_bound: f64,
    /// Write the report (`RELIABILITY.md`) here.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// The lock holder the `lock-stall` scenario pauses: acquires a lock,
    /// then writes under it as its stdin says.
    #[command(hide = true)]
    LockHolder(stall::HolderArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Mode::LockHolder(holder)) = args.mode {
        return lock_holder(holder);
    }
    let scenarios = if args.scenario.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenario.clone()
    };
    let settings = Settings {
        duration: Duration::from_secs_f64(args.seconds),
        clients: args.clients.max(2),
        pg_down: Duration::from_secs_f64(args.pg_down),
        retry_bound: Duration::from_secs_f64(args.retry_bound),
    };
    let runtime = match tests::process::runtime(true) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let rows = runtime.block_on(faults::run_all(&scenarios, &settings));
    println!("\n{}", faults::report::table(&rows));
    for r in &rows {
        if let faults::Outcome::Skipped(why) = &r.outcome {
            println!("SKIPPED {}: {why}", r.scenario);
        }
    }
    if let Some(path) = &args.report {
        let command = std::iter::once("faults".to_owned())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" ");
        let doc = faults::report::document(&rows, &command, faults::PENDING);
        if let Err(e) = std::fs::write(path, doc) {
            eprintln!("error: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.scenario.as_str())
        .collect();
    if failed.is_empty() {
        println!("faults: every scenario passed (0 lost, 0 duplicated, 0 discrepancies)");
        ExitCode::SUCCESS
    } else {
        eprintln!("faults: FAILED: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}

fn lock_holder(args: stall::HolderArgs) -> ExitCode {
    let runtime = match tests::process::runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(stall::holder(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lock-holder: {e}");
            ExitCode::FAILURE
        }
    }
}
