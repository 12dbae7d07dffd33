//! Orders run under locks. With a `signal_id` — the client's id of one
//! trading decision, such as a snipe target — an order executes under the
//! lock `trade:{user_id}:{symbol}:{side}:{signal_id}` (a close: the order's
//! symbol and the opposite side), at priority 1 for sells and closes and 5
//! for buys, behind the lock's fencing token. Two bot processes acting on one
//! signal cannot both trade:
//!
//! - while the first runs, the second gets 409 `resource_locked`, or with
//!   `"wait": "queue"` a place in the lock's queue (the server executes it
//!   when granted, and the lock's result is the order or the problem);
//! - once the first has run, the same signal within the dedupe window is
//!   answered with the first order, whatever its Idempotency-Key and
//!   whoever asks (the user, or an admin for the user): the trade itself is
//!   keyed by the signal and its owner (`signal_request`), so it executes at
//!   most once per signal even across server instances.
//!
//! The client's Idempotency-Key holds as on any write: a repeat replays its
//! first answer (`idempotent-replayed`), another body under it is 422
//! `idempotency_key_reused`. The trade's answer is stored under both keys
//! in one statement, so the key never answers a trade that did not commit.
//!
//! A trade on a free signal, the common case, commits once: the lock's
//! grant, the order, the lock's release with the order as its result and
//! the signal's answer are one transaction, which is the order's fence:
//! on PostgreSQL with group commit on, a planned group shared with other
//! money writes (`locks::planned`, `group`); otherwise one of its own
//! (`LockService::run_at_once`). A signal that is busy, waited for or
//! already traded, and an order that is refused or fails (which rolls that
//! transaction back), take the steps one by one: the stored answer, or
//! grant, fenced order and release, which record a refusal or a failure in
//! the lock's history.

use std::sync::Arc;

use sea_orm::DatabaseTransaction;
use serde::Serialize;
use serde_json::json;

use crate::error::{DomainError, DomainResult};
use crate::group::{GroupCommit, Plan, PlanOp, WriteOp};
use crate::idempotency::{IdempotentRequest, Outcome, StoredResponse, fingerprint, storage_key};
use crate::locks::fencing::{Fence, LockToken};
use crate::locks::service::MAX_WAIT;
use crate::locks::{AcquireRequest, Acquired, AtOnce, LockSpec, LockView, QueueItemView, WaitMode};
use crate::trading::orders::{CloseOrder, OpenOrder};
use crate::trading::planned::Needs;
use crate::trading::rules::Side;
use crate::{Command, Ledger};

/// A trading decision's id, as the client names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    id: String,
    pub wait: WaitMode,
}

impl Signal {
    /// 1 to 64 of `A-Z a-z 0-9 _ . -`.
    pub fn parse(id: &str, wait: WaitMode) -> DomainResult<Self> {
        let ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
        if id.is_empty() || id.len() > 64 || !id.bytes().all(ok) {
            return Err(DomainError::invalid(
                "signal_id",
                "must be 1 to 64 letters, digits, '_', '.' or '-'",
            ));
        }
        Ok(Self {
            id: id.to_owned(),
            wait,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }
}

/// One trade on a signal: who, on what, which way.
#[derive(Debug, Clone)]
pub struct Trade {
    pub user_id: i64,
    pub symbol: String,
    pub side: Side,
    /// `order_open` or `order_close`.
    pub kind: &'static str,
    /// The principal asking (`user:42`, `admin:root`).
    pub principal: String,
}

impl Trade {
    /// Sells and closes go first: they reduce exposure.
    fn priority(&self) -> u8 {
        if self.side == Side::Sell || self.kind == CloseOrder::NAME {
            1
        } else {
            5
        }
    }

    fn identity(&self, signal: &Signal) -> serde_json::Value {
        json!({
            "user_id": self.user_id,
            "symbol": self.symbol,
            "side": self.side.as_str(),
            "kind": self.kind,
            "signal_id": signal.id,
        })
    }

    fn resource(&self, signal: &Signal) -> String {
        format!(
            "trade:{}:{}:{}:{}",
            self.user_id,
            self.symbol,
            self.side.as_str(),
            signal.id
        )
    }

    fn lock_request(&self, signal: &Signal) -> AcquireRequest {
        AcquireRequest {
            resources: vec![self.resource(signal)],
            ttl_ms: None,
            priority: Some(self.priority()),
            transaction_type: self.kind.to_owned(),
            transaction_data: Some(self.identity(signal)),
            wait: signal.wait,
            queue_timeout_ms: None,
            owner_id: self.owner(),
            requested_by: self.principal.clone(),
            // The order's writes are fenced and commit with its answer.
            fenced_work: true,
        }
    }

    /// The lock's owner: the user who trades, whoever asks for it.
    fn owner(&self) -> String {
        format!("user:{}", self.user_id)
    }

    /// The trade's own idempotency: keyed by the signal and its owner (not
    /// by who asks: an admin acting for the user trades the same signal),
    /// fingerprinted by the trade's identity, so any request on this signal
    /// finds its one answer.
    fn signal_request(&self, signal: &Signal) -> IdempotentRequest {
        let route = format!("signal {}", self.kind);
        let owner = self.owner();
        IdempotentRequest {
            key: storage_key(&owner, "POST", &route, &self.resource(signal)),
            principal: owner,
            route,
            request_hash: fingerprint(&self.identity(signal)),
            also: None,
        }
    }
}

/// A write that can run behind a fence.
pub trait Fenced: Command {
    fn fenced(&self, fence: Fence) -> Self;
}

impl Fenced for OpenOrder {
    fn fenced(&self, fence: Fence) -> Self {
        Self {
            fence: Some(fence),
            ..self.clone()
        }
    }
}

impl Fenced for CloseOrder {
    fn fenced(&self, fence: Fence) -> Self {
        Self {
            fence: Some(fence),
            ..self.clone()
        }
    }
}

/// How a trade on a signal was answered.
#[derive(Debug, Clone)]
pub enum SignalRun {
    /// It ran now: the order (or its refusal).
    Executed(Outcome),
    /// This signal was already traded: the first trade's answer.
    Deduplicated(StoredResponse),
    /// Queued behind the signal's lock; the server executes it when granted.
    Queued(Box<QueueItemView>),
}

/// The answer kept as the lock's result: the order, or the problem.
struct LockResult(Outcome);

impl Serialize for LockResult {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        result_of(&self.0.response).serialize(s)
    }
}

/// An answer as a lock's result.
fn result_of(response: &StoredResponse) -> serde_json::Value {
    serde_json::from_str(&response.body).unwrap_or(serde_json::Value::Null)
}

type Render<C> = fn(&<C as Command>::Output) -> StoredResponse;

/// Renders how a trade on a signal was answered, as sent to the client.
pub type Answer = fn(SignalRun) -> StoredResponse;

/// Renders a refusal; a queued trade takes it into a task of its own.
pub trait Refuse: Fn(&DomainError) -> StoredResponse + Clone + Send + Sync + 'static {}

impl<F: Fn(&DomainError) -> StoredResponse + Clone + Send + Sync + 'static> Refuse for F {}

/// The fence of a write under `lock`, as its owner.
fn fence(lock: LockView) -> Fence {
    Fence {
        lock: LockToken {
            lock_id: lock.lock_id,
            fencing_token: lock.fencing_token,
        },
        owner: lock.owner_id,
    }
}

impl Ledger {
    /// Runs `cmd` as the trade `trade` on `signal` (see the module), once
    /// for the client's Idempotency-Key `client` too. A trade at once
    /// stores its answer under both keys in its transaction, which commits
    /// only if neither key has an answer yet; otherwise a repeat of the key
    /// replays its answer and another body under it is refused before any
    /// step, and an answer that was not this request's trade (deduplicated,
    /// queued) is stored under the key by itself. `refuse` renders a
    /// refusal; it may run in a task of its own; `answer` renders a run.
    #[allow(clippy::too_many_arguments)]
    pub async fn execute_on_signal<C, E>(
        &self,
        client: &IdempotentRequest,
        trade: &Trade,
        signal: &Signal,
        cmd: C,
        render: Render<C>,
        refuse: E,
        answer: Answer,
    ) -> DomainResult<Outcome>
    where
        C: Fenced,
        E: Refuse,
    {
        let req = IdempotentRequest {
            also: Some(Box::new(client.clone())),
            ..trade.signal_request(signal)
        };
        let lock = trade.lock_request(signal);
        // The common case, a fresh key on a signal nobody else is trading:
        // the grant, the order behind it, the lock's release with the order
        // as its result and the answer under both keys commit together, in
        // a planned group with other writes where there is one.
        let at_once = match self.signal_group(&cmd, &lock)? {
            Some((group, spec)) => {
                self.trade_in_group(&group, &req, spec, &cmd, render, refuse.clone())
                    .await?
            }
            None => self.trade_at_once(&req, &lock, &cmd, render).await?,
        };
        if let Some(outcome) = at_once {
            return Ok(outcome);
        }
        if let Some(replay) = self.idempotency.replay(client).await? {
            return Ok(replay);
        }
        let run = match self.idempotency.peek(&req).await? {
            Some(first) => SignalRun::Deduplicated(first),
            None => {
                let acquired = self.locks.acquire(&lock).await?;
                self.on_acquired(acquired, req, cmd, lock.owner_id, render, refuse)
                    .await?
            }
        };
        match run {
            // This request's trade: its answer is stored under both keys.
            SignalRun::Executed(outcome) if !outcome.replayed => Ok(outcome),
            run => self.idempotency.keep(client, answer(run)).await,
        }
    }

    /// The group a trade on `lock` runs in, with the lock's request, when
    /// it can: on PostgreSQL, with group commit on, for a trade whose order
    /// is planned.
    fn signal_group<C: Fenced>(
        &self,
        cmd: &C,
        lock: &AcquireRequest,
    ) -> DomainResult<Option<(Arc<GroupCommit>, LockSpec)>> {
        let spec = lock.validate()?;
        let needs = Needs {
            lock: spec.need(),
            ..cmd.needs()
        };
        Ok(match (&self.group, cmd.wallets()) {
            (Some(group), Some(_))
                if cmd.planned() && needs.lock.is_some() && self.plans(&needs) =>
            {
                Some((Arc::clone(group), spec))
            }
            _ => None,
        })
    }

    /// The trade in a planned group (`locks::planned`): when its signal is
    /// free, its lock granted, its order run on the group's books, the lock
    /// released with the answer as its result and the answer stored under
    /// both keys, with the group's writes, in its commit. `None` when it
    /// could not run there (the signal busy or already traded, the signal's
    /// key in flight or answered): nothing of it was written, and the steps
    /// one by one answer it.
    async fn trade_in_group<C, E>(
        &self,
        group: &GroupCommit,
        req: &IdempotentRequest,
        spec: LockSpec,
        cmd: &C,
        render: Render<C>,
        refuse: E,
    ) -> DomainResult<Option<Outcome>>
    where
        C: Fenced,
        E: Refuse,
    {
        let (Some(wallets), Some(need)) = (cmd.wallets(), spec.need()) else {
            return Ok(None);
        };
        let needs = Needs {
            lock: Some(need.clone()),
            ..cmd.needs()
        };
        let (ledger, planned, refusal) = (self.clone(), cmd.clone(), refuse.clone());
        let plan: PlanOp = Arc::new(move |plan: &mut Plan| {
            if !plan.locks.is_free(&need) {
                return Err(DomainError::NotInGroup);
            }
            let response = match planned.plan(&ledger, plan) {
                Ok(order) => render(&order),
                Err(e) if e.is_refusal() => refusal(&e),
                Err(e) => return Err(e),
            };
            plan.locks.run(&spec, result_of(&response))?;
            Ok(response)
        });
        // Should the group write its writes one by one, the trade takes the
        // steps instead.
        let alone: WriteOp = Arc::new(|_| Box::pin(async { Err(DomainError::NotInGroup) }));
        let ran = group
            .submit(
                self,
                C::NAME,
                req.clone(),
                wallets,
                (alone, Some((plan, needs))),
                Arc::new(refuse),
            )
            .await;
        match ran {
            Ok(outcome) if !outcome.replayed => Ok(Some(outcome)),
            Ok(_) | Err(DomainError::NotInGroup | DomainError::IdempotencyInFlight) => Ok(None),
            Err(e) if e.is_refusal() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The trade alone, in the transaction that takes the signal's lock
    /// (`LockService::run_at_once`). `None` when it could not run there
    /// (the signal busy, or the order refused or failed, which rolls that
    /// transaction back): nothing of it was committed, and the steps one by
    /// one answer it as they always have (a stored answer is the first
    /// trade's, and a refused or failed order is recorded in the lock's
    /// history).
    async fn trade_at_once<C: Fenced>(
        &self,
        req: &IdempotentRequest,
        lock: &AcquireRequest,
        cmd: &C,
        render: Render<C>,
    ) -> DomainResult<Option<Outcome>> {
        let at_once = self
            .locks
            .run_at_once(lock, |txn, _| async move {
                self.order_at_once(&txn, req, cmd, render).await
            })
            .await?;
        match at_once {
            AtOnce::Ran(LockResult(outcome)) => Ok(Some(outcome)),
            AtOnce::Busy => Ok(None),
            AtOnce::Declined(why) => {
                tracing::debug!(error = %why, "a trade on a signal takes the steps one by one");
                Ok(None)
            }
        }
    }

    /// The trade inside the transaction that takes the signal's lock: the
    /// order, and its answer stored under the signal's key and the client's.
    /// That transaction is the order's fence (see `LockService::run_at_once`),
    /// and it keeps every other trade on the signal out, so no claim of the
    /// keys is needed: a key that already has an answer (the signal traded
    /// before its lock left the dedupe window, or the client's key used
    /// before) refuses the store with `ClaimLost`, the order is rolled back
    /// with it, and the steps one by one find that answer.
    async fn order_at_once<C: Fenced>(
        &self,
        txn: &DatabaseTransaction,
        req: &IdempotentRequest,
        cmd: &C,
        render: Render<C>,
    ) -> DomainResult<LockResult> {
        let order = cmd.execute(self, txn).await?;
        let response = render(&order);
        self.idempotency.store(txn, req, &response).await?;
        Ok(LockResult(Outcome {
            response,
            replayed: false,
        }))
    }

    /// Runs the trade as the signal's lock request was answered: now when
    /// granted, the first trade's answer when deduplicated, or, when
    /// queued, in a task of its own once granted.
    async fn on_acquired<C, E>(
        &self,
        acquired: Acquired,
        req: IdempotentRequest,
        cmd: C,
        owner: String,
        render: Render<C>,
        refuse: E,
    ) -> DomainResult<SignalRun>
    where
        C: Fenced,
        E: Refuse,
    {
        match acquired {
            Acquired::Granted(granted) => {
                let run = |l| self.run_fenced(&req, &cmd, l, render, refuse);
                let LockResult(outcome) = self.locks.run_locked(granted, &owner, run).await?;
                Ok(SignalRun::Executed(outcome))
            }
            Acquired::Deduplicated(first) => self.deduplicated(&req, &first).await,
            Acquired::Queued(item) => {
                // The client's key is answered now, with the queue item: the
                // trade, later, stores under the signal's key alone.
                let req = IdempotentRequest { also: None, ..req };
                let ledger = self.clone();
                let waiting = item.clone();
                tokio::spawn(async move {
                    let ran = async {
                        let granted = ledger.locks.granted(waiting).await?;
                        let run = |l| ledger.run_fenced(&req, &cmd, l, render, refuse);
                        ledger.locks.run_locked(granted, &owner, run).await
                    }
                    .await;
                    if let Err(e) = ran {
                        tracing::warn!(error = %e, "a queued trade did not run");
                    }
                });
                Ok(SignalRun::Queued(Box::new(item)))
            }
        }
    }

    /// The money write behind the lock's fencing token, once per signal.
    async fn run_fenced<C, E>(
        &self,
        req: &IdempotentRequest,
        cmd: &C,
        lock: LockView,
        render: Render<C>,
        refuse: E,
    ) -> DomainResult<LockResult>
    where
        C: Fenced,
        E: Refuse,
    {
        let outcome = self
            .execute_once(req, &cmd.fenced(fence(lock)), render, refuse)
            .await;
        match outcome {
            // Identical requests queued behind a busy signal share one queue
            // item, so its grant may reach several of them: the one that
            // claimed the signal's key is executing the trade, and its
            // answer is this one's too. Releasing the lock with an error
            // meanwhile would fence that trade off, and no order would open.
            Err(DomainError::IdempotencyInFlight) => self.answer_of(req).await.map(LockResult),
            outcome => outcome.map(LockResult),
        }
    }

    /// The answer the trade keyed by `req` stores, once it has: read every
    /// poll interval, for at most `locks::service::MAX_WAIT`.
    async fn answer_of(&self, req: &IdempotentRequest) -> DomainResult<Outcome> {
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        loop {
            if let Some(response) = self.idempotency.peek(req).await? {
                return Ok(Outcome {
                    response,
                    replayed: true,
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DomainError::IdempotencyInFlight);
            }
            tokio::time::sleep(self.locks.rules().poll).await;
        }
    }

    /// An identical lock exists: while it is active the signal is being
    /// traded (409 `resource_locked`); once finished, its answer is the one.
    async fn deduplicated(
        &self,
        req: &IdempotentRequest,
        first: &LockView,
    ) -> DomainResult<SignalRun> {
        if first.is_active() {
            return Err(DomainError::ResourceLocked {
                conflicts: first.resources.clone(),
            });
        }
        match self.idempotency.peek(req).await? {
            Some(answer) => Ok(SignalRun::Deduplicated(answer)),
            None => Err(DomainError::ResourceLocked {
                conflicts: first.resources.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trade(side: Side, kind: &'static str) -> Trade {
        Trade {
            user_id: 42,
            symbol: "BTCUSD".into(),
            side,
            kind,
            principal: "user:42".into(),
        }
    }

    #[test]
    fn signal_ids_are_short_plain_names() {
        assert!(Signal::parse("snipe-123_a.b", WaitMode::Fail).is_ok());
        assert!(Signal::parse("", WaitMode::Fail).is_err());
        assert!(Signal::parse(&"x".repeat(65), WaitMode::Fail).is_err());
        assert!(Signal::parse("a b", WaitMode::Fail).is_err());
        assert!(Signal::parse("a:b", WaitMode::Fail).is_err());
    }

    #[test]
    fn the_lock_names_user_symbol_side_and_signal_and_sells_go_first() {
        let signal = Signal::parse("snipe123", WaitMode::Queue).unwrap();
        let buy = trade(Side::Buy, OpenOrder::NAME).lock_request(&signal);
        assert_eq!(buy.resources, ["trade:42:BTCUSD:buy:snipe123"]);
        assert_eq!(buy.priority, Some(5));
        assert_eq!(buy.wait, WaitMode::Queue);
        assert_eq!(buy.owner_id, "user:42");
        let sell = trade(Side::Sell, OpenOrder::NAME).lock_request(&signal);
        assert_eq!(sell.priority, Some(1));
        let close = trade(Side::Buy, CloseOrder::NAME).lock_request(&signal);
        assert_eq!(close.priority, Some(1));
        assert!(crate::locks::resource::is_valid_resource(&buy.resources[0]));
    }

    #[test]
    fn one_signal_is_one_trade_whatever_the_request() {
        let signal = Signal::parse("s1", WaitMode::Fail).unwrap();
        let t = trade(Side::Buy, OpenOrder::NAME);
        assert_eq!(t.signal_request(&signal).key, t.signal_request(&signal).key);
        let other = Signal::parse("s2", WaitMode::Fail).unwrap();
        assert_ne!(t.signal_request(&signal).key, t.signal_request(&other).key);
        // the other side of the same signal is another trade
        let sell = trade(Side::Sell, OpenOrder::NAME);
        assert_ne!(
            t.signal_request(&signal).key,
            sell.signal_request(&signal).key
        );
        // an admin acting for the user trades the user's signal
        let for_user = Trade {
            principal: "admin:root".into(),
            ..t.clone()
        };
        assert_eq!(
            t.signal_request(&signal).key,
            for_user.signal_request(&signal).key
        );
    }
}
