//! Group commit: money writes that arrive together share one transaction and
//! one commit. Each test states its invariant; PostgreSQL runs the contract's
//! counts, SQLite the same invariants at lower ones.

use std::time::Duration;

use futures::future::join_all;
use rust_decimal::Decimal;
use serde_json::json;
use tests::{
    Engine, Reply, TestApp, assert_no_5xx, both_engines, dec, fresh_key, live, scale, shared,
};

const DEPOSIT: &str = "/api/v1/wallets/deposit";
const WITHDRAW: &str = "/api/v1/wallets/withdraw";
const TRANSFER: &str = "/api/v1/wallets/transfer";

/// How many group-commit transactions carried more than one write so far
/// (process-wide: a floor, not an exact count, with tests in parallel).
fn shared_groups() -> u64 {
    shared(&infra::metrics::metrics().group_size)
}

/// Groups of deposits run without savepoints so far, by outcome
/// (`committed` or `rerun`; process-wide, a floor).
fn together(outcome: &str) -> u64 {
    infra::metrics::metrics()
        .group_together
        .with_label_values(&[outcome])
        .get()
}

fn journal_count(body: &serde_json::Value, kind: &str) -> usize {
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .count()
}

/// Invariant: deposits pouring into one wallet while withdrawals race to
/// drain it — the balance ends exactly at opening + Σ successful deposits −
/// Σ successful withdrawals, never below zero; every refusal is 422
/// `insufficient_funds`; each key executed once (journal entries = successes,
/// and every key replays its own answer); the books reconcile.
async fn a_hot_wallet_drained_while_filled(engine: Engine) {
    let (deposits, withdrawals) = (scale(engine, 500, 100), scale(engine, 200, 40));
    let (app, u) = TestApp::with_funded_user(engine, "hot-group@x.io", "100").await;
    let (service, user) = (app.service(), app.user(u));
    let mut calls = Vec::new();
    for i in 0..deposits.max(withdrawals) {
        if i < deposits {
            calls.push((DEPOSIT, service.clone(), fresh_key(), "1"));
        }
        if i < withdrawals {
            calls.push((WITHDRAW, user.clone(), fresh_key(), "4"));
        }
    }
    let shared_before = shared_groups();
    let replies: Vec<Reply> = join_all(calls.iter().map(|(path, token, key, amount)| {
        app.post(
            path,
            token,
            Some(key),
            json!({"user_id": u, "amount": amount, "wallet": "live"}),
        )
    }))
    .await;
    assert_no_5xx(&replies);
    let mut expected = dec("100");
    let (mut deposited, mut withdrawn) = (0, 0);
    for ((path, _, _, amount), r) in calls.iter().zip(&replies) {
        match (r.status, *path) {
            (200, DEPOSIT) => {
                deposited += 1;
                expected += dec(amount);
            }
            (200, _) => {
                withdrawn += 1;
                expected -= dec(amount);
            }
            (422, WITHDRAW) => {
                r.problem(422, "insufficient_funds");
            }
            _ => panic!("{path}: {} {}", r.status, r.text),
        }
        // a group never mixes answers: each reply is its own request's
        if r.status == 200 {
            assert_eq!(dec(r.body["amount"].as_str().unwrap()), dec(amount));
            assert_eq!(r.body["user_id"], u);
        }
    }
    assert_eq!(deposited, deposits, "every deposit succeeds");
    assert!(expected >= Decimal::ZERO);
    assert_eq!(dec(&app.balance(u, "live").await), expected);
    let journal = app
        .get(
            &format!("/api/v1/users/{u}/transactions?wallet=live&limit=500"),
            Some(&app.admin()),
        )
        .await;
    let mut all = journal.body.clone();
    let mut next = journal.body["next_before_id"].as_i64();
    while let Some(before) = next {
        let page = app
            .get(
                &format!("/api/v1/users/{u}/transactions?wallet=live&limit=500&before_id={before}"),
                Some(&app.admin()),
            )
            .await;
        all["items"]
            .as_array_mut()
            .unwrap()
            .extend(page.body["items"].as_array().unwrap().iter().cloned());
        next = page.body["next_before_id"].as_i64();
    }
    // the opening deposit of `funded_user` plus this test's
    assert_eq!(journal_count(&all, "deposit"), deposited + 1);
    assert_eq!(journal_count(&all, "withdrawal"), withdrawn);
    for ((path, token, key, amount), first) in calls.iter().zip(&replies).take(60) {
        let again = app
            .post(
                path,
                token,
                Some(key),
                json!({"user_id": u, "amount": amount, "wallet": "live"}),
            )
            .await;
        assert_eq!((again.status, &again.text), (first.status, &first.text));
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
    }
    assert_eq!(dec(&app.balance(u, "live").await), expected);
    assert!(
        shared_groups() > shared_before,
        "writes arriving together never shared a commit"
    );
    app.assert_books_balance_and_stop().await;
}

/// Invariant: a group that contains a refused write commits the others, and
/// each request gets its own answer. One group at a time: while the first
/// write waits on the wallet's row lock (held from outside), the next ones
/// queue up and then run together in the following transaction.
async fn a_refusal_in_a_group_commits_the_others(engine: Engine) {
    let app = TestApp::spawn_with(engine, |c| c.group_commit.groups = 1).await;
    let a = app.funded_user("group-a@x.io", "10").await;
    let b = app.funded_user("group-b@x.io", "10").await;
    let (outside, blocker) = app.block_wallets_of(a).await;
    let shared_before = shared_groups();
    let service = app.service();
    let first_key = fresh_key();
    let first = app.post(DEPOSIT, &service, Some(&first_key), live(a, "1"));
    let (user_a, user_b) = (app.user(a), app.user(b));
    let rest =
        async {
            // the first write is in its transaction, waiting for the lock
            tokio::time::sleep(Duration::from_millis(300)).await;
            let writes = [
                (DEPOSIT, service.clone(), live(b, "2")),
                (WITHDRAW, user_a.clone(), live(a, "1000")),
                (WITHDRAW, user_b.clone(), live(b, "3")),
                (DEPOSIT, service.clone(), live(a, "5")),
            ];
            let keys: Vec<String> = writes.iter().map(|_| fresh_key()).collect();
            let sent =
                join_all(writes.iter().zip(&keys).map(|((path, token, body), key)| {
                    app.post(path, token, Some(key), body.clone())
                }));
            released_after(blocker, 300, sent).await
        };
    let (first, replies) = tokio::join!(first, rest);
    first.expect(200);
    // the four arrive in any order; each answer is its own request's
    assert_written(&replies[0], b, "2");
    replies[1].problem(422, "insufficient_funds");
    replies[2].expect(200);
    assert_eq!(
        (
            replies[2].body["user_id"].as_i64(),
            replies[2].body["kind"].as_str()
        ),
        (Some(b), Some("withdrawal"))
    );
    replies[3].expect(200);
    assert_eq!(replies[3].body["amount"], "5");
    assert_eq!(app.balance(a, "live").await, "16");
    assert_eq!(app.balance(b, "live").await, "9");
    shared_then_stop(app, outside, shared_before, "writes").await;
}

/// The end of a test whose queued writes had to share a group: they did
/// (`what` names them in the failure), the blocker's connection closes and
/// the books balance.
async fn shared_then_stop(
    app: TestApp,
    outside: sea_orm::DatabaseConnection,
    shared_before: u64,
    what: &str,
) {
    assert!(
        shared_groups() > shared_before,
        "the queued {what} ran alone"
    );
    outside.close().await.unwrap();
    app.assert_books_balance_and_stop().await;
}

/// Sends `sent` (writes that queue behind `blocker`'s lock) and rolls
/// `blocker` back `ms` milliseconds later; returns what `sent` answered.
async fn released_after<T>(
    blocker: sea_orm::DatabaseTransaction,
    ms: u64,
    sent: impl Future<Output = T>,
) -> T {
    let release = async {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        blocker.rollback().await.unwrap();
    };
    let (replies, ()) = tokio::join!(sent, release);
    replies
}

/// A 200 for a write of `amount` to `user`.
#[track_caller]
fn assert_written(r: &Reply, user: i64, amount: &str) {
    r.expect(200);
    assert_eq!(
        (r.body["user_id"].as_i64(), r.body["amount"].as_str()),
        (Some(user), Some(amount))
    );
}

/// Invariant: a group of deposits only (planned in memory and written
/// together: one wallet UPDATE, one journal INSERT, one key statement) in
/// which one is refused and one replays a key still commits the others once
/// each, and each request gets its own answer: the refused one leaves
/// nothing, the replay is the first answer byte for byte.
async fn a_refused_deposit_in_a_group_of_deposits_commits_the_others(engine: Engine) {
    let app = TestApp::spawn_with(engine, |c| c.group_commit.groups = 1).await;
    let a = app.funded_user("deposits-a@x.io", "10").await;
    let b = app.funded_user("deposits-b@x.io", "10").await;
    let service = app.service();
    let (outside, blocker) = app.block_wallets_of(a).await;
    let (shared_before, together_before) = (shared_groups(), together("committed"));
    let first_key = fresh_key();
    let first = app.post(DEPOSIT, &service, Some(&first_key), live(a, "1"));
    let shared_app = &app;
    let rest = async {
        // the first deposit is in its transaction, waiting for the lock
        tokio::time::sleep(Duration::from_millis(300)).await;
        // queued in this order: b's deposit runs before the refused one
        let writes = [
            (fresh_key(), live(b, "2")),
            (fresh_key(), live(999_999, "1")),
            (fresh_key(), live(a, "5")),
            // the first deposit again: by the time its group runs, a replay
            (first_key.clone(), live(a, "1")),
        ];
        let sent = join_all(writes.iter().enumerate().map(|(i, (key, body))| {
            let (service, body) = (&service, body.clone());
            async move {
                tokio::time::sleep(Duration::from_millis(40 * i as u64)).await;
                shared_app.post(DEPOSIT, service, Some(key), body).await
            }
        }));
        released_after(blocker, 400, sent).await
    };
    let (first, replies) = tokio::join!(first, rest);
    first.expect(200);
    replies[3].expect(200);
    assert_eq!(
        replies[3].body, first.body,
        "the replay is the first answer"
    );
    assert_written(&replies[0], b, "2");
    replies[1].problem(404, "not_found");
    replies[2].expect(200);
    assert_eq!(replies[2].body["amount"], "5");
    assert_eq!(app.balance(a, "live").await, "16");
    assert_eq!(app.balance(b, "live").await, "12");
    // b: the opening deposit and this one; a: the opening one, the first
    // and the 5, not a second 1 from the replay
    let deposits = |kinds: Vec<String>| kinds.iter().filter(|k| *k == "deposit").count();
    assert_eq!(deposits(app.journal_kinds(b, "live").await), 2);
    assert_eq!(deposits(app.journal_kinds(a, "live").await), 3);
    assert!(
        together("committed") > together_before,
        "no group of deposits was written together"
    );
    shared_then_stop(app, outside, shared_before, "deposits").await;
}

fn transfer((from, to): (i64, i64), amount: &str) -> serde_json::Value {
    json!({ "from_user_id": from, "to_user_id": to, "amount": amount, "wallet": "live" })
}

/// Invariant: a group of writes that each run in a savepoint (transfers
/// here) in which one is refused commits the others, and each request gets
/// its own answer. One such group at a time: while the first transfer waits
/// on its wallets' row lock (held from outside), the next ones queue up and
/// then run together in the following transaction.
async fn a_refused_transfer_in_a_savepoint_group_commits_the_others(engine: Engine) {
    let app = TestApp::spawn_with(engine, |c| c.group_commit.savepoint_groups = 1).await;
    let a = app.funded_user("sp-a@x.io", "10").await;
    let b = app.funded_user("sp-b@x.io", "10").await;
    let c = app.funded_user("sp-c@x.io", "10").await;
    let (outside, blocker) = app.block_wallets_of(a).await;
    let shared_before = shared_groups();
    let (user_a, user_b, user_c) = (app.user(a), app.user(b), app.user(c));
    let first_key = fresh_key();
    let first = app.post(TRANSFER, &user_a, Some(&first_key), transfer((a, b), "1"));
    let shared_app = &app;
    let rest = async {
        // the first transfer is in its transaction, waiting for the lock
        tokio::time::sleep(Duration::from_millis(300)).await;
        let writes = [
            (user_b.clone(), transfer((b, c), "2")),
            (user_c.clone(), transfer((c, b), "1000")),
            (user_b.clone(), transfer((b, c), "3")),
        ];
        let sent = join_all(writes.iter().enumerate().map(|(i, (token, body))| {
            let body = body.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(40 * i as u64)).await;
                shared_app
                    .post(TRANSFER, token, Some(&fresh_key()), body)
                    .await
            }
        }));
        released_after(blocker, 400, sent).await
    };
    let (first, replies) = tokio::join!(first, rest);
    first.expect(200);
    let moved = |r: &Reply| {
        r.expect(200);
        (
            r.body["from"]["user_id"].as_i64(),
            r.body["to"]["user_id"].as_i64(),
            r.body["amount"].as_str().map(str::to_owned),
        )
    };
    assert_eq!(moved(&replies[0]), (Some(b), Some(c), Some("2".into())));
    replies[1].problem(422, "insufficient_funds");
    assert_eq!(moved(&replies[2]), (Some(b), Some(c), Some("3".into())));
    assert_eq!(app.balance(a, "live").await, "9");
    assert_eq!(app.balance(b, "live").await, "6");
    assert_eq!(app.balance(c, "live").await, "15");
    shared_then_stop(app, outside, shared_before, "transfers").await;
}

both_engines!(
    a_hot_wallet_drained_while_filled,
    a_refusal_in_a_group_commits_the_others,
    a_refused_deposit_in_a_group_of_deposits_commits_the_others,
    a_refused_transfer_in_a_savepoint_group_commits_the_others
);

/// Invariant: writes that run in savepoints (a transfer) and deposits queue
/// apart, each with groups of their own: a transfer between two users is
/// answered while a deposit group waits on a third user's row lock, with
/// one group of each kind allowed at once. PostgreSQL only: on SQLite the
/// blocker holds the database's one write lock, which every write waits for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transfer_does_not_wait_behind_a_deposit_group() {
    let app = TestApp::spawn_with(Engine::Postgres, |c| {
        c.group_commit.groups = 1;
        c.group_commit.savepoint_groups = 1;
    })
    .await;
    let a = app.funded_user("apart-a@x.io", "10").await;
    let b = app.funded_user("apart-b@x.io", "10").await;
    let c = app.create_user("apart-c@x.io").await;
    let (outside, blocker) = app.block_wallets_of(a).await;
    let service = app.service();
    let key = fresh_key();
    let deposit = app.post(DEPOSIT, &service, Some(&key), live(a, "1"));
    let user_b = app.user(b);
    let meanwhile = async {
        // the deposit's group holds the one deposit slot, waiting for the lock
        tokio::time::sleep(Duration::from_millis(300)).await;
        let moved = app
            .post(TRANSFER, &user_b, Some(&fresh_key()), transfer((b, c), "4"))
            .await;
        // answered while the deposit is still blocked
        let still_blocked = app.balance(a, "live").await;
        blocker.rollback().await.unwrap();
        (moved, still_blocked)
    };
    let (deposited, (moved, still_blocked)) = tokio::join!(deposit, meanwhile);
    moved.expect(200);
    assert_eq!(still_blocked, "10", "the deposit ran before the transfer");
    deposited.expect(200);
    assert_eq!(app.balance(a, "live").await, "11");
    assert_eq!(app.balance(b, "live").await, "6");
    assert_eq!(app.balance(c, "live").await, "4");
    outside.close().await.unwrap();
    app.assert_books_balance_and_stop().await;
}

/// Invariant: orders opened and closed together are planned in memory and
/// written in the group's one statement, with the rules of one order at a
/// time: with free margin for exactly 10 orders, 30 opens queued behind the
/// wallet's row lock give exactly 10 × 201 (distinct ids, each readable as
/// answered, each journaled once) and 20 × 422 `insufficient_margin` that
/// change nothing; 20 closes queued the same way, two for each order, close
/// each once (10 × 200, 10 × 409 `order_not_open`); the referrer's pending
/// commissions are those of the 20 fees; a key sent again replays its
/// answer; the books balance. The writes of a group after the first are
/// written at one instant (the orders share `opened_at`, then
/// `closed_at`), which the statement-by-statement path never does.
/// PostgreSQL only: on SQLite orders run in savepoints (`Ledger::plans`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_opened_and_closed_together_are_written_together() {
    let app = TestApp::spawn_with(Engine::Postgres, |c| c.group_commit.groups = 1).await;
    let (u, rid) = referred_trader(&app, "orders-group").await;
    let (outside, blocker) = app.block_wallets_of(u).await;
    let together_before = together("committed");
    let user = app.user(u);
    let order = json!({
        "user_id": u, "symbol": "BTCUSD", "side": "buy",
        "quantity": "1", "leverage": 10, "wallet": "live",
    });
    let keys: Vec<String> = (0..30).map(|_| fresh_key()).collect();
    let send = |key: &String| {
        let (app, user, key, order) = (&app, &user, key.clone(), order.clone());
        async move { app.post("/api/v1/orders", user, Some(&key), order).await }
    };
    let sent = keys.iter().map(send).collect();
    let replies = queued_behind_the_wallet(blocker, sent).await;
    let ids = opened_together(&app, &user, (u, rid), &replies, together_before).await;
    let mut distinct = ids.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 10, "each order its own id");
    for (key, first) in keys.iter().zip(&replies).take(12) {
        let again = send(key).await;
        assert_eq!((again.status, &again.text), (first.status, &first.text));
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
    }

    // each order closed twice at once, behind the wallet's lock again
    outside.close().await.unwrap();
    let (outside, blocker) = app.block_wallets_of(u).await;
    let closes = ids.iter().chain(&ids).map(|&id| {
        let (app, user) = (&app, &user);
        async move {
            app.post(
                &format!("/api/v1/orders/{id}/close"),
                user,
                Some(&fresh_key()),
                json!({}),
            )
            .await
        }
    });
    let closed = released_after(blocker, 500, join_all(closes)).await;
    // each order closes once
    let (done, closed_ids) = orders_won(&closed, 200, (409, "order_not_open"));
    assert_eq!(closed_ids, ids);
    let at = read_as_answered(&app, &user, &done, "closed_at").await;
    assert!(at <= 2, "the queued closes were not written together");
    // the price did not move: each close costs its 0.1 fee
    let closes = [("margin_release", 10), ("close_fee", 10)];
    assert_booked(&app, (u, rid), ["99", "0", "99"], closes, "0.4").await;
    outside.close().await.unwrap();
    app.assert_books_balance_and_stop().await;
}

/// A user referred by another, with 101 in their live wallet to trade
/// BTCUSD at 100 (each order of 1 at leverage 10 costs 10 margin and a fee
/// of 0.1: free margin for exactly 10): the user's id and the referrer's.
async fn referred_trader(app: &TestApp, name: &str) -> (i64, i64) {
    let referrer = app.signup(&format!("{name}-hub@x.io"), None).await;
    let rid = referrer["id"].as_i64().unwrap();
    let code = referrer["referral_code"].as_str().unwrap().to_owned();
    let u = app.signup(&format!("{name}@x.io"), Some(&code)).await["id"]
        .as_i64()
        .unwrap();
    app.deposit(u, "101", "live").await.expect(200);
    app.set_price("BTCUSD", "100").await.expect(200);
    (u, rid)
}

/// Invariant: trades on signals queued together run in the group's one
/// transaction, each under its own lock, granted and released there with
/// the trade's answer as its result: with free margin for exactly 10
/// orders, 30 opens on 30 fresh signals queued behind the wallet's row lock
/// give exactly 10 × 201 and 20 × 422 `insufficient_margin`, the orders
/// written at one instant; each signal's history holds one lock, released,
/// behind a fencing token, its result the answer (the order or the
/// problem), and nothing is left held or waiting; each winning signal asked
/// again under another key answers its order (200, `deduplicated`); each
/// key replays its answer; the referrer's commissions and the books are
/// exact. A second bot on one of the signals, in the same group, leaves it
/// (the others are still written together) and is answered that signal's
/// one trade. PostgreSQL only (`Ledger::plans`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trades_on_signals_are_written_together() {
    let app = TestApp::spawn_with(Engine::Postgres, |c| c.group_commit.groups = 1).await;
    let (u, rid) = referred_trader(&app, "signals-group").await;
    let (outside, blocker) = app.block_wallets_of(u).await;
    let together_before = together("committed");
    let user = app.user(u);
    let order = |i: usize| {
        json!({
            "user_id": u, "symbol": "BTCUSD", "side": "buy", "quantity": "1",
            "leverage": 10, "wallet": "live", "signal_id": format!("g-{i}"),
        })
    };
    let keys: Vec<String> = (0..30).map(|_| fresh_key()).collect();
    let sent_after = |i: usize, key: &str, ms: u64| {
        let (app, user, key, body) = (&app, &user, key.to_owned(), order(i));
        async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            app.post("/api/v1/orders", user, Some(&key), body).await
        }
    };
    let send = |i: usize, key: &str| sent_after(i, key, 0);
    // a second bot on signal 1, queued with the others (another key), after
    // the first: the same group, behind it
    let twin_key = fresh_key();
    let sent = keys
        .iter()
        .enumerate()
        .map(|(i, key)| send(i, key))
        .chain(std::iter::once(sent_after(1, &twin_key, 100)))
        .collect();
    let mut replies = queued_behind_the_wallet(blocker, sent).await;
    let mut twin = replies.pop().unwrap();
    // one trade on signal 1, made by one of the two bots (the first, unless
    // the second reached the group before it), answered to the other (the
    // order, deduplicated, or the same refusal)
    let (mut keys, mut twin_key) = (keys, twin_key);
    if twin.status == 201 {
        std::mem::swap(&mut replies[1], &mut twin);
        std::mem::swap(&mut keys[1], &mut twin_key);
    }
    opened_together(&app, &user, (u, rid), &replies, together_before).await;
    if replies[1].status == 201 {
        twin.expect(200);
        assert_eq!(twin.body["deduplicated"], true, "{}", twin.text);
        assert_eq!(twin.body["id"], replies[1].body["id"]);
    } else {
        twin.problem(422, "insufficient_margin");
    }
    let again = send(1, &twin_key).await;
    assert_eq!((again.status, &again.text), (twin.status, &twin.text));
    let admin = app.admin();
    for (i, r) in replies.iter().enumerate() {
        let resource = format!("trade:{u}:BTCUSD:buy:g-{i}");
        let info = app
            .get_ok(&format!("/api/v1/locks/resources/{resource}"), &admin)
            .await;
        assert!(info.body["lock"].is_null(), "{resource} is held");
        assert_eq!(info.body["queue"], json!([]), "{resource} has waiters");
        let [lock] = info.body["history"].as_array().unwrap().as_slice() else {
            panic!("{resource}: one lock expected: {}", info.body)
        };
        assert_eq!(lock["status"], "released", "{lock}");
        assert_eq!(lock["result"], r.body, "{resource}: the lock's result");
        assert!(lock["fencing_token"].as_i64().unwrap() >= 1, "{lock}");
        let again = send(i, &keys[i]).await;
        assert_eq!((again.status, &again.text), (r.status, &r.text));
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        if r.status == 201 {
            let dup = send(i, &fresh_key()).await;
            dup.expect(200);
            assert_eq!(dup.body["deduplicated"], true, "{}", dup.text);
            assert_eq!(dup.body["id"], r.body["id"]);
        }
    }
    assert_eq!(
        app.get_ok(&format!("/api/v1/users/{u}/orders"), &admin)
            .await
            .body["items"]
            .as_array()
            .unwrap()
            .len(),
        10
    );
    outside.close().await.unwrap();
    app.assert_books_balance_and_stop().await;
}

/// Sends the first of `sent` and, once it waits on the wallet's row lock
/// that `blocker` holds, the others, then lets the lock go 300 ms later:
/// every answer, in order. The first must open its order.
async fn queued_behind_the_wallet<F: Future<Output = Reply>>(
    blocker: sea_orm::DatabaseTransaction,
    sent: Vec<F>,
) -> Vec<Reply> {
    let mut sent = sent.into_iter();
    let first = sent.next().unwrap();
    let rest = async {
        // the first order is in its transaction, waiting for the lock
        tokio::time::sleep(Duration::from_millis(300)).await;
        released_after(blocker, 300, join_all(sent)).await
    };
    let (first, rest) = tokio::join!(first, rest);
    first.expect(201);
    std::iter::once(first).chain(rest).collect()
}

/// Of `replies`, queued behind the wallet of user `u` (who has free margin
/// for exactly 10 orders: see `referred_trader`), 10 opened orders, each
/// reading as answered, written together (at one instant, in a group
/// counted since `together_before`) and booked (10 margin holds and 10
/// fees; referrer `rid`'s level 1 earns 20 % of each 0.1 fee), the others
/// refused `insufficient_margin`: the orders' ids, sorted.
async fn opened_together(
    app: &TestApp,
    user: &str,
    (u, rid): (i64, i64),
    replies: &[Reply],
    together_before: u64,
) -> Vec<i64> {
    let (opened, ids) = orders_won(replies, 201, (422, "insufficient_margin"));
    let at = read_as_answered(app, user, &opened, "opened_at").await;
    assert!(at <= 2, "the queued orders were not written together");
    assert!(
        together("committed") > together_before,
        "no group of orders was written together"
    );
    let opens = [("margin_hold", 10), ("order_open_fee", 10)];
    assert_booked(app, (u, rid), ["100", "100", "0"], opens, "0.2").await;
    ids
}

/// The 10 answers `ok` of `replies` and the order ids they name, sorted,
/// after checking that there is no 5xx and that every other answer is the
/// problem `(status, code)`.
#[track_caller]
fn orders_won<'a>(
    replies: &'a [Reply],
    ok: u16,
    (status, code): (u16, &str),
) -> (Vec<&'a Reply>, Vec<i64>) {
    assert_no_5xx(replies);
    let won: Vec<&Reply> = replies.iter().filter(|r| r.status == ok).collect();
    assert_eq!(won.len(), 10, "{ok} answers");
    for r in replies.iter().filter(|r| r.status != ok) {
        r.problem(status, code);
    }
    let mut ids: Vec<i64> = won.iter().map(|r| r.body["id"].as_i64().unwrap()).collect();
    ids.sort_unstable();
    (won, ids)
}

/// Each order answered reads as it was answered; how many instants their
/// `field` (`opened_at`, `closed_at`) names: a group's rows share one.
async fn read_as_answered(app: &TestApp, user: &str, answered: &[&Reply], field: &str) -> usize {
    for r in answered {
        let id = r.body["id"].as_i64().unwrap();
        let read = app.get_ok(&format!("/api/v1/orders/{id}"), user).await;
        assert_eq!(read.body, r.body, "the order reads as it was answered");
    }
    let at: std::collections::HashSet<&str> = answered
        .iter()
        .map(|r| r.body[field].as_str().unwrap())
        .collect();
    at.len()
}

/// User `u`'s live wallet holds `[balance, margin, free_margin]`, its
/// journal has `kinds` (each so many times), and referrer `rid`'s pending
/// commissions are `pending`.
async fn assert_booked(
    app: &TestApp,
    (u, rid): (i64, i64),
    [balance, margin, free]: [&str; 3],
    kinds: [(&str, usize); 2],
    pending: &str,
) {
    let w = app.wallet(u, "live").await;
    assert_eq!(
        (&w["balance"], &w["margin"], &w["free_margin"]),
        (&json!(balance), &json!(margin), &json!(free))
    );
    let journal = app.journal_kinds(u, "live").await;
    for (kind, n) in kinds {
        assert_eq!(journal.iter().filter(|k| *k == kind).count(), n, "{kind}");
    }
    let stats = app
        .get_ok(&format!("/api/v1/users/{rid}/referrals"), &app.admin())
        .await;
    assert_eq!(stats.body["commission_pending"], pending);
}

/// A group's lock of several wallets is planned once per connection: the
/// wallets go as arrays behind subqueries (see `domain::sql`), so from the
/// sixth run on one connection PostgreSQL keeps the generic plan for them
/// instead of planning each run's short arrays again. PostgreSQL only (the
/// plan cache is its own); a plan count, not a timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_lock_of_several_wallets_keeps_one_plan_per_connection() {
    use domain::ledger::wallets::{WalletKind, lock_wallets_of};
    use sea_orm::{ConnectOptions, ConnectionTrait, Database, TransactionTrait};
    use tests::faults::check::scalar;

    let (app, u) = TestApp::with_user(Engine::Postgres, "one-plan@x.io").await;
    let v = app.create_user("one-plan-2@x.io").await;
    let mut options = ConnectOptions::new(app.database_url.clone());
    options.max_connections(1).min_connections(1);
    let db = Database::connect(options).await.unwrap();
    // A wallets table of some size, with its statistics: over a handful of
    // rows every plan costs the same, and even bare arrays keep one.
    db.execute_unprepared(
        "INSERT INTO users (email, account_number, referral_code, created_at) \
         SELECT 'bulk' || i || '@x.io', 'BULK' || i, 'BULK' || i, now() \
         FROM generate_series(1, 10000) AS i; \
         INSERT INTO wallets (user_id, kind, last_hash, created_at, updated_at) \
         SELECT id, kind, '', now(), now() FROM users, (VALUES ('live'), ('demo')) AS k(kind) \
         WHERE email LIKE 'bulk%'; \
         ANALYZE users; ANALYZE wallets",
    )
    .await
    .unwrap();
    let groups = [
        vec![(u, WalletKind::Live), (v, WalletKind::Live)],
        vec![
            (u, WalletKind::Demo),
            (v, WalletKind::Demo),
            (u, WalletKind::Live),
        ],
    ];
    for i in 0..8 {
        let txn = db.begin().await.unwrap();
        let group = &groups[i % 2];
        assert_eq!(
            lock_wallets_of(&txn, group).await.unwrap().len(),
            group.len()
        );
        txn.commit().await.unwrap();
    }
    let plans = |kind: &str| {
        format!(
            "SELECT {kind}_plans AS n FROM pg_prepared_statements \
             WHERE statement LIKE 'SELECT * FROM wallets WHERE (user_id, kind) IN%'"
        )
    };
    let generic = scalar(&db, &plans("generic")).await.unwrap();
    let custom = scalar(&db, &plans("custom")).await.unwrap();
    assert_eq!(
        (generic, custom),
        (3, 5),
        "eight runs: five planned for their values, then the kept plan"
    );
    db.close().await.unwrap();
    app.stop().await;
}
