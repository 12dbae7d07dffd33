//! Orders: market orders at the current price, opened and closed under the
//! wallet lock, with their journal entries and the referral commissions on
//! their fees: statement by statement in their transaction (`execute`), or,
//! unfenced on PostgreSQL, on the books of a group of planned writes and
//! written with it (`plan`, `trading::planned`), by the same rules. The
//! arithmetic is in `trading`.

use chrono::{DateTime, Utc};
use infra::entities::{order, referral_commission as commission, wallet};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseTransaction, EntityTrait, IntoActiveModel, NotSet,
    QueryFilter,
};
use uuid::Uuid;

use crate::clock::now;
use crate::error::{DomainError, DomainResult};
use crate::group::Plan;
use crate::ledger::books::Books;
use crate::ledger::financial::{self, Deltas, Leg};
use crate::ledger::journal::kinds;
use crate::ledger::users::require_user;
use crate::ledger::wallets::{WalletKind, execute_with_user_lock};
use crate::locks::fencing::{Fence, check_optional};
use crate::money::Amount;
use crate::money::Rate;
use crate::page::{Page, newest_first};
use crate::trading::cooldown::check_cooldown;
use crate::trading::planned::{GroupOrders, Needs};
use crate::trading::prices::execution_price;
use crate::trading::referrals;
use crate::trading::rules::{self as trading, Leverage, OpenCost, Side, Symbol, TradingRules};
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
    /// The order's owner and wallet (the wallet it locks) and its symbol (the
    /// price it reads), as read before: they never change.
    pub wallet: (i64, WalletKind),
    pub symbol: String,
    /// Runs only behind this lock's fencing token.
    pub fence: Option<Fence>,
}

impl CloseOrder {
    /// The close of `order`, as read.
    pub fn of(order: &OrderView, fence: Option<Fence>) -> DomainResult<Self> {
        Ok(Self {
            order_id: order.id,
            wallet: (order.user_id, wallet_kind(order)?),
            symbol: order.symbol.clone(),
            fence,
        })
    }
}

fn wallet_kind(o: &OrderView) -> DomainResult<WalletKind> {
    WalletKind::parse(&o.wallet_kind)
        .ok_or_else(|| DomainError::unexpected(format!("order {} has no wallet kind", o.id)))
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

    /// Behind a fencing token it must check the token in the database.
    fn planned(&self) -> bool {
        self.fence.is_none()
    }

    fn needs(&self) -> Needs {
        Needs {
            price: Some(self.symbol.as_str().to_owned()),
            orders: 1,
            upline: (self.wallet == WalletKind::Live).then_some(self.user_id),
            ..Needs::default()
        }
    }

    fn plan(&self, ledger: &Ledger, plan: &mut Plan) -> DomainResult<OrderView> {
        let rules = (&*ledger.trading, &ledger.referral.rates[..]);
        self.open_planned(rules, &mut plan.books, &mut plan.orders)
    }

    async fn execute(&self, ledger: &Ledger, txn: &DatabaseTransaction) -> DomainResult<OrderView> {
        let (cmd, rules) = (self, &ledger.trading);
        check_optional(cmd.fence.as_ref(), txn).await?;
        execute_with_user_lock(txn, cmd.user_id, cmd.wallet, async |w| {
            let price = execution_price(txn, cmd.symbol.as_str()).await?;
            if rules.cooldown_ms > 0 {
                check_cooldown(txn, cmd.user_id, &cmd.symbol, rules.cooldown_ms).await?;
            }
            let cost = cmd.cost(rules, w, price)?;
            let row = cmd.row(0, w.id, price, cost, now());
            let row = order::Entity::insert(order::ActiveModel {
                id: NotSet,
                ..row.into_active_model().reset_all()
            })
            .exec_with_returning(txn)
            .await?;
            financial::perform_combined_operation(txn, w, Uuid::new_v4(), open_legs(cost, row.id))
                .await?;
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

impl OpenOrder {
    /// What it costs at `price`, checked against the wallet: the notional
    /// must reach the minimum, margin and fee must fit in the free margin
    /// (funds that holds reserve are as unavailable as margin).
    fn cost(&self, rules: &TradingRules, w: &wallet::Model, price: i64) -> DomainResult<OpenCost> {
        let cost = trading::open_cost(self.quantity, price, self.leverage.get(), rules.fee_rate);
        trading::check_notional(self.quantity, price, cost, rules)?;
        trading::check_affordable(w.balance, w.margin + w.held, cost)
    }

    /// Its row, opened at `at` (`id` 0 when the database is to number it).
    fn row(
        &self,
        id: i64,
        wallet_id: i64,
        price: i64,
        cost: OpenCost,
        at: DateTime<Utc>,
    ) -> order::Model {
        order::Model {
            id,
            user_id: self.user_id,
            wallet_id,
            wallet_kind: self.wallet.as_str().to_owned(),
            symbol: self.symbol.as_str().to_owned(),
            side: self.side.as_str().to_owned(),
            quantity: self.quantity.units(),
            leverage: i32::try_from(self.leverage.get()).unwrap_or(i32::MAX),
            status: OPEN.to_owned(),
            open_price: price,
            close_price: None,
            margin: cost.margin,
            open_fee: cost.fee,
            close_fee: None,
            pnl: None,
            written_off: None,
            opened_at: at,
            closed_at: None,
        }
    }

    /// Opens it on a group's books (`Command::plan`), as `execute` would in
    /// the database: the same checks in the same order, the same entries,
    /// the same commissions; a refused order leaves no trace.
    fn open_planned(
        &self,
        (rules, rates): (&TradingRules, &[Rate]),
        books: &mut Books,
        orders: &mut GroupOrders,
    ) -> DomainResult<OrderView> {
        let w = books
            .wallet(self.user_id, self.wallet)
            .ok_or(DomainError::NotFound("user"))?;
        let price = orders.price(self.symbol.as_str())?;
        let cost = self.cost(rules, w, price)?;
        let row = self.row(orders.next_id()?, w.id, price, cost, books.at());
        let legs = financial::changes(open_legs(cost, row.id));
        books.post((self.user_id, self.wallet), Uuid::new_v4(), &legs)?;
        let fee = (&row, referrals::OPEN_FEE, cost.fee);
        let commissions = commissions_of(books, orders, fee, rates)?;
        orders.open(row.clone(), commissions)?;
        Ok(row)
    }
}

/// The entries of an order opened: its margin held, its fee charged.
fn open_legs(cost: OpenCost, order_id: i64) -> Vec<Leg> {
    let reference = Some(format!("order:{order_id}"));
    vec![
        Leg::new(
            kinds::MARGIN_HOLD,
            Deltas {
                margin: cost.margin,
                ..Deltas::default()
            },
        )
        .reference(reference.clone()),
        Leg::new(kinds::ORDER_OPEN_FEE, Deltas::balance(-cost.fee)).reference(reference),
    ]
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

    fn wallets(&self) -> Option<Vec<(i64, WalletKind)>> {
        Some(vec![self.wallet])
    }

    /// Behind a fencing token it must check the token in the database.
    fn planned(&self) -> bool {
        self.fence.is_none()
    }

    fn needs(&self) -> Needs {
        let (user_id, kind) = self.wallet;
        Needs {
            price: Some(self.symbol.clone()),
            close: Some(self.order_id),
            upline: (kind == WalletKind::Live).then_some(user_id),
            ..Needs::default()
        }
    }

    fn plan(&self, ledger: &Ledger, plan: &mut Plan) -> DomainResult<OrderView> {
        let rules = (&*ledger.trading, &ledger.referral.rates[..]);
        self.close_planned(rules, &mut plan.books, &mut plan.orders)
    }

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
        let kind = wallet_kind(&o)?;
        let fee_rate = ledger.trading.fee_rate;
        execute_with_user_lock(txn, o.user_id, kind, async |w| {
            let price = execution_price(txn, &o.symbol).await?;
            let (closed, legs) = close_at(&o, w, price, fee_rate, now())?;
            let updated = order::Entity::update_many()
                .col_expr(order::Column::Status, Expr::value(CLOSED))
                .col_expr(order::Column::ClosePrice, Expr::value(closed.close_price))
                .col_expr(order::Column::CloseFee, Expr::value(closed.close_fee))
                .col_expr(order::Column::Pnl, Expr::value(closed.pnl))
                .col_expr(order::Column::WrittenOff, Expr::value(closed.written_off))
                .col_expr(order::Column::ClosedAt, Expr::value(closed.closed_at))
                .filter(order::Column::Id.eq(order_id))
                .filter(order::Column::Status.eq(OPEN))
                .exec(txn)
                .await?;
            if updated.rows_affected != 1 {
                return Err(DomainError::OrderNotOpen(order_id));
            }
            financial::perform_combined_operation(txn, w, Uuid::new_v4(), legs).await?;
            if kind == WalletKind::Live {
                let fee = closed.close_fee.unwrap_or_default();
                referrals::accrue(txn, ledger, o.user_id, order_id, referrals::CLOSE_FEE, fee)
                    .await?;
            }
            Ok(closed)
        })
        .await
    }
}

impl CloseOrder {
    /// Closes it on a group's books (`Command::plan`), as `execute` would in
    /// the database: the order as the group read it (or as a close earlier
    /// in the group left it), the same entries, the same commissions; a
    /// refused close leaves no trace.
    fn close_planned(
        &self,
        (rules, rates): (&TradingRules, &[Rate]),
        books: &mut Books,
        orders: &mut GroupOrders,
    ) -> DomainResult<OrderView> {
        let o = orders.to_close(self.order_id)?.clone();
        if o.status != OPEN {
            return Err(DomainError::OrderNotOpen(o.id));
        }
        let kind = wallet_kind(&o)?;
        if (o.user_id, kind) != self.wallet {
            return Err(DomainError::unexpected(format!(
                "order {} is not in the wallet it was read in",
                o.id
            )));
        }
        let w = books
            .wallet(o.user_id, kind)
            .ok_or(DomainError::NotFound("user"))?;
        let price = orders.price(&o.symbol)?;
        let (closed, legs) = close_at(&o, w, price, rules.fee_rate, books.at())?;
        books.post(self.wallet, Uuid::new_v4(), &financial::changes(legs))?;
        let fee = closed.close_fee.unwrap_or_default();
        let commissions =
            commissions_of(books, orders, (&closed, referrals::CLOSE_FEE, fee), rates)?;
        orders.close(closed.clone(), commissions)?;
        Ok(closed)
    }
}

/// The commissions a planned order's fee pays its owner's upline: none
/// from a demo wallet.
fn commissions_of(
    books: &Books,
    orders: &GroupOrders,
    (o, fee_kind, fee): (&OrderView, &'static str, i64),
    rates: &[Rate],
) -> DomainResult<Vec<commission::Model>> {
    if o.wallet_kind != WalletKind::Live.as_str() {
        return Ok(Vec::new());
    }
    let chain = orders.upline(o.user_id)?;
    Ok(referrals::commissions(
        o.user_id,
        (o.id, fee_kind),
        fee,
        chain,
        rates,
        books.at(),
    ))
}

/// Order `o` closed at `price` on wallet `w` at `at`, and the legs of its
/// entries: the margin released, the P&L to balance and profit, the close
/// fee charged, what the free balance cannot cover written off. Held funds
/// are kept out of a loss exactly like the margin of other open orders: the
/// loss takes the free balance only.
fn close_at(
    o: &OrderView,
    w: &wallet::Model,
    price: i64,
    fee_rate: Rate,
    at: DateTime<Utc>,
) -> DomainResult<(OrderView, Vec<Leg>)> {
    let side = Side::parse(&o.side)
        .ok_or_else(|| DomainError::unexpected(format!("order {} has no side", o.id)))?;
    let pnl =
        trading::pnl(side, o.quantity, o.open_price, price).ok_or(DomainError::BalanceLimit)?;
    let fee = trading::fee(o.quantity, price, fee_rate).ok_or(DomainError::BalanceLimit)?;
    let effect = trading::close_effect(w.balance, w.margin + w.held, o.margin, pnl, fee);
    let reference = Some(format!("order:{}", o.id));
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
    let closed = OrderView {
        status: CLOSED.to_owned(),
        close_price: Some(price),
        close_fee: Some(fee),
        pnl: Some(pnl),
        written_off: Some(effect.written_off),
        closed_at: Some(at),
        ..o.clone()
    };
    Ok((closed, legs))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::financial::test_wallet;
    use crate::locks::fencing::LockToken;
    use sea_orm::Value;

    const UNIT: i64 = 100_000_000;

    fn rules() -> TradingRules {
        TradingRules {
            fee_rate: Rate::from_decimal("0.001".parse().unwrap()).unwrap(),
            max_leverage: 100,
            cooldown_ms: 0,
            min_notional: UNIT / 100,
        }
    }

    fn open(wallet: WalletKind, quantity: i64) -> OpenOrder {
        OpenOrder {
            user_id: 3,
            wallet,
            symbol: Symbol::parse("BTCUSD").unwrap(),
            side: Side::Buy,
            quantity: Amount::from_units(quantity).unwrap(),
            leverage: rules().leverage(10).unwrap(),
            fence: None,
        }
    }

    /// A live and a demo wallet of user 3 with these balances.
    fn books(live: i64, demo: i64) -> Books {
        let demo = wallet::Model {
            id: 8,
            kind: "demo".into(),
            ..test_wallet(demo, 0)
        };
        Books::new(vec![test_wallet(live, 0), demo]).unwrap()
    }

    /// An order opened on a group's books follows `execute`'s rules: the
    /// cost must fit in the free margin as the books stand, the margin is
    /// held and the fee charged in two entries naming the order, the order
    /// takes the next id drawn, and a live order's fee pays its upline; a
    /// refused one leaves no trace and uses no id.
    #[test]
    fn orders_opened_on_the_books_follow_the_rules_of_the_database() {
        let rates = [
            Rate::from_decimal("0.1".parse().unwrap()).unwrap(),
            Rate::from_decimal("0.05".parse().unwrap()).unwrap(),
        ];
        let rules = rules();
        let price = 100 * UNIT;
        let mut books = books(15 * UNIT, 15 * UNIT);
        let mut orders =
            GroupOrders::read_as(&[("BTCUSD", price)], &[41, 42, 43], &[(3, &[2, 1][..])]);
        let cost = trading::open_cost(Amount::from_units(UNIT).unwrap(), price, 10, rules.fee_rate)
            .unwrap();
        assert_eq!((cost.margin, cost.fee), (10 * UNIT, UNIT / 10));

        let row = open(WalletKind::Live, UNIT)
            .open_planned((&rules, &rates), &mut books, &mut orders)
            .unwrap();
        assert_eq!(
            (row.id, row.status.as_str(), row.open_price),
            (41, OPEN, price)
        );
        assert_eq!(
            (row.margin, row.open_fee, row.wallet_id),
            (cost.margin, cost.fee, 7)
        );
        let w = books.wallet(3, WalletKind::Live).unwrap();
        assert_eq!(
            (w.balance, w.margin, w.version),
            (15 * UNIT - cost.fee, cost.margin, 1)
        );
        let entries = books.parts().unwrap().entries;
        let Some(Value::String(Some(json))) = entries.values.first() else {
            panic!("the entries are one JSON document");
        };
        let entries: Vec<serde_json::Value> = serde_json::from_str(json).unwrap();
        let kinds: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| {
                (
                    e["kind"].as_str().unwrap(),
                    e["reference"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                (kinds::MARGIN_HOLD, "order:41"),
                (kinds::ORDER_OPEN_FEE, "order:41")
            ]
        );
        let parts = orders.parts().unwrap();
        let counts: Vec<u64> = parts.iter().map(|(_, n)| *n).collect();
        assert_eq!(
            counts,
            [1, 2],
            "one order, a commission for each of two levels"
        );

        // free margin now 15 - 0.1 - 10 = 4.9: a second order costing 10.1 is
        // refused, and changes nothing
        match open(WalletKind::Live, UNIT).open_planned((&rules, &rates), &mut books, &mut orders) {
            Err(DomainError::InsufficientMargin { .. }) => {}
            other => panic!("expected insufficient margin, got {other:?}"),
        }
        assert_eq!(books.wallet(3, WalletKind::Live).unwrap().version, 1);
        assert_eq!(orders.next_id().unwrap(), 42);
        let counts: Vec<u64> = orders.parts().unwrap().iter().map(|(_, n)| *n).collect();
        assert_eq!(counts, [1, 2]);

        // a demo order pays no commission; an unknown symbol has no price
        let demo = open(WalletKind::Demo, UNIT)
            .open_planned((&rules, &rates), &mut books, &mut orders)
            .unwrap();
        assert_eq!((demo.id, demo.wallet_id), (42, 8));
        let counts: Vec<u64> = orders.parts().unwrap().iter().map(|(_, n)| *n).collect();
        assert_eq!(counts, [2, 2]);
        let unknown = OpenOrder {
            symbol: Symbol::parse("ETHUSD").unwrap(),
            ..open(WalletKind::Live, 1)
        };
        assert!(matches!(
            unknown.open_planned((&rules, &rates), &mut books, &mut orders),
            Err(DomainError::NoPrice(_))
        ));
    }

    /// A close on a group's books follows `execute`'s rules: the margin
    /// released, the P&L and the close fee booked, a live order's fee paying
    /// its upline; a second close of the same order in the group is refused
    /// as `OrderNotOpen` and leaves no trace, an order not read is unknown.
    #[test]
    fn orders_closed_on_the_books_follow_the_rules_of_the_database() {
        let rates = [Rate::from_decimal("0.2".parse().unwrap()).unwrap()];
        let rules = rules();
        let mut books = books(15 * UNIT, 0);
        let mut opening = GroupOrders::read_as(&[("BTCUSD", 100 * UNIT)], &[41], &[(3, &[2][..])]);
        let row = open(WalletKind::Live, UNIT)
            .open_planned((&rules, &rates), &mut books, &mut opening)
            .unwrap();
        // the next group: the price went up 5 %
        let mut orders = GroupOrders::read_as(&[("BTCUSD", 105 * UNIT)], &[], &[(3, &[2][..])])
            .closing(vec![row.clone()]);
        let close = CloseOrder::of(&row, None).unwrap();
        assert_eq!(close.wallets(), Some(vec![(3, WalletKind::Live)]));
        assert_eq!(
            close.needs(),
            Needs {
                price: Some("BTCUSD".into()),
                close: Some(41),
                upline: Some(3),
                ..Needs::default()
            }
        );
        let closed = close
            .close_planned((&rules, &rates), &mut books, &mut orders)
            .unwrap();
        let fee = 105 * UNIT / 1_000;
        assert_eq!(
            (
                closed.status.as_str(),
                closed.pnl,
                closed.close_fee,
                closed.written_off
            ),
            (CLOSED, Some(5 * UNIT), Some(fee), Some(0))
        );
        assert_eq!(closed.closed_at, Some(books.at()));
        let w = books.wallet(3, WalletKind::Live).unwrap();
        // 15 - 0.1 open fee + 5 - 0.105
        assert_eq!(
            (w.balance, w.margin, w.profit, w.version),
            (15 * UNIT - UNIT / 10 + 5 * UNIT - fee, 0, 5 * UNIT, 2)
        );
        let counts: Vec<u64> = orders.parts().unwrap().iter().map(|(_, n)| *n).collect();
        assert_eq!(counts, [1, 1], "one close, one level's commission");

        match close.close_planned((&rules, &rates), &mut books, &mut orders) {
            Err(DomainError::OrderNotOpen(41)) => {}
            other => panic!("expected order_not_open, got {other:?}"),
        }
        assert_eq!(books.wallet(3, WalletKind::Live).unwrap().version, 2);
        let unknown = CloseOrder {
            order_id: 99,
            ..close.clone()
        };
        assert!(matches!(
            unknown.close_planned((&rules, &rates), &mut books, &mut orders),
            Err(DomainError::NotFound("order"))
        ));
        let counts: Vec<u64> = orders.parts().unwrap().iter().map(|(_, n)| *n).collect();
        assert_eq!(counts, [1, 1]);
    }

    /// An order opened behind a fencing token checks the token in the
    /// database: it is not planned. One that is names what it reads.
    #[test]
    fn an_order_behind_a_fencing_token_is_not_planned() {
        let live = open(WalletKind::Live, UNIT);
        assert!(live.planned());
        assert_eq!(
            live.needs(),
            Needs {
                price: Some("BTCUSD".into()),
                orders: 1,
                upline: Some(3),
                close: None,
                lock: None,
            }
        );
        assert_eq!(open(WalletKind::Demo, UNIT).needs().upline, None);
        let fenced = OpenOrder {
            fence: Some(Fence {
                lock: LockToken {
                    lock_id: "lk_1".into(),
                    fencing_token: 1,
                },
                owner: "user:3".into(),
            }),
            ..live
        };
        assert!(!fenced.planned());
    }
}
