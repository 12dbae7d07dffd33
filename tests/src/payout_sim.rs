//! A fake payout provider for the withdrawal workflows: a real HTTP server
//! that answers the calls the ledger makes when `LEDGER_PAYOUT_URL` is set
//! (`POST {"payout_id","user_id","amount","currency","destination"}` with
//! `Idempotency-Key: <payout_id>`), behaves as a provider does (one payment
//! per key, the stored answer for every retry), misbehaves on demand
//! ([`Mode`]), and records every payout so a test can assert "sent exactly
//! once".
//!
//! In a test: `let sim = PayoutSim::start(Mode::Accept).await?;`, then
//! `LEDGER_PAYOUT_URL = sim.url()`, `sim.set_mode(..)` at any time,
//! `sim.payments(id)`, `sim.payout(id)`, `sim.protocol_errors()` to check.
//!
//! The binary, for demos and manual runs:
//!
//! ```text
//! payout-sim --listen 127.0.0.1:9100 --mode accept
//!   --mode accept | reject | slow:MS | fail-first:N | drop
//!        | random:TRANSIENT,REJECT[,SEED]      (e.g. random:0.3,0.1,7)
//! ```
//!
//! It prints `LEDGER_PAYOUT_URL=http://127.0.0.1:9100/payouts` on stdout,
//! logs each call to stderr and stops on Ctrl-C (or SIGTERM). While it runs:
//!
//! - `GET /payouts`: every record, by payout id; `GET /payouts/{id}`: one
//!   (404 if the id never reached the provider);
//! - `GET /mode`; `PUT /mode` with `{"mode":"accept"}`, `{"mode":"reject"}`,
//!   `{"mode":"slow","ms":2000}`, `{"mode":"fail_first","n":3}`,
//!   `{"mode":"drop"}`, `{"mode":"random","transient":0.3,"reject":0.1,"seed":7}`;
//! - `GET /stats`: `{"total_calls","protocol_errors","payouts","payments"}`.
//!
//! The protocol is checked strictly, so that a client bug shows up as a
//! counted protocol error rather than as a payment: an `Idempotency-Key`
//! that is missing or is not the `payout_id`, or a body that is not exactly
//! the JSON above (unknown fields, a non-positive or non-decimal `amount`,
//! an empty `currency` or `destination`) gets 400; a key reused with other
//! parameters gets 422.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

use crate::accept::Accepting;

/// The reason of every `failed` answer.
pub const REJECT_REASON: &str = "rejected by provider";

/// Request bodies larger than this are refused (400).
const MAX_BODY: usize = 64 * 1024;

/// How the provider answers. Whatever the mode, a payout id that already has
/// a final answer gets that answer again and is never paid twice.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Pays and answers `sent`.
    Accept,
    /// Pays nothing and answers `failed` ("rejected by provider"): final.
    Reject,
    /// Pays at once, answers `sent` after the delay (every answer, stored
    /// ones included, is this late): a client that times out first has been
    /// paid without knowing it.
    Slow(Duration),
    /// 503, storing nothing, for the first N calls (all payout ids
    /// together) since the mode was set; then as `Accept`.
    FailFirst(u32),
    /// Pays a new payout, records it as sent, then closes the connection
    /// without answering: sent but unanswered. A call for a payout that
    /// already has its answer gets that answer.
    DropAfterProcessing,
    /// Per call, with probability `transient` a 503 before anything is
    /// processed; otherwise the final answer of the payout id is `failed`
    /// with probability `reject`, decided from (`seed`, payout id) alone,
    /// else `sent`. The transient draws follow the calls' order since the
    /// mode was set, so a run that makes the same calls sees the same 503s.
    Random {
        transient: f64,
        reject: f64,
        seed: u64,
    },
}

impl fmt::Display for Mode {
    /// The `--mode` syntax of the binary.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Accept => write!(f, "accept"),
            Self::Reject => write!(f, "reject"),
            Self::Slow(delay) => write!(f, "slow:{}", delay.as_millis()),
            Self::FailFirst(n) => write!(f, "fail-first:{n}"),
            Self::DropAfterProcessing => write!(f, "drop"),
            Self::Random {
                transient,
                reject,
                seed,
            } => write!(f, "random:{transient},{reject},{seed}"),
        }
    }
}

/// Parses the `--mode` syntax: `accept`, `reject`, `slow:MS`,
/// `fail-first:N`, `drop`, `random:TRANSIENT,REJECT[,SEED]` (seed 0 when
/// absent).
impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, arg) = s
            .split_once(':')
            .map_or((s, None), |(name, arg)| (name, Some(arg)));
        let number = |what: &str| -> Result<u64, String> {
            let arg = arg.ok_or_else(|| format!("{name} needs :{what}"))?;
            arg.trim()
                .parse()
                .map_err(|_| format!("{name}: {arg:?} is not a whole number"))
        };
        let mode = match (name.trim(), arg) {
            ("accept", None) => Self::Accept,
            ("reject", None) => Self::Reject,
            ("drop", None) => Self::DropAfterProcessing,
            ("slow", _) => Self::Slow(Duration::from_millis(number("MS")?)),
            ("fail-first" | "fail_first", _) => Self::FailFirst(
                u32::try_from(number("N")?).map_err(|_| format!("{name}: N is too large"))?,
            ),
            ("random", Some(arg)) => {
                let parts: Vec<&str> = arg.split(',').map(str::trim).collect();
                let probability = |part: Option<&&str>, what: &str| -> Result<f64, String> {
                    part.ok_or_else(|| format!("random needs {what}"))?
                        .parse()
                        .map_err(|_| format!("random: {what} is not a number"))
                };
                if parts.len() > 3 {
                    return Err("random takes TRANSIENT,REJECT[,SEED]".into());
                }
                let transient = probability(parts.first(), "TRANSIENT")?;
                let reject = probability(parts.get(1), "REJECT")?;
                let seed = match parts.get(2) {
                    Some(seed) => seed
                        .parse()
                        .map_err(|_| format!("random: seed {seed:?} is not a whole number"))?,
                    None => 0,
                };
                Self::random(transient, reject, seed)?
            }
            ("random", None) => return Err("random needs :TRANSIENT,REJECT[,SEED]".into()),
            _ => {
                return Err(format!(
                    "unknown mode {s:?}: accept, reject, slow:MS, fail-first:N, drop, \
                     random:TRANSIENT,REJECT[,SEED]"
                ));
            }
        };
        Ok(mode)
    }
}

impl Mode {
    /// `Random` with both probabilities checked to lie in [0, 1].
    pub fn random(transient: f64, reject: f64, seed: u64) -> Result<Self, String> {
        for (what, p) in [("transient", transient), ("reject", reject)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{what} must be a probability in [0, 1], not {p}"));
            }
        }
        Ok(Self::Random {
            transient,
            reject,
            seed,
        })
    }

    /// The JSON of `GET /mode` and `PUT /mode`.
    pub fn to_json(&self) -> Value {
        let body = match *self {
            Self::Accept => ModeBody::Accept,
            Self::Reject => ModeBody::Reject,
            Self::Slow(delay) => ModeBody::Slow {
                ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            },
            Self::FailFirst(n) => ModeBody::FailFirst { n },
            Self::DropAfterProcessing => ModeBody::Drop,
            Self::Random {
                transient,
                reject,
                seed,
            } => ModeBody::Random {
                transient,
                reject,
                seed,
            },
        };
        serde_json::to_value(body).unwrap_or(Value::Null)
    }

    /// Reads the JSON of `PUT /mode`.
    pub fn from_json(body: &[u8]) -> Result<Self, String> {
        let body: ModeBody = serde_json::from_slice(body).map_err(|e| format!("bad mode: {e}"))?;
        Ok(match body {
            ModeBody::Accept => Self::Accept,
            ModeBody::Reject => Self::Reject,
            ModeBody::Slow { ms } => Self::Slow(Duration::from_millis(ms)),
            ModeBody::FailFirst { n } => Self::FailFirst(n),
            ModeBody::Drop => Self::DropAfterProcessing,
            ModeBody::Random {
                transient,
                reject,
                seed,
            } => Self::random(transient, reject, seed)?,
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
enum ModeBody {
    Accept,
    Reject,
    Slow {
        ms: u64,
    },
    #[serde(alias = "fail-first")]
    FailFirst {
        n: u32,
    },
    #[serde(alias = "drop_after_processing")]
    Drop,
    Random {
        transient: f64,
        reject: f64,
        #[serde(default)]
        seed: u64,
    },
}

/// The final answer stored for a payout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Sent,
    Failed,
}

/// What the provider knows of one payout id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Record {
    pub payout_id: i64,
    pub user_id: i64,
    /// The amount as the first call sent it.
    pub amount: String,
    pub currency: String,
    pub destination: String,
    /// Well-formed calls received for this id: 503s, dropped answers and
    /// replays included.
    pub calls: u64,
    /// Times the money went out. Idempotency keeps it at most 1; it is a
    /// count, not a flag, so that a double payment would show.
    pub payments: u64,
    /// The final answer, once one is stored (a 503 stores nothing).
    pub status: Option<Status>,
    pub provider_ref: Option<String>,
    pub reason: Option<String>,
}

impl Record {
    /// The body answered for this record's stored answer.
    fn answer(&self) -> Option<Value> {
        match self.status? {
            Status::Sent => Some(json!({ "status": "sent", "provider_ref": self.provider_ref })),
            Status::Failed => Some(json!({ "status": "failed", "reason": self.reason })),
        }
    }
}

/// The call's body, exactly as the ledger sends it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PayoutRequest {
    payout_id: i64,
    user_id: i64,
    amount: String,
    currency: String,
    destination: String,
}

/// A running provider. Dropping it stops it.
pub struct PayoutSim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    running: Accepting,
}

impl PayoutSim {
    /// Listens on a free port of 127.0.0.1.
    pub async fn start(mode: Mode) -> io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), mode).await
    }

    /// Listens on `addr` (port 0: a free one).
    pub async fn start_on(addr: SocketAddr, mode: Mode) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(mode));
        let running = Accepting::start(listener, {
            let shared = Arc::clone(&shared);
            move |stream| serve(Arc::clone(&shared), stream)
        });
        Ok(Self {
            addr,
            shared,
            running,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The value for `LEDGER_PAYOUT_URL`.
    pub fn url(&self) -> String {
        format!("http://{}/payouts", self.addr)
    }

    pub fn mode(&self) -> Mode {
        lock(&self.shared.mode).mode
    }

    /// Changes the mode for the calls that arrive from now on; restarts the
    /// call count of `FailFirst` and the draws of `Random`.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.set_mode(mode);
    }

    /// Logs every call to stderr (the binary does).
    pub fn set_logging(&self, on: bool) {
        self.shared.log.store(on, Ordering::Relaxed);
    }

    /// Well-formed calls received for `payout_id`.
    pub fn calls(&self, payout_id: i64) -> u64 {
        self.payout(payout_id).map_or(0, |r| r.calls)
    }

    /// Times `payout_id` was paid.
    pub fn payments(&self, payout_id: i64) -> u64 {
        self.payout(payout_id).map_or(0, |r| r.payments)
    }

    pub fn payout(&self, payout_id: i64) -> Option<Record> {
        lock(&self.shared.book).payouts.get(&payout_id).cloned()
    }

    /// Every payout id that reached the provider, by id.
    pub fn records(&self) -> Vec<Record> {
        lock(&self.shared.book).payouts.values().cloned().collect()
    }

    /// Payments over all payout ids.
    pub fn total_payments(&self) -> u64 {
        lock(&self.shared.book)
            .payouts
            .values()
            .map(|r| r.payments)
            .sum()
    }

    /// Every `POST /payouts`, well-formed or not.
    pub fn total_calls(&self) -> u64 {
        self.shared.total_calls.load(Ordering::Relaxed)
    }

    /// Calls refused for breaking the protocol (400, 422).
    pub fn protocol_errors(&self) -> u64 {
        self.shared.protocol_errors.load(Ordering::Relaxed)
    }

    /// Stops listening and closes every connection (answers still being
    /// delayed are never sent). When this returns the port is free.
    pub async fn stop(self) {
        self.running.stop().await;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct ModeState {
    mode: Mode,
    /// Well-formed calls since the mode was set.
    calls: u64,
}

#[derive(Default)]
struct Book {
    payouts: BTreeMap<i64, Record>,
    next_ref: u64,
}

struct Shared {
    mode: Mutex<ModeState>,
    book: Mutex<Book>,
    total_calls: AtomicU64,
    protocol_errors: AtomicU64,
    log: AtomicBool,
}

/// What the mode makes of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// 503, nothing processed.
    Unavailable,
    /// The answer a payout without one gets; how the answer goes out.
    Answer {
        fresh: Status,
        delay: Option<Duration>,
        drop_fresh: bool,
    },
}

/// A call's answer from the book.
struct Settled {
    body: Value,
    /// This call stored the answer (the others replay it).
    fresh: bool,
    calls: u64,
    payments: u64,
}

impl Shared {
    fn new(mode: Mode) -> Self {
        Self {
            mode: Mutex::new(ModeState { mode, calls: 0 }),
            book: Mutex::new(Book::default()),
            total_calls: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            log: AtomicBool::new(false),
        }
    }

    fn set_mode(&self, mode: Mode) {
        *lock(&self.mode) = ModeState { mode, calls: 0 };
        self.log_line(format_args!("mode {mode}"));
    }

    fn log_line(&self, line: fmt::Arguments<'_>) {
        if self.log.load(Ordering::Relaxed) {
            eprintln!("payout-sim: {line}");
        }
    }

    fn protocol_error(&self, status: StatusCode, why: &str) -> Response<Full<Bytes>> {
        self.protocol_errors.fetch_add(1, Ordering::Relaxed);
        self.log_line(format_args!("POST /payouts -> {} {why}", status.as_u16()));
        reply(status, &json!({ "error": why }))
    }

    /// Counts a well-formed call for its payout id, creating the record on
    /// the first one. A key reused with other parameters is refused.
    fn receive(&self, p: &PayoutRequest, amount: Decimal) -> Result<(), String> {
        let mut book = lock(&self.book);
        let record = book.payouts.entry(p.payout_id).or_insert_with(|| Record {
            payout_id: p.payout_id,
            user_id: p.user_id,
            amount: p.amount.clone(),
            currency: p.currency.clone(),
            destination: p.destination.clone(),
            calls: 0,
            payments: 0,
            status: None,
            provider_ref: None,
            reason: None,
        });
        let same_amount = record.amount.parse::<Decimal>().is_ok_and(|a| a == amount);
        if record.user_id != p.user_id
            || !same_amount
            || record.currency != p.currency
            || record.destination != p.destination
        {
            return Err(format!(
                "Idempotency-Key {} was first used for user {} paying {} {} to {:?}",
                p.payout_id, record.user_id, record.amount, record.currency, record.destination
            ));
        }
        record.calls += 1;
        Ok(())
    }

    fn plan(&self, payout_id: i64) -> Plan {
        let mut state = lock(&self.mode);
        let call = state.calls;
        state.calls += 1;
        let answer = |fresh| Plan::Answer {
            fresh,
            delay: None,
            drop_fresh: false,
        };
        match state.mode {
            Mode::Accept => answer(Status::Sent),
            Mode::Reject => answer(Status::Failed),
            Mode::Slow(delay) => Plan::Answer {
                fresh: Status::Sent,
                delay: Some(delay),
                drop_fresh: false,
            },
            Mode::FailFirst(n) if call < u64::from(n) => Plan::Unavailable,
            Mode::FailFirst(_) => answer(Status::Sent),
            Mode::DropAfterProcessing => Plan::Answer {
                fresh: Status::Sent,
                delay: None,
                drop_fresh: true,
            },
            Mode::Random {
                transient,
                reject,
                seed,
            } => {
                if draw(seed, TRANSIENT_STREAM, call) < transient {
                    Plan::Unavailable
                } else if draw(seed, REJECT_STREAM, payout_id as u64) < reject {
                    answer(Status::Failed)
                } else {
                    answer(Status::Sent)
                }
            }
        }
    }

    /// The stored answer of `payout_id`, or `fresh` stored (and paid, if
    /// sent) now. Check and store happen under one lock, so concurrent
    /// duplicates cannot both pay.
    fn settle(&self, payout_id: i64, fresh: Status) -> Option<Settled> {
        let mut book = lock(&self.book);
        let provider_ref = format!("psim-{payout_id}-{}", book.next_ref + 1);
        let record = book.payouts.get_mut(&payout_id)?;
        let stored = record.status.is_none();
        if stored {
            record.status = Some(fresh);
            match fresh {
                Status::Sent => {
                    record.payments += 1;
                    record.provider_ref = Some(provider_ref);
                }
                Status::Failed => record.reason = Some(REJECT_REASON.to_owned()),
            }
        }
        let settled = Settled {
            body: record.answer()?,
            fresh: stored,
            calls: record.calls,
            payments: record.payments,
        };
        if stored && fresh == Status::Sent {
            book.next_ref += 1;
        }
        Some(settled)
    }
}

const TRANSIENT_STREAM: u64 = 1;
const REJECT_STREAM: u64 = 2;

/// A uniform number in [0, 1) from (seed, stream, n): splitmix64, so the
/// same inputs give the same number on every run and platform.
fn draw(seed: u64, stream: u64, n: u64) -> f64 {
    let h = splitmix64(splitmix64(seed ^ splitmix64(stream)) ^ n);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Serves one connection of the provider.
async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    let service = service_fn(move |req| handle(Arc::clone(&shared), req));
    // A dropped answer ends the connection with an error: expected.
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Returned by the service to make hyper close the connection without
/// writing an answer.
#[derive(Debug)]
struct DropConnection;

impl fmt::Display for DropConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "answer dropped on purpose")
    }
}

impl std::error::Error for DropConnection {}

type Answer = Result<Response<Full<Bytes>>, DropConnection>;

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Answer {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    match (method, path.as_str()) {
        (Method::POST, "/payouts") => post_payout(&shared, req).await,
        (Method::GET, "/payouts") => {
            let records = lock(&shared.book)
                .payouts
                .values()
                .cloned()
                .collect::<Vec<_>>();
            Ok(reply(StatusCode::OK, &records))
        }
        (Method::GET, "/mode") => {
            let mode = lock(&shared.mode).mode;
            Ok(reply(StatusCode::OK, &mode.to_json()))
        }
        (Method::PUT, "/mode") => {
            let mode = match read_body(req).await {
                Ok(body) => Mode::from_json(&body),
                Err(e) => Err(e),
            };
            Ok(match mode {
                Ok(mode) => {
                    shared.set_mode(mode);
                    reply(StatusCode::OK, &mode.to_json())
                }
                Err(why) => reply(StatusCode::BAD_REQUEST, &json!({ "error": why })),
            })
        }
        (Method::GET, "/stats") => {
            let (payouts, payments) = {
                let book = lock(&shared.book);
                let payments: u64 = book.payouts.values().map(|r| r.payments).sum();
                (book.payouts.len(), payments)
            };
            Ok(reply(
                StatusCode::OK,
                &json!({
                    "total_calls": shared.total_calls.load(Ordering::Relaxed),
                    "protocol_errors": shared.protocol_errors.load(Ordering::Relaxed),
                    "payouts": payouts,
                    "payments": payments,
                }),
            ))
        }
        (Method::GET, other) => {
            let record = other
                .strip_prefix("/payouts/")
                .and_then(|id| id.parse::<i64>().ok())
                .and_then(|id| lock(&shared.book).payouts.get(&id).cloned());
            Ok(match record {
                Some(record) => reply(StatusCode::OK, &record),
                None => reply(StatusCode::NOT_FOUND, &json!({ "error": "no such payout" })),
            })
        }
        _ => Ok(reply(
            StatusCode::NOT_FOUND,
            &json!({ "error": "POST /payouts, GET /payouts[/{id}], GET|PUT /mode, GET /stats" }),
        )),
    }
}

async fn post_payout(shared: &Shared, req: Request<Incoming>) -> Answer {
    shared.total_calls.fetch_add(1, Ordering::Relaxed);
    let key = req
        .headers()
        .get("idempotency-key")
        .map(|k| k.to_str().map(str::to_owned).unwrap_or_default());
    let body = match read_body(req).await {
        Ok(body) => body,
        Err(why) => return Ok(shared.protocol_error(StatusCode::BAD_REQUEST, &why)),
    };
    let (payout, amount) = match parse_payout(&body) {
        Ok(parsed) => parsed,
        Err(why) => return Ok(shared.protocol_error(StatusCode::BAD_REQUEST, &why)),
    };
    let id = payout.payout_id;
    if key.as_deref() != Some(id.to_string().as_str()) {
        let why = match key {
            None => "Idempotency-Key is missing".to_owned(),
            Some(key) => format!("Idempotency-Key {key:?} is not the payout_id {id}"),
        };
        return Ok(shared.protocol_error(StatusCode::BAD_REQUEST, &why));
    }
    if let Err(why) = shared.receive(&payout, amount) {
        return Ok(shared.protocol_error(StatusCode::UNPROCESSABLE_ENTITY, &why));
    }
    let (fresh, delay, drop_fresh) = match shared.plan(id) {
        Plan::Unavailable => {
            shared.log_line(format_args!(
                "POST /payouts payout_id={id} -> 503 (calls {})",
                lock(&shared.book).payouts.get(&id).map_or(0, |r| r.calls)
            ));
            return Ok(reply(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "error": "temporarily unavailable" }),
            ));
        }
        Plan::Answer {
            fresh,
            delay,
            drop_fresh,
        } => (fresh, delay, drop_fresh),
    };
    let Some(settled) = shared.settle(id, fresh) else {
        // `receive` created the record and records are never removed.
        return Ok(reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({ "error": "payout record missing" }),
        ));
    };
    let what = if settled.fresh { "new" } else { "replay" };
    let outcome = &settled.body;
    if settled.fresh && drop_fresh {
        shared.log_line(format_args!(
            "POST /payouts payout_id={id} user_id={} {} {} -> paid, connection dropped \
             without an answer (calls {}, payments {})",
            payout.user_id, payout.amount, payout.currency, settled.calls, settled.payments
        ));
        return Err(DropConnection);
    }
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    shared.log_line(format_args!(
        "POST /payouts payout_id={id} user_id={} {} {} -> 200 {outcome} ({what}; calls {}, \
         payments {})",
        payout.user_id, payout.amount, payout.currency, settled.calls, settled.payments
    ));
    Ok(reply(StatusCode::OK, outcome))
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, String> {
    Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|body| body.to_bytes())
        .map_err(|e| format!("unreadable body: {e}"))
}

fn parse_payout(body: &[u8]) -> Result<(PayoutRequest, Decimal), String> {
    let payout: PayoutRequest =
        serde_json::from_slice(body).map_err(|e| format!("not a payout request: {e}"))?;
    let amount = payout
        .amount
        .parse::<Decimal>()
        .map_err(|_| format!("amount {:?} is not a decimal string", payout.amount))?;
    if amount <= Decimal::ZERO {
        return Err(format!("amount {} is not positive", payout.amount));
    }
    if payout.currency.trim().is_empty() || payout.destination.trim().is_empty() {
        return Err("currency and destination must not be empty".into());
    }
    Ok((payout, amount))
}

fn reply(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Instant;

    use super::*;

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    fn payout_body(id: i64) -> Value {
        json!({
            "payout_id": id,
            "user_id": 7,
            "amount": "12.50",
            "currency": "USD",
            "destination": "iban:DE89370400440532013000",
        })
    }

    /// One call as the ledger makes it: `Ok((status, body))`, or the
    /// transport error when no answer came.
    async fn call(
        client: &reqwest::Client,
        sim: &PayoutSim,
        id: i64,
    ) -> Result<(u16, Value), reqwest::Error> {
        call_with(
            client,
            sim,
            Some(&id.to_string()),
            &payout_body(id).to_string(),
        )
        .await
    }

    async fn call_with(
        client: &reqwest::Client,
        sim: &PayoutSim,
        key: Option<&str>,
        body: &str,
    ) -> Result<(u16, Value), reqwest::Error> {
        let mut req = client
            .post(sim.url())
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(key) = key {
            req = req.header("Idempotency-Key", key);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// Calls until a final (2xx) answer, as the ledger retries; returns it
    /// and the number of calls it took.
    /// GETs `url` and reads the answer as JSON.
    async fn get_json(client: &reqwest::Client, url: &str) -> Value {
        client.get(url).send().await.unwrap().json().await.unwrap()
    }

    /// PUTs `body` to the simulator's `/mode`.
    async fn put_mode(client: &reqwest::Client, base: &str, body: &Value) -> reqwest::Response {
        client
            .put(format!("{base}/mode"))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    async fn until_final(client: &reqwest::Client, sim: &PayoutSim, id: i64) -> (Value, u32) {
        for attempt in 1..=200 {
            match call(client, sim, id).await {
                Ok((200, body)) => return (body, attempt),
                Ok((503, _)) | Err(_) => {}
                Ok((status, body)) => panic!("payout {id}: unexpected {status} {body}"),
            }
        }
        panic!("payout {id}: no final answer after 200 calls");
    }

    #[tokio::test]
    async fn each_mode_answers_as_documented() {
        let client = client();
        let sim = PayoutSim::start(Mode::Accept).await.unwrap();

        let (status, body) = call(&client, &sim, 1).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body["status"], "sent");
        let provider_ref = body["provider_ref"].as_str().unwrap();
        assert!(!provider_ref.is_empty());
        let record = sim.payout(1).unwrap();
        assert_eq!(record.status, Some(Status::Sent));
        assert_eq!(record.provider_ref.as_deref(), Some(provider_ref));
        assert_eq!(
            (
                record.user_id,
                record.amount.as_str(),
                record.currency.as_str()
            ),
            (7, "12.50", "USD")
        );
        assert_eq!(record.destination, "iban:DE89370400440532013000");
        assert_eq!((record.calls, record.payments), (1, 1));

        sim.set_mode(Mode::Reject);
        assert_eq!(
            call(&client, &sim, 2).await.unwrap(),
            (
                200,
                json!({ "status": "failed", "reason": "rejected by provider" })
            )
        );
        let record = sim.payout(2).unwrap();
        assert_eq!(
            (record.status, record.payments, record.provider_ref),
            (Some(Status::Failed), 0, None)
        );

        sim.set_mode(Mode::Slow(Duration::from_millis(300)));
        let started = Instant::now();
        let (status, body) = call(&client, &sim, 3).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!((status, body["status"].as_str()), (200, Some("sent")));
        assert_eq!(sim.payments(3), 1);

        sim.set_mode(Mode::FailFirst(1));
        assert_eq!(call(&client, &sim, 4).await.unwrap().0, 503);
        assert_eq!(call(&client, &sim, 4).await.unwrap().0, 200);

        sim.set_mode(Mode::DropAfterProcessing);
        assert!(call(&client, &sim, 5).await.is_err());
        assert_eq!(sim.payments(5), 1);

        assert_eq!(sim.total_calls(), 6);
        assert_eq!(sim.protocol_errors(), 0);
        assert_eq!(sim.total_payments(), 4);
        let ids: Vec<i64> = sim.records().iter().map(|r| r.payout_id).collect();
        assert_eq!(ids, vec![1, 2, 3, 4, 5]);
        sim.stop().await;
    }

    /// Invariant: in every mode, a payout id is paid at most once and every
    /// call after the first final answer gets that same answer.
    #[tokio::test]
    async fn the_same_id_twice_pays_once_and_answers_the_same_in_every_mode() {
        let client = client();
        let modes = [
            Mode::Accept,
            Mode::Reject,
            Mode::Slow(Duration::from_millis(50)),
            Mode::FailFirst(1),
            Mode::DropAfterProcessing,
            Mode::random(0.4, 0.5, 3).unwrap(),
        ];
        for mode in modes {
            let sim = PayoutSim::start(mode).await.unwrap();
            let mut answers = Vec::new();
            for id in 1..=6 {
                let (first, _) = until_final(&client, &sim, id).await;
                let (again, _) = until_final(&client, &sim, id).await;
                assert_eq!(first, again, "{mode}: payout {id}");
                let sent = first["status"] == "sent";
                assert_eq!(sim.payments(id), u64::from(sent), "{mode}: payout {id}");
                let record = sim.payout(id).unwrap();
                assert_eq!(record.answer(), Some(first.clone()), "{mode}: payout {id}");
                assert!(record.calls >= 2, "{mode}: payout {id}");
                answers.push(first);
            }
            // Switching modes changes nothing for the ids already answered.
            for (other, id) in [
                (Mode::Accept, 1),
                (Mode::Reject, 2),
                (Mode::DropAfterProcessing, 3),
            ] {
                sim.set_mode(other);
                let (answer, _) = until_final(&client, &sim, id).await;
                assert_eq!(
                    Some(&answer),
                    answers.get(id as usize - 1),
                    "{mode} then {other}"
                );
            }
            assert!(sim.records().iter().all(|r| r.payments <= 1), "{mode}");
            assert_eq!(sim.protocol_errors(), 0, "{mode}");
            let sent = answers.iter().filter(|a| a["status"] == "sent").count() as u64;
            assert_eq!(sim.total_payments(), sent, "{mode}");
        }
    }

    #[tokio::test]
    async fn fail_first_two_then_accept_storing_nothing_for_the_503s() {
        let client = client();
        let sim = PayoutSim::start(Mode::FailFirst(2)).await.unwrap();
        assert_eq!(call(&client, &sim, 1).await.unwrap().0, 503);
        let record = sim.payout(1).unwrap();
        assert_eq!((record.calls, record.payments, record.status), (1, 0, None));
        // The count is across payout ids.
        assert_eq!(call(&client, &sim, 2).await.unwrap().0, 503);
        let (status, sent) = call(&client, &sim, 1).await.unwrap();
        assert_eq!((status, sent["status"].as_str()), (200, Some("sent")));
        assert_eq!(call(&client, &sim, 2).await.unwrap().0, 200);
        assert_eq!((sim.calls(1), sim.payments(1)), (2, 1));
        assert_eq!((sim.calls(2), sim.payments(2)), (2, 1));

        // Setting the mode again restarts the count; a 503 hides a stored
        // answer but does not change it.
        sim.set_mode(Mode::FailFirst(1));
        assert_eq!(call(&client, &sim, 1).await.unwrap().0, 503);
        assert_eq!(call(&client, &sim, 1).await.unwrap(), (200, sent));
        assert_eq!((sim.calls(1), sim.payments(1)), (4, 1));
    }

    /// The hard case: paid, but the ledger never heard. The retry with the
    /// same key must learn `sent` and must not pay again.
    #[tokio::test]
    async fn drop_after_processing_then_the_retry_gets_the_stored_sent() {
        let client = client();
        let sim = PayoutSim::start(Mode::DropAfterProcessing).await.unwrap();
        let err = call(&client, &sim, 9).await.unwrap_err();
        assert!(!err.is_timeout(), "{err:?}");
        let record = sim.payout(9).unwrap();
        assert_eq!((record.status, record.payments), (Some(Status::Sent), 1));
        let provider_ref = record.provider_ref.unwrap();

        // Still in drop mode: an answered-before id is answered.
        let expected = json!({ "status": "sent", "provider_ref": provider_ref });
        assert_eq!(
            call(&client, &sim, 9).await.unwrap(),
            (200, expected.clone())
        );
        sim.set_mode(Mode::Accept);
        assert_eq!(call(&client, &sim, 9).await.unwrap(), (200, expected));
        assert_eq!((sim.calls(9), sim.payments(9)), (3, 1));
    }

    #[tokio::test]
    async fn random_mode_is_deterministic_per_id_and_near_the_requested_fractions() {
        let client = client();
        let mode = Mode::random(0.3, 0.1, 42).unwrap();
        let sim = PayoutSim::start(mode).await.unwrap();
        let ids = 1..=1000;

        let mut transient = 0;
        for id in ids.clone() {
            match call(&client, &sim, id).await.unwrap().0 {
                503 => transient += 1,
                200 => {}
                other => panic!("payout {id}: {other}"),
            }
        }
        assert!((230..=370).contains(&transient), "{transient} 503s of 1000");

        let mut failed = BTreeSet::new();
        for id in ids.clone() {
            let (answer, _) = until_final(&client, &sim, id).await;
            match answer["status"].as_str() {
                Some("failed") => {
                    failed.insert(id);
                }
                Some("sent") => {}
                _ => panic!("payout {id}: {answer}"),
            }
        }
        assert!(
            (60..=140).contains(&failed.len()),
            "{} failed of 1000",
            failed.len()
        );
        for id in ids.clone() {
            assert_eq!(
                sim.payments(id),
                u64::from(!failed.contains(&id)),
                "payout {id}"
            );
        }

        // The final answer depends on (seed, id) alone: another provider with
        // the same seed, called in another order, fails the same ids; another
        // seed fails others.
        for (seed, same) in [(42, true), (43, false)] {
            let other = PayoutSim::start(Mode::random(0.5, 0.1, seed).unwrap())
                .await
                .unwrap();
            let mut other_failed = BTreeSet::new();
            for id in ids.clone().rev() {
                if until_final(&client, &other, id).await.0["status"] == "failed" {
                    other_failed.insert(id);
                }
            }
            assert_eq!(other_failed == failed, same, "seed {seed}");
        }
    }

    #[tokio::test]
    async fn a_missing_or_mismatched_key_or_a_bad_body_is_a_400_protocol_error() {
        let client = client();
        let sim = PayoutSim::start(Mode::Accept).await.unwrap();
        let body = payout_body(1).to_string();
        for key in [None, Some("2"), Some(""), Some("01"), Some("one")] {
            let (status, answer) = call_with(&client, &sim, key, &body).await.unwrap();
            assert_eq!(status, 400, "key {key:?}: {answer}");
            assert!(answer["error"].is_string());
        }
        assert_eq!(sim.protocol_errors(), 5);
        assert_eq!(sim.payout(1), None);

        let mut bad_bodies = vec!["not json".to_owned(), "{}".to_owned()];
        for (field, value) in [
            ("amount", json!("abc")),
            ("amount", json!(12.5)),
            ("amount", json!("0")),
            ("amount", json!("-1")),
            ("payout_id", json!("1")),
            ("currency", json!("")),
            ("destination", json!(" ")),
            ("wallet", json!("live")),
        ] {
            let mut body = payout_body(1);
            body[field] = value;
            bad_bodies.push(body.to_string());
        }
        let mut without_user = payout_body(1);
        without_user.as_object_mut().unwrap().remove("user_id");
        bad_bodies.push(without_user.to_string());
        for body in &bad_bodies {
            let (status, answer) = call_with(&client, &sim, Some("1"), body).await.unwrap();
            assert_eq!(status, 400, "{body}: {answer}");
        }
        assert_eq!(sim.protocol_errors(), 5 + bad_bodies.len() as u64);
        assert_eq!(sim.payout(1), None);

        assert_eq!(call(&client, &sim, 1).await.unwrap().0, 200);
        assert_eq!(sim.protocol_errors(), 5 + bad_bodies.len() as u64);
        assert_eq!(sim.total_calls(), 6 + bad_bodies.len() as u64);
        assert_eq!((sim.calls(1), sim.payments(1)), (1, 1));
    }

    #[tokio::test]
    async fn a_key_reused_with_other_parameters_is_refused() {
        let client = client();
        let sim = PayoutSim::start(Mode::Accept).await.unwrap();
        assert_eq!(call(&client, &sim, 1).await.unwrap().0, 200);
        let mut same_amount = payout_body(1);
        same_amount["amount"] = json!("12.5");
        assert_eq!(
            call_with(&client, &sim, Some("1"), &same_amount.to_string())
                .await
                .unwrap()
                .0,
            200
        );
        for (field, value) in [
            ("amount", json!("13.00")),
            ("user_id", json!(8)),
            ("currency", json!("EUR")),
            ("destination", json!("iban:FR7630006000011234567890189")),
        ] {
            let mut body = payout_body(1);
            body[field] = value;
            let (status, _) = call_with(&client, &sim, Some("1"), &body.to_string())
                .await
                .unwrap();
            assert_eq!(status, 422, "{field}");
        }
        assert_eq!(sim.protocol_errors(), 4);
        assert_eq!((sim.calls(1), sim.payments(1)), (2, 1));
    }

    /// Invariant: concurrent calls with one key pay once, and all that are
    /// answered get the same answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_duplicates_pay_once() {
        let client = client();
        let modes = [
            Mode::Accept,
            Mode::Slow(Duration::from_millis(100)),
            Mode::DropAfterProcessing,
        ];
        for mode in modes {
            let sim = PayoutSim::start(mode).await.unwrap();
            for id in 1..=5 {
                let calls = (0..20).map(|_| call(&client, &sim, id));
                let results = futures::future::join_all(calls).await;
                let answers: BTreeSet<String> = results
                    .iter()
                    .filter_map(|r| r.as_ref().ok())
                    .map(|(status, body)| format!("{status} {body}"))
                    .collect();
                let dropped = results.iter().filter(|r| r.is_err()).count();
                assert_eq!(answers.len(), 1, "{mode}: {answers:?}");
                assert!(answers.iter().all(|a| a.starts_with("200 ")), "{mode}");
                let expect_dropped = usize::from(mode == Mode::DropAfterProcessing);
                assert_eq!(dropped, expect_dropped, "{mode}: payout {id}");
                assert_eq!((sim.calls(id), sim.payments(id)), (20, 1), "{mode}");
            }
        }
    }

    #[tokio::test]
    async fn introspection_over_http() {
        let client = client();
        let sim = PayoutSim::start(Mode::Accept).await.unwrap();
        let base = format!("http://{}", sim.addr());
        assert_eq!(call(&client, &sim, 3).await.unwrap().0, 200);

        let examples = [
            (json!({"mode": "accept"}), Mode::Accept),
            (json!({"mode": "fail_first", "n": 3}), Mode::FailFirst(3)),
            (
                json!({"mode": "slow", "ms": 2000}),
                Mode::Slow(Duration::from_millis(2000)),
            ),
            (
                json!({"mode": "random", "transient": 0.3, "reject": 0.1, "seed": 7}),
                Mode::random(0.3, 0.1, 7).unwrap(),
            ),
            (json!({"mode": "reject"}), Mode::Reject),
            (json!({"mode": "drop"}), Mode::DropAfterProcessing),
        ];
        for (body, mode) in examples {
            let resp = put_mode(&client, &base, &body).await;
            assert_eq!(resp.status().as_u16(), 200, "{body}");
            assert_eq!(sim.mode(), mode, "{body}");
            assert_eq!(resp.json::<Value>().await.unwrap(), body);
            let now = get_json(&client, &format!("{base}/mode")).await;
            assert_eq!(now, body);
        }
        for bad in [
            json!({"mode": "sometimes"}),
            json!({"mode": "slow"}),
            json!({"mode": "random", "transient": 1.5, "reject": 0.1}),
        ] {
            let resp = put_mode(&client, &base, &bad).await;
            assert_eq!(resp.status().as_u16(), 400, "{bad}");
        }
        assert_eq!(sim.mode(), Mode::DropAfterProcessing);

        let list = get_json(&client, &sim.url()).await;
        assert_eq!(list.as_array().unwrap().len(), 1);
        assert_eq!(list[0]["payout_id"], 3);
        assert_eq!(list[0]["payments"], 1);
        assert_eq!(list[0]["status"], "sent");
        let one = client
            .get(format!("{base}/payouts/3"))
            .send()
            .await
            .unwrap();
        assert_eq!(one.status().as_u16(), 200);
        assert_eq!(one.json::<Value>().await.unwrap(), list[0]);
        for missing in ["/payouts/4", "/payouts/x", "/nothing"] {
            let resp = client.get(format!("{base}{missing}")).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 404, "{missing}");
        }
        let stats = get_json(&client, &format!("{base}/stats")).await;
        assert_eq!(
            stats,
            json!({"total_calls": 1, "protocol_errors": 0, "payouts": 1, "payments": 1})
        );
    }

    #[test]
    fn mode_strings_parse_and_print_back() {
        let cases = [
            ("accept", Mode::Accept),
            ("reject", Mode::Reject),
            ("slow:2000", Mode::Slow(Duration::from_millis(2000))),
            ("fail-first:3", Mode::FailFirst(3)),
            ("drop", Mode::DropAfterProcessing),
            ("random:0.3,0.1,7", Mode::random(0.3, 0.1, 7).unwrap()),
        ];
        for (text, mode) in cases {
            assert_eq!(text.parse::<Mode>(), Ok(mode), "{text}");
            assert_eq!(mode.to_string(), text);
        }
        assert_eq!("random:0.3,0.1".parse::<Mode>(), Mode::random(0.3, 0.1, 0));
        for bad in [
            "",
            "sometimes",
            "slow",
            "slow:fast",
            "fail-first:-1",
            "accept:1",
            "random",
            "random:0.3",
            "random:2,0.1",
            "random:0.3,0.1,x",
            "random:0.1,0.1,1,2",
        ] {
            assert!(bad.parse::<Mode>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn draws_are_uniform_enough_and_fixed() {
        assert_eq!(draw(7, REJECT_STREAM, 1), draw(7, REJECT_STREAM, 1));
        assert_ne!(draw(7, REJECT_STREAM, 1), draw(7, TRANSIENT_STREAM, 1));
        let n = 100_000;
        let below: usize = (0..n).filter(|&i| draw(1, REJECT_STREAM, i) < 0.25).count();
        assert!((24_000..=26_000).contains(&below), "{below}");
        assert!((0..n).all(|i| (0.0..1.0).contains(&draw(9, TRANSIENT_STREAM, i))));
    }

    #[tokio::test]
    async fn stop_frees_the_port() {
        let sim = PayoutSim::start(Mode::Accept).await.unwrap();
        let addr = sim.addr();
        assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
        sim.stop().await;
        let refused = tokio::net::TcpStream::connect(addr).await;
        assert_eq!(
            refused.map(|_| ()).map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionRefused)
        );
        let again = PayoutSim::start_on(addr, Mode::Accept).await.unwrap();
        assert_eq!(again.addr(), addr);
    }
}
