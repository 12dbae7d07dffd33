//! Holds: part of a wallet's free balance reserved for a while, then
//! captured (the money leaves the wallet, fully or in part, the rest is
//! released), voided, or expired. A hold is a `holds` row plus the wallet's
//! `held` column, changed together under the wallet lock with journal
//! entries (`hold`, `hold_release`, `hold_capture`), so `held` always equals
//! the sum of the wallet's active holds and the journal explains every
//! change.
//!
//! A hold ends exactly once: every state change is a guarded `UPDATE …
//! WHERE id = … AND status = 'held'` made under the wallet lock, so of a
//! racing capture, void and expiry one wins and the others see the hold
//! ended (`HoldNotActive`).
//!
//! Expiry is exact: a hold stops counting at `expires_at`, whatever the
//! cleanup has done. Taking a wallet's lock releases its expired holds
//! ([`release_expired`], called by the lock functions in `wallets`), so every
//! free-balance check under the lock counts only unexpired holds; reads
//! subtract expired holds not yet released ([`wallets_with_expired`]) and report
//! them `expired`; the cleanup job ([`ExpireDueHolds`]) releases the holds of
//! wallets nothing writes to.

use chrono::{DateTime, Utc};
use infra::entities::{hold, wallet};
use sea_orm::sea_query::{Expr, ExprTrait, Func, Query};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, EntityTrait, FromQueryResult,
    QueryFilter, QueryOrder, QuerySelect, Set,
};
use uuid::Uuid;

use crate::clock::{now, now_ms};
use crate::error::{DomainError, DomainResult};
use crate::ledger::financial::{self, Deltas, Leg, Posting};
use crate::ledger::journal::kinds;
use crate::ledger::users::require_user;
use crate::ledger::wallets::{
    WalletKind, check_withdrawable, execute_with_user_lock, lock_wallet, lock_wallets_by_id,
};
use crate::money::Amount;
use crate::page::{Page, newest_first_of_any};
use crate::sql::status_branches;
use crate::{Command, Ledger};

/// A hold's lifetime when the request names none: 5 minutes.
pub const DEFAULT_TTL_MS: u64 = 300_000;
/// The longest a hold may reserve funds: 7 days.
pub const MAX_TTL_MS: u64 = 7 * 24 * 3_600_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HoldStatus {
    /// Active: the funds are reserved.
    Held,
    Captured,
    Voided,
    Expired,
}

impl HoldStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Captured => "captured",
            Self::Voided => "voided",
            Self::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "held" => Some(Self::Held),
            "captured" => Some(Self::Captured),
            "voided" => Some(Self::Voided),
            "expired" => Some(Self::Expired),
            _ => None,
        }
    }

    /// The state machine: only an active hold changes, and only into one of
    /// the three final states. Each hold therefore ends exactly once.
    pub fn can_become(self, next: Self) -> bool {
        self == Self::Held && next != Self::Held
    }

    /// The status of a stored hold at `now_ms`: an active hold whose expiry
    /// has come is expired, whether or not it has been released yet.
    pub fn of(row: &hold::Model, now_ms: i64) -> DomainResult<Self> {
        let stored = Self::parse(&row.status).ok_or_else(|| {
            DomainError::unexpected(format!("hold {} has status {:?}", row.id, row.status))
        })?;
        Ok(match stored {
            Self::Held if is_due(row, now_ms) => Self::Expired,
            other => other,
        })
    }
}

/// Whether an active hold's time is up: at `expires_at` exactly.
fn is_due(row: &hold::Model, now_ms: i64) -> bool {
    row.expires_at_ms <= now_ms
}

/// How long a hold lasts: 1 ms to 7 days.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldTtl(u64);

impl HoldTtl {
    pub fn from_millis(ms: u64) -> DomainResult<Self> {
        if ms == 0 || ms > MAX_TTL_MS {
            return Err(DomainError::invalid(
                "ttl_ms",
                format!("must be within 1..={MAX_TTL_MS} (7 days)"),
            ));
        }
        Ok(Self(ms))
    }

    pub fn millis(self) -> u64 {
        self.0
    }
}

impl Default for HoldTtl {
    fn default() -> Self {
        Self(DEFAULT_TTL_MS)
    }
}

/// How a capture divides a hold: what leaves the wallet and what is given
/// back to its free balance. Minor units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureSplit {
    pub captured: i64,
    pub released: i64,
}

/// Captures `requested` of a hold of `held` (all of it when `None`); more
/// than the hold reserves is refused.
pub fn split_capture(held: i64, requested: Option<Amount>) -> DomainResult<CaptureSplit> {
    let captured = requested.map_or(held, Amount::units);
    if captured > held {
        return Err(DomainError::CaptureExceedsHold {
            requested: captured,
            held,
        });
    }
    Ok(CaptureSplit {
        captured,
        released: held - captured,
    })
}

/// A hold as the outside sees it. Amounts are minor units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldView {
    pub id: i64,
    pub user_id: i64,
    pub wallet: String,
    pub amount: i64,
    pub captured_amount: i64,
    pub status: HoldStatus,
    pub reference: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// When it ended; an expired hold ended at its expiry.
    pub finished_at: Option<DateTime<Utc>>,
}

impl HoldView {
    /// The hold as it stands at `now_ms` (see [`HoldStatus::of`]).
    pub fn at(row: hold::Model, now_ms: i64) -> DomainResult<Self> {
        let status = HoldStatus::of(&row, now_ms)?;
        let finished_at = match status {
            HoldStatus::Expired => Some(row.finished_at.unwrap_or(row.expires_at)),
            _ => row.finished_at,
        };
        Ok(Self {
            id: row.id,
            user_id: row.user_id,
            wallet: row.wallet_kind,
            amount: row.amount,
            captured_amount: row.captured_amount,
            status,
            reference: row.reference,
            expires_at: row.expires_at,
            created_at: row.created_at,
            finished_at,
        })
    }
}

/// Reserves `amount` of the user's wallet for `ttl`: at most the free
/// balance (`balance - margin - held`, unexpired holds only), else
/// `InsufficientFunds`.
#[derive(Debug, Clone)]
pub struct CreateHold {
    pub user_id: i64,
    pub wallet: WalletKind,
    pub amount: Amount,
    pub ttl: HoldTtl,
    pub reference: Option<String>,
}

/// Captures an active hold: `amount` (all of it when `None`, at most the
/// held amount) leaves the wallet, the rest is released. `HoldNotActive`
/// when it already ended.
#[derive(Debug, Clone, Copy)]
pub struct CaptureHold {
    pub hold_id: i64,
    pub amount: Option<Amount>,
}

/// Releases an active hold in full. `HoldNotActive` when it already ended.
#[derive(Debug, Clone, Copy)]
pub struct VoidHold {
    pub hold_id: i64,
}

fn reference_of(hold_id: i64) -> Option<String> {
    Some(format!("hold:{hold_id}"))
}

impl Command for CreateHold {
    type Output = HoldView;
    const NAME: &'static str = "create_hold";

    async fn execute(&self, _: &Ledger, txn: &DatabaseTransaction) -> DomainResult<HoldView> {
        let cmd = self;
        execute_with_user_lock(txn, cmd.user_id, cmd.wallet, async |w| {
            // A hold reserves what a withdrawal could take.
            check_withdrawable(w, cmd.amount)?;
            let created_at = now();
            let created_ms = created_at.timestamp_millis();
            let ttl = i64::try_from(cmd.ttl.millis()).unwrap_or(i64::MAX);
            let expires_at_ms = created_ms.saturating_add(ttl);
            let expires_at = DateTime::from_timestamp_millis(expires_at_ms)
                .ok_or_else(|| DomainError::invalid("ttl_ms", "expiry out of range"))?;
            let row = hold::Entity::insert(hold::ActiveModel {
                user_id: Set(cmd.user_id),
                wallet_id: Set(w.id),
                wallet_kind: Set(cmd.wallet.as_str().to_owned()),
                amount: Set(cmd.amount.units()),
                captured_amount: Set(0),
                status: Set(HoldStatus::Held.as_str().to_owned()),
                reference: Set(cmd.reference.clone()),
                expires_at: Set(expires_at),
                expires_at_ms: Set(expires_at_ms),
                created_at: Set(created_at),
                finished_at: Set(None),
                ..Default::default()
            })
            .exec_with_returning(txn)
            .await?;
            let leg =
                Leg::new(kinds::HOLD, Deltas::held(row.amount)).reference(reference_of(row.id));
            financial::perform_combined_operation(txn, w, Uuid::new_v4(), vec![leg]).await?;
            HoldView::at(row, created_ms)
        })
        .await
    }
}

impl Command for CaptureHold {
    type Output = HoldView;
    const NAME: &'static str = "capture_hold";

    async fn execute(&self, _: &Ledger, txn: &DatabaseTransaction) -> DomainResult<HoldView> {
        not_in_workflow(txn, self.hold_id).await?;
        finish(txn, self.hold_id, Ending::Capture(self.amount)).await
    }
}

impl Command for VoidHold {
    type Output = HoldView;
    const NAME: &'static str = "void_hold";

    async fn execute(&self, _: &Ledger, txn: &DatabaseTransaction) -> DomainResult<HoldView> {
        not_in_workflow(txn, self.hold_id).await?;
        finish(txn, self.hold_id, Ending::Void).await
    }
}

/// A workflow's hold is captured or voided by its workflow only: through
/// the holds routes it is refused (`HoldInWorkflow`), so that a payout in
/// flight can never lose the funds it will capture.
async fn not_in_workflow(txn: &DatabaseTransaction, hold_id: i64) -> DomainResult<()> {
    match crate::workflows::hold_owner(txn, hold_id).await? {
        Some(workflow_id) => Err(DomainError::HoldInWorkflow {
            hold_id,
            workflow_id,
        }),
        None => Ok(()),
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Ending {
    Capture(Option<Amount>),
    Void,
}

fn not_active(row: &hold::Model, now_ms: i64) -> DomainError {
    match HoldStatus::of(row, now_ms) {
        Ok(status) => DomainError::HoldNotActive {
            hold_id: row.id,
            status: status.as_str(),
        },
        Err(e) => e,
    }
}

async fn find_hold<C: ConnectionTrait>(conn: &C, hold_id: i64) -> DomainResult<hold::Model> {
    hold::Entity::find_by_id(hold_id)
        .one(conn)
        .await?
        .ok_or(DomainError::NotFound("hold"))
}

/// Captures or voids an active hold under its wallet's lock.
pub(crate) async fn finish(
    txn: &DatabaseTransaction,
    hold_id: i64,
    ending: Ending,
) -> DomainResult<HoldView> {
    let row = find_hold(txn, hold_id).await?;
    let status = match ending {
        Ending::Capture(_) => HoldStatus::Captured,
        Ending::Void => HoldStatus::Voided,
    };
    // A hold stored as ended is refused without waiting for its wallet's
    // lock. One that only looks due is not: this read may predate an ending
    // committed just before the expiry, which the read under the lock sees.
    let stored = HoldStatus::parse(&row.status)
        .ok_or_else(|| DomainError::unexpected(format!("hold {hold_id} has no status")))?;
    if !stored.can_become(status) {
        return Err(not_active(&row, now_ms()));
    }
    let split = match ending {
        Ending::Capture(amount) => split_capture(row.amount, amount)?,
        Ending::Void => CaptureSplit {
            captured: 0,
            released: row.amount,
        },
    };
    let kind = WalletKind::parse(&row.wallet_kind)
        .ok_or_else(|| DomainError::unexpected(format!("hold {hold_id} has no wallet kind")))?;
    let mut w = lock_wallet(txn, row.user_id, kind).await?;
    let finished_at = now();
    let at_ms = finished_at.timestamp_millis();
    // Guarded: of racing endings only one changes the row; and a hold that
    // came due since its wallet was locked is not captured after its expiry.
    let ended = hold::Entity::update_many()
        .col_expr(hold::Column::Status, Expr::value(status.as_str()))
        .col_expr(hold::Column::CapturedAmount, Expr::value(split.captured))
        .col_expr(hold::Column::FinishedAt, Expr::value(finished_at))
        .filter(hold::Column::Id.eq(hold_id))
        .filter(hold::Column::Status.eq(HoldStatus::Held.as_str()))
        .filter(hold::Column::ExpiresAtMs.gt(at_ms))
        .exec_with_returning(txn)
        .await?;
    let Some(ended) = ended.into_iter().next() else {
        return Err(not_active(&find_hold(txn, hold_id).await?, at_ms));
    };
    let leg = |kind, deltas| Leg::new(kind, deltas).reference(reference_of(hold_id));
    let legs = vec![
        leg(
            kinds::HOLD_CAPTURE,
            Deltas {
                balance: -split.captured,
                held: -split.captured,
                ..Deltas::default()
            },
        ),
        leg(kinds::HOLD_RELEASE, Deltas::held(-split.released)),
    ];
    financial::perform_combined_operation(txn, &mut w, Uuid::new_v4(), legs).await?;
    HoldView::at(ended, at_ms)
}

/// Releases the locked wallet's expired holds: each becomes `expired`
/// (ended at its expiry) by a guarded `UPDATE`, and its funds are released
/// with a `hold_release` entry. A wallet holding nothing costs no query.
/// Returns how many holds it released.
pub async fn release_expired(
    txn: &DatabaseTransaction,
    w: &mut wallet::Model,
) -> DomainResult<u64> {
    if w.held == 0 {
        return Ok(0);
    }
    let mut expired = hold::Entity::update_many()
        .col_expr(
            hold::Column::Status,
            Expr::value(HoldStatus::Expired.as_str()),
        )
        .col_expr(hold::Column::FinishedAt, Expr::col(hold::Column::ExpiresAt))
        .filter(hold::Column::WalletId.eq(w.id))
        .filter(hold::Column::Status.eq(HoldStatus::Held.as_str()))
        .filter(hold::Column::ExpiresAtMs.lte(now_ms()))
        .exec_with_returning(txn)
        .await?;
    expired.sort_by_key(|h| h.id);
    for h in &expired {
        // One operation per hold: the journal's (operation, wallet, kind)
        // is unique.
        let leg = Leg::new(kinds::HOLD_RELEASE, Deltas::held(-h.amount))
            .reference(reference_of(h.id))
            .metadata(Some(serde_json::json!({ "reason": "expired" })));
        financial::post(txn, Uuid::new_v4(), vec![Posting::new(w, leg)]).await?;
    }
    Ok(expired.len() as u64)
}

/// A wallet row read together with the funds of its holds that expired but
/// are still `held` (not released yet): what a read subtracts from `held`.
#[derive(Debug, FromQueryResult)]
pub struct WalletWithExpired {
    #[sea_orm(nested)]
    pub wallet: wallet::Model,
    pub expired_held: i64,
}

/// The wallets `wallet_ids`, lowest id first, each with its expired holds'
/// funds, in one statement: the row and the sum come from one snapshot.
/// (Read apart, the cleanup could release a hold between the two reads,
/// and the wallet's old `held` would keep a hold no longer subtracted.)
pub async fn wallets_with_expired<C: ConnectionTrait>(
    conn: &C,
    wallet_ids: &[i64],
) -> DomainResult<Vec<WalletWithExpired>> {
    if wallet_ids.is_empty() {
        return Ok(Vec::new());
    }
    let due = Query::select()
        .expr(Func::coalesce([
            Expr::from(Func::sum(Expr::col((hold::Entity, hold::Column::Amount)))),
            Expr::val(0),
        ]))
        .from(hold::Entity)
        .and_where(
            Expr::col((hold::Entity, hold::Column::WalletId))
                .equals((wallet::Entity, wallet::Column::Id)),
        )
        .and_where(Expr::col((hold::Entity, hold::Column::Status)).eq(HoldStatus::Held.as_str()))
        .and_where(Expr::col((hold::Entity, hold::Column::ExpiresAtMs)).lte(now_ms()))
        .to_owned();
    // SUM of a BIGINT is a NUMERIC on PostgreSQL.
    let expired = Expr::from(Func::cast_as(
        Expr::SubQuery(None, Box::new(due.into())),
        "BIGINT",
    ));
    Ok(wallet::Entity::find()
        .filter(wallet::Column::Id.is_in(wallet_ids.iter().copied()))
        .order_by_asc(wallet::Column::Id)
        .column_as(expired, "expired_held")
        .into_model::<WalletWithExpired>()
        .all(conn)
        .await?)
}

/// One step of the cleanup job: the wallets (at most `max_wallets`, lowest
/// ids first) that have a hold past its expiry are locked in ascending id
/// order and their expired holds released.
#[derive(Debug, Clone, Copy)]
pub struct ExpireDueHolds {
    pub max_wallets: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpiredHolds {
    pub wallets: u64,
    pub holds: u64,
}

impl Command for ExpireDueHolds {
    type Output = ExpiredHolds;
    const NAME: &'static str = "expire_holds";

    async fn execute(&self, _: &Ledger, txn: &DatabaseTransaction) -> DomainResult<ExpiredHolds> {
        let due: Vec<i64> = hold::Entity::find()
            .select_only()
            .column(hold::Column::WalletId)
            .distinct()
            .filter(hold::Column::Status.eq(HoldStatus::Held.as_str()))
            .filter(hold::Column::ExpiresAtMs.lte(now_ms()))
            .order_by_asc(hold::Column::WalletId)
            .limit(self.max_wallets)
            .into_tuple()
            .all(txn)
            .await?;
        let mut done = ExpiredHolds::default();
        for mut w in lock_wallets_by_id(txn, &due).await? {
            done.wallets += 1;
            done.holds += release_expired(txn, &mut w).await?;
        }
        Ok(done)
    }
}

/// Wallets whose expired holds the cleanup releases per transaction.
const CLEANUP_BATCH: u64 = 100;

impl Ledger {
    /// One hold; `NotFound` when there is none.
    pub async fn hold(&self, id: i64) -> DomainResult<HoldView> {
        HoldView::at(find_hold(&self.db.conn, id).await?, now_ms())
    }

    /// A user's holds, newest first, optionally of one status (as of now:
    /// `held` means unexpired, `expired` includes holds not released yet).
    pub async fn holds(
        &self,
        user_id: i64,
        status: Option<HoldStatus>,
        limit: u64,
        before_id: Option<i64>,
    ) -> DomainResult<Page<HoldView>> {
        let conn = &self.db.conn;
        require_user(conn, user_id).await?;
        let at = now_ms();
        let query = hold::Entity::find().filter(hold::Column::UserId.eq(user_id));
        // Each status along the (user, status, id) index; `expired` is two.
        let branches = match status {
            Some(wanted) => status_branches(
                hold::Column::Status,
                hold::Column::ExpiresAtMs,
                wanted.as_str(),
                HoldStatus::Held.as_str(),
                at,
            ),
            None => vec![Condition::all()],
        };
        let page = newest_first_of_any(
            conn,
            query,
            branches,
            hold::Column::Id,
            limit,
            before_id,
            |h| h.id,
        )
        .await?;
        let items = page
            .items
            .into_iter()
            .map(|h| HoldView::at(h, at))
            .collect::<DomainResult<_>>()?;
        Ok(Page {
            items,
            next_before_id: page.next_before_id,
        })
    }

    /// The cleanup job: releases every hold past its expiry, a batch of
    /// wallets per transaction. Returns how many holds it released.
    pub async fn expire_due_holds(&self) -> DomainResult<u64> {
        let mut released = 0;
        loop {
            let step = ExpireDueHolds {
                max_wallets: CLEANUP_BATCH,
            };
            let done = self.execute(&step).await?;
            released += done.holds;
            if done.wallets < CLEANUP_BATCH {
                return Ok(released);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use crate::ledger::reconcile::check_all;
    use crate::ledger::users::{Email, NewUser};
    use crate::ledger::wallets::{Deposit, Withdrawal};

    fn units(n: i64) -> Amount {
        Amount::from_units(n).unwrap()
    }

    const ALL: [HoldStatus; 4] = [
        HoldStatus::Held,
        HoldStatus::Captured,
        HoldStatus::Voided,
        HoldStatus::Expired,
    ];

    #[test]
    fn only_an_active_hold_changes_and_only_into_a_final_state() {
        for from in ALL {
            for to in ALL {
                let allowed = from == HoldStatus::Held && to != HoldStatus::Held;
                assert_eq!(from.can_become(to), allowed, "{from:?} -> {to:?}");
            }
        }
        for s in ALL {
            assert_eq!(HoldStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(HoldStatus::parse("HELD"), None);
    }

    #[test]
    fn a_capture_takes_all_by_default_part_on_request_and_never_more() {
        assert_eq!(
            split_capture(500, None).unwrap(),
            CaptureSplit {
                captured: 500,
                released: 0
            }
        );
        assert_eq!(
            split_capture(500, Some(units(120))).unwrap(),
            CaptureSplit {
                captured: 120,
                released: 380
            }
        );
        assert_eq!(split_capture(500, Some(units(500))).unwrap().released, 0);
        assert!(matches!(
            split_capture(500, Some(units(501))),
            Err(DomainError::CaptureExceedsHold {
                requested: 501,
                held: 500
            })
        ));
    }

    #[test]
    fn ttl_is_one_millisecond_to_seven_days() {
        assert_eq!(HoldTtl::default().millis(), 300_000);
        assert_eq!(HoldTtl::from_millis(1).unwrap().millis(), 1);
        assert_eq!(
            HoldTtl::from_millis(604_800_000).unwrap().millis(),
            MAX_TTL_MS
        );
        for bad in [0, 604_800_001, u64::MAX] {
            assert!(matches!(
                HoldTtl::from_millis(bad),
                Err(DomainError::Invalid {
                    field: "ttl_ms",
                    ..
                })
            ));
        }
    }

    fn row(status: &str, expires_at_ms: i64) -> hold::Model {
        let at = now();
        hold::Model {
            id: 1,
            user_id: 2,
            wallet_id: 3,
            wallet_kind: "live".into(),
            amount: 10,
            captured_amount: 0,
            status: status.into(),
            reference: None,
            expires_at: DateTime::from_timestamp_millis(expires_at_ms).unwrap(),
            expires_at_ms,
            created_at: at,
            finished_at: None,
        }
    }

    #[test]
    fn an_active_hold_expires_at_its_expiry_exactly() {
        let held = row("held", 1_000);
        assert_eq!(HoldStatus::of(&held, 999).unwrap(), HoldStatus::Held);
        assert_eq!(HoldStatus::of(&held, 1_000).unwrap(), HoldStatus::Expired);
        let view = HoldView::at(held.clone(), 1_000).unwrap();
        assert_eq!(view.finished_at, Some(held.expires_at));
        assert_eq!(HoldView::at(held, 999).unwrap().finished_at, None);
        // an ended hold keeps its status whatever the time
        let voided = row("voided", 1_000);
        assert_eq!(HoldStatus::of(&voided, 5_000).unwrap(), HoldStatus::Voided);
        assert!(HoldStatus::of(&row("lost", 1_000), 0).is_err());
    }

    /// A ledger on a fresh SQLite file with one user whose live wallet
    /// holds 1000 minor units.
    async fn ledger() -> (tempfile::TempDir, Ledger, i64) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = crate::testing::ledger(&dir).await;
        let user = ledger
            .execute(&NewUser {
                email: Email::parse("h@x.io").unwrap(),
                referral_code: None,
            })
            .await
            .unwrap();
        ledger.execute(&deposit(user.id, 1_000)).await.unwrap();
        (dir, ledger, user.id)
    }

    fn deposit(user_id: i64, amount: i64) -> Deposit {
        Deposit {
            user_id,
            wallet: WalletKind::Live,
            amount: units(amount),
            payment_method: None,
            reference: None,
        }
    }

    fn hold_of(user_id: i64, amount: i64, ttl_ms: u64) -> CreateHold {
        CreateHold {
            user_id,
            wallet: WalletKind::Live,
            amount: units(amount),
            ttl: HoldTtl::from_millis(ttl_ms).unwrap(),
            reference: Some("payout-1".into()),
        }
    }

    /// (balance, held, free margin) of the user's live wallet as it reads.
    async fn live(ledger: &Ledger, user_id: i64) -> (i64, i64, i64) {
        let w = ledger.wallets(user_id).await.unwrap().remove(0);
        (w.balance, w.held, w.free_margin())
    }

    async fn kinds_of(ledger: &Ledger, user_id: i64) -> Vec<String> {
        let page = ledger
            .journal(user_id, Some(WalletKind::Live), 500, None)
            .await
            .unwrap();
        page.items.into_iter().rev().map(|e| e.kind).collect()
    }

    async fn assert_reconciled(ledger: &Ledger) {
        let report = check_all(&ledger.db.conn).await.unwrap();
        assert!(report.is_clean(), "{:?}", report.discrepancies);
    }

    #[tokio::test]
    async fn a_hold_reserves_free_balance_and_a_partial_capture_releases_the_rest() {
        let (_dir, ledger, u) = ledger().await;
        let hold = ledger.execute(&hold_of(u, 300, 60_000)).await.unwrap();
        assert_eq!(
            (hold.status, hold.amount, hold.captured_amount),
            (HoldStatus::Held, 300, 0)
        );
        assert_eq!(live(&ledger, u).await, (1_000, 300, 700));
        // the held part is not free: not to withdraw, nor to hold again
        let too_much = Withdrawal {
            fence: None,
            user_id: u,
            wallet: WalletKind::Live,
            amount: units(701),
            destination: None,
        };
        assert!(matches!(
            ledger.execute(&too_much).await,
            Err(DomainError::InsufficientFunds {
                available: 700,
                requested: 701
            })
        ));
        assert!(matches!(
            ledger.execute(&hold_of(u, 701, 60_000)).await,
            Err(DomainError::InsufficientFunds { .. })
        ));
        let captured = ledger
            .execute(&CaptureHold {
                hold_id: hold.id,
                amount: Some(units(120)),
            })
            .await
            .unwrap();
        assert_eq!(
            (captured.status, captured.captured_amount),
            (HoldStatus::Captured, 120)
        );
        assert!(captured.finished_at.is_some());
        assert_eq!(live(&ledger, u).await, (880, 0, 880));
        assert_eq!(
            kinds_of(&ledger, u).await,
            ["deposit", "hold", "hold_capture", "hold_release"]
        );
        // it ended once: neither a second capture (however much it asks)
        // nor a void changes it
        for again in [
            ledger
                .execute(&CaptureHold {
                    hold_id: hold.id,
                    amount: Some(units(10_000)),
                })
                .await,
            ledger
                .execute(&CaptureHold {
                    hold_id: hold.id,
                    amount: None,
                })
                .await,
            ledger.execute(&VoidHold { hold_id: hold.id }).await,
        ] {
            assert!(matches!(
                again,
                Err(DomainError::HoldNotActive {
                    status: "captured",
                    ..
                })
            ));
        }
        assert_eq!(ledger.hold(hold.id).await.unwrap(), captured);
        assert_reconciled(&ledger).await;
    }

    #[tokio::test]
    async fn a_full_capture_and_a_void_and_a_capture_beyond_the_hold() {
        let (_dir, ledger, u) = ledger().await;
        let a = ledger.execute(&hold_of(u, 400, 60_000)).await.unwrap();
        let b = ledger.execute(&hold_of(u, 250, 60_000)).await.unwrap();
        assert_eq!(live(&ledger, u).await, (1_000, 650, 350));
        assert!(matches!(
            ledger
                .execute(&CaptureHold {
                    hold_id: a.id,
                    amount: Some(units(401)),
                })
                .await,
            Err(DomainError::CaptureExceedsHold { .. })
        ));
        let full = ledger
            .execute(&CaptureHold {
                hold_id: a.id,
                amount: None,
            })
            .await
            .unwrap();
        assert_eq!(full.captured_amount, 400);
        assert_eq!(live(&ledger, u).await, (600, 250, 350));
        let voided = ledger.execute(&VoidHold { hold_id: b.id }).await.unwrap();
        assert_eq!(
            (voided.status, voided.captured_amount),
            (HoldStatus::Voided, 0)
        );
        assert_eq!(live(&ledger, u).await, (600, 0, 600));
        assert!(matches!(
            ledger.execute(&VoidHold { hold_id: 999 }).await,
            Err(DomainError::NotFound("hold"))
        ));
        assert_reconciled(&ledger).await;
    }

    #[tokio::test]
    async fn an_expired_hold_stops_counting_before_anything_releases_it() {
        let (_dir, ledger, u) = ledger().await;
        // Long enough for the read below to come before the expiry on a
        // slow machine.
        let hold = ledger.execute(&hold_of(u, 900, 500)).await.unwrap();
        assert_eq!(live(&ledger, u).await, (1_000, 900, 100));
        tokio::time::sleep(Duration::from_millis(600)).await;
        // nothing has written to the wallet: it still stores the hold ...
        let stored = find_hold(&ledger.db.conn, hold.id).await.unwrap();
        assert_eq!(stored.status, "held");
        // ... but reads no longer count it
        assert_eq!(live(&ledger, u).await, (1_000, 0, 1_000));
        let read = ledger.hold(hold.id).await.unwrap();
        assert_eq!(
            (read.status, read.finished_at),
            (HoldStatus::Expired, Some(read.expires_at))
        );
        let expired_page = ledger
            .holds(u, Some(HoldStatus::Expired), 10, None)
            .await
            .unwrap();
        assert_eq!(expired_page.items, vec![read.clone()]);
        assert!(
            ledger
                .holds(u, Some(HoldStatus::Held), 10, None)
                .await
                .unwrap()
                .items
                .is_empty()
        );
        assert!(matches!(
            ledger
                .execute(&CaptureHold {
                    hold_id: hold.id,
                    amount: None,
                })
                .await,
            Err(DomainError::HoldNotActive {
                status: "expired",
                ..
            })
        ));
        // the next write to the wallet releases it under the lock: the whole
        // balance is free to withdraw
        let all = Withdrawal {
            fence: None,
            user_id: u,
            wallet: WalletKind::Live,
            amount: units(1_000),
            destination: None,
        };
        ledger.execute(&all).await.unwrap();
        let stored = find_hold(&ledger.db.conn, hold.id).await.unwrap();
        assert_eq!(
            (stored.status.as_str(), stored.finished_at),
            ("expired", Some(stored.expires_at))
        );
        assert_eq!(ledger.hold(hold.id).await.unwrap(), read);
        assert_eq!(
            kinds_of(&ledger, u).await,
            ["deposit", "hold", "hold_release", "withdrawal"]
        );
        assert_reconciled(&ledger).await;
    }

    #[tokio::test]
    async fn a_read_racing_the_cleanup_counts_a_released_hold_once() {
        let (_dir, ledger, u) = ledger().await;
        ledger.execute(&hold_of(u, 300, 10)).await.unwrap();
        // A read takes the wallet row while the hold is still stored ...
        let stale = wallet::Entity::find()
            .filter(wallet::Column::UserId.eq(u))
            .order_by_asc(wallet::Column::Id)
            .all(&ledger.db.conn)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        // ... the cleanup releases it before the read looks for expired
        // holds to subtract ...
        assert_eq!(ledger.expire_due_holds().await.unwrap(), 1);
        // ... and the read still reports nothing held (the old row's 300
        // with nothing left to subtract would report 300).
        let views = crate::ledger::wallets::wallet_views(&ledger.db.conn, &stale)
            .await
            .unwrap();
        let live = views.iter().find(|w| w.kind == "live").unwrap();
        assert_eq!((live.balance, live.held), (1_000, 0));
    }

    #[tokio::test]
    async fn the_cleanup_releases_due_holds_once_and_leaves_the_others() {
        let (_dir, ledger, u) = ledger().await;
        // Nothing writes to a wallet after its due hold is made: a write
        // would release it under the wallet lock before the cleanup runs.
        let active = ledger.execute(&hold_of(u, 200, 60_000)).await.unwrap();
        let due = ledger.execute(&hold_of(u, 100, 10)).await.unwrap();
        let also_due = CreateHold {
            wallet: WalletKind::Demo,
            ..hold_of(u, 50, 10)
        };
        let also_due = ledger.execute(&also_due).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(ledger.expire_due_holds().await.unwrap(), 2);
        assert_eq!(ledger.expire_due_holds().await.unwrap(), 0);
        for (id, status) in [
            (due.id, HoldStatus::Expired),
            (also_due.id, HoldStatus::Expired),
            (active.id, HoldStatus::Held),
        ] {
            assert_eq!(ledger.hold(id).await.unwrap().status, status);
        }
        let stored = wallet::Entity::find().all(&ledger.db.conn).await.unwrap();
        let live = stored.iter().find(|w| w.kind == "live").unwrap();
        assert_eq!(live.held, 200);
        assert_reconciled(&ledger).await;
    }
}
