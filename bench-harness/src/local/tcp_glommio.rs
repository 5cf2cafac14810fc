//! `tcp-glommio`: plain TCP (a connection per stream, Nagle off) with client and server
//! tasks on glommio executors, one thread per core, set up as astranet's shards are
//! (unpinned, 256 KiB of io_uring buffer memory). With `--shards k`, k client and k
//! server executors; the server executors share one port (SO_REUSEPORT, the kernel
//! spreads connections over them).

use super::{run_jobs, Job, LocalAcceptor, LocalBox, LocalDialer, LocalSys, Runners};
use futures::future::LocalBoxFuture;
use glommio::net::{TcpListener, TcpStream};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

/// How long one task queue runs before the executor looks at its io_uring completions
/// again. glommio's default (100 ms) lets a stream that always has data (hol's bulk)
/// hold every other stream of its executor for up to 100 ms (hol p99 ≈ 107 ms); a
/// latency-minded glommio user lowers it.
const PREEMPT: Duration = Duration::from_millis(1);

struct Dialer(SocketAddr);

impl LocalDialer for Dialer {
    fn open(&self) -> LocalBoxFuture<'static, io::Result<LocalBox>> {
        let addr = self.0;
        Box::pin(async move {
            let s = TcpStream::connect(addr).await.map_err(io::Error::from)?;
            s.set_nodelay(true).map_err(io::Error::from)?;
            Ok(Box::new(s) as LocalBox)
        })
    }
}

struct Acceptor(TcpListener);

impl LocalAcceptor for Acceptor {
    fn accept(&self) -> LocalBoxFuture<'_, io::Result<LocalBox>> {
        Box::pin(async move {
            let s = self.0.accept().await.map_err(io::Error::from)?;
            s.set_nodelay(true).map_err(io::Error::from)?;
            Ok(Box::new(s) as LocalBox)
        })
    }
}

/// The executors: jobs reach each through its channel; closing the channels ends
/// them (and drops every task still running there).
pub struct TcpGlommio {
    runners: Runners,
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
}

/// Starts an executor whose `setup` makes its context (a dialer or an acceptor) and
/// reports a value back before jobs run.
fn start<X, R, F>(
    name: String,
    setup: F,
) -> io::Result<(UnboundedSender<Job<X>>, R, glommio::ExecutorJoinHandle<()>)>
where
    X: Clone + 'static,
    R: Send + 'static,
    F: FnOnce() -> io::Result<(X, R)> + Send + 'static,
{
    let (tx, rx) = unbounded_channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name(&name)
        .io_memory(256 << 10)
        .preempt_timer(PREEMPT)
        .spawn(move || async move {
            match setup() {
                Ok((ctx, r)) => {
                    let _ = ready_tx.send(Ok(r));
                    run_jobs(ctx, rx).await;
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .map_err(|e| io::Error::other(format!("starting executor {name}: {e}")))?;
    let r = ready_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| io::Error::other(format!("executor {name} did not start")))??;
    Ok((tx, r, h))
}

impl TcpGlommio {
    /// `sides` client and `sides` server executors; the servers listen on loopback.
    pub fn new(sides: usize) -> io::Result<Self> {
        let mut me = TcpGlommio {
            runners: Runners::default(),
            threads: Vec::new(),
        };
        let mut addr: SocketAddr = "127.0.0.1:0".parse().expect("loopback address");
        for i in 0..sides.max(1) {
            let (tx, bound, h) = start(format!("tcp-glommio-s{i}"), move || {
                let l = TcpListener::bind(addr).map_err(io::Error::from)?;
                let bound = l.local_addr().map_err(io::Error::from)?;
                Ok((Rc::new(Acceptor(l)) as Rc<dyn LocalAcceptor>, bound))
            })?;
            addr = bound;
            me.runners.servers.push(tx);
            me.threads.push(h);
        }
        for i in 0..sides.max(1) {
            let (tx, (), h) = start(format!("tcp-glommio-c{i}"), move || {
                Ok((Rc::new(Dialer(addr)) as Rc<dyn LocalDialer>, ()))
            })?;
            me.runners.clients.push(tx);
            me.threads.push(h);
        }
        Ok(me)
    }
}

impl LocalSys for TcpGlommio {
    fn sides(&self) -> usize {
        self.runners.sides()
    }

    fn client(&self, i: usize, job: Job<Rc<dyn LocalDialer>>) {
        self.runners.client(i, job)
    }

    fn server(&self, i: usize, job: Job<Rc<dyn LocalAcceptor>>) {
        self.runners.server(i, job)
    }
}

impl Drop for TcpGlommio {
    fn drop(&mut self) {
        self.runners.close();
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}
