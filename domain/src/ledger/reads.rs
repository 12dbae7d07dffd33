//! Wallet reads that arrive while others are being read are read together
//! (`batch`): one statement for all of their users' wallets, on one pooled
//! connection taken once. A wallet read is bound by its round trips and the
//! pool's bookkeeping (taking a connection; giving it back, which sqlx
//! checks with a round trip of its own), not by its rows, so under load
//! sharing them is how reads pass the one-query-per-request cost; a lone
//! read goes at once.
//!
//! Every read of a batch was asked before the batch's statement was sent,
//! so it sees every write answered before it was asked, as a read of its
//! own would.

use std::sync::Arc;
use std::time::Duration;

use infra::metrics::metrics;
use sea_orm::DatabaseConnection;
use tokio::sync::oneshot;

use crate::batch::Batcher;
use crate::error::{DomainError, DomainResult};
use crate::ledger::wallets::{WalletView, read_wallets};

/// One user's wallets, each with the user's id.
type Wallets = Vec<(i64, WalletView)>;

struct Read {
    user_id: i64,
    reply: oneshot::Sender<DomainResult<Wallets>>,
}

/// The wallet reads waiting for, or in, a batch, and the pool they are
/// read from.
#[derive(Debug)]
pub struct WalletReads {
    batches: Arc<Batcher<Read>>,
    conn: DatabaseConnection,
}

impl WalletReads {
    pub fn new(
        conn: DatabaseConnection,
        batches: usize,
        max_size: usize,
        wait_budget: Duration,
    ) -> Self {
        Self {
            batches: Arc::new(Batcher::new(batches, max_size, wait_budget)),
            conn,
        }
    }

    /// The user's wallets, read in the next batch.
    pub async fn read(&self, user_id: i64) -> DomainResult<Wallets> {
        let ticket = self.batches.push(
            |reply| Read { user_id, reply },
            || {
                let conn = self.conn.clone();
                move |batch| {
                    let conn = conn.clone();
                    async move { read_batch(&conn, batch).await }
                }
            },
        );
        self.batches.answer(ticket).await
    }
}

/// Reads a batch's wallets in one go and answers each read with its own
/// user's; a failure answers them all.
async fn read_batch(conn: &DatabaseConnection, batch: Vec<Read>) {
    metrics().read_batch_size.observe(batch.len() as f64);
    let mut users: Vec<i64> = batch.iter().map(|r| r.user_id).collect();
    users.sort_unstable();
    users.dedup();
    match read_wallets(conn, &users).await {
        Ok(wallets) => {
            for read in batch {
                let own = wallets
                    .iter()
                    .filter(|(user_id, _)| *user_id == read.user_id)
                    .cloned()
                    .collect();
                let _ = read.reply.send(Ok(own));
            }
        }
        Err(e) => {
            for read in batch {
                let _ = read.reply.send(Err(DomainError::shared(&e)));
            }
        }
    }
}
