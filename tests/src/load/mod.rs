//! The load generator behind the `loadgen` binary: virtual users, each on a
//! keep-alive connection of its own, run one of the scenarios below (the
//! same mix as the k6 scripts), and at the end the books are checked: each
//! user's live balance moved by exactly what the generator's own successful
//! operations imply.

pub mod client;
pub mod stats;

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use api::seed::{LoadFile, LoadUser};
use futures::StreamExt;
use rand::Rng;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use client::{Answer, Call, Connection};
use stats::{Recorder, Sample};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Per user: read wallets, read orders, deposit, open an order, close
    /// it, withdraw, with reads between (13 requests, 4 of them writes).
    Mixed,
    /// Deposits, each user into its own live wallet.
    Deposit,
    /// Wallet reads.
    Read,
    /// Every virtual user deposits into the first user's live wallet.
    Hot,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub scenario: Scenario,
    pub target: SocketAddr,
    /// Source addresses, used in turn by the virtual users' connections.
    pub sources: Vec<IpAddr>,
    pub vus: usize,
    /// Virtual users start evenly over this time.
    pub ramp: Duration,
    /// How long all of them run after the ramp.
    pub duration: Duration,
    /// Pause between two requests of one user, uniformly in [min, max].
    pub think: (Duration, Duration),
    /// Stop starting iterations after this many requests (all shards of a
    /// run share the bound evenly).
    pub max_requests: Option<u64>,
    pub timeout: Duration,
    /// Deposit and withdrawal amount.
    pub amount: Decimal,
    /// Order quantity (leverage 10).
    pub quantity: Decimal,
}

/// Money each user's live wallet should have gained (negative: lost).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Books {
    pub delta: HashMap<i64, Decimal>,
    /// Users with a write whose outcome stayed unknown.
    pub uncertain: Vec<i64>,
}

impl Books {
    fn add(&mut self, user: i64, amount: Decimal) {
        *self.delta.entry(user).or_default() += amount;
    }

    pub fn merge(&mut self, other: Books) {
        for (user, d) in other.delta {
            self.add(user, d);
        }
        self.uncertain.extend(other.uncertain);
    }
}

/// One user whose balance is not what its operations imply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Mismatch {
    pub user_id: i64,
    pub problem: String,
}

/// The books check: `after == before + delta` and no margin left held, for
/// every user the run touched.
pub fn check_books(
    before: &HashMap<i64, Balance>,
    after: &HashMap<i64, Balance>,
    books: &Books,
) -> Vec<Mismatch> {
    let mut problems: Vec<Mismatch> = books
        .uncertain
        .iter()
        .map(|&user_id| Mismatch {
            user_id,
            problem: "a write never got a definite answer".into(),
        })
        .collect();
    let mut users: Vec<_> = books.delta.keys().copied().collect();
    users.sort_unstable();
    for user_id in users {
        let delta = books.delta.get(&user_id).copied().unwrap_or_default();
        let problem = match (before.get(&user_id), after.get(&user_id)) {
            (Some(b), Some(a)) if a.balance != b.balance + delta => Some(format!(
                "balance {} != {} before + {} from the run",
                a.balance, b.balance, delta
            )),
            (Some(b), Some(a)) if a.margin != b.margin => Some(format!(
                "margin {} != {} before (every order was closed)",
                a.margin, b.margin
            )),
            (Some(_), Some(_)) => None,
            _ => Some("balance could not be read".into()),
        };
        if let Some(problem) = problem {
            problems.push(Mismatch { user_id, problem });
        }
    }
    problems
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    pub balance: Decimal,
    pub margin: Decimal,
}

fn decimal(v: &Value) -> Option<Decimal> {
    v.as_str().and_then(|s| Decimal::from_str(s).ok())
}

/// The live wallet in a `GET /users/{id}/wallets` body.
pub fn live_balance(body: &Value) -> Option<Balance> {
    let live = body.as_array()?.iter().find(|w| w["kind"] == "live")?;
    Some(Balance {
        balance: decimal(&live["balance"])?,
        margin: decimal(&live["margin"])?,
    })
}

/// The live balances of these users, read with the service token over
/// `concurrency` connections.
pub async fn read_balances(
    target: SocketAddr,
    source: IpAddr,
    service_token: &str,
    users: &[i64],
    concurrency: usize,
) -> HashMap<i64, Balance> {
    let chunk = users.len().div_ceil(concurrency.max(1)).max(1);
    let reads = users.chunks(chunk).map(|ids| async move {
        let mut conn = Connection::new(source, target, Duration::from_secs(30));
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            for _ in 0..3 {
                let call = Call::get(format!("/api/v1/users/{id}/wallets"), Some(service_token));
                if let Ok(answer) = conn.send(&call).await
                    && answer.status == 200
                    && let Some(b) = live_balance(&answer.json())
                {
                    out.push((id, b));
                    break;
                }
            }
        }
        out
    });
    futures::stream::iter(reads)
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Shared by the virtual users of one process.
struct Ctx {
    plan: Plan,
    file: LoadFile,
    recorder: Recorder,
    started: Instant,
    deadline: Instant,
    /// Requests left before iterations stop starting (`i64::MAX`: unbounded).
    budget: AtomicI64,
}

impl Ctx {
    fn go_on(&self) -> bool {
        Instant::now() < self.deadline && self.budget.load(Ordering::Relaxed) > 0
    }
}

/// `"200"`, `"201"` without an allocation per request.
fn success_label(status: u16) -> Cow<'static, str> {
    match status {
        200 => Cow::Borrowed("200"),
        201 => Cow::Borrowed("201"),
        other => Cow::Owned(other.to_string()),
    }
}

/// Attempts of one write, all with the same Idempotency-Key, before its
/// outcome is given up as unknown.
const WRITE_ATTEMPTS: u32 = 6;

struct Vu<'a> {
    ctx: &'a Ctx,
    conn: Connection,
    user: &'a LoadUser,
    books: Books,
}

impl Vu<'_> {
    async fn request(&mut self, op: &'static str, call: &Call<'_>) -> Option<Answer> {
        self.ctx.budget.fetch_sub(1, Ordering::Relaxed);
        let sent = Instant::now();
        let result = self.conn.send(call).await;
        let latency = sent.elapsed();
        let (outcome, failed) = match &result {
            Ok(a) if (200..300).contains(&a.status) => (success_label(a.status), false),
            Ok(a) => (Cow::Owned(format!("{} {}", a.status, a.code())), true),
            Err(t) => (Cow::Borrowed(t.label()), true),
        };
        self.ctx.recorder.record(&Sample {
            op,
            latency,
            outcome: &outcome,
            failed,
        });
        result.ok()
    }

    async fn read(&mut self, op: &'static str, path: String) {
        let user = self.user;
        self.request(op, &Call::get(path, Some(&user.token))).await;
        self.think().await;
    }

    /// A write, retried with the same key until it has a definite answer:
    /// a success (returned), or a refusal that changed nothing (`None`).
    async fn write(
        &mut self,
        op: &'static str,
        path: &str,
        token: &str,
        body: Value,
    ) -> Option<Value> {
        let key = Uuid::new_v4().to_string();
        let call = Call::post(path, token, &key, &body);
        let mut backoff = Duration::from_millis(50);
        let mut result = None;
        let mut definite = false;
        for _ in 0..WRITE_ATTEMPTS {
            match self.request(op, &call).await {
                Some(a) if (200..300).contains(&a.status) => {
                    result = Some(a.json());
                    definite = true;
                    break;
                }
                // In flight (an earlier attempt still runs) or unavailable:
                // the same key again, later.
                Some(a) if a.status == 409 || a.status >= 500 => {}
                Some(_) => {
                    definite = true;
                    break;
                }
                None => {}
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        if !definite {
            self.books.uncertain.push(self.user.id);
        }
        self.think().await;
        result
    }

    async fn think(&mut self) {
        let (min, max) = self.ctx.plan.think;
        if max.is_zero() {
            return;
        }
        let pause = if max > min {
            rand::rng().random_range(min..=max)
        } else {
            min
        };
        tokio::time::sleep(pause).await;
    }

    async fn deposit(&mut self, user_id: i64) {
        let amount = self.ctx.plan.amount;
        let body = json!({"user_id": user_id, "amount": amount.to_string(), "wallet": "live"});
        let token = self.ctx.file.service_token.clone();
        if self
            .write("deposit", "/api/v1/wallets/deposit", &token, body)
            .await
            .is_some()
        {
            self.books.add(user_id, amount);
        }
    }

    async fn iteration(&mut self, n: u64) {
        let id = self.user.id;
        match self.ctx.plan.scenario {
            Scenario::Deposit => self.deposit(id).await,
            Scenario::Hot => {
                let hot = self.ctx.file.users.first().map_or(id, |u| u.id);
                self.deposit(hot).await;
            }
            Scenario::Read => {
                self.read("read_wallets", format!("/api/v1/users/{id}/wallets"))
                    .await;
            }
            Scenario::Mixed => self.mixed(n).await,
        }
    }

    /// The mixed session. Once the run is over, a user stops at its next
    /// step, at its own pace (so the end is no burst), except that an open
    /// order is always closed first.
    async fn mixed(&mut self, n: u64) {
        macro_rules! step {
            ($e:expr) => {{
                if !self.ctx.go_on() {
                    return;
                }
                $e
            }};
        }
        let (user, ctx) = (self.user, self.ctx);
        let (id, token, symbol) = (user.id, &user.token, &ctx.file.symbol);
        let wallets = format!("/api/v1/users/{id}/wallets");
        step!(self.read("read_wallets", wallets.clone()).await);
        step!(
            self.read("read_orders", format!("/api/v1/users/{id}/orders?limit=10"))
                .await
        );
        step!(self.deposit(id).await);
        step!(self.read("read_wallets", wallets.clone()).await);
        step!(
            self.read("read_price", format!("/api/v1/prices/{symbol}"))
                .await
        );
        let order = json!({
            "user_id": id,
            "symbol": symbol,
            "side": if n.is_multiple_of(2) { "buy" } else { "sell" },
            "quantity": self.ctx.plan.quantity.to_string(),
            "leverage": 10,
            "wallet": "live",
        });
        let opened = step!(
            self.write("open_order", "/api/v1/orders", token, order)
                .await
        );
        if let Some(opened) = opened {
            self.books
                .add(id, -decimal(&opened["open_fee"]).unwrap_or_default());
            let order_id = opened["id"].as_i64().unwrap_or_default();
            if self.ctx.go_on() {
                self.read("read_order", format!("/api/v1/orders/{order_id}"))
                    .await;
                self.read("read_wallets", wallets.clone()).await;
            }
            let path = format!("/api/v1/orders/{order_id}/close");
            if let Some(closed) = self.write("close_order", &path, token, json!({})).await {
                let gained = decimal(&closed["pnl"]).unwrap_or_default()
                    - decimal(&closed["close_fee"]).unwrap_or_default()
                    + decimal(&closed["written_off"]).unwrap_or_default();
                self.books.add(id, gained);
            }
        }
        step!(
            self.read(
                "read_orders",
                format!("/api/v1/users/{id}/orders?status=closed&limit=10"),
            )
            .await
        );
        step!(
            self.read(
                "read_transactions",
                format!("/api/v1/users/{id}/transactions?limit=10"),
            )
            .await
        );
        let amount = self.ctx.plan.amount;
        let body = json!({"user_id": id, "amount": amount.to_string(), "wallet": "live"});
        let withdrawn = step!(
            self.write("withdraw", "/api/v1/wallets/withdraw", token, body)
                .await
        );
        if withdrawn.is_some() {
            self.books.add(id, -amount);
        }
        step!(self.read("read_wallets", wallets).await);
    }
}

async fn run_vu(ctx: Arc<Ctx>, index: usize, user: LoadUser) -> Books {
    let plan = &ctx.plan;
    let start_at = ctx.started + plan.ramp.mul_f64(index as f64 / plan.vus.max(1) as f64);
    tokio::time::sleep_until(start_at.into()).await;
    let source = plan.sources[index % plan.sources.len().max(1)];
    let mut vu = Vu {
        ctx: &ctx,
        conn: Connection::new(source, plan.target, plan.timeout),
        user: &user,
        books: Books::default(),
    };
    // The connection opens at the user's start and stays open: a failure
    // here is retried by the first request.
    let _ = vu.conn.open().await;
    let mut n = index as u64;
    while ctx.go_on() {
        vu.iteration(n).await;
        n += 1;
    }
    vu.books
}

/// What one process's run produced.
pub struct RunOutput {
    pub stats: stats::Stats,
    pub books: Books,
    pub elapsed: Duration,
}

/// Runs the plan with these users (virtual user `i` is `users[i % len]`).
pub async fn run(plan: Plan, file: LoadFile, users: Vec<LoadUser>) -> RunOutput {
    let started = Instant::now();
    let ctx = Arc::new(Ctx {
        deadline: started + plan.ramp + plan.duration,
        budget: AtomicI64::new(
            plan.max_requests
                .map_or(i64::MAX, |n| i64::try_from(n).unwrap_or(i64::MAX)),
        ),
        recorder: Recorder::new(started),
        started,
        plan,
        file,
    });
    let handles: Vec<_> = (0..ctx.plan.vus)
        .filter_map(|i| users.get(i % users.len().max(1)).cloned().map(|u| (i, u)))
        .map(|(i, user)| tokio::spawn(run_vu(Arc::clone(&ctx), i, user)))
        .collect();
    let mut books = Books::default();
    for handle in handles {
        if let Ok(b) = handle.await {
            books.merge(b);
        }
    }
    RunOutput {
        stats: ctx.recorder.snapshot(),
        books,
        elapsed: started.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bal(balance: i64, margin: i64) -> Balance {
        Balance {
            balance: Decimal::from(balance),
            margin: Decimal::from(margin),
        }
    }

    #[test]
    fn books_check_finds_every_kind_of_difference() {
        let before = HashMap::from([(1, bal(100, 0)), (2, bal(100, 0)), (3, bal(50, 0))]);
        let after = HashMap::from([(1, bal(105, 0)), (2, bal(99, 0)), (3, bal(50, 5))]);
        let mut books = Books::default();
        books.add(1, Decimal::from(5));
        books.add(2, Decimal::from(-2));
        books.add(3, Decimal::ZERO);
        books.add(4, Decimal::ONE);
        books.uncertain.push(7);
        let problems = check_books(&before, &after, &books);
        let users: Vec<i64> = problems.iter().map(|p| p.user_id).collect();
        assert_eq!(users, vec![7, 2, 3, 4], "{problems:?}");
        assert!(
            problems[1]
                .problem
                .contains("balance 99 != 100 before + -2")
        );
        assert!(problems[2].problem.contains("margin"));
    }

    #[test]
    fn live_balance_is_read_from_the_wallet_list() {
        let body = json!([
            {"kind": "demo", "balance": "5", "margin": "0"},
            {"kind": "live", "balance": "12.5", "margin": "1"},
        ]);
        assert_eq!(
            live_balance(&body),
            Some(Balance {
                balance: Decimal::new(125, 1),
                margin: Decimal::ONE,
            })
        );
        assert_eq!(live_balance(&json!([])), None);
    }
}
