//! Thread-per-core systems: the scenarios run as tasks on the system's own executors
//! (one thread per core), with streams that never leave the thread that made them
//! (`!Send`), so no byte crosses a thread the system did not choose.
//!
//! `tcp-glommio` ([`tcp_glommio`]) is plain TCP this way: the ceiling of the runtime
//! astranet's shards run on. `astranet-local` ([`astranet_local`]) is astranet's
//! shard-local API: its client executors are the client node's shards and its server
//! executors the server node's, jobs run through `Node::spawn_on`, and its dialer and
//! acceptor are `astranet::local`'s stream and listener.

pub mod astranet_local;
pub mod scenarios;
pub mod tcp_glommio;

use futures::future::LocalBoxFuture;
use futures::{AsyncRead, AsyncWrite};
use std::io;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A byte stream that lives on one executor.
pub trait LocalConn: AsyncRead + AsyncWrite + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + 'static> LocalConn for T {}

pub type LocalBox = Box<dyn LocalConn>;

/// Opens streams from one client executor.
pub trait LocalDialer {
    fn open(&self) -> LocalBoxFuture<'static, io::Result<LocalBox>>;
}

/// Accepts streams on one server executor; any number of tasks may accept at once.
pub trait LocalAcceptor {
    fn accept(&self) -> LocalBoxFuture<'_, io::Result<LocalBox>>;
}

/// Work handed to one executor: it gets that executor's dialer (or acceptor) and
/// returns the task to run there. Results go back through channels the job captured.
pub type Job<X> = Box<dyn FnOnce(X) -> LocalBoxFuture<'static, ()> + Send>;

/// A thread-per-core system: `sides()` client executors and as many server
/// executors, linked the way the system links a client and a server (for
/// `tcp-glommio`, a connection per stream; for a multiplexer, one link). Dropping it
/// stops its executors and everything running on them.
pub trait LocalSys: Send {
    /// Executors per side.
    fn sides(&self) -> usize;
    /// Runs `job` on client executor `i` (`i < sides()`).
    fn client(&self, i: usize, job: Job<Rc<dyn LocalDialer>>);
    /// Runs `job` on server executor `i` (`i < sides()`).
    fn server(&self, i: usize, job: Job<Rc<dyn LocalAcceptor>>);
}

/// The job channels of a system's executors, one per executor and side; dropping
/// them ends the executors' job runners ([`run_jobs`]).
#[derive(Default)]
pub struct Runners {
    pub clients: Vec<tokio::sync::mpsc::UnboundedSender<Job<Rc<dyn LocalDialer>>>>,
    pub servers: Vec<tokio::sync::mpsc::UnboundedSender<Job<Rc<dyn LocalAcceptor>>>>,
}

impl Runners {
    pub fn sides(&self) -> usize {
        self.clients.len()
    }

    pub fn client(&self, i: usize, job: Job<Rc<dyn LocalDialer>>) {
        let _ = self.clients[i].send(job);
    }

    pub fn server(&self, i: usize, job: Job<Rc<dyn LocalAcceptor>>) {
        let _ = self.servers[i].send(job);
    }

    pub fn close(&mut self) {
        self.clients.clear();
        self.servers.clear();
    }
}

/// Runs jobs as they arrive, each as its own task on the current executor, until
/// the channel closes.
pub async fn run_jobs<X: Clone + 'static>(
    ctx: X,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Job<X>>,
) {
    while let Some(job) = rx.recv().await {
        glommio::spawn_local(job(ctx.clone())).detach();
    }
}

/// Results of jobs on several executors, collected on the calling (non-executor)
/// thread with a deadline, so a stuck system fails the run instead of hanging it.
pub struct Results<T> {
    rx: mpsc::Receiver<io::Result<T>>,
    tx: mpsc::Sender<io::Result<T>>,
    deadline: Instant,
}

impl<T: Send + 'static> Results<T> {
    pub fn new(limit: Duration) -> Self {
        let (tx, rx) = mpsc::channel();
        Results {
            rx,
            tx,
            deadline: Instant::now() + limit,
        }
    }

    /// Where a job sends its result.
    pub fn sender(&self) -> mpsc::Sender<io::Result<T>> {
        self.tx.clone()
    }

    /// The same results with the deadline moved to `limit` from now.
    pub fn within(self, limit: Duration) -> Self {
        Results {
            deadline: Instant::now() + limit,
            ..self
        }
    }

    /// The next result, or an error at the deadline.
    pub fn next(&self) -> io::Result<T> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "a thread-per-core job did not report in time",
            )),
        }
    }

    /// The next `n` results; the first error ends the wait.
    pub fn take(&self, n: usize) -> io::Result<Vec<T>> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// Splits `total` into `parts` shares that differ by at most one.
pub fn share(total: u64, parts: usize, i: usize) -> u64 {
    let parts = parts.max(1) as u64;
    total / parts + u64::from((i as u64) < total % parts)
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn shares_add_up_and_differ_by_at_most_one() {
        for (total, parts) in [(0, 1), (1, 2), (7, 3), (200_000, 2), (5, 8)] {
            let s: Vec<u64> = (0..parts).map(|i| share(total, parts, i)).collect();
            assert_eq!(s.iter().sum::<u64>(), total, "{total} over {parts}");
            let (lo, hi) = (s.iter().min().unwrap(), s.iter().max().unwrap());
            assert!(hi - lo <= 1, "{s:?}");
        }
    }
}
