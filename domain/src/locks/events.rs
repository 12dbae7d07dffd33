//! Every change of a lock or queue item, published after its transaction
//! commits: to the admin event stream (SSE), to the requests waiting on a
//! queue item in this process (so they wake at once rather than at their
//! next poll), and to the lock metrics. A change made by another instance
//! is not seen here; waiters find it by polling the database.

use infra::metrics::metrics;
use tokio::sync::broadcast;

use super::{LockView, QueueItemView};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Acquired,
    Extended,
    Released,
    Failed,
    Expired,
    Forced,
    Queued,
    Granted,
    Cancelled,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Acquired => "acquired",
            Self::Extended => "extended",
            Self::Released => "released",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Forced => "forced",
            Self::Queued => "queued",
            Self::Granted => "granted",
            Self::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone)]
pub struct LockEvent {
    pub kind: EventKind,
    pub lock: Option<LockView>,
    pub queue_item: Option<QueueItemView>,
    pub at_ms: i64,
}

impl LockEvent {
    pub(crate) fn lock(kind: EventKind, lock: LockView, at_ms: i64) -> Self {
        Self {
            kind,
            lock: Some(lock),
            queue_item: None,
            at_ms,
        }
    }

    pub(crate) fn queue(kind: EventKind, item: QueueItemView, at_ms: i64) -> Self {
        Self {
            kind,
            lock: item.lock.clone(),
            queue_item: Some(item),
            at_ms,
        }
    }
}

/// Events kept for a slow subscriber before it starts missing them (it is
/// told how many it missed, and a waiter then simply re-reads).
const CAPACITY: usize = 4_096;

#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<LockEvent>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            tx: broadcast::Sender::new(CAPACITY),
        }
    }
}

impl Events {
    pub fn subscribe(&self) -> broadcast::Receiver<LockEvent> {
        self.tx.subscribe()
    }

    /// Publishes what one committed transaction changed.
    pub(crate) fn publish(&self, events: Vec<LockEvent>) {
        for event in events {
            observe(&event);
            // No subscriber is not an error: nobody is watching.
            let _ = self.tx.send(event);
        }
    }
}

fn seconds(ms: i64) -> f64 {
    ms.max(0) as f64 / 1000.0
}

fn observe(event: &LockEvent) {
    let m = &metrics().locks;
    let held = |lock: &LockView| {
        if let Some(end) = lock.released_at_ms {
            m.hold_seconds.observe(seconds(end - lock.acquired_at_ms));
        }
    };
    match (event.kind, &event.lock) {
        (EventKind::Acquired, Some(_)) => m.grants.with_label_values(&["direct"]).inc(),
        (EventKind::Granted, Some(lock)) => {
            m.grants.with_label_values(&["queued"]).inc();
            m.wait_seconds.observe(seconds(lock.wait_ms));
        }
        (EventKind::Released | EventKind::Failed, Some(lock)) => held(lock),
        (EventKind::Forced, Some(lock)) => {
            m.forced_releases.inc();
            held(lock);
        }
        (EventKind::Expired, Some(lock)) if event.queue_item.is_none() => {
            m.expiries.inc();
            held(lock);
        }
        _ => {}
    }
}
