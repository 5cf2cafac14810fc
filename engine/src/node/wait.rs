//! Blocking waits on replies from a shard, with optional deadlines.

use futures_channel::oneshot;
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
    /// The shard dropped the reply (it stopped).
    Gone,
    /// The deadline passed; the receiver is still usable.
    TimedOut,
}

/// Blocks the calling thread until the reply arrives or `deadline` passes.
pub(crate) fn wait<T>(rx: &mut oneshot::Receiver<T>, deadline: Option<Instant>) -> Waited<T> {
    WAKER.with(|waker| {
        let mut cx = Context::from_waker(waker);
        loop {
            match Pin::new(&mut *rx).poll(&mut cx) {
                Poll::Ready(Ok(v)) => return Waited::Done(v),
                Poll::Ready(Err(_)) => return Waited::Gone,
                Poll::Pending => {}
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
