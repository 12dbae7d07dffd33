//! When to send a request again, and after how long. Pure functions, so the
//! policy that decides whether the books can be trusted is tested on its own.
//!
//! A write is sent again with the same Idempotency-Key until its answer is
//! definite: a 2xx, or a 4xx that the server stored (anything but 409
//! `idempotency_in_flight` and 429, which change nothing and ask to come
//! back). Everything else — refused or reset connections, timeouts, 503
//! `overloaded` / `unavailable`, other 5xx — leaves the outcome open, and
//! the same key is sent again until the bound.

use std::time::{Duration, Instant};

use super::client::Transport;

/// What one attempt came to, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// 2xx.
    Success,
    /// A 4xx the server stored (or that changed nothing and will not change
    /// on a retry): the outcome is known.
    Refused,
    /// 503 `overloaded`: shed at once because no database connection was free.
    Shed,
    /// 503 `unavailable`: the database is unreachable or the server drains.
    Unavailable,
    /// 409 `idempotency_in_flight`: an earlier attempt of this key still runs.
    InFlight,
    /// 429: rate limit, cooldown, full queue.
    Throttled,
    /// Any other 5xx: not stored, so the same key may be sent again.
    ServerError,
    /// The connection was refused: nothing listens (a restart, a crash).
    ConnectRefused,
    /// The connection broke or timed out with the request sent: the outcome
    /// is unknown until the same key is answered.
    Lost,
}

impl Class {
    /// The answer says what happened (and will say the same on a replay).
    pub fn is_definite(self) -> bool {
        matches!(self, Self::Success | Self::Refused)
    }

    /// The service as a whole was out for this attempt: nothing listened, or
    /// it said its database was unreachable.
    pub fn is_outage(self) -> bool {
        matches!(self, Self::ConnectRefused | Self::Unavailable)
    }

    /// Counted as a failed request in the report: an answer that says the
    /// request will not succeed, or a server error that is a bug. Load
    /// shedding, outages and in-flight conflicts are what the retries are
    /// for, and are reported on their own.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Refused | Self::ServerError)
    }
}

/// Classifies an HTTP answer by status and problem `code`.
pub fn classify_answer(status: u16, code: &str) -> Class {
    match status {
        200..=299 => Class::Success,
        409 if code == "idempotency_in_flight" => Class::InFlight,
        429 => Class::Throttled,
        503 if code == "overloaded" => Class::Shed,
        503 => Class::Unavailable,
        500..=599 => Class::ServerError,
        // 1xx/3xx never reach here through hyper's client; a 4xx is the
        // server's considered answer.
        _ => Class::Refused,
    }
}

/// Classifies a request that got no HTTP answer.
pub fn classify_transport(failure: Transport) -> Class {
    match failure {
        Transport::Connect => Class::ConnectRefused,
        Transport::Io | Transport::Timeout => Class::Lost,
    }
}

/// `Retry-After` as delta-seconds (the only form this API sends); an
/// HTTP-date or garbage is ignored and the backoff applies instead.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// How a client retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// First backoff when the server gave no `Retry-After`, doubling.
    pub initial: Duration,
    /// Largest backoff without `Retry-After`. Short: after a restart the
    /// clients should be back within a fraction of a second.
    pub max_backoff: Duration,
    /// A `Retry-After` longer than this is cut to it, so that one odd answer
    /// cannot park a client for minutes.
    pub max_retry_after: Duration,
    /// Give up on a request this long after its first attempt.
    pub bound: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            max_retry_after: Duration::from_secs(10),
            bound: Duration::from_secs(120),
        }
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The answer is definite: stop.
    Done,
    /// Send the same request again after this pause.
    RetryAfter(Duration),
    /// The bound is reached without a definite answer.
    GiveUp,
}

/// One request's retry state: since when it has been sent and how many of
/// its attempts left the outcome open. The loop every sender runs around
/// `next`.
#[derive(Debug)]
pub struct Retrying {
    first: Instant,
    failures: u32,
}

impl Retrying {
    /// The state at the request's first attempt, now.
    pub fn start() -> Self {
        Self {
            first: Instant::now(),
            failures: 0,
        }
    }

    /// Counts an attempt of class `class` (a failure unless definite) and
    /// decides what comes next: `next` with this request's failures and
    /// time since its first attempt.
    pub fn after(
        &mut self,
        policy: &Policy,
        class: Class,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Next {
        if !class.is_definite() {
            self.failures += 1;
        }
        next(
            policy,
            class,
            self.failures,
            retry_after,
            self.first.elapsed(),
            jitter,
        )
    }
}

/// The decision after an attempt of class `class`.
///
/// - `failures`: attempts of this request so far that were not definite,
///   this one included (1 after the first failure);
/// - `retry_after`: the answer's `Retry-After`, if any;
/// - `elapsed`: time since the request's first attempt;
/// - `jitter`: a number in `[0, 1)` (random in real use) that spreads the
///   clients out: every client shed in the same second gets the same
///   `Retry-After`, and coming back all in the same millisecond would be
///   shed again. The pause is stretched by up to half.
pub fn next(
    policy: &Policy,
    class: Class,
    failures: u32,
    retry_after: Option<Duration>,
    elapsed: Duration,
    jitter: f64,
) -> Next {
    if class.is_definite() {
        return Next::Done;
    }
    let base = match retry_after {
        // Only these answers carry a meaningful Retry-After; a stray one on
        // a reset connection cannot exist, on a 500 it is not promised.
        Some(ra)
            if matches!(
                class,
                Class::Shed | Class::Unavailable | Class::InFlight | Class::Throttled
            ) =>
        {
            ra.min(policy.max_retry_after)
        }
        _ => backoff(policy, failures),
    };
    let pause = base.mul_f64(1.0 + jitter.clamp(0.0, 1.0) / 2.0);
    if elapsed + pause > policy.bound {
        // One last attempt right at the bound is still worth it when there
        // is time left at all: a restart may just have finished.
        return if elapsed < policy.bound {
            Next::RetryAfter(policy.bound - elapsed)
        } else {
            Next::GiveUp
        };
    }
    Next::RetryAfter(pause)
}

/// `initial × 2^(failures-1)`, at most `max_backoff`.
pub fn backoff(policy: &Policy, failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(20);
    policy
        .initial
        .saturating_mul(1u32 << shift)
        .min(policy.max_backoff)
}

/// Total length of the union of these intervals (`(start, end)`, any order,
/// overlapping or not): the wall time during which at least one client saw
/// the service out.
pub fn covered(intervals: &[(u64, u64)]) -> u64 {
    let mut sorted: Vec<(u64, u64)> = intervals
        .iter()
        .map(|&(a, b)| (a.min(b), a.max(b)))
        .collect();
    sorted.sort_unstable();
    let mut total = 0;
    let mut current: Option<(u64, u64)> = None;
    for (start, end) in sorted {
        current = match current {
            Some((s, e)) if start <= e => Some((s, e.max(end))),
            Some((s, e)) => {
                total += e - s;
                Some((start, end))
            }
            None => Some((start, end)),
        };
    }
    total + current.map_or(0, |(s, e)| e - s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn policy() -> Policy {
        Policy::default()
    }

    #[test]
    fn answers_are_classified_by_status_and_code() {
        let answers = [
            (200, "", Class::Success),
            (201, "", Class::Success),
            (422, "insufficient_funds", Class::Refused),
            (409, "order_not_open", Class::Refused),
            (409, "conflict", Class::Refused),
            (409, "idempotency_in_flight", Class::InFlight),
            (429, "rate_limited", Class::Throttled),
            (429, "cooldown_active", Class::Throttled),
            (503, "overloaded", Class::Shed),
            (503, "unavailable", Class::Unavailable),
            (503, "", Class::Unavailable),
            (500, "internal", Class::ServerError),
            (502, "", Class::ServerError),
        ];
        for (status, code, class) in answers {
            assert_eq!(classify_answer(status, code), class, "{status} {code}");
        }
        assert_eq!(
            classify_transport(Transport::Connect),
            Class::ConnectRefused
        );
        assert_eq!(classify_transport(Transport::Io), Class::Lost);
        assert_eq!(classify_transport(Transport::Timeout), Class::Lost);
    }

    #[test]
    fn only_success_and_stored_refusals_are_definite() {
        let definite: Vec<Class> = [
            Class::Success,
            Class::Refused,
            Class::Shed,
            Class::Unavailable,
            Class::InFlight,
            Class::Throttled,
            Class::ServerError,
            Class::ConnectRefused,
            Class::Lost,
        ]
        .into_iter()
        .filter(|c| c.is_definite())
        .collect();
        assert_eq!(definite, vec![Class::Success, Class::Refused]);
        assert!(Class::ConnectRefused.is_outage() && Class::Unavailable.is_outage());
        assert!(!Class::Shed.is_outage() && !Class::Lost.is_outage());
        assert!(!Class::Shed.is_failure() && !Class::Lost.is_failure());
        assert!(Class::ServerError.is_failure() && Class::Refused.is_failure());
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let p = policy();
        let ra = Some(Duration::from_secs(2));
        for class in [
            Class::Shed,
            Class::Unavailable,
            Class::InFlight,
            Class::Throttled,
        ] {
            assert_eq!(
                next(&p, class, 1, ra, Duration::ZERO, 0.0),
                Next::RetryAfter(Duration::from_secs(2)),
                "{class:?}"
            );
        }
        assert_eq!(
            next(
                &p,
                Class::Shed,
                1,
                Some(Duration::from_secs(3600)),
                Duration::ZERO,
                0.0
            ),
            Next::RetryAfter(p.max_retry_after)
        );
        // jitter stretches by up to half, never shortens what was asked
        assert_eq!(
            next(&p, Class::Shed, 1, ra, Duration::ZERO, 0.5),
            Next::RetryAfter(Duration::from_millis(2500))
        );
        assert_eq!(
            next(&p, Class::Shed, 1, ra, Duration::ZERO, 7.0),
            Next::RetryAfter(Duration::from_secs(3))
        );
        // a Retry-After on an answer that does not promise one is ignored
        assert_eq!(
            next(&p, Class::ServerError, 1, ra, Duration::ZERO, 0.0),
            Next::RetryAfter(MS(50))
        );
    }

    #[test]
    fn without_retry_after_the_backoff_doubles_up_to_its_cap() {
        let p = policy();
        let pauses: Vec<Next> = (1..=6)
            .map(|n| next(&p, Class::ConnectRefused, n, None, Duration::ZERO, 0.0))
            .collect();
        assert_eq!(
            pauses,
            [50, 100, 200, 400, 500, 500]
                .map(|ms| Next::RetryAfter(MS(ms)))
                .to_vec()
        );
        assert_eq!(backoff(&p, 0), MS(50));
        assert_eq!(backoff(&p, u32::MAX), p.max_backoff);
    }

    #[test]
    fn definite_answers_stop_and_the_bound_gives_up() {
        let p = policy();
        assert_eq!(
            next(&p, Class::Success, 3, None, Duration::ZERO, 0.0),
            Next::Done
        );
        assert_eq!(
            next(
                &p,
                Class::Refused,
                1,
                Some(Duration::from_secs(1)),
                p.bound * 2,
                0.0
            ),
            Next::Done
        );
        // close to the bound: one last attempt exactly at it
        let near = p.bound - MS(100);
        assert_eq!(
            next(&p, Class::Lost, 9, None, near, 0.0),
            Next::RetryAfter(MS(100))
        );
        assert_eq!(next(&p, Class::Lost, 9, None, p.bound, 0.0), Next::GiveUp);
        assert_eq!(
            next(
                &p,
                Class::InFlight,
                2,
                Some(Duration::from_secs(1)),
                p.bound + MS(1),
                0.0
            ),
            Next::GiveUp
        );
    }

    #[test]
    fn retry_after_values_parse_as_seconds_only() {
        assert_eq!(parse_retry_after("1"), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after(" 30 "), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after(""), None);
    }

    #[test]
    fn outage_time_is_the_union_of_the_intervals() {
        assert_eq!(covered(&[]), 0);
        assert_eq!(covered(&[(10, 20)]), 10);
        assert_eq!(covered(&[(10, 20), (15, 30), (40, 45)]), 25);
        assert_eq!(covered(&[(40, 45), (10, 20), (20, 25)]), 20);
        assert_eq!(covered(&[(30, 10), (12, 14)]), 20);
        assert_eq!(covered(&[(5, 5)]), 0);
    }
}
