//! Input: bytes from the transport parsed into frames, and each frame acted on
//! (handshake, stream opens, data, credit, resets, GOAWAY).

use super::transmit::stream_room;
use super::{Event, Link, LinkError, PeerInfo, Phase};
use crate::proto::frame::{
    self, Decoded, ErrorCode, Frame, FrameError, Hello, OpenHeader, StreamId, MAX_STREAM_ID,
    MIN_MAX_FRAME_SIZE, PREAMBLE, VERSION,
};
use crate::proto::stream::*;
use bytes::{Buf, Bytes, BytesMut};
use std::time::{Duration, Instant};

impl Link {
    /// Feeds bytes read from the transport. Frames are processed at once; events queue up.
    /// Returns the link error if these bytes closed the link.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) -> Result<(), LinkError> {
        if self.phase == Phase::Closed {
            return Err(self.closed.clone().unwrap_or(LinkError::Graceful));
        }
        self.note_input(data.len(), now);
        self.rbuf.extend_from_slice(data);
        self.process_or_fail()
    }

    /// [`Link::handle_input`] without copying: decodes frames straight out of `buf`,
    /// whose last `fresh` bytes were just read; large payloads are split off it as
    /// `Bytes` (no copy), and an incomplete frame's bytes stay at its front for the
    /// caller to append the next read to.
    pub fn handle_input_buf(
        &mut self,
        buf: &mut BytesMut,
        fresh: usize,
        now: Instant,
    ) -> Result<(), LinkError> {
        if self.phase == Phase::Closed {
            return Err(self.closed.clone().unwrap_or(LinkError::Graceful));
        }
        self.note_input(fresh, now);
        if !self.rbuf.is_empty() {
            // Bytes left over from `handle_input` come first.
            self.rbuf.extend_from_slice(buf);
            buf.clear();
            return self.process_or_fail();
        }
        std::mem::swap(&mut self.rbuf, buf);
        let r = self.process_or_fail();
        std::mem::swap(&mut self.rbuf, buf);
        r
    }

    fn note_input(&mut self, n: usize, now: Instant) {
        self.now = self.now.max(now);
        if n > 0 {
            // Any byte counts as liveness.
            self.last_recv = now;
            self.ping_sent_at = None;
        }
        self.counters.bytes_in += n as u64;
    }

    fn process_or_fail(&mut self) -> Result<(), LinkError> {
        match self.process_input() {
            Ok(()) => Ok(()),
            Err(e) => {
                let code = match e {
                    LinkError::Frame(FrameError::TooLarge { .. }) => ErrorCode::FRAME_SIZE,
                    LinkError::Limit { code, .. } => code,
                    _ => ErrorCode::PROTOCOL,
                };
                self.send_goaway_frame(code, &e.to_string());
                self.close_link(e.clone());
                Err(e)
            }
        }
    }

    fn process_input(&mut self) -> Result<(), LinkError> {
        if !self.preamble_seen {
            // A TLS record (handshake 0x16, alert 0x15) where our preamble should be:
            // say so, both sides then know what to fix.
            if matches!(self.rbuf.first(), Some(0x15 | 0x16)) {
                return Err(LinkError::Refused(
                    "peer speaks TLS, but this node has no TLS configured: give this node \
                     a certificate (NodeBuilder::tls, astranet-node --tls-*) or the peer \
                     plaintext"
                        .into(),
                ));
            }
            let n = self.rbuf.len().min(PREAMBLE.len());
            if self.rbuf[..n] != PREAMBLE[..n] {
                return Err(FrameError::BadPreamble.into());
            }
            if n < PREAMBLE.len() {
                return Ok(());
            }
            self.rbuf.advance(PREAMBLE.len());
            self.preamble_seen = true;
        }
        while self.phase != Phase::Closed {
            let frame = match frame::decode(&mut self.rbuf, self.cfg.max_frame_size)? {
                None => break,
                Some(Decoded::Skipped) => continue,
                Some(Decoded::Frame(f)) => f,
            };
            self.counters.frames_in += 1;
            self.handle_frame(frame)?;
        }
        Ok(())
    }

    fn handle_frame(&mut self, f: Frame) -> Result<(), LinkError> {
        if self.phase == Phase::Handshake {
            return match f {
                Frame::Hello(h) => self.on_hello(h),
                _ => Err(LinkError::Protocol("first frame is not HELLO")),
            };
        }
        match f {
            Frame::Hello(_) => Err(LinkError::Protocol("second HELLO")),
            Frame::Open {
                id,
                fin,
                header,
                data,
            } => self.on_open(id, fin, header, data),
            Frame::Data { id, fin, data } => self.on_data(id, fin, data),
            Frame::Window { id, ack, increment } => self.on_window(id, ack, increment),
            Frame::Reset { id, code } => self.on_reset(id, code),
            Frame::Ping { ack, opaque } => {
                if !ack {
                    self.push_ctrl(&Frame::Ping { ack: true, opaque });
                } else if let Some((sent, at)) = self.rtt_probe {
                    if sent == opaque {
                        let rtt = self.now.saturating_duration_since(at);
                        self.rtt = Some(rtt);
                        self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
                        self.rtt_probe = None;
                    }
                }
                Ok(())
            }
            Frame::GoAway {
                last_id,
                code,
                reason,
            } => {
                self.on_goaway(last_id, code, String::from_utf8_lossy(&reason).into_owned());
                Ok(())
            }
            Frame::Streams { max } => {
                if max > self.open_credit {
                    self.open_credit = max;
                    if self.open_blocked {
                        self.open_blocked = false;
                        self.events.push_back(Event::OpenCredit);
                    }
                }
                Ok(())
            }
            Frame::Services(u) => {
                self.events.push_back(Event::Services(u));
                Ok(())
            }
            Frame::Routes { entries } => {
                self.events.push_back(Event::Routes(entries));
                Ok(())
            }
        }
    }

    fn on_hello(&mut self, h: Hello) -> Result<(), LinkError> {
        if h.max_version < VERSION || h.min_version > VERSION {
            return Err(LinkError::Handshake(format!(
                "peer speaks versions {}..={}, we speak {VERSION}",
                h.min_version, h.max_version
            )));
        }
        if h.node_id == 0 {
            return Err(LinkError::Handshake("peer node id is 0".into()));
        }
        if let Some(cert) = self.authenticated.filter(|c| *c != h.node_id) {
            return Err(LinkError::Refused(format!(
                "peer's certificate is for node {cert:016x} but its HELLO claims {:016x}",
                h.node_id
            )));
        }
        if h.node_id == self.cfg.node_id && self.cfg.self_link_parity.is_none() {
            return Err(LinkError::Handshake(format!(
                "peer has our own node id {:016x} (a link to ourselves?)",
                h.node_id
            )));
        }
        if h.max_frame_size < MIN_MAX_FRAME_SIZE {
            return Err(LinkError::Handshake(format!(
                "peer max frame size {} below {MIN_MAX_FRAME_SIZE}",
                h.max_frame_size
            )));
        }
        if h.initial_window == 0 {
            return Err(LinkError::Handshake("peer initial window is 0".into()));
        }
        if h.keepalive_timeout_ms == 0 {
            return Err(LinkError::Handshake("peer keep-alive timeout is 0".into()));
        }
        if let Some((t, _)) = h.extensions.iter().find(|(t, _)| t & 0x8000 != 0) {
            return Err(LinkError::Handshake(format!(
                "peer requires unknown extension {t:#06x}"
            )));
        }
        self.parity = match self.cfg.self_link_parity {
            Some(p) => p & 1,
            None => u64::from(self.cfg.node_id < h.node_id),
        };
        self.open_credit = h.max_streams.min(MAX_STREAM_ID >> 1);
        let peer_timeout = Duration::from_millis(u64::from(h.keepalive_timeout_ms));
        // Probe often enough that the peer hears from us within its own timeout.
        self.ping_interval = self.cfg.keepalive_interval.min(peer_timeout / 3);
        self.peer = Some(PeerInfo {
            node_id: h.node_id,
            roles: h.roles,
            max_frame_size: h.max_frame_size.min(frame::MAX_PAYLOAD_LEN),
            initial_window: h.initial_window,
            keepalive_timeout: peer_timeout,
        });
        self.phase = Phase::Open;
        self.events.push_back(Event::Connected);
        // A first round-trip measurement, for link statistics.
        self.probe(self.now);
        Ok(())
    }

    fn is_local(&self, id: StreamId) -> bool {
        id & 1 == self.parity
    }

    /// For a frame naming a stream we hold no state for: was that id ever used?
    /// Frames for used ids are late and ignored; unused ids are a protocol error.
    fn check_unknown(&self, id: StreamId) -> Result<(), LinkError> {
        let n = id >> 1;
        let used = if self.is_local(id) {
            n < self.next_local_n
        } else {
            n <= self.highest_peer_n
        };
        if used && n > 0 {
            Ok(())
        } else {
            Err(LinkError::Protocol(
                "frame for a stream that was never opened",
            ))
        }
    }

    fn on_open(
        &mut self,
        id: StreamId,
        fin: bool,
        header: OpenHeader,
        data: Bytes,
    ) -> Result<(), LinkError> {
        if self.is_local(id) {
            return Err(LinkError::Protocol("OPEN with our stream id parity"));
        }
        let n = id >> 1;
        if n <= self.highest_peer_n || n == 0 {
            return Err(LinkError::Protocol("OPEN reuses a stream id"));
        }
        self.highest_peer_n = n;
        let refuse = if self.goaway_sent.is_some_and(|last| id > last) {
            Some(ErrorCode::REFUSED)
        } else if n > self.peer_credit {
            Some(ErrorCode::LIMIT_EXCEEDED)
        } else if data.len() > self.cfg.initial_window as usize {
            Some(ErrorCode::FLOW_CONTROL)
        } else {
            None
        };
        if let Some(code) = refuse {
            // This stream only: the link carries on, within the reset budget.
            self.send_reset_frame(id, code);
            return self.count_reset();
        }
        let peer_window = self.peer.as_ref().map_or(0, |p| p.initial_window);
        let mut s = Stream::new(0, peer_window, self.cfg.initial_window - data.len() as u32);
        push_recv(&mut self.bufs, id, data);
        if fin {
            s.set(FIN_RECV);
        }
        // Streams other nodes opened through the neighbour are not the neighbour's
        // doing: only its own count against its reset budget.
        if self
            .peer
            .as_ref()
            .is_some_and(|p| p.node_id == header.src_node)
        {
            s.set(FROM_PEER);
        }
        self.streams.insert(id, s);
        self.events.push_back(Event::Incoming { id, header });
        Ok(())
    }

    fn on_data(&mut self, id: StreamId, fin: bool, data: Bytes) -> Result<(), LinkError> {
        let Some(s) = self.streams.get_mut(&id) else {
            return self.check_unknown(id);
        };
        if s.has(RESET_SENT | RESET_RECV) {
            // In flight before our reset reached the peer: drop quietly.
            return Ok(());
        }
        if s.has(FIN_RECV) {
            self.reset_stream(id, ErrorCode::PROTOCOL, true);
            return Ok(());
        }
        let len = data.len() as u32;
        if data.len() > s.recv_avail() as usize {
            // The peer overran this stream's window: reset it, the others carry on.
            self.reset_stream(id, ErrorCode::FLOW_CONTROL, true);
            return Ok(());
        }
        s.set_recv_avail(s.recv_avail() - len);
        if fin {
            s.set(FIN_RECV);
        }
        if s.has(APP_CLOSED) {
            // Nobody will read it. Tell the peer once our own side is flushed.
            if len > 0 {
                s.set(DISCARDED);
                s.recv_unacked += len;
            }
            if s.has(DISCARDED) && s.has(FIN_SENT) && !s.has(FIN_RECV) {
                self.reset_stream(id, ErrorCode::CANCELLED, false);
            } else {
                self.maybe_free(id);
            }
            return Ok(());
        }
        push_recv(&mut self.bufs, id, data);
        if !s.has(READ_NOTIFIED) && (len > 0 || fin) {
            s.set(READ_NOTIFIED);
            self.events.push_back(Event::Readable(id));
        }
        self.maybe_free(id);
        Ok(())
    }

    fn on_window(&mut self, id: StreamId, ack: bool, inc: u32) -> Result<(), LinkError> {
        let local = self.is_local(id);
        let Some(s) = self.streams.get_mut(&id) else {
            return self.check_unknown(id);
        };
        if s.is_reset() {
            return Ok(());
        }
        if ack && local && !s.has(ACCEPTED) {
            s.set(ACCEPTED);
            self.events.push_back(Event::Accepted(id));
        }
        let Some(credit) = s.send_credit.checked_add(inc) else {
            self.reset_stream(id, ErrorCode::FLOW_CONTROL, true);
            return Ok(());
        };
        s.send_credit = credit;
        if inc > 0 && slen(&self.bufs, id) > 0 && !s.has(SCHEDULED) {
            s.set(SCHEDULED);
            self.ready.push_back(id);
        }
        if s.has(WRITE_BLOCKED) && stream_room(s, slen(&self.bufs, id), &self.cfg) > 0 {
            s.clear(WRITE_BLOCKED);
            self.events.push_back(Event::Writable(id));
        }
        Ok(())
    }

    fn on_reset(&mut self, id: StreamId, code: ErrorCode) -> Result<(), LinkError> {
        let Some(s) = self.streams.get(&id) else {
            return self.check_unknown(id);
        };
        // A stream the peer opened and reset before we accepted it cost us work for
        // nothing (HTTP/2 "rapid reset"): it counts against the reset budget.
        let unaccepted = s.has(FROM_PEER) && !s.has(ACCEPTED) && !s.is_reset();
        self.reset_by_peer(id, code);
        if unaccepted {
            self.count_reset()?;
        }
        Ok(())
    }

    /// Counts a stream that was reset before it was accepted, or refused, against
    /// `max_reset_streams` per `reset_window` (PROTOCOL.md §13).
    pub(super) fn count_reset(&mut self) -> Result<(), LinkError> {
        let (start, n) = &mut self.resets;
        if self.now.saturating_duration_since(*start) >= self.cfg.reset_window {
            *start = self.now;
            *n = 0;
        }
        *n += 1;
        if *n > self.cfg.max_reset_streams {
            return Err(LinkError::Limit {
                code: ErrorCode::EXCESSIVE_RESETS,
                what: "too many streams reset before they were accepted, or refused",
            });
        }
        Ok(())
    }

    /// The peer ended a stream (RESET, or GOAWAY refusing it): drop what we would send
    /// and what it did not finish sending, tell the application, free when possible.
    fn reset_by_peer(&mut self, id: StreamId, code: ErrorCode) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.is_reset() {
            return;
        }
        s.set_reset(RESET_RECV, code);
        self.send_queued -= slen(&self.bufs, id) as u64;
        clear_send(&mut self.bufs, id);
        // Data the peer finished sending before it reset stays readable: the reset
        // only stops our direction (like a write to a closed TCP socket).
        if !s.has(FIN_RECV) {
            clear_recv(&mut self.bufs, id);
        }
        let app_closed = s.has(APP_CLOSED);
        self.pending_open.remove(&id);
        self.release_window(id);
        if !app_closed {
            self.events.push_back(Event::Reset { id, code });
        }
        self.maybe_free(id);
    }

    fn on_goaway(&mut self, last_id: StreamId, code: ErrorCode, reason: String) {
        self.goaway_recv = Some(last_id);
        // Streams we opened that the peer will never process: refused, safe to retry.
        let refused: Vec<StreamId> = self
            .streams
            .keys()
            .copied()
            .filter(|&id| id & 1 == self.parity && id > last_id)
            .collect();
        for id in refused {
            self.reset_by_peer(id, ErrorCode::REFUSED);
        }
        self.events.push_back(Event::GoAway {
            last_id,
            code,
            reason,
        });
        self.check_drained();
    }
}
