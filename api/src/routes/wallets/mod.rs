pub mod body;

use std::sync::Arc;

use domain::ledger::wallets::{Deposit, Withdrawal};
use poem::Request;
use poem::web::Data;
use poem_openapi::OpenApi;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;

use crate::auth::{Auth, Role};
use crate::error::Errors;
use crate::replay::Stored;
use crate::routes::shared::{IdempotencyKey, LockTokenHeader, WalletKind};
use crate::routes::{ApiTags, BACK_OFFICE, Idempotent, fence, parse_amount};
use crate::state::AppState;
use body::{
    DepositRequest, JournalPage, Operation, Transfer, TransferRequest, Wallet, WithdrawRequest,
};

#[derive(Default)]
pub struct WalletsApi;

/// The error statuses each operation can answer.
pub mod status {
    crate::statuses! {
        ListWallets: 400, 401, 403, 404, 405, 429, 500, 503;
        Deposit: 400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 500, 503;
        Withdraw: 400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 500, 503;
        Transfer: 400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 500, 503;
        ListTransactions: 400, 401, 403, 404, 405, 429, 500, 503;
    }
}

#[OpenApi]
impl WalletsApi {
    /// The user's wallets. Roles: the user itself, service, admin.
    #[oai(
        path = "/api/v1/users/:id/wallets",
        method = "get",
        operation_id = "list_wallets",
        tag = "ApiTags::Wallets"
    )]
    async fn list_wallets(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        id: Path<i64>,
    ) -> Result<Json<Vec<Wallet>>, Errors<status::ListWallets>> {
        auth.0.require_self_or(id.0, BACK_OFFICE)?;
        let wallets = state.ledger.wallets(id.0).await?;
        Ok(Json(wallets.iter().map(Wallet::from).collect()))
    }

    /// Credit a deposit. Roles: service, admin. Requires `Idempotency-Key`.
    #[oai(
        path = "/api/v1/wallets/deposit",
        method = "post",
        operation_id = "deposit",
        tag = "ApiTags::Wallets"
    )]
    async fn deposit(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        req: &Request,
        #[oai(name = "Idempotency-Key")] key: Header<IdempotencyKey>,
        body: Json<DepositRequest>,
    ) -> Result<Stored<Operation, 200>, Errors<status::Deposit>> {
        auth.0.require(BACK_OFFICE)?;
        let cmd = Deposit {
            user_id: body.user_id,
            wallet: body.wallet.into(),
            amount: parse_amount("amount", &body.amount)?,
            payment_method: body.payment_method.clone(),
            reference: body.reference.clone(),
        };
        Ok(Idempotent::new(&auth.0, req, &key, &body.0)
            .execute(&state.ledger, &cmd)
            .await?)
    }

    /// Withdraw at most the free margin (`balance - margin - held`); 422
    /// `insufficient_funds` otherwise. Roles: the user itself, service, admin.
    /// Requires `Idempotency-Key`.
    #[oai(
        path = "/api/v1/wallets/withdraw",
        method = "post",
        operation_id = "withdraw",
        tag = "ApiTags::Wallets"
    )]
    async fn withdraw(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        req: &Request,
        #[oai(name = "Idempotency-Key")] key: Header<IdempotencyKey>,
        /// `<lock_id>:<fencing_token>`: run only while that lock is the
        /// caller's and holds that token (else 409 `lock_lost`).
        #[oai(name = "Lock-Token")]
        lock_token: Header<Option<LockTokenHeader>>,
        body: Json<WithdrawRequest>,
    ) -> Result<Stored<Operation, 200>, Errors<status::Withdraw>> {
        auth.0.require_self_or(body.user_id, BACK_OFFICE)?;
        let cmd = Withdrawal {
            user_id: body.user_id,
            wallet: body.wallet.into(),
            amount: parse_amount("amount", &body.amount)?,
            destination: body.destination.clone(),
            fence: fence(&auth.0, lock_token.0.as_ref())?,
        };
        Ok(Idempotent::new(&auth.0, req, &key, &body.0)
            .execute(&state.ledger, &cmd)
            .await?)
    }

    /// Move money between two users' wallets of the same kind, atomically.
    /// 422 `insufficient_funds`, 422 `same_account`, 404 unknown recipient.
    /// Roles: the sender itself, admin. Requires `Idempotency-Key`.
    #[oai(
        path = "/api/v1/wallets/transfer",
        method = "post",
        operation_id = "transfer",
        tag = "ApiTags::Wallets"
    )]
    async fn transfer(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        req: &Request,
        #[oai(name = "Idempotency-Key")] key: Header<IdempotencyKey>,
        /// `<lock_id>:<fencing_token>`: run only while that lock is the
        /// caller's and holds that token (else 409 `lock_lost`).
        #[oai(name = "Lock-Token")]
        lock_token: Header<Option<LockTokenHeader>>,
        body: Json<TransferRequest>,
    ) -> Result<Stored<Transfer, 200>, Errors<status::Transfer>> {
        auth.0.require_self_or(body.from_user_id, &[Role::Admin])?;
        let cmd = domain::ledger::wallets::TransferRequest {
            from_user_id: body.from_user_id,
            to_user_id: body.to_user_id,
            wallet: body.wallet.into(),
            amount: parse_amount("amount", &body.amount)?,
            fence: fence(&auth.0, lock_token.0.as_ref())?,
        };
        Ok(Idempotent::new(&auth.0, req, &key, &body.0)
            .execute(&state.ledger, &cmd)
            .await?)
    }

    /// The user's journal, newest first. `before_id` is the cursor from
    /// `next_before_id`. Roles: the user itself, service, admin.
    #[oai(
        path = "/api/v1/users/:id/transactions",
        method = "get",
        operation_id = "list_transactions",
        tag = "ApiTags::Wallets"
    )]
    async fn list_transactions(
        &self,
        auth: Auth,
        state: Data<&Arc<AppState>>,
        id: Path<i64>,
        /// 1 to 500, default 50.
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))]
        limit: Query<Option<u64>>,
        /// Only entries with an id below this.
        before_id: Query<Option<i64>>,
        /// Only this wallet's entries.
        wallet: Query<Option<WalletKind>>,
    ) -> Result<Json<JournalPage>, Errors<status::ListTransactions>> {
        auth.0.require_self_or(id.0, BACK_OFFICE)?;
        let page = state
            .ledger
            .journal(
                id.0,
                wallet.0.map(Into::into),
                limit.0.unwrap_or(50),
                before_id.0,
            )
            .await?;
        Ok(Json(JournalPage::from(&page)))
    }
}
