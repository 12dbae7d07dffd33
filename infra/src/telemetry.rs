//! Tracing subscriber: human-readable text by default, JSON lines with
//! `LEDGER_LOG_FORMAT=json`. The filter comes from `RUST_LOG` (default `info`).
//!
//! Lines are written to stderr by a thread of their own: a request only
//! formats its line and queues it, instead of taking stderr's lock and
//! making a `write` system call on the worker that serves it. Nothing is
//! dropped: when the queue is full, a request waits for room, as it waited
//! for stderr before. The queue is flushed when the [`LogGuard`] is dropped
//! (at the end of `main`); a process killed with SIGKILL loses at most the
//! lines still queued.

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Lines waiting for the writer thread before a request waits for room.
const QUEUED_LINES: usize = 16_384;

/// Flushes the queued log lines when dropped; keep it for the life of the
/// process.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _writer: Option<WorkerGuard>,
}

pub fn init(format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("ledger-log")
        .finish(std::io::stderr());
    // Colour codes only for a person at a terminal: in a log file they are
    // noise, and formatting them is work on every request's log line.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    // try_init: a second initialisation (tests) is not an error worth failing
    // on; the guard of a subscriber that was not installed is dropped.
    let installed = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    LogGuard {
        _writer: installed.is_ok().then_some(guard),
    }
}
