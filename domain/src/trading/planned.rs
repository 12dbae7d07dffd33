//! Orders opened and closed by a group of planned writes (group commit, see
//! `group`): what they read besides their wallets — the prices they execute
//! at, the ids of new orders, the orders to close, the uplines their fees
//! pay commissions to — read in one statement for the whole group before
//! any is planned, and the rows they write, in the group's one statement
//! with its wallets, entries and answers.
//!
//! PostgreSQL only: the ids are drawn from the orders' sequence first, so
//! that a planned order can name itself in its journal entries and its
//! answer before anything is written. An id drawn for an order that is then
//! refused is never used (a sequence has gaps anyway). An order to close is
//! read after its wallet is locked, and every close locks its order's
//! wallet first, so what is read stays true until the commit; the write is
//! still guarded by `status = 'open'`.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, LazyLock};

use infra::entities::{order, referral_commission as commission};
use sea_orm::{DatabaseTransaction, Value};

use crate::error::{DomainError, DomainResult};
use crate::locks::planned::LockNeed;
use crate::sql::{Part, Read, insert_json, json_rows};
use crate::trading::referrals::Uplines;

/// What one planned write reads besides its wallets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// The symbol whose current price it executes at.
    pub price: Option<String>,
    /// How many orders it opens (an id is drawn for each).
    pub orders: usize,
    /// The order it closes.
    pub close: Option<i64>,
    /// The user whose referral upline its fee pays commissions to.
    pub upline: Option<i64>,
    /// The lock it runs under, granted and released in the group (a trade
    /// on a signal: `locks::planned`).
    pub lock: Option<LockNeed>,
}

impl Needs {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The orders a group opens and closes, and what they read first.
#[derive(Debug, Default)]
pub struct GroupOrders {
    prices: HashMap<String, i64>,
    /// Drawn and not yet used, the next one last.
    ids: Vec<i64>,
    /// The orders to close, by id, as the closes so far left them.
    to_close: HashMap<i64, order::Model>,
    uplines: HashMap<i64, Arc<[i64]>>,
    opened: Vec<order::Model>,
    closed: Vec<order::Model>,
    commissions: Vec<commission::Model>,
}

impl GroupOrders {
    /// The reads of what the writes need, for the group's one read
    /// statement (`sql::read_together`), each a JSON document: the ids
    /// drawn, the prices by symbol, the orders to close. None when no write
    /// reads any of them.
    pub fn reads(needs: &[&Needs]) -> DomainResult<Vec<Read>> {
        let orders = |n: &&&Needs| n.price.is_some() || n.orders > 0 || n.close.is_some();
        if !needs.iter().any(|n| orders(&n)) {
            return Ok(Vec::new());
        }
        let symbols: BTreeSet<&str> = needs.iter().filter_map(|n| n.price.as_deref()).collect();
        let symbols: Vec<String> = symbols.into_iter().map(str::to_owned).collect();
        let count: usize = needs.iter().map(|n| n.orders).sum();
        let count = i32::try_from(count).map_err(DomainError::unexpected)?;
        let to_close: Vec<i64> = needs.iter().filter_map(|n| n.close).collect();
        Ok(vec![
            Read {
                sql: "SELECT json_agg(nextval(pg_get_serial_sequence('orders', 'id'))) \
                      FROM generate_series(1, ?::int)",
                values: vec![count.into()],
            },
            Read {
                sql: "SELECT json_object_agg(p.symbol, p.price) \
                      FROM unnest((SELECT ?::text[])) AS s(symbol) \
                      JOIN prices p ON p.symbol = s.symbol",
                values: vec![symbols.into()],
            },
            Read {
                sql: "SELECT json_agg(o) FROM unnest((SELECT ?::bigint[])) AS c(id) \
                     JOIN orders o ON o.id = c.id",
                values: vec![to_close.into()],
            },
        ])
    }

    /// What the writes need, from the documents `reads` asked for (in its
    /// order; none when it asked for none), and the uplines from `uplines`
    /// (read once per user and kept), in this transaction.
    pub async fn from_reads(
        txn: &DatabaseTransaction,
        uplines: &Uplines,
        needs: &[&Needs],
        docs: Vec<Option<serde_json::Value>>,
    ) -> DomainResult<Self> {
        let mut read = Self::default();
        let value = |doc: Option<serde_json::Value>| doc.unwrap_or(serde_json::Value::Null);
        match <[_; 3]>::try_from(docs) {
            Ok([ids, prices, to_close]) => {
                let (ids, prices, to_close) = (value(ids), value(prices), value(to_close));
                let parse = DomainError::unexpected;
                let ids: Option<Vec<i64>> = serde_json::from_value(ids).map_err(parse)?;
                read.ids = ids.unwrap_or_default();
                read.ids.sort_unstable_by(|a, b| b.cmp(a));
                let prices: Option<HashMap<String, i64>> =
                    serde_json::from_value(prices).map_err(parse)?;
                read.prices = prices.unwrap_or_default();
                let rows: Option<Vec<order::Model>> =
                    serde_json::from_value(to_close).map_err(parse)?;
                read.to_close = rows
                    .unwrap_or_default()
                    .into_iter()
                    .map(|o| (o.id, o))
                    .collect();
            }
            Err(docs) if docs.is_empty() => {}
            Err(_) => {
                return Err(DomainError::unexpected(
                    "the orders' reads: three documents",
                ));
            }
        }
        for user_id in needs.iter().filter_map(|n| n.upline) {
            if let Entry::Vacant(entry) = read.uplines.entry(user_id) {
                entry.insert(uplines.of(txn, user_id).await?);
            }
        }
        Ok(read)
    }

    /// The symbol's current price; `NoPrice` when none was ever set.
    pub fn price(&self, symbol: &str) -> DomainResult<i64> {
        self.prices
            .get(symbol)
            .copied()
            .ok_or_else(|| DomainError::NoPrice(symbol.to_owned()))
    }

    /// The id the next order opened will have.
    pub fn next_id(&self) -> DomainResult<i64> {
        self.ids
            .last()
            .copied()
            .ok_or_else(|| DomainError::unexpected("an order planned without an id drawn"))
    }

    /// `user_id`'s upline, level 1 first (read by `read`).
    pub fn upline(&self, user_id: i64) -> DomainResult<&[i64]> {
        self.uplines
            .get(&user_id)
            .map(|chain| &chain[..])
            .ok_or_else(|| DomainError::unexpected(format!("the upline of {user_id} was not read")))
    }

    /// Order `id` as read, or as a close earlier in the group left it;
    /// `NotFound` when there is none.
    pub fn to_close(&self, id: i64) -> DomainResult<&order::Model> {
        self.to_close.get(&id).ok_or(DomainError::NotFound("order"))
    }

    /// Adds an opened order (it takes the next id) and the commissions on
    /// its fee.
    pub fn open(
        &mut self,
        order: order::Model,
        commissions: Vec<commission::Model>,
    ) -> DomainResult<()> {
        if self.ids.pop() != Some(order.id) {
            return Err(DomainError::unexpected(format!(
                "order {} is not the next id drawn",
                order.id
            )));
        }
        self.opened.push(order);
        self.commissions.extend(commissions);
        Ok(())
    }

    /// Adds a closed order (one read to close) and the commissions on its
    /// fee.
    pub fn close(
        &mut self,
        order: order::Model,
        commissions: Vec<commission::Model>,
    ) -> DomainResult<()> {
        let Some(read) = self.to_close.get_mut(&order.id) else {
            return Err(DomainError::unexpected(format!(
                "order {} was closed without being read",
                order.id
            )));
        };
        read.clone_from(&order);
        self.closed.push(order);
        self.commissions.extend(commissions);
        Ok(())
    }

    /// No order opened or closed.
    pub fn is_empty(&self) -> bool {
        self.opened.is_empty() && self.closed.is_empty()
    }

    /// The writes of the orders opened and closed and of their commissions,
    /// as parts of the group's one statement (`sql::run_together`), each with
    /// how many rows it must write: none when no order was opened or closed.
    /// The same text whatever their number.
    pub fn parts(&self) -> DomainResult<Vec<(Part, u64)>> {
        let mut parts = Vec::new();
        if !self.opened.is_empty() {
            let part = Part {
                sql: &ORDERS_SQL,
                values: vec![json_rows(&self.opened)?],
            };
            parts.push((part, self.opened.len() as u64));
        }
        if !self.closed.is_empty() {
            parts.push((self.closes_part()?, self.closed.len() as u64));
        }
        if !self.commissions.is_empty() {
            let part = Part {
                sql: &COMMISSIONS_SQL,
                values: vec![json_rows(&self.commissions)?],
            };
            parts.push((part, self.commissions.len() as u64));
        }
        Ok(parts)
    }
}

impl GroupOrders {
    /// The closes, as one `UPDATE` guarded by the status they were read in.
    fn closes_part(&self) -> DomainResult<Part> {
        let column = |f: fn(&order::Model) -> Option<i64>| -> DomainResult<Value> {
            let values: Option<Vec<i64>> = self.closed.iter().map(f).collect();
            values
                .map(Value::from)
                .ok_or_else(|| DomainError::unexpected("a closed order without its close"))
        };
        let at = self
            .closed
            .iter()
            .find_map(|o| o.closed_at)
            .ok_or_else(|| DomainError::unexpected("a closed order without its time"))?;
        Ok(Part {
            sql: &CLOSES_SQL,
            values: vec![
                at.into(),
                column(|o| Some(o.id))?,
                column(|o| o.close_price)?,
                column(|o| o.close_fee)?,
                column(|o| o.pnl)?,
                column(|o| o.written_off)?,
            ],
        })
    }
}

/// Closes orders still open: all of a group's at its one time.
static CLOSES_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE orders SET status = 'closed', closed_at = ?, close_price = c.close_price, \
         close_fee = c.close_fee, pnl = c.pnl, written_off = c.written_off \
         FROM unnest({}) AS c(id, close_price, close_fee, pnl, written_off) \
         WHERE orders.id = c.id AND orders.status = 'open' RETURNING 1",
        ["(SELECT ?::bigint[])"; 5].join(", ")
    )
});

/// The open orders' rows (their close columns stay null).
static ORDERS_SQL: LazyLock<String> = LazyLock::new(|| {
    insert_json(
        "orders",
        &[
            ("id", "bigint"),
            ("user_id", "bigint"),
            ("wallet_id", "bigint"),
            ("wallet_kind", "text"),
            ("symbol", "text"),
            ("side", "text"),
            ("quantity", "bigint"),
            ("leverage", "int"),
            ("status", "text"),
            ("open_price", "bigint"),
            ("margin", "bigint"),
            ("open_fee", "bigint"),
            ("opened_at", "timestamptz"),
        ],
    )
});

/// The pending commissions' rows (their ids numbered by the table).
static COMMISSIONS_SQL: LazyLock<String> = LazyLock::new(|| {
    insert_json(
        "referral_commissions",
        &[
            ("order_id", "bigint"),
            ("fee_kind", "text"),
            ("level", "int"),
            ("referrer_id", "bigint"),
            ("referee_id", "bigint"),
            ("fee", "bigint"),
            ("rate", "bigint"),
            ("amount", "bigint"),
            ("status", "text"),
            ("created_at", "timestamptz"),
        ],
    )
});

#[cfg(test)]
impl GroupOrders {
    /// What `read` would have read: these prices, these ids drawn, these
    /// uplines.
    pub(crate) fn read_as(prices: &[(&str, i64)], ids: &[i64], uplines: &[(i64, &[i64])]) -> Self {
        let mut ids = ids.to_vec();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        Self {
            prices: prices.iter().map(|&(s, p)| (s.to_owned(), p)).collect(),
            ids,
            uplines: uplines.iter().map(|&(u, c)| (u, c.into())).collect(),
            ..Self::default()
        }
    }

    /// And these orders read to be closed.
    pub(crate) fn closing(mut self, orders: Vec<order::Model>) -> Self {
        self.to_close = orders.into_iter().map(|o| (o.id, o)).collect();
        self
    }
}
