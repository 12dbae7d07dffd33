//! Contract of the Workflows and Recovery routes on both engines: statuses,
//! codes, bodies, roles, validation; withdrawals against the fake payout
//! provider (paid, refused, retried, manual), deposits in review, admin
//! retry, deadlines.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::payout_sim::{Mode, PayoutSim};
use tests::{Engine, Reply, TestApp, both_engines, fresh_key};

const WITHDRAWALS: &str = "/api/v1/workflows/withdrawals";
const DEPOSITS: &str = "/api/v1/workflows/deposits";

/// A server whose workers call `sim` (none: manual payouts), with fast
/// retries.
async fn app_with(
    engine: Engine,
    sim: Option<&PayoutSim>,
    tweak: impl FnOnce(&mut infra::Config),
) -> TestApp {
    let url = sim.map(PayoutSim::url);
    TestApp::spawn_with(engine, |c| {
        let w = &mut c.workflows;
        w.payout_url = url;
        w.poll = Duration::from_millis(20);
        w.payout_retry_initial = Duration::from_millis(10);
        w.payout_retry_max = Duration::from_millis(50);
        w.review_threshold = "1000".parse().unwrap();
        tweak(c)
    })
    .await
}

fn withdrawal(user_id: i64, amount: &str) -> Value {
    json!({"user_id": user_id, "wallet": "live", "amount": amount, "destination": "acct-42"})
}

async fn start(app: &TestApp, path: &str, token: &str, body: Value) -> Reply {
    app.post(path, token, Some(&fresh_key()), body).await
}

async fn get(app: &TestApp, id: i64) -> Value {
    let r = app
        .get_ok(&format!("/api/v1/workflows/{id}"), &app.admin())
        .await;
    r.body
}

/// Polls the workflow until its status is one of `statuses` (30 s at most).
async fn wait_for(app: &TestApp, id: i64, statuses: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let w = get(app, id).await;
        if statuses.iter().any(|s| w["status"] == *s) {
            return w;
        }
        assert!(Instant::now() < deadline, "workflow {id} stuck: {w}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn act(app: &TestApp, id: i64, action: &str, token: &str, body: Value) -> Reply {
    app.post(
        &format!("/api/v1/workflows/{id}/{action}"),
        token,
        None,
        body,
    )
    .await
}

/// Reports the result of workflow `id`'s payout (`body`: its outcome).
async fn report_payout(app: &TestApp, id: i64, token: &str, body: Value) -> Reply {
    act(app, id, "payout", token, body).await
}

/// An admin decides deposit workflow `id` in review (`verb`: `approve` or
/// `reject`), giving `reason`.
async fn decide(app: &TestApp, id: i64, verb: &str, reason: &str) -> Reply {
    act(app, id, verb, &app.admin(), json!({"reason": reason})).await
}

fn step<'a>(w: &'a Value, name: &str) -> &'a Value {
    w["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
}

async fn hold_status(app: &TestApp, w: &Value) -> String {
    let id = w["hold_id"].as_i64().unwrap();
    let r = app
        .get_ok(&format!("/api/v1/holds/{id}"), &app.admin())
        .await;
    r.body["status"].as_str().unwrap().to_owned()
}

both_engines!(
    a_withdrawal_holds_pays_and_captures,
    a_refused_payout_voids_the_hold,
    withdrawal_refusals_and_roles,
    manual_payouts_wait_for_the_reported_result,
    deposits_are_credited_or_wait_for_review,
    an_admin_retry_resumes_a_failed_payout,
    an_open_breaker_holds_calls_back_and_shows_in_readiness,
    lists_filter_and_page,
    recovery_reports_and_runs_on_demand,
    deadlines_compensate_or_stop_for_an_admin,
);

async fn a_withdrawal_holds_pays_and_captures(engine: Engine) {
    let sim = PayoutSim::start(Mode::Accept).await.unwrap();
    let app = app_with(engine, Some(&sim), |_| {}).await;
    let u = app.funded_user("wd@example.com", "100").await;
    let key = fresh_key();
    let body = withdrawal(u, "30.5");
    let r = app
        .post(WITHDRAWALS, &app.user(u), Some(&key), body.clone())
        .await;
    r.expect(202);
    let w = &r.body;
    let id = w["id"].as_i64().unwrap();
    assert_eq!(w["type"], "withdrawal");
    assert_eq!(w["user_id"], u);
    assert_eq!(w["params"]["amount"], "30.5");
    assert_eq!(w["params"]["destination"], "acct-42");
    assert!(w["hold_id"].is_i64(), "{w}");
    let names: Vec<_> = w["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(names, ["hold", "payout", "capture"]);
    // The hold is placed by the start itself.
    assert_eq!(step(w, "hold")["status"], "done");
    for field in ["created_at", "updated_at"] {
        assert!(w[field].is_string(), "{field}: {w}");
    }

    let done = wait_for(&app, id, &["completed"]).await;
    assert_eq!(done["result"]["captured"], "30.5");
    assert!(done["result"]["provider_ref"].is_string(), "{done}");
    assert!(done["error"].is_null());
    for s in ["hold", "payout", "capture"] {
        assert_eq!(step(&done, s)["status"], "done", "{done}");
    }
    for s in ["hold", "payout", "capture"] {
        assert_eq!(step(&done, s)["attempts"], 1, "{done}");
    }
    assert_eq!(hold_status(&app, &done).await, "captured");
    let wallet = app.wallet(u, "live").await;
    assert_eq!(
        (wallet["balance"].as_str(), wallet["held"].as_str()),
        (Some("69.5"), Some("0"))
    );
    // The provider was paid once, with the workflow id as payout id and key.
    let paid = sim.payout(id).unwrap();
    assert_eq!(paid.payments, 1);
    assert_eq!(paid.user_id, u);
    let kinds = app.journal_kinds(u, "live").await;
    // A full capture releases nothing.
    assert_eq!(kinds, ["deposit", "hold", "hold_capture"]);

    // The same key replays the start; nothing runs again.
    let again = app.post(WITHDRAWALS, &app.user(u), Some(&key), body).await;
    again.expect(202);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body["id"], id);
    // The workflow's hold is the workflow's to end.
    let hold = done["hold_id"].as_i64().unwrap();
    app.post(
        &format!("/api/v1/holds/{hold}/void"),
        &app.admin(),
        Some(&fresh_key()),
        json!({}),
    )
    .await
    .problem(409, "hold_in_workflow");
    app.assert_books_balance().await;
}

async fn a_refused_payout_voids_the_hold(engine: Engine) {
    let sim = PayoutSim::start(Mode::Reject).await.unwrap();
    let app = app_with(engine, Some(&sim), |_| {}).await;
    let u = app.funded_user("refused@example.com", "100").await;
    let r = start(&app, WITHDRAWALS, &app.service(), withdrawal(u, "40")).await;
    r.expect(202);
    let id = r.body["id"].as_i64().unwrap();
    let w = wait_for(&app, id, &["compensated"]).await;
    assert_eq!(step(&w, "hold")["status"], "compensated");
    assert_eq!(step(&w, "payout")["status"], "failed");
    assert_eq!(step(&w, "capture")["status"], "pending");
    assert!(
        w["error"].as_str().unwrap().contains("payout failed"),
        "{w}"
    );
    assert_eq!(hold_status(&app, &w).await, "voided");
    let wallet = app.wallet(u, "live").await;
    assert_eq!(
        (wallet["balance"].as_str(), wallet["held"].as_str()),
        (Some("100"), Some("0"))
    );
    assert_eq!(sim.payments(id), 0);
    app.assert_books_balance().await;
}

async fn withdrawal_refusals_and_roles(engine: Engine) {
    let sim = PayoutSim::start(Mode::Accept).await.unwrap();
    let app = app_with(engine, Some(&sim), |_| {}).await;
    let u = app.funded_user("roles@example.com", "10").await;
    let other = app.funded_user("other@example.com", "10").await;

    start(
        &app,
        WITHDRAWALS,
        &app.user(u),
        withdrawal(u, "10.00000001"),
    )
    .await
    .problem(422, "insufficient_funds");
    start(&app, WITHDRAWALS, &app.user(other), withdrawal(u, "1"))
        .await
        .problem(403, "forbidden");
    let no_token = app
        .client
        .post(format!("{}{WITHDRAWALS}", app.base))
        .header("Idempotency-Key", fresh_key())
        .json(&withdrawal(u, "1"));
    assert_eq!(app.send(no_token).await.status, 401);
    app.post(WITHDRAWALS, &app.user(u), None, withdrawal(u, "1"))
        .await
        .problem(400, "idempotency_key_missing");
    for bad in [
        json!({"user_id": u, "wallet": "live", "amount": 1, "destination": "x"}),
        json!({"user_id": u, "wallet": "live", "amount": "0", "destination": "x"}),
        json!({"user_id": u, "wallet": "live", "amount": "1", "destination": ""}),
        json!({"user_id": u, "wallet": "live", "amount": "1", "destination": "a\u{0}b"}),
        json!({"user_id": u, "wallet": "gold", "amount": "1", "destination": "x"}),
        json!({"user_id": u, "wallet": "live", "amount": "1"}),
        json!({"user_id": u, "wallet": "live", "amount": "1", "destination": "x", "extra": 1}),
    ] {
        start(&app, WITHDRAWALS, &app.user(u), bad.clone())
            .await
            .problem(400, "invalid_request");
    }
    start(&app, WITHDRAWALS, &app.service(), withdrawal(999_999, "1"))
        .await
        .problem(404, "not_found");
    // Nothing was created by any refusal, and the balance is whole.
    let list = app
        .get_ok(&format!("/api/v1/workflows?user_id={u}"), &app.admin())
        .await;
    assert_eq!(list.body["items"], json!([]));
    assert_eq!(app.balance(u, "live").await, "10");

    let r = start(&app, WITHDRAWALS, &app.user(u), withdrawal(u, "2")).await;
    r.expect(202);
    let id = r.body["id"].as_i64().unwrap();
    // Its owner and the back office see it; another user is told it does not exist.
    app.get_ok(&format!("/api/v1/workflows/{id}"), &app.user(u))
        .await;
    app.get(&format!("/api/v1/workflows/{id}"), Some(&app.user(other)))
        .await
        .problem(404, "not_found");
    app.get("/api/v1/workflows/987654", Some(&app.admin()))
        .await
        .problem(404, "not_found");
    app.get("/api/v1/workflows", Some(&app.user(u)))
        .await
        .problem(403, "forbidden");
    // Admin-only actions.
    for (action, token) in [
        ("approve", app.service()),
        ("retry", app.service()),
        ("payout", app.user(u)),
    ] {
        let body = if action == "payout" {
            json!({"outcome": "sent"})
        } else {
            json!({})
        };
        act(&app, id, action, &token, body)
            .await
            .problem(403, "forbidden");
    }
    report_payout(&app, id, &app.admin(), json!({"outcome": "maybe"}))
        .await
        .problem(400, "invalid_request");
    wait_for(&app, id, &["completed"]).await;
    app.assert_books_balance().await;
}

async fn manual_payouts_wait_for_the_reported_result(engine: Engine) {
    let app = app_with(engine, None, |_| {}).await;
    let u = app.funded_user("manual@example.com", "100").await;
    let sent = start(&app, WITHDRAWALS, &app.user(u), withdrawal(u, "25")).await;
    sent.expect(202);
    let failed = start(&app, WITHDRAWALS, &app.user(u), withdrawal(u, "35")).await;
    failed.expect(202);
    let (sent, failed) = (
        sent.body["id"].as_i64().unwrap(),
        failed.body["id"].as_i64().unwrap(),
    );
    for id in [sent, failed] {
        let w = wait_for(&app, id, &["awaiting_payout"]).await;
        assert_eq!(step(&w, "payout")["status"], "running");
    }
    let wallet = app.wallet(u, "live").await;
    assert_eq!(wallet["held"], "60");
    assert_eq!(wallet["free_margin"], "40");

    let r = report_payout(
        &app,
        sent,
        &app.service(),
        json!({"outcome": "sent", "provider_ref": "bank-7"}),
    )
    .await;
    r.expect(200);
    let w = wait_for(&app, sent, &["completed"]).await;
    assert_eq!(w["result"]["provider_ref"], "bank-7");
    let r = report_payout(&app, failed, &app.admin(), json!({"outcome": "failed"})).await;
    r.expect(200);
    wait_for(&app, failed, &["compensated"]).await;
    // The result is recorded once.
    let again = report_payout(&app, sent, &app.admin(), json!({"outcome": "failed"})).await;
    again.problem(409, "workflow_state");
    assert_eq!(again.body["workflow_status"], "completed");
    report_payout(&app, failed, &app.admin(), json!({"outcome": "sent"}))
        .await
        .problem(409, "workflow_state");
    report_payout(&app, 987_654, &app.admin(), json!({"outcome": "sent"}))
        .await
        .problem(404, "not_found");
    let wallet = app.wallet(u, "live").await;
    assert_eq!(
        (wallet["balance"].as_str(), wallet["held"].as_str()),
        (Some("75"), Some("0"))
    );
    app.assert_books_balance().await;
}

fn deposit(user_id: i64, amount: &str) -> Value {
    json!({"user_id": user_id, "wallet": "live", "amount": amount,
           "payment_method": "card", "reference": "psp-1"})
}

async fn deposits_are_credited_or_wait_for_review(engine: Engine) {
    let app = app_with(engine, None, |_| {}).await;
    let u = app.create_user("dep@example.com").await;
    // Below the threshold (1000 here): checked at once, then credited.
    let small = start(&app, DEPOSITS, &app.service(), deposit(u, "999.99999999")).await;
    small.expect(202);
    assert_eq!(step(&small.body, "compliance")["status"], "done");
    let id = small.body["id"].as_i64().unwrap();
    let w = wait_for(&app, id, &["completed"]).await;
    assert_eq!(w["result"]["credited"], "999.99999999");
    // each step ran once
    for s in ["compliance", "credit"] {
        assert_eq!(step(&w, s)["attempts"], 1, "{w}");
    }
    assert_eq!(app.balance(u, "live").await, "999.99999999");

    // At the threshold: waits for a reviewer.
    let big = start(&app, DEPOSITS, &app.service(), deposit(u, "1000")).await;
    big.expect(202);
    assert_eq!(big.body["status"], "awaiting_review");
    // the check ran, and its step waits for the reviewer
    let check = step(&big.body, "compliance");
    assert_eq!(
        (&check["status"], &check["attempts"]),
        (&json!("running"), &json!(1))
    );
    assert_eq!(step(&big.body, "credit")["attempts"], 0);
    let big = big.body["id"].as_i64().unwrap();
    let other = start(&app, DEPOSITS, &app.admin(), deposit(u, "5000")).await;
    other.expect(202);
    let other = other.body["id"].as_i64().unwrap();
    assert_eq!(app.balance(u, "live").await, "999.99999999");

    act(&app, big, "approve", &app.service(), json!({}))
        .await
        .problem(403, "forbidden");
    // a decision may carry an Idempotency-Key: a repeat replays its answer
    let approve = format!("/api/v1/workflows/{big}/approve");
    let key = fresh_key();
    let checked = json!({"reason": "documents checked"});
    let r = app
        .post(&approve, &app.admin(), Some(&key), checked.clone())
        .await;
    r.expect(200);
    assert_eq!(step(&r.body, "compliance")["status"], "done");
    let again = app.post(&approve, &app.admin(), Some(&key), checked).await;
    assert_eq!((again.status, &again.text), (200, &r.text));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    app.post(
        &approve,
        &app.admin(),
        Some(&key),
        json!({"reason": "other"}),
    )
    .await
    .problem(422, "idempotency_key_reused");
    wait_for(&app, big, &["completed"]).await;
    act(&app, big, "approve", &app.admin(), json!({}))
        .await
        .problem(409, "workflow_state");

    let r = decide(&app, other, "reject", "source of funds unclear").await;
    r.expect(200);
    assert_eq!(r.body["status"], "rejected");
    assert_eq!(r.body["error"], "source of funds unclear");
    assert_eq!(step(&r.body, "compliance")["status"], "failed");
    act(&app, other, "approve", &app.admin(), json!({}))
        .await
        .problem(409, "workflow_state");
    act(&app, other, "reject", &app.admin(), json!({"bogus": 1}))
        .await
        .problem(400, "invalid_request");
    assert_eq!(app.balance(u, "live").await, "1999.99999999");

    // Roles and refusals.
    start(&app, DEPOSITS, &app.user(u), deposit(u, "1"))
        .await
        .problem(403, "forbidden");
    start(&app, DEPOSITS, &app.service(), deposit(999_999, "1"))
        .await
        .problem(404, "not_found");
    let mut bad = deposit(u, "1");
    bad["payment_method"] = json!("");
    start(&app, DEPOSITS, &app.service(), bad)
        .await
        .problem(400, "invalid_request");
    app.assert_books_balance().await;
}

async fn an_admin_retry_resumes_a_failed_payout(engine: Engine) {
    let sim = PayoutSim::start(Mode::FailFirst(1_000)).await.unwrap();
    let app = app_with(engine, Some(&sim), |c| c.workflows.payout_max_attempts = 3).await;
    let u = app.funded_user("retry@example.com", "50").await;
    let r = start(&app, WITHDRAWALS, &app.user(u), withdrawal(u, "20")).await;
    r.expect(202);
    let id = r.body["id"].as_i64().unwrap();
    let w = wait_for(&app, id, &["failed"]).await;
    assert_eq!(step(&w, "payout")["attempts"], 3);
    assert!(
        w["error"].as_str().unwrap().contains("outcome unknown"),
        "{w}"
    );
    // The funds stay held while the outcome is unknown.
    assert_eq!(hold_status(&app, &w).await, "held");
    act(&app, id, "retry", &app.service(), json!({}))
        .await
        .problem(403, "forbidden");

    sim.set_mode(Mode::Accept);
    let r = act(&app, id, "retry", &app.admin(), json!({})).await;
    r.expect(200);
    assert_eq!(r.body["status"], "running");
    assert!(r.body["error"].is_null());
    let w = wait_for(&app, id, &["completed"]).await;
    assert_eq!(step(&w, "payout")["attempts"], 1);
    assert_eq!(sim.payments(id), 1);
    act(&app, id, "retry", &app.admin(), json!({}))
        .await
        .problem(409, "workflow_state");
    assert_eq!(app.balance(u, "live").await, "30");
    app.assert_books_balance().await;
}

async fn lists_filter_and_page(engine: Engine) {
    let app = app_with(engine, None, |_| {}).await;
    let a = app.funded_user("la@example.com", "100").await;
    let b = app.funded_user("lb@example.com", "100").await;
    let mut ids = Vec::new();
    for (user, path, body) in [
        (a, WITHDRAWALS, withdrawal(a, "1")),
        (b, WITHDRAWALS, withdrawal(b, "1")),
        (a, DEPOSITS, deposit(a, "2000")),
    ] {
        let token = if path == DEPOSITS {
            app.service()
        } else {
            app.user(user)
        };
        let r = start(&app, path, &token, body).await;
        r.expect(202);
        ids.push(r.body["id"].as_i64().unwrap());
    }
    let list = |q: String| {
        let app = &app;
        async move {
            let r = app
                .get_ok(&format!("/api/v1/workflows{q}"), &app.service())
                .await;
            r.body
        }
    };
    let ids_of = |v: &Value| -> Vec<i64> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["id"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(ids_of(&list(String::new()).await), [ids[2], ids[1], ids[0]]);
    assert_eq!(
        ids_of(&list(format!("?user_id={a}")).await),
        [ids[2], ids[0]]
    );
    assert_eq!(ids_of(&list("?type=deposit".into()).await), [ids[2]]);
    assert_eq!(
        ids_of(&list("?status=awaiting_review".into()).await),
        [ids[2]]
    );
    let first = list("?limit=2".into()).await;
    assert_eq!(ids_of(&first), [ids[2], ids[1]]);
    let cursor = first["next_before_id"].as_i64().unwrap();
    let rest = list(format!("?limit=2&before_id={cursor}")).await;
    assert_eq!(ids_of(&rest), [ids[0]]);
    assert!(rest["next_before_id"].is_null());
    for bad in ["?limit=0", "?limit=501", "?status=done", "?type=transfer"] {
        app.get(&format!("/api/v1/workflows{bad}"), Some(&app.admin()))
            .await
            .problem(400, "invalid_request");
    }
}

async fn recovery_reports_and_runs_on_demand(engine: Engine) {
    let app = app_with(engine, None, |c| {
        c.workflows.recovery_interval = Duration::ZERO
    })
    .await;
    app.get("/api/v1/recovery/status", Some(&app.service()))
        .await
        .problem(403, "forbidden");
    app.post("/api/v1/recovery/trigger", &app.user(1), None, json!({}))
        .await
        .problem(403, "forbidden");
    // The pass at start.
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = loop {
        let r = app.get_ok("/api/v1/recovery/status", &app.admin()).await;
        if r.body["runs"].as_u64().unwrap() >= 1 {
            break r.body;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery pass at start: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for field in [
        "resumed",
        "compensated",
        "failed",
        "expired_locks",
        "expired_holds",
        "released_idempotency_claims",
    ] {
        assert!(before[field].is_u64(), "{field}: {before}");
    }
    assert!(before["last_run_at"].is_string());
    let r = app
        .post("/api/v1/recovery/trigger", &app.admin(), None, json!({}))
        .await;
    r.expect(200);
    assert_eq!(
        r.body["runs"].as_u64(),
        before["runs"].as_u64().map(|n| n + 1)
    );
}

async fn deadlines_compensate_or_stop_for_an_admin(engine: Engine) {
    // No workers: the withdrawal never reaches its payout; the deposit
    // waits in review; a manual payout is awaited by a second server.
    let app = app_with(engine, None, |c| {
        c.workflows.workers = 0;
        c.workflows.deadline = Duration::from_millis(300);
        c.workflows.recovery_interval = Duration::ZERO;
    })
    .await;
    let u = app.funded_user("late@example.com", "100").await;
    let w = start(&app, WITHDRAWALS, &app.user(u), withdrawal(u, "10")).await;
    w.expect(202);
    let w = w.body["id"].as_i64().unwrap();
    let d = start(&app, DEPOSITS, &app.service(), deposit(u, "5000")).await;
    d.expect(202);
    let d = d.body["id"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = app
        .post("/api/v1/recovery/trigger", &app.admin(), None, json!({}))
        .await;
    r.expect(200);
    assert!(r.body["compensated"].as_u64().unwrap() >= 2, "{}", r.body);
    let w = get(&app, w).await;
    assert_eq!(w["status"], "compensated", "{w}");
    assert_eq!(step(&w, "hold")["status"], "compensated");
    assert!(w["error"].as_str().unwrap().contains("deadline"));
    assert_eq!(hold_status(&app, &w).await, "voided");
    let d = get(&app, d).await;
    assert_eq!(d["status"], "compensated", "{d}");
    assert_eq!(app.balance(u, "live").await, "100");
    app.assert_books_balance().await;
}

async fn an_open_breaker_holds_calls_back_and_shows_in_readiness(engine: Engine) {
    let sim = PayoutSim::start(Mode::FailFirst(2)).await.unwrap();
    let app = app_with(engine, Some(&sim), |c| {
        c.workflows.breaker_failures = 2;
        c.workflows.breaker_open = Duration::from_secs(2);
    })
    .await;
    let provider = sim.addr().to_string();
    let u = app.funded_user("breaker@example.com", "50").await;
    let r = start(&app, WITHDRAWALS, &app.user(u), withdrawal(u, "5")).await;
    r.expect(202);
    let id = r.body["id"].as_i64().unwrap();
    // Two 503s in a row open the breaker: readiness and the metric say so,
    // and no call is made while it is open.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = app.get("/health/ready", None).await;
        ready.expect(200);
        let open = ready.body["breakers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["provider"] == provider.as_str() && b["state"] == "open");
        if open {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "breaker never opened: {}",
            ready.body
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let metrics = app.get("/metrics", None).await.text;
    let line = format!("ledger_circuit_breaker_open{{provider=\"{provider}\"}} 1");
    assert!(metrics.contains(&line), "{line} missing");
    assert_eq!(sim.calls(id), 2);
    // After the open time one trial call goes through, pays, and closes it.
    let w = wait_for(&app, id, &["completed"]).await;
    assert_eq!(step(&w, "payout")["attempts"], 3);
    assert_eq!(sim.payments(id), 1);
    let ready = app.get("/health/ready", None).await;
    let states: Vec<_> = ready.body["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["provider"] == provider.as_str())
        .map(|b| b["state"].clone())
        .collect();
    assert_eq!(states, ["closed"]);
}
