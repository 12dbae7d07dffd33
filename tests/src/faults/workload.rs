//! The bank workload the faults are injected into: each client is one user
//! that deposits (as the back office), withdraws, transfers to other users
//! (so money flows both ways between every pair), opens and closes orders
//! while a price feed moves the price, and reserves funds with holds (short
//! ones of 0.3–1.5 s and long ones of an hour) that the back office
//! captures in full or in part, that the client voids, or that it lets
//! expire. It also starts workflows: withdrawals (hold, payout to the
//! provider, capture or void) and deposits, which at or above the review
//! threshold wait for the back office to approve or reject them; their
//! money moves in the background, so the books take their effect from the
//! final states `flows::settle` reads at the end. Every write carries its own
//! Idempotency-Key and is sent with that key until its answer is definite
//! (the rules of `load::retry`); some definite writes are sent once more on
//! purpose and their replay must be byte-identical.
//!
//! A client holds one keep-alive connection per server instance and moves to
//! the next instance when its connection is refused or lost, as a client
//! behind a load balancer would; the retry goes out with the same key, so
//! which instance answers does not matter.
//!
//! A new operation is an `Op` variant, its request in `Client::step`, and
//! its effect on the books in `Books::account`; both matches are
//! exhaustive, so the compiler lists every place that must learn it.

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

use super::flows::{Flow, FlowKind};
use crate::load::client::{Answer, Call, Connection};
use crate::load::retry::{self, Class, Next, Policy, Retrying};
use crate::load::{class_of, until_definite};
use crate::token;

pub const SYMBOL: &str = "FLTUSD";

/// The servers' `LEDGER_REVIEW_THRESHOLD`: deposit workflows of at least
/// this wait for the back office (the workload's go up to 60).
pub const REVIEW_THRESHOLD: &str = "40";

/// The money writes of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Deposit,
    Withdraw,
    Transfer,
    OpenOrder,
    CloseOrder,
    CreateHold,
    CaptureHold,
    VoidHold,
    /// `POST /api/v1/workflows/withdrawals`: the hold is placed in the
    /// request, the payout and the capture (or void) follow in the
    /// background.
    StartWithdrawal,
    /// `POST /api/v1/workflows/deposits`.
    StartDeposit,
    /// The back office decides a deposit in review (keyless: a repeat is
    /// 409 `workflow_state`).
    ApproveDeposit,
    RejectDeposit,
}

impl Op {
    /// Sent without an `Idempotency-Key`: a workflow decision is made once
    /// by the workflow's own state.
    fn keyless(self) -> bool {
        matches!(self, Self::ApproveDeposit | Self::RejectDeposit)
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Deposit => "deposit",
            Self::Withdraw => "withdraw",
            Self::Transfer => "transfer",
            Self::OpenOrder => "open_order",
            Self::CloseOrder => "close_order",
            Self::CreateHold => "create_hold",
            Self::CaptureHold => "capture_hold",
            Self::VoidHold => "void_hold",
            Self::StartWithdrawal => "start_withdrawal",
            Self::StartDeposit => "start_deposit",
            Self::ApproveDeposit => "approve_deposit",
            Self::RejectDeposit => "reject_deposit",
        }
    }
}

/// A write sent under a resource lock (`Lock-Token`), and whether its lock
/// was still the writer's when it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// Sent by the lock's current holder: it must go through.
    Current,
    /// Sent by a holder whose lock expired and was granted to another:
    /// it must be refused with 409 `lock_lost`, and change nothing.
    Stale,
}

/// What a write is about, besides its user.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subject {
    /// The transfer's recipient.
    pub peer: Option<i64>,
    pub amount: Decimal,
    /// The order a close is for.
    pub order: Option<i64>,
    /// The hold a capture or void is for.
    pub hold: Option<i64>,
    /// The workflow a decision is for.
    pub workflow: Option<i64>,
}

impl Subject {
    /// A write about `amount` alone.
    pub fn amount(amount: Decimal) -> Self {
        Self {
            amount,
            ..Self::default()
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
    /// The hold a capture or void is for.
    pub hold: Option<i64>,
    /// The workflow a decision is for.
    pub workflow: Option<i64>,
    /// Set for a write sent with a `Lock-Token`.
    pub fence: Option<Fence>,
    pub started: Instant,
    pub settled: Instant,
    /// `settled` on the wall clock (Unix ms), to compare with the expiries
    /// the server reports.
    pub settled_ms: i64,
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

/// The latest expiry (Unix ms) of the run's short holds, if any.
pub fn last_short_expiry(writes: &[Write]) -> Option<i64> {
    let long = i64::try_from(LONG_HOLD_MS).unwrap_or(i64::MAX) / 2;
    writes
        .iter()
        .filter(|w| w.op == Op::CreateHold && w.succeeded())
        .filter_map(|w| w.answer.as_ref())
        .filter_map(|(_, body)| {
            Some((unix_ms(&body["created_at"])?, unix_ms(&body["expires_at"])?))
        })
        .filter(|(made, expires)| expires - made < long)
        .map(|(_, expires)| expires)
        .max()
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
        let mut retrying = Retrying::start();
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
            match retrying.after(policy, class, retry_after, jitter) {
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

/// Removes one of `items`, any one, and returns it; `None` when empty.
fn take_any<T>(items: &mut Vec<T>) -> Option<T> {
    if items.is_empty() {
        return None;
    }
    Some(items.swap_remove(rand::rng().random_range(0..items.len())))
}

/// Whose token a write is sent with.
#[derive(Debug, Clone, Copy)]
enum Who {
    Owner,
    Service,
    Admin,
}

struct Client {
    user: User,
    service: String,
    admin: String,
    peers: Vec<i64>,
    sender: Sender,
    mix: Mix,
    open_order: Option<i64>,
    /// Holds this client made and has not tried to end yet.
    holds: Vec<i64>,
    /// Deposit workflows of this client waiting in review.
    reviews: Vec<i64>,
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

/// The back office with probability `service`, else the owner.
fn owner_or_service(service: f64) -> Who {
    if rand::rng().random_bool(service) {
        Who::Service
    } else {
        Who::Owner
    }
}

/// An RFC 3339 time of an answer as Unix milliseconds.
pub fn unix_ms(v: &Value) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The wall clock in Unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A short hold lives 0.3–1.5 s, so that many expire while the run goes on
/// (and some while a fault lasts); a long one an hour, so that it is still
/// active when the run ends.
pub const SHORT_HOLD_MS: (u64, u64) = (300, 1_500);
pub const LONG_HOLD_MS: u64 = 3_600_000;

impl Client {
    async fn write(
        &mut self,
        op: Op,
        path: &str,
        who: Who,
        body: Value,
        on: Subject,
    ) -> Option<Value> {
        let key = uuid::Uuid::new_v4().to_string();
        let token = match who {
            Who::Owner => self.user.token.clone(),
            Who::Service => self.service.clone(),
            Who::Admin => self.admin.clone(),
        };
        let call = if op.keyless() {
            Call::post_without_key(path, &token, &body)
        } else {
            Call::post(path, &token, &key, &body)
        };
        let started = Instant::now();
        let out = self.sender.send(&call, &self.mix.policy).await;
        let answer = out.answer.as_ref().map(|a| (a.status, a.json()));
        let mut replay_mismatch = None;
        // A keyless decision sent again is refused by design (409): only
        // keyed writes replay.
        if let Some(first) = &out.answer
            && !op.keyless()
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
            peer: on.peer,
            amount: on.amount,
            order: on.order,
            hold: on.hold,
            workflow: on.workflow,
            fence: None,
            started,
            settled: out.at,
            settled_ms: now_ms() - i64::try_from(out.at.elapsed().as_millis()).unwrap_or(0),
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
        let who = owner_or_service(0.3);
        let path = format!("/api/v1/orders/{order}/close");
        let closed = self
            .write(
                Op::CloseOrder,
                &path,
                who,
                json!({}),
                Subject {
                    order: Some(order),
                    ..Subject::default()
                },
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
            0..22 => Op::Deposit,
            22..37 => Op::Withdraw,
            37..52 => Op::Transfer,
            52..66 if self.open_order.is_none() => Op::OpenOrder,
            52..66 => Op::Deposit,
            66..76 => Op::CreateHold,
            76..86 if self.holds.is_empty() => Op::CreateHold,
            // A capture or a void; which one is decided below.
            76..86 => Op::CaptureHold,
            86..93 => Op::StartWithdrawal,
            93..97 if !self.reviews.is_empty() => Op::ApproveDeposit,
            // An approval or a rejection when one is in review; which one
            // is decided below.
            _ => Op::StartDeposit,
        };
        match op {
            Op::Deposit => {
                let amount = cents(100, 5_000);
                let body = json!({"user_id": id, "amount": amount.to_string(), "wallet": "live", "payment_method": "card"});
                let on = Subject::amount(amount);
                self.write(op, "/api/v1/wallets/deposit", Who::Service, body, on)
                    .await;
            }
            Op::Withdraw => {
                // Now and then more than the wallet holds: a refusal must
                // change nothing, retried or not.
                let amount = cents(100, 8_000);
                let body = json!({"user_id": id, "amount": amount.to_string(), "wallet": "live"});
                let on = Subject::amount(amount);
                self.write(op, "/api/v1/wallets/withdraw", Who::Owner, body, on)
                    .await;
            }
            Op::Transfer => {
                let peer = self.peers[rand::rng().random_range(0..self.peers.len())];
                let amount = cents(50, 3_000);
                let body = json!({"from_user_id": id, "to_user_id": peer, "amount": amount.to_string(), "wallet": "live"});
                self.write(
                    op,
                    "/api/v1/wallets/transfer",
                    Who::Owner,
                    body,
                    Subject {
                        peer: Some(peer),
                        amount,
                        ..Subject::default()
                    },
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
                let on = Subject::amount(quantity);
                if let Some(order) = self.write(op, "/api/v1/orders", Who::Owner, body, on).await {
                    self.open_order = order["id"].as_i64();
                }
            }
            Op::CreateHold => {
                // Now and then more than is free: refused, nothing held.
                let amount = cents(100, 6_000);
                let ttl = if rand::rng().random_bool(0.5) {
                    rand::rng().random_range(SHORT_HOLD_MS.0..=SHORT_HOLD_MS.1)
                } else {
                    LONG_HOLD_MS
                };
                let body = json!({"user_id": id, "wallet": "live", "amount": amount.to_string(), "ttl_ms": ttl});
                let on = Subject::amount(amount);
                if let Some(hold) = self.write(op, "/api/v1/holds", Who::Owner, body, on).await
                    && let Some(hold) = hold["id"].as_i64()
                {
                    self.holds.push(hold);
                }
            }
            Op::CaptureHold | Op::VoidHold => self.end_hold().await,
            Op::StartWithdrawal => {
                // Now and then more than is free: refused, nothing held,
                // no workflow.
                let amount = cents(100, 6_000);
                let body = json!({"user_id": id, "wallet": "live", "amount": amount.to_string(), "destination": format!("acct-{id}")});
                let on = Subject::amount(amount);
                self.write(op, "/api/v1/workflows/withdrawals", Who::Owner, body, on)
                    .await;
            }
            Op::StartDeposit => {
                // Amounts on both sides of the review threshold
                // (`REVIEW_THRESHOLD`).
                let amount = cents(100, 6_000);
                let reference = format!("fault-{}", uuid::Uuid::new_v4().simple());
                let body = json!({"user_id": id, "wallet": "live", "amount": amount.to_string(), "payment_method": "bank", "reference": reference});
                let on = Subject::amount(amount);
                if let Some(flow) = self
                    .write(op, "/api/v1/workflows/deposits", Who::Service, body, on)
                    .await
                    && flow["status"] == "awaiting_review"
                    && let Some(flow) = flow["id"].as_i64()
                {
                    self.reviews.push(flow);
                }
            }
            Op::ApproveDeposit | Op::RejectDeposit => self.decide().await,
            Op::CloseOrder => {}
        }
    }

    /// The back office decides one of this client's deposits in review:
    /// mostly approves it, sometimes rejects it.
    async fn decide(&mut self) {
        let Some(flow) = take_any(&mut self.reviews) else {
            return;
        };
        let (op, verb) = if rand::rng().random_bool(0.7) {
            (Op::ApproveDeposit, "approve")
        } else {
            (Op::RejectDeposit, "reject")
        };
        let path = format!("/api/v1/workflows/{flow}/{verb}");
        let on = Subject {
            workflow: Some(flow),
            ..Subject::default()
        };
        self.write(op, &path, Who::Admin, json!({}), on).await;
    }

    /// Ends one of this client's holds, once: the back office captures all
    /// of it or part of it, or the owner or the back office voids it. A
    /// short hold may have expired by now: then the answer must be 409
    /// `hold_not_active` (`expired`), and the check holds it to that.
    async fn end_hold(&mut self) {
        let Some(hold) = take_any(&mut self.holds) else {
            return;
        };
        let on = Subject {
            hold: Some(hold),
            ..Subject::default()
        };
        let how = rand::rng().random_range(0..10);
        match how {
            0..4 => {
                let path = format!("/api/v1/holds/{hold}/capture");
                self.write(Op::CaptureHold, &path, Who::Service, json!({}), on)
                    .await;
            }
            4..7 => {
                // A cent up to all of it (the books look the amount up).
                let part = cents(1, 100);
                let path = format!("/api/v1/holds/{hold}/capture");
                let on = Subject { amount: part, ..on };
                self.write(
                    Op::CaptureHold,
                    &path,
                    Who::Service,
                    json!({"amount": part.to_string()}),
                    on,
                )
                .await;
            }
            _ => {
                let path = format!("/api/v1/holds/{hold}/void");
                self.write(Op::VoidHold, &path, owner_or_service(0.3), json!({}), on)
                    .await;
            }
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
    let admin = token("root", Role::Admin);
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
                admin: admin.clone(),
                peers: ids.iter().copied().filter(|&p| p != user.id).collect(),
                sender: Sender::new(targets, i, mix.request_timeout, mix.synchronized_retries),
                mix: mix.clone(),
                open_order: None,
                holds: Vec::new(),
                reviews: Vec::new(),
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
            lock_token: None,
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
    /// Reserved by active, unexpired holds.
    pub held: Decimal,
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
                held: decimal(&live["held"]),
            },
        );
    }
    Ok(out)
}

/// How a hold ended, as the answers tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Captured: this much left the wallet, the rest was released.
    Captured(Decimal),
    Voided,
}

/// A hold as the answers tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldBook {
    pub user: i64,
    pub amount: Decimal,
    pub expires_at_ms: i64,
    /// `None`: neither captured nor voided; it ends by expiring.
    pub ended: Option<Ending>,
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
    /// What captures took out of wallets.
    pub captured: Decimal,
    /// Every hold an answer reported, by id.
    pub holds: HashMap<i64, HoldBook>,
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

    /// Sets every wallet's `held` to what the holds still reserve at
    /// `at_ms`: those neither captured nor voided whose expiry is later.
    pub fn hold_at(&mut self, at_ms: i64) {
        for wallet in self.wallets.values_mut() {
            wallet.held = Decimal::ZERO;
        }
        let active: Vec<(i64, Decimal)> = self
            .holds
            .values()
            .filter(|h| h.ended.is_none() && h.expires_at_ms > at_ms)
            .map(|h| (h.user, h.amount))
            .collect();
        for (user, amount) in active {
            self.wallet(user).held += amount;
        }
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
            Op::CreateHold => {
                if let (Some(id), Some(expires_at_ms)) =
                    (body["id"].as_i64(), unix_ms(&body["expires_at"]))
                {
                    self.holds.insert(
                        id,
                        HoldBook {
                            user: w.user,
                            amount: decimal(&body["amount"]),
                            expires_at_ms,
                            ended: None,
                        },
                    );
                }
            }
            Op::CaptureHold => {
                let captured = decimal(&body["captured_amount"]);
                self.wallet(w.user).balance -= captured;
                self.captured += captured;
                if let Some(hold) = w.hold.and_then(|id| self.holds.get_mut(&id)) {
                    hold.ended = Some(Ending::Captured(captured));
                }
            }
            Op::VoidHold => {
                if let Some(hold) = w.hold.and_then(|id| self.holds.get_mut(&id)) {
                    hold.ended = Some(Ending::Voided);
                }
            }
            // Their money moves in the background: `account_flow` takes it
            // from the workflow's final state.
            Op::StartWithdrawal | Op::StartDeposit | Op::ApproveDeposit | Op::RejectDeposit => {}
        }
    }

    /// The effect of a workflow, from its final state: a completed
    /// withdrawal captured its hold in full (the money left), a compensated
    /// one voided it; a completed deposit credited its amount, a rejected
    /// one nothing. Any other state moved nothing that the books can
    /// count on, and `check` reports it.
    pub fn account_flow(&mut self, f: &Flow) {
        match f.kind {
            FlowKind::Withdrawal => {
                let ended = match f.status.as_str() {
                    "completed" => Some(Ending::Captured(f.amount)),
                    "compensated" => Some(Ending::Voided),
                    _ => None,
                };
                if matches!(ended, Some(Ending::Captured(_))) {
                    self.wallet(f.user).balance -= f.amount;
                    self.withdrawn += f.amount;
                }
                if let Some((id, expires_at_ms)) = f.hold {
                    self.holds.insert(
                        id,
                        HoldBook {
                            user: f.user,
                            amount: f.amount,
                            expires_at_ms,
                            ended,
                        },
                    );
                }
            }
            FlowKind::Deposit => {
                if f.status == "completed" {
                    self.wallet(f.user).balance += f.amount;
                    self.deposited += f.amount;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(op: Op, hold: Option<i64>, status: u16, body: Value) -> Write {
        Write {
            op,
            user: 1,
            peer: None,
            amount: Decimal::ZERO,
            order: None,
            hold,
            workflow: None,
            fence: None,
            started: Instant::now(),
            settled: Instant::now(),
            settled_ms: 0,
            attempts: 1,
            interrupted: false,
            answer: Some((status, body)),
            last: String::new(),
            replay_mismatch: None,
        }
    }

    /// User 1's live wallet, opening with a balance of 100.
    fn opening_of_100() -> HashMap<i64, Wallet> {
        HashMap::from([(
            1,
            Wallet {
                balance: Decimal::from(100),
                ..Wallet::default()
            },
        )])
    }

    fn made(id: i64, amount: &str, expires_at: &str) -> Write {
        write(
            Op::CreateHold,
            None,
            201,
            json!({"id": id, "amount": amount, "expires_at": expires_at, "created_at": "2026-01-01T00:00:00Z"}),
        )
    }

    #[test]
    fn the_books_follow_each_hold_to_its_end() {
        let mut books = Books::new(&opening_of_100());
        let writes = [
            made(7, "30", "2026-01-01T00:00:01Z"),
            made(8, "20", "2026-01-01T00:00:05Z"),
            made(9, "10", "2026-01-01T00:00:05Z"),
            write(
                Op::CaptureHold,
                Some(7),
                200,
                json!({"captured_amount": "12"}),
            ),
            write(Op::VoidHold, Some(9), 200, json!({})),
            // refused: changes nothing
            write(
                Op::CaptureHold,
                Some(8),
                409,
                json!({"code": "hold_not_active"}),
            ),
        ];
        for w in &writes {
            books.account(w);
        }
        let t0 = unix_ms(&json!("2026-01-01T00:00:00Z")).unwrap();
        assert_eq!(books.captured, Decimal::from(12));
        assert_eq!(books.holds[&7].ended, Some(Ending::Captured(12.into())));
        assert_eq!(books.holds[&9].ended, Some(Ending::Voided));
        assert_eq!(books.holds[&8].ended, None);
        books.hold_at(t0 + 500);
        assert_eq!(books.wallets[&1].balance, Decimal::from(88));
        assert_eq!(books.wallets[&1].held, Decimal::from(20));
        // at its expiry exactly a hold stops counting
        books.hold_at(t0 + 5_000);
        assert_eq!(books.wallets[&1].held, Decimal::ZERO);
        assert_eq!(last_short_expiry(&writes), Some(t0 + 5_000));
    }

    fn flow(id: i64, kind: FlowKind, status: &str, hold: Option<(i64, i64)>) -> Flow {
        Flow {
            id,
            kind,
            user: 1,
            amount: Decimal::from(10),
            status: status.into(),
            error: None,
            hold,
            credit: None,
        }
    }

    #[test]
    fn the_books_take_a_workflow_from_its_final_state() {
        let mut books = Books::new(&opening_of_100());
        let far = i64::MAX;
        for f in [
            flow(1, FlowKind::Withdrawal, "completed", Some((11, far))),
            flow(2, FlowKind::Withdrawal, "compensated", Some((12, far))),
            flow(3, FlowKind::Withdrawal, "failed", Some((13, far))),
            flow(4, FlowKind::Deposit, "completed", None),
            flow(5, FlowKind::Deposit, "rejected", None),
        ] {
            books.account_flow(&f);
        }
        // Paid out 10, credited 10; the rest moved nothing.
        assert_eq!(books.wallets[&1].balance, Decimal::from(100));
        assert_eq!((books.withdrawn, books.deposited), (10.into(), 10.into()));
        assert_eq!(books.holds[&11].ended, Some(Ending::Captured(10.into())));
        assert_eq!(books.holds[&12].ended, Some(Ending::Voided));
        // A failed one's hold is still held until the admin retries it.
        assert_eq!(books.holds[&13].ended, None);
        books.hold_at(0);
        assert_eq!(books.wallets[&1].held, Decimal::from(10));
    }
}
