//! Withdrawal workflows under concurrency and crashes, PostgreSQL only:
//! a misbehaving payout provider (`tests::payout_sim`), a kill -9 of the
//! real `ledger` binary mid-payout (`tests::process`), two server instances
//! working one database, a provider that drops its answers, and racing
//! manual payout results. Each test states its invariant. Every wait polls
//! the API within a generous overall bound; nothing asserts a duration.
//! Build the server before the kill test: `cargo build -p api --bin ledger`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use api::auth::Role;
use futures::future::join_all;
use infra::Config;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tests::payout_sim::{Mode, PayoutSim, Record, Status};
use tests::process::LedgerProcess;
use tests::{Engine, PgDatabase, Reply, TestApp, assert_no_5xx, dec, dec_of, fresh_key, token};

const WITHDRAWALS: &str = "/api/v1/workflows/withdrawals";

/// How long a test waits for its workflows to settle before it fails.
const SETTLE_BOUND: Duration = Duration::from_secs(120);

/// Statuses after which no worker moves a workflow on its own.
const SETTLED: [&str; 4] = ["completed", "compensated", "rejected", "failed"];

/// The money every user starts with.
const OPENING: &str = "1000";

/// Fast workflow settings for an in-process server: a short lease, quick
/// polls and retries, attempts enough that a random provider never exhausts
/// them, and a breaker that does not open (these tests are not about it).
fn fast(c: &mut Config, payout_url: Option<String>) {
    let w = &mut c.workflows;
    w.payout_url = payout_url;
    w.workers = 4;
    w.lease = Duration::from_millis(2_000);
    w.poll = Duration::from_millis(20);
    w.payout_timeout = Duration::from_millis(1_000);
    w.payout_max_attempts = 40;
    w.payout_retry_initial = Duration::from_millis(10);
    w.payout_retry_max = Duration::from_millis(200);
    w.breaker_failures = 100_000;
    w.recovery_interval = Duration::from_millis(500);
}

/// The same settings for a `ledger` process, as its environment; like the
/// in-process harness, a burst of starts waits for a connection instead of
/// being shed (shedding has tests of its own).
fn fast_env(payout_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("LEDGER_DB_MAX_CONNECTIONS", "20".into()),
        ("LEDGER_DB_WAIT_BUDGET_MS", "30000".into()),
        ("LEDGER_PAYOUT_URL", payout_url.to_owned()),
        ("LEDGER_WORKFLOW_WORKERS", "8".into()),
        ("LEDGER_WORKFLOW_LEASE_MS", "2000".into()),
        ("LEDGER_WORKFLOW_POLL_MS", "20".into()),
        ("LEDGER_PAYOUT_TIMEOUT_MS", "1000".into()),
        ("LEDGER_PAYOUT_MAX_ATTEMPTS", "40".into()),
        ("LEDGER_PAYOUT_RETRY_INITIAL_MS", "10".into()),
        ("LEDGER_PAYOUT_RETRY_MAX_MS", "200".into()),
        ("LEDGER_BREAKER_FAILURES", "100000".into()),
        ("LEDGER_RECOVERY_INTERVAL_MS", "500".into()),
    ]
}

fn admin() -> String {
    token("root", Role::Admin)
}

fn service() -> String {
    token("backoffice", Role::Service)
}

/// HTTP to one server, in process or a child process alike.
#[derive(Clone)]
struct Api {
    base: String,
    client: reqwest::Client,
}

/// One started withdrawal.
#[derive(Debug, Clone)]
struct Started {
    id: i64,
    user: i64,
    amount: Decimal,
    hold_id: i64,
}

impl Api {
    fn new(base: String) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build()
            .unwrap();
        Self { base, client }
    }

    async fn get(&self, path: &str, token: &str) -> Reply {
        let req = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(token);
        Reply::from(req.send().await.expect("request failed")).await
    }

    async fn post(&self, path: &str, token: &str, key: Option<&str>, body: &Value) -> Reply {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(body);
        if let Some(key) = key {
            req = req.header("Idempotency-Key", key);
        }
        Reply::from(req.send().await.expect("request failed")).await
    }

    /// `n` users, each with `OPENING` in its live wallet.
    async fn funded_users(&self, n: usize) -> Vec<i64> {
        join_all((0..n).map(|_| async move {
            let email = format!("wf-{}@x.io", fresh_key());
            let r = self
                .post(
                    "/api/v1/users",
                    &service(),
                    Some(&fresh_key()),
                    &json!({ "email": email }),
                )
                .await;
            r.expect(201);
            let user = r.body["id"].as_i64().unwrap();
            self.post(
                "/api/v1/wallets/deposit",
                &service(),
                Some(&fresh_key()),
                &json!({ "user_id": user, "amount": OPENING, "wallet": "live" }),
            )
            .await
            .expect(200);
            user
        }))
        .await
    }

    /// Starts a withdrawal as the user itself; it must be accepted.
    async fn withdraw(&self, user: i64, amount: &str, destination: &str) -> Started {
        let r = self
            .post(
                WITHDRAWALS,
                &token(&user.to_string(), Role::User),
                Some(&fresh_key()),
                &json!({
                    "user_id": user, "wallet": "live", "amount": amount,
                    "destination": destination,
                }),
            )
            .await;
        r.expect(202);
        assert_eq!(r.body["type"], "withdrawal", "{}", r.text);
        assert_eq!(r.body["user_id"], user, "{}", r.text);
        Started {
            id: r.body["id"].as_i64().unwrap(),
            user,
            amount: dec(amount),
            hold_id: r.body["hold_id"]
                .as_i64()
                .unwrap_or_else(|| panic!("a started withdrawal holds its funds: {}", r.text)),
        }
    }

    /// Every workflow, by id (the list, page after page).
    async fn workflows(&self) -> BTreeMap<i64, Value> {
        let mut all = BTreeMap::new();
        let mut before: Option<i64> = None;
        loop {
            let path = match before {
                Some(b) => format!("/api/v1/workflows?limit=500&before_id={b}"),
                None => "/api/v1/workflows?limit=500".to_owned(),
            };
            let r = self.get(&path, &admin()).await;
            r.expect(200);
            for w in r.body["items"].as_array().unwrap() {
                all.insert(w["id"].as_i64().unwrap(), w.clone());
            }
            match r.body["next_before_id"].as_i64() {
                Some(b) => before = Some(b),
                None => return all,
            }
        }
    }

    /// Polls until every workflow of `ids` has a status of `wanted`; returns
    /// them. Fails with the statuses seen when `SETTLE_BOUND` passes first.
    async fn wait_for(&self, ids: &[i64], wanted: &[&str]) -> BTreeMap<i64, Value> {
        let deadline = Instant::now() + SETTLE_BOUND;
        loop {
            let all = self.workflows().await;
            let waiting: Vec<i64> = ids
                .iter()
                .copied()
                .filter(|id| {
                    all.get(id)
                        .and_then(|w| w["status"].as_str())
                        .is_none_or(|s| !wanted.contains(&s))
                })
                .collect();
            if waiting.is_empty() {
                return ids.iter().map(|id| (*id, all[id].clone())).collect();
            }
            if Instant::now() > deadline {
                let mut counts: BTreeMap<String, usize> = BTreeMap::new();
                for id in ids {
                    let status = all
                        .get(id)
                        .map_or("missing", |w| w["status"].as_str().unwrap_or("unreadable"));
                    *counts.entry(status.to_owned()).or_default() += 1;
                }
                panic!(
                    "{} of {} workflows not {wanted:?} within {SETTLE_BOUND:?}: statuses \
                     {counts:?}; e.g. {}",
                    waiting.len(),
                    ids.len(),
                    all.get(&waiting[0]).cloned().unwrap_or(Value::Null)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn settle(&self, ids: &[i64]) -> BTreeMap<i64, Value> {
        self.wait_for(ids, &SETTLED).await
    }

    async fn hold_status(&self, hold_id: i64) -> String {
        let r = self
            .get(&format!("/api/v1/holds/{hold_id}"), &admin())
            .await;
        r.expect(200);
        r.body["status"].as_str().unwrap().to_owned()
    }

    /// The user's live wallet.
    async fn live_wallet(&self, user: i64) -> Value {
        let r = self
            .get(&format!("/api/v1/users/{user}/wallets"), &admin())
            .await;
        r.expect(200);
        r.body
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["kind"] == "live")
            .cloned()
            .unwrap()
    }

    /// The user's live journal, every page.
    async fn journal(&self, user: i64) -> Vec<Value> {
        let mut all = Vec::new();
        let mut before: Option<i64> = None;
        loop {
            let mut path = format!("/api/v1/users/{user}/transactions?wallet=live&limit=500");
            if let Some(b) = before {
                path.push_str(&format!("&before_id={b}"));
            }
            let r = self.get(&path, &admin()).await;
            r.expect(200);
            all.extend(r.body["items"].as_array().unwrap().iter().cloned());
            match r.body["next_before_id"].as_i64() {
                Some(b) => before = Some(b),
                None => return all,
            }
        }
    }

    /// The money follows the workflows: balances (`assert_balances`), hold
    /// journals (`assert_hold_journals`), and the books of the database at
    /// `url` balance; first, the provider `sim` (if any) saw no protocol
    /// error.
    async fn assert_money(
        &self,
        sim: Option<&PayoutSim>,
        started: &[Started],
        workflows: &BTreeMap<i64, Value>,
        url: &str,
    ) {
        if let Some(sim) = sim {
            assert_eq!(sim.protocol_errors(), 0);
        }
        self.assert_balances(started, workflows).await;
        self.assert_hold_journals(started, workflows).await;
        tests::assert_books_balance_at(url).await;
    }

    /// Every user's balance is the opening balance less its completed
    /// withdrawals, and nothing stays held.
    async fn assert_balances(&self, started: &[Started], workflows: &BTreeMap<i64, Value>) {
        let mut paid: BTreeMap<i64, Decimal> = BTreeMap::new();
        for s in started {
            let entry = paid.entry(s.user).or_default();
            if workflows[&s.id]["status"] == "completed" {
                *entry += s.amount;
            }
        }
        for (user, paid) in paid {
            let wallet = self.live_wallet(user).await;
            assert_eq!(
                dec_of(&wallet["balance"]),
                dec(OPENING) - paid,
                "user {user}: balance is not the opening balance less the completed \
                 withdrawals; {wallet}"
            );
            assert_eq!(
                dec_of(&wallet["held"]),
                Decimal::ZERO,
                "user {user}: funds still held; {wallet}"
            );
        }
    }

    /// Per workflow, the journal entries of its hold: exactly `hold` then
    /// `hold_capture` for a completed one, `hold` then `hold_release` for a
    /// compensated one; and no hold entry belongs to anything else.
    async fn assert_hold_journals(&self, started: &[Started], workflows: &BTreeMap<i64, Value>) {
        let mut users: Vec<i64> = started.iter().map(|s| s.user).collect();
        users.sort_unstable();
        users.dedup();
        // reference -> kinds, oldest first
        let mut by_ref: HashMap<String, Vec<String>> = HashMap::new();
        for user in users {
            let mut entries = self.journal(user).await;
            entries.reverse();
            for e in entries {
                let kind = e["kind"].as_str().unwrap();
                if kind.starts_with("hold") {
                    let reference = e["reference"].as_str().unwrap_or("").to_owned();
                    by_ref.entry(reference).or_default().push(kind.to_owned());
                }
            }
        }
        for s in started {
            let kinds = by_ref
                .remove(&format!("hold:{}", s.hold_id))
                .unwrap_or_default();
            let expected = match workflows[&s.id]["status"].as_str().unwrap() {
                "completed" => ["hold", "hold_capture"],
                "compensated" => ["hold", "hold_release"],
                other => panic!("workflow {} ended {other}", s.id),
            };
            assert_eq!(
                kinds, expected,
                "workflow {} (hold {}): its hold's journal",
                s.id, s.hold_id
            );
        }
        assert!(
            by_ref.is_empty(),
            "hold entries no workflow accounts for: {by_ref:?}"
        );
    }
}

/// An amount per withdrawal, varied, two decimals.
fn amount_of(i: usize) -> String {
    format!("{}.{:02}", 1 + (i * 7) % 19, (i * 37) % 100)
}

/// Starts `per_user` withdrawals for every user at once, spread over
/// `servers` in turn.
async fn start_all(servers: &[&Api], users: &[i64], per_user: usize) -> Vec<Started> {
    let mut jobs = Vec::new();
    for (u, &user) in users.iter().enumerate() {
        for k in 0..per_user {
            let n = u * per_user + k;
            jobs.push((servers[n % servers.len()], user, amount_of(n)));
        }
    }
    join_all(
        jobs.iter()
            .map(|(api, user, amount)| api.withdraw(*user, amount, "acct-1")),
    )
    .await
}

fn record(sim: &PayoutSim, id: i64) -> Record {
    sim.payout(id)
        .unwrap_or_else(|| panic!("workflow {id}: its payout never reached the provider"))
}

/// A payout provider (the simulator) answering in `mode`.
async fn provider(mode: Mode) -> PayoutSim {
    PayoutSim::start(mode).await.unwrap()
}

/// The provider's record of payout `id`, which it paid exactly once.
#[track_caller]
fn paid_once(sim: &PayoutSim, id: i64) -> Record {
    let rec = record(sim, id);
    assert_eq!(
        rec.payments, 1,
        "payout {}: paid {} times; {rec:?}",
        id, rec.payments
    );
    rec
}

fn step_statuses(workflow: &Value) -> Vec<(String, String)> {
    workflow["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn steps(list: [(&str, &str); 3]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, s)| ((*n).to_owned(), (*s).to_owned()))
        .collect()
}

/// A completed withdrawal: every step done, the provider's reference in its
/// result, the hold captured in full.
#[track_caller]
fn assert_completed(w: &Value, rec: &Record, amount: Decimal) {
    assert_eq!(w["status"], "completed", "{w}");
    assert_eq!(
        step_statuses(w),
        steps([("hold", "done"), ("payout", "done"), ("capture", "done")]),
        "{w}"
    );
    assert_eq!(
        w["result"]["provider_ref"].as_str(),
        rec.provider_ref.as_deref(),
        "{w}"
    );
    assert_eq!(dec_of(&w["result"]["captured"]), amount, "{w}");
}

/// A compensated withdrawal: the payout failed, the hold was undone, the
/// capture never ran.
#[track_caller]
fn assert_compensated(w: &Value) {
    assert_eq!(w["status"], "compensated", "{w}");
    assert_eq!(
        step_statuses(w),
        steps([
            ("hold", "compensated"),
            ("payout", "failed"),
            ("capture", "pending")
        ]),
        "{w}"
    );
}

/// Invariant: whatever a flaky provider answers, each payout is paid at most
/// once and each workflow ends as the provider decided. 200 withdrawals (10
/// users × 20, started at once) against a provider that answers 30 % of
/// calls with a 503 and refuses 10 % of payouts for good: every payout id
/// reached the provider and has a final answer there, none was paid twice;
/// those it paid are `completed` with their hold `captured`, those it
/// refused are `compensated` with their hold `voided`; none is `failed`;
/// every balance is the opening balance less the completed withdrawals,
/// nothing stays held, and the books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flaky_provider_pays_each_payout_at_most_once_and_refusals_compensate() {
    let sim = provider(Mode::random(0.3, 0.1, 20_240_611).unwrap()).await;
    let url = sim.url();
    let app = TestApp::spawn_with(Engine::Postgres, |c| fast(c, Some(url))).await;
    let api = Api::new(app.base.clone());
    let users = api.funded_users(10).await;
    let started = start_all(&[&api], &users, 20).await;
    assert_eq!(started.len(), 200);
    let ids: Vec<i64> = started.iter().map(|s| s.id).collect();
    let workflows = api.settle(&ids).await;

    let (mut completed, mut compensated, mut retried) = (0, 0, 0);
    for s in &started {
        let w = &workflows[&s.id];
        let rec = record(&sim, s.id);
        assert!(
            rec.payments <= 1,
            "payout {} paid {} times",
            s.id,
            rec.payments
        );
        assert_eq!(rec.amount.parse::<Decimal>().unwrap(), s.amount, "{rec:?}");
        assert_eq!(rec.user_id, s.user, "{rec:?}");
        if rec.calls > 1 {
            retried += 1;
        }
        match rec.status {
            Some(Status::Sent) => {
                assert_eq!(rec.payments, 1, "{rec:?}");
                assert_completed(w, &rec, s.amount);
                assert_eq!(api.hold_status(s.hold_id).await, "captured", "{w}");
                completed += 1;
            }
            Some(Status::Failed) => {
                assert_eq!(rec.payments, 0, "{rec:?}");
                assert_compensated(w);
                assert_eq!(api.hold_status(s.hold_id).await, "voided", "{w}");
                compensated += 1;
            }
            None => panic!("payout {} has no final answer at the provider; {w}", s.id),
        }
    }
    println!("{completed} completed, {compensated} compensated, {retried} retried after a 503");
    assert_eq!(completed + compensated, 200);
    assert!(
        completed > 0 && compensated > 0,
        "the provider should both pay and refuse some: {completed} completed, {compensated} \
         compensated"
    );
    assert!(retried > 0, "no payout met a 503: nothing was retried");
    api.assert_money(Some(&sim), &started, &workflows, &app.database_url)
        .await;
    app.stop().await;
}

/// Invariant: a kill -9 of the server while payouts are in flight loses no
/// workflow and pays none twice. A real `ledger` process on a fresh
/// database with a 2 s lease and a provider that pays at once but answers
/// 300 ms later; 100 withdrawals started; the server is killed once some
/// payouts are done but not all, then restarted on the same database with
/// the same settings: all 100 end `completed` (the provider paid every one;
/// a payout the kill interrupted is sent again after its lease lapses and
/// gets the stored answer), each paid exactly once, at least one of them
/// called again after the crash, balances and hold journals as the
/// completed withdrawals say, and the books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_payout_loses_no_workflow_and_pays_none_twice() {
    let _several_servers = tests::heavy().await;
    let sim = provider(Mode::Slow(Duration::from_millis(300))).await;
    let db = PgDatabase::create().await;
    let env = fast_env(&sim.url());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut server = LedgerProcess::start(&db.url, &env).await;
    let api = Api::new(server.base());
    let users = api.funded_users(10).await;
    let started = start_all(&[&api], &users, 10).await;
    assert_eq!(started.len(), 100);
    let ids: Vec<i64> = started.iter().map(|s| s.id).collect();

    let paid = || {
        sim.records()
            .iter()
            .filter(|r| r.status == Some(Status::Sent))
            .count()
    };
    let deadline = Instant::now() + SETTLE_BOUND;
    while paid() < 15 {
        assert!(
            Instant::now() < deadline,
            "only {} payouts sent within {SETTLE_BOUND:?}; server log:\n{}",
            paid(),
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    let paid_at_kill = paid();
    assert!(
        paid_at_kill < 100,
        "every payout was sent before the kill: nothing was tested"
    );
    server.restart().await;
    let workflows = api.settle(&ids).await;

    let mut called_again = 0;
    for s in &started {
        let w = &workflows[&s.id];
        let rec = paid_once(&sim, s.id);
        assert_completed(w, &rec, s.amount);
        assert_eq!(api.hold_status(s.hold_id).await, "captured", "{w}");
        if rec.calls > 1 {
            called_again += 1;
        }
    }
    println!(
        "killed with {paid_at_kill} of 100 payouts sent; {called_again} sent again after the \
         restart"
    );
    assert!(
        called_again > 0,
        "no payout was in flight at the kill: nothing was tested"
    );
    // every workflow sent again was resumed from a lapsed lease, whether a
    // worker or a recovery pass came to it first, and recovery says so
    let status = api.get("/api/v1/recovery/status", &admin()).await;
    status.expect(200);
    let resumed = status.body["resumed"].as_u64().unwrap();
    assert!(
        resumed >= called_again,
        "recovery reports {resumed} resumed, but {called_again} payouts were sent again: {}",
        status.text
    );
    assert_eq!(sim.total_payments(), 100);
    api.assert_money(Some(&sim), &started, &workflows, &db.url)
        .await;
    server.kill();
}

/// Invariant: two server instances working one database never run a step
/// twice. Both run workers; 100 withdrawals (10 users × 10) are started
/// half on each, against a provider that pays at once and answers 50 ms
/// later (so payouts are in flight while the other instance's workers look
/// for work). Nothing fails and no lease lapses (6 s, calls time out after
/// 3 s), so each step runs exactly once: the provider saw exactly one call
/// and made one payment per payout id, each payout step counts one
/// attempt, every workflow is `completed`, each hold's journal is exactly
/// one `hold` and one `hold_capture`, balances are as the withdrawals say,
/// and the books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_one_database_run_each_step_once() {
    let _several_servers = tests::heavy().await;
    let sim = provider(Mode::Slow(Duration::from_millis(50))).await;
    let url = sim.url();
    let app = TestApp::spawn_with(Engine::Postgres, |c| {
        fast(c, Some(url));
        c.workflows.lease = Duration::from_secs(6);
        c.workflows.payout_timeout = Duration::from_secs(3);
    })
    .await;
    let sibling = app.sibling().await;
    let one = Api::new(app.base.clone());
    let two = Api::new(sibling.base.clone());
    let users = one.funded_users(10).await;
    let started = start_all(&[&one, &two], &users, 10).await;
    assert_eq!(started.len(), 100);
    let ids: Vec<i64> = started.iter().map(|s| s.id).collect();
    let workflows = two.settle(&ids).await;

    for s in &started {
        let w = &workflows[&s.id];
        let rec = paid_once(&sim, s.id);
        assert_eq!(
            rec.calls, 1,
            "payout {}: sent more than once; {rec:?}",
            s.id
        );
        assert_completed(w, &rec, s.amount);
        assert_eq!(w["steps"][1]["attempts"], 1, "{w}");
        assert_eq!(one.hold_status(s.hold_id).await, "captured", "{w}");
    }
    assert_eq!(sim.total_payments(), 100);
    assert_eq!(sim.total_calls(), 100);
    one.assert_money(Some(&sim), &started, &workflows, &app.database_url)
        .await;
    let mut sibling = sibling;
    sibling.stop_server().await;
    app.stop().await;
}

/// Invariant: a payout whose answer is lost after the provider paid is
/// never paid twice. The provider pays each new payout and drops the
/// connection without answering; the ledger sends the payout again with the
/// same key and gets the stored `sent`: for each of 10 withdrawals the
/// provider saw at least 2 calls and made exactly 1 payment, the payout step
/// counts at least 2 attempts, the workflow is `completed` with its hold
/// captured, and the books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_answer_is_retried_with_its_key_and_paid_once() {
    let sim = provider(Mode::DropAfterProcessing).await;
    let url = sim.url();
    let app = TestApp::spawn_with(Engine::Postgres, |c| fast(c, Some(url))).await;
    let api = Api::new(app.base.clone());
    let users = api.funded_users(2).await;
    let started = start_all(&[&api], &users, 5).await;
    let ids: Vec<i64> = started.iter().map(|s| s.id).collect();
    let workflows = api.settle(&ids).await;

    for s in &started {
        let w = &workflows[&s.id];
        let rec = record(&sim, s.id);
        assert_eq!(rec.payments, 1, "payout {}: {rec:?}", s.id);
        assert!(
            rec.calls >= 2,
            "payout {}: the dropped answer was not retried: {rec:?}",
            s.id
        );
        assert_completed(w, &rec, s.amount);
        let payout = &w["steps"][1];
        assert_eq!(payout["name"], "payout", "{w}");
        assert!(payout["attempts"].as_u64().unwrap() >= 2, "{w}");
        assert_eq!(api.hold_status(s.hold_id).await, "captured", "{w}");
    }
    api.assert_money(Some(&sim), &started, &workflows, &app.database_url)
        .await;
    app.stop().await;
}

/// Invariant: racing payout results decide a workflow once. No provider is
/// configured, so 50 withdrawals (5 users × 10) wait in `awaiting_payout`;
/// for each, `sent` and `failed` are reported at the same time (admin):
/// exactly one gets 200, the other 409 `workflow_state`; the workflow ends
/// `completed` with its hold `captured` if `sent` won, `compensated` with
/// its hold `voided` if `failed` won; balances and hold journals follow,
/// and the books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_manual_payout_results_decide_each_workflow_once() {
    let app = TestApp::spawn_with(Engine::Postgres, |c| fast(c, None)).await;
    let api = Api::new(app.base.clone());
    let users = api.funded_users(5).await;
    let started = start_all(&[&api], &users, 10).await;
    assert_eq!(started.len(), 50);
    let ids: Vec<i64> = started.iter().map(|s| s.id).collect();
    api.wait_for(&ids, &["awaiting_payout"]).await;

    let races = join_all(started.iter().map(|s| {
        let api = &api;
        async move {
            let path = format!("/api/v1/workflows/{}/payout", s.id);
            let admin = admin();
            let sent = json!({ "outcome": "sent", "provider_ref": format!("manual-{}", s.id) });
            let failed = json!({ "outcome": "failed" });
            let (sent, failed) = futures::join!(
                api.post(&path, &admin, None, &sent),
                api.post(&path, &admin, None, &failed),
            );
            (s.id, sent, failed)
        }
    }))
    .await;
    let mut winner: HashMap<i64, &str> = HashMap::new();
    for (id, sent, failed) in &races {
        assert_no_5xx(&[sent.clone(), failed.clone()]);
        let (won, lost, name) = match (sent.status, failed.status) {
            (200, _) => (sent, failed, "sent"),
            (_, 200) => (failed, sent, "failed"),
            _ => panic!(
                "workflow {id}: neither result was taken: {} / {}",
                sent.text, failed.text
            ),
        };
        assert_eq!(won.body["id"], *id, "{}", won.text);
        lost.problem(409, "workflow_state");
        winner.insert(*id, name);
    }
    let workflows = api.settle(&ids).await;
    let mut sent_won = 0;
    for s in &started {
        let w = &workflows[&s.id];
        if winner[&s.id] == "sent" {
            sent_won += 1;
            assert_eq!(w["status"], "completed", "{w}");
            assert_eq!(
                w["result"]["provider_ref"],
                format!("manual-{}", s.id),
                "{w}"
            );
            assert_eq!(api.hold_status(s.hold_id).await, "captured", "{w}");
        } else {
            assert_compensated(w);
            assert_eq!(api.hold_status(s.hold_id).await, "voided", "{w}");
        }
    }
    println!("sent won {sent_won} of 50 races, failed {}", 50 - sent_won);
    api.assert_money(None, &started, &workflows, &app.database_url)
        .await;
    app.stop().await;
}
