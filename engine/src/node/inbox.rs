//! A shard's inbox: any thread pushes commands, the shard drains them in batches.
//!
//! A lock-free queue plus an "idle" flag and one stored waker: a producer wakes the
//! shard only when it went to sleep on an empty queue, so a busy shard takes commands
//! with no wake-ups at all (see `shared/notes/engine-facts.md`: ~50 ns per item).

use crossbeam::queue::SegQueue;
use futures_util::task::AtomicWaker;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

pub(crate) struct Inbox<T> {
    queue: SegQueue<T>,
    waker: AtomicWaker,
    idle: AtomicBool,
    /// The shard stopped: nothing pushed from now on will be looked at.
    closed: AtomicBool,
}

impl<T> Inbox<T> {
    pub(crate) fn new() -> Self {
        Self {
            queue: SegQueue::new(),
            waker: AtomicWaker::new(),
            idle: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        }
    }

    /// The shard stops taking commands. A producer that pushes and then sees
    /// [`Inbox::is_closed`] knows its command may never be handled; the shard closes
    /// first and drains last, so every command is either drained or seen as too late.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Commands queued now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Takes whatever is queued (after [`Inbox::close`]).
    pub(crate) fn drain_all(&self) -> Vec<T> {
        let mut out = Vec::new();
        while let Some(c) = self.queue.pop() {
            out.push(c);
        }
        out
    }

    /// Queues a command and wakes the shard if it sleeps.
    pub(crate) fn push(&self, item: T) {
        self.queue.push(item);
        if self.idle.swap(false, Ordering::SeqCst) {
            self.waker.wake();
        }
    }

    /// Waits until at least one command is queued, then moves up to `max` into `out`.
    pub(crate) async fn next_batch(&self, out: &mut Vec<T>, max: usize) {
        poll_fn(|cx| {
            self.try_batch(out, max);
            if !out.is_empty() {
                return Poll::Ready(());
            }
            // Register first, then announce sleep, then look again: a push racing
            // with us either sees `idle` and wakes us, or is seen by the second look.
            self.waker.register(cx.waker());
            self.idle.store(true, Ordering::SeqCst);
            self.try_batch(out, max);
            if out.is_empty() {
                Poll::Pending
            } else {
                self.idle.store(false, Ordering::SeqCst);
                Poll::Ready(())
            }
        })
        .await
    }

    /// Moves up to `max` queued items into `out` without waiting (the consumer's task
    /// may also be woken for them; it then finds fewer or none).
    pub(crate) fn try_batch(&self, out: &mut Vec<T>, max: usize) {
        while out.len() < max {
            match self.queue.pop() {
                Some(c) => out.push(c),
                None => break,
            }
        }
    }
}
