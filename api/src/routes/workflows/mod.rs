pub mod body;

use std::sync::Arc;

use domain::Command;
use domain::workflows::{Decide, Decision, WorkflowFilter, WorkflowView};
use poem::Request;
use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::ToJSON;

use crate::auth::{Auth, Principal, Role};
use crate::error::{ApiError, Errors};
use crate::replay::Stored;
use crate::routes::shared::{EmptyRequest, IdempotencyKey};
use crate::routes::{ApiTags, BACK_OFFICE, Idempotent, parse_amount, require_visible};
use crate::state::AppState;
use body::{
    DecisionRequest, DepositWorkflowRequest, PayoutOutcome, PayoutResultRequest, Recovery,
    WithdrawalWorkflowRequest, Workflow, WorkflowPage, WorkflowStatus, WorkflowType,
};

#[derive(Default)]
pub struct WorkflowsApi;

/// The error statuses each operation can answer.
pub mod status {
    crate::statuses! {
        StartWithdrawal: 400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 500, 503;
        StartDeposit: 400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 500, 503;
        /// No 403: another user's workflow is answered as unknown (404).
        GetWorkflow: 400, 401, 404, 405, 429, 500, 503;
        ListWorkflows: 400, 401, 403, 405, 429, 500, 503;
        Decide: 400, 401, 403, 404, 405, 409, 413, 415, 429, 500, 503;
        Recovery: 400, 401, 403, 405, 429, 500, 503;
        TriggerRecovery: 400, 401, 403, 405, 413, 415, 429, 500, 503;
    }
}

/// Starts a workflow once for this Idempotency-Key (a repeat replays the
/// first answer), then wakes the workers.
async fn start<C, B>(
    state: &AppState,
    principal: &Principal,
    req: &Request,
    key: &IdempotencyKey,
    body: &B,
    cmd: &C,
) -> Result<Stored<Workflow, 202>, ApiError>
where
    C: Command<Output = WorkflowView>,
    B: ToJSON,
{
    let started = Idempotent::new(principal, req, key, body)
        .execute(&state.ledger, cmd)
        .await?;
    state.workflows.wake();
    Ok(started)
}

/// An admin's (or the provider's) decision on workflow `id`, as asked.
struct Asked<'a, B> {
    principal: &'a Principal,
    req: &'a Request,
    /// Optional on decisions: the workflow's state already makes a repeat a
    /// 409, never a second effect; with a key, a repeat replays the first
    /// answer instead, as on any write.
    key: Option<&'a IdempotencyKey>,
    body: &'a B,
}

impl<'a, B> Asked<'a, B> {
    fn new(
        principal: &'a Principal,
        req: &'a Request,
        key: &'a Header<Option<IdempotencyKey>>,
        body: &'a B,
    ) -> Self {
        Self {
            principal,
            req,
            key: key.0.as_ref(),
            body,
        }
    }
}

/// Applies a decision, once for its Idempotency-Key when one was sent (the
/// decision and its stored answer commit together), then wakes the
/// workers.
async fn decide<B: ToJSON>(
    state: &AppState,
    asked: Asked<'_, B>,
    id: i64,
    decision: Decision,
) -> Result<Stored<Workflow, 200>, ApiError> {
    let cmd = Decide {
        workflow_id: id,
        decision,
        deadline_at_ms: state.workflows.rules.deadline_from_now(),
    };
    let decided = match asked.key {
        Some(key) => {
            Idempotent::new(asked.principal, asked.req, key, asked.body)
                .execute(&state.ledger, &cmd)
                .await?
        }
        None => Stored::fresh(&Workflow::from(&state.ledger.execute(&cmd).await?)),
    };
    state.workflows.wake();
    Ok(decided)
}

#[OpenApi]
impl WorkflowsApi {
    /// Start a withdrawal workflow: the funds are held at once (422
    /// `insufficient_funds` when the free balance cannot cover them, and
    /// nothing is created), then the workers send the payout and capture
    /// the hold; if the payout fails for good the hold is voided
    /// (compensation) and the workflow ends `compensated`. With a payout
    /// provider configured (`LEDGER_PAYOUT_URL`) the payout is POSTed to it
    /// with the workflow id as `payout_id` and `Idempotency-Key`, retried
    /// with exponential backoff and jitter on timeouts and 5xx, through a
    /// circuit breaker; without one the workflow waits in
    /// `awaiting_payout` for `POST /api/v1/workflows/{id}/payout`. An
    /// outcome still unknown after the last attempt, or at the deadline,
    /// stops it `failed` with the funds still held, for an admin. Roles: the
    /// user itself, service, admin. Requires `Idempotency-Key`.
    #[oai(
        path = "/api/v1/workflows/withdrawals",
        method = "post",
        operation_id = "start_withdrawal_workflow",
        tag = "ApiTags::Workflows"
    )]
    async fn start_withdrawal(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        req: &Request,
        #[oai(name = "Idempotency-Key")] key: Header<IdempotencyKey>,
        body: Json<WithdrawalWorkflowRequest>,
    ) -> Result<Stored<Workflow, 202>, Errors<status::StartWithdrawal>> {
        auth.0.require_self_or(body.user_id, BACK_OFFICE)?;
        let cmd = state.workflows.rules.withdrawal(
            body.user_id,
            body.wallet.into(),
            parse_amount("amount", &body.amount)?,
            body.destination.clone(),
        );
        Ok(start(&state, &auth.0, req, &key, &body.0, &cmd).await?)
    }

    /// Start a deposit workflow: the compliance check, then the credit.
    /// Amounts at or above `LEDGER_REVIEW_THRESHOLD` (default `"10000"`)
    /// wait in `awaiting_review` for `approve` or `reject`; smaller ones go
    /// straight on to the credit (journal kind `deposit`). 404 for an
    /// unknown user. Roles: service, admin. Requires `Idempotency-Key`.
    #[oai(
        path = "/api/v1/workflows/deposits",
        method = "post",
        operation_id = "start_deposit_workflow",
        tag = "ApiTags::Workflows"
    )]
    async fn start_deposit(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        req: &Request,
        #[oai(name = "Idempotency-Key")] key: Header<IdempotencyKey>,
        body: Json<DepositWorkflowRequest>,
    ) -> Result<Stored<Workflow, 202>, Errors<status::StartDeposit>> {
        auth.0.require(BACK_OFFICE)?;
        let cmd = state.workflows.rules.deposit(
            body.user_id,
            body.wallet.into(),
            parse_amount("amount", &body.amount)?,
            body.payment_method.clone(),
            body.reference.clone(),
        );
        Ok(start(&state, &auth.0, req, &key, &body.0, &cmd).await?)
    }

    /// One workflow with its steps; 404 for an unknown workflow and, to a
    /// user, for another user's. Roles: its owner, service, admin.
    #[oai(
        path = "/api/v1/workflows/:id",
        method = "get",
        operation_id = "get_workflow",
        tag = "ApiTags::Workflows"
    )]
    async fn get_workflow(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        id: Path<i64>,
    ) -> Result<Json<Workflow>, Errors<status::GetWorkflow>> {
        let workflow = state.ledger.workflow(id.0).await?;
        require_visible(&auth.0, workflow.user_id, "workflow")?;
        Ok(Json(Workflow::from(&workflow)))
    }

    /// Workflows, newest first, optionally by status, type and user;
    /// `before_id` is the cursor from `next_before_id`. Roles: service,
    /// admin.
    #[oai(
        path = "/api/v1/workflows",
        method = "get",
        operation_id = "list_workflows",
        tag = "ApiTags::Workflows"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn list_workflows(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        status: Query<Option<WorkflowStatus>>,
        #[oai(name = "type")] kind: Query<Option<WorkflowType>>,
        user_id: Query<Option<i64>>,
        /// 1 to 500, default 50.
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))]
        limit: Query<Option<u64>>,
        /// Only workflows with an id below this.
        before_id: Query<Option<i64>>,
    ) -> Result<Json<WorkflowPage>, Errors<status::ListWorkflows>> {
        auth.0.require(BACK_OFFICE)?;
        let filter = WorkflowFilter {
            status: status.0.map(Into::into),
            kind: kind.0.map(Into::into),
            user_id: user_id.0,
        };
        let page = state
            .ledger
            .workflows(&filter, limit.0.unwrap_or(50), before_id.0)
            .await?;
        Ok(Json(WorkflowPage::from(&page)))
    }

    /// Approve a deposit in review: it goes on to its credit. 409
    /// `workflow_state` (with `workflow_status`) when it is not in
    /// `awaiting_review`. Roles: admin. `Idempotency-Key` is optional: the
    /// workflow's state makes a repeat a 409, never a second credit; with a
    /// key, a repeat replays the first answer.
    #[oai(
        path = "/api/v1/workflows/:id/approve",
        method = "post",
        operation_id = "approve_workflow",
        tag = "ApiTags::Workflows"
    )]
    async fn approve(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        req: &Request,
        id: Path<i64>,
        #[oai(name = "Idempotency-Key")] key: Header<Option<IdempotencyKey>>,
        body: Json<DecisionRequest>,
    ) -> Result<Stored<Workflow, 200>, Errors<status::Decide>> {
        auth.0.require(&[Role::Admin])?;
        let asked = Asked::new(&auth.0, req, &key, &body.0);
        Ok(decide(&state, asked, id.0, Decision::Approve).await?)
    }

    /// Reject a deposit in review: it ends `rejected` with `reason` as its
    /// error, and nothing is credited. 409 `workflow_state` when it is not
    /// in `awaiting_review`. Roles: admin. `Idempotency-Key` is optional, as
    /// on approve.
    #[oai(
        path = "/api/v1/workflows/:id/reject",
        method = "post",
        operation_id = "reject_workflow",
        tag = "ApiTags::Workflows"
    )]
    async fn reject(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        req: &Request,
        id: Path<i64>,
        #[oai(name = "Idempotency-Key")] key: Header<Option<IdempotencyKey>>,
        body: Json<DecisionRequest>,
    ) -> Result<Stored<Workflow, 200>, Errors<status::Decide>> {
        auth.0.require(&[Role::Admin])?;
        let reason = body.0.reason.clone();
        let asked = Asked::new(&auth.0, req, &key, &body.0);
        Ok(decide(&state, asked, id.0, Decision::Reject { reason }).await?)
    }

    /// Report a withdrawal's payout result: `sent` goes on to the capture,
    /// `failed` voids the hold (the workflow ends `compensated`). For manual
    /// payouts (no provider configured: the workflow waits in
    /// `awaiting_payout`), or a provider's late answer while the payout is
    /// being retried or after it stopped `failed`. Any call still in flight
    /// is superseded: its answer is ignored. 409 `workflow_state` once the
    /// payout's outcome is recorded. Roles: service, admin.
    /// `Idempotency-Key` is optional, as on approve.
    #[oai(
        path = "/api/v1/workflows/:id/payout",
        method = "post",
        operation_id = "report_workflow_payout",
        tag = "ApiTags::Workflows"
    )]
    async fn payout(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        req: &Request,
        id: Path<i64>,
        #[oai(name = "Idempotency-Key")] key: Header<Option<IdempotencyKey>>,
        body: Json<PayoutResultRequest>,
    ) -> Result<Stored<Workflow, 200>, Errors<status::Decide>> {
        auth.0.require(BACK_OFFICE)?;
        let decision = Decision::Payout {
            sent: body.outcome == PayoutOutcome::Sent,
            provider_ref: body.0.provider_ref.clone(),
        };
        let asked = Asked::new(&auth.0, req, &key, &body.0);
        Ok(decide(&state, asked, id.0, decision).await?)
    }

    /// Resume a `failed` workflow from its last checkpoint: the step that
    /// stopped it runs again (a payout is re-sent with the same
    /// `Idempotency-Key`, so a provider that paid answers `sent` without
    /// paying again), with a new deadline. 409 `workflow_state` unless it is
    /// `failed`. Roles: admin. `Idempotency-Key` is optional, as on
    /// approve.
    #[oai(
        path = "/api/v1/workflows/:id/retry",
        method = "post",
        operation_id = "retry_workflow",
        tag = "ApiTags::Workflows"
    )]
    async fn retry(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        req: &Request,
        id: Path<i64>,
        #[oai(name = "Idempotency-Key")] key: Header<Option<IdempotencyKey>>,
        body: Json<EmptyRequest>,
    ) -> Result<Stored<Workflow, 200>, Errors<status::Decide>> {
        auth.0.require(&[Role::Admin])?;
        let asked = Asked::new(&auth.0, req, &key, &body.0);
        Ok(decide(&state, asked, id.0, Decision::Retry).await?)
    }

    /// The recovery manager's counts in this process since it started
    /// (a pass runs at start and every `LEDGER_RECOVERY_INTERVAL_MS`,
    /// default 10 s): workflows resumed after their worker's lease lapsed,
    /// compensated or stopped `failed` at their deadline, expired locks and
    /// holds released, stale idempotency claims deleted. Roles: admin.
    #[oai(
        path = "/api/v1/recovery/status",
        method = "get",
        operation_id = "recovery_status",
        tag = "ApiTags::Workflows"
    )]
    async fn recovery_status(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
    ) -> Result<Json<Recovery>, Errors<status::Recovery>> {
        auth.0.require(&[Role::Admin])?;
        Ok(Json(Recovery::from(&state.recovery.status())))
    }

    /// Run one recovery pass now and answer the counts after it. Roles:
    /// admin.
    #[oai(
        path = "/api/v1/recovery/trigger",
        method = "post",
        operation_id = "trigger_recovery",
        tag = "ApiTags::Workflows"
    )]
    async fn trigger_recovery(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        _body: Json<EmptyRequest>,
    ) -> Result<Json<Recovery>, Errors<status::TriggerRecovery>> {
        auth.0.require(&[Role::Admin])?;
        let status = state.recovery.run_once().await?;
        Ok(Json(Recovery::from(&status)))
    }
}
