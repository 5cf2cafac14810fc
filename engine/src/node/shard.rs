//! One shard: a glommio executor thread that owns a set of links and every stream on
//! them.
//!
//! How a frame travels (README "Inside the engine"):
//! 1. The link's IO task reads bytes from its socket and feeds them to the link's
//!    sans-IO core ([`Link::handle_input`]); the core decodes frames and updates stream
//!    state, queueing events such as `Readable(id)`.
//! 2. [`Shard::drain_events`] turns events into replies: a user's pending `read` on that
//!    stream is answered with the bytes through its oneshot channel, which wakes the
//!    user's thread (blocking API) or task (async API).
//! 3. A user's `write` arrives as a [`Cmd::Write`] in the shard's inbox; the shard hands
//!    the bytes to the core ([`Link::send`], within the stream's credit), marks the link
//!    dirty and wakes its IO task, which pulls frames with [`Link::poll_transmit`]
//!    (control frames first, then streams round-robin) into one large socket write.
//!
//! Everything here runs on one thread: state is in a `RefCell`, no locks are taken per
//! frame, and streams have no tasks or timers of their own (one timer task per shard
//! drives every link's keep-alive).

use super::io::Transport;
use super::routing::Route;
use super::{Chunks, Cmd, DialReq, Incoming, LinkId, NodeShared, StreamKey, StreamRef, Transport0};
use crate::proto::frame::{OpenHeader, ServicesUpdate};
use crate::proto::{ErrorCode, Event, Link, LinkError, Recv, StreamError};
use crate::types::{Addr, NodeId};
use bytes::{Bytes, BytesMut};
use futures_channel::oneshot;
use hashbrown::HashMap;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

type Reply<T> = oneshot::Sender<io::Result<T>>;

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
    closed: bool,
}

/// A write the core could not take whole yet (it waits for credit). Its reply goes
/// out once every byte is taken.
struct PendingWrite {
    data: Bytes,
    taken: usize,
    reply: Reply<usize>,
}

struct PendingDial {
    local: Addr,
    peer: Addr,
    reply: Reply<StreamRef>,
}

#[derive(Default)]
struct State {
    links: HashMap<LinkId, LinkSlot>,
    reads: HashMap<StreamKey, (usize, Reply<Chunks>)>,
    /// Writes waiting for credit, per stream, oldest first.
    writes: HashMap<StreamKey, VecDeque<PendingWrite>>,
    shutdowns: HashMap<StreamKey, Reply<()>>,
    dials: HashMap<StreamKey, PendingDial>,
    /// Dials waiting for open credit, per link.
    blocked: HashMap<LinkId, VecDeque<(DialReq, Reply<StreamRef>)>>,
    /// Extra handles from `try_clone`.
    refs: HashMap<StreamKey, u32>,
    /// Streams released by their handles while a write was still pending: closed once
    /// the write is taken, so data written before a drop is never lost.
    closing: hashbrown::HashSet<StreamKey>,
    dirty: Vec<LinkId>,
    stopping: bool,
    /// Why recently closed links died, oldest first in `dead_order`.
    dead: HashMap<LinkId, LinkError>,
    dead_order: VecDeque<LinkId>,
}

impl State {
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

pub(crate) struct Shard {
    pub(crate) idx: u32,
    pub(crate) node: Arc<NodeShared>,
    st: RefCell<State>,
}

/// Maps a stream failure to the `io::Error` users see.
pub(crate) fn stream_error(e: StreamError) -> io::Error {
    use io::ErrorKind as K;
    match e {
        StreamError::Reset(code) => io::Error::new(
            match code {
                ErrorCode::REFUSED => K::ConnectionRefused,
                ErrorCode::NOT_FOUND => K::NotFound,
                ErrorCode::LINK_LOST => K::ConnectionAborted,
                ErrorCode::NO_ROUTE | ErrorCode::HOP_LIMIT => K::HostUnreachable,
                _ => K::ConnectionReset,
            },
            format!("stream reset by peer: {code}"),
        ),
        StreamError::Finished => io::Error::new(K::BrokenPipe, "write after shutdown_write"),
        StreamError::LinkLost(e) => link_error(&e),
        StreamError::Unknown => io::Error::new(K::NotConnected, "stream is closed"),
        StreamError::NotReady => io::Error::new(K::NotConnected, "link not ready"),
        StreamError::Limit => io::Error::new(K::WouldBlock, "peer's stream limit reached"),
        StreamError::GoingAway => {
            io::Error::new(K::ConnectionAborted, "link is shutting down (GOAWAY)")
        }
        StreamError::IdsExhausted => io::Error::new(K::AddrNotAvailable, "stream ids exhausted"),
    }
}

pub(crate) fn link_error(e: &LinkError) -> io::Error {
    let kind = match e {
        LinkError::Timeout(_) => io::ErrorKind::TimedOut,
        LinkError::Handshake(_) | LinkError::Frame(_) | LinkError::Protocol(_) => {
            io::ErrorKind::InvalidData
        }
        _ => io::ErrorKind::ConnectionAborted,
    };
    io::Error::new(kind, format!("link lost: {e}"))
}

/// The error for an operation on a link that is gone: why it died, if we remember.
fn link_gone(st: &State, link: LinkId) -> io::Error {
    match st.dead.get(&link) {
        Some(why) => link_error(why),
        None => io::Error::new(io::ErrorKind::ConnectionAborted, "link lost: link closed"),
    }
}

/// How many dead links' close reasons a shard remembers.
const DEAD_LINKS_REMEMBERED: usize = 4096;

impl Shard {
    pub(crate) fn new(idx: u32, node: Arc<NodeShared>) -> Self {
        Self {
            idx,
            node,
            st: RefCell::new(State::default()),
        }
    }

    // -------------------------------------------------------------- commands

    pub(crate) fn handle(self: &Rc<Self>, cmd: Cmd) {
        match cmd {
            Cmd::AddLink {
                id,
                transport,
                join,
                reply,
            } => self.add_link(id, transport, join, reply),
            Cmd::AddLoopback { a, b } => self.add_loopback(a, b),
            Cmd::Dial { req, reply } => {
                let mut st = self.st.borrow_mut();
                self.dial(&mut st, req, reply);
            }
            Cmd::Read { key, max, reply } => {
                let mut st = self.st.borrow_mut();
                match try_read(&mut st, key, max) {
                    Some(r) => {
                        let _ = reply.send(r);
                        st.dirty.push(key.link);
                    }
                    None => {
                        st.reads.insert(key, (max, reply));
                    }
                }
            }
            Cmd::Write { key, data, reply } => {
                let mut st = self.st.borrow_mut();
                let pw = PendingWrite {
                    data,
                    taken: 0,
                    reply,
                };
                // Behind earlier writes still waiting for credit, in order.
                st.writes.entry(key).or_default().push_back(pw);
                drive_writes(&mut st, key);
            }
            Cmd::ShutdownWrite { key, reply } => {
                let mut st = self.st.borrow_mut();
                // A half-close goes after data still waiting for credit.
                if st.writes.contains_key(&key) {
                    st.shutdowns.insert(key, reply);
                } else {
                    let r = finish(&mut st, key);
                    let _ = reply.send(r);
                }
            }
            Cmd::AddRef(key) => {
                *self.st.borrow_mut().refs.entry(key).or_insert(0) += 1;
            }
            Cmd::Release(key) => {
                let mut st = self.st.borrow_mut();
                if let Some(n) = st.refs.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        st.refs.remove(&key);
                    }
                    return;
                }
                st.reads.remove(&key);
                if st.writes.contains_key(&key) {
                    st.closing.insert(key);
                    return;
                }
                st.shutdowns.remove(&key);
                if let Some(slot) = st.links.get_mut(&key.link) {
                    slot.core.close(key.id);
                    st.dirty.push(key.link);
                }
            }
            Cmd::Broadcast { frame, except } => {
                let mut st = self.st.borrow_mut();
                let ids: Vec<LinkId> = st.links.keys().copied().collect();
                for id in ids {
                    if Some(id) == except {
                        continue;
                    }
                    if let Some(slot) = st.links.get_mut(&id) {
                        if slot.core.is_open() {
                            slot.core.send_control(&frame);
                            st.dirty.push(id);
                        }
                    }
                }
            }
            Cmd::Stop { code, reply } => {
                {
                    let mut st = self.st.borrow_mut();
                    st.stopping = true;
                    let ids: Vec<LinkId> = st.links.keys().copied().collect();
                    for id in ids {
                        if let Some(slot) = st.links.get_mut(&id) {
                            slot.core.go_away(code, "node shutting down");
                            st.dirty.push(id);
                        }
                    }
                    for id in st.links.keys().copied().collect::<Vec<_>>() {
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
                    me.st.borrow_mut().links.clear();
                    let _ = reply.send(Ok(()));
                    // Wake the shard's main loop so it sees it is done.
                    me.node.push(me.idx, Cmd::Wake(0));
                })
                .detach();
            }
            Cmd::Wake(link) => {
                self.st.borrow_mut().dirty.push(link);
            }
            Cmd::SendTo { link, frame } => {
                let mut st = self.st.borrow_mut();
                if let Some(slot) = st.links.get_mut(&link) {
                    slot.core.send_control(&frame);
                    st.dirty.push(link);
                }
            }
            Cmd::AcceptRelay {
                key,
                local,
                peer,
                out,
            } => {
                let mut st = self.st.borrow_mut();
                let accepted = st
                    .links
                    .get_mut(&key.link)
                    .is_some_and(|slot| slot.core.accept(key.id).is_ok());
                st.dirty.push(key.link);
                drop(st);
                if !accepted {
                    // The opener gave up meanwhile.
                    out.reset(ErrorCode::CANCELLED);
                    return;
                }
                let inbound = StreamRef::new(self.node.clone(), self.idx, key, local, peer);
                let (i2, o2) = (inbound.try_clone(), out.try_clone());
                glommio::spawn_local(super::pump(inbound, out)).detach();
                glommio::spawn_local(super::pump(o2, i2)).detach();
            }
            Cmd::Refuse { key, code } => {
                let mut st = self.st.borrow_mut();
                if let Some(slot) = st.links.get_mut(&key.link) {
                    slot.core.refuse(key.id, code);
                    st.dirty.push(key.link);
                }
            }
            Cmd::Reset { key, code } => {
                let mut st = self.st.borrow_mut();
                if let Some(slot) = st.links.get_mut(&key.link) {
                    slot.core.reset(key.id, code);
                    st.dirty.push(key.link);
                }
            }
            Cmd::Stats { reply } => {
                let st = self.st.borrow();
                let streams = st.links.values().map(|s| s.core.stream_count()).sum();
                let _ = reply.send(Ok((st.links.len(), streams)));
            }
        }
    }

    fn add_link(
        self: &Rc<Self>,
        id: LinkId,
        transport: Transport0,
        join: Option<String>,
        reply: Option<Reply<NodeId>>,
    ) {
        let transport = match transport {
            Transport0::Std(s) => match Transport::tcp(s) {
                Ok(t) => t,
                Err(e) => {
                    if let Some(r) = reply {
                        let _ = r.send(Err(e));
                    }
                    return;
                }
            },
            Transport0::Threads(t) => Transport::Threads(t),
        };
        let now = Instant::now();
        let core = Link::new(self.node.link_config(None), now);
        {
            let mut st = self.st.borrow_mut();
            if st.stopping {
                if let Some(r) = reply {
                    let _ = r.send(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "node is shutting down",
                    )));
                }
                return;
            }
            st.links.insert(
                id,
                LinkSlot {
                    core,
                    kind: LinkKind::Io { waker: None },
                    peer: None,
                    join,
                    up_reply: reply,
                    closed: false,
                },
            );
        }
        let me = self.clone();
        glommio::spawn_local(async move { me.run_link(id, transport).await }).detach();
    }

    fn add_loopback(&self, a: LinkId, b: LinkId) {
        let now = Instant::now();
        let mut st = self.st.borrow_mut();
        for (id, other, parity) in [(a, b, 1), (b, a, 0)] {
            st.links.insert(
                id,
                LinkSlot {
                    core: Link::new(self.node.link_config(Some(parity)), now),
                    kind: LinkKind::Loopback { other },
                    peer: None,
                    join: None,
                    up_reply: None,
                    closed: false,
                },
            );
        }
        // Complete the in-memory handshake now, before any dial can arrive.
        self.pump_loopback(&mut st, a, b);
    }

    fn dial(&self, st: &mut State, req: DialReq, reply: Reply<StreamRef>) {
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
    fn drain_events(&self, st: &mut State, link: LinkId) {
        loop {
            let Some(slot) = st.links.get_mut(&link) else {
                return;
            };
            let Some(ev) = slot.core.poll_event() else {
                return;
            };
            match ev {
                Event::Connected => {
                    let peer = slot.core.peer().map(|p| NodeId(p.node_id));
                    slot.peer = peer;
                    // Routable before `join` returns, so a dial right after it works.
                    if let (Some(peer), LinkKind::Io { .. }) = (peer, &slot.kind) {
                        self.node.link_up(peer, self.idx, link);
                    }
                    if let Some(r) = slot.up_reply.take() {
                        let _ = r.send(Ok(peer.unwrap_or(NodeId(0))));
                    }
                    // Tell the peer what we know (PROTOCOL.md §11.3).
                    for f in self.node.full_service_updates() {
                        slot.core.send_control(&f);
                    }
                    st.dirty.push(link);
                }
                Event::Incoming { id, header } => {
                    let key = StreamKey { link, id };
                    let peer = Addr {
                        node: NodeId(header.src_node),
                        port: header.src_port,
                    };
                    if header.dst_node != 0 && header.dst_node != self.node.id.0 {
                        match self.node.relay_route(&header, link) {
                            Ok(route) => self.start_relay(key, header, route),
                            Err(code) => slot.core.refuse(id, code),
                        }
                        st.dirty.push(link);
                        continue;
                    }
                    match self.node.route_incoming(&header) {
                        Ok((tx, local)) => {
                            let s = StreamRef::new(self.node.clone(), self.idx, key, local, peer);
                            match tx.try_send(Incoming { stream: s }) {
                                Ok(()) => {
                                    let _ = slot.core.accept(id);
                                }
                                Err(e) => {
                                    e.into_inner().stream.disarm();
                                    slot.core.refuse(id, ErrorCode::REFUSED);
                                }
                            }
                        }
                        Err(code) => slot.core.refuse(id, code),
                    }
                    st.dirty.push(link);
                }
                Event::Accepted(id) => {
                    let key = StreamKey { link, id };
                    if let Some(d) = st.dials.remove(&key) {
                        let s = StreamRef::new(self.node.clone(), self.idx, key, d.local, d.peer);
                        // If the dialer gave up (timeout), dropping `s` closes the stream.
                        let _ = d.reply.send(Ok(s));
                    }
                }
                Event::Readable(id) => {
                    let key = StreamKey { link, id };
                    if let Some((max, reply)) = st.reads.remove(&key) {
                        match try_read(st, key, max) {
                            Some(r) => {
                                let _ = reply.send(r);
                                st.dirty.push(link);
                            }
                            None => {
                                st.reads.insert(key, (max, reply));
                            }
                        }
                    }
                }
                Event::Writable(id) => {
                    let key = StreamKey { link, id };
                    drive_writes(st, key);
                }
                Event::Reset { id, code } => {
                    let key = StreamKey { link, id };
                    let err = || stream_error(StreamError::Reset(code));
                    if let Some(d) = st.dials.remove(&key) {
                        let _ = d.reply.send(Err(err()));
                        // The dial failed: nobody holds a handle, free the state.
                        if let Some(slot) = st.links.get_mut(&link) {
                            slot.core.close(id);
                        }
                    }
                    if let Some((max, reply)) = st.reads.remove(&key) {
                        // Data the peer finished sending stays readable.
                        let r = try_read(st, key, max).unwrap_or_else(|| Err(err()));
                        let _ = reply.send(r);
                    }
                    for pw in st.writes.remove(&key).unwrap_or_default() {
                        let _ = pw.reply.send(Err(err()));
                    }
                    if let Some(r) = st.shutdowns.remove(&key) {
                        let _ = r.send(Err(err()));
                    }
                    if st.closing.remove(&key) {
                        if let Some(slot) = st.links.get_mut(&link) {
                            slot.core.close(id);
                        }
                    }
                }
                Event::Freed(_) => {}
                Event::OpenCredit => {
                    if let Some(q) = st.blocked.remove(&link) {
                        for (req, reply) in q {
                            self.dial(st, req, reply);
                        }
                    }
                }
                Event::GoAway { .. } => {
                    if let Some(q) = st.blocked.remove(&link) {
                        for (_, reply) in q {
                            let _ = reply.send(Err(stream_error(StreamError::GoingAway)));
                        }
                    }
                }
                Event::Services(u) => {
                    self.on_services(st, link, u);
                }
                Event::Routes(entries) => {
                    self.node.on_routes(link, &entries);
                }
                Event::Closed(why) => {
                    slot.closed = true;
                    st.remember_dead(link, why.clone());
                    let Some(slot) = st.links.get_mut(&link) else {
                        return;
                    };
                    if let Some(r) = slot.up_reply.take() {
                        let _ = r.send(Err(link_error(&why)));
                    }
                    let peer = slot.peer;
                    let join = slot.join.take();
                    self.fail_link(st, link, &why);
                    if peer.is_some() {
                        self.node.link_down(link);
                    }
                    if let Some(addr) = join {
                        if !st.stopping && !matches!(why, LinkError::Graceful) {
                            self.node.rejoin(addr, why.clone());
                        }
                    }
                    st.dirty.push(link);
                }
            }
        }
    }

    /// Relays a stream (PROTOCOL.md §10): dials the next hop with the same header, one
    /// hop less; the inbound stream is accepted only once the far end accepted.
    fn start_relay(&self, inbound: StreamKey, mut header: OpenHeader, route: Route) {
        header.hop_limit -= 1;
        let dst = Addr {
            node: NodeId(header.dst_node),
            port: header.dst_port,
        };
        let src = Addr {
            node: NodeId(header.src_node),
            port: header.src_port,
        };
        let (tx, rx) = oneshot::channel();
        let req = DialReq {
            shard: route.shard,
            link: route.link,
            header,
            local: Addr {
                node: self.node.id,
                port: 0,
            },
            peer: dst,
        };
        self.node.push(route.shard, Cmd::Dial { req, reply: tx });
        let node = self.node.clone();
        let idx = self.idx;
        glommio::spawn_local(async move {
            match rx.await {
                Ok(Ok(out)) => node.push(
                    idx,
                    Cmd::AcceptRelay {
                        key: inbound,
                        local: dst,
                        peer: src,
                        out,
                    },
                ),
                Ok(Err(e)) => node.push(
                    idx,
                    Cmd::Refuse {
                        key: inbound,
                        code: super::relay_code(&e),
                    },
                ),
                Err(_) => {}
            }
        })
        .detach();
    }

    fn on_services(&self, st: &mut State, link: LinkId, u: ServicesUpdate) {
        let Some(slot) = st.links.get_mut(&link) else {
            return;
        };
        if u.request {
            if let Some(f) = self.node.full_update_for(NodeId(u.origin)) {
                slot.core.send_control(&f);
                st.dirty.push(link);
            }
            return;
        }
        if let Some(req) = self.node.apply_services(link, &u) {
            slot.core.send_control(&req);
            st.dirty.push(link);
        }
    }

    /// Fails every pending operation on a dead link.
    fn fail_link(&self, st: &mut State, link: LinkId, why: &LinkError) {
        let on = |k: &StreamKey| k.link == link;
        for (_, (_, r)) in st.reads.extract_if(|k, _| on(k)) {
            let _ = r.send(Err(link_error(why)));
        }
        for (_, q) in st.writes.extract_if(|k, _| on(k)) {
            for pw in q {
                let _ = pw.reply.send(Err(link_error(why)));
            }
        }
        for (_, r) in st.shutdowns.extract_if(|k, _| on(k)) {
            let _ = r.send(Err(link_error(why)));
        }
        for (_, d) in st.dials.extract_if(|k, _| on(k)) {
            let _ = d.reply.send(Err(link_error(why)));
        }
        for (_, reply) in st.blocked.remove(&link).into_iter().flatten() {
            let _ = reply.send(Err(link_error(why)));
        }
        st.refs.retain(|k, _| !on(k));
        st.closing.retain(|k| !on(k));
    }

    // -------------------------------------------------------------- flushing

    /// Wakes the IO tasks of links with new output; pumps loopback links directly.
    pub(crate) fn flush(&self) {
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

    fn pump_loopback(&self, st: &mut State, a: LinkId, b: LinkId) {
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

    // -------------------------------------------------------------- link IO

    async fn run_link(self: Rc<Self>, link: LinkId, mut t: Transport) {
        let mut rbuf = vec![0u8; 256 * 1024];
        let mut wbuf = BytesMut::with_capacity(512 * 1024);
        let mut wpos = 0usize;
        let mut read_open = true;
        poll_fn(|cx| {
            for _ in 0..64 {
                let mut progressed = false;
                // Output: refill from the core when the previous batch is written.
                if wpos == wbuf.len() {
                    wbuf.clear();
                    wpos = 0;
                    let mut st = self.st.borrow_mut();
                    let Some(slot) = st.links.get_mut(&link) else {
                        return Poll::Ready(());
                    };
                    slot.core.poll_transmit(&mut wbuf, 256 * 1024);
                    self.drain_events(&mut st, link);
                }
                if wpos < wbuf.len() {
                    match t.poll_write(cx, &wbuf[wpos..]) {
                        Poll::Ready(Ok(n)) => {
                            wpos += n;
                            progressed = true;
                        }
                        Poll::Ready(Err(e)) => {
                            self.transport_failed(link, &e.to_string());
                            return Poll::Ready(());
                        }
                        Poll::Pending => {}
                    }
                }
                // Input, while the core wants it.
                let (wants, closed) = {
                    let st = self.st.borrow();
                    match st.links.get(&link) {
                        Some(s) => (s.core.wants_input(), s.closed),
                        None => return Poll::Ready(()),
                    }
                };
                if wants && read_open {
                    match t.poll_read(cx, &mut rbuf) {
                        Poll::Ready(Ok(0)) => {
                            read_open = false;
                            self.transport_failed(link, "connection closed by peer");
                        }
                        Poll::Ready(Ok(n)) => {
                            let mut st = self.st.borrow_mut();
                            if let Some(slot) = st.links.get_mut(&link) {
                                let _ = slot.core.handle_input(&rbuf[..n], Instant::now());
                            }
                            self.drain_events(&mut st, link);
                            progressed = true;
                        }
                        Poll::Ready(Err(e)) => {
                            read_open = false;
                            self.transport_failed(link, &e.to_string());
                        }
                        Poll::Pending => {}
                    }
                }
                if closed && wpos == wbuf.len() {
                    let st = self.st.borrow();
                    if st.links.get(&link).is_none_or(|s| !s.core.has_transmit()) {
                        return Poll::Ready(());
                    }
                }
                if !progressed {
                    let mut st = self.st.borrow_mut();
                    if let Some(LinkKind::Io { waker }) =
                        st.links.get_mut(&link).map(|s| &mut s.kind)
                    {
                        *waker = Some(cx.waker().clone());
                    }
                    // Output queued meanwhile by event handling: go round again.
                    let again = wpos == wbuf.len()
                        && st.links.get(&link).is_some_and(|s| s.core.has_transmit());
                    drop(st);
                    if again {
                        continue;
                    }
                    self.flush();
                    return Poll::Pending;
                }
            }
            // Fairness: let other tasks on this shard run.
            self.flush();
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await;
        t.close().await;
        let mut st = self.st.borrow_mut();
        if let Some(slot) = st.links.get_mut(&link) {
            slot.core.transport_closed("transport closed");
        }
        self.drain_events(&mut st, link);
        st.links.remove(&link);
        st.blocked.remove(&link);
        drop(st);
        self.flush();
    }

    fn transport_failed(&self, link: LinkId, why: &str) {
        let mut st = self.st.borrow_mut();
        if let Some(slot) = st.links.get_mut(&link) {
            slot.core.transport_closed(why);
        }
        self.drain_events(&mut st, link);
    }

    // -------------------------------------------------------------- timers

    /// The shard's one timer: keep-alive for every link it owns.
    pub(crate) async fn run_timers(self: Rc<Self>) {
        loop {
            let next = {
                let st = self.st.borrow();
                if st.stopping && st.links.is_empty() {
                    return;
                }
                st.links
                    .values()
                    .filter_map(|s| s.core.poll_timeout())
                    .min()
            };
            let now = Instant::now();
            let wait = next
                .map(|t| t.saturating_duration_since(now))
                .unwrap_or(Duration::from_millis(100))
                .clamp(Duration::from_millis(1), Duration::from_millis(100));
            glommio::timer::sleep(wait).await;
            let now = Instant::now();
            {
                let mut st = self.st.borrow_mut();
                let due: Vec<LinkId> = st
                    .links
                    .iter()
                    .filter(|(_, s)| s.core.poll_timeout().is_some_and(|t| t <= now))
                    .map(|(id, _)| *id)
                    .collect();
                for id in due {
                    if let Some(slot) = st.links.get_mut(&id) {
                        slot.core.handle_timeout(now);
                    }
                    self.drain_events(&mut st, id);
                    st.dirty.push(id);
                }
            }
            self.flush();
        }
    }

    /// Links driven by an IO task (the loopback pair has none).
    fn has_io_links(&self) -> bool {
        self.st
            .borrow()
            .links
            .values()
            .any(|s| matches!(s.kind, LinkKind::Io { .. }))
    }

    pub(crate) fn is_stopped(&self) -> bool {
        let st = self.st.borrow();
        st.stopping && st.links.is_empty()
    }
}

/// Takes up to `max` bytes of queued chunks; `None` if nothing is there yet.
fn try_read(st: &mut State, key: StreamKey, max: usize) -> Option<io::Result<Chunks>> {
    let Some(slot) = st.links.get_mut(&key.link) else {
        return Some(Err(link_gone(st, key.link)));
    };
    let mut out = Chunks::default();
    let mut got = 0;
    loop {
        match slot.core.recv(key.id, max - got) {
            Ok(Recv::Data(b)) => {
                got += b.len();
                out.push(b);
                if got >= max {
                    return Some(Ok(out));
                }
            }
            // End of stream is reported on its own, after the data before it.
            Ok(Recv::Fin) => return Some(Ok(out)),
            Ok(Recv::WouldBlock) => return (got > 0).then_some(Ok(out)),
            Err(e) if got == 0 => return Some(Err(stream_error(e))),
            Err(_) => return Some(Ok(out)),
        }
    }
}

/// Hands queued writes to the core, oldest first, as far as the stream's credit
/// allows; each is answered once all its bytes are taken. When the queue empties, a
/// half-close or close waiting behind it goes ahead.
fn drive_writes(st: &mut State, key: StreamKey) {
    loop {
        let Some(mut pw) = st.writes.get_mut(&key).and_then(|q| q.pop_front()) else {
            break;
        };
        let Some(slot) = st.links.get_mut(&key.link) else {
            let _ = pw.reply.send(Err(link_gone(st, key.link)));
            continue;
        };
        match slot.core.send(key.id, &mut pw.data) {
            Ok(n) => {
                if n > 0 {
                    st.dirty.push(key.link);
                }
                pw.taken += n;
                if !pw.data.is_empty() {
                    // Out of credit: wait for `Writable`.
                    if let Some(q) = st.writes.get_mut(&key) {
                        q.push_front(pw);
                    }
                    return;
                }
                let _ = pw.reply.send(Ok(pw.taken));
            }
            Err(e) => {
                let _ = pw.reply.send(Err(stream_error(e)));
            }
        }
    }
    st.writes.remove(&key);
    if let Some(r) = st.shutdowns.remove(&key) {
        let res = finish(st, key);
        let _ = r.send(res);
    }
    if st.closing.remove(&key) {
        if let Some(slot) = st.links.get_mut(&key.link) {
            slot.core.close(key.id);
            st.dirty.push(key.link);
        }
    }
}

fn finish(st: &mut State, key: StreamKey) -> io::Result<()> {
    let Some(slot) = st.links.get_mut(&key.link) else {
        return Err(link_gone(st, key.link));
    };
    let r = slot.core.finish(key.id).map_err(stream_error);
    st.dirty.push(key.link);
    r
}
