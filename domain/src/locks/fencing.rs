//! Fencing tokens: a number per grant that grows with every grant of a
//! resource and is never reused. A write protected by a lock carries
//! `(lock_id, fencing_token)` and runs only while that lock is active,
//! unexpired, the writer's, and holds that token (Kleppmann, "How to do
//! distributed locking"): an expired or overtaken holder can never write.

use crate::error::{DomainError, DomainResult};

/// The token of a new grant over resources whose last tokens are
/// `current`: above every one of them, so it grows on each resource.
pub fn next_token(current: impl IntoIterator<Item = i64>) -> i64 {
    current.into_iter().max().unwrap_or(0).saturating_add(1)
}

/// A money write's fence: it runs only while this lock is active,
/// unexpired, the caller's, and still holds this token — checked inside the
/// write's own transaction, so a holder whose lease ran out can never write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub lock: LockToken,
    /// The principal writing (`user:42`): the lock's owner, or the one that
    /// asked for it on the owner's behalf.
    pub owner: String,
}

impl Fence {
    pub async fn check(&self, txn: &sea_orm::DatabaseTransaction) -> DomainResult<()> {
        crate::locks::LockService::check_fence(
            txn,
            &self.lock.lock_id,
            self.lock.fencing_token,
            &self.owner,
        )
        .await
    }
}

/// Checks `fence`, when a write has one.
pub async fn check_optional(
    fence: Option<&Fence>,
    txn: &sea_orm::DatabaseTransaction,
) -> DomainResult<()> {
    match fence {
        Some(fence) => fence.check(txn).await,
        None => Ok(()),
    }
}

/// `Lock-Token: <lock_id>:<fencing_token>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockToken {
    pub lock_id: String,
    pub fencing_token: i64,
}

impl LockToken {
    pub fn parse(header: &str) -> DomainResult<Self> {
        let bad = || DomainError::invalid("Lock-Token", "expected <lock_id>:<fencing_token>");
        let (lock_id, token) = header.trim().rsplit_once(':').ok_or_else(bad)?;
        let fencing_token: i64 = token.parse().map_err(|_| bad())?;
        if lock_id.is_empty() || lock_id.len() > 64 || fencing_token <= 0 {
            return Err(bad());
        }
        Ok(Self {
            lock_id: lock_id.to_owned(),
            fencing_token,
        })
    }
}

/// What the fence reads of a lock.
#[derive(Debug, Clone)]
pub struct FenceState<'a> {
    pub status: &'a str,
    pub fencing_token: i64,
    pub owner_id: &'a str,
    pub created_by: &'a str,
    pub expires_at_ms: i64,
}

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unknown,
    NotActive,
    Expired,
    NotOwner,
    StaleToken,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Unknown => "no such lock",
            Self::NotActive => "the lock is no longer active",
            Self::Expired => "the lock has expired",
            Self::NotOwner => "the lock belongs to another owner",
            Self::StaleToken => "the fencing token is not the lock's",
        }
    }
}

/// May `owner` write under `(lock, token)` at `now_ms`?
pub fn admit(
    lock: Option<&FenceState<'_>>,
    token: i64,
    owner: &str,
    now_ms: i64,
) -> Result<(), Refusal> {
    let lock = lock.ok_or(Refusal::Unknown)?;
    if lock.status != "active" {
        return Err(Refusal::NotActive);
    }
    if lock.expires_at_ms <= now_ms {
        return Err(Refusal::Expired);
    }
    if lock.owner_id != owner && lock.created_by != owner {
        return Err(Refusal::NotOwner);
    }
    if lock.fencing_token != token {
        return Err(Refusal::StaleToken);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_grow_past_every_resource() {
        assert_eq!(next_token([]), 1);
        assert_eq!(next_token([0, 0]), 1);
        assert_eq!(next_token([3, 7, 5]), 8);
        assert_eq!(next_token([i64::MAX]), i64::MAX);
    }

    #[test]
    fn lock_tokens_parse() {
        let t = LockToken::parse("0b5f-aa:42").unwrap();
        assert_eq!((t.lock_id.as_str(), t.fencing_token), ("0b5f-aa", 42));
        for bad in ["", "abc", ":1", "a:", "a:x", "a:0", "a:-3"] {
            assert!(LockToken::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_the_active_owner_with_the_current_token_is_admitted() {
        let lock = FenceState {
            status: "active",
            fencing_token: 7,
            owner_id: "user:1",
            created_by: "service:bot",
            expires_at_ms: 1_000,
        };
        assert_eq!(admit(Some(&lock), 7, "user:1", 999), Ok(()));
        assert_eq!(admit(Some(&lock), 7, "service:bot", 999), Ok(()));
        assert_eq!(admit(None, 7, "user:1", 0), Err(Refusal::Unknown));
        assert_eq!(
            admit(Some(&lock), 7, "user:1", 1_000),
            Err(Refusal::Expired)
        );
        assert_eq!(admit(Some(&lock), 6, "user:1", 0), Err(Refusal::StaleToken));
        assert_eq!(admit(Some(&lock), 8, "user:1", 0), Err(Refusal::StaleToken));
        assert_eq!(admit(Some(&lock), 7, "user:2", 0), Err(Refusal::NotOwner));
        let released = FenceState {
            status: "released",
            ..lock
        };
        assert_eq!(
            admit(Some(&released), 7, "user:1", 0),
            Err(Refusal::NotActive)
        );
    }
}
