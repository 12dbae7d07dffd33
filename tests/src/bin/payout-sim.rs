//! `payout-sim`: the fake payout provider (`tests::payout_sim`) as a process,
//! for demos and manual runs of the withdrawal workflows.
//!
//! ```text
//! payout-sim --listen 127.0.0.1:9100 --mode accept
//!   --mode accept | reject | slow:MS | fail-first:N | drop
//!        | random:TRANSIENT,REJECT[,SEED]
//! ```
//!
//! Prints `LEDGER_PAYOUT_URL=<url>` on stdout, logs every call to stderr,
//! and on Ctrl-C (or SIGTERM) stops and prints what it paid. The mode can be
//! changed while it runs with `PUT /mode`; `GET /payouts`, `GET /payouts/{id}`
//! and `GET /stats` show the records (see the module's documentation).

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use tests::payout_sim::{Mode, PayoutSim};

#[derive(Parser, Debug)]
#[command(
    name = "payout-sim",
    about = "A fake payout provider for the ledger's withdrawals (LEDGER_PAYOUT_URL)"
)]
struct Args {
    /// Address to listen on (port 0: a free one).
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// accept | reject | slow:MS | fail-first:N | drop | random:TRANSIENT,REJECT[,SEED]
    #[arg(long, default_value = "accept")]
    mode: Mode,
    /// Do not log each call to stderr.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let sim = match PayoutSim::start_on(args.listen, args.mode).await {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    sim.set_logging(!args.quiet);
    println!("LEDGER_PAYOUT_URL={}", sim.url());
    eprintln!(
        "payout-sim: mode {}; PUT http://{addr}/mode to change it, GET http://{addr}/payouts \
         for the records; Ctrl-C to stop",
        args.mode,
        addr = sim.addr()
    );
    api::app::shutdown_signal().await;
    let records = sim.records();
    let payments = sim.total_payments();
    let doubled = records.iter().filter(|r| r.payments > 1).count();
    eprintln!(
        "payout-sim: stopping: {} calls, {} payouts, {payments} payments, {doubled} paid more \
         than once, {} protocol errors",
        sim.total_calls(),
        records.len(),
        sim.protocol_errors()
    );
    sim.stop().await;
    ExitCode::SUCCESS
}
