//! The queue's ordering rules, pure: priority 1 first, FIFO within a
//! priority (queued_at, then id), and aging, which improves a waiter's
//! effective priority by one level per aging interval, never past 1. The
//! same rule is written once more in SQL ([`effective_priority_sql`]) so that
//! the database can pick a queue head without reading the whole queue.

use std::collections::BTreeSet;

/// A waiter's effective priority at `now_ms`.
pub fn effective_priority(priority: i32, queued_at_ms: i64, now_ms: i64, aging_ms: u64) -> i32 {
    let aging = i64::try_from(aging_ms.max(1)).unwrap_or(i64::MAX);
    let levels = (now_ms - queued_at_ms).max(0) / aging;
    let gained = i32::try_from(levels).unwrap_or(i32::MAX);
    priority.saturating_sub(gained).max(1)
}

/// [`effective_priority`] of the row aliased `q` as an SQL expression with
/// four placeholders: now, aging, now, aging (see [`effective_priority_values`]).
/// Both engines divide integers by truncation; `now - queued_at` is never
/// negative on one clock, so this is the floor the Rust function takes.
pub fn effective_priority_sql() -> &'static str {
    "(CASE WHEN q.priority - ((? - q.queued_at_ms) / ?) < 1 THEN 1 \
     ELSE q.priority - ((? - q.queued_at_ms) / ?) END)"
}

pub fn effective_priority_values(now_ms: i64, aging_ms: u64) -> [sea_orm::Value; 4] {
    let aging = i64::try_from(aging_ms.max(1)).unwrap_or(i64::MAX);
    [now_ms.into(), aging.into(), now_ms.into(), aging.into()]
}

/// Where a waiter stands: lower ranks are served first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank {
    pub effective_priority: i32,
    pub queued_at_ms: i64,
    pub id: i64,
}

impl Rank {
    pub fn at(priority: i32, queued_at_ms: i64, id: i64, now_ms: i64, aging_ms: u64) -> Self {
        Self {
            effective_priority: effective_priority(priority, queued_at_ms, now_ms, aging_ms),
            queued_at_ms,
            id,
        }
    }
}

/// A waiter as the hand-off sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub rank: Rank,
    pub resources: Vec<String>,
}

/// Which of `candidates` (the heads of the queues of some resources) are
/// granted when the resources in `busy` are held: in rank order, a waiter
/// is granted when none of its resources is busy or wanted by a better
/// waiter that could not be granted. So a multi-resource waiter keeps its
/// place in every queue it is in, and nobody behind it takes a resource it
/// is waiting for.
pub fn plan_grants(candidates: &[Candidate], busy: &BTreeSet<String>) -> Vec<i64> {
    let mut order: Vec<&Candidate> = candidates.iter().collect();
    order.sort_by_key(|c| c.rank);
    let mut taken = busy.clone();
    let mut granted = Vec::new();
    for c in order {
        if c.resources.iter().all(|r| !taken.contains(r)) {
            granted.push(c.rank.id);
        }
        taken.extend(c.resources.iter().cloned());
    }
    granted
}

/// The 1-based place of `me` among the waiters of each of its resources,
/// the worst of them: how many turns it waits at most. `others` are the
/// pending waiters of those resources (`me` among them or not).
pub fn position(me: &Candidate, others: &[Candidate]) -> i64 {
    me.resources
        .iter()
        .map(|r| {
            others
                .iter()
                .filter(|o| o.rank.id != me.rank.id && o.rank < me.rank && o.resources.contains(r))
                .count()
        })
        .max()
        .map_or(1, |ahead| i64::try_from(ahead).unwrap_or(i64::MAX) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: i64, priority: i32, queued_at_ms: i64, resources: &[&str]) -> Candidate {
        Candidate {
            rank: Rank::at(priority, queued_at_ms, id, 0, u64::MAX),
            resources: resources.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    #[test]
    fn higher_priority_first_then_fifo_then_id() {
        let mut ranks = [
            Rank::at(5, 100, 1, 100, 10_000),
            Rank::at(1, 200, 2, 200, 10_000),
            Rank::at(5, 50, 3, 100, 10_000),
            Rank::at(5, 50, 0, 100, 10_000),
        ];
        ranks.sort();
        let ids: Vec<i64> = ranks.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![2, 0, 3, 1]);
    }

    #[test]
    fn aging_gains_a_level_per_interval_and_stops_at_one() {
        assert_eq!(effective_priority(10, 0, 0, 1_000), 10);
        assert_eq!(effective_priority(10, 0, 999, 1_000), 10);
        assert_eq!(effective_priority(10, 0, 1_000, 1_000), 9);
        assert_eq!(effective_priority(10, 0, 8_999, 1_000), 2);
        assert_eq!(effective_priority(10, 0, 9_000, 1_000), 1);
        assert_eq!(effective_priority(10, 0, 1_000_000, 1_000), 1);
        assert_eq!(effective_priority(1, 0, 1_000_000, 1_000), 1);
        // a clock that went backwards costs nothing
        assert_eq!(effective_priority(5, 2_000, 1_000, 1_000), 5);
        // an old low-priority waiter overtakes a fresh high-priority one
        let old = Rank::at(10, 0, 1, 9_500, 1_000);
        let fresh = Rank::at(2, 9_400, 2, 9_500, 1_000);
        assert!(old < fresh);
    }

    #[test]
    fn the_best_free_waiter_is_granted_and_blocked_ones_keep_their_place() {
        let busy: BTreeSet<String> = ["b".to_owned()].into();
        // 1 wants a+b (b busy): it reserves a, so 2 (behind it on a) waits;
        // 3 wants c, free and uncontested.
        let c = vec![
            cand(2, 5, 20, &["a"]),
            cand(1, 5, 10, &["a", "b"]),
            cand(3, 9, 30, &["c"]),
        ];
        assert_eq!(plan_grants(&c, &busy), vec![3]);
        // with b free, 1 is granted and 2 still waits
        assert_eq!(plan_grants(&c, &BTreeSet::new()), vec![1, 3]);
        // priority beats arrival
        let c = vec![cand(1, 5, 10, &["a"]), cand(2, 1, 20, &["a"])];
        assert_eq!(plan_grants(&c, &BTreeSet::new()), vec![2]);
    }

    #[test]
    fn position_counts_the_worst_queue() {
        let me = cand(5, 5, 50, &["a", "b"]);
        let others = vec![
            cand(1, 5, 10, &["a"]),
            cand(2, 5, 20, &["b"]),
            cand(3, 5, 30, &["b"]),
            cand(6, 5, 60, &["a"]),
            me.clone(),
        ];
        assert_eq!(position(&me, &others), 3);
        assert_eq!(position(&me, &[]), 1);
    }
}
