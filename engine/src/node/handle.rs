//! The handles user code holds: [`StreamRef`] and [`ListenerRef`]. Thin on purpose (a
//! million may be held): ids and a shard number; state stays in the shard, and while
//! the stream is busy, in the mailbox it shares with the shard (`mailbox`).

use super::errors::node_gone;
use super::mailbox::{self, Mailbox};
pub use super::mailbox::{MAX_STAGED, MAX_WRITE};
use super::{Cmd, NodeShared, StreamKey};
use crate::proto::ErrorCode;
use crate::types::{Addr, NodeId};
use bytes::Bytes;
use futures_channel::oneshot;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Bytes read from a stream, as the chunks they arrived in (no copy). Empty means end
/// of stream.
pub type Chunks = crate::proto::BufQueue;

/// A reply from a shard.
pub type Rx<T> = oneshot::Receiver<std::io::Result<T>>;

/// A stream accepted by a listener.
pub struct Incoming {
    /// The stream.
    pub stream: StreamRef,
}

/// A handle on one stream, held by user code. Dropping the last handle closes the
/// stream (FIN after queued data; see PROTOCOL.md §5.3).
///
/// 40 bytes, the size class below 48 (a million may be held, often boxed): the shard
/// rides in the top bits of the link id and the flags in the top byte of the stream
/// id, which both leave them unused (see `SHARD_SHIFT`, `FLAG_SHIFT`).
pub struct StreamRef {
    node: Arc<NodeShared>,
    /// The link id (below 2^48, `NodeShared::new_link_id`), the shard above.
    link_shard: u64,
    /// The stream id (at most `MAX_STREAM_ID`, 56 bits), `ARMED` and `WRITE_SHUT`
    /// above.
    id_flags: u64,
    peer_node: NodeId,
    peer_port: u32,
    /// Our port; our node is `node.id`.
    local_port: u32,
}

/// Where `StreamRef::link_shard` keeps the shard (below 1024 shards, 10 bits).
const SHARD_SHIFT: u32 = 48;
const LINK_MASK: u64 = (1 << SHARD_SHIFT) - 1;
/// Where `StreamRef::id_flags` keeps the flags: above the 56 bits of a stream id.
const FLAG_SHIFT: u32 = 56;
const ID_MASK: u64 = crate::proto::frame::MAX_STREAM_ID;
/// Dropping the handle releases the stream.
const ARMED: u64 = 1 << FLAG_SHIFT;
/// The owner half-closed through this handle ([`StreamRef::set_write_shut`]).
const WRITE_SHUT: u64 = 2 << FLAG_SHIFT;

impl std::fmt::Debug for StreamRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamRef")
            .field("local", &self.local_addr())
            .field("peer", &self.peer_addr())
            .field("id", &self.key().id)
            .finish()
    }
}

impl StreamRef {
    pub(crate) fn new(
        node: Arc<NodeShared>,
        shard: u32,
        key: StreamKey,
        local: Addr,
        peer: Addr,
    ) -> Self {
        // Both hold by construction (link ids are counted from 3 and checked in
        // `new_link_id`, stream ids are checked where frames are decoded or ids made);
        // a broken one would mix the fields, so tests check them.
        debug_assert!(key.link <= LINK_MASK && key.id <= ID_MASK);
        debug_assert!(u64::from(shard) < 1 << (64 - SHARD_SHIFT));
        Self {
            node,
            link_shard: key.link | (u64::from(shard) << SHARD_SHIFT),
            id_flags: key.id | ARMED,
            peer_node: peer.node,
            peer_port: peer.port,
            local_port: local.port,
        }
    }

    /// The shard, as an index.
    fn shard(&self) -> usize {
        (self.link_shard >> SHARD_SHIFT) as usize
    }

    /// Forget the stream without closing it (the shard refuses it itself, or a
    /// shard-local stream takes over its reference).
    pub(crate) fn disarm(mut self) {
        self.id_flags &= !ARMED;
    }

    /// Records that the owner half-closed through this handle, so that its writes
    /// fail from now on (the API's streams keep this here, in a byte the handle has
    /// spare, rather than grow by a word each).
    pub fn set_write_shut(&mut self) {
        self.id_flags |= WRITE_SHUT;
    }

    /// Whether [`StreamRef::set_write_shut`] was called on this handle.
    pub fn write_shut(&self) -> bool {
        self.id_flags & WRITE_SHUT != 0
    }

    /// The shard the stream's link lives on.
    pub fn shard_index(&self) -> u32 {
        self.shard() as u32
    }

    pub(crate) fn key(&self) -> StreamKey {
        StreamKey {
            link: self.link_shard & LINK_MASK,
            id: self.id_flags & ID_MASK,
        }
    }

    fn push(&self, cmd: Cmd) {
        self.node.push(self.shard() as u32, cmd);
    }

    /// Our address.
    pub fn local_addr(&self) -> Addr {
        Addr {
            node: self.node.id,
            port: self.local_port,
        }
    }

    /// The other end's address.
    pub fn peer_addr(&self) -> Addr {
        Addr {
            node: self.peer_node,
            port: self.peer_port,
        }
    }

    /// Runs `op` inside the stream's mailbox (see `mailbox`): found in the shard's
    /// lock-free map, or asked for (one round trip, only after the stream was idle).
    fn with_mailbox<T>(
        &self,
        cx: &mut Context<'_>,
        op: impl FnOnce(&Arc<Mailbox>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let shard = self.shard() as u32;
        let map = &self.node.mail[self.shard()];
        let mb = loop {
            // Looked up afresh each time: the shard may have swapped the table.
            let found = map.get(&self.key());
            let Some(mb) = found else {
                if self.node.inboxes[self.shard()].is_closed() {
                    return Poll::Ready(Err(node_gone()));
                }
                let mb = Arc::new(Mailbox::new(self.key(), 0));
                mb.wait_attached(cx);
                self.node.push(shard, Cmd::Attach(mb));
                return Poll::Pending;
            };
            if mb.enter() {
                break mb;
            }
            // The shard is detaching it this very moment and removes it next.
            std::thread::yield_now();
        };
        let r = op(&mb, cx);
        mb.exit();
        if r.is_pending() && self.node.inboxes[self.shard()].is_closed() {
            return Poll::Ready(Err(node_gone()));
        }
        r
    }

    fn notify(&self, mb: &Arc<Mailbox>) {
        mb.notify(&self.node, self.shard() as u32);
    }

    /// Copies bytes that arrived into `buf`; `Ok(0)` means end of stream. Bytes already
    /// here are taken without asking the shard.
    pub fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.with_mailbox(cx, |mb, cx| {
            let mut report = false;
            let r = mb.poll_read(cx, buf, &mut report);
            if report || mb.state() & mailbox::ATTACHED == 0 {
                self.notify(mb);
            }
            r
        })
    }

    /// Takes up to `max` bytes as the chunks they arrived in (no copy); empty means end
    /// of stream.
    pub fn poll_read_chunks(&self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Chunks>> {
        self.with_mailbox(cx, |mb, cx| {
            let mut report = false;
            let r = mb.poll_read_chunks(cx, max, &mut report);
            // As `poll_read`: a mailbox the shard has not attached yet must be looked at.
            if report || mb.state() & mailbox::ATTACHED == 0 {
                self.notify(mb);
            }
            r
        })
    }

    /// Copies up to [`MAX_WRITE`] bytes of `buf` into the stream; returns how many.
    /// Returns at once while fewer than [`MAX_STAGED`] bytes wait for the peer's
    /// credit; `Pending` (nothing taken) beyond.
    pub fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.with_mailbox(cx, |mb, cx| {
            let r = mb.poll_write_with(cx, buf.len(), |n| Bytes::copy_from_slice(&buf[..n]));
            if matches!(r, Poll::Ready(Ok(_))) {
                self.notify(mb);
            }
            r
        })
    }

    /// [`StreamRef::poll_write`] without a copy: takes bytes off the front of `data`.
    pub fn poll_write_bytes(
        &self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.with_mailbox(cx, |mb, cx| {
            let r = mb.poll_write_with(cx, data.len(), |n| data.split_to(n));
            if matches!(r, Poll::Ready(Ok(_))) {
                self.notify(mb);
            }
            r
        })
    }

    /// Never waits, like `TcpStream::flush`: a write that returned staged its bytes,
    /// and the shard sends them without further ado (within the peer's window), so
    /// there is nothing to push. Waiting here until the shard took them would cost a
    /// cross-thread wake-up per write and tell the caller nothing a socket would. Fails
    /// when the stream already has a write error or the node is gone.
    pub fn poll_flush(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let found = self.node.mail[self.shard()].get(&self.key());
        if let Some(mb) = found {
            if mb.enter() {
                let r = mb.flush();
                mb.exit();
                return Poll::Ready(r);
            }
        }
        // No mailbox: nothing is staged (a detached mailbox had nothing queued).
        if self.node.inboxes[self.shard()].is_closed() {
            return Poll::Ready(Err(node_gone()));
        }
        Poll::Ready(Ok(()))
    }

    /// Half-closes our direction: the FIN goes after the bytes written so far. Never
    /// waits (like `TcpStream::shutdown(Write)`).
    pub fn shutdown_write(&self) -> io::Result<()> {
        let found = self.node.mail[self.shard()].get(&self.key());
        if let Some(mb) = found {
            if mb.enter() {
                let r = mb.shutdown();
                self.notify(&mb);
                mb.exit();
                return r;
            }
        }
        // No mailbox: nothing is staged, the shard finishes the stream directly (or
        // through a mailbox attached meanwhile, after its bytes).
        self.push(Cmd::ShutdownWrite(self.key()));
        Ok(())
    }

    /// Aborts the stream with `code` (RESET goes ahead of queued data).
    pub fn reset(&self, code: ErrorCode) {
        self.push(Cmd::Reset {
            key: self.key(),
            code,
        });
    }

    /// Another handle on the same stream.
    pub fn try_clone(&self) -> StreamRef {
        self.push(Cmd::AddRef(self.key()));
        StreamRef::new(
            self.node.clone(),
            self.shard() as u32,
            self.key(),
            self.local_addr(),
            self.peer_addr(),
        )
    }
}

impl Drop for StreamRef {
    fn drop(&mut self) {
        if self.id_flags & ARMED != 0 {
            self.push(Cmd::Release(self.key()));
        }
    }
}

/// A bound port or service; dropping it unbinds.
pub struct ListenerRef {
    pub(crate) node: Arc<NodeShared>,
    pub(crate) port: u32,
    pub(crate) name: Option<String>,
    pub(crate) rx: async_channel::Receiver<Incoming>,
    /// Held by a shard-local task: dropped on a shard thread, where unbinding must
    /// not wait for the registry lock.
    pub(crate) on_shard: bool,
}

impl ListenerRef {
    /// The bound address.
    pub fn local_addr(&self) -> Addr {
        Addr {
            node: self.node.id,
            port: self.port,
        }
    }

    /// The service name, if bound by name.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The queue of accepted streams.
    pub fn queue(&self) -> &async_channel::Receiver<Incoming> {
        &self.rx
    }
}

impl Drop for ListenerRef {
    fn drop(&mut self) {
        if !self.on_shard {
            self.node.unbind(self.port);
            return;
        }
        // On a shard thread: never wait for the lock user threads take; retry from a
        // task while it is busy.
        let (node, port) = (self.node.clone(), self.port);
        let try_unbind = move || match node.registry.try_lock() {
            Ok(mut r) => {
                node.unbind_locked(&mut r, port);
                true
            }
            Err(std::sync::TryLockError::Poisoned(p)) => {
                node.unbind_locked(&mut p.into_inner(), port);
                true
            }
            Err(std::sync::TryLockError::WouldBlock) => false,
        };
        if !try_unbind() {
            super::shard::local::spawn_detached(async move {
                for _ in 0..1_000_000 {
                    if try_unbind() {
                        return;
                    }
                    futures_lite::future::yield_now().await;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{NodeConfig, NodeCore};

    /// A million handles may be held, often boxed: 40 bytes is mimalloc's and glibc's
    /// size class below 48, so any growth shows here first.
    #[test]
    fn stream_ref_is_small() {
        assert_eq!(std::mem::size_of::<StreamRef>(), 40);
    }

    /// The shard and flags packed above the ids read back, at the largest values each
    /// field may hold, without disturbing the ids.
    #[test]
    fn packed_fields_read_back() {
        let node = NodeCore::start(NodeConfig {
            shards: 1,
            ..NodeConfig::default()
        })
        .unwrap();
        let key = StreamKey {
            link: LINK_MASK,
            id: ID_MASK,
        };
        let local = Addr {
            node: node.shared().id,
            port: u32::MAX,
        };
        let peer = Addr {
            node: NodeId(u64::MAX),
            port: u32::MAX - 1,
        };
        let mut r = StreamRef::new(node.shared().clone(), 1023, key, local, peer);
        assert_eq!(r.key(), key);
        assert_eq!(r.shard_index(), 1023);
        assert_eq!((r.local_addr(), r.peer_addr()), (local, peer));
        assert!(!r.write_shut());
        r.set_write_shut();
        assert!(r.write_shut());
        assert_eq!((r.key(), r.shard_index()), (key, 1023));
        // Shard 1023 does not exist here: disarmed, the drop sends nothing.
        r.disarm();
        node.shutdown();
    }
}
