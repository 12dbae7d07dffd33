//! Resource locks over HTTP: acquire (201 / 200 deduplicated / 202 queued),
//! read, extend, release, the queue, and the admin routes. Each handler:
//! parse, authorize, one call to `ledger.locks`, respond.

pub mod body;

use std::sync::Arc;
use std::time::Duration;

use domain::idempotency::StoredResponse;
use domain::locks::{AcquireRequest, LockFilter, Release};
use poem::Request;
use poem::web::Data;
use poem::web::sse::Event;
use poem_openapi::OpenApi;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::{EventStream, Json};
use poem_openapi::types::ToJSON;
use tokio::sync::broadcast::error::RecvError;

use self::body::{
    AcquireLockRequest, AcquireReply, CheckBody, CheckLockRequest, ClearAllBody, ClearAllRequest,
    ExtendLockRequest, LockBody, LockCleanupBody, LockEventBody, LockEventStream, LockListBody,
    LockListStatus, LockStatsBody, QueueItemBody, ReleaseLockRequest, ReleasedCount, ResourceBody,
    ResourceName, render,
};
use crate::auth::{Auth, Principal, Role};
use crate::error::{ApiError, Errors};
use crate::routes::shared::IdempotencyKey;
use crate::routes::{ApiTags, Idempotent, refusal};
use crate::state::AppState;

/// The error statuses each operation can answer.
pub mod status {
    crate::statuses! {
        Acquire: 400, 401, 403, 405, 409, 413, 415, 422, 429, 500, 503;
        GetLock: 400, 401, 403, 404, 405, 429, 500, 503;
        Extend: 400, 401, 403, 404, 405, 409, 413, 415, 429, 500, 503;
        Release: 400, 401, 403, 404, 405, 409, 413, 415, 429, 500, 503;
        GetQueueItem: 400, 401, 403, 404, 405, 429, 500, 503;
        CancelQueueItem: 400, 401, 403, 404, 405, 429, 500, 503;
        List: 400, 401, 403, 405, 429, 500, 503;
        Check: 400, 401, 403, 405, 413, 415, 429, 500, 503;
        Resource: 400, 401, 403, 405, 429, 500, 503;
        ReleaseMany: 400, 401, 403, 405, 429, 500, 503;
        Stats: 400, 401, 403, 405, 429, 500, 503;
        Cleanup: 400, 401, 403, 405, 429, 500, 503;
        ClearAll: 400, 401, 403, 405, 413, 415, 429, 500, 503;
        Events: 400, 401, 403, 405, 429, 500, 503;
    }
}

/// The owner or an admin may read a lock or a queue item; `is_owned_by`
/// is the lock's or the item's.
fn may_read(
    p: &Principal,
    is_owned_by: impl Fn(&str) -> bool,
) -> std::result::Result<(), ApiError> {
    if p.role == Role::Admin || is_owned_by(&p.id()) {
        Ok(())
    } else {
        Err(ApiError::forbidden())
    }
}

/// The lock's owner: the caller, or the one a service or admin names. A
/// user may name only itself.
fn owner_of(p: &Principal, named: Option<&str>) -> std::result::Result<String, ApiError> {
    let me = p.id();
    match named {
        None => Ok(me),
        Some(owner) if owner == me => Ok(me),
        Some(owner) if p.role != Role::User => Ok(owner.to_owned()),
        Some(_) => Err(ApiError::forbidden()),
    }
}

#[derive(Default)]
pub struct LocksApi;

#[OpenApi]
impl LocksApi {
    /// Acquire an exclusive, expiring lock on 1–50 resources, all or nothing.
    /// 201 Lock when granted; with `"wait": "queue"` a busy request joins the
    /// queue (202 QueueItem; priority 1 first, FIFO within a priority,
    /// aging one level per `LEDGER_LOCK_QUEUE_AGING_MS`); otherwise 409
    /// `resource_locked` with `conflicts`. A request identical to a lock
    /// that is active or finished within `LEDGER_LOCK_DEDUPE_MS` is answered
    /// 200 with that lock and `"deduplicated": true`. 429 `queue_full` with
    /// Retry-After. Neither 409 nor 429 is stored under the Idempotency-Key.
    /// Roles: any; a user may not name another `owner_id`. Requires
    /// `Idempotency-Key`.
    #[oai(
        path = "/api/v1/locks",
        method = "post",
        operation_id = "acquire_lock",
        tag = "ApiTags::Locks"
    )]
    async fn acquire(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        req: &Request,
        #[oai(name = "Idempotency-Key")] key: Header<IdempotencyKey>,
        body: Json<AcquireLockRequest>,
    ) -> std::result::Result<AcquireReply, Errors<status::Acquire>> {
        let owner_id = owner_of(&auth.0, body.owner_id.as_deref())?;
        let request = AcquireRequest {
            resources: body.resource_names(),
            ttl_ms: body.ttl_ms,
            priority: body.priority,
            transaction_type: body.transaction_type.clone(),
            transaction_data: body.transaction_data.clone(),
            wait: body.wait.map(Into::into).unwrap_or_default(),
            queue_timeout_ms: body.queue_timeout_ms,
            owner_id,
            requested_by: auth.0.id(),
            fenced_work: false,
        };
        let idempotent = Idempotent::new(&auth.0, req, &key.0, &body.0);
        let outcome = state
            .ledger
            .locks
            .acquire_once(
                idempotent.request(),
                &request,
                |acquired| {
                    let (status, body) = render(acquired);
                    StoredResponse { status, body }
                },
                refusal(),
            )
            .await?;
        Ok(AcquireReply::new(outcome))
    }

    /// One lock. Roles: its owner (or the principal that asked for it),
    /// admin.
    #[oai(
        path = "/api/v1/locks/:lock_id",
        method = "get",
        operation_id = "get_lock",
        tag = "ApiTags::Locks"
    )]
    async fn get_lock(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        lock_id: Path<String>,
    ) -> std::result::Result<Json<LockBody>, Errors<status::GetLock>> {
        let lock = state.ledger.locks.lock(&lock_id.0).await?;
        may_read(&auth.0, |p| lock.is_owned_by(p))?;
        Ok(Json(LockBody::from(&lock)))
    }

    /// Heartbeat: a new `expires_at` `ttl_ms` from now, the same fencing
    /// token. 409 `lock_lost` when the lock is no longer active (released,
    /// failed, or past its expiry). Roles: the owner only.
    #[oai(
        path = "/api/v1/locks/:lock_id/extend",
        method = "post",
        operation_id = "extend_lock",
        tag = "ApiTags::Locks"
    )]
    async fn extend(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        lock_id: Path<String>,
        body: Json<ExtendLockRequest>,
    ) -> std::result::Result<Json<LockBody>, Errors<status::Extend>> {
        let locks = &state.ledger.locks;
        let lock = locks.lock(&lock_id.0).await?;
        if !lock.is_owned_by(&auth.0.id()) {
            return Err(ApiError::forbidden().into());
        }
        let lock = locks.extend(&lock_id.0, body.ttl_ms, None).await?;
        Ok(Json(LockBody::from(&lock)))
    }

    /// End a lock: `released`, or `failed` when `error` is given (`result`
    /// is kept either way). The head of each of its resources' queues is
    /// granted in the same transaction. 409 `lock_lost` when it is no longer
    /// active. Roles: the owner; an admin with `"force": true` and a
    /// `reason` (recorded with `released_by`).
    #[oai(
        path = "/api/v1/locks/:lock_id/release",
        method = "post",
        operation_id = "release_lock",
        tag = "ApiTags::Locks"
    )]
    async fn release(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        lock_id: Path<String>,
        body: Json<ReleaseLockRequest>,
    ) -> std::result::Result<Json<LockBody>, Errors<status::Release>> {
        let locks = &state.ledger.locks;
        let lock = locks.lock(&lock_id.0).await?;
        let force = body.force.unwrap_or(false);
        let allowed = if force {
            auth.0.role == Role::Admin
        } else {
            lock.is_owned_by(&auth.0.id())
        };
        if !allowed {
            return Err(ApiError::forbidden().into());
        }
        let how = Release {
            result: body.result.clone(),
            error: body.error.clone(),
            force,
            reason: body.reason.clone(),
            fencing_token: None,
        };
        let lock = locks.release(&lock_id.0, &auth.0.id(), how).await?;
        Ok(Json(LockBody::from(&lock)))
    }

    /// A queue item: status, position, estimated wait, and its lock once
    /// granted. With `wait_ms` (at most 30,000) the answer comes when the
    /// status changes or the time is up. Roles: its owner, admin.
    #[oai(
        path = "/api/v1/locks/queue/:queue_id",
        method = "get",
        operation_id = "get_queue_item",
        tag = "ApiTags::Locks"
    )]
    async fn get_queue_item(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        queue_id: Path<i64>,
        /// 0–30,000 ms to wait for a change.
        #[oai(validator(maximum(value = "30000")))]
        wait_ms: Query<Option<u64>>,
    ) -> std::result::Result<Json<QueueItemBody>, Errors<status::GetQueueItem>> {
        let locks = &state.ledger.locks;
        let mut item = locks.queue_item(queue_id.0).await?;
        may_read(&auth.0, |p| item.is_owned_by(p))?;
        if let Some(wait) = wait_ms.0.filter(|w| *w > 0) {
            item = locks
                .wait_queue_item(queue_id.0, Duration::from_millis(wait))
                .await?;
        }
        Ok(Json(QueueItemBody::from(&item)))
    }

    /// Leave the queue: 200 QueueItem `cancelled` (an item no longer pending
    /// is returned as it is). Roles: its owner, admin.
    #[oai(
        path = "/api/v1/locks/queue/:queue_id",
        method = "delete",
        operation_id = "cancel_queue_item",
        tag = "ApiTags::Locks"
    )]
    async fn cancel_queue_item(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        queue_id: Path<i64>,
    ) -> std::result::Result<Json<QueueItemBody>, Errors<status::CancelQueueItem>> {
        let locks = &state.ledger.locks;
        let item = locks.queue_item(queue_id.0).await?;
        may_read(&auth.0, |p| item.is_owned_by(p))?;
        let item = locks.cancel(queue_id.0).await?;
        Ok(Json(QueueItemBody::from(&item)))
    }

    /// Locks (newest first) and pending queue items (in queue order),
    /// filtered by resource, owner and status (a lock status, or a queue
    /// status for the queue). Roles: admin.
    #[oai(
        path = "/api/v1/locks",
        method = "get",
        operation_id = "list_locks",
        tag = "ApiTags::Locks"
    )]
    async fn list(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        resource_id: Query<Option<String>>,
        owner_id: Query<Option<String>>,
        /// `active`, `released`, `expired`, `failed` (locks) or `pending`,
        /// `granted`, `cancelled`, `expired` (queue).
        status: Query<Option<LockListStatus>>,
        /// 1 to 500, default 50.
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))]
        limit: Query<Option<u64>>,
    ) -> std::result::Result<Json<LockListBody>, Errors<status::List>> {
        auth.0.require(&[Role::Admin])?;
        let filter = LockFilter {
            resource_id: resource_id.0,
            owner_id: owner_id.0,
            // the value as the document spells it
            status: status
                .0
                .and_then(|s| s.to_json())
                .and_then(|v| v.as_str().map(str::to_owned)),
            limit: limit.0.unwrap_or(50),
        };
        let list = state.ledger.locks.list(&filter).await?;
        Ok(Json(LockListBody::from(&list)))
    }

    /// Whether a resource is locked now, and how many wait for it. Roles:
    /// admin.
    #[oai(
        path = "/api/v1/locks/check",
        method = "post",
        operation_id = "check_lock",
        tag = "ApiTags::Locks"
    )]
    async fn check(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        body: Json<CheckLockRequest>,
    ) -> std::result::Result<Json<CheckBody>, Errors<status::Check>> {
        auth.0.require(&[Role::Admin])?;
        let check = state.ledger.locks.check(&body.resource_id.0).await?;
        Ok(Json(CheckBody::from(&check)))
    }

    /// A resource: its live lock, its queue in order, its last 20 locks.
    /// Roles: admin.
    #[oai(
        path = "/api/v1/locks/resources/:resource_id",
        method = "get",
        operation_id = "get_locked_resource",
        tag = "ApiTags::Locks"
    )]
    async fn resource(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        resource_id: Path<ResourceName>,
    ) -> std::result::Result<Json<ResourceBody>, Errors<status::Resource>> {
        auth.0.require(&[Role::Admin])?;
        let info = state.ledger.locks.resource(&resource_id.0.0).await?;
        Ok(Json(ResourceBody::from(&info)))
    }

    /// End locks by `lock_id` or by `owner_id` (exactly one). Without
    /// `force=true` only locks already past their expiry are ended (marked
    /// `expired`); with it, live ones are released as forced by the caller,
    /// with `reason`. Their queues' heads are granted. Roles: admin.
    #[oai(
        path = "/api/v1/locks",
        method = "delete",
        operation_id = "release_locks",
        tag = "ApiTags::Locks"
    )]
    async fn release_many(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        lock_id: Query<Option<String>>,
        owner_id: Query<Option<String>>,
        force: Query<Option<bool>>,
        #[oai(validator(max_length = 500))] reason: Query<Option<String>>,
    ) -> std::result::Result<Json<ReleasedCount>, Errors<status::ReleaseMany>> {
        auth.0.require(&[Role::Admin])?;
        let released = state
            .ledger
            .locks
            .release_matching(
                lock_id.0.as_deref(),
                owner_id.0.as_deref(),
                force.0.unwrap_or(false),
                &auth.0.id(),
                reason.0.as_deref(),
            )
            .await?;
        Ok(Json(ReleasedCount { released }))
    }

    /// Counts by status, and hold and wait times (`avg_wait_ms`,
    /// `p99_wait_ms` over all grants, 0 for one granted at once) over the
    /// retained records. Roles: admin.
    #[oai(
        path = "/api/v1/locks/stats",
        method = "get",
        operation_id = "lock_stats",
        tag = "ApiTags::Locks"
    )]
    async fn stats(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
    ) -> std::result::Result<Json<LockStatsBody>, Errors<status::Stats>> {
        auth.0.require(&[Role::Admin])?;
        let stats = state.ledger.locks.stats().await?;
        Ok(Json(LockStatsBody::from(&stats)))
    }

    /// Runs the cleanup now: marks expired locks and queue items (granting
    /// the heads behind them) and deletes finished records older than
    /// `LEDGER_LOCK_RETENTION_HOURS`. Roles: admin.
    #[oai(
        path = "/api/v1/locks/cleanup",
        method = "post",
        operation_id = "cleanup_locks",
        tag = "ApiTags::Locks"
    )]
    async fn cleanup(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
    ) -> std::result::Result<Json<LockCleanupBody>, Errors<status::Cleanup>> {
        auth.0.require(&[Role::Admin])?;
        let report = state.ledger.locks.cleanup().await?;
        Ok(Json(LockCleanupBody::from(&report)))
    }

    /// Emergency: releases every active lock (forced, with `reason`) and
    /// cancels every queued request. 400 unless `"confirm": true`. Roles:
    /// admin.
    #[oai(
        path = "/api/v1/locks/clear-all",
        method = "post",
        operation_id = "clear_all_locks",
        tag = "ApiTags::Locks"
    )]
    async fn clear_all(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        body: Json<ClearAllRequest>,
    ) -> std::result::Result<Json<ClearAllBody>, Errors<status::ClearAll>> {
        auth.0.require(&[Role::Admin])?;
        if !body.confirm {
            return Err(ApiError::invalid("confirm: must be true to clear every lock").into());
        }
        let report = state
            .ledger
            .locks
            .clear_all(&auth.0.id(), &body.reason)
            .await?;
        Ok(Json(ClearAllBody::from(&report)))
    }

    /// `text/event-stream`: one event per change of a lock or queue item
    /// made by this server instance (`acquired`, `extended`, `released`,
    /// `failed`, `expired`, `forced`, `queued`, `granted`, `cancelled`); the
    /// SSE `event` is the type and `data` a LockEvent (JSON). A comment
    /// line every 15 s keeps idle connections open. Roles: admin.
    #[oai(
        path = "/api/v1/locks/events",
        method = "get",
        operation_id = "lock_events",
        tag = "ApiTags::Locks"
    )]
    async fn events(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
    ) -> std::result::Result<LockEventStream, Errors<status::Events>> {
        auth.0.require(&[Role::Admin])?;
        let changes = state.ledger.locks.subscribe();
        let stream = futures::stream::unfold(changes, |mut changes| async move {
            loop {
                match changes.recv().await {
                    Ok(event) => return Some((LockEventBody::from(&event), changes)),
                    // A slow reader misses events rather than holding the
                    // sender back; it keeps receiving the newer ones.
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return None,
                }
            }
        });
        let stream = futures::StreamExt::take_until(stream, state.drained());
        Ok(LockEventStream(
            EventStream::new(futures::StreamExt::boxed(stream))
                .keep_alive(Duration::from_secs(15))
                .to_event(|e| Event::message(e.to_json_string()).event_type(e.kind.clone())),
        ))
    }
}
