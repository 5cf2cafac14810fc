//! The thread-per-core runtime: a node's shards, its links, and the handles user code
//! holds. The public crate `astranet` wraps [`NodeCore`] and [`StreamRef`].
//!
//! Ownership: each link belongs to one shard (a glommio executor on its own thread),
//! and so does every stream on it; all stream state is the sans-IO core's, inside that
//! shard. User handles are thin (a shard number, a link id, a stream id) and act by
//! sending commands into the shard's inbox; replies come back through oneshot
//! channels. Node-wide tables (listeners, services, routes) are read on open/bind and
//! on link changes, never per frame.

mod inbox;
pub(crate) mod io;
mod routing;
mod shard;
mod wait;

use crate::proto::frame::{self, Frame, OpenHeader, ServiceOp, ServicesUpdate};
use crate::proto::{ErrorCode, LinkConfig, LinkError, StreamId};
use crate::types::{Addr, BindSpec, NodeId, Target};
use bytes::Bytes;
use futures_channel::oneshot;
use inbox::Inbox;
use io::ThreadIo;
use shard::Shard;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub use wait_api::*;

/// Bytes a relay reads from one side of a spliced stream before it has written them
/// to the other side: with the two streams' windows, all a relayed stream can hold.
const RELAY_CHUNK: usize = 256 * 1024;

/// The reset code that carries a relayed stream's failure to its other side.
fn relay_code(e: &std::io::Error) -> ErrorCode {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => ErrorCode::REFUSED,
        K::NotFound => ErrorCode::NOT_FOUND,
        K::HostUnreachable => ErrorCode::NO_ROUTE,
        K::ConnectionAborted | K::TimedOut | K::InvalidData => ErrorCode::LINK_LOST,
        _ => ErrorCode::CANCELLED,
    }
}

/// Moves one direction of a relayed stream: reads from `from` only once the previous
/// bytes were taken by `to` (within its credit), so backpressure holds end to end and
/// the relay holds at most [`RELAY_CHUNK`] per direction beyond the streams' windows.
async fn pump(from: StreamRef, to: StreamRef) {
    loop {
        let chunks = match from.read(RELAY_CHUNK).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                to.reset(relay_code(&e));
                return;
            }
            Err(_) => return,
        };
        if chunks.is_empty() {
            let _ = to.shutdown_write().await;
            return;
        }
        // Hand every chunk over at once (the shard keeps a stream's writes in order),
        // then wait for all of them: at most RELAY_CHUNK bytes are in flight.
        let mut chunks = chunks;
        let mut pending = Vec::new();
        while let Some(b) = chunks.pop() {
            pending.push(to.write(b));
        }
        for rx in pending {
            match rx.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    from.reset(relay_code(&e));
                    return;
                }
                Err(_) => return,
            }
        }
    }
}

/// A link's node-wide id (never reused).
pub(crate) type LinkId = u64;

/// Identifies a stream inside its shard.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct StreamKey {
    pub(crate) link: LinkId,
    pub(crate) id: StreamId,
}

/// What a node does for its mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Dials only: announces nothing and relays for nobody.
    Client,
    /// Announces its services; does not relay.
    Server,
    /// Announces and relays streams for other nodes (the default, as in the original
    /// astranet: out of the box any node relays for its mesh).
    #[default]
    Router,
}

/// Settings of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// What the node does for its mesh.
    pub role: Role,
    /// Node id (random by default).
    pub id: NodeId,
    /// Number of shards (executor threads).
    pub shards: usize,
    /// Pin shard i to core i (mod the number of cores).
    pub pin_cores: bool,
    /// Env namespace ("" = none).
    pub env: String,
    /// Limits advertised on every link (node id and keep-alive are filled in).
    pub link: LinkConfig,
    /// Most accepted streams waiting in one listener's queue; beyond, opens are refused.
    pub backlog: usize,
    /// How long `join` keeps trying to connect before it gives up.
    pub join_timeout: Duration,
    /// Advertise this node's listen addresses, and join nodes reached only through
    /// relays directly when they advertise theirs (PROTOCOL.md §10.5).
    pub direct_upgrade: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            role: Role::Router,
            id: NodeId::random(),
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pin_cores: false,
            env: String::new(),
            link: LinkConfig::default(),
            backlog: 1 << 20,
            join_timeout: Duration::from_secs(10),
            direct_upgrade: true,
        }
    }
}

pub(crate) enum Cmd {
    AddLink {
        id: LinkId,
        transport: Transport0,
        join: Option<String>,
        reply: Option<oneshot::Sender<std::io::Result<NodeId>>>,
    },
    AddLoopback {
        a: LinkId,
        b: LinkId,
    },
    Dial {
        req: DialReq,
        reply: oneshot::Sender<std::io::Result<StreamRef>>,
    },
    Read {
        key: StreamKey,
        max: usize,
        reply: oneshot::Sender<std::io::Result<Chunks>>,
    },
    Write {
        key: StreamKey,
        data: Bytes,
        reply: oneshot::Sender<std::io::Result<usize>>,
    },
    ShutdownWrite {
        key: StreamKey,
        reply: oneshot::Sender<std::io::Result<()>>,
    },
    AddRef(StreamKey),
    Release(StreamKey),
    Broadcast {
        frame: Frame,
        except: Option<LinkId>,
    },
    Stop {
        code: ErrorCode,
        reply: oneshot::Sender<std::io::Result<()>>,
    },
    Wake(LinkId),
    SendTo {
        link: LinkId,
        frame: Frame,
    },
    /// The next hop accepted a relayed stream: accept the inbound one and splice.
    AcceptRelay {
        key: StreamKey,
        local: Addr,
        peer: Addr,
        out: StreamRef,
    },
    /// Refuse a peer's stream that was never accepted.
    Refuse {
        key: StreamKey,
        code: ErrorCode,
    },
    Reset {
        key: StreamKey,
        code: ErrorCode,
    },
    Stats {
        reply: oneshot::Sender<std::io::Result<(usize, usize)>>,
    },
}

/// A transport as it crosses to the shard: glommio sockets must be made on the shard.
pub(crate) enum Transport0 {
    Std(std::net::TcpStream),
    Threads(ThreadIo),
}

pub(crate) struct DialReq {
    pub(crate) shard: u32,
    pub(crate) link: LinkId,
    pub(crate) header: OpenHeader,
    pub(crate) local: Addr,
    pub(crate) peer: Addr,
}

/// A stream accepted by a listener.
pub struct Incoming {
    /// The stream.
    pub stream: StreamRef,
}

struct ListenerEntry {
    name: Option<String>,
    tx: async_channel::Sender<Incoming>,
}

#[derive(Default)]
struct Listeners {
    by_port: HashMap<u32, ListenerEntry>,
    by_name: HashMap<String, u32>,
}

/// What we know of one origin's services.
struct Origin {
    version: u64,
    hops: u8,
    /// (env, name, port)
    entries: Vec<(String, String, u32)>,
    /// Links this origin's announcements arrived over (PROTOCOL.md §11.3 ownership).
    sources: Vec<LinkId>,
}

#[derive(Default)]
struct Services {
    version: u64,
    origins: HashMap<NodeId, Origin>,
    /// Our listen addresses, announced as address records.
    addrs: Vec<String>,
    /// Origins we tried to join directly, and when.
    upgrades: HashMap<NodeId, Instant>,
}

/// The env of address records in SERVICES (PROTOCOL.md §10.5): `!` is not allowed in a
/// real env, so no service can collide with them.
const ADDR_ENV: &str = "!addr";
/// How long before a failed direct upgrade to the same node is tried again.
const UPGRADE_RETRY: Duration = Duration::from_secs(30);

/// A service instance, as listed by `services()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Service name (without env).
    pub name: String,
    /// Where it is bound.
    pub addr: Addr,
    /// Links between us and it (0 = this node).
    pub hops: u32,
}

/// A reachable node, as listed by `routes()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    /// The node.
    pub node: NodeId,
    /// The neighbour traffic to it goes through.
    pub next_hop: NodeId,
    /// Links to cross.
    pub hops: u32,
}

/// A change in the services a node can dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceEvent {
    /// A service instance became dialable.
    Up(ServiceInfo),
    /// A service instance went away (unbound, node gone, or unreachable).
    Down(ServiceInfo),
}

/// A change in the nodes a node can reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteEvent {
    /// A node became reachable, or its route changed.
    Up(RouteInfo),
    /// A node is no longer reachable.
    Down(NodeId),
}

#[derive(Default)]
struct Watchers {
    services: Vec<async_channel::Sender<ServiceEvent>>,
    routes: Vec<async_channel::Sender<RouteEvent>>,
    last_services: Vec<ServiceInfo>,
    last_routes: Vec<RouteInfo>,
}

pub(crate) struct NodeShared {
    watchers: Mutex<Watchers>,
    id: NodeId,
    cfg: NodeConfig,
    inboxes: Vec<Arc<Inbox<Cmd>>>,
    listeners: Mutex<Listeners>,
    routing: Mutex<routing::Routing>,
    services: Mutex<Services>,
    services_changed: Condvar,
    next_link: AtomicU64,
    next_port: AtomicU32,
    next_shard: AtomicUsize,
    loopback: (u32, LinkId),
    stopped: AtomicBool,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    listen_sockets: Mutex<Vec<socket2::Socket>>,
}

/// Ephemeral ports start here; explicit binds should use smaller numbers.
const EPHEMERAL_BASE: u32 = 1 << 31;

impl NodeShared {
    fn link_config(&self, self_link_parity: Option<u64>) -> LinkConfig {
        LinkConfig {
            node_id: self.id.0,
            self_link_parity,
            roles: match self.cfg.role {
                Role::Client => 0,
                Role::Server => frame::ROLE_SERVER,
                Role::Router => frame::ROLE_SERVER | frame::ROLE_ROUTER,
            },
            ..self.cfg.link.clone()
        }
    }

    fn push(&self, shard: u32, cmd: Cmd) {
        self.inboxes[shard as usize].push(cmd);
    }

    fn new_link_id(&self) -> LinkId {
        self.next_link.fetch_add(1, Ordering::Relaxed)
    }

    fn pick_shard(&self) -> u32 {
        (self.next_shard.fetch_add(1, Ordering::Relaxed) % self.inboxes.len()) as u32
    }

    fn ephemeral_port(&self) -> u32 {
        let p = self.next_port.fetch_add(1, Ordering::Relaxed);
        EPHEMERAL_BASE | (p & (EPHEMERAL_BASE - 1))
    }

    /// Services visible to this node (its env only), this node's first.
    fn services_snapshot(&self) -> Vec<ServiceInfo> {
        let mut out = Vec::new();
        if self.cfg.role != Role::Client {
            let l = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
            for (port, e) in &l.by_port {
                if let Some(n) = &e.name {
                    out.push(ServiceInfo {
                        name: n.clone(),
                        addr: Addr {
                            node: self.id,
                            port: *port,
                        },
                        hops: 0,
                    });
                }
            }
        }
        let s = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let r = self.lock_routing();
        for (origin, o) in &s.origins {
            let Some(route) = r.get(*origin) else {
                continue;
            };
            for (env, name, port) in &o.entries {
                if env == &self.cfg.env {
                    out.push(ServiceInfo {
                        name: name.clone(),
                        addr: Addr {
                            node: *origin,
                            port: *port,
                        },
                        hops: u32::from(route.hops),
                    });
                }
            }
        }
        out
    }

    fn routes_snapshot(&self) -> Vec<RouteInfo> {
        let r = self.lock_routing();
        let mut v: Vec<RouteInfo> = r
            .all()
            .map(|(n, route)| RouteInfo {
                node: *n,
                next_hop: route.via,
                hops: u32::from(route.hops),
            })
            .collect();
        v.sort_by_key(|r| r.node);
        v
    }

    /// Sends watchers what changed since they last heard. Must be called with no other
    /// lock of this node held.
    fn notify_watchers(&self) {
        let mut w = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        if w.services.is_empty() && w.routes.is_empty() {
            return;
        }
        if !w.services.is_empty() {
            let now = self.services_snapshot();
            let key = |s: &ServiceInfo| (s.name.clone(), s.addr.node, s.addr.port);
            let mut events = Vec::new();
            for old in &w.last_services {
                if !now.iter().any(|n| key(n) == key(old)) {
                    events.push(ServiceEvent::Down(old.clone()));
                }
            }
            for n in &now {
                if !w.last_services.iter().any(|o| key(o) == key(n)) {
                    events.push(ServiceEvent::Up(n.clone()));
                }
            }
            w.services
                .retain(|tx| events.iter().all(|e| tx.try_send(e.clone()).is_ok()));
            w.last_services = now;
        }
        if !w.routes.is_empty() {
            let now = self.routes_snapshot();
            let mut events = Vec::new();
            for old in &w.last_routes {
                if !now.iter().any(|n| n.node == old.node) {
                    events.push(RouteEvent::Down(old.node));
                }
            }
            for n in &now {
                if !w.last_routes.contains(n) {
                    events.push(RouteEvent::Up(n.clone()));
                }
            }
            w.routes
                .retain(|tx| events.iter().all(|e| tx.try_send(e.clone()).is_ok()));
            w.last_routes = now;
        }
    }

    fn lock_routing(&self) -> std::sync::MutexGuard<'_, routing::Routing> {
        self.routing.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_router(&self) -> bool {
        self.cfg.role == Role::Router
    }

    fn link_up(&self, peer: NodeId, shard: u32, link: LinkId) {
        let mut r = self.lock_routing();
        let changes = r.link_up(self.id, link, peer, shard);
        // The new neighbour hears our whole table; the others what changed.
        if self.is_router() {
            for f in r.advert_for(link, None) {
                self.push(shard, Cmd::SendTo { link, frame: f });
            }
        }
        self.after_route_changes(&r, &changes, Some(link));
        drop(r);
        self.services_changed.notify_all();
        self.notify_watchers();
    }

    fn link_down(&self, link: LinkId) {
        let mut r = self.lock_routing();
        let changes = r.link_down(self.id, link);
        self.after_route_changes(&r, &changes, None);
        drop(r);
        let mut s = self.services.lock().unwrap_or_else(|e| e.into_inner());
        s.origins.retain(|_, o| {
            o.sources.retain(|&l| l != link);
            !o.sources.is_empty()
        });
        drop(s);
        self.services_changed.notify_all();
        self.notify_watchers();
    }

    /// A neighbour's ROUTES frame arrived over `link`.
    fn on_routes(&self, link: LinkId, entries: &[crate::proto::RouteEntry]) {
        let mut r = self.lock_routing();
        let changes = r.advert(self.id, link, entries);
        self.after_route_changes(&r, &changes, None);
        drop(r);
        if !changes.is_empty() {
            self.notify_watchers();
        }
    }

    /// Triggered updates to every neighbour (except `skip`, which got the full table),
    /// and withdrawal of services whose origin became unreachable.
    fn after_route_changes(
        &self,
        r: &routing::Routing,
        changes: &[routing::Change],
        skip: Option<LinkId>,
    ) {
        if changes.is_empty() {
            return;
        }
        if self.is_router() {
            let nodes: Vec<NodeId> = changes.iter().map(|(n, _)| *n).collect();
            for (link, shard) in r.links() {
                if Some(link) == skip {
                    continue;
                }
                for f in r.advert_for(link, Some(&nodes)) {
                    self.push(shard, Cmd::SendTo { link, frame: f });
                }
            }
        }
        let gone: Vec<NodeId> = changes
            .iter()
            .filter(|(_, route)| route.is_none())
            .map(|(n, _)| *n)
            .collect();
        if !gone.is_empty() {
            let mut s = self.services.lock().unwrap_or_else(|e| e.into_inner());
            for n in gone {
                s.origins.remove(&n);
            }
        }
        self.services_changed.notify_all();
    }

    /// Where an OPEN for another node goes next (PROTOCOL.md §10.1), or why not.
    fn relay_route(&self, h: &OpenHeader, from: LinkId) -> Result<routing::Route, ErrorCode> {
        if !self.is_router() {
            return Err(ErrorCode::NOT_ROUTER);
        }
        if h.hop_limit == 0 {
            return Err(ErrorCode::HOP_LIMIT);
        }
        match self.lock_routing().get(NodeId(h.dst_node)) {
            // Never back where it came from: that is a loop.
            Some(r) if r.link != from => Ok(r),
            _ => Err(ErrorCode::NO_ROUTE),
        }
    }

    /// Where an incoming OPEN for this node goes: the listener's queue and our address.
    fn route_incoming(
        &self,
        h: &OpenHeader,
    ) -> Result<(async_channel::Sender<Incoming>, Addr), ErrorCode> {
        let l = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let by_name = !h.service.is_empty();
        if by_name && h.env != self.cfg.env.as_bytes() {
            return Err(ErrorCode::NOT_FOUND);
        }
        let name = std::str::from_utf8(&h.service).unwrap_or("");
        let port = if h.dst_port != 0 {
            h.dst_port
        } else {
            *l.by_name.get(name).ok_or(ErrorCode::NOT_FOUND)?
        };
        let Some(e) = l.by_port.get(&port) else {
            return Err(if by_name {
                ErrorCode::NOT_FOUND
            } else {
                ErrorCode::REFUSED
            });
        };
        if by_name && e.name.as_deref() != Some(name) {
            return Err(ErrorCode::NOT_FOUND);
        }
        if e.tx.len() >= self.cfg.backlog {
            return Err(ErrorCode::REFUSED);
        }
        Ok((
            e.tx.clone(),
            Addr {
                node: self.id,
                port,
            },
        ))
    }

    fn local_ops(&self) -> Vec<ServiceOp> {
        let l = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let mut ops: Vec<ServiceOp> = l
            .by_port
            .iter()
            .filter_map(|(port, e)| {
                e.name.as_ref().map(|n| ServiceOp {
                    announce: true,
                    port: *port,
                    env: Bytes::copy_from_slice(self.cfg.env.as_bytes()),
                    name: Bytes::copy_from_slice(n.as_bytes()),
                })
            })
            .collect();
        drop(l);
        let s = self.services.lock().unwrap_or_else(|e| e.into_inner());
        ops.extend(s.addrs.iter().map(|a| addr_op(true, a)));
        ops
    }

    /// After an update from `origin`: join it directly if it is reached only through
    /// relays and advertises addresses. The lower node id dials, unless only one side
    /// listens.
    fn maybe_upgrade(self: &Arc<Self>, origin: NodeId) {
        if !self.cfg.direct_upgrade || self.stopped.load(Ordering::SeqCst) {
            return;
        }
        let direct = self.lock_routing().get(origin).is_some_and(|r| r.hops == 1);
        if direct {
            return;
        }
        let addrs = {
            let mut s = self.services.lock().unwrap_or_else(|e| e.into_inner());
            let we_listen = !s.addrs.is_empty();
            if we_listen && self.id > origin {
                return;
            }
            if s.upgrades
                .get(&origin)
                .is_some_and(|t| t.elapsed() < UPGRADE_RETRY)
            {
                return;
            }
            let Some(o) = s.origins.get(&origin) else {
                return;
            };
            let addrs: Vec<String> = o
                .entries
                .iter()
                .filter(|(env, _, _)| env == ADDR_ENV)
                .filter_map(|(_, name, _)| name.strip_prefix("tcp:").map(String::from))
                .collect();
            if addrs.is_empty() {
                return;
            }
            s.upgrades.insert(origin, Instant::now());
            addrs
        };
        let node = self.clone();
        let _ = std::thread::Builder::new()
            .name("astranet-upgrade".into())
            .spawn(move || {
                for a in addrs {
                    let Ok(sock) = std::net::TcpStream::connect_timeout(
                        &match a.parse() {
                            Ok(sa) => sa,
                            Err(_) => continue,
                        },
                        Duration::from_secs(2),
                    ) else {
                        continue;
                    };
                    let rx = node.add_link(Transport0::Std(sock), None);
                    match wait_reply(rx, Some(Instant::now() + node.cfg.join_timeout)) {
                        Ok(peer) if peer == origin => {
                            tracing::debug!(%origin, addr = %a, "joined directly");
                            return;
                        }
                        Ok(peer) => {
                            tracing::warn!(%origin, %peer, addr = %a, "address led to another node");
                        }
                        Err(e) => tracing::debug!(%origin, addr = %a, error = %e, "direct join failed"),
                    }
                }
            });
    }

    /// Full updates for ourselves and every origin we know (sent on link up).
    fn full_service_updates(&self) -> Vec<Frame> {
        if self.cfg.role == Role::Client {
            return Vec::new();
        }
        let version = self
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .version;
        let mut out = vec![Frame::Services(ServicesUpdate {
            origin: self.id.0,
            base_version: 0,
            version,
            full: true,
            hops: 0,
            ops: self.local_ops(),
            request: false,
        })];
        if self.is_router() {
            let s = self.services.lock().unwrap_or_else(|e| e.into_inner());
            for (origin, o) in &s.origins {
                out.push(origin_full(*origin, o));
            }
        }
        out
    }

    fn full_update_for(&self, origin: NodeId) -> Option<Frame> {
        if origin == self.id {
            return self.full_service_updates().into_iter().next();
        }
        let s = self.services.lock().unwrap_or_else(|e| e.into_inner());
        s.origins.get(&origin).map(|o| origin_full(origin, o))
    }

    /// Applies a SERVICES update that arrived over `link` (PROTOCOL.md §11.3) and
    /// forwards it. Returns a REQUEST to send back when a diff arrived out of order.
    fn apply_services(self: &Arc<Self>, link: LinkId, u: &ServicesUpdate) -> Option<Frame> {
        let origin = NodeId(u.origin);
        if origin == self.id {
            return None;
        }
        let mut s = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let known = s.origins.get(&origin).map(|o| o.version);
        let apply = match known {
            Some(v) if u.version <= v => {
                if let Some(o) = s.origins.get_mut(&origin) {
                    if !o.sources.contains(&link) {
                        o.sources.push(link);
                    }
                }
                return None;
            }
            _ if u.full => true,
            Some(v) => u.base_version == v,
            None => false,
        };
        if !apply {
            return Some(Frame::Services(ServicesUpdate {
                origin: u.origin,
                base_version: 0,
                version: 0,
                full: false,
                hops: 0,
                ops: vec![],
                request: true,
            }));
        }
        let o = s.origins.entry(origin).or_insert(Origin {
            version: 0,
            hops: u.hops.saturating_add(1),
            entries: vec![],
            sources: vec![],
        });
        if u.full {
            o.entries.clear();
        }
        for op in &u.ops {
            let env = String::from_utf8_lossy(&op.env).into_owned();
            let name = String::from_utf8_lossy(&op.name).into_owned();
            o.entries
                .retain(|(e, n, p)| !(e == &env && n == &name && *p == op.port));
            if op.announce {
                o.entries.push((env, name, op.port));
            }
        }
        o.version = u.version;
        o.hops = u.hops.saturating_add(1);
        if !o.sources.contains(&link) {
            o.sources.push(link);
        }
        drop(s);
        self.services_changed.notify_all();
        self.notify_watchers();
        self.maybe_upgrade(origin);
        if !self.is_router() {
            // Only routers carry other nodes' announcements (and their streams).
            return None;
        }
        // Flood onwards; nodes that already hold this version stop it.
        let fwd = Frame::Services(ServicesUpdate {
            hops: u.hops.saturating_add(1),
            ..u.clone()
        });
        for shard in 0..self.inboxes.len() as u32 {
            self.push(
                shard,
                Cmd::Broadcast {
                    frame: fwd.clone(),
                    except: Some(link),
                },
            );
        }
        None
    }

    /// Bumps our service version and announces one change everywhere.
    fn announce(&self, op: ServiceOp) {
        if self.cfg.role == Role::Client {
            return;
        }
        let (base, version) = {
            let mut s = self.services.lock().unwrap_or_else(|e| e.into_inner());
            s.version += 1;
            (s.version - 1, s.version)
        };
        let f = Frame::Services(ServicesUpdate {
            origin: self.id.0,
            base_version: base,
            version,
            full: false,
            hops: 0,
            ops: vec![op],
            request: false,
        });
        for shard in 0..self.inboxes.len() as u32 {
            self.push(
                shard,
                Cmd::Broadcast {
                    frame: f.clone(),
                    except: None,
                },
            );
        }
    }

    fn unbind(&self, port: u32) {
        let removed = {
            let mut l = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
            let e = l.by_port.remove(&port);
            if let Some(n) = e.as_ref().and_then(|e| e.name.as_ref()) {
                l.by_name.remove(n);
            }
            e
        };
        if let Some(ListenerEntry { name: Some(n), .. }) = removed {
            if !self.stopped.load(Ordering::SeqCst) {
                self.announce(ServiceOp {
                    announce: false,
                    port,
                    env: Bytes::copy_from_slice(self.cfg.env.as_bytes()),
                    name: Bytes::copy_from_slice(n.as_bytes()),
                });
            }
        }
        self.notify_watchers();
    }

    /// Resolves a dial target to a link, a header and the peer address. `Ok(None)`: a
    /// service that is not known (yet).
    /// Reachable instances of a service in our env: (hops, address, (shard, link)).
    fn instances(&self, name: &str, port: Option<u32>) -> Vec<(u8, Addr, (u32, LinkId))> {
        let s = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let r = self.lock_routing();
        let mut out = Vec::new();
        for (origin, o) in &s.origins {
            let Some(route) = r.get(*origin) else {
                continue;
            };
            for (env, n, p) in &o.entries {
                if n == name && env == &self.cfg.env && port.is_none_or(|w| w == *p) {
                    out.push((
                        route.hops,
                        Addr {
                            node: *origin,
                            port: *p,
                        },
                        (route.shard, route.link),
                    ));
                }
            }
        }
        out
    }

    fn resolve(
        &self,
        t: &Target,
        src_port: u32,
        key: Option<&[u8]>,
    ) -> std::io::Result<Option<DialReq>> {
        let local = Addr {
            node: self.id,
            port: src_port,
        };
        let mk = |shard_link: (u32, LinkId), dst: Addr, service: Option<&str>| DialReq {
            shard: shard_link.0,
            link: shard_link.1,
            header: OpenHeader {
                dst_node: dst.node.0,
                dst_port: dst.port,
                src_node: self.id.0,
                src_port,
                hop_limit: routing::INFINITY,
                env: if service.is_some() {
                    Bytes::copy_from_slice(self.cfg.env.as_bytes())
                } else {
                    Bytes::new()
                },
                service: service.map_or(Bytes::new(), |s| Bytes::copy_from_slice(s.as_bytes())),
            },
            local,
            peer: dst,
        };
        match t {
            Target::LocalPort(p) => Ok(Some(mk(
                self.loopback,
                Addr {
                    node: self.id,
                    port: *p,
                },
                None,
            ))),
            Target::Node(a) if a.node == self.id => Ok(Some(mk(self.loopback, *a, None))),
            Target::Node(a) => {
                let r = self.lock_routing();
                match r.get(a.node) {
                    Some(route) => Ok(Some(mk((route.shard, route.link), *a, None))),
                    None => Err(std::io::Error::new(
                        std::io::ErrorKind::HostUnreachable,
                        format!("no route to node {}", a.node),
                    )),
                }
            }
            Target::Service { name, port } => {
                // This node first, then directly linked nodes, at random among equals.
                {
                    let l = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(&p) = l.by_name.get(name) {
                        if port.is_none_or(|want| want == p) {
                            return Ok(Some(mk(
                                self.loopback,
                                Addr {
                                    node: self.id,
                                    port: p,
                                },
                                Some(name),
                            )));
                        }
                    }
                }
                let mut best = self.instances(name, *port);
                let Some(min) = best.iter().map(|b| b.0).min() else {
                    return Ok(None);
                };
                // A directly linked instance before a relayed one; at random among equals,
                // or by rendezvous hashing when the caller gave a key.
                best.retain(|b| b.0 == min);
                let i = match key {
                    Some(k) => rendezvous(k, best.iter().map(|b| b.1)),
                    None => rand::random_range(0..best.len()),
                };
                let (_, addr, sl) = best[i];
                Ok(Some(mk(sl, addr, Some(name))))
            }
        }
    }

    fn rejoin(self: &Arc<Self>, addr: String, why: LinkError) {
        let node = self.clone();
        tracing::warn!(%addr, error = %why, "link lost; reconnecting");
        let _ = std::thread::Builder::new()
            .name("astranet-rejoin".into())
            .spawn(move || {
                let mut delay = Duration::from_millis(50);
                while !node.stopped.load(Ordering::SeqCst) {
                    std::thread::sleep(delay);
                    match node.connect_link(&addr) {
                        Ok(peer) => {
                            tracing::info!(%addr, %peer, "rejoined");
                            return;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                            tracing::error!(%addr, error = %e, "join can no longer succeed; giving up");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(%addr, error = %e, retry_in = ?delay, "rejoin failed");
                            delay = (delay * 2).min(Duration::from_secs(10));
                        }
                    }
                }
            });
    }

    /// Connects once and waits for the handshake.
    fn connect_link(self: &Arc<Self>, addr: &str) -> std::io::Result<NodeId> {
        let s = std::net::TcpStream::connect(addr)?;
        let rx = self.add_link(Transport0::Std(s), Some(addr.to_string()));
        wait_reply(rx, Some(Instant::now() + self.cfg.join_timeout))
    }

    fn add_link(
        &self,
        t: Transport0,
        join: Option<String>,
    ) -> oneshot::Receiver<std::io::Result<NodeId>> {
        let (tx, rx) = oneshot::channel();
        let id = self.new_link_id();
        self.push(
            self.pick_shard(),
            Cmd::AddLink {
                id,
                transport: t,
                join,
                reply: Some(tx),
            },
        );
        rx
    }
}

/// Adds a watcher: it first hears every current item as `up`, then the changes that
/// `notify_watchers` sends. `last` is what watchers were last told (taken from
/// `snapshot` when this is the first watcher).
fn subscribe<I: Clone, E>(
    senders: &mut Vec<async_channel::Sender<E>>,
    last: &mut Vec<I>,
    snapshot: impl FnOnce() -> Vec<I>,
    up: impl Fn(I) -> E,
) -> async_channel::Receiver<E> {
    let (tx, rx) = async_channel::unbounded();
    if senders.is_empty() {
        *last = snapshot();
    }
    for item in last.iter() {
        let _ = tx.try_send(up(item.clone()));
    }
    senders.push(tx);
    rx
}

/// Rendezvous (highest random weight) hashing: the index of the address that `key`
/// maps to. Stable while the set is unchanged; a removed instance moves only its keys.
fn rendezvous(key: &[u8], addrs: impl Iterator<Item = Addr>) -> usize {
    use std::hash::{Hash, Hasher};
    let mut best = (0u64, 0usize);
    for (i, a) in addrs.enumerate() {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        a.node.0.hash(&mut h);
        a.port.hash(&mut h);
        let w = h.finish();
        if i == 0 || w > best.0 {
            best = (w, i);
        }
    }
    best.1
}

/// An address record (PROTOCOL.md §10.5).
fn addr_op(announce: bool, addr: &str) -> ServiceOp {
    ServiceOp {
        announce,
        port: 0,
        env: Bytes::from_static(ADDR_ENV.as_bytes()),
        name: Bytes::from(format!("tcp:{addr}")),
    }
}

fn origin_full(origin: NodeId, o: &Origin) -> Frame {
    Frame::Services(ServicesUpdate {
        origin: origin.0,
        base_version: 0,
        version: o.version,
        full: true,
        hops: o.hops,
        ops: o
            .entries
            .iter()
            .map(|(env, name, port)| ServiceOp {
                announce: true,
                port: *port,
                env: Bytes::copy_from_slice(env.as_bytes()),
                name: Bytes::copy_from_slice(name.as_bytes()),
            })
            .collect(),
        request: false,
    })
}

fn gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "node is shut down")
}

/// Blocking wait for a reply that carries an `io::Result`.
fn wait_reply<T>(
    mut rx: oneshot::Receiver<std::io::Result<T>>,
    deadline: Option<Instant>,
) -> std::io::Result<T> {
    match wait::wait(&mut rx, deadline) {
        wait::Waited::Done(r) => r,
        wait::Waited::Gone => Err(gone()),
        wait::Waited::TimedOut => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "timed out",
        )),
    }
}

/// Blocking helpers for the API crate.
mod wait_api {
    use super::*;

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
            wait::Waited::Done(r) => Wait::Done(r),
            wait::Waited::Gone => Wait::Done(Err(gone())),
            wait::Waited::TimedOut => Wait::TimedOut(rx),
        }
    }
}

/// Bytes read from a stream, as the chunks they arrived in (no copy). Empty means end
/// of stream.
#[derive(Debug, Default)]
pub struct Chunks {
    first: Bytes,
    rest: std::collections::VecDeque<Bytes>,
}

impl Chunks {
    /// Takes the next chunk, whole.
    pub fn pop(&mut self) -> Option<Bytes> {
        if self.first.is_empty() {
            return None;
        }
        let next = self.rest.pop_front().unwrap_or_default();
        Some(std::mem::replace(&mut self.first, next))
    }

    pub(crate) fn push(&mut self, b: Bytes) {
        if self.first.is_empty() {
            self.first = b;
        } else {
            self.rest.push_back(b);
        }
    }

    /// True if no bytes are left.
    pub fn is_empty(&self) -> bool {
        self.first.is_empty()
    }

    /// Bytes left.
    pub fn len(&self) -> usize {
        self.first.len() + self.rest.iter().map(Bytes::len).sum::<usize>()
    }

    /// Copies as many bytes as fit into `buf`, consuming them.
    pub fn copy_to(&mut self, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() && !self.first.is_empty() {
            let n = self.first.len().min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&self.first[..n]);
            let _ = self.first.split_to(n);
            done += n;
            if self.first.is_empty() {
                self.first = self.rest.pop_front().unwrap_or_default();
            }
        }
        done
    }
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

type Rx<T> = oneshot::Receiver<std::io::Result<T>>;

impl StreamRef {
    fn new(node: Arc<NodeShared>, shard: u32, key: StreamKey, local: Addr, peer: Addr) -> Self {
        Self {
            node,
            shard: shard as u16,
            key,
            local_port: local.port,
            peer,
            armed: true,
        }
    }

    /// Forget the stream without closing it (the shard refuses it itself).
    fn disarm(mut self) {
        self.armed = false;
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
        let (tx, rx) = oneshot::channel();
        self.node.push(
            u32::from(self.shard),
            Cmd::Read {
                key: self.key,
                max,
                reply: tx,
            },
        );
        rx
    }

    /// Hands bytes to the stream; the reply says how many were taken (at least one,
    /// once the stream has credit).
    pub fn write(&self, data: Bytes) -> Rx<usize> {
        let (tx, rx) = oneshot::channel();
        self.node.push(
            u32::from(self.shard),
            Cmd::Write {
                key: self.key,
                data,
                reply: tx,
            },
        );
        rx
    }

    /// Half-closes our direction once queued data is out.
    pub fn shutdown_write(&self) -> Rx<()> {
        let (tx, rx) = oneshot::channel();
        self.node.push(
            u32::from(self.shard),
            Cmd::ShutdownWrite {
                key: self.key,
                reply: tx,
            },
        );
        rx
    }

    /// Aborts the stream with `code` (RESET goes ahead of queued data).
    pub fn reset(&self, code: ErrorCode) {
        self.node.push(
            u32::from(self.shard),
            Cmd::Reset {
                key: self.key,
                code,
            },
        );
    }

    /// Another handle on the same stream.
    pub fn try_clone(&self) -> StreamRef {
        self.node.push(u32::from(self.shard), Cmd::AddRef(self.key));
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
            self.node
                .push(u32::from(self.shard), Cmd::Release(self.key));
        }
    }
}

/// A bound port or service; dropping it unbinds.
pub struct ListenerRef {
    node: Arc<NodeShared>,
    port: u32,
    name: Option<String>,
    rx: async_channel::Receiver<Incoming>,
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
        self.node.unbind(self.port);
    }
}

/// The engine side of a node: start, link, bind, dial, stop.
#[derive(Clone)]
pub struct NodeCore {
    shared: Arc<NodeShared>,
}

impl NodeCore {
    /// Starts the shards.
    pub fn start(cfg: NodeConfig) -> std::io::Result<NodeCore> {
        if cfg.shards == 0 || cfg.shards > 1024 {
            // (Shard numbers are kept as u16 in stream handles.)
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "shards must be between 1 and 1024",
            ));
        }
        if !cfg.env.is_empty() && !crate::types::valid_name(&cfg.env) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "invalid env {:?}: 1-255 of [A-Za-z0-9._-] starting with a letter",
                    cfg.env
                ),
            ));
        }
        let inboxes: Vec<_> = (0..cfg.shards).map(|_| Arc::new(Inbox::new())).collect();
        let shared = Arc::new(NodeShared {
            watchers: Mutex::default(),
            id: cfg.id,
            inboxes,
            listeners: Mutex::default(),
            routing: Mutex::default(),
            services: Mutex::new(Services {
                version: 1,
                ..Default::default()
            }),
            services_changed: Condvar::new(),
            next_link: AtomicU64::new(3),
            next_port: AtomicU32::new(1),
            next_shard: AtomicUsize::new(0),
            loopback: (0, 1),
            stopped: AtomicBool::new(false),
            threads: Mutex::default(),
            listen_sockets: Mutex::default(),
            cfg,
        });
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        for i in 0..shared.cfg.shards {
            let placement = match cores.get(i % cores.len().max(1)) {
                Some(c) if shared.cfg.pin_cores => glommio::Placement::Fixed(c.id),
                _ => glommio::Placement::Unbound,
            };
            let node = shared.clone();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let h = glommio::LocalExecutorBuilder::new(placement)
                .name(&format!("astranet-{i}"))
                .io_memory(256 << 10)
                .spawn(move || async move {
                    // The first timer sleep on an executor is slow (membarrier
                    // registration): take that cost now, not on a user's first call.
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                    let _ = ready_tx.send(());
                    run_shard(i as u32, node).await;
                })
                .map_err(|e| std::io::Error::other(format!("starting shard {i}: {e}")))?;
            ready_rx
                .recv_timeout(Duration::from_secs(10))
                .map_err(|_| std::io::Error::other(format!("shard {i} did not start")))?;
            shared
                .threads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(std::thread::spawn(move || {
                    let _ = h.join();
                }));
        }
        // The node's link to itself, so it can dial its own services.
        shared.push(0, Cmd::AddLoopback { a: 1, b: 2 });
        Ok(NodeCore { shared })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    /// This node's env ("" for none).
    pub fn env(&self) -> &str {
        &self.shared.cfg.env
    }

    fn check_running(&self) -> std::io::Result<()> {
        if self.shared.stopped.load(Ordering::SeqCst) {
            Err(gone())
        } else {
            Ok(())
        }
    }

    /// Listens for links on a TCP address; returns the address actually bound.
    pub fn listen(&self, addr: &str) -> std::io::Result<SocketAddr> {
        self.check_running()?;
        let l = std::net::TcpListener::bind(addr)?;
        let bound = l.local_addr()?;
        // Advertise where we can be joined (not an unspecified address: peers could not
        // use it).
        if self.shared.cfg.direct_upgrade && !bound.ip().is_unspecified() {
            let a = bound.to_string();
            self.shared
                .services
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .addrs
                .push(a.clone());
            self.shared.announce(addr_op(true, &a));
        }
        let closer = socket2::Socket::from(l.try_clone()?);
        self.shared
            .listen_sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(closer);
        let node = self.shared.clone();
        std::thread::Builder::new()
            .name("astranet-accept".into())
            .spawn(move || {
                for s in l.incoming() {
                    if node.stopped.load(Ordering::SeqCst) {
                        return;
                    }
                    match s {
                        Ok(s) => {
                            // The handshake result is reported by the link itself.
                            drop(node.add_link(Transport0::Std(s), None));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => return,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
            })?;
        Ok(bound)
    }

    /// Joins a node listening at `addr`, retrying with backoff until the join timeout;
    /// returns once the link is up. If the link dies later it is re-established.
    pub fn join(&self, addr: &str) -> std::io::Result<NodeId> {
        self.check_running()?;
        let deadline = Instant::now() + self.shared.cfg.join_timeout;
        let mut delay = Duration::from_millis(20);
        loop {
            match self.shared.connect_link(addr) {
                Ok(peer) => return Ok(peer),
                Err(e)
                    if Instant::now() + delay < deadline
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionRefused
                                | std::io::ErrorKind::ConnectionReset
                                | std::io::ErrorKind::ConnectionAborted
                        ) =>
                {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(std::io::Error::new(e.kind(), format!("join {addr}: {e}"))),
            }
        }
    }

    /// Runs a link over a reader and a writer (two halves of one byte stream).
    pub fn attach_split(
        &self,
        reader: Box<dyn Read + Send>,
        writer: Box<dyn Write + Send>,
        closer: Option<Box<dyn FnOnce() + Send>>,
    ) -> std::io::Result<NodeId> {
        self.check_running()?;
        let t = ThreadIo::spawn(reader, writer, closer)?;
        let rx = self.shared.add_link(Transport0::Threads(t), None);
        wait_reply(rx, Some(Instant::now() + self.shared.cfg.join_timeout))
    }

    /// Binds a port or service name.
    pub fn bind(&self, spec: &str) -> std::io::Result<ListenerRef> {
        self.check_running()?;
        let spec = BindSpec::parse(spec)?;
        let (tx, rx) = async_channel::unbounded();
        let port = {
            let mut l = self
                .shared
                .listeners
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(n) = &spec.name {
                if l.by_name.contains_key(n) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        format!("service {n:?} is already bound on this node"),
                    ));
                }
            }
            let port = match spec.port {
                Some(p) => {
                    if l.by_port.contains_key(&p) {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::AddrInUse,
                            format!("port {p} is already bound on this node"),
                        ));
                    }
                    p
                }
                None => loop {
                    let p = self.shared.ephemeral_port();
                    if !l.by_port.contains_key(&p) {
                        break p;
                    }
                },
            };
            l.by_port.insert(
                port,
                ListenerEntry {
                    name: spec.name.clone(),
                    tx,
                },
            );
            if let Some(n) = &spec.name {
                l.by_name.insert(n.clone(), port);
            }
            port
        };
        if let Some(n) = &spec.name {
            self.shared.announce(ServiceOp {
                announce: true,
                port,
                env: Bytes::copy_from_slice(self.shared.cfg.env.as_bytes()),
                name: Bytes::copy_from_slice(n.as_bytes()),
            });
        }
        self.shared.services_changed.notify_all();
        self.shared.notify_watchers();
        Ok(ListenerRef {
            node: self.shared.clone(),
            port,
            name: spec.name,
            rx,
        })
    }

    /// Starts a dial. Unknown services are waited for until `deadline` (they may not
    /// have been announced yet), then fail with `NotFound`.
    pub fn dial(&self, target: &str, deadline: Instant) -> std::io::Result<Rx<StreamRef>> {
        self.dial_with_key(target, None, deadline)
    }

    /// Like [`NodeCore::dial`]; among a service's instances, `key` picks the same one
    /// every time while the set of instances is unchanged (rendezvous hashing).
    pub fn dial_with_key(
        &self,
        target: &str,
        key: Option<&[u8]>,
        deadline: Instant,
    ) -> std::io::Result<Rx<StreamRef>> {
        self.check_running()?;
        let t = Target::parse(target)?;
        let src_port = self.shared.ephemeral_port();
        loop {
            if let Some(req) = self.shared.resolve(&t, src_port, key)? {
                let (tx, rx) = oneshot::channel();
                self.shared.push(req.shard, Cmd::Dial { req, reply: tx });
                return Ok(rx);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no service {target:?} is known"),
                ));
            }
            let s = self
                .shared
                .services
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let _ = self
                .shared
                .services_changed
                .wait_timeout(s, (deadline - now).min(Duration::from_millis(50)));
        }
    }

    /// Services visible to this node (its env only), this node's first.
    pub fn services(&self) -> Vec<ServiceInfo> {
        self.shared.services_snapshot()
    }

    /// Nodes this node can reach, with next hop and distance.
    pub fn routes(&self) -> Vec<RouteInfo> {
        self.shared.routes_snapshot()
    }

    /// Changes to [`NodeCore::services`], starting with the current services as `Up`.
    pub fn watch_services(&self) -> async_channel::Receiver<ServiceEvent> {
        let mut w = self
            .shared
            .watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let w = &mut *w;
        subscribe(
            &mut w.services,
            &mut w.last_services,
            || self.shared.services_snapshot(),
            ServiceEvent::Up,
        )
    }

    /// Changes to [`NodeCore::routes`], starting with the current routes as `Up`.
    pub fn watch_routes(&self) -> async_channel::Receiver<RouteEvent> {
        let mut w = self
            .shared
            .watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let w = &mut *w;
        subscribe(
            &mut w.routes,
            &mut w.last_routes,
            || self.shared.routes_snapshot(),
            RouteEvent::Up,
        )
    }

    /// Whether `shutdown` ran.
    pub fn is_shut_down(&self) -> bool {
        self.shared.stopped.load(Ordering::SeqCst)
    }

    /// GOAWAY on every link, a short drain, then the shards stop. Idempotent.
    pub fn shutdown(&self) {
        if self.shared.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        for s in self
            .shared
            .listen_sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        // Withdraw our services (an empty full update), then stop the shards.
        {
            let mut l = self
                .shared
                .listeners
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            l.by_port.clear();
            l.by_name.clear();
        }
        if self.shared.cfg.role != Role::Client {
            let version = {
                let mut s = self
                    .shared
                    .services
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                s.version += 1;
                s.version
            };
            let f = Frame::Services(ServicesUpdate {
                origin: self.shared.id.0,
                base_version: 0,
                version,
                full: true,
                hops: 0,
                ops: vec![],
                request: false,
            });
            for i in 0..self.shared.inboxes.len() as u32 {
                self.shared.push(
                    i,
                    Cmd::Broadcast {
                        frame: f.clone(),
                        except: None,
                    },
                );
            }
        }
        let mut waits = Vec::new();
        for i in 0..self.shared.inboxes.len() as u32 {
            let (tx, rx) = oneshot::channel();
            self.shared.push(
                i,
                Cmd::Stop {
                    code: ErrorCode::SHUTDOWN,
                    reply: tx,
                },
            );
            waits.push(rx);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for rx in waits {
            let _ = wait_reply(rx, Some(deadline));
        }
        let me = std::thread::current().id();
        let threads: Vec<_> = self
            .shared
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for t in threads {
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
        self.shared.services_changed.notify_all();
    }

    /// Links (including the node's two loopback ends) and streams with state, summed
    /// over all shards. Streams are freed once both ends closed them.
    pub fn stats(&self) -> std::io::Result<(usize, usize)> {
        self.check_running()?;
        let mut total = (0, 0);
        for i in 0..self.shared.inboxes.len() as u32 {
            let (tx, rx) = oneshot::channel();
            self.shared.push(i, Cmd::Stats { reply: tx });
            let (l, s) = wait_reply(rx, Some(Instant::now() + Duration::from_secs(10)))?;
            total.0 += l;
            total.1 += s;
        }
        Ok(total)
    }
}

async fn run_shard(idx: u32, node: Arc<NodeShared>) {
    let inbox = node.inboxes[idx as usize].clone();
    let shard = Rc::new(Shard::new(idx, node));
    glommio::spawn_local(shard.clone().run_timers()).detach();
    let mut batch = Vec::with_capacity(256);
    loop {
        inbox.next_batch(&mut batch, 256).await;
        for c in batch.drain(..) {
            shard.handle(c);
        }
        shard.flush();
        if shard.is_stopped() {
            return;
        }
    }
}
