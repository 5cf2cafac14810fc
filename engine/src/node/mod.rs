//! The thread-per-core runtime: a node's shards, its links, and the handles user code
//! holds. The public crate `astranet` wraps `NodeCore` and `StreamRef`.
//!
//! Ownership (README "Inside the engine"):
//! - Each link belongs to one shard (a glommio executor on its own thread), and so does
//!   every stream on it; all stream state is the sans-IO core's, inside that shard.
//! - The control plane (routing, discovery, watchers, dials waiting for a service,
//!   direct upgrades) has one owner: the control task on shard 0 (`control`). Other
//!   shards send it what their links report; it sends frames back as commands.
//! - User threads never share a lock with a shard. They act by pushing commands into
//!   a shard's inbox and read what the control task publishes (`view::View`, an
//!   `Arc` swapped on change). The few mutexes left are taken by user threads only.
//!
//! Files: `core` (start, listen, join, bind, dial, shutdown), `config`,
//! `handle` (stream and listener handles), `shard` (a shard's links and streams),
//! `control`, `routing` and `discovery` (pure state machines; `discovery::signing`
//! checks signed announcements through `auth`, the interface to the node's identity,
//! which `test_auth` stands in for in tests), `dial` (resolving a target), `relay`,
//! `listeners`, `upgrade`, `watch`, `view`.

pub(crate) mod auth;
mod config;
pub(crate) mod control;
mod core;
mod dial;
pub(crate) mod discovery;
mod errors;
mod handle;
mod inbox;
pub(crate) mod io;
mod listeners;
mod mailbox;
mod plane;
mod relay;
pub(crate) mod routing;
pub(crate) mod shard;
mod test_auth;
mod tls;
mod upgrade;
mod view;
mod wait;
mod watch;

pub use self::core::{LinkInfo, NodeCore, NodeStats};
pub use config::{Limits, NodeConfig, Role};
pub use errors::{node_gone, StreamReset};
pub use handle::{Chunks, Incoming, ListenerRef, Rx, StreamRef, MAX_STAGED, MAX_WRITE};
#[doc(hidden)]
pub use plane::fuzzing;
pub use shard::local::{LocalDialed, LocalListener, LocalShard, LocalStream};
pub use tls::{node_name as tls_node_name, TlsConfig, ALPN as TLS_ALPN};
pub use view::{RouteEvent, RouteInfo, ServiceEvent, ServiceInfo};
pub use wait_api::*;

use crate::proto::frame::{Frame, OpenHeader};
use crate::proto::{ErrorCode, StreamId};
use crate::types::{Addr, NodeId};
use bytes::Bytes;
use futures_channel::oneshot;
use inbox::Inbox;
use io::ThreadIo;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A link's node-wide id (never reused).
pub(crate) type LinkId = u64;

/// Identifies a stream inside its shard.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct StreamKey {
    pub(crate) link: LinkId,
    pub(crate) id: StreamId,
}

pub(crate) type Reply<T> = oneshot::Sender<std::io::Result<T>>;

/// What user threads and other shards ask of a shard.
pub(crate) enum Cmd {
    AddLink {
        id: LinkId,
        transport: Transport0,
        join: Option<String>,
        /// Accepted by our listener: counts against the handshake cap.
        accepted: bool,
        reply: Option<Reply<NodeId>>,
    },
    AddLoopback {
        a: LinkId,
        b: LinkId,
    },
    Dial {
        req: dial::DialReq,
        reply: Reply<StreamRef>,
    },
    /// A handle staged bytes, consumed some, or half-closed: look at its mailbox.
    Mail(Arc<mailbox::Mailbox>),
    /// Look at a mailbox again (the shard found it locked by a user thread).
    Service(Arc<mailbox::Mailbox>),
    /// A handle found no mailbox for a stream: attach this one (or wake it, if the
    /// shard attached another meanwhile).
    Attach(Arc<mailbox::Mailbox>),
    /// Half-close a stream that has no mailbox.
    ShutdownWrite(StreamKey),
    AddRef(StreamKey),
    Release(StreamKey),
    Stop {
        code: ErrorCode,
        reply: Reply<()>,
    },
    Wake(LinkId),
    /// Frames from the control task for links of this shard.
    SendTo(Vec<(LinkId, Frame)>),
    /// A listener was bound: this shard routes incoming OPENs to it from now on.
    Listen(listeners::ListenerEntry, Reply<()>),
    /// A listener was dropped.
    Unlisten(u32),
    Reset {
        key: StreamKey,
        code: ErrorCode,
    },
    Stats {
        reply: Reply<NodeStats>,
    },
    Links {
        reply: Reply<Vec<LinkInfo>>,
    },
    /// For the control task (shard 0 only).
    Control(control::Msg),
    /// Starts a user task on this shard (`NodeCore::spawn_on`).
    Spawn(shard::local::SpawnFn),
}

/// A transport as it crosses to the shard: glommio sockets must be made on the shard.
pub(crate) enum Transport0 {
    Std(std::net::TcpStream),
    Threads(ThreadIo),
}

/// What every thread of a node shares. Shards and user threads share no lock: the
/// mutexes here are taken by user threads only (binds, listen sockets, thread
/// handles), and what shards publish for users is read through [`view::Published`].
pub(crate) struct NodeShared {
    pub(crate) id: NodeId,
    pub(crate) cfg: config::NodeConfig,
    pub(crate) inboxes: Vec<Arc<Inbox<Cmd>>>,
    /// Per shard, the mailboxes of its busy streams. Only the shard inserts and removes
    /// (papaya's writers may wait for each other during a resize, never its readers);
    /// handles only read.
    pub(crate) mail: Vec<mailbox::MailMap>,
    /// Binds of this node (user threads only).
    pub(crate) registry: Mutex<listeners::Registry>,
    /// Routes and services, as the control task last published them.
    pub(crate) view: view::Published,
    next_link: AtomicU64,
    next_port: AtomicU32,
    next_shard: AtomicUsize,
    /// The node's link to itself: (shard, link id of the dialing end).
    pub(crate) loopback: (u32, LinkId),
    pub(crate) stopped: AtomicBool,
    /// Links to other nodes (established or in handshake), and accepted connections
    /// still in their handshake: read by accept threads to enforce the caps.
    pub(crate) links: AtomicUsize,
    pub(crate) handshaking: AtomicUsize,
    /// Times a peer hit one of our limits.
    pub(crate) limit_hits: AtomicU64,
    /// Announcements rejected because their origin did not sign them.
    pub(crate) rejected_announcements: AtomicU64,
    /// What links are secured with (None: plaintext). Swapped whole on reload;
    /// shards load it lock-free at each handshake.
    pub(crate) tls: Option<arc_swap::ArcSwap<tls::TlsState>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    listen_sockets: Mutex<Vec<socket2::Socket>>,
}

/// Ephemeral ports start here; explicit binds should use smaller numbers.
const EPHEMERAL_BASE: u32 = 1 << 31;

impl NodeShared {
    pub(crate) fn push(&self, shard: u32, cmd: Cmd) {
        self.inboxes[shard as usize].push(cmd);
    }

    /// To the control task.
    pub(crate) fn control(&self, m: control::Msg) {
        self.push(0, Cmd::Control(m));
    }

    /// To every shard.
    pub(crate) fn push_all(&self, mut make: impl FnMut() -> Cmd) {
        for i in 0..self.inboxes.len() as u32 {
            self.push(i, make());
        }
    }

    fn new_link_id(&self) -> LinkId {
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        // Stream handles keep the shard in the bits above 2^48 (`StreamRef`): 2^48
        // links would take nine years at a million a second.
        assert!(id < 1 << 48, "link ids exhausted");
        id
    }

    fn pick_shard(&self) -> u32 {
        (self.next_shard.fetch_add(1, Ordering::Relaxed) % self.inboxes.len()) as u32
    }

    pub(crate) fn ephemeral_port(&self) -> u32 {
        let p = self.next_port.fetch_add(1, Ordering::Relaxed);
        EPHEMERAL_BASE | (p & (EPHEMERAL_BASE - 1))
    }

    /// The TLS identity and trust new links use now (None: plaintext node).
    pub(crate) fn tls_state(&self) -> Option<Arc<tls::TlsState>> {
        self.tls.as_ref().map(|t| t.load_full())
    }

    /// This node's identity as discovery's signer and verifier of announcements
    /// (None on a plaintext node). Reflects the latest reload.
    pub(crate) fn announce_auth(&self) -> Option<Arc<dyn auth::AnnounceAuth>> {
        self.tls_state()
            .map(|t| t.auth.clone() as Arc<dyn auth::AnnounceAuth>)
    }

    pub(crate) fn is_router(&self) -> bool {
        self.cfg.role == Role::Router
    }

    pub(crate) fn hit_limit(&self, what: &'static str, n: u64) {
        if n > 0 {
            self.limit_hits.fetch_add(n, Ordering::Relaxed);
            tracing::debug!(node = %self.id, limit = what, count = n, "peer limit hit");
        }
    }

    /// Hands a transport to a shard; the reply comes once the handshake is done.
    pub(crate) fn add_link(
        &self,
        t: Transport0,
        join: Option<String>,
        accepted: bool,
    ) -> oneshot::Receiver<std::io::Result<NodeId>> {
        let (tx, rx) = oneshot::channel();
        let id = self.new_link_id();
        self.push(
            self.pick_shard(),
            Cmd::AddLink {
                id,
                transport: t,
                join,
                accepted,
                reply: Some(tx),
            },
        );
        rx
    }
}

/// The OPEN header of a stream and where its ends are.
pub(crate) fn open_header(
    src: Addr,
    dst: Addr,
    hop_limit: u8,
    env: &str,
    service: Option<&str>,
) -> OpenHeader {
    OpenHeader {
        dst_node: dst.node.0,
        dst_port: dst.port,
        src_node: src.node.0,
        src_port: src.port,
        hop_limit,
        env: match service {
            Some(_) => Bytes::copy_from_slice(env.as_bytes()),
            None => Bytes::new(),
        },
        service: service.map_or(Bytes::new(), |s| Bytes::copy_from_slice(s.as_bytes())),
    }
}

/// Blocking helpers for the API crate.
mod wait_api {
    use super::*;
    use std::future::Future;
    use std::time::Instant;

    /// Outcome of [`wait_timeout`].
    pub enum Wait<T> {
        /// The reply.
        Done(T),
        /// The deadline passed; poll the receiver again later.
        TimedOut(oneshot::Receiver<T>),
    }

    /// Blocks until a reply arrives or `deadline` passes.
    pub fn wait_timeout<T>(
        mut rx: oneshot::Receiver<std::io::Result<T>>,
        deadline: Option<Instant>,
    ) -> Wait<std::io::Result<T>> {
        match wait::wait(&mut rx, deadline) {
            wait::Waited::Done(Ok(r)) => Wait::Done(r),
            wait::Waited::Done(Err(_)) => Wait::Done(Err(node_gone())),
            wait::Waited::TimedOut => Wait::TimedOut(rx),
        }
    }

    /// Blocks the calling thread on a future until it completes or `deadline` passes
    /// (`None`). No thread or timer is started: the thread parks until woken or the
    /// deadline.
    pub fn block_on_until<F: Future + Unpin>(
        fut: &mut F,
        deadline: Option<Instant>,
    ) -> Option<F::Output> {
        match wait::wait(fut, deadline) {
            wait::Waited::Done(v) => Some(v),
            wait::Waited::TimedOut => None,
        }
    }
}
