//! A TCP proxy to put between a server and PostgreSQL, so a test can make
//! the database unreachable for that server alone (the PostgreSQL on the
//! machine is shared): `cut` closes every proxied connection and stops
//! listening, so new connections are refused, as when the database host is
//! down; `restore` listens again on the same port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::accept::Accepting;

pub struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    accepted: Arc<AtomicU64>,
    running: Option<Accepting>,
}

impl Proxy {
    /// Listens on a free local port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), upstream).await
    }

    /// Listens on `listen` (port 0: a free one) and forwards to `upstream`:
    /// e.g. on the host end of a veth pair, so that servers in a network
    /// namespace reach a database that listens on the host's loopback only.
    pub async fn start_on(listen_on: SocketAddr, upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = listen(listen_on)?;
        let addr = listener.local_addr()?;
        let mut proxy = Self {
            addr,
            upstream,
            accepted: Arc::new(AtomicU64::new(0)),
            running: None,
        };
        proxy.run(listener);
        Ok(proxy)
    }

    /// A proxy for the database of `url`, and `url` rewritten to go through it.
    pub async fn for_url(url: &str) -> std::io::Result<(Self, String)> {
        let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidInput, url.to_owned());
        let (host, port) = host_port(url).ok_or_else(invalid)?;
        let upstream = tokio::net::lookup_host((host.as_str(), port))
            .await?
            .next()
            .ok_or_else(invalid)?;
        let proxy = Self::start(upstream).await?;
        let proxied = with_host_port(url, proxy.addr).ok_or_else(invalid)?;
        Ok((proxy, proxied))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far (to check that a server really goes
    /// through the proxy).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn is_open(&self) -> bool {
        self.running.is_some()
    }

    /// Drops every proxied connection and stops listening. When this
    /// returns, both ends of every connection are closed and a new
    /// connection to `addr` is refused.
    pub async fn cut(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }

    /// Listens again on the same port.
    pub fn restore(&mut self) -> std::io::Result<()> {
        if self.running.is_none() {
            let listener = listen(self.addr)?;
            self.run(listener);
        }
        Ok(())
    }

    fn run(&mut self, listener: TcpListener) {
        let (upstream, accepted) = (self.upstream, Arc::clone(&self.accepted));
        self.running = Some(Accepting::start(listener, move |client| {
            accepted.fetch_add(1, Ordering::Relaxed);
            pump(client, upstream)
        }));
    }
}

/// SO_REUSEADDR: the port is bound again right after `cut`, while the
/// connections it accepted may still be in TIME_WAIT.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn pump(mut client: TcpStream, upstream: SocketAddr) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

/// The span of `scheme://[user[:password]@]host[:port]/...` that names the
/// host and port.
fn authority_span(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let at = rest[..end].rfind('@').map_or(0, |i| i + 1);
    Some((start + at, start + end))
}

/// Host and port of a PostgreSQL URL (port 5432 when absent).
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let (from, to) = authority_span(url)?;
    let authority = &url[from..to];
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
        None if !authority.is_empty() => Some((authority.to_owned(), 5432)),
        None => None,
    }
}

/// `url` with its host and port replaced by `addr`.
pub fn with_host_port(url: &str, addr: SocketAddr) -> Option<String> {
    let (from, to) = authority_span(url)?;
    Some(format!("{}{addr}{}", &url[..from], &url[to..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_are_pointed_at_the_proxy() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 40001));
        assert_eq!(
            host_port("postgres://postgres@127.0.0.1:5432/db"),
            Some(("127.0.0.1".into(), 5432))
        );
        assert_eq!(
            host_port("postgres://u:p%40ss@db.local/x?sslmode=disable"),
            Some(("db.local".into(), 5432))
        );
        assert_eq!(host_port("postgres:///x"), None);
        assert_eq!(
            with_host_port("postgres://postgres@127.0.0.1:5432/db?a=b", addr).as_deref(),
            Some("postgres://postgres@127.0.0.1:40001/db?a=b")
        );
        assert_eq!(
            with_host_port("postgres://localhost/db", addr).as_deref(),
            Some("postgres://127.0.0.1:40001/db")
        );
    }

    /// Invariant: while cut, connections are refused and open ones are
    /// closed; restored, bytes flow again on the same port.
    #[tokio::test]
    async fn cut_refuses_and_closes_restore_accepts_again() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let mut proxy = Proxy::start(upstream).await.unwrap();
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        open.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        open.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        proxy.cut().await;
        assert!(!proxy.is_open());
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            open.read_to_end(&mut rest),
        )
        .await
        .expect("a cut connection is closed at once");
        assert!(closed.is_err() || rest.is_empty(), "{closed:?}");
        let refused = TcpStream::connect(proxy.addr()).await;
        assert_eq!(
            refused.map(|_| ()).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionRefused)
        );

        proxy.restore().unwrap();
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        again.write_all(b"pong").await.unwrap();
        again.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        assert_eq!(proxy.accepted(), 2);
    }
}
