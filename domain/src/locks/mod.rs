//! Resource locks: exclusive, expiring leases on named resources, held in
//! the database so that they hold across every server instance; a priority
//! queue with aging for requests that wait; multi-resource grants that are
//! all or nothing; fencing tokens; duplicate-work detection.
//!
//! Where is X?
//! - the service the API calls (acquire, extend, release, the queue, admin
//!   views, cleanup, `execute_with_lock`, `run_at_once` — acquire, run and
//!   release in one transaction —, `check_fence`): `service.rs`;
//! - what happens inside one transaction (the per-resource row locks, expiry
//!   at read, the hand-off to the queue head, the grant): `store.rs`;
//! - ordering rules of the queue (priority, FIFO, aging): `queue.rs`;
//! - fencing tokens and the write fence: `fencing.rs`;
//! - locks granted and released inside a planned group (a trade on a free
//!   signal among deposits and orders): `planned.rs`;
//! - resource names and request bounds: `resource.rs`;
//! - the duplicate-work key: `dedupe.rs`;
//! - the statistics, kept as a tally of finished grants: `tally.rs`;
//! - the change events (SSE, waking waiters, metrics): `events.rs`.
//!
//! Every change to a resource's locks or queue first locks that resource's
//! `lock_fencing` row (resources in sorted order), so that on PostgreSQL the
//! acquirers, releasers and the cleanup of one resource take turns, and a
//! queue item can never be inserted just after the release that should have
//! granted it. SQLite serializes writers anyway. Every state change is a
//! guarded UPDATE (`WHERE id = … AND status = … AND fencing_token = …`):
//! a stale actor changes nothing.

pub mod dedupe;
pub mod events;
pub mod fencing;
pub mod planned;
pub mod queue;
pub mod resource;
pub mod service;
mod store;
mod tally;

pub use events::{EventKind, LockEvent};
pub use service::{LockRules, LockService};

use chrono::{DateTime, Utc};
use infra::entities::{transaction_lock as lock, transaction_queue as queue_row};
use serde_json::Value;

use crate::error::{DomainError, DomainResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockStatus {
    Active,
    Released,
    Expired,
    Failed,
}

impl LockStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Released => "released",
            Self::Expired => "expired",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "released" => Some(Self::Released),
            "expired" => Some(Self::Expired),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueStatus {
    Pending,
    Granted,
    Cancelled,
    Expired,
}

impl QueueStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Granted => "granted",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "granted" => Some(Self::Granted),
            "cancelled" => Some(Self::Cancelled),
            "expired" => Some(Self::Expired),
            _ => None,
        }
    }
}

/// What to do when a resource is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WaitMode {
    /// 409 `resource_locked` with the conflicting resources.
    #[default]
    Fail,
    /// Join the queue of every busy resource.
    Queue,
}

/// A request for a lock, as the API hands it over: the owner is already
/// decided (the principal, or the one a service named).
#[derive(Debug, Clone)]
pub struct AcquireRequest {
    pub resources: Vec<String>,
    pub ttl_ms: Option<u64>,
    pub priority: Option<u8>,
    pub transaction_type: String,
    pub transaction_data: Option<Value>,
    pub wait: WaitMode,
    pub queue_timeout_ms: Option<u64>,
    pub owner_id: String,
    /// The principal asking (`role:sub`); it may act for the owner.
    pub requested_by: String,
    /// The work under the lock writes only behind its fencing token (a
    /// signal's order): an identical lock that *expired* before its holder
    /// finished left nothing that can still land, so it does not answer a
    /// later identical request, which is granted anew. A lock API client's
    /// work is outside the ledger's sight: its expired lock deduplicates as
    /// any finished one.
    pub fenced_work: bool,
}

/// An [`AcquireRequest`] checked and normalized.
#[derive(Debug, Clone)]
pub(crate) struct LockSpec {
    pub resources: Vec<String>,
    pub ttl_ms: i64,
    pub priority: i32,
    pub transaction_type: String,
    pub transaction_data: Value,
    pub wait: WaitMode,
    pub queue_timeout_ms: i64,
    pub owner_id: String,
    pub created_by: String,
    pub idempotency_key: String,
    /// See [`AcquireRequest::fenced_work`].
    pub fenced_work: bool,
}

impl AcquireRequest {
    pub(crate) fn validate(&self) -> DomainResult<LockSpec> {
        let resources = resource::normalize_resources(&self.resources)?;
        let ttl = self
            .ttl_ms
            .unwrap_or_else(|| resource::default_ttl_ms(resources.len()));
        resource::validate_ttl(ttl)?;
        let priority = self.priority.unwrap_or(resource::DEFAULT_PRIORITY);
        resource::validate_priority(priority)?;
        resource::validate_transaction_type(&self.transaction_type)?;
        resource::validate_owner(&self.owner_id)?;
        let timeout = self
            .queue_timeout_ms
            .unwrap_or(resource::DEFAULT_QUEUE_TIMEOUT_MS);
        resource::validate_queue_timeout(timeout)?;
        // Absent, it is an empty object: the field is never null.
        let data = self
            .transaction_data
            .clone()
            .unwrap_or_else(|| Value::Object(serde_json::Map::new()));
        let idempotency_key =
            dedupe::dedupe_key(&self.owner_id, &resources, &self.transaction_type, &data);
        Ok(LockSpec {
            resources,
            ttl_ms: i64::try_from(ttl).unwrap_or(i64::MAX),
            priority: i32::from(priority),
            transaction_type: self.transaction_type.clone(),
            transaction_data: data,
            wait: self.wait,
            queue_timeout_ms: i64::try_from(timeout).unwrap_or(i64::MAX),
            owner_id: self.owner_id.clone(),
            created_by: self.requested_by.clone(),
            idempotency_key,
            fenced_work: self.fenced_work,
        })
    }
}

/// A lock as the outside sees it. Times are epoch milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct LockView {
    pub lock_id: String,
    pub resources: Vec<String>,
    pub owner_id: String,
    pub owner_type: String,
    pub created_by: String,
    pub fencing_token: i64,
    /// As of when it was read: an active lock past its expiry reads as
    /// `Expired` whether or not the cleanup has marked it yet.
    pub status: LockStatus,
    pub priority: i32,
    pub transaction_type: String,
    pub transaction_data: Value,
    pub idempotency_key: String,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub acquired_at_ms: i64,
    pub expires_at_ms: i64,
    pub released_at_ms: Option<i64>,
    pub released_by: Option<String>,
    pub release_reason: Option<String>,
    pub wait_ms: i64,
    pub queue_id: Option<i64>,
}

fn json_text(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

pub(crate) fn names(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

impl LockView {
    pub(crate) fn from_row(row: lock::Model, now_ms: i64) -> Self {
        let mut status = LockStatus::parse(&row.status).unwrap_or(LockStatus::Expired);
        let mut released_at_ms = row.released_at_ms;
        if status == LockStatus::Active && row.expires_at_ms <= now_ms {
            status = LockStatus::Expired;
            released_at_ms = Some(row.expires_at_ms);
        }
        Self {
            lock_id: row.id,
            resources: names(&row.resources),
            owner_id: row.owner_id,
            owner_type: row.owner_type,
            created_by: row.created_by,
            fencing_token: row.fencing_token,
            status,
            priority: row.priority,
            transaction_type: row.transaction_type,
            transaction_data: json_text(&row.transaction_data),
            idempotency_key: row.idempotency_key,
            result: row.result.as_deref().map(json_text),
            error: row.error,
            acquired_at_ms: row.acquired_at_ms,
            expires_at_ms: row.expires_at_ms,
            released_at_ms,
            released_by: row.released_by,
            release_reason: row.release_reason,
            wait_ms: row.wait_ms,
            queue_id: row.queue_id,
        }
    }

    /// The owner, or the principal that asked for it on the owner's behalf.
    pub fn is_owned_by(&self, principal: &str) -> bool {
        self.owner_id == principal || self.created_by == principal
    }

    pub fn is_active(&self) -> bool {
        self.status == LockStatus::Active
    }
}

/// A queue item as the outside sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueItemView {
    pub queue_id: i64,
    pub resources: Vec<String>,
    pub owner_id: String,
    pub created_by: String,
    pub priority: i32,
    pub effective_priority: i32,
    /// 1 = next; 0 once it is no longer pending.
    pub position: i64,
    pub estimated_wait_ms: i64,
    /// As of when it was read: a pending item past its deadline reads as
    /// `Expired`.
    pub status: QueueStatus,
    pub lock: Option<LockView>,
    pub transaction_type: String,
    pub queued_at_ms: i64,
    pub deadline_ms: i64,
}

impl QueueItemView {
    pub(crate) fn from_row(row: queue_row::Model, now_ms: i64, aging_ms: u64) -> Self {
        let mut status = QueueStatus::parse(&row.status).unwrap_or(QueueStatus::Expired);
        if status == QueueStatus::Pending && row.deadline_ms <= now_ms {
            status = QueueStatus::Expired;
        }
        let effective_priority = if status == QueueStatus::Pending {
            queue::effective_priority(row.priority, row.queued_at_ms, now_ms, aging_ms)
        } else {
            row.priority
        };
        Self {
            queue_id: row.id,
            resources: names(&row.resources),
            owner_id: row.owner_id,
            created_by: row.created_by,
            priority: row.priority,
            effective_priority,
            position: 0,
            estimated_wait_ms: 0,
            status,
            lock: None,
            transaction_type: row.transaction_type,
            queued_at_ms: row.queued_at_ms,
            deadline_ms: row.deadline_ms,
        }
    }

    pub fn is_owned_by(&self, principal: &str) -> bool {
        self.owner_id == principal || self.created_by == principal
    }
}

/// What a lock request got.
#[derive(Debug, Clone)]
pub enum Acquired {
    /// Granted now (201).
    Granted(LockView),
    /// An identical request holds or recently held this lock (200).
    Deduplicated(LockView),
    /// Waiting in the queue (202).
    Queued(QueueItemView),
}

/// How a lock ends.
#[derive(Debug, Clone, Default)]
pub struct Release {
    pub result: Option<Value>,
    pub error: Option<String>,
    /// An admin ending someone else's lock; `reason` is required then.
    pub force: bool,
    pub reason: Option<String>,
    /// When given, only the grant with this token is released.
    pub fencing_token: Option<i64>,
}

/// Filters of the admin list.
#[derive(Debug, Clone, Default)]
pub struct LockFilter {
    pub resource_id: Option<String>,
    pub owner_id: Option<String>,
    pub status: Option<String>,
    pub limit: u64,
}

#[derive(Debug, Clone)]
pub struct LockList {
    pub locks: Vec<LockView>,
    pub queue: Vec<QueueItemView>,
}

#[derive(Debug, Clone)]
pub struct ResourceCheck {
    pub resource_id: String,
    pub is_locked: bool,
    pub active_locks: i64,
    pub queue_length: i64,
}

#[derive(Debug, Clone)]
pub struct ResourceInfo {
    pub resource_id: String,
    pub lock: Option<LockView>,
    pub queue: Vec<QueueItemView>,
    pub history: Vec<LockView>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockStats {
    pub active: i64,
    pub queued: i64,
    pub released: i64,
    pub expired: i64,
    pub failed: i64,
    pub avg_hold_ms: i64,
    pub avg_wait_ms: i64,
    pub p99_wait_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Locks and queue items marked expired.
    pub expired: u64,
    /// Finished records deleted.
    pub purged: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClearReport {
    pub released: u64,
    pub cancelled: u64,
}

/// What `execute_with_lock` did.
#[derive(Debug, Clone)]
pub enum LockedRun<T> {
    /// The operation ran under the lock, which is now released with its
    /// result (or failed with its error).
    Ran(T),
    /// An identical request holds or recently held the lock: the operation
    /// did not run here; the lock (with its `result`, once finished) says
    /// what the first one did.
    Deduplicated(Box<LockView>),
}

/// What `run_at_once` did.
#[derive(Debug)]
pub enum AtOnce<T> {
    /// Granted at once: the operation ran under the lock, and the lock was
    /// released with its result, in one transaction.
    Ran(T),
    /// Not free (held, waited for, or an identical lock within the dedupe
    /// window): nothing was done, `acquire` decides.
    Busy,
    /// Granted, but the operation failed with this error: the transaction
    /// rolled back, grant included, so the lock never existed.
    Declined(DomainError),
}

pub(crate) fn to_datetime(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Epoch milliseconds as RFC 3339 UTC, the form the API shows.
pub fn rfc3339(ms: i64) -> String {
    to_datetime(ms).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub(crate) fn lost(detail: impl Into<String>) -> DomainError {
    infra::metrics::metrics().locks.fencing_refusals.inc();
    DomainError::LockLost(detail.into())
}
