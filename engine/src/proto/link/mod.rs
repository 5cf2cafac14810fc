//! The link state machine: one per connection between two nodes.
//!
//! Sans-IO: bytes go in through [`Link::handle_input`], bytes come out of
//! [`Link::poll_transmit`], time is passed in as `now`, and what happened is reported as
//! [`Event`]s. No sockets, threads or timers live here, so every behaviour is tested
//! deterministically (`tests/link.rs`).

use super::frame::{
    self, Decoded, ErrorCode, Frame, FrameError, FrameType, Hello, OpenHeader, RouteEntry,
    ServicesUpdate, StreamId, FLAG_FIN, MAX_STREAM_ID, MIN_MAX_FRAME_SIZE, PREAMBLE, VERSION,
};
use super::stream::*;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use hashbrown::HashMap;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Settings one side of a link advertises and enforces.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// This node's id (non-zero).
    pub node_id: u64,
    /// Role bits (`frame::ROLE_*`).
    pub roles: u16,
    /// Largest frame payload we accept (and the largest we send is the peer's).
    pub max_frame_size: u32,
    /// Credit every new stream starts with for data sent to us.
    pub initial_window: u32,
    /// Largest a busy stream's receive window grows to.
    pub max_window: u32,
    /// Per-link receive budget: the sum of window growth above `initial_window` over
    /// all streams of the link never exceeds it.
    pub recv_budget: u64,
    /// Most streams the peer may have open towards us at once.
    pub max_streams: u64,
    /// Probe the link after this much silence.
    pub keepalive_interval: Duration,
    /// Declare the link dead after this much silence.
    pub keepalive_timeout: Duration,
    /// For a node's in-process link to itself: accept a peer with our own node id and
    /// use this stream id parity (the two ends pass 0 and 1). `None` for real links.
    pub self_link_parity: Option<u64>,
    /// The peer's preamble and HELLO must arrive within this time of the link's
    /// creation, however the bytes trickle in (PROTOCOL.md §13).
    pub handshake_timeout: Duration,
    /// Most bytes queued to send on one stream, whatever window the peer grants.
    pub max_stream_send_buffer: u32,
    /// Most bytes queued to send on the whole link.
    pub max_link_send_buffer: u64,
    /// Streams the peer may reset before we accepted them, or that we refuse, per
    /// `reset_window`; beyond, GOAWAY EXCESSIVE_RESETS ends the link.
    pub max_reset_streams: u32,
    /// The window `max_reset_streams` counts over.
    pub reset_window: Duration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            roles: frame::ROLE_ROUTER,
            max_frame_size: 64 * 1024,
            initial_window: 64 * 1024,
            max_window: 4 * 1024 * 1024,
            recv_budget: 64 * 1024 * 1024,
            max_streams: 1 << 20,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(30),
            self_link_parity: None,
            handshake_timeout: Duration::from_secs(5),
            max_stream_send_buffer: 4 * 1024 * 1024,
            max_link_send_buffer: 32 * 1024 * 1024,
            max_reset_streams: 1000,
            reset_window: Duration::from_secs(10),
        }
    }
}

/// What the peer told us in its HELLO, after negotiation.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The peer's node id.
    pub node_id: u64,
    /// The peer's role bits.
    pub roles: u16,
    /// Largest payload we may send it.
    pub max_frame_size: u32,
    /// Initial credit of streams towards it.
    pub initial_window: u32,
    /// The peer's keep-alive timeout.
    pub keepalive_timeout: Duration,
}

/// Why a link ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The peer sent bytes that are not a valid frame.
    #[error("peer sent an invalid frame: {0}")]
    Frame(#[from] FrameError),
    /// The peer broke a protocol rule.
    #[error("peer broke the protocol: {0}")]
    Protocol(&'static str),
    /// The handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// Nothing was heard from the peer for the keep-alive timeout.
    #[error("keep-alive timeout: peer silent for {0:?}")]
    Timeout(Duration),
    /// The transport failed or closed underneath the link.
    #[error("link lost: {0}")]
    TransportClosed(String),
    /// The peer sent GOAWAY with an error code.
    #[error("peer went away: {code}: {reason}")]
    GoneAway {
        /// The code.
        code: ErrorCode,
        /// The reason text.
        reason: String,
    },
    /// Both sides finished after a GOAWAY: a graceful end.
    #[error("link closed gracefully")]
    Graceful,
    /// The peer did not read what we had for it for this long.
    #[error("peer stopped reading: nothing could be written for {0:?}")]
    WriteStall(Duration),
    /// The peer went past one of our limits (PROTOCOL.md §13).
    #[error("peer exceeded a limit: {0}")]
    Limit(&'static str),
}

/// Why a stream operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// No such stream (never opened here, or already freed).
    #[error("unknown stream")]
    Unknown,
    /// The stream was reset, by the peer or by us.
    #[error("stream reset: {0}")]
    Reset(ErrorCode),
    /// Writing after `finish`.
    #[error("write after half-close")]
    Finished,
    /// The link is gone.
    #[error("{0}")]
    LinkLost(LinkError),
    /// The handshake has not completed yet.
    #[error("link not ready")]
    NotReady,
    /// The peer's open credit is used up; wait for [`Event::OpenCredit`].
    #[error("peer's stream limit reached")]
    Limit,
    /// A GOAWAY was sent or received: no new streams on this link.
    #[error("link is going away")]
    GoingAway,
    /// The 2^55 stream ids of this side are used up; open a new link.
    #[error("stream ids exhausted")]
    IdsExhausted,
}

/// Result of [`Link::recv`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recv {
    /// Bytes, in order.
    Data(Bytes),
    /// The peer half-closed: no more data.
    Fin,
    /// Nothing available yet; an [`Event::Readable`] follows when there is.
    WouldBlock,
}

/// Something the IO shell must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed; see [`Link::peer`].
    Connected,
    /// The peer opened a stream: call [`Link::accept`] or [`Link::refuse`].
    Incoming {
        /// New stream.
        id: StreamId,
        /// Its routing header.
        header: OpenHeader,
    },
    /// The peer accepted a stream we opened.
    Accepted(StreamId),
    /// Data or FIN can be read.
    Readable(StreamId),
    /// A stream that filled its credit can take more data.
    Writable(StreamId),
    /// The stream was reset (by the peer, or by us for a peer's violation).
    Reset {
        /// Stream.
        id: StreamId,
        /// Code.
        code: ErrorCode,
    },
    /// A stream's state was freed; its id will not be used again.
    Freed(StreamId),
    /// More streams may be opened (after [`StreamError::Limit`]).
    OpenCredit,
    /// The peer sent GOAWAY. Streams above `last_id` that we opened were reset with REFUSED.
    GoAway {
        /// Highest of our stream ids the peer processes.
        last_id: StreamId,
        /// Code.
        code: ErrorCode,
        /// Reason text.
        reason: String,
    },
    /// A discovery update arrived.
    Services(ServicesUpdate),
    /// A route advertisement arrived.
    Routes(Vec<RouteEntry>),
    /// The link ended: flush [`Link::poll_transmit`] once more, then close the transport.
    /// Every stream on it fails with [`StreamError::LinkLost`].
    Closed(LinkError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the peer's preamble and HELLO.
    Handshake,
    Open,
    Closed,
}

/// Control frames beyond this many buffered bytes make [`Link::wants_input`] false, so a
/// peer that sends pings but never reads cannot grow our memory without bound.
const CTRL_HIGH_WATER: usize = 256 * 1024;

/// The state machine of one link.
pub struct Link {
    cfg: LinkConfig,
    phase: Phase,
    closed: Option<LinkError>,
    peer: Option<PeerInfo>,
    rbuf: BytesMut,
    preamble_seen: bool,
    /// Control frames, sent ahead of all data.
    ctrl: BytesMut,
    /// Our stream id parity (0 or 1), known after the handshake.
    parity: u64,
    next_local_n: u64,
    /// Highest stream number we may open (peer's grant).
    open_credit: u64,
    open_blocked: bool,
    /// Highest stream number the peer may open (our grant).
    peer_credit: u64,
    peer_freed_ungranted: u64,
    highest_peer_n: u64,
    streams: HashMap<StreamId, Stream>,
    /// Byte queues of streams that have data queued, and only those: an idle stream
    /// costs its small `streams` entry and nothing here.
    bufs: HashMap<StreamId, Bufs>,
    /// OPEN headers of streams whose OPEN frame is not sent yet.
    pending_open: HashMap<StreamId, OpenHeader>,
    ready: VecDeque<StreamId>,
    events: VecDeque<Event>,
    budget_used: u64,
    last_recv: Instant,
    ping_sent_at: Option<Instant>,
    ping_interval: Duration,
    ping_counter: u64,
    goaway_sent: Option<StreamId>,
    goaway_recv: Option<StreamId>,
    /// The handshake must be done by then.
    handshake_deadline: Instant,
    /// Bytes queued to send over all streams (bounded by `max_link_send_buffer`).
    send_queued: u64,
    /// Streams waiting for room in the link's send buffer, oldest first.
    link_blocked: VecDeque<StreamId>,
    /// Resets counted against `max_reset_streams`: (window start, count).
    resets: (Instant, u32),
    /// The latest time passed in.
    now: Instant,
}

impl Link {
    /// A new link; the preamble and HELLO are queued for sending at once.
    pub fn new(cfg: LinkConfig, now: Instant) -> Self {
        let mut ctrl = BytesMut::with_capacity(256);
        ctrl.put_slice(&PREAMBLE);
        frame::encode(
            &Frame::Hello(Hello {
                min_version: VERSION,
                max_version: VERSION,
                node_id: cfg.node_id,
                roles: cfg.roles,
                max_frame_size: cfg.max_frame_size,
                initial_window: cfg.initial_window,
                max_streams: cfg.max_streams,
                keepalive_interval_ms: dur_ms(cfg.keepalive_interval),
                keepalive_timeout_ms: dur_ms(cfg.keepalive_timeout),
                extensions: Vec::new(),
            }),
            &mut ctrl,
        );
        let ping_interval = cfg.keepalive_interval;
        let cfg_handshake = cfg.handshake_timeout;
        Self {
            peer_credit: cfg.max_streams,
            cfg,
            phase: Phase::Handshake,
            closed: None,
            peer: None,
            rbuf: BytesMut::new(),
            preamble_seen: false,
            ctrl,
            parity: 0,
            next_local_n: 1,
            open_credit: 0,
            open_blocked: false,
            peer_freed_ungranted: 0,
            highest_peer_n: 0,
            streams: HashMap::new(),
            bufs: HashMap::new(),
            pending_open: HashMap::new(),
            ready: VecDeque::new(),
            events: VecDeque::new(),
            budget_used: 0,
            last_recv: now,
            ping_sent_at: None,
            ping_interval,
            ping_counter: 0,
            goaway_sent: None,
            goaway_recv: None,
            handshake_deadline: now + cfg_handshake,
            send_queued: 0,
            link_blocked: VecDeque::new(),
            resets: (now, 0),
            now,
        }
    }

    /// Our settings.
    pub fn config(&self) -> &LinkConfig {
        &self.cfg
    }

    /// The peer, once [`Event::Connected`] was reported.
    pub fn peer(&self) -> Option<&PeerInfo> {
        self.peer.as_ref()
    }

    /// True once the handshake is done and until the link closes.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Why the link closed, if it did.
    pub fn close_reason(&self) -> Option<&LinkError> {
        self.closed.as_ref()
    }

    /// Number of streams with state on this link.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// False while too many control frames wait to be sent: stop reading the transport
    /// until [`Link::poll_transmit`] has drained them.
    pub fn wants_input(&self) -> bool {
        self.phase != Phase::Closed && self.ctrl.len() < CTRL_HIGH_WATER
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ------------------------------------------------------------------ input

    /// Feeds bytes read from the transport. Frames are processed at once; events queue up.
    /// Returns the link error if these bytes closed the link.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) -> Result<(), LinkError> {
        if self.phase == Phase::Closed {
            return Err(self.closed.clone().unwrap_or(LinkError::Graceful));
        }
        self.now = self.now.max(now);
        if !data.is_empty() {
            // Any byte counts as liveness.
            self.last_recv = now;
            self.ping_sent_at = None;
        }
        self.rbuf.extend_from_slice(data);
        match self.process_input() {
            Ok(()) => Ok(()),
            Err(e) => {
                let code = match e {
                    LinkError::Frame(FrameError::TooLarge { .. }) => ErrorCode::FRAME_SIZE,
                    LinkError::Limit(_) => ErrorCode::EXCESSIVE_RESETS,
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
                    frame::encode(&Frame::Ping { ack: true, opaque }, &mut self.ctrl);
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
        let mut s = Stream {
            send_credit: peer_window,
            recv_window: self.cfg.initial_window,
            recv_avail: self.cfg.initial_window - data.len() as u32,
            ..Default::default()
        };
        push_recv(&mut self.bufs, id, data);
        if fin {
            s.set(FIN_RECV);
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
        if data.len() > s.recv_avail as usize {
            // The peer overran this stream's window: reset it, the others carry on.
            self.reset_stream(id, ErrorCode::FLOW_CONTROL, true);
            return Ok(());
        }
        s.recv_avail -= len;
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
        let unaccepted = !s.has(LOCAL) && !s.has(ACCEPTED) && !s.is_reset();
        self.reset_by_peer(id, code);
        if unaccepted {
            self.count_reset()?;
        }
        Ok(())
    }

    /// Counts a stream that was reset before it was accepted, or refused, against
    /// `max_reset_streams` per `reset_window` (PROTOCOL.md §13).
    fn count_reset(&mut self) -> Result<(), LinkError> {
        let (start, n) = &mut self.resets;
        if self.now.saturating_duration_since(*start) >= self.cfg.reset_window {
            *start = self.now;
            *n = 0;
        }
        *n += 1;
        if *n > self.cfg.max_reset_streams {
            return Err(LinkError::Limit(
                "too many streams reset before they were accepted, or refused",
            ));
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
        s.set(RESET_RECV);
        s.reset_code = code.0;
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

    // ------------------------------------------------------------------ stream API

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
        let s = Stream {
            flags: LOCAL | OPEN_PENDING | SCHEDULED,
            send_credit: peer_window,
            recv_window: self.cfg.initial_window,
            recv_avail: self.cfg.initial_window,
            ..Default::default()
        };
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
        s.recv_avail += inc;
        frame::encode(
            &Frame::Window {
                id,
                ack: true,
                increment: inc,
            },
            &mut self.ctrl,
        );
        Ok(())
    }

    /// Refuses a peer's stream with `code` (e.g. REFUSED: nobody listens).
    pub fn refuse(&mut self, id: StreamId, code: ErrorCode) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.set(APP_CLOSED);
        // Already reset by the peer (OPEN then RESET in one read): nothing to send,
        // but the state must still go, and the refusal was counted at the RESET.
        let counted = s.is_reset();
        self.reset_stream(id, code, false);
        self.maybe_free(id);
        if !counted {
            if let Err(e) = self.count_reset() {
                self.fail(e);
            }
        }
    }

    /// Ends the link for a fault found outside `handle_input`: GOAWAY with the code
    /// that names it, then [`Event::Closed`].
    fn fail(&mut self, e: LinkError) {
        if self.phase == Phase::Closed {
            return;
        }
        let code = match e {
            LinkError::Limit(_) => ErrorCode::EXCESSIVE_RESETS,
            LinkError::Timeout(_) | LinkError::WriteStall(_) => ErrorCode::TIMEOUT,
            _ => ErrorCode::PROTOCOL,
        };
        self.send_goaway_frame(code, &e.to_string());
        self.close_link(e);
    }

    /// The IO shell could write nothing to the transport for `stalled`: the peer does
    /// not read. Ends the link, so a zombie peer cannot pin our buffers.
    pub fn write_stalled(&mut self, stalled: Duration) {
        self.fail(LinkError::WriteStall(stalled));
    }

    /// Queues data; returns how many bytes were taken (0 when the stream's credit is
    /// full: an [`Event::Writable`] follows when it frees up).
    pub fn send(&mut self, id: StreamId, data: &mut Bytes) -> Result<usize, StreamError> {
        self.check_usable()?;
        let s = self.streams.get_mut(&id).ok_or(StreamError::Unknown)?;
        if s.is_reset() {
            return Err(StreamError::Reset(ErrorCode(s.reset_code)));
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
            return Err(StreamError::Reset(ErrorCode(s.reset_code)));
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

    /// Reads up to `max` bytes.
    pub fn recv(&mut self, id: StreamId, max: usize) -> Result<Recv, StreamError> {
        if self.phase == Phase::Closed {
            return Err(StreamError::LinkLost(
                self.closed.clone().unwrap_or(LinkError::Graceful),
            ));
        }
        let s = self.streams.get_mut(&id).ok_or(StreamError::Unknown)?;
        if s.is_reset() && rlen(&self.bufs, id) == 0 && !s.has(FIN_RECV) {
            return Err(StreamError::Reset(ErrorCode(s.reset_code)));
        }
        match pop_recv(&mut self.bufs, id, max) {
            Some(b) => {
                if !s.is_reset() {
                    s.recv_unacked += b.len() as u32;
                }
                if rlen(&self.bufs, id) == 0 {
                    s.clear(READ_NOTIFIED);
                }
                self.maybe_send_window(id);
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
        if self.phase == Phase::Closed {
            self.streams.remove(&id);
            self.bufs.remove(&id);
            return;
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.set(APP_CLOSED);
        let unread = rlen(&self.bufs, id);
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
        self.maybe_send_window(id);
        self.maybe_free(id);
    }

    /// Starts a graceful shutdown: GOAWAY with the highest peer stream id we process.
    /// Existing streams finish; new ones are refused; [`Event::Closed`] with
    /// [`LinkError::Graceful`] follows once all streams are done.
    pub fn go_away(&mut self, code: ErrorCode, reason: &str) {
        if self.phase != Phase::Open || self.goaway_sent.is_some() {
            return;
        }
        self.send_goaway_frame(code, reason);
        self.check_drained();
    }

    fn send_goaway_frame(&mut self, code: ErrorCode, reason: &str) {
        let last = (self.highest_peer_n << 1) | (self.parity ^ 1);
        let last = if self.highest_peer_n == 0 { 0 } else { last };
        self.goaway_sent = Some(last);
        let mut r = reason.as_bytes();
        if r.len() > 1024 {
            r = &r[..1024];
            while std::str::from_utf8(r).is_err() {
                r = &r[..r.len() - 1];
            }
        }
        frame::encode(
            &Frame::GoAway {
                last_id: last,
                code,
                reason: Bytes::copy_from_slice(r),
            },
            &mut self.ctrl,
        );
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
        frame::encode(f, &mut self.ctrl);
    }

    /// The transport closed or failed: every stream fails with `LinkLost`.
    pub fn transport_closed(&mut self, why: &str) {
        if self.phase != Phase::Closed {
            self.close_link(LinkError::TransportClosed(why.to_string()));
        }
    }

    // ------------------------------------------------------------------ internals

    fn send_reset_frame(&mut self, id: StreamId, code: ErrorCode) {
        frame::encode(&Frame::Reset { id, code }, &mut self.ctrl);
    }

    /// Resets a stream from our side; `notify` tells the application (for violations
    /// by the peer, which the application did not ask for).
    fn reset_stream(&mut self, id: StreamId, code: ErrorCode, notify: bool) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.is_reset() {
            return;
        }
        s.set(RESET_SENT);
        s.reset_code = code.0;
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
    fn release_window(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id) {
            let grown = u64::from(s.recv_window.saturating_sub(self.cfg.initial_window));
            s.recv_window = self.cfg.initial_window;
            self.budget_used = self.budget_used.saturating_sub(grown);
        }
    }

    /// Sends credit back once half the window was consumed, growing the window of
    /// streams whose reader keeps up (auto-tuning), within the link budget.
    fn maybe_send_window(&mut self, id: StreamId) {
        let max = self.cfg.max_window;
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
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
        if s.recv_unacked < s.recv_window / 2
            || (rlen(&self.bufs, id) > 0 && s.recv_unacked < s.recv_window / 4 * 3)
        {
            return;
        }
        let mut inc = s.recv_unacked;
        // The sender ran (nearly) dry while the reader drained everything: the window is
        // what limits this stream, so grow it.
        if rlen(&self.bufs, id) <= (s.recv_window / 4) as usize && s.recv_window < max {
            let want = (u64::from(s.recv_window) * 2).min(u64::from(max));
            let extra = (want - u64::from(s.recv_window))
                .min(self.cfg.recv_budget.saturating_sub(self.budget_used));
            if extra > 0 {
                s.recv_window += extra as u32;
                inc += extra as u32;
                self.budget_used += extra;
            }
        }
        s.recv_unacked = 0;
        s.recv_avail += inc;
        frame::encode(
            &Frame::Window {
                id,
                ack: false,
                increment: inc,
            },
            &mut self.ctrl,
        );
    }

    fn maybe_free(&mut self, id: StreamId) {
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
        frame::encode(
            &Frame::Streams {
                max: self.peer_credit,
            },
            &mut self.ctrl,
        );
    }

    fn check_drained(&mut self) {
        if self.phase == Phase::Open
            && (self.goaway_sent.is_some() || self.goaway_recv.is_some())
            && self.streams.is_empty()
        {
            self.close_link(LinkError::Graceful);
        }
    }

    fn close_link(&mut self, why: LinkError) {
        if self.phase == Phase::Closed {
            return;
        }
        self.phase = Phase::Closed;
        self.streams.clear();
        self.bufs.clear();
        self.send_queued = 0;
        self.link_blocked.clear();
        self.pending_open.clear();
        self.ready.clear();
        self.closed = Some(why.clone());
        self.events.push_back(Event::Closed(why));
    }

    // ------------------------------------------------------------------ output

    /// True if [`Link::poll_transmit`] has something to write.
    pub fn has_transmit(&self) -> bool {
        !self.ctrl.is_empty() || (self.phase == Phase::Open && !self.ready.is_empty())
    }

    /// Appends frames to `out` until about `max` bytes were added or nothing is left.
    /// Control frames (pings, credit, resets) come first; then streams with data take
    /// turns, one frame each per turn, so no stream waits behind another's bulk data.
    /// Returns the number of bytes added.
    pub fn poll_transmit(&mut self, out: &mut BytesMut, max: usize) -> usize {
        let start = out.len();
        out.put_slice(&self.ctrl.split());
        if self.phase != Phase::Open {
            return out.len() - start;
        }
        let peer_max = self.peer.as_ref().map_or(0, |p| p.max_frame_size) as usize;
        while out.len() - start < max {
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
                frame::put_open_header(out, id, fin, &header, n);
                s.clear(OPEN_PENDING);
                write_payload(s, &mut self.bufs, id, out, n, fin);
                self.send_queued -= n as u64;
            } else {
                frame::put_header(out, FrameType::Data, if fin { FLAG_FIN } else { 0 }, n, id);
                write_payload(s, &mut self.bufs, id, out, n, fin);
                self.send_queued -= n as u64;
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
            out.put_slice(&self.ctrl.split());
        }
        self.compact();
        out.len() - start
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

    // ------------------------------------------------------------------ timers

    /// When [`Link::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Closed => None,
            Phase::Handshake => Some(self.handshake_deadline),
            Phase::Open => {
                let dead = self.last_recv + self.cfg.keepalive_timeout;
                let probe = match self.ping_sent_at {
                    Some(_) => dead,
                    None => self.last_recv + self.ping_interval,
                };
                Some(dead.min(probe))
            }
        }
    }

    /// True if nothing was heard from the peer for the keep-alive timeout. An IO shell
    /// that may have been busy should first look at its transport (the peer's bytes
    /// may be waiting there, unread by us) and call [`Link::handle_timeout`] only if
    /// it found nothing: the keep-alive judges the peer's silence, not our own delay.
    pub fn silence_expired(&self, now: Instant) -> bool {
        self.phase == Phase::Open
            && now.saturating_duration_since(self.last_recv) >= self.cfg.keepalive_timeout
    }

    /// Acts on timers: ends a handshake past its deadline, probes an idle link with
    /// PING, declares a silent one dead.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        match self.phase {
            Phase::Closed => return,
            Phase::Handshake => {
                if now >= self.handshake_deadline {
                    self.send_goaway_frame(ErrorCode::TIMEOUT, "handshake timeout");
                    self.close_link(LinkError::Handshake(format!(
                        "no HELLO from the peer within {:?}",
                        self.cfg.handshake_timeout
                    )));
                }
                return;
            }
            Phase::Open => {}
        }
        let silent = now.saturating_duration_since(self.last_recv);
        if silent >= self.cfg.keepalive_timeout {
            self.send_goaway_frame(ErrorCode::TIMEOUT, "keep-alive timeout");
            self.close_link(LinkError::Timeout(silent));
            return;
        }
        if silent >= self.ping_interval && self.ping_sent_at.is_none() {
            self.ping_counter += 1;
            frame::encode(
                &Frame::Ping {
                    ack: false,
                    opaque: self.ping_counter,
                },
                &mut self.ctrl,
            );
            self.ping_sent_at = Some(now);
        }
    }
}

/// Copies `n` queued bytes of `s` into `out` (the frame header is already there).
fn write_payload(
    s: &mut Stream,
    bufs: &mut HashMap<StreamId, Bufs>,
    id: StreamId,
    out: &mut BytesMut,
    n: usize,
    fin: bool,
) {
    let mut left = n;
    while left > 0 {
        let Some(chunk) = pop_send(bufs, id, left) else {
            break;
        };
        left -= chunk.len();
        out.put_slice(&chunk);
    }
    s.send_credit -= n as u32;
    if fin {
        s.set(FIN_SENT);
    }
}

/// Bytes a stream may still queue: within the peer's credit and our per-stream bound.
fn stream_room(s: &Stream, queued: usize, cfg: &LinkConfig) -> usize {
    (s.send_credit as usize)
        .min(cfg.max_stream_send_buffer as usize)
        .saturating_sub(queued)
}

fn dur_ms(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}
