//! What happens to locks inside one transaction. A `Store` lives for one
//! attempt of one retried transaction: it remembers which resources' fencing
//! rows it has locked (and their last tokens) and the events to publish once
//! the transaction commits.
//!
//! Order of work on a resource, always: lock its `lock_fencing` row (sorted
//! with the others), mark its expired grants expired (guarded), hand freed
//! resources to the heads of their queues, and only then decide about the
//! request at hand.

use std::collections::{BTreeMap, BTreeSet};

use infra::entities::{
    transaction_lock as lock, transaction_lock_resource as lock_resource,
    transaction_queue as queue_row, transaction_queue_resource as queue_resource,
};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::NotSet, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set, Statement, Value,
};
use uuid::Uuid;

use super::events::{EventKind, LockEvent};
use super::fencing::{self, FenceState};
use super::queue::{self, Candidate, Rank};
use super::{
    Acquired, LockSpec, LockStatus, LockView, QueueItemView, QueueStatus, Release, WaitMode, lost,
    names,
};
use crate::clock::now_ms;
use crate::db_error::{DbErrorKind, classify};
use crate::error::{DomainError, DomainResult};
use crate::sql::statement;

const ACTIVE: &str = "active";
const PENDING: &str = "pending";

/// A closure of multi-resource waiters over more than this many rounds is
/// cut short; the resources left out are settled by the next change.
const MAX_ROUNDS: usize = 16;

/// How many of a resource's last finished grants its wait estimate averages.
const RECENT_GRANTS: usize = 50;

/// How a grant ends: the row's final status, time, who ended it, why, and
/// its result or error; `expiry` is `Some(true)` where the grant must be
/// past its expiry, `Some(false)` where it must not be, `None` where that
/// does not matter (an emergency clear); `event` is what the monitor hears.
struct Ending {
    status: LockStatus,
    at_ms: i64,
    by: Option<String>,
    reason: Option<String>,
    result: Option<String>,
    error: Option<String>,
    expiry: Option<bool>,
    event: EventKind,
}

/// `?, ?, ?` for `n` values.
pub(crate) fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

pub(crate) fn values(names: &[String]) -> Vec<Value> {
    names.iter().map(|n| n.clone().into()).collect()
}

fn json(value: &serde_json::Value) -> String {
    value.to_string()
}

/// `FROM … WHERE` of the pending waiters (not past their deadline) of
/// `n` resources, aliased `q`; its values are now, then the resources.
fn pending_from(n: usize) -> String {
    format!(
        "FROM transaction_queue q WHERE q.status = 'pending' AND q.deadline_ms > ? \
         AND q.id IN (SELECT qr.queue_id FROM transaction_queue_resources qr \
         WHERE qr.resource_id IN ({}))",
        marks(n)
    )
}

/// Pending waiters of `resources` (not past their deadline), best first.
pub(crate) async fn pending_on<C: ConnectionTrait>(
    conn: &C,
    resources: &[String],
    now: i64,
    aging_ms: u64,
) -> DomainResult<Vec<queue_row::Model>> {
    if resources.is_empty() {
        return Ok(Vec::new());
    }
    let backend = conn.get_database_backend();
    let sql = format!(
        "SELECT q.* {} ORDER BY {}, q.queued_at_ms, q.id",
        pending_from(resources.len()),
        queue::effective_priority_sql()
    );
    let mut vals: Vec<Value> = vec![now.into()];
    vals.extend(values(resources));
    vals.extend(queue::effective_priority_values(now, aging_ms));
    Ok(queue_row::Entity::find()
        .from_raw_sql(statement(backend, &sql, vals))
        .all(conn)
        .await?)
}

/// Active grants (by status; some may be past their expiry) touching
/// `resources`.
pub(crate) async fn active_on<C: ConnectionTrait>(
    conn: &C,
    resources: &[String],
) -> DomainResult<Vec<lock::Model>> {
    if resources.is_empty() {
        return Ok(Vec::new());
    }
    // The locks are found by their primary key and kept if active here, not
    // in the WHERE: given `l.status = 'active'` there, PostgreSQL may read
    // every entry of the status index that was ever active (stale statistics
    // and dead entries on a table that is updated on every release) instead
    // of the one or few rows the resources name: 4 to 20 ms a read under the
    // locks load, against well under a millisecond.
    let sql = format!(
        "SELECT l.* FROM transaction_locks l WHERE l.id IN \
         (SELECT r.lock_id FROM transaction_lock_resources r WHERE r.status = 'active' \
         AND r.resource_id IN ({}))",
        marks(resources.len())
    );
    let mut locks = lock::Entity::find()
        .from_raw_sql(statement(
            conn.get_database_backend(),
            &sql,
            values(resources),
        ))
        .all(conn)
        .await?;
    locks.retain(|l| l.status == LockStatus::Active.as_str());
    Ok(locks)
}

fn candidate(row: &queue_row::Model, now: i64, aging_ms: u64) -> Candidate {
    Candidate {
        rank: Rank::at(row.priority, row.queued_at_ms, row.id, now, aging_ms),
        resources: names(&row.resources),
    }
}

/// Fills in position and wait estimate of pending items, and the lock of
/// granted ones. The waiters of every pending item's resources are read
/// once, and each set of resources' hold time once: a list of a resource's
/// whole queue costs two reads, not two per waiter.
pub(crate) async fn annotate<C: ConnectionTrait>(
    conn: &C,
    items: &mut [QueueItemView],
    now: i64,
    aging_ms: u64,
) -> DomainResult<()> {
    let mut sets = BTreeSet::new();
    for item in items.iter_mut() {
        match item.status {
            QueueStatus::Granted => {
                let row = lock_of_queue_item(conn, item.queue_id).await?;
                item.lock = row.map(|r| LockView::from_row(r, now));
            }
            QueueStatus::Pending => {
                sets.insert(item.resources.clone());
            }
            _ => {}
        }
    }
    if sets.is_empty() {
        return Ok(());
    }
    let placing = Placing::read(conn, &sets, now, aging_ms).await?;
    for item in items
        .iter_mut()
        .filter(|i| i.status == QueueStatus::Pending)
    {
        placing.place(item);
    }
    Ok(())
}

/// What places a pending item in its queues, as read at one moment: the
/// waiters of its resources, and the time one turn of each set of
/// resources is expected to take.
#[derive(Debug)]
pub(crate) struct Placing {
    now: i64,
    aging_ms: u64,
    waiters: Vec<Candidate>,
    turns: BTreeMap<Vec<String>, i64>,
}

impl Placing {
    /// Reads the waiters of every resource in `sets`, and each set's turn.
    pub(crate) async fn read<C: ConnectionTrait>(
        conn: &C,
        sets: &BTreeSet<Vec<String>>,
        now: i64,
        aging_ms: u64,
    ) -> DomainResult<Self> {
        let wanted: BTreeSet<&String> = sets.iter().flatten().collect();
        let wanted: Vec<String> = wanted.into_iter().cloned().collect();
        let waiters = pending_on(conn, &wanted, now, aging_ms)
            .await?
            .iter()
            .map(|w| candidate(w, now, aging_ms))
            .collect();
        let mut turns = BTreeMap::new();
        for set in sets {
            turns.insert(set.clone(), turn_ms(conn, set, now).await?);
        }
        Ok(Self {
            now,
            aging_ms,
            waiters,
            turns,
        })
    }

    /// Sets a pending item's position (its worst place among the waiters of
    /// its resources, ranked as of the read) and wait estimate.
    pub(crate) fn place(&self, item: &mut QueueItemView) {
        let me = Candidate {
            rank: Rank::at(
                item.priority,
                item.queued_at_ms,
                item.queue_id,
                self.now,
                self.aging_ms,
            ),
            resources: item.resources.clone(),
        };
        item.position = queue::position(&me, &self.waiters);
        let per_turn = self.turns.get(&item.resources).copied().unwrap_or(0);
        item.estimated_wait_ms = per_turn.saturating_mul(item.position);
    }
}

/// How long one turn of `resources` is expected to take: the recent
/// average hold, or, with no history, what is left of the current holds.
async fn turn_ms<C: ConnectionTrait>(
    conn: &C,
    resources: &[String],
    now: i64,
) -> DomainResult<i64> {
    Ok(match average_hold_ms(conn, resources).await? {
        Some(avg) => avg,
        None => active_on(conn, resources)
            .await?
            .iter()
            .map(|l| l.expires_at_ms - now)
            .max()
            .unwrap_or(0)
            .max(0),
    })
}

async fn lock_of_queue_item<C: ConnectionTrait>(
    conn: &C,
    queue_id: i64,
) -> DomainResult<Option<lock::Model>> {
    Ok(lock::Entity::find()
        .filter(lock::Column::QueueId.eq(queue_id))
        .one(conn)
        .await?)
}

/// How long the last 50 finished grants of these resources were held.
///
/// Read through each resource's newest grants, not its whole history: a
/// resource's fencing token grows with each grant, and one grant of a
/// resource ends before the next begins (one that outlived its expiry is
/// `expired`, not counted), so its 50 highest-token finished grants are its
/// 50 last released. The 50 last released of several resources are among
/// the union of each one's (a grant of several counted once).
pub(crate) async fn average_hold_ms<C: ConnectionTrait>(
    conn: &C,
    resources: &[String],
) -> DomainResult<Option<i64>> {
    if resources.is_empty() {
        return Ok(None);
    }
    let newest = (0..resources.len())
        .map(|i| {
            format!(
                "SELECT * FROM (SELECT l.id, l.released_at_ms AS at, \
                 l.released_at_ms - l.acquired_at_ms AS h FROM transaction_lock_resources r \
                 JOIN transaction_locks l ON l.id = r.lock_id WHERE r.resource_id = ? \
                 AND l.status IN ('released', 'failed') \
                 ORDER BY r.fencing_token DESC LIMIT {RECENT_GRANTS}) AS g{i}"
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ");
    let sql = format!(
        "SELECT CAST(AVG(h) AS BIGINT) AS avg_hold FROM (SELECT u.h FROM ({newest}) AS u \
         ORDER BY u.at DESC LIMIT {RECENT_GRANTS}) AS recent"
    );
    let row = conn
        .query_one_raw(statement(
            conn.get_database_backend(),
            &sql,
            values(resources),
        ))
        .await?;
    Ok(match row {
        Some(row) => row.try_get::<Option<i64>>("", "avg_hold")?,
        None => None,
    })
}

/// `spec` granted at once, as a new lock behind `token`, at `now`.
pub(crate) fn granted_at_once(spec: &LockSpec, token: i64, now: i64) -> lock::Model {
    Grant::now(spec).row(Uuid::new_v4().to_string(), token, now)
}

/// `grant`, taken in this same transaction, as its owner `by` ends it at
/// `at`: `released` with `how.result`, or `failed` with `how.error`; and
/// what the monitor hears of it.
pub(crate) fn ended_own(
    grant: lock::Model,
    by: &str,
    how: &Release,
    at: i64,
) -> (lock::Model, EventKind) {
    let (status, event) = if how.error.is_some() {
        (LockStatus::Failed, EventKind::Failed)
    } else {
        (LockStatus::Released, EventKind::Released)
    };
    let row = lock::Model {
        status: status.as_str().into(),
        result: how.result.as_ref().map(json),
        error: how.error.clone(),
        released_at_ms: Some(at),
        released_by: Some(by.to_owned()),
        release_reason: how.reason.clone(),
        ..grant
    };
    (row, event)
}

/// The fields a grant is made of, from a request or from a queue item.
struct Grant<'s> {
    resources: &'s [String],
    owner_id: &'s str,
    created_by: &'s str,
    priority: i32,
    transaction_type: &'s str,
    transaction_data: String,
    idempotency_key: &'s str,
    ttl_ms: i64,
    wait_ms: i64,
    queue_id: Option<i64>,
}

impl<'s> Grant<'s> {
    /// `spec` granted at once, without waiting.
    fn now(spec: &'s LockSpec) -> Self {
        Self {
            resources: &spec.resources,
            owner_id: &spec.owner_id,
            created_by: &spec.created_by,
            priority: spec.priority,
            transaction_type: &spec.transaction_type,
            transaction_data: json(&spec.transaction_data),
            idempotency_key: &spec.idempotency_key,
            ttl_ms: spec.ttl_ms,
            wait_ms: 0,
            queue_id: None,
        }
    }

    /// The active lock row of this grant as `lock_id`, behind `token`,
    /// acquired at `now`.
    fn row(self, lock_id: String, token: i64, now: i64) -> lock::Model {
        lock::Model {
            id: lock_id,
            resources: json(&serde_json::json!(self.resources)),
            owner_id: self.owner_id.to_owned(),
            owner_type: super::resource::owner_type(self.owner_id).to_owned(),
            created_by: self.created_by.to_owned(),
            status: ACTIVE.into(),
            fencing_token: token,
            priority: self.priority,
            transaction_type: self.transaction_type.to_owned(),
            transaction_data: self.transaction_data,
            idempotency_key: self.idempotency_key.to_owned(),
            result: None,
            error: None,
            acquired_at_ms: now,
            expires_at_ms: now.saturating_add(self.ttl_ms),
            released_at_ms: None,
            released_by: None,
            release_reason: None,
            wait_ms: self.wait_ms,
            queue_id: self.queue_id,
            tallied: false,
        }
    }
}

pub(crate) struct Store<'t> {
    txn: &'t DatabaseTransaction,
    backend: DbBackend,
    pub now: i64,
    aging_ms: u64,
    /// Resources whose fencing row this transaction holds, with their last
    /// token.
    locked: BTreeMap<String, i64>,
    events: Vec<LockEvent>,
}

impl<'t> Store<'t> {
    pub fn new(txn: &'t DatabaseTransaction, now: i64, aging_ms: u64) -> Self {
        Self {
            txn,
            backend: txn.get_database_backend(),
            now,
            aging_ms,
            locked: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    /// Grants this transaction found past their expiry and marked so.
    pub fn expired_count(&self) -> u64 {
        let n = self
            .events
            .iter()
            .filter(|e| e.kind == EventKind::Expired && e.queue_item.is_none())
            .count();
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    pub fn into_events(self) -> Vec<LockEvent> {
        self.events
    }

    fn stmt(&self, sql: &str, vals: Vec<Value>) -> Statement {
        statement(self.backend, sql, vals)
    }

    /// Locks the fencing rows of `resources` not yet held, creating them,
    /// in sorted order; remembers their last tokens. The no-op update is what
    /// takes the row lock on PostgreSQL.
    pub async fn lock_resources<'r>(
        &mut self,
        resources: impl IntoIterator<Item = &'r String>,
    ) -> DomainResult<()> {
        let missing: BTreeSet<&String> = resources
            .into_iter()
            .filter(|r| !self.locked.contains_key(*r))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let rows = vec!["(?, 0)"; missing.len()].join(", ");
        let sql = format!(
            "INSERT INTO lock_fencing (resource_id, fencing_token) VALUES {rows} \
             ON CONFLICT (resource_id) DO UPDATE SET fencing_token = lock_fencing.fencing_token \
             RETURNING resource_id, fencing_token"
        );
        let vals = missing.iter().map(|r| (*r).clone().into()).collect();
        for row in self.txn.query_all_raw(self.stmt(&sql, vals)).await? {
            let resource: String = row.try_get("", "resource_id")?;
            let token: i64 = row.try_get("", "fencing_token")?;
            self.locked.insert(resource, token);
        }
        // Whoever held these rows before has committed: reading the clock
        // only now keeps this transaction's times after theirs (a grant
        // never starts before the release it follows ended).
        self.now = self.now.max(now_ms());
        Ok(())
    }

    /// Locks `resources` together with every resource their waiters want,
    /// in one sorted pass: the hand-off that follows then rarely needs a
    /// row out of order (which could deadlock with another transaction
    /// doing the same from the other side).
    pub async fn lock_with_waiters(&mut self, resources: &[String]) -> DomainResult<()> {
        let mut all: BTreeSet<String> = resources.iter().cloned().collect();
        if !resources.is_empty() {
            // only the waiters' sets of resources: on a hot resource, one
            // row however long its queue, inside the transaction that holds
            // its fencing row
            let sql = format!(
                "SELECT DISTINCT q.resources AS resources {}",
                pending_from(resources.len())
            );
            let mut vals: Vec<Value> = vec![self.now.into()];
            vals.extend(values(resources));
            for row in self.txn.query_all_raw(self.stmt(&sql, vals)).await? {
                all.extend(names(&row.try_get::<String>("", "resources")?));
            }
        }
        self.lock_resources(&all).await
    }

    /// Marks the expired grants on `resources` expired. Returns the
    /// resources that freed, and those still held by live grants.
    pub async fn expire_stale(
        &mut self,
        resources: &[String],
    ) -> DomainResult<(BTreeSet<String>, BTreeSet<String>)> {
        let mut freed = BTreeSet::new();
        let mut busy = BTreeSet::new();
        for row in active_on(self.txn, resources).await? {
            let held = names(&row.resources);
            if row.expires_at_ms > self.now {
                busy.extend(held);
            } else if self.mark_expired(row).await? {
                freed.extend(held);
            }
        }
        Ok((freed, busy))
    }

    /// Guarded: only while it is still this grant, active and past its
    /// expiry. A lock extended or released meanwhile is left alone.
    async fn mark_expired(&mut self, row: lock::Model) -> DomainResult<bool> {
        let end = Ending {
            status: LockStatus::Expired,
            at_ms: row.expires_at_ms,
            by: row.released_by.clone(),
            reason: row.release_reason.clone(),
            result: row.result.clone(),
            error: row.error.clone(),
            expiry: Some(true),
            event: EventKind::Expired,
        };
        Ok(self.end_grant(row, end).await?.is_some())
    }

    /// Ends one grant as `end` says, guarded: only while it is still this
    /// grant (active, the same fencing token) and, where `end.expiry` asks,
    /// on that side of its expiry. Its resources' rows follow it and the
    /// event is kept for after the commit. `None` when the row changed
    /// meanwhile, and then nothing is written.
    async fn end_grant(&mut self, row: lock::Model, end: Ending) -> DomainResult<Option<LockView>> {
        let mut update = lock::Entity::update_many()
            .col_expr(lock::Column::Status, Expr::value(end.status.as_str()))
            .col_expr(lock::Column::Result, Expr::value(end.result.clone()))
            .col_expr(lock::Column::Error, Expr::value(end.error.clone()))
            .col_expr(lock::Column::ReleasedAtMs, Expr::value(end.at_ms))
            .col_expr(lock::Column::ReleasedBy, Expr::value(end.by.clone()))
            .col_expr(lock::Column::ReleaseReason, Expr::value(end.reason.clone()))
            .filter(lock::Column::Id.eq(row.id.clone()))
            .filter(lock::Column::Status.eq(ACTIVE))
            .filter(lock::Column::FencingToken.eq(row.fencing_token));
        update = match end.expiry {
            Some(true) => update.filter(lock::Column::ExpiresAtMs.lte(self.now)),
            Some(false) => update.filter(lock::Column::ExpiresAtMs.gt(self.now)),
            None => update,
        };
        if update.exec(self.txn).await?.rows_affected != 1 {
            return Ok(None);
        }
        self.set_children(&row.id, end.status.as_str()).await?;
        let view = LockView::from_row(
            lock::Model {
                status: end.status.as_str().into(),
                result: end.result,
                error: end.error,
                released_at_ms: Some(end.at_ms),
                released_by: end.by,
                release_reason: end.reason,
                ..row
            },
            self.now,
        );
        self.events
            .push(LockEvent::lock(end.event, view.clone(), self.now));
        Ok(Some(view))
    }

    async fn set_children(&self, lock_id: &str, status: &str) -> DomainResult<()> {
        lock_resource::Entity::update_many()
            .col_expr(lock_resource::Column::Status, Expr::value(status))
            .filter(lock_resource::Column::LockId.eq(lock_id))
            .filter(lock_resource::Column::Status.eq(ACTIVE))
            .exec(self.txn)
            .await?;
        Ok(())
    }

    /// The best waiter of `resource`; on PostgreSQL a row another
    /// transaction is changing (a cancel, a timeout) is skipped.
    async fn head_of(&self, resource: &str) -> DomainResult<Option<queue_row::Model>> {
        let lock = if self.backend == DbBackend::Postgres {
            " FOR UPDATE OF q SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "SELECT q.* FROM transaction_queue q WHERE q.status = 'pending' AND q.deadline_ms > ? \
             AND q.id IN (SELECT qr.queue_id FROM transaction_queue_resources qr WHERE qr.resource_id = ?) \
             ORDER BY {}, q.queued_at_ms, q.id LIMIT 1{lock}",
            queue::effective_priority_sql()
        );
        let mut vals: Vec<Value> = vec![self.now.into(), resource.to_owned().into()];
        vals.extend(queue::effective_priority_values(self.now, self.aging_ms));
        Ok(queue_row::Entity::find()
            .from_raw_sql(self.stmt(&sql, vals))
            .one(self.txn)
            .await?)
    }

    /// Grants the waiters that `freed` lets through, in the same
    /// transaction that freed them: the head of each freed resource's queue,
    /// and the heads of the other resources those heads want (a
    /// multi-resource waiter is granted only when all its resources are free
    /// and it is first in each of their queues).
    pub async fn hand_off(&mut self, freed: BTreeSet<String>) -> DomainResult<()> {
        let mut considered: BTreeSet<String> = BTreeSet::new();
        let mut heads: BTreeMap<i64, queue_row::Model> = BTreeMap::new();
        let mut frontier = freed;
        let mut busy = BTreeSet::new();
        for _ in 0..MAX_ROUNDS {
            let new: Vec<String> = frontier
                .into_iter()
                .filter(|r| !considered.contains(r))
                .collect();
            if new.is_empty() {
                break;
            }
            for r in new {
                if let Some(head) = self.head_of(&r).await? {
                    heads.insert(head.id, head);
                }
                considered.insert(r);
            }
            let mut union = considered.clone();
            for head in heads.values() {
                union.extend(names(&head.resources));
            }
            self.lock_resources(&union).await?;
            let union: Vec<String> = union.into_iter().collect();
            let (freed_now, busy_now) = self.expire_stale(&union).await?;
            busy = busy_now;
            frontier = union.into_iter().chain(freed_now).collect();
        }
        let candidates: Vec<Candidate> = heads
            .values()
            .map(|h| candidate(h, self.now, self.aging_ms))
            .collect();
        for id in queue::plan_grants(&candidates, &busy) {
            if let Some(head) = heads.remove(&id) {
                self.grant_queued(head).await?;
            }
        }
        Ok(())
    }

    /// Guarded: the item is granted only if it is still pending.
    async fn grant_queued(&mut self, item: queue_row::Model) -> DomainResult<()> {
        let lock_id = Uuid::new_v4().to_string();
        let done = queue_row::Entity::update_many()
            .col_expr(queue_row::Column::Status, Expr::value("granted"))
            .col_expr(queue_row::Column::LockId, Expr::value(lock_id.clone()))
            .col_expr(queue_row::Column::FinishedAtMs, Expr::value(self.now))
            .filter(queue_row::Column::Id.eq(item.id))
            .filter(queue_row::Column::Status.eq(PENDING))
            .exec(self.txn)
            .await?;
        if done.rows_affected != 1 {
            return Ok(());
        }
        let resources = names(&item.resources);
        let view = self
            .grant(
                lock_id,
                Grant {
                    resources: &resources,
                    owner_id: &item.owner_id,
                    created_by: &item.created_by,
                    priority: item.priority,
                    transaction_type: &item.transaction_type,
                    transaction_data: item.transaction_data.clone(),
                    idempotency_key: &item.idempotency_key,
                    ttl_ms: item.ttl_ms,
                    wait_ms: (self.now - item.queued_at_ms).max(0),
                    queue_id: Some(item.id),
                },
            )
            .await?;
        let mut granted = QueueItemView::from_row(
            queue_row::Model {
                status: "granted".into(),
                lock_id: Some(view.lock_id.clone()),
                finished_at_ms: Some(self.now),
                ..item
            },
            self.now,
            self.aging_ms,
        );
        granted.lock = Some(view);
        self.events
            .push(LockEvent::queue(EventKind::Granted, granted, self.now));
        Ok(())
    }

    /// Writes a grant: the next fencing token of its resources, the lock
    /// row and one active row per resource (which the unique partial index
    /// refuses should the resource already have an active grant).
    async fn grant(&mut self, lock_id: String, g: Grant<'_>) -> DomainResult<LockView> {
        self.lock_resources(g.resources).await?;
        let token = fencing::next_token(
            g.resources
                .iter()
                .map(|r| self.locked.get(r).copied().unwrap_or(0)),
        );
        self.set_tokens(g.resources, token).await?;
        let resources = g.resources;
        let row = g.row(lock_id, token, self.now);
        self.insert_lock(&row, resources, ACTIVE)
            .await
            .map_err(|e| match classify(&e) {
                DbErrorKind::UniqueViolation(_) => DomainError::ResourceLocked {
                    conflicts: resources.to_vec(),
                },
                _ => DomainError::from(e),
            })?;
        Ok(LockView::from_row(row, self.now))
    }

    /// Sets the fencing token of `resources`, whose rows this transaction
    /// holds, to `token`.
    async fn set_tokens(&mut self, resources: &[String], token: i64) -> DomainResult<()> {
        let sql = format!(
            "UPDATE lock_fencing SET fencing_token = ? WHERE resource_id IN ({})",
            marks(resources.len())
        );
        let mut vals: Vec<Value> = vec![token.into()];
        vals.extend(values(resources));
        self.txn.execute_raw(self.stmt(&sql, vals)).await?;
        for r in resources {
            self.locked.insert(r.clone(), token);
        }
        Ok(())
    }

    /// Inserts the lock `row` and one row of `status` per resource (the
    /// unique partial index refuses a second `active` one on a resource).
    async fn insert_lock(
        &self,
        row: &lock::Model,
        resources: &[String],
        status: &str,
    ) -> Result<(), DbErr> {
        lock::Entity::insert(lock::ActiveModel::from(row.clone()))
            .exec_without_returning(self.txn)
            .await?;
        let children = resources.iter().map(|r| lock_resource::ActiveModel {
            lock_id: Set(row.id.clone()),
            resource_id: Set(r.clone()),
            status: Set(status.into()),
            fencing_token: Set(row.fencing_token),
        });
        lock_resource::Entity::insert_many(children)
            .exec_without_returning(self.txn)
            .await?;
        Ok(())
    }

    /// A request identical to a lock that is active or finished within the
    /// dedupe window (for fenced work, not one that expired: see
    /// `AcquireRequest::fenced_work`), or to a waiter still pending.
    async fn duplicate(
        &mut self,
        spec: &LockSpec,
        dedupe_ms: i64,
    ) -> DomainResult<Option<Acquired>> {
        let latest = lock::Entity::find()
            .filter(lock::Column::IdempotencyKey.eq(spec.idempotency_key.clone()))
            .order_by_desc(lock::Column::AcquiredAtMs)
            .one(self.txn)
            .await?;
        if let Some(row) = latest {
            let view = LockView::from_row(row, self.now);
            let finished = view.released_at_ms.unwrap_or(i64::MAX);
            let counts = !(spec.fenced_work && view.status == LockStatus::Expired);
            if view.is_active() || counts && finished >= self.now.saturating_sub(dedupe_ms) {
                return Ok(Some(Acquired::Deduplicated(view)));
            }
        }
        let waiting = queue_row::Entity::find()
            .filter(queue_row::Column::IdempotencyKey.eq(spec.idempotency_key.clone()))
            .filter(queue_row::Column::Status.eq(PENDING))
            .filter(queue_row::Column::DeadlineMs.gt(self.now))
            .one(self.txn)
            .await?;
        if let Some(row) = waiting {
            let mut item = [QueueItemView::from_row(row, self.now, self.aging_ms)];
            annotate(self.txn, &mut item, self.now, self.aging_ms).await?;
            let [item] = item;
            return Ok(Some(Acquired::Queued(item)));
        }
        Ok(None)
    }

    /// Resources among `resources` with a pending waiter that ranks ahead
    /// of a new request of `priority` (a new request is the last to arrive,
    /// so every waiter at an equal or better effective priority is ahead).
    async fn waiters_ahead(
        &self,
        resources: &[String],
        priority: i32,
    ) -> DomainResult<Vec<String>> {
        let sql = format!(
            "SELECT DISTINCT qr.resource_id AS resource_id FROM transaction_queue_resources qr \
             JOIN transaction_queue q ON q.id = qr.queue_id WHERE qr.resource_id IN ({}) \
             AND q.status = 'pending' AND q.deadline_ms > ? AND {} <= ?",
            marks(resources.len()),
            queue::effective_priority_sql()
        );
        let mut vals = values(resources);
        vals.push(self.now.into());
        vals.extend(queue::effective_priority_values(self.now, self.aging_ms));
        vals.push(priority.into());
        self.txn
            .query_all_raw(self.stmt(&sql, vals))
            .await?
            .into_iter()
            .map(|row| row.try_get::<String>("", "resource_id").map_err(Into::into))
            .collect()
    }

    /// Acquires `spec` now, or queues it, or refuses it.
    pub async fn acquire(
        &mut self,
        spec: &LockSpec,
        dedupe_ms: i64,
        queue_max: i64,
    ) -> DomainResult<Acquired> {
        self.lock_resources(&spec.resources).await?;
        if let Some(found) = self.duplicate(spec, dedupe_ms).await? {
            return Ok(found);
        }
        let (freed, mut busy) = self.expire_stale(&spec.resources).await?;
        if !freed.is_empty() {
            self.hand_off(freed).await?;
            busy = active_on(self.txn, &spec.resources)
                .await?
                .into_iter()
                .filter(|l| l.expires_at_ms > self.now)
                .flat_map(|l| names(&l.resources))
                .collect();
        }
        let mut conflicts: BTreeSet<String> = spec
            .resources
            .iter()
            .filter(|r| busy.contains(*r))
            .cloned()
            .collect();
        // Waiters ahead can only add resources not already held, and a
        // request that queues anyway does not list its conflicts: on a held
        // resource the queue is not read (a scan of every waiter, inside
        // the transaction that holds the resource's fencing row).
        let decided = conflicts.len() == spec.resources.len()
            || (spec.wait == WaitMode::Queue && !conflicts.is_empty());
        if !decided {
            conflicts.extend(self.waiters_ahead(&spec.resources, spec.priority).await?);
        }
        if conflicts.is_empty() {
            return self.grant_now(spec).await.map(Acquired::Granted);
        }
        match spec.wait {
            WaitMode::Fail => Err(DomainError::ResourceLocked {
                conflicts: conflicts.into_iter().collect(),
            }),
            WaitMode::Queue => self.enqueue(spec, queue_max).await.map(Acquired::Queued),
        }
    }

    /// Grants `spec` at once, without waiting.
    async fn grant_now(&mut self, spec: &LockSpec) -> DomainResult<LockView> {
        let view = self
            .grant(Uuid::new_v4().to_string(), Grant::now(spec))
            .await?;
        self.events
            .push(LockEvent::lock(EventKind::Acquired, view.clone(), self.now));
        Ok(view)
    }

    /// The uncontended grant, in two statements: the resources' fencing
    /// rows are locked with the next token taken, and one read says whether
    /// anything at all is on them — a grant marked active (even one past its
    /// expiry: settling it is `acquire`'s work), a waiter, an identical lock
    /// within the dedupe window. `None` when something is: the caller rolls
    /// back (the tokens taken go with it). Otherwise the grant, as it will
    /// be recorded by [`record_own`](Self::record_own) once its work is done
    /// — it is written only then, finished. Until this transaction ends it
    /// holds the fencing rows with the grant's token: whoever would
    /// acquire, queue for or release these resources waits for it.
    pub async fn take_if_free(
        &mut self,
        spec: &LockSpec,
        dedupe_ms: i64,
    ) -> DomainResult<Option<lock::Model>> {
        let rows = vec!["(?, 1)"; spec.resources.len()].join(", ");
        let sql = format!(
            "INSERT INTO lock_fencing (resource_id, fencing_token) VALUES {rows} \
             ON CONFLICT (resource_id) DO UPDATE SET fencing_token = lock_fencing.fencing_token + 1 \
             RETURNING resource_id, fencing_token"
        );
        let mut taken: BTreeMap<String, i64> = BTreeMap::new();
        for row in self
            .txn
            .query_all_raw(self.stmt(&sql, values(&spec.resources)))
            .await?
        {
            taken.insert(
                row.try_get("", "resource_id")?,
                row.try_get("", "fencing_token")?,
            );
        }
        self.now = self.now.max(now_ms());
        // Each row went one up; a grant of several takes the highest, on all.
        let token = fencing::next_token(taken.values().map(|t| t - 1));
        if taken.values().any(|t| *t != token) {
            self.set_tokens(&spec.resources, token).await?;
        } else {
            self.locked
                .extend(spec.resources.iter().map(|r| (r.clone(), token)));
        }
        let m = marks(spec.resources.len());
        let sql = format!(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM transaction_lock_resources r \
             WHERE r.status = 'active' AND r.resource_id IN ({m})) \
             OR EXISTS (SELECT 1 FROM transaction_queue_resources qr JOIN transaction_queue q \
             ON q.id = qr.queue_id WHERE qr.resource_id IN ({m}) AND q.status = 'pending') \
             OR EXISTS (SELECT 1 FROM transaction_locks l WHERE l.idempotency_key = ? \
             AND (l.status = 'active' OR l.released_at_ms >= ?{expired})) THEN 1 ELSE 0 END AS busy",
            expired = if spec.fenced_work {
                " AND l.status <> 'expired'"
            } else {
                ""
            }
        );
        let mut vals = values(&spec.resources);
        vals.extend(values(&spec.resources));
        vals.push(spec.idempotency_key.clone().into());
        vals.push(self.now.saturating_sub(dedupe_ms).into());
        let busy = self
            .txn
            .query_one_raw(self.stmt(&sql, vals))
            .await?
            .map(|row| row.try_get::<i32>("", "busy"))
            .transpose()?;
        if busy != Some(0) {
            return Ok(None);
        }
        let grant = granted_at_once(spec, token, self.now);
        let view = LockView::from_row(grant.clone(), self.now);
        self.events
            .push(LockEvent::lock(EventKind::Acquired, view, self.now));
        Ok(Some(grant))
    }

    /// Writes `grant`, taken by [`take_if_free`](Self::take_if_free) in this
    /// same transaction, as it ends: `released` with `how.result`, or
    /// `failed` with `how.error`. Its resource rows are never `active`, so
    /// the unique index has nothing to refuse: the fencing rows this
    /// transaction holds already kept every other grant out. No hand-off:
    /// nobody waited for these resources, and nobody can have queued since
    /// (queueing locks their fencing rows).
    pub async fn record_own(
        &mut self,
        grant: lock::Model,
        by: &str,
        how: &Release,
    ) -> DomainResult<LockView> {
        // Held until now: the history shows how long the work under it took.
        self.now = self.now.max(now_ms());
        let (row, event) = ended_own(grant, by, how, self.now);
        self.insert_lock(&row, &names(&row.resources), &row.status)
            .await?;
        let view = LockView::from_row(row, self.now);
        self.events
            .push(LockEvent::lock(event, view.clone(), self.now));
        Ok(view)
    }

    async fn enqueue(&mut self, spec: &LockSpec, queue_max: i64) -> DomainResult<QueueItemView> {
        let sql = format!(
            "SELECT qr.resource_id AS resource_id, COUNT(*) AS n FROM transaction_queue_resources qr \
             JOIN transaction_queue q ON q.id = qr.queue_id WHERE qr.resource_id IN ({}) \
             AND q.status = 'pending' AND q.deadline_ms > ? GROUP BY qr.resource_id",
            marks(spec.resources.len())
        );
        let mut vals = values(&spec.resources);
        vals.push(self.now.into());
        for row in self.txn.query_all_raw(self.stmt(&sql, vals)).await? {
            let n: i64 = row.try_get("", "n")?;
            if n >= queue_max {
                let resource: String = row.try_get("", "resource_id")?;
                let per_turn = average_hold_ms(self.txn, std::slice::from_ref(&resource))
                    .await?
                    .unwrap_or(1_000);
                return Err(DomainError::QueueFull {
                    resource,
                    retry_after_ms: u64::try_from(per_turn.max(1_000)).unwrap_or(1_000),
                });
            }
        }
        let row = queue_row::Entity::insert(queue_row::ActiveModel {
            id: NotSet,
            resources: Set(json(&serde_json::json!(spec.resources))),
            owner_id: Set(spec.owner_id.clone()),
            owner_type: Set(super::resource::owner_type(&spec.owner_id).to_owned()),
            created_by: Set(spec.created_by.clone()),
            priority: Set(spec.priority),
            transaction_type: Set(spec.transaction_type.clone()),
            transaction_data: Set(json(&spec.transaction_data)),
            idempotency_key: Set(spec.idempotency_key.clone()),
            ttl_ms: Set(spec.ttl_ms),
            status: Set(PENDING.into()),
            lock_id: Set(None),
            queued_at_ms: Set(self.now),
            deadline_ms: Set(self.now.saturating_add(spec.queue_timeout_ms)),
            finished_at_ms: Set(None),
        })
        .exec_with_returning(self.txn)
        .await?;
        let children = spec.resources.iter().map(|r| queue_resource::ActiveModel {
            queue_id: Set(row.id),
            resource_id: Set(r.clone()),
        });
        queue_resource::Entity::insert_many(children)
            .exec_without_returning(self.txn)
            .await?;
        let mut item = [QueueItemView::from_row(row, self.now, self.aging_ms)];
        annotate(self.txn, &mut item, self.now, self.aging_ms).await?;
        let [item] = item;
        self.events
            .push(LockEvent::queue(EventKind::Queued, item.clone(), self.now));
        Ok(item)
    }

    /// Marks expired grants on `resources` and grants whatever waiters can
    /// go: for a waiter that may have been missed (its holder expired, or a
    /// waiter ahead of it gave up).
    pub async fn settle(&mut self, resources: &[String]) -> DomainResult<()> {
        self.lock_with_waiters(resources).await?;
        let (mut freed, _) = self.expire_stale(resources).await?;
        freed.extend(resources.iter().cloned());
        self.hand_off(freed).await
    }

    /// Ends a grant. The outer error is for the caller (nothing to commit);
    /// the inner one is an answer to give after committing what was found
    /// on the way (an expired grant marked, its waiters granted).
    pub async fn release(
        &mut self,
        lock_id: &str,
        by: &str,
        how: &Release,
    ) -> DomainResult<Result<LockView, DomainError>> {
        let Some(row) = lock::Entity::find_by_id(lock_id).one(self.txn).await? else {
            return Err(DomainError::NotFound("lock"));
        };
        let resources = names(&row.resources);
        self.lock_with_waiters(&resources).await?;
        let Some(row) = lock::Entity::find_by_id(lock_id).one(self.txn).await? else {
            return Err(DomainError::NotFound("lock"));
        };
        if how.fencing_token.is_some_and(|t| t != row.fencing_token) {
            return Ok(Err(lost("the fencing token is not this lock's")));
        }
        if row.status != ACTIVE {
            return Ok(Err(lost(format!("the lock is already {}", row.status))));
        }
        if row.expires_at_ms <= self.now {
            let expired = LockView::from_row(row.clone(), self.now);
            self.mark_expired(row).await?;
            self.hand_off(resources.into_iter().collect()).await?;
            return Ok(if how.force {
                Ok(expired)
            } else {
                Err(lost("the lock has expired"))
            });
        }
        let status = if how.error.is_some() {
            LockStatus::Failed
        } else {
            LockStatus::Released
        };
        let event = match (how.force, status) {
            (true, _) => EventKind::Forced,
            (false, LockStatus::Failed) => EventKind::Failed,
            _ => EventKind::Released,
        };
        let end = Ending {
            status,
            at_ms: self.now,
            by: Some(by.to_owned()),
            reason: how.reason.clone(),
            result: how.result.as_ref().map(json),
            error: how.error.clone(),
            expiry: Some(false),
            event,
        };
        let Some(view) = self.end_grant(row, end).await? else {
            return Ok(Err(lost("the lock changed while it was being released")));
        };
        self.hand_off(resources.into_iter().collect()).await?;
        Ok(Ok(view))
    }

    /// Ends a waiter: `cancelled` by its owner, or `expired` past its
    /// deadline. Its resources may then go to the waiters behind it.
    pub async fn end_queue_item(
        &mut self,
        queue_id: i64,
        cancel: bool,
    ) -> DomainResult<QueueItemView> {
        let Some(row) = queue_row::Entity::find_by_id(queue_id)
            .one(self.txn)
            .await?
        else {
            return Err(DomainError::NotFound("queue item"));
        };
        let resources = names(&row.resources);
        self.lock_with_waiters(&resources).await?;
        let expired = row.deadline_ms <= self.now;
        let status = if expired { "expired" } else { "cancelled" };
        if !cancel && !expired {
            return Ok(QueueItemView::from_row(row, self.now, self.aging_ms));
        }
        let mut update = queue_row::Entity::update_many()
            .col_expr(queue_row::Column::Status, Expr::value(status))
            .col_expr(queue_row::Column::FinishedAtMs, Expr::value(self.now))
            .filter(queue_row::Column::Id.eq(queue_id))
            .filter(queue_row::Column::Status.eq(PENDING));
        if expired {
            update = update.filter(queue_row::Column::DeadlineMs.lte(self.now));
        }
        let done = update.exec(self.txn).await?;
        let Some(row) = queue_row::Entity::find_by_id(queue_id)
            .one(self.txn)
            .await?
        else {
            return Err(DomainError::NotFound("queue item"));
        };
        let mut item = [QueueItemView::from_row(row, self.now, self.aging_ms)];
        annotate(self.txn, &mut item, self.now, self.aging_ms).await?;
        let [item] = item;
        if done.rows_affected == 1 {
            let kind = if expired {
                EventKind::Expired
            } else {
                EventKind::Cancelled
            };
            self.events
                .push(LockEvent::queue(kind, item.clone(), self.now));
            self.hand_off(resources.into_iter().collect()).await?;
        }
        Ok(item)
    }

    /// Emergency: every active grant released (forced, by `by`, for
    /// `reason`) and every waiter cancelled.
    pub async fn clear_all(&mut self, by: &str, reason: &str) -> DomainResult<(u64, u64)> {
        let active = lock::Entity::find()
            .filter(lock::Column::Status.eq(ACTIVE))
            .all(self.txn)
            .await?;
        let mut released = 0;
        for row in active {
            let end = Ending {
                status: LockStatus::Released,
                at_ms: self.now,
                by: Some(by.to_owned()),
                reason: Some(reason.to_owned()),
                result: row.result.clone(),
                error: row.error.clone(),
                expiry: None,
                event: EventKind::Forced,
            };
            if self.end_grant(row, end).await?.is_some() {
                released += 1;
            }
        }
        let pending = queue_row::Entity::find()
            .filter(queue_row::Column::Status.eq(PENDING))
            .all(self.txn)
            .await?;
        let mut cancelled = 0;
        for row in pending {
            let done = queue_row::Entity::update_many()
                .col_expr(queue_row::Column::Status, Expr::value("cancelled"))
                .col_expr(queue_row::Column::FinishedAtMs, Expr::value(self.now))
                .filter(queue_row::Column::Id.eq(row.id))
                .filter(queue_row::Column::Status.eq(PENDING))
                .exec(self.txn)
                .await?;
            if done.rows_affected == 1 {
                cancelled += 1;
                let item = QueueItemView::from_row(
                    queue_row::Model {
                        status: "cancelled".into(),
                        finished_at_ms: Some(self.now),
                        ..row
                    },
                    self.now,
                    self.aging_ms,
                );
                self.events
                    .push(LockEvent::queue(EventKind::Cancelled, item, self.now));
            }
        }
        Ok((released, cancelled))
    }
}

/// The fence, inside the caller's transaction. On PostgreSQL the lock row
/// is read `FOR SHARE`: a release or expiry of this lock waits until the
/// caller's transaction ends, so no new grant (which must first end this
/// one) can slip in before the protected write commits.
pub(crate) async fn check_fence(
    txn: &DatabaseTransaction,
    lock_id: &str,
    fencing_token: i64,
    owner: &str,
    now: i64,
) -> DomainResult<()> {
    let mut query = lock::Entity::find_by_id(lock_id.to_owned());
    if txn.get_database_backend() == DbBackend::Postgres {
        query = query.lock_shared();
    }
    let row = query.one(txn).await?;
    let state = row.as_ref().map(|r| FenceState {
        status: &r.status,
        fencing_token: r.fencing_token,
        owner_id: &r.owner_id,
        created_by: &r.created_by,
        expires_at_ms: r.expires_at_ms,
    });
    fencing::admit(state.as_ref(), fencing_token, owner, now)
        .map_err(|refusal| lost(refusal.reason()))
}

#[cfg(test)]
pub(crate) mod tests {
    use sea_orm::TransactionTrait;

    use super::*;

    /// A grant of `resources` under `token`, acquired at `at` and ended
    /// `held` ms later with `status`, as the store writes it.
    pub(crate) fn grant(
        id: &str,
        resources: &[&str],
        token: i64,
        status: &str,
        at: i64,
        held: i64,
    ) -> lock::Model {
        let resources: Vec<String> = resources.iter().map(|r| (*r).to_owned()).collect();
        let mut row = Grant {
            resources: &resources,
            owner_id: "user:1",
            created_by: "user:1",
            priority: 5,
            transaction_type: "test",
            transaction_data: "{}".into(),
            idempotency_key: id,
            ttl_ms: 1_000_000,
            wait_ms: 0,
            queue_id: None,
        }
        .row(id.into(), token, at);
        row.status = status.into();
        row.released_at_ms = Some(at + held);
        row
    }

    /// Writes `row` and its resource rows as the store does.
    pub(crate) async fn insert(db: &infra::Database, row: &lock::Model) {
        let txn = db.conn.begin().await.unwrap();
        Store::new(&txn, row.acquired_at_ms, 1)
            .insert_lock(row, &names(&row.resources), &row.status)
            .await
            .unwrap();
        txn.commit().await.unwrap();
    }

    /// The estimate averages the 50 grants released last, whichever order
    /// they were acquired in across resources: expired and active grants do
    /// not count, a grant of several resources counts once, and a resource
    /// with no finished grant has no average.
    #[tokio::test]
    async fn the_hold_average_is_of_the_last_fifty_finished_grants() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::testing::database(&dir).await;
        // "a": 60 grants, the i-th held 10·i ms; then one that expired (held
        // far longer) and one still active
        for i in 1..=60 {
            let row = grant(&format!("a{i}"), &["a"], i, "released", 1_000 * i, 10 * i);
            insert(&db, &row).await;
        }
        insert(
            &db,
            &grant("a-expired", &["a"], 61, "expired", 70_000, 99_999),
        )
        .await;
        insert(&db, &grant("a-active", &["a"], 62, "active", 180_000, 5)).await;
        // "b": three failed grants of 1 s, released after all of "a"'s
        for i in 1..=3 {
            let at = 100_000 + 1_000 * i;
            insert(
                &db,
                &grant(&format!("b{i}"), &["b"], i, "failed", at, 1_000),
            )
            .await;
        }
        // both: the last released of all, held 525 ms
        insert(&db, &grant("ab", &["a", "b"], 63, "released", 200_000, 525)).await;
        let average = async |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            average_hold_ms(&db.conn, &names).await.unwrap()
        };
        // "ab" and a12..a60: (525 + 10·(12 + … + 60)) / 50 = 363.3
        assert_eq!(average(&["a"]).await, Some(363));
        // "ab" and b1..b3: (525 + 3·1000) / 4 = 881.25
        assert_eq!(average(&["b"]).await, Some(881));
        // "ab" once, b1..b3, a15..a60: (525 + 3000 + 10·(15 + … + 60)) / 50
        assert_eq!(average(&["a", "b"]).await, Some(415));
        assert_eq!(average(&["c"]).await, None);
        assert_eq!(average(&[]).await, None);
    }
}
