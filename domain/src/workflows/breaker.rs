//! A circuit breaker per outside provider. Closed: calls go through, and
//! `failures` transient failures in a row open it. Open: calls are refused
//! without being made until `open_for` has passed. Then half-open: one
//! trial call goes through (the others are still refused); its success
//! closes the breaker, its failure opens it again. A final answer from the
//! provider (paid, or refused for good) is a success here: the provider is
//! up. The state is in memory, per process; `/health/ready` and the
//! `ledger_circuit_breaker_open` metric show it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use infra::metrics::metrics;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_in_flight: bool },
}

impl BreakerState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Closed { .. } => "closed",
            Self::Open { .. } => "open",
            Self::HalfOpen { .. } => "half_open",
        }
    }
}

#[derive(Debug)]
pub struct Breaker {
    provider: String,
    failures: u32,
    open_for: Duration,
    state: Mutex<BreakerState>,
}

impl Breaker {
    pub fn new(provider: impl Into<String>, failures: u32, open_for: Duration) -> Self {
        Self {
            provider: provider.into(),
            failures: failures.max(1),
            open_for,
            state: Mutex::new(BreakerState::Closed { failures: 0 }),
        }
    }

    pub fn provider(&self) -> &str {
        &self.provider
    }

    fn with<T>(&self, f: impl FnOnce(&mut BreakerState) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let out = f(&mut state);
        let open = i64::from(matches!(*state, BreakerState::Open { .. }));
        metrics()
            .workflows
            .breaker_open
            .with_label_values(&[&self.provider])
            .set(open);
        out
    }

    /// The state at `now` (an open breaker whose time is up reads
    /// half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        self.with(|s| {
            if let BreakerState::Open { until } = *s
                && now >= until
            {
                *s = BreakerState::HalfOpen {
                    trial_in_flight: false,
                };
            }
            *s
        })
    }

    /// May a call be made at `now`? `Err(wait)`: refused, ask again after
    /// `wait`.
    pub fn allow(&self, now: Instant) -> Result<(), Duration> {
        let open_for = self.open_for;
        self.state(now);
        self.with(|s| match *s {
            BreakerState::Closed { .. } => Ok(()),
            BreakerState::Open { until } => Err(until.saturating_duration_since(now)),
            BreakerState::HalfOpen { trial_in_flight } => {
                if trial_in_flight {
                    // The trial's answer decides; until then, wait a while.
                    Err(open_for / 4)
                } else {
                    *s = BreakerState::HalfOpen {
                        trial_in_flight: true,
                    };
                    Ok(())
                }
            }
        })
    }

    pub fn record_success(&self) {
        self.with(|s| *s = BreakerState::Closed { failures: 0 });
    }

    pub fn record_failure(&self, now: Instant) {
        let (limit, open_for) = (self.failures, self.open_for);
        self.with(|s| {
            *s = match *s {
                BreakerState::Closed { failures } if failures + 1 < limit => BreakerState::Closed {
                    failures: failures + 1,
                },
                BreakerState::Open { until } => BreakerState::Open { until },
                _ => BreakerState::Open {
                    until: now + open_for,
                },
            }
        });
    }
}

/// The breakers of this process, by provider.
#[derive(Debug, Clone, Default)]
pub struct Breakers {
    by_provider: Arc<Mutex<BTreeMap<String, Arc<Breaker>>>>,
    failures: u32,
    open_for: Duration,
}

impl Breakers {
    pub fn new(failures: u32, open_for: Duration) -> Self {
        Self {
            by_provider: Arc::default(),
            failures,
            open_for,
        }
    }

    pub fn get(&self, provider: &str) -> Arc<Breaker> {
        let mut map = self
            .by_provider
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            map.entry(provider.to_owned())
                .or_insert_with(|| Arc::new(Breaker::new(provider, self.failures, self.open_for))),
        )
    }

    /// Every provider's state now: `closed`, `open` or `half_open`.
    pub fn states(&self) -> Vec<(String, &'static str)> {
        let now = Instant::now();
        let breakers: Vec<_> = self
            .by_provider
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        breakers
            .iter()
            .map(|b| (b.provider().to_owned(), b.state(now).name()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: Duration = Duration::from_secs(10);

    #[test]
    fn opens_after_n_failures_in_a_row_and_a_success_resets_the_count() {
        let b = Breaker::new("test-a", 3, OPEN);
        let t = Instant::now();
        b.record_failure(t);
        b.record_failure(t);
        b.record_success();
        b.record_failure(t);
        b.record_failure(t);
        assert_eq!(b.state(t), BreakerState::Closed { failures: 2 });
        assert!(b.allow(t).is_ok());
        b.record_failure(t);
        assert_eq!(b.state(t).name(), "open");
        assert_eq!(
            b.allow(t + Duration::from_secs(4)),
            Err(Duration::from_secs(6))
        );
    }

    #[test]
    fn after_the_open_time_one_trial_goes_through_and_decides() {
        let b = Breaker::new("test-b", 1, OPEN);
        let t = Instant::now();
        b.record_failure(t);
        let later = t + OPEN;
        assert_eq!(b.state(later).name(), "half_open");
        assert!(b.allow(later).is_ok(), "the trial");
        assert!(b.allow(later).is_err(), "others wait for the trial");
        // The trial fails: open again, for a full period from now.
        b.record_failure(later);
        assert_eq!(b.allow(later), Err(OPEN));
        // The next trial succeeds: closed.
        let again = later + OPEN;
        assert!(b.allow(again).is_ok());
        b.record_success();
        assert_eq!(b.state(again), BreakerState::Closed { failures: 0 });
        assert!(b.allow(again).is_ok());
    }

    #[test]
    fn the_open_state_shows_in_the_metric_and_the_registry() {
        let breakers = Breakers::new(1, OPEN);
        let b = breakers.get("test-c");
        assert!(Arc::ptr_eq(&b, &breakers.get("test-c")));
        b.record_failure(Instant::now());
        assert_eq!(breakers.states(), vec![("test-c".to_owned(), "open")]);
        let gauge = metrics()
            .workflows
            .breaker_open
            .with_label_values(&["test-c"]);
        assert_eq!(gauge.get(), 1);
        b.record_success();
        assert_eq!(gauge.get(), 0);
    }
}
