//! Business rules and services. Nothing here knows HTTP.
//!
//! Where is X?
//! - the deposit, withdrawal and transfer rules, and the wallet locks
//!   (`execute_with_user_lock`, ascending-id order): `ledger/wallets.rs`;
//! - signup (both wallets, referrer link, bonuses): `ledger/users.rs`;
//! - holds (create, capture, void, lazy expiry under the wallet lock, the
//!   cleanup job): `ledger/holds.rs`;
//! - the money-moving primitive (FinancialService): `ledger/financial.rs`;
//! - batches that form without waiting: `batch.rs`; group commit (writes
//!   sharing one transaction): `group.rs`; coalesced wallet reads:
//!   `ledger/reads.rs`; the books
//!   a group of deposits, withdrawals and orders is applied to in memory:
//!   `ledger/books.rs`, and the orders it opens and closes:
//!   `trading/planned.rs`;
//! - journal kinds and the hash chain: `ledger/journal.rs`; the books
//!   check: `ledger/reconcile.rs`;
//! - margin, fees and P&L arithmetic: `trading/rules.rs`; orders under the
//!   wallet lock: `trading/orders.rs`; the cooldown: `trading/cooldown.rs`;
//!   prices: `trading/prices.rs`; bonuses and commissions:
//!   `trading/referrals.rs`;
//! - the shared kernel: money (`money`), time (`clock`), lists (`page`),
//!   errors (`error`, `db_error`), retried transactions (`tx`),
//!   exactly-once (`idempotency`), portable SQL (`sql`);
//! - resource locks, their queue, fencing and cleanup: `locks/` (its own
//!   map in `locks/mod.rs`), reached as `ledger.locks`;
//! - workflows (withdrawal payouts, deposits in review), their workers,
//!   circuit breakers and the recovery manager: `workflows/` (its own map
//!   in `workflows/mod.rs`), a `WorkflowService` beside the ledger.
//!
//! Every write is a [`Command`]: the [`Ledger`] handle runs it in a retried
//! transaction, once per Idempotency-Key ([`Ledger::execute_once`]).

pub mod batch;
pub mod clock;
pub mod db_error;
pub mod error;
pub mod group;
pub mod idempotency;
pub mod ledger;
pub mod locks;
pub mod money;
pub mod page;
pub mod sql;
#[cfg(test)]
mod testing;
pub mod trading;
pub mod tx;
pub mod workflows;

use std::future::Future;
use std::sync::Arc;

pub use error::{DomainError, DomainResult};
use infra::db::Backend;
use infra::{Config, Database};
use rust_decimal::Decimal;
use sea_orm::DatabaseTransaction;

use crate::group::{GroupCommit, Plan, PlanOp, WriteOp};
use crate::idempotency::{IdempotencyService, IdempotentRequest, Outcome, StoredResponse};
use crate::ledger::reads::WalletReads;
use crate::ledger::wallets::WalletKind;
use crate::locks::{LockRules, LockService};
use crate::money::Rate;
use crate::trading::planned::Needs;
use crate::trading::referrals::{ReferralRules, Uplines};
use crate::trading::rules::TradingRules;
use crate::tx::{RetryPolicy, TransactionService};

/// A write use case. It runs inside the transaction it is given, all or
/// nothing, and finds what it needs (rules, the backend) from the ledger and
/// the transaction; it does nothing outside the database, since the
/// transaction may be re-run.
pub trait Command: Clone + Send + Sync + 'static {
    type Output: Send;
    /// Its name in metrics and logs.
    const NAME: &'static str;

    /// The wallets it will lock, when they are known before it runs. A
    /// command that names them may share its transaction with others (group
    /// commit, see `group`); one that does not runs alone.
    fn wallets(&self) -> Option<Vec<(i64, WalletKind)>> {
        None
    }

    /// Its effect follows from its locked wallets and what `needs` reads
    /// alone, with nothing else read or written on the way (a deposit, a
    /// withdrawal, an order opened or closed, none behind a fencing token): such
    /// writes of a group are applied to the group's books in memory one
    /// after the other, a refused one leaving no trace, and written together
    /// (see `group`). `plan` must then do it.
    fn planned(&self) -> bool {
        false
    }

    /// What a planned write reads besides its wallets, read for its whole
    /// group before any write of it is planned (`trading::planned`).
    fn needs(&self) -> Needs {
        Needs::default()
    }

    /// Applies it to a group's books (see `planned`).
    fn plan(&self, _ledger: &Ledger, _plan: &mut Plan) -> DomainResult<Self::Output> {
        Err(DomainError::unexpected(format!(
            "{} is not planned",
            Self::NAME
        )))
    }

    fn execute(
        &self,
        ledger: &Ledger,
        txn: &DatabaseTransaction,
    ) -> impl Future<Output = DomainResult<Self::Output>> + Send;
}

/// The services the API calls, built once from the configuration.
#[derive(Clone, Debug)]
pub struct Ledger {
    pub db: Database,
    pub tx: TransactionService,
    pub idempotency: IdempotencyService,
    /// Opening balance of new demo wallets, minor units.
    pub demo_balance: i64,
    pub trading: Arc<TradingRules>,
    pub referral: Arc<ReferralRules>,
    /// The referral uplines orders have read (they never change).
    pub uplines: Arc<Uplines>,
    /// Commissions settled per transaction.
    pub settle_batch: u64,
    /// Money writes sharing commits; `None` when group commit is off.
    pub group: Option<Arc<GroupCommit>>,
    /// Wallet reads sharing statements; `None` when off.
    pub reads: Option<Arc<WalletReads>>,
    pub locks: LockService,
}

fn setting_units(name: &'static str, value: Decimal) -> DomainResult<i64> {
    money::to_units(value).map_err(|e| DomainError::invalid(name, e))
}

fn setting_rate(name: &'static str, value: Decimal) -> DomainResult<Rate> {
    Rate::from_decimal(value).map_err(|e| DomainError::invalid(name, e))
}

impl Ledger {
    /// Runs `cmd` in a retried transaction.
    #[tracing::instrument(name = "execute", skip_all, fields(operation = C::NAME))]
    pub async fn execute<C: Command>(&self, cmd: &C) -> DomainResult<C::Output> {
        self.tx
            .execute_with_retry(C::NAME, |txn| async move { cmd.execute(self, &txn).await })
            .await
    }

    /// Runs `cmd` at most once for `req` (see `idempotency`), or replays what
    /// its one run answered. `render` turns a success, and `refuse` a business
    /// refusal, into the response that is stored and sent; both run inside the
    /// transaction, so they must be pure.
    #[tracing::instrument(name = "execute_once", skip_all, fields(operation = C::NAME, key = %req.key))]
    pub async fn execute_once<C: Command>(
        &self,
        req: &IdempotentRequest,
        cmd: &C,
        render: impl Fn(&C::Output) -> StoredResponse + Send + Sync + 'static,
        refuse: impl Fn(&DomainError) -> StoredResponse + Send + Sync + 'static,
    ) -> DomainResult<Outcome> {
        if let (Some(group), Some(wallets)) = (&self.group, cmd.wallets()) {
            let (ledger, cmd, render) = (self.clone(), Arc::new(cmd.clone()), Arc::new(render));
            let needs = cmd.needs();
            let plan = (cmd.planned() && self.plans(&needs)).then(|| {
                let (ledger, cmd, render) = (self.clone(), Arc::clone(&cmd), Arc::clone(&render));
                let plan: PlanOp =
                    Arc::new(move |plan: &mut Plan| cmd.plan(&ledger, plan).map(|o| render(&o)));
                (plan, needs)
            });
            let op: WriteOp = Arc::new(move |txn| {
                let (ledger, cmd, render) = (ledger.clone(), Arc::clone(&cmd), Arc::clone(&render));
                Box::pin(async move { Ok(render(&cmd.execute(&ledger, &txn).await?)) })
            });
            return group
                .submit(
                    self,
                    C::NAME,
                    req.clone(),
                    wallets,
                    (op, plan),
                    Arc::new(refuse),
                )
                .await;
        }
        self.idempotency
            .run(
                C::NAME,
                req,
                |txn| async move { cmd.execute(self, &txn).await },
                render,
                refuse,
            )
            .await
    }

    /// Whether writes with these needs are planned here: orders opened or
    /// closed only on PostgreSQL (what they read is read in one statement of
    /// its own, new ids drawn from its sequence), and opened only without a
    /// cooldown (it reads the user's last order).
    fn plans(&self, needs: &Needs) -> bool {
        needs.is_empty()
            || (self.db.backend == Backend::Postgres
                && (needs.orders == 0 || self.trading.cooldown_ms == 0))
    }

    pub fn new(db: Database, config: &Config) -> DomainResult<Self> {
        let (trading, referrals) = (&config.trading, &config.referrals);
        let tx = TransactionService::new(db.clone(), RetryPolicy::from_config(&config.retry));
        let idempotency = IdempotencyService::new(tx.clone(), config.idempotency.ttl);
        let rates = referrals
            .commission_rates
            .iter()
            .map(|&r| setting_rate("referral_commission_rates", r))
            .collect::<DomainResult<Vec<_>>>()?;
        // One upline level per commission rate.
        let levels = rates.len();
        let locks = LockService::new(
            tx.clone(),
            idempotency.clone(),
            LockRules::from_config(&config.locks),
            config.database.wait_budget,
        );
        let reads = config.reads.enabled.then(|| {
            Arc::new(WalletReads::new(
                db.conn.clone(),
                config.reads.batches,
                config.reads.max_size,
                config.database.wait_budget,
            ))
        });
        Ok(Self {
            db,
            tx,
            idempotency,
            locks,
            demo_balance: setting_units("demo_balance", trading.demo_balance)?,
            trading: Arc::new(TradingRules {
                fee_rate: setting_rate("trade_fee_rate", trading.fee_rate)?,
                max_leverage: trading.max_leverage,
                cooldown_ms: u64::try_from(trading.cooldown.as_millis()).unwrap_or(u64::MAX),
                min_notional: setting_units("trade_min_notional", trading.min_notional)?,
            }),
            referral: Arc::new(ReferralRules {
                referrer_bonus: setting_units("referrer_bonus", referrals.referrer_bonus)?,
                referee_bonus: setting_units("referee_bonus", referrals.referee_bonus)?,
                rates,
            }),
            uplines: Arc::new(Uplines::new(levels, Uplines::CAPACITY)),
            settle_batch: u64::from(referrals.settle_batch.max(1)),
            group: config.group_commit.enabled.then(|| {
                Arc::new(GroupCommit::new(
                    &config.group_commit,
                    config.database.wait_budget,
                ))
            }),
            reads,
        })
    }
}
