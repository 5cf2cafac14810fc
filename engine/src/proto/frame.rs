//! Frame layout: the 12-byte header, every frame type and its payload, and the
//! codec that turns bytes into [`Frame`]s and back.
//!
//! The layout is specified in `PROTOCOL.md` §3–4; this module is its executable form.
//! Decoding never allocates based on a length read from the wire: a length above the
//! negotiated maximum is rejected before any payload is buffered, and payloads are
//! zero-copy slices of the input buffer.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::fmt;

/// Length of every frame header.
pub const HEADER_LEN: usize = 12;
/// The 8 bytes each side sends before its HELLO frame.
pub const PREAMBLE: [u8; 8] = *b"ASTRANET";
/// Largest stream id (56 bits).
pub const MAX_STREAM_ID: u64 = (1 << 56) - 1;
/// Largest payload length the header can express (24 bits).
pub const MAX_PAYLOAD_LEN: u32 = (1 << 24) - 1;
/// Smallest `max_frame_size` a node may advertise.
pub const MIN_MAX_FRAME_SIZE: u32 = 16 * 1024;
/// The HELLO frame is decoded before limits are known; this caps it.
pub const MAX_HELLO_LEN: u32 = 4096;
/// Protocol version implemented here.
pub const VERSION: u16 = 1;

/// A stream id: 56 bits, 0 is the link itself.
pub type StreamId = u64;

/// Frame type codes (`PROTOCOL.md` §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// Link handshake, first frame each way.
    Hello = 0x0,
    /// Opens a stream, may carry data.
    Open = 0x1,
    /// Stream data.
    Data = 0x2,
    /// Stream credit (and, with ACK, acceptance of an OPEN).
    Window = 0x3,
    /// Abortive stream close with an error code.
    Reset = 0x4,
    /// Liveness probe; with ACK, the answer.
    Ping = 0x5,
    /// No more new streams on this link.
    GoAway = 0x6,
    /// Open credit: how many streams the receiver may open in all.
    Streams = 0x7,
    /// Service announcements and withdrawals.
    Services = 0x8,
    /// Route advertisements for relaying.
    Routes = 0x9,
}

impl FrameType {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0x0 => Self::Hello,
            0x1 => Self::Open,
            0x2 => Self::Data,
            0x3 => Self::Window,
            0x4 => Self::Reset,
            0x5 => Self::Ping,
            0x6 => Self::GoAway,
            0x7 => Self::Streams,
            0x8 => Self::Services,
            0x9 => Self::Routes,
            _ => return None,
        })
    }
}

/// Flag bit: last data in this direction (OPEN, DATA).
pub const FLAG_FIN: u8 = 0x01;
/// Flag bit: acknowledgement (PING answer; WINDOW that accepts an OPEN).
pub const FLAG_ACK: u8 = 0x01;
/// Flag bit: SERVICES asks for a full update.
pub const FLAG_REQUEST: u8 = 0x02;
/// Flag bit: SERVICES carries its origin's signature (and maybe credentials) after
/// the ops (`PROTOCOL.md` §11.5).
pub const FLAG_SIGNED: u8 = 0x04;
/// Largest signature a signed SERVICES frame may carry (RSA-4096 takes 512 bytes;
/// Ed25519 and ECDSA far less).
pub const MAX_SIGNATURE_LEN: usize = 512;
/// Largest credentials (an encoded certificate chain) a signed SERVICES frame may
/// carry. With the default limits (60 KiB of ops) a full signed update still fits the
/// default 64 KiB frame size.
pub const MAX_CREDENTIALS_LEN: usize = 3072;
/// Types at or above this are extensions: a receiver that does not know one skips it.
pub const EXTENSION_TYPE_BASE: u8 = 0x80;

/// Error codes carried by RESET and GOAWAY (`PROTOCOL.md` §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// Graceful, no error.
    pub const NO_ERROR: Self = Self(0);
    /// The peer broke the protocol.
    pub const PROTOCOL: Self = Self(1);
    /// An internal failure of the sender.
    pub const INTERNAL: Self = Self(2);
    /// The peer sent more than the stream's window.
    pub const FLOW_CONTROL: Self = Self(3);
    /// Nobody listens on the destination, or the link is going away.
    pub const REFUSED: Self = Self(4);
    /// The application abandoned the stream.
    pub const CANCELLED: Self = Self(5);
    /// The peer opened more streams than it was granted.
    pub const LIMIT_EXCEEDED: Self = Self(6);
    /// A link on the stream's path died.
    pub const LINK_LOST: Self = Self(7);
    /// No such service is known.
    pub const NOT_FOUND: Self = Self(8);
    /// No route to the destination node.
    pub const NO_ROUTE: Self = Self(9);
    /// The hop limit reached zero.
    pub const HOP_LIMIT: Self = Self(10);
    /// The node does not relay.
    pub const NOT_ROUTER: Self = Self(11);
    /// A frame exceeded the negotiated size.
    pub const FRAME_SIZE: Self = Self(12);
    /// The sender's stream id space is used up.
    pub const IDS_EXHAUSTED: Self = Self(13);
    /// The node is shutting down.
    pub const SHUTDOWN: Self = Self(14);
    /// Keep-alive timeout.
    pub const TIMEOUT: Self = Self(15);
    /// The peer reset or had refused too many streams (PROTOCOL.md §13).
    pub const EXCESSIVE_RESETS: Self = Self(16);

    /// A short lowercase name, or "unknown".
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "no error",
            1 => "protocol error",
            2 => "internal error",
            3 => "flow-control error",
            4 => "refused",
            5 => "cancelled",
            6 => "limit exceeded",
            7 => "link lost",
            8 => "not found",
            9 => "no route",
            10 => "hop limit reached",
            11 => "not a router",
            12 => "frame too large",
            13 => "stream ids exhausted",
            14 => "shutting down",
            15 => "keep-alive timeout",
            16 => "too many reset streams",
            _ => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// Why bytes could not be decoded into a frame. Every variant is link-fatal
/// (framing can no longer be trusted) and maps to GOAWAY with [`ErrorCode::PROTOCOL`]
/// or [`ErrorCode::FRAME_SIZE`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The preamble was not `ASTRANET`.
    #[error("bad preamble: not an astranet peer")]
    BadPreamble,
    /// Length above the negotiated maximum.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Length in the header.
        len: u32,
        /// The limit in force.
        max: u32,
    },
    /// A type below the extension range that this version does not define.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// A frame whose payload does not match its type's layout.
    #[error("malformed {kind:?} frame: {why}")]
    Malformed {
        /// The frame's type.
        kind: FrameType,
        /// What was wrong.
        why: &'static str,
    },
    /// A stream frame on stream 0 or a link frame on a stream.
    #[error("{kind:?} frame on wrong stream id {id}")]
    WrongStream {
        /// The frame's type.
        kind: FrameType,
        /// The id it carried.
        id: StreamId,
    },
}

/// Contents of HELLO (`PROTOCOL.md` §2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Lowest protocol version the sender speaks.
    pub min_version: u16,
    /// Highest protocol version the sender speaks.
    pub max_version: u16,
    /// The sender's node id (non-zero).
    pub node_id: u64,
    /// Role bits (`ROLE_*`).
    pub roles: u16,
    /// Largest payload the sender accepts.
    pub max_frame_size: u32,
    /// Credit each new stream starts with, for data sent to the sender.
    pub initial_window: u32,
    /// Initial open credit: how many streams the receiver may open in all.
    pub max_streams: u64,
    /// How often the sender probes an idle link, in ms.
    pub keepalive_interval_ms: u32,
    /// The silence after which the sender declares the link dead, in ms.
    pub keepalive_timeout_ms: u32,
    /// Extensions: (type, value). Unknown ones are ignored unless `type & 0x8000` (critical).
    pub extensions: Vec<(u16, Bytes)>,
}

/// Role bit: the node relays streams for others.
pub const ROLE_ROUTER: u16 = 0x1;
/// Role bit: the node serves services (announces).
pub const ROLE_SERVER: u16 = 0x2;

/// Where an OPEN is going and where it comes from (`PROTOCOL.md` §5.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OpenHeader {
    /// Destination node; 0 means "the receiving node".
    pub dst_node: u64,
    /// Destination port; 0 means "by service name".
    pub dst_port: u32,
    /// Source node.
    pub src_node: u64,
    /// Source (ephemeral) port.
    pub src_port: u32,
    /// Remaining hops a relay may forward this open through.
    pub hop_limit: u8,
    /// Environment namespace of the service name (empty: none).
    pub env: Bytes,
    /// Service name (empty: dial by port).
    pub service: Bytes,
}

impl OpenHeader {
    /// Encoded size of the open header (without data).
    pub fn encoded_len(&self) -> usize {
        8 + 4 + 8 + 4 + 1 + 1 + 1 + self.env.len() + self.service.len()
    }
}

/// One service entry in a SERVICES frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceOp {
    /// True: announce; false: withdraw.
    pub announce: bool,
    /// The port the service is bound to on its origin (0: name only).
    pub port: u32,
    /// Environment namespace.
    pub env: Bytes,
    /// Service name.
    pub name: Bytes,
}

/// SERVICES payload: a versioned diff of one origin node's service set (`PROTOCOL.md` §9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicesUpdate {
    /// The node the services live on.
    pub origin: u64,
    /// Version the diff applies to (ignored when `full`).
    pub base_version: u64,
    /// Version after applying.
    pub version: u64,
    /// The ops replace the origin's whole set.
    pub full: bool,
    /// Hops travelled from the origin.
    pub hops: u8,
    /// Changes.
    pub ops: Vec<ServiceOp>,
    /// REQUEST flag: asks the receiver for a full update of `origin`.
    pub request: bool,
    /// The origin's signature over its state at `version` (`None`: an unsigned mesh,
    /// or a REQUEST).
    pub signed: Option<ServicesSig>,
}

/// What makes a SERVICES update verifiable (`PROTOCOL.md` §11.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicesSig {
    /// The origin's signature over its whole state at the update's version
    /// (1..=[`MAX_SIGNATURE_LEN`] bytes).
    pub signature: Bytes,
    /// The origin's credentials (its certificate chain), so that nodes that never
    /// linked with it can verify the signature; empty in diffs
    /// (0..=[`MAX_CREDENTIALS_LEN`] bytes).
    pub credentials: Bytes,
}

impl ServicesSig {
    /// Bytes it adds to a SERVICES payload.
    pub fn encoded_len(&self) -> usize {
        2 + self.signature.len() + 2 + self.credentials.len()
    }
}

/// One entry of a ROUTES frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteEntry {
    /// Reachable node.
    pub node: u64,
    /// Distance in links from the sender; `u8::MAX` = unreachable (withdrawn).
    pub hops: u8,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Link handshake.
    Hello(Hello),
    /// New stream, maybe with its first bytes.
    Open {
        /// Stream id (of the sender's parity).
        id: StreamId,
        /// The sender will send nothing more.
        fin: bool,
        /// Routing header.
        header: OpenHeader,
        /// First bytes (count against the stream's initial window).
        data: Bytes,
    },
    /// Stream data.
    Data {
        /// Stream id.
        id: StreamId,
        /// Last data in this direction.
        fin: bool,
        /// Payload.
        data: Bytes,
    },
    /// Credit for a stream; `ack` accepts an OPEN.
    Window {
        /// Stream id.
        id: StreamId,
        /// Accepts the stream (first WINDOW from the acceptor).
        ack: bool,
        /// Bytes of credit added.
        increment: u32,
    },
    /// Abortive close.
    Reset {
        /// Stream id.
        id: StreamId,
        /// Why.
        code: ErrorCode,
    },
    /// Liveness probe or answer.
    Ping {
        /// This is the answer.
        ack: bool,
        /// Echoed back.
        opaque: u64,
    },
    /// No new streams; streams up to `last_id` complete.
    GoAway {
        /// Highest peer-opened stream id the sender processes.
        last_id: StreamId,
        /// Why.
        code: ErrorCode,
        /// Human-readable reason (UTF-8, may be empty).
        reason: Bytes,
    },
    /// Open credit, cumulative.
    Streams {
        /// The receiver may open streams numbered up to this.
        max: u64,
    },
    /// Discovery diff.
    Services(ServicesUpdate),
    /// Route advertisement.
    Routes {
        /// Entries.
        entries: Vec<RouteEntry>,
    },
}

impl Frame {
    /// The frame's type code.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello(_) => FrameType::Hello,
            Frame::Open { .. } => FrameType::Open,
            Frame::Data { .. } => FrameType::Data,
            Frame::Window { .. } => FrameType::Window,
            Frame::Reset { .. } => FrameType::Reset,
            Frame::Ping { .. } => FrameType::Ping,
            Frame::GoAway { .. } => FrameType::GoAway,
            Frame::Streams { .. } => FrameType::Streams,
            Frame::Services(_) => FrameType::Services,
            Frame::Routes { .. } => FrameType::Routes,
        }
    }
}

/// Writes a frame header.
#[inline]
pub fn put_header(out: &mut BytesMut, kind: FrameType, flags: u8, len: usize, id: StreamId) {
    put_header_raw(out, kind as u8, flags, len, id);
}

/// Writes a frame header with a raw type byte (tests, extensions).
#[inline]
pub fn put_header_raw(out: &mut BytesMut, kind: u8, flags: u8, len: usize, id: StreamId) {
    debug_assert!(len <= MAX_PAYLOAD_LEN as usize);
    debug_assert!(id <= MAX_STREAM_ID);
    let mut h = [0u8; HEADER_LEN];
    h[0] = kind;
    h[1] = flags;
    h[2..5].copy_from_slice(&(len as u32).to_be_bytes()[1..]);
    h[5..12].copy_from_slice(&id.to_be_bytes()[1..]);
    out.put_slice(&h);
}

fn put_short_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u8(b.len() as u8);
    out.put_slice(b);
}

/// Encodes a frame. Panics only on caller bugs (oversized fields), never on peer input;
/// the link state machine never builds such frames.
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    match frame {
        Frame::Hello(h) => {
            let ext_len: usize = h.extensions.iter().map(|(_, v)| 4 + v.len()).sum();
            let len = 2 + 2 + 8 + 2 + 4 + 4 + 8 + 4 + 4 + 2 + ext_len;
            put_header(out, FrameType::Hello, 0, len, 0);
            out.put_u16(h.min_version);
            out.put_u16(h.max_version);
            out.put_u64(h.node_id);
            out.put_u16(h.roles);
            out.put_u32(h.max_frame_size);
            out.put_u32(h.initial_window);
            out.put_u64(h.max_streams);
            out.put_u32(h.keepalive_interval_ms);
            out.put_u32(h.keepalive_timeout_ms);
            out.put_u16(h.extensions.len() as u16);
            for (t, v) in &h.extensions {
                out.put_u16(*t);
                out.put_u16(v.len() as u16);
                out.put_slice(v);
            }
        }
        Frame::Open {
            id,
            fin,
            header,
            data,
        } => {
            put_open_header(out, *id, *fin, header, data.len());
            out.put_slice(data);
        }
        Frame::Data { id, fin, data } => {
            put_header(
                out,
                FrameType::Data,
                if *fin { FLAG_FIN } else { 0 },
                data.len(),
                *id,
            );
            out.put_slice(data);
        }
        Frame::Window { id, ack, increment } => {
            put_header(
                out,
                FrameType::Window,
                if *ack { FLAG_ACK } else { 0 },
                4,
                *id,
            );
            out.put_u32(*increment);
        }
        Frame::Reset { id, code } => {
            put_header(out, FrameType::Reset, 0, 4, *id);
            out.put_u32(code.0);
        }
        Frame::Ping { ack, opaque } => {
            put_header(out, FrameType::Ping, if *ack { FLAG_ACK } else { 0 }, 8, 0);
            out.put_u64(*opaque);
        }
        Frame::GoAway {
            last_id,
            code,
            reason,
        } => {
            put_header(out, FrameType::GoAway, 0, 12 + reason.len(), 0);
            out.put_u64(*last_id);
            out.put_u32(code.0);
            out.put_slice(reason);
        }
        Frame::Streams { max } => {
            put_header(out, FrameType::Streams, 0, 8, 0);
            out.put_u64(*max);
        }
        Frame::Services(u) => {
            let ops_len: usize = u
                .ops
                .iter()
                .map(|o| 1 + 4 + 1 + o.env.len() + 1 + o.name.len())
                .sum();
            let flags = if u.request { FLAG_REQUEST } else { 0 }
                | if u.signed.is_some() { FLAG_SIGNED } else { 0 };
            let sig_len = u.signed.as_ref().map_or(0, ServicesSig::encoded_len);
            put_header(
                out,
                FrameType::Services,
                flags,
                8 + 8 + 8 + 1 + 1 + 2 + ops_len + sig_len,
                0,
            );
            out.put_u64(u.origin);
            out.put_u64(u.base_version);
            out.put_u64(u.version);
            out.put_u8(u.full as u8);
            out.put_u8(u.hops);
            out.put_u16(u.ops.len() as u16);
            for o in &u.ops {
                out.put_u8(o.announce as u8);
                out.put_u32(o.port);
                put_short_bytes(out, &o.env);
                put_short_bytes(out, &o.name);
            }
            if let Some(sig) = &u.signed {
                out.put_u16(sig.signature.len() as u16);
                out.put_slice(&sig.signature);
                out.put_u16(sig.credentials.len() as u16);
                out.put_slice(&sig.credentials);
            }
        }
        Frame::Routes { entries } => {
            put_header(out, FrameType::Routes, 0, 2 + entries.len() * 9, 0);
            out.put_u16(entries.len() as u16);
            for e in entries {
                out.put_u64(e.node);
                out.put_u8(e.hops);
            }
        }
    }
}

/// Writes an OPEN frame's header and open header; the caller appends `data_len` bytes.
pub fn put_open_header(
    out: &mut BytesMut,
    id: StreamId,
    fin: bool,
    h: &OpenHeader,
    data_len: usize,
) {
    put_header(
        out,
        FrameType::Open,
        if fin { FLAG_FIN } else { 0 },
        h.encoded_len() + data_len,
        id,
    );
    out.put_u64(h.dst_node);
    out.put_u32(h.dst_port);
    out.put_u64(h.src_node);
    out.put_u32(h.src_port);
    out.put_u8(h.hop_limit);
    put_short_bytes(out, &h.env);
    put_short_bytes(out, &h.service);
}

/// Parsed header fields.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    /// Raw type byte.
    pub kind: u8,
    /// Flag bits.
    pub flags: u8,
    /// Payload length.
    pub len: u32,
    /// Stream id.
    pub id: StreamId,
}

/// Reads a header from the first 12 bytes of `b`.
#[inline]
pub fn parse_header(b: &[u8]) -> Header {
    let len = u32::from_be_bytes([0, b[2], b[3], b[4]]);
    let mut idb = [0u8; 8];
    idb[1..].copy_from_slice(&b[5..12]);
    Header {
        kind: b[0],
        flags: b[1],
        len,
        id: u64::from_be_bytes(idb),
    }
}

/// Outcome of [`decode`] on a buffer.
#[derive(Debug)]
pub enum Decoded {
    /// A whole frame was taken off the front of the buffer.
    Frame(Frame),
    /// An extension frame this version does not know was skipped.
    Skipped,
}

/// Payloads at or below this size are copied into their own allocation instead of
/// sharing the (large) input buffer, so a few unread small frames cannot pin many
/// input buffers (`PROTOCOL.md` is silent; this is a memory policy).
pub const COPY_THRESHOLD: usize = 1024;

fn take_payload(buf: &mut BytesMut, len: usize) -> Bytes {
    if len <= COPY_THRESHOLD {
        let b = Bytes::copy_from_slice(&buf[..len]);
        buf.advance(len);
        b
    } else {
        buf.split_to(len).freeze()
    }
}

/// Decodes one frame from the front of `buf` if a whole one is there.
///
/// `max_payload` is the largest payload this side accepts. Returns `Ok(None)` when more
/// bytes are needed; on error the buffer's contents are unspecified and the link must
/// be closed.
pub fn decode(buf: &mut BytesMut, max_payload: u32) -> Result<Option<Decoded>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let h = parse_header(buf);
    let kind = match FrameType::from_u8(h.kind) {
        Some(k) => Some(k),
        None if h.kind >= EXTENSION_TYPE_BASE => None,
        None => return Err(FrameError::UnknownType(h.kind)),
    };
    let max = if kind == Some(FrameType::Hello) {
        MAX_HELLO_LEN
    } else {
        max_payload
    };
    if h.len > max {
        return Err(FrameError::TooLarge { len: h.len, max });
    }
    let total = HEADER_LEN + h.len as usize;
    if buf.len() < total {
        // No `reserve` here: the buffer may share its allocation with the room the
        // next read lands in (`Link::handle_input_buf`), and reserving would copy it.
        return Ok(None);
    }
    let Some(kind) = kind else {
        buf.advance(total);
        return Ok(Some(Decoded::Skipped));
    };
    buf.advance(HEADER_LEN);
    let len = h.len as usize;
    let frame = match kind {
        FrameType::Data => {
            stream_id(kind, h.id)?;
            Frame::Data {
                id: h.id,
                fin: h.flags & FLAG_FIN != 0,
                data: take_payload(buf, len),
            }
        }
        FrameType::Open => {
            stream_id(kind, h.id)?;
            let mut p = Reader::new(&buf[..len], kind);
            let dst_node = p.u64()?;
            let dst_port = p.u32()?;
            let src_node = p.u64()?;
            let src_port = p.u32()?;
            let hop_limit = p.u8()?;
            let env_len = p.u8()? as usize;
            let env_off = p.pos;
            p.skip(env_len)?;
            let name_len = p.u8()? as usize;
            let name_off = p.pos;
            p.skip(name_len)?;
            let hdr_len = p.pos;
            let env = Bytes::copy_from_slice(&buf[env_off..env_off + env_len]);
            let service = Bytes::copy_from_slice(&buf[name_off..name_off + name_len]);
            buf.advance(hdr_len);
            Frame::Open {
                id: h.id,
                fin: h.flags & FLAG_FIN != 0,
                header: OpenHeader {
                    dst_node,
                    dst_port,
                    src_node,
                    src_port,
                    hop_limit,
                    env,
                    service,
                },
                data: take_payload(buf, len - hdr_len),
            }
        }
        FrameType::Window => {
            stream_id(kind, h.id)?;
            let mut p = Reader::new(&buf[..len], kind);
            let increment = p.u32()?;
            p.end()?;
            buf.advance(len);
            Frame::Window {
                id: h.id,
                ack: h.flags & FLAG_ACK != 0,
                increment,
            }
        }
        FrameType::Reset => {
            stream_id(kind, h.id)?;
            let mut p = Reader::new(&buf[..len], kind);
            let code = ErrorCode(p.u32()?);
            p.end()?;
            buf.advance(len);
            Frame::Reset { id: h.id, code }
        }
        FrameType::Ping => {
            link_id(kind, h.id)?;
            let mut p = Reader::new(&buf[..len], kind);
            let opaque = p.u64()?;
            p.end()?;
            buf.advance(len);
            Frame::Ping {
                ack: h.flags & FLAG_ACK != 0,
                opaque,
            }
        }
        FrameType::GoAway => {
            link_id(kind, h.id)?;
            let mut p = Reader::new(&buf[..len], kind);
            let last_id = p.u64()?;
            let code = ErrorCode(p.u32()?);
            if last_id > MAX_STREAM_ID {
                return Err(malformed(kind, "last stream id above 2^56"));
            }
            buf.advance(12);
            let reason = buf.split_to(len - 12).freeze();
            if std::str::from_utf8(&reason).is_err() {
                return Err(malformed(kind, "reason is not UTF-8"));
            }
            Frame::GoAway {
                last_id,
                code,
                reason,
            }
        }
        FrameType::Streams => {
            link_id(kind, h.id)?;
            let mut p = Reader::new(&buf[..len], kind);
            let max = p.u64()?;
            p.end()?;
            buf.advance(len);
            Frame::Streams { max }
        }
        FrameType::Hello => {
            link_id(kind, h.id)?;
            let mut p = Reader::new(&buf[..len], kind);
            let min_version = p.u16()?;
            let max_version = p.u16()?;
            let node_id = p.u64()?;
            let roles = p.u16()?;
            let max_frame_size = p.u32()?;
            let initial_window = p.u32()?;
            let max_streams = p.u64()?;
            let keepalive_interval_ms = p.u32()?;
            let keepalive_timeout_ms = p.u32()?;
            let n = p.u16()? as usize;
            // Each extension takes at least 4 bytes, so `n` is bounded by the frame length.
            let mut extensions = Vec::with_capacity(n.min(len / 4));
            for _ in 0..n {
                let t = p.u16()?;
                let l = p.u16()? as usize;
                let off = p.pos;
                p.skip(l)?;
                extensions.push((t, Bytes::copy_from_slice(&p.b[off..off + l])));
            }
            p.end()?;
            buf.advance(len);
            Frame::Hello(Hello {
                min_version,
                max_version,
                node_id,
                roles,
                max_frame_size,
                initial_window,
                max_streams,
                keepalive_interval_ms,
                keepalive_timeout_ms,
                extensions,
            })
        }
        FrameType::Services => {
            link_id(kind, h.id)?;
            let mut p = Reader::new(&buf[..len], kind);
            let origin = p.u64()?;
            let base_version = p.u64()?;
            let version = p.u64()?;
            let full = match p.u8()? {
                0 => false,
                1 => true,
                _ => return Err(malformed(kind, "full flag is not 0 or 1")),
            };
            let hops = p.u8()?;
            let n = p.u16()? as usize;
            // Each op takes at least 7 bytes.
            let mut ops = Vec::with_capacity(n.min(len / 7));
            for _ in 0..n {
                let announce = match p.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(malformed(kind, "op is not 0 or 1")),
                };
                let port = p.u32()?;
                let env = p.short_bytes()?;
                let name = p.short_bytes()?;
                ops.push(ServiceOp {
                    announce,
                    port,
                    env,
                    name,
                });
            }
            let signed = if h.flags & FLAG_SIGNED != 0 {
                let n = p.u16()? as usize;
                if n == 0 || n > MAX_SIGNATURE_LEN {
                    return Err(malformed(kind, "signature length not in 1..=512"));
                }
                let signature = Bytes::copy_from_slice(p.take(n)?);
                let n = p.u16()? as usize;
                if n > MAX_CREDENTIALS_LEN {
                    return Err(malformed(kind, "credentials longer than 3072 bytes"));
                }
                let credentials = Bytes::copy_from_slice(p.take(n)?);
                Some(ServicesSig {
                    signature,
                    credentials,
                })
            } else {
                None
            };
            p.end()?;
            buf.advance(len);
            Frame::Services(ServicesUpdate {
                origin,
                base_version,
                version,
                full,
                hops,
                ops,
                request: h.flags & FLAG_REQUEST != 0,
                signed,
            })
        }
        FrameType::Routes => {
            link_id(kind, h.id)?;
            let mut p = Reader::new(&buf[..len], kind);
            let n = p.u16()? as usize;
            let mut entries = Vec::with_capacity(n.min(len / 9));
            for _ in 0..n {
                entries.push(RouteEntry {
                    node: p.u64()?,
                    hops: p.u8()?,
                });
            }
            p.end()?;
            buf.advance(len);
            Frame::Routes { entries }
        }
    };
    Ok(Some(Decoded::Frame(frame)))
}

fn malformed(kind: FrameType, why: &'static str) -> FrameError {
    FrameError::Malformed { kind, why }
}

fn stream_id(kind: FrameType, id: StreamId) -> Result<(), FrameError> {
    if id == 0 {
        Err(FrameError::WrongStream { kind, id })
    } else {
        Ok(())
    }
}

fn link_id(kind: FrameType, id: StreamId) -> Result<(), FrameError> {
    if id != 0 {
        Err(FrameError::WrongStream { kind, id })
    } else {
        Ok(())
    }
}

/// Bounds-checked big-endian reader over a payload.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    kind: FrameType,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8], kind: FrameType) -> Self {
        Self { b, pos: 0, kind }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.b.len() - self.pos < n {
            return Err(malformed(self.kind, "payload too short"));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn skip(&mut self, n: usize) -> Result<(), FrameError> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().unwrap_or_default(),
        ))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    fn short_bytes(&mut self) -> Result<Bytes, FrameError> {
        let n = self.u8()? as usize;
        Ok(Bytes::copy_from_slice(self.take(n)?))
    }
    fn end(&self) -> Result<(), FrameError> {
        if self.pos == self.b.len() {
            Ok(())
        } else {
            Err(malformed(self.kind, "trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_header_is_12_bytes() {
        let mut out = BytesMut::new();
        encode(
            &Frame::Data {
                id: 3,
                fin: true,
                data: Bytes::from_static(b"hi"),
            },
            &mut out,
        );
        assert_eq!(out.len(), HEADER_LEN + 2);
        assert_eq!(&out[..], &[2, 1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 3, b'h', b'i']);
    }

    #[test]
    fn oversized_rejected_before_payload_arrives() {
        let mut out = BytesMut::new();
        put_header(&mut out, FrameType::Data, 0, 70_000, 5);
        assert_eq!(
            decode(&mut out, 65_536).unwrap_err(),
            FrameError::TooLarge {
                len: 70_000,
                max: 65_536
            }
        );
    }

    #[test]
    fn extension_frames_are_skipped_unknown_rejected() {
        let mut out = BytesMut::new();
        out.put_slice(&[0x90, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3]);
        assert!(matches!(decode(&mut out, 100), Ok(Some(Decoded::Skipped))));
        assert!(out.is_empty());
        out.put_slice(&[0x4f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            decode(&mut out, 100).unwrap_err(),
            FrameError::UnknownType(0x4f)
        );
    }

    fn services(signed: Option<ServicesSig>) -> Frame {
        Frame::Services(ServicesUpdate {
            origin: 7,
            base_version: 0,
            version: 9,
            full: true,
            hops: 1,
            ops: vec![ServiceOp {
                announce: true,
                port: 80,
                env: Bytes::new(),
                name: Bytes::from_static(b"svc"),
            }],
            request: false,
            signed,
        })
    }

    fn sig(signature: usize, credentials: usize) -> Option<ServicesSig> {
        Some(ServicesSig {
            signature: Bytes::from(vec![1; signature]),
            credentials: Bytes::from(vec![2; credentials]),
        })
    }

    #[test]
    fn unsigned_services_keep_their_layout_signed_ones_append_the_signature() {
        let mut plain = BytesMut::new();
        encode(&services(None), &mut plain);
        // Flags byte: no SIGNED bit, and the payload ends after the ops.
        assert_eq!(plain[1], 0);
        assert_eq!(plain.len(), HEADER_LEN + 28 + 1 + 4 + 1 + 1 + 3);
        let mut signed = BytesMut::new();
        encode(&services(sig(64, 100)), &mut signed);
        assert_eq!(signed[1], FLAG_SIGNED);
        assert_eq!(signed.len(), plain.len() + 2 + 64 + 2 + 100);
        for f in [
            services(None),
            services(sig(64, 0)),
            services(sig(512, 3072)),
        ] {
            let mut b = BytesMut::new();
            encode(&f, &mut b);
            match decode(&mut b, 1 << 20) {
                Ok(Some(Decoded::Frame(g))) => assert_eq!(g, f),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn signature_and_credential_sizes_are_bounded() {
        for (s, c, why) in [
            (0, 0, "signature length not in 1..=512"),
            (513, 0, "signature length not in 1..=512"),
            (64, 3073, "credentials longer than 3072 bytes"),
        ] {
            let mut b = BytesMut::new();
            encode(&services(sig(s, c)), &mut b);
            assert_eq!(
                decode(&mut b, 1 << 20).unwrap_err(),
                FrameError::Malformed {
                    kind: FrameType::Services,
                    why
                }
            );
        }
        // The SIGNED flag on a frame without the trailer: too short.
        let mut b = BytesMut::new();
        encode(&services(None), &mut b);
        b[1] = FLAG_SIGNED;
        assert!(matches!(
            decode(&mut b, 1 << 20),
            Err(FrameError::Malformed { .. })
        ));
    }
}
