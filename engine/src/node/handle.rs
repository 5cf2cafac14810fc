//! The handles user code holds: [`StreamRef`] and [`ListenerRef`]. Thin on purpose (a
//! million may be held): ids and a shard number; state stays in the shard.

use super::{Cmd, NodeShared, StreamKey};
use crate::proto::ErrorCode;
use crate::types::Addr;
use bytes::Bytes;
use futures_channel::oneshot;
use std::sync::Arc;

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
pub struct StreamRef {
    node: Arc<NodeShared>,
    key: StreamKey,
    peer: Addr,
    /// Our port; our node is `node.id`. (Kept small: a million of these may be held.)
    local_port: u32,
    shard: u16,
    armed: bool,
}

impl std::fmt::Debug for StreamRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamRef")
            .field("local", &self.local_addr())
            .field("peer", &self.peer)
            .field("id", &self.key.id)
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
        Self {
            node,
            shard: shard as u16,
            key,
            local_port: local.port,
            peer,
            armed: true,
        }
    }

    /// Forget the stream without closing it (the shard refuses it itself, or a
    /// shard-local stream takes over its reference).
    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }

    /// The shard the stream's link lives on.
    pub fn shard_index(&self) -> u32 {
        u32::from(self.shard)
    }

    pub(crate) fn key(&self) -> StreamKey {
        self.key
    }

    fn push(&self, cmd: Cmd) {
        self.node.push(u32::from(self.shard), cmd);
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
        self.peer
    }

    /// Asks for up to `max` bytes (as many queued chunks as fit); an empty reply means
    /// end of stream.
    pub fn read(&self, max: usize) -> Rx<Chunks> {
        let (reply, rx) = oneshot::channel();
        self.push(Cmd::Read {
            key: self.key,
            max,
            reply,
        });
        rx
    }

    /// Hands bytes to the stream; the reply says how many were taken (all of them,
    /// once the stream had room for them).
    pub fn write(&self, data: Bytes) -> Rx<usize> {
        let (reply, rx) = oneshot::channel();
        self.push(Cmd::Write {
            key: self.key,
            data,
            reply,
        });
        rx
    }

    /// Half-closes our direction once queued data is out.
    pub fn shutdown_write(&self) -> Rx<()> {
        let (reply, rx) = oneshot::channel();
        self.push(Cmd::ShutdownWrite {
            key: self.key,
            reply,
        });
        rx
    }

    /// Aborts the stream with `code` (RESET goes ahead of queued data).
    pub fn reset(&self, code: ErrorCode) {
        self.push(Cmd::Reset {
            key: self.key,
            code,
        });
    }

    /// Another handle on the same stream.
    pub fn try_clone(&self) -> StreamRef {
        self.push(Cmd::AddRef(self.key));
        StreamRef::new(
            self.node.clone(),
            u32::from(self.shard),
            self.key,
            self.local_addr(),
            self.peer,
        )
    }
}

impl Drop for StreamRef {
    fn drop(&mut self) {
        if self.armed {
            self.push(Cmd::Release(self.key));
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
