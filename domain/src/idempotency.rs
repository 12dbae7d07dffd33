//! IdempotencyService: exactly-once execution per (principal, method, route,
//! client key), with **one commit per write**: the claim of the key, the
//! operation and the stored response are one database transaction.
//!
//! 1. Claim, first in the operation's transaction: on PostgreSQL a
//!    transaction-scoped advisory lock on the key (`pg_try_advisory_xact_lock`,
//!    not waited for: a concurrent duplicate is answered 409 at once) read
//!    together with the stored key, in one round trip; on SQLite the
//!    transaction already holds the write lock. A stored key is replayed (same
//!    body) or refused (other body).
//! 2. Execute the operation and store the key `completed` with its response
//!    in the same transaction (`INSERT … ON CONFLICT DO UPDATE … WHERE` the
//!    old row has expired): zero rows means another request stored it first,
//!    so this one rolls back and replays that answer.
//! 3. A business refusal rolls the operation back and is stored as the
//!    completed response (its own short statement); a transient failure
//!    stores nothing, so the client may retry with the same key.
//! 4. A crash leaves nothing behind: the lock and any uncommitted row vanish
//!    with the connection, so the client's retry runs at once.
//! 5. Expired keys are deleted by the cleanup job. Rows `processing` with a
//!    lease (`locked_until`) are only written by versions before one-commit
//!    writes; they are honoured until their lease runs out.

use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use infra::entities::idempotency_key as key;
use infra::metrics::metrics;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter, Value,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::clock::{now, now_ms};
use crate::error::{DomainError, DomainResult};
use crate::sql::{Part, json_rows, statement, taken_rows};
use crate::tx::{RetryPolicy, TransactionService};

const PROCESSING: &str = "processing";
const COMPLETED: &str = "completed";
/// Expired keys one cleanup statement deletes at most.
const CLEANUP_BATCH: i64 = 5_000;

/// A response as it will be sent, and replayed, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub response: StoredResponse,
    pub replayed: bool,
}

/// How a write takes its key in its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Owned until the transaction ends: a claim of it elsewhere meanwhile
    /// is answered in flight.
    Own,
    /// Only read, for its stored answer: a trade on a signal in a group,
    /// which its lock keeps apart from the signal's other trades
    /// (`locks::planned`). Owning its key there would turn away the steps
    /// one by one of a trade holding that lock (they claim the key).
    Read,
}

/// What identifies one idempotent request.
#[derive(Debug, Clone)]
pub struct IdempotentRequest {
    /// SHA-256 of principal, method, route and client key: the stored key.
    pub key: String,
    pub principal: String,
    pub route: String,
    /// SHA-256 of the canonical request body.
    pub request_hash: String,
    /// A second key that gets the same answer, stored with it in the same
    /// statement or not at all (a trade on a signal is keyed by the signal,
    /// and its answer is also the client's Idempotency-Key's). Only the
    /// store sees it: the claim is of `key` alone.
    pub also: Option<Box<IdempotentRequest>>,
}

impl IdempotentRequest {
    pub fn new(
        principal: &str,
        method: &str,
        route: &str,
        client_key: &str,
        body: &serde_json::Value,
    ) -> Self {
        Self {
            key: storage_key(principal, method, route, client_key),
            principal: principal.to_owned(),
            route: format!("{method} {route}"),
            request_hash: fingerprint(body),
            also: None,
        }
    }

    /// The request and its `also`, each with the answer to store.
    fn with_also<'a>(
        answers: &[(&'a IdempotentRequest, &'a StoredResponse)],
    ) -> Vec<(&'a IdempotentRequest, &'a StoredResponse)> {
        answers
            .iter()
            .flat_map(|&(req, response)| {
                std::iter::once((req, response)).chain(req.also.as_deref().map(|a| (a, response)))
            })
            .collect()
    }
}

fn sha256_hex(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        // Length-prefixed, so ("ab","c") and ("a","bc") differ.
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

pub fn storage_key(principal: &str, method: &str, route: &str, client_key: &str) -> String {
    sha256_hex(&[principal, method, route, client_key])
}

/// Canonical JSON: object keys sorted at every depth, no insignificant space.
pub fn canonical_json(value: &serde_json::Value) -> String {
    fn sorted(value: &serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                let mut out = serde_json::Map::new();
                for (k, v) in entries {
                    out.insert(k.clone(), sorted(v));
                }
                serde_json::Value::Object(out)
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.iter().map(sorted).collect())
            }
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

pub fn fingerprint(body: &serde_json::Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(canonical_json(body).as_bytes());
    hex::encode(hasher.finalize())
}

/// A client key: 1 to 255 printable ASCII characters.
pub fn validate_client_key(key: &str) -> DomainResult<()> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(DomainError::invalid(
            "Idempotency-Key",
            "must be 1 to 255 printable ASCII characters",
        ));
    }
    Ok(())
}

/// What the first run of a key decided, inside its transaction.
enum Decided {
    Executed(StoredResponse),
    Replay(StoredResponse),
}

/// The stored key as the claim reads it.
struct Existing {
    request_hash: String,
    status: String,
    response_status: Option<i32>,
    response_body: Option<String>,
    locked_until_ms: i64,
    expires_at_ms: i64,
}

impl From<key::Model> for Existing {
    fn from(row: key::Model) -> Self {
        Self {
            request_hash: row.request_hash,
            status: row.status,
            response_status: row.response_status,
            response_body: row.response_body,
            locked_until_ms: row.locked_until_ms,
            expires_at_ms: row.expires_at_ms,
        }
    }
}

#[derive(Clone, Debug)]
pub struct IdempotencyService {
    tx: TransactionService,
    ttl: Duration,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The advisory lock id of a stored key: its first 64 bits. Two keys share
/// a lock with probability 2^-64, and then one of them waits a retry.
fn lock_id(key_hash: &str) -> i64 {
    let prefix = key_hash.get(..16).unwrap_or(key_hash);
    u64::from_str_radix(prefix, 16).map_or(0, |v| v as i64)
}

/// What a stored key means for a new request with `request_hash` at `at_ms`:
/// `None` when the key is free (absent, expired, or an abandoned claim).
fn decide(
    existing: Option<Existing>,
    request_hash: &str,
    at_ms: i64,
) -> DomainResult<Option<StoredResponse>> {
    let Some(row) = existing else {
        return Ok(None);
    };
    if row.expires_at_ms <= at_ms {
        return Ok(None);
    }
    if row.request_hash != request_hash {
        return Err(DomainError::IdempotencyKeyReused);
    }
    if row.status == COMPLETED {
        return stored(&row).map(Some);
    }
    if row.locked_until_ms > at_ms {
        return Err(DomainError::IdempotencyInFlight);
    }
    Ok(None)
}

/// Every answer was stored (`written` rows), else `ClaimLost`: another
/// request's answer is under one of the keys.
pub(crate) fn stored_all(
    answers: &[(&IdempotentRequest, &StoredResponse)],
    written: u64,
) -> DomainResult<()> {
    let keys: u64 = answers
        .iter()
        .map(|(req, _)| 1 + u64::from(req.also.is_some()))
        .sum();
    if written != keys {
        return Err(DomainError::ClaimLost);
    }
    Ok(())
}

/// The columns of a stored answer.
const STORED: &str = "key, principal, route, request_hash, status, claim_token, \
     response_status, response_body, locked_until_ms, expires_at_ms, created_at";

/// A stored answer replaces the row already under its key only when that row
/// is free: expired, or a claim abandoned past its lock. Its placeholders
/// take `free_values`.
const IF_FREE: &str = "ON CONFLICT (key) DO UPDATE SET principal = excluded.principal, \
     route = excluded.route, request_hash = excluded.request_hash, \
     status = excluded.status, claim_token = excluded.claim_token, \
     response_status = excluded.response_status, response_body = excluded.response_body, \
     locked_until_ms = excluded.locked_until_ms, expires_at_ms = excluded.expires_at_ms, \
     created_at = excluded.created_at \
     WHERE idempotency_keys.expires_at_ms <= ? \
     OR (idempotency_keys.status = ? AND idempotency_keys.locked_until_ms <= ?)";

/// The values of `IF_FREE`'s placeholders at `at_ms`.
fn free_values(at_ms: i64) -> [Value; 3] {
    [at_ms.into(), PROCESSING.into(), at_ms.into()]
}

impl IdempotencyService {
    pub fn new(tx: TransactionService, ttl: Duration) -> Self {
        Self { tx, ttl }
    }

    /// Runs `op` at most once for `req`, or replays what its one run answered.
    ///
    /// `on_ok` renders a success and `on_refusal` a business refusal into the
    /// response that is stored and sent. Both run inside the transaction, so
    /// they must be pure.
    pub async fn run<T, F, Fut, R, E>(
        &self,
        operation: &'static str,
        req: &IdempotentRequest,
        op: F,
        on_ok: R,
        on_refusal: E,
    ) -> DomainResult<Outcome>
    where
        F: Fn(Arc<DatabaseTransaction>) -> Fut,
        Fut: Future<Output = DomainResult<T>>,
        R: Fn(&T) -> StoredResponse,
        E: Fn(&DomainError) -> StoredResponse,
    {
        // A lost connection is retried: if an earlier attempt's COMMIT did
        // land, the claim finds the stored answer and replays it.
        let policy: RetryPolicy = self.tx.policy().clone().with_connection_loss_retry();
        let result = self
            .tx
            .execute_with_policy(operation, &policy, |txn| {
                let (op, on_ok) = (&op, &on_ok);
                async move {
                    if let Some(response) = self.claim(&txn, req).await? {
                        return Ok(Decided::Replay(response));
                    }
                    let value = op(Arc::clone(&txn)).await?;
                    let response = on_ok(&value);
                    self.store(&*txn, req, &response).await?;
                    Ok(Decided::Executed(response))
                }
            })
            .await;
        match result {
            Ok(Decided::Executed(response)) => Ok(Outcome {
                response,
                replayed: false,
            }),
            Ok(Decided::Replay(response)) => {
                metrics().idempotent_replays.inc();
                Ok(Outcome {
                    response,
                    replayed: true,
                })
            }
            Err(DomainError::ClaimLost) => self.stored_answer(req).await,
            Err(e) if e.is_refusal() => self.keep(req, on_refusal(&e)).await,
            Err(e) => Err(e),
        }
    }

    /// Another request stored this key first: answer what it stored.
    pub(crate) async fn stored_answer(&self, req: &IdempotentRequest) -> DomainResult<Outcome> {
        self.replay(req)
            .await?
            .ok_or(DomainError::IdempotencyInFlight)
    }

    /// The stored answer of `req`'s key, if it has one: a read, no claim.
    pub(crate) async fn peek(
        &self,
        req: &IdempotentRequest,
    ) -> DomainResult<Option<StoredResponse>> {
        let row = key::Entity::find_by_id(req.key.clone())
            .one(&self.tx.db().conn)
            .await?;
        match decide(row.map(Existing::from), &req.request_hash, now_ms()) {
            Err(DomainError::IdempotencyInFlight) => Ok(None),
            other => other,
        }
    }

    /// The answer a finished request under `req`'s key gave, to replay:
    /// `IdempotencyKeyReused` when it was another body. A read, no claim.
    pub(crate) async fn replay(&self, req: &IdempotentRequest) -> DomainResult<Option<Outcome>> {
        let Some(response) = self.peek(req).await? else {
            return Ok(None);
        };
        metrics().idempotent_replays.inc();
        Ok(Some(Outcome {
            response,
            replayed: true,
        }))
    }

    /// Stores `response` as `req`'s answer in a statement of its own, for an
    /// answer that moved no money (a refusal, a trade deduplicated or
    /// queued); should another request have stored the key first, its
    /// answer is the one.
    pub(crate) async fn keep(
        &self,
        req: &IdempotentRequest,
        response: StoredResponse,
    ) -> DomainResult<Outcome> {
        match self.store(&self.tx.db().conn, req, &response).await {
            Ok(()) => Ok(Outcome {
                response,
                replayed: false,
            }),
            Err(DomainError::ClaimLost) => self.stored_answer(req).await,
            Err(e) => {
                tracing::error!(error = %e, "storing an answer failed");
                Err(e)
            }
        }
    }

    /// Phase 1, inside the operation's transaction. `Some` is a stored
    /// answer to replay; `None` means this transaction owns the key.
    pub(crate) async fn claim(
        &self,
        txn: &DatabaseTransaction,
        req: &IdempotentRequest,
    ) -> DomainResult<Option<StoredResponse>> {
        self.claim_all(txn, &[(req, Claim::Own)], None)
            .await?
            .pop()
            .unwrap_or_else(|| Err(DomainError::unexpected("a claim without an answer")))
    }

    /// Phase 1 for several requests at once (a group commit), each claimed
    /// as `claim` would: one answer per request, in order. `Err` only when
    /// the database failed.
    ///
    /// `with`, on PostgreSQL, is a write that goes in the same statement (a
    /// `WITH` query, `sql::Part`), run to completion before the statement
    /// ends: a group's locks on its signals' fencing rows
    /// (`locks::planned`).
    pub(crate) async fn claim_all(
        &self,
        txn: &DatabaseTransaction,
        claims: &[(&IdempotentRequest, Claim)],
        with: Option<Part>,
    ) -> DomainResult<Vec<DomainResult<Option<StoredResponse>>>> {
        let reqs: Vec<&IdempotentRequest> = claims.iter().map(|(req, _)| *req).collect();
        let at_ms = now_ms();
        let mut out = Vec::with_capacity(reqs.len());
        if txn.get_database_backend() != DbBackend::Postgres {
            if with.is_some() {
                return Err(DomainError::unexpected(
                    "a write with the claims is for PostgreSQL",
                ));
            }
            // SQLite: the transaction holds the database write lock, so no
            // other writer can be between these reads and the store.
            for req in reqs {
                let row = key::Entity::find_by_id(req.key.clone()).one(txn).await?;
                out.push(decide(row.map(Existing::from), &req.request_hash, at_ms));
            }
            return Ok(out);
        }
        // The locks and the reads in one round trip. Should a request that
        // held a key commit between this statement's snapshot and its lock,
        // the read misses its row and the store finds it: this one then
        // rolls back and replays. Each key is one probe of the primary key
        // (`LATERAL … LIMIT 1`): joined plainly, the plan cached on a
        // connection while the table was small hashes the whole table on
        // every claim once it has grown.
        //
        // One key (a write alone, most groups of orders) goes without the
        // arrays, as plain values: the simplest plan. Several go as arrays
        // behind subqueries, so that the statement too is planned once per
        // connection: with the arrays in sight PostgreSQL planned it again
        // on every run while they were short (0.14 ms of planning for a
        // claim that runs in 0.05 ms; see `sql`).
        //
        // A key only read (`Claim::Read`) takes no lock: its statement is
        // the same, with `locked` true.
        let (sql, values) = match claims {
            [(req, claim)] => (
                "SELECT CASE WHEN ? THEN pg_try_advisory_xact_lock(?) ELSE true END AS locked, \
                 k.request_hash, k.status, \
                 k.response_status, k.response_body, k.locked_until_ms, k.expires_at_ms \
                 FROM (SELECT 1) AS q LEFT JOIN LATERAL \
                 (SELECT * FROM idempotency_keys i WHERE i.key = ? LIMIT 1) k ON true",
                vec![
                    (*claim == Claim::Own).into(),
                    lock_id(&req.key).into(),
                    req.key.clone().into(),
                ],
            ),
            _ => {
                let owned: Vec<bool> = claims.iter().map(|(_, c)| *c == Claim::Own).collect();
                let lock_ids: Vec<i64> = reqs.iter().map(|req| lock_id(&req.key)).collect();
                let keys: Vec<String> = reqs.iter().map(|req| req.key.clone()).collect();
                (
                    "SELECT CASE WHEN q.owned THEN pg_try_advisory_xact_lock(q.lock_id) \
                     ELSE true END AS locked, k.request_hash, \
                     k.status, k.response_status, k.response_body, k.locked_until_ms, \
                     k.expires_at_ms \
                     FROM unnest((SELECT ?::boolean[]), (SELECT ?::bigint[]), (SELECT ?::text[])) \
                     WITH ORDINALITY AS q(owned, lock_id, key, ord) \
                     LEFT JOIN LATERAL \
                     (SELECT * FROM idempotency_keys i WHERE i.key = q.key LIMIT 1) k \
                     ON true ORDER BY q.ord",
                    vec![owned.into(), lock_ids.into(), keys.into()],
                )
            }
        };
        let claim = match with {
            None => statement(DbBackend::Postgres, sql, values),
            Some(part) => {
                let mut all = part.values;
                all.extend(values);
                let sql = format!("WITH w AS ({}) {sql}", part.sql);
                statement(DbBackend::Postgres, &sql, all)
            }
        };
        let rows = txn.query_all_raw(claim).await?;
        if rows.len() != reqs.len() {
            return Err(DomainError::unexpected("the claim query lost a row"));
        }
        for (row, req) in rows.iter().zip(&reqs) {
            if !row.try_get::<bool>("", "locked")? {
                out.push(Err(DomainError::IdempotencyInFlight));
                continue;
            }
            let existing = match row.try_get::<Option<String>>("", "request_hash")? {
                None => None,
                Some(request_hash) => Some(Existing {
                    request_hash,
                    status: row.try_get("", "status")?,
                    response_status: row.try_get("", "response_status")?,
                    response_body: row.try_get("", "response_body")?,
                    locked_until_ms: row.try_get("", "locked_until_ms")?,
                    expires_at_ms: row.try_get("", "expires_at_ms")?,
                }),
            };
            out.push(decide(existing, &req.request_hash, at_ms));
        }
        Ok(out)
    }

    /// Stores `response` as the key's one answer: a new row, or over a row
    /// that has expired or whose claim was abandoned. Zero rows written means
    /// another request's answer is there: `ClaimLost`.
    pub(crate) async fn store<C: ConnectionTrait>(
        &self,
        conn: &C,
        req: &IdempotentRequest,
        response: &StoredResponse,
    ) -> DomainResult<()> {
        self.store_all(conn, &[(req, response)]).await
    }

    /// Stores several answers in one statement, each as `store` would;
    /// `ClaimLost` when any of them found another request's answer there
    /// (the caller then rolls back: which one is not told).
    pub(crate) async fn store_all<C: ConnectionTrait>(
        &self,
        conn: &C,
        answers: &[(&IdempotentRequest, &StoredResponse)],
    ) -> DomainResult<()> {
        if answers.is_empty() {
            return Ok(());
        }
        let backend = conn.get_database_backend();
        let stored = if backend == DbBackend::Postgres {
            self.store_part(answers)?.alone()
        } else {
            let at_ms = now_ms();
            let rows_of = IdempotentRequest::with_also(answers);
            let rows = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; rows_of.len()].join(", ");
            let mut values: Vec<Value> = Vec::with_capacity(rows_of.len() * 11 + 3);
            for (req, response) in rows_of {
                values.extend([
                    req.key.clone().into(),
                    req.principal.clone().into(),
                    req.route.clone().into(),
                    req.request_hash.clone().into(),
                    COMPLETED.into(),
                    Uuid::new_v4().into(),
                    i32::from(response.status).into(),
                    response.body.clone().into(),
                    0i64.into(),
                    (at_ms + millis(self.ttl)).into(),
                    now().into(),
                ]);
            }
            values.extend(free_values(at_ms));
            let sql = format!("INSERT INTO idempotency_keys ({STORED}) VALUES {rows} {IF_FREE}");
            statement(backend, &sql, values)
        };
        let written = conn.execute_raw(stored).await?.rows_affected();
        stored_all(answers, written)
    }

    /// The answers stored as `store_all` would, as one part of a statement on
    /// PostgreSQL (`sql::run_together`; rows as one JSON document): its count
    /// is how many were stored, which `stored_all` checks.
    pub(crate) fn store_part(
        &self,
        answers: &[(&IdempotentRequest, &StoredResponse)],
    ) -> DomainResult<Part> {
        #[derive(Serialize)]
        struct Row<'a> {
            key: &'a str,
            principal: &'a str,
            route: &'a str,
            request_hash: &'a str,
            claim_token: Uuid,
            response_status: u16,
            response_body: &'a str,
        }
        let rows: Vec<Row<'_>> = IdempotentRequest::with_also(answers)
            .into_iter()
            .map(|(req, response)| Row {
                key: &req.key,
                principal: &req.principal,
                route: &req.route,
                request_hash: &req.request_hash,
                claim_token: Uuid::new_v4(),
                response_status: response.status,
                response_body: &response.body,
            })
            .collect();
        let at_ms = now_ms();
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "INSERT INTO idempotency_keys ({STORED}) \
                 SELECT a.key, a.principal, a.route, a.request_hash, ?, a.claim_token, \
                 a.response_status, a.response_body, 0, ?, ? \
                 FROM json_to_recordset(?::json) AS a(key text, principal text, route text, \
                 request_hash text, claim_token uuid, response_status int, response_body text) \
                 {IF_FREE} RETURNING 1"
            )
        });
        let mut values = vec![
            COMPLETED.into(),
            (at_ms + millis(self.ttl)).into(),
            now().into(),
            json_rows(&rows)?,
        ];
        values.extend(free_values(at_ms));
        Ok(Part { sql: &SQL, values })
    }

    /// Deletes claims left `processing` past their lock: their write never
    /// committed (a claim commits with its write), so the client may send
    /// the request again. Returns how many.
    pub async fn release_stale_claims(&self) -> DomainResult<u64> {
        let result = key::Entity::delete_many()
            .filter(key::Column::Status.eq(PROCESSING))
            .filter(key::Column::LockedUntilMs.lt(now_ms()))
            .exec(&self.tx.db().conn)
            .await?;
        Ok(result.rows_affected)
    }

    /// Deletes the keys past their TTL, `CLEANUP_BATCH` per statement until
    /// none is left. Returns how many. As one statement, a backlog (the
    /// job stopped for a day: at 3,000 writes/s, 260 million keys) would
    /// outlast the statement timeout on every pass and never shrink; a
    /// pass of 900,000 keys (five minutes at that rate) took 4 s.
    pub async fn cleanup_expired(&self) -> DomainResult<u64> {
        let conn = &self.tx.db().conn;
        let backend = conn.get_database_backend();
        let sql = format!(
            "DELETE FROM idempotency_keys WHERE {}",
            taken_rows(
                backend,
                "key",
                "SELECT key FROM idempotency_keys WHERE expires_at_ms <= ? LIMIT ?",
            )
        );
        let cutoff = now_ms();
        let mut done = 0;
        loop {
            let deleted = conn
                .execute_raw(statement(
                    backend,
                    &sql,
                    vec![cutoff.into(), CLEANUP_BATCH.into()],
                ))
                .await?
                .rows_affected();
            done += deleted;
            if deleted < CLEANUP_BATCH.unsigned_abs() {
                return Ok(done);
            }
        }
    }
}

fn stored(row: &Existing) -> DomainResult<StoredResponse> {
    match (row.response_status, &row.response_body) {
        (Some(status), Some(body)) => Ok(StoredResponse {
            status: u16::try_from(status)
                .map_err(|_| DomainError::unexpected("stored status out of range"))?,
            body: body.clone(),
        }),
        _ => Err(DomainError::unexpected(
            "completed idempotency key without a response",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_ignores_key_order_and_spacing() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b": 1, "a": {"y": [1, {"d": 2, "c": 3}], "x": "s"}}"#)
                .unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{"a":{"x":"s","y":[1,{"c":3,"d":2}]},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(
            canonical_json(&b),
            r#"{"a":{"x":"s","y":[1,{"c":3,"d":2}]},"b":1}"#
        );
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(
            fingerprint(&json!({"amount": "1"})),
            fingerprint(&json!({"amount": "1.0"}))
        );
    }

    #[test]
    fn a_second_key_is_stored_with_its_request_or_the_store_fails() {
        let body = json!({"a": 1});
        let client = IdempotentRequest::new("user:1", "POST", "/api/v1/orders", "k", &body);
        let signal = IdempotentRequest {
            also: Some(Box::new(client.clone())),
            ..IdempotentRequest::new("user:1", "POST", "signal", "s", &body)
        };
        let answer = StoredResponse {
            status: 201,
            body: "{}".into(),
        };
        let rows = IdempotentRequest::with_also(&[(&signal, &answer), (&client, &answer)]);
        let keys: Vec<&str> = rows.iter().map(|(r, _)| r.key.as_str()).collect();
        assert_eq!(keys, [&signal.key, &client.key, &client.key]);
        // both of the signal's keys written, and the client's own: all stored
        assert!(stored_all(&[(&signal, &answer), (&client, &answer)], 3).is_ok());
        // one of the two keys was another request's: nothing may stay
        assert!(matches!(
            stored_all(&[(&signal, &answer)], 1),
            Err(DomainError::ClaimLost)
        ));
    }

    #[test]
    fn storage_key_separates_principals_routes_and_keys() {
        let k = storage_key("user:1", "POST", "/api/v1/wallets/deposit", "abc");
        assert_eq!(k.len(), 64);
        assert_ne!(
            k,
            storage_key("user:2", "POST", "/api/v1/wallets/deposit", "abc")
        );
        assert_ne!(
            k,
            storage_key("user:1", "POST", "/api/v1/wallets/withdraw", "abc")
        );
        assert_ne!(
            k,
            storage_key("user:1", "POST", "/api/v1/wallets/deposit", "abd")
        );
        // no ambiguity from concatenation
        assert_ne!(
            storage_key("a", "b", "c", "de"),
            storage_key("a", "b", "cd", "e")
        );
    }

    #[test]
    fn client_keys_are_printable_ascii_up_to_255() {
        assert!(validate_client_key("k").is_ok());
        assert!(validate_client_key(&"x".repeat(255)).is_ok());
        assert!(validate_client_key("with space and ~!").is_ok());
        assert!(validate_client_key("").is_err());
        assert!(validate_client_key(&"x".repeat(256)).is_err());
        assert!(validate_client_key("tab\there").is_err());
        assert!(validate_client_key("é").is_err());
    }
}
