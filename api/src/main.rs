//! The `ledger` binary: serve (default), migrate, openapi, token, reconcile,
//! seed-load.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use api::app::{self, BoxError};
use api::auth::{Role, Tokens};
use api::seed::{self, SeedOptions};
use clap::{Parser, Subcommand};
use domain::money::Amount;
use domain::trading::rules::Symbol;
use infra::config::{ConfigError, LogFormat};
use infra::{Config, Database};

#[derive(Parser)]
#[command(name = "ledger", version, about = "Financial ledger backend")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server (the default). Migrations run first.
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Print the OpenAPI document (JSON) to stdout.
    Openapi,
    /// Mint a bearer token signed with the configured secret.
    Token {
        /// Subject: a user id, or a service name.
        #[arg(long)]
        sub: String,
        /// user, service or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Lifetime: 90s, 15m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
    },
    /// Check every wallet against its journal (sums and hash chains).
    Reconcile,
    /// Create funded users for load tests and write their ids and tokens
    /// (plus a service token and the priced symbol) as JSON.
    SeedLoad {
        /// How many users.
        #[arg(long)]
        users: usize,
        /// Each user's live balance, a decimal such as 1000.
        #[arg(long, value_parser = parse_amount)]
        balance: Amount,
        /// Where to write the JSON file.
        #[arg(long)]
        out: PathBuf,
        /// The symbol to price, for orders.
        #[arg(long, default_value = "LOADUSD", value_parser = parse_symbol)]
        symbol: Symbol,
        /// Its price.
        #[arg(long, default_value = "100", value_parser = parse_amount)]
        price: Amount,
        /// Lifetime of the tokens written: 90s, 15m, 1h, 7d.
        #[arg(long, default_value = "1d", value_parser = parse_ttl)]
        token_ttl: Duration,
        /// Users per transaction.
        #[arg(long, default_value_t = 500)]
        batch: usize,
    },
}

fn parse_amount(s: &str) -> Result<Amount, String> {
    Amount::parse(s).map_err(|e| e.to_string())
}

fn parse_symbol(s: &str) -> Result<Symbol, String> {
    Symbol::parse(s).map_err(|e| e.to_string())
}

/// mimalloc: per-thread free lists; under load it spends less time than
/// glibc's malloc on the many small allocations of each request (measured
/// in BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("unknown role {s:?}: expected user, service or admin"))
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3_600,
        "d" => n * 86_400,
        _ => return Err(format!("invalid duration unit in {s:?}: use s, m, h or d")),
    };
    if secs == 0 {
        return Err("duration must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

/// The configuration with its signing secret, for the commands that sign or
/// check tokens.
fn with_jwt_secret(mut config: Config) -> Result<Config, BoxError> {
    if let Some(path) = config.resolve_jwt_secret()? {
        tracing::info!(path = %path.display(), "JWT secret read from (or generated into) this file");
    }
    Ok(config)
}

fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
    }
}

/// The listening socket; with `reuse_port`, other instances may bind the
/// same address and the kernel spreads new connections across them.
async fn bind(addr: &str, reuse_port: bool) -> Result<tokio::net::TcpListener, BoxError> {
    if !reuse_port {
        return Ok(tokio::net::TcpListener::bind(addr).await?);
    }
    let addr: std::net::SocketAddr = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(4096)?)
}

async fn serve(config: Config) -> Result<(), BoxError> {
    let config = with_jwt_secret(config)?;
    tracing::info!(config = ?config, "configuration");
    raise_fd_limit();
    let listener = bind(&config.server.listen, config.server.reuse_port).await?;
    let drain = config.server.shutdown_drain;
    let state = app::prepare(config).await?;
    let server = app::start(state, listener).await?;
    tracing::info!(addr = %server.addr, "listening");
    app::shutdown_signal().await;
    server.shutdown(drain).await;
    Ok(())
}

/// `config` is loaded once, in `main`; a command that needs it fails with
/// its error.
async fn run(command: Command, config: Result<Config, ConfigError>) -> Result<ExitCode, BoxError> {
    match command {
        Command::Serve => serve(config?).await?,
        Command::Migrate => {
            let db = Database::connect(&config?.database).await?;
            db.migrate().await?;
            db.close().await;
            tracing::info!("migrations applied");
        }
        Command::Openapi => println!("{}", app::spec_json()),
        Command::Token { sub, role, ttl } => {
            let config = with_jwt_secret(config?)?;
            println!(
                "{}",
                Tokens::new(config.server.jwt_secret.expose()).mint(&sub, role, ttl)?
            );
        }
        Command::Reconcile => {
            let db = Database::connect(&config?.database).await?;
            let report = domain::ledger::reconcile::check_all(&db.conn).await?;
            db.close().await;
            println!(
                "wallets checked: {}, journal entries: {}",
                report.wallets, report.entries
            );
            for d in &report.discrepancies {
                println!("wallet {}: {}", d.wallet_id, d.problem);
            }
            if !report.is_clean() {
                println!("{} discrepancies", report.discrepancies.len());
                return Ok(ExitCode::FAILURE);
            }
            println!("books balance");
        }
        Command::SeedLoad {
            users,
            balance,
            out,
            symbol,
            price,
            token_ttl,
            batch,
        } => {
            let config = with_jwt_secret(config?)?;
            let db = Database::connect(&config.database).await?;
            db.migrate().await?;
            let options = SeedOptions {
                users,
                balance,
                symbol,
                price,
                token_ttl,
                batch,
            };
            let started = Instant::now();
            let file = seed::seed_load(&db, &config, &options, |done, total| {
                eprint!("\r{}", seed::progress_bar(done, total, started.elapsed()));
                let _ = std::io::stderr().flush();
            })
            .await;
            eprintln!();
            db.close().await;
            let file = file?;
            std::fs::write(&out, serde_json::to_vec(&file)?)?;
            println!(
                "{} users seeded in {:.1}s; wrote {}",
                file.users.len(),
                started.elapsed().as_secs_f64(),
                out.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let config = Config::load();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Ok(config) = &config {
        runtime.event_interval(config.server.event_interval);
    }
    match runtime.build() {
        Ok(runtime) => runtime.block_on(start(config)),
        Err(e) => {
            eprintln!("error: the async runtime did not start: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn start(config: Result<Config, ConfigError>) -> ExitCode {
    let format = config
        .as_ref()
        .map_or(LogFormat::Text, |c| c.server.log_format);
    let _log = infra::telemetry::init(format);
    let command = Cli::parse().command.unwrap_or(Command::Serve);
    match run(command, config).await {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %e, "ledger failed");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3_600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_ttl("30"), Ok(Duration::from_secs(30)));
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
