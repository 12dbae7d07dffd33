//! Alerts evaluated in-process from this process's Prometheus metrics, the
//! same six rules as `deploy/prometheus/ledger.rules.yml`.
//!
//! A sampler job records the cumulative counters every [`SAMPLE_EVERY`] into
//! a ring covering the [`WINDOW`] (plus one sample); an evaluation compares a
//! fresh reading with the oldest sample inside the window, so each rule sees
//! the increase over the last five minutes as `increase(x[5m])` does
//! (without Prometheus's extrapolation to the window's edges; a counter
//! cannot reset within one process). The window math is pure: [`rules`]
//! turns two readings into the alerts that fire, [`quantile`] is
//! `histogram_quantile`, [`Since`] remembers when each alert started firing.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use infra::metrics::{Metrics, metrics};
use prometheus::core::Collector;

/// How far back every rule looks.
pub const WINDOW: Duration = Duration::from_secs(300);
/// How often the sampler records the counters.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Fewer requests than this in the window and the rate rules (errors,
/// timeouts, p99) stay quiet: one error on an idle server is not a 100 %
/// error rate worth waking anyone for.
pub const MIN_REQUESTS: u64 = 20;
/// `high_error_rate`: 5xx responses over all responses, above 5 %.
pub const ERROR_RATE: f64 = 0.05;
/// `high_timeout_rate`: requests shed as `overloaded` (past the in-flight
/// limit, or no database connection within the wait budget) plus 504
/// responses, over all responses, above 2 %.
pub const TIMEOUT_RATE: f64 = 0.02;
/// `high_latency_p99`: the 99th percentile of request latency, above 5 s.
pub const LATENCY_P99_SECONDS: f64 = 5.0;
/// At most this many samples are kept, whatever the clock does.
const MAX_SAMPLES: usize = 2 * (WINDOW.as_secs() / SAMPLE_EVERY.as_secs()) as usize + 2;

/// The rules, by their stable names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    HighErrorRate,
    HighTimeoutRate,
    HighLatencyP99,
    RecoveryFailures,
    DeadlockRetries,
    CircuitBreakerOpen,
}

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Self::HighErrorRate => "high_error_rate",
            Self::HighTimeoutRate => "high_timeout_rate",
            Self::HighLatencyP99 => "high_latency_p99",
            Self::RecoveryFailures => "recovery_failures",
            Self::DeadlockRetries => "deadlock_retries",
            Self::CircuitBreakerOpen => "circuit_breaker_open",
        }
    }

    pub fn severity(self) -> Severity {
        match self {
            Self::HighErrorRate | Self::RecoveryFailures | Self::CircuitBreakerOpen => {
                Severity::Critical
            }
            Self::HighTimeoutRate | Self::HighLatencyP99 | Self::DeadlockRetries => {
                Severity::Warning
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Critical,
    Warning,
}

/// A rule that fires: `value` is above `threshold`.
#[derive(Clone, Debug, PartialEq)]
pub struct Firing {
    pub rule: Rule,
    pub value: f64,
    pub threshold: f64,
    /// The provider of a `circuit_breaker_open` alert.
    pub provider: Option<String>,
}

/// A firing rule and when it started firing (continuously since then).
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    pub firing: Firing,
    pub since: DateTime<Utc>,
}

/// The request-latency histogram summed over routes: cumulative counts per
/// finite upper bound (`le`), and the count of all observations (the `+Inf`
/// bucket).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Latency {
    pub bounds: Vec<f64>,
    pub cumulative: Vec<u64>,
    pub count: u64,
}

impl Latency {
    /// The observations made between `earlier` and `self`, bucket by bucket.
    /// An earlier histogram with other bounds (never the case for one
    /// process's histogram) counts as empty.
    fn since(&self, earlier: &Latency) -> Latency {
        let same =
            earlier.bounds == self.bounds && earlier.cumulative.len() == self.cumulative.len();
        let cumulative = if same {
            self.cumulative
                .iter()
                .zip(&earlier.cumulative)
                .map(|(now, then)| now.saturating_sub(*then))
                .collect()
        } else {
            self.cumulative.clone()
        };
        Latency {
            bounds: self.bounds.clone(),
            cumulative,
            count: self
                .count
                .saturating_sub(if same { earlier.count } else { 0 }),
        }
    }
}

/// Cumulative counter values (and the breaker gauges) at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    /// All HTTP responses.
    pub requests: u64,
    /// 5xx responses.
    pub errors: u64,
    /// Requests shed with reason `overloaded` plus 504 responses.
    pub timeouts: u64,
    pub latency: Latency,
    pub recovery_failures: u64,
    /// Transaction retries with cause `deadlock`, all operations.
    pub deadlock_retries: u64,
    /// Providers whose circuit breaker is open now.
    pub open_breakers: BTreeSet<String>,
}

/// Where the counters come from.
pub trait Source: Send + Sync {
    fn read(&self) -> Counters;
}

/// This process's registry ([`infra::metrics::metrics`]).
pub struct ProcessMetrics;

impl Source for ProcessMetrics {
    fn read(&self) -> Counters {
        read_metrics(metrics())
    }
}

fn label<'a>(metric: &'a prometheus::proto::Metric, name: &str) -> Option<&'a str> {
    metric
        .get_label()
        .iter()
        .find(|l| l.name() == name)
        .map(|l| l.value())
}

/// Calls `f` with every series of `collector`.
fn each(collector: &dyn Collector, mut f: impl FnMut(&prometheus::proto::Metric)) {
    for family in collector.collect() {
        for metric in family.get_metric() {
            f(metric);
        }
    }
}

fn read_metrics(m: &Metrics) -> Counters {
    let mut c = Counters::default();
    each(&m.http_requests, |metric| {
        let n = metric.get_counter().get_value() as u64;
        c.requests += n;
        let status = label(metric, "status").unwrap_or("");
        if status.starts_with('5') {
            c.errors += n;
        }
        if status == "504" {
            c.timeouts += n;
        }
    });
    each(&m.shed, |metric| {
        if label(metric, "reason") == Some("overloaded") {
            c.timeouts += metric.get_counter().get_value() as u64;
        }
    });
    each(&m.tx_retries, |metric| {
        if label(metric, "cause") == Some("deadlock") {
            c.deadlock_retries += metric.get_counter().get_value() as u64;
        }
    });
    c.recovery_failures = m.workflows.recovery_failures.get();
    each(&m.workflows.breaker_open, |metric| {
        if metric.get_gauge().get_value() > 0.0
            && let Some(provider) = label(metric, "provider")
        {
            c.open_breakers.insert(provider.to_owned());
        }
    });
    each(&m.http_latency, |metric| {
        let h = metric.get_histogram();
        let buckets: Vec<_> = h
            .get_bucket()
            .iter()
            .filter(|b| b.upper_bound().is_finite())
            .collect();
        let bounds: Vec<f64> = buckets.iter().map(|b| b.upper_bound()).collect();
        if c.latency.bounds.is_empty() {
            c.latency.cumulative = vec![0; bounds.len()];
            c.latency.bounds = bounds;
        } else if bounds != c.latency.bounds {
            return;
        }
        for (sum, b) in c.latency.cumulative.iter_mut().zip(&buckets) {
            *sum += b.cumulative_count();
        }
        c.latency.count += h.get_sample_count();
    });
    c
}

/// `histogram_quantile(q, …)` over one histogram, as Prometheus computes it:
/// the bucket holding rank `q × count`, linear interpolation inside it (the
/// first bucket starts at 0); a rank in the `+Inf` bucket answers the
/// highest finite bound. `None` without observations.
pub fn quantile(q: f64, h: &Latency) -> Option<f64> {
    if h.count == 0 || h.bounds.is_empty() {
        return None;
    }
    let rank = q * h.count as f64;
    let mut below = 0u64;
    let mut start = 0.0;
    for (i, (bound, cumulative)) in h.bounds.iter().zip(&h.cumulative).enumerate() {
        if *cumulative as f64 >= rank {
            if i == 0 && *bound <= 0.0 {
                return Some(*bound);
            }
            let in_bucket = cumulative.saturating_sub(below);
            if in_bucket == 0 {
                return Some(*bound);
            }
            let into = (rank - below as f64) / in_bucket as f64;
            return Some(start + (bound - start) * into);
        }
        below = *cumulative;
        start = *bound;
    }
    h.bounds.last().copied()
}

/// The rules that fire over the window from `from` (the oldest sample in
/// it) to `to` (now).
pub fn rules(from: &Counters, to: &Counters) -> Vec<Firing> {
    let mut firing = Vec::new();
    let mut fire = |rule: Rule, value: f64, threshold: f64| {
        if value > threshold {
            firing.push(Firing {
                rule,
                value,
                threshold,
                provider: None,
            });
        }
    };
    let requests = to.requests.saturating_sub(from.requests);
    if requests >= MIN_REQUESTS {
        let rate = |n: u64| n as f64 / requests as f64;
        fire(
            Rule::HighErrorRate,
            rate(to.errors.saturating_sub(from.errors)),
            ERROR_RATE,
        );
        fire(
            Rule::HighTimeoutRate,
            rate(to.timeouts.saturating_sub(from.timeouts)),
            TIMEOUT_RATE,
        );
    }
    let latency = to.latency.since(&from.latency);
    if latency.count >= MIN_REQUESTS
        && let Some(p99) = quantile(0.99, &latency)
    {
        fire(Rule::HighLatencyP99, p99, LATENCY_P99_SECONDS);
    }
    let increase = |now: u64, then: u64| now.saturating_sub(then) as f64;
    fire(
        Rule::RecoveryFailures,
        increase(to.recovery_failures, from.recovery_failures),
        0.0,
    );
    fire(
        Rule::DeadlockRetries,
        increase(to.deadlock_retries, from.deadlock_retries),
        0.0,
    );
    for provider in &to.open_breakers {
        firing.push(Firing {
            rule: Rule::CircuitBreakerOpen,
            value: 1.0,
            threshold: 0.0,
            provider: Some(provider.clone()),
        });
    }
    firing
}

type Key = (Rule, Option<String>);

/// When each firing alert started firing. An alert keeps its `since` while
/// it fires at every evaluation, and forgets it the first time it does not.
#[derive(Debug, Default)]
pub struct Since(BTreeMap<Key, DateTime<Utc>>);

impl Since {
    /// The alerts of this evaluation at `now`, with their `since`.
    pub fn track(&mut self, firing: Vec<Firing>, now: DateTime<Utc>) -> Vec<Alert> {
        let mut next = BTreeMap::new();
        let alerts = firing
            .into_iter()
            .map(|f| {
                let key = (f.rule, f.provider.clone());
                let since = self.0.get(&key).copied().unwrap_or(now).min(now);
                next.insert(key, since);
                Alert { firing: f, since }
            })
            .collect();
        self.0 = next;
        alerts
    }

    fn keys(&self) -> BTreeSet<Key> {
        self.0.keys().cloned().collect()
    }
}

#[derive(Clone, Debug)]
struct Sample {
    at: DateTime<Utc>,
    counters: Counters,
}

#[derive(Default)]
struct Window {
    samples: VecDeque<Sample>,
    since: Since,
}

/// `span` before `now`.
fn before(now: DateTime<Utc>, span: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(span)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

impl Window {
    /// The oldest sample inside the window ending at `now`.
    fn baseline(&self, now: DateTime<Utc>) -> Option<&Counters> {
        let start = before(now, WINDOW);
        self.samples
            .iter()
            .find(|s| s.at >= start && s.at <= now)
            .map(|s| &s.counters)
    }

    fn record(&mut self, at: DateTime<Utc>, counters: Counters) {
        let keep_from = before(at, WINDOW + SAMPLE_EVERY);
        while self
            .samples
            .front()
            .is_some_and(|s| s.at < keep_from || self.samples.len() >= MAX_SAMPLES)
        {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample { at, counters });
    }

    /// Evaluates `now` against the window and tracks `since`, logging the
    /// alerts that start or stop firing.
    fn evaluate(&mut self, now: DateTime<Utc>, counters: &Counters) -> Vec<Alert> {
        let firing = match self.baseline(now) {
            Some(from) => rules(from, counters),
            None => rules(counters, counters),
        };
        let before = self.since.keys();
        let alerts = self.since.track(firing, now);
        let after = self.since.keys();
        for alert in alerts
            .iter()
            .filter(|a| !before.contains(&(a.firing.rule, a.firing.provider.clone())))
        {
            tracing::warn!(
                alert = alert.firing.rule.name(),
                provider = alert.firing.provider.as_deref(),
                value = alert.firing.value,
                threshold = alert.firing.threshold,
                "alert firing"
            );
        }
        for (rule, provider) in before.difference(&after) {
            tracing::info!(
                alert = rule.name(),
                provider = provider.as_deref(),
                "alert resolved"
            );
        }
        alerts
    }
}

/// The evaluator: a ring of samples from a [`Source`] and the `since` of
/// every firing alert.
pub struct Alerts {
    source: Arc<dyn Source>,
    window: Mutex<Window>,
}

impl Default for Alerts {
    fn default() -> Self {
        Self::new(Arc::new(ProcessMetrics))
    }
}

impl Alerts {
    /// An evaluator over `source`, with a first sample taken now.
    pub fn new(source: Arc<dyn Source>) -> Self {
        let alerts = Self {
            source,
            window: Mutex::new(Window::default()),
        };
        alerts.sample_at(Utc::now());
        alerts
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        // The window holds plain data, consistent after every statement.
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The sampler's pass: records the counters and evaluates, so `since`
    /// follows an alert even while nobody asks.
    pub fn sample(&self) -> Vec<Alert> {
        let mut window = self.lock();
        let now = Utc::now();
        Self::sample_locked(&mut window, now, self.source.read())
    }

    /// [`Alerts::sample`] at a given time.
    pub fn sample_at(&self, now: DateTime<Utc>) -> Vec<Alert> {
        let mut window = self.lock();
        Self::sample_locked(&mut window, now, self.source.read())
    }

    fn sample_locked(window: &mut Window, now: DateTime<Utc>, counters: Counters) -> Vec<Alert> {
        let alerts = window.evaluate(now, &counters);
        window.record(now, counters);
        alerts
    }

    /// The alerts firing now, from a fresh reading (not kept as a sample, so
    /// that frequent reads do not crowd the window's older samples out).
    pub fn firing(&self) -> Vec<Alert> {
        let mut window = self.lock();
        let now = Utc::now();
        window.evaluate(now, &self.source.read())
    }

    /// [`Alerts::firing`] at a given time.
    pub fn firing_at(&self, now: DateTime<Utc>) -> Vec<Alert> {
        let mut window = self.lock();
        window.evaluate(now, &self.source.read())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counters a test sets by hand.
    #[derive(Default)]
    struct Fake(Mutex<Counters>);

    impl Fake {
        fn set(&self, f: impl FnOnce(&mut Counters)) {
            f(&mut self.0.lock().unwrap());
        }
    }

    impl Source for Fake {
        fn read(&self) -> Counters {
            self.0.lock().unwrap().clone()
        }
    }

    const BOUNDS: [f64; 13] = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];

    /// A histogram with `counts[i]` observations in bucket `i` (the last
    /// entry, one past the bounds, is the `+Inf` bucket).
    fn histogram(counts: &[u64]) -> Latency {
        let mut cumulative = Vec::new();
        let mut total = 0;
        for i in 0..BOUNDS.len() {
            total += counts.get(i).copied().unwrap_or(0);
            cumulative.push(total);
        }
        let count = total + counts.get(BOUNDS.len()).copied().unwrap_or(0);
        Latency {
            bounds: BOUNDS.to_vec(),
            cumulative,
            count,
        }
    }

    fn counters(requests: u64, errors: u64, timeouts: u64) -> Counters {
        Counters {
            requests,
            errors,
            timeouts,
            latency: histogram(&[requests]),
            ..Counters::default()
        }
    }

    fn names(firing: &[Firing]) -> Vec<&'static str> {
        firing.iter().map(|f| f.rule.name()).collect()
    }

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(4_000_000_000 + secs, 0).unwrap()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn quantile_interpolates_inside_the_bucket_like_histogram_quantile() {
        // 100 observations, all in (0.5, 1]: rank 99 is 99 % into it
        let mut counts = [0; 14];
        counts[9] = 100;
        let p99 = quantile(0.99, &histogram(&counts)).unwrap();
        assert!(close(p99, 0.5 + 0.5 * 0.99), "{p99}");
        // 50 in the first bucket, 50 in (5, 10]: rank 99 is 49/50 into it
        let mut counts = [0; 14];
        counts[0] = 50;
        counts[12] = 50;
        let p99 = quantile(0.99, &histogram(&counts)).unwrap();
        assert!(close(p99, 5.0 + 5.0 * 49.0 / 50.0), "{p99}");
        // the first bucket starts at 0
        let p50 = quantile(0.5, &histogram(&[10])).unwrap();
        assert!(close(p50, 0.0005), "{p50}");
        // a rank in +Inf answers the highest finite bound
        let mut counts = [0; 14];
        counts[0] = 1;
        counts[13] = 99;
        assert_eq!(quantile(0.99, &histogram(&counts)), Some(10.0));
        // no observations, no quantile
        assert_eq!(quantile(0.99, &histogram(&[])), None);
        assert_eq!(quantile(0.99, &Latency::default()), None);
    }

    #[test]
    fn rates_fire_above_their_thresholds_only() {
        let from = counters(1_000, 10, 5);
        for (errors, timeouts, rule, value, threshold, severity) in [
            // 6 of 100 are 5xx (6 % > 5 %); 2 of 100 timed out (2 %: not above)
            (16, 7, "high_error_rate", 0.06, 0.05, Severity::Critical),
            // exactly 5 % does not fire; 3 % timeouts do
            (15, 8, "high_timeout_rate", 0.03, 0.02, Severity::Warning),
        ] {
            let firing = rules(&from, &counters(1_100, errors, timeouts));
            assert_eq!(names(&firing), [rule]);
            assert!(close(firing[0].value, value));
            assert_eq!(firing[0].threshold, threshold);
            assert_eq!(firing[0].rule.severity(), severity);
        }
        // what came before the window does not count
        let from = counters(1_000, 900, 900);
        let to = counters(1_100, 900, 900);
        assert!(rules(&from, &to).is_empty());
    }

    #[test]
    fn too_few_requests_fire_no_rate_rule() {
        // `n` requests, each a 5xx, timed out and slower than the last bound
        let all_failed = |n| {
            let mut counts = [0; 14];
            counts[13] = n;
            Counters {
                requests: n,
                errors: n,
                timeouts: n,
                latency: histogram(&counts),
                ..Counters::default()
            }
        };
        let from = Counters::default();
        assert!(rules(&from, &all_failed(19)).is_empty());
        // one more request and all three fire
        let firing = rules(&from, &all_failed(20));
        assert_eq!(
            names(&firing),
            ["high_error_rate", "high_timeout_rate", "high_latency_p99"]
        );
        assert_eq!(firing[2].value, 10.0);
        assert_eq!(firing[2].threshold, 5.0);
    }

    #[test]
    fn p99_comes_from_the_bucket_deltas_of_the_window() {
        // before the window: 1,000 slow requests
        let mut slow = [0; 14];
        slow[13] = 1_000;
        let from = Counters {
            requests: 1_000,
            latency: histogram(&slow),
            ..Counters::default()
        };
        // in the window: 100 fast ones; the old slow ones do not count
        let mut now = slow;
        now[1] = 100;
        let to = Counters {
            requests: 1_100,
            latency: histogram(&now),
            ..Counters::default()
        };
        assert!(rules(&from, &to).is_empty());
        // 2 of 100 in (5, 10]: p99 is inside that bucket, above 5 s
        now[1] = 98;
        now[12] = 2;
        let to = Counters {
            requests: 1_100,
            latency: histogram(&now),
            ..Counters::default()
        };
        let firing = rules(&from, &to);
        assert_eq!(names(&firing), ["high_latency_p99"]);
        assert!(
            close(firing[0].value, 5.0 + 5.0 * 0.5),
            "{}",
            firing[0].value
        );
    }

    #[test]
    fn events_fire_on_any_increase_and_breakers_per_provider() {
        let from = Counters {
            recovery_failures: 3,
            deadlock_retries: 7,
            ..Counters::default()
        };
        assert!(rules(&from, &from).is_empty());
        let to = Counters {
            recovery_failures: 4,
            deadlock_retries: 9,
            open_breakers: ["acme".to_owned(), "bank".to_owned()].into(),
            ..Counters::default()
        };
        let firing = rules(&from, &to);
        assert_eq!(
            names(&firing),
            [
                "recovery_failures",
                "deadlock_retries",
                "circuit_breaker_open",
                "circuit_breaker_open"
            ]
        );
        assert_eq!(firing[0].value, 1.0);
        assert_eq!(firing[0].rule.severity(), Severity::Critical);
        assert_eq!(firing[1].value, 2.0);
        assert_eq!(firing[1].rule.severity(), Severity::Warning);
        assert_eq!(firing[2].provider.as_deref(), Some("acme"));
        assert_eq!(firing[3].provider.as_deref(), Some("bank"));
        assert_eq!((firing[3].value, firing[3].threshold), (1.0, 0.0));
    }

    #[test]
    fn since_stays_while_firing_and_is_cleared_when_it_stops() {
        let breaker = |provider: &str| Firing {
            rule: Rule::CircuitBreakerOpen,
            value: 1.0,
            threshold: 0.0,
            provider: Some(provider.into()),
        };
        let mut since = Since::default();
        let a = since.track(vec![breaker("acme")], t(0));
        assert_eq!(a[0].since, t(0));
        let a = since.track(vec![breaker("acme"), breaker("bank")], t(10));
        assert_eq!((a[0].since, a[1].since), (t(0), t(10)));
        // acme stops: it is forgotten, and starts afresh when it fires again
        let a = since.track(vec![breaker("bank")], t(20));
        assert_eq!(a[0].since, t(10));
        let a = since.track(vec![breaker("acme"), breaker("bank")], t(30));
        assert_eq!((a[0].since, a[1].since), (t(30), t(10)));
        assert!(since.track(vec![], t(40)).is_empty());
        assert_eq!(since.track(vec![breaker("bank")], t(50))[0].since, t(50));
    }

    #[test]
    fn the_evaluator_compares_now_with_the_oldest_sample_in_the_window() {
        let fake = Arc::new(Fake::default());
        let alerts = Alerts::new(fake.clone());
        let start = t(0);
        alerts.sample_at(start);
        // 100 requests in the first 10 s, 10 of them 5xx
        fake.set(|c| *c = counters(100, 10, 0));
        let now = alerts.firing_at(t(10));
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].firing.rule, Rule::HighErrorRate);
        assert_eq!(now[0].since, t(10));
        // the sampler goes on every 10 s with no new requests: the error
        // stays in the window, and its since with it
        for i in 1..=30 {
            let a = alerts.sample_at(t(10 * i));
            assert_eq!(a.len(), 1, "at {}", 10 * i);
            assert_eq!(a[0].since, t(10));
        }
        // reads between samples are not kept as samples
        for _ in 0..100 {
            assert_eq!(alerts.firing_at(t(300)).len(), 1);
        }
        // at 310 s the oldest sample in the window is the one taken at 10 s,
        // after the errors: nothing fires, and since is forgotten
        assert!(alerts.sample_at(t(310)).is_empty());
        fake.set(|c| *c = counters(200, 20, 0));
        let again = alerts.firing_at(t(320));
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].since, t(320));
    }

    #[test]
    fn the_ring_keeps_the_window_and_one_sample_more() {
        let fake = Arc::new(Fake::default());
        let alerts = Alerts::new(fake);
        for i in 0..100 {
            alerts.sample_at(t(10 * i));
        }
        let window = alerts.lock();
        assert_eq!(window.samples.len(), 32);
        assert_eq!(window.samples.front().unwrap().at, t(990 - 310));
        assert_eq!(window.baseline(t(990)).map(|_| ()), Some(()));
        assert_eq!(
            window
                .samples
                .iter()
                .find(|s| s.at >= t(990 - 300))
                .unwrap()
                .at,
            t(690)
        );
        drop(window);
        // a clock that stands still cannot grow the ring without bound
        for _ in 0..1_000 {
            alerts.sample_at(t(990));
        }
        assert!(alerts.lock().samples.len() <= MAX_SAMPLES);
    }

    #[test]
    fn process_metrics_are_read_from_the_registry() {
        let m = metrics();
        let before = ProcessMetrics.read();
        m.http_requests
            .with_label_values(&["alerts_unit_test", "500"])
            .inc();
        m.http_requests
            .with_label_values(&["alerts_unit_test", "504"])
            .inc();
        m.http_latency
            .with_label_values(&["alerts_unit_test"])
            .observe(7.0);
        m.tx_retries
            .with_label_values(&["alerts_unit_test", "deadlock"])
            .inc();
        m.workflows
            .breaker_open
            .with_label_values(&["alerts-unit-test"])
            .set(1);
        let after = ProcessMetrics.read();
        // other tests of this binary may add to the counters meanwhile
        assert!(after.requests >= before.requests + 2);
        assert!(after.errors >= before.errors + 2);
        assert!(after.timeouts > before.timeouts);
        assert!(after.deadlock_retries > before.deadlock_retries);
        assert!(after.open_breakers.contains("alerts-unit-test"));
        assert_eq!(after.latency.bounds, BOUNDS);
        assert!(after.latency.count > before.latency.count);
        let delta = after.latency.since(&before.latency);
        // 7 s lands in (5, 10]: above the 5 s bound, not above 10 s
        assert!(delta.cumulative[12] > delta.cumulative[11]);
        m.workflows
            .breaker_open
            .with_label_values(&["alerts-unit-test"])
            .set(0);
        assert!(
            !ProcessMetrics
                .read()
                .open_breakers
                .contains("alerts-unit-test")
        );
    }
}
