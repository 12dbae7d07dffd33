//! The bank workload the faults are injected into: each client is one user
//! that deposits (as the back office), withdraws, transfers to other users
//! (so money flows both ways between every pair), and opens and closes
//! orders while a price feed moves the price. Every write carries its own
//! Idempotency-Key and is sent with that key until its answer is definite
//! (the rules of `load::retry`); some definite writes are sent once more on
//! purpose and their replay must be byte-identical.
//!
//! A client holds one keep-alive connection per server instance and moves to
//! the next instance when its connection is refused or lost, as a client
//! behind a load balancer would; the retry goes out with the same key, so
//! which instance answers does not matter.
//!
//! Hook for the scenarios still to come (locks, holds, workflows): add an
//! `Op` variant, its request in `Client::step`, and its effect on the books
//! in `Books::account`; both matches are exhaustive, so the compiler lists
//! every place that must learn the new operation.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use api::auth::Role;
use hyper::Method;
use rand::Rng;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::load::client::{Answer, Call, Connection};
use crate::load::retry::{self, Class, Next, Policy};
use crate::load::{class_of, until_definite};
use crate::token;

pub const SYMBOL: &str = "FLTUSD";

/// The money writes of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Deposit,
    Withdraw,
    Transfer,
    OpenOrder,
    CloseOrder,
}

impl Op {
    pub fn label(self) -> &'static str {
        match self {
            Self::Deposit => "deposit",
            Self::Withdraw => "withdraw",
            Self::Transfer => "transfer",
            Self::OpenOrder => "open_order",
            Self::CloseOrder => "close_order",
        }
    }
}

/// One write and what became of it.
#[derive(Debug, Clone)]
pub struct Write {
    pub op: Op,
    pub user: i64,
    /// The transfer's recipient.
    pub peer: Option<i64>,
    pub amount: Decimal,
    /// The order a close is for.
    pub order: Option<i64>,
    pub started: Instant,
    pub settled: Instant,
    pub attempts: u32,
    /// Some attempt was not definite (refused, lost, shed, 503, 409 in flight).
    pub interrupted: bool,
    /// The definite answer: status and body. `None`: never definite.
    pub answer: Option<(u16, Value)>,
    /// What the last attempt came to, for a write that stayed open.
    pub last: String,
    /// A deliberate second send of the same key answered differently.
    pub replay_mismatch: Option<String>,
}

impl Write {
    pub fn succeeded(&self) -> bool {
        self.answer
            .as_ref()
            .is_some_and(|(s, _)| (200..300).contains(s))
    }

    pub fn latency(&self) -> Duration {
        self.settled.saturating_duration_since(self.started)
    }
}

/// Attempts by how they ended, over all clients.
#[derive(Debug, Clone, Default)]
pub struct Attempts {
    pub total: u64,
    pub by_class: HashMap<Class, u64>,
}

impl Attempts {
    pub fn of(&self, class: Class) -> u64 {
        self.by_class.get(&class).copied().unwrap_or_default()
    }

    pub fn not_definite(&self) -> u64 {
        self.by_class
            .iter()
            .filter(|(c, _)| !c.is_definite())
            .map(|(_, n)| n)
            .sum()
    }

    fn merge(&mut self, other: &Attempts) {
        self.total += other.total;
        for (c, n) in &other.by_class {
            *self.by_class.entry(*c).or_default() += n;
        }
    }
}

/// How the clients behave.
#[derive(Debug, Clone)]
pub struct Mix {
    pub clients: usize,
    pub duration: Duration,
    pub think: (Duration, Duration),
    pub policy: Policy,
    /// Retry exactly when told (no jitter): every client shed or turned
    /// away in the same second comes back in the same instant.
    pub synchronized_retries: bool,
    /// Share of definite writes sent a second time with the same key.
    pub resend_share: f64,
    pub request_timeout: Duration,
}

/// A user of the workload.
#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub token: String,
}

/// Sends `call` to one instance after another until its answer is
/// definite, keeping the attempts' classes and the outage intervals seen.
pub struct Sender {
    conns: Vec<Connection>,
    current: usize,
    pub attempts: Attempts,
    pub outages: Vec<(Instant, Instant)>,
    outage_since: Option<Instant>,
    synchronized: bool,
}

/// A request's end as the sender saw it.
pub struct Outcome {
    pub answer: Option<Answer>,
    pub attempts: u32,
    pub interrupted: bool,
    pub last: String,
    pub at: Instant,
}

impl Sender {
    pub fn new(
        targets: &[SocketAddr],
        first: usize,
        timeout: Duration,
        synchronized: bool,
    ) -> Self {
        let source = IpAddr::from([0, 0, 0, 0]);
        Self {
            conns: targets
                .iter()
                .map(|t| Connection::new(source, *t, timeout))
                .collect(),
            current: first % targets.len().max(1),
            attempts: Attempts::default(),
            outages: Vec::new(),
            outage_since: None,
            synchronized,
        }
    }

    pub async fn send(&mut self, call: &Call<'_>, policy: &Policy) -> Outcome {
        let first = Instant::now();
        let mut failures = 0u32;
        let mut attempts = 0u32;
        let mut interrupted = false;
        loop {
            let sent = Instant::now();
            let Some(conn) = self.conns.get_mut(self.current) else {
                return Outcome {
                    answer: None,
                    attempts,
                    interrupted,
                    last: "no server to send to".into(),
                    at: Instant::now(),
                };
            };
            let result = conn.send(call).await;
            attempts += 1;
            let (class, retry_after, last) = match &result {
                Ok(a) => {
                    let class = class_of(a);
                    (class, a.retry_after, format!("{} {}", a.status, a.code()))
                }
                Err(t) => (retry::classify_transport(*t), None, t.label().to_owned()),
            };
            self.attempts.total += 1;
            *self.attempts.by_class.entry(class).or_default() += 1;
            // A lost connection says nothing about whether the service is up;
            // anything else that answered ends an outage.
            match (class.is_outage(), self.outage_since) {
                (true, None) => self.outage_since = Some(sent),
                (false, Some(since)) if class != Class::Lost => {
                    self.outages.push((since, sent));
                    self.outage_since = None;
                }
                _ => {}
            }
            if !class.is_definite() {
                failures += 1;
                interrupted = true;
            }
            if matches!(class, Class::ConnectRefused | Class::Lost) {
                self.current = (self.current + 1) % self.conns.len().max(1);
            }
            let jitter = if self.synchronized {
                0.0
            } else {
                rand::rng().random::<f64>()
            };
            match retry::next(
                policy,
                class,
                failures,
                retry_after,
                first.elapsed(),
                jitter,
            ) {
                Next::Done => {
                    return Outcome {
                        answer: result.ok(),
                        attempts,
                        interrupted,
                        last,
                        at: Instant::now(),
                    };
                }
                Next::RetryAfter(pause) => tokio::time::sleep(pause).await,
                Next::GiveUp => {
                    if let Some(since) = self.outage_since.take() {
                        self.outages.push((since, Instant::now()));
                    }
                    return Outcome {
                        answer: None,
                        attempts,
                        interrupted,
                        last,
                        at: Instant::now(),
                    };
                }
            }
        }
    }

    fn finish(&mut self) {
        if let Some(since) = self.outage_since.take() {
            self.outages.push((since, Instant::now()));
        }
    }
}

struct Client {
    user: User,
    service: String,
    peers: Vec<i64>,
    sender: Sender,
    mix: Mix,
    open_order: Option<i64>,
    writes: Vec<Write>,
}

fn decimal(v: &Value) -> Decimal {
    v.as_str()
        .and_then(|s| Decimal::from_str(s).ok())
        .unwrap_or_default()
}

/// A random amount in `[lo, hi]` cents.
fn cents(lo: i64, hi: i64) -> Decimal {
    Decimal::new(rand::rng().random_range(lo..=hi), 2)
}

impl Client {
    async fn write(
        &mut self,
        op: Op,
        path: &str,
        as_service: bool,
        body: Value,
        (peer, amount, order): (Option<i64>, Decimal, Option<i64>),
    ) -> Option<Value> {
        let key = uuid::Uuid::new_v4().to_string();
        let token = if as_service {
            self.service.clone()
        } else {
            self.user.token.clone()
        };
        let call = Call::post(path, &token, &key, &body);
        let started = Instant::now();
        let out = self.sender.send(&call, &self.mix.policy).await;
        let answer = out.answer.as_ref().map(|a| (a.status, a.json()));
        let mut replay_mismatch = None;
        if let Some(first) = &out.answer
            && rand::rng().random::<f64>() < self.mix.resend_share
        {
            let again = self.sender.send(&call, &self.mix.policy).await;
            replay_mismatch = match again.answer {
                Some(a) if a.status == first.status && a.body == first.body => None,
                Some(a) => Some(format!(
                    "{} {path}: first {} {}, then {} {}",
                    op.label(),
                    first.status,
                    String::from_utf8_lossy(&first.body),
                    a.status,
                    String::from_utf8_lossy(&a.body)
                )),
                None => Some(format!(
                    "{} {path}: the same key sent again got no definite answer ({})",
                    op.label(),
                    again.last
                )),
            };
        }
        let result = answer
            .as_ref()
            .filter(|(s, _)| (200..300).contains(s))
            .map(|(_, b)| b.clone());
        self.writes.push(Write {
            op,
            user: self.user.id,
            peer,
            amount,
            order,
            started,
            settled: out.at,
            attempts: out.attempts,
            interrupted: out.interrupted,
            answer,
            last: out.last,
            replay_mismatch,
        });
        result
    }

    async fn close(&mut self, order: i64) {
        // The back office may close any order; the owner its own.
        let as_service = rand::rng().random_bool(0.3);
        let path = format!("/api/v1/orders/{order}/close");
        let closed = self
            .write(
                Op::CloseOrder,
                &path,
                as_service,
                json!({}),
                (None, Decimal::ZERO, Some(order)),
            )
            .await;
        // A close that was refused (or never definite) leaves the order to
        // the end of the run, where it is closed again.
        if closed.is_some() {
            self.open_order = None;
        }
    }

    async fn step(&mut self) {
        let id = self.user.id;
        if let Some(order) = self.open_order
            && rand::rng().random_bool(0.5)
        {
            self.close(order).await;
            return;
        }
        let roll = rand::rng().random_range(0..100);
        let op = match roll {
            0..30 => Op::Deposit,
            30..55 => Op::Withdraw,
            55..80 => Op::Transfer,
            _ if self.open_order.is_none() => Op::OpenOrder,
            _ => Op::Deposit,
        };
        match op {
            Op::Deposit => {
                let amount = cents(100, 5_000);
                let body = json!({"user_id": id, "amount": amount.to_string(), "wallet": "live", "payment_method": "card"});
                self.write(
                    op,
                    "/api/v1/wallets/deposit",
                    true,
                    body,
                    (None, amount, None),
                )
                .await;
            }
            Op::Withdraw => {
                // Now and then more than the wallet holds: a refusal must
                // change nothing, retried or not.
                let amount = cents(100, 8_000);
                let body = json!({"user_id": id, "amount": amount.to_string(), "wallet": "live"});
                self.write(
                    op,
                    "/api/v1/wallets/withdraw",
                    false,
                    body,
                    (None, amount, None),
                )
                .await;
            }
            Op::Transfer => {
                let peer = self.peers[rand::rng().random_range(0..self.peers.len())];
                let amount = cents(50, 3_000);
                let body = json!({"from_user_id": id, "to_user_id": peer, "amount": amount.to_string(), "wallet": "live"});
                self.write(
                    op,
                    "/api/v1/wallets/transfer",
                    false,
                    body,
                    (Some(peer), amount, None),
                )
                .await;
            }
            Op::OpenOrder => {
                let quantity = Decimal::new(rand::rng().random_range(1..=20), 1);
                let side = if rand::rng().random_bool(0.5) {
                    "buy"
                } else {
                    "sell"
                };
                let body = json!({"user_id": id, "symbol": SYMBOL, "side": side, "quantity": quantity.to_string(), "leverage": 10, "wallet": "live"});
                if let Some(order) = self
                    .write(op, "/api/v1/orders", false, body, (None, quantity, None))
                    .await
                {
                    self.open_order = order["id"].as_i64();
                }
            }
            Op::CloseOrder => {}
        }
    }

    async fn think(&self) {
        let (min, max) = self.mix.think;
        let pause = if max > min {
            rand::rng().random_range(min..=max)
        } else {
            min
        };
        tokio::time::sleep(pause).await;
    }
}

/// What the clients did.
#[derive(Debug, Default)]
pub struct Run {
    pub writes: Vec<Write>,
    pub attempts: Attempts,
    pub outages: Vec<(Instant, Instant)>,
    /// Orders still open at the end because every close was refused or
    /// never definite.
    pub left_open: Vec<i64>,
}

/// Runs the clients against `targets` for `mix.duration`; every client
/// closes its open order before it stops.
pub async fn run(targets: &[SocketAddr], users: &[User], mix: &Mix) -> Run {
    let service = token("backoffice", Role::Service);
    let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
    let deadline = Instant::now() + mix.duration;
    let handles: Vec<_> = users
        .iter()
        .enumerate()
        .take(mix.clients)
        .map(|(i, user)| {
            let mut client = Client {
                user: user.clone(),
                service: service.clone(),
                peers: ids.iter().copied().filter(|&p| p != user.id).collect(),
                sender: Sender::new(targets, i, mix.request_timeout, mix.synchronized_retries),
                mix: mix.clone(),
                open_order: None,
                writes: Vec::new(),
            };
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    client.step().await;
                    client.think().await;
                }
                if let Some(order) = client.open_order {
                    client.close(order).await;
                }
                client.sender.finish();
                client
            })
        })
        .collect();
    let mut run = Run::default();
    for handle in handles {
        if let Ok(client) = handle.await {
            run.writes.extend(client.writes);
            run.attempts.merge(&client.sender.attempts);
            run.outages.extend(client.sender.outages);
            run.left_open.extend(client.open_order);
        }
    }
    run
}

/// Moves the price now and then until `stop`, so that closes book profits
/// and losses. A PUT of a price is idempotent by nature: sent again as is.
pub async fn price_feed(targets: Vec<SocketAddr>, stop: Arc<AtomicBool>) {
    let service = token("backoffice", Role::Service);
    let mut sender = Sender::new(&targets, 0, Duration::from_secs(10), false);
    let policy = Policy {
        bound: Duration::from_secs(5),
        ..Policy::default()
    };
    while !stop.load(Ordering::Relaxed) {
        let price = Decimal::new(rand::rng().random_range(9_000..=11_000), 2);
        let call = Call {
            method: Method::PUT,
            path: format!("/api/v1/prices/{SYMBOL}"),
            token: Some(&service),
            key: None,
            body: Some(json!({ "price": price.to_string() }).to_string().into()),
        };
        let _ = sender.send(&call, &policy).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// One request on a fixed target until definite (set-up and final reads).
pub async fn request(
    target: SocketAddr,
    call: &Call<'_>,
    policy: &Policy,
) -> Result<Answer, String> {
    let mut conn = Connection::new(IpAddr::from([0, 0, 0, 0]), target, Duration::from_secs(30));
    let mut last = String::new();
    let settled = until_definite(&mut conn, call, policy, |a| {
        last = match a.result {
            Ok(answer) => format!("{} {}", answer.status, answer.code()),
            Err(t) => t.label().to_owned(),
        };
    })
    .await;
    settled
        .answer
        .ok_or_else(|| format!("{} {}: no definite answer ({last})", call.method, call.path))
}

/// Creates `n` users and deposits `opening` into each live wallet.
pub async fn create_users(
    target: SocketAddr,
    n: usize,
    opening: Decimal,
    policy: &Policy,
) -> Result<Vec<User>, String> {
    let service = token("backoffice", Role::Service);
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut users = Vec::with_capacity(n);
    for i in 0..n {
        let key = uuid::Uuid::new_v4().to_string();
        let body = json!({ "email": format!("fault-{run}-{i}@example.com") });
        let created = request(
            target,
            &Call::post("/api/v1/users", &service, &key, &body),
            policy,
        )
        .await?;
        let id = created.json()["id"]
            .as_i64()
            .ok_or_else(|| format!("user not created: {} {:?}", created.status, created.body))?;
        let key = uuid::Uuid::new_v4().to_string();
        let body = json!({ "user_id": id, "amount": opening.to_string(), "wallet": "live" });
        let funded = request(
            target,
            &Call::post("/api/v1/wallets/deposit", &service, &key, &body),
            policy,
        )
        .await?;
        if funded.status != 200 {
            return Err(format!("funding user {id}: {}", funded.status));
        }
        users.push(User {
            id,
            token: token(&id.to_string(), Role::User),
        });
    }
    Ok(users)
}

/// A live wallet as the API reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wallet {
    pub balance: Decimal,
    pub margin: Decimal,
}

/// The users' live wallets, read through the API with the admin token.
pub async fn wallets(
    target: SocketAddr,
    users: &[i64],
    policy: &Policy,
) -> Result<HashMap<i64, Wallet>, String> {
    let admin = token("root", Role::Admin);
    let mut out = HashMap::new();
    for &id in users {
        let call = Call::get(format!("/api/v1/users/{id}/wallets"), Some(&admin));
        let answer = request(target, &call, policy).await?;
        let body = answer.json();
        let live = body
            .as_array()
            .and_then(|ws| ws.iter().find(|w| w["kind"] == "live"))
            .ok_or_else(|| format!("user {id}: no live wallet in {body}"))?;
        out.insert(
            id,
            Wallet {
                balance: decimal(&live["balance"]),
                margin: decimal(&live["margin"]),
            },
        );
    }
    Ok(out)
}

/// The generator's own ledger: what every user's live wallet must hold,
/// from the definite answers alone, and the totals of the sum invariant.
#[derive(Debug, Clone, Default)]
pub struct Books {
    pub wallets: HashMap<i64, Wallet>,
    pub deposited: Decimal,
    pub withdrawn: Decimal,
    /// Fees, P&L and write-offs: what orders did to balances.
    pub orders_effect: Decimal,
}

impl Books {
    pub fn new(opening: &HashMap<i64, Wallet>) -> Self {
        Self {
            wallets: opening.clone(),
            ..Self::default()
        }
    }

    fn wallet(&mut self, user: i64) -> &mut Wallet {
        self.wallets.entry(user).or_default()
    }

    /// The effect of one successful write, from its answer.
    pub fn account(&mut self, w: &Write) {
        let Some((status, body)) = &w.answer else {
            return;
        };
        if !(200..300).contains(status) {
            return;
        }
        match w.op {
            Op::Deposit => {
                self.wallet(w.user).balance += w.amount;
                self.deposited += w.amount;
            }
            Op::Withdraw => {
                self.wallet(w.user).balance -= w.amount;
                self.withdrawn += w.amount;
            }
            Op::Transfer => {
                self.wallet(w.user).balance -= w.amount;
                if let Some(peer) = w.peer {
                    self.wallet(peer).balance += w.amount;
                }
            }
            Op::OpenOrder => {
                let fee = decimal(&body["open_fee"]);
                let wallet = self.wallet(w.user);
                wallet.balance -= fee;
                wallet.margin += decimal(&body["margin"]);
                self.orders_effect -= fee;
            }
            Op::CloseOrder => {
                let effect = decimal(&body["pnl"]) - decimal(&body["close_fee"])
                    + decimal(&body["written_off"]);
                let wallet = self.wallet(w.user);
                wallet.balance += effect;
                wallet.margin -= decimal(&body["margin"]);
                self.orders_effect += effect;
            }
        }
    }
}
