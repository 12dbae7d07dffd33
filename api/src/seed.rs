//! `ledger seed-load`: users with funded wallets, a price, and a token per
//! user, written to one JSON file that load tools read (k6, `loadgen`), so
//! they need no signing code.

use std::time::Duration;

use domain::DomainError;
use domain::db_error::{DbErrorKind, classify};
use domain::ledger::users::{self, Email};
use domain::money::{Amount, format_units};
use domain::trading::rules::Symbol;
use infra::{Config, Database};
use serde::{Deserialize, Serialize};

use crate::app::BoxError;
use crate::auth::{Role, Tokens};

/// The file `seed-load` writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadFile {
    /// The symbol whose price was set, for orders.
    pub symbol: String,
    pub price: String,
    /// Each user's live balance after seeding.
    pub balance: String,
    /// A `service` token, for deposits.
    pub service_token: String,
    pub users: Vec<LoadUser>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadUser {
    pub id: i64,
    /// A `user` token for this user.
    pub token: String,
}

#[derive(Debug, Clone)]
pub struct SeedOptions {
    pub users: usize,
    pub balance: Amount,
    pub symbol: Symbol,
    pub price: Amount,
    pub token_ttl: Duration,
    /// Users per transaction.
    pub batch: usize,
}

/// Attempts per batch: a batch fails whole when a generated account number
/// or referral code collides with an existing one, and is then retried with
/// fresh codes.
const BATCH_ATTEMPTS: usize = 5;

/// Creates the users in batches (one transaction each) and reports progress
/// as `(done, total)` after each batch.
pub async fn seed_load(
    db: &Database,
    config: &Config,
    options: &SeedOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<LoadFile, BoxError> {
    let ledger = domain::Ledger::new(db.clone(), config)?;
    ledger.set_price(&options.symbol, options.price).await?;
    let run = chrono::Utc::now().timestamp_millis();
    let live = options.balance.units();
    let mut ids = Vec::with_capacity(options.users);
    let batch = options.batch.max(1);
    while ids.len() < options.users {
        let start = ids.len();
        let end = (start + batch).min(options.users);
        let emails = (start..end)
            .map(|i| Email::parse(&format!("load-{run}-{i}@load.test")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut attempt = 0;
        let created = loop {
            attempt += 1;
            let emails = &emails;
            let result = ledger
                .tx
                .execute_with_retry("seed_load", |txn| async move {
                    users::create_funded_users(&txn, emails, live, ledger.demo_balance).await
                })
                .await;
            match result {
                Err(DomainError::Database(e))
                    if attempt < BATCH_ATTEMPTS
                        && matches!(classify(&e), DbErrorKind::UniqueViolation(_)) =>
                {
                    tracing::info!(attempt, "generated code collided; retrying the batch");
                }
                other => break other?,
            }
        };
        ids.extend(created);
        progress(ids.len(), options.users);
    }
    let tokens = Tokens::new(config.server.jwt_secret.expose());
    let users = ids
        .into_iter()
        .map(|id| {
            Ok(LoadUser {
                id,
                token: tokens.mint(&id.to_string(), Role::User, options.token_ttl)?,
            })
        })
        .collect::<Result<Vec<_>, jsonwebtoken::errors::Error>>()?;
    Ok(LoadFile {
        symbol: options.symbol.as_str().to_owned(),
        price: format_units(options.price.units()),
        balance: format_units(live),
        service_token: tokens.mint("load-generator", Role::Service, options.token_ttl)?,
        users,
    })
}

/// A one-line progress bar: `[#####-----] 1500/3000 users  2.1s`.
pub fn progress_bar(done: usize, total: usize, elapsed: Duration) -> String {
    const WIDTH: usize = 30;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    format!(
        "[{}{}] {done}/{total} users  {:.1}s",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        elapsed.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_bar_fills_with_the_count() {
        let d = Duration::from_millis(2_100);
        assert_eq!(
            progress_bar(0, 10, d),
            format!("[{}] 0/10 users  2.1s", "-".repeat(30))
        );
        assert_eq!(
            progress_bar(5, 10, d),
            format!("[{}{}] 5/10 users  2.1s", "#".repeat(15), "-".repeat(15))
        );
        assert_eq!(
            progress_bar(10, 10, d),
            format!("[{}] 10/10 users  2.1s", "#".repeat(30))
        );
        assert_eq!(
            progress_bar(0, 0, d),
            format!("[{}] 0/0 users  2.1s", "#".repeat(30))
        );
    }
}
