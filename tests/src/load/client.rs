//! One keep-alive HTTP/1.1 connection per virtual user, opened from a chosen
//! source address so that more than one loopback address can share the
//! ~28k ephemeral ports each (source, destination) pair allows.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, RETRY_AFTER};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;

/// Why a request got no HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Transport {
    Connect,
    Io,
    Timeout,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Self::Connect => "transport: connect failed",
            Self::Io => "transport: connection lost",
            Self::Timeout => "transport: timeout",
        }
    }
}

/// An HTTP answer: status, `Retry-After` and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The problem+json `code` of an error answer.
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or("").to_owned()
    }
}

/// A request to send: the path includes any query string.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub method: Method,
    pub path: String,
    /// Bearer token; `None` for the unauthenticated documents (`/metrics`).
    pub token: Option<&'a str>,
    pub key: Option<&'a str>,
    /// `Lock-Token: <lock_id>:<fencing_token>`, for a write fenced by a lock.
    pub lock_token: Option<&'a str>,
    /// Built once; a retry sends the same bytes (a cheap `Bytes` clone).
    pub body: Option<Bytes>,
}

impl<'a> Call<'a> {
    pub fn get(path: String, token: Option<&'a str>) -> Self {
        Self {
            method: Method::GET,
            path,
            token,
            key: None,
            lock_token: None,
            body: None,
        }
    }

    pub fn post(path: &str, token: &'a str, key: &'a str, body: &serde_json::Value) -> Self {
        Self {
            key: Some(key),
            ..Self::post_without_key(path, token, body)
        }
    }

    /// A POST that needs no `Idempotency-Key` (a lock's release).
    pub fn post_without_key(path: &str, token: &'a str, body: &serde_json::Value) -> Self {
        Self {
            method: Method::POST,
            path: path.to_owned(),
            token: Some(token),
            key: None,
            lock_token: None,
            body: Some(Bytes::from(body.to_string())),
        }
    }

    /// The same call fenced by a lock: sent with `Lock-Token`.
    pub fn fenced(self, lock_token: &'a str) -> Self {
        Self {
            lock_token: Some(lock_token),
            ..self
        }
    }
}

pub struct Connection {
    source: IpAddr,
    target: SocketAddr,
    host: String,
    timeout: Duration,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    pub fn new(source: IpAddr, target: SocketAddr, timeout: Duration) -> Self {
        Self {
            source,
            target,
            host: target.to_string(),
            timeout,
            sender: None,
        }
    }

    async fn connect(&mut self) -> Result<(), Transport> {
        let socket = match self.target {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|_| Transport::Connect)?;
        socket
            .bind(SocketAddr::new(self.source, 0))
            .map_err(|_| Transport::Connect)?;
        let stream = tokio::time::timeout(self.timeout, socket.connect(self.target))
            .await
            .map_err(|_| Transport::Timeout)?
            .map_err(|_| Transport::Connect)?;
        stream.set_nodelay(true).map_err(|_| Transport::Connect)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| Transport::Connect)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        self.sender = Some(sender);
        Ok(())
    }

    /// Opens the connection now (ramp-up holds it open from here on).
    pub async fn open(&mut self) -> Result<(), Transport> {
        if self.sender.is_none() {
            self.connect().await?;
        }
        Ok(())
    }

    /// Sends one request; on a transport failure the connection is dropped
    /// and the next call opens a new one.
    pub async fn send(&mut self, call: &Call<'_>) -> Result<Answer, Transport> {
        let result = tokio::time::timeout(self.timeout, self.exchange(call)).await;
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(_) => Err(Transport::Timeout),
        };
        if outcome.is_err() {
            self.sender = None;
        }
        outcome
    }

    async fn exchange(&mut self, call: &Call<'_>) -> Result<Answer, Transport> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.connect().await?;
        }
        let sender = self.sender.as_mut().ok_or(Transport::Connect)?;
        sender.ready().await.map_err(|_| Transport::Io)?;
        let mut request = Request::builder()
            .method(call.method.clone())
            .uri(call.path.as_str())
            .header(HOST, self.host.as_str());
        if let Some(token) = call.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(key) = call.key {
            request = request.header("idempotency-key", key);
        }
        if let Some(lock_token) = call.lock_token {
            request = request.header("lock-token", lock_token);
        }
        let body = match &call.body {
            Some(body) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Full::new(body.clone())
            }
            None => Full::new(Bytes::new()),
        };
        let request = request.body(body).map_err(|_| Transport::Io)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|_| Transport::Io)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(super::retry::parse_retry_after);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|_| Transport::Io)?
            .to_bytes();
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }
}
