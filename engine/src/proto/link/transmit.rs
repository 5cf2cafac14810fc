//! Output: control frames first, then streams taking turns, written into the
//! caller's buffer by [`Link::poll_transmit`].

use super::{Event, Link, LinkConfig, LinkError, Phase};
use crate::proto::frame::{self, ErrorCode, Frame, FrameType, StreamId, FLAG_FIN};
use crate::proto::stream::*;
use crate::proto::txbuf::{FrameSink, TxBuf};
use bytes::{BufMut, BytesMut};
use hashbrown::HashMap;

impl Link {
    /// True if [`Link::poll_transmit`] has something to write.
    pub fn has_transmit(&self) -> bool {
        !self.ctrl.is_empty() || (self.phase == Phase::Open && !self.ready.is_empty())
    }

    /// Appends frames to `out` until about `max` bytes were added or nothing is left.
    /// Control frames (pings, credit, resets) come first; then streams with data take
    /// turns, one frame each per turn, so no stream waits behind another's bulk data.
    /// Returns the number of bytes added.
    pub fn poll_transmit(&mut self, out: &mut BytesMut, max: usize) -> usize {
        self.transmit(out, max)
    }

    /// [`Link::poll_transmit`] into a gather list: large payloads are listed as the
    /// writer's own chunks instead of copied, for a vectored socket write.
    pub fn poll_transmit_gather(&mut self, out: &mut TxBuf, max: usize) -> usize {
        self.transmit(out, max)
    }

    fn transmit<S: FrameSink>(&mut self, out: &mut S, max: usize) -> usize {
        let start = out.total();
        out.head().put_slice(&self.ctrl.split());
        if self.phase != Phase::Open {
            self.counters.bytes_out += (out.total() - start) as u64;
            return out.total() - start;
        }
        let peer_max = self.peer.as_ref().map_or(0, |p| p.max_frame_size) as usize;
        while out.total() - start < max {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            s.clear(SCHEDULED);
            if s.is_reset() || s.has(FIN_SENT) {
                continue;
            }
            let open = s.has(OPEN_PENDING);
            let queued = slen(&self.bufs, id);
            let n = queued.min(s.send_credit as usize).min(peer_max);
            let fin = s.has(FIN_QUEUED) && n == queued;
            if n == 0 && !fin && !open {
                continue;
            }
            if open {
                let header = self.pending_open.remove(&id).unwrap_or_default();
                // The open header counts towards the peer's frame size.
                let room = peer_max.saturating_sub(header.encoded_len());
                let n = n.min(room);
                let fin = fin && n == queued;
                frame::put_open_header(out.head(), id, fin, &header, n);
                s.clear(OPEN_PENDING);
                write_payload(s, &mut self.bufs, id, out, n, fin);
                self.send_queued -= n as u64;
                self.counters.frames_out += 1;
            } else {
                let flags = if fin { FLAG_FIN } else { 0 };
                frame::put_header(out.head(), FrameType::Data, flags, n, id);
                write_payload(s, &mut self.bufs, id, out, n, fin);
                self.send_queued -= n as u64;
                self.counters.frames_out += 1;
            }
            let again = !s.has(FIN_SENT)
                && ((slen(&self.bufs, id) > 0 && s.send_credit > 0)
                    || (slen(&self.bufs, id) == 0 && s.has(FIN_QUEUED)));
            if again {
                s.set(SCHEDULED);
                self.ready.push_back(id);
            }
            // Our per-stream bound held the writer back: let it go on once half the
            // queue is out.
            if s.has(WRITE_BLOCKED)
                && slen(&self.bufs, id) <= self.cfg.max_stream_send_buffer as usize / 2
                && stream_room(s, slen(&self.bufs, id), &self.cfg) > 0
            {
                s.clear(WRITE_BLOCKED);
                self.events.push_back(Event::Writable(id));
            }
            if s.has(FIN_SENT) {
                if s.has(APP_CLOSED) && s.has(DISCARDED) && !s.remote_done() {
                    self.reset_stream(id, ErrorCode::CANCELLED, false);
                } else {
                    self.maybe_free(id);
                }
            }
        }
        self.wake_link_blocked();
        // Frames produced while sending (a RESET, or open credit after a stream freed).
        if !self.ctrl.is_empty() {
            out.head().put_slice(&self.ctrl.split());
        }
        self.compact();
        self.counters.bytes_out += (out.total() - start) as u64;
        out.total() - start
    }

    /// Streams held back by the link's send bound go on once half of it is free.
    fn wake_link_blocked(&mut self) {
        while self.send_queued <= self.cfg.max_link_send_buffer / 2 {
            let Some(id) = self.link_blocked.pop_front() else {
                return;
            };
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            s.clear(LINK_WAIT);
            if s.has(WRITE_BLOCKED) && !s.is_reset() {
                s.clear(WRITE_BLOCKED);
                self.events.push_back(Event::Writable(id));
            }
        }
    }

    /// Gives back memory after a burst: the maps of transient entries (queued bytes,
    /// unsent opens) shrink once they are mostly empty. hashbrown never shrinks on its
    /// own, and a burst of a million opens would otherwise pin its table for good.
    fn compact(&mut self) {
        fn shrink<V>(m: &mut HashMap<StreamId, V>) {
            if m.capacity() > 1024 && m.len() * 8 < m.capacity() {
                m.shrink_to(m.len() * 2);
            }
        }
        shrink(&mut self.bufs);
        shrink(&mut self.pending_open);
        if self.ready.capacity() > 1024 && self.ready.len() * 8 < self.ready.capacity() {
            self.ready.shrink_to(self.ready.len() * 2);
        }
    }

    /// Queues a link-level frame (SERVICES, ROUTES) ahead of data.
    pub fn send_control(&mut self, f: &Frame) {
        if self.phase == Phase::Closed {
            return;
        }
        debug_assert!(matches!(
            f.frame_type(),
            FrameType::Services | FrameType::Routes | FrameType::Ping
        ));
        self.push_ctrl(f);
        // What a peer asks for (REQUEST answers, whole tables) but does not take piles
        // up here: bounded, like everything a peer can make us hold.
        if self.ctrl.len() > self.cfg.max_control_backlog {
            self.ctrl.clear();
            self.fail(LinkError::Limit {
                code: ErrorCode::LIMIT_EXCEEDED,
                what: "peer does not take the control frames it asks for",
            });
        }
    }
}

/// Moves `n` queued bytes of `s` into `out` (the frame header is already there).
fn write_payload(
    s: &mut Stream,
    bufs: &mut HashMap<StreamId, Bufs>,
    id: StreamId,
    out: &mut impl FrameSink,
    n: usize,
    fin: bool,
) {
    let mut left = n;
    while left > 0 {
        let Some(chunk) = pop_send(bufs, id, left) else {
            break;
        };
        left -= chunk.len();
        out.put_payload(chunk);
    }
    s.send_credit -= n as u32;
    if fin {
        s.set(FIN_SENT);
    }
}

/// Bytes a stream may still queue: within the peer's credit and our per-stream bound.
pub(super) fn stream_room(s: &Stream, queued: usize, cfg: &LinkConfig) -> usize {
    (s.send_credit as usize)
        .min(cfg.max_stream_send_buffer as usize)
        .saturating_sub(queued)
}
