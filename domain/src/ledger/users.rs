//! Users: creation (with both wallets and, when a referral code is given, the
//! referrer link) and reads.

use chrono::{DateTime, Utc};
use infra::entities::{user, wallet};
use rand::Rng;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder, Set,
    TransactionTrait,
};
use uuid::Uuid;
use validator::ValidateEmail;

use crate::clock::now;
use crate::db_error::{DbErrorKind, classify};
use crate::error::{DomainError, DomainResult};
use crate::ledger::financial::{self, Deltas, Leg, Posting};
use crate::ledger::journal::{GENESIS_HASH, kinds};
use crate::ledger::wallets::{WalletKind, WalletView, wallet_views};
use crate::trading::referrals;
use crate::{Command, Ledger};

/// A syntactically valid email address, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(input: &str) -> DomainResult<Self> {
        if input.len() > 320 || !input.validate_email() {
            return Err(DomainError::invalid(
                "email",
                "must be a valid email address",
            ));
        }
        Ok(Self(input.to_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
const CODE_LEN: usize = 8;

/// A referral code as typed by a person: 4 to 32 letters and digits,
/// compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferralCode(String);

impl ReferralCode {
    pub fn parse(input: &str) -> DomainResult<Self> {
        if !(4..=32).contains(&input.len()) || !input.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(DomainError::invalid(
                "referral_code",
                "must be 4 to 32 letters or digits",
            ));
        }
        Ok(Self(input.to_ascii_uppercase()))
    }

    fn generate() -> Self {
        let mut rng = rand::rng();
        Self(
            (0..CODE_LEN)
                .filter_map(|_| {
                    let i = rng.random_range(0..CODE_ALPHABET.len());
                    CODE_ALPHABET.get(i).copied().map(char::from)
                })
                .collect(),
        )
    }
}

/// Twelve digits, the first one never zero.
fn generate_account_number() -> String {
    let n: u64 = rand::rng().random_range(100_000_000_000..1_000_000_000_000);
    n.to_string()
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub email: Email,
    pub referral_code: Option<ReferralCode>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserView {
    pub id: i64,
    pub email: String,
    pub account_number: String,
    pub referral_code: String,
    pub referrer_id: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub wallets: Vec<WalletView>,
}

fn view(u: user::Model, wallets: Vec<WalletView>) -> UserView {
    UserView {
        id: u.id,
        email: u.email,
        account_number: u.account_number,
        referral_code: u.referral_code,
        referrer_id: u.referrer_id,
        created_at: u.created_at,
        wallets,
    }
}

/// A new user row with freshly generated account number and referral code
/// (either may collide with an existing one: the insert then fails with a
/// unique violation and the caller retries).
fn new_user(email: &Email, referrer_id: Option<i64>, at: DateTime<Utc>) -> user::ActiveModel {
    user::ActiveModel {
        email: Set(email.0.clone()),
        account_number: Set(generate_account_number()),
        referral_code: Set(ReferralCode::generate().0),
        referrer_id: Set(referrer_id),
        created_at: Set(at),
        ..Default::default()
    }
}

/// A new, empty wallet row: nothing journaled yet, so its chain starts at
/// the genesis hash.
pub fn new_wallet(user_id: i64, kind: WalletKind, at: DateTime<Utc>) -> wallet::ActiveModel {
    wallet::ActiveModel {
        user_id: Set(user_id),
        kind: Set(kind.as_str().into()),
        currency: Set("USD".into()),
        balance: Set(0),
        margin: Set(0),
        held: Set(0),
        profit: Set(0),
        version: Set(0),
        last_hash: Set(GENESIS_HASH.into()),
        created_at: Set(at),
        updated_at: Set(at),
        ..Default::default()
    }
}

impl Command for NewUser {
    type Output = UserView;
    const NAME: &'static str = "create_user";

    async fn execute(&self, ledger: &Ledger, txn: &DatabaseTransaction) -> DomainResult<UserView> {
        create_user(txn, ledger, self).await
    }
}

/// Creates the user, a `live` wallet at zero and a `demo` wallet holding the
/// demo balance (journaled as its opening balance), in the caller's
/// transaction. With a referrer, the signup bonuses are paid in the same
/// transaction.
async fn create_user(
    txn: &DatabaseTransaction,
    ledger: &Ledger,
    cmd: &NewUser,
) -> DomainResult<UserView> {
    let demo_balance = ledger.demo_balance;
    let referrer_id = match &cmd.referral_code {
        Some(code) => Some(
            user::Entity::find()
                .filter(user::Column::ReferralCode.eq(code.0.clone()))
                .one(txn)
                .await?
                .ok_or(DomainError::UnknownReferralCode)?
                .id,
        ),
        None => None,
    };
    let at = now();
    // Each attempt runs in a savepoint, so a collision of the generated codes
    // can be retried without aborting the transaction (PostgreSQL); the email
    // is the one unique column a person chooses, so its collision is final.
    let mut created = None;
    for _ in 0..8 {
        let savepoint = txn.begin().await?;
        let inserted = user::Entity::insert(new_user(&cmd.email, referrer_id, at))
            .exec_with_returning(&savepoint)
            .await;
        match inserted {
            Ok(u) => {
                savepoint.commit().await?;
                created = Some(u);
                break;
            }
            Err(e) => {
                savepoint.rollback().await?;
                match classify(&e) {
                    DbErrorKind::UniqueViolation(Some(c)) if c.contains("email") => {
                        return Err(DomainError::DuplicateEmail);
                    }
                    DbErrorKind::UniqueViolation(_) => continue,
                    _ => return Err(e.into()),
                }
            }
        }
    }
    let user =
        created.ok_or_else(|| DomainError::unexpected("could not allocate unique user codes"))?;
    let mut wallets = wallet::Entity::insert_many([
        new_wallet(user.id, WalletKind::Live, at),
        new_wallet(user.id, WalletKind::Demo, at),
    ])
    .exec_with_returning(txn)
    .await?;
    wallets.sort_by_key(|w| w.id);
    if demo_balance > 0
        && let Some(demo) = wallets
            .iter_mut()
            .find(|w| w.kind == WalletKind::Demo.as_str())
    {
        financial::post(
            txn,
            Uuid::new_v4(),
            vec![Posting::new(
                demo,
                Leg::new(kinds::OPENING_BALANCE, Deltas::balance(demo_balance)),
            )],
        )
        .await?;
    }
    if let Some(referrer_id) = referrer_id
        && let Some(live) = wallets
            .iter_mut()
            .find(|w| w.kind == WalletKind::Live.as_str())
    {
        referrals::pay_signup_bonuses(txn, &ledger.referral, live, referrer_id).await?;
    }
    Ok(view(user, wallets.iter().map(WalletView::from).collect()))
}

/// Bulk creation for load tests: one user per email, each with a `live`
/// wallet credited `live_balance` (journaled as a deposit) and a `demo`
/// wallet holding `demo_balance` (its opening balance). Three multi-row
/// inserts and the postings, in the caller's transaction. A collision of the
/// generated codes fails the batch with a unique violation; the caller
/// retries it whole. Returns the new users' ids.
pub async fn create_funded_users(
    txn: &DatabaseTransaction,
    emails: &[Email],
    live_balance: i64,
    demo_balance: i64,
) -> DomainResult<Vec<i64>> {
    if emails.is_empty() {
        return Ok(Vec::new());
    }
    let at = now();
    let users = user::Entity::insert_many(emails.iter().map(|email| new_user(email, None, at)))
        .exec_with_returning(txn)
        .await?;
    let rows = users.iter().flat_map(|u| {
        [
            new_wallet(u.id, WalletKind::Live, at),
            new_wallet(u.id, WalletKind::Demo, at),
        ]
    });
    let mut wallets = wallet::Entity::insert_many(rows)
        .exec_with_returning(txn)
        .await?;
    let postings = wallets
        .iter_mut()
        .filter_map(|w| {
            let leg = if w.kind == WalletKind::Live.as_str() {
                Leg::new(kinds::DEPOSIT, Deltas::balance(live_balance))
                    .reference(Some("seed-load".into()))
            } else {
                Leg::new(kinds::OPENING_BALANCE, Deltas::balance(demo_balance))
            };
            (leg.deltas.balance > 0).then(|| Posting::new(w, leg))
        })
        .collect();
    financial::post(txn, Uuid::new_v4(), postings).await?;
    Ok(users.iter().map(|u| u.id).collect())
}

/// Refuses an unknown user with 404 (a list of an unknown user's rows is not
/// an empty page).
pub async fn require_user<C: ConnectionTrait>(conn: &C, user_id: i64) -> DomainResult<()> {
    user::Entity::find_by_id(user_id)
        .one(conn)
        .await?
        .map(|_| ())
        .ok_or(DomainError::NotFound("user"))
}

impl Ledger {
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn user(&self, user_id: i64) -> DomainResult<UserView> {
        get_user(&self.db.conn, user_id).await
    }
}

async fn get_user<C: ConnectionTrait>(conn: &C, user_id: i64) -> DomainResult<UserView> {
    let user = user::Entity::find_by_id(user_id)
        .one(conn)
        .await?
        .ok_or(DomainError::NotFound("user"))?;
    let wallets = wallet::Entity::find()
        .filter(wallet::Column::UserId.eq(user_id))
        .order_by_asc(wallet::Column::Id)
        .all(conn)
        .await?;
    Ok(view(user, wallet_views(conn, &wallets).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_validated_and_lower_cased() {
        assert_eq!(
            Email::parse("Ann@Example.COM").unwrap().as_str(),
            "ann@example.com"
        );
        for bad in [
            "",
            "ann",
            "ann@",
            "@example.com",
            "a b@example.com",
            "ann@exa mple.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(320))).is_err());
    }

    #[test]
    fn referral_codes_are_normalized() {
        assert_eq!(ReferralCode::parse("abcd1234").unwrap().0, "ABCD1234");
        assert!(ReferralCode::parse("abc").is_err());
        assert!(ReferralCode::parse("ab-cd").is_err());
        assert!(ReferralCode::parse(&"A".repeat(33)).is_err());
        let generated = ReferralCode::generate();
        assert_eq!(ReferralCode::parse(&generated.0).unwrap(), generated);
    }

    #[test]
    fn account_numbers_have_twelve_digits() {
        for _ in 0..100 {
            let n = generate_account_number();
            assert_eq!(n.len(), 12);
            assert!(n.bytes().all(|b| b.is_ascii_digit()));
        }
    }
}
