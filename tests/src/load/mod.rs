//! The load generator behind the `loadgen` binary: virtual users, each on a
//! keep-alive connection of its own, run one of the scenarios below (the
//! same mix as the k6 scripts), and at the end the books are checked: each
//! user's live balance, and the funds its holds reserve, moved by exactly
//! what the generator's own definite, successful operations imply.
//!
//! Every request rides through faults: it is sent again (a write with the
//! same Idempotency-Key) after refused or broken connections, timeouts,
//! load shedding and outages, honouring `Retry-After`, until its answer is
//! definite or a bound passes (see `retry`).

pub mod client;
pub mod retry;
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

use client::{Answer, Call, Connection, Transport};
use retry::{Class, Next, Policy, Retrying};
use stats::{LockEvent, Recorder, Sample};

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
    /// Uncontended locks: each virtual user acquires `bench:{vu}` (its
    /// own resource) and releases it at once. No money moves.
    Locks,
    /// One hot resource: every virtual user acquires `bench:hot` with
    /// `"wait": "queue"`, waits on its queue item until granted, releases
    /// at once. No money moves.
    LocksHot,
    /// Each user opens an order on the seeded symbol and closes it.
    Orders,
    /// As `orders`, each order opened with a fresh `signal_id` (so it runs
    /// under the lock `trade:{user}:{symbol}:{side}:{signal}`).
    OrdersSignal,
    /// Each user holds the amount of its live wallet, and the service
    /// captures the hold at once: one cycle is the create and the capture.
    Holds,
    /// Each user starts a withdrawal workflow of the amount (hold, payout,
    /// capture) and polls it until it ends: one cycle runs from the start
    /// to the poll that sees a final status. Needs a server with a payout
    /// provider (`LEDGER_PAYOUT_URL`); with one that accepts at once, every
    /// workflow ends `completed`.
    WithdrawalWorkflows,
}

impl Scenario {
    /// Whether the scenario moves money (and so has books to check).
    pub fn moves_money(self) -> bool {
        !matches!(self, Self::Locks | Self::LocksHot)
    }

    /// Whether the scenario runs cycles whose ends are counted (see
    /// `stats::FlowTally`).
    pub fn has_flows(self) -> bool {
        matches!(self, Self::Holds | Self::WithdrawalWorkflows)
    }
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
    /// When and how long requests are sent again.
    pub retry: Policy,
    /// Deposit and withdrawal amount.
    pub amount: Decimal,
    /// Order quantity (leverage 10).
    pub quantity: Decimal,
    /// Pause between two polls of a workflow.
    pub poll: Duration,
}

/// Money each user's live wallet should have gained (negative: lost), and
/// the change in what its active holds reserve.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Books {
    pub delta: HashMap<i64, Decimal>,
    /// Change of `held` (funds reserved by active holds), for the users
    /// whose holds the run made or ended.
    #[serde(default)]
    pub held: HashMap<i64, Decimal>,
    /// Users with a write whose outcome stayed unknown (one entry per such
    /// write).
    pub uncertain: Vec<i64>,
}

impl Books {
    fn add(&mut self, user: i64, amount: Decimal) {
        *self.delta.entry(user).or_default() += amount;
    }

    /// `amount` more (negative: less) reserved by `user`'s active holds.
    fn hold(&mut self, user: i64, amount: Decimal) {
        self.delta.entry(user).or_default();
        *self.held.entry(user).or_default() += amount;
    }

    pub fn merge(&mut self, other: Books) {
        for (user, d) in other.delta {
            self.add(user, d);
        }
        for (user, d) in other.held {
            self.hold(user, d);
        }
        self.uncertain.extend(other.uncertain);
    }

    /// The users whose books the run touched.
    pub fn users(&self) -> Vec<i64> {
        let mut users: Vec<i64> = self.delta.keys().copied().collect();
        users.sort_unstable();
        users
    }
}

/// One user whose balance is not what its operations imply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Mismatch {
    pub user_id: i64,
    pub problem: String,
}

/// The books check: `after == before + delta`, no margin left held (every
/// order was closed) and the funds held by holds changed by exactly what the
/// run's holds imply (nothing, unless a hold or a withdrawal workflow was
/// left active; a hold expiring during the run would show as a change), for
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
    for user_id in books.users() {
        let delta = books.delta.get(&user_id).copied().unwrap_or_default();
        let held = books.held.get(&user_id).copied().unwrap_or_default();
        let problem = match (before.get(&user_id), after.get(&user_id)) {
            (Some(b), Some(a)) if a.balance != b.balance + delta => Some(format!(
                "balance {} != {} before + {} from the run",
                a.balance, b.balance, delta
            )),
            (Some(b), Some(a)) if a.margin != b.margin => Some(format!(
                "margin {} != {} before (every order was closed)",
                a.margin, b.margin
            )),
            (Some(b), Some(a)) if a.held != b.held + held => Some(format!(
                "held {} != {} before + {} from the run's holds",
                a.held, b.held, held
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
    /// Funds reserved by active holds.
    pub held: Decimal,
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
        held: decimal(&live["held"])?,
    })
}

/// The live balances of these users, read with the service token over
/// `concurrency` connections, each read retried as `policy` says.
pub async fn read_balances(
    target: SocketAddr,
    source: IpAddr,
    service_token: &str,
    users: &[i64],
    concurrency: usize,
    policy: &Policy,
) -> HashMap<i64, Balance> {
    let chunk = users.len().div_ceil(concurrency.max(1)).max(1);
    let reads = users.chunks(chunk).map(|ids| async move {
        let mut conn = Connection::new(source, target, Duration::from_secs(30));
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let call = Call::get(format!("/api/v1/users/{id}/wallets"), Some(service_token));
            let settled = until_definite(&mut conn, &call, policy, |_| {}).await;
            if let Some(answer) = settled.answer
                && answer.status == 200
                && let Some(b) = live_balance(&answer.json())
            {
                out.push((id, b));
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

/// The class of an HTTP answer; the body is parsed only for the statuses
/// whose meaning depends on the problem `code`.
pub fn class_of(answer: &Answer) -> Class {
    match answer.status {
        409 | 503 => retry::classify_answer(answer.status, &answer.code()),
        status => retry::classify_answer(status, ""),
    }
}

/// One attempt of a request, as `until_definite` saw it.
pub struct Attempt<'a> {
    pub result: &'a Result<Answer, Transport>,
    pub class: Class,
    pub sent: Instant,
    pub latency: Duration,
}

/// How a request ended.
#[derive(Debug)]
pub struct Settled {
    /// The definite answer; `None` when the bound passed without one.
    pub answer: Option<Answer>,
    pub attempts: u32,
    /// When the definite answer arrived (or the request was given up).
    pub at: Instant,
}

/// Sends `call` until its answer is definite or `policy.bound` has passed
/// since the first attempt, pausing between attempts as `retry::next`
/// says. Every attempt is shown to `seen` before the pause.
pub async fn until_definite(
    conn: &mut Connection,
    call: &Call<'_>,
    policy: &Policy,
    mut seen: impl FnMut(&Attempt<'_>),
) -> Settled {
    let mut retrying = Retrying::start();
    let mut attempts = 0u32;
    loop {
        let sent = Instant::now();
        let result = conn.send(call).await;
        let latency = sent.elapsed();
        attempts += 1;
        let (class, retry_after) = match &result {
            Ok(a) => (class_of(a), a.retry_after),
            Err(t) => (retry::classify_transport(*t), None),
        };
        seen(&Attempt {
            result: &result,
            class,
            sent,
            latency,
        });
        let jitter = rand::rng().random::<f64>();
        match retrying.after(policy, class, retry_after, jitter) {
            Next::Done => {
                return Settled {
                    answer: result.ok(),
                    attempts,
                    at: Instant::now(),
                };
            }
            Next::RetryAfter(pause) => tokio::time::sleep(pause).await,
            Next::GiveUp => {
                return Settled {
                    answer: None,
                    attempts,
                    at: Instant::now(),
                };
            }
        }
    }
}

/// What became of a write sent until definite.
enum Written {
    /// A 2xx, with its body.
    Done(Value),
    /// A definite refusal that changed nothing: `"422 insufficient_funds"`.
    Refused(String),
    /// Never definite within the bound: its user is marked uncertain.
    Unknown,
}

struct Vu<'a> {
    ctx: &'a Ctx,
    /// This virtual user's number in its process.
    index: usize,
    conn: Connection,
    user: &'a LoadUser,
    books: Books,
    /// Since when this user has found the service out, if it has.
    outage_since: Option<Instant>,
}

impl Vu<'_> {
    /// Sends `call` until definite (see `until_definite`), recording every
    /// attempt and the outage intervals this user saw. `Some` only for a
    /// definite answer.
    async fn request(&mut self, op: &'static str, call: &Call<'_>) -> Option<Answer> {
        let ctx = self.ctx;
        let outage_since = &mut self.outage_since;
        let settled = until_definite(&mut self.conn, call, &ctx.plan.retry, |a| {
            ctx.budget.fetch_sub(1, Ordering::Relaxed);
            let outcome = match a.result {
                Ok(answer) if a.class == Class::Success => success_label(answer.status),
                Ok(answer) => Cow::Owned(format!("{} {}", answer.status, answer.code())),
                Err(t) => Cow::Borrowed(t.label()),
            };
            ctx.recorder.record(&Sample {
                op,
                latency: a.latency,
                outcome: &outcome,
                class: a.class,
            });
            if a.class != Class::Success && !ctx.plan.scenario.moves_money() {
                ctx.recorder.lock_error(&format!("{op} {outcome}"));
            }
            // A lost connection says nothing about whether the service is
            // up; anything else that answered ends an outage.
            match (a.class.is_outage(), *outage_since) {
                (true, None) => *outage_since = Some(a.sent),
                (false, Some(since)) if a.class != Class::Lost => {
                    ctx.recorder.outage(since, a.sent);
                    *outage_since = None;
                }
                _ => {}
            }
        })
        .await;
        if settled.answer.is_none() {
            self.close_outage(settled.at);
        }
        settled.answer
    }

    fn close_outage(&mut self, at: Instant) {
        if let Some(since) = self.outage_since.take() {
            self.ctx.recorder.outage(since, at);
        }
    }

    async fn read(&mut self, op: &'static str, path: String) {
        let user = self.user;
        if self
            .request(op, &Call::get(path, Some(&user.token)))
            .await
            .is_none()
        {
            self.ctx.recorder.read_given_up();
        }
        self.think().await;
    }

    /// A write, sent with one Idempotency-Key until its answer is definite:
    /// a success (returned), or a refusal that changed nothing (`None`).
    /// A write never definite within the bound marks its user uncertain.
    async fn write(
        &mut self,
        op: &'static str,
        path: &str,
        token: &str,
        body: Value,
    ) -> Option<Value> {
        let result = match self.write_as(op, path, token, body).await {
            Written::Done(v) => Some(v),
            Written::Refused(_) | Written::Unknown => None,
        };
        self.think().await;
        result
    }

    /// `write` without the think time after it, telling a refusal from an
    /// unknown outcome.
    async fn write_as(
        &mut self,
        op: &'static str,
        path: &str,
        token: &str,
        body: Value,
    ) -> Written {
        let key = Uuid::new_v4().to_string();
        let call = Call::post(path, token, &key, &body);
        match self.request(op, &call).await {
            Some(a) if (200..300).contains(&a.status) => Written::Done(a.json()),
            Some(a) => Written::Refused(format!("{} {}", a.status, a.code())),
            None => {
                self.books.uncertain.push(self.user.id);
                Written::Unknown
            }
        }
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
            Scenario::Locks => self.lock_cycle(n, false).await,
            Scenario::LocksHot => self.lock_cycle(n, true).await,
            Scenario::Orders => self.order_cycle(n, false).await,
            Scenario::OrdersSignal => self.order_cycle(n, true).await,
            Scenario::Holds => self.hold_cycle().await,
            Scenario::WithdrawalWorkflows => self.withdrawal_cycle().await,
        }
    }

    /// One hold: the user reserves the amount of its live wallet, the
    /// service captures all of it at once. The books follow the held funds
    /// and the capture.
    async fn hold_cycle(&mut self) {
        let (user, ctx) = (self.user, self.ctx);
        let (id, amount) = (user.id, ctx.plan.amount);
        let body = json!({
            "user_id": id,
            "wallet": "live",
            "amount": amount.to_string(),
            "reference": "bench",
        });
        let sent = Instant::now();
        let Some(hold) = self
            .flow_write("create_hold", "/api/v1/holds", &user.token, body)
            .await
        else {
            return;
        };
        self.books.hold(id, amount);
        let Some(hold_id) = hold["id"].as_i64() else {
            return self
                .flow_end("create_hold answered without an id", None)
                .await;
        };
        let path = format!("/api/v1/holds/{hold_id}/capture");
        let token = &ctx.file.service_token;
        // Not captured, the hold stays as the books have it: active.
        if let Some(captured) = self
            .flow_write("capture_hold", &path, token, json!({}))
            .await
        {
            let taken = decimal(&captured["captured_amount"]).unwrap_or(amount);
            self.books.hold(id, -amount);
            self.books.add(id, -taken);
            self.flow_end("captured", Some(sent.elapsed())).await;
        }
    }

    /// One withdrawal workflow: started by the user, then polled with the
    /// user's own token every `plan.poll` until its status is final (or
    /// the retry bound has passed since the start). The books follow the
    /// final status: `completed` took the captured amount, `compensated`
    /// took nothing, `failed` and `awaiting_payout` (no provider
    /// configured) leave the amount held.
    async fn withdrawal_cycle(&mut self) {
        let (user, ctx) = (self.user, self.ctx);
        let (id, amount) = (user.id, ctx.plan.amount);
        let body = json!({
            "user_id": id,
            "wallet": "live",
            "amount": amount.to_string(),
            "destination": format!("bench-account-{id}"),
        });
        let sent = Instant::now();
        let path = "/api/v1/workflows/withdrawals";
        let Some(mut workflow) = self
            .flow_write("start_withdrawal", path, &user.token, body)
            .await
        else {
            return;
        };
        let Some(workflow_id) = workflow["id"].as_i64() else {
            self.books.uncertain.push(id);
            return self
                .flow_end("start_withdrawal answered without an id", None)
                .await;
        };
        let path = format!("/api/v1/workflows/{workflow_id}");
        loop {
            match workflow["status"].as_str().unwrap_or("") {
                "completed" => {
                    let taken = decimal(&workflow["result"]["captured"]).unwrap_or(amount);
                    self.books.add(id, -taken);
                    return self.flow_end("completed", Some(sent.elapsed())).await;
                }
                "compensated" => return self.flow_end("compensated", None).await,
                status @ ("failed" | "awaiting_payout") => {
                    self.books.hold(id, amount);
                    return self.flow_end(status, None).await;
                }
                "running" => {}
                other => {
                    self.books.uncertain.push(id);
                    return self
                        .flow_end(&format!("unexpected status {other:?}"), None)
                        .await;
                }
            }
            if sent.elapsed() > ctx.plan.retry.bound {
                self.books.uncertain.push(id);
                return self
                    .flow_end("still running at the retry bound", None)
                    .await;
            }
            tokio::time::sleep(ctx.plan.poll).await;
            let answer = self
                .request("poll_workflow", &Call::get(path.clone(), Some(&user.token)))
                .await;
            workflow = match answer {
                Some(a) if a.status == 200 => a.json(),
                Some(a) => {
                    self.books.uncertain.push(id);
                    let end = format!("poll_workflow {} {}", a.status, a.code());
                    return self.flow_end(&end, None).await;
                }
                None => {
                    self.ctx.recorder.read_given_up();
                    self.books.uncertain.push(id);
                    return self.flow_end("poll_workflow never definite", None).await;
                }
            };
        }
    }

    /// A write of a flow: its answer when it was done; otherwise the flow
    /// ends there, named by the operation and why, and the answer is `None`.
    async fn flow_write(
        &mut self,
        op: &'static str,
        path: &str,
        token: &str,
        body: Value,
    ) -> Option<Value> {
        let end = match self.write_as(op, path, token, body).await {
            Written::Done(answer) => return Some(answer),
            Written::Refused(why) => format!("{op} {why}"),
            Written::Unknown => format!("{op} never definite"),
        };
        self.flow_end(&end, None).await;
        None
    }

    /// Records how a cycle ended, then thinks.
    async fn flow_end(&mut self, end: &str, done: Option<Duration>) {
        self.ctx.recorder.flow(end, done);
        self.think().await;
    }

    /// A lock operation's answer when it was a success. Every attempt that
    /// was not is already in the tally's errors (see `request`); a request
    /// never answered definitely is added here.
    fn lock_answer(&self, op: &str, answer: Option<Answer>) -> Option<Answer> {
        match answer {
            Some(a) if (200..300).contains(&a.status) => Some(a),
            Some(_) => None,
            None => {
                self.ctx
                    .recorder
                    .lock_error(&format!("{op} never definite"));
                None
            }
        }
    }

    /// One lock: acquire (`hot`: the one shared resource, queueing behind
    /// the others), wait for the grant when queued, release at once. Every
    /// lock held is released, also after the run's end.
    async fn lock_cycle(&mut self, n: u64, hot: bool) {
        let ctx = self.ctx;
        let recorder = &ctx.recorder;
        let token = self.user.token.clone();
        let vu = self.index;
        let resource = if hot {
            "bench:hot".to_owned()
        } else {
            format!("bench:{vu}")
        };
        // A fresh `transaction_data` each time: the same (owner, resources,
        // type, data) within the dedupe window would be answered with the
        // earlier lock instead of a new grant.
        let mut body = json!({
            "resources": [resource],
            "ttl_ms": 30_000,
            "transaction_type": "bench",
            "transaction_data": {"vu": vu, "n": n},
        });
        if hot {
            body["wait"] = json!("queue");
        }
        let key = Uuid::new_v4().to_string();
        let sent = Instant::now();
        let answer = self
            .request(
                "lock_acquire",
                &Call::post("/api/v1/locks", &token, &key, &body),
            )
            .await;
        let Some(answer) = self.lock_answer("lock_acquire", answer) else {
            return;
        };
        let mut reply = answer.json();
        let lock_id = match answer.status {
            201 => {
                recorder.lock(LockEvent::Acquired {
                    latency: sent.elapsed(),
                });
                reply["lock_id"].as_str().map(str::to_owned)
            }
            200 => {
                recorder.lock(LockEvent::Deduplicated {
                    latency: sent.elapsed(),
                });
                // An earlier lock: release it only while it is active.
                if reply["status"] == "active" {
                    reply["lock_id"].as_str().map(str::to_owned)
                } else {
                    None
                }
            }
            _ => {
                recorder.lock(LockEvent::Queued);
                let queue_id = reply["queue_id"].as_i64().unwrap_or_default();
                let path = format!("/api/v1/locks/queue/{queue_id}?wait_ms=10000");
                // Waits until granted, whatever the run's deadline: the lock
                // must be taken and released, or the queue would stall.
                loop {
                    let answer = self
                        .request("lock_queue_wait", &Call::get(path.clone(), Some(&token)))
                        .await;
                    let Some(answer) = self.lock_answer("lock_queue_wait", answer) else {
                        recorder.lock(LockEvent::NeverGranted);
                        return;
                    };
                    reply = answer.json();
                    match reply["status"].as_str() {
                        Some("pending") => continue,
                        Some("granted") => {
                            recorder.lock(LockEvent::Granted {
                                latency: sent.elapsed(),
                            });
                            break reply["lock"]["lock_id"].as_str().map(str::to_owned);
                        }
                        other => {
                            recorder.lock_error(&format!(
                                "lock_queue_wait ended {}",
                                other.unwrap_or("without a status")
                            ));
                            recorder.lock(LockEvent::NeverGranted);
                            return;
                        }
                    }
                }
            }
        };
        let Some(lock_id) = lock_id else {
            if answer.status != 200 {
                recorder.lock_error("lock_acquire granted without a lock_id");
                recorder.lock(LockEvent::Unreleased);
            }
            return;
        };
        let path = format!("/api/v1/locks/{lock_id}/release");
        let answer = self
            .request(
                "lock_release",
                &Call::post_without_key(&path, &token, &json!({})),
            )
            .await;
        if self.lock_answer("lock_release", answer).is_some() {
            recorder.lock(LockEvent::Released {
                cycle: sent.elapsed(),
            });
        } else {
            recorder.lock(LockEvent::Unreleased);
        }
        self.think().await;
    }

    /// One order opened and closed (`signal`: opened with a fresh
    /// `signal_id`, so under a trade lock). The books follow the fees and
    /// the P&L.
    async fn order_cycle(&mut self, n: u64, signal: bool) {
        let user = self.user;
        let mut order = self.order_body(n);
        if signal {
            order["signal_id"] = json!(format!("bench-{}", Uuid::new_v4().simple()));
        }
        let Some(opened) = self
            .write("open_order", "/api/v1/orders", &user.token, order)
            .await
        else {
            return;
        };
        let order_id = self.took_open_fee(&opened);
        self.close_order(order_id).await;
    }

    /// An order on the run's symbol, buying on even `n`, selling on odd.
    fn order_body(&self, n: u64) -> Value {
        json!({
            "user_id": self.user.id,
            "symbol": self.ctx.file.symbol,
            "side": if n.is_multiple_of(2) { "buy" } else { "sell" },
            "quantity": self.ctx.plan.quantity.to_string(),
            "leverage": 10,
            "wallet": "live",
        })
    }

    /// The books take an opened order's open fee; returns the order's id.
    fn took_open_fee(&mut self, opened: &Value) -> i64 {
        self.books.add(
            self.user.id,
            -decimal(&opened["open_fee"]).unwrap_or_default(),
        );
        opened["id"].as_i64().unwrap_or_default()
    }

    /// Closes the user's order `order_id`; the books take its P&L less the
    /// close fee, plus what was written off.
    async fn close_order(&mut self, order_id: i64) {
        let user = self.user;
        let path = format!("/api/v1/orders/{order_id}/close");
        if let Some(closed) = self
            .write("close_order", &path, &user.token, json!({}))
            .await
        {
            let gained = decimal(&closed["pnl"]).unwrap_or_default()
                - decimal(&closed["close_fee"]).unwrap_or_default()
                + decimal(&closed["written_off"]).unwrap_or_default();
            self.books.add(user.id, gained);
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
        let order = self.order_body(n);
        let opened = step!(
            self.write("open_order", "/api/v1/orders", token, order)
                .await
        );
        if let Some(opened) = opened {
            let order_id = self.took_open_fee(&opened);
            if self.ctx.go_on() {
                self.read("read_order", format!("/api/v1/orders/{order_id}"))
                    .await;
                self.read("read_wallets", wallets.clone()).await;
            }
            self.close_order(order_id).await;
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
        index,
        conn: Connection::new(source, plan.target, plan.timeout),
        user: &user,
        books: Books::default(),
        outage_since: None,
    };
    // The connection opens at the user's start and stays open: a failure
    // here is retried by the first request.
    let _ = vu.conn.open().await;
    let mut n = index as u64;
    while ctx.go_on() {
        vu.iteration(n).await;
        n += 1;
    }
    vu.close_outage(Instant::now());
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
            held: Decimal::ZERO,
        }
    }

    #[test]
    fn books_check_finds_every_kind_of_difference() {
        let held = |balance, held| Balance {
            held: Decimal::from(held),
            ..bal(balance, 0)
        };
        let before = HashMap::from([
            (1, bal(100, 0)),
            (2, bal(100, 0)),
            (3, bal(50, 0)),
            (5, held(20, 10)),
            (6, held(30, 2)),
            (8, held(40, 0)),
        ]);
        let after = HashMap::from([
            (1, bal(105, 0)),
            (2, bal(99, 0)),
            (3, bal(50, 5)),
            (5, held(20, 0)),
            // a hold left active: held as the books say
            (6, held(29, 3)),
            // a hold the books do not know of
            (8, held(39, 1)),
        ]);
        let mut books = Books::default();
        books.add(1, Decimal::from(5));
        books.add(2, Decimal::from(-2));
        books.add(3, Decimal::ZERO);
        books.add(4, Decimal::ONE);
        books.add(5, Decimal::ZERO);
        // user 6: two holds made, one captured (1 left the wallet), one
        // left active; user 8: one made and captured
        books.hold(6, Decimal::from(2));
        books.hold(6, Decimal::from(-1));
        books.add(6, Decimal::from(-1));
        books.hold(8, Decimal::ONE);
        books.hold(8, Decimal::from(-1));
        books.add(8, Decimal::from(-1));
        books.uncertain.push(7);
        let problems = check_books(&before, &after, &books);
        let users: Vec<i64> = problems.iter().map(|p| p.user_id).collect();
        assert_eq!(users, vec![7, 2, 3, 4, 5, 8], "{problems:?}");
        assert!(
            problems[1]
                .problem
                .contains("balance 99 != 100 before + -2")
        );
        assert!(problems[2].problem.contains("margin"));
        assert!(problems[4].problem.contains("held 0 != 10 before"));
        assert!(
            problems[5].problem.contains("held 1 != 0 before + 0"),
            "{problems:?}"
        );
    }

    #[test]
    fn books_merge_the_held_funds_and_touch_the_holders() {
        let mut a = Books::default();
        a.hold(3, Decimal::ONE);
        let mut b = Books::default();
        b.hold(3, Decimal::from(-1));
        b.add(3, Decimal::from(-1));
        b.add(1, Decimal::TWO);
        a.merge(b);
        assert_eq!(a.users(), vec![1, 3]);
        assert_eq!(a.held[&3], Decimal::ZERO);
        assert_eq!(a.delta[&3], Decimal::from(-1));
        // a user with only a hold is checked as well
        let mut c = Books::default();
        c.hold(9, Decimal::ONE);
        assert_eq!(c.users(), vec![9]);
    }

    #[test]
    fn live_balance_is_read_from_the_wallet_list() {
        let body = json!([
            {"kind": "demo", "balance": "5", "margin": "0", "held": "0"},
            {"kind": "live", "balance": "12.5", "margin": "1", "held": "2.5"},
        ]);
        assert_eq!(
            live_balance(&body),
            Some(Balance {
                balance: Decimal::new(125, 1),
                margin: Decimal::ONE,
                held: Decimal::new(25, 1),
            })
        );
        assert_eq!(live_balance(&json!([])), None);
    }
}
