//! Thread-per-core: tasks that run on the node's own shards ([`Node::spawn_on`]).
//!
//! The `Send` handles ([`Stream`](crate::Stream), [`AsyncStream`]) live on any
//! thread and reach their stream's shard through its inbox: every operation that must
//! wait crosses threads twice. A task started with [`Node::spawn_on`] runs on the
//! shard itself, on its glommio executor, and its [`LocalStream`]s act on the link's
//! state directly: a read of bytes already there copies them and returns, a write
//! within the stream's credit hands them to the link and returns, and a task that
//! must wait is woken by the link's own events. No thread hop, no channel, no
//! allocation per call beyond the written bytes.
//!
//! **When to choose it:** a server or load generator that wants every core busy
//! moving bytes, written the way Seastar or glommio programs are (one task per
//! connection, no locks, non-`Send` state per shard). Stay with the `Send` handles
//! for threaded code, for code on tokio, and whenever a stream's work must happen
//! away from the node's shards (a blocking call inside a shard-local task stalls every
//! link of that shard).
//!
//! **Where the link lives:** a node pair has one link, on one shard. A stream whose
//! link lives on the task's shard is [`LocalStream::Here`]; one whose link lives on
//! another shard is [`LocalStream::Elsewhere`] and works through the `Send` path. To
//! get the first, place the task where the link is: [`Node::shard_of`] names the
//! shard holding the link towards a node.

use crate::{AsyncStream, Node};
use astranet_engine::{Addr, LocalDialed, NodeId};
use futures_channel::oneshot;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub use astranet_engine::LocalShard;

/// What a task started with [`Node::spawn_on`] gets: dial and bind from its shard.
/// Not `Send` (it stays on its shard). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Local {
    shard: LocalShard,
    dial_timeout: Duration,
}

impl Local {
    /// This shard's index.
    pub fn shard(&self) -> usize {
        self.shard.index()
    }

    /// The node's id.
    pub fn node_id(&self) -> NodeId {
        self.shard.node_id()
    }

    /// Dials `addr` (see the [address grammar](crate#address-grammar)) with the
    /// node's dial timeout. Cancel-safe.
    pub async fn dial(&self, addr: &str) -> io::Result<LocalStream> {
        self.dial_timeout(addr, self.dial_timeout).await
    }

    /// Dials `addr`, waiting up to `timeout` for the service to be known and for
    /// the peer to accept. Cancel-safe.
    pub async fn dial_timeout(&self, addr: &str, timeout: Duration) -> io::Result<LocalStream> {
        Ok(LocalStream::from(self.shard.dial(addr, timeout).await?))
    }

    /// Binds a port or service name (see [`Node::bind`]). Dropping the listener
    /// unbinds.
    pub async fn bind(&self, addr: &str) -> io::Result<LocalListener> {
        Ok(LocalListener {
            inner: self.shard.bind(addr).await?,
        })
    }
}

/// A listener bound from a shard-local task.
#[derive(Debug)]
pub struct LocalListener {
    inner: astranet_engine::LocalListener,
}

impl LocalListener {
    /// The next stream opened to this listener. Cancel-safe.
    pub async fn accept(&self) -> io::Result<LocalStream> {
        Ok(LocalStream::from(self.inner.accept().await?))
    }

    /// The bound address.
    pub fn local_addr(&self) -> Addr {
        self.inner.local_addr()
    }
}

/// A stream used from a shard-local task. Implements `futures_io::AsyncRead` and
/// `AsyncWrite`; `close` half-closes (FIN after the bytes written) and returns at
/// once. Dropping it closes the stream after queued data.
#[derive(Debug)]
pub enum LocalStream {
    /// Its link lives on this shard: no cross-thread hop.
    Here(astranet_engine::LocalStream),
    /// Its link lives on another shard: the `Send` handle.
    Elsewhere(AsyncStream),
}

impl From<LocalDialed> for LocalStream {
    fn from(d: LocalDialed) -> Self {
        match d {
            LocalDialed::Here(s) => LocalStream::Here(s),
            LocalDialed::Elsewhere(r) => LocalStream::Elsewhere(AsyncStream::new(r)),
        }
    }
}

impl LocalStream {
    /// Whether the stream's link lives on the task's shard.
    pub fn is_local(&self) -> bool {
        matches!(self, LocalStream::Here(_))
    }

    /// Our address.
    pub fn local_addr(&self) -> Addr {
        match self {
            LocalStream::Here(s) => s.local_addr(),
            LocalStream::Elsewhere(s) => s.local_addr(),
        }
    }

    /// The other end's address.
    pub fn peer_addr(&self) -> Addr {
        match self {
            LocalStream::Here(s) => s.peer_addr(),
            LocalStream::Elsewhere(s) => s.peer_addr(),
        }
    }
}

impl futures_io::AsyncRead for LocalStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            LocalStream::Here(s) => Pin::new(s).poll_read(cx, buf),
            LocalStream::Elsewhere(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl futures_io::AsyncWrite for LocalStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            LocalStream::Here(s) => Pin::new(s).poll_write(cx, buf),
            LocalStream::Elsewhere(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LocalStream::Here(s) => Pin::new(s).poll_flush(cx),
            LocalStream::Elsewhere(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LocalStream::Here(s) => Pin::new(s).poll_close(cx),
            LocalStream::Elsewhere(s) => Pin::new(s).poll_close(cx),
        }
    }
}

/// The output of a task started with [`Node::spawn_on`]: await it, or
/// [`join`](JoinHandle::join) from a thread. Dropping it detaches the task (it keeps
/// running).
#[derive(Debug)]
pub struct JoinHandle<T> {
    rx: oneshot::Receiver<T>,
}

fn task_lost() -> io::Error {
    io::Error::other("the task panicked, or the node shut down before it finished")
}

impl<T> JoinHandle<T> {
    /// Blocks the calling thread until the task finishes. Don't call it from a
    /// shard-local task (await the handle there).
    pub fn join(mut self) -> io::Result<T> {
        match astranet_engine::block_on_until(&mut self.rx, None) {
            Some(Ok(v)) => Ok(v),
            _ => Err(task_lost()),
        }
    }

    /// Like [`join`](JoinHandle::join), giving up after `timeout` (`TimedOut`).
    pub fn join_timeout(mut self, timeout: Duration) -> io::Result<T> {
        match astranet_engine::block_on_until(&mut self.rx, Some(Instant::now() + timeout)) {
            Some(Ok(v)) => Ok(v),
            Some(Err(_)) => Err(task_lost()),
            None => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "task still running",
            )),
        }
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = io::Result<T>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.map_err(|_| task_lost()))
    }
}

impl Node {
    /// How many shards (executor threads) the node runs.
    pub fn shards(&self) -> usize {
        self.inner.core.shards()
    }

    /// The shard holding the link that streams to `node` take now, if `node` is
    /// reachable: place a task there with [`Node::spawn_on`] and its streams to
    /// `node` are [`LocalStream::Here`].
    pub fn shard_of(&self, node: NodeId) -> Option<usize> {
        self.inner.core.shard_of(node)
    }

    /// Runs a task on shard `shard` (thread-per-core; see [`local`](crate::local)).
    /// `f` is sent to the shard and called there; the future it returns runs on the
    /// shard's executor and need not be `Send`. A panic in the task is caught (the
    /// shard survives) and reported by the [`JoinHandle`].
    ///
    /// ```
    /// use futures_util::{AsyncReadExt, AsyncWriteExt};
    /// let node = astranet::Node::builder().shards(1).build()?;
    /// let (bound, ready) = std::sync::mpsc::channel();
    /// let server = node.spawn_on(0, move |local| async move {
    ///     let l = local.bind("echo").await?;
    ///     let _ = bound.send(()); // dial only once the name is bound
    ///     let mut s = l.accept().await?;
    ///     let mut buf = Vec::new();
    ///     s.read_to_end(&mut buf).await?;
    ///     s.write_all(&buf).await?;
    ///     std::io::Result::Ok(s.is_local())
    /// })?;
    /// ready.recv().unwrap();
    /// let client = node.spawn_on(0, |local| async move {
    ///     let mut s = local.dial("echo").await?;
    ///     s.write_all(b"hi").await?;
    ///     s.close().await?;
    ///     let mut back = Vec::new();
    ///     s.read_to_end(&mut back).await?;
    ///     std::io::Result::Ok(back)
    /// })?;
    /// assert_eq!(client.join()??, b"hi");
    /// assert!(server.join()??);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn spawn_on<F, Fut, T>(&self, shard: usize, f: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce(Local) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let dial_timeout = self.inner.dial_timeout;
        let rx = self.inner.core.spawn_on(shard, move |shard| {
            f(Local {
                shard,
                dial_timeout,
            })
        })?;
        Ok(JoinHandle { rx })
    }
}
