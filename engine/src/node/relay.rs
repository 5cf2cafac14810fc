//! Relaying (PROTOCOL.md §10): a stream for another node is opened on towards it and
//! the two streams are spliced: on the shard itself when both links live there
//! (`shard/splice.rs`: no task, no handle), else with one pump task per direction
//! through the streams' handles.
//!
//! Bounded against a peer that opens relayed streams in bulk: each inbound link may
//! have at most `max_relayed_streams_per_link` relayed streams in flight and open at
//! most `max_relayed_opens_per_sec` (a token bucket); beyond, the OPEN is refused with
//! RESET LIMIT_EXCEEDED, and the link carries on.

use super::config::Limits;
use super::dial::DialReq;
use super::shard::Shard;
use super::{Cmd, StreamKey, StreamRef};
use crate::proto::frame::OpenHeader;
use crate::proto::ErrorCode;
use crate::types::{Addr, NodeId};
use futures_channel::oneshot;
use std::cell::Cell;
use std::future::poll_fn;
use std::rc::Rc;
use std::time::Instant;

/// Bytes a relay reads from one side of a spliced stream before it has written them
/// to the other side: with the two streams' windows, all a relayed stream can hold.
const RELAY_CHUNK: usize = 256 * 1024;

/// The reset code that carries a relayed stream's failure to its other side.
pub(crate) fn relay_code(e: &std::io::Error) -> ErrorCode {
    use std::io::ErrorKind as K;
    // A reset crosses with its own code.
    if let Some(code) = super::errors::reset_code(e) {
        return code;
    }
    match e.kind() {
        K::ConnectionRefused => ErrorCode::REFUSED,
        K::NotFound => ErrorCode::NOT_FOUND,
        K::HostUnreachable => ErrorCode::NO_ROUTE,
        K::ConnectionAborted | K::TimedOut | K::InvalidData => ErrorCode::LINK_LOST,
        _ => ErrorCode::CANCELLED,
    }
}

/// One inbound link's allowance of relayed streams.
pub(crate) struct RelayBudget {
    in_flight: Rc<Cell<usize>>,
    max: usize,
    tokens: f64,
    rate: f64,
    refilled: Instant,
}

/// Held while a relayed stream lives; gives its place back when dropped.
pub(crate) struct RelayGuard(Rc<Cell<usize>>);

impl Drop for RelayGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl RelayBudget {
    pub(crate) fn new(l: &Limits, now: Instant) -> Self {
        let rate = f64::from(l.max_relayed_opens_per_sec.max(1));
        Self {
            in_flight: Rc::new(Cell::new(0)),
            max: l.max_relayed_streams_per_link,
            tokens: rate,
            rate,
            refilled: now,
        }
    }

    /// Relayed streams in flight on the link.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// A place for one more relayed stream, if the link is within its limits.
    pub(crate) fn take(&mut self, now: Instant) -> Option<RelayGuard> {
        let dt = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        self.refilled = now;
        if self.in_flight.get() >= self.max || self.tokens < 1.0 {
            return None;
        }
        self.tokens -= 1.0;
        self.in_flight.set(self.in_flight.get() + 1);
        Some(RelayGuard(self.in_flight.clone()))
    }
}

/// Moves one direction of a relayed stream: reads from `from` only once the previous
/// bytes were taken by `to` (within its credit), so backpressure holds end to end and
/// the relay holds at most [`RELAY_CHUNK`] per direction beyond the streams' windows.
async fn pump(from: StreamRef, to: StreamRef, _guard: Rc<RelayGuard>, relayed: Rc<Cell<u64>>) {
    loop {
        let mut chunks = match poll_fn(|cx| from.poll_read_chunks(cx, RELAY_CHUNK)).await {
            Ok(c) => c,
            Err(e) => {
                to.reset(relay_code(&e));
                return;
            }
        };
        if chunks.is_empty() {
            let _ = to.shutdown_write();
            return;
        }
        relayed.set(relayed.get() + chunks.len() as u64);
        // Hand every chunk over (no copy), then wait until `to` took them all.
        while let Some(mut b) = chunks.pop_chunk() {
            while !b.is_empty() {
                if let Err(e) = poll_fn(|cx| to.poll_write_bytes(cx, &mut b)).await {
                    from.reset(relay_code(&e));
                    return;
                }
            }
        }
        if let Err(e) = poll_fn(|cx| to.poll_flush(cx)).await {
            from.reset(relay_code(&e));
            return;
        }
    }
}

impl Shard {
    /// A peer opened a stream for another node: relay it, or refuse it with the code
    /// that says why (PROTOCOL.md §10.1, §13).
    pub(super) fn on_relayed_open(
        self: &Rc<Self>,
        st: &mut super::shard::State,
        key: StreamKey,
        header: OpenHeader,
    ) {
        let refuse = |st: &mut super::shard::State, code| {
            if let Some(slot) = st.link_mut(key.link) {
                slot.core.refuse(key.id, code);
            }
            st.dirty.push(key.link);
            self.totals.borrow_mut().refused_opens += 1;
        };
        if !self.node.is_router() {
            return refuse(st, ErrorCode::NOT_ROUTER);
        }
        if header.hop_limit == 0 {
            return refuse(st, ErrorCode::HOP_LIMIT);
        }
        let route = match self.node.view.load().routes.get(&NodeId(header.dst_node)) {
            // Never back where it came from: that is a loop.
            Some(r) if r.link != key.link => *r,
            _ => return refuse(st, ErrorCode::NO_ROUTE),
        };
        let Some(guard) = st
            .link_mut(key.link)
            .and_then(|s| s.relays.take(Instant::now()))
        else {
            self.node.hit_limit("relayed streams per link", 1);
            return refuse(st, ErrorCode::LIMIT_EXCEEDED);
        };
        let mut header = header;
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
        // Our own shard's dial is queued like any other: we are inside event handling.
        self.node.push(route.shard, Cmd::Dial { req, reply: tx });
        let me = self.clone();
        glommio::spawn_local(async move {
            // glommio may poll a new task at once, inside this event handling, while
            // the shard's state is borrowed: act only after a first yield.
            futures_lite::future::yield_now().await;
            match rx.await {
                Ok(Ok(out)) => me.accept_relay(key, dst, src, out, guard),
                Ok(Err(e)) => me.refuse_now(key, relay_code(&e)),
                Err(_) => me.refuse_now(key, ErrorCode::LINK_LOST),
            }
        })
        .detach();
    }

    /// The next hop accepted: accept the inbound stream and splice the two.
    fn accept_relay(
        self: &Rc<Self>,
        key: StreamKey,
        local: Addr,
        peer: Addr,
        out: StreamRef,
        guard: RelayGuard,
    ) {
        let accepted = {
            let mut st = self.st_mut();
            let ok = st
                .link_mut(key.link)
                .is_some_and(|slot| slot.core.accept(key.id).is_ok());
            if !ok {
                // No handle will ever read what a mailbox took for it meanwhile.
                self.detach_mail(&mut st, key);
            }
            st.dirty.push(key.link);
            ok
        };
        self.flush();
        if !accepted {
            // The opener gave up meanwhile.
            out.reset(ErrorCode::CANCELLED);
            return;
        }
        if out.shard_index() == self.idx {
            // Both links live here: splice inside the shard's event handling.
            let out_key = out.key();
            out.disarm();
            self.totals.borrow_mut().relayed_streams += 1;
            let moved = self.splice(&mut self.st_mut(), key, out_key, guard);
            self.relayed_bytes.set(self.relayed_bytes.get() + moved);
            self.flush();
            return;
        }
        let inbound = StreamRef::new(self.node.clone(), self.idx, key, local, peer);
        let (i2, o2) = (inbound.try_clone(), out.try_clone());
        let guard = Rc::new(guard);
        self.totals.borrow_mut().relayed_streams += 1;
        glommio::spawn_local(pump(
            inbound,
            out,
            guard.clone(),
            self.relayed_bytes.clone(),
        ))
        .detach();
        glommio::spawn_local(pump(o2, i2, guard, self.relayed_bytes.clone())).detach();
    }

    fn refuse_now(self: &Rc<Self>, key: StreamKey, code: ErrorCode) {
        {
            let mut st = self.st_mut();
            if let Some(slot) = st.link_mut(key.link) {
                slot.core.refuse(key.id, code);
            }
            // Bytes the opener sent while we dialed were taken into a mailbox (its
            // `Readable`); no handle will ever read them: they go with the stream.
            self.detach_mail(&mut st, key);
            st.dirty.push(key.link);
        }
        self.flush();
    }
}
