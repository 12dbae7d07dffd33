//! The invariants every scenario ends with, checked against the answers the
//! clients got and against the database itself:
//!
//! - every write got a definite answer;
//! - each key executed at most once: every successful money write's
//!   operation is in the journal exactly once, every order the clients were
//!   told about was opened (and closed) by exactly one operation, and the
//!   journal and the orders table hold nothing the answers do not explain;
//!   a deliberate second send of a key replayed the first answer exactly;
//! - the sum of the users' balances is their opening sum plus the successful
//!   deposits minus the successful withdrawals plus what orders did (fees,
//!   P&L, write-offs), and each user's wallet equals the generator's ledger;
//! - no balance or margin is negative;
//! - balance, margin and profit equal the journal sums and every hash chain
//!   verifies (`domain::ledger::reconcile::check_all`).

use std::collections::{BTreeMap, HashMap, HashSet};

use rust_decimal::Decimal;
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};

use super::workload::{Books, Op, Wallet, Write};

/// Where the run started in the database: anything at or below these ids
/// is set-up.
#[derive(Debug, Clone, Copy, Default)]
pub struct Baseline {
    pub journal_id: i64,
    pub order_id: i64,
}

async fn scalar(conn: &sea_orm::DatabaseConnection, sql: &str) -> Result<i64, String> {
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
    let _ = conn.close().await;
    Ok(Baseline {
        journal_id,
        order_id,
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
        // Orders are journaled under their `order:{id}` reference.
        Op::OpenOrder | Op::CloseOrder => &[],
    }
}

/// Refusals the workload provokes on purpose; any other refusal is a fault
/// the server should not have shown.
fn expected_refusal(op: Op, status: u16, code: &str) -> bool {
    matches!(
        (op, status, code),
        (Op::Withdraw | Op::Transfer, 422, "insufficient_funds")
            | (Op::OpenOrder, 422, "insufficient_margin")
    )
}

/// Checks every invariant; `server` is what the API reports now for the
/// users of `opening`.
pub async fn verify(
    url: &str,
    base: Baseline,
    writes: &[Write],
    opening: &HashMap<i64, Wallet>,
    server: &HashMap<i64, Wallet>,
) -> Result<Verdict, String> {
    let mut v = Verdict::default();
    let problem = |v: &mut Verdict, line: String| {
        if v.problems.len() < 40 {
            v.problems.push(line);
        }
    };

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
    for w in writes {
        if let Some((status, body)) = &w.answer
            && !(200..300).contains(status)
        {
            let code = body["code"].as_str().unwrap_or("");
            if !expected_refusal(w.op, *status, code) {
                v.discrepancies += 1;
                problem(
                    &mut v,
                    format!(
                        "{} of user {} refused: {status} {body}",
                        w.op.label(),
                        w.user
                    ),
                );
            }
        }
        if let Some(m) = &w.replay_mismatch {
            v.duplicates += 1;
            problem(&mut v, format!("replay differs: {m}"));
        }
    }

    // Exactly once, by the journal and the orders table.
    let conn = Database::connect(url).await.map_err(|e| e.to_string())?;
    let rows = conn
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            format!(
                "SELECT operation_id::text AS op, kind, COALESCE(reference, '') AS reference, \
                 COUNT(*)::bigint AS n FROM journal_entries WHERE id > {} GROUP BY 1, 2, 3",
                base.journal_id
            ),
        ))
        .await
        .map_err(|e| e.to_string())?;
    let mut found: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut order_ops: BTreeMap<i64, HashSet<String>> = BTreeMap::new();
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
        } else {
            *found.entry((op, kind)).or_default() += n;
        }
    }
    v.journal_operations = operations.len();
    let mut expected: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut opened: HashMap<i64, usize> = HashMap::new();
    let mut closed: HashSet<i64> = HashSet::new();
    for w in writes.iter().filter(|w| w.succeeded()) {
        let Some((_, body)) = &w.answer else { continue };
        match w.op {
            Op::OpenOrder => {
                if let Some(id) = body["id"].as_i64() {
                    *opened.entry(id).or_default() += 1;
                }
            }
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
    for ((op, kind), n) in &found {
        match expected.get(&(op.clone(), kind.clone())) {
            Some(e) if e == n => {}
            Some(e) => {
                v.duplicates += 1;
                problem(
                    &mut v,
                    format!("operation {op} {kind}: {n} journal entries, {e} expected"),
                );
            }
            None => {
                v.duplicates += 1;
                problem(
                    &mut v,
                    format!("operation {op} {kind} in the journal, but no answer reported it"),
                );
            }
        }
    }
    for (op, kind) in expected.keys() {
        if !found.contains_key(&(op.clone(), kind.clone())) {
            v.discrepancies += 1;
            problem(
                &mut v,
                format!("operation {op} {kind} was answered but is not in the journal"),
            );
        }
    }
    let orders = conn
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            format!(
                "SELECT id, status FROM orders WHERE id > {} ORDER BY id",
                base.order_id
            ),
        ))
        .await
        .map_err(|e| e.to_string())?;
    for row in orders {
        let id: i64 = row.try_get("", "id").map_err(|e| e.to_string())?;
        let status: String = row.try_get("", "status").map_err(|e| e.to_string())?;
        let journaled = order_ops.get(&id).map_or(0, HashSet::len);
        let want = 1 + usize::from(closed.contains(&id));
        match opened.get(&id) {
            None => {
                v.duplicates += 1;
                problem(
                    &mut v,
                    format!("order {id} exists but no answer reported it (opened twice?)"),
                );
            }
            Some(&n) if n > 1 => {
                v.duplicates += 1;
                problem(&mut v, format!("order {id} reported by {n} different keys"));
            }
            Some(_) if journaled != want => {
                v.duplicates += 1;
                problem(
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
            v.discrepancies += 1;
            problem(
                &mut v,
                format!("order {id} is {status}, the answers say {should}"),
            );
        }
    }

    // The books: per user and in sum.
    let mut books = Books::new(opening);
    for w in writes {
        books.account(w);
    }
    let mut users: Vec<i64> = opening.keys().copied().collect();
    users.sort_unstable();
    for id in &users {
        let want = books.wallets.get(id).copied().unwrap_or_default();
        match server.get(id) {
            Some(got) if *got == want => {}
            Some(got) => {
                v.discrepancies += 1;
                problem(
                    &mut v,
                    format!(
                        "user {id}: balance {} margin {}, the answers imply {} and {}",
                        got.balance, got.margin, want.balance, want.margin
                    ),
                );
            }
            None => {
                v.discrepancies += 1;
                problem(&mut v, format!("user {id}: wallet not read"));
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
    let implied = sum(opening) + books.deposited - books.withdrawn + books.orders_effect;
    if sum(server) != implied {
        v.discrepancies += 1;
        problem(
            &mut v,
            format!(
                "sum of balances {} != opening {} + deposits {} - withdrawals {} + orders {}",
                sum(server),
                sum(opening),
                books.deposited,
                books.withdrawn,
                books.orders_effect
            ),
        );
    }

    // Nothing negative, and the database reconciles.
    let negative = scalar(
        &conn,
        "SELECT COUNT(*)::bigint AS n FROM wallets WHERE balance < 0 OR margin < 0",
    )
    .await?;
    if negative > 0 {
        v.discrepancies += 1;
        problem(
            &mut v,
            format!("{negative} wallets with a negative balance or margin"),
        );
    }
    let report = domain::ledger::reconcile::check_all(&conn)
        .await
        .map_err(|e| e.to_string())?;
    let _ = conn.close().await;
    v.wallets_reconciled = report.wallets;
    for d in &report.discrepancies {
        v.discrepancies += 1;
        problem(
            &mut v,
            format!("reconcile: wallet {}: {}", d.wallet_id, d.problem),
        );
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_provoked_refusals_are_expected() {
        assert!(expected_refusal(Op::Withdraw, 422, "insufficient_funds"));
        assert!(expected_refusal(Op::Transfer, 422, "insufficient_funds"));
        assert!(expected_refusal(Op::OpenOrder, 422, "insufficient_margin"));
        assert!(!expected_refusal(Op::Deposit, 422, "insufficient_funds"));
        assert!(!expected_refusal(
            Op::Withdraw,
            422,
            "idempotency_key_reused"
        ));
        assert!(!expected_refusal(Op::CloseOrder, 409, "order_not_open"));
        assert!(!expected_refusal(Op::Deposit, 400, "invalid_request"));
    }
}
