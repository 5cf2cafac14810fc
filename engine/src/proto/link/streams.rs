//! The stream API the application calls (open, accept, send, recv, finish, reset,
//! close) and the per-stream bookkeeping behind it: resets, receive windows and
//! freeing a finished stream's state.

use super::transmit::stream_room;
use super::{Event, Link, LinkConfig, LinkError, Phase, Recv, StreamError};
use crate::proto::frame::{ErrorCode, Frame, OpenHeader, StreamId, MAX_STREAM_ID};
use crate::proto::stream::*;
use bytes::Bytes;
use std::time::Duration;

impl Link {
    fn check_usable(&self) -> Result<(), StreamError> {
        match self.phase {
            Phase::Open => Ok(()),
            Phase::Handshake => Err(StreamError::NotReady),
            Phase::Closed => Err(StreamError::LinkLost(
                self.closed.clone().unwrap_or(LinkError::Graceful),
            )),
        }
    }

    /// Opens a stream towards `header`'s destination. The OPEN frame goes out with the
    /// first bytes written to it (no round trip before data); [`Event::Accepted`] or
    /// [`Event::Reset`] reports the peer's answer.
    pub fn open(&mut self, header: OpenHeader) -> Result<StreamId, StreamError> {
        self.check_usable()?;
        if self.goaway_sent.is_some() || self.goaway_recv.is_some() {
            return Err(StreamError::GoingAway);
        }
        let n = self.next_local_n;
        if n > MAX_STREAM_ID >> 1 {
            return Err(StreamError::IdsExhausted);
        }
        if n > self.open_credit {
            self.open_blocked = true;
            return Err(StreamError::Limit);
        }
        self.next_local_n += 1;
        let id = (n << 1) | self.parity;
        let peer_window = self.peer.as_ref().map_or(0, |p| p.initial_window);
        let s = Stream::new(
            LOCAL | OPEN_PENDING | SCHEDULED,
            peer_window,
            self.cfg.initial_window,
        );
        self.streams.insert(id, s);
        self.pending_open.insert(id, header);
        self.ready.push_back(id);
        Ok(id)
    }

    /// Accepts a peer's stream: the peer learns it through a WINDOW frame with ACK.
    pub fn accept(&mut self, id: StreamId) -> Result<(), StreamError> {
        self.check_usable()?;
        let s = self.streams.get_mut(&id).ok_or(StreamError::Unknown)?;
        if s.has(LOCAL) || s.has(ACCEPTED) {
            return Ok(());
        }
        s.set(ACCEPTED);
        if s.is_reset() {
            return Ok(());
        }
        let inc = std::mem::take(&mut s.recv_unacked);
        s.set_recv_avail(s.recv_avail() + inc);
        self.push_ctrl(&Frame::Window {
            id,
            ack: true,
            increment: inc,
        });
        Ok(())
    }

    /// Refuses a peer's stream with `code` (e.g. REFUSED: nobody listens).
    pub fn refuse(&mut self, id: StreamId, code: ErrorCode) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.set(APP_CLOSED);
        // Already reset by the peer (OPEN then RESET in one read): nothing to send,
        // but the state must still go, and the refusal was counted at the RESET. A
        // stream another node opened through the neighbour is not counted.
        let counted = s.is_reset() || !s.has(FROM_PEER);
        self.reset_stream(id, code, false);
        self.maybe_free(id);
        if !counted {
            if let Err(e) = self.count_reset() {
                self.fail(e);
            }
        }
    }

    /// Queues data; returns how many bytes were taken (0 when the stream's credit is
    /// full: an [`Event::Writable`] follows when it frees up).
    pub fn send(&mut self, id: StreamId, data: &mut Bytes) -> Result<usize, StreamError> {
        self.check_usable()?;
        let s = self.streams.get_mut(&id).ok_or(StreamError::Unknown)?;
        if s.is_reset() {
            return Err(StreamError::Reset(s.reset_code()));
        }
        if s.has(FIN_QUEUED) || s.has(APP_CLOSED) {
            return Err(StreamError::Finished);
        }
        // What we queue is bounded by our own limits, not only by the window the peer
        // grants: a peer advertising 4 GiB and never reading must not make us hold it.
        let queued = slen(&self.bufs, id);
        let stream_room = stream_room(s, queued, &self.cfg);
        let link_room = self
            .cfg
            .max_link_send_buffer
            .saturating_sub(self.send_queued) as usize;
        let n = stream_room.min(link_room).min(data.len());
        if n < data.len() {
            s.set(WRITE_BLOCKED);
            if link_room < stream_room && !s.has(LINK_WAIT) {
                s.set(LINK_WAIT);
                self.link_blocked.push_back(id);
            }
        }
        if n > 0 {
            push_send(&mut self.bufs, id, data.split_to(n));
            self.send_queued += n as u64;
            if !s.has(SCHEDULED) {
                s.set(SCHEDULED);
                self.ready.push_back(id);
            }
        }
        Ok(n)
    }

    /// Bytes that [`Link::send`] would take right now.
    pub fn send_capacity(&self, id: StreamId) -> usize {
        self.streams.get(&id).map_or(0, |s| {
            let link_room = self
                .cfg
                .max_link_send_buffer
                .saturating_sub(self.send_queued);
            stream_room(s, slen(&self.bufs, id), &self.cfg).min(link_room as usize)
        })
    }

    /// Bytes queued to send over all streams of the link.
    pub fn send_queued(&self) -> u64 {
        self.send_queued
    }

    /// Half-closes our direction after queued data (FIN).
    pub fn finish(&mut self, id: StreamId) -> Result<(), StreamError> {
        self.check_usable()?;
        let s = self.streams.get_mut(&id).ok_or(StreamError::Unknown)?;
        if s.is_reset() {
            return Err(StreamError::Reset(s.reset_code()));
        }
        if s.has(FIN_QUEUED) {
            return Ok(());
        }
        s.set(FIN_QUEUED);
        if !s.has(SCHEDULED) {
            s.set(SCHEDULED);
            self.ready.push_back(id);
        }
        Ok(())
    }

    /// Reads up to `max` bytes; they count as consumed at once (credit goes back to the
    /// peer as the window policy says).
    pub fn recv(&mut self, id: StreamId, max: usize) -> Result<Recv, StreamError> {
        let r = self.recv_take(id, max)?;
        if let Recv::Data(b) = &r {
            self.recv_consumed(id, b.len(), 0);
        }
        Ok(r)
    }

    /// Takes up to `max` received bytes out of the stream's queue without counting them
    /// as consumed: the caller holds them (a handle's mailbox) and reports them with
    /// [`Link::recv_consumed`] once the application has read them, so the peer's credit
    /// still follows what the application consumed, not what left this queue.
    pub fn recv_take(&mut self, id: StreamId, max: usize) -> Result<Recv, StreamError> {
        if self.phase == Phase::Closed {
            return Err(StreamError::LinkLost(
                self.closed.clone().unwrap_or(LinkError::Graceful),
            ));
        }
        let s = self.streams.get_mut(&id).ok_or(StreamError::Unknown)?;
        if s.is_reset() && rlen(&self.bufs, id) == 0 && !s.has(FIN_RECV) {
            return Err(StreamError::Reset(s.reset_code()));
        }
        match pop_recv(&mut self.bufs, id, max) {
            Some(b) => {
                if rlen(&self.bufs, id) == 0 {
                    s.clear(READ_NOTIFIED);
                }
                Ok(Recv::Data(b))
            }
            None if s.has(FIN_RECV) => {
                s.clear(READ_NOTIFIED);
                Ok(Recv::Fin)
            }
            None => {
                s.clear(READ_NOTIFIED);
                Ok(Recv::WouldBlock)
            }
        }
    }

    /// The application consumed `n` bytes taken with [`Link::recv_take`]; `held` bytes
    /// taken are still unread. Credit goes back once enough was consumed.
    pub fn recv_consumed(&mut self, id: StreamId, n: usize, held: usize) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if !s.is_reset() {
            s.recv_unacked = s.recv_unacked.saturating_add(n as u32);
        }
        self.maybe_send_window(id, held);
    }

    /// How many more bytes the application must consume before credit goes back to
    /// the peer, with `held` bytes taken and unread (at least 1). A reader reports its
    /// consumption once it passes this, so credit flows with one report per quarter
    /// window or so instead of one per read.
    pub fn credit_due(&self, id: StreamId, held: usize) -> usize {
        self.streams.get(&id).map_or(usize::MAX, |s| {
            let buffered = rlen(&self.bufs, id) + held;
            let window = recv_window(&self.grown, s, id, self.cfg.initial_window);
            let at = if buffered > 0 {
                window / 4 * 3
            } else {
                window / 2
            };
            (at.saturating_sub(s.recv_unacked) as usize).max(1)
        })
    }

    /// Bytes buffered for reading on a stream.
    pub fn readable_bytes(&self, id: StreamId) -> usize {
        rlen(&self.bufs, id)
    }

    /// Aborts a stream: RESET goes ahead of queued data, queued data is dropped.
    pub fn reset(&mut self, id: StreamId, code: ErrorCode) {
        self.reset_stream(id, code, false);
    }

    /// The application dropped its handle: queued data is still delivered, then FIN;
    /// data that arrives afterwards is discarded and answered with RESET(CANCELLED).
    /// The state is freed once both directions are finished.
    pub fn close(&mut self, id: StreamId) {
        self.close_discarding(id, 0);
    }

    /// [`Link::close`] for a stream whose application also drops `unread` bytes it had
    /// taken with [`Link::recv_take`] (and `consumed` it read but had not reported):
    /// they count as consumed and discarded.
    pub fn close_discarding(&mut self, id: StreamId, unread: usize) {
        if self.phase == Phase::Closed {
            self.streams.remove(&id);
            self.bufs.remove(&id);
            self.grown.remove(&id);
            return;
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.set(APP_CLOSED);
        let unread = rlen(&self.bufs, id) + unread;
        if unread > 0 {
            s.set(DISCARDED);
            s.recv_unacked += unread as u32;
            clear_recv(&mut self.bufs, id);
        }
        if !s.local_done() && !s.has(FIN_QUEUED) {
            s.set(FIN_QUEUED);
            if !s.has(SCHEDULED) {
                s.set(SCHEDULED);
                self.ready.push_back(id);
            }
        }
        // Keep the peer's writer moving until our FIN is out.
        self.maybe_send_window(id, 0);
        self.maybe_free(id);
    }

    // ------------------------------------------------------------------ internals

    pub(super) fn send_reset_frame(&mut self, id: StreamId, code: ErrorCode) {
        self.push_ctrl(&Frame::Reset { id, code });
    }

    /// Resets a stream from our side; `notify` tells the application (for violations
    /// by the peer, which the application did not ask for).
    pub(super) fn reset_stream(&mut self, id: StreamId, code: ErrorCode, notify: bool) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.is_reset() {
            return;
        }
        s.set_reset(RESET_SENT, code);
        self.send_queued -= slen(&self.bufs, id) as u64;
        clear_send(&mut self.bufs, id);
        clear_recv(&mut self.bufs, id);
        let tell = notify && !s.has(APP_CLOSED);
        // A stream whose OPEN never left is unknown to the peer: nothing to tell it.
        if self.pending_open.remove(&id).is_none() {
            self.send_reset_frame(id, code);
        }
        self.release_window(id);
        if tell {
            self.events.push_back(Event::Reset { id, code });
        }
        self.maybe_free(id);
    }

    /// Returns a stream's window growth to the link budget.
    pub(super) fn release_window(&mut self, id: StreamId) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.has(GROWN) {
            s.clear(GROWN);
            if let Some(w) = self.grown.remove(&id) {
                let grown = u64::from(w.saturating_sub(self.cfg.initial_window));
                self.budget_used = self.budget_used.saturating_sub(grown);
            }
        }
    }

    /// Sends credit back once half the window was consumed, growing the window of
    /// streams whose reader keeps up (auto-tuning), within the link budget.
    /// `held`: bytes taken out with [`Link::recv_take`] and not yet read.
    fn maybe_send_window(&mut self, id: StreamId, held: usize) {
        // A stream alone on its link delays nobody: it may use the whole window.
        let cap = if self.streams.len() <= 1 {
            self.cfg.max_window.max(self.cfg.initial_window)
        } else {
            window_cap(&self.cfg, self.min_rtt)
        };
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let buffered = rlen(&self.bufs, id) + held;
        if s.remote_done() || s.recv_unacked == 0 {
            return;
        }
        // An unaccepted stream gets its credit with the ACK.
        if !s.has(LOCAL) && !s.has(ACCEPTED) {
            return;
        }
        // Credit goes back once half the window is consumed and the reader has caught
        // up, or once three quarters are consumed whatever is still buffered. Waiting
        // for the reader to drain lets the growth check below see whether it keeps up.
        let window = recv_window(&self.grown, s, id, self.cfg.initial_window);
        if s.recv_unacked < window / 2 || (buffered > 0 && s.recv_unacked < window / 4 * 3) {
            return;
        }
        let mut inc = s.recv_unacked;
        let mut probe = false;
        // The sender ran (nearly) dry while the reader drained everything: the window is
        // what limits this stream. It joins the streams sharing the budget (whether or
        // not any budget is left: counting it makes the others give some back).
        let limited = buffered <= (window / 4) as usize;
        let joins = limited && !s.has(GROWN);
        let sharing = self.grown.len() + usize::from(joins);
        let fair = fair_window(&self.cfg, sharing).min(cap);
        let mut new_window = window;
        if window > fair {
            // More streams share the budget than when this one grew (or the round
            // trip turned out shorter): give back what is above its share by returning
            // less credit than was consumed (never below what the peer may already
            // send).
            let cut = (window - fair).min(inc);
            new_window -= cut;
            inc -= cut;
            self.budget_used -= u64::from(cut);
        } else if limited && window < fair {
            // Grow it, within its share and what is left of the budget.
            let want = (u64::from(window) * 2).min(u64::from(fair));
            let extra = (want - u64::from(window))
                .min(self.cfg.recv_budget.saturating_sub(self.budget_used));
            new_window += extra as u32;
            inc += extra as u32;
            self.budget_used += extra;
            // While windows are small little is queued on the link: a PING now
            // measures the path, not a backlog. The handshake's sample alone is often
            // inflated (a shard's first turns), and later keep-alive samples come only
            // from an idle link.
            probe = new_window <= self.cfg.window_floor && self.rtt_probe.is_none();
        }
        if joins {
            s.set(GROWN);
        }
        if joins || new_window != window {
            self.grown.insert(id, new_window);
        }
        s.recv_unacked = 0;
        s.set_recv_avail(s.recv_avail() + inc);
        if probe {
            self.probe(self.now);
        }
        if inc == 0 {
            // All of it went to the cut: the peer keeps the credit it has.
            return;
        }
        self.push_ctrl(&Frame::Window {
            id,
            ack: false,
            increment: inc,
        });
    }

    pub(super) fn maybe_free(&mut self, id: StreamId) {
        let Some(s) = self.streams.get(&id) else {
            return;
        };
        if !s.finished() {
            return;
        }
        let local = s.has(LOCAL);
        self.release_window(id);
        self.streams.remove(&id);
        self.bufs.remove(&id);
        self.pending_open.remove(&id);
        if !local {
            self.peer_freed_ungranted += 1;
            let threshold = (self.cfg.max_streams / 8).clamp(1, 1024);
            if self.peer_freed_ungranted >= threshold {
                self.grant_streams();
            }
        }
        self.events.push_back(Event::Freed(id));
        self.check_drained();
    }

    fn grant_streams(&mut self) {
        if self.peer_freed_ungranted == 0 || self.goaway_sent.is_some() {
            return;
        }
        self.peer_credit = (self.peer_credit + self.peer_freed_ungranted).min(MAX_STREAM_ID >> 1);
        self.peer_freed_ungranted = 0;
        self.push_ctrl(&Frame::Streams {
            max: self.peer_credit,
        });
    }
}

/// The largest window a stream may keep while `sharing` streams share the link's
/// receive budget: its share of the budget on top of `initial_window`, at most
/// `max_window`. Without the cap the first streams to grow keep up to `max_window`
/// each (16 of them take a 64 MiB budget) and the rest crawl at `initial_window`.
fn fair_window(cfg: &LinkConfig, sharing: usize) -> u32 {
    let share = cfg.recv_budget / sharing.max(1) as u64;
    (u64::from(cfg.initial_window) + share).min(u64::from(cfg.max_window)) as u32
}

/// The largest window one stream needs: `window_target_rate` over the smallest round
/// trip measured (its bandwidth-delay product), within `[window_floor, max_window]`.
/// Until a round trip is measured (the PING sent when the handshake completes answers
/// within one), `max_window`. It applies while other streams share the link (a stream
/// alone on it may grow to `max_window`). On loopback it keeps a bulk stream at the
/// floor, a trade measured there (2 rounds each, `bulk` MB/s and `hol` p99 beside
/// bulk / alone): 4 MiB 2,693-3,114 and 3.5 x; 2 MiB 2,559-3,340 and 2.4-2.6 x;
/// 1 MiB 2,263-2,590 and 1.9-2.1 x; 512 KiB 1,780-2,578 and 1.7-1.8 x. Bytes in flight
/// beyond what keeps the stream moving only queue in the socket, ahead of every other
/// stream's frames.
fn window_cap(cfg: &LinkConfig, min_rtt: Option<Duration>) -> u32 {
    let max = cfg.max_window.max(cfg.initial_window);
    let Some(rtt) = min_rtt else {
        return max;
    };
    let floor = cfg.window_floor.clamp(cfg.initial_window, max);
    let bdp = (u128::from(cfg.window_target_rate) * rtt.as_nanos() / 1_000_000_000)
        .min(u128::from(u32::MAX)) as u32;
    bdp.clamp(floor, max)
}

#[cfg(test)]
mod tests {
    use super::super::LinkConfig;
    use super::*;
    use bytes::BytesMut;
    use std::time::{Duration, Instant};

    /// Moves bytes both ways until nothing moves (at most 1,000 rounds).
    fn pump(a: &mut Link, b: &mut Link, now: Instant) {
        for _ in 0..1000 {
            let (mut x, mut y) = (BytesMut::new(), BytesMut::new());
            a.poll_transmit(&mut x, 1 << 20);
            b.poll_transmit(&mut y, 1 << 20);
            if x.is_empty() && y.is_empty() {
                return;
            }
            let _ = b.handle_input(&x, now);
            let _ = a.handle_input(&y, now);
        }
        panic!("pump did not settle");
    }

    /// A window that grew lives in `grown` (the stream entry only flags it) and gives
    /// its growth back to the link budget when the stream is freed; a reset stream
    /// still reports its code.
    #[test]
    fn grown_window_lives_beside_the_stream_and_is_returned() {
        let now = Instant::now();
        let cfg = |node_id| LinkConfig {
            node_id,
            ..LinkConfig::default()
        };
        let (mut a, mut b) = (Link::new(cfg(1), now), Link::new(cfg(2), now));
        pump(&mut a, &mut b, now);
        let id = a.open(OpenHeader::default()).unwrap();
        pump(&mut a, &mut b, now);
        b.accept(id).unwrap();
        for _ in 0..50 {
            let mut d = Bytes::from(vec![7u8; 1 << 20]);
            a.send(id, &mut d).unwrap();
            pump(&mut a, &mut b, now);
            while let Ok(Recv::Data(_)) = b.recv(id, usize::MAX) {}
            pump(&mut a, &mut b, now);
        }
        let s = &b.streams[&id];
        assert!(s.has(GROWN));
        let w = recv_window(&b.grown, s, id, b.cfg.initial_window);
        assert!(w > b.cfg.initial_window, "window {w}");
        assert_eq!(b.budget_used, u64::from(w - b.cfg.initial_window));
        // Reset by the peer: the growth goes back at once, the code stays readable.
        a.reset(id, ErrorCode::CANCELLED);
        pump(&mut a, &mut b, now);
        assert_eq!(
            b.recv(id, usize::MAX),
            Err(StreamError::Reset(ErrorCode::CANCELLED))
        );
        assert!(b.grown.is_empty() && b.budget_used == 0);
        b.close(id);
        a.close(id);
        pump(&mut a, &mut b, now);
        assert_eq!((a.stream_count(), b.stream_count()), (0, 0));
    }

    #[test]
    fn window_cap_is_the_bandwidth_delay_product_within_floor_and_max() {
        let cfg = LinkConfig::default();
        assert_eq!(window_cap(&cfg, None), cfg.max_window, "no round trip yet");
        let at = |us| window_cap(&cfg, Some(Duration::from_micros(us)));
        assert_eq!(at(0), cfg.window_floor, "loopback: the floor");
        assert_eq!(at(50), cfg.window_floor);
        assert_eq!(at(1_000), 2_500_000, "1 ms at 2.5 GB/s");
        assert_eq!(at(100_000), cfg.max_window, "a long path: the max");
        let small = LinkConfig {
            max_window: 128 * 1024,
            ..LinkConfig::default()
        };
        assert_eq!(
            window_cap(&small, Some(Duration::ZERO)),
            128 * 1024,
            "a max below the floor wins"
        );
    }
}
