//! The ledger: users and their wallets, the money-moving primitive
//! (`financial`) and a group commit's books kept in memory (`books`), holds on wallet funds, the hash-chained journal, and
//! reconciliation.

pub mod books;
pub mod financial;
pub mod holds;
pub mod journal;
pub mod reads;
pub mod reconcile;
pub mod users;
pub mod wallets;
