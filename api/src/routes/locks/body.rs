//! Request and response bodies of the lock routes, the statuses each
//! operation documents, and the one response with several success statuses
//! (acquire: 201, 200 deduplicated, 202 queued).

use std::marker::PhantomData;

use domain::idempotency::Outcome;
use domain::locks::{
    self as locks, CleanupReport, ClearReport, LockEvent, LockList, LockStats, LockView,
    QueueItemView, ResourceCheck, ResourceInfo, rfc3339,
};
use futures::stream::BoxStream;
use poem::{IntoResponse, Response};
use poem_openapi::payload::EventStream;
use poem_openapi::registry::{
    MetaHeader, MetaMediaType, MetaResponse, MetaResponses, MetaSchema, MetaSchemaRef, Registry,
};
use poem_openapi::types::{
    ParseError, ParseFromJSON, ParseFromParameter, ParseResult, ToJSON, Type,
};
use poem_openapi::{ApiResponse, Enum, Object};
use serde_json::Value;

use crate::replay::{REPLAYED_HEADER, outcome_response};
use crate::routes::shared::{mirror_enum, string_type};

/// What a resource name looks like, as `domain::locks::resource` checks
/// it (a test holds the two to each other).
pub const RESOURCE_PATTERN: &str = r"^[a-z][a-z0-9_]*(:[A-Za-z0-9_.-]+)*$";

/// A resource name in a request. The schema states the form; the lock
/// service checks it, so that a bad name is refused with the name and the
/// rule in the problem's detail, whichever route it came by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceName(pub String);

string_type!(
    ResourceName,
    "A kind in lower case, then colon-separated parts, at most 200 characters: \
     `trade:42:BTCUSDT:sell:snipe123`, `item:sku-991`.",
    RESOURCE_PATTERN,
    min_length: Some(1),
    max_length: Some(locks::resource::MAX_RESOURCE_LEN),
    example: Some(Value::String("item:sku-991".into())),
);

impl ParseFromJSON for ResourceName {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(s)) => Ok(Self(s)),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl ParseFromParameter for ResourceName {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Ok(Self(value.to_owned()))
    }
}

/// A status to list by: a lock's (`active`, `released`, `expired`,
/// `failed`) or a queue item's (`pending`, `granted`, `cancelled`,
/// `expired`); `expired` lists both.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum LockListStatus {
    Active,
    Released,
    Expired,
    Failed,
    Pending,
    Granted,
    Cancelled,
}

mirror_enum! {
    /// A lock's: `active`, `released`, `expired` or `failed`.
    #[oai(rename_all = "lowercase")]
    pub enum LockStatus = locks::LockStatus { Active, Released, Expired, Failed }
}

mirror_enum! {
    /// A queue item's: `pending`, `granted`, `cancelled` or `expired`.
    #[oai(rename = "QueueItemStatus", rename_all = "lowercase")]
    pub enum QueueStatus = locks::QueueStatus { Pending, Granted, Cancelled, Expired }
}

/// `fail` (default): 409 `resource_locked` when a resource is busy;
/// `queue`: join the queue (202).
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename = "LockWait", rename_all = "lowercase")]
pub enum Wait {
    Fail,
    Queue,
}

impl From<Wait> for locks::WaitMode {
    fn from(w: Wait) -> Self {
        match w {
            Wait::Fail => Self::Fail,
            Wait::Queue => Self::Queue,
        }
    }
}

/// A request for an exclusive lease on 1–50 resources, all or nothing.
#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct AcquireLockRequest {
    /// 1–50 distinct names.
    #[oai(validator(min_items = 1, max_items = 50, unique_items))]
    pub resources: Vec<ResourceName>,
    /// 1,000–600,000; default 30,000 for one resource, 300,000 for a
    /// reservation of several.
    #[oai(validator(minimum(value = "1000"), maximum(value = "600000")))]
    pub ttl_ms: Option<u64>,
    /// 1 (highest) – 10 (lowest); default 5.
    #[oai(validator(minimum(value = "1"), maximum(value = "10")))]
    pub priority: Option<u8>,
    /// What the holder will do.
    #[oai(validator(pattern = r"^[A-Za-z0-9_.:-]{1,100}$"))]
    pub transaction_type: String,
    /// Any JSON, `{}` when absent; part of the duplicate-work key (object
    /// key order does not matter).
    pub transaction_data: Option<Value>,
    pub wait: Option<Wait>,
    /// How long a queued request may wait before it becomes `expired`;
    /// default 60,000.
    #[oai(validator(minimum(value = "1"), maximum(value = "3600000")))]
    pub queue_timeout_ms: Option<u64>,
    /// The owner, when a service or admin acts for someone
    /// (`user:42`, `service:name`, or a name of its own); a user may only
    /// name itself. Default: the caller (`role:sub`).
    #[oai(validator(pattern = r"^[A-Za-z0-9_.:@-]{1,200}$"))]
    pub owner_id: Option<String>,
}

impl AcquireLockRequest {
    pub fn resource_names(&self) -> Vec<String> {
        self.resources.iter().map(|r| r.0.clone()).collect()
    }
}

#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct ExtendLockRequest {
    /// The new lease from now, 1,000–600,000.
    #[oai(validator(minimum(value = "1000"), maximum(value = "600000")))]
    pub ttl_ms: u64,
}

#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct ReleaseLockRequest {
    /// What the work produced; kept on the lock.
    pub result: Option<Value>,
    /// The work failed: the lock ends `failed` with this message.
    #[oai(validator(max_length = 2000))]
    pub error: Option<String>,
    /// Admin only: end someone else's lock; `reason` is required.
    pub force: Option<bool>,
    #[oai(validator(max_length = 500))]
    pub reason: Option<String>,
}

#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct CheckLockRequest {
    pub resource_id: ResourceName,
}

#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct ClearAllRequest {
    /// Must be `true`.
    pub confirm: bool,
    #[oai(validator(min_length = 1, max_length = 500))]
    pub reason: String,
}

/// A lock: an exclusive, expiring lease on its resources.
#[derive(Object, Debug, Clone)]
#[oai(rename = "Lock")]
pub struct LockBody {
    pub lock_id: String,
    pub resources: Vec<String>,
    pub owner_id: String,
    /// `user`, `service`, `admin`, or `external` (a name a service gave).
    pub owner_type: String,
    /// Grows with every grant of a resource, never reused. Send
    /// `Lock-Token: <lock_id>:<fencing_token>` with the writes it protects.
    pub fencing_token: i64,
    /// A lock past its expiry reads `expired` at once.
    pub status: LockStatus,
    pub priority: i32,
    pub transaction_type: String,
    pub transaction_data: Value,
    /// SHA-256 of owner, sorted resources, type and canonical data.
    pub idempotency_key: String,
    #[oai(nullable)]
    pub result: Option<Value>,
    #[oai(nullable)]
    pub error: Option<String>,
    pub acquired_at: String,
    pub expires_at: String,
    #[oai(nullable)]
    pub released_at: Option<String>,
    #[oai(nullable)]
    pub released_by: Option<String>,
    /// Why it was released, when the releaser said (always, for a forced
    /// release by an admin).
    #[oai(nullable)]
    pub release_reason: Option<String>,
    /// The principal that asked for the lock (a service may ask on an
    /// owner's behalf); a release by anyone else was forced.
    pub created_by: String,
    /// Present (`true`) only when this answers a duplicate request.
    #[oai(skip_serializing_if_is_none)]
    pub deduplicated: Option<bool>,
}

impl From<&LockView> for LockBody {
    fn from(l: &LockView) -> Self {
        Self {
            lock_id: l.lock_id.clone(),
            resources: l.resources.clone(),
            owner_id: l.owner_id.clone(),
            owner_type: l.owner_type.clone(),
            fencing_token: l.fencing_token,
            status: l.status.into(),
            priority: l.priority,
            transaction_type: l.transaction_type.clone(),
            transaction_data: l.transaction_data.clone(),
            idempotency_key: l.idempotency_key.clone(),
            result: l.result.clone(),
            error: l.error.clone(),
            acquired_at: rfc3339(l.acquired_at_ms),
            expires_at: rfc3339(l.expires_at_ms),
            released_at: l.released_at_ms.map(rfc3339),
            released_by: l.released_by.clone(),
            release_reason: l.release_reason.clone(),
            created_by: l.created_by.clone(),
            deduplicated: None,
        }
    }
}

/// A waiter in the queue of one or more resources.
#[derive(Object, Debug, Clone)]
#[oai(rename = "QueueItem")]
pub struct QueueItemBody {
    pub queue_id: i64,
    pub resources: Vec<String>,
    pub owner_id: String,
    pub priority: i32,
    /// The priority improved by aging (one level per aging interval, never
    /// past 1).
    pub effective_priority: i32,
    /// 1 = next; 0 once no longer pending.
    pub position: i64,
    /// From the measured hold times of the resources.
    pub estimated_wait_ms: i64,
    pub status: QueueStatus,
    /// The lock it was granted as.
    #[oai(nullable)]
    pub lock: Option<LockBody>,
    pub queued_at: String,
    pub deadline: String,
}

impl From<&QueueItemView> for QueueItemBody {
    fn from(q: &QueueItemView) -> Self {
        Self {
            queue_id: q.queue_id,
            resources: q.resources.clone(),
            owner_id: q.owner_id.clone(),
            priority: q.priority,
            effective_priority: q.effective_priority,
            position: q.position,
            estimated_wait_ms: q.estimated_wait_ms,
            status: q.status.into(),
            lock: q.lock.as_ref().map(LockBody::from),
            queued_at: rfc3339(q.queued_at_ms),
            deadline: rfc3339(q.deadline_ms),
        }
    }
}

#[derive(Object, Debug, Clone)]
#[oai(rename = "LockList")]
pub struct LockListBody {
    /// Newest first.
    pub locks: Vec<LockBody>,
    /// In queue order.
    pub queue: Vec<QueueItemBody>,
}

impl From<&LockList> for LockListBody {
    fn from(l: &LockList) -> Self {
        Self {
            locks: l.locks.iter().map(LockBody::from).collect(),
            queue: l.queue.iter().map(QueueItemBody::from).collect(),
        }
    }
}

#[derive(Object, Debug, Clone)]
#[oai(rename = "LockCheck")]
pub struct CheckBody {
    pub resource_id: String,
    pub is_locked: bool,
    pub active_locks: i64,
    pub queue_length: i64,
}

impl From<&ResourceCheck> for CheckBody {
    fn from(c: &ResourceCheck) -> Self {
        Self {
            resource_id: c.resource_id.clone(),
            is_locked: c.is_locked,
            active_locks: c.active_locks,
            queue_length: c.queue_length,
        }
    }
}

#[derive(Object, Debug, Clone)]
#[oai(rename = "LockedResource")]
pub struct ResourceBody {
    pub resource_id: String,
    #[oai(nullable)]
    pub lock: Option<LockBody>,
    pub queue: Vec<QueueItemBody>,
    /// The last 20 locks of the resource, newest first.
    pub history: Vec<LockBody>,
}

impl From<&ResourceInfo> for ResourceBody {
    fn from(r: &ResourceInfo) -> Self {
        Self {
            resource_id: r.resource_id.clone(),
            lock: r.lock.as_ref().map(LockBody::from),
            queue: r.queue.iter().map(QueueItemBody::from).collect(),
            history: r.history.iter().map(LockBody::from).collect(),
        }
    }
}

#[derive(Object, Debug, Clone)]
pub struct ReleasedCount {
    pub released: u64,
}

#[derive(Object, Debug, Clone)]
pub struct LockStatsBody {
    pub active: i64,
    pub queued: i64,
    pub released: i64,
    pub expired: i64,
    pub failed: i64,
    pub avg_hold_ms: i64,
    pub avg_wait_ms: i64,
    pub p99_wait_ms: i64,
}

impl From<&LockStats> for LockStatsBody {
    fn from(s: &LockStats) -> Self {
        Self {
            active: s.active,
            queued: s.queued,
            released: s.released,
            expired: s.expired,
            failed: s.failed,
            avg_hold_ms: s.avg_hold_ms,
            avg_wait_ms: s.avg_wait_ms,
            p99_wait_ms: s.p99_wait_ms,
        }
    }
}

#[derive(Object, Debug, Clone)]
pub struct LockCleanupBody {
    /// Locks and queue items marked expired.
    pub expired: u64,
    /// Finished records deleted (older than the retention).
    pub purged: u64,
}

impl From<&CleanupReport> for LockCleanupBody {
    fn from(r: &CleanupReport) -> Self {
        Self {
            expired: r.expired,
            purged: r.purged,
        }
    }
}

#[derive(Object, Debug, Clone)]
pub struct ClearAllBody {
    pub released: u64,
    pub cancelled: u64,
}

impl From<&ClearReport> for ClearAllBody {
    fn from(r: &ClearReport) -> Self {
        Self {
            released: r.released,
            cancelled: r.cancelled,
        }
    }
}

/// One change, as one server-sent event whose `event` is `type`.
#[derive(Object, Debug, Clone)]
pub struct LockEventBody {
    /// `acquired`, `extended`, `released`, `failed`, `expired`, `forced`,
    /// `queued`, `granted` or `cancelled`.
    #[oai(rename = "type")]
    pub kind: String,
    #[oai(nullable)]
    pub lock: Option<LockBody>,
    #[oai(nullable)]
    pub queue_item: Option<QueueItemBody>,
    pub at: String,
}

impl From<&LockEvent> for LockEventBody {
    fn from(e: &LockEvent) -> Self {
        Self {
            kind: e.kind.as_str().into(),
            lock: e.lock.as_ref().map(LockBody::from),
            queue_item: e.queue_item.as_ref().map(QueueItemBody::from),
            at: rfc3339(e.at_ms),
        }
    }
}

/// The answer to `POST /api/v1/locks`, stored under its Idempotency-Key and
/// replayed byte for byte.
pub struct AcquireReply {
    outcome: Outcome,
    _body: PhantomData<()>,
}

impl AcquireReply {
    pub fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            _body: PhantomData,
        }
    }
}

/// The stored status and body of an acquire.
pub fn render(acquired: &locks::Acquired) -> (u16, String) {
    match acquired {
        locks::Acquired::Granted(lock) => (201, LockBody::from(lock).to_json_string()),
        locks::Acquired::Deduplicated(lock) => {
            let body = LockBody {
                deduplicated: Some(true),
                ..LockBody::from(lock)
            };
            (200, body.to_json_string())
        }
        locks::Acquired::Queued(item) => (202, QueueItemBody::from(item).to_json_string()),
    }
}

impl IntoResponse for AcquireReply {
    fn into_response(self) -> Response {
        outcome_response(self.outcome)
    }
}

impl ApiResponse for AcquireReply {
    fn meta() -> MetaResponses {
        let replayed = || MetaHeader {
            name: REPLAYED_HEADER.into(),
            description: Some("`true` when this response is a replay of the stored one".into()),
            required: false,
            deprecated: false,
            schema: String::schema_ref(),
        };
        let ok = |status, description, schema| MetaResponse {
            description,
            status: Some(status),
            status_range: None,
            content: vec![MetaMediaType {
                content_type: "application/json; charset=utf-8",
                schema,
            }],
            headers: vec![replayed()],
        };
        MetaResponses {
            responses: vec![
                ok(
                    201,
                    "Granted: all resources are now this lock's.",
                    LockBody::schema_ref(),
                ),
                ok(
                    200,
                    "An identical request (same owner, resources, type and data) holds or recently held this lock: it is answered with that lock and `\"deduplicated\": true`, not a new grant.",
                    LockBody::schema_ref(),
                ),
                ok(
                    202,
                    "Queued (`\"wait\": \"queue\"`): poll `GET /api/v1/locks/queue/{queue_id}?wait_ms=`.",
                    QueueItemBody::schema_ref(),
                ),
            ],
        }
    }

    fn register(registry: &mut Registry) {
        LockBody::register(registry);
        QueueItemBody::register(registry);
    }
}

/// The lock event stream (`text/event-stream`). Its document describes one
/// event, as OpenAPI 3.0 does for a stream: `event` is the change's type and
/// `data` a `LockEventBody` as JSON text.
pub struct LockEventStream(pub EventStream<BoxStream<'static, LockEventBody>>);

impl IntoResponse for LockEventStream {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

impl ApiResponse for LockEventStream {
    fn meta() -> MetaResponses {
        let text = |description| {
            MetaSchemaRef::Inline(Box::new(MetaSchema {
                description: Some(description),
                ..MetaSchema::new("string")
            }))
        };
        let event = MetaSchema {
            title: Some("LockServerSentEvent".into()),
            description: Some("One server-sent event: one change of a lock or a queue item."),
            required: vec!["event", "data"],
            properties: vec![
                (
                    "event",
                    text("The change: the `type` of the `LockEventBody` in `data`."),
                ),
                ("data", text("A `LockEventBody`, as JSON text.")),
            ],
            ..MetaSchema::new("object")
        };
        MetaResponses {
            responses: vec![MetaResponse {
                description: "One event per change, as it happens; a comment line every 15 s keeps an idle stream open.",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: "text/event-stream",
                    schema: MetaSchemaRef::Inline(Box::new(event)),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        LockEventBody::register(registry);
    }
}

#[cfg(test)]
mod tests {
    use domain::locks::resource::{MAX_RESOURCE_LEN, is_valid_resource};

    use super::*;
    use crate::routes::shared::tests::{matches, strings};

    #[test]
    fn resource_pattern_accepts_exactly_what_the_lock_service_does() {
        let mut corpus = strings(&['a', 'Z', '0', '_', ':', '.', '-'], 5);
        corpus.extend(
            [
                "trade:42:BTCUSDT:sell:snipe123",
                "item:sku-991",
                "Item:1",
                "item:",
                "item::x",
                "1item",
                "item:a b",
                "item:é",
            ]
            .map(String::from),
        );
        for s in corpus {
            // The schema states the length with maxLength, beside the pattern.
            assert_eq!(
                matches(RESOURCE_PATTERN, &s),
                is_valid_resource(&s),
                "{s:?}"
            );
        }
        let longest = format!("item:{}", "x".repeat(MAX_RESOURCE_LEN - 5));
        assert!(is_valid_resource(&longest));
        assert!(!is_valid_resource(&format!("{longest}x")));
        let schema = ResourceName::schema_ref();
        let schema = schema.unwrap_inline();
        assert_eq!(schema.max_length, Some(MAX_RESOURCE_LEN));
        assert_eq!(schema.pattern.as_deref(), Some(RESOURCE_PATTERN));
    }
}
