//! sea-orm entities, one per table. Models never leave `domain`/`infra`.

pub mod hold;
pub mod idempotency_key;
pub mod journal_entry;
pub mod lock_fencing;
pub mod order;
pub mod price;
pub mod referral_bonus;
pub mod referral_commission;
pub mod trade_cooldown;
pub mod transaction_lock;
pub mod transaction_lock_resource;
pub mod transaction_queue;
pub mod transaction_queue_resource;
pub mod user;
pub mod wallet;
pub mod workflow;
pub mod workflow_step;
