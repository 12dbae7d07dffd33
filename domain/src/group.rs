//! Group commit: money writes that arrive while others are being committed
//! are executed together, several to one transaction, one commit for all of
//! them. On the engines this ledger runs on a write is bound by its commit
//! (the WAL flush), so sharing one commit is how throughput passes the
//! per-commit ceiling — on a hot wallet above all, whose row lock otherwise
//! admits one commit at a time.
//!
//! How a group runs (one retried transaction):
//! 1. every write's Idempotency-Key is claimed first, all in one statement
//!    (`idempotency::claim_all`): a stored answer is replayed and a key still
//!    in flight elsewhere is answered 409 at once, before anything waits on a
//!    row lock;
//! 2. the wallets of all remaining writes are locked in one statement, in
//!    ascending id order — one lock per wallet, and two groups (in this
//!    process or another) never wait on each other in a cycle;
//! 3. a group of planned writes (`Command::planned`: deposits, unfenced
//!    withdrawals, and on PostgreSQL unfenced orders opened and closed,
//!    trades on signals among them) is applied to the group's books in
//!    memory, write after write, a refused one leaving no trace
//!    (`ledger::books`), once what its orders need is read (their prices,
//!    new ids, the orders to close, and whether the locks of its trades on
//!    signals are free, whose fencing rows the claims' statement locked: in
//!    one statement, `trading::planned`, `locks::planned`); then one
//!    `UPDATE` for all the wallets, one journal `INSERT` for all the
//!    entries, one `INSERT` storing every answer, refusals included, and
//!    one each for the orders opened, the orders closed, their commissions
//!    and the locks granted and released — on PostgreSQL all in one
//!    statement (`sql::run_together`).
//!    Should one of those keys have been stored elsewhere meanwhile, that
//!    attempt is rolled back and the group runs as below. A planned write
//!    alone goes this way too;
//! 4. otherwise each write runs in a savepoint of its own: a business
//!    refusal rolls back that write only and is stored as its answer, so it
//!    never fails the others; a transient failure aborts the group, which is
//!    re-run whole;
//! 5. one commit; only then is each request answered, with its own answer.
//!
//! Groups form without waiting (`batch`): a lone request goes at once, and
//! under load the writes that arrived during one commit make up the next
//! group. Planned writes and the others queue apart, each with its own
//! groups (`GroupCommitConfig`): a planned group is three statements (four
//! with orders, trades on signals among them) however big it is, so few run
//! at once and each takes all that waits; a group of the others runs its
//! writes one after the other, so its time grows with its size, and more,
//! smaller ones run side by side on their own connections (a transfer never
//! waits behind a deposit group, nor a deposit behind a group of
//! transfers). A client that hangs up cannot cancel the others' writes. A
//! planned write waiting for its group does not count against the
//! in-flight limit (`infra::in_flight`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use infra::config::GroupCommitConfig;
use infra::in_flight;
use infra::metrics::metrics;
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, TransactionTrait};
use tokio::sync::oneshot;

use crate::Ledger;
use crate::batch::Batcher;
use crate::clock::now_ms;
use crate::error::{DomainError, DomainResult};
use crate::idempotency::{Claim, IdempotentRequest, Outcome, StoredResponse, stored_all};
use crate::ledger::books::{Books, Parts, check_updated};
use crate::ledger::wallets::{WalletKind, lock_books, lock_wallets_of};
use crate::locks::LockEvent;
use crate::locks::planned::{GroupLocks, LockNeed};
use crate::sql::{Part, read_together, run_together};
use crate::trading::planned::{GroupOrders, Needs};
use crate::tx::RetryPolicy;

/// One write, type-erased: it runs the command in the transaction it is
/// given and renders its success (re-runnable: a group may be retried).
pub type WriteOp = Arc<
    dyn Fn(Arc<DatabaseTransaction>) -> BoxFuture<'static, DomainResult<StoredResponse>>
        + Send
        + Sync,
>;

/// Renders a business refusal as the answer stored under the key.
pub type Refusal = Arc<dyn Fn(&DomainError) -> StoredResponse + Send + Sync>;

/// A planned write (`Command::planned`), type-erased: it applies the command
/// to the group's books and renders its success (pure; re-runnable).
pub type PlanOp = Arc<dyn Fn(&mut Plan) -> DomainResult<StoredResponse> + Send + Sync>;

/// What a group of planned writes is applied to in memory: its locked
/// wallets and their entries, the orders it opens and closes, and the locks
/// its trades on signals run under.
#[derive(Debug)]
pub struct Plan {
    pub books: Books,
    pub orders: GroupOrders,
    pub locks: GroupLocks,
}

/// A queued write and where its answer goes.
pub struct Write {
    /// The command's name, for metrics and logs.
    pub name: &'static str,
    pub req: IdempotentRequest,
    /// The wallets it will lock; all of a group's are locked first.
    pub wallets: Vec<(i64, WalletKind)>,
    pub op: WriteOp,
    /// Set for a planned write, with what it reads besides its wallets.
    pub plan: Option<(PlanOp, Needs)>,
    pub refuse: Refusal,
    reply: oneshot::Sender<DomainResult<Outcome>>,
}

/// The queues and the running groups of one process.
#[derive(Debug)]
pub struct GroupCommit {
    /// Planned writes: their groups take the three-statement path.
    planned: Arc<Batcher<Write>>,
    /// The others: each write of a group in a savepoint of its own.
    others: Arc<Batcher<Write>>,
}

/// How one write of a group ended, before the commit.
enum Ended {
    Answered(Outcome),
    /// Its key was stored by another write (of this group or elsewhere):
    /// after the commit the stored answer is read.
    StoredElsewhere,
    Refused(DomainError),
}

impl GroupCommit {
    pub fn new(sizes: &GroupCommitConfig, wait_budget: Duration) -> Self {
        let batcher = |groups, max_size| Arc::new(Batcher::new(groups, max_size, wait_budget));
        Self {
            planned: batcher(sizes.groups, sizes.max_size),
            others: batcher(sizes.savepoint_groups, sizes.savepoint_max_size),
        }
    }

    /// Queues a write and waits for its answer, which comes only after the
    /// commit of the group it ran in.
    pub async fn submit(
        &self,
        ledger: &Ledger,
        name: &'static str,
        req: IdempotentRequest,
        wallets: Vec<(i64, WalletKind)>,
        (op, plan): (WriteOp, Option<(PlanOp, Needs)>),
        refuse: Refusal,
    ) -> DomainResult<Outcome> {
        let planned = plan.is_some();
        let batches = if planned { &self.planned } else { &self.others };
        let ticket = batches.push(
            |reply| Write {
                name,
                req,
                wallets,
                op,
                plan,
                refuse,
                reply,
            },
            || {
                let ledger = ledger.clone();
                move |group| {
                    let ledger = ledger.clone();
                    async move { run_group(&ledger, group).await }
                }
            },
        );
        let wait = batches.answer(ticket);
        // A planned write, queued, holds no connection, and its group takes
        // the same few statements however big it is: it does not count among the
        // requests in flight (see `infra::in_flight`). Any other waits
        // counted: its group's length grows with its size.
        if planned {
            in_flight::uncounted(wait).await
        } else {
            wait.await
        }
    }
}

/// Runs one group and answers each of its writes.
async fn run_group(ledger: &Ledger, group: Vec<Write>) {
    metrics().group_size.observe(group.len() as f64);
    let (group, repeated) = repeated_trades_apart(group);
    run_kept(ledger, group).await;
    // Only now, the group committed (or not): their steps then find the
    // trade it made on their signal, if any.
    for write in repeated {
        let _ = write.reply.send(Err(DomainError::NotInGroup));
    }
}

/// Runs a group and answers each of its writes.
async fn run_kept(ledger: &Ledger, group: Vec<Write>) {
    let planned = planned(&group);
    if group.len() == 1 && !planned {
        // Alone: no savepoints needed, the plain one-write transaction. (A
        // planned write alone takes the planned path below: it needs no
        // savepoint either, and writes in fewer statements.)
        for write in group {
            let op = Arc::clone(&write.op);
            let refuse = Arc::clone(&write.refuse);
            let outcome = ledger
                .idempotency
                .run(
                    write.name,
                    &write.req,
                    |txn| op(txn),
                    |response: &StoredResponse| response.clone(),
                    |e| refuse(e),
                )
                .await;
            let _ = write.reply.send(outcome);
        }
        return;
    }
    let policy: RetryPolicy = ledger.tx.policy().clone().with_connection_loss_retry();
    // A transaction's metrics name its write when it holds one.
    let name = match group.as_slice() {
        [write] => write.name,
        _ => "group",
    };
    let with_savepoints = || {
        ledger.tx.execute_with_policy(name, &policy, |txn| {
            let group = &group;
            async move { run_writes(ledger, &txn, group).await }
        })
    };
    let result = if planned {
        let together = ledger
            .tx
            .execute_or_roll_back(name, &policy, |txn| {
                let group = &group;
                async move { run_planned(ledger, &txn, group).await }
            })
            .await;
        let counted = |outcome| metrics().group_together.with_label_values(&[outcome]).inc();
        match together {
            Ok(Ok((answered, events))) => {
                counted("committed");
                ledger.locks.publish(events);
                Ok(answered)
            }
            // A key was stored elsewhere: nothing of that attempt stayed.
            Ok(Err(NotTogether)) => {
                counted("rerun");
                with_savepoints().await
            }
            Err(e) => Err(e),
        }
    } else {
        with_savepoints().await
    };
    match result {
        Ok(ended) => {
            for (write, ended) in group.into_iter().zip(ended) {
                let outcome = match ended {
                    Ended::Answered(outcome) => Ok(outcome),
                    Ended::Refused(e) => Err(e),
                    Ended::StoredElsewhere => ledger.idempotency.stored_answer(&write.req).await,
                };
                let _ = write.reply.send(outcome);
            }
        }
        Err(e) => {
            // Nothing of the group committed: every write gets the failure
            // (a 503 the client may retry with the same key).
            for write in group {
                let _ = write.reply.send(Err(DomainError::shared(&e)));
            }
        }
    }
}

/// The group, and apart from it its trades on signals that repeat a key of
/// a write before them (two bots on one signal at once: the signal's key;
/// or a client's key sent twice). Left in, they would send the whole group
/// down the savepoint path (see `planned`); apart, each is answered
/// `NotInGroup` once the group has run, and takes the steps one by one,
/// which answer it as a trade on a signal already traded (or busy).
fn repeated_trades_apart(group: Vec<Write>) -> (Vec<Write>, Vec<Write>) {
    let mut seen: HashSet<String> = HashSet::new();
    let (mut kept, mut repeated) = (Vec::with_capacity(group.len()), Vec::new());
    for write in group {
        let keys: Vec<&str> = std::iter::once(&write.req)
            .chain(write.req.also.as_deref())
            .map(|req| req.key.as_str())
            .collect();
        if lock_need(&write).is_some() && keys.iter().any(|k| seen.contains(*k)) {
            repeated.push(write);
            continue;
        }
        seen.extend(keys.into_iter().map(str::to_owned));
        kept.push(write);
    }
    (kept, repeated)
}

/// Every write of the group is planned, each under keys of its own (two
/// answers to one key cannot be stored in one statement; a trade on a
/// signal stores its answer under the client's key too).
fn planned(group: &[Write]) -> bool {
    let keys: Vec<&str> = group
        .iter()
        .flat_map(|w| std::iter::once(&w.req).chain(w.req.also.as_deref()))
        .map(|req| req.key.as_str())
        .collect();
    let distinct: HashSet<&str> = keys.iter().copied().collect();
    distinct.len() == keys.len() && group.iter().all(|w| w.plan.is_some())
}

/// A group of planned writes that could not be written together: one of
/// its keys was stored elsewhere meanwhile.
struct NotTogether;

/// Claims every write's key in one statement: `None` for a write that owns
/// its key now, how it ended for the others (replayed or refused).
async fn claim_all(
    ledger: &Ledger,
    txn: &DatabaseTransaction,
    group: &[Write],
    with: Option<Part>,
) -> DomainResult<Vec<Option<Ended>>> {
    let claims: Vec<(&IdempotentRequest, Claim)> = group
        .iter()
        .map(|w| match lock_need(w) {
            Some(_) => (&w.req, Claim::Read),
            None => (&w.req, Claim::Own),
        })
        .collect();
    let mut ended = Vec::with_capacity(group.len());
    for claim in ledger.idempotency.claim_all(txn, &claims, with).await? {
        ended.push(match claim {
            Ok(Some(response)) => {
                metrics().idempotent_replays.inc();
                Some(Ended::Answered(Outcome {
                    response,
                    replayed: true,
                }))
            }
            Ok(None) => None,
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => Some(Ended::Refused(e)),
        });
    }
    Ok(ended)
}

/// The lock a write runs under, granted in its group (a trade on a signal).
fn lock_need(write: &Write) -> Option<&LockNeed> {
    write.plan.as_ref()?.1.lock.as_ref()
}

/// The wallets of the writes that still have to run.
fn wallets_to_lock(group: &[Write], ended: &[Option<Ended>]) -> Vec<(i64, WalletKind)> {
    let mut wallets: Vec<(i64, WalletKind)> = group
        .iter()
        .zip(ended)
        .filter(|(_, e)| e.is_none())
        .flat_map(|(w, _)| w.wallets.iter().copied())
        .collect();
    // Each once: a hot wallet's group locks one wallet.
    wallets.sort_unstable_by_key(|&(user_id, kind)| (user_id, kind.as_str()));
    wallets.dedup();
    wallets
}

/// One attempt at a group of planned writes: applied to the group's books
/// in memory, then written and their answers stored, three statements for
/// the whole group (the claims, the wallets' lock, the write; four with
/// orders: what they and their locks read). `Err(NotTogether)` (the
/// transaction is then rolled back) when one of the keys was stored
/// elsewhere meanwhile.
async fn run_planned(
    ledger: &Ledger,
    txn: &Arc<DatabaseTransaction>,
    group: &[Write],
) -> DomainResult<Result<(Vec<Ended>, Vec<LockEvent>), NotTogether>> {
    // The signals' fencing rows are locked with the claims, before the
    // wallets, as a trade alone takes them (`LockService::run_at_once`): no
    // two transactions wait on each other in a cycle. Whether their locks
    // are free is read in a later statement, which sees what the rows'
    // earlier holders committed.
    let fencing = GroupLocks::fencing(&group.iter().filter_map(lock_need).collect::<Vec<_>>());
    let mut ended = claim_all(ledger, txn, group, fencing).await?;
    let needs: Vec<&Needs> = group
        .iter()
        .zip(&ended)
        .filter(|(_, ended)| ended.is_none())
        .filter_map(|(write, _)| write.plan.as_ref().map(|(_, needs)| needs))
        .collect();
    let lock_needs: Vec<&LockNeed> = group
        .iter()
        .zip(&ended)
        .filter(|(_, ended)| ended.is_none())
        .filter_map(|(write, _)| lock_need(write))
        .collect();
    let books = lock_books(txn, &wallets_to_lock(group, &ended)).await?;
    // What the orders and the locks read, in one statement.
    let (dedupe_ms, now) = (ledger.locks.rules().dedupe_ms, now_ms());
    let orders = GroupOrders::reads(&needs)?;
    let n = orders.len();
    let mut reads = orders;
    reads.extend(GroupLocks::reads(&lock_needs, dedupe_ms, now));
    let mut docs = read_together(&**txn, reads).await?;
    let locks = GroupLocks::from_reads(&lock_needs, now, docs.split_off(n.min(docs.len())))?;
    let orders = GroupOrders::from_reads(txn, &ledger.uplines, &needs, docs).await?;
    let mut plan = Plan {
        books,
        orders,
        locks,
    };
    let mut answers = Vec::with_capacity(group.len());
    for (write, ended) in group.iter().zip(ended.iter_mut()) {
        let (None, Some((op, _))) = (&ended, &write.plan) else {
            continue;
        };
        match op(&mut plan) {
            Ok(response) => answers.push((&write.req, response)),
            Err(e) if e.is_refusal() => answers.push((&write.req, (write.refuse)(&e))),
            Err(e) => *ended = Some(Ended::Refused(e)),
        }
    }
    let stored: Vec<(&IdempotentRequest, &StoredResponse)> = answers
        .iter()
        .map(|(req, response)| (*req, response))
        .collect();
    let events = match write_planned(ledger, txn, plan, &stored).await {
        Ok(events) => events,
        Err(DomainError::ClaimLost) => return Ok(Err(NotTogether)),
        Err(e) => return Err(e),
    };
    let mut answers = answers.into_iter();
    let out = ended
        .into_iter()
        .map(|ended| match ended {
            Some(done) => Ok(done),
            None => answers
                .next()
                .map(|(_, response)| {
                    Ended::Answered(Outcome {
                        response,
                        replayed: false,
                    })
                })
                .ok_or_else(|| DomainError::unexpected("a planned write without an answer")),
        })
        .collect::<DomainResult<Vec<_>>>()?;
    Ok(Ok((out, events)))
}

/// Writes a planned group's books, the orders it opened and closed and the
/// locks it granted, and stores its answers: on PostgreSQL in one statement
/// (the wallets, the entries, the answers, the orders and their
/// commissions, the locks: one round trip), on SQLite (no orders nor locks
/// there, see `Ledger::plans`) one after the other. `ClaimLost` when one of
/// the keys was stored elsewhere meanwhile. Returns the locks' events, for
/// after the commit.
async fn write_planned(
    ledger: &Ledger,
    txn: &DatabaseTransaction,
    Plan {
        books,
        orders,
        locks,
    }: Plan,
    stored: &[(&IdempotentRequest, &StoredResponse)],
) -> DomainResult<Vec<LockEvent>> {
    if txn.get_database_backend() != DbBackend::Postgres {
        if !orders.is_empty() || !locks.is_empty() {
            return Err(DomainError::unexpected(
                "orders and locks are planned on PostgreSQL only",
            ));
        }
        books.write(txn).await?;
        ledger.idempotency.store_all(txn, stored).await?;
        return Ok(Vec::new());
    }
    let Parts {
        wallets,
        entries,
        changed,
    } = books.parts()?;
    let answers = ledger.idempotency.store_part(stored)?;
    let (added, expected): (Vec<_>, Vec<u64>) =
        orders.parts()?.into_iter().chain(locks.parts()?).unzip();
    let mut parts = vec![wallets, entries, answers];
    parts.extend(added);
    let written = run_together(txn, parts).await?;
    let [updated, _, keys, ref inserted @ ..] = written[..] else {
        return Err(DomainError::unexpected(
            "a group's statement without its counts",
        ));
    };
    check_updated(changed, updated)?;
    if inserted != expected.as_slice() {
        return Err(DomainError::unexpected(format!(
            "a group's orders, commissions and locks: {inserted:?} rows written of {expected:?}"
        )));
    }
    stored_all(stored, keys)?;
    Ok(locks.into_events())
}

/// One attempt at a group, inside its transaction.
async fn run_writes(
    ledger: &Ledger,
    txn: &Arc<DatabaseTransaction>,
    group: &[Write],
) -> DomainResult<Vec<Ended>> {
    let ended = claim_all(ledger, txn, group, None).await?;
    lock_wallets_of(txn, &wallets_to_lock(group, &ended)).await?;
    let mut out = Vec::with_capacity(group.len());
    for (write, ended) in group.iter().zip(ended) {
        out.push(match ended {
            Some(done) => done,
            None => run_one(ledger, txn, write).await?,
        });
    }
    Ok(out)
}

/// One write in a savepoint of its own. `Err` only for a transient failure,
/// which aborts the group.
async fn run_one(
    ledger: &Ledger,
    txn: &Arc<DatabaseTransaction>,
    write: &Write,
) -> DomainResult<Ended> {
    let idempotency = &ledger.idempotency;
    let savepoint = Arc::new(txn.begin().await?);
    let result = async {
        let response = (write.op)(Arc::clone(&savepoint)).await?;
        idempotency
            .store(&*savepoint, &write.req, &response)
            .await?;
        Ok(response)
    }
    .await;
    let savepoint = Arc::try_unwrap(savepoint)
        .map_err(|_| DomainError::unexpected("savepoint kept past its write"))?;
    match result {
        Ok(response) => {
            savepoint.commit().await?;
            Ok(Ended::Answered(Outcome {
                response,
                replayed: false,
            }))
        }
        Err(e) => {
            savepoint.rollback().await?;
            match e {
                e if e.is_transient() => Err(e),
                DomainError::ClaimLost => Ok(Ended::StoredElsewhere),
                e if e.is_refusal() => {
                    let response = (write.refuse)(&e);
                    let store = txn.begin().await?;
                    match idempotency.store(&store, &write.req, &response).await {
                        Ok(()) => {
                            store.commit().await?;
                            Ok(Ended::Answered(Outcome {
                                response,
                                replayed: false,
                            }))
                        }
                        Err(DomainError::ClaimLost) => {
                            store.rollback().await?;
                            Ok(Ended::StoredElsewhere)
                        }
                        Err(other) => Err(other),
                    }
                }
                e => Ok(Ended::Refused(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(key: &str) -> IdempotentRequest {
        IdempotentRequest {
            key: key.to_owned(),
            principal: "user:1".into(),
            route: "POST /api/v1/orders".into(),
            request_hash: "h".into(),
            also: None,
        }
    }

    /// A planned write under `key` (and `also`), a trade on a signal when
    /// `trade`; it is never run here.
    fn write(key: &str, also: Option<&str>, trade: bool) -> Write {
        let lock = trade.then(|| LockNeed {
            resource: format!("trade:1:A:buy:{key}"),
            key: format!("lock-{key}"),
        });
        let plan: PlanOp = Arc::new(|_| Err(DomainError::unexpected("not run")));
        let op: WriteOp = Arc::new(|_| Box::pin(async { Err(DomainError::unexpected("not run")) }));
        Write {
            name: "open_order",
            req: IdempotentRequest {
                also: also.map(|a| Box::new(req(a))),
                ..req(key)
            },
            wallets: vec![(1, WalletKind::Live)],
            op,
            plan: Some((
                plan,
                Needs {
                    lock,
                    ..Needs::default()
                },
            )),
            refuse: Arc::new(|_| StoredResponse {
                status: 422,
                body: String::new(),
            }),
            reply: oneshot::channel().0,
        }
    }

    fn keys(writes: &[Write]) -> Vec<&str> {
        writes.iter().map(|w| w.req.key.as_str()).collect()
    }

    #[test]
    fn a_trade_repeating_a_key_of_its_group_waits_apart_and_the_rest_stays_planned() {
        let group = vec![
            write("signal-1", Some("client-1"), true),
            // a second bot on signal 1
            write("signal-1", Some("client-2"), true),
            write("deposit-1", None, false),
            // the first bot's key again, on another signal
            write("signal-2", Some("client-1"), true),
            write("signal-3", Some("client-3"), true),
        ];
        assert!(!planned(&group), "two answers to one key in one statement");
        let (kept, repeated) = repeated_trades_apart(group);
        assert_eq!(keys(&kept), ["signal-1", "deposit-1", "signal-3"]);
        assert_eq!(keys(&repeated), ["signal-1", "signal-2"]);
        assert!(planned(&kept));
        // a write that is not a trade stays, repeated or not (it replays)
        let (kept, repeated) =
            repeated_trades_apart(vec![write("k", None, false), write("k", None, false)]);
        assert_eq!((kept.len(), repeated.len()), (2, 0));
    }
}
