//! The shard-local API: user tasks that run on a node's own shard and touch its
//! streams with no cross-thread hop (README "Thread-per-core for users who want it").
//!
//! A [`LocalShard`] is what a task started with `NodeCore::spawn_on` gets. Streams
//! whose link lives on that shard become [`LocalStream`]s: a read takes bytes straight
//! from the link's core, a write hands bytes straight to it, and a task that must
//! wait registers its waker with the shard, which wakes it from the link's events
//! (`Readable`, `Writable`, `Reset`, link loss). Nothing crosses a thread, nothing is
//! allocated per call beyond the payload copy of a write.
//!
//! A stream whose link lives on another shard is handed back as the `Send`
//! [`StreamRef`]: it works, through that shard's inbox like any other handle. Place
//! the task where the link is (`NodeCore::shard_of`) to avoid that.

use super::super::errors::stream_error;
use super::super::handle::ListenerRef;
use super::super::{Cmd, Incoming, StreamKey, StreamRef};
use super::{streams, Shard, State};
use crate::node::control::Msg;
use crate::node::dial::DialWait;
use crate::proto::{ErrorCode, Recv};
use crate::types::{Addr, BindSpec, NodeId, Target};
use bytes::{Bytes, BytesMut};
use futures_channel::oneshot;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Tasks waiting on streams of this shard (one waker per stream and direction).
#[derive(Default)]
pub(crate) struct LocalWaiters {
    readers: hashbrown::HashMap<StreamKey, Waker>,
    writers: hashbrown::HashMap<StreamKey, Waker>,
}

impl LocalWaiters {
    pub(super) fn readable(&mut self, key: StreamKey) {
        if let Some(w) = self.readers.remove(&key) {
            w.wake();
        }
    }

    pub(super) fn writable(&mut self, key: StreamKey) {
        if let Some(w) = self.writers.remove(&key) {
            w.wake();
        }
    }

    /// The stream was reset or its link died: whoever waits finds out.
    pub(super) fn all(&mut self, key: StreamKey) {
        self.readable(key);
        self.writable(key);
    }

    pub(super) fn link_lost(&mut self, link: super::LinkId) {
        for (_, w) in self.readers.extract_if(|k, _| k.link == link) {
            w.wake();
        }
        for (_, w) in self.writers.extract_if(|k, _| k.link == link) {
            w.wake();
        }
    }
}

/// A node's shard, as seen by a task running on it (`NodeCore::spawn_on`). Not
/// `Send`: it and the streams it makes stay on this shard's thread.
#[derive(Clone)]
pub struct LocalShard {
    shard: Rc<Shard>,
}

/// A dial from a shard-local task: local if the stream's link lives on this shard.
#[derive(Debug)]
pub enum LocalDialed {
    /// The stream's link lives on this shard.
    Here(LocalStream),
    /// The stream's link lives on another shard: a `Send` handle.
    Elsewhere(StreamRef),
}

impl std::fmt::Debug for LocalShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalShard")
            .field("node", &self.shard.node.id)
            .field("shard", &self.shard.idx)
            .finish()
    }
}

impl LocalShard {
    pub(crate) fn new(shard: Rc<Shard>) -> Self {
        Self { shard }
    }

    /// This shard's index (0 to the node's shard count − 1).
    pub fn index(&self) -> usize {
        self.shard.idx as usize
    }

    /// The node's id.
    pub fn node_id(&self) -> NodeId {
        self.shard.node.id
    }

    /// Dials `target` (the same grammar as `NodeCore::dial`). A service not known yet
    /// is waited for until `timeout`; so is the peer's answer. A route through a link
    /// of this shard opens the stream right here, with no cross-thread hop.
    ///
    /// Cancel-safe: dropping the future before it finishes closes the stream if it
    /// was opened meanwhile.
    pub async fn dial(&self, target: &str, timeout: Duration) -> io::Result<LocalDialed> {
        let node = &self.shard.node;
        if node.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(crate::node::node_gone());
        }
        let t = Target::parse(target)?;
        let src_port = node.ephemeral_port();
        let deadline = std::time::Instant::now() + timeout;
        let (reply, rx) = oneshot::channel();
        let view = node.view.load();
        match node.resolve(&view, &t, src_port, None)? {
            Some(req) if req.shard == self.shard.idx => {
                let mut st = self.shard.st.borrow_mut();
                self.shard.dial(&mut st, req, reply);
                drop(st);
                self.shard.flush();
            }
            Some(req) => node.push(req.shard, Cmd::Dial { req, reply }),
            None => {
                let Target::Service { name, port } = t else {
                    unreachable!("only services resolve to nothing")
                };
                node.control(Msg::Dial(DialWait {
                    name,
                    port,
                    key: None,
                    src_port,
                    deadline,
                    reply,
                }));
            }
        }
        drop(view);
        let timer = async {
            glommio::timer::sleep(timeout).await;
            Err(io::Error::new(io::ErrorKind::TimedOut, "dial timed out"))
        };
        let answer = async {
            match rx.await {
                Ok(r) => r,
                Err(_) => Err(crate::node::node_gone()),
            }
        };
        let s = futures_lite::future::or(answer, timer).await?;
        Ok(self.adopt(s))
    }

    /// A fresh stream handle (just dialed or accepted, never used, never cloned):
    /// local if its link lives on this shard. Not public: a handle that already
    /// staged writes or was cloned must stay on the mailbox path.
    pub(crate) fn adopt(&self, s: StreamRef) -> LocalDialed {
        if s.shard_index() != self.shard.idx {
            return LocalDialed::Elsewhere(s);
        }
        let (key, local, peer) = (s.key(), s.local_addr(), s.peer_addr());
        // The stream's reference now belongs to the LocalStream (released on drop).
        s.disarm();
        let pending = {
            let mut st = self.shard.st.borrow_mut();
            self.shard.take_direct(&mut st, key)
        };
        LocalDialed::Here(LocalStream {
            shard: self.shard.clone(),
            key,
            local,
            peer,
            pending,
            wbuf: BytesMut::new(),
        })
    }

    /// Binds a port or service name (the grammar of `NodeCore::bind`). Never blocks
    /// the shard: the node's bind registry, which user threads also lock briefly, is
    /// taken with `try_lock`, yielding to other tasks while it is busy.
    pub async fn bind(&self, spec: &str) -> io::Result<LocalListener> {
        let node = &self.shard.node;
        if node.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(crate::node::node_gone());
        }
        let spec = BindSpec::parse(spec)?;
        let (mut listener, acks) = loop {
            match node.registry.try_lock() {
                Ok(mut r) => break node.bind_locked(&mut r, &spec)?,
                Err(std::sync::TryLockError::Poisoned(p)) => {
                    break node.bind_locked(&mut p.into_inner(), &spec)?
                }
                Err(std::sync::TryLockError::WouldBlock) => futures_lite::future::yield_now().await,
            }
        };
        listener.on_shard = true;
        // This shard's own ack arrives when its loop runs the command: await, never
        // block.
        for rx in acks {
            match rx.await {
                Ok(r) => r?,
                Err(_) => return Err(crate::node::node_gone()),
            }
        }
        node.bind_announce(&listener);
        Ok(LocalListener {
            shard: self.clone(),
            inner: listener,
        })
    }
}

/// A listener bound from a shard-local task. Dropping it unbinds.
pub struct LocalListener {
    shard: LocalShard,
    inner: ListenerRef,
}

impl std::fmt::Debug for LocalListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalListener")
            .field("addr", &self.inner.local_addr())
            .field("name", &self.inner.name())
            .finish()
    }
}

impl LocalListener {
    /// The bound address.
    pub fn local_addr(&self) -> Addr {
        self.inner.local_addr()
    }

    /// The next stream opened to this listener: a [`LocalStream`] if its link lives
    /// on this shard. Cancel-safe: a stream is taken from the queue only when this
    /// returns it.
    pub async fn accept(&self) -> io::Result<LocalDialed> {
        match self.inner.queue().recv().await {
            Ok(Incoming { stream }) => Ok(self.shard.adopt(stream)),
            Err(_) => Err(crate::node::node_gone()),
        }
    }
}

/// A stream whose link lives on the shard the task runs on: reads and writes act on
/// the link's core directly. Implements `futures_io::AsyncRead` and `AsyncWrite`;
/// `poll_close` half-closes (FIN after the bytes written). Dropping it closes the
/// stream after queued data, like every astranet stream.
pub struct LocalStream {
    shard: Rc<Shard>,
    key: StreamKey,
    local: Addr,
    peer: Addr,
    /// Bytes a mailbox had taken for the stream before this task adopted it: read
    /// first.
    pending: VecDeque<Bytes>,
    /// Write staging: bytes are copied here, split off and handed to the core as
    /// `Bytes`; the allocation is reused once the core has sent them.
    wbuf: BytesMut,
}

impl std::fmt::Debug for LocalStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStream")
            .field("local", &self.local)
            .field("peer", &self.peer)
            .field("id", &self.key.id)
            .finish()
    }
}

/// Largest piece one `poll_write` hands to the core.
const WRITE_PIECE: usize = 256 * 1024;

impl LocalStream {
    /// Our address.
    pub fn local_addr(&self) -> Addr {
        self.local
    }

    /// The other end's address.
    pub fn peer_addr(&self) -> Addr {
        self.peer
    }

    /// Reads into `buf`: bytes already queued are copied at once; otherwise the task
    /// waits for the link's next event on this stream. `Ok(0)`: end of stream.
    pub fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut got = 0;
        while got < buf.len() {
            let Some(mut b) = self.pending.pop_front() else {
                break;
            };
            let n = b.len().min(buf.len() - got);
            buf[got..got + n].copy_from_slice(&b[..n]);
            got += n;
            if n < b.len() {
                self.pending.push_front(b.split_off(n));
            }
        }
        if got == buf.len() {
            return Poll::Ready(Ok(got));
        }
        let mut guard = self.shard.st.borrow_mut();
        let st = &mut *guard;
        let Some(slot) = st.links.get_mut(&self.key.link) else {
            return Poll::Ready(if got > 0 {
                Ok(got)
            } else {
                Err(streams::link_gone(st, self.key.link))
            });
        };
        let r = loop {
            match slot.core.recv(self.key.id, buf.len() - got) {
                Ok(Recv::Data(b)) => {
                    buf[got..got + b.len()].copy_from_slice(&b);
                    got += b.len();
                    if got == buf.len() {
                        break Poll::Ready(Ok(got));
                    }
                }
                Ok(Recv::Fin) => break Poll::Ready(Ok(got)),
                Ok(Recv::WouldBlock) if got > 0 => break Poll::Ready(Ok(got)),
                Ok(Recv::WouldBlock) => {
                    st.local.readers.insert(self.key, cx.waker().clone());
                    break Poll::Pending;
                }
                Err(_) if got > 0 => break Poll::Ready(Ok(got)),
                Err(e) => break Poll::Ready(Err(stream_error(e))),
            }
        };
        if got > 0 {
            // Reading opened the window: the IO task sends the update.
            st.dirty.push(self.key.link);
            drop(guard);
            self.shard.flush();
        }
        r
    }

    /// Writes as much of `buf` as the stream's credit takes now (at least one byte),
    /// or waits for credit.
    pub fn poll_write_buf(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut guard = self.shard.st.borrow_mut();
        let st = &mut *guard;
        let Some(slot) = st.links.get_mut(&self.key.link) else {
            return Poll::Ready(Err(streams::link_gone(st, self.key.link)));
        };
        // With no credit, offering one byte registers the stream for `Writable` (the
        // core takes none of it); with credit, copy only what will be taken.
        let room = slot.core.send_capacity(self.key.id);
        let n = room.clamp(1, WRITE_PIECE).min(buf.len());
        self.wbuf.reserve(n);
        self.wbuf.extend_from_slice(&buf[..n]);
        let mut data: Bytes = self.wbuf.split().freeze();
        match slot.core.send(self.key.id, &mut data) {
            Ok(0) => {
                st.local.writers.insert(self.key, cx.waker().clone());
                Poll::Pending
            }
            Ok(taken) => {
                st.dirty.push(self.key.link);
                drop(guard);
                self.shard.flush();
                Poll::Ready(Ok(taken))
            }
            Err(e) => Poll::Ready(Err(stream_error(e))),
        }
    }

    /// Half-closes our direction: FIN goes after the bytes already written; returns
    /// at once (it does not wait for the peer to read them).
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        let mut guard = self.shard.st.borrow_mut();
        let st = &mut *guard;
        let r = match st.links.get_mut(&self.key.link) {
            Some(slot) => {
                let r = slot.core.finish(self.key.id).map_err(stream_error);
                st.dirty.push(self.key.link);
                r
            }
            None => Err(streams::link_gone(st, self.key.link)),
        };
        drop(guard);
        self.shard.flush();
        match r {
            // Already half-closed: like a second `shutdown(Write)` on a socket.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            r => r,
        }
    }

    /// Aborts the stream with `code` (RESET goes ahead of queued data).
    pub fn reset(&mut self, code: ErrorCode) {
        let mut st = self.shard.st.borrow_mut();
        if let Some(slot) = st.links.get_mut(&self.key.link) {
            slot.core.reset(self.key.id, code);
            st.dirty.push(self.key.link);
        }
        drop(st);
        self.shard.flush();
    }
}

impl Drop for LocalStream {
    fn drop(&mut self) {
        {
            let mut st = self.shard.st.borrow_mut();
            st.local.readers.remove(&self.key);
            st.local.writers.remove(&self.key);
            st.direct.remove(&self.key);
            // Queued bytes still go out, then FIN (PROTOCOL.md §5.3).
            if let Some(slot) = st.links.get_mut(&self.key.link) {
                slot.core.close(self.key.id);
                st.dirty.push(self.key.link);
            }
        }
        self.shard.flush();
    }
}

impl futures_lite::AsyncRead for LocalStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_read_buf(cx, buf)
    }
}

impl futures_lite::AsyncWrite for LocalStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_buf(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Bytes handed to the core go out with the link's next socket write.
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().shutdown_write())
    }
}

/// A boxed task start, run by the shard it was sent to.
pub(crate) type SpawnFn = Box<dyn FnOnce(LocalShard) + Send>;

impl Shard {
    pub(super) fn spawn_user(self: &Rc<Self>, f: SpawnFn) {
        f(LocalShard::new(self.clone()));
    }

    /// From now on the shard drives `key` directly (a shard-local task's stream, a
    /// spliced relay), without a mailbox. Bytes a mailbox already took out of the
    /// core for it are returned, to be delivered first; they are credited to the
    /// peer now (at most one window, once).
    pub(crate) fn take_direct(&self, st: &mut State, key: StreamKey) -> VecDeque<Bytes> {
        st.direct.insert(key);
        let Some(mb) = self.detach_mail(st, key) else {
            return VecDeque::new();
        };
        // No handle on the stream exists any more (the only one was just disarmed),
        // so no user thread can hold this lock: taking it cannot wait.
        let mut r = crate::node::mailbox::lock(&mb.recv);
        let q = std::mem::take(&mut r.q).into_deque();
        let n = r.consumed as usize + r.bytes as usize;
        (r.consumed, r.bytes) = (0, 0);
        drop(r);
        if let Some(slot) = st.links.get_mut(&key.link) {
            slot.core.recv_consumed(key.id, n, 0);
            st.dirty.push(key.link);
        }
        q
    }
}

/// Spawns `fut` on the current glommio executor, first yielding so that it never
/// runs inside the command handler that started it.
pub(crate) fn spawn_detached<F: Future<Output = ()> + 'static>(fut: F) {
    glommio::spawn_local(async move {
        futures_lite::future::yield_now().await;
        fut.await
    })
    .detach();
}
