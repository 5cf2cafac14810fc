//! Per-stream state: flags, credit counters and two byte queues.
//!
//! Kept small on purpose (see the `idle_stream_state_is_small` test): an idle stream
//! costs its map entry and nothing on the heap. Buffers hold `Bytes` chunks, so data is
//! never copied inside the core.

pub(crate) use super::bufqueue::BufQueue;
use super::frame::{ErrorCode, StreamId};
use bytes::Bytes;
use hashbrown::HashMap;

// Stream flag bits.
pub(crate) const ACCEPTED: u16 = 1 << 0;
pub(crate) const OPEN_PENDING: u16 = 1 << 1;
pub(crate) const FIN_QUEUED: u16 = 1 << 2;
pub(crate) const FIN_SENT: u16 = 1 << 3;
pub(crate) const FIN_RECV: u16 = 1 << 4;
pub(crate) const RESET_SENT: u16 = 1 << 5;
pub(crate) const RESET_RECV: u16 = 1 << 6;
pub(crate) const APP_CLOSED: u16 = 1 << 7;
pub(crate) const DISCARDED: u16 = 1 << 8;
pub(crate) const READ_NOTIFIED: u16 = 1 << 9;
pub(crate) const WRITE_BLOCKED: u16 = 1 << 10;
pub(crate) const SCHEDULED: u16 = 1 << 11;
pub(crate) const LOCAL: u16 = 1 << 12;
/// Queued in `Link::link_blocked`, waiting for room in the link's send buffer.
pub(crate) const LINK_WAIT: u16 = 1 << 13;
/// Opened by the neighbour itself (not relayed through it): its resets and our
/// refusals count against the neighbour's reset budget.
pub(crate) const FROM_PEER: u16 = 1 << 14;
/// Shares the link's receive budget (it was window-limited): its window, which may
/// still be the initial one, is in `Link::grown`, and the number of such streams
/// splits the budget.
pub(crate) const GROWN: u16 = 1 << 15;

/// A stream's queued bytes, kept apart from [`Stream`] and only while non-empty.
#[derive(Debug, Default)]
pub(crate) struct Bufs {
    pub(crate) send: BufQueue,
    pub(crate) recv: BufQueue,
}

/// Bytes queued to send on `id`.
pub(crate) fn slen(b: &HashMap<StreamId, Bufs>, id: StreamId) -> usize {
    b.get(&id).map_or(0, |b| b.send.len())
}

/// Bytes received and not yet read on `id`.
pub(crate) fn rlen(b: &HashMap<StreamId, Bufs>, id: StreamId) -> usize {
    b.get(&id).map_or(0, |b| b.recv.len())
}

pub(crate) fn push_send(b: &mut HashMap<StreamId, Bufs>, id: StreamId, data: Bytes) {
    if !data.is_empty() {
        b.entry(id).or_default().send.push(data);
    }
}

pub(crate) fn push_recv(b: &mut HashMap<StreamId, Bufs>, id: StreamId, data: Bytes) {
    if !data.is_empty() {
        b.entry(id).or_default().recv.push(data);
    }
}

/// Removes the entry once both queues are empty.
fn tidy(b: &mut HashMap<StreamId, Bufs>, id: StreamId) {
    if b.get(&id)
        .is_some_and(|e| e.send.is_empty() && e.recv.is_empty())
    {
        b.remove(&id);
    }
}

pub(crate) fn pop_send(b: &mut HashMap<StreamId, Bufs>, id: StreamId, max: usize) -> Option<Bytes> {
    let r = b.get_mut(&id)?.send.pop(max);
    tidy(b, id);
    r
}

pub(crate) fn pop_recv(b: &mut HashMap<StreamId, Bufs>, id: StreamId, max: usize) -> Option<Bytes> {
    let r = b.get_mut(&id)?.recv.pop(max);
    tidy(b, id);
    r
}

pub(crate) fn clear_send(b: &mut HashMap<StreamId, Bufs>, id: StreamId) {
    if let Some(e) = b.get_mut(&id) {
        e.send.clear();
    }
    tidy(b, id);
}

pub(crate) fn clear_recv(b: &mut HashMap<StreamId, Bufs>, id: StreamId) {
    if let Some(e) = b.get_mut(&id) {
        e.recv.clear();
    }
    tidy(b, id);
}

/// The state of one stream: flags and credit counters, nothing on the heap. Its
/// queued bytes, if any, are in a [`Bufs`] entry beside it. See `PROTOCOL.md` §5.3.
///
/// 16 bytes, so that a map entry with its 8-byte id is 24 (a million idle streams sit
/// in a table of 2^21 slots per link end: every byte here costs ~2 per stream). What
/// only some streams need lives elsewhere: a receive window that grew is in the link's
/// `grown` map (flag `GROWN`), and a reset stream's code reuses `recv_avail`.
#[derive(Debug)]
pub(crate) struct Stream {
    pub(crate) flags: u16,
    /// Bytes we may still send (peer-granted credit not yet used).
    pub(crate) send_credit: u32,
    /// Bytes the peer may still send before it violates the window. Once the stream
    /// is reset (`RESET_SENT` or `RESET_RECV`), the reset code instead: nothing reads
    /// or grants a reset stream's receive window (see [`Stream::set_reset`]).
    recv_avail: u32,
    /// Bytes consumed by the application and not yet returned as credit.
    pub(crate) recv_unacked: u32,
}

impl Stream {
    /// A new stream with flags `flags`, `send_credit` to send and `recv_avail` the peer
    /// may send.
    pub(crate) fn new(flags: u16, send_credit: u32, recv_avail: u32) -> Self {
        Self {
            flags,
            send_credit,
            recv_avail,
            recv_unacked: 0,
        }
    }
    #[inline]
    pub(crate) fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }
    #[inline]
    pub(crate) fn set(&mut self, f: u16) {
        self.flags |= f;
    }
    #[inline]
    pub(crate) fn clear(&mut self, f: u16) {
        self.flags &= !f;
    }
    pub(crate) fn is_reset(&self) -> bool {
        self.has(RESET_SENT | RESET_RECV)
    }
    /// Marks the stream reset (`how`: `RESET_SENT` or `RESET_RECV`) with `code`. The
    /// receive window is dead from here on (data is dropped, no credit goes back), so
    /// its word keeps the code.
    pub(crate) fn set_reset(&mut self, how: u16, code: ErrorCode) {
        debug_assert!(how & (RESET_SENT | RESET_RECV) == how && how != 0);
        self.set(how);
        self.recv_avail = code.0;
    }
    /// The code the stream was reset with; meaningful only when [`Stream::is_reset`].
    pub(crate) fn reset_code(&self) -> ErrorCode {
        debug_assert!(self.is_reset());
        ErrorCode(self.recv_avail)
    }
    /// Bytes the peer may still send; only for a stream that is not reset.
    pub(crate) fn recv_avail(&self) -> u32 {
        debug_assert!(!self.is_reset());
        self.recv_avail
    }
    /// Sets [`Stream::recv_avail`]; only for a stream that is not reset.
    pub(crate) fn set_recv_avail(&mut self, v: u32) {
        debug_assert!(!self.is_reset());
        self.recv_avail = v;
    }
    /// Nothing more will be sent by us.
    pub(crate) fn local_done(&self) -> bool {
        self.has(FIN_SENT | RESET_SENT | RESET_RECV)
    }
    /// Nothing more will come from the peer that we must act on.
    pub(crate) fn remote_done(&self) -> bool {
        self.has(FIN_RECV | RESET_SENT | RESET_RECV)
    }
    /// The state can be freed.
    pub(crate) fn finished(&self) -> bool {
        self.has(APP_CLOSED) && self.local_done() && self.remote_done()
    }
}

/// A stream's current receive window: the link's initial window unless it grew (flag
/// `GROWN`, the size then in `grown`).
#[inline]
pub(crate) fn recv_window(
    grown: &HashMap<StreamId, u32>,
    s: &Stream,
    id: StreamId,
    initial: u32,
) -> u32 {
    if s.has(GROWN) {
        grown.get(&id).copied().unwrap_or(initial)
    } else {
        initial
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_stream_state_is_small() {
        // An idle stream is one map entry, key + value, plus 1 hashbrown control byte;
        // at a million streams per link end the table has 2^21 slots, so each byte
        // of the entry costs about two per stream. 24 is the floor for an 8-byte key
        // and 8-byte alignment: the bar is exact so that any growth shows here.
        assert_eq!(std::mem::size_of::<Stream>(), 16);
        assert_eq!(std::mem::size_of::<(StreamId, Stream)>(), 24);
    }

    #[test]
    fn reset_code_reuses_the_dead_window() {
        let mut s = Stream::new(LOCAL, 10, 20);
        assert_eq!(s.recv_avail(), 20);
        s.set_reset(RESET_RECV, ErrorCode::CANCELLED);
        assert!(s.is_reset() && s.remote_done() && s.local_done());
        assert_eq!(s.reset_code(), ErrorCode::CANCELLED);
        assert_eq!(s.send_credit, 10);
    }
}
