//! A request's place among those in flight, given back while it waits
//! without a database connection.
//!
//! The API counts the requests it works on at once and refuses one more
//! (`api::admission`): past the pool, more in flight would only queue for a
//! connection. A money write queued for group commit holds no connection
//! while it waits — its group's leader holds the one connection of the whole
//! group — and its wait is bounded by the group queue itself (the wait
//! budget, then 503 `overloaded`). So it gives its place back while queued
//! (`uncounted`) and takes it again when its answer comes: writes piling up
//! on one hot wallet fill big groups instead of being refused at the door.

use std::future::Future;
use std::sync::Arc;

/// Where a request's place is counted (the API's admission control).
pub trait Place: Send + Sync {
    /// The request stops counting: it waits without a connection.
    fn leave(&self);
    /// It counts again: it was let in before, so it is never refused here.
    fn rejoin(&self);
}

tokio::task_local! {
    static PLACE: Arc<dyn Place>;
}

/// Runs a counted request: `uncounted` waits within it give `place` back.
pub async fn counted<F: Future>(place: Arc<dyn Place>, request: F) -> F::Output {
    PLACE.scope(place, request).await
}

/// Awaits `wait` with the current request's place given back (if it has
/// one), taken again when the wait ends or is dropped.
pub async fn uncounted<F: Future>(wait: F) -> F::Output {
    let _back = PLACE.try_with(Arc::clone).ok().map(|place| {
        place.leave();
        Rejoin(place)
    });
    wait.await
}

struct Rejoin(Arc<dyn Place>);

impl Drop for Rejoin {
    fn drop(&mut self) {
        self.0.rejoin();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering::SeqCst};

    #[derive(Default)]
    struct Count(AtomicI64);

    impl Place for Count {
        fn leave(&self) {
            self.0.fetch_sub(1, SeqCst);
        }
        fn rejoin(&self) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    #[tokio::test]
    async fn a_wait_gives_the_place_back_until_it_ends_or_is_dropped() {
        let count = Arc::new(Count(AtomicI64::new(1)));
        let place: Arc<dyn Place> = count.clone();
        let seen = counted(place, async {
            let during = uncounted(async { count.0.load(SeqCst) }).await;
            // dropped while it waits (a client that hung up): back as well
            let (_tx, rx) = tokio::sync::oneshot::channel::<()>();
            let wait = tokio::time::timeout(std::time::Duration::from_millis(5), uncounted(rx));
            assert!(wait.await.is_err(), "the wait ended");
            (during, count.0.load(SeqCst))
        })
        .await;
        assert_eq!(seen, (0, 1));
        // outside a counted request a wait changes nothing
        uncounted(async {}).await;
        assert_eq!(count.0.load(SeqCst), 1);
    }
}
