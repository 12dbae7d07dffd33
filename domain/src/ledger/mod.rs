//! The ledger: users and their wallets, the money-moving primitive
//! (`financial`), holds on wallet funds, the hash-chained journal, and
//! reconciliation.

pub mod financial;
pub mod holds;
pub mod journal;
pub mod reconcile;
pub mod users;
pub mod wallets;
