//! `lock-holder-killed`: the server instance that is running an order on a
//! signal, inside the signal's trade lock, is killed with SIGKILL. Nobody
//! is left to finish the order or to release the lock; its lease is all
//! that ends it. The lock must expire at the end of its lease, the order
//! the dead instance was running must leave nothing behind (no order, no
//! journal entry, no stored answer for the signal), and the same signal
//! sent by a second bot to the surviving instance must then be executed
//! exactly once, under a newer fencing token.
//!
//! How the order comes to sit inside its lock: a trade on a free signal
//! takes its lock, runs and releases it in one transaction, so its lock is
//! never seen active and a kill only rolls that transaction back. Held
//! here is the other path. The scenario takes the signal's resource first
//! (a `manual` lock, as a person or another tool might), sends the order
//! with `"wait": "queue"` to instance A (202: queued; A executes it when
//! granted), locks the user's wallet row from outside with `SELECT … FOR
//! UPDATE`, and releases its own lock: the release grants the queued order
//! (an active lock with the order's 30 s lease), and A's order then waits
//! on the wallet row, inside its lock. That backend is found by
//! `pg_blocking_pids`, and its client port is one of A's own sockets
//! (`/proc/<pid>/fd` and `/proc/net/tcp`): A is serving the lock holder
//! when it is killed. The wallet row is let go right after the kill; the
//! dead instance's transaction must end with its connection, uncommitted.
//!
//! The order behind it: the same signal, sent by this process to instance
//! B with `"wait": "queue"`, again and again (a bot that wants its trade),
//! until it is executed or the lease's end plus the server's dedupe window
//! plus slack has passed. While the lease lasts it must be refused (409
//! `resource_locked`); once the lease has ended it must run (an expired lock
//! counts as free at once). The signal sent once more, to A restarted, must
//! answer that same order (200, `deduplicated`).
//!
//! The executed order is a write of the run (its wallet is checked with the
//! workload's); the rest is checked here against the lock API and the
//! database: the held lock stays active while its lease lasts, then is
//! `expired` with no result; the user has exactly the one order, the one
//! the newer lock's result names.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use sea_orm::{
    ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend, Statement,
    TransactionTrait,
};
use serde_json::{Value, json};

use super::workload::{self, Op, User, Write, now_ms};
use crate::load::client::{Answer, Call};
use crate::load::retry::Policy;
use crate::process::LedgerProcess;

/// The lease of a signal's trade lock: an order asks for none, so the
/// server's default.
pub const LEASE_MS: u64 = domain::locks::resource::DEFAULT_TTL_MS;
/// How long a lock the scenario takes itself lasts: it is released long
/// before.
const GATE_TTL_MS: u64 = 30_000;
/// How long the dead instance's backend may outlive it once the wallet row
/// is free: it finds its client gone on its next read or write.
const BACKEND_GONE_WITHIN: Duration = Duration::from_secs(15);
/// How long the queued order may take to reach the wallet row once granted.
const REACH_WITHIN: Duration = Duration::from_secs(15);
/// Between two sends of the order behind the dead holder's.
const RESEND_EVERY: Duration = Duration::from_millis(500);

/// What the kill did, for `Injected`.
#[derive(Debug, Default)]
pub struct Killed {
    pub kills: u64,
    pub killed_at: Option<Instant>,
    /// The killed instance was running the lock holder's order at the kill
    /// (its backend, waiting on the wallet row, was one of its sockets, and
    /// ended with it).
    pub serving: bool,
    /// The order that ran behind the dead one, for the end-of-run checks.
    pub writes: Vec<Write>,
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

/// How one send of the order behind the dead holder's was answered,
/// against the dead holder's lease (Unix ms: when it was sent and answered,
/// and when the lease ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// 409 `resource_locked`, sent while the lease lasted: as it must be.
    LockedInLease,
    /// 409 `resource_locked`, sent after the lease had ended.
    LockedAfterLease,
    /// 202: queued behind the lock; the server executes it when granted.
    Queued,
    /// 201, answered after the lease had ended: executed.
    Ran,
    /// 201, answered before the lease ended: a second trade on the signal
    /// while its lock was another's.
    RanInLease,
    /// 200 `deduplicated`: the signal already has a trade, which only the
    /// dead holder can have made.
    Deduplicated,
    Other,
}

fn judge(sent_ms: i64, answered_ms: i64, lease_end_ms: i64, status: u16, body: &Value) -> Seen {
    match (status, body["code"].as_str()) {
        (409, Some("resource_locked")) if sent_ms < lease_end_ms => Seen::LockedInLease,
        (409, Some("resource_locked")) => Seen::LockedAfterLease,
        (202, _) => Seen::Queued,
        (201, _) if answered_ms < lease_end_ms => Seen::RanInLease,
        (201, _) => Seen::Ran,
        (200, _) if body["deduplicated"] == true => Seen::Deduplicated,
        _ => Seen::Other,
    }
}

/// `socket:[12345]`, the target of a `/proc/<pid>/fd` link, to its inode.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// From the text of `/proc/net/tcp` (or `tcp6`): the inodes of the
/// sockets whose local port is `port` (hex after the address's colon).
fn inodes_on_local_port(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let (_, hex) = local.rsplit_once(':')?;
            let inode: u64 = fields.get(9)?.parse().ok()?;
            (u16::from_str_radix(hex, 16).ok()? == port && inode != 0).then_some(inode)
        })
        .collect()
}

/// Whether process `pid` holds the TCP socket whose local port is `port`.
fn holds_port(pid: u32, port: u16) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let mine: HashSet<u64> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| socket_inode(&link.to_string_lossy()))
        .collect();
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table)
            .map(|t| inodes_on_local_port(&t, port))
            .unwrap_or_default()
            .iter()
            .any(|inode| mine.contains(inode))
    })
}

async fn rows(
    conn: &impl ConnectionTrait,
    sql: String,
) -> Result<Vec<sea_orm::QueryResult>, String> {
    conn.query_all_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .map_err(|e| e.to_string())
}

async fn count(conn: &impl ConnectionTrait, sql: String) -> Result<i64, String> {
    let row = rows(conn, sql).await?.into_iter().next().ok_or("no row")?;
    row.try_get::<i64>("", "n").map_err(|e| e.to_string())
}

fn get<T: sea_orm::TryGetable>(row: &sea_orm::QueryResult, col: &str) -> Result<T, String> {
    row.try_get::<T>("", col).map_err(|e| e.to_string())
}

/// A backend waiting on the outside transaction's row lock.
#[derive(Debug, Clone)]
struct Waiter {
    pid: i32,
    client_port: Option<i32>,
    /// `Lock/tuple`, `Lock/transactionid`, …
    wait: Option<String>,
    query: String,
}

/// The held lock as the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LockRow {
    status: String,
    fencing_token: i64,
    acquired_at_ms: i64,
    expires_at_ms: i64,
    released_at_ms: Option<i64>,
    released_by: Option<String>,
    result: Option<String>,
}

/// One signal of one user, and how this process talks about it.
struct Trade<'a> {
    user: &'a User,
    signal: String,
    admin: String,
    policy: Policy,
    db: DatabaseConnection,
}

/// One send of the order, with when it left and when it was answered.
struct Sent {
    at: Instant,
    sent_ms: i64,
    answered_ms: i64,
    status: u16,
    body: Value,
}

impl Trade<'_> {
    fn resource(&self) -> String {
        format!(
            "trade:{}:{}:buy:{}",
            self.user.id,
            workload::SYMBOL,
            self.signal
        )
    }

    async fn order(&self, target: SocketAddr) -> Result<Sent, String> {
        let body = json!({
            "user_id": self.user.id, "symbol": workload::SYMBOL, "side": "buy",
            "quantity": "1", "leverage": 10, "wallet": "live",
            "signal_id": self.signal, "wait": "queue",
        });
        // A signal is its own key; each send has a key of its own all the
        // same, as a second bot's would.
        let key = uuid::Uuid::new_v4().to_string();
        let (at, sent_ms) = (Instant::now(), now_ms());
        let call = Call::post("/api/v1/orders", &self.user.token, &key, &body);
        let a = workload::request(target, &call, &self.policy).await?;
        Ok(Sent {
            at,
            sent_ms,
            answered_ms: now_ms(),
            status: a.status,
            body: a.json(),
        })
    }

    /// An admin read that must answer 200.
    async fn read(&self, target: SocketAddr, path: String) -> Result<Value, String> {
        let a = workload::request(
            target,
            &Call::get(path.clone(), Some(&self.admin)),
            &self.policy,
        )
        .await?;
        ok(&a, 200, &path)
    }

    async fn lock_row(&self, lock_id: &str) -> Result<LockRow, String> {
        let found = rows(
            &self.db,
            format!(
                "SELECT status, fencing_token, acquired_at_ms, expires_at_ms, released_at_ms, \
                 released_by, result FROM transaction_locks WHERE id = '{lock_id}'"
            ),
        )
        .await?;
        let row = found
            .first()
            .ok_or(format!("lock {lock_id} is not in the table"))?;
        Ok(LockRow {
            status: get(row, "status")?,
            fencing_token: get(row, "fencing_token")?,
            acquired_at_ms: get(row, "acquired_at_ms")?,
            expires_at_ms: get(row, "expires_at_ms")?,
            released_at_ms: get(row, "released_at_ms")?,
            released_by: get(row, "released_by")?,
            result: get(row, "result")?,
        })
    }

    /// The user's orders, its order journal entries that no order of its
    /// explains, and the answers stored for its signal trades.
    async fn landed(&self) -> Result<(Vec<i64>, i64, i64), String> {
        let u = self.user.id;
        let orders = rows(
            &self.db,
            format!("SELECT id FROM orders WHERE user_id = {u} ORDER BY id"),
        )
        .await?
        .iter()
        .map(|r| get::<i64>(r, "id"))
        .collect::<Result<Vec<_>, _>>()?;
        let stray = count(
            &self.db,
            format!(
                "SELECT COUNT(*)::bigint AS n FROM journal_entries j WHERE j.user_id = {u} \
                 AND j.reference LIKE 'order:%' AND NOT EXISTS (SELECT 1 FROM orders o \
                 WHERE o.user_id = {u} AND j.reference = 'order:' || o.id)"
            ),
        )
        .await?;
        let answers = count(
            &self.db,
            format!(
                "SELECT COUNT(*)::bigint AS n FROM idempotency_keys \
                 WHERE principal = 'user:{u}' AND route = 'signal open_order'"
            ),
        )
        .await?;
        Ok((orders, stray, answers))
    }

    /// Backends waiting on a lock that backend `holder` holds.
    async fn waiters(&self, holder: i32) -> Result<Vec<Waiter>, String> {
        rows(
            &self.db,
            format!(
                "SELECT pid, client_port, wait_event_type || '/' || wait_event AS wait, \
                 LEFT(query, 60) AS query FROM pg_stat_activity \
                 WHERE {holder} = ANY(pg_blocking_pids(pid))"
            ),
        )
        .await?
        .iter()
        .map(|r| {
            Ok(Waiter {
                pid: get(r, "pid")?,
                client_port: get(r, "client_port")?,
                wait: get(r, "wait")?,
                query: get(r, "query")?,
            })
        })
        .collect()
    }

    async fn backend_alive(&self, pid: i32) -> Result<bool, String> {
        let n = count(
            &self.db,
            format!("SELECT COUNT(*)::bigint AS n FROM pg_stat_activity WHERE pid = {pid}"),
        )
        .await?;
        Ok(n > 0)
    }
}

fn ok(a: &Answer, want: u16, what: &str) -> Result<Value, String> {
    if a.status == want {
        Ok(a.json())
    } else {
        Err(format!(
            "{what}: {} {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        ))
    }
}

/// Locks the user's wallet rows in a transaction of its own; returns it and
/// its backend's pid.
async fn hold_wallet(
    db: &DatabaseConnection,
    user: i64,
) -> Result<(DatabaseTransaction, i32), String> {
    let txn = db.begin().await.map_err(|e| e.to_string())?;
    let pid = rows(&txn, "SELECT pg_backend_pid() AS pid".into())
        .await?
        .first()
        .map(|r| get::<i32>(r, "pid"))
        .transpose()?
        .ok_or("no backend pid")?;
    txn.execute_unprepared(&format!(
        "SELECT id FROM wallets WHERE user_id = {user} ORDER BY id FOR UPDATE"
    ))
    .await
    .map_err(|e| e.to_string())?;
    Ok((txn, pid))
}

/// Kills the instance `servers[0]` while it runs `user`'s order on a fresh
/// signal inside the signal's lock; the order behind it goes to
/// `servers[1]`. See the module.
pub async fn run(
    db_url: &str,
    servers: &mut [LedgerProcess],
    user: &User,
) -> Result<Killed, String> {
    let [a, b, ..] = servers else {
        return Err("lock-holder-killed needs two instances".into());
    };
    let (a_addr, b_addr) = (a.addr(), b.addr());
    let db = Database::connect(db_url).await.map_err(|e| e.to_string())?;
    let trade = Trade {
        user,
        signal: format!("holder-killed-{}", uuid::Uuid::new_v4().simple()),
        admin: crate::token("root", api::auth::Role::Admin),
        policy: Policy::default(),
        db,
    };
    let mut k = Killed::default();
    let resource = trade.resource();

    // The signal's resource taken first, so that the order is queued.
    let gate = workload::request(
        b_addr,
        &Call::post(
            "/api/v1/locks",
            &user.token,
            &uuid::Uuid::new_v4().to_string(),
            &json!({
                "resources": [resource], "ttl_ms": GATE_TTL_MS,
                "transaction_type": "manual", "transaction_data": {"gate": trade.signal},
                "wait": "fail",
            }),
        ),
        &trade.policy,
    )
    .await?;
    let gate = ok(&gate, 201, "taking the signal's resource")?;
    let gate_id = gate["lock_id"]
        .as_str()
        .ok_or("the gate has no lock_id")?
        .to_owned();
    let gate_token = gate["fencing_token"].as_i64().unwrap_or(0);

    let first = trade.order(a_addr).await?;
    if first.status != 202 {
        return Err(format!(
            "the order on a busy signal was not queued: {} {}",
            first.status, first.body
        ));
    }
    let queue_id = first.body["queue_id"].as_i64().ok_or("no queue_id")?;

    let (outside, outside_pid) = hold_wallet(&trade.db, user.id).await?;
    let released = workload::request(
        b_addr,
        &Call::post_without_key(
            &format!("/api/v1/locks/{gate_id}/release"),
            &user.token,
            &json!({}),
        ),
        &trade.policy,
    )
    .await?;
    ok(&released, 200, "releasing the signal's resource")?;

    // The release granted the queued order; A runs it and waits on the
    // wallet row, inside the lock.
    let item = trade
        .read(
            b_addr,
            format!("/api/v1/locks/queue/{queue_id}?wait_ms=10000"),
        )
        .await?;
    let held_id = match (item["status"].as_str(), item["lock"]["lock_id"].as_str()) {
        (Some("granted"), Some(id)) => id.to_owned(),
        _ => return Err(format!("the queued order was not granted: {item}")),
    };
    let reach_by = Instant::now() + REACH_WITHIN;
    let waiter = loop {
        if let Some(w) = trade.waiters(outside_pid).await?.into_iter().next() {
            break w;
        }
        if Instant::now() > reach_by {
            return Err(format!(
                "the granted order (lock {held_id}) never waited on the wallet row"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let held = trade.lock_row(&held_id).await?;
    let lease_end = held.expires_at_ms;
    if held.status != "active" || held.fencing_token <= gate_token {
        k.problems.push(format!(
            "the queued order's lock {held_id} as it runs: {held:?} (the gate's token {gate_token})"
        ));
    }
    if held.expires_at_ms - held.acquired_at_ms != i64::try_from(LEASE_MS).unwrap_or(i64::MAX) {
        k.problems.push(format!(
            "the order's lock {held_id} was granted for {} ms, not the default lease {LEASE_MS} ms",
            held.expires_at_ms - held.acquired_at_ms
        ));
    }
    let a_pid = a.pid().ok_or("instance A is not running")?;
    let port_is_a = waiter
        .client_port
        .and_then(|p| u16::try_from(p).ok())
        .is_some_and(|p| holds_port(a_pid, p));

    // The kill, while the order waits inside its lock; then the row is let
    // go, so that nothing but the lost connection stands between the dead
    // instance's order and its commit.
    let killed_ms = now_ms();
    let killed_at = Instant::now();
    a.kill();
    k.kills += 1;
    k.killed_at = Some(killed_at);
    outside.rollback().await.map_err(|e| e.to_string())?;
    let mut gone = None;
    while killed_at.elapsed() < BACKEND_GONE_WITHIN {
        if !trade.backend_alive(waiter.pid).await? {
            gone = Some(killed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    k.serving = port_is_a && gone.is_some();
    let port = waiter
        .client_port
        .map_or_else(|| "none".to_owned(), |p| p.to_string());
    k.notes.push(format!(
        "instance A (pid {a_pid}) killed {} ms into lock {held_id} (token {}, lease {LEASE_MS} ms): \
         its order's backend {} (client port {port}, {}) was waiting ({}) on user {}'s wallet in \
         {:?}; that backend {}",
        killed_ms - held.acquired_at_ms,
        held.fencing_token,
        waiter.pid,
        if port_is_a { "a socket of A" } else { "not a socket of A" },
        waiter.wait.as_deref().unwrap_or("?"),
        user.id,
        waiter.query,
        match gone {
            Some(after) => format!("ended {} ms after the kill", after.as_millis()),
            None => format!("was still there {} s after the kill", BACKEND_GONE_WITHIN.as_secs()),
        }
    ));
    if gone.is_none() {
        k.problems.push(format!(
            "the killed instance's backend {} outlived it by {} s",
            waiter.pid,
            BACKEND_GONE_WITHIN.as_secs()
        ));
    }
    super::restart(a).await?;

    // The dead order left nothing, and its lock outlives it.
    let (orders, stray, answers) = trade.landed().await?;
    if !orders.is_empty() || stray > 0 || answers > 0 {
        k.problems.push(format!(
            "the killed instance's order landed: user {} has orders {orders:?}, {stray} order \
             journal entries without an order, {answers} stored answers for the signal",
            user.id
        ));
    }
    let after_kill = trade.lock_row(&held_id).await?;
    if after_kill.status != "active" || after_kill.result.is_some() {
        k.problems.push(format!(
            "lock {held_id} ended before its lease with its holder dead: {after_kill:?}"
        ));
    }

    let ran = behind(&trade, b_addr, lease_end, &held_id, &mut k).await?;

    // The dead holder's lock expired, unanswered; the order behind it is
    // the user's one order, the result of the newer lock.
    let expired = trade.lock_row(&held_id).await?;
    if expired.status != "expired"
        || expired.released_at_ms != Some(expired.expires_at_ms)
        || expired.result.is_some()
        || expired.released_by.is_some()
    {
        k.problems.push(format!(
            "lock {held_id} of the killed instance did not simply expire: {expired:?}"
        ));
    }
    let view = trade
        .read(b_addr, format!("/api/v1/locks/{held_id}"))
        .await?;
    if view["status"] != "expired" {
        k.problems
            .push(format!("the lock API shows lock {held_id} as {view}"));
    }
    let Some((sent, order)) = ran else {
        return Ok(k);
    };
    let order_id = order["id"].as_i64().unwrap_or(0);
    let (orders, stray, answers) = trade.landed().await?;
    if orders != [order_id] || stray > 0 || answers != 1 {
        k.problems.push(format!(
            "user {} has orders {orders:?}, {stray} order journal entries without an order and \
             {answers} stored answers for the signal; only order {order_id}, executed behind the \
             dead holder, should be there",
            user.id
        ));
    }
    let history = trade
        .read(b_addr, format!("/api/v1/locks/resources/{resource}"))
        .await?;
    let trades: Vec<&Value> = history["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter(|l| l["transaction_type"] == "open_order")
                .collect()
        })
        .unwrap_or_default();
    let newer: Vec<&&Value> = trades
        .iter()
        .filter(|l| l["lock_id"] != held_id.as_str())
        .collect();
    match newer.as_slice() {
        [l] if l["status"] == "released"
            && l["result"]["id"].as_i64() == Some(order_id)
            && l["fencing_token"].as_i64() > Some(held.fencing_token) => {}
        _ => k.problems.push(format!(
            "the signal's trade locks besides the dead holder's: {newer:?}; one, released with \
             order {order_id} as its result and a token above {}, expected",
            held.fencing_token
        )),
    }
    // One signal, one trade: asked again, on the restarted instance.
    let again = trade.order(a_addr).await?;
    if again.status != 200
        || again.body["deduplicated"] != true
        || again.body["id"].as_i64() != Some(order_id)
    {
        k.problems.push(format!(
            "the signal sent again after its trade: {} {}, not order {order_id} deduplicated",
            again.status, again.body
        ));
    }
    k.notes.push(format!(
        "lock {held_id} expired unanswered at the end of its lease; order {order_id} ran behind \
         it under token {}; the signal sent again to the restarted instance answered {} with \
         order {} (deduplicated: {})",
        newer
            .first()
            .map_or(Value::Null, |l| l["fencing_token"].clone()),
        again.status,
        again.body["id"],
        again.body["deduplicated"]
    ));
    k.writes.push(Write {
        op: Op::OpenOrder,
        user: user.id,
        peer: None,
        amount: Decimal::ONE,
        order: None,
        hold: None,
        workflow: None,
        fence: None,
        started: sent.at,
        settled: Instant::now(),
        settled_ms: sent.answered_ms,
        attempts: 1,
        interrupted: false,
        // A queued order's answer is its lock's result: the order.
        answer: Some((201, order)),
        last: String::new(),
        replay_mismatch: None,
    });
    Ok(k)
}

/// The order behind the dead holder's, sent to `target` until it runs (see
/// the module); returns the send that ran it and the order.
async fn behind(
    trade: &Trade<'_>,
    target: SocketAddr,
    lease_end: i64,
    held_id: &str,
    k: &mut Killed,
) -> Result<Option<(Sent, Value)>, String> {
    let dedupe = infra::config::LockConfig::default().dedupe;
    let give_up = lease_end + i64::try_from(dedupe.as_millis()).unwrap_or(i64::MAX) + 15_000;
    let (mut in_lease, mut after_lease) = (0u32, 0u32);
    let mut first_after: Option<(i64, Value)> = None;
    let mut last_after_ms = 0;
    loop {
        if now_ms() > give_up {
            k.problems.push(format!(
                "the signal was never traded after the dead holder's lock {held_id} expired \
                 ({in_lease} sends refused during its lease, {after_lease} after it)"
            ));
            return Ok(None);
        }
        let sent = trade.order(target).await?;
        let seen = judge(
            sent.sent_ms,
            sent.answered_ms,
            lease_end,
            sent.status,
            &sent.body,
        );
        match seen {
            Seen::LockedInLease => in_lease += 1,
            Seen::LockedAfterLease => {
                after_lease += 1;
                last_after_ms = sent.sent_ms;
                if first_after.is_none() {
                    let info = trade
                        .read(
                            target,
                            format!("/api/v1/locks/resources/{}", trade.resource()),
                        )
                        .await?;
                    first_after = Some((sent.sent_ms, info));
                }
            }
            Seen::Ran | Seen::Queued => {
                let order = if seen == Seen::Queued {
                    executed(trade, target, &sent.body, give_up).await?
                } else {
                    Ok(sent.body.clone())
                };
                if let Some((at, info)) = &first_after {
                    k.problems.push(format!(
                        "signal {}: {after_lease} sends after the dead holder's lock {held_id} \
                         expired (at {lease_end}) were refused 409 resource_locked, from {} ms \
                         to {} ms past its expiry, while the resource had lock {} and {} waiting \
                         (an expired lock counts as free at once)",
                        trade.signal,
                        at - lease_end,
                        last_after_ms - lease_end,
                        info["lock"],
                        info["queue"].as_array().map_or(0, Vec::len),
                    ));
                }
                k.notes.push(format!(
                    "the order behind it on the surviving instance: {in_lease} sends refused \
                     409 resource_locked while the lease lasted, {after_lease} after it; then \
                     answered {} ({} ms past the lease's end)",
                    sent.status,
                    sent.answered_ms - lease_end
                ));
                return Ok(match order {
                    Ok(order) => Some((sent, order)),
                    Err(lock) => {
                        k.problems.push(format!(
                            "the order queued behind the dead holder was not executed: {lock}"
                        ));
                        None
                    }
                });
            }
            Seen::RanInLease | Seen::Deduplicated | Seen::Other => {
                k.problems.push(format!(
                    "the signal sent {:+} ms from the end of the dead holder's lease was \
                     answered {} {} ({seen:?})",
                    sent.sent_ms - lease_end,
                    sent.status,
                    sent.body
                ));
                return Ok(None);
            }
        }
        tokio::time::sleep(RESEND_EVERY).await;
    }
}

/// A queued order, followed to its end: the order its lock's result is,
/// or, when it was not executed, its lock.
async fn executed(
    trade: &Trade<'_>,
    target: SocketAddr,
    item: &Value,
    give_up: i64,
) -> Result<Result<Value, Value>, String> {
    let queue_id = item["queue_id"].as_i64().ok_or("no queue_id")?;
    loop {
        let item = trade
            .read(
                target,
                format!("/api/v1/locks/queue/{queue_id}?wait_ms=5000"),
            )
            .await?;
        if let Some(lock_id) = item["lock"]["lock_id"].as_str() {
            let lock = trade
                .read(target, format!("/api/v1/locks/{lock_id}"))
                .await?;
            if lock["status"] != "active" {
                let result = &lock["result"];
                return Ok(if result["status"] == "open" {
                    Ok(result.clone())
                } else {
                    Err(lock)
                });
            }
        } else if item["status"] != "pending" {
            return Err(format!("the queued order ended without a grant: {item}"));
        }
        if now_ms() > give_up {
            return Err(format!("the queued order never ran: {item}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signal_is_refused_while_the_lease_lasts_and_runs_after_it() {
        let locked = json!({"code": "resource_locked"});
        assert_eq!(judge(900, 950, 1000, 409, &locked), Seen::LockedInLease);
        // sent at or past the lease's end: the lock counts as free
        assert_eq!(
            judge(1000, 1010, 1000, 409, &locked),
            Seen::LockedAfterLease
        );
        let order = json!({"id": 7, "status": "open"});
        assert_eq!(judge(990, 1001, 1000, 201, &order), Seen::Ran);
        assert_eq!(judge(900, 999, 1000, 201, &order), Seen::RanInLease);
        assert_eq!(
            judge(900, 950, 1000, 202, &json!({"queue_id": 3})),
            Seen::Queued
        );
        let first = json!({"id": 7, "deduplicated": true});
        assert_eq!(judge(1100, 1110, 1000, 200, &first), Seen::Deduplicated);
        assert_eq!(
            judge(1100, 1110, 1000, 409, &json!({"code": "lock_lost"})),
            Seen::Other
        );
        assert_eq!(judge(1100, 1110, 1000, 200, &order), Seen::Other);
    }

    #[test]
    fn a_socket_is_found_by_its_local_port() {
        assert_eq!(socket_inode("socket:[4242]"), Some(4242));
        assert_eq!(socket_inode("pipe:[4242]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
        let table = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1538 0100007F:6D60 01 00000000:00000000 00:00000000 00000000   103        0 111 1 0
   1: 0100007F:6D60 0100007F:1538 01 00000000:00000000 00:00000000 00000000  1000        0 222 1 0
   2: 0100007F:6D61 0100007F:1538 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0
";
        // 0x6D60 = 28000: the client's end, not the server's (remote) one
        assert_eq!(inodes_on_local_port(table, 28000), vec![222]);
        assert_eq!(inodes_on_local_port(table, 5432), vec![111]);
        // a socket in TIME_WAIT has no inode
        assert!(inodes_on_local_port(table, 28001).is_empty());
        let v6 = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:6D60 00000000000000000000000001000000:1538 01 00000000:00000000 00:00000000 00000000  1000        0 333 1 0
";
        assert_eq!(inodes_on_local_port(v6, 28000), vec![333]);
    }

    #[test]
    fn this_process_holds_its_own_sockets() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(holds_port(std::process::id(), port));
        drop(listener);
        assert!(!holds_port(std::process::id(), port));
    }
}
