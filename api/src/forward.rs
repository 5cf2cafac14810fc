//! TCP in and out of the mesh.
//!
//! - [`forward`]: a local TCP port whose connections are each carried to a mesh service
//!   (`astranet forward 127.0.0.1:5432 db`);
//! - [`expose`]: a mesh service whose streams are each carried to a TCP server
//!   (`astranet expose db 127.0.0.1:5432`);
//! - [`splice`]: the two-way copy both use, for one TCP connection and one stream.
//!
//! Both ends behave like a TCP proxy: a half-close is carried across (a TCP FIN
//! half-closes the stream and the end of a stream sends a FIN), and so are failures (a
//! failed dial resets the TCP connection, a refused TCP connect resets the stream, and
//! an error on either side of a spliced pair resets the other). Each connection is one
//! tokio task; at most [`ForwardConfig::max_connections`] run at once.
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use astranet::forward::{expose, forward, ForwardConfig};
//! let node = astranet::Node::builder().build()?;
//! node.join("10.0.0.2:7000")?;
//! let cfg = ForwardConfig::default();
//! // On the database's machine: publish it as the service `db`.
//! let service = node.bind_async("db")?;
//! let forever = std::future::pending::<()>();
//! tokio::spawn(expose(service, "127.0.0.1:5432".into(), cfg.clone(), forever));
//! // Elsewhere: local port 15432 reaches `db` wherever it runs.
//! let local = tokio::net::TcpListener::bind("127.0.0.1:15432").await?;
//! let (_stop, stopped) = tokio::sync::oneshot::channel::<()>(); // send to stop
//! forward(node, local, "db".into(), cfg, stopped).await
//! # }
//! ```

use crate::{AsyncListener, AsyncStream, Node, TokioStream};
use astranet_engine::Target;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

type ErrorHook = Arc<dyn Fn(&io::Error) + Send + Sync>;

/// Settings for [`forward`] and [`expose`].
#[derive(Clone)]
pub struct ForwardConfig {
    max_connections: usize,
    drain_timeout: Duration,
    connect_timeout: Duration,
    on_error: Option<ErrorHook>,
}

impl std::fmt::Debug for ForwardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardConfig")
            .field("max_connections", &self.max_connections)
            .field("drain_timeout", &self.drain_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            drain_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            on_error: None,
        }
    }
}

impl ForwardConfig {
    /// Most connections carried at once (default 1,024). Beyond it, new connections
    /// wait: [`forward`] stops accepting, so they queue in the kernel's TCP backlog;
    /// [`expose`] stops accepting streams, so they queue in the listener's backlog,
    /// and once that is full the mesh refuses them (`ConnectionRefused` at the dialer).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// After the shutdown signal, how long connections in progress may run on before
    /// they are cut (default 5 s).
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = d;
        self
    }

    /// How long [`expose`] waits for the TCP server to accept (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Called with each connection's failure (a dial or connect that failed, a reset);
    /// by default failures are dropped silently.
    pub fn on_error(mut self, f: impl Fn(&io::Error) + Send + Sync + 'static) -> Self {
        self.on_error = Some(Arc::new(f));
        self
    }

    fn check(&self) -> io::Result<()> {
        if self.max_connections == 0 || self.max_connections > Semaphore::MAX_PERMITS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "max_connections must be at least 1",
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "connect_timeout must be above zero",
            ));
        }
        Ok(())
    }

    fn report(&self, e: &io::Error) {
        if let Some(f) = &self.on_error {
            f(e);
        }
    }
}

/// Carries each connection accepted on `listener` to the mesh address `target` (a
/// service name, `name:port` or `<node id>:port`), until `shutdown` completes or the
/// node shuts down. Then it stops accepting, lets the connections in progress finish
/// for up to the drain timeout, cuts the rest and returns.
///
/// A dial that fails resets the TCP connection. A `target` that is not a valid mesh
/// address is an `InvalidInput` error at once. Needs a tokio runtime (it spawns a task
/// per connection). Cancel-safety: dropping the future stops accepting and cuts the
/// connections in progress.
pub async fn forward(
    node: Node,
    listener: TcpListener,
    target: String,
    cfg: ForwardConfig,
    shutdown: impl Future,
) -> io::Result<()> {
    cfg.check()?;
    Target::parse(&target).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let target: Arc<str> = target.into();
    let sem = Arc::new(Semaphore::new(cfg.max_connections));
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let Some(permit) = slot(&mut tasks, &sem, shutdown.as_mut()).await else {
            break;
        };
        let tcp = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of descriptors and the like: say so, back off, carry on.
                    cfg.report(&e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (node, target, cfg2) = (node.clone(), target.clone(), cfg.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            match node.dial_async(&target).await {
                Ok(s) => {
                    if let Err(e) = splice(tcp, s).await {
                        cfg2.report(&e);
                    }
                }
                Err(e) => {
                    reset_tcp(tcp);
                    cfg2.report(&io::Error::new(e.kind(), format!("dial {target}: {e}")));
                }
            }
        });
    }
    drop(listener);
    drain(tasks, cfg.drain_timeout).await;
    Ok(())
}

/// Carries each stream accepted on `listener` to the TCP server at `tcp_addr`, until
/// `shutdown` completes, then drains like [`forward`]. Returns
/// `Err(ConnectionAborted)` if the node shuts down first.
///
/// A TCP connect that fails (or takes longer than the connect timeout) resets the
/// stream, so its dialer reads `ConnectionReset`. Needs a tokio runtime.
/// Cancel-safety: dropping the future unbinds and cuts the connections in progress.
pub async fn expose(
    listener: AsyncListener,
    tcp_addr: String,
    cfg: ForwardConfig,
    shutdown: impl Future,
) -> io::Result<()> {
    cfg.check()?;
    let tcp_addr: Arc<str> = tcp_addr.into();
    let sem = Arc::new(Semaphore::new(cfg.max_connections));
    let mut tasks = JoinSet::new();
    let mut result = Ok(());
    tokio::pin!(shutdown);
    loop {
        let Some(permit) = slot(&mut tasks, &sem, shutdown.as_mut()).await else {
            break;
        };
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            },
        };
        let (addr, cfg2) = (tcp_addr.clone(), cfg.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let tcp = tokio::time::timeout(cfg2.connect_timeout, TcpStream::connect(&*addr)).await;
            match tcp {
                Ok(Ok(tcp)) => {
                    let _ = tcp.set_nodelay(true);
                    if let Err(e) = splice(tcp, stream).await {
                        cfg2.report(&e);
                    }
                }
                Ok(Err(e)) => {
                    stream.reset();
                    cfg2.report(&io::Error::new(e.kind(), format!("connect {addr}: {e}")));
                }
                Err(_) => {
                    stream.reset();
                    cfg2.report(&io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connect {addr}: timed out"),
                    ));
                }
            }
        });
    }
    drop(listener);
    drain(tasks, cfg.drain_timeout).await;
    result
}

/// Reaps finished tasks, then waits for a free connection slot; `None` once
/// `shutdown` completes first.
async fn slot<F: Future>(
    tasks: &mut JoinSet<()>,
    sem: &Arc<Semaphore>,
    shutdown: std::pin::Pin<&mut F>,
) -> Option<OwnedSemaphorePermit> {
    while tasks.try_join_next().is_some() {}
    tokio::select! {
        _ = shutdown => None,
        p = sem.clone().acquire_owned() => Some(p.expect("the semaphore is never closed")),
    }
}

/// Waits for the tasks to end, up to `limit`; the rest are aborted.
async fn drain(mut tasks: JoinSet<()>, limit: Duration) {
    let _ = tokio::time::timeout(limit, async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();
}

/// Closes a TCP connection with a reset (RST) rather than a FIN, so its peer sees the
/// failure.
fn reset_tcp(tcp: TcpStream) {
    let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
    drop(tcp);
}

/// Copies both ways between a TCP connection and a stream until both directions have
/// ended. The end of one side's data half-closes the other side (TCP FIN ↔ stream
/// half-close), so request/response protocols that half-close work. If either side
/// fails, both are reset (TCP RST, stream RESET) and the error is returned.
///
/// Cancel-safety: dropping the future closes both (gracefully).
pub async fn splice(tcp: TcpStream, stream: AsyncStream) -> io::Result<()> {
    let (mut tr, mut tw) = tcp.into_split();
    let (mut sr, mut sw) = tokio::io::split(TokioStream::new(stream));
    let r = {
        let up = async {
            tokio::io::copy(&mut tr, &mut sw).await?;
            sw.shutdown().await
        };
        let down = async {
            tokio::io::copy(&mut sr, &mut tw).await?;
            tw.shutdown().await
        };
        tokio::try_join!(up, down)
    };
    match r {
        Ok(_) => Ok(()),
        Err(e) => {
            sr.unsplit(sw).into_inner().reset();
            if let Ok(tcp) = tr.reunite(tw) {
                reset_tcp(tcp);
            }
            Err(e)
        }
    }
}
