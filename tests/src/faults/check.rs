//! The invariants every scenario ends with, checked against the answers the
//! clients got and against the database itself:
//!
//! - every write got a definite answer;
//! - each key executed at most once: every successful money write's
//!   operation is in the journal exactly once, every order the clients were
//!   told about was opened (and closed) by exactly one operation, and the
//!   journal and the orders table hold nothing the answers do not explain;
//!   a deliberate second send of a key replayed the first answer exactly;
//! - every hold ended at most once: each hold the answers reported is in the
//!   holds table once, with one `hold` operation in the journal and at most
//!   one ending operation (capture, void or expiry), whose sums are the
//!   hold's (held back to zero, the captured amount out of the balance); its
//!   status is the one the answers imply (captured for the captured amount,
//!   voided, or, left alone, expired once its time is up); a capture or void
//!   refused as `expired` came after the hold's expiry, and one that went
//!   through came before it;
//! - every workflow the answers reported was started once (one row in the
//!   workflows table per answer, none that no answer explains) and ended as
//!   a fault may leave it: a withdrawal paid exactly once by the provider
//!   and its hold captured in full, or refused by the provider (never paid)
//!   and its hold voided; a deposit credited by one journal operation, or
//!   rejected with nothing credited; a decision the back office was told
//!   went through is the one the workflow followed; the provider saw no
//!   payout no workflow explains, and no call that broke its protocol;
//! - a write fenced by a stale lock (`workload::Fence::Stale`) was refused
//!   with 409 `lock_lost`, and one by the current holder went through;
//! - the sum of the users' balances is their opening sum plus the successful
//!   deposits minus the successful withdrawals plus what orders did (fees,
//!   P&L, write-offs) minus what captures took, and each user's wallet
//!   (balance, margin, and `held`: the sum of the active unexpired holds)
//!   equals the generator's ledger;
//! - no balance, margin or held is negative, and no balance is below margin
//!   plus held;
//! - balance, margin, profit and held equal the journal sums, held equals
//!   the wallet's active holds, and every hash chain verifies
//!   (`domain::ledger::reconcile::check_all`).

use std::collections::{BTreeMap, HashMap, HashSet};

use rust_decimal::Decimal;
use sea_orm::{
    AccessMode, ConnectionTrait, Database, DbBackend, IsolationLevel, QueryResult, Statement,
    TransactionTrait,
};

use super::flows::{self, Flow, FlowKind};
use super::workload::{Books, Ending, Fence, Op, Wallet, Write, now_ms, unix_ms};
use crate::payout_sim::{Record, Status};

/// Where the run started in the database: anything at or below these ids
/// is set-up.
#[derive(Debug, Clone, Copy, Default)]
pub struct Baseline {
    pub journal_id: i64,
    pub order_id: i64,
    pub hold_id: i64,
    pub workflow_id: i64,
}

/// The `n` column of a one-row query.
pub async fn scalar<C: ConnectionTrait>(conn: &C, sql: &str) -> Result<i64, String> {
    let row = conn
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no row")?;
    row.try_get::<i64>("", "n").map_err(|e| e.to_string())
}

pub async fn baseline(url: &str) -> Result<Baseline, String> {
    let conn = Database::connect(url).await.map_err(|e| e.to_string())?;
    let journal_id = scalar(
        &conn,
        "SELECT COALESCE(MAX(id), 0)::bigint AS n FROM journal_entries",
    )
    .await?;
    let order_id = scalar(
        &conn,
        "SELECT COALESCE(MAX(id), 0)::bigint AS n FROM orders",
    )
    .await?;
    let hold_id = scalar(&conn, "SELECT COALESCE(MAX(id), 0)::bigint AS n FROM holds").await?;
    let workflow_id = scalar(
        &conn,
        "SELECT COALESCE(MAX(id), 0)::bigint AS n FROM workflows",
    )
    .await?;
    let _ = conn.close().await;
    Ok(Baseline {
        journal_id,
        order_id,
        hold_id,
        workflow_id,
    })
}

/// What the end of a run came to.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub never_definite: usize,
    /// Executions beyond one per key, and replays that differed.
    pub duplicates: usize,
    pub discrepancies: usize,
    /// One line per problem, most telling first.
    pub problems: Vec<String>,
    pub journal_operations: usize,
    pub wallets_reconciled: u64,
}

impl Verdict {
    pub fn clean(&self) -> bool {
        self.never_definite == 0 && self.duplicates == 0 && self.discrepancies == 0
    }
}

/// The journal's money kinds each plain write leaves, per operation.
fn money_kinds(op: Op) -> &'static [&'static str] {
    match op {
        Op::Deposit => &["deposit"],
        Op::Withdraw => &["withdrawal"],
        Op::Transfer => &["transfer_out", "transfer_in"],
        // Orders and holds are journaled under their `order:{id}` and
        // `hold:{id}` references; workflows move money in the background,
        // checked from their final states.
        Op::OpenOrder
        | Op::CloseOrder
        | Op::CreateHold
        | Op::CaptureHold
        | Op::VoidHold
        | Op::StartWithdrawal
        | Op::StartDeposit
        | Op::ApproveDeposit
        | Op::RejectDeposit => &[],
    }
}

/// The rows `sql` reads on PostgreSQL.
async fn query_rows<C: ConnectionTrait>(conn: &C, sql: String) -> Result<Vec<QueryResult>, String> {
    conn.query_all_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .map_err(|e| e.to_string())
}

/// Keeps `line` among the verdict's problems, the first 40 of them.
fn problem(v: &mut Verdict, line: String) {
    if v.problems.len() < 40 {
        v.problems.push(line);
    }
}

/// A discrepancy between the books and the database, named by `line`.
fn discrepancy(v: &mut Verdict, line: String) {
    v.discrepancies += 1;
    problem(v, line);
}

/// Something done twice, named by `line`.
fn duplicate(v: &mut Verdict, line: String) {
    v.duplicates += 1;
    problem(v, line);
}

/// A `what` row of the database (a workflow, a hold) against the answers:
/// `keys` is how many keys reported it. None (it was `how` twice?) or
/// several is a duplicate.
fn reported_once(v: &mut Verdict, (what, id): (&str, i64), keys: Option<&usize>, how: &str) {
    match keys {
        None => {
            duplicate(
                v,
                format!("{what} {id} exists but no answer reported it ({how} twice?)"),
            );
        }
        Some(&n) if n > 1 => {
            duplicate(v, format!("{what} {id} reported by {n} different keys"));
        }
        Some(_) => {}
    }
}

/// Refusals the workload provokes on purpose; any other refusal is a fault
/// the server should not have shown.
fn expected_refusal(op: Op, status: u16, code: &str) -> bool {
    matches!(
        (op, status, code),
        (
            Op::Withdraw | Op::Transfer | Op::CreateHold | Op::StartWithdrawal,
            422,
            "insufficient_funds"
        ) | (Op::OpenOrder, 422, "insufficient_margin")
    )
}

/// Minor units (8 decimals) as a decimal.
fn units(n: i64) -> Decimal {
    Decimal::new(n, 8)
}

/// A hold's operations in the journal, from its `hold:{id}` entries.
#[derive(Debug, Default)]
struct HoldJournal {
    /// Operations with a `hold` entry.
    made: HashSet<String>,
    /// Operations with a `hold_capture` or `hold_release` entry.
    ended: HashSet<String>,
    balance: i64,
    held: i64,
}

/// The workflows at their ends and what the payout provider recorded.
#[derive(Debug, Clone, Copy)]
pub struct Workflows<'a> {
    pub flows: &'a [Flow],
    pub payouts: &'a [Record],
    /// Provider calls refused for breaking its protocol.
    pub protocol_errors: u64,
}

/// Checks every invariant; `server` is what the API reported at `read_ms`
/// (Unix ms) for the users of `opening`.
pub async fn verify(
    url: &str,
    base: Baseline,
    writes: &[Write],
    opening: &HashMap<i64, Wallet>,
    server: &HashMap<i64, Wallet>,
    read_ms: i64,
    workflows: Workflows<'_>,
) -> Result<Verdict, String> {
    let mut v = Verdict::default();

    // Definite answers.
    let mut open_last: BTreeMap<String, usize> = BTreeMap::new();
    for w in writes.iter().filter(|w| w.answer.is_none()) {
        v.never_definite += 1;
        *open_last
            .entry(format!("{} ({})", w.op.label(), w.last))
            .or_default() += 1;
    }
    for (what, n) in open_last {
        problem(&mut v, format!("{n} writes never definite: {what}"));
    }
    // The generator's ledger, from the answers alone.
    let mut books = Books::new(opening);
    for w in writes {
        books.account(w);
    }
    for f in workflows.flows {
        books.account_flow(f);
    }
    books.hold_at(read_ms);
    let flow_of: HashMap<i64, &Flow> = workflows.flows.iter().map(|f| (f.id, f)).collect();
    for w in writes {
        let Some((status, body)) = &w.answer else {
            continue;
        };
        let code = body["code"].as_str().unwrap_or("");
        let hold = w.hold.and_then(|id| books.holds.get(&id).map(|h| (id, h)));
        let ok = (200..300).contains(status);
        if w.fence == Some(Fence::Stale) {
            if (*status, code) != (409, "lock_lost") {
                discrepancy(
                    &mut v,
                    format!(
                        "{} of user {} under a stale lock token: {status} {body}, not 409 lock_lost",
                        w.op.label(),
                        w.user
                    ),
                );
            }
        } else if ok {
            if let (Op::CaptureHold | Op::VoidHold, Some((id, h))) = (w.op, hold) {
                let finished = unix_ms(&body["finished_at"]).unwrap_or(i64::MAX);
                if finished >= h.expires_at_ms {
                    discrepancy(
                        &mut v,
                        format!(
                            "hold {id}: {} went through at {finished} ms, at or after its expiry {} ms",
                            w.op.label(),
                            h.expires_at_ms
                        ),
                    );
                }
            }
        } else {
            // A capture or void may meet a hold that expired first (the
            // client never ends a hold twice): only then is it refused.
            let expired_first = matches!(w.op, Op::CaptureHold | Op::VoidHold)
                && (*status, code) == (409, "hold_not_active")
                && body["hold_status"] == "expired"
                && hold.is_some_and(|(_, h)| h.expires_at_ms <= w.settled_ms);
            // A decision whose earlier attempt got no answer may have gone
            // through: its retry then finds the workflow past review.
            let decided_before = matches!(w.op, Op::ApproveDeposit | Op::RejectDeposit)
                && (*status, code) == (409, "workflow_state")
                && w.interrupted;
            let expected = w.fence.is_none()
                && (expired_first || decided_before || expected_refusal(w.op, *status, code));
            if !expected {
                discrepancy(
                    &mut v,
                    format!(
                        "{} of user {} refused: {status} {body}",
                        w.op.label(),
                        w.user
                    ),
                );
            }
        }
        // A decision that went through is the one the workflow followed.
        let decision = match w.op {
            Op::ApproveDeposit => Some("completed"),
            Op::RejectDeposit => Some("rejected"),
            _ => None,
        };
        if let (Some(want), Some(id)) = (decision, w.workflow)
            && (ok || (*status, code) == (409, "workflow_state") && w.interrupted)
        {
            let got = flow_of.get(&id).map_or("unknown", |f| f.status.as_str());
            if got != want {
                discrepancy(
                    &mut v,
                    format!(
                        "deposit workflow {id}: {} answered {status}, and it ended {got}",
                        w.op.label()
                    ),
                );
            }
        }
        if let Some(m) = &w.replay_mismatch {
            duplicate(&mut v, format!("replay differs: {m}"));
        }
    }

    // Exactly once, by the journal and the orders table.
    let conn = Database::connect(url).await.map_err(|e| e.to_string())?;
    // One snapshot for the journal, the orders and the holds: the servers
    // still run (their cleanup job may expire a hold between two reads).
    let snap = conn
        .begin_with_config(
            Some(IsolationLevel::RepeatableRead),
            Some(AccessMode::ReadOnly),
        )
        .await
        .map_err(|e| e.to_string())?;
    let rows = query_rows(
        &snap,
        format!(
            "SELECT operation_id::text AS op, kind, COALESCE(reference, '') AS reference, \
                 COUNT(*)::bigint AS n, SUM(balance_delta)::bigint AS balance, \
                 SUM(held_delta)::bigint AS held \
                 FROM journal_entries WHERE id > {} GROUP BY 1, 2, 3",
            base.journal_id
        ),
    )
    .await?;
    let mut found: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut order_ops: BTreeMap<i64, HashSet<String>> = BTreeMap::new();
    let mut hold_ops: BTreeMap<i64, HoldJournal> = BTreeMap::new();
    let mut operations = HashSet::new();
    for row in rows {
        let op: String = row.try_get("", "op").map_err(|e| e.to_string())?;
        let kind: String = row.try_get("", "kind").map_err(|e| e.to_string())?;
        let reference: String = row.try_get("", "reference").map_err(|e| e.to_string())?;
        let n: i64 = row.try_get("", "n").map_err(|e| e.to_string())?;
        operations.insert(op.clone());
        if let Some(order) = reference
            .strip_prefix("order:")
            .and_then(|id| id.parse::<i64>().ok())
        {
            order_ops.entry(order).or_default().insert(op);
        } else if let Some(hold) = reference
            .strip_prefix("hold:")
            .and_then(|id| id.parse::<i64>().ok())
        {
            let j = hold_ops.entry(hold).or_default();
            j.balance += row
                .try_get::<i64>("", "balance")
                .map_err(|e| e.to_string())?;
            j.held += row.try_get::<i64>("", "held").map_err(|e| e.to_string())?;
            match kind.as_str() {
                "hold" => j.made.insert(op),
                "hold_capture" | "hold_release" => j.ended.insert(op),
                _ => {
                    discrepancy(
                        &mut v,
                        format!("operation {op}: a {kind} entry under {reference}"),
                    );
                    false
                }
            };
        } else {
            *found.entry((op, kind)).or_default() += n;
        }
    }
    v.journal_operations = operations.len();
    let mut expected: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut opened: HashMap<i64, usize> = HashMap::new();
    let mut closed: HashSet<i64> = HashSet::new();
    let mut made: HashMap<i64, usize> = HashMap::new();
    for w in writes.iter().filter(|w| w.succeeded()) {
        let Some((_, body)) = &w.answer else { continue };
        match w.op {
            Op::OpenOrder => {
                if let Some(id) = body["id"].as_i64() {
                    *opened.entry(id).or_default() += 1;
                }
            }
            Op::CreateHold => {
                if let Some(id) = body["id"].as_i64() {
                    *made.entry(id).or_default() += 1;
                }
            }
            // Checked against the holds table below.
            Op::CaptureHold | Op::VoidHold => {}
            Op::CloseOrder => {
                if let Some(id) = w.order {
                    closed.insert(id);
                }
            }
            op => {
                let id = body["operation_id"].as_str().unwrap_or("").to_owned();
                for kind in money_kinds(op) {
                    *expected
                        .entry((id.clone(), (*kind).to_owned()))
                        .or_default() += 1;
                }
            }
        }
    }
    // A withdrawal's hold was made by the answer that started it; a
    // deposit's credit is one journal operation.
    for f in workflows.flows {
        if let Some((hold, _)) = f.hold {
            *made.entry(hold).or_default() += 1;
        }
        if let (FlowKind::Deposit, Some(op)) = (f.kind, &f.credit) {
            *expected
                .entry((op.clone(), "deposit".to_owned()))
                .or_default() += 1;
        }
    }
    check_workflows(&snap, base, writes, workflows, &flow_of, &mut v).await?;
    for ((op, kind), n) in &found {
        match expected.get(&(op.clone(), kind.clone())) {
            Some(e) if e == n => {}
            Some(e) => {
                duplicate(
                    &mut v,
                    format!("operation {op} {kind}: {n} journal entries, {e} expected"),
                );
            }
            None => {
                duplicate(
                    &mut v,
                    format!("operation {op} {kind} in the journal, but no answer reported it"),
                );
            }
        }
    }
    for (op, kind) in expected.keys() {
        if !found.contains_key(&(op.clone(), kind.clone())) {
            discrepancy(
                &mut v,
                format!("operation {op} {kind} was answered but is not in the journal"),
            );
        }
    }
    let orders = query_rows(
        &snap,
        format!(
            "SELECT id, status FROM orders WHERE id > {} ORDER BY id",
            base.order_id
        ),
    )
    .await?;
    for row in orders {
        let id: i64 = row.try_get("", "id").map_err(|e| e.to_string())?;
        let status: String = row.try_get("", "status").map_err(|e| e.to_string())?;
        let journaled = order_ops.get(&id).map_or(0, HashSet::len);
        let want = 1 + usize::from(closed.contains(&id));
        match opened.get(&id) {
            None => {
                duplicate(
                    &mut v,
                    format!("order {id} exists but no answer reported it (opened twice?)"),
                );
            }
            Some(&n) if n > 1 => {
                duplicate(&mut v, format!("order {id} reported by {n} different keys"));
            }
            Some(_) if journaled != want => {
                duplicate(
                    &mut v,
                    format!("order {id}: {journaled} journal operations, {want} expected"),
                );
            }
            Some(_) => {}
        }
        let should = if closed.contains(&id) {
            "closed"
        } else {
            "open"
        };
        if status != should {
            discrepancy(
                &mut v,
                format!("order {id} is {status}, the answers say {should}"),
            );
        }
    }

    check_holds(&snap, base, &books, &made, &hold_ops, &mut v).await?;

    // The books: per user and in sum.
    let mut users: Vec<i64> = opening.keys().copied().collect();
    users.sort_unstable();
    for id in &users {
        let want = books.wallets.get(id).copied().unwrap_or_default();
        match server.get(id) {
            Some(got) if *got == want => {}
            Some(got) => {
                discrepancy(
                    &mut v,
                    format!(
                        "user {id}: balance {} margin {} held {}, the answers imply {}, {} and {}",
                        got.balance, got.margin, got.held, want.balance, want.margin, want.held
                    ),
                );
            }
            None => {
                discrepancy(&mut v, format!("user {id}: wallet not read"));
            }
        }
    }
    let sum = |m: &HashMap<i64, Wallet>| {
        users
            .iter()
            .filter_map(|u| m.get(u))
            .map(|w| w.balance)
            .sum::<Decimal>()
    };
    let implied =
        sum(opening) + books.deposited - books.withdrawn + books.orders_effect - books.captured;
    if sum(server) != implied {
        discrepancy(
            &mut v,
            format!(
                "sum of balances {} != opening {} + deposits {} - withdrawals {} + orders {} - captures {}",
                sum(server),
                sum(opening),
                books.deposited,
                books.withdrawn,
                books.orders_effect,
                books.captured
            ),
        );
    }

    // Nothing negative, nothing held that is not there, and the database
    // reconciles.
    for id in &users {
        if let Some(w) = server.get(id)
            && (w.balance < w.margin + w.held || w.held < Decimal::ZERO)
        {
            discrepancy(
                &mut v,
                format!(
                    "user {id}: balance {} below margin {} + held {}",
                    w.balance, w.margin, w.held
                ),
            );
        }
    }
    let negative = scalar(
        &snap,
        "SELECT COUNT(*)::bigint AS n FROM wallets \
         WHERE balance < 0 OR margin < 0 OR held < 0 OR balance < margin + held",
    )
    .await?;
    let _ = snap.rollback().await;
    if negative > 0 {
        discrepancy(
            &mut v,
            format!(
                "{negative} wallets with a negative balance, margin or held, or a balance below margin + held"
            ),
        );
    }
    let report = domain::ledger::reconcile::check_all(&conn)
        .await
        .map_err(|e| e.to_string())?;
    let _ = conn.close().await;
    v.wallets_reconciled = report.wallets;
    for d in &report.discrepancies {
        discrepancy(
            &mut v,
            format!("reconcile: wallet {}: {}", d.wallet_id, d.problem),
        );
    }
    Ok(v)
}

/// Every workflow of the run against the workflows table and the payout
/// provider: started by one answer, ended as a fault may leave it, each
/// payout paid at most once and exactly when its withdrawal completed.
async fn check_workflows<C: ConnectionTrait>(
    conn: &C,
    base: Baseline,
    writes: &[Write],
    workflows: Workflows<'_>,
    flow_of: &HashMap<i64, &Flow>,
    v: &mut Verdict,
) -> Result<(), String> {
    let started = flows::started(writes);
    let rows = query_rows(
        conn,
        format!(
            "SELECT id, status FROM workflows WHERE id > {} ORDER BY id",
            base.workflow_id
        ),
    )
    .await?;
    let mut seen = HashSet::new();
    for row in rows {
        let id: i64 = row.try_get("", "id").map_err(|e| e.to_string())?;
        let status: String = row.try_get("", "status").map_err(|e| e.to_string())?;
        seen.insert(id);
        reported_once(v, ("workflow", id), started.get(&id), "started");
        if let Some(f) = flow_of.get(&id)
            && f.status != status
        {
            discrepancy(
                v,
                format!("workflow {id} is {status}, the API said {}", f.status),
            );
        }
    }
    for id in started.keys().filter(|id| !seen.contains(id)) {
        discrepancy(
            v,
            format!("workflow {id} was answered but is not in the workflows table"),
        );
    }
    for f in workflows.flows.iter().filter(|f| !f.ended_well()) {
        discrepancy(
            v,
            format!(
                "{:?} workflow {} ended {} ({})",
                f.kind,
                f.id,
                f.status,
                f.error.as_deref().unwrap_or("no error")
            ),
        );
    }
    let paid: HashMap<i64, &Record> = workflows.payouts.iter().map(|r| (r.payout_id, r)).collect();
    for f in workflows
        .flows
        .iter()
        .filter(|f| f.kind == FlowKind::Withdrawal)
    {
        let record = paid.get(&f.id);
        let payments = record.map_or(0, |r| r.payments);
        let fits = match f.status.as_str() {
            "completed" => payments == 1 && record.is_some_and(|r| r.status == Some(Status::Sent)),
            "compensated" => {
                payments == 0 && record.is_some_and(|r| r.status == Some(Status::Failed))
            }
            _ => payments <= 1,
        };
        if payments > 1 {
            duplicate(
                v,
                format!("withdrawal workflow {}: paid {payments} times", f.id),
            );
        } else if !fits {
            discrepancy(
                v,
                format!(
                    "withdrawal workflow {} ended {}, and the provider has {:?}",
                    f.id,
                    f.status,
                    record.map(|r| (r.payments, r.status))
                ),
            );
        }
    }
    for r in workflows
        .payouts
        .iter()
        .filter(|r| !flow_of.contains_key(&r.payout_id))
    {
        discrepancy(
            v,
            format!(
                "the provider saw payout {} ({} paid), which no workflow of the run explains",
                r.payout_id, r.payments
            ),
        );
    }
    if workflows.protocol_errors > 0 {
        discrepancy(
            v,
            format!(
                "{} payout calls broke the provider's protocol",
                workflows.protocol_errors
            ),
        );
    }
    Ok(())
}

/// Every hold of the run against the holds table and its journal: made by
/// one answer, ended at most once, its sums and status the answers'.
async fn check_holds<C: ConnectionTrait>(
    conn: &C,
    base: Baseline,
    books: &Books,
    made: &HashMap<i64, usize>,
    journal: &BTreeMap<i64, HoldJournal>,
    v: &mut Verdict,
) -> Result<(), String> {
    let rows = query_rows(
        conn,
        format!(
            "SELECT id, amount, captured_amount, status, expires_at_ms \
                 FROM holds WHERE id > {} ORDER BY id",
            base.hold_id
        ),
    )
    .await?;
    // In the snapshot, taken after the wallets were read: a hold due by
    // now is expired in any case.
    let now = now_ms();
    let empty = HoldJournal::default();
    let mut seen = HashSet::new();
    for row in rows {
        let get = |c: &str| row.try_get::<i64>("", c).map_err(|e| e.to_string());
        let (id, amount, captured) = (get("id")?, get("amount")?, get("captured_amount")?);
        let expires_at_ms = get("expires_at_ms")?;
        let status: String = row.try_get("", "status").map_err(|e| e.to_string())?;
        seen.insert(id);
        reported_once(v, ("hold", id), made.get(&id), "made");
        let j = journal.get(&id).unwrap_or(&empty);
        if j.made.len() != 1 {
            duplicate(
                v,
                format!("hold {id}: {} `hold` operations, 1 expected", j.made.len()),
            );
        }
        let endings = usize::from(status != "held");
        if j.ended.len() > 1 {
            duplicate(
                v,
                format!("hold {id} ended {} times in the journal", j.ended.len()),
            );
        } else if j.ended.len() != endings {
            discrepancy(
                v,
                format!(
                    "hold {id} is {status}, with {} ending operations in the journal",
                    j.ended.len()
                ),
            );
        }
        let still = if status == "held" { amount } else { 0 };
        if (j.held, j.balance) != (still, -captured) {
            discrepancy(
                v,
                format!(
                    "hold {id} ({status}, {amount} held, {captured} captured): its journal \
                     moves held by {} and the balance by {}",
                    j.held, j.balance
                ),
            );
        }
        let Some(book) = books.holds.get(&id) else {
            continue;
        };
        let fits = match book.ended {
            Some(Ending::Captured(c)) => status == "captured" && units(captured) == c,
            Some(Ending::Voided) => status == "voided" && captured == 0,
            // Left alone: active until its expiry, then expired (stored as
            // `held` until something releases it, which reads count as
            // expired already).
            None if expires_at_ms <= now => {
                (status == "expired" || status == "held") && captured == 0
            }
            None => status == "held" && captured == 0,
        };
        if !fits || units(amount) != book.amount || expires_at_ms != book.expires_at_ms {
            discrepancy(
                v,
                format!(
                    "hold {id} is {status} ({} held, {} captured, expiry {expires_at_ms} ms); \
                     the answers say {book:?}",
                    units(amount),
                    units(captured)
                ),
            );
        }
    }
    let mut missing: Vec<&i64> = books.holds.keys().filter(|id| !seen.contains(id)).collect();
    missing.sort_unstable();
    for id in missing {
        discrepancy(
            v,
            format!("hold {id} was answered but is not in the holds table"),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_provoked_refusals_are_expected() {
        let expected = [
            (Op::Withdraw, 422, "insufficient_funds"),
            (Op::Transfer, 422, "insufficient_funds"),
            (Op::OpenOrder, 422, "insufficient_margin"),
            (Op::CreateHold, 422, "insufficient_funds"),
            (Op::StartWithdrawal, 422, "insufficient_funds"),
        ];
        for (op, status, code) in expected {
            assert!(expected_refusal(op, status, code), "{op:?} {status} {code}");
        }
        let not_expected = [
            // A decision refused for the workflow's state is expected only
            // after an attempt without an answer: `verify` decides.
            (Op::ApproveDeposit, 409, "workflow_state"),
            (Op::StartDeposit, 422, "insufficient_funds"),
            // Whether a refused capture or void met an expired hold depends
            // on the hold's expiry: `verify` decides, never this table.
            (Op::CaptureHold, 409, "hold_not_active"),
            (Op::VoidHold, 409, "hold_not_active"),
            (Op::CaptureHold, 422, "capture_exceeds_hold"),
            (Op::Withdraw, 409, "lock_lost"),
            (Op::Deposit, 422, "insufficient_funds"),
            (Op::Withdraw, 422, "idempotency_key_reused"),
            (Op::CloseOrder, 409, "order_not_open"),
            (Op::Deposit, 400, "invalid_request"),
        ];
        for (op, status, code) in not_expected {
            assert!(
                !expected_refusal(op, status, code),
                "{op:?} {status} {code}"
            );
        }
    }
}
