//! One shard: a glommio executor thread that owns a set of links and every stream on
//! them (and, on shard 0, the control task).
//!
//! How a frame travels (README "Inside the engine"):
//! 1. The link's IO task ([`link_io`]) reads bytes from its socket and feeds them to
//!    the link's sans-IO core ([`Link::handle_input`]); the core decodes frames and
//!    updates stream state, queueing events such as `Readable(id)`.
//! 2. [`Shard::drain_events`] turns events into replies: a user's pending `read` on
//!    that stream is answered with the bytes through its oneshot channel, which wakes
//!    the user's thread (blocking API) or task (async API). What concerns the mesh
//!    (link up and down, ROUTES, SERVICES) goes to the control task as a message.
//! 3. A user's `write` arrives as a [`Cmd::Write`] in the shard's inbox; the shard
//!    hands the bytes to the core ([`Link::send`], within the stream's credit), marks
//!    the link dirty and wakes its IO task, which pulls frames with
//!    [`Link::poll_transmit`] (control frames first, then streams round-robin) into one
//!    large socket write.
//!
//! Everything here runs on one thread: state is in a `RefCell`, no locks are taken,
//! and streams have no tasks or timers of their own (one timer task per shard drives
//! every link's deadlines).

mod link_io;
pub(crate) mod local;
mod splice;
mod streams;

use super::control::{self, Control};
use super::dial::DialReq;
use super::errors::{link_error, stream_error};
use super::io::Transport;
use super::listeners::Table;
use super::mailbox::Mailboxes;
use super::relay::RelayBudget;
use super::{
    Cmd, Incoming, LinkId, NodeShared, NodeStats, Reply, StreamKey, StreamRef, Transport0,
};
use crate::proto::{ErrorCode, Event, Link, LinkError, StreamError};
use crate::types::{Addr, NodeId};
use bytes::BytesMut;
use hashbrown::HashMap;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};
use streams::link_gone;

pub(crate) enum LinkKind {
    /// Driven by an IO task; `waker` wakes it when there is output.
    Io { waker: Option<Waker> },
    /// The other end of a node's link to itself, on the same shard.
    Loopback { other: LinkId },
}

pub(crate) struct LinkSlot {
    pub(crate) core: Link,
    kind: LinkKind,
    peer: Option<NodeId>,
    /// The address this link was joined to (reconnect after loss).
    join: Option<String>,
    up_reply: Option<Reply<NodeId>>,
    /// Accepted by our listener and still in its handshake (counted in
    /// `NodeShared::handshaking`).
    handshaking: bool,
    /// A direct upgrade: the peer must be this node, or the link is dropped.
    expect: Option<NodeId>,
    closed: bool,
    /// When the link closed: its last frames get a short while to go out.
    closed_at: Option<Instant>,
    /// The keep-alive timed out: the IO task must look at the transport before the
    /// link is declared dead (we may have been too busy to read the peer's bytes).
    verify_silence: bool,
    /// Since when the transport took none of the bytes we have for the peer.
    write_blocked_since: Option<Instant>,
    /// The IO task must stop at once (write stall, or a flush that took too long).
    abort_io: bool,
    pub(crate) relays: RelayBudget,
    /// This link's messages waiting at the control task (see `control::Credit`).
    control_inflight: Arc<std::sync::atomic::AtomicUsize>,
    created: Instant,
    /// The peer's socket address, for TCP links.
    addr: Option<std::net::SocketAddr>,
    /// The link's tracing span (peer id recorded once known).
    span: tracing::Span,
}

impl LinkSlot {
    fn new(core: Link, kind: LinkKind, node: &NodeShared, now: Instant) -> Self {
        LinkSlot {
            core,
            kind,
            peer: None,
            join: None,
            up_reply: None,
            handshaking: false,
            expect: None,
            closed: false,
            closed_at: None,
            verify_silence: false,
            write_blocked_since: None,
            abort_io: false,
            relays: RelayBudget::new(&node.cfg.limits, now),
            control_inflight: Arc::default(),
            created: now,
            addr: None,
            span: tracing::Span::none(),
        }
    }

    /// Whether the IO task should read the peer now.
    pub(crate) fn wants_input(&self) -> bool {
        self.core.wants_input()
            && self.control_inflight.load(Ordering::Acquire) < control::CONTROL_INFLIGHT
    }

    fn credit(&self, shard: u32, link: LinkId) -> control::Credit {
        self.control_inflight.fetch_add(1, Ordering::AcqRel);
        control::Credit {
            count: self.control_inflight.clone(),
            shard,
            link,
        }
    }
}

/// What a new link starts with, besides its transport.
#[derive(Default)]
struct NewLink {
    /// The peer's socket address.
    addr: Option<std::net::SocketAddr>,
    /// The address it was joined to (reconnect after loss).
    join: Option<String>,
    /// Accepted by our listener (already counted by the accept thread).
    accepted: bool,
    /// Answered once the link is routable.
    reply: Option<Reply<NodeId>>,
    /// A direct upgrade: the node it must reach.
    expect: Option<NodeId>,
}

struct PendingDial {
    local: Addr,
    peer: Addr,
    reply: Reply<StreamRef>,
}

#[derive(Default)]
pub(crate) struct State {
    links: HashMap<LinkId, LinkSlot>,
    /// Mailboxes of busy streams (the same as `NodeShared::mail`, which handles read).
    mail: Mailboxes,
    /// Attached mailboxes in the order the idle sweep visits them.
    mail_order: VecDeque<StreamKey>,
    dials: HashMap<StreamKey, PendingDial>,
    /// Dials waiting for open credit, per link.
    blocked: HashMap<LinkId, VecDeque<(DialReq, Reply<StreamRef>)>>,
    /// Extra handles from `try_clone`.
    refs: HashMap<StreamKey, u32>,
    /// Streams released by their handles while bytes were still staged: closed once
    /// the core took them, so data written before a drop is never lost.
    closing: hashbrown::HashSet<StreamKey>,
    pub(crate) dirty: Vec<LinkId>,
    stopping: bool,
    /// Why recently closed links died, oldest first in `dead_order`.
    dead: HashMap<LinkId, LinkError>,
    dead_order: VecDeque<LinkId>,
    /// Shard-local tasks waiting on streams (`local.rs`).
    local: local::LocalWaiters,
    /// Relayed streams spliced on this shard, per source stream (`splice.rs`).
    splices: HashMap<StreamKey, splice::Splice>,
    /// Streams the shard drives directly, without a mailbox: those of shard-local
    /// tasks (`local.rs`) and spliced relays (`splice.rs`).
    direct: hashbrown::HashSet<StreamKey>,
}

/// How many dead links' close reasons a shard remembers.
const DEAD_LINKS_REMEMBERED: usize = 4096;
/// How long a closed link's last frames (GOAWAY) may take to go out.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

impl State {
    pub(crate) fn link_mut(&mut self, link: LinkId) -> Option<&mut LinkSlot> {
        self.links.get_mut(&link)
    }

    fn remember_dead(&mut self, link: LinkId, why: LinkError) {
        if self.dead.insert(link, why).is_none() {
            self.dead_order.push_back(link);
            if self.dead_order.len() > DEAD_LINKS_REMEMBERED {
                if let Some(old) = self.dead_order.pop_front() {
                    self.dead.remove(&old);
                }
            }
        }
    }
}

/// Figures of a shard that outlive its links.
#[derive(Default)]
pub(crate) struct Totals {
    /// Counters of links that are gone.
    closed: crate::proto::Counters,
    pub(crate) streams_opened: u64,
    pub(crate) refused_opens: u64,
    pub(crate) resets_by_code: std::collections::BTreeMap<u32, u64>,
    pub(crate) relayed_streams: u64,
    pub(crate) refused_links: u64,
}

pub(crate) struct Shard {
    pub(crate) idx: u32,
    pub(crate) totals: RefCell<Totals>,
    /// Bytes relayed by this shard's pumps.
    pub(crate) relayed_bytes: Rc<std::cell::Cell<u64>>,
    pub(crate) node: Arc<NodeShared>,
    st: RefCell<State>,
    listeners: RefCell<Table>,
    /// The control task's state (shard 0 only).
    control: Option<RefCell<Control>>,
    /// Wakers taken out of mailboxes, woken once their lock is released.
    wake_buf: RefCell<Vec<Waker>>,
    /// A mailbox was found locked by a user thread (see `streams.rs`, `retry`).
    retried: std::cell::Cell<bool>,
    /// `take_commands`' batch, kept so a link's IO task does not allocate one per turn.
    cmd_buf: RefCell<Vec<Cmd>>,
}

impl Shard {
    pub(crate) fn new(idx: u32, node: Arc<NodeShared>) -> Self {
        let control = (idx == 0).then(|| RefCell::new(Control::new(node.clone())));
        Self {
            idx,
            totals: RefCell::default(),
            relayed_bytes: Rc::default(),
            node,
            st: RefCell::new(State::default()),
            listeners: RefCell::new(Table::default()),
            control,
            wake_buf: RefCell::default(),
            retried: std::cell::Cell::new(false),
            cmd_buf: RefCell::default(),
        }
    }

    // -------------------------------------------------------------- commands

    pub(crate) fn handle(self: &Rc<Self>, cmd: Cmd) {
        match cmd {
            Cmd::AddLink {
                id,
                transport,
                join,
                accepted,
                reply,
            } => self.add_link(id, transport, join, accepted, reply),
            Cmd::AddLoopback { a, b } => self.add_loopback(a, b),
            Cmd::Dial { req, reply } => {
                let mut st = self.st.borrow_mut();
                self.dial(&mut st, req, reply);
            }
            Cmd::Mail(mb) => {
                let mut st = self.st.borrow_mut();
                self.service(&mut st, &mb);
            }
            Cmd::Service(mb) => {
                mb.clear(super::mailbox::RETRY);
                let mut st = self.st.borrow_mut();
                self.service(&mut st, &mb);
                self.wake_everyone(&mb);
            }
            Cmd::Attach(mb) => {
                let mut st = self.st.borrow_mut();
                self.on_attach(&mut st, mb);
            }
            Cmd::ShutdownWrite(key) => {
                let mut st = self.st.borrow_mut();
                self.shutdown_stream(&mut st, key);
            }
            Cmd::AddRef(key) => {
                *self.st.borrow_mut().refs.entry(key).or_insert(0) += 1;
            }
            Cmd::Release(key) => self.release(key),
            Cmd::Stop { code, reply } => self.stop(code, reply),
            Cmd::Wake(link) => {
                self.st.borrow_mut().dirty.push(link);
            }
            Cmd::SendTo(frames) => {
                let mut st = self.st.borrow_mut();
                for (link, frame) in frames {
                    if let Some(slot) = st.links.get_mut(&link) {
                        slot.core.send_control(&frame);
                        st.dirty.push(link);
                    }
                }
            }
            Cmd::Listen(e, reply) => {
                self.listeners.borrow_mut().add(e);
                let _ = reply.send(Ok(()));
            }
            Cmd::Unlisten(port) => self.listeners.borrow_mut().remove(port),
            Cmd::Reset { key, code } => {
                let mut st = self.st.borrow_mut();
                if let Some(slot) = st.links.get_mut(&key.link) {
                    slot.core.reset(key.id, code);
                    st.dirty.push(key.link);
                }
            }
            Cmd::Stats { reply } => {
                let _ = reply.send(Ok(self.stats()));
            }
            Cmd::Links { reply } => {
                let st = self.st.borrow();
                let now = Instant::now();
                let links = st
                    .links
                    .values()
                    .filter(|s| matches!(s.kind, LinkKind::Io { .. }) && !s.closed)
                    .map(|s| super::LinkInfo {
                        peer: s.peer,
                        addr: s.addr,
                        rtt: s.core.rtt(),
                        streams: s.core.stream_count(),
                        bytes_in: s.core.counters().bytes_in,
                        bytes_out: s.core.counters().bytes_out,
                        age: now - s.created,
                    })
                    .collect();
                let _ = reply.send(Ok(links));
            }
            Cmd::Control(m) => self.on_control(m),
            Cmd::Spawn(f) => self.spawn_user(f),
        }
    }

    fn stats(&self) -> NodeStats {
        let st = self.st.borrow();
        let t = self.totals.borrow();
        let mut s = NodeStats {
            bytes_in: t.closed.bytes_in,
            bytes_out: t.closed.bytes_out,
            frames_in: t.closed.frames_in,
            frames_out: t.closed.frames_out,
            streams_opened: t.streams_opened,
            refused_opens: t.refused_opens,
            resets_by_code: t.resets_by_code.clone(),
            relayed_streams: t.relayed_streams,
            relayed_bytes: self.relayed_bytes.get(),
            refused_links: t.refused_links,
            mailboxes: st.mail.len(),
            ..NodeStats::default()
        };
        for slot in st.links.values() {
            s.streams += slot.core.stream_count();
            s.relaying += slot.relays.in_flight();
            if matches!(slot.kind, LinkKind::Io { .. }) {
                let c = slot.core.counters();
                s.bytes_in += c.bytes_in;
                s.bytes_out += c.bytes_out;
                s.frames_in += c.frames_in;
                s.frames_out += c.frames_out;
                if !slot.closed {
                    s.links += 1;
                    s.handshaking += usize::from(!slot.core.is_open());
                }
            }
        }
        if let Some(c) = &self.control {
            let f = c.borrow().figures();
            s.origins = f.origins;
            s.service_entries = f.service_entries;
            s.routes = f.routes;
        }
        s
    }

    /// A link's state goes: its counters join the shard's totals.
    pub(crate) fn retire(&self, slot: &LinkSlot) {
        if matches!(slot.kind, LinkKind::Io { .. }) {
            let c = slot.core.counters();
            let mut t = self.totals.borrow_mut();
            t.closed.bytes_in += c.bytes_in;
            t.closed.bytes_out += c.bytes_out;
            t.closed.frames_in += c.frames_in;
            t.closed.frames_out += c.frames_out;
        }
    }

    fn on_control(self: &Rc<Self>, m: control::Msg) {
        let Some(c) = &self.control else {
            // Only shard 0 runs the control task.
            self.node.control(m);
            return;
        };
        let dials = c.borrow_mut().handle(m);
        for (origin, addr) in dials {
            glommio::spawn_local(self.clone().upgrade_dial(origin, addr)).detach();
        }
    }

    /// A direct upgrade: joins `origin` at `addr` (PROTOCOL.md §10.5). The link must
    /// authenticate as `origin`, else it is dropped.
    async fn upgrade_dial(self: Rc<Self>, origin: NodeId, addr: std::net::SocketAddr) {
        // Never touch shard state from inside the spawn (glommio may poll at once).
        futures_lite::future::yield_now().await;
        let r = glommio::net::TcpStream::connect_timeout(addr, Duration::from_secs(2)).await;
        let ok = match r {
            Ok(_) if self.node.links.load(Ordering::Relaxed) >= self.node.cfg.limits.max_links => {
                tracing::debug!(%origin, %addr, "direct upgrade skipped: at the link limit");
                false
            }
            Ok(s) => {
                let _ = s.set_nodelay(true);
                let id = self.node.new_link_id();
                tracing::debug!(%origin, %addr, "direct upgrade: connected");
                let peer_addr = s.peer_addr().ok();
                let new = NewLink {
                    addr: peer_addr,
                    expect: Some(origin),
                    ..NewLink::default()
                };
                self.start_link(id, Transport::Tcp(s), new);
                true
            }
            Err(e) => {
                tracing::debug!(%origin, %addr, error = %e, "direct upgrade failed");
                false
            }
        };
        self.node.control(control::Msg::UpgradeDone { addr, ok });
    }

    /// Handles the commands waiting in the shard's inbox, from a link's IO task.
    ///
    /// The inbox's own task (`run_shard`) is woken from user threads, and glommio
    /// runs a task woken from another thread only once its run queue is empty or its
    /// preemption timer (100 ms) fires. A link IO task streaming flat out never lets
    /// the queue empty (it yields by waking itself), so a stream's request or a
    /// reader's credit report staged meanwhile waited behind the bulk stream's bytes:
    /// 200-500 µs typically while a bulk stream ran, and up to the whole 100 ms (a
    /// histogram of push-to-handling delays, `hol` scenario). Taking the commands
    /// between socket turns bounds that wait by one turn (at most 256 KiB each way).
    /// Commands are handled in the order they were queued whoever takes them: both
    /// tasks run on this thread and handle a batch without awaiting. Once the shard
    /// stops, or while a mailbox is found locked (`retry`), the inbox task alone
    /// takes them (it must see the stop's last `Wake`, and yields before a retry).
    pub(crate) fn take_commands(self: &Rc<Self>) {
        if self.retried.get() || self.st.borrow().stopping {
            return;
        }
        // Taken out while the commands run (handling one never comes back here, but
        // if it did it would find an empty buffer, not a borrowed one).
        let mut batch = std::mem::take(&mut *self.cmd_buf.borrow_mut());
        self.node.inboxes[self.idx as usize].try_batch(&mut batch, 256);
        if !batch.is_empty() {
            self.handle_batch(&mut batch);
        }
        *self.cmd_buf.borrow_mut() = batch;
    }

    /// Handles a batch of inbox commands in order, then what follows every batch.
    pub(crate) fn handle_batch(self: &Rc<Self>, batch: &mut Vec<Cmd>) {
        for c in batch.drain(..) {
            self.handle(c);
        }
        self.end_batch();
    }

    /// After a batch of commands: the control task hands out its frames and publishes.
    pub(crate) fn end_batch(&self) {
        if let Some(c) = &self.control {
            let mut c = c.borrow_mut();
            c.flush();
            c.publish();
        }
    }

    pub(crate) fn release(&self, key: StreamKey) {
        let mut st = self.st.borrow_mut();
        if let Some(n) = st.refs.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                st.refs.remove(&key);
            }
            return;
        }
        self.release_stream(&mut st, key);
    }

    fn stop(self: &Rc<Self>, code: ErrorCode, reply: Reply<()>) {
        // Listeners' queues close: a blocked `accept` returns.
        *self.listeners.borrow_mut() = Table::default();
        {
            let mut st = self.st.borrow_mut();
            st.stopping = true;
            let ids: Vec<LinkId> = st.links.keys().copied().collect();
            for id in ids {
                if let Some(slot) = st.links.get_mut(&id) {
                    slot.core.go_away(code, "node shutting down");
                    st.dirty.push(id);
                }
                self.drain_events(&mut st, id);
            }
        }
        let me = self.clone();
        glommio::spawn_local(async move {
            // Give streams a moment to finish, then cut what is left.
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline && me.has_io_links() {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            {
                let mut st = me.st.borrow_mut();
                for id in st.links.keys().copied().collect::<Vec<_>>() {
                    if let Some(slot) = st.links.get_mut(&id) {
                        slot.core.transport_closed("node shut down");
                    }
                    me.drain_events(&mut st, id);
                }
            }
            me.flush();
            // IO tasks end once their link is closed and flushed.
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline && me.has_io_links() {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            for (_, slot) in me.st.borrow_mut().links.drain() {
                me.retire(&slot);
            }
            let _ = reply.send(Ok(()));
            // Wake the shard's main loop so it sees it is done.
            me.node.push(me.idx, Cmd::Wake(0));
        })
        .detach();
    }

    fn add_link(
        self: &Rc<Self>,
        id: LinkId,
        transport: Transport0,
        join: Option<String>,
        accepted: bool,
        reply: Option<Reply<NodeId>>,
    ) {
        let addr = match &transport {
            Transport0::Std(s) => s.peer_addr().ok(),
            Transport0::Threads(_) => None,
        };
        let transport = match transport {
            Transport0::Std(s) => match Transport::tcp(s) {
                Ok(t) => t,
                Err(e) => {
                    if accepted {
                        self.node.handshaking.fetch_sub(1, Ordering::Relaxed);
                        self.node.links.fetch_sub(1, Ordering::Relaxed);
                    }
                    if let Some(r) = reply {
                        let _ = r.send(Err(e));
                    }
                    return;
                }
            },
            Transport0::Threads(t) => Transport::Threads(t),
        };
        let new = NewLink {
            addr,
            join,
            accepted,
            reply,
            expect: None,
        };
        self.start_link(id, transport, new);
    }

    /// Registers a link and starts its IO task. Accepted links were already counted
    /// by the accept thread; others are counted here.
    fn start_link(self: &Rc<Self>, id: LinkId, transport: Transport, new: NewLink) {
        let NewLink {
            addr,
            join,
            accepted,
            reply,
            expect,
        } = new;
        if !accepted {
            self.node.links.fetch_add(1, Ordering::Relaxed);
        }
        let now = Instant::now();
        let core = Link::new(self.node.cfg.link_config(None), now);
        {
            let mut st = self.st.borrow_mut();
            let mut slot = LinkSlot::new(core, LinkKind::Io { waker: None }, &self.node, now);
            slot.join = join;
            slot.up_reply = reply;
            slot.handshaking = accepted;
            slot.expect = expect;
            slot.addr = addr;
            slot.span = tracing::info_span!(
                "link",
                node = %self.node.id,
                link = id,
                addr = ?addr,
                peer = tracing::field::Empty
            );
            st.links.insert(id, slot);
            if st.stopping {
                if let Some(slot) = st.links.get_mut(&id) {
                    slot.core.transport_closed("node is shutting down");
                }
                self.drain_events(&mut st, id);
            }
        }
        let me = self.clone();
        let span = self
            .st
            .borrow()
            .links
            .get(&id)
            .map_or_else(tracing::Span::none, |s| s.span.clone());
        glommio::spawn_local(tracing::Instrument::instrument(
            me.run_link(id, transport, !accepted, expect),
            span,
        ))
        .detach();
    }

    fn add_loopback(self: &Rc<Self>, a: LinkId, b: LinkId) {
        let now = Instant::now();
        let mut st = self.st.borrow_mut();
        for (id, other, parity) in [(a, b, 1), (b, a, 0)] {
            let core = Link::new(self.node.cfg.link_config(Some(parity)), now);
            st.links.insert(
                id,
                LinkSlot::new(core, LinkKind::Loopback { other }, &self.node, now),
            );
        }
        // Complete the in-memory handshake now, before any dial can arrive.
        self.pump_loopback(&mut st, a, b);
    }

    pub(crate) fn dial(&self, st: &mut State, req: DialReq, reply: Reply<StreamRef>) {
        let Some(slot) = st.links.get_mut(&req.link) else {
            let _ = reply.send(Err(link_gone(st, req.link)));
            return;
        };
        match slot.core.open(req.header.clone()) {
            Ok(id) => {
                let key = StreamKey { link: req.link, id };
                st.dials.insert(
                    key,
                    PendingDial {
                        local: req.local,
                        peer: req.peer,
                        reply,
                    },
                );
                st.dirty.push(req.link);
            }
            Err(StreamError::Limit) => {
                st.blocked
                    .entry(req.link)
                    .or_default()
                    .push_back((req, reply));
            }
            Err(e) => {
                let _ = reply.send(Err(stream_error(e)));
            }
        }
    }

    // -------------------------------------------------------------- events

    /// Applies everything the link's core reported.
    fn drain_events(self: &Rc<Self>, st: &mut State, link: LinkId) {
        loop {
            let Some(slot) = st.links.get_mut(&link) else {
                return;
            };
            let Some(ev) = slot.core.poll_event() else {
                return;
            };
            match ev {
                Event::Connected => self.on_connected(st, link),
                Event::Incoming { id, header } => {
                    let key = StreamKey { link, id };
                    let peer = Addr {
                        node: NodeId(header.src_node),
                        port: header.src_port,
                    };
                    if header.dst_node != 0 && header.dst_node != self.node.id.0 {
                        self.on_relayed_open(st, key, header);
                        continue;
                    }
                    let slot = st.links.get_mut(&link).expect("link checked above");
                    let routed = self.listeners.borrow().route(
                        &header,
                        self.node.id,
                        &self.node.cfg.env,
                        self.node.cfg.backlog,
                    );
                    match routed {
                        Ok((tx, local)) => {
                            let s = StreamRef::new(self.node.clone(), self.idx, key, local, peer);
                            match tx.try_send(Incoming { stream: s }) {
                                Ok(()) => {
                                    let _ = slot.core.accept(id);
                                    self.totals.borrow_mut().streams_opened += 1;
                                    // The acceptor reads first, often bytes that came
                                    // with the OPEN: have them waiting in a mailbox.
                                    let mb = self.attach(st, key);
                                    self.pump_recv(st, &mb);
                                }
                                Err(e) => {
                                    e.into_inner().stream.disarm();
                                    slot.core.refuse(id, ErrorCode::REFUSED);
                                    self.totals.borrow_mut().refused_opens += 1;
                                }
                            }
                        }
                        Err(code) => {
                            slot.core.refuse(id, code);
                            self.totals.borrow_mut().refused_opens += 1;
                        }
                    }
                    st.dirty.push(link);
                }
                Event::Accepted(id) => {
                    let key = StreamKey { link, id };
                    if let Some(d) = st.dials.remove(&key) {
                        self.totals.borrow_mut().streams_opened += 1;
                        // The dialer writes first: its writes need no round trip.
                        self.attach(st, key);
                        let s = StreamRef::new(self.node.clone(), self.idx, key, d.local, d.peer);
                        // If the dialer gave up (timeout), dropping `s` closes the stream.
                        let _ = d.reply.send(Ok(s));
                    }
                }
                Event::Readable(id) => {
                    let key = StreamKey { link, id };
                    if st.splices.contains_key(&key) {
                        let moved = st.splice_pump(key);
                        self.relayed_bytes.set(self.relayed_bytes.get() + moved);
                        continue;
                    }
                    if st.direct.contains(&key) {
                        // A shard-local task reads this stream from the core itself.
                        st.local.readable(key);
                        continue;
                    }
                    let mb = self.attach(st, key);
                    self.pump_recv(st, &mb);
                }
                Event::Writable(id) => {
                    let key = StreamKey { link, id };
                    if st.direct.contains(&key) {
                        let moved = st.splice_writable(key);
                        self.relayed_bytes.set(self.relayed_bytes.get() + moved);
                        st.local.writable(key);
                        continue;
                    }
                    if let Some(mb) = st.mail.get(&key).cloned() {
                        self.pump_send(st, &mb);
                    }
                }
                Event::Reset { id, code } => {
                    *self
                        .totals
                        .borrow_mut()
                        .resets_by_code
                        .entry(code.0)
                        .or_default() += 1;
                    let key = StreamKey { link, id };
                    if st.splice_reset(key, code) {
                        continue;
                    }
                    if st.direct.contains(&key) {
                        st.local.all(key);
                        continue;
                    }
                    self.on_reset(st, key, code)
                }
                Event::Freed(_) => {}
                Event::OpenCredit => {
                    if let Some(q) = st.blocked.remove(&link) {
                        for (req, reply) in q {
                            self.dial(st, req, reply);
                        }
                    }
                }
                Event::GoAway { code, reason, .. } => {
                    let _in = slot.span.enter();
                    tracing::info!(node = %self.node.id, peer = ?slot.peer, %code, %reason, "peer sent GOAWAY");
                    drop(_in);
                    if let Some(q) = st.blocked.remove(&link) {
                        for (_, reply) in q {
                            let _ = reply.send(Err(stream_error(StreamError::GoingAway)));
                        }
                    }
                }
                Event::Services(u) => {
                    if slot.peer.is_some() {
                        let credit = slot.credit(self.idx, link);
                        self.node.control(control::Msg::Services(link, u, credit));
                    }
                }
                Event::Routes(entries) => {
                    if slot.peer.is_some() {
                        let credit = slot.credit(self.idx, link);
                        self.node
                            .control(control::Msg::Routes(link, entries, credit));
                    }
                }
                Event::Closed(why) => self.on_closed(st, link, why),
            }
        }
    }

    fn on_connected(&self, st: &mut State, link: LinkId) {
        let Some(slot) = st.links.get_mut(&link) else {
            return;
        };
        let peer = slot.core.peer().map(|p| NodeId(p.node_id));
        if slot.handshaking {
            slot.handshaking = false;
            self.node.handshaking.fetch_sub(1, Ordering::Relaxed);
        }
        let LinkKind::Io { .. } = slot.kind else {
            // The node's link to itself: nothing to route or announce.
            return;
        };
        let Some(peer) = peer else {
            return;
        };
        if let Some(want) = slot.expect {
            if want != peer {
                tracing::warn!(expected = %want, %peer, "direct upgrade reached another node; dropping the link");
                slot.core
                    .transport_closed("direct upgrade reached another node");
                st.dirty.push(link);
                return;
            }
        }
        slot.peer = Some(peer);
        slot.span.record("peer", tracing::field::display(peer));
        let _in = slot.span.enter();
        tracing::info!(node = %self.node.id, %peer, link, "link up");
        // The control task routes the link, tells the peer what we know, and answers
        // `join` once the link is routable.
        self.node.control(control::Msg::LinkUp {
            link,
            peer,
            shard: self.idx,
            reply: slot.up_reply.take(),
        });
        st.dirty.push(link);
    }

    fn on_closed(&self, st: &mut State, link: LinkId, why: LinkError) {
        if matches!(why, LinkError::Refused(_)) {
            self.totals.borrow_mut().refused_links += 1;
        }
        st.remember_dead(link, why.clone());
        let Some(slot) = st.links.get_mut(&link) else {
            return;
        };
        slot.closed = true;
        slot.closed_at = Some(Instant::now());
        if slot.handshaking {
            slot.handshaking = false;
            self.node.handshaking.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(r) = slot.up_reply.take() {
            let _ = r.send(Err(link_error(&why)));
        }
        let peer = slot.peer;
        let join = slot.join.take();
        let span = slot.span.clone();
        let _in = span.enter();
        match &why {
            LinkError::Graceful | LinkError::GoneAway { .. } => {
                tracing::debug!(node = %self.node.id, ?peer, link, reason = %why, "link closed")
            }
            _ => tracing::info!(node = %self.node.id, ?peer, link, reason = %why, "link lost"),
        }
        self.fail_link(st, link, &why);
        st.local.link_lost(link);
        st.splice_link_lost(link);
        if peer.is_some() {
            self.node.control(control::Msg::LinkDown(link));
        }
        // Only a link that was up reconnects: one that failed its handshake belongs to
        // the `join` (or reconnect loop) that made it, which retries by itself.
        if let Some(addr) = join.filter(|_| peer.is_some()) {
            if !st.stopping && !matches!(why, LinkError::Graceful) {
                self.node.rejoin(addr, why);
            }
        }
        st.dirty.push(link);
    }

    // -------------------------------------------------------------- flushing

    /// Wakes the IO tasks of links with new output; pumps loopback links directly.
    pub(crate) fn flush(self: &Rc<Self>) {
        for _ in 0..64 {
            let dirty = std::mem::take(&mut self.st.borrow_mut().dirty);
            if dirty.is_empty() {
                return;
            }
            let mut st = self.st.borrow_mut();
            for id in dirty {
                self.drain_events(&mut st, id);
                let Some(slot) = st.links.get_mut(&id) else {
                    continue;
                };
                match &mut slot.kind {
                    LinkKind::Io { waker } => {
                        if let Some(w) = waker.take() {
                            w.wake();
                        }
                    }
                    LinkKind::Loopback { other } => {
                        let other = *other;
                        self.pump_loopback(&mut st, id, other);
                    }
                }
            }
        }
    }

    fn pump_loopback(self: &Rc<Self>, st: &mut State, a: LinkId, b: LinkId) {
        let now = Instant::now();
        let mut buf = BytesMut::new();
        for _ in 0..1024 {
            let mut moved = false;
            for (from, to) in [(a, b), (b, a)] {
                buf.clear();
                if let Some(s) = st.links.get_mut(&from) {
                    s.core.poll_transmit(&mut buf, 1 << 20);
                }
                if !buf.is_empty() {
                    if let Some(s) = st.links.get_mut(&to) {
                        let _ = s.core.handle_input(&buf, now);
                    }
                    moved = true;
                }
                self.drain_events(st, to);
                self.drain_events(st, from);
            }
            if !moved {
                return;
            }
        }
        st.dirty.push(a);
    }

    /// Links driven by an IO task (the loopback pair has none).
    fn has_io_links(&self) -> bool {
        self.st
            .borrow()
            .links
            .values()
            .any(|s| matches!(s.kind, LinkKind::Io { .. }))
    }

    pub(crate) fn st_mut(&self) -> std::cell::RefMut<'_, State> {
        self.st.borrow_mut()
    }

    pub(crate) fn is_stopped(&self) -> bool {
        let st = self.st.borrow();
        st.stopping && st.links.is_empty()
    }
}
