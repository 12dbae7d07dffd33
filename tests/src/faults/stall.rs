//! `lock-stall`: a process that holds a resource lock is paused past its
//! lease (SIGSTOP, what a long GC pause or a swapped-out VM does) and
//! resumed; meanwhile another client takes the resource. The paused holder
//! does not know it lost the lock: on resuming it goes on with the write it
//! was about to send, under its old `Lock-Token`. Fencing must refuse that
//! write (409 `lock_lost`, nothing changes), while the new holder's writes,
//! under the newer, higher token, go through.
//!
//! The holder is a process of its own, [`holder`] (`faults lock-holder`,
//! hidden): it acquires the lock on one instance, prints every answer as a
//! JSON line, and writes what its stdin tells it to. A command written into
//! its stdin while it is stopped is read the moment it runs again, so the
//! stale write is sent after the resume, never before. The new holder is
//! this process, on the other instance: the lock lives in the database.
//!
//! Each cycle, checked here (the end-of-run checks see the writes too):
//! the holder's write before the pause goes through; it really is stopped
//! (`/proc/<pid>/stat` says `T`) from before its lease ended until after;
//! the resource is refused to another while the lease lasts; the new grant
//! carries a higher fencing token; the stale write leaves the balance as it
//! was; the stale holder cannot extend its lock; and the new holder's two
//! writes and its release go through.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use api::auth::Role;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::workload::{self, Fence, Op, User, Write, now_ms, unix_ms};
use crate::load::client::{Answer, Call};
use crate::load::retry::Policy;
use crate::token;

/// The lease: long enough for the holder's first write on a busy machine,
/// short enough for several cycles a run.
pub const TTL_MS: u64 = 2_000;
/// How long past the lease's end the holder stays stopped.
const PAST_TTL: Duration = Duration::from_millis(300);

/// The wallet resource a user's money writes are fenced by.
pub fn resource(user: i64) -> String {
    format!("wallet:{user}:live")
}

/// `faults lock-holder`: the process the scenario pauses.
#[derive(Debug, Clone, clap::Args)]
pub struct HolderArgs {
    /// The instance to talk to.
    #[arg(long)]
    pub target: SocketAddr,
    /// The user whose wallet it withdraws from (with that user's token).
    #[arg(long)]
    pub user: i64,
    #[arg(long)]
    pub resource: String,
    #[arg(long, default_value_t = TTL_MS)]
    pub ttl_ms: u64,
    /// Part of the lock's `transaction_data`, so that no grant is answered
    /// as a duplicate of an earlier one.
    #[arg(long)]
    pub tag: String,
}

fn emit(line: &Value) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn post(
    target: SocketAddr,
    token: &str,
    path: &str,
    body: &Value,
    lock_token: Option<&str>,
) -> Result<(String, Answer), String> {
    let key = uuid::Uuid::new_v4().to_string();
    let mut call = Call::post(path, token, &key, body);
    if let Some(lock_token) = lock_token {
        call = call.fenced(lock_token);
    }
    let answer = workload::request(target, &call, &Policy::default()).await?;
    Ok((key, answer))
}

/// The holder: acquires the lock, then for each line of stdin
/// `withdraw <amount>` (under its `Lock-Token`), `extend`, `release` or
/// `quit`, printing each answer as `{"event","status","body",…}`.
pub async fn holder(args: HolderArgs) -> Result<(), String> {
    let token = token(&args.user.to_string(), Role::User);
    let body = json!({
        "resources": [args.resource],
        "ttl_ms": args.ttl_ms,
        "transaction_type": "withdrawal",
        "transaction_data": {"holder": args.tag},
        "wait": "fail",
    });
    let (_, acquired) = post(args.target, &token, "/api/v1/locks", &body, None).await?;
    let lock = acquired.json();
    emit(&json!({"event": "acquired", "status": acquired.status, "body": lock}));
    let (Some(lock_id), Some(fencing)) = (lock["lock_id"].as_str(), lock["fencing_token"].as_i64())
    else {
        return Err(format!("no lock: {} {lock}", acquired.status));
    };
    let lock_token = format!("{lock_id}:{fencing}");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await.map_err(|e| e.to_string())? {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (event, path, body, fenced) = match words.as_slice() {
            ["withdraw", amount] => (
                "withdraw",
                "/api/v1/wallets/withdraw".to_owned(),
                json!({"user_id": args.user, "amount": amount, "wallet": "live"}),
                Some(lock_token.as_str()),
            ),
            ["extend"] => (
                "extend",
                format!("/api/v1/locks/{lock_id}/extend"),
                json!({"ttl_ms": args.ttl_ms}),
                None,
            ),
            ["release"] => (
                "release",
                format!("/api/v1/locks/{lock_id}/release"),
                json!({}),
                None,
            ),
            ["quit"] => break,
            _ => return Err(format!("unknown command {line:?}")),
        };
        let sent_ms = now_ms();
        let (key, answer) = post(args.target, &token, &path, &body, fenced).await?;
        emit(&json!({
            "event": event, "key": key, "status": answer.status, "body": answer.json(),
            "sent_ms": sent_ms, "settled_ms": now_ms(),
        }));
    }
    Ok(())
}

/// What the stalls did, for `Injected`.
#[derive(Debug, Default)]
pub struct Stalls {
    /// Cycles in which the holder was seen stopped past its lease.
    pub stalls: u64,
    /// Writes the holder sent under its lost lock after it resumed.
    pub stale_writes: u64,
    /// Every fenced write, for the end-of-run checks.
    pub writes: Vec<Write>,
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

/// The process state letter of `/proc/<pid>/stat` (`T`: stopped).
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Waits (up to 5 s) until the process is in `want` state: a signal is
/// delivered after `kill` returns, not before.
async fn until_state(pid: u32, want: char) -> Option<char> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = state(pid);
        if now == Some(want) || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn signal(pid: u32, sig: &str) -> Result<(), String> {
    let status = tokio::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .await
        .map_err(|e| format!("kill -{sig}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -{sig} {pid}: {status}"))
    }
}

struct Holder {
    child: Child,
    pid: u32,
    stdin: ChildStdin,
    out: Lines<BufReader<ChildStdout>>,
}

impl Holder {
    fn spawn(args: &HolderArgs) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg("lock-holder")
            .args(["--target", &args.target.to_string()])
            .args(["--user", &args.user.to_string()])
            .args(["--resource", &args.resource])
            .args(["--ttl-ms", &args.ttl_ms.to_string()])
            .args(["--tag", &args.tag])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the lock holder: {e}"))?;
        let pid = child.id().ok_or("the lock holder has no pid")?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let out = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        Ok(Self {
            child,
            pid,
            stdin,
            out,
        })
    }

    async fn tell(&mut self, command: &str) -> Result<(), String> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(|e| format!("telling the holder {command:?}: {e}"))?;
        self.stdin.flush().await.map_err(|e| e.to_string())
    }

    /// The holder's next answer (it retries until definite itself).
    async fn next(&mut self) -> Result<Value, String> {
        let line = tokio::time::timeout(Duration::from_secs(90), self.out.next_line())
            .await
            .map_err(|_| "the lock holder said nothing for 90 s".to_owned())?
            .map_err(|e| e.to_string())?
            .ok_or("the lock holder exited")?;
        serde_json::from_str(&line).map_err(|e| format!("the holder printed {line:?}: {e}"))
    }
}

/// A fenced withdrawal as a `Write` of the run.
fn fenced_write(user: i64, amount: Decimal, fence: Fence, started: Instant, seen: &Value) -> Write {
    Write {
        op: Op::Withdraw,
        user,
        peer: None,
        amount,
        order: None,
        hold: None,
        workflow: None,
        fence: Some(fence),
        started,
        settled: Instant::now(),
        settled_ms: seen["settled_ms"].as_i64().unwrap_or_else(now_ms),
        attempts: 1,
        interrupted: false,
        answer: seen["status"]
            .as_u64()
            .map(|s| (u16::try_from(s).unwrap_or(0), seen["body"].clone())),
        last: String::new(),
        replay_mismatch: None,
    }
}

fn status(v: &Value) -> u64 {
    v["status"].as_u64().unwrap_or(0)
}

/// The new holder: this process on another instance, with the same user's
/// token (so the stale holder is refused for its lost lease and token, not
/// for being someone else).
struct Successor<'a> {
    target: SocketAddr,
    user: &'a User,
    tag: String,
}

impl Successor<'_> {
    async fn acquire(&self) -> Result<Value, String> {
        let body = json!({
            "resources": [resource(self.user.id)],
            "ttl_ms": 30_000,
            "transaction_type": "withdrawal",
            "transaction_data": {"holder": self.tag},
            "wait": "fail",
        });
        let sent_ms = now_ms();
        let (_, a) = post(self.target, &self.user.token, "/api/v1/locks", &body, None).await?;
        Ok(json!({"status": a.status, "body": a.json(), "sent_ms": sent_ms}))
    }

    async fn withdraw(&self, amount: Decimal, lock_token: &str) -> Result<Write, String> {
        let started = Instant::now();
        let body = json!({"user_id": self.user.id, "amount": amount.to_string(), "wallet": "live"});
        let (_, a) = post(
            self.target,
            &self.user.token,
            "/api/v1/wallets/withdraw",
            &body,
            Some(lock_token),
        )
        .await?;
        let seen = json!({"status": a.status, "body": a.json(), "settled_ms": now_ms()});
        Ok(fenced_write(
            self.user.id,
            amount,
            Fence::Current,
            started,
            &seen,
        ))
    }

    /// `withdraw`, kept in `writes`; a refusal is a problem in `bad`, the
    /// new holder's `what` ("write", "second write").
    async fn withdraw_into(
        &self,
        amount: Decimal,
        lock_token: &str,
        what: &str,
        (bad, writes): (&mut Vec<String>, &mut Vec<Write>),
    ) -> Result<(), String> {
        let w = self.withdraw(amount, lock_token).await?;
        if !w.succeeded() {
            bad.push(format!(
                "the new holder's {what} was refused: {:?}",
                w.answer
            ));
        }
        writes.push(w);
        Ok(())
    }

    async fn balance(&self) -> Result<Decimal, String> {
        let w = workload::wallets(self.target, &[self.user.id], &Policy::default()).await?;
        Ok(w.get(&self.user.id).map(|w| w.balance).unwrap_or_default())
    }
}

/// Stall cycles on `user`'s wallet until `span` has passed (at least one):
/// the holder talks to `holder_at`, the new holder to `successor_at`.
pub async fn run(
    holder_at: SocketAddr,
    successor_at: SocketAddr,
    user: &User,
    span: Duration,
) -> Result<Stalls, String> {
    let mut s = Stalls::default();
    let deadline = Instant::now() + span;
    let mut cycle = 0;
    while cycle == 0 || Instant::now() < deadline {
        cycle += 1;
        one_cycle(holder_at, successor_at, user, cycle, &mut s).await?;
    }
    Ok(s)
}

async fn one_cycle(
    holder_at: SocketAddr,
    successor_at: SocketAddr,
    user: &User,
    cycle: u32,
    s: &mut Stalls,
) -> Result<(), String> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let args = HolderArgs {
        target: holder_at,
        user: user.id,
        resource: resource(user.id),
        ttl_ms: TTL_MS,
        tag: format!("stalled-{cycle}-{run}"),
    };
    let mut bad: Vec<String> = Vec::new();
    let mut h = Holder::spawn(&args)?;
    let acquired = h.next().await?;
    let lock = &acquired["body"];
    let (Some(old_id), Some(old_token), Some(old_expiry)) = (
        lock["lock_id"].as_str(),
        lock["fencing_token"].as_i64(),
        unix_ms(&lock["expires_at"]),
    ) else {
        return Err(format!("the holder got no lock: {acquired}"));
    };
    let old_id = old_id.to_owned();

    // While the lease lasts its writes go through.
    let started = Instant::now();
    h.tell("withdraw 1.11").await?;
    let first = h.next().await?;
    let amount = Decimal::new(111, 2);
    let mut writes = vec![fenced_write(
        user.id,
        amount,
        Fence::Current,
        started,
        &first,
    )];
    if status(&first) != 200 {
        bad.push(format!(
            "the holder's write under its live lock was refused: {first}"
        ));
    }

    // The pause, with the next write already decided.
    signal(h.pid, "STOP").await?;
    let stopped_at_ms = now_ms();
    // Only once it is stopped is it told its next write: it cannot read
    // that before it runs again.
    let stopped = until_state(h.pid, 'T').await;
    if stopped != Some('T') {
        return Err(format!("kill -STOP: the holder stays in state {stopped:?}"));
    }
    h.tell("withdraw 2.22").await?;
    let stale_started = Instant::now();
    let successor = Successor {
        target: successor_at,
        user,
        tag: format!("successor-{cycle}-{run}"),
    };
    // While the lease lasts nobody else gets the resource.
    let probe = successor.acquire().await?;
    let mut granted = None;
    match (
        status(&probe),
        probe["sent_ms"].as_i64().unwrap_or(i64::MAX),
    ) {
        (409, at) if at < old_expiry => {
            if probe["body"]["code"] != "resource_locked" {
                bad.push(format!("the busy resource was refused with {probe}"));
            }
        }
        (201, _) => {
            let at = unix_ms(&probe["body"]["acquired_at"]).unwrap_or(0);
            if at < old_expiry {
                bad.push(format!(
                    "the resource was granted again at {at} ms, before the lease ended at {old_expiry} ms"
                ));
            }
            granted = Some(probe);
        }
        _ => bad.push(format!("acquiring the resource after the pause: {probe}")),
    }

    // Stopped until past the lease's end.
    let wait = u64::try_from(old_expiry - now_ms()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait) + PAST_TTL).await;
    let still = state(h.pid) == Some('T');
    if !still {
        bad.push(format!(
            "the holder ran again during its pause (state {:?})",
            state(h.pid)
        ));
    }
    let granted = match granted {
        Some(g) => g,
        None => successor.acquire().await?,
    };
    let new_lock = &granted["body"];
    let (Some(new_id), Some(new_token)) = (
        new_lock["lock_id"].as_str(),
        new_lock["fencing_token"].as_i64(),
    ) else {
        // Without a new holder the rest of the cycle means nothing.
        signal(h.pid, "CONT").await?;
        bad.push(format!(
            "the resource was not granted after the lease ended: {granted}"
        ));
        s.writes.extend(writes);
        s.problems
            .extend(bad.into_iter().map(|p| format!("cycle {cycle}: {p}")));
        return Ok(());
    };
    if new_token <= old_token {
        bad.push(format!(
            "the new grant's fencing token {new_token} is not above the old {old_token}"
        ));
    }
    let new_lock_token = format!("{new_id}:{new_token}");
    successor
        .withdraw_into(
            Decimal::new(333, 2),
            &new_lock_token,
            "write",
            (&mut bad, &mut writes),
        )
        .await?;

    // The resume: the holder sends the write it had decided on.
    let before = successor.balance().await?;
    let resumed_ms = now_ms();
    signal(h.pid, "CONT").await?;
    let stale = h.next().await?;
    if still {
        s.stalls += 1;
        s.notes.push(format!(
            "cycle {cycle}: holder stopped {} ms (lease {TTL_MS} ms, token {old_token}); new grant \
             token {new_token}; the stale write after the resume answered {} {}",
            resumed_ms - stopped_at_ms,
            status(&stale),
            stale["body"]["code"].as_str().unwrap_or("")
        ));
    }
    if stale["sent_ms"].as_i64().unwrap_or(0) >= resumed_ms {
        s.stale_writes += 1;
    } else {
        bad.push(format!("the stale write left before the resume: {stale}"));
    }
    writes.push(fenced_write(
        user.id,
        Decimal::new(222, 2),
        Fence::Stale,
        stale_started,
        &stale,
    ));
    let after = successor.balance().await?;
    if after != before {
        bad.push(format!(
            "the stale holder's write (answered {}) moved the balance from {before} to {after}",
            status(&stale)
        ));
    }
    // Nor can it stretch the lease it lost.
    h.tell("extend").await?;
    let extended = h.next().await?;
    if (status(&extended), extended["body"]["code"].as_str()) != (409, Some("lock_lost")) {
        bad.push(format!(
            "the stale holder's extend of lock {old_id} was not refused with lock_lost: {extended}"
        ));
    }
    h.tell("quit").await?;
    let _ = tokio::time::timeout(Duration::from_secs(10), h.child.wait()).await;

    // The new holder goes on writing, then lets go.
    successor
        .withdraw_into(
            Decimal::new(444, 2),
            &new_lock_token,
            "second write",
            (&mut bad, &mut writes),
        )
        .await?;
    let (_, released) = post(
        successor.target,
        &user.token,
        &format!("/api/v1/locks/{new_id}/release"),
        &json!({}),
        None,
    )
    .await?;
    if released.status != 200 {
        bad.push(format!(
            "the new holder's release: {} {}",
            released.status,
            String::from_utf8_lossy(&released.body)
        ));
    }
    s.writes.extend(writes);
    s.problems
        .extend(bad.into_iter().map(|p| format!("cycle {cycle}: {p}")));
    Ok(())
}
