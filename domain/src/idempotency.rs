//! IdempotencyService: exactly-once execution per (principal, method, route,
//! client key), in atomic phases.
//!
//! 1. Claim: `INSERT … ON CONFLICT DO NOTHING` the key as `processing`, with a
//!    lease (`locked_until`) and a claim token, in its own statement.
//!    If the key exists: replay it (completed, same body), refuse it (other
//!    body), report it in flight (processing, lease alive), or take it over
//!    (processing, lease expired: its owner died before phase 2 committed).
//! 2. Execute the operation and mark the key `completed` with the response
//!    **in the same transaction**, conditioned on still holding the claim token.
//! 3. A business refusal is stored as the completed response; a transient
//!    failure deletes the claim so the client may retry with the same key.
//! 4. Expired keys are deleted by the cleanup job.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use infra::entities::idempotency_key as key;
use infra::metrics::metrics;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter, Set};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::clock::{now, now_ms};
use crate::error::{DomainError, DomainResult};
use crate::tx::{RetryPolicy, TransactionService};

const PROCESSING: &str = "processing";
const COMPLETED: &str = "completed";

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

/// What identifies one idempotent request.
#[derive(Debug, Clone)]
pub struct IdempotentRequest {
    /// SHA-256 of principal, method, route and client key: the stored key.
    pub key: String,
    pub principal: String,
    pub route: String,
    /// SHA-256 of the canonical request body.
    pub request_hash: String,
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
        }
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

enum Claim {
    Claimed(Uuid),
    Replay(StoredResponse),
}

#[derive(Clone, Debug)]
pub struct IdempotencyService {
    tx: TransactionService,
    ttl: Duration,
    lease: Duration,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl IdempotencyService {
    pub fn new(tx: TransactionService, ttl: Duration, lease: Duration) -> Self {
        Self { tx, ttl, lease }
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
        let token = match self.claim(req).await? {
            Claim::Replay(response) => {
                metrics().idempotent_replays.inc();
                return Ok(Outcome {
                    response,
                    replayed: true,
                });
            }
            Claim::Claimed(token) => token,
        };
        // A lost connection is retried here: if an earlier attempt's COMMIT
        // did land, completing the key finds it already completed, this
        // attempt rolls back, and the stored response is replayed below.
        let policy: RetryPolicy = self.tx.policy().clone().with_connection_loss_retry();
        let result = self
            .tx
            .execute_with_policy(operation, &policy, |txn| {
                let (op, on_ok) = (&op, &on_ok);
                async move {
                    let value = op(Arc::clone(&txn)).await?;
                    let response = on_ok(&value);
                    complete(&*txn, &req.key, token, &response).await?;
                    Ok(response)
                }
            })
            .await;
        match result {
            Ok(response) => Ok(Outcome {
                response,
                replayed: false,
            }),
            Err(DomainError::IdempotencyInFlight) => self.after_lost_claim(req).await,
            Err(e) if e.is_refusal() => {
                let response = on_refusal(&e);
                match complete(&self.tx.db().conn, &req.key, token, &response).await {
                    Ok(()) => Ok(Outcome {
                        response,
                        replayed: false,
                    }),
                    Err(DomainError::IdempotencyInFlight) => self.after_lost_claim(req).await,
                    Err(store_err) => {
                        tracing::error!(error = %store_err, "storing a refusal failed; releasing the key");
                        self.release(&req.key, token).await;
                        Err(store_err)
                    }
                }
            }
            Err(e) => {
                self.release(&req.key, token).await;
                Err(e)
            }
        }
    }

    /// Our claim was taken over or already completed: answer from the key.
    async fn after_lost_claim(&self, req: &IdempotentRequest) -> DomainResult<Outcome> {
        let row = key::Entity::find_by_id(req.key.clone())
            .one(&self.tx.db().conn)
            .await?;
        match row {
            Some(row) if row.status == COMPLETED && row.request_hash == req.request_hash => {
                metrics().idempotent_replays.inc();
                Ok(Outcome {
                    response: stored(&row)?,
                    replayed: true,
                })
            }
            _ => Err(DomainError::IdempotencyInFlight),
        }
    }

    async fn claim(&self, req: &IdempotentRequest) -> DomainResult<Claim> {
        let conn = &self.tx.db().conn;
        // A few rounds at most: each round either decides or loses a race to
        // a request that just changed the row.
        for _ in 0..4 {
            let at_ms = now_ms();
            let token = Uuid::new_v4();
            let inserted = key::Entity::insert(key::ActiveModel {
                key: Set(req.key.clone()),
                principal: Set(req.principal.clone()),
                route: Set(req.route.clone()),
                request_hash: Set(req.request_hash.clone()),
                status: Set(PROCESSING.into()),
                claim_token: Set(token),
                response_status: Set(None),
                response_body: Set(None),
                locked_until_ms: Set(at_ms + millis(self.lease)),
                expires_at_ms: Set(at_ms + millis(self.ttl)),
                created_at: Set(now()),
            })
            .on_conflict_do_nothing_on([key::Column::Key])
            .exec_without_returning(conn)
            .await
            .map_err(classify_claim_error)?;
            if matches!(inserted, sea_orm::TryInsertResult::Inserted(n) if n > 0) {
                return Ok(Claim::Claimed(token));
            }
            let Some(row) = key::Entity::find_by_id(req.key.clone())
                .one(conn)
                .await
                .map_err(classify_claim_error)?
            else {
                continue; // deleted meanwhile (released or cleaned up): claim again
            };
            if row.expires_at_ms <= at_ms {
                // Past its TTL but not yet cleaned up: the key is free again.
                if self.take_over(&row, req, at_ms, token, true).await? {
                    return Ok(Claim::Claimed(token));
                }
                continue;
            }
            if row.request_hash != req.request_hash {
                return Err(DomainError::IdempotencyKeyReused);
            }
            if row.status == COMPLETED {
                return Ok(Claim::Replay(stored(&row)?));
            }
            if row.locked_until_ms > at_ms {
                return Err(DomainError::IdempotencyInFlight);
            }
            // A stale claim: its owner stopped before committing anything.
            tracing::warn!(route = %row.route, "taking over a stale idempotency claim");
            if self.take_over(&row, req, at_ms, token, false).await? {
                return Ok(Claim::Claimed(token));
            }
        }
        Err(DomainError::IdempotencyInFlight)
    }

    /// Conditional on the row being exactly as read (same claim token), so of
    /// two racing requests only one takes the key.
    async fn take_over(
        &self,
        row: &key::Model,
        req: &IdempotentRequest,
        at_ms: i64,
        token: Uuid,
        expired: bool,
    ) -> DomainResult<bool> {
        let mut update = key::Entity::update_many()
            .col_expr(key::Column::ClaimToken, Expr::value(token))
            .col_expr(key::Column::Status, Expr::value(PROCESSING))
            .col_expr(
                key::Column::LockedUntilMs,
                Expr::value(at_ms + millis(self.lease)),
            )
            .filter(key::Column::Key.eq(row.key.clone()))
            .filter(key::Column::ClaimToken.eq(row.claim_token));
        if expired {
            update = update
                .col_expr(
                    key::Column::RequestHash,
                    Expr::value(req.request_hash.clone()),
                )
                .col_expr(
                    key::Column::ResponseStatus,
                    Expr::value(Option::<i32>::None),
                )
                .col_expr(
                    key::Column::ResponseBody,
                    Expr::value(Option::<String>::None),
                )
                .col_expr(
                    key::Column::ExpiresAtMs,
                    Expr::value(at_ms + millis(self.ttl)),
                )
                .filter(key::Column::ExpiresAtMs.lte(at_ms));
        } else {
            update = update
                .filter(key::Column::Status.eq(PROCESSING))
                .filter(key::Column::LockedUntilMs.lte(at_ms));
        }
        let result = update
            .exec(&self.tx.db().conn)
            .await
            .map_err(classify_claim_error)?;
        Ok(result.rows_affected == 1)
    }

    async fn release(&self, key_hash: &str, token: Uuid) {
        let result = key::Entity::delete_many()
            .filter(key::Column::Key.eq(key_hash))
            .filter(key::Column::ClaimToken.eq(token))
            .filter(key::Column::Status.eq(PROCESSING))
            .exec(&self.tx.db().conn)
            .await;
        if let Err(e) = result {
            // The lease expires on its own; a retry then takes the key over.
            tracing::warn!(error = %e, "releasing an idempotency claim failed");
        }
    }

    /// Deletes keys past their TTL. Returns how many.
    pub async fn cleanup_expired(&self) -> DomainResult<u64> {
        let result = key::Entity::delete_many()
            .filter(key::Column::ExpiresAtMs.lte(now_ms()))
            .exec(&self.tx.db().conn)
            .await?;
        Ok(result.rows_affected)
    }
}

fn classify_claim_error(e: sea_orm::DbErr) -> DomainError {
    if crate::db_error::classify(&e).is_transient() {
        DomainError::Unavailable(e)
    } else {
        DomainError::Database(e)
    }
}

fn stored(row: &key::Model) -> DomainResult<StoredResponse> {
    match (row.response_status, &row.response_body) {
        (Some(status), Some(body)) => Ok(StoredResponse {
            status: u16::try_from(status)
                .map_err(|_| DomainError::Unexpected("stored status out of range".into()))?,
            body: body.clone(),
        }),
        _ => Err(DomainError::Unexpected(
            "completed idempotency key without a response".into(),
        )),
    }
}

/// Phase 2's last step, inside the operation's transaction: only the holder
/// of the claim token may complete the key. Zero rows means the claim was
/// lost (taken over, or completed by an earlier attempt whose COMMIT landed),
/// reported as `IdempotencyInFlight` so the transaction rolls back.
async fn complete<C: ConnectionTrait>(
    conn: &C,
    key_hash: &str,
    token: Uuid,
    response: &StoredResponse,
) -> DomainResult<()> {
    let result = key::Entity::update_many()
        .col_expr(key::Column::Status, Expr::value(COMPLETED))
        .col_expr(
            key::Column::ResponseStatus,
            Expr::value(i32::from(response.status)),
        )
        .col_expr(
            key::Column::ResponseBody,
            Expr::value(response.body.clone()),
        )
        .col_expr(key::Column::LockedUntilMs, Expr::value(0_i64))
        .filter(key::Column::Key.eq(key_hash))
        .filter(key::Column::ClaimToken.eq(token))
        .filter(key::Column::Status.eq(PROCESSING))
        .exec(conn)
        .await?;
    if result.rows_affected != 1 {
        return Err(DomainError::IdempotencyInFlight);
    }
    Ok(())
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
