//! Admission control: at most `max_in_flight` API requests of this process
//! work at once. One more is refused at once with 503 `overloaded` — before
//! it reads its body, checks a token or waits for a database connection —
//! so that under overload the requests that are let in keep their latency
//! and the rest learn it in microseconds instead of queueing for the pool.
//!
//! `Retry-After` grows with the overload: over the last full second, one
//! second plus one per refused request per admitted one, so that refused
//! clients come back spread over the time the server needs to serve them
//! (a server offered four times what it serves says 4 s), capped at
//! [`MAX_RETRY_AFTER_SECS`].
//!
//! Requests that wait on an event rather than on the database — a queue
//! item's long poll and the lock event stream — are not counted: they would
//! otherwise fill the limit while doing nothing.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use poem::http::Method;

/// The longest `Retry-After` of a refusal, in seconds.
pub const MAX_RETRY_AFTER_SECS: u64 = 30;

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
        }
    }

    /// Lets the request in, or refuses it at once when the limit is reached.
    /// Requests outside `/api` and those that wait on events pass uncounted.
    pub fn enter(&self, method: &Method, path: &str) -> Result<Admitted<'_>, Refused> {
        self.enter_at(method, path, self.started.elapsed().as_secs())
    }

    /// `enter` in the second `now` since this was made.
    fn enter_at(&self, method: &Method, path: &str, now: u64) -> Result<Admitted<'_>, Refused> {
        if self.limit == 0 || !path.starts_with("/api/") || waits_on_events(method, path) {
            return Ok(Admitted(None));
        }
        self.tick(now);
        if self.in_flight.fetch_add(1, Relaxed) >= self.limit {
            self.in_flight.fetch_sub(1, Relaxed);
            self.refused.fetch_add(1, Relaxed);
            return Err(Refused {
                retry_after_secs: self.retry_after.load(Relaxed),
            });
        }
        self.admitted.fetch_add(1, Relaxed);
        infra::metrics::metrics().in_flight.inc();
        Ok(Admitted(Some(self)))
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
            // counts older than one second say nothing about now
            let (admitted, refused) = if now.checked_sub(seen) == Some(1) {
                (admitted, refused)
            } else {
                (0, 0)
            };
            self.retry_after
                .store(retry_after_secs(admitted, refused), Relaxed);
        }
    }
}

/// One second plus one per refused request per admitted one, at most
/// [`MAX_RETRY_AFTER_SECS`].
pub fn retry_after_secs(admitted: u64, refused: u64) -> u64 {
    (1 + refused / admitted.max(1)).min(MAX_RETRY_AFTER_SECS)
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

    #[test]
    fn the_limit_refuses_at_once_and_a_leaving_request_frees_its_place() {
        let a = Admission::new(2);
        let one = a.enter(&Method::POST, DEPOSIT).unwrap();
        let two = a.enter(&Method::GET, "/api/v1/users/1").unwrap();
        assert_eq!(
            a.enter(&Method::POST, DEPOSIT).err(),
            Some(Refused {
                retry_after_secs: 1
            })
        );
        drop(one);
        let three = a.enter(&Method::POST, DEPOSIT).unwrap();
        assert!(a.enter(&Method::POST, DEPOSIT).is_err());
        drop((two, three));
        assert_eq!(a.in_flight.load(Relaxed), 0);
    }

    #[test]
    fn health_metrics_and_event_waits_are_never_counted() {
        let a = Admission::new(1);
        let _busy = a.enter(&Method::POST, DEPOSIT).unwrap();
        for (method, path) in [
            (Method::GET, "/health/ready"),
            (Method::GET, "/health"),
            (Method::GET, "/metrics"),
            (Method::GET, "/admin/locks"),
            (Method::GET, "/api/v1/locks/events"),
            (Method::GET, "/api/v1/locks/queue/7"),
        ] {
            assert!(a.enter(&method, path).is_ok(), "{method} {path}");
        }
        // cancelling a queue item is ordinary work
        assert!(a.enter(&Method::DELETE, "/api/v1/locks/queue/7").is_err());
        assert_eq!(a.in_flight.load(Relaxed), 1);
    }

    #[test]
    fn no_limit_admits_everything() {
        let a = Admission::new(0);
        let all: Vec<_> = (0..1000)
            .map(|_| a.enter(&Method::POST, DEPOSIT).unwrap())
            .collect();
        assert_eq!(all.len(), 1000);
    }

    #[test]
    fn retry_after_grows_with_the_overload() {
        assert_eq!(retry_after_secs(0, 0), 1);
        assert_eq!(retry_after_secs(1000, 0), 1);
        assert_eq!(retry_after_secs(1000, 999), 1);
        assert_eq!(retry_after_secs(1000, 1000), 2);
        assert_eq!(retry_after_secs(1000, 3000), 4);
        assert_eq!(retry_after_secs(0, 50), 30);
        assert_eq!(retry_after_secs(10, 1_000_000), MAX_RETRY_AFTER_SECS);
    }

    #[test]
    fn the_last_full_seconds_counts_set_retry_after() {
        let a = Admission::new(1);
        let enter = |second| a.enter_at(&Method::POST, DEPOSIT, second);
        let _busy = enter(10).unwrap();
        for _ in 0..3 {
            assert_eq!(
                enter(10).err(),
                Some(Refused {
                    retry_after_secs: 1
                })
            );
        }
        // the next second: 1 admitted, 3 refused in the last one
        assert_eq!(
            enter(11).err(),
            Some(Refused {
                retry_after_secs: 4
            })
        );
        assert_eq!(
            enter(11).err(),
            Some(Refused {
                retry_after_secs: 4
            })
        );
        // 2 refused, none admitted
        assert_eq!(
            enter(12).err(),
            Some(Refused {
                retry_after_secs: 3
            })
        );
        // a quiet gap: old counts no longer count
        assert_eq!(
            enter(20).err(),
            Some(Refused {
                retry_after_secs: 1
            })
        );
    }
}
