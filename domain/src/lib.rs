//! Business rules and services. Nothing here knows HTTP.
//!
//! Where is the deposit rule? `wallets.rs`. Margin, fees and P&L?
//! `trading.rs` (arithmetic) and `orders.rs` (under the lock). Bonuses and
//! commissions? `referrals.rs`. The money-moving primitive? `financial.rs`.
//! Retries and locks? `tx.rs`. Exactly-once? `idempotency.rs`.

pub mod db_error;
pub mod error;
pub mod financial;
pub mod idempotency;
pub mod money;
pub mod orders;
pub mod prices;
pub mod reconcile;
pub mod referrals;
pub mod sql;
pub mod trading;
pub mod tx;
pub mod users;
pub mod wallets;

use std::sync::Arc;

pub use error::{DomainError, DomainResult};
use infra::{Config, Database};
use rust_decimal::Decimal;

use crate::idempotency::IdempotencyService;
use crate::money::Rate;
use crate::referrals::ReferralRules;
use crate::trading::TradingRules;
use crate::tx::{RetryPolicy, TransactionService};

/// The services the API calls, built once from the configuration.
#[derive(Clone, Debug)]
pub struct Ledger {
    pub db: Database,
    pub tx: TransactionService,
    pub idempotency: IdempotencyService,
    /// Opening balance of new demo wallets, minor units.
    pub demo_balance: i64,
    pub trading: Arc<TradingRules>,
    pub referral: Arc<ReferralRules>,
    /// Commissions settled per transaction.
    pub settle_batch: u64,
}

fn setting_units(name: &'static str, value: Decimal) -> DomainResult<i64> {
    money::to_units(value).map_err(|e| DomainError::invalid(name, e))
}

fn setting_rate(name: &'static str, value: Decimal) -> DomainResult<Rate> {
    Rate::from_decimal(value).map_err(|e| DomainError::invalid(name, e))
}

impl Ledger {
    pub fn new(db: Database, config: &Config) -> DomainResult<Self> {
        let (trading, referrals) = (&config.trading, &config.referrals);
        let tx = TransactionService::new(db.clone(), RetryPolicy::from_config(&config.retry));
        let idempotency =
            IdempotencyService::new(tx.clone(), config.idempotency.ttl, config.idempotency.lease);
        let rates = referrals
            .commission_rates
            .iter()
            .map(|&r| setting_rate("referral_commission_rates", r))
            .collect::<DomainResult<Vec<_>>>()?;
        Ok(Self {
            db,
            tx,
            idempotency,
            demo_balance: setting_units("demo_balance", trading.demo_balance)?,
            trading: Arc::new(TradingRules {
                fee_rate: setting_rate("trade_fee_rate", trading.fee_rate)?,
                max_leverage: trading.max_leverage,
                cooldown_ms: u64::try_from(trading.cooldown.as_millis()).unwrap_or(u64::MAX),
                min_notional: setting_units("trade_min_notional", trading.min_notional)?,
            }),
            referral: Arc::new(ReferralRules {
                referrer_bonus: setting_units("referrer_bonus", referrals.referrer_bonus)?,
                referee_bonus: setting_units("referee_bonus", referrals.referee_bonus)?,
                rates,
            }),
            settle_batch: u64::from(referrals.settle_batch.max(1)),
        })
    }
}
