//! The trade cooldown: per user and symbol, a minimum time between two
//! orders, checked in the order's own transaction so that it holds across
//! server instances.

use infra::entities::trade_cooldown as cooldown;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Query};
use sea_orm::{ConnectionTrait, DatabaseTransaction, EntityTrait};

use crate::clock::now_ms;
use crate::error::{DomainError, DomainResult};
use crate::trading::rules::Symbol;

/// Records this order's time for (user, symbol), or refuses it when the last
/// order is less than `window_ms` old. One conditional upsert: on PostgreSQL
/// the row lock it takes makes a racing second order wait and then see the
/// first, so two requests on two server processes can never both pass; on
/// SQLite writers are serialized anyway. It runs in the order's transaction,
/// under the wallet lock, so a refused order records nothing.
pub async fn check_cooldown(
    txn: &DatabaseTransaction,
    user_id: i64,
    symbol: &Symbol,
    window_ms: u64,
) -> DomainResult<()> {
    let at = now_ms();
    let window = i64::try_from(window_ms).unwrap_or(i64::MAX);
    let mut insert = Query::insert();
    insert
        .into_table(cooldown::Entity)
        .columns([
            cooldown::Column::UserId,
            cooldown::Column::Symbol,
            cooldown::Column::LastOrderMs,
        ])
        .values([user_id.into(), symbol.as_str().into(), at.into()])
        .map_err(DomainError::unexpected)?
        .on_conflict(
            OnConflict::columns([cooldown::Column::UserId, cooldown::Column::Symbol])
                .update_column(cooldown::Column::LastOrderMs)
                .action_and_where(
                    Expr::col((cooldown::Entity, cooldown::Column::LastOrderMs))
                        .lte(at.saturating_sub(window)),
                )
                .to_owned(),
        )
        .returning_col(cooldown::Column::LastOrderMs);
    if txn.query_one(&insert).await?.is_some() {
        return Ok(());
    }
    let last = cooldown::Entity::find_by_id((user_id, symbol.as_str().to_owned()))
        .one(txn)
        .await?
        .map_or(at, |c| c.last_order_ms);
    let wait = Ord::max(last.saturating_add(window).saturating_sub(at), 1);
    Err(DomainError::CooldownActive {
        symbol: symbol.as_str().to_owned(),
        retry_after_ms: u64::try_from(wait).unwrap_or(1),
    })
}
