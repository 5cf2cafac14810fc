//! [`NodeCore`]: starting a node's shards, linking, binding, dialing, stopping.
//!
//! User threads run this code. They never take a lock a shard thread takes: they push
//! commands into shard inboxes, read the published view, and lock only the registry
//! of their own binds.

use super::config::{NodeConfig, Role};
use super::control::Msg;
use super::dial::DialWait;
use super::discovery::{Entry, ADDR_ENV};
use super::errors::node_gone;
use super::handle::{ListenerRef, Rx};
use super::inbox::Inbox;
use super::io::ThreadIo;
use super::listeners::{ListenerEntry, Registry};
use super::shard::Shard;
use super::view::{self, RouteEvent, RouteInfo, ServiceEvent, ServiceInfo};
use super::watch::WATCH_BACKLOG;
use super::{wait_api::wait_timeout, wait_api::Wait, Cmd, NodeShared, Transport0};
use crate::proto::{ErrorCode, LinkError};
use crate::types::{Addr, BindSpec, NodeId, Target};
use bytes::Bytes;
use futures_channel::oneshot;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Node-wide figures, from [`NodeCore::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Links to other nodes, established or in handshake (not the node's own
    /// loopback pair).
    pub links: usize,
    /// Of `links`, those still in their handshake.
    pub handshaking: usize,
    /// Streams holding state, on every link (the loopback pair included).
    pub streams: usize,
    /// Streams with a mailbox attached now (busy streams; an idle one holds none).
    pub mailboxes: usize,
    /// Remote origins whose services this node holds.
    pub origins: usize,
    /// Remote service entries held (all envs, address records included).
    pub service_entries: usize,
    /// Nodes this node has a route to.
    pub routes: usize,
    /// Times a peer hit one of this node's limits since it started.
    pub limit_hits: u64,
    /// Service announcements (SERVICES updates) rejected since the node started
    /// because their origin did not sign them: forged or altered by a router on the
    /// path (signed meshes only; PROTOCOL.md §11.5).
    pub rejected_announcements: u64,
    /// Bytes received on links since the node started (all links, closed ones too).
    pub bytes_in: u64,
    /// Bytes sent on links since the node started.
    pub bytes_out: u64,
    /// Frames received since the node started.
    pub frames_in: u64,
    /// Frames sent since the node started.
    pub frames_out: u64,
    /// Streams opened since the node started: dialed by us, or accepted from peers.
    pub streams_opened: u64,
    /// Streams peers opened that this node refused (no listener, backlog full, not a
    /// router, no route, limits), since it started.
    pub refused_opens: u64,
    /// Resets received from peers, by error code (PROTOCOL.md §12).
    pub resets_by_code: std::collections::BTreeMap<u32, u64>,
    /// Streams this node relayed for others since it started, and those relayed now.
    pub relayed_streams: u64,
    /// Relayed streams in flight now.
    pub relaying: usize,
    /// Bytes this node relayed for others (both directions) since it started.
    pub relayed_bytes: u64,
    /// Links refused at their handshake for security reasons (TLS required or not
    /// configured, untrusted or expired certificate, HELLO claiming another node id
    /// than the certificate) since the node started.
    pub refused_links: u64,
}

/// One link to another node, from [`NodeCore::links`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// The peer (unknown while the handshake runs).
    pub peer: Option<NodeId>,
    /// The peer's socket address (TCP links).
    pub addr: Option<SocketAddr>,
    /// Round-trip time measured by the latest answered keep-alive PING.
    pub rtt: Option<Duration>,
    /// Streams with state on the link.
    pub streams: usize,
    /// Bytes received and sent on the link.
    pub bytes_in: u64,
    /// Bytes sent on the link.
    pub bytes_out: u64,
    /// How long the link exists.
    pub age: Duration,
}

impl NodeStats {
    /// Adds another shard's figures.
    pub(crate) fn add(&mut self, s: &NodeStats) {
        self.links += s.links;
        self.handshaking += s.handshaking;
        self.streams += s.streams;
        self.mailboxes += s.mailboxes;
        self.origins += s.origins;
        self.service_entries += s.service_entries;
        self.routes += s.routes;
        self.bytes_in += s.bytes_in;
        self.bytes_out += s.bytes_out;
        self.frames_in += s.frames_in;
        self.frames_out += s.frames_out;
        self.streams_opened += s.streams_opened;
        self.refused_opens += s.refused_opens;
        for (c, n) in &s.resets_by_code {
            *self.resets_by_code.entry(*c).or_default() += n;
        }
        self.relayed_streams += s.relayed_streams;
        self.relaying += s.relaying;
        self.relayed_bytes += s.relayed_bytes;
        self.refused_links += s.refused_links;
    }
}

/// Blocking wait for a reply that carries an `io::Result`.
pub(crate) fn wait_reply<T>(
    rx: oneshot::Receiver<io::Result<T>>,
    deadline: Option<Instant>,
) -> io::Result<T> {
    match wait_timeout(rx, deadline) {
        Wait::Done(r) => r,
        Wait::TimedOut(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
    }
}

/// The entry a service name is announced as.
fn service_entry(env: &str, name: &str, port: u32) -> Entry {
    Entry {
        env: Bytes::copy_from_slice(env.as_bytes()),
        name: Bytes::copy_from_slice(name.as_bytes()),
        port,
    }
}

/// An address record (PROTOCOL.md §10.5).
fn addr_entry(addr: &str) -> Entry {
    Entry {
        env: Bytes::from_static(ADDR_ENV.as_bytes()),
        name: Bytes::from(format!("tcp:{addr}")),
        port: 0,
    }
}

impl NodeShared {
    pub(crate) fn unbind(&self, port: u32) {
        let mut r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        self.unbind_locked(&mut r, port);
    }

    /// Releases `port`. Commands go out under the registry lock, so a bind of the same
    /// name that follows is seen after this unbind everywhere.
    pub(crate) fn unbind_locked(&self, r: &mut Registry, port: u32) {
        let env = &self.cfg.env;
        let name = r.release(port, |n| service_entry(env, n, port).wire_len());
        self.push_all(|| Cmd::Unlisten(port));
        if let Some(n) = name {
            self.control(Msg::Local {
                announce: false,
                entry: service_entry(env, &n, port),
            });
        }
    }

    /// The part of a bind done under the registry lock: reserves the port or name and
    /// tells every shard. Every shard must ack (the returned replies) before the bind
    /// is announced with [`NodeShared::bind_announce`]: a dial right after `bind` must
    /// find the listener, wherever its link lives.
    #[allow(clippy::type_complexity)]
    pub(crate) fn bind_locked(
        self: &Arc<Self>,
        r: &mut Registry,
        spec: &BindSpec,
    ) -> io::Result<(ListenerRef, Vec<oneshot::Receiver<io::Result<()>>>)> {
        let env = &self.cfg.env;
        let entry_bytes = spec
            .name
            .as_ref()
            .map_or(0, |n| service_entry(env, n, 0).wire_len());
        let port = r.reserve(
            spec,
            || self.ephemeral_port(),
            entry_bytes,
            self.cfg.limits.max_update_bytes,
        )?;
        let (tx, rx) = async_channel::unbounded();
        let e = ListenerEntry {
            port,
            name: spec.name.clone(),
            tx,
        };
        // From here on, dropping the handle (also on the error path) unbinds.
        let listener = ListenerRef {
            node: self.clone(),
            port,
            name: spec.name.clone(),
            rx,
            on_shard: false,
        };
        let mut acks = Vec::new();
        self.push_all(|| {
            let (tx, rx) = oneshot::channel();
            acks.push(rx);
            Cmd::Listen(e.clone(), tx)
        });
        Ok((listener, acks))
    }

    /// Announces a bound name, once every shard routes to it.
    pub(crate) fn bind_announce(&self, l: &ListenerRef) {
        if let Some(n) = &l.name {
            self.control(Msg::Local {
                announce: true,
                entry: service_entry(&self.cfg.env, n, l.port),
            });
        }
    }

    /// Reconnects a joined address after its link was lost, with backoff. One thread
    /// per address the user joined (not per peer): it ends once the link is back, or
    /// when the join can no longer succeed.
    pub(crate) fn rejoin(self: &Arc<Self>, addr: String, why: LinkError) {
        let node = self.clone();
        tracing::warn!(%addr, error = %why, "link lost; reconnecting");
        let _ = std::thread::Builder::new().name("astranet-rejoin".into()).spawn(move || {
            let mut delay = Duration::from_millis(50);
            while !node.stopped.load(Ordering::SeqCst) {
                std::thread::sleep(delay);
                match node.connect_link(&addr) {
                    Ok(peer) => {
                        tracing::info!(%addr, %peer, "rejoined");
                        return;
                    }
                    Err(e) if e.kind() == io::ErrorKind::InvalidData => {
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
    fn connect_link(self: &Arc<Self>, addr: &str) -> io::Result<NodeId> {
        let s = std::net::TcpStream::connect(addr)?;
        let rx = self.add_link(Transport0::Std(s), Some(addr.to_string()), false);
        wait_reply(rx, Some(Instant::now() + self.cfg.join_timeout))
    }

    /// An accepted connection: linked, unless the node is at its link or handshake
    /// cap (then it is closed at once, PROTOCOL.md §13).
    fn accepted(&self, s: std::net::TcpStream) {
        let l = &self.cfg.limits;
        let links = self.links.fetch_add(1, Ordering::Relaxed);
        let hs = self.handshaking.fetch_add(1, Ordering::Relaxed);
        if links >= l.max_links || hs >= l.max_handshaking {
            self.links.fetch_sub(1, Ordering::Relaxed);
            self.handshaking.fetch_sub(1, Ordering::Relaxed);
            self.hit_limit(
                if links >= l.max_links {
                    "links"
                } else {
                    "connections in handshake"
                },
                1,
            );
            drop(s);
            return;
        }
        // The handshake result is reported by the link itself.
        drop(self.add_link(Transport0::Std(s), None, true));
    }
}

/// The engine side of a node: start, link, bind, dial, stop.
#[derive(Clone)]
pub struct NodeCore {
    shared: Arc<NodeShared>,
}

impl NodeCore {
    /// Starts the shards.
    pub fn start(mut cfg: NodeConfig) -> io::Result<NodeCore> {
        if cfg.shards == 0 || cfg.shards > 1024 {
            // (Shard numbers are kept as u16 in stream handles.)
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "shards must be between 1 and 1024",
            ));
        }
        if !cfg.env.is_empty() && !crate::types::valid_name(&cfg.env) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "invalid env {:?}: 1-255 of [A-Za-z0-9._-] starting with a letter",
                    cfg.env
                ),
            ));
        }
        let tls = match &cfg.tls {
            Some(t) => {
                // The node is who its certificate says.
                cfg.id = t.id();
                Some(arc_swap::ArcSwap::from_pointee(t.build()?))
            }
            None => None,
        };
        let inboxes: Vec<_> = (0..cfg.shards).map(|_| Arc::new(Inbox::new())).collect();
        let mail = (0..cfg.shards).map(|_| Default::default()).collect();
        let shared = Arc::new(NodeShared {
            id: cfg.id,
            inboxes,
            mail,
            registry: Mutex::new(Registry::default()),
            view: view::Published::new(),
            next_link: AtomicU64::new(3),
            next_port: AtomicU32::new(1),
            next_shard: AtomicUsize::new(0),
            loopback: (0, 1),
            stopped: AtomicBool::new(false),
            links: AtomicUsize::new(0),
            handshaking: AtomicUsize::new(0),
            limit_hits: AtomicU64::new(0),
            rejected_announcements: AtomicU64::new(0),
            tls,
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
                .map_err(|e| io::Error::other(format!("starting shard {i}: {e}")))?;
            ready_rx
                .recv_timeout(Duration::from_secs(10))
                .map_err(|_| io::Error::other(format!("shard {i} did not start")))?;
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

    /// What the node's shards and handles share (for the engine's own tests).
    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<NodeShared> {
        &self.shared
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    /// This node's env ("" for none).
    pub fn env(&self) -> &str {
        &self.shared.cfg.env
    }

    /// Plaintext beyond loopback only when chosen: a node without TLS that was not
    /// told `plaintext` refuses to listen on or join a non-loopback address.
    fn check_plaintext(&self, what: &str, addr: &str) -> io::Result<()> {
        let cfg = &self.shared.cfg;
        if cfg.tls.is_some() || cfg.plaintext {
            return Ok(());
        }
        use std::net::ToSocketAddrs;
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
        if !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()) {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "refusing to {what} {addr} in plaintext: anyone on the network could join, read and spoof this mesh; configure TLS (NodeBuilder::tls, --tls-*) or choose plaintext explicitly (NodeBuilder::plaintext, --plaintext)"
            ),
        ))
    }

    fn check_running(&self) -> io::Result<()> {
        if self.shared.stopped.load(Ordering::SeqCst) {
            Err(node_gone())
        } else {
            Ok(())
        }
    }

    /// Listens for links on a TCP address; returns the address actually bound.
    pub fn listen(&self, addr: &str) -> io::Result<SocketAddr> {
        self.check_running()?;
        self.check_plaintext("listen on", addr)?;
        let l = std::net::TcpListener::bind(addr)?;
        let bound = l.local_addr()?;
        // Advertise where we can be joined (not an unspecified address: peers could not
        // use it).
        if self.shared.cfg.direct_upgrade && !bound.ip().is_unspecified() {
            let a = bound.to_string();
            self.shared
                .registry
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .addrs
                .push(a.clone());
            self.shared.control(Msg::Local {
                announce: true,
                entry: addr_entry(&a),
            });
        }
        let closer = socket2::Socket::from(l.try_clone()?);
        self.shared
            .listen_sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(closer);
        let node = self.shared.clone();
        // One accept thread per `listen` call (user-chosen, not per peer).
        std::thread::Builder::new()
            .name("astranet-accept".into())
            .spawn(move || {
                for s in l.incoming() {
                    if node.stopped.load(Ordering::SeqCst) {
                        return;
                    }
                    match s {
                        Ok(s) => node.accepted(s),
                        Err(e) if e.kind() == io::ErrorKind::InvalidInput => return,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            // Out of descriptors, typically: give the node a moment.
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
            })?;
        Ok(bound)
    }

    /// Joins a node listening at `addr`, retrying with backoff until the join timeout;
    /// returns once the link is up. If the link dies later it is re-established.
    pub fn join(&self, addr: &str) -> io::Result<NodeId> {
        self.check_running()?;
        self.check_plaintext("join", addr)?;
        let deadline = Instant::now() + self.shared.cfg.join_timeout;
        let mut delay = Duration::from_millis(20);
        loop {
            match self.shared.connect_link(addr) {
                Ok(peer) => return Ok(peer),
                Err(e)
                    if Instant::now() + delay < deadline
                        && matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionRefused
                                | io::ErrorKind::ConnectionReset
                                | io::ErrorKind::ConnectionAborted
                        ) =>
                {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(io::Error::new(e.kind(), format!("join {addr}: {e}"))),
            }
        }
    }

    /// Runs a link over a reader and a writer (two halves of one byte stream).
    pub fn attach_split(
        &self,
        reader: Box<dyn Read + Send>,
        writer: Box<dyn Write + Send>,
        closer: Option<Box<dyn FnOnce() + Send>>,
    ) -> io::Result<NodeId> {
        self.check_running()?;
        if self.shared.tls.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "attach: this node requires TLS on every link, and an attached byte stream \
                 carries plaintext (attach has no TLS client and server roles); use \
                 listen/join, or a node without TLS over a stream you secured yourself",
            ));
        }
        let t = ThreadIo::spawn(reader, writer, closer)?;
        let rx = self.shared.add_link(Transport0::Threads(t), None, false);
        wait_reply(rx, Some(Instant::now() + self.shared.cfg.join_timeout))
    }

    /// Replaces this node's certificate, key and trust without a restart. Links made
    /// from now on use the new ones (and refuse peers the new trust refuses); links
    /// already up, and their streams, are unaffected. The new certificate must name
    /// this node's id. Fails with `InvalidInput` on a plaintext node or another id.
    pub fn reload_tls(&self, tls: super::TlsConfig) -> io::Result<()> {
        self.check_running()?;
        let Some(cur) = &self.shared.tls else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "reload_tls: this node runs plaintext; TLS is chosen when the node starts",
            ));
        };
        if tls.id() != self.shared.id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "reload_tls: the new certificate is for node {}, but this node is {}",
                    tls.id(),
                    self.shared.id
                ),
            ));
        }
        cur.store(Arc::new(tls.build()?));
        // Our announcements are signed with the new key from now on: re-announce.
        self.shared.control(Msg::CredentialsChanged);
        tracing::info!(node = %self.shared.id, "TLS certificate and trust reloaded");
        Ok(())
    }

    /// Whether links run TLS.
    pub fn is_tls(&self) -> bool {
        self.shared.tls.is_some()
    }

    /// Binds a port or service name.
    pub fn bind(&self, spec: &str) -> io::Result<ListenerRef> {
        self.check_running()?;
        let spec = BindSpec::parse(spec)?;
        let (listener, acks) = {
            let mut r = self
                .shared
                .registry
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.shared.bind_locked(&mut r, &spec)?
        };
        let deadline = Some(Instant::now() + Duration::from_secs(10));
        for rx in acks {
            wait_reply(rx, deadline)?;
        }
        self.shared.bind_announce(&listener);
        Ok(listener)
    }

    /// Starts a dial. A service not announced yet is waited for until `deadline`,
    /// then the dial fails with `NotFound`. Nothing blocks here: the reply says how
    /// the dial ended.
    pub fn dial(&self, target: &str, deadline: Instant) -> io::Result<Rx<super::StreamRef>> {
        self.dial_with_key(target, None, deadline)
    }

    /// Like [`NodeCore::dial`]; among a service's instances, `key` picks the same one
    /// every time while the set of instances is unchanged (rendezvous hashing).
    pub fn dial_with_key(
        &self,
        target: &str,
        key: Option<&[u8]>,
        deadline: Instant,
    ) -> io::Result<Rx<super::StreamRef>> {
        self.check_running()?;
        let t = Target::parse(target)?;
        let src_port = self.shared.ephemeral_port();
        let view = self.shared.view.load();
        let (reply, rx) = oneshot::channel();
        match self.shared.resolve(&view, &t, src_port, key)? {
            Some(req) => self.shared.push(req.shard, Cmd::Dial { req, reply }),
            None => {
                let Target::Service { name, port } = t else {
                    unreachable!("only services resolve to nothing")
                };
                self.shared.control(Msg::Dial(DialWait {
                    name,
                    port,
                    key: key.map(<[u8]>::to_vec),
                    src_port,
                    deadline,
                    reply,
                }));
            }
        }
        Ok(rx)
    }

    /// False if `target` names a service that neither this node nor any reachable
    /// node announces right now; true for any other target.
    pub fn is_known(&self, target: &str) -> bool {
        let Ok(t @ Target::Service { .. }) = Target::parse(target) else {
            return true;
        };
        let view = self.shared.view.load();
        matches!(self.shared.resolve(&view, &t, 0, None), Ok(Some(_)))
    }

    /// Services visible to this node (its env only), this node's first.
    pub fn services(&self) -> Vec<ServiceInfo> {
        let mut out = Vec::new();
        if self.shared.cfg.role != Role::Client {
            let r = self
                .shared
                .registry
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for (name, port) in &r.by_name {
                out.push(ServiceInfo {
                    name: name.clone(),
                    addr: Addr {
                        node: self.shared.id,
                        port: *port,
                    },
                    hops: 0,
                });
            }
        }
        let view = self.shared.view.load();
        out.extend(view.services.iter().filter_map(|k| view.service_info(k)));
        out
    }

    /// How many shards the node runs.
    pub fn shards(&self) -> usize {
        self.shared.inboxes.len()
    }

    /// The shard that holds the link streams to `node` take right now (the first
    /// hop's link), if `node` is reachable; this node's own streams (dialing itself)
    /// live on shard 0. A task placed there with [`NodeCore::spawn_on`] reaches
    /// `node` with no cross-thread hop.
    pub fn shard_of(&self, node: NodeId) -> Option<usize> {
        if node == self.shared.id {
            return Some(self.shared.loopback.0 as usize);
        }
        let view = self.shared.view.load();
        view.routes.get(&node).map(|r| r.shard as usize)
    }

    /// Runs a task on shard `shard` of this node. `f` is sent to the shard and called
    /// there with a [`LocalShard`](super::LocalShard); the future it returns runs on
    /// that shard's executor and need not be `Send`. The receiver gets the task's
    /// output; it is cancelled if the task panicked or the node shut down first.
    pub fn spawn_on<F, Fut, T>(&self, shard: usize, f: F) -> io::Result<oneshot::Receiver<T>>
    where
        F: FnOnce(super::LocalShard) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T> + 'static,
        T: Send + 'static,
    {
        self.check_running()?;
        if shard >= self.shards() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no shard {shard}: the node runs {} shards", self.shards()),
            ));
        }
        let (tx, rx) = oneshot::channel();
        let start: super::shard::local::SpawnFn = Box::new(move |local| {
            super::shard::local::spawn_detached(async move {
                use futures_util::FutureExt;
                // A panicking task must not take the shard down with it.
                let r = std::panic::AssertUnwindSafe(f(local)).catch_unwind().await;
                match r {
                    Ok(v) => {
                        let _ = tx.send(v);
                    }
                    Err(_) => tracing::error!(shard, "a task started with spawn_on panicked"),
                }
            });
        });
        self.shared.push(shard as u32, Cmd::Spawn(start));
        Ok(rx)
    }

    /// Nodes this node can reach, with next hop and distance.
    pub fn routes(&self) -> Vec<RouteInfo> {
        let view = self.shared.view.load();
        let mut v: Vec<RouteInfo> = view
            .routes
            .iter()
            .map(|(n, r)| RouteInfo::new(*n, r))
            .collect();
        v.sort_by_key(|r| r.node);
        v
    }

    /// Changes to [`NodeCore::services`], starting with the current services as `Up`.
    /// A watcher that falls 65,536 events behind is closed.
    pub fn watch_services(&self) -> async_channel::Receiver<ServiceEvent> {
        let (tx, rx) = async_channel::bounded(WATCH_BACKLOG);
        self.shared.control(Msg::WatchServices(tx));
        rx
    }

    /// Changes to [`NodeCore::routes`], starting with the current routes as `Up`.
    /// A watcher that falls 65,536 events behind is closed.
    pub fn watch_routes(&self) -> async_channel::Receiver<RouteEvent> {
        let (tx, rx) = async_channel::bounded(WATCH_BACKLOG);
        self.shared.control(Msg::WatchRoutes(tx));
        rx
    }

    /// Whether `shutdown` ran.
    pub fn is_shut_down(&self) -> bool {
        self.shared.stopped.load(Ordering::SeqCst)
    }

    /// Withdraws our services, GOAWAY on every link, a short drain, then the shards
    /// stop. Idempotent.
    pub fn shutdown(&self) {
        let node = &self.shared;
        if node.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        for s in node
            .listen_sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        // Withdraw our services (an empty full update) before the links go away.
        let (tx, rx) = oneshot::channel();
        node.control(Msg::Shutdown(tx));
        let _ = wait_reply(rx, Some(Instant::now() + Duration::from_secs(5)));
        let mut waits = Vec::new();
        for i in 0..node.inboxes.len() as u32 {
            let (tx, rx) = oneshot::channel();
            node.push(
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
        let threads: Vec<_> = node
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
    }

    /// Every link to another node, with its peer, address, RTT and traffic.
    pub fn links(&self) -> io::Result<Vec<LinkInfo>> {
        self.check_running()?;
        let deadline = Some(Instant::now() + Duration::from_secs(10));
        let mut out = Vec::new();
        for i in 0..self.shared.inboxes.len() as u32 {
            let (tx, rx) = oneshot::channel();
            self.shared.push(i, Cmd::Links { reply: tx });
            out.extend(wait_reply(rx, deadline)?);
        }
        out.sort_by_key(|l| (l.peer, l.addr));
        Ok(out)
    }

    /// Node-wide figures, summed over all shards.
    pub fn stats(&self) -> io::Result<NodeStats> {
        self.check_running()?;
        let mut total = NodeStats::default();
        let deadline = Some(Instant::now() + Duration::from_secs(10));
        for i in 0..self.shared.inboxes.len() as u32 {
            let (tx, rx) = oneshot::channel();
            self.shared.push(i, Cmd::Stats { reply: tx });
            total.add(&wait_reply(rx, deadline)?);
        }
        // Read last: the shards' figures include every input processed so far.
        total.limit_hits = self.shared.limit_hits.load(Ordering::Relaxed);
        total.rejected_announcements = self.shared.rejected_announcements.load(Ordering::Relaxed);
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
        shard.handle_batch(&mut batch);
        shard.flush();
        if shard.is_stopped() {
            shard.fail_all_mail();
            return;
        }
        if shard.take_retried() {
            // A user thread holds a mailbox lock: let the links' tasks run before the
            // queued retry looks again, rather than spin on it.
            futures_lite::future::yield_now().await;
        }
    }
}
