//! Hand-written SQL for the few queries the query builder cannot express on
//! both engines (recursive walks of the referral tree, grouped sums) and for
//! the money path's statements on PostgreSQL (`Part`, `run_together`;
//! `Read`, `read_together`).
//! Write `?` placeholders; PostgreSQL gets them numbered. Also the one
//! filter for rows that lapse (`status_as_of`).
//!
//! The money path's PostgreSQL statements take their rows as arrays (rows
//! joined to a table: the planner sees how many there are) or as one JSON
//! document (rows only inserted, nullable fields included), never as a
//! `VALUES` list: their text is then the same whatever the number of rows,
//! so each is prepared once per connection and never parsed again.
//!
//! An array joined to a table is passed as `(SELECT ?::bigint[])`, not as
//! `?::bigint[]`: PostgreSQL plans a prepared
//! statement anew for each run's values as long as that looks cheaper than
//! one plan for any values, and with the array in sight it counts its rows,
//! so a short array (one or two rows: most groups outside a burst) was
//! planned again on every run (0.35 ms of planning for 0.54 ms of execution
//! for a group's write). Behind a subquery the array's length is unseen
//! (estimated at 10 rows in every plan), and from the sixth run on the
//! statement keeps one plan per connection: the same one, a loop of
//! primary-key lookups.

use std::fmt::Write as _;

use sea_orm::{ColumnTrait, Condition, ConnectionTrait, DbBackend, Statement, Value};
use serde::Serialize;

use crate::error::{DomainError, DomainResult};

/// The status rows that lapse are stored with, and read as once lapsed.
const EXPIRED: &str = "expired";

/// The rows whose status reads as `wanted` at `at` (epoch ms), where a row
/// still `live` (a hold `held`, a lock `active`) past its expiry reads as
/// `expired` before any cleanup has marked it: `live` takes only unexpired
/// rows, `expired` takes the lapsed live ones too, any other status is
/// taken as stored.
pub fn status_as_of<C: ColumnTrait>(
    status: C,
    expires_at_ms: C,
    wanted: &str,
    live: &str,
    at: i64,
) -> Condition {
    status_branches(status, expires_at_ms, wanted, live, at)
        .into_iter()
        .fold(Condition::any(), Condition::add)
}

/// `status_as_of` as conditions no row matches two of, each with one
/// status (`expired` is two: stored so, and lapsed while live), for a list
/// that reads each along its (…, status, id) index
/// (`page::newest_first_of_any`).
pub fn status_branches<C: ColumnTrait>(
    status: C,
    expires_at_ms: C,
    wanted: &str,
    live: &str,
    at: i64,
) -> Vec<Condition> {
    let lapsed = |is_lapsed: bool| {
        let expiry = if is_lapsed {
            expires_at_ms.lte(at)
        } else {
            expires_at_ms.gt(at)
        };
        Condition::all().add(status.eq(live)).add(expiry)
    };
    if wanted == live {
        vec![lapsed(false)]
    } else if wanted == EXPIRED {
        vec![Condition::all().add(status.eq(EXPIRED)), lapsed(true)]
    } else {
        vec![Condition::all().add(status.eq(wanted))]
    }
}

pub fn statement(backend: DbBackend, sql: &str, values: Vec<Value>) -> Statement {
    let sql = match backend {
        DbBackend::Postgres => {
            let mut out = String::with_capacity(sql.len() + 8);
            let mut n = 0;
            for c in sql.chars() {
                if c == '?' {
                    n += 1;
                    out.push('$');
                    out.push_str(&n.to_string());
                } else {
                    out.push(c);
                }
            }
            out
        }
        _ => sql.to_owned(),
    };
    Statement::from_sql_and_values(backend, sql, values)
}

/// The condition that picks the rows `taken` selects (`SELECT <key> FROM …
/// LIMIT ?`), for background work that goes through a table in batches.
///
/// On PostgreSQL the rows taken are locked first, skipping those another
/// instance's job (or a request) holds at the moment, so that two
/// instances share the work instead of queueing on each other's rows;
/// `taken`'s filter is checked again on each row as it is locked, and no
/// one can change the row until this transaction ends: that is the write's
/// guard. They are then found by `key` as one array, read once: written as
/// `key IN (…)`, the locking subquery could be planned as a loop that ran
/// it again for every row written (the lock tally of 5,000 grants took
/// 4.6 s, growing with the batch's square), or as a join that read the
/// whole table. SQLite has no row locks and reads an `IN` list once.
pub fn taken_rows(backend: DbBackend, key: &str, taken: &str) -> String {
    match backend {
        DbBackend::Postgres => format!("{key} = ANY(ARRAY({taken} FOR UPDATE SKIP LOCKED))"),
        _ => format!("{key} IN ({taken})"),
    }
}

/// An `INSERT` of the rows of one JSON document (`json_rows`) into `table`,
/// in the document's order (ids are given in it), counting what it wrote
/// (`RETURNING 1`, a `Part`'s text): `columns` are the columns written,
/// with their types; other fields of the rows are not read.
pub fn insert_json(table: &str, columns: &[(&str, &str)]) -> String {
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let typed: Vec<String> = columns.iter().map(|(n, t)| format!("{n} {t}")).collect();
    let names = names.join(", ");
    format!(
        "INSERT INTO {table} ({names}) SELECT {names} FROM ROWS FROM \
         (json_to_recordset(?::json) AS ({})) WITH ORDINALITY AS r({names}, ord) \
         ORDER BY ord RETURNING 1",
        typed.join(", ")
    )
}

/// Rows as one JSON document, for `json_to_recordset(?::json)`.
pub fn json_rows<T: Serialize>(rows: &[T]) -> DomainResult<Value> {
    serde_json::to_string(rows)
        .map(Value::from)
        .map_err(|e| DomainError::unexpected(format!("rows as JSON: {e}")))
}

/// One data-modifying statement of several that run as one (PostgreSQL's
/// `WITH`, `run_together`): its SQL ends in `RETURNING 1`, so the rows it
/// wrote can be counted. The SQL is fixed text, written once per process.
#[derive(Debug)]
pub struct Part {
    pub sql: &'static str,
    pub values: Vec<Value>,
}

impl Part {
    /// The part as a statement of its own (PostgreSQL): the rows it wrote
    /// are its `rows_affected`.
    pub fn alone(self) -> Statement {
        statement(DbBackend::Postgres, self.sql, self.values)
    }
}

/// The parts as one statement: each a `WITH` query, and one row of how many
/// rows each wrote (`n0`, `n1`, …). All of them run, on one snapshot, or
/// none does.
fn together(parts: Vec<Part>) -> Statement {
    let mut sql = String::from("WITH ");
    let mut counts = Vec::with_capacity(parts.len());
    let mut values = Vec::new();
    for (i, part) in parts.into_iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        let _ = write!(sql, "p{i} AS ({})", part.sql);
        counts.push(format!("(SELECT count(*) FROM p{i}) AS n{i}"));
        values.extend(part.values);
    }
    let _ = write!(sql, " SELECT {}", counts.join(", "));
    statement(DbBackend::Postgres, &sql, values)
}

/// Runs the parts as one statement, one round trip (PostgreSQL only), and
/// returns how many rows each wrote, in order.
pub async fn run_together<C: ConnectionTrait>(
    conn: &C,
    parts: Vec<Part>,
) -> DomainResult<Vec<u64>> {
    let n = parts.len();
    let row = conn
        .query_one_raw(together(parts))
        .await?
        .ok_or_else(|| DomainError::unexpected("a statement of parts without its counts"))?;
    (0..n)
        .map(|i| {
            let count: i64 = row.try_get("", &format!("n{i}"))?;
            Ok(count.unsigned_abs())
        })
        .collect()
}

/// One read of several that go as one statement (`read_together`): a
/// scalar subquery whose value, as text, is a JSON document (`null` when it
/// found nothing). Its text is fixed, written once per process.
#[derive(Debug)]
pub struct Read {
    pub sql: &'static str,
    pub values: Vec<Value>,
}

/// The reads as one statement on PostgreSQL (one round trip, on one
/// snapshot): each one's document, in order.
pub async fn read_together<C: ConnectionTrait>(
    conn: &C,
    reads: Vec<Read>,
) -> DomainResult<Vec<Option<serde_json::Value>>> {
    if reads.is_empty() {
        return Ok(Vec::new());
    }
    let n = reads.len();
    let mut columns = Vec::with_capacity(n);
    let mut values = Vec::new();
    for (i, read) in reads.into_iter().enumerate() {
        columns.push(format!("({})::text AS r{i}", read.sql));
        values.extend(read.values);
    }
    let sql = format!("SELECT {}", columns.join(", "));
    let row = conn
        .query_one_raw(statement(DbBackend::Postgres, &sql, values))
        .await?
        .ok_or_else(|| DomainError::unexpected("a statement of reads read no row"))?;
    (0..n)
        .map(|i| {
            let text: Option<String> = row.try_get("", &format!("r{i}"))?;
            text.map(|t| serde_json::from_str(&t))
                .transpose()
                .map_err(|e| DomainError::unexpected(format!("a read's document: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapsed_rows_read_as_expired() {
        use infra::entities::hold::{Column, Entity};
        use sea_orm::{EntityTrait, QueryFilter, QueryTrait};
        let sql = |wanted| {
            let cond = status_as_of(Column::Status, Column::ExpiresAtMs, wanted, "held", 7);
            let query = Entity::find().filter(cond).build(DbBackend::Sqlite);
            let sql = query.to_string();
            sql[sql.find("WHERE").unwrap_or(0)..].to_owned()
        };
        assert_eq!(
            sql("held"),
            r#"WHERE "holds"."status" = 'held' AND "holds"."expires_at_ms" > 7"#
        );
        assert_eq!(
            sql("expired"),
            r#"WHERE "holds"."status" = 'expired' OR ("holds"."status" = 'held' AND "holds"."expires_at_ms" <= 7)"#
        );
        assert_eq!(sql("voided"), r#"WHERE "holds"."status" = 'voided'"#);
    }

    #[test]
    fn placeholders_are_numbered_for_postgres_only() {
        let values = vec![Value::from(1i64), Value::from(2i64)];
        let pg = statement(DbBackend::Postgres, "a = ? AND b < ?", values.clone());
        assert_eq!(pg.sql, "a = $1 AND b < $2");
        let lite = statement(DbBackend::Sqlite, "a = ? AND b < ?", values);
        assert_eq!(lite.sql, "a = ? AND b < ?");
    }

    #[test]
    fn parts_run_as_one_statement_counting_each() {
        let part = |sql: &'static str, v: i64| Part {
            sql,
            values: vec![Value::from(v)],
        };
        let stmt = together(vec![
            part("UPDATE a SET x = ? RETURNING 1", 1),
            part("INSERT INTO b SELECT ? RETURNING 1", 2),
        ]);
        assert_eq!(
            stmt.sql,
            "WITH p0 AS (UPDATE a SET x = $1 RETURNING 1), \
             p1 AS (INSERT INTO b SELECT $2 RETURNING 1) \
             SELECT (SELECT count(*) FROM p0) AS n0, (SELECT count(*) FROM p1) AS n1"
        );
        let values = stmt.values.map(|v| v.0).unwrap_or_default();
        assert_eq!(values, vec![Value::from(1i64), Value::from(2i64)]);
    }
}
