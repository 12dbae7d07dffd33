//! The real `ledger` binary as a child process, for fault tests: started
//! against a given database on a port of its own, killed with SIGKILL (no
//! graceful shutdown, no drain: what a crash or an OOM kill does), and
//! started again on the same port.
//!
//! The binary is `LEDGER_BIN` if set, else `ledger` beside the test
//! executable's `deps/` directory (`target/debug/ledger`). `cargo test`
//! does not build another package's binary: build it first with
//! `cargo build -p api --bin ledger`, or a stale one is tested.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::SECRET;

/// The tokio runtime of a tool's `main` (`faults`, `loadgen`): multi-thread,
/// or current-thread for a small helper process. When it cannot be built
/// the reason is printed and the exit code to return is the error.
pub fn runtime(multi_thread: bool) -> Result<tokio::runtime::Runtime, std::process::ExitCode> {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().map_err(|e| {
        eprintln!("error: {e}");
        std::process::ExitCode::FAILURE
    })
}

/// How long a start may take: migrations on a fresh database in a debug
/// build on a busy machine.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// Where the `ledger` binary is.
pub fn ledger_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("LEDGER_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the test executable has a path");
    // target/debug/deps/api-1234 -> target/debug/ledger; a binary of this
    // crate (target/debug/faults) sits beside it already.
    let dir = exe.parent().expect("an executable lives in a directory");
    let profile_dir = if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    profile_dir.join(format!("ledger{}", std::env::consts::EXE_SUFFIX))
}

/// A port nobody listens on right now, below Linux's ephemeral range
/// (32768 and up): the kernel hands ephemeral ports to outgoing
/// connections, and one of those could sit on a killed server's port before
/// it restarts. Released at once, so another process could still take it
/// first, which the start detects.
pub fn free_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..100 {
        let port = rng.random_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000..32000")
}

/// Where a server process runs: the address it listens on and, for network
/// faults, the network namespace it is started in (`ip netns exec`, which
/// execs the server itself, so a kill still reaches the server).
#[derive(Debug, Clone)]
pub struct Placement {
    pub ip: IpAddr,
    pub netns: Option<String>,
}

impl Default for Placement {
    fn default() -> Self {
        Self {
            ip: IpAddr::from([127, 0, 0, 1]),
            netns: None,
        }
    }
}

/// One `ledger serve` child process and the settings it restarts with.
pub struct LedgerProcess {
    bin: PathBuf,
    netns: Option<String>,
    addr: SocketAddr,
    env: Vec<(String, String)>,
    child: Option<Child>,
    logs: tempfile::TempDir,
    starts: u32,
    http: reqwest::Client,
}

impl LedgerProcess {
    /// Starts `ledger serve` on a free port against `database_url` with the
    /// test secret, no rate limit, no in-flight limit and no drain, plus `env` (which may
    /// override those), and waits until it is ready.
    pub async fn start(database_url: &str, env: &[(&str, &str)]) -> Self {
        Self::start_at(&Placement::default(), database_url, env).await
    }

    /// `start`, listening on `placement.ip` inside `placement.netns`. A
    /// fresh namespace has every port free, so the port is only checked on
    /// the host.
    pub async fn start_at(placement: &Placement, database_url: &str, env: &[(&str, &str)]) -> Self {
        let bin = ledger_bin();
        assert!(
            bin.is_file(),
            "no ledger binary at {}: run `cargo build -p api --bin ledger` (or set LEDGER_BIN)",
            bin.display()
        );
        let addr = SocketAddr::new(placement.ip, free_port());
        let mut all: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), database_url.into()),
            ("LEDGER_JWT_SECRET".into(), SECRET.into()),
            ("LEDGER_LISTEN".into(), addr.to_string()),
            ("LEDGER_RATE_LIMIT_PER_SECOND".into(), "0".into()),
            ("LEDGER_MAX_IN_FLIGHT".into(), "0".into()),
            ("LEDGER_SHUTDOWN_DRAIN_MS".into(), "0".into()),
            // The log is read by people when a test fails, not by a terminal.
            ("NO_COLOR".into(), "1".into()),
            (
                "RUST_LOG".into(),
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,sqlx=warn,sea_orm=warn".into()),
            ),
        ];
        for (k, v) in env {
            all.retain(|(name, _)| name != k);
            all.push(((*k).into(), (*v).into()));
        }
        let mut process = Self {
            bin,
            netns: placement.netns.clone(),
            addr,
            env: all,
            child: None,
            logs: tempfile::tempdir().expect("a temporary directory for server logs"),
            starts: 0,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("an HTTP client"),
        };
        process.spawn();
        process.wait_ready().await;
        process
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:port`
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.logs.path().join(format!("server-{start}.log"))
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = File::create(self.log_path(self.starts)).expect("a server log file");
        let err = log.try_clone().expect("a second handle on the log file");
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.as_str()]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        command.arg("serve");
        // Only what this process is given: an engineer's own LEDGER_* or
        // DATABASE_URL must not leak into the server under test.
        for (name, _) in std::env::vars_os() {
            if let Some(name) = name.to_str()
                && (name.starts_with("LEDGER_") || name == "DATABASE_URL")
            {
                command.env_remove(name);
            }
        }
        command
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// Polls `/health/ready` until 200; returns when it first answered so.
    /// Panics with the server's log if it exits or never gets ready.
    pub async fn wait_ready(&mut self) -> Instant {
        let deadline = Instant::now() + START_TIMEOUT;
        let url = format!("{}/health/ready", self.base());
        loop {
            if let Ok(resp) = self.http.get(&url).send().await
                && resp.status().as_u16() == 200
            {
                return Instant::now();
            }
            if !self.is_running() {
                panic!(
                    "the ledger server exited before it was ready; its log:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "the ledger server was not ready within {START_TIMEOUT:?}; its log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL (`Child::kill` on Unix), then reaps the process: its socket
    /// and database connections are gone when this returns.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same settings;
    /// returns the instant it answered ready.
    pub async fn restart(&mut self) -> Instant {
        self.kill();
        self.spawn();
        self.wait_ready().await
    }

    /// Every start's log, oldest first.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                let text = std::fs::read_to_string(self.log_path(n)).unwrap_or_default();
                format!("--- start {n} ---\n{text}")
            })
            .collect()
    }
}

impl Drop for LedgerProcess {
    /// A test that fails half-way must not leave a server running.
    fn drop(&mut self) {
        self.kill();
    }
}
