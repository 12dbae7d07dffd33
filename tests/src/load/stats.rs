//! Latency (HDR histograms, microseconds), outcomes by status and `code`,
//! and a per-second timeline. Shards serialize theirs; the parent merges.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

/// Up to 60 s, 3 significant digits.
const MAX_MICROS: u64 = 60_000_000;

fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, sigfig).expect("constant bounds are valid")
}

#[derive(Debug, Clone)]
struct Second {
    requests: u64,
    failed: u64,
    latency: Histogram<u64>,
}

impl Second {
    fn new() -> Self {
        Self {
            requests: 0,
            failed: 0,
            latency: histogram(2),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Stats {
    pub all: Histogram<u64>,
    pub per_op: BTreeMap<String, Histogram<u64>>,
    /// `"200"`, `"422 insufficient_funds"`, `"transport: timeout"` -> count.
    pub outcomes: BTreeMap<String, u64>,
    pub requests: u64,
    pub failed: u64,
    timeline: Vec<Second>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            all: histogram(3),
            per_op: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            requests: 0,
            failed: 0,
            timeline: Vec::new(),
        }
    }
}

/// What one request came to.
#[derive(Debug, Clone)]
pub struct Sample<'a> {
    pub op: &'static str,
    pub latency: Duration,
    /// `"200"`, `"422 insufficient_funds"`, `"transport: timeout"`.
    pub outcome: &'a str,
    pub failed: bool,
}

/// Shared by all virtual users of one process.
pub struct Recorder {
    started: Instant,
    stats: Mutex<Stats>,
}

impl Recorder {
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            stats: Mutex::new(Stats::default()),
        }
    }

    pub fn record(&self, sample: &Sample<'_>) {
        let micros = u64::try_from(sample.latency.as_micros())
            .unwrap_or(MAX_MICROS)
            .clamp(1, MAX_MICROS);
        let second = usize::try_from(self.started.elapsed().as_secs()).unwrap_or(usize::MAX);
        let Ok(mut s) = self.stats.lock() else {
            return;
        };
        s.requests += 1;
        s.failed += u64::from(sample.failed);
        let _ = s.all.record(micros);
        let _ = slot(&mut s.per_op, sample.op, || histogram(3)).record(micros);
        *slot(&mut s.outcomes, sample.outcome, u64::default) += 1;
        if second < 86_400 {
            if s.timeline.len() <= second {
                s.timeline.resize_with(second + 1, Second::new);
            }
            if let Some(slot) = s.timeline.get_mut(second) {
                slot.requests += 1;
                slot.failed += u64::from(sample.failed);
                let _ = slot.latency.record(micros);
            }
        }
    }

    pub fn snapshot(&self) -> Stats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// The entry for `key`, allocating the key only the first time it is seen
/// (this runs for every request).
fn slot<'m, V>(map: &'m mut BTreeMap<String, V>, key: &str, new: impl FnOnce() -> V) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), new());
    }
    map.get_mut(key).expect("inserted above")
}

fn encode(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    match V2Serializer::new().serialize(h, &mut bytes) {
        Ok(_) => hex::encode(bytes),
        Err(_) => String::new(),
    }
}

fn decode(s: &str) -> Histogram<u64> {
    hex::decode(s)
        .ok()
        .and_then(|bytes| Deserializer::new().deserialize(&mut bytes.as_slice()).ok())
        .unwrap_or_else(|| histogram(3))
}

/// `Stats` as JSON, for a shard to hand to its parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireStats {
    all: String,
    per_op: BTreeMap<String, String>,
    outcomes: BTreeMap<String, u64>,
    requests: u64,
    failed: u64,
    timeline: Vec<(u64, u64, String)>,
}

impl From<&Stats> for WireStats {
    fn from(s: &Stats) -> Self {
        Self {
            all: encode(&s.all),
            per_op: s
                .per_op
                .iter()
                .map(|(k, h)| (k.clone(), encode(h)))
                .collect(),
            outcomes: s.outcomes.clone(),
            requests: s.requests,
            failed: s.failed,
            timeline: s
                .timeline
                .iter()
                .map(|t| (t.requests, t.failed, encode(&t.latency)))
                .collect(),
        }
    }
}

impl Stats {
    pub fn timeline(&self) -> Vec<Point> {
        self.timeline
            .iter()
            .enumerate()
            .map(|(second, t)| {
                let l = Latency::from(&t.latency);
                Point {
                    second,
                    requests: t.requests,
                    failed: t.failed,
                    p50: l.p50,
                    p99: l.p99,
                }
            })
            .collect()
    }

    pub fn merge(&mut self, other: &WireStats) {
        let _ = self.all.add(decode(&other.all));
        for (op, h) in &other.per_op {
            let _ = self
                .per_op
                .entry(op.clone())
                .or_insert_with(|| histogram(3))
                .add(decode(h));
        }
        for (outcome, n) in &other.outcomes {
            *self.outcomes.entry(outcome.clone()).or_default() += n;
        }
        self.requests += other.requests;
        self.failed += other.failed;
        if self.timeline.len() < other.timeline.len() {
            self.timeline.resize_with(other.timeline.len(), Second::new);
        }
        for (slot, (requests, failed, h)) in self.timeline.iter_mut().zip(&other.timeline) {
            slot.requests += requests;
            slot.failed += failed;
            let _ = slot.latency.add(decode(h));
        }
    }
}

/// Latency summary, milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl From<&Histogram<u64>> for Latency {
    fn from(h: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

/// One second of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    pub second: usize,
    pub requests: u64,
    pub failed: u64,
    pub p50: f64,
    pub p99: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge_into_the_same_totals() {
        let start = Instant::now();
        let a = Recorder::new(start);
        let b = Recorder::new(start);
        for (r, ms, outcome, failed) in [
            (&a, 2, "200", false),
            (&a, 4, "200", false),
            (&b, 8, "503 database_unavailable", true),
        ] {
            r.record(&Sample {
                op: "deposit",
                latency: Duration::from_millis(ms),
                outcome,
                failed,
            });
        }
        let mut merged = a.snapshot();
        merged.merge(&WireStats::from(&b.snapshot()));
        assert_eq!((merged.requests, merged.failed), (3, 1));
        assert_eq!(merged.outcomes["200"], 2);
        assert_eq!(merged.outcomes["503 database_unavailable"], 1);
        let l = Latency::from(&merged.all);
        assert_eq!(l.count, 3);
        assert!((l.max - 8.0).abs() < 0.01, "{l:?}");
        assert!((l.p50 - 4.0).abs() < 0.01, "{l:?}");
        assert_eq!(merged.per_op["deposit"].len(), 3);
        let timeline = merged.timeline();
        assert_eq!(timeline[0].requests, 3);
        assert_eq!(timeline[0].failed, 1);
    }
}
