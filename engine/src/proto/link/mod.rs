//! The link state machine: one per connection between two nodes.
//!
//! Sans-IO: bytes go in through [`Link::handle_input`], bytes come out of
//! [`Link::poll_transmit`], time is passed in as `now`, and what happened is reported as
//! [`Event`]s. No sockets, threads or timers live here, so every behaviour is tested
//! deterministically (`tests/link.rs`).
//!
//! One file per job: here the link's types (config, errors, events), the [`Link`]
//! struct, its construction, accessors and lifecycle (close, GOAWAY); frame handling
//! in `input`; the stream API and per-stream bookkeeping in `streams`; frame output in
//! `transmit`; keep-alive and handshake timers in `timers`.

mod input;
mod streams;
mod timers;
mod transmit;

use self::timers::dur_ms;
use super::frame::{
    self, ErrorCode, Frame, FrameError, Hello, OpenHeader, RouteEntry, ServicesUpdate, StreamId,
    PREAMBLE, VERSION,
};
use super::stream::*;
use bytes::{BufMut, Bytes, BytesMut};
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
    /// Rate one stream should be able to reach: a busy stream's window grows to what
    /// keeps it flowing over the link's smallest measured round trip (rate x RTT),
    /// within `[window_floor, max_window]`. Bytes in flight beyond that only queue in
    /// socket buffers, where every other stream's frames wait behind them.
    pub window_target_rate: u64,
    /// The window a busy stream may always grow to, whatever the round trip (on
    /// loopback or in one rack the rate x RTT product is tiny, while scheduling delays
    /// still call for some slack).
    pub window_floor: u32,
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
    /// Most bytes of control frames (routes, services, PING answers, ...) waiting to be
    /// sent; beyond, the peer does not take what it asks for: GOAWAY LIMIT_EXCEEDED.
    pub max_control_backlog: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            roles: frame::ROLE_ROUTER,
            max_frame_size: 64 * 1024,
            initial_window: 64 * 1024,
            max_window: 4 * 1024 * 1024,
            window_target_rate: 2_500_000_000,
            window_floor: 1024 * 1024,
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
            max_control_backlog: 8 * 1024 * 1024,
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
    /// The peer was refused for security reasons (TLS required or not configured,
    /// untrusted certificate, HELLO claiming another node id than its certificate).
    #[error("{0}")]
    Refused(String),
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
    /// The peer went past one of our limits (PROTOCOL.md §13); `code` is what the
    /// GOAWAY said.
    #[error("peer exceeded a limit: {what}")]
    Limit {
        /// The GOAWAY code (EXCESSIVE_RESETS, LIMIT_EXCEEDED).
        code: ErrorCode,
        /// Which limit.
        what: &'static str,
    },
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
    /// Receive windows of the streams sharing the receive budget (flag `GROWN`: they
    /// were window-limited), and only those: kept out of `streams` so an idle entry
    /// stays small. Its length splits the budget (`fair_window`).
    grown: HashMap<StreamId, u32>,
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
    counters: Counters,
    /// The PING whose answer measures the round-trip time: (opaque, sent at).
    rtt_probe: Option<(u64, Instant)>,
    rtt: Option<Duration>,
    /// The smallest round trip measured so far: the path's own delay, without the
    /// queueing a busy link adds to later samples.
    min_rtt: Option<Duration>,
    /// The node id the transport authenticated (TLS certificate): the HELLO must claim
    /// exactly this id.
    authenticated: Option<u64>,
}

/// What crossed a link, for statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Bytes received (everything fed to [`Link::handle_input`]).
    pub bytes_in: u64,
    /// Bytes handed out by [`Link::poll_transmit`].
    pub bytes_out: u64,
    /// Frames decoded.
    pub frames_in: u64,
    /// Frames queued to send (data and control).
    pub frames_out: u64,
}

impl Link {
    /// What crossed the link so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The round-trip time measured by the latest answered PING (one goes out when the
    /// handshake completes, then with every keep-alive probe).
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Queues a link-level frame ahead of data.
    fn push_ctrl(&mut self, f: &Frame) {
        frame::encode(f, &mut self.ctrl);
        self.counters.frames_out += 1;
    }

    /// Sends a PING whose answer measures the round-trip time.
    pub(super) fn probe(&mut self, now: Instant) {
        self.ping_counter += 1;
        let opaque = self.ping_counter;
        self.push_ctrl(&Frame::Ping { ack: false, opaque });
        self.rtt_probe = Some((opaque, now));
    }

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
            grown: HashMap::new(),
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
            counters: Counters {
                frames_out: 1,
                ..Counters::default()
            },
            rtt_probe: None,
            rtt: None,
            min_rtt: None,
            authenticated: None,
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

    // ------------------------------------------------------------------ lifecycle

    /// Ends the link for a fault found outside `handle_input`: GOAWAY with the code
    /// that names it, then [`Event::Closed`].
    fn fail(&mut self, e: LinkError) {
        if self.phase == Phase::Closed {
            return;
        }
        let code = match e {
            LinkError::Limit { code, .. } => code,
            LinkError::Timeout(_) | LinkError::WriteStall(_) => ErrorCode::TIMEOUT,
            _ => ErrorCode::PROTOCOL,
        };
        self.send_goaway_frame(code, &e.to_string());
        self.close_link(e);
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
        self.push_ctrl(&Frame::GoAway {
            last_id: last,
            code,
            reason: Bytes::copy_from_slice(r),
        });
    }

    /// The transport authenticated the peer as node `id` (its TLS certificate): a
    /// HELLO claiming another id ends the link with [`LinkError::Refused`] before any
    /// frame after it is looked at.
    pub fn set_authenticated_peer(&mut self, id: u64) {
        self.authenticated = Some(id);
    }

    /// Ends the link: the peer is refused for `why` (a GOAWAY carries the reason).
    pub fn refuse_peer(&mut self, why: String) {
        self.fail(LinkError::Refused(why));
    }

    /// The transport closed or failed: every stream fails with `LinkLost`.
    pub fn transport_closed(&mut self, why: &str) {
        if self.phase != Phase::Closed {
            self.close_link(LinkError::TransportClosed(why.to_string()));
        }
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
        self.grown.clear();
        self.send_queued = 0;
        self.link_blocked.clear();
        self.pending_open.clear();
        self.ready.clear();
        self.closed = Some(why.clone());
        self.events.push_back(Event::Closed(why));
    }
}
