//! LockService: the lock use cases the API (and any code that must run
//! under a lock) calls. Each write is one retried transaction (see
//! `store`); the events it produced are published after it commits.

use std::collections::BTreeSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use infra::config::LockConfig;
use infra::entities::{
    transaction_lock as lock, transaction_lock_resource as lr, transaction_queue as queue_row,
    transaction_queue_resource as qr,
};
use infra::metrics::metrics;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, DatabaseTransaction, EntityTrait, JoinType, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Select,
};
use serde::Serialize;
use tokio::sync::{broadcast, oneshot};

use super::events::{EventKind, Events, LockEvent};
use super::store::{self, Placing, Store, active_on, annotate, pending_on};
use super::tally;
use super::{
    AcquireRequest, Acquired, AtOnce, CleanupReport, ClearReport, LockFilter, LockList, LockStats,
    LockStatus, LockView, LockedRun, QueueItemView, QueueStatus, Release, ResourceCheck,
    ResourceInfo, names, resource,
};
use crate::batch::Batcher;
use crate::clock::now_ms;
use crate::error::{DomainError, DomainResult};
use crate::idempotency::{IdempotencyService, IdempotentRequest, Outcome, StoredResponse};
use crate::sql::status_as_of;
use crate::tx::{RetryPolicy, TransactionService};

/// Runs `$body` with `$s` bound to a [`Store`] in a retried transaction
/// named `$name`, and publishes the store's events once it has committed.
/// A macro rather than a function taking a closure: the body's future
/// borrows the store, which a closure's return type cannot express.
macro_rules! in_store {
    ($svc:expr, $name:expr, |$s:ident| $body:expr) => {{
        let aging = $svc.rules.queue_aging_ms;
        let (value, events) = $svc
            .tx
            .execute_with_policy($name, &$svc.policy, |txn| async move {
                let mut $s = Store::new(&txn, now_ms(), aging);
                let value = $body;
                Ok((value, $s.into_events()))
            })
            .await?;
        $svc.events.publish(events);
        value
    }};
}

/// The rows of `query` on one resource, through their rows `R` of
/// (row, resource), newest first by `R`'s `newest` column: the read walks
/// back the index on (resource, `newest`) and stops at the query's limit,
/// however many rows the resource has had (a hot resource has hundreds of
/// thousands a day).
fn newest_on<E: EntityTrait, R: EntityTrait>(
    query: Select<E>,
    (link, id): (R::Column, E::Column),
    (resource, name): (R::Column, &str),
    newest: R::Column,
) -> Select<E> {
    query
        .join_rev(
            JoinType::InnerJoin,
            R::belongs_to(E::default()).from(link).to(id).into(),
        )
        .filter(resource.eq(name))
        .order_by_desc(newest)
}

/// The lock settings, from the configuration.
#[derive(Debug, Clone)]
pub struct LockRules {
    pub queue_aging_ms: u64,
    pub queue_max: i64,
    pub dedupe_ms: i64,
    pub retention_ms: i64,
    /// How often a waiting request re-reads its queue item.
    pub poll: Duration,
    pub cleanup_every: Option<Duration>,
}

impl LockRules {
    pub fn from_config(config: &LockConfig) -> Self {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self {
            queue_aging_ms: u64::try_from(config.queue_aging.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            queue_max: i64::from(config.queue_max),
            dedupe_ms: ms(config.dedupe),
            retention_ms: ms(config.retention),
            poll: config.poll.max(Duration::from_millis(1)),
            cleanup_every: (!config.cleanup_interval.is_zero()).then_some(config.cleanup_interval),
        }
    }
}

/// Attempts per lock transaction at least.
const LOCK_ATTEMPTS: u32 = 6;
/// Expired records handled per cleanup pass; the next pass takes the rest.
const CLEANUP_BATCH: u64 = 500;
/// Tally or purge transactions one cleanup pass runs at most (each of
/// `tally::BATCH` grants).
const CLEANUP_PASSES: u32 = 20;
/// While waiting on a queue item at the head of its queue, how often the
/// full read (which settles a holder that expired) runs besides the cheap
/// status polls; further back, see [`full_read_every`].
const FULL_READ_EVERY: Duration = Duration::from_secs(1);
/// The longest gap between two full reads of a waiting queue item.
const FULL_READ_AT_MOST_EVERY: Duration = Duration::from_secs(10);
/// The longest one wait on a queue item may last.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
const HISTORY: u64 = 20;
/// The most waiting items placed by one read of their queues.
const PLACES_PER_READ: usize = 256;

/// A waiting queue item's place, asked of the read of the next batch.
struct PlaceRead {
    resources: Vec<String>,
    reply: oneshot::Sender<DomainResult<Arc<Placing>>>,
}

#[derive(Clone, Debug)]
pub struct LockService {
    tx: TransactionService,
    /// The places of waiting items asked for while others are being read
    /// are read together, in one read of all their resources' waiters:
    /// each of hundreds of waiters on a hot resource reads its place on
    /// every poll, and one read of the queue serves all those that asked
    /// during the read before it. Each answer is read after it was asked.
    places: Arc<Batcher<PlaceRead>>,
    /// More patient than the default: a hand-off that must lock a
    /// resource out of order may meet another doing the reverse, and a
    /// deadlock is resolved by re-running one of them.
    policy: RetryPolicy,
    idempotency: IdempotencyService,
    rules: Arc<LockRules>,
    events: Events,
}

impl LockService {
    pub fn new(
        tx: TransactionService,
        idempotency: IdempotencyService,
        rules: LockRules,
        wait_budget: Duration,
    ) -> Self {
        let mut policy = tx.policy().clone();
        policy.max_attempts = policy.max_attempts.max(LOCK_ATTEMPTS);
        Self {
            tx,
            places: Arc::new(Batcher::new(1, PLACES_PER_READ, wait_budget)),
            policy,
            idempotency,
            rules: Arc::new(rules),
            events: Events::default(),
        }
    }

    pub fn rules(&self) -> &LockRules {
        &self.rules
    }

    /// Tells the monitor and the waiters of changes committed elsewhere (a
    /// planned group's grants).
    pub(crate) fn publish(&self, events: Vec<LockEvent>) {
        self.events.publish(events);
    }

    /// Every change of a lock or queue item this process commits, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LockEvent> {
        self.events.subscribe()
    }

    fn conn(&self) -> &sea_orm::DatabaseConnection {
        &self.tx.db().conn
    }

    /// Grants, queues or refuses `req` (see [`Acquired`]); 409
    /// `ResourceLocked` and 429 `QueueFull` are errors.
    #[tracing::instrument(skip_all, fields(owner = %req.owner_id))]
    pub async fn acquire(&self, req: &AcquireRequest) -> DomainResult<Acquired> {
        let spec = req.validate()?;
        self.settle_expired(&spec.resources).await?;
        let (dedupe, max) = (self.rules.dedupe_ms, self.rules.queue_max);
        let spec = &spec;
        let result: DomainResult<Acquired> = async {
            Ok(in_store!(self, "lock_acquire", |s| s
                .acquire(spec, dedupe, max)
                .await?))
        }
        .await;
        count_conflict(&result);
        result
    }

    /// [`acquire`](Self::acquire) at most once per Idempotency-Key: the
    /// grant and the stored answer commit together. A conflict or a full
    /// queue is not stored (the same key may be retried).
    pub async fn acquire_once(
        &self,
        key: &IdempotentRequest,
        req: &AcquireRequest,
        render: impl Fn(&Acquired) -> StoredResponse,
        refuse: impl Fn(&DomainError) -> StoredResponse,
    ) -> DomainResult<Outcome> {
        let spec = req.validate()?;
        self.settle_expired(&spec.resources).await?;
        let (dedupe, max, aging) = (
            self.rules.dedupe_ms,
            self.rules.queue_max,
            self.rules.queue_aging_ms,
        );
        // Only the attempt that commits leaves its events here.
        let committed: Mutex<Vec<LockEvent>> = Mutex::new(Vec::new());
        let outcome = self
            .idempotency
            .run(
                "lock_acquire",
                key,
                |txn| {
                    let (spec, committed) = (&spec, &committed);
                    async move {
                        let mut s = Store::new(&txn, now_ms(), aging);
                        let acquired = s.acquire(spec, dedupe, max).await?;
                        if let Ok(mut slot) = committed.lock() {
                            *slot = s.into_events();
                        }
                        Ok(acquired)
                    }
                },
                render,
                refuse,
            )
            .await;
        count_conflict(&outcome);
        let outcome = outcome?;
        if !outcome.replayed {
            let events = committed.lock().map(|mut e| std::mem::take(&mut *e));
            self.events.publish(events.unwrap_or_default());
        }
        Ok(outcome)
    }

    /// Acquire, run and release in one transaction, for the uncontended
    /// case: when nothing at all is on `req`'s resources (no grant, no
    /// waiter, no identical lock within the dedupe window), they are
    /// granted, `op` runs with the grant in the same transaction and the
    /// lock is recorded there, released with `op`'s value as its result —
    /// one commit where `execute_with_lock` needs three. The grant is never
    /// seen active outside the transaction: its resources' fencing rows stay
    /// locked, with its token taken, until the commit, so a concurrent
    /// acquirer waits for it and then finds the finished lock. That is also
    /// the fence of what `op` writes: no other grant of these resources can
    /// exist before the write commits, and the write commits only with the
    /// grant. (The lock row is written finished, after `op`: a fence check
    /// against it inside `op` would refuse.) Its events (acquired,
    /// released) are published after the commit, as any lock's.
    ///
    /// Anything on the resources answers `Busy` with nothing done: the
    /// caller then acquires as usual, which settles, deduplicates, queues
    /// or refuses. `op` failing for good rolls the whole transaction back,
    /// grant included, and is answered `Declined` with its error.
    #[tracing::instrument(skip_all, fields(owner = %req.owner_id))]
    pub async fn run_at_once<T, F, Fut>(
        &self,
        req: &AcquireRequest,
        op: F,
    ) -> DomainResult<AtOnce<T>>
    where
        T: Serialize,
        F: Fn(Arc<DatabaseTransaction>, LockView) -> Fut,
        Fut: Future<Output = DomainResult<T>>,
    {
        let spec = req.validate()?;
        let (dedupe, aging) = (self.rules.dedupe_ms, self.rules.queue_aging_ms);
        let (spec, op) = (&spec, &op);
        let ran = self
            .tx
            .execute_or_roll_back("lock_run_at_once", &self.policy, |txn| async move {
                let mut s = Store::new(&txn, now_ms(), aging);
                let Some(grant) = s.take_if_free(spec, dedupe).await? else {
                    return Ok(Err(AtOnce::Busy));
                };
                let view = LockView::from_row(grant.clone(), s.now);
                let value = match op(Arc::clone(&txn), view).await {
                    Ok(value) => value,
                    Err(e) if e.is_transient() => return Err(e),
                    Err(e) => return Ok(Err(AtOnce::Declined(e))),
                };
                let result = serde_json::to_value(&value).map_err(DomainError::unexpected)?;
                let how = Release {
                    result: Some(result),
                    ..Release::default()
                };
                s.record_own(grant, &spec.owner_id, &how).await?;
                Ok(Ok((value, s.into_events())))
            })
            .await?;
        match ran {
            Ok((value, events)) => {
                self.events.publish(events);
                Ok(AtOnce::Ran(value))
            }
            Err(not_now) => Ok(not_now),
        }
    }

    /// Expiry is enforced where it is read: before deciding about
    /// `resources`, any grant on them past its expiry is ended and its
    /// waiters served, in a transaction of its own, so that this happens
    /// even when the request itself is then refused.
    async fn settle_expired(&self, resources: &[String]) -> DomainResult<()> {
        let now = now_ms();
        let stale = active_on(self.conn(), resources)
            .await?
            .iter()
            .any(|l| l.expires_at_ms <= now);
        if stale {
            in_store!(self, "lock_settle", |s| s.settle(resources).await?);
        }
        Ok(())
    }

    pub async fn lock(&self, lock_id: &str) -> DomainResult<LockView> {
        lock::Entity::find_by_id(lock_id.to_owned())
            .one(self.conn())
            .await?
            .map(|row| LockView::from_row(row, now_ms()))
            .ok_or(DomainError::NotFound("lock"))
    }

    /// Heartbeat: a new expiry `ttl_ms` from now, the same token. Only an
    /// active, unexpired grant (with `fencing_token`, when given) is
    /// extended; otherwise `LockLost`.
    #[tracing::instrument(skip(self))]
    pub async fn extend(
        &self,
        lock_id: &str,
        ttl_ms: u64,
        fencing_token: Option<i64>,
    ) -> DomainResult<LockView> {
        resource::validate_ttl(ttl_ms)?;
        let ttl = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        let view = self
            .tx
            .execute_with_policy("lock_extend", &self.policy, |txn| async move {
                let now = now_ms();
                let mut update = lock::Entity::update_many()
                    .col_expr(lock::Column::ExpiresAtMs, Expr::value(now + ttl))
                    .filter(lock::Column::Id.eq(lock_id))
                    .filter(lock::Column::Status.eq("active"))
                    .filter(lock::Column::ExpiresAtMs.gt(now));
                if let Some(token) = fencing_token {
                    update = update.filter(lock::Column::FencingToken.eq(token));
                }
                let done = update.exec(&*txn).await?;
                let row = lock::Entity::find_by_id(lock_id.to_owned())
                    .one(&*txn)
                    .await?
                    .ok_or(DomainError::NotFound("lock"))?;
                if done.rows_affected != 1 {
                    return Ok(Err(super::lost(format!(
                        "the lock is {}",
                        LockView::from_row(row, now).status.as_str()
                    ))));
                }
                Ok(Ok(LockView::from_row(row, now)))
            })
            .await??;
        self.events.publish(vec![LockEvent::lock(
            EventKind::Extended,
            view.clone(),
            now_ms(),
        )]);
        Ok(view)
    }

    /// Ends a grant: `released`, or `failed` when `how.error` is given;
    /// `by` is recorded as `released_by`. The head of each of its
    /// resources' queues is granted in the same transaction. `LockLost` when
    /// it is no longer active (an expired grant found here is marked so and
    /// its waiters served first).
    #[tracing::instrument(skip(self, how), fields(force = how.force))]
    pub async fn release(&self, lock_id: &str, by: &str, how: Release) -> DomainResult<LockView> {
        if how.force && how.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
            return Err(DomainError::invalid(
                "reason",
                "a forced release must say why",
            ));
        }
        let how = &how;
        in_store!(self, "lock_release", |s| s
            .release(lock_id, by, how)
            .await?)
    }

    /// A queue item as of now: position, estimate, and its lock once
    /// granted. A waiter that may have been missed (its holder expired, or
    /// the one ahead gave up) is settled first.
    pub async fn queue_item(&self, queue_id: i64) -> DomainResult<QueueItemView> {
        let item = self.read_queue_item(queue_id).await?;
        if item.status == QueueStatus::Expired && item.lock.is_none() {
            let row = queue_row::Entity::find_by_id(queue_id)
                .one(self.conn())
                .await?;
            if row.is_some_and(|r| r.status == "pending") {
                return Ok(in_store!(self, "lock_queue_expire", |s| s
                    .end_queue_item(queue_id, false)
                    .await?));
            }
            return Ok(item);
        }
        if item.status != QueueStatus::Pending {
            return Ok(item);
        }
        let now = now_ms();
        let holders = active_on(self.conn(), &item.resources).await?;
        let stale = holders.iter().any(|l| l.expires_at_ms <= now);
        let free = holders.iter().all(|l| l.expires_at_ms <= now);
        if stale || (free && item.position == 1) {
            let resources = &item.resources;
            in_store!(self, "lock_settle", |s| s.settle(resources).await?);
            return self.read_queue_item(queue_id).await;
        }
        Ok(item)
    }

    async fn read_queue_item(&self, queue_id: i64) -> DomainResult<QueueItemView> {
        let now = now_ms();
        let row = queue_row::Entity::find_by_id(queue_id)
            .one(self.conn())
            .await?
            .ok_or(DomainError::NotFound("queue item"))?;
        let mut item = QueueItemView::from_row(row, now, self.rules.queue_aging_ms);
        if item.status == QueueStatus::Pending {
            self.place(&mut item).await?;
        } else {
            annotate(
                self.conn(),
                std::slice::from_mut(&mut item),
                now,
                self.rules.queue_aging_ms,
            )
            .await?;
        }
        Ok(item)
    }

    /// Sets a pending item's position and wait estimate, read in the next
    /// batch of places (see `places`).
    async fn place(&self, item: &mut QueueItemView) -> DomainResult<()> {
        let resources = item.resources.clone();
        let ticket = self.places.push(
            |reply| PlaceRead { resources, reply },
            || {
                let (conn, aging) = (self.conn().clone(), self.rules.queue_aging_ms);
                move |batch| {
                    let conn = conn.clone();
                    async move { read_places(&conn, batch, aging).await }
                }
            },
        );
        self.places.answer(ticket).await?.place(item);
        Ok(())
    }

    /// Answers when the item is no longer pending or after `wait` (at most
    /// [`MAX_WAIT`]): at once on a grant made by this process, within one
    /// poll interval on a grant made by another.
    pub async fn wait_queue_item(
        &self,
        queue_id: i64,
        wait: Duration,
    ) -> DomainResult<QueueItemView> {
        let mut changes = self.events.subscribe();
        let deadline = Instant::now() + wait.min(MAX_WAIT);
        // The full read (position, wait estimate, settling a holder that
        // expired) costs a scan of the resource's queue: with hundreds of
        // waiters polling, doing it on every poll starves the hand-offs
        // themselves. So a poll reads only the item's status, and the full
        // read runs when it changed, at the deadline, or once a second at
        // the head of the queue and less often further back.
        let mut item = self.queue_item(queue_id).await?;
        let mut full_at = Instant::now();
        loop {
            let now = Instant::now();
            if item.status != QueueStatus::Pending || now >= deadline {
                return Ok(item);
            }
            let nap = self.rules.poll.min(deadline - now);
            tokio::select! {
                () = changed(&mut changes, queue_id) => {}
                () = tokio::time::sleep(nap) => {}
            }
            let still_pending = queue_row::Entity::find_by_id(queue_id)
                .one(self.conn())
                .await?
                .is_some_and(|row| row.status == "pending");
            let now = Instant::now();
            if !still_pending || now >= deadline || now - full_at >= full_read_every(item.position)
            {
                item = self.queue_item(queue_id).await?;
                full_at = now;
            }
        }
    }

    /// Takes a waiter out of the queue (`cancelled`); one that is no longer
    /// pending is returned as it is.
    pub async fn cancel(&self, queue_id: i64) -> DomainResult<QueueItemView> {
        Ok(in_store!(self, "lock_queue_cancel", |s| s
            .end_queue_item(queue_id, true)
            .await?))
    }

    /// Locks (newest first) and waiters (in queue order), filtered.
    pub async fn list(&self, filter: &LockFilter) -> DomainResult<LockList> {
        let now = now_ms();
        let aging = self.rules.queue_aging_ms;
        let limit = filter.limit.clamp(1, 500);
        let lock_status = filter.status.as_deref().and_then(LockStatus::parse);
        let queue_status = filter.status.as_deref().and_then(QueueStatus::parse);
        if let Some(s) = &filter.status
            && lock_status.is_none()
            && queue_status.is_none()
        {
            return Err(DomainError::invalid(
                "status",
                format!("{s:?} is not a lock or queue status"),
            ));
        }
        let mut locks = Vec::new();
        if filter.status.is_none() || lock_status.is_some() {
            let mut query = lock::Entity::find();
            if let Some(o) = &filter.owner_id {
                query = query.filter(lock::Column::OwnerId.eq(o.clone()));
            }
            if let Some(wanted) = lock_status {
                query = query.filter(status_as_of(
                    lock::Column::Status,
                    lock::Column::ExpiresAtMs,
                    wanted.as_str(),
                    LockStatus::Active.as_str(),
                    now,
                ));
            }
            locks = self
                .newest_first(query, filter.resource_id.as_deref(), limit, now)
                .await?;
        }
        let mut queue = Vec::new();
        if filter.status.is_none() || queue_status.is_some() {
            let status = queue_status.unwrap_or(QueueStatus::Pending);
            let rows = if status == QueueStatus::Pending {
                match &filter.resource_id {
                    Some(r) => pending_on(self.conn(), std::slice::from_ref(r), now, aging).await?,
                    None => {
                        let all = self.pending_resources().await?;
                        pending_on(self.conn(), &all, now, aging).await?
                    }
                }
            } else {
                let query =
                    queue_row::Entity::find().filter(queue_row::Column::Status.eq(status.as_str()));
                let query = match &filter.resource_id {
                    Some(r) => newest_on::<_, qr::Entity>(
                        query,
                        (qr::Column::QueueId, queue_row::Column::Id),
                        (qr::Column::ResourceId, r),
                        qr::Column::QueueId,
                    ),
                    None => query.order_by_desc(queue_row::Column::Id),
                };
                query.limit(limit).all(self.conn()).await?
            };
            queue = rows
                .into_iter()
                .filter(|q| filter.owner_id.as_ref().is_none_or(|o| &q.owner_id == o))
                .take(usize::try_from(limit).unwrap_or(500))
                .map(|q| QueueItemView::from_row(q, now, aging))
                .collect();
            annotate(self.conn(), &mut queue, now, aging).await?;
        }
        Ok(LockList { locks, queue })
    }

    /// The first `limit` locks `query` finds, the latest granted first, as
    /// of `now`. On one resource, the read walks back through the
    /// resource's grants by fencing token (which grows with each grant of
    /// it) and stops at `limit`, however many grants the resource has had.
    async fn newest_first(
        &self,
        query: Select<lock::Entity>,
        resource_id: Option<&str>,
        limit: u64,
        now: i64,
    ) -> DomainResult<Vec<LockView>> {
        let query = match resource_id {
            Some(r) => newest_on::<_, lr::Entity>(
                query,
                (lr::Column::LockId, lock::Column::Id),
                (lr::Column::ResourceId, r),
                lr::Column::FencingToken,
            ),
            None => query.order_by_desc(lock::Column::AcquiredAtMs),
        };
        Ok(query
            .limit(limit)
            .all(self.conn())
            .await?
            .into_iter()
            .map(|row| LockView::from_row(row, now))
            .collect())
    }

    /// Every resource some pending waiter wants.
    async fn pending_resources(&self) -> DomainResult<Vec<String>> {
        let rows = queue_row::Entity::find()
            .filter(queue_row::Column::Status.eq("pending"))
            .select_only()
            .column(queue_row::Column::Resources)
            .into_tuple::<String>()
            .all(self.conn())
            .await?;
        let mut all: Vec<String> = rows.iter().flat_map(|r| names(r)).collect();
        all.sort();
        all.dedup();
        Ok(all)
    }

    pub async fn check(&self, resource_id: &str) -> DomainResult<ResourceCheck> {
        let info = self.resource_queue_and_lock(resource_id).await?;
        Ok(ResourceCheck {
            resource_id: resource_id.to_owned(),
            is_locked: info.0.is_some(),
            active_locks: i64::from(info.0.is_some()),
            queue_length: i64::try_from(info.1.len()).unwrap_or(i64::MAX),
        })
    }

    async fn resource_queue_and_lock(
        &self,
        resource_id: &str,
    ) -> DomainResult<(Option<LockView>, Vec<QueueItemView>)> {
        if !resource::is_valid_resource(resource_id) {
            return Err(DomainError::invalid(
                "resource_id",
                "not a resource name (^[a-z][a-z0-9_]*(:[A-Za-z0-9_.-]+)*$)",
            ));
        }
        let now = now_ms();
        let aging = self.rules.queue_aging_ms;
        let one = std::slice::from_ref(&resource_id)
            .iter()
            .map(|r| (*r).to_owned());
        let one: Vec<String> = one.collect();
        let lock = active_on(self.conn(), &one)
            .await?
            .into_iter()
            .find(|l| l.expires_at_ms > now)
            .map(|l| LockView::from_row(l, now));
        let mut queue: Vec<QueueItemView> = pending_on(self.conn(), &one, now, aging)
            .await?
            .into_iter()
            .map(|q| QueueItemView::from_row(q, now, aging))
            .collect();
        annotate(self.conn(), &mut queue, now, aging).await?;
        Ok((lock, queue))
    }

    /// The resource's live lock, its waiters in order, and its last 20 locks.
    pub async fn resource(&self, resource_id: &str) -> DomainResult<ResourceInfo> {
        let (lock, queue) = self.resource_queue_and_lock(resource_id).await?;
        let now = now_ms();
        let history = self
            .newest_first(lock::Entity::find(), Some(resource_id), HISTORY, now)
            .await?;
        Ok(ResourceInfo {
            resource_id: resource_id.to_owned(),
            lock,
            queue,
            history,
        })
    }

    /// Admin: ends the grants chosen by `lock_id` or `owner_id`. Without
    /// `force` only grants already past their expiry are ended (marked
    /// `expired`); with it, live ones are released as forced by `by`.
    /// Returns how many were ended.
    pub async fn release_matching(
        &self,
        lock_id: Option<&str>,
        owner_id: Option<&str>,
        force: bool,
        by: &str,
        reason: Option<&str>,
    ) -> DomainResult<u64> {
        if lock_id.is_none() == owner_id.is_none() {
            return Err(DomainError::invalid(
                "lock_id",
                "name exactly one of lock_id and owner_id",
            ));
        }
        let mut query = lock::Entity::find().filter(lock::Column::Status.eq("active"));
        if let Some(id) = lock_id {
            query = query.filter(lock::Column::Id.eq(id));
        }
        if let Some(owner) = owner_id {
            query = query.filter(lock::Column::OwnerId.eq(owner));
        }
        let rows = query.all(self.conn()).await?;
        let reason = reason
            .filter(|r| !r.trim().is_empty())
            .unwrap_or("released by an administrator");
        let mut ended = 0;
        for row in rows {
            let now = now_ms();
            if row.expires_at_ms <= now {
                let resources = &names(&row.resources);
                in_store!(self, "lock_settle", |s| s.settle(resources).await?);
                ended += 1;
            } else if force {
                let how = Release {
                    force: true,
                    reason: Some(reason.to_owned()),
                    fencing_token: Some(row.fencing_token),
                    ..Release::default()
                };
                match self.release(&row.id, by, how).await {
                    Ok(_) => ended += 1,
                    // Ended meanwhile by its owner or by expiry.
                    Err(DomainError::LockLost(_) | DomainError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(ended)
    }

    pub async fn stats(&self) -> DomainResult<LockStats> {
        let now = now_ms();
        let conn = self.conn();
        let queued = queue_row::Entity::find()
            .filter(queue_row::Column::Status.eq("pending"))
            .filter(queue_row::Column::DeadlineMs.gt(now))
            .count(conn)
            .await?;
        let stats = LockStats {
            queued: i64::try_from(queued).unwrap_or(i64::MAX),
            ..tally::totals(conn, now).await?
        };
        let m = &metrics().locks;
        m.active.set(stats.active);
        m.queue_depth.set(stats.queued);
        Ok(stats)
    }

    /// Marks expired grants and waiters (serving the waiters behind them),
    /// deletes finished records older than the retention and tallies the
    /// grants finished since the last pass for the statistics (`tally`).
    /// Never touches a live grant: every change is guarded by status and
    /// expiry.
    #[tracing::instrument(skip(self))]
    pub async fn cleanup(&self) -> DomainResult<CleanupReport> {
        let now = now_ms();
        let mut report = CleanupReport::default();
        let stale = lock::Entity::find()
            .filter(lock::Column::Status.eq("active"))
            .filter(lock::Column::ExpiresAtMs.lte(now))
            .limit(CLEANUP_BATCH)
            .all(self.conn())
            .await?;
        for row in stale {
            let resources = &names(&row.resources);
            let expired = in_store!(self, "lock_cleanup", |s| {
                s.settle(resources).await?;
                s.expired_count()
            });
            report.expired += expired;
        }
        let late = queue_row::Entity::find()
            .filter(queue_row::Column::Status.eq("pending"))
            .filter(queue_row::Column::DeadlineMs.lte(now))
            .limit(CLEANUP_BATCH)
            .all(self.conn())
            .await?;
        for row in late {
            let id = row.id;
            let item = in_store!(self, "lock_cleanup", |s| s
                .end_queue_item(id, false)
                .await?);
            if item.status == QueueStatus::Expired {
                report.expired += 1;
            }
        }
        let cutoff = now.saturating_sub(self.rules.retention_ms);
        // Purged first: a grant past the retention and not tallied yet (a
        // backlog after an upgrade) is deleted without being counted in and
        // out again.
        report.purged = self
            .in_batches("lock_purge", |txn| async move {
                tally::purge_finished(&*txn, cutoff, tally::BATCH).await
            })
            .await?;
        self.in_batches("lock_tally", |txn| async move {
            tally::tally_finished(&*txn, tally::BATCH).await
        })
        .await?;
        let purged_items = queue_row::Entity::delete_many()
            .filter(queue_row::Column::Status.ne("pending"))
            .filter(queue_row::Column::FinishedAtMs.lt(cutoff))
            .exec(self.conn())
            .await?;
        report.purged += purged_items.rows_affected;
        self.stats().await?;
        Ok(report)
    }

    /// Runs `batch` (one transaction each) until it does less than a full
    /// batch, at most `CLEANUP_PASSES` times: a backlog (after an upgrade,
    /// or a long stop) is worked off over several passes, not in one long
    /// one. Returns the rows done.
    async fn in_batches<F, Fut>(&self, name: &'static str, batch: F) -> DomainResult<u64>
    where
        F: Fn(Arc<DatabaseTransaction>) -> Fut,
        Fut: Future<Output = DomainResult<u64>>,
    {
        let mut done = 0;
        for _ in 0..CLEANUP_PASSES {
            let n = self
                .tx
                .execute_with_policy(name, &self.policy, &batch)
                .await?;
            done += n;
            if n < tally::BATCH.unsigned_abs() {
                break;
            }
        }
        Ok(done)
    }

    /// Emergency: releases every active grant and cancels every waiter.
    pub async fn clear_all(&self, by: &str, reason: &str) -> DomainResult<ClearReport> {
        if reason.trim().is_empty() {
            return Err(DomainError::invalid("reason", "say why"));
        }
        let (released, cancelled) =
            in_store!(self, "lock_clear_all", |s| s.clear_all(by, reason).await?);
        Ok(ClearReport {
            released,
            cancelled,
        })
    }

    /// The fence a protected write runs behind, inside its own transaction:
    /// `Ok` only if `lock_id` is active, unexpired, owned by `owner` (or
    /// asked for by it) and holds `fencing_token`; otherwise `LockLost`,
    /// and the write must not happen. On PostgreSQL the lock cannot end
    /// until that transaction does.
    pub async fn check_fence(
        txn: &DatabaseTransaction,
        lock_id: &str,
        fencing_token: i64,
        owner: &str,
    ) -> DomainResult<()> {
        store::check_fence(txn, lock_id, fencing_token, owner, now_ms()).await
    }

    /// Acquires `request` (waiting in the queue when it says so), runs `op`
    /// with the grant, and releases it with `op`'s result (as JSON) or its
    /// error (`failed`), always: also when `op` fails or panics, and, from a
    /// spawned task, when the caller stops waiting halfway. An identical
    /// request within the dedupe window does not run `op` again:
    /// `LockedRun::Deduplicated` carries the first one's lock.
    pub async fn execute_with_lock<T, F, Fut>(
        &self,
        request: AcquireRequest,
        op: F,
    ) -> DomainResult<LockedRun<T>>
    where
        T: Serialize,
        F: FnOnce(LockView) -> Fut,
        Fut: Future<Output = DomainResult<T>>,
    {
        let owner = request.owner_id.clone();
        let lock = match self.acquire(&request).await? {
            Acquired::Granted(lock) => lock,
            Acquired::Deduplicated(lock) => return Ok(LockedRun::Deduplicated(Box::new(lock))),
            Acquired::Queued(item) => self.granted(item).await?,
        };
        self.run_locked(lock, &owner, op).await.map(LockedRun::Ran)
    }

    /// Runs `op` with a lock already granted to `owner`, then releases it
    /// with `op`'s result or error — also when `op` fails or panics, and,
    /// from a spawned task, when the caller stops waiting halfway.
    pub async fn run_locked<T, F, Fut>(&self, lock: LockView, owner: &str, op: F) -> DomainResult<T>
    where
        T: Serialize,
        F: FnOnce(LockView) -> Fut,
        Fut: Future<Output = DomainResult<T>>,
    {
        let owner = owner.to_owned();
        let mut guard = ReleaseGuard {
            service: self.clone(),
            lock_id: lock.lock_id.clone(),
            fencing_token: lock.fencing_token,
            owner: owner.clone(),
            armed: true,
        };
        let token = lock.fencing_token;
        let lock_id = lock.lock_id.clone();
        let ran = AssertUnwindSafe(op(lock)).catch_unwind().await;
        guard.armed = false;
        let (how, outcome) = match ran {
            Ok(Ok(value)) => {
                let result = serde_json::to_value(&value).map_err(DomainError::unexpected)?;
                (
                    Release {
                        result: Some(result),
                        ..Release::default()
                    },
                    Ok(value),
                )
            }
            Ok(Err(e)) => (
                Release {
                    error: Some(e.to_string()),
                    ..Release::default()
                },
                Err(e),
            ),
            Err(_) => (
                Release {
                    error: Some("the operation panicked".into()),
                    ..Release::default()
                },
                Err(DomainError::unexpected(
                    "the operation under the lock panicked",
                )),
            ),
        };
        let how = Release {
            fencing_token: Some(token),
            ..how
        };
        if let Err(e) = self.release(&lock_id, &owner, how).await {
            // The lease ran out while `op` ran; what `op` wrote was fenced
            // by the token in its own transaction.
            tracing::warn!(lock_id, error = %e, "the lock could not be released after its operation");
        }
        outcome
    }

    /// Waits for a queued request to be granted (until its deadline).
    pub async fn granted(&self, item: QueueItemView) -> DomainResult<LockView> {
        let mut item = item;
        loop {
            if let Some(lock) = item
                .lock
                .clone()
                .filter(|_| item.status == QueueStatus::Granted)
            {
                return Ok(lock);
            }
            if item.status != QueueStatus::Pending {
                return Err(DomainError::ResourceLocked {
                    conflicts: item.resources,
                });
            }
            item = self.wait_queue_item(item.queue_id, MAX_WAIT).await?;
        }
    }

    /// One cleanup pass per tick until the task is aborted.
    pub async fn run_cleanup_job(self) {
        let Some(every) = self.rules.cleanup_every else {
            return;
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match self.cleanup().await {
                Ok(r) if r.expired > 0 || r.purged > 0 => {
                    tracing::info!(expired = r.expired, purged = r.purged, "lock cleanup");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "lock cleanup failed"),
            }
        }
    }
}

fn count_conflict<T>(result: &DomainResult<T>) {
    if matches!(result, Err(DomainError::ResourceLocked { .. })) {
        metrics().locks.conflicts.inc();
    }
}

/// How often a waiter at `position` in its queue (1: the head) reads its
/// whole item: once a second at the head, once every `position` seconds
/// behind it, at most [`FULL_READ_AT_MOST_EVERY`]. Only the head can be
/// granted a free resource, and a holder that expired is settled by the
/// first waiter to see it; the ones further back only refresh their
/// position and estimate, which they answer at the deadline anyway. With 200
/// waiters on one resource, a full read each second each made 200 scans of
/// a 200-row queue a second and cut the hand-offs to a third.
fn full_read_every(position: i64) -> Duration {
    let behind = u32::try_from(position.max(1)).unwrap_or(u32::MAX);
    FULL_READ_EVERY
        .saturating_mul(behind)
        .min(FULL_READ_AT_MOST_EVERY)
}

/// Reads the waiters of every resource a batch of places asks about, once,
/// and answers each with that read; a failure answers them all.
async fn read_places(conn: &sea_orm::DatabaseConnection, batch: Vec<PlaceRead>, aging_ms: u64) {
    let sets: BTreeSet<Vec<String>> = batch.iter().map(|p| p.resources.clone()).collect();
    match Placing::read(conn, &sets, now_ms(), aging_ms).await {
        Ok(placing) => {
            let placing = Arc::new(placing);
            for read in batch {
                let _ = read.reply.send(Ok(Arc::clone(&placing)));
            }
        }
        Err(e) => {
            for read in batch {
                let _ = read.reply.send(Err(DomainError::shared(&e)));
            }
        }
    }
}

/// Resolves when an event about `queue_id` arrives (or events were missed).
async fn changed(changes: &mut broadcast::Receiver<LockEvent>, queue_id: i64) {
    loop {
        match changes.recv().await {
            Ok(e)
                if e.queue_item
                    .as_ref()
                    .is_some_and(|q| q.queue_id == queue_id) =>
            {
                return;
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            // The service outlives its subscribers; should it not, the poll
            // still wakes the waiter.
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

/// Releases a grant whose caller went away before its operation finished
/// (the future was dropped): in a spawned task, since drop cannot wait.
struct ReleaseGuard {
    service: LockService,
    lock_id: String,
    fencing_token: i64,
    owner: String,
    armed: bool,
}

impl Drop for ReleaseGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (service, lock_id, owner) = (
            self.service.clone(),
            std::mem::take(&mut self.lock_id),
            std::mem::take(&mut self.owner),
        );
        let how = Release {
            error: Some("abandoned: the caller stopped waiting".into()),
            fencing_token: Some(self.fencing_token),
            ..Release::default()
        };
        runtime.spawn(async move {
            if let Err(e) = service.release(&lock_id, &owner, how).await {
                tracing::warn!(lock_id, error = %e, "releasing an abandoned lock failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locks::{LockStatus, WaitMode};

    use crate::testing::ledger;

    #[test]
    fn waiters_further_back_read_their_whole_item_less_often() {
        let secs = |p| full_read_every(p).as_secs();
        assert_eq!(secs(1), 1);
        assert_eq!(secs(3), 3);
        assert_eq!(secs(10), 10);
        assert_eq!(secs(200), 10);
        assert_eq!(secs(i64::MAX), 10);
        // no position yet (not pending): as at the head
        assert_eq!(secs(0), 1);
        assert_eq!(secs(-1), 1);
    }

    fn request(owner: &str, resources: &[&str], wait: WaitMode) -> AcquireRequest {
        AcquireRequest {
            resources: resources.iter().map(|r| (*r).to_owned()).collect(),
            ttl_ms: Some(1_000),
            priority: None,
            transaction_type: "test".into(),
            transaction_data: Some(serde_json::json!({"owner": owner})),
            wait,
            queue_timeout_ms: None,
            owner_id: owner.into(),
            requested_by: owner.into(),
            fenced_work: false,
        }
    }

    fn granted(a: Acquired) -> LockView {
        match a {
            Acquired::Granted(l) => l,
            other => panic!("not granted: {other:?}"),
        }
    }

    /// Acquires `resources` for `owner` without waiting; it must be granted.
    async fn acquire_now(locks: &LockService, owner: &str, resources: &[&str]) -> LockView {
        granted(
            locks
                .acquire(&request(owner, resources, WaitMode::Fail))
                .await
                .unwrap(),
        )
    }

    #[tokio::test]
    async fn release_hands_the_resource_to_the_queue_head_with_a_higher_token() {
        let dir = tempfile::tempdir().unwrap();
        let locks = ledger(&dir).await.locks;
        let first = acquire_now(&locks, "user:1", &["item:a"]).await;
        let refused = locks
            .acquire(&request("user:2", &["item:a", "item:b"], WaitMode::Fail))
            .await;
        assert!(
            matches!(&refused, Err(DomainError::ResourceLocked { conflicts }) if conflicts == &["item:a"])
        );
        let Acquired::Queued(item) = locks
            .acquire(&request("user:2", &["item:a"], WaitMode::Queue))
            .await
            .unwrap()
        else {
            panic!("not queued")
        };
        assert_eq!(item.position, 1);
        let released = locks
            .release(&first.lock_id, "user:1", Release::default())
            .await
            .unwrap();
        assert_eq!(released.status, LockStatus::Released);
        let item = locks.queue_item(item.queue_id).await.unwrap();
        assert_eq!(item.status, QueueStatus::Granted);
        let second = item.lock.unwrap();
        assert!(second.fencing_token > first.fencing_token);
        // the old holder is fenced off, the new one is admitted
        let txn = sea_orm::TransactionTrait::begin(locks.conn())
            .await
            .unwrap();
        let old =
            LockService::check_fence(&txn, &first.lock_id, first.fencing_token, "user:1").await;
        assert!(matches!(old, Err(DomainError::LockLost(_))));
        LockService::check_fence(&txn, &second.lock_id, second.fencing_token, "user:2")
            .await
            .unwrap();
        txn.rollback().await.unwrap();
    }

    #[tokio::test]
    async fn an_expired_lock_is_free_at_once_and_cannot_be_released() {
        let dir = tempfile::tempdir().unwrap();
        let locks = ledger(&dir).await.locks;
        let first = acquire_now(&locks, "user:1", &["item:a"]).await;
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let second = acquire_now(&locks, "user:2", &["item:a"]).await;
        assert!(second.fencing_token > first.fencing_token);
        assert_eq!(
            locks.lock(&first.lock_id).await.unwrap().status,
            LockStatus::Expired
        );
        let late = locks
            .release(&first.lock_id, "user:1", Release::default())
            .await;
        assert!(matches!(late, Err(DomainError::LockLost(_))));
        let extended = locks.extend(&first.lock_id, 5_000, None).await;
        assert!(matches!(extended, Err(DomainError::LockLost(_))));
    }

    #[tokio::test]
    async fn an_expired_lock_deduplicates_unless_its_work_was_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let locks = ledger(&dir).await.locks;
        // The shortest lease there is: 1 s.
        let req = request("user:1", &["item:a"], WaitMode::Fail);
        let first = granted(locks.acquire(&req).await.unwrap());
        // While it is active, identical requests of both kinds are its.
        let fenced = AcquireRequest {
            fenced_work: true,
            ..req.clone()
        };
        for r in [&req, &fenced] {
            assert!(matches!(
                locks.acquire(r).await.unwrap(),
                Acquired::Deduplicated(l) if l.lock_id == first.lock_id
            ));
        }
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        // Expired: the holder's own work may have happened outside …
        let Acquired::Deduplicated(seen) = locks.acquire(&req).await.unwrap() else {
            panic!("an expired lock must deduplicate a lock API request")
        };
        assert_eq!(
            (seen.lock_id.as_str(), seen.status),
            (first.lock_id.as_str(), LockStatus::Expired)
        );
        // … but fenced work cannot have landed: granted anew, above it.
        let again = granted(locks.acquire(&fenced).await.unwrap());
        assert!(again.fencing_token > first.fencing_token);
        // and that new lock deduplicates as any active one
        assert!(matches!(
            locks.acquire(&fenced).await.unwrap(),
            Acquired::Deduplicated(l) if l.lock_id == again.lock_id
        ));
    }

    #[tokio::test]
    async fn execute_with_lock_releases_on_success_error_and_dedupes() {
        let dir = tempfile::tempdir().unwrap();
        let locks = ledger(&dir).await.locks;
        let ran = locks
            .execute_with_lock(
                request("user:1", &["item:a"], WaitMode::Fail),
                |lock| async move { Ok(lock.fencing_token) },
            )
            .await
            .unwrap();
        let LockedRun::Ran(token) = ran else {
            panic!("did not run")
        };
        // the same work again is answered with the first lock and its result
        let again = locks
            .execute_with_lock(
                request("user:1", &["item:a"], WaitMode::Fail),
                |_| async move { Ok(0) },
            )
            .await
            .unwrap();
        let LockedRun::Deduplicated(first) = again else {
            panic!("ran twice")
        };
        assert_eq!(first.status, LockStatus::Released);
        assert_eq!(first.result, Some(serde_json::json!(token)));
        let failed = locks
            .execute_with_lock(
                request("user:2", &["item:a"], WaitMode::Fail),
                |_| async move { Err::<(), _>(DomainError::SameAccount) },
            )
            .await;
        assert!(matches!(failed, Err(DomainError::SameAccount)));
        let list = locks
            .list(&LockFilter {
                owner_id: Some("user:2".into()),
                limit: 10,
                ..LockFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(list.locks[0].status, LockStatus::Failed);
        assert!(list.locks[0].error.is_some());
        // nothing is left held
        assert!(!locks.check("item:a").await.unwrap().is_locked);
    }

    /// The kinds of the events published so far, oldest first.
    fn kinds(changes: &mut broadcast::Receiver<LockEvent>) -> Vec<EventKind> {
        std::iter::from_fn(|| changes.try_recv().ok())
            .map(|e| e.kind)
            .collect()
    }

    #[tokio::test]
    async fn run_at_once_grants_runs_and_releases_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let locks = ledger(&dir).await.locks;
        let before = acquire_now(&locks, "user:9", &["item:a"]).await;
        locks
            .release(&before.lock_id, "user:9", Release::default())
            .await
            .unwrap();
        let mut changes = locks.subscribe();
        let ran = locks
            .run_at_once(
                &request("user:1", &["item:a"], WaitMode::Fail),
                |_, lock| async move {
                    // the grant is active inside the transaction
                    assert!(lock.is_active());
                    Ok(lock.fencing_token)
                },
            )
            .await
            .unwrap();
        let AtOnce::Ran(token) = ran else {
            panic!("did not run: {ran:?}")
        };
        assert!(token > before.fencing_token, "tokens only grow");
        // the history shows the grant and its release, with the result
        assert_eq!(
            kinds(&mut changes),
            [EventKind::Acquired, EventKind::Released]
        );
        let info = locks.resource("item:a").await.unwrap();
        assert!(info.lock.is_none(), "nothing is left held");
        let record = &info.history[0];
        assert_eq!(record.status, LockStatus::Released);
        assert_eq!(record.result, Some(serde_json::json!(token)));
        assert_eq!(record.released_by.as_deref(), Some("user:1"));
        // the same work again does not run: acquiring answers the first lock
        let same = request("user:1", &["item:a"], WaitMode::Fail);
        let again = locks
            .run_at_once(&same, |_, _| async move { Ok(0) })
            .await
            .unwrap();
        assert!(matches!(again, AtOnce::Busy), "ran twice: {again:?}");
        let Acquired::Deduplicated(first) = locks.acquire(&same).await.unwrap() else {
            panic!("not deduplicated")
        };
        assert_eq!(first.result, Some(serde_json::json!(token)));
    }

    #[tokio::test]
    async fn run_at_once_leaves_a_held_or_awaited_resource_alone() {
        let dir = tempfile::tempdir().unwrap();
        let locks = ledger(&dir).await.locks;
        let never = |_, _| async move { Err::<(), _>(DomainError::unexpected("ran while busy")) };
        let holder = acquire_now(&locks, "user:1", &["item:a"]).await;
        for wait in [WaitMode::Fail, WaitMode::Queue] {
            let busy = locks
                .run_at_once(&request("user:2", &["item:a"], wait), never)
                .await
                .unwrap();
            assert!(matches!(busy, AtOnce::Busy), "{busy:?}");
        }
        let info = locks.resource("item:a").await.unwrap();
        assert_eq!(info.lock.unwrap().lock_id, holder.lock_id);
        assert!(info.queue.is_empty(), "queued by a run at once");
        // a waiter for b and c, held up by c only: b is free but awaited,
        // so a run at once on b does not take it from under the waiter
        let on_c = acquire_now(&locks, "user:1", &["item:c"]).await;
        let Acquired::Queued(item) = locks
            .acquire(&request("user:2", &["item:b", "item:c"], WaitMode::Queue))
            .await
            .unwrap()
        else {
            panic!("not queued")
        };
        let busy = locks
            .run_at_once(&request("user:3", &["item:b"], WaitMode::Fail), never)
            .await
            .unwrap();
        assert!(matches!(busy, AtOnce::Busy), "{busy:?}");
        locks
            .release(&on_c.lock_id, "user:1", Release::default())
            .await
            .unwrap();
        let item = locks.queue_item(item.queue_id).await.unwrap();
        assert_eq!(item.status, QueueStatus::Granted);
    }

    #[tokio::test]
    async fn a_declined_run_at_once_leaves_no_lock_behind() {
        let dir = tempfile::tempdir().unwrap();
        let locks = ledger(&dir).await.locks;
        let mut changes = locks.subscribe();
        let declined = locks
            .run_at_once(
                &request("user:1", &["item:a"], WaitMode::Fail),
                |_, _| async move { Err::<(), _>(DomainError::SameAccount) },
            )
            .await
            .unwrap();
        assert!(matches!(
            declined,
            AtOnce::Declined(DomainError::SameAccount)
        ));
        assert!(kinds(&mut changes).is_empty(), "events of a rollback");
        let info = locks.resource("item:a").await.unwrap();
        assert!(info.lock.is_none() && info.history.is_empty());
        // the same work may then run: nothing deduplicates against it
        acquire_now(&locks, "user:1", &["item:a"]).await;
    }

    #[tokio::test]
    async fn run_at_once_on_several_resources_takes_a_token_above_each() {
        let dir = tempfile::tempdir().unwrap();
        let locks = ledger(&dir).await.locks;
        let mut last = 0;
        for owner in ["user:7", "user:8", "user:9"] {
            let held = acquire_now(&locks, owner, &["item:a"]).await;
            locks
                .release(&held.lock_id, owner, Release::default())
                .await
                .unwrap();
            last = held.fencing_token;
        }
        let ran = locks
            .run_at_once(
                &request("user:1", &["item:a", "item:b"], WaitMode::Fail),
                |_, lock| async move { Ok(lock.fencing_token) },
            )
            .await
            .unwrap();
        let AtOnce::Ran(token) = ran else {
            panic!("did not run: {ran:?}")
        };
        assert_eq!(token, last + 1);
        // b, fresh before, now carries that token too: the next grant of b
        // is above it
        let next = acquire_now(&locks, "user:2", &["item:b"]).await;
        assert!(
            next.fencing_token > token,
            "{} after {token}",
            next.fencing_token
        );
    }
}
