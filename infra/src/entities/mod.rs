//! sea-orm entities, one per table. Models never leave `domain`/`infra`.

pub mod idempotency_key;
pub mod journal_entry;
pub mod user;
pub mod wallet;
