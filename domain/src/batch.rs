//! Batches that form without waiting: requests that arrive while others are
//! being served are served together, in the next batch. Group commit
//! (`group`) and the coalesced wallet reads (`ledger::reads`) are both this.
//!
//! A request queues its item and, when fewer than `batches` batches are
//! running, starts a leader that takes what is queued (up to `max_size`
//! items, in the order they came) — so a lone
//! request goes at once, and under load the requests that arrived during one
//! batch make up the next. The leader runs as a task of its own: a client
//! that hangs up cannot cancel the others' work. A request still queued after
//! the wait budget (every batch busy) is taken back and shed with 503
//! `overloaded`; one already taken waits for its batch whatever it takes.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::error::{DomainError, DomainResult};

/// The queue and the running batches of one process.
pub struct Batcher<T> {
    queue: Mutex<VecDeque<(u64, T)>>,
    slots: Arc<Semaphore>,
    max_size: usize,
    wait_budget: Duration,
    next_id: AtomicU64,
}

impl<T> std::fmt::Debug for Batcher<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("max_size", &self.max_size)
            .field("free_batches", &self.slots.available_permits())
            .finish()
    }
}

/// Where a queued request's answer comes from (see [`Batcher::answer`]).
pub struct Ticket<R> {
    id: u64,
    answer: oneshot::Receiver<DomainResult<R>>,
}

impl<T: Send + 'static> Batcher<T> {
    pub fn new(batches: usize, max_size: usize, wait_budget: Duration) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            slots: Arc::new(Semaphore::new(batches.max(1))),
            max_size: max_size.max(1),
            wait_budget,
            next_id: AtomicU64::new(0),
        }
    }

    /// Queues the item made with the answer's sender. When a batch slot is
    /// free, starts a leader that serves batches with what `server` makes
    /// (made only then: most requests under load start none).
    pub fn push<R, S, F>(
        self: &Arc<Self>,
        item: impl FnOnce(oneshot::Sender<DomainResult<R>>) -> T,
        server: impl FnOnce() -> S,
    ) -> Ticket<R>
    where
        S: FnMut(Vec<T>) -> F + Send + 'static,
        F: Future<Output = ()> + Send,
    {
        let (reply, answer) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock_queue().push_back((id, item(reply)));
        if let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() {
            let (batcher, serve) = (Arc::clone(self), server());
            tokio::spawn(async move { batcher.lead(slot, serve).await });
        }
        Ticket { id, answer }
    }

    /// The answer of a queued request: shed with `Overloaded` when no batch
    /// took it within the wait budget.
    pub async fn answer<R>(&self, ticket: Ticket<R>) -> DomainResult<R> {
        let Ticket { id, mut answer } = ticket;
        let ended = |_| Err(DomainError::unexpected("a batch ended without an answer"));
        match tokio::time::timeout(self.wait_budget, &mut answer).await {
            Ok(outcome) => outcome.unwrap_or_else(ended),
            Err(_) if self.take_back(id) => Err(DomainError::Overloaded),
            Err(_) => answer.await.unwrap_or_else(ended),
        }
    }

    /// Removes an item that no batch has taken yet; false when one has.
    fn take_back(&self, id: u64) -> bool {
        let mut queue = self.lock_queue();
        match queue.iter().position(|(queued, _)| *queued == id) {
            Some(at) => queue.remove(at).is_some(),
            None => false,
        }
    }

    fn lock_queue(&self) -> MutexGuard<'_, VecDeque<(u64, T)>> {
        // The queue is only pushed to and drained; a panic elsewhere cannot
        // leave it half-changed, so a poisoned lock is still usable.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next batch: up to `max_size` items, in the order they came.
    fn take(&self) -> Vec<T> {
        let mut queue = self.lock_queue();
        let size = queue.len().min(self.max_size);
        queue.drain(..size).map(|(_, item)| item).collect()
    }

    /// Serves batches until the queue is empty. The slot is given back before
    /// the last look at the queue: an item queued while every slot was taken
    /// is then either seen here or finds a free slot itself.
    async fn lead<S, F>(self: Arc<Self>, mut slot: OwnedSemaphorePermit, mut serve: S)
    where
        S: FnMut(Vec<T>) -> F,
        F: Future<Output = ()>,
    {
        loop {
            let batch = self.take();
            if !batch.is_empty() {
                serve(batch).await;
            }
            drop(slot);
            if self.lock_queue().is_empty() {
                return;
            }
            match Arc::clone(&self.slots).try_acquire_owned() {
                Ok(next) => slot = next,
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Item = (u32, oneshot::Sender<DomainResult<usize>>);

    fn batcher(batches: usize, max_size: usize) -> Arc<Batcher<Item>> {
        Arc::new(Batcher::new(batches, max_size, Duration::from_secs(5)))
    }

    /// Answers each item of a batch with the batch's size, after noting it.
    fn serve(
        seen: Arc<Mutex<Vec<Vec<u32>>>>,
        gate: Arc<tokio::sync::Notify>,
    ) -> impl FnMut(Vec<Item>) -> futures::future::BoxFuture<'static, ()> + Send + 'static {
        move |batch: Vec<Item>| {
            let (seen, gate) = (Arc::clone(&seen), Arc::clone(&gate));
            Box::pin(async move {
                seen.lock()
                    .unwrap()
                    .push(batch.iter().map(|i| i.0).collect());
                gate.notified().await;
                let size = batch.len();
                for (_, reply) in batch {
                    let _ = reply.send(Ok(size));
                }
            })
        }
    }

    /// A lone request goes at once; those queued while it runs make up the
    /// next batch, up to the maximum size, in arrival order; nothing is left
    /// unanswered.
    #[tokio::test]
    async fn batches_form_from_what_arrived_meanwhile() {
        let b = batcher(1, 3);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Notify::new());
        let first = b.push(|r| (0, r), || serve(Arc::clone(&seen), Arc::clone(&gate)));
        tokio::task::yield_now().await;
        let rest: Vec<_> = (1..=5)
            .map(|n| {
                b.push(
                    move |r| (n, r),
                    || serve(Arc::clone(&seen), Arc::clone(&gate)),
                )
            })
            .collect();
        let answers = tokio::spawn({
            let b = Arc::clone(&b);
            async move {
                let mut sizes = vec![b.answer(first).await.unwrap()];
                for t in rest {
                    sizes.push(b.answer(t).await.unwrap());
                }
                sizes
            }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
            gate.notify_one();
        }
        let sizes = answers.await.unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![vec![0], vec![1, 2, 3], vec![4, 5]]
        );
        assert_eq!(sizes, vec![1, 3, 3, 3, 2, 2]);
    }

    /// An item no batch took within the budget is taken back and shed.
    #[tokio::test]
    async fn a_request_still_queued_after_the_budget_is_shed() {
        let b = Arc::new(Batcher::new(1, 1, Duration::from_millis(50)));
        let never = Arc::new(tokio::sync::Notify::new());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let busy = b.push(|r| (0, r), || serve(Arc::clone(&seen), Arc::clone(&never)));
        tokio::task::yield_now().await;
        let queued = b.push(|r| (1, r), || serve(Arc::clone(&seen), Arc::clone(&never)));
        assert!(matches!(
            b.answer(queued).await,
            Err(DomainError::Overloaded)
        ));
        assert!(b.lock_queue().is_empty());
        drop(busy);
    }
}
