//! Locks granted and given back inside a planned group (`group`), on
//! PostgreSQL: a trade on a free signal (`trading::signals`) is granted its
//! lock, runs on the group's books and releases the lock with its answer as
//! the result, all in the group's one transaction — what
//! `LockService::run_at_once` does for one trade alone, in the group's few
//! statements instead of a transaction of its own.
//!
//! The rules are `run_at_once`'s:
//! - before anything is decided, the resources' `lock_fencing` rows are
//!   locked (sorted) and their tokens moved one up, with the group's claims
//!   of its keys, before its wallets are locked: from then on no other
//!   grant or queue item on them can be made until the group commits;
//! - then, in a later statement (so that it reads what those rows' earlier
//!   holders committed: the group's read of what its orders need), a
//!   resource is free when it has no active grant, no pending waiter, and
//!   no grant identical to this one (its duplicate-work key) active or
//!   finished within the dedupe window, an expired one aside (fenced work);
//! - a grant on a free resource is written as it ends: `released` with the
//!   trade's answer as its result, its resource row never `active`;
//! - a resource granted once in the group is busy for the rest of it.
//!
//! A write whose resource is busy is not run in the group (`NotInGroup`):
//! it takes the steps one by one, which answer a busy or traded signal.

use std::collections::HashMap;
use std::sync::LazyLock;

use infra::entities::{transaction_lock as lock, transaction_lock_resource as lock_resource};

use super::events::{EventKind, LockEvent};
use super::store::{ended_own, granted_at_once};
use super::{LockSpec, LockView, Release};
use crate::error::{DomainError, DomainResult};
use crate::sql::{Part, Read, insert_json, json_rows};

/// What a planned write takes of the locks: one resource, for fenced work,
/// and the duplicate-work key of its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockNeed {
    pub resource: String,
    pub key: String,
}

impl LockSpec {
    /// What a group reads for this request: only a request for one
    /// resource, for fenced work (a trade's), is granted inside a group.
    pub(crate) fn need(&self) -> Option<LockNeed> {
        match self.resources.as_slice() {
            [resource] if self.fenced_work => Some(LockNeed {
                resource: resource.clone(),
                key: self.idempotency_key.clone(),
            }),
            _ => None,
        }
    }
}

/// The resources of `needs`, sorted, each once.
fn resources(needs: &[&LockNeed]) -> Vec<String> {
    let mut resources: Vec<String> = needs.iter().map(|n| n.resource.clone()).collect();
    resources.sort_unstable();
    resources.dedup();
    resources
}

/// A resource as the group found it.
#[derive(Debug, Clone, Copy)]
struct Resource {
    /// Its new fencing token.
    token: i64,
    /// No grant may be made on it in this group.
    busy: bool,
}

/// The locks of one group: the resources it read, and the grants it made
/// and ended.
#[derive(Debug, Default)]
pub struct GroupLocks {
    now: i64,
    resources: HashMap<String, Resource>,
    /// Duplicate-work keys found active or finished within the window.
    done: Vec<String>,
    granted: Vec<lock::Model>,
    events: Vec<LockEvent>,
}

impl GroupLocks {
    /// The lock on the fencing rows of `needs`' resources, sorted as every
    /// transaction takes them, each token moved one up: a part of the
    /// group's first statement (its keys' claim), so that they are locked
    /// before the wallets are. `None` when there are no needs.
    pub fn fencing(needs: &[&LockNeed]) -> Option<Part> {
        if needs.is_empty() {
            return None;
        }
        Some(Part {
            sql: "INSERT INTO lock_fencing (resource_id, fencing_token) \
                  SELECT r, 1 FROM unnest((SELECT ?::text[])) AS s(r) ORDER BY r \
                  ON CONFLICT (resource_id) DO UPDATE \
                  SET fencing_token = lock_fencing.fencing_token + 1 RETURNING 1",
            values: vec![resources(needs).into()],
        })
    }

    /// The read, once their fencing rows are locked (`fencing`, in an
    /// earlier statement, so that this one reads what their earlier holders
    /// committed), of which of `needs`' resources are free and their tokens
    /// (see the module), at `now`: for the group's one read statement
    /// (`sql::read_together`); none when there are no needs.
    pub fn reads(needs: &[&LockNeed], dedupe_ms: i64, now: i64) -> Vec<Read> {
        if needs.is_empty() {
            return Vec::new();
        }
        let keys: Vec<String> = needs.iter().map(|n| n.key.clone()).collect();
        vec![Read {
            sql: "SELECT json_agg(json_build_array(x.kind, x.name, x.token, x.busy)) FROM ( \
                  SELECT 'resource' AS kind, s.r AS name, f.fencing_token AS token, \
                  EXISTS (SELECT 1 FROM transaction_lock_resources lr \
                  WHERE lr.status = 'active' AND lr.resource_id = s.r) \
                  OR EXISTS (SELECT 1 FROM transaction_queue_resources qr \
                  JOIN transaction_queue q ON q.id = qr.queue_id \
                  WHERE qr.resource_id = s.r AND q.status = 'pending') AS busy \
                  FROM unnest((SELECT ?::text[])) AS s(r) \
                  JOIN lock_fencing f ON f.resource_id = s.r \
                  UNION ALL SELECT DISTINCT 'key', l.idempotency_key, 0, true \
                  FROM transaction_locks l \
                  JOIN unnest((SELECT ?::text[])) AS k(key) ON l.idempotency_key = k.key \
                  WHERE (l.status = 'active' OR l.released_at_ms >= ?) \
                  AND l.status <> 'expired') AS x",
            values: vec![
                resources(needs).into(),
                keys.into(),
                now.saturating_sub(dedupe_ms).into(),
            ],
        }]
    }

    /// The locks of `needs` at `now`, from the document `reads` asked for
    /// (none when it asked for none).
    pub fn from_reads(
        needs: &[&LockNeed],
        now: i64,
        docs: Vec<Option<serde_json::Value>>,
    ) -> DomainResult<Self> {
        let mut locks = Self {
            now,
            ..Self::default()
        };
        let rows: Vec<(String, String, i64, bool)> = match <[_; 1]>::try_from(docs) {
            Ok([doc]) => serde_json::from_value::<Option<_>>(doc.unwrap_or_default())
                .map_err(DomainError::unexpected)?
                .unwrap_or_default(),
            Err(docs) if docs.is_empty() => Vec::new(),
            Err(_) => return Err(DomainError::unexpected("the locks' read: one document")),
        };
        for (kind, name, token, busy) in rows {
            match kind.as_str() {
                "resource" => {
                    locks.resources.insert(name, Resource { token, busy });
                }
                _ => locks.done.push(name),
            }
        }
        if needs
            .iter()
            .any(|n| !locks.resources.contains_key(&n.resource))
        {
            return Err(DomainError::unexpected(
                "a resource's fencing row was not read",
            ));
        }
        Ok(locks)
    }

    /// Whether `need` can be granted now.
    pub fn is_free(&self, need: &LockNeed) -> bool {
        self.resources.get(&need.resource).is_some_and(|r| !r.busy)
            && !self.done.contains(&need.key)
    }

    /// Grants `spec` (whose need must be free) and releases it at once, as
    /// its owner, with `result`: the resource is busy for the rest of the
    /// group, and the grant's key done.
    pub(crate) fn run(&mut self, spec: &LockSpec, result: serde_json::Value) -> DomainResult<()> {
        let need = spec
            .need()
            .filter(|need| self.is_free(need))
            .ok_or(DomainError::NotInGroup)?;
        let resource = self
            .resources
            .get_mut(&need.resource)
            .ok_or(DomainError::NotInGroup)?;
        resource.busy = true;
        let grant = granted_at_once(spec, resource.token, self.now);
        let acquired = LockView::from_row(grant.clone(), self.now);
        let how = Release {
            result: Some(result),
            ..Release::default()
        };
        let (row, event) = ended_own(grant, &spec.owner_id, &how, self.now);
        let ended = LockView::from_row(row.clone(), self.now);
        self.events
            .push(LockEvent::lock(EventKind::Acquired, acquired, self.now));
        self.events.push(LockEvent::lock(event, ended, self.now));
        self.done.push(need.key);
        self.granted.push(row);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.granted.is_empty()
    }

    /// The grants made, as parts of the group's one statement
    /// (`sql::run_together`), each with how many rows it must write: the
    /// locks, then their resources. None when no grant was made.
    pub fn parts(&self) -> DomainResult<Vec<(Part, u64)>> {
        if self.granted.is_empty() {
            return Ok(Vec::new());
        }
        let resources: Vec<lock_resource::Model> = self
            .granted
            .iter()
            .flat_map(|row| {
                super::names(&row.resources)
                    .into_iter()
                    .map(|resource_id| lock_resource::Model {
                        lock_id: row.id.clone(),
                        resource_id,
                        status: row.status.clone(),
                        fencing_token: row.fencing_token,
                    })
            })
            .collect();
        let n = |rows: usize| rows as u64;
        Ok(vec![
            (
                Part {
                    sql: &LOCKS_SQL,
                    values: vec![json_rows(&self.granted)?],
                },
                n(self.granted.len()),
            ),
            (
                Part {
                    sql: &RESOURCES_SQL,
                    values: vec![json_rows(&resources)?],
                },
                n(resources.len()),
            ),
        ])
    }

    /// What the monitor hears, once the group has committed.
    pub fn into_events(self) -> Vec<LockEvent> {
        self.events
    }
}

static LOCKS_SQL: LazyLock<String> = LazyLock::new(|| {
    insert_json(
        "transaction_locks",
        &[
            ("id", "text"),
            ("resources", "text"),
            ("owner_id", "text"),
            ("owner_type", "text"),
            ("created_by", "text"),
            ("status", "text"),
            ("fencing_token", "bigint"),
            ("priority", "int"),
            ("transaction_type", "text"),
            ("transaction_data", "text"),
            ("idempotency_key", "text"),
            ("result", "text"),
            ("error", "text"),
            ("acquired_at_ms", "bigint"),
            ("expires_at_ms", "bigint"),
            ("released_at_ms", "bigint"),
            ("released_by", "text"),
            ("release_reason", "text"),
            ("wait_ms", "bigint"),
            ("queue_id", "bigint"),
            ("tallied", "boolean"),
        ],
    )
});

static RESOURCES_SQL: LazyLock<String> = LazyLock::new(|| {
    insert_json(
        "transaction_lock_resources",
        &[
            ("lock_id", "text"),
            ("resource_id", "text"),
            ("status", "text"),
            ("fencing_token", "bigint"),
        ],
    )
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locks::{AcquireRequest, LockStatus, WaitMode};

    fn spec(resource: &str, data: &str) -> LockSpec {
        AcquireRequest {
            resources: vec![resource.to_owned()],
            ttl_ms: None,
            priority: Some(1),
            transaction_type: "open_order".into(),
            transaction_data: Some(serde_json::json!({ "signal": data })),
            wait: WaitMode::Fail,
            queue_timeout_ms: None,
            owner_id: "user:7".into(),
            requested_by: "user:7".into(),
            fenced_work: true,
        }
        .validate()
        .unwrap()
    }

    /// What `read` would have read: these resources with their new tokens
    /// and whether they were busy, and these keys done.
    fn read_as(resources: &[(&str, i64, bool)], done: &[&str]) -> GroupLocks {
        GroupLocks {
            now: 1_000,
            resources: resources
                .iter()
                .map(|&(name, token, busy)| (name.to_owned(), Resource { token, busy }))
                .collect(),
            done: done.iter().map(|&k| k.to_owned()).collect(),
            ..GroupLocks::default()
        }
    }

    #[test]
    fn only_a_fenced_request_for_one_resource_is_granted_in_a_group() {
        assert!(spec("trade:7:A:buy:s", "s").need().is_some());
        let not_fenced = LockSpec {
            fenced_work: false,
            ..spec("trade:7:A:buy:s", "s")
        };
        assert!(not_fenced.need().is_none());
        let two = LockSpec {
            resources: vec!["item:a".into(), "item:b".into()],
            ..spec("item:a", "s")
        };
        assert!(two.need().is_none());
    }

    #[test]
    fn the_fencing_rows_are_locked_sorted_each_once() {
        assert!(GroupLocks::fencing(&[]).is_none());
        let (b, a) = (spec("trade:7:B:buy:s", "s"), spec("trade:7:A:buy:s", "s"));
        let (b, a) = (b.need().unwrap(), a.need().unwrap());
        let part = GroupLocks::fencing(&[&b, &a, &b]).unwrap();
        assert_eq!(
            part.values,
            [sea_orm::Value::from(vec![
                "trade:7:A:buy:s".to_owned(),
                "trade:7:B:buy:s".to_owned()
            ])]
        );
        assert!(part.sql.ends_with("RETURNING 1"), "a part: {}", part.sql);
    }

    #[test]
    fn a_free_resource_is_granted_once_and_released_with_the_result() {
        let (a, b) = (spec("trade:7:A:buy:s", "s"), spec("trade:7:A:buy:s", "t"));
        let mut locks = read_as(&[("trade:7:A:buy:s", 12, false)], &[]);
        assert!(locks.is_free(&a.need().unwrap()));
        locks.run(&a, serde_json::json!({"id": 5})).unwrap();
        // the resource is taken for the rest of the group, whatever the key
        assert!(!locks.is_free(&a.need().unwrap()));
        assert!(matches!(
            locks.run(&b, serde_json::json!(null)),
            Err(DomainError::NotInGroup)
        ));
        let [row] = locks.granted.as_slice() else {
            panic!("{:?}", locks.granted)
        };
        assert_eq!(row.status, LockStatus::Released.as_str());
        assert_eq!(row.fencing_token, 12, "the token read for the resource");
        assert_eq!(row.result.as_deref(), Some(r#"{"id":5}"#));
        assert_eq!(row.released_by.as_deref(), Some("user:7"));
        assert_eq!(
            (row.acquired_at_ms, row.released_at_ms),
            (1_000, Some(1_000))
        );
        assert_eq!(row.idempotency_key, a.idempotency_key);
        let counts: Vec<u64> = locks.parts().unwrap().iter().map(|(_, n)| *n).collect();
        assert_eq!(counts, [1, 1], "one lock and its one resource");
        let kinds: Vec<EventKind> = locks.into_events().iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventKind::Acquired, EventKind::Released]);
    }

    #[test]
    fn a_busy_resource_or_a_done_request_is_not_granted() {
        let a = spec("trade:7:A:buy:s", "s");
        let mut busy = read_as(&[("trade:7:A:buy:s", 3, true)], &[]);
        assert!(!busy.is_free(&a.need().unwrap()));
        assert!(matches!(
            busy.run(&a, serde_json::json!(1)),
            Err(DomainError::NotInGroup)
        ));
        let done = read_as(&[("trade:7:A:buy:s", 3, false)], &[&a.idempotency_key]);
        assert!(!done.is_free(&a.need().unwrap()));
        // a resource the group did not read is never free
        assert!(!read_as(&[], &[]).is_free(&a.need().unwrap()));
        assert!(busy.is_empty() && busy.parts().unwrap().is_empty());
        assert!(busy.into_events().is_empty());
    }
}
