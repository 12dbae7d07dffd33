//! Orders: market orders at the current price, opened and closed under the
//! wallet lock in one transaction each, with their journal entries and the
//! referral commissions on their fees. The arithmetic is in `trading`.

use infra::entities::order;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, Set};
use uuid::Uuid;

use crate::clock::now;
use crate::error::{DomainError, DomainResult};
use crate::ledger::financial::{self, Deltas, Leg};
use crate::ledger::journal::kinds;
use crate::ledger::users::require_user;
use crate::ledger::wallets::{WalletKind, execute_with_user_lock};
use crate::locks::fencing::{Fence, check_optional};
use crate::money::Amount;
use crate::page::{Page, newest_first};
use crate::trading::cooldown::check_cooldown;
use crate::trading::prices::execution_price;
use crate::trading::referrals;
use crate::trading::rules::{self as trading, Leverage, Side, Symbol};
use crate::{Command, Ledger};

const OPEN: &str = "open";
const CLOSED: &str = "closed";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderStatus {
    Open,
    Closed,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => OPEN,
            Self::Closed => CLOSED,
        }
    }
}

/// An order as the outside sees it: its row (`wallet_kind` names the
/// wallet). Amounts are minor units.
pub type OrderView = order::Model;

#[derive(Debug, Clone)]
pub struct OpenOrder {
    pub user_id: i64,
    pub wallet: WalletKind,
    pub symbol: Symbol,
    pub side: Side,
    pub quantity: Amount,
    pub leverage: Leverage,
    /// Runs only behind this lock's fencing token (`Lock-Token`, or the
    /// signal's lock).
    pub fence: Option<Fence>,
}

/// Closes order `order_id` at the current price.
#[derive(Debug, Clone)]
pub struct CloseOrder {
    pub order_id: i64,
    /// Runs only behind this lock's fencing token.
    pub fence: Option<Fence>,
}

/// Opens a market order at the current price. Under the wallet lock: the
/// margin and the open fee must fit in the free margin (`balance - margin -
/// held`); the margin is held,
/// the fee charged, the order written and journaled, and the fee's referral
/// commissions accrue (live wallets only: demo money earns nothing).
impl Command for OpenOrder {
    type Output = OrderView;
    const NAME: &'static str = "open_order";

    fn wallets(&self) -> Option<Vec<(i64, WalletKind)>> {
        Some(vec![(self.user_id, self.wallet)])
    }

    async fn execute(&self, ledger: &Ledger, txn: &DatabaseTransaction) -> DomainResult<OrderView> {
        let (cmd, rules) = (self, &ledger.trading);
        check_optional(cmd.fence.as_ref(), txn).await?;
        execute_with_user_lock(txn, cmd.user_id, cmd.wallet, async |w| {
            let price = execution_price(txn, cmd.symbol.as_str()).await?;
            if rules.cooldown_ms > 0 {
                check_cooldown(txn, cmd.user_id, &cmd.symbol, rules.cooldown_ms).await?;
            }
            let cost = trading::open_cost(cmd.quantity, price, cmd.leverage.get(), rules.fee_rate);
            trading::check_notional(cmd.quantity, price, cost, rules)?;
            // Funds that holds reserve are as unavailable as margin.
            let cost = trading::check_affordable(w.balance, w.margin + w.held, cost)?;
            let row = order::Entity::insert(order::ActiveModel {
                user_id: Set(cmd.user_id),
                wallet_id: Set(w.id),
                wallet_kind: Set(cmd.wallet.as_str().to_owned()),
                symbol: Set(cmd.symbol.as_str().to_owned()),
                side: Set(cmd.side.as_str().to_owned()),
                quantity: Set(cmd.quantity.units()),
                leverage: Set(i32::try_from(cmd.leverage.get()).unwrap_or(i32::MAX)),
                status: Set(OPEN.to_owned()),
                open_price: Set(price),
                close_price: Set(None),
                margin: Set(cost.margin),
                open_fee: Set(cost.fee),
                close_fee: Set(None),
                pnl: Set(None),
                written_off: Set(None),
                opened_at: Set(now()),
                closed_at: Set(None),
                ..Default::default()
            })
            .exec_with_returning(txn)
            .await?;
            let reference = Some(format!("order:{}", row.id));
            let legs = vec![
                Leg::new(
                    kinds::MARGIN_HOLD,
                    Deltas {
                        margin: cost.margin,
                        ..Deltas::default()
                    },
                )
                .reference(reference.clone()),
                Leg::new(kinds::ORDER_OPEN_FEE, Deltas::balance(-cost.fee)).reference(reference),
            ];
            financial::perform_combined_operation(txn, w, Uuid::new_v4(), legs).await?;
            if cmd.wallet == WalletKind::Live {
                referrals::accrue(
                    txn,
                    ledger,
                    cmd.user_id,
                    row.id,
                    referrals::OPEN_FEE,
                    cost.fee,
                )
                .await?;
            }
            Ok(row)
        })
        .await
    }
}

/// Closes an open order at the current price, in one step under the wallet
/// lock: the margin is released, the P&L goes to balance and profit, the
/// close fee is charged, whatever the free balance cannot cover is written
/// off, and the fee's commissions accrue. The status change is a conditional
/// `UPDATE … WHERE status = 'open'` that locks the order row: of two racing
/// closes exactly one changes it, the other gets `OrderNotOpen`.
impl Command for CloseOrder {
    type Output = OrderView;
    const NAME: &'static str = "close_order";

    async fn execute(&self, ledger: &Ledger, txn: &DatabaseTransaction) -> DomainResult<OrderView> {
        check_optional(self.fence.as_ref(), txn).await?;
        let order_id = self.order_id;
        let o = order::Entity::find_by_id(order_id)
            .one(txn)
            .await?
            .ok_or(DomainError::NotFound("order"))?;
        if o.status != OPEN {
            return Err(DomainError::OrderNotOpen(order_id));
        }
        let kind = WalletKind::parse(&o.wallet_kind).ok_or_else(|| {
            DomainError::unexpected(format!("order {order_id} has no wallet kind"))
        })?;
        let side = Side::parse(&o.side)
            .ok_or_else(|| DomainError::unexpected(format!("order {order_id} has no side")))?;
        let fee_rate = ledger.trading.fee_rate;
        execute_with_user_lock(txn, o.user_id, kind, async |w| {
            let price = execution_price(txn, &o.symbol).await?;
            let pnl = trading::pnl(side, o.quantity, o.open_price, price)
                .ok_or(DomainError::BalanceLimit)?;
            let fee = trading::fee(o.quantity, price, fee_rate).ok_or(DomainError::BalanceLimit)?;
            // Held funds are kept out of a loss exactly like the margin of
            // other open orders: the loss takes the free balance only.
            let effect = trading::close_effect(w.balance, w.margin + w.held, o.margin, pnl, fee);
            let closed_at = now();
            let updated = order::Entity::update_many()
                .col_expr(order::Column::Status, Expr::value(CLOSED))
                .col_expr(order::Column::ClosePrice, Expr::value(price))
                .col_expr(order::Column::CloseFee, Expr::value(fee))
                .col_expr(order::Column::Pnl, Expr::value(pnl))
                .col_expr(order::Column::WrittenOff, Expr::value(effect.written_off))
                .col_expr(order::Column::ClosedAt, Expr::value(closed_at))
                .filter(order::Column::Id.eq(order_id))
                .filter(order::Column::Status.eq(OPEN))
                .exec(txn)
                .await?;
            if updated.rows_affected != 1 {
                return Err(DomainError::OrderNotOpen(order_id));
            }
            let reference = Some(format!("order:{order_id}"));
            let leg = |kind, deltas| Leg::new(kind, deltas).reference(reference.clone());
            // Ordered so that every entry's values-after are valid on their own:
            // the write-off is credited before the loss it covers is charged.
            let legs = vec![
                leg(
                    kinds::MARGIN_RELEASE,
                    Deltas {
                        margin: -effect.margin_release,
                        ..Deltas::default()
                    },
                ),
                leg(kinds::LOSS_WRITE_OFF, Deltas::balance(effect.written_off)),
                leg(
                    kinds::PNL,
                    Deltas {
                        balance: effect.pnl,
                        profit: effect.pnl,
                        ..Deltas::default()
                    },
                ),
                leg(kinds::CLOSE_FEE, Deltas::balance(-effect.fee)),
            ];
            financial::perform_combined_operation(txn, w, Uuid::new_v4(), legs).await?;
            if kind == WalletKind::Live {
                referrals::accrue(txn, ledger, o.user_id, order_id, referrals::CLOSE_FEE, fee)
                    .await?;
            }
            Ok(OrderView {
                status: CLOSED.to_owned(),
                close_price: Some(price),
                close_fee: Some(fee),
                pnl: Some(pnl),
                written_off: Some(effect.written_off),
                closed_at: Some(closed_at),
                ..o.clone()
            })
        })
        .await
    }
}

impl Ledger {
    /// One order; `NotFound` when there is none.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn order(&self, id: i64) -> DomainResult<OrderView> {
        order::Entity::find_by_id(id)
            .one(&self.db.conn)
            .await?
            .ok_or(DomainError::NotFound("order"))
    }

    /// A user's orders, newest first, optionally only open or only closed ones.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn orders(
        &self,
        user_id: i64,
        status: Option<OrderStatus>,
        limit: u64,
        before_id: Option<i64>,
    ) -> DomainResult<Page<OrderView>> {
        let conn = &self.db.conn;
        require_user(conn, user_id).await?;
        let mut query = order::Entity::find().filter(order::Column::UserId.eq(user_id));
        if let Some(status) = status {
            query = query.filter(order::Column::Status.eq(status.as_str()));
        }
        newest_first(conn, query, order::Column::Id, limit, before_id, |o| o.id).await
    }
}
