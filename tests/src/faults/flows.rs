//! The workload's workflows, followed to their ends after the load stops.
//!
//! A workflow's money moves in the background (the payout, the capture or
//! void of a withdrawal's hold, a deposit's credit), so its effect is not in
//! the answer that started it. `settle` reads every workflow the answers
//! reported until each has reached a final state, deciding as the back
//! office the deposits still waiting in review (the clients decide some of
//! theirs while the load runs), and `check` then holds the books, the
//! journal, the holds table and the payout provider's records to those
//! final states.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use api::auth::Role;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::workload::{Op, Write, request, unix_ms};
use crate::load::client::Call;
use crate::load::retry::Policy;
use crate::token;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowKind {
    Withdrawal,
    Deposit,
}

/// A workflow as the server reported it last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub id: i64,
    pub kind: FlowKind,
    pub user: i64,
    pub amount: Decimal,
    pub status: String,
    pub error: Option<String>,
    /// A withdrawal's hold: its id and expiry (Unix ms).
    pub hold: Option<(i64, i64)>,
    /// The journal operation of a deposit's credit.
    pub credit: Option<String>,
}

impl Flow {
    /// Reads a workflow body (`GET /api/v1/workflows/{id}`); the hold's
    /// expiry comes from the hold itself.
    fn from_body(body: &Value, hold_expiry: Option<i64>) -> Option<Self> {
        let kind = match body["type"].as_str()? {
            "withdrawal" => FlowKind::Withdrawal,
            "deposit" => FlowKind::Deposit,
            _ => return None,
        };
        Some(Self {
            id: body["id"].as_i64()?,
            kind,
            user: body["user_id"].as_i64()?,
            amount: Decimal::from_str(body["params"]["amount"].as_str()?).ok()?,
            status: body["status"].as_str()?.to_owned(),
            error: body["error"].as_str().map(str::to_owned),
            hold: body["hold_id"].as_i64().zip(hold_expiry),
            credit: body["result"]["operation_id"].as_str().map(str::to_owned),
        })
    }

    /// Ended as a workflow of its kind may end under any fault: a withdrawal
    /// paid and captured, or refused by the provider and compensated; a
    /// deposit credited, or rejected in review.
    pub fn ended_well(&self) -> bool {
        matches!(
            (self.kind, self.status.as_str()),
            (FlowKind::Withdrawal, "completed" | "compensated")
                | (FlowKind::Deposit, "completed" | "rejected")
        )
    }
}

/// The statuses a workflow leaves only by an admin's action (or never).
fn is_final(status: &str) -> bool {
    matches!(status, "completed" | "compensated" | "rejected" | "failed")
}

/// The workflows the answers reported started, with how many answers
/// reported each (more than one: started twice).
pub fn started(writes: &[Write]) -> BTreeMap<i64, usize> {
    let mut ids = BTreeMap::new();
    for w in writes
        .iter()
        .filter(|w| matches!(w.op, Op::StartWithdrawal | Op::StartDeposit) && w.succeeded())
    {
        if let Some(id) = w.answer.as_ref().and_then(|(_, b)| b["id"].as_i64()) {
            *ids.entry(id).or_default() += 1;
        }
    }
    ids
}

/// Every started workflow at its end (or as last seen, if it did not end
/// within the bound), and what settling took.
#[derive(Debug, Default)]
pub struct Settled {
    pub flows: Vec<Flow>,
    /// Workflow bodies that could not be read as a workflow.
    pub unreadable: Vec<String>,
    /// Deposits in review the harness decided after the load.
    pub decided: usize,
    pub waited: Duration,
}

/// Reads the workflows the answers reported until each is final, within
/// `bound`; deposits in review are approved (even ids) or rejected (odd).
pub async fn settle(
    target: SocketAddr,
    writes: &[Write],
    bound: Duration,
    policy: &Policy,
) -> Result<Settled, String> {
    let admin = token("root", Role::Admin);
    let began = Instant::now();
    let mut pending: Vec<i64> = started(writes).into_keys().collect();
    let mut last: BTreeMap<i64, Value> = BTreeMap::new();
    let mut done: BTreeMap<i64, Value> = BTreeMap::new();
    let mut decided = 0;
    loop {
        let mut still = Vec::new();
        for id in pending {
            let read = Call::get(format!("/api/v1/workflows/{id}"), Some(&admin));
            let body = request(target, &read, policy).await?.json();
            let status = body["status"].as_str().unwrap_or_default().to_owned();
            if is_final(&status) {
                done.insert(id, body);
                continue;
            }
            if status == "awaiting_review" {
                let verb = if id % 2 == 0 { "approve" } else { "reject" };
                let path = format!("/api/v1/workflows/{id}/{verb}");
                let call = Call::post_without_key(&path, &admin, &json!({}));
                let answer = request(target, &call, policy).await?;
                if answer.status != 200 {
                    return Err(format!(
                        "{verb} of deposit workflow {id} in review: {} {}",
                        answer.status,
                        answer.code()
                    ));
                }
                decided += 1;
            }
            last.insert(id, body);
            still.push(id);
        }
        pending = still;
        if pending.is_empty() || began.elapsed() > bound {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in pending {
        if let Some(body) = last.remove(&id) {
            done.insert(id, body);
        }
    }
    let mut settled = Settled {
        decided,
        ..Settled::default()
    };
    for body in done.into_values() {
        let expiry = match body["hold_id"].as_i64() {
            Some(hold) => {
                let read = Call::get(format!("/api/v1/holds/{hold}"), Some(&admin));
                unix_ms(&request(target, &read, policy).await?.json()["expires_at"])
            }
            None => None,
        };
        match Flow::from_body(&body, expiry) {
            Some(flow) => settled.flows.push(flow),
            None => settled.unreadable.push(body.to_string()),
        }
    }
    settled.waited = began.elapsed();
    Ok(settled)
}

/// One line for the report: how the workflows ended.
pub fn summary(s: &Settled, payouts: &[crate::payout_sim::Record]) -> String {
    let count = |kind: FlowKind, status: &str| {
        s.flows
            .iter()
            .filter(|f| f.kind == kind && f.status == status)
            .count()
    };
    let calls: u64 = payouts.iter().map(|r| r.calls).sum();
    let paid: u64 = payouts.iter().map(|r| r.payments).sum();
    format!(
        "workflows {}: withdrawals completed {}, compensated {}; deposits completed {}, \
         rejected {} ({} decided after the load); payout calls {calls}, payments {paid}; \
         all final {:.1} s after the load",
        s.flows.len(),
        count(FlowKind::Withdrawal, "completed"),
        count(FlowKind::Withdrawal, "compensated"),
        count(FlowKind::Deposit, "completed"),
        count(FlowKind::Deposit, "rejected"),
        s.decided,
        s.waited.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(kind: &str, status: &str) -> Value {
        json!({
            "id": 5, "type": kind, "user_id": 9, "status": status,
            "params": {"wallet": "live", "amount": "12.50"},
            "hold_id": 77, "result": {"operation_id": "op-1"}, "error": null
        })
    }

    #[test]
    fn a_workflow_body_reads_as_a_flow() {
        let f = Flow::from_body(&body("withdrawal", "completed"), Some(1_000)).unwrap();
        assert_eq!(f.kind, FlowKind::Withdrawal);
        assert_eq!((f.id, f.user), (5, 9));
        assert_eq!(f.amount, Decimal::new(1250, 2));
        assert_eq!(f.hold, Some((77, 1_000)));
        assert_eq!(f.credit.as_deref(), Some("op-1"));
        assert!(f.ended_well());
        // No expiry read: no hold to check against.
        assert_eq!(
            Flow::from_body(&body("withdrawal", "completed"), None)
                .unwrap()
                .hold,
            None
        );
        assert_eq!(Flow::from_body(&body("payout", "completed"), None), None);
    }

    #[test]
    fn only_the_ends_a_fault_may_leave_are_well() {
        let ended = |kind, status| Flow::from_body(&body(kind, status), None).unwrap();
        assert!(ended("withdrawal", "compensated").ended_well());
        assert!(ended("deposit", "rejected").ended_well());
        assert!(ended("deposit", "completed").ended_well());
        assert!(!ended("withdrawal", "failed").ended_well());
        assert!(!ended("withdrawal", "rejected").ended_well());
        assert!(!ended("deposit", "compensated").ended_well());
        assert!(!ended("withdrawal", "running").ended_well());
        assert!(!ended("deposit", "awaiting_review").ended_well());
        assert!(is_final("failed") && !is_final("awaiting_payout"));
    }
}
