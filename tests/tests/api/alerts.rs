//! `GET /api/v1/alerts` on both engines: who may read it, the shape of its
//! body, and an alert that fires and stops. The rules read the process-wide
//! metrics, which every test of this binary feeds: a test asserts only what
//! others cannot disturb (the window math has unit tests in `api::alerts`
//! over counters set by hand).

use api::alerts::{Counters, ProcessMetrics, Source};
use chrono::{DateTime, Utc};
use serde_json::Value;
use tests::{Engine, Reply, TestApp, both_engines, fresh_key};

const ALERTS: &str = "/api/v1/alerts";

/// Providers whose breakers these tests open.
const TEST_PROVIDER: &str = "alerts-test-";

const RULES: [(&str, &str); 6] = [
    ("high_error_rate", "critical"),
    ("high_timeout_rate", "warning"),
    ("high_latency_p99", "warning"),
    ("recovery_failures", "critical"),
    ("deadlock_retries", "warning"),
    ("circuit_breaker_open", "critical"),
];

fn since(alert: &Value) -> DateTime<Utc> {
    alert["since"].as_str().unwrap().parse().unwrap()
}

/// The alerts of a 200 answer, each checked against the contract.
#[track_caller]
fn alerts(r: &Reply) -> Vec<Value> {
    r.expect(200);
    let body = r.body.as_object().unwrap();
    assert_eq!(body.keys().collect::<Vec<_>>(), ["alerts"], "{}", r.text);
    let alerts = body["alerts"].as_array().unwrap().clone();
    for a in &alerts {
        let name = a["name"].as_str().unwrap();
        let (_, severity) = RULES
            .iter()
            .find(|(rule, _)| *rule == name)
            .unwrap_or_else(|| panic!("unknown alert {a}"));
        assert_eq!(a["severity"], *severity, "{a}");
        let (value, threshold) = (
            a["value"].as_f64().unwrap(),
            a["threshold"].as_f64().unwrap(),
        );
        assert!(value > threshold, "{a}");
        let at = a["since"].as_str().unwrap();
        assert!(at.ends_with('Z'), "{a}");
        assert!(since(a) <= Utc::now(), "{a}");
        let keys = a.as_object().unwrap().len();
        if name == "circuit_breaker_open" {
            assert!(!a["provider"].as_str().unwrap().is_empty(), "{a}");
            assert_eq!(keys, 6, "{a}");
        } else {
            assert_eq!(keys, 5, "{a}");
        }
    }
    alerts
}

fn breaker(alerts: &[Value], provider: &str) -> Option<Value> {
    alerts
        .iter()
        .find(|a| a["name"] == "circuit_breaker_open" && a["provider"] == provider)
        .cloned()
}

/// Observations above 5 s so far.
fn slow(c: &Counters) -> u64 {
    let at_5s = c
        .latency
        .bounds
        .iter()
        .position(|b| *b == 5.0)
        .map_or(0, |i| c.latency.cumulative[i]);
    c.latency.count - at_5s
}

/// Whether nothing that could fire a rule happened between two readings of
/// the process's metrics, other than the breakers of these tests.
fn quiet(before: &Counters, after: &Counters) -> bool {
    before.errors == after.errors
        && before.timeouts == after.timeouts
        && before.recovery_failures == after.recovery_failures
        && before.deadlock_retries == after.deadlock_retries
        && slow(before) == slow(after)
        && after
            .open_breakers
            .iter()
            .all(|p| p.starts_with(TEST_PROVIDER))
}

async fn only_admins_read_alerts_and_a_quiet_server_has_none(engine: Engine) {
    let before = ProcessMetrics.read();
    let app = TestApp::spawn(engine).await;
    app.get(ALERTS, None).await.problem(401, "unauthorized");
    app.get(ALERTS, Some("not-a-token"))
        .await
        .problem(401, "unauthorized");
    let user = app.create_user("alerts@x.io").await;
    app.get(ALERTS, Some(&app.user(user)))
        .await
        .problem(403, "forbidden");
    app.get(ALERTS, Some(&app.service()))
        .await
        .problem(403, "forbidden");
    // some ordinary traffic: no 5xx, nothing slow
    for _ in 0..25 {
        app.deposit(user, "1", "live").await.expect(200);
    }
    let r = app.get(ALERTS, Some(&app.admin())).await;
    let listed = alerts(&r);
    let after = ProcessMetrics.read();
    let ours = |a: &&Value| {
        a["provider"]
            .as_str()
            .is_some_and(|p| p.starts_with(TEST_PROVIDER))
    };
    if quiet(&before, &after) {
        // nothing in this server's window could fire a rule
        let others: Vec<_> = listed.iter().filter(|a| !ours(a)).collect();
        assert!(others.is_empty(), "{}", r.text);
    } else {
        eprintln!("other tests fed the shared metrics meanwhile; checked the shape only");
    }
    app.stop().await;
}

async fn an_open_circuit_breaker_fires_until_it_closes(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let provider = format!("{TEST_PROVIDER}{}", fresh_key());
    let gauge = infra::metrics::metrics()
        .workflows
        .breaker_open
        .with_label_values(&[provider.as_str()]);
    let read = async || alerts(&app.get(ALERTS, Some(&app.admin())).await);
    assert_eq!(breaker(&read().await, &provider), None);
    gauge.set(1);
    let first = breaker(&read().await, &provider).expect("no alert for the open breaker");
    assert_eq!(first["severity"], "critical");
    assert_eq!(
        (first["value"].as_f64(), first["threshold"].as_f64()),
        (Some(1.0), Some(0.0))
    );
    // it keeps its since while it fires, at reads and at the sampler's passes
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    app.state.alerts.sample();
    let again = breaker(&read().await, &provider).unwrap();
    assert_eq!(again["since"], first["since"]);
    // closed: gone, and forgotten
    gauge.set(0);
    assert_eq!(breaker(&read().await, &provider), None);
    gauge.set(1);
    let reopened = breaker(&read().await, &provider).unwrap();
    assert!(since(&reopened) > since(&first), "{reopened} / {first}");
    gauge.set(0);
    assert_eq!(breaker(&read().await, &provider), None);
    app.stop().await;
}

both_engines!(
    only_admins_read_alerts_and_a_quiet_server_has_none,
    an_open_circuit_breaker_fires_until_it_closes,
);
