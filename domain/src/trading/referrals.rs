//! Referrals: signup bonuses, commissions on order fees, their settlement,
//! and the statistics a referrer sees.
//!
//! A popular referrer's wallet must not be locked by every referee's order,
//! so a commission is only *recorded* (`pending`) in the order's transaction;
//! settlement credits pending commissions to referrers' live wallets in
//! batches, one lock per referrer per batch. A commission exists at most once
//! per (order, fee, level): a unique constraint says so.
//!
//! Referral cycles cannot arise: the referrer is set once, when the user is
//! created, to a user that already exists, and never changes; a user is never
//! its own referrer (a CHECK constraint). The upline walk is bounded by the
//! configured number of levels all the same.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};

use infra::entities::{referral_bonus, referral_commission as commission, user, wallet};
use sea_orm::sea_query::{Expr, LockBehavior, LockType};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait,
    IntoActiveModel, NotSet, QueryFilter, QueryOrder, QuerySelect, Set,
};
use uuid::Uuid;

use crate::Ledger;
use crate::clock::now;
use crate::error::{DomainError, DomainResult};
use crate::ledger::financial::{self, Deltas, Leg, Posting};
use crate::ledger::journal::kinds;
use crate::ledger::wallets::{WalletKind, lock_wallet, lock_wallets_in_order};
use crate::money::Rate;
use crate::sql::statement;

/// The fee a commission is a share of.
pub const OPEN_FEE: &str = "open";
pub const CLOSE_FEE: &str = "close";

const PENDING: &str = "pending";
const PAID: &str = "paid";

const ROLE_REFERRER: &str = "referrer";
const ROLE_REFEREE: &str = "referee";

/// Referral settings, from the configuration. Amounts are minor units.
#[derive(Debug, Clone)]
pub struct ReferralRules {
    pub referrer_bonus: i64,
    pub referee_bonus: i64,
    /// Commission rate per upline level, level 1 (the direct referrer) first.
    pub rates: Vec<Rate>,
}

/// One upline level's share of one fee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub level: i32,
    pub referrer_id: i64,
    pub rate: Rate,
    pub amount: i64,
}

/// `fee * rate[level]` for each level of the upline (level 1 first), rounded
/// half to even; shares that round to zero are not recorded.
pub fn shares(fee: i64, upline: &[i64], rates: &[Rate]) -> Vec<Share> {
    upline
        .iter()
        .zip(rates)
        .enumerate()
        .map(|(i, (&referrer_id, &rate))| Share {
            level: i32::try_from(i + 1).unwrap_or(i32::MAX),
            referrer_id,
            rate,
            amount: rate.of(fee),
        })
        .filter(|s| s.amount > 0)
        .collect()
}

/// The uplines read so far, by user, for the commissions of orders. A
/// user's referrer is set when the user is created and never changes (see
/// the top of this file), nor does any referrer's: a user's upline, once
/// read, holds for good and in every instance, and an order need not read
/// it again. Bounded: when full, it starts again empty.
#[derive(Debug)]
pub struct Uplines {
    /// Levels read: one per configured commission rate.
    levels: usize,
    capacity: usize,
    /// Each user's upline, level 1 first.
    chains: Mutex<HashMap<i64, Arc<[i64]>>>,
}

impl Uplines {
    /// Users whose uplines are kept by default: a few MB at most.
    pub const CAPACITY: usize = 100_000;

    pub fn new(levels: usize, capacity: usize) -> Self {
        Self {
            levels,
            capacity,
            chains: Mutex::new(HashMap::new()),
        }
    }

    /// `user_id`'s upline (`upline`), read once.
    pub async fn of<C: ConnectionTrait>(&self, conn: &C, user_id: i64) -> DomainResult<Arc<[i64]>> {
        if let Some(chain) = self.chains().get(&user_id) {
            return Ok(Arc::clone(chain));
        }
        let chain: Arc<[i64]> = upline(conn, user_id, self.levels).await?.into();
        let mut chains = self.chains();
        if chains.len() >= self.capacity {
            chains.clear();
        }
        chains.insert(user_id, Arc::clone(&chain));
        Ok(chain)
    }

    fn chains(&self) -> MutexGuard<'_, HashMap<i64, Arc<[i64]>>> {
        self.chains.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The user's referrer, the referrer's referrer, … up to `levels`, in one
/// query.
async fn upline<C: ConnectionTrait>(
    conn: &C,
    user_id: i64,
    levels: usize,
) -> DomainResult<Vec<i64>> {
    if levels == 0 {
        return Ok(Vec::new());
    }
    let sql = "WITH RECURSIVE up(id, referrer_id, level) AS ( \
                 SELECT id, referrer_id, 0 FROM users WHERE id = ? \
                 UNION ALL \
                 SELECT u.id, u.referrer_id, up.level + 1 FROM users u \
                 JOIN up ON u.id = up.referrer_id WHERE up.level < ? \
               ) SELECT id, level FROM up WHERE level > 0 ORDER BY level";
    let levels_i64 = i64::try_from(levels).unwrap_or(i64::MAX);
    let rows = conn
        .query_all_raw(statement(
            conn.get_database_backend(),
            sql,
            vec![user_id.into(), levels_i64.into()],
        ))
        .await?;
    let mut chain = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = row.try_get("", "id")?;
        if id == user_id || chain.contains(&id) {
            break; // defensive: a cycle cannot be stored, but never follow one
        }
        chain.push(id);
    }
    Ok(chain)
}

/// The upline's commissions on one fee of one order, `pending`, as rows to
/// insert (ids unset): one per level whose share does not round to zero.
pub fn commissions(
    referee_id: i64,
    (order_id, fee_kind): (i64, &'static str),
    fee: i64,
    chain: &[i64],
    rates: &[Rate],
    at: DateTime<Utc>,
) -> Vec<commission::Model> {
    if fee <= 0 {
        return Vec::new();
    }
    shares(fee, chain, rates)
        .into_iter()
        .map(|s| commission::Model {
            id: 0,
            order_id,
            fee_kind: fee_kind.to_owned(),
            level: s.level,
            referrer_id: s.referrer_id,
            referee_id,
            fee,
            rate: s.rate.units(),
            amount: s.amount,
            status: PENDING.to_owned(),
            created_at: at,
            settled_at: None,
            settlement_id: None,
        })
        .collect()
}

/// Records the upline's commissions on one fee of one order, `pending`, in
/// the order's transaction. Locks nothing but the new rows.
pub async fn accrue(
    txn: &DatabaseTransaction,
    ledger: &Ledger,
    referee_id: i64,
    order_id: i64,
    fee_kind: &'static str,
    fee: i64,
) -> DomainResult<usize> {
    let rules = &ledger.referral;
    if fee <= 0 || rules.rates.is_empty() {
        return Ok(0);
    }
    let chain = ledger.uplines.of(txn, referee_id).await?;
    let rows = commissions(
        referee_id,
        (order_id, fee_kind),
        fee,
        &chain,
        &rules.rates,
        now(),
    );
    if rows.is_empty() {
        return Ok(0);
    }
    let count = rows.len();
    let rows = rows.into_iter().map(|row| commission::ActiveModel {
        id: NotSet,
        ..row.into_active_model().reset_all()
    });
    commission::Entity::insert_many(rows)
        .exec_without_returning(txn)
        .await?;
    Ok(count)
}

/// Pays the signup bonuses of a referee that just signed up with
/// `referrer_id`'s code, in the user-creation transaction: the referrer's
/// live wallet (locked) and the referee's new live wallet. The unique
/// (referee, role) constraint makes each bonus once per referee.
pub async fn pay_signup_bonuses(
    txn: &DatabaseTransaction,
    rules: &ReferralRules,
    referee_live: &mut wallet::Model,
    referrer_id: i64,
) -> DomainResult<()> {
    if rules.referrer_bonus <= 0 && rules.referee_bonus <= 0 {
        return Ok(());
    }
    let referee_id = referee_live.user_id;
    let operation_id = Uuid::new_v4();
    let mut referrer_wallet = if rules.referrer_bonus > 0 {
        Some(lock_wallet(txn, referrer_id, WalletKind::Live).await?)
    } else {
        None
    };
    let mut postings = Vec::new();
    let mut bonuses = Vec::new();
    let at = now();
    let mut bonus = |beneficiary_id: i64, role: &str, amount: i64| {
        bonuses.push(referral_bonus::ActiveModel {
            referee_id: Set(referee_id),
            beneficiary_id: Set(beneficiary_id),
            role: Set(role.to_owned()),
            amount: Set(amount),
            operation_id: Set(operation_id),
            created_at: Set(at),
            ..Default::default()
        })
    };
    let metadata = |role: &str, counterparty: i64| {
        Some(serde_json::json!({ "role": role, "counterparty_user_id": counterparty }))
    };
    if let Some(referrer_wallet) = referrer_wallet.as_mut() {
        bonus(referrer_id, ROLE_REFERRER, rules.referrer_bonus);
        postings.push(Posting::new(
            referrer_wallet,
            Leg::new(kinds::SIGNUP_BONUS, Deltas::balance(rules.referrer_bonus))
                .metadata(metadata(ROLE_REFERRER, referee_id)),
        ));
    }
    if rules.referee_bonus > 0 {
        bonus(referee_id, ROLE_REFEREE, rules.referee_bonus);
        postings.push(Posting::new(
            referee_live,
            Leg::new(kinds::SIGNUP_BONUS, Deltas::balance(rules.referee_bonus))
                .metadata(metadata(ROLE_REFEREE, referrer_id)),
        ));
    }
    if postings.is_empty() {
        return Ok(());
    }
    financial::post(txn, operation_id, postings).await?;
    referral_bonus::Entity::insert_many(bonuses)
        .exec_without_returning(txn)
        .await?;
    Ok(())
}

/// What one settlement run credited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settlement {
    /// Commissions marked paid.
    pub settled: u64,
    /// Their total, minor units.
    pub amount: i64,
}

impl Settlement {
    fn add(&mut self, other: Settlement) -> DomainResult<()> {
        self.settled += other.settled;
        self.amount = self
            .amount
            .checked_add(other.amount)
            .ok_or(DomainError::BalanceLimit)?;
        Ok(())
    }
}

/// Settles up to `batch` pending commissions in the caller's transaction:
/// each referrer's live wallet is locked once (ascending wallet id) and
/// credited the sum of its commissions as one journal entry. On PostgreSQL
/// the batch's rows are claimed `FOR UPDATE SKIP LOCKED`, so concurrent
/// settlers (the job on every instance, the route) never pay a row twice
/// and never wait on each other.
pub async fn settle_batch(txn: &DatabaseTransaction, batch: u64) -> DomainResult<Settlement> {
    let query = commission::Entity::find()
        .filter(commission::Column::Status.eq(PENDING))
        .order_by_asc(commission::Column::Id)
        .limit(batch);
    let rows = match txn.get_database_backend() {
        // SQLite: the transaction already holds the write lock.
        DbBackend::Sqlite => query,
        _ => query.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked),
    }
    .all(txn)
    .await?;
    if rows.is_empty() {
        return Ok(Settlement::default());
    }
    let mut per_referrer: BTreeMap<i64, (i64, u64)> = BTreeMap::new();
    for row in &rows {
        let entry = per_referrer.entry(row.referrer_id).or_default();
        entry.0 = entry
            .0
            .checked_add(row.amount)
            .ok_or(DomainError::BalanceLimit)?;
        entry.1 += 1;
    }
    let referrers: Vec<i64> = per_referrer.keys().copied().collect();
    let mut wallets = lock_wallets_in_order(txn, &referrers, WalletKind::Live).await?;
    if wallets.len() != referrers.len() {
        return Err(DomainError::unexpected("a referrer has no live wallet"));
    }
    let settlement_id = Uuid::new_v4();
    let mut total = Settlement::default();
    let mut postings = Vec::with_capacity(wallets.len());
    for w in wallets.iter_mut() {
        let (amount, count) = per_referrer.get(&w.user_id).copied().unwrap_or_default();
        total.add(Settlement {
            settled: count,
            amount,
        })?;
        let meta = serde_json::json!({ "commissions": count });
        postings.push(Posting::new(
            w,
            Leg::new(kinds::REFERRAL_COMMISSION, Deltas::balance(amount)).metadata(Some(meta)),
        ));
    }
    financial::post(txn, settlement_id, postings).await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let updated = commission::Entity::update_many()
        .col_expr(commission::Column::Status, Expr::value(PAID))
        .col_expr(commission::Column::SettledAt, Expr::value(now()))
        .col_expr(commission::Column::SettlementId, Expr::value(settlement_id))
        .filter(commission::Column::Id.is_in(ids))
        .filter(commission::Column::Status.eq(PENDING))
        .exec(txn)
        .await?;
    if updated.rows_affected != rows.len() as u64 {
        return Err(DomainError::unexpected(
            "pending commissions changed during settlement",
        ));
    }
    Ok(total)
}

/// Settles up to `limit` pending commissions in one transaction (the route;
/// the periodic job settles whatever remains).
#[derive(Debug, Clone, Copy)]
pub struct SettleCommissions {
    pub limit: u64,
}

impl crate::Command for SettleCommissions {
    type Output = Settlement;
    const NAME: &'static str = "settle_referrals";

    async fn execute(
        &self,
        _: &crate::Ledger,
        txn: &DatabaseTransaction,
    ) -> DomainResult<Settlement> {
        settle_batch(txn, self.limit).await
    }
}

impl crate::Ledger {
    /// The periodic job: settles pending commissions batch by batch.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn settle_pending_commissions(&self) -> DomainResult<Settlement> {
        settle_pending(&self.tx, self.settle_batch, 100).await
    }

    /// A referrer's statistics; an unknown user is 404.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn referral_stats(&self, user_id: i64) -> DomainResult<ReferralStats> {
        stats(&self.db.conn, user_id, self.referral.rates.len()).await
    }
}

/// Settles every pending commission, batch by batch, each batch its own
/// retried transaction. Stops after `max_batches` so one call stays bounded
/// while new commissions keep arriving.
pub async fn settle_pending(
    tx: &crate::tx::TransactionService,
    batch: u64,
    max_batches: u32,
) -> DomainResult<Settlement> {
    let mut total = Settlement::default();
    // A plain read first, so an idle job takes no write lock (SQLite) and
    // opens no transaction.
    let any = commission::Entity::find()
        .filter(commission::Column::Status.eq(PENDING))
        .one(&tx.db().conn)
        .await?;
    if any.is_none() {
        return Ok(total);
    }
    for _ in 0..max_batches {
        let done = tx
            .execute_with_retry("settle_commissions", |txn| async move {
                settle_batch(&txn, batch).await
            })
            .await?;
        total.add(done)?;
        if done.settled < batch {
            break;
        }
    }
    if total.settled > 0 {
        tracing::info!(
            settled = total.settled,
            amount = %crate::money::format_units(total.amount),
            "referral commissions settled"
        );
    }
    Ok(total)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelStats {
    pub level: i32,
    pub referees: i64,
    pub commission_paid: i64,
    pub commission_pending: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferralStats {
    pub referral_code: String,
    /// Direct referees (level 1).
    pub referees: i64,
    pub by_level: Vec<LevelStats>,
    /// Signup bonuses this user earned as a referrer.
    pub signup_bonus_paid: i64,
    pub commission_paid: i64,
    pub commission_pending: i64,
}

/// A referrer's statistics for each configured level (at least level 1).
pub async fn stats<C: ConnectionTrait>(
    conn: &C,
    user_id: i64,
    levels: usize,
) -> DomainResult<ReferralStats> {
    let user = user::Entity::find_by_id(user_id)
        .one(conn)
        .await?
        .ok_or(DomainError::NotFound("user"))?;
    let backend = conn.get_database_backend();
    let levels = levels.max(1);
    let mut by_level: Vec<LevelStats> = (1..=levels)
        .map(|l| LevelStats {
            level: i32::try_from(l).unwrap_or(i32::MAX),
            referees: 0,
            commission_paid: 0,
            commission_pending: 0,
        })
        .collect();
    let down = "WITH RECURSIVE down(id, level) AS ( \
                  SELECT id, 1 FROM users WHERE referrer_id = ? \
                  UNION ALL \
                  SELECT u.id, down.level + 1 FROM users u \
                  JOIN down ON u.referrer_id = down.id WHERE down.level < ? \
                ) SELECT level, COUNT(*) AS n FROM down GROUP BY level";
    let levels_i64 = i64::try_from(levels).unwrap_or(i64::MAX);
    for row in conn
        .query_all_raw(statement(
            backend,
            down,
            vec![user_id.into(), levels_i64.into()],
        ))
        .await?
    {
        let level: i32 = row.try_get("", "level")?;
        let n: i64 = row.try_get("", "n")?;
        if let Some(l) = by_level.iter_mut().find(|l| l.level == level) {
            l.referees = n;
        }
    }
    let sums = "SELECT level, status, CAST(SUM(amount) AS BIGINT) AS total \
                FROM referral_commissions WHERE referrer_id = ? GROUP BY level, status";
    let (mut paid, mut pending) = (0i64, 0i64);
    for row in conn
        .query_all_raw(statement(backend, sums, vec![user_id.into()]))
        .await?
    {
        let level: i32 = row.try_get("", "level")?;
        let status: String = row.try_get("", "status")?;
        let total: i64 = row.try_get("", "total")?;
        let slot = by_level.iter_mut().find(|l| l.level == level);
        if status == PAID {
            paid = paid.saturating_add(total);
            if let Some(l) = slot {
                l.commission_paid = total;
            }
        } else {
            pending = pending.saturating_add(total);
            if let Some(l) = slot {
                l.commission_pending = total;
            }
        }
    }
    let bonus = "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) AS total \
                 FROM referral_bonuses WHERE beneficiary_id = ? AND role = ?";
    let signup_bonus_paid: i64 = match conn
        .query_one_raw(statement(
            backend,
            bonus,
            vec![user_id.into(), ROLE_REFERRER.into()],
        ))
        .await?
    {
        Some(row) => row.try_get("", "total")?,
        None => 0,
    };
    Ok(ReferralStats {
        referral_code: user.referral_code,
        referees: by_level.first().map_or(0, |l| l.referees),
        by_level,
        signup_bonus_paid,
        commission_paid: paid,
        commission_pending: pending,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;
    use std::str::FromStr;

    fn rate(s: &str) -> Rate {
        Rate::from_decimal(Decimal::from_str(s).unwrap()).unwrap()
    }

    #[test]
    fn each_level_earns_its_rate_of_the_fee() {
        let rates = [rate("0.20"), rate("0.05")];
        // fee 1.00000000: level 1 earns 0.2, level 2 earns 0.05
        let s = shares(100_000_000, &[7, 3], &rates);
        assert_eq!(
            s.iter()
                .map(|s| (s.level, s.referrer_id, s.amount))
                .collect::<Vec<_>>(),
            vec![(1, 7, 20_000_000), (2, 3, 5_000_000)]
        );
    }

    #[tokio::test]
    async fn an_upline_is_read_once_and_its_cache_stays_bounded() {
        use crate::ledger::users::{Email, NewUser, ReferralCode};
        let dir = tempfile::tempdir().unwrap();
        let ledger = crate::testing::ledger(&dir).await;
        let mut ids = Vec::new();
        let mut code = None;
        for email in ["a@x.io", "b@x.io", "c@x.io"] {
            let user = ledger
                .execute(&NewUser {
                    email: Email::parse(email).unwrap(),
                    referral_code: code.take(),
                })
                .await
                .unwrap();
            code = Some(ReferralCode::parse(&user.referral_code).unwrap());
            ids.push(user.id);
        }
        let [a, b, c] = ids[..] else {
            panic!("three users")
        };
        let (uplines, conn) = (Uplines::new(2, 2), &ledger.db.conn);
        let first = uplines.of(conn, c).await.unwrap();
        assert_eq!(&*first, &[b, a]);
        // the second time it is the chain read the first time
        assert!(Arc::ptr_eq(&first, &uplines.of(conn, c).await.unwrap()));
        assert_eq!(&*Uplines::new(1, 2).of(conn, c).await.unwrap(), &[b]);
        assert_eq!(&*uplines.of(conn, b).await.unwrap(), &[a]);
        assert_eq!(uplines.chains().len(), 2);
        // full: it starts again empty, then reads again what it forgot
        assert!(uplines.of(conn, a).await.unwrap().is_empty());
        assert_eq!(uplines.chains().len(), 1);
        let again = uplines.of(conn, c).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &again));
        assert_eq!(first, again);
    }

    #[test]
    fn a_short_upline_earns_only_its_levels() {
        let rates = [rate("0.20"), rate("0.05")];
        assert_eq!(shares(1_000, &[7], &rates).len(), 1);
        assert!(shares(1_000, &[], &rates).is_empty());
        // more upline than configured levels: the extra levels earn nothing
        assert_eq!(shares(1_000, &[7, 3, 1], &rates).len(), 2);
    }

    #[test]
    fn commissions_round_half_to_even_and_zero_shares_are_dropped() {
        let rates = [rate("0.20"), rate("0.05")];
        // fee 0.00000010: 2 and 0.5 -> 0 (half to even), so level 2 is dropped
        let s = shares(10, &[7, 3], &rates);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].amount, 2);
        // fee 0.00000030: 6 and 1.5 -> 2
        let s = shares(30, &[7, 3], &rates);
        assert_eq!((s[0].amount, s[1].amount), (6, 2));
        assert!(shares(0, &[7, 3], &rates).is_empty());
    }
}
