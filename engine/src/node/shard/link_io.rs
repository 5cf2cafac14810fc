//! A link's IO task and the shard's timer task.
//!
//! The IO task moves bytes between the socket and the link's core. It also reports
//! what only it can see: that the transport took nothing for a while (write stall),
//! and, when the keep-alive ran out, whether the peer's bytes are in fact waiting in
//! the socket (we were busy) or the peer is really silent.

use super::{LinkId, LinkKind, LinkSlot, Shard, CLOSE_FLUSH};
use crate::node::io::Transport;
use crate::node::tls;
use crate::proto::TxBuf;
use crate::types::NodeId;
use bytes::BytesMut;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

/// Read buffer before the handshake is done: an unauthenticated connection holds little.
const HANDSHAKE_RBUF: usize = 4 * 1024;
/// Read buffer of an established link.
const RBUF: usize = 256 * 1024;
/// Bytes pulled from the core per socket write.
const WRITE_BATCH: usize = 256 * 1024;

impl LinkSlot {
    /// When the timer must look at this link next.
    fn next_deadline(&self, stall_after: Duration) -> Option<Instant> {
        if self.abort_io {
            return None;
        }
        if !matches!(self.kind, LinkKind::Io { .. }) {
            return self.core.poll_timeout();
        }
        // While the IO task verifies a silence, the keep-alive deadline waits for it.
        let core = self.core.poll_timeout().filter(|_| !self.verify_silence);
        let stall = self.write_blocked_since.map(|t| t + stall_after);
        let flush = self.closed_at.map(|t| t + CLOSE_FLUSH);
        [core, stall, flush].into_iter().flatten().min()
    }
}

impl Shard {
    /// `dialer`: we connected (the TLS client); `expect`: the node a direct upgrade
    /// must reach.
    pub(super) async fn run_link(
        self: Rc<Self>,
        link: LinkId,
        t: Transport,
        dialer: bool,
        expect: Option<NodeId>,
    ) {
        let Some(mut t) = self.clone().secure_link(link, t, dialer, expect).await else {
            self.end_link(link);
            return;
        };
        // Bytes read and not decoded yet (the start of a frame), with spare capacity
        // behind them that the next read lands in: frames are decoded out of it with
        // no copy (`Link::handle_input_buf`), and TCP receives into the spare capacity
        // directly, so nothing is zeroed or copied in user space.
        let mut pending = BytesMut::new();
        // Reused buffer for transports that read into initialised memory (TLS).
        let mut scratch = Vec::new();
        // Frames pulled from the core and not written yet, large payloads by reference.
        let mut tx = TxBuf::default();
        let mut read_open = true;
        poll_fn(|cx| {
            for _ in 0..64 {
                // Commands from handles (a stream's request staged, a reader's
                // credit) are taken here too: see `Shard::take_commands`.
                self.take_commands();
                let mut progressed = false;
                let want = {
                    let st = self.st.borrow();
                    let Some(slot) = st.links.get(&link) else {
                        return Poll::Ready(());
                    };
                    if slot.abort_io {
                        return Poll::Ready(());
                    }
                    if slot.core.is_open() {
                        RBUF
                    } else {
                        HANDSHAKE_RBUF
                    }
                };
                if pending.capacity() - pending.len() < want / 4 {
                    // A new block (or the old one, once every frame split off it was
                    // dropped); only an incomplete frame's bytes are copied.
                    pending.reserve(want);
                }
                // Output: refill from the core when the previous batch is written.
                if tx.is_empty() {
                    let mut st = self.st.borrow_mut();
                    let Some(slot) = st.links.get_mut(&link) else {
                        return Poll::Ready(());
                    };
                    slot.core.poll_transmit_gather(&mut tx, WRITE_BATCH);
                    if tx.is_empty() {
                        slot.write_blocked_since = None;
                    }
                    self.drain_events(&mut st, link);
                }
                if !tx.is_empty() {
                    let r = t.poll_write_tx(cx, &tx);
                    let mut st = self.st.borrow_mut();
                    let slot = st.links.get_mut(&link);
                    match r {
                        Poll::Ready(Ok(n)) => {
                            tx.advance(n);
                            progressed = true;
                            if let Some(s) = slot {
                                s.write_blocked_since = None;
                            }
                        }
                        Poll::Ready(Err(e)) => {
                            drop(st);
                            self.transport_error(link, &e);
                            return Poll::Ready(());
                        }
                        Poll::Pending => {
                            if let Some(s) = slot {
                                s.write_blocked_since.get_or_insert_with(Instant::now);
                            }
                        }
                    }
                }
                // All handed over: make sure the transport sent it (TLS may hold
                // records the socket did not take).
                if tx.is_empty() {
                    match t.poll_flush(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => {
                            self.transport_error(link, &e);
                            return Poll::Ready(());
                        }
                        Poll::Pending => {
                            if let Some(s) = self.st.borrow_mut().links.get_mut(&link) {
                                s.write_blocked_since.get_or_insert_with(Instant::now);
                            }
                        }
                    }
                }
                // Input, while the core wants it.
                let (wants, closed) = {
                    let st = self.st.borrow();
                    match st.links.get(&link) {
                        Some(s) => (s.wants_input(), s.closed),
                        None => return Poll::Ready(()),
                    }
                };
                if wants && read_open {
                    match t.poll_read_into(cx, &mut pending, want, &mut scratch) {
                        Poll::Ready(Ok(0)) => {
                            read_open = false;
                            self.transport_failed(link, "connection closed by peer");
                        }
                        Poll::Ready(Ok(n)) => {
                            let mut st = self.st.borrow_mut();
                            if let Some(slot) = st.links.get_mut(&link) {
                                slot.verify_silence = false;
                                let _ = slot.core.handle_input_buf(&mut pending, n, Instant::now());
                            }
                            self.drain_events(&mut st, link);
                            progressed = true;
                        }
                        Poll::Ready(Err(e)) => {
                            read_open = false;
                            self.transport_error(link, &e);
                        }
                        Poll::Pending => {
                            // Nothing waiting in the socket: if the keep-alive ran out,
                            // the peer really is silent.
                            let mut st = self.st.borrow_mut();
                            if let Some(slot) = st.links.get_mut(&link) {
                                if slot.verify_silence {
                                    slot.verify_silence = false;
                                    slot.core.handle_timeout(Instant::now());
                                    self.drain_events(&mut st, link);
                                }
                            }
                        }
                    }
                }
                if !wants || !read_open {
                    // Not reading. If that is the peer's doing (it does not take our
                    // control frames, or closed its side), its silence can be judged
                    // now; if we are the ones behind (the control task), it waits.
                    let mut st = self.st.borrow_mut();
                    if let Some(slot) = st.links.get_mut(&link) {
                        if slot.verify_silence && (!slot.core.wants_input() || !read_open) {
                            slot.verify_silence = false;
                            slot.core.handle_timeout(Instant::now());
                            self.drain_events(&mut st, link);
                        }
                    }
                }
                if closed && tx.is_empty() {
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
                    let again =
                        tx.is_empty() && st.links.get(&link).is_some_and(|s| s.core.has_transmit());
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
        self.end_link(link);
    }

    /// Secures a TCP link with TLS when the node is configured for it; None if the
    /// peer was refused (the link's core then holds the reason).
    async fn secure_link(
        self: Rc<Self>,
        link: LinkId,
        t: Transport,
        dialer: bool,
        expect: Option<NodeId>,
    ) -> Option<Transport> {
        let state = match (self.node.tls_state(), &t) {
            (Some(state), Transport::Tcp(_)) => state,
            _ => return Some(t),
        };
        let Transport::Tcp(s) = t else {
            return None;
        };
        let timeout = self.node.cfg.limits.handshake_timeout;
        match tls::secure(state, s, dialer, expect, timeout).await {
            Ok(sec) => {
                let mut st = self.st.borrow_mut();
                let slot = st.links.get_mut(&link)?;
                slot.core.set_authenticated_peer(sec.peer.0);
                Some(Transport::Tls(Box::new(sec.io)))
            }
            Err(e) => {
                self.transport_error(link, &e);
                None
            }
        }
    }

    /// The link's IO is over: its state goes.
    fn end_link(self: &Rc<Self>, link: LinkId) {
        let mut st = self.st.borrow_mut();
        if let Some(slot) = st.links.get_mut(&link) {
            slot.core.transport_closed("transport closed");
        }
        self.drain_events(&mut st, link);
        if let Some(slot) = st.links.remove(&link) {
            self.retire(&slot);
        }
        st.blocked.remove(&link);
        drop(st);
        self.node.links.fetch_sub(1, Ordering::Relaxed);
        self.flush();
    }

    /// The transport failed with `e`. Security refusals (`PermissionDenied` from the
    /// TLS handshake, or the peer's TLS alert refusing our certificate) end the link
    /// as refused, with their reason; anything else as a lost transport.
    pub(super) fn transport_error(self: &Rc<Self>, link: LinkId, e: &std::io::Error) {
        let refused = match e.kind() {
            std::io::ErrorKind::PermissionDenied => Some(e.to_string()),
            _ => tls::describe_transport_error(e),
        };
        let Some(why) = refused else {
            self.transport_failed(link, &e.to_string());
            return;
        };
        let mut st = self.st.borrow_mut();
        if let Some(slot) = st.links.get_mut(&link) {
            let _in = slot.span.enter();
            tracing::warn!(node = %self.node.id, addr = ?slot.addr, reason = %why, "link refused");
            drop(_in);
            slot.core.refuse_peer(why);
        }
        self.drain_events(&mut st, link);
    }

    pub(super) fn transport_failed(self: &Rc<Self>, link: LinkId, why: &str) {
        let mut st = self.st.borrow_mut();
        if let Some(slot) = st.links.get_mut(&link) {
            slot.core.transport_closed(why);
        }
        self.drain_events(&mut st, link);
    }

    /// The shard's one timer: every link's deadlines (handshake, keep-alive, write
    /// stall, closing flush) and, on shard 0, the control task's.
    pub(crate) async fn run_timers(self: Rc<Self>) {
        let stall_after = self.node.cfg.link.keepalive_timeout;
        loop {
            let next = {
                let st = self.st.borrow();
                if st.stopping && st.links.is_empty() {
                    return;
                }
                let links = st
                    .links
                    .values()
                    .filter_map(|s| s.next_deadline(stall_after));
                let control = self
                    .control
                    .as_ref()
                    .and_then(|c| c.borrow().poll_timeout());
                links.chain(control).min()
            };
            let now = Instant::now();
            let wait = next
                .map(|t| t.saturating_duration_since(now))
                .unwrap_or(Duration::from_millis(100))
                .clamp(Duration::from_millis(1), Duration::from_millis(100));
            glommio::timer::sleep(wait).await;
            let now = Instant::now();
            self.link_timers(now, stall_after);
            self.sweep_mail();
            if let Some(c) = &self.control {
                c.borrow_mut().handle_timeout(now);
            }
            self.flush();
        }
    }

    fn link_timers(self: &Rc<Self>, now: Instant, stall_after: Duration) {
        let mut st = self.st.borrow_mut();
        let due: Vec<LinkId> = st
            .links
            .iter()
            .filter(|(_, s)| s.next_deadline(stall_after).is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(slot) = st.links.get_mut(&id) else {
                continue;
            };
            let io = matches!(slot.kind, LinkKind::Io { .. });
            if slot.closed_at.is_some_and(|t| t + CLOSE_FLUSH <= now) {
                // The peer does not take our last frames: stop trying.
                slot.abort_io = true;
            } else if let Some(since) = slot.write_blocked_since.filter(|t| *t + stall_after <= now)
            {
                tracing::warn!(node = %self.node.id, peer = ?slot.peer, link = id, "peer stopped reading; dropping the link");
                slot.core.write_stalled(now - since);
                slot.abort_io = true;
            } else if io && slot.core.silence_expired(now) {
                // Judge the peer's silence only after looking at the socket.
                slot.verify_silence = true;
            } else {
                slot.core.handle_timeout(now);
            }
            if let LinkKind::Io { waker: Some(w) } = &mut slot.kind {
                w.wake_by_ref();
            }
            self.drain_events(&mut st, id);
            st.dirty.push(id);
        }
    }
}
