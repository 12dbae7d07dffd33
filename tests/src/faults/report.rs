//! One row per scenario, printed as a line while the suite runs and as a
//! Markdown table (and the `RELIABILITY.md` document) at the end.

use std::fmt::Write as _;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed(String),
    /// The kernel or the machine forbids this fault; the reason.
    Skipped(String),
}

#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub instances: usize,
    pub clients: usize,
    pub duration_s: f64,
    /// Writes (each with its own key, however often it was sent).
    pub operations: usize,
    pub succeeded: usize,
    pub attempts: u64,
    pub faults: String,
    /// Wall time during which at least one client found the service out
    /// (refused connections or 503 `unavailable`).
    pub outage_s: f64,
    /// Of writes started while the fault lasted / after it: first attempt
    /// to definite answer, retries included.
    pub p99_during_ms: Option<f64>,
    pub p99_after_ms: Option<f64>,
    pub never_definite: usize,
    pub duplicates: usize,
    pub discrepancies: usize,
    pub journal_operations: usize,
    pub problems: Vec<String>,
    pub notes: Vec<String>,
    pub outcome: Outcome,
    pub wall_s: f64,
}

/// The 99th percentile (nearest rank) in milliseconds; `None` when empty.
pub fn p99(latencies: &mut [Duration]) -> Option<f64> {
    if latencies.is_empty() {
        return None;
    }
    latencies.sort_unstable();
    let rank = (latencies.len() * 99).div_ceil(100).max(1) - 1;
    latencies.get(rank).map(|d| d.as_secs_f64() * 1000.0)
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |ms| format!("{ms:.0} ms"))
}

impl Row {
    fn empty(scenario: &str, outcome: Outcome) -> Self {
        Self {
            scenario: scenario.to_owned(),
            instances: 0,
            clients: 0,
            duration_s: 0.0,
            operations: 0,
            succeeded: 0,
            attempts: 0,
            faults: "none".into(),
            outage_s: 0.0,
            p99_during_ms: None,
            p99_after_ms: None,
            never_definite: 0,
            duplicates: 0,
            discrepancies: 0,
            journal_operations: 0,
            problems: Vec::new(),
            notes: Vec::new(),
            outcome,
            wall_s: 0.0,
        }
    }

    pub fn failed_setup(scenario: &str, why: String) -> Self {
        Self::empty(scenario, Outcome::Failed(format!("set-up failed: {why}")))
    }

    pub fn skipped(scenario: &str, why: String) -> Self {
        Self::empty(scenario, Outcome::Skipped(why))
    }

    pub fn passed(&self) -> bool {
        !matches!(self.outcome, Outcome::Failed(_))
    }

    fn result(&self) -> String {
        match &self.outcome {
            Outcome::Passed => "pass".into(),
            Outcome::Failed(why) => format!("**FAIL**: {}", why.replace('|', "\\|")),
            Outcome::Skipped(why) => format!("skipped: {}", why.replace('|', "\\|")),
        }
    }

    /// One line for the console.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{}: {} | {} writes ({} ok, {} attempts) on {} instances, {} clients, {:.0} s | faults: {} | outage {:.1} s | p99 during {} after {} | never definite {} | duplicates {} | discrepancies {} | {:.0} s wall",
            self.scenario,
            self.result(),
            self.operations,
            self.succeeded,
            self.attempts,
            self.instances,
            self.clients,
            self.duration_s,
            self.faults,
            self.outage_s,
            ms(self.p99_during_ms),
            ms(self.p99_after_ms),
            self.never_definite,
            self.duplicates,
            self.discrepancies,
            self.wall_s,
        );
        for n in &self.notes {
            let _ = write!(s, "\n    {n}");
        }
        for p in &self.problems {
            let _ = write!(s, "\n    problem: {p}");
        }
        s
    }
}

/// The Markdown table of the rows.
pub fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| scenario | operations | faults injected | outage seen by clients | p99 during | p99 after | never definite | duplicates | discrepancies | result |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:.1} s | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.operations,
            r.faults.replace('|', "\\|"),
            r.outage_s,
            ms(r.p99_during_ms),
            ms(r.p99_after_ms),
            r.never_definite,
            r.duplicates,
            r.discrepancies,
            r.result(),
        );
    }
    t
}

/// The whole `RELIABILITY.md`.
pub fn document(rows: &[Row], command: &str, pending: &[(&str, &str)]) -> String {
    let mut d = String::from("# Reliability: faults as a test suite\n\n");
    d.push_str(
        "Written by `bench/faults.sh` (the `faults` binary of the `tests` crate); do not edit by hand.\n\
         Each scenario starts `ledger serve` processes on one PostgreSQL database, drives a bank\n\
         workload (deposits, withdrawals, transfers between users in both directions, orders opened\n\
         and closed while a price feed moves the price, holds of 0.3–1.5 s and of an hour on the live\n\
         wallets, captured by the back office in full or in part, voided, or left to expire;\n\
         withdrawal workflows paid through the run's own payout provider, which fails a fifth of the\n\
         calls with a 503 and refuses a tenth of the payouts for good; deposit workflows below and\n\
         above the review threshold, approved or rejected by the back office), every\n\
         write with its own Idempotency-Key and sent again with that key until its answer is definite,\n\
         a tenth of them once more on purpose (the replay must be byte-identical), and injects one\n\
         fault on a schedule. At the end it checks: every write definite; each key executed at most\n\
         once (every successful write's operation in the journal exactly once, every order opened and\n\
         closed by one operation each, nothing in the journal or the orders table that no answer\n\
         explains); every hold ended at most once (one `hold` operation and at most one ending in the\n\
         journal, its sums and its status the answers', a capture or void refused as `expired` only\n\
         after the hold's expiry and one that went through only before it); each user's wallet\n\
         (balance, margin, and `held`: the sum of the active unexpired holds) equals the generator's\n\
         ledger built from the answers alone, and the sum of balances equals the opening sum plus\n\
         deposits minus withdrawals plus fees, P&L and write-offs minus captures; no negative balance,\n\
         margin or held, no balance below margin + held; balance, margin, profit and held equal the\n\
         journal sums, held equals the active holds, and every hash chain verifies\n\
         (`domain::ledger::reconcile::check_all`); every workflow started once and ended as a fault\n\
         may leave it (a withdrawal paid exactly once and its hold captured, or refused by the\n\
         provider, never paid, and its hold voided; a deposit credited by one journal operation, or\n\
         rejected), the decisions the back office was told went through the ones followed, and the\n\
         provider saw no payout that no workflow explains. A scenario whose fault left no trace in what the\n\
         clients saw (no refused connection after a kill, no shed request under pool exhaustion, …)\n\
         fails too.\n\n",
    );
    let _ = writeln!(d, "Command: `{command}`\n");
    d.push_str(&table(rows));
    d.push_str(
        "\n*operations*: writes, each with its own key (however often it was sent); *outage*: wall time\n\
         during which at least one client met a refused connection or a 503 `unavailable`; *p99*: of\n\
         the writes started while the fault lasted and after it, from the first attempt to the\n\
         definite answer, retries included; *never definite*: writes without a definite answer within\n\
         the retry bound; *duplicates*: executions beyond one per key, and replays that differed;\n\
         *discrepancies*: balances, sums, journal or order states that differ from the answers, negative\n\
         balances, reconciliation findings, refusals the workload did not provoke.\n\n",
    );
    let failing: Vec<&Row> = rows.iter().filter(|r| !r.passed()).collect();
    if failing.is_empty() {
        d.push_str("Every row: 0 lost, 0 duplicated, 0 discrepancies.\n\n");
    } else {
        d.push_str("## Failing rows\n\n");
        for r in failing {
            let _ = writeln!(d, "- **{}**: {}", r.scenario, r.result());
            for p in &r.problems {
                let _ = writeln!(d, "  - {p}");
            }
        }
        d.push('\n');
    }
    d.push_str("## Details\n\n");
    for r in rows {
        let _ = writeln!(
            d,
            "- **{}** ({} instances, {} clients, {:.0} s of load, {:.0} s wall): {} writes, {} succeeded, {} attempts, {} journal operations.",
            r.scenario,
            r.instances,
            r.clients,
            r.duration_s,
            r.wall_s,
            r.operations,
            r.succeeded,
            r.attempts,
            r.journal_operations
        );
        for n in &r.notes {
            let _ = writeln!(d, "  - {n}");
        }
    }
    d.push_str(
        "\n## How the faults are injected\n\n\
         - **kill-one**, **kill-all**, **rolling-kill**: SIGKILL of the `ledger` process\n\
           (`tests::process::LedgerProcess`), restart on the same port; clients hold a connection to\n\
           every instance and move on when theirs is refused or lost.\n\
         - **pg-restart**, **pg-stop**: a private PostgreSQL cluster (`initdb` into a temporary\n\
           directory, run as the `postgres` user on a free port, `pg_ctl restart|stop -m fast`); the\n\
           shared cluster on 5432 is never stopped.\n\
         - **terminate-backends**: `pg_terminate_backend` of up to three random connections of the\n\
           scenario's database every 250 ms.\n\
         - **pool-exhaustion**: pools of 3 connections with a 100 ms wait budget, and outside\n\
           transactions holding `FOR UPDATE` locks on random wallets for 1.5 s at a time.\n\
         - **retry-storm**: a TCP proxy between every instance and PostgreSQL is cut for 3 s\n\
           (`tests::proxy::Proxy`); twice the clients, retrying without jitter, so all of them come\n\
           back in the same instant the `Retry-After` names.\n\
         - **network-delay-loss**: the servers run in a network namespace created for the run, on a\n\
           veth pair in a random private /30 of 10.200.0.0/13 that exists only on this machine; the\n\
           database is reached through a proxy on the host end. `tc netem` delay and loss on both ends\n\
           where the kernel has `netem`; otherwise `tc tbf` (rate limit with a short queue: delay and\n\
           drops), and the row says which.\n\
         - **lock-stall**: a lock holder process (`faults lock-holder`) takes the lock on a user's\n\
           wallet resource for 2 s on one instance and withdraws under its `Lock-Token`; it is stopped\n\
           with `kill -STOP` (seen in state `T`) until past its lease, while the scenario takes the\n\
           resource on the other instance (refused while the lease lasts, then granted with a higher\n\
           fencing token) and withdraws under the new token; after `kill -CONT` the holder sends the\n\
           withdrawal it had decided on under its old token, which must be refused with 409\n\
           `lock_lost` and leave the balance as it was; its extend must be refused too, and the new\n\
           holder's next withdrawal and release go through. Repeated for the fault's span.\n\
         - **lock-holder-killed**: the scenario takes a signal's trade resource, queues an order on\n\
           that signal (`\"wait\": \"queue\"`) on instance A, locks the user's wallet row from outside\n\
           (`SELECT … FOR UPDATE`) and releases the resource: the queued order is granted the lock\n\
           (30 s lease) and waits on the row inside it. Once its backend, on one of A's own sockets,\n\
           is seen waiting (`pg_blocking_pids`), A gets SIGKILL and the row is let go; that backend\n\
           must end uncommitted, and A restarts. The same signal is then sent to instance B until it\n\
           trades: it must be refused 409 `resource_locked` while the lease lasts and executed once\n\
           after it; the dead holder's lock must end `expired` with no result, the user must hold\n\
           exactly one order, the newer lock's result, under a higher fencing token, and the signal\n\
           sent again must answer that order (`deduplicated`).\n\
         - **workflow-recovery**: the payout provider switched to answering 600 ms late (it pays at\n\
           once), and after 0.9 s every instance killed: the payouts called in the last moment are\n\
           paid and not yet recorded by the ledger (counted from the workflows table at the kill);\n\
           after the restart each workflow waits out its 2 s lease, resumes from its checkpoint and\n\
           calls the provider again with the same key, which answers the stored result. Repeated\n\
           for the fault's span.\n\
         - **every scenario**: the servers run 4 workflow workers each with a 2 s lease and a\n\
           recovery pass every 0.5 s; after the load the harness reads every workflow until it is\n\
           final, approving or rejecting the deposits still in review.\n",
    );
    if !pending.is_empty() {
        d.push_str(
            "\n## Scenarios still to come\n\n\
             Each joins as a new `tests::faults::Scenario` variant with its operations in\n\
             `tests::faults::workload::Op` (both matched exhaustively, so the compiler lists what\n\
             each must provide):\n\n",
        );
        for (name, what) in pending {
            let _ = writeln!(d, "- **{name}**: {what}.");
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_the_nearest_rank() {
        let mut none: Vec<Duration> = Vec::new();
        assert_eq!(p99(&mut none), None);
        let mut one = vec![Duration::from_millis(7)];
        assert_eq!(p99(&mut one), Some(7.0));
        let mut hundred: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(p99(&mut hundred), Some(99.0));
        let mut two_hundred: Vec<Duration> = (1..=200).map(Duration::from_millis).collect();
        assert_eq!(p99(&mut two_hundred), Some(198.0));
    }

    #[test]
    fn a_failing_row_says_why_in_the_table() {
        let mut r = Row::failed_setup("kill-one", "no server".into());
        assert!(!r.passed());
        assert!(table(std::slice::from_ref(&r)).contains("**FAIL**: set-up failed: no server"));
        r.outcome = Outcome::Skipped("no netns | here".into());
        assert!(r.passed());
        assert!(table(&[r]).contains("skipped: no netns \\| here"));
    }
}
