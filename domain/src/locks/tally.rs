//! The lock statistics (`GET /api/v1/locks/stats`, and the gauges each
//! cleanup pass sets) in time that does not grow with the history kept.
//!
//! A finished grant never changes again. The cleanup tallies finished
//! grants into `lock_tally` — one row per (status, wait in ms): how many,
//! and their summed hold time — flipping each grant's `tallied` flag with a
//! guarded UPDATE (`sql::taken_rows`) in the same transaction, so a grant
//! enters the tally once whichever instance's cleanup gets to it. The purge
//! of old grants returns what it deleted and takes the tallied ones back out
//! in its transaction.
//! The statistics are the tally plus the grants not tallied yet (the active
//! ones and those finished since the last pass, which a partial index finds):
//! the same numbers as summing every grant kept, read from a table whose
//! size is the number of distinct waits, not the number of grants.

use std::collections::BTreeMap;

use sea_orm::{ConnectionTrait, QueryResult, Value};

use super::LockStats;
use crate::error::{DomainError, DomainResult};
use crate::sql::{statement, taken_rows};

/// Grants one tally or purge statement takes at most.
pub(crate) const BATCH: i64 = 5_000;

/// How long a finished grant was held; 0 for the expired (not averaged).
const HELD_MS: &str = "CASE WHEN status IN ('released', 'failed') \
    THEN COALESCE(released_at_ms - acquired_at_ms, 0) ELSE 0 END";

/// Tally rows written per statement (4 values each).
const UPSERT_ROWS: usize = 500;

/// The grants of one (status, wait): how many, and their summed hold time.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    n: i64,
    held_ms: i64,
}

/// Changes to the tally, in key order: the order every writer takes the
/// tally's rows in, so that two cleanups never wait on each other in a
/// cycle.
type Changes = BTreeMap<(String, i64), Bucket>;

/// Tallies up to `batch` finished grants not tallied yet; returns how many
/// it tallied.
pub(crate) async fn tally_finished<C: ConnectionTrait>(txn: &C, batch: i64) -> DomainResult<u64> {
    let backend = txn.get_database_backend();
    let sql = format!(
        "UPDATE transaction_locks SET tallied = TRUE WHERE {} \
         RETURNING status, wait_ms, {HELD_MS} AS held_ms",
        taken_rows(
            backend,
            "id",
            "SELECT id FROM transaction_locks WHERE tallied = FALSE AND status <> 'active' LIMIT ?",
        )
    );
    let rows = txn
        .query_all_raw(statement(backend, &sql, vec![batch.into()]))
        .await?;
    apply(txn, changes(rows.iter(), 1)?).await?;
    Ok(rows.len() as u64)
}

/// Deletes up to `batch` finished grants that ended before `cutoff` (their
/// resource rows go with them), taking the tallied ones out of the tally;
/// returns how many it deleted.
pub(crate) async fn purge_finished<C: ConnectionTrait>(
    txn: &C,
    cutoff: i64,
    batch: i64,
) -> DomainResult<u64> {
    let backend = txn.get_database_backend();
    let sql = format!(
        "DELETE FROM transaction_locks WHERE {} \
         RETURNING tallied, status, wait_ms, {HELD_MS} AS held_ms",
        taken_rows(
            backend,
            "id",
            "SELECT id FROM transaction_locks WHERE status <> 'active' AND released_at_ms < ? \
             LIMIT ?",
        )
    );
    let rows = txn
        .query_all_raw(statement(backend, &sql, vec![cutoff.into(), batch.into()]))
        .await?;
    let mut tallied = Vec::with_capacity(rows.len());
    for row in &rows {
        if row.try_get::<bool>("", "tallied")? {
            tallied.push(row);
        }
    }
    if !tallied.is_empty() {
        apply(txn, changes(tallied.into_iter(), -1)?).await?;
        txn.execute_raw(statement(
            backend,
            "DELETE FROM lock_tally WHERE n = 0",
            vec![],
        ))
        .await?;
    }
    Ok(rows.len() as u64)
}

/// The returned grants as changes to the tally, each counted `sign` times.
fn changes<'r>(rows: impl Iterator<Item = &'r QueryResult>, sign: i64) -> DomainResult<Changes> {
    let mut out = Changes::new();
    for row in rows {
        let key = (row.try_get("", "status")?, row.try_get("", "wait_ms")?);
        let bucket = out.entry(key).or_default();
        bucket.n += sign;
        bucket.held_ms += sign * row.try_get::<i64>("", "held_ms")?;
    }
    Ok(out)
}

/// Adds `changes` to the tally (a negative change takes grants out).
async fn apply<C: ConnectionTrait>(txn: &C, changes: Changes) -> DomainResult<()> {
    let backend = txn.get_database_backend();
    let changes: Vec<_> = changes.into_iter().collect();
    for chunk in changes.chunks(UPSERT_ROWS) {
        let sql = format!(
            "INSERT INTO lock_tally (status, wait_ms, n, held_ms) VALUES {} \
             ON CONFLICT (status, wait_ms) DO UPDATE SET n = lock_tally.n + excluded.n, \
             held_ms = lock_tally.held_ms + excluded.held_ms",
            vec!["(?, ?, ?, ?)"; chunk.len()].join(", ")
        );
        let mut vals: Vec<Value> = Vec::with_capacity(chunk.len() * 4);
        for ((status, wait_ms), bucket) in chunk {
            vals.extend([
                status.clone().into(),
                (*wait_ms).into(),
                bucket.n.into(),
                bucket.held_ms.into(),
            ]);
        }
        txn.execute_raw(statement(backend, &sql, vals)).await?;
    }
    Ok(())
}

/// Every grant kept as (status, wait_ms, n, held_ms) rows: the tally, and
/// the grants not tallied yet one by one, with `held` as their hold time
/// and an active grant past its expiry counted as `expired` (it is free,
/// whether or not the cleanup has marked it). Its `?` is now.
fn all_grants(held: &str) -> String {
    format!(
        "SELECT status, wait_ms, n, held_ms FROM lock_tally \
         UNION ALL SELECT CASE WHEN status = 'active' AND expires_at_ms <= ? THEN 'expired' \
         ELSE status END, wait_ms, 1, {held} FROM transaction_locks WHERE tallied = FALSE"
    )
}

/// The statistics of every grant kept, as of `now` (all but `queued`,
/// which is of the queue).
pub(crate) async fn totals<C: ConnectionTrait>(conn: &C, now: i64) -> DomainResult<LockStats> {
    let backend = conn.get_database_backend();
    let all = all_grants(HELD_MS);
    let sql = format!(
        "SELECT status, CAST(SUM(n) AS BIGINT) AS n, CAST(SUM(wait_ms * n) AS BIGINT) AS waited, \
         CAST(SUM(held_ms) AS BIGINT) AS held FROM ({all}) AS g GROUP BY status"
    );
    let mut t = LockStats::default();
    let (mut count, mut waited, mut held_count, mut held) = (0i64, 0i64, 0i64, 0i64);
    for row in conn
        .query_all_raw(statement(backend, &sql, vec![now.into()]))
        .await?
    {
        let status: String = row.try_get("", "status")?;
        let n: i64 = row.try_get("", "n")?;
        count += n;
        waited += row.try_get::<i64>("", "waited")?;
        match status.as_str() {
            "active" => t.active = n,
            "expired" => t.expired = n,
            "released" | "failed" => {
                held_count += n;
                held += row.try_get::<i64>("", "held")?;
                if status == "released" {
                    t.released = n;
                } else {
                    t.failed = n;
                }
            }
            other => return Err(DomainError::unexpected(format!("lock status {other}"))),
        }
    }
    t.avg_hold_ms = mean(held, held_count);
    t.avg_wait_ms = mean(waited, count);
    t.p99_wait_ms = p99_wait(conn, now).await?;
    Ok(t)
}

/// The nearest-rank 99th percentile of every grant's wait: the smallest
/// wait that at least 99 % of the grants waited no longer than (with fewer
/// than 100 grants, the longest); 0 with none.
async fn p99_wait<C: ConnectionTrait>(conn: &C, now: i64) -> DomainResult<i64> {
    let backend = conn.get_database_backend();
    let all = all_grants("0");
    let sql = format!(
        "WITH w AS (SELECT wait_ms, SUM(n) AS n FROM ({all}) AS g GROUP BY wait_ms), \
         c AS (SELECT wait_ms, SUM(n) OVER (ORDER BY wait_ms) AS upto, SUM(n) OVER () AS total \
         FROM w) \
         SELECT wait_ms FROM c WHERE upto * 100 >= total * 99 ORDER BY wait_ms LIMIT 1"
    );
    Ok(conn
        .query_one_raw(statement(backend, &sql, vec![now.into()]))
        .await?
        .map(|row| row.try_get::<i64>("", "wait_ms"))
        .transpose()?
        .unwrap_or(0))
}

/// `sum / n` rounded to the nearest whole number (halves away from zero);
/// 0 when `n` is 0.
fn mean(sum: i64, n: i64) -> i64 {
    if n <= 0 {
        return 0;
    }
    let (sum, n) = (i128::from(sum), i128::from(n));
    let rounded = (2 * sum + sum.signum() * n) / (2 * n);
    i64::try_from(rounded).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use sea_orm::TransactionTrait;

    use super::*;
    use crate::locks::store::tests::{grant, insert};

    /// The statistics as the sums over every grant kept, as they were
    /// computed before the tally.
    async fn summed(db: &infra::Database, now: i64) -> LockStats {
        let conn = &db.conn;
        let rows = conn
            .query_all_raw(statement(
                conn.get_database_backend(),
                "SELECT status, expires_at_ms, wait_ms, released_at_ms - acquired_at_ms AS held \
                 FROM transaction_locks",
                vec![],
            ))
            .await
            .unwrap();
        let mut t = LockStats::default();
        let (mut waits, mut held, mut held_n) = (Vec::new(), 0, 0);
        for row in rows {
            let status: String = row.try_get("", "status").unwrap();
            let expires: i64 = row.try_get("", "expires_at_ms").unwrap();
            waits.push(row.try_get::<i64>("", "wait_ms").unwrap());
            match status.as_str() {
                "active" if expires > now => t.active += 1,
                "active" | "expired" => t.expired += 1,
                finished => {
                    held += row.try_get::<Option<i64>>("", "held").unwrap().unwrap();
                    held_n += 1;
                    if finished == "released" {
                        t.released += 1;
                    } else {
                        t.failed += 1;
                    }
                }
            }
        }
        waits.sort_unstable();
        let n = i64::try_from(waits.len()).unwrap();
        t.avg_hold_ms = mean(held, held_n);
        t.avg_wait_ms = mean(waits.iter().sum(), n);
        t.p99_wait_ms = match usize::try_from((n * 99 + 99) / 100).unwrap() {
            0 => 0,
            rank => waits[rank - 1],
        };
        t
    }

    async fn tally(db: &infra::Database, batch: i64) -> u64 {
        let txn = db.conn.begin().await.unwrap();
        let n = tally_finished(&txn, batch).await.unwrap();
        txn.commit().await.unwrap();
        n
    }

    async fn purge(db: &infra::Database, cutoff: i64) -> u64 {
        let txn = db.conn.begin().await.unwrap();
        let n = purge_finished(&txn, cutoff, BATCH).await.unwrap();
        txn.commit().await.unwrap();
        n
    }

    /// Whatever has been tallied or purged, the statistics are the sums over
    /// the grants kept: each grant counted once, from the tally or from its
    /// row, and a purged one not at all.
    #[tokio::test]
    async fn the_tally_and_the_rows_add_up_to_every_grant_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::testing::database(&dir).await;
        let now = 1_000_000;
        assert_eq!(totals(&db.conn, now).await.unwrap(), LockStats::default());
        // 240 finished grants at 1 000 ms apart, of each status in turn,
        // held i ms and waiting i % 7 · 100 ms (so that waits repeat), the
        // last two 5 s longer (so that the 99th percentile is not the
        // longest wait); then two active grants, one past its expiry
        let statuses = ["released", "failed", "expired", "released"];
        for i in 1..=240i64 {
            let at = 1_000 * i;
            let status = statuses[usize::try_from(i % 4).unwrap()];
            let mut row = grant(&format!("g{i}"), &["r"], i, status, at, i);
            row.wait_ms = (i % 7) * 100 + if i > 238 { 5_000 } else { 0 };
            insert(&db, &row).await;
        }
        for (id, at) in [("live", now - 10), ("late", now - 90_000)] {
            let mut row = grant(id, &[id], 1, "active", at, 0);
            (row.released_at_ms, row.expires_at_ms, row.wait_ms) = (None, at + 60_000, 7);
            insert(&db, &row).await;
        }
        let expected = summed(&db, now).await;
        assert_eq!(
            (
                expected.active,
                expected.expired,
                expected.released,
                expected.failed
            ),
            (1, 61, 120, 60)
        );
        assert_eq!(expected.p99_wait_ms, 600);
        assert_eq!(totals(&db.conn, now).await.unwrap(), expected);

        // tallied in parts: the same numbers at each step; a second pass
        // finds nothing left (the active grants are never tallied)
        assert_eq!(tally(&db, 100).await, 100);
        assert_eq!(totals(&db.conn, now).await.unwrap(), expected);
        assert_eq!(tally(&db, 1_000).await, 140);
        assert_eq!(tally(&db, 1_000).await, 0);
        assert_eq!(totals(&db.conn, now).await.unwrap(), expected);

        // a grant finished after the tally counts from its row
        let mut row = grant("after", &["r"], 241, "released", 500_000, 40);
        row.wait_ms = 9;
        insert(&db, &row).await;
        let expected = summed(&db, now).await;
        assert_eq!(expected.released, 121);
        assert_eq!(totals(&db.conn, now).await.unwrap(), expected);

        // a purge takes the tallied grants it deletes out of the tally
        assert_eq!(purge(&db, 100_500).await, 100);
        let expected = summed(&db, now).await;
        assert_eq!(expected.released + expected.failed + expected.expired, 142);
        assert_eq!(totals(&db.conn, now).await.unwrap(), expected);

        // purging every finished grant, tallied or not ("after"), leaves the
        // active grants and an empty tally
        assert_eq!(purge(&db, i64::MAX).await, 141);
        let left = db
            .conn
            .query_one_raw(statement(
                db.conn.get_database_backend(),
                "SELECT COUNT(*) AS n FROM lock_tally",
                vec![],
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(left.try_get::<i64>("", "n").unwrap(), 0);
        let expected = summed(&db, now).await;
        assert_eq!((expected.active, expected.expired), (1, 1));
        assert_eq!(totals(&db.conn, now).await.unwrap(), expected);
    }

    #[test]
    fn means_round_to_the_nearest_whole_number() {
        assert_eq!(mean(0, 0), 0);
        assert_eq!(mean(10, 4), 3); // 2.5
        assert_eq!(mean(9, 4), 2); // 2.25
        assert_eq!(mean(-10, 4), -3);
        assert_eq!(mean(i64::MAX, 1), i64::MAX);
    }
}
