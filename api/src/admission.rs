//! Admission control: at most `max_in_flight` API requests of this process
//! work at once. One more is refused at once with 503 `overloaded` — before
//! it reads its body, checks a token or waits for a database connection —
//! so that under overload the requests that are let in keep their latency
//! and the rest learn it in microseconds instead of queueing for the pool.
//!
//! `Retry-After` follows the overload, second by second ([`next_retry_after`]).
//! It is at least one second plus one per refused request per admitted one
//! in the last full second (a server offered four times what it serves says
//! 4 s). Past that floor it is steered by what the refused clients do when
//! they come back: while more than one request in [`STEER_UP`] is refused
//! it grows by a second each second, and once fewer than one in
//! [`STEER_DOWN`] are (or none come at all) it shrinks by a second each
//! second; in between it holds; never past [`MAX_RETRY_AFTER_SECS`]. Under
//! a lasting overload a refused client is told, within seconds, a wait long
//! enough that it is served when it comes back, instead of being refused
//! again and again: every refusal costs the server (and the client) a round
//! trip that serves no one.
//!
//! Retried writes come first. A quarter of the places is kept for a write
//! whose Idempotency-Key (with its Authorization) was refused before: under
//! a long overload, a client retrying a money write would otherwise lose to
//! new requests again and again and never learn whether its write happened;
//! finishing what was started comes before starting more. The server
//! remembers the last [`REMEMBERED`] to 2 × [`REMEMBERED`] refused writes.
//!
//! Requests that wait on an event rather than on the database — a queue
//! item's long poll and the lock event stream — are not counted: they would
//! otherwise fill the limit while doing nothing. Nor is a money write while
//! it waits in the group-commit queue (`infra::in_flight`): it holds no
//! connection there, and that queue sheds what waits past its budget.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use poem::Request;
use poem::http::{Method, header};

/// The longest `Retry-After` of a refusal, in seconds.
pub const MAX_RETRY_AFTER_SECS: u64 = 30;

/// `Retry-After` grows while more than one request in this many is refused.
pub const STEER_UP: u64 = 8;

/// It shrinks once fewer than one request in this many is refused.
pub const STEER_DOWN: u64 = 32;

/// Refused writes remembered per generation (two generations are kept).
pub const REMEMBERED: usize = 65_536;

/// Refused writes, by a hash of their Authorization and Idempotency-Key:
/// the current generation and the one before it.
#[derive(Default)]
struct Refusals {
    current: HashSet<u64>,
    previous: HashSet<u64>,
}

impl Refusals {
    fn remember(&mut self, write: u64) {
        if self.current.len() >= REMEMBERED {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(write);
    }

    /// Whether `write` was refused before; it is forgotten then.
    fn take(&mut self, write: u64) -> bool {
        self.current.remove(&write) | self.previous.remove(&write)
    }
}

pub struct Admission {
    /// 0: no limit.
    limit: usize,
    in_flight: AtomicUsize,
    started: Instant,
    /// The second (since `started`) the counters below are for.
    second: AtomicU64,
    admitted: AtomicU64,
    refused: AtomicU64,
    /// What the last full second's counts said.
    retry_after: AtomicU64,
    refusals: Mutex<Refusals>,
    hasher: RandomState,
}

/// One admitted request; leaving frees its place.
pub struct Admitted<'a>(Option<&'a Admission>);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Some(a) = self.0 {
            a.in_flight.fetch_sub(1, Relaxed);
            infra::metrics::metrics().in_flight.dec();
        }
    }
}

/// A refused request: how long its client should wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub retry_after_secs: u64,
}

impl Admitted<'_> {
    /// Whether this request counts against the limit.
    pub fn counted(&self) -> bool {
        self.0.is_some()
    }
}

impl Admission {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            in_flight: AtomicUsize::new(0),
            started: Instant::now(),
            second: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            retry_after: AtomicU64::new(1),
            refusals: Mutex::default(),
            hasher: RandomState::new(),
        }
    }

    /// A counted request stops counting while it waits without a
    /// connection (`infra::in_flight`).
    pub fn leave(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
        infra::metrics::metrics().in_flight.dec();
    }

    /// It counts again after such a wait; it is never refused here.
    pub fn rejoin(&self) {
        self.in_flight.fetch_add(1, Relaxed);
        infra::metrics::metrics().in_flight.inc();
    }

    /// Lets the request in, or refuses it at once when the limit is reached.
    /// Requests outside `/api` and those that wait on events pass uncounted.
    pub fn enter(&self, req: &Request) -> Result<Admitted<'_>, Refused> {
        self.enter_at(req, self.started.elapsed().as_secs())
    }

    /// `enter` in the second `now` since this was made.
    fn enter_at(&self, req: &Request, now: u64) -> Result<Admitted<'_>, Refused> {
        let path = req.uri().path();
        if self.limit == 0 || !path.starts_with("/api/") || waits_on_events(req.method(), path) {
            return Ok(Admitted(None));
        }
        self.tick(now);
        let ahead = self.in_flight.fetch_add(1, Relaxed);
        // Past the places for new work, only a refused write retried is let
        // in; below them nothing is hashed or locked.
        if ahead >= self.limit - self.limit / 4 {
            let write = self.write_of(req);
            let mut refusals = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
            let retried = write.is_some_and(|w| refusals.take(w));
            if !retried || ahead >= self.limit {
                if let Some(w) = write {
                    refusals.remember(w);
                }
                self.in_flight.fetch_sub(1, Relaxed);
                self.refused.fetch_add(1, Relaxed);
                return Err(Refused {
                    retry_after_secs: self.retry_after.load(Relaxed),
                });
            }
        }
        self.admitted.fetch_add(1, Relaxed);
        infra::metrics::metrics().in_flight.inc();
        Ok(Admitted(Some(self)))
    }

    /// A write's identity: its Authorization and Idempotency-Key, hashed.
    fn write_of(&self, req: &Request) -> Option<u64> {
        if req.method() != Method::POST {
            return None;
        }
        let key = req.headers().get("idempotency-key")?;
        let auth = req.headers().get(header::AUTHORIZATION);
        Some(
            self.hasher
                .hash_one((auth.map(|a| a.as_bytes()), key.as_bytes())),
        )
    }

    /// At the first request of a new second, the last second's counts set
    /// the `Retry-After` of the refusals to come.
    fn tick(&self, now: u64) {
        let seen = self.second.load(Relaxed);
        if now != seen
            && self
                .second
                .compare_exchange(seen, now, Relaxed, Relaxed)
                .is_ok()
        {
            let admitted = self.admitted.swap(0, Relaxed);
            let refused = self.refused.swap(0, Relaxed);
            let secs = next_retry_after(self.retry_after.load(Relaxed), admitted, refused);
            // each second after `seen` without a request was a calm one
            // (past MAX_RETRY_AFTER_SECS of them, any value has come to 1)
            let quiet = now.saturating_sub(seen + 1).min(MAX_RETRY_AFTER_SECS);
            let secs = (0..quiet).fold(secs, |secs, _| next_retry_after(secs, 0, 0));
            self.retry_after.store(secs, Relaxed);
        }
    }
}

/// The `Retry-After` after a second in which `admitted` requests were let in
/// and `refused` were refused, given the one before (`previous`): see the
/// module's header.
pub fn next_retry_after(previous: u64, admitted: u64, refused: u64) -> u64 {
    let floor = 1 + refused / admitted.max(1);
    let steered = if refused * STEER_UP > admitted {
        previous + 1
    } else if refused * STEER_DOWN < admitted || refused == 0 {
        previous.saturating_sub(1)
    } else {
        previous
    };
    steered.max(floor).clamp(1, MAX_RETRY_AFTER_SECS)
}

/// A queue item's long poll and the lock event stream wait for events, not
/// for the database.
fn waits_on_events(method: &Method, path: &str) -> bool {
    method == Method::GET
        && (path == "/api/v1/locks/events" || path.starts_with("/api/v1/locks/queue/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPOSIT: &str = "/api/v1/wallets/deposit";

    fn request(method: Method, path: &str) -> Request {
        Request::builder().method(method).uri_str(path).finish()
    }

    /// A deposit by `who` with the Idempotency-Key `key`.
    fn write(who: &str, key: &str) -> Request {
        Request::builder()
            .method(Method::POST)
            .uri_str(DEPOSIT)
            .header(header::AUTHORIZATION, format!("Bearer {who}"))
            .header("Idempotency-Key", key)
            .finish()
    }

    fn deposit() -> Request {
        request(Method::POST, DEPOSIT)
    }

    const REFUSED: Refused = Refused {
        retry_after_secs: 1,
    };

    #[test]
    fn the_limit_refuses_at_once_and_a_leaving_request_frees_its_place() {
        // 4 places, of which 1 is kept for retried writes
        let a = Admission::new(4);
        let one = a.enter(&deposit()).unwrap();
        let two = a.enter(&request(Method::GET, "/api/v1/users/1")).unwrap();
        let three = a.enter(&deposit()).unwrap();
        assert_eq!(a.enter(&deposit()).err(), Some(REFUSED));
        drop(one);
        let four = a.enter(&deposit()).unwrap();
        assert!(a.enter(&deposit()).is_err());
        drop((two, three, four));
        assert_eq!(a.in_flight.load(Relaxed), 0);
    }

    #[test]
    fn a_refused_write_retried_takes_a_kept_place() {
        let a = Admission::new(4);
        let _new: Vec<_> = (0..3).map(|_| a.enter(&deposit()).unwrap()).collect();
        assert!(a.enter(&write("alice", "k1")).is_err());
        assert!(a.enter(&write("bob", "k2")).is_err());
        // another principal's key of the same name is another write
        assert!(a.enter(&write("bob", "k1")).is_err());
        assert!(a.enter(&deposit()).is_err());
        // alice's retry comes first; then the kept place is taken too
        let retried = a.enter(&write("alice", "k1")).unwrap();
        assert!(a.enter(&write("bob", "k2")).is_err());
        drop(retried);
        let _retried = a.enter(&write("bob", "k2")).unwrap();
        // an admitted retry is forgotten: refused again, it waits its turn
        assert_eq!(a.in_flight.load(Relaxed), 4);
    }

    #[test]
    fn only_posts_with_a_key_are_remembered_and_memory_is_bounded() {
        let a = Admission::new(4);
        let get = || request(Method::GET, "/api/v1/users/1");
        assert_eq!(a.write_of(&get()), None);
        assert_eq!(a.write_of(&deposit()), None);
        assert_eq!(a.write_of(&write("a", "k")), a.write_of(&write("a", "k")));
        assert_ne!(a.write_of(&write("a", "k")), a.write_of(&write("b", "k")));
        let mut r = Refusals::default();
        for w in 0..(2 * REMEMBERED as u64 + 10) {
            r.remember(w);
        }
        assert!(r.current.len() + r.previous.len() <= 2 * REMEMBERED);
        assert!(r.take(2 * REMEMBERED as u64 + 9));
        assert!(!r.take(2 * REMEMBERED as u64 + 9));
        assert!(!r.take(0));
    }

    #[test]
    fn health_metrics_and_event_waits_are_never_counted() {
        let a = Admission::new(1);
        let _busy = a.enter(&deposit()).unwrap();
        for (method, path) in [
            (Method::GET, "/health"),
            (Method::GET, "/health/ready"),
            (Method::GET, "/metrics"),
            (Method::GET, "/admin/locks"),
            (Method::GET, "/api/v1/locks/events"),
            (Method::GET, "/api/v1/locks/queue/7"),
        ] {
            assert!(
                a.enter(&request(method.clone(), path)).is_ok(),
                "{method} {path}"
            );
        }
        // cancelling a queue item is ordinary work
        assert!(
            a.enter(&request(Method::DELETE, "/api/v1/locks/queue/7"))
                .is_err()
        );
        assert_eq!(a.in_flight.load(Relaxed), 1);
    }

    #[test]
    fn no_limit_admits_everything() {
        let a = Admission::new(0);
        let all: Vec<_> = (0..1000).map(|_| a.enter(&deposit()).unwrap()).collect();
        assert_eq!(all.len(), 1000);
    }

    #[test]
    fn retry_after_is_at_least_one_second_plus_the_refused_per_admitted() {
        // from a calm start, a first overloaded second gives the floor
        assert_eq!(next_retry_after(1, 0, 0), 1);
        assert_eq!(next_retry_after(1, 1000, 0), 1);
        assert_eq!(next_retry_after(1, 1000, 1000), 2);
        assert_eq!(next_retry_after(1, 1000, 3000), 4);
        assert_eq!(next_retry_after(1, 0, 50), 30);
        assert_eq!(next_retry_after(1, 10, 1_000_000), MAX_RETRY_AFTER_SECS);
        // the floor, not one more second, when it is higher
        assert_eq!(next_retry_after(2, 1000, 3000), 4);
    }

    #[test]
    fn retry_after_is_steered_by_the_share_refused() {
        // more than one in 8 refused: a second longer, each second
        assert_eq!(next_retry_after(5, 1000, 126), 6);
        assert_eq!(next_retry_after(6, 1000, 500), 7);
        assert_eq!(
            next_retry_after(MAX_RETRY_AFTER_SECS, 10, 9),
            MAX_RETRY_AFTER_SECS
        );
        // between one in 32 and one in 8: held
        assert_eq!(next_retry_after(7, 1000, 125), 7);
        assert_eq!(next_retry_after(7, 1000, 32), 7);
        // fewer than one in 32, or none: a second shorter, down to 1
        assert_eq!(next_retry_after(7, 1000, 31), 6);
        assert_eq!(next_retry_after(7, 1000, 0), 6);
        assert_eq!(next_retry_after(7, 0, 0), 6);
        assert_eq!(next_retry_after(1, 0, 0), 1);
    }

    #[test]
    fn a_lasting_overload_lengthens_retry_after_and_calm_shortens_it() {
        // the same load second after second: 1 in 5 refused
        let mut secs = 1;
        let mut seen = Vec::new();
        for _ in 0..40 {
            secs = next_retry_after(secs, 800, 200);
            seen.push(secs);
        }
        assert_eq!(&seen[..4], &[2, 3, 4, 5]);
        assert_eq!(seen.last(), Some(&MAX_RETRY_AFTER_SECS));
        // then 29 calm seconds
        for _ in 0..29 {
            secs = next_retry_after(secs, 800, 0);
        }
        assert_eq!(secs, 1);
    }

    #[test]
    fn the_last_full_seconds_counts_set_retry_after() {
        let a = Admission::new(1);
        let enter = |second| a.enter_at(&deposit(), second);
        let _busy = enter(10).unwrap();
        let after = |retry_after_secs| Some(Refused { retry_after_secs });
        for _ in 0..3 {
            assert_eq!(enter(10).err(), after(1));
        }
        // the next second: 1 admitted, 3 refused in the last one
        assert_eq!(enter(11).err(), after(4));
        assert_eq!(enter(11).err(), after(4));
        // 2 refused, none admitted: still refusing, so a second longer
        assert_eq!(enter(12).err(), after(5));
        // 1 refused in second 12 (6), then 7 seconds without a request:
        // each of them shortens it by a second
        assert_eq!(enter(20).err(), after(1));
    }
}
