//! The accept loop of the crate's own servers (the payout provider, the
//! database proxy): a listener served in the background, each connection
//! in a task of its own, until stopped.

use std::future::Future;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// A listener being served. Dropping it stops at once: the accept task is
/// aborted, which drops its set of connections and so aborts every one.
pub(crate) struct Accepting {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Accepting {
    /// Accepts on `listener` in a background task; each connection is
    /// served by the future `serve` makes of it.
    pub(crate) fn start<F, Fut>(listener: TcpListener, serve: F) -> Self
    where
        F: FnMut(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_until(listener, serve, stopped));
        Self {
            stop: Some(stop),
            task,
        }
    }

    /// Stops listening and ends every connection. When this returns the
    /// port is free and both ends of every accepted connection are closed.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Accepting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_until<F, Fut>(listener: TcpListener, mut serve: F, mut stop: oneshot::Receiver<()>)
where
    F: FnMut(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            conn = listener.accept() => {
                if let Ok((stream, _)) = conn {
                    connections.spawn(serve(stream));
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    // Aborting drops each connection's sockets; waiting makes `stop` exact.
    connections.shutdown().await;
}
