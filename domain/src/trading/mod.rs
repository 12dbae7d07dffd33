//! Trading: the price feed, market orders with margin, fees and P&L (the
//! pure arithmetic in `rules`, the use cases in `orders`), the per-symbol
//! cooldown, and referral bonuses and commissions.

pub mod cooldown;
pub mod orders;
pub mod planned;
pub mod prices;
pub mod referrals;
pub mod rules;
pub mod signals;
