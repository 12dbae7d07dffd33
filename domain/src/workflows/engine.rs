//! The workers: each claims a runnable workflow (a lease, see `store`),
//! runs its steps until it must wait (a review, a manual payout, a retry's
//! backoff, an open breaker) or ends, then gives the lease up.
//!
//! - A ledger step (hold, capture, credit, and the void that compensates a
//!   hold) runs in one transaction with its checkpoint, guarded by the
//!   lease: exactly once.
//! - The payout records its attempt first, then calls the provider outside
//!   any transaction, then records the answer. A crash between the two
//!   leaves the attempt recorded and the answer not: the next owner calls
//!   again with the same key, and the provider answers what it did.
//! - A final failure compensates the done steps in reverse; running out of
//!   attempts with the outcome still unknown stops the workflow `failed`
//!   (the hold stays: paying out twice or not at all is for a person to
//!   decide, with the payout result route or a retry).

use std::time::{Duration, Instant};

use infra::entities::workflow;
use infra::metrics::metrics;
use infra::payout::{PayoutAnswer, PayoutRequest};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::Command;
use crate::clock::now_ms;
use crate::error::{DomainError, DomainResult};
use crate::ledger::holds::{self, Ending};
use crate::ledger::wallets::{Deposit, WalletKind};
use crate::money::{Amount, format_units};
use crate::tx::retry_delay;
use crate::workflows::model::{Phase, StepName, StepStatus, WorkflowKind, WorkflowStatus};
use crate::workflows::store::{self, Lease, Patch, StepChange};
use crate::workflows::{WorkflowService, corrupt, withdrawal_hold};

/// What a worker does after a step.
enum Next {
    /// Run the workflow's next step now.
    Continue,
    /// The workflow waits or ended; its lease was given up.
    Stop,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn finished(kind: WorkflowKind, status: WorkflowStatus) {
    metrics()
        .workflows
        .finished
        .with_label_values(&[kind.as_str(), status.as_str()])
        .inc();
}

fn step_metric(step: StepName, outcome: &str) {
    metrics()
        .workflows
        .steps
        .with_label_values(&[step.as_str(), outcome])
        .inc();
}

impl WorkflowService {
    /// Starts the configured number of workers.
    pub fn spawn_workers(&self) -> Vec<JoinHandle<()>> {
        (0..self.rules.workers)
            .map(|n| {
                let service = self.clone();
                tokio::spawn(async move { service.work(n).await })
            })
            .collect()
    }

    async fn work(self, n: usize) {
        let owner = format!("{}-{n}", self.instance);
        loop {
            match self.run_one(&owner).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(worker = %owner, error = %e, "workflow worker pass failed")
                }
            }
            // Nothing runnable: wait for this process's own new work, or
            // poll for other instances' and for retries coming due.
            let _ = tokio::time::timeout(self.rules.poll, self.wake.notified()).await;
        }
    }

    /// Claims one runnable workflow and runs it as far as it goes. `false`
    /// when there was none.
    pub async fn run_one(&self, owner: &str) -> DomainResult<bool> {
        let lease_ms = millis(self.rules.lease);
        let claimed = self
            .ledger
            .tx
            .execute_with_retry("workflow_claim", |txn| async move {
                store::claim(&txn, owner, lease_ms).await
            })
            .await?;
        let Some(lease) = claimed else {
            return Ok(false);
        };
        if lease.took_over {
            tracing::info!(workflow = lease.id, worker = %owner, "resuming a workflow whose lease lapsed");
            self.took_over();
        }
        match self.drive(&lease).await {
            Ok(()) | Err(DomainError::LeaseLost(_)) => {}
            Err(e) => {
                tracing::warn!(workflow = lease.id, error = %e, "workflow step failed; retried later");
                // Give it up for a while: a transient failure (the database)
                // is retried after a pause, by whichever worker comes first.
                let pause = now_ms().saturating_add(millis(self.rules.poll));
                let _ = self
                    .write(
                        &lease,
                        Patch {
                            next_run_at_ms: Some(pause),
                            release: true,
                            ..Patch::default()
                        },
                    )
                    .await;
            }
        }
        Ok(true)
    }

    /// A guarded write of the workflow row alone.
    async fn write(&self, lease: &Lease, patch: Patch) -> DomainResult<()> {
        self.ledger
            .tx
            .execute_with_retry("workflow_checkpoint", |txn| {
                let patch = patch.clone();
                async move { store::leased(&txn, lease, patch).await }
            })
            .await
    }

    /// One checkpoint of the workflow its worker holds by `lease`: the
    /// workflow's guarded change (which also locks its row until commit),
    /// then step `position`'s, in one transaction. Returns the step's
    /// attempts.
    async fn checkpoint(
        &self,
        lease: &Lease,
        position: i32,
        change: StepChange,
        patch: Patch,
    ) -> DomainResult<i32> {
        self.ledger
            .tx
            .execute_with_retry("workflow_checkpoint", |txn| {
                let (change, patch) = (change.clone(), patch.clone());
                async move {
                    store::leased(&txn, lease, patch).await?;
                    store::change_step(&txn, lease.id, position, change).await
                }
            })
            .await
    }

    async fn drive(&self, lease: &Lease) -> DomainResult<()> {
        loop {
            let row = store::find(&self.ledger.db.conn, lease.id).await?;
            if row.generation != lease.generation {
                return Err(DomainError::LeaseLost(lease.id));
            }
            let (kind, status, phase) = store::states(&row)?;
            if status != WorkflowStatus::Running {
                return self
                    .write(
                        lease,
                        Patch {
                            release: true,
                            ..Patch::default()
                        },
                    )
                    .await;
            }
            let next = match phase {
                Phase::Forward => self.forward(lease, &row, kind).await?,
                Phase::Compensate => self.compensate(lease, &row, kind).await?,
            };
            if let Next::Stop = next {
                return Ok(());
            }
        }
    }

    async fn forward(
        &self,
        lease: &Lease,
        row: &workflow::Model,
        kind: WorkflowKind,
    ) -> DomainResult<Next> {
        let at = usize::try_from(row.step).unwrap_or(usize::MAX);
        let Some(step) = kind.steps().get(at).copied() else {
            // Every step done.
            return self.end(lease, kind, WorkflowStatus::Completed, None).await;
        };
        match step {
            StepName::Payout => self.payout(lease, row).await,
            StepName::Compliance => {
                // Reached only by a retried review: wait for the reviewer.
                self.write(
                    lease,
                    Patch {
                        status: Some(WorkflowStatus::AwaitingReview),
                        release: true,
                        ..Patch::default()
                    },
                )
                .await?;
                Ok(Next::Stop)
            }
            StepName::Hold | StepName::Capture | StepName::Credit => {
                self.ledger_step(lease, row, kind, step).await
            }
        }
    }

    /// A money step and its checkpoint, in one transaction.
    async fn ledger_step(
        &self,
        lease: &Lease,
        row: &workflow::Model,
        kind: WorkflowKind,
        step: StepName,
    ) -> DomainResult<Next> {
        let ledger = &self.ledger;
        let wallet =
            WalletKind::parse(&row.wallet_kind).ok_or_else(|| corrupt("wallet", row.id))?;
        let amount = Amount::from_units(row.amount).map_err(|_| corrupt("amount", row.id))?;
        let last = usize::try_from(row.step).unwrap_or(usize::MAX) + 1 == kind.steps().len();
        let outcome = ledger
            .tx
            .execute_with_retry("workflow_step", |txn| async move {
                // The guard first: it also locks the row until commit.
                store::leased(&txn, lease, Patch::default()).await?;
                let result = match step {
                    StepName::Hold => {
                        let hold = withdrawal_hold(row.id, row.user_id, wallet, amount)?
                            .execute(ledger, &txn)
                            .await;
                        hold.map(|h| (None, Some(h.id)))
                    }
                    StepName::Capture => {
                        let hold_id = row.hold_id.ok_or_else(|| corrupt("hold", row.id))?;
                        let capture = holds::finish(&txn, hold_id, Ending::Capture(None)).await;
                        capture.map(|h| {
                            let mut result = store_result(row);
                            if let Some(fields) = result.as_object_mut() {
                                fields.insert(
                                    "captured".into(),
                                    json!(format_units(h.captured_amount)),
                                );
                            }
                            (Some(result), None)
                        })
                    }
                    StepName::Credit => {
                        let params: serde_json::Value = serde_json::from_str(&row.params)
                            .map_err(|_| corrupt("params", row.id))?;
                        let text =
                            |k: &str| params.get(k).and_then(|v| v.as_str()).map(str::to_owned);
                        Deposit {
                            user_id: row.user_id,
                            wallet,
                            amount,
                            payment_method: text("payment_method"),
                            reference: text("reference"),
                        }
                        .execute(ledger, &txn)
                        .await
                        .map(|op| {
                            let result = json!({
                                "credited": format_units(op.amount),
                                "operation_id": op.operation_id,
                            });
                            (Some(result), None)
                        })
                    }
                    StepName::Payout | StepName::Compliance => {
                        return Err(DomainError::unexpected("not a ledger step"));
                    }
                };
                let (result, hold_id) = match result {
                    Ok(done) => done,
                    // Refused (the hold ended, the user is gone…): nothing
                    // moved; the workflow stops for an admin.
                    Err(e) if e.is_refusal() => return Ok(Err(e.to_string())),
                    Err(e) => return Err(e),
                };
                store::change_step(&txn, row.id, row.step, StepChange::ran()).await?;
                store::leased(
                    &txn,
                    lease,
                    Patch {
                        step: Some(row.step + 1),
                        result,
                        hold_id,
                        status: last.then_some(WorkflowStatus::Completed),
                        release: last,
                        ..Patch::default()
                    },
                )
                .await?;
                Ok(Ok(()))
            })
            .await?;
        match outcome {
            Ok(()) => {
                step_metric(step, "done");
                if last {
                    finished(kind, WorkflowStatus::Completed);
                    return Ok(Next::Stop);
                }
                Ok(Next::Continue)
            }
            Err(reason) => {
                step_metric(step, "failed");
                self.stop_failed(lease, row, kind, &reason).await
            }
        }
    }

    /// Stops the workflow `failed` at its current step (dead letter).
    async fn stop_failed(
        &self,
        lease: &Lease,
        row: &workflow::Model,
        kind: WorkflowKind,
        reason: &str,
    ) -> DomainResult<Next> {
        let stop = Patch {
            status: Some(WorkflowStatus::Failed),
            error: Some(reason.to_owned()),
            release: true,
            ..Patch::default()
        };
        self.checkpoint(lease, row.step, StepChange::failed(reason), stop)
            .await?;
        tracing::warn!(workflow = row.id, reason, "workflow stopped failed");
        finished(kind, WorkflowStatus::Failed);
        Ok(Next::Stop)
    }

    async fn end(
        &self,
        lease: &Lease,
        kind: WorkflowKind,
        status: WorkflowStatus,
        error: Option<String>,
    ) -> DomainResult<Next> {
        self.write(
            lease,
            Patch {
                status: Some(status),
                error: error.clone(),
                release: true,
                ..Patch::default()
            },
        )
        .await?;
        finished(kind, status);
        Ok(Next::Stop)
    }

    /// The payout step: manual (wait for the result route), or one call to
    /// the provider through its breaker.
    async fn payout(&self, lease: &Lease, row: &workflow::Model) -> DomainResult<Next> {
        let position = row.step;
        let Some(client) = &self.payout else {
            let wait = Patch {
                status: Some(WorkflowStatus::AwaitingPayout),
                release: true,
                ..Patch::default()
            };
            self.checkpoint(lease, position, StepChange::started(), wait)
                .await?;
            return Ok(Next::Stop);
        };
        let provider = client.provider();
        let calls = &metrics().workflows.provider_calls;
        let breaker = self.breakers.get(&provider);
        if let Err(wait) = breaker.allow(Instant::now()) {
            calls.with_label_values(&[&provider, "refused_open"]).inc();
            let at = now_ms().saturating_add(millis(wait).max(1));
            self.write(
                lease,
                Patch {
                    next_run_at_ms: Some(at),
                    release: true,
                    ..Patch::default()
                },
            )
            .await?;
            return Ok(Next::Stop);
        }
        // The attempt is on record before the call.
        let attempts = self
            .checkpoint(lease, position, StepChange::attempt(), Patch::default())
            .await?;
        let params: serde_json::Value =
            serde_json::from_str(&row.params).map_err(|_| corrupt("params", row.id))?;
        let request = PayoutRequest {
            payout_id: row.id,
            user_id: row.user_id,
            amount: format_units(row.amount),
            currency: self.rules.payout_currency.clone(),
            destination: params
                .get("destination")
                .and_then(|d| d.as_str())
                .unwrap_or_default()
                .to_owned(),
        };
        let answer = client.send(&request).await;
        let now = Instant::now();
        match answer {
            PayoutAnswer::Sent { provider_ref } => {
                breaker.record_success();
                calls.with_label_values(&[&provider, "sent"]).inc();
                step_metric(StepName::Payout, "done");
                let next = Patch {
                    step: Some(position + 1),
                    result: Some(json!({ "provider_ref": provider_ref })),
                    ..Patch::default()
                };
                self.checkpoint(lease, position, StepChange::done(), next)
                    .await?;
                Ok(Next::Continue)
            }
            PayoutAnswer::Failed { reason } => {
                breaker.record_success();
                calls.with_label_values(&[&provider, "failed"]).inc();
                step_metric(StepName::Payout, "failed");
                let reason = format!("payout failed: {reason}");
                let undo = Patch {
                    phase: Some(Phase::Compensate),
                    error: Some(reason.clone()),
                    ..Patch::default()
                };
                self.checkpoint(lease, position, StepChange::failed(&reason), undo)
                    .await?;
                Ok(Next::Continue)
            }
            PayoutAnswer::Transient { error } => {
                breaker.record_failure(now);
                calls.with_label_values(&[&provider, "transient"]).inc();
                let attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
                if attempts >= self.rules.payout_max_attempts {
                    step_metric(StepName::Payout, "failed");
                    let reason =
                        format!("payout outcome unknown after {attempts} attempts: {error}");
                    let kind = WorkflowKind::Withdrawal;
                    return self.stop_failed(lease, row, kind, &reason).await;
                }
                step_metric(StepName::Payout, "retry");
                let delay = retry_delay(
                    self.rules.payout_retry_initial,
                    self.rules.payout_retry_max,
                    attempts,
                );
                let later = Patch {
                    next_run_at_ms: Some(now_ms().saturating_add(millis(delay))),
                    release: true,
                    ..Patch::default()
                };
                self.checkpoint(lease, position, StepChange::note(&error), later)
                    .await?;
                Ok(Next::Stop)
            }
        }
    }

    /// Undoes the last done step that has an effect (the hold: voided, in
    /// the transaction that marks it compensated); when none is left, the
    /// workflow ends `compensated`.
    async fn compensate(
        &self,
        lease: &Lease,
        row: &workflow::Model,
        kind: WorkflowKind,
    ) -> DomainResult<Next> {
        let steps = store::steps(&self.ledger.db.conn, row.id).await?;
        let undo = steps.iter().rev().find(|s| {
            s.status == StepStatus::Done.as_str()
                && StepName::parse(&s.name).is_some_and(StepName::compensable)
        });
        let Some(step) = undo else {
            return self
                .end(lease, kind, WorkflowStatus::Compensated, None)
                .await;
        };
        let position = step.position;
        let hold_id = row.hold_id;
        self.ledger
            .tx
            .execute_with_retry("workflow_compensate", |txn| async move {
                store::leased(&txn, lease, Patch::default()).await?;
                if let Some(hold_id) = hold_id {
                    match holds::finish(&txn, hold_id, Ending::Void).await {
                        // Already ended (expired): its funds are free.
                        Ok(_) | Err(DomainError::HoldNotActive { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                store::change_step(&txn, row.id, position, StepChange::compensated()).await?;
                Ok(())
            })
            .await?;
        step_metric(StepName::Hold, "compensated");
        Ok(Next::Continue)
    }

    /// Compensates, or stops `failed`, a workflow past its deadline (the
    /// recovery manager, holding it by `lease`): compensated when nothing
    /// of it may have left the ledger yet; `failed` when its payout was
    /// attempted or awaited (its outcome is unknown) or its remaining
    /// step is a credit the customer is owed.
    pub(crate) async fn expire(&self, lease: &Lease) -> DomainResult<WorkflowStatus> {
        let row = store::find(&self.ledger.db.conn, lease.id).await?;
        let (kind, status, _) = store::states(&row)?;
        let steps = store::steps(&self.ledger.db.conn, row.id).await?;
        let payout_tried = steps.iter().any(|s| {
            s.name == StepName::Payout.as_str()
                && (s.attempts > 0 || s.status != StepStatus::Pending.as_str())
        });
        let undoable = kind == WorkflowKind::Withdrawal && !payout_tried
            || status == WorkflowStatus::AwaitingReview;
        let reason = "the workflow passed its deadline".to_owned();
        if undoable {
            let undo = Patch {
                status: Some(WorkflowStatus::Running),
                phase: Some(Phase::Compensate),
                error: Some(reason.clone()),
                ..Patch::default()
            };
            // A review never held is failed; a step not started is left
            // pending.
            if status == WorkflowStatus::AwaitingReview {
                let failed = StepChange::failed(&reason);
                self.checkpoint(lease, row.step, failed, undo).await?;
            } else {
                self.write(lease, undo).await?;
            }
            loop {
                let row = store::find(&self.ledger.db.conn, lease.id).await?;
                if let Next::Stop = self.compensate(lease, &row, kind).await? {
                    return Ok(WorkflowStatus::Compensated);
                }
            }
        }
        let detail = format!("{reason}; its payout's outcome is unknown or its credit is owed");
        let next = self.stop_failed(lease, &row, kind, &detail).await;
        next.map(|_| WorkflowStatus::Failed)
    }
}

/// The workflow's result so far, as an object.
fn store_result(row: &workflow::Model) -> serde_json::Value {
    row.result
        .as_deref()
        .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| json!({}))
}
