//! Blocking waits on futures (shard replies, listener queues, watches), with optional
//! deadlines: the thread parks until its waker is called or the deadline passes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::Instant;

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

thread_local! {
    static WAKER: Waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
}

/// Outcome of a blocking wait.
pub(crate) enum Waited<T> {
    Done(T),
    /// The deadline passed; the future is still usable.
    TimedOut,
}

/// Blocks the calling thread until `fut` completes or `deadline` passes.
pub(crate) fn wait<F: Future + Unpin>(fut: &mut F, deadline: Option<Instant>) -> Waited<F::Output> {
    WAKER.with(|waker| {
        let mut cx = Context::from_waker(waker);
        loop {
            if let Poll::Ready(v) = Pin::new(&mut *fut).poll(&mut cx) {
                return Waited::Done(v);
            }
            match deadline {
                None => std::thread::park(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Waited::TimedOut;
                    }
                    std::thread::park_timeout(d - now);
                }
            }
        }
    })
}
