//! Latency (HDR histograms, microseconds), outcomes by status and `code`,
//! what was served, shed or found out, the outage intervals, and a
//! per-second timeline. Shards serialize theirs; the parent merges.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

use super::retry::{self, Class};

/// Up to 60 s, 3 significant digits.
const MAX_MICROS: u64 = 60_000_000;

fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, sigfig).expect("constant bounds are valid")
}

#[derive(Debug, Clone)]
struct Second {
    requests: u64,
    failed: u64,
    served: u64,
    /// Locks granted (at once or from the queue) in this second.
    grants: u64,
    /// Cycles of the hold and workflow scenarios that ended as they should
    /// in this second.
    flows: u64,
    latency: Histogram<u64>,
}

impl Second {
    fn new() -> Self {
        Self {
            requests: 0,
            failed: 0,
            served: 0,
            grants: 0,
            flows: 0,
            latency: histogram(2),
        }
    }
}

/// The timeline's slot for `second` (the timeline grown to hold it), if
/// `second` is within a day.
fn second_slot(timeline: &mut Vec<Second>, second: usize) -> Option<&mut Second> {
    if second >= 86_400 {
        return None;
    }
    if timeline.len() <= second {
        timeline.resize_with(second + 1, Second::new);
    }
    timeline.get_mut(second)
}

/// Every count is of attempts (a retried request counts once per attempt),
/// except `never_definite_reads`, which counts requests.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Every attempt, whatever it came to.
    pub all: Histogram<u64>,
    /// Attempts with a definite answer, by operation.
    pub per_op: BTreeMap<String, Histogram<u64>>,
    /// Attempts with a definite answer.
    pub served_latency: Histogram<u64>,
    /// Attempts shed with 503 `overloaded`: how fast the server says no.
    pub shed_latency: Histogram<u64>,
    /// `"200"`, `"422 insufficient_funds"`, `"transport: timeout"` -> count.
    pub outcomes: BTreeMap<String, u64>,
    pub requests: u64,
    /// Attempts whose answer was a refusal or a server error (see
    /// `Class::is_failure`).
    pub failed: u64,
    pub served: u64,
    pub shed: u64,
    pub unavailable: u64,
    /// Reads given up at the bound (writes are in the books).
    pub never_definite_reads: u64,
    /// Wall-clock intervals (µs since the Unix epoch, so shards compare)
    /// during which a virtual user saw refused connections or 503
    /// `unavailable`.
    pub outages: Vec<(u64, u64)>,
    /// The lock scenarios: what became of each lock.
    pub locks: LockTally,
    /// From sending an acquire to holding the lock (at once, or granted
    /// from the queue).
    pub grant_latency: Histogram<u64>,
    /// From sending an acquire to the release's answer.
    pub cycle_latency: Histogram<u64>,
    /// The hold and workflow scenarios: how each cycle ended.
    pub flows: FlowTally,
    /// From the cycle's first request to the answer that showed it done
    /// (the capture's; the poll that saw the workflow `completed`), for the
    /// cycles that ended as they should.
    pub flow_latency: Histogram<u64>,
    timeline: Vec<Second>,
}

/// How the cycles of the hold and workflow scenarios ended: a hold created
/// and captured; a withdrawal workflow started and seen in a final status.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlowTally {
    /// Cycles that ended as they should (`captured`, `completed`).
    pub done: u64,
    /// Cycles that did not: refused, never answered definitely, or a
    /// workflow that ended `compensated` or `failed`.
    pub not_done: u64,
    /// `"captured"`, `"completed"`, `"failed"`, `"create_hold 422
    /// insufficient_funds"`, `"poll_workflow never definite"` -> count: how
    /// every cycle ended.
    pub ends: BTreeMap<String, u64>,
}

impl FlowTally {
    fn merge(&mut self, other: &FlowTally) {
        self.done += other.done;
        self.not_done += other.not_done;
        for (k, n) in &other.ends {
            *self.ends.entry(k.clone()).or_default() += n;
        }
    }

    /// Every cycle ended as it should.
    pub fn is_clean(&self) -> bool {
        self.not_done == 0
    }
}

/// What the lock scenarios did with their locks. Every lock held must be
/// released: `held() == released` at the end of a clean run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockTally {
    /// 201: granted at once.
    pub acquired: u64,
    /// 200 `deduplicated`: answered with an earlier lock.
    pub deduplicated: u64,
    /// 202: joined the queue.
    pub queued: u64,
    /// Queue items seen `granted`.
    pub granted_from_queue: u64,
    /// 200 on release.
    pub released: u64,
    /// Locks held whose release did not succeed.
    pub unreleased: u64,
    /// Queue items that ended without a grant (`expired`, `cancelled`) or
    /// whose wait never got a definite answer.
    pub never_granted: u64,
    /// `"lock_acquire 409 resource_locked"`, `"lock_release 503
    /// overloaded"` -> count: every attempt of a lock operation that was not
    /// a success (a shed attempt is retried, and counted here each time),
    /// and the ends that were not a grant (`"lock_queue_wait ended
    /// expired"`, `"lock_release never definite"`).
    pub errors: BTreeMap<String, u64>,
}

impl LockTally {
    /// Locks this run held (and so had to release).
    pub fn held(&self) -> u64 {
        self.acquired + self.deduplicated + self.granted_from_queue
    }

    fn merge(&mut self, other: &LockTally) {
        self.acquired += other.acquired;
        self.deduplicated += other.deduplicated;
        self.queued += other.queued;
        self.granted_from_queue += other.granted_from_queue;
        self.released += other.released;
        self.unreleased += other.unreleased;
        self.never_granted += other.never_granted;
        for (k, n) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += n;
        }
    }

    /// Every lock held was released, and every queued request was granted.
    pub fn is_clean(&self) -> bool {
        self.unreleased == 0 && self.never_granted == 0 && self.held() == self.released
    }
}

/// What happened to one lock, for `Recorder::lock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockEvent {
    /// Held at once (201), after `latency` from the acquire's sending.
    Acquired {
        latency: Duration,
    },
    Deduplicated {
        latency: Duration,
    },
    Queued,
    /// Granted from the queue, `latency` after the acquire was sent.
    Granted {
        latency: Duration,
    },
    /// Released; `cycle`: from the acquire's sending to the release's answer.
    Released {
        cycle: Duration,
    },
    Unreleased,
    NeverGranted,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            all: histogram(3),
            per_op: BTreeMap::new(),
            served_latency: histogram(3),
            shed_latency: histogram(3),
            outcomes: BTreeMap::new(),
            requests: 0,
            failed: 0,
            served: 0,
            shed: 0,
            unavailable: 0,
            never_definite_reads: 0,
            outages: Vec::new(),
            locks: LockTally::default(),
            grant_latency: histogram(3),
            cycle_latency: histogram(3),
            flows: FlowTally::default(),
            flow_latency: histogram(3),
            timeline: Vec::new(),
        }
    }
}

fn micros_of(latency: Duration) -> u64 {
    u64::try_from(latency.as_micros())
        .unwrap_or(MAX_MICROS)
        .clamp(1, MAX_MICROS)
}

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct Sample<'a> {
    pub op: &'static str,
    pub latency: Duration,
    /// `"200"`, `"422 insufficient_funds"`, `"transport: timeout"`.
    pub outcome: &'a str,
    pub class: Class,
}

/// Shared by all virtual users of one process.
pub struct Recorder {
    started: Instant,
    started_epoch_us: u64,
    stats: Mutex<Stats>,
}

impl Recorder {
    pub fn new(started: Instant) -> Self {
        let since_start = u64::try_from(started.elapsed().as_micros()).unwrap_or(0);
        let now_epoch_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        Self {
            started,
            started_epoch_us: now_epoch_us.saturating_sub(since_start),
            stats: Mutex::new(Stats::default()),
        }
    }

    /// `at` as microseconds since the Unix epoch.
    pub fn epoch_us(&self, at: Instant) -> u64 {
        let offset = at.saturating_duration_since(self.started);
        self.started_epoch_us
            .saturating_add(u64::try_from(offset.as_micros()).unwrap_or(u64::MAX))
    }

    pub fn record(&self, sample: &Sample<'_>) {
        let micros = micros_of(sample.latency);
        let second = usize::try_from(self.started.elapsed().as_secs()).unwrap_or(usize::MAX);
        let failed = u64::from(sample.class.is_failure());
        let served = sample.class.is_definite();
        let Ok(mut s) = self.stats.lock() else {
            return;
        };
        s.requests += 1;
        s.failed += failed;
        let _ = s.all.record(micros);
        match sample.class {
            Class::Shed => {
                s.shed += 1;
                let _ = s.shed_latency.record(micros);
            }
            Class::Unavailable => s.unavailable += 1,
            _ if served => {
                s.served += 1;
                let _ = s.served_latency.record(micros);
                let _ = slot(&mut s.per_op, sample.op, || histogram(3)).record(micros);
            }
            _ => {}
        }
        *slot(&mut s.outcomes, sample.outcome, u64::default) += 1;
        if let Some(slot) = second_slot(&mut s.timeline, second) {
            slot.requests += 1;
            slot.failed += failed;
            slot.served += u64::from(served);
            let _ = slot.latency.record(micros);
        }
    }

    /// A lock operation's attempt that was not a success (`what`: the
    /// operation, the status and the code, or the transport failure).
    pub fn lock_error(&self, what: &str) {
        if let Ok(mut s) = self.stats.lock() {
            *slot(&mut s.locks.errors, what, u64::default) += 1;
        }
    }

    /// What became of a lock.
    pub fn lock(&self, event: LockEvent) {
        let second = usize::try_from(self.started.elapsed().as_secs()).unwrap_or(usize::MAX);
        let Ok(mut s) = self.stats.lock() else {
            return;
        };
        let s = &mut *s;
        let granted = match event {
            LockEvent::Acquired { latency } => {
                s.locks.acquired += 1;
                Some(latency)
            }
            LockEvent::Deduplicated { latency } => {
                s.locks.deduplicated += 1;
                Some(latency)
            }
            LockEvent::Granted { latency } => {
                s.locks.granted_from_queue += 1;
                Some(latency)
            }
            LockEvent::Queued => {
                s.locks.queued += 1;
                None
            }
            LockEvent::Released { cycle } => {
                s.locks.released += 1;
                let _ = s.cycle_latency.record(micros_of(cycle));
                None
            }
            LockEvent::Unreleased => {
                s.locks.unreleased += 1;
                None
            }
            LockEvent::NeverGranted => {
                s.locks.never_granted += 1;
                None
            }
        };
        if let Some(latency) = granted {
            let _ = s.grant_latency.record(micros_of(latency));
            if let Some(slot) = second_slot(&mut s.timeline, second) {
                slot.grants += 1;
            }
        }
    }

    /// How a cycle of the hold or workflow scenarios ended (`end`: its
    /// label in `FlowTally::ends`). `done`: it ended as it should, this
    /// long after its first request was sent.
    pub fn flow(&self, end: &str, done: Option<Duration>) {
        let second = usize::try_from(self.started.elapsed().as_secs()).unwrap_or(usize::MAX);
        let Ok(mut s) = self.stats.lock() else {
            return;
        };
        let s = &mut *s;
        *slot(&mut s.flows.ends, end, u64::default) += 1;
        let Some(latency) = done else {
            s.flows.not_done += 1;
            return;
        };
        s.flows.done += 1;
        let _ = s.flow_latency.record(micros_of(latency));
        if let Some(slot) = second_slot(&mut s.timeline, second) {
            slot.flows += 1;
        }
    }

    /// A read that never got a definite answer within the bound.
    pub fn read_given_up(&self) {
        if let Ok(mut s) = self.stats.lock() {
            s.never_definite_reads += 1;
        }
    }

    /// An interval during which one virtual user found the service out.
    pub fn outage(&self, from: Instant, to: Instant) {
        let interval = (self.epoch_us(from), self.epoch_us(to));
        if let Ok(mut s) = self.stats.lock() {
            s.outages.push(interval);
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
    served_latency: String,
    shed_latency: String,
    outcomes: BTreeMap<String, u64>,
    requests: u64,
    failed: u64,
    served: u64,
    shed: u64,
    unavailable: u64,
    never_definite_reads: u64,
    outages: Vec<(u64, u64)>,
    locks: LockTally,
    grant_latency: String,
    cycle_latency: String,
    flows: FlowTally,
    flow_latency: String,
    timeline: Vec<(u64, u64, u64, u64, u64, String)>,
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
            served_latency: encode(&s.served_latency),
            shed_latency: encode(&s.shed_latency),
            outcomes: s.outcomes.clone(),
            requests: s.requests,
            failed: s.failed,
            served: s.served,
            shed: s.shed,
            unavailable: s.unavailable,
            never_definite_reads: s.never_definite_reads,
            outages: s.outages.clone(),
            locks: s.locks.clone(),
            grant_latency: encode(&s.grant_latency),
            cycle_latency: encode(&s.cycle_latency),
            flows: s.flows.clone(),
            flow_latency: encode(&s.flow_latency),
            timeline: s
                .timeline
                .iter()
                .map(|t| {
                    (
                        t.requests,
                        t.failed,
                        t.served,
                        t.grants,
                        t.flows,
                        encode(&t.latency),
                    )
                })
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
                    served: t.served,
                    grants: t.grants,
                    flows: t.flows,
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
        let _ = self.served_latency.add(decode(&other.served_latency));
        let _ = self.shed_latency.add(decode(&other.shed_latency));
        self.requests += other.requests;
        self.failed += other.failed;
        self.served += other.served;
        self.shed += other.shed;
        self.unavailable += other.unavailable;
        self.never_definite_reads += other.never_definite_reads;
        self.outages.extend_from_slice(&other.outages);
        self.locks.merge(&other.locks);
        let _ = self.grant_latency.add(decode(&other.grant_latency));
        let _ = self.cycle_latency.add(decode(&other.cycle_latency));
        self.flows.merge(&other.flows);
        let _ = self.flow_latency.add(decode(&other.flow_latency));
        if self.timeline.len() < other.timeline.len() {
            self.timeline.resize_with(other.timeline.len(), Second::new);
        }
        for (slot, (requests, failed, served, grants, flows, h)) in
            self.timeline.iter_mut().zip(&other.timeline)
        {
            slot.requests += requests;
            slot.failed += failed;
            slot.served += served;
            slot.grants += grants;
            slot.flows += flows;
            let _ = slot.latency.add(decode(h));
        }
    }

    /// Wall time during which at least one virtual user found the service
    /// out (refused connections, 503 `unavailable`).
    pub fn outage_time(&self) -> Duration {
        Duration::from_micros(retry::covered(&self.outages))
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
    /// Attempts with a definite answer.
    pub served: u64,
    /// Locks granted (the lock scenarios).
    pub grants: u64,
    /// Cycles that ended as they should (the hold and workflow scenarios).
    pub flows: u64,
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
        for (r, ms, outcome, class) in [
            (&a, 2, "200", Class::Success),
            (&a, 4, "200", Class::Success),
            (&b, 8, "500 internal", Class::ServerError),
            (&b, 16, "503 overloaded", Class::Shed),
            (&b, 1, "503 unavailable", Class::Unavailable),
            (&a, 3, "422 insufficient_funds", Class::Refused),
        ] {
            r.record(&Sample {
                op: "deposit",
                latency: Duration::from_millis(ms),
                outcome,
                class,
            });
        }
        let t0 = start + Duration::from_secs(1);
        a.outage(t0, t0 + Duration::from_millis(300));
        b.outage(
            t0 + Duration::from_millis(200),
            t0 + Duration::from_millis(500),
        );
        b.read_given_up();
        a.lock(LockEvent::Acquired {
            latency: Duration::from_millis(2),
        });
        b.lock(LockEvent::Queued);
        b.lock(LockEvent::Granted {
            latency: Duration::from_millis(40),
        });
        for r in [&a, &b] {
            r.lock(LockEvent::Released {
                cycle: Duration::from_millis(50),
            });
        }
        b.lock_error("lock_acquire 429 queue_full");
        a.flow("captured", Some(Duration::from_millis(7)));
        b.flow("completed", Some(Duration::from_millis(30)));
        b.flow("failed", None);
        let mut merged = a.snapshot();
        merged.merge(&WireStats::from(&b.snapshot()));
        assert_eq!((merged.requests, merged.failed), (6, 2));
        assert_eq!((merged.served, merged.shed, merged.unavailable), (3, 1, 1));
        assert_eq!(merged.never_definite_reads, 1);
        assert_eq!(merged.outcomes["200"], 2);
        assert_eq!(merged.outcomes["503 overloaded"], 1);
        let l = Latency::from(&merged.all);
        assert_eq!(l.count, 6);
        assert!((l.max - 16.0).abs() < 0.01, "{l:?}");
        let shed = Latency::from(&merged.shed_latency);
        assert_eq!(shed.count, 1);
        assert!((shed.p99 - 16.0).abs() < 0.01, "{shed:?}");
        assert_eq!(Latency::from(&merged.served_latency).count, 3);
        assert_eq!(merged.per_op["deposit"].len(), 3);
        // Each recorder maps instants to wall-clock microseconds on its own,
        // so two of them may disagree by a microsecond.
        let outage = merged.outage_time();
        assert!(
            outage.abs_diff(Duration::from_millis(500)) <= Duration::from_millis(1),
            "{outage:?}"
        );
        let timeline = merged.timeline();
        assert_eq!(timeline[0].requests, 6);
        assert_eq!(timeline[0].failed, 2);
        assert_eq!(timeline[0].served, 3);
        assert_eq!(timeline[0].grants, 2);
        assert_eq!(merged.locks.held(), 2);
        assert_eq!((merged.locks.queued, merged.locks.released), (1, 2));
        assert!(merged.locks.is_clean(), "{:?}", merged.locks);
        assert_eq!(merged.locks.errors["lock_acquire 429 queue_full"], 1);
        let grant = Latency::from(&merged.grant_latency);
        assert_eq!(grant.count, 2);
        assert!((grant.max - 40.0).abs() < 0.1, "{grant:?}");
        assert_eq!(merged.cycle_latency.len(), 2);
        assert_eq!((merged.flows.done, merged.flows.not_done), (2, 1));
        assert_eq!(merged.flows.ends["failed"], 1);
        assert_eq!(merged.flows.ends["captured"], 1);
        assert!(!merged.flows.is_clean());
        assert_eq!(timeline[0].flows, 2);
        let flow = Latency::from(&merged.flow_latency);
        assert_eq!(flow.count, 2);
        assert!((flow.max - 30.0).abs() < 0.1, "{flow:?}");
    }

    #[test]
    fn a_lock_not_released_makes_the_tally_unclean() {
        let mut t = LockTally {
            acquired: 3,
            released: 2,
            ..LockTally::default()
        };
        assert!(!t.is_clean());
        t.released = 3;
        assert!(t.is_clean());
        t.never_granted = 1;
        assert!(!t.is_clean());
    }
}
