//! The price feed: one current price per symbol, written by back-office
//! services, read by order execution.

use chrono::{DateTime, Utc};
use infra::entities::price;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ConnectionTrait, EntityTrait, Set};

use crate::Ledger;
use crate::clock::now;
use crate::error::{DomainError, DomainResult};
use crate::money::Amount;
use crate::trading::rules::Symbol;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceView {
    pub symbol: String,
    /// Minor units.
    pub price: i64,
    pub updated_at: DateTime<Utc>,
}

impl From<price::Model> for PriceView {
    fn from(p: price::Model) -> Self {
        Self {
            symbol: p.symbol,
            price: p.price,
            updated_at: p.updated_at,
        }
    }
}

impl Ledger {
    /// Sets the symbol's current price (creating the symbol on first use).
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn set_price(&self, symbol: &Symbol, price: Amount) -> DomainResult<PriceView> {
        self.tx
            .execute_with_retry("set_price", |txn| async move {
                set_price(&*txn, symbol, price).await
            })
            .await
    }

    /// The current price; 404 when none was ever set.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn price(&self, symbol: &Symbol) -> DomainResult<PriceView> {
        price::Entity::find_by_id(symbol.as_str().to_owned())
            .one(&self.db.conn)
            .await?
            .map(PriceView::from)
            .ok_or(DomainError::NotFound("symbol"))
    }
}

/// Sets the symbol's current price (creating the symbol on first use).
pub async fn set_price<C: ConnectionTrait>(
    conn: &C,
    symbol: &Symbol,
    price: Amount,
) -> DomainResult<PriceView> {
    let row = price::Entity::insert(price::ActiveModel {
        symbol: Set(symbol.as_str().to_owned()),
        price: Set(price.units()),
        updated_at: Set(now()),
    })
    .on_conflict(
        OnConflict::column(price::Column::Symbol)
            .update_columns([price::Column::Price, price::Column::UpdatedAt])
            .to_owned(),
    )
    .exec_with_returning(conn)
    .await?;
    Ok(row.into())
}

/// The price an order executes at; 422 `no_price` when none was ever set.
pub async fn execution_price<C: ConnectionTrait>(conn: &C, symbol: &str) -> DomainResult<i64> {
    price::Entity::find_by_id(symbol.to_owned())
        .one(conn)
        .await?
        .map(|p| p.price)
        .ok_or_else(|| DomainError::NoPrice(symbol.to_owned()))
}
