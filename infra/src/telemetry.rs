//! Tracing subscriber: human-readable text by default, JSON lines with
//! `LEDGER_LOG_FORMAT=json`. The filter comes from `RUST_LOG` (default `info`).
//!
//! Lines are written to stderr by a thread of their own ([`LogBuffer`]): a
//! request only formats its line and appends it to a shared buffer, instead
//! of taking stderr's lock and making a `write` system call on the worker
//! that serves it. The thread wakes every [`WRITE_EVERY`] (or as soon as the
//! buffer holds [`WRITE_AT`] bytes) and writes all the lines gathered so far
//! in one go, so that neither a `write` nor a wake-up is paid per line.
//! Nothing is dropped: when [`MAX_BUFFERED`] bytes wait, a request waits for
//! room, as it waited for stderr before. The buffer is written out when the
//! [`LogGuard`] is dropped (at the end of `main`); a process killed with
//! SIGKILL loses at most the lines of the last [`WRITE_EVERY`].

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// How long a line may wait in the buffer before the thread writes it.
const WRITE_EVERY: Duration = Duration::from_millis(20);
/// Buffered bytes at which the thread is woken before its time.
const WRITE_AT: usize = 256 * 1024;
/// Buffered bytes past which a request waits for the thread to write.
const MAX_BUFFERED: usize = 8 * 1024 * 1024;

/// Writes the buffered lines out when dropped; keep it for the life of the
/// process.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    writer: Option<(Arc<LogBuffer>, JoinHandle<()>)>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some((buffer, thread)) = self.writer.take() {
            buffer.close();
            let _ = thread.join();
        }
    }
}

pub fn init(format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn"));
    let buffer = Arc::new(LogBuffer::default());
    // Colour codes only for a person at a terminal: in a log file they are
    // noise, and formatting them is work on every request's log line.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(Arc::clone(&buffer));
    // try_init: a second initialisation (tests) is not an error worth failing
    // on; the buffer of a subscriber that was not installed is dropped unused.
    let installed = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if installed.is_err() {
        return LogGuard { writer: None };
    }
    let writing = Arc::clone(&buffer);
    let thread = std::thread::Builder::new()
        .name("ledger-log".into())
        .spawn(move || writing.write_to(&mut std::io::stderr()));
    match thread {
        Ok(thread) => LogGuard {
            writer: Some((buffer, thread)),
        },
        Err(e) => {
            // Without its thread the buffer would fill and stop every
            // request: log straight to stderr instead.
            buffer.unbuffered();
            eprintln!("the log writer thread did not start ({e}): logging unbuffered");
            LogGuard { writer: None }
        }
    }
}

/// Log lines waiting for the writer thread.
#[derive(Debug, Default)]
pub struct LogBuffer {
    state: Mutex<Pending>,
    /// Signalled when the thread should write (the buffer is large, or the
    /// log is closing).
    ready: Condvar,
    /// Signalled when the thread has taken the buffered lines.
    room: Condvar,
}

#[derive(Debug, Default)]
struct Pending {
    lines: Vec<u8>,
    closed: bool,
    /// No thread writes: lines go straight to stderr.
    unbuffered: bool,
}

impl LogBuffer {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves whole lines or none: the
        // buffer is still good to write.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends one formatted line (or several); waits while the buffer is
    /// full.
    fn append(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut state = self.lock();
        loop {
            if state.unbuffered || state.closed {
                // No thread will write it (any more): straight to stderr.
                drop(state);
                return std::io::stderr().write_all(bytes);
            }
            if state.lines.len() < MAX_BUFFERED {
                break;
            }
            state = self
                .room
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let was = state.lines.len();
        state.lines.extend_from_slice(bytes);
        if was < WRITE_AT && state.lines.len() >= WRITE_AT {
            self.ready.notify_one();
        }
        Ok(())
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
        self.room.notify_all();
    }

    /// From now on lines go straight to stderr; those already buffered go
    /// first.
    fn unbuffered(&self) {
        let mut state = self.lock();
        state.unbuffered = true;
        let _ = std::io::stderr().write_all(&std::mem::take(&mut state.lines));
    }

    /// The writer thread: takes the buffered lines every [`WRITE_EVERY`] (or
    /// when woken) and writes them in one go, until closed and empty.
    fn write_to(&self, out: &mut impl Write) {
        let mut spare = Vec::new();
        loop {
            let closed = {
                let mut state = self.lock();
                if state.lines.len() < WRITE_AT && !state.closed {
                    state = self
                        .ready
                        .wait_timeout(state, WRITE_EVERY)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                std::mem::swap(&mut state.lines, &mut spare);
                self.room.notify_all();
                state.closed
            };
            if !spare.is_empty() {
                // stderr gone (closed by the parent) is not worth stopping
                // the server for; the lines are lost either way.
                let _ = out.write_all(&spare).and_then(|()| out.flush());
                spare.clear();
            }
            if closed && self.lock().lines.is_empty() {
                return;
            }
        }
    }
}

/// The subscriber's writer (`Arc<LogBuffer>` is a `MakeWriter` through
/// this): each line is formatted whole and handed over in one `write_all`.
impl Write for &LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.append(bytes)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use super::{LogBuffer, MAX_BUFFERED};

    #[test]
    fn every_line_is_written_once_in_order_and_close_writes_the_rest() {
        let buffer = Arc::new(LogBuffer::default());
        let writing = Arc::clone(&buffer);
        let thread = std::thread::spawn(move || {
            let mut out = Vec::new();
            writing.write_to(&mut out);
            out
        });
        let mut expected = Vec::new();
        for i in 0..10_000 {
            let line = format!("line {i}\n");
            (&*buffer).write_all(line.as_bytes()).unwrap();
            expected.extend_from_slice(line.as_bytes());
        }
        buffer.close();
        let out = thread.join().unwrap();
        assert_eq!(out, expected);
    }

    #[test]
    fn without_its_thread_nothing_stays_buffered() {
        let buffer = LogBuffer::default();
        (&buffer).write_all(b"before\n").unwrap();
        buffer.unbuffered();
        assert!(buffer.lock().lines.is_empty(), "a line kept in the buffer");
        (&buffer).write_all(b"after\n").unwrap();
        assert!(buffer.lock().lines.is_empty(), "a line buffered after");
    }

    #[test]
    fn a_full_buffer_makes_the_writer_wait_until_the_thread_takes_it() {
        let buffer = Arc::new(LogBuffer::default());
        let big = vec![b'x'; MAX_BUFFERED];
        (&*buffer).write_all(&big).unwrap();
        let appending = Arc::clone(&buffer);
        let waiter = std::thread::spawn(move || {
            (&*appending).write_all(b"after\n").unwrap();
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished(), "the line went in past a full buffer");
        assert_eq!(buffer.lock().lines.len(), MAX_BUFFERED);
        let writing = Arc::clone(&buffer);
        let thread = std::thread::spawn(move || {
            let mut out = Vec::new();
            writing.write_to(&mut out);
            out
        });
        waiter.join().unwrap();
        buffer.close();
        let out = thread.join().unwrap();
        assert_eq!(out.len(), MAX_BUFFERED + b"after\n".len());
        assert!(out.ends_with(b"xafter\n"));
    }
}
