//! What the unit tests start from: a SQLite database of their own, in a
//! directory the test keeps (and removes when it drops it).

use tempfile::TempDir;

use crate::Ledger;

/// The default configuration on a SQLite file in `dir`.
pub(crate) fn config(dir: &TempDir) -> infra::Config {
    let mut config = infra::Config::default();
    config.database.url = format!("sqlite://{}/test.db", dir.path().display());
    config
}

/// The database in `dir`, connected and migrated.
pub(crate) async fn database(dir: &TempDir) -> infra::Database {
    let db = infra::Database::connect(&config(dir).database)
        .await
        .unwrap();
    db.migrate().await.unwrap();
    db
}

/// A ledger on the database in `dir`.
pub(crate) async fn ledger(dir: &TempDir) -> Ledger {
    Ledger::new(database(dir).await, &config(dir)).unwrap()
}
