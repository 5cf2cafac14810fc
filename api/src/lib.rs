//! # astranet
//!
//! Millions of independent streams between machines, multiplexed over one link per
//! pair of nodes, on a flat virtual network: every node has a random [`NodeId`],
//! listeners bind a `u32` port, a service name or both, and clients dial a node and
//! port or just a service name.
//!
//! Streams behave like TCP sockets: [`Stream`] implements `std::io::Read`/`Write` for
//! threaded code, [`AsyncStream`] the `futures-io` traits for async code (tokio users
//! adapt with `tokio_util::compat`).
//!
//! ```
//! use std::io::{Read, Write};
//! // Two nodes in one process, joined over TCP loopback.
//! let server = astranet::Node::builder().shards(1).build()?;
//! let client = astranet::Node::builder().shards(1).build()?;
//! let addr = server.listen("127.0.0.1:0")?;
//! client.join(&addr.to_string())?;
//!
//! let listener = server.bind("echo:7")?;
//! let t = std::thread::spawn(move || -> std::io::Result<()> {
//!     let mut s = listener.accept()?;
//!     let mut buf = Vec::new();
//!     s.read_to_end(&mut buf)?;  // until the client half-closes
//!     s.write_all(&buf)
//! });
//! let mut s = client.dial_timeout("echo", std::time::Duration::from_secs(5))?;
//! s.write_all(b"ping")?;
//! s.shutdown_write()?;
//! let mut back = String::new();
//! s.read_to_string(&mut back)?;
//! assert_eq!(back, "ping");
//! t.join().unwrap()?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! ## Cargo features
//!
//! All on by default; `default-features = false` leaves only the core above.
//!
//! - `tokio`: [`TokioStream`] (tokio's IO traits), [`Incoming`], and [`forward`]
//!   (TCP in and out of the mesh).
//! - `http`: [`http`], a hyper-util connector and a hyper server over streams.
//! - `grpc`: [`grpc`], tonic's `Connected` for streams (`serve_with_incoming`).
//! - `cli`: the `astranet` and `astranet-node` binaries.
//! - `metrics`: [`metrics::record`] / [`metrics::publish`], the node's figures through
//!   the `metrics` facade.
//! - `dev-certs`: [`certs`], a development CA and node certificates for TLS links.
//!
//! ## Security
//!
//! A node built with [`NodeBuilder::tls`] runs TLS 1.3 on every link, mutually
//! authenticated: its peers must present a certificate its trust accepts (a cluster CA,
//! or a pinned set), and a peer's node id is the one its certificate names, so no node
//! can claim an id it has no key for. Without `tls`, links are plaintext and anyone
//! who reaches a listen port joins the mesh: fine on loopback and in tests only.
//! README "Security" says what TLS protects and what it does not (relays see relayed
//! bytes: TLS is hop by hop).
//!
//! ## Choosing a handle
//!
//! | you write | use | cost per call |
//! |---|---|---|
//! | threads (a thread per connection, blocking IO) | [`Listener`], [`Stream`] (`std::io::Read`/`Write`, timeouts, `try_clone`) | the calling thread parks until the shard answers |
//! | async code on any executor (tokio, smol, ...) | [`AsyncListener`], [`AsyncStream`] (`futures-io`; tokio via `tokio_util::compat` or [`TokioStream`]) | a task wake-up per answer; no thread per stream or dial |
//! | thread-per-core tasks on the node's own shards (Seastar/glommio style) | [`Node::spawn_on`], [`local::LocalStream`] (`futures-io`, not `Send`) | none: the task acts on the link directly |
//! | HTTP, gRPC, TCP programs | [`http`], [`grpc`], [`forward`] (on the async handles) | as async |
//!
//! Every handle but the shard-local ones is `Send`: the stream itself lives on one of the node's shards and a
//! handle only sends it commands, so any thread may hold it. Blocking handles suit
//! code that already has a thread per connection; async handles suit many concurrent
//! streams per thread (each waiting stream costs a few dozen bytes, not a thread).
//! Every async method documents its cancel-safety.
//!
//! Thread-per-core: [`Node::spawn_on`] runs a task on one of the node's own shards;
//! its [`local::LocalStream`]s touch their link's state with no cross-thread hop
//! (see [`local`] for when to choose it).
//!
//! ## Address grammar
//!
//! | written | means |
//! |---|---|
//! | `":80"` | port 80 (on this node, for `bind` and `dial`) |
//! | `"echo"` | the service named `echo` (any instance, for `dial`) |
//! | `"echo:80"` | the service `echo` on port 80 |
//! | `"0123456789abcdef:80"` | port 80 on the node with that id |
//!
//! A node id is always exactly 16 hex digits; a service name is 1–255 characters of
//! `[A-Za-z0-9._-]`, starts with a letter and is never 16 hex digits, so the two cannot
//! be confused.

#![warn(missing_docs)]

#[cfg(feature = "dev-certs")]
pub mod certs;
#[cfg(feature = "tokio")]
pub mod forward;
#[cfg(feature = "grpc")]
pub mod grpc;
#[cfg(feature = "http")]
pub mod http;
pub mod local;
#[cfg(feature = "metrics")]
pub mod metrics;
mod pipe;
mod stream;
#[cfg(feature = "tokio")]
mod tokio_io;

pub use astranet_engine::{
    Addr, Limits, LinkInfo, NodeId, NodeStats, Role, RouteEvent, RouteInfo, ServiceEvent,
    ServiceInfo, StreamReset, TlsConfig,
};
pub use pipe::{pipe, PipeEnd, PipeReader, PipeWriter};
pub use stream::{AsyncStream, Stream, MAX_IN_FLIGHT, MAX_WRITE};
#[cfg(feature = "tokio")]
pub use tokio_io::{Incoming, TokioStream};

use astranet_engine::{
    block_on_until, node_gone, wait_timeout, ListenerRef, NodeConfig, NodeCore, Wait,
};
use std::any::Any;
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Settings for a [`Node`]. Get one from [`Node::builder`].
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    cfg: NodeConfig,
    dial_timeout: Duration,
    /// Set with [`NodeBuilder::id`] (checked against a TLS certificate's id).
    id_set: bool,
}

impl NodeBuilder {
    /// Number of shards (executor threads, each owning a share of the links and their
    /// streams). Default: the number of available cores.
    pub fn shards(mut self, n: usize) -> Self {
        self.cfg.shards = n;
        self
    }

    /// Pins shard i to core i. Default: off (several nodes often share a process).
    pub fn pin_cores(mut self, on: bool) -> Self {
        self.cfg.pin_cores = on;
        self
    }

    /// The env namespace: this node sees and dials only services of the same env.
    pub fn env(mut self, env: &str) -> Self {
        self.cfg.env = env.to_string();
        self
    }

    /// Keep-alive: probe a silent link every `interval`, declare it dead after
    /// `timeout` of silence (every stream on it then fails). Default 10 s / 30 s.
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.cfg.link.keepalive_interval = interval;
        self.cfg.link.keepalive_timeout = timeout;
        self
    }

    /// What the node does for its mesh: [`Role::Client`] announces nothing and relays
    /// nothing, [`Role::Server`] announces its services, [`Role::Router`] (the default)
    /// also relays streams between nodes that have no direct link.
    pub fn role(mut self, role: Role) -> Self {
        self.cfg.role = role;
        self
    }

    /// Direct upgrade (default on): advertise this node's listen addresses, and join
    /// nodes that are reached only through relays directly when they advertise
    /// theirs, so new streams skip the relay. Turn off behind NAT or by policy.
    pub fn direct_upgrade(mut self, on: bool) -> Self {
        self.cfg.direct_upgrade = on;
        self
    }

    /// Uses this node id instead of a random one.
    pub fn id(mut self, id: NodeId) -> Self {
        self.cfg.id = id;
        self.id_set = true;
        self
    }

    /// TLS 1.3 on every link, mutually authenticated with `tls`'s certificate and
    /// trust (a cluster CA or pinned peer certificates). The node's id is the one its
    /// certificate names; peers must present certificates the trust accepts, whose
    /// id matches their HELLO. Plaintext peers are refused, and `attach` is refused
    /// (it has no TLS roles). Default: plaintext.
    ///
    /// ```no_run
    /// let tls = astranet::TlsConfig::ca_files("ca.pem", "node.pem", "node.key")?;
    /// let node = astranet::Node::builder().tls(tls).build()?;
    /// node.listen("0.0.0.0:7000")?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.cfg.tls = Some(tls);
        self
    }

    /// Chooses plaintext links to other hosts. Without TLS ([`NodeBuilder::tls`]) a
    /// node listens on and joins only loopback addresses unless this is set: on a
    /// network, plaintext lets anyone who reaches a listen port join the mesh, claim
    /// any id and read what crosses it.
    ///
    /// ```
    /// let node = astranet::Node::builder().shards(1).build()?;
    /// let e = node.listen("0.0.0.0:0").unwrap_err();
    /// assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
    /// let open = astranet::Node::builder().shards(1).plaintext().build()?;
    /// open.listen("0.0.0.0:0")?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn plaintext(mut self) -> Self {
        self.cfg.plaintext = true;
        self
    }

    /// How long `dial` waits for an unknown service to appear, and for the peer to
    /// accept. Default 10 s.
    pub fn dial_timeout(mut self, d: Duration) -> Self {
        self.dial_timeout = d;
        self
    }

    /// How long `join` keeps retrying a refused connection. Default 10 s.
    pub fn join_timeout(mut self, d: Duration) -> Self {
        self.cfg.join_timeout = d;
        self
    }

    /// Most streams a peer may have open towards this node at once. Default 2^20.
    pub fn max_streams(mut self, n: u64) -> Self {
        self.cfg.link.max_streams = n;
        self
    }

    /// Initial per-stream receive window in bytes (default 64 KiB) and the largest a
    /// busy stream's window grows to (default 4 MiB). Within that, a window grows only
    /// to the link's bandwidth-delay product (2.5 GB/s times the smallest measured
    /// round trip, at least 1 MiB): on a short path more would only queue in socket
    /// buffers ahead of other streams' frames.
    pub fn windows(mut self, initial: u32, max: u32) -> Self {
        self.cfg.link.initial_window = initial;
        self.cfg.link.max_window = max.max(initial);
        self
    }

    /// Most accepted streams waiting in one listener before new ones are refused.
    pub fn backlog(mut self, n: usize) -> Self {
        self.cfg.backlog = n;
        self
    }

    /// Limits that protect the node from its peers: handshake deadline, links, routes
    /// and services a peer may announce, send buffers, reset budget, relays, direct
    /// upgrades. PROTOCOL.md §13 lists each with the reaction when it is exceeded.
    ///
    /// ```
    /// use std::time::Duration;
    /// let node = astranet::Node::builder()
    ///     .shards(1)
    ///     .limits(astranet::Limits {
    ///         handshake_timeout: Duration::from_secs(2),
    ///         max_links: 100,
    ///         ..astranet::Limits::default()
    ///     })
    ///     .build()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn limits(mut self, limits: Limits) -> Self {
        self.cfg.limits = limits;
        self
    }

    /// Starts the node.
    pub fn build(self) -> io::Result<Node> {
        if self.cfg.link.keepalive_timeout.is_zero() || self.cfg.link.keepalive_interval.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "keep-alive interval and timeout must be above zero",
            ));
        }
        if let Some(t) = &self.cfg.tls {
            if self.id_set && t.id() != self.cfg.id {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "node id {} was set, but the TLS certificate is for node {}: with \
                         TLS the id comes from the certificate",
                        self.cfg.id,
                        t.id()
                    ),
                ));
            }
        }
        let core = NodeCore::start(self.cfg)?;
        Ok(Node {
            inner: Arc::new(Inner {
                core,
                dial_timeout: self.dial_timeout,
            }),
        })
    }
}

struct Inner {
    core: NodeCore,
    dial_timeout: Duration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.core.shutdown();
    }
}

/// A node: a cheap handle (`Clone + Send + Sync`). The node runs until
/// [`Node::shutdown`] or until its last handle drops.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id()).finish()
    }
}

impl Node {
    /// A builder with defaults.
    pub fn builder() -> NodeBuilder {
        NodeBuilder {
            cfg: NodeConfig::default(),
            dial_timeout: Duration::from_secs(10),
            id_set: false,
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.core.id()
    }

    /// Replaces the node's TLS certificate, key and trust without a restart: links
    /// made from now on present the new certificate and apply the new trust (a peer
    /// removed from the pinned set, or whose certificate expired, is refused at its
    /// next handshake); links already up and their streams are unaffected. The new
    /// certificate must name this node's id. `InvalidInput` on a plaintext node.
    pub fn reload_tls(&self, tls: TlsConfig) -> io::Result<()> {
        self.inner.core.reload_tls(tls)
    }

    /// Accepts links from other nodes on a TCP address; returns the address bound.
    pub fn listen(&self, addr: &str) -> io::Result<SocketAddr> {
        self.inner.core.listen(addr)
    }

    /// Links to the node listening at `addr` (retrying refused connections up to the
    /// join timeout); returns once the link is up. A link that dies later is
    /// re-established with backoff.
    pub fn join(&self, addr: &str) -> io::Result<()> {
        self.inner.core.join(addr).map(|_| ())
    }

    /// Runs a link over an existing byte stream. `TcpStream`, `UnixStream` and
    /// [`PipeEnd`] are used full-duplex; for any other type, pass its two halves to
    /// [`Node::attach_split`] (a single blocking object cannot be read and written at
    /// once, and a half-duplex link could deadlock), else this returns `Unsupported`.
    ///
    /// The link carries what the byte stream carries: astranet adds no TLS here (the
    /// two ends have no client and server roles) and does not authenticate the peer.
    /// A node built with [`NodeBuilder::tls`] therefore refuses `attach` with
    /// `PermissionDenied`.
    pub fn attach<S: Read + Write + Send + 'static>(&self, stream: S) -> io::Result<()> {
        let any: Box<dyn Any + Send> = Box::new(stream);
        // Sockets: a clone reads, the original writes, another clone shuts both down.
        let any = match any.downcast::<std::net::TcpStream>() {
            Ok(s) => {
                return self.attach_socket(
                    *s,
                    |s| s.try_clone(),
                    |s| s.shutdown(std::net::Shutdown::Both),
                )
            }
            Err(a) => a,
        };
        let any = match any.downcast::<std::os::unix::net::UnixStream>() {
            Ok(s) => {
                return self.attach_socket(
                    *s,
                    |s| s.try_clone(),
                    |s| s.shutdown(std::net::Shutdown::Both),
                )
            }
            Err(a) => a,
        };
        match any.downcast::<PipeEnd>() {
            Ok(p) => {
                let (r, w) = p.split();
                self.attach_split(r, w)
            }
            Err(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "attach needs a full-duplex byte stream (TcpStream, UnixStream, \
                 astranet::PipeEnd); pass the two halves of other streams to attach_split",
            )),
        }
    }

    /// Runs a link over the two halves of a byte stream, each driven by its own thread.
    pub fn attach_split<R, W>(&self, reader: R, writer: W) -> io::Result<()>
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        self.attach_with_closer(Box::new(reader), Box::new(writer), None)
    }

    /// Attaches a socket type that can be cloned and shut down.
    fn attach_socket<T: Read + Write + Send + 'static>(
        &self,
        s: T,
        clone: fn(&T) -> io::Result<T>,
        shutdown: fn(&T) -> io::Result<()>,
    ) -> io::Result<()> {
        let r = clone(&s)?;
        let c = clone(&s)?;
        self.attach_with_closer(
            Box::new(r),
            Box::new(s),
            Some(Box::new(move || {
                let _ = shutdown(&c);
            })),
        )
    }

    fn attach_with_closer(
        &self,
        r: Box<dyn Read + Send>,
        w: Box<dyn Write + Send>,
        closer: Option<Box<dyn FnOnce() + Send>>,
    ) -> io::Result<()> {
        self.inner.core.attach_split(r, w, closer).map(|_| ())
    }

    /// Binds `":port"`, `"name"` or `"name:port"`; a name is announced to the mesh.
    /// Binding a port or name already bound on this node fails with `AddrInUse`.
    pub fn bind(&self, addr: &str) -> io::Result<Listener> {
        Ok(Listener {
            l: self.inner.core.bind(addr)?,
        })
    }

    /// Like [`Node::bind`], for async code.
    pub fn bind_async(&self, addr: &str) -> io::Result<AsyncListener> {
        Ok(AsyncListener {
            l: self.inner.core.bind(addr)?,
        })
    }

    /// Dials `"name"`, `"name:port"`, `"<node id>:port"` or `":port"`, waiting up to the
    /// node's dial timeout. An unbound port fails with `ConnectionRefused` as soon as
    /// the target answers; an unknown service with `NotFound` after the timeout.
    pub fn dial(&self, addr: &str) -> io::Result<Stream> {
        self.dial_timeout(addr, self.inner.dial_timeout)
    }

    /// [`Node::dial`] with its own timeout.
    pub fn dial_timeout(&self, addr: &str, timeout: Duration) -> io::Result<Stream> {
        let deadline = Instant::now() + timeout;
        let rx = self.inner.core.dial(addr, deadline)?;
        finish_dial(&self.inner.core, rx, deadline, addr)
    }

    /// Dials a service by name, choosing among its instances by `key`: the same key
    /// reaches the same instance while the set of instances is unchanged (rendezvous
    /// hashing), for sticky routing. Directly linked instances are preferred.
    pub fn dial_key(&self, name: &str, key: &[u8]) -> io::Result<Stream> {
        let deadline = Instant::now() + self.inner.dial_timeout;
        let rx = self.inner.core.dial_with_key(name, Some(key), deadline)?;
        finish_dial(&self.inner.core, rx, deadline, name)
    }

    /// Dials for async code. The future is `Send`, and it waits without a thread: a
    /// service not announced yet is waited for by the node (up to the dial timeout).
    ///
    /// Cancel-safe: dropping the future abandons the dial; a stream that completes
    /// afterwards is closed.
    pub fn dial_async(
        &self,
        addr: &str,
    ) -> impl Future<Output = io::Result<AsyncStream>> + Send + 'static {
        let started = self
            .inner
            .core
            .dial(addr, Instant::now() + self.inner.dial_timeout);
        async move {
            match started?.await {
                Ok(r) => r.map(AsyncStream::new),
                Err(_) => Err(node_gone()),
            }
        }
    }

    /// A snapshot of the services this node can dial (its own env only).
    pub fn services(&self) -> Vec<ServiceInfo> {
        self.inner.core.services()
    }

    /// A snapshot of the nodes this node can reach.
    pub fn routes(&self) -> Vec<RouteInfo> {
        self.inner.core.routes()
    }

    /// Changes to [`Node::services`]: first every current service as `Up`, then each
    /// change. Iterate it (blocking) or turn it into an async stream.
    pub fn watch_services(&self) -> Watch<ServiceEvent> {
        Watch {
            rx: self.inner.core.watch_services(),
        }
    }

    /// Changes to [`Node::routes`], like [`Node::watch_services`].
    pub fn watch_routes(&self) -> Watch<RouteEvent> {
        Watch {
            rx: self.inner.core.watch_routes(),
        }
    }

    /// Every link to another node: peer, socket address, round-trip time (measured by
    /// keep-alive PINGs), streams, bytes, age.
    ///
    /// ```
    /// let a = astranet::Node::builder().shards(1).build()?;
    /// let b = astranet::Node::builder().shards(1).build()?;
    /// b.join(&a.listen("127.0.0.1:0")?.to_string())?;
    /// let links = b.links()?;
    /// assert_eq!(links.len(), 1);
    /// assert_eq!(links[0].peer, Some(a.id()));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn links(&self) -> io::Result<Vec<LinkInfo>> {
        self.inner.core.links()
    }

    /// Node-wide figures: links, streams, traffic, resets, relays, what peers
    /// announced, limits hit.
    ///
    /// ```
    /// let node = astranet::Node::builder().shards(1).build()?;
    /// let s = node.stats()?;
    /// assert_eq!((s.links, s.origins), (0, 0));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn stats(&self) -> io::Result<NodeStats> {
        self.inner.core.stats()
    }

    /// Graceful shutdown: GOAWAY on every link, a short drain, then the links close and
    /// the shards stop. Streams still open fail. Idempotent.
    pub fn shutdown(&self) {
        self.inner.core.shutdown();
    }
}

/// Waits for a dial's answer until `deadline`. On timeout the receiver is dropped,
/// which makes the shard close the stream should it still complete.
fn finish_dial(
    core: &NodeCore,
    rx: futures_channel::oneshot::Receiver<io::Result<astranet_engine::StreamRef>>,
    deadline: Instant,
    addr: &str,
) -> io::Result<Stream> {
    match wait_timeout(rx, Some(deadline)) {
        Wait::Done(r) => r.map(Stream::new),
        // The node answers a dial for an unknown service with NotFound at the same
        // deadline; say so rather than race it.
        Wait::TimedOut(_) if !core.is_known(addr) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no service {addr:?} is known"),
        )),
        Wait::TimedOut(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("dial {addr:?} timed out"),
        )),
    }
}

/// A feed of changes from [`Node::watch_services`] or [`Node::watch_routes`]. As an
/// `Iterator` it blocks for the next change and ends when the node shuts down.
pub struct Watch<T> {
    rx: async_channel::Receiver<T>,
}

impl<T> Watch<T> {
    /// The next change, waiting at most `timeout` (`None` on timeout or once the node
    /// is shut down).
    pub fn next_timeout(&self, timeout: Duration) -> Option<T> {
        let mut next = std::pin::pin!(self.rx.recv());
        block_on_until(&mut next, Some(Instant::now() + timeout))?.ok()
    }

    /// The next change, for async code (`None` once the node is shut down).
    ///
    /// Cancel-safe: dropping the future loses no event; the next call gets it.
    pub async fn recv(&self) -> Option<T> {
        self.rx.recv().await.ok()
    }

    /// The changes as an async stream (`futures_core::Stream`; pin it to poll it).
    pub fn into_stream(self) -> impl futures_core::Stream<Item = T> + Send
    where
        T: Send + 'static,
    {
        self.rx
    }
}

impl<T> Iterator for Watch<T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.rx.recv_blocking().ok()
    }
}

/// A bound port or service, for threaded code. Dropping it unbinds (and withdraws the
/// service name).
pub struct Listener {
    l: ListenerRef,
}

impl Listener {
    /// Waits for the next stream.
    pub fn accept(&self) -> io::Result<Stream> {
        match self.l.queue().recv_blocking() {
            Ok(i) => Ok(Stream::new(i.stream)),
            Err(_) => Err(node_gone()),
        }
    }

    /// Waits up to `timeout` for the next stream.
    pub fn accept_timeout(&self, timeout: Duration) -> io::Result<Stream> {
        let mut next = std::pin::pin!(self.l.queue().recv());
        match block_on_until(&mut next, Some(Instant::now() + timeout)) {
            Some(Ok(i)) => Ok(Stream::new(i.stream)),
            Some(Err(_)) => Err(node_gone()),
            None => Err(io::Error::new(io::ErrorKind::TimedOut, "accept timed out")),
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> Addr {
        self.l.local_addr()
    }

    /// The bound service name, if any.
    pub fn name(&self) -> Option<&str> {
        self.l.name()
    }

    /// Accepted streams, forever (each item an `io::Result`).
    pub fn incoming(&self) -> impl Iterator<Item = io::Result<Stream>> + '_ {
        std::iter::from_fn(move || Some(self.accept()))
    }
}

/// A bound port or service, for async code.
pub struct AsyncListener {
    l: ListenerRef,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("addr", &self.local_addr())
            .field("name", &self.name())
            .finish()
    }
}

impl std::fmt::Debug for AsyncListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncListener")
            .field("addr", &self.local_addr())
            .finish()
    }
}

impl AsyncListener {
    /// Waits for the next stream. The future is `Send`.
    ///
    /// Cancel-safe: a stream is taken from the queue only when the future completes;
    /// dropping it earlier leaves every accepted stream for the next call.
    pub async fn accept(&self) -> io::Result<AsyncStream> {
        match self.l.queue().recv().await {
            Ok(i) => Ok(AsyncStream::new(i.stream)),
            Err(_) => Err(node_gone()),
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> Addr {
        self.l.local_addr()
    }
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Node>();
    assert_send_sync::<Listener>();
    assert_send_sync::<AsyncListener>();
};

/// Every future the API returns is `Send`, so it can be spawned on tokio.
#[allow(dead_code)]
fn futures_are_send(n: &Node, l: &AsyncListener) {
    fn is_send<T: Send>(_: &T) {}
    is_send(&n.dial_async("x"));
    is_send(&l.accept());
}
