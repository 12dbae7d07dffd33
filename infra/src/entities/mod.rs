//! sea-orm entities, one per table. Models never leave `domain`/`infra`.

pub mod hold;
pub mod idempotency_key;
pub mod journal_entry;
pub mod order;
pub mod price;
pub mod referral_bonus;
pub mod referral_commission;
pub mod trade_cooldown;
pub mod user;
pub mod wallet;
