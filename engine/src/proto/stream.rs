//! Per-stream state: flags, credit counters and two byte queues.
//!
//! Kept small on purpose (see the `idle_stream_state_is_small` test): an idle stream
//! costs its map entry and nothing on the heap. Buffers hold `Bytes` chunks, so data is
//! never copied inside the core.

pub(crate) use super::bufqueue::BufQueue;
use super::frame::StreamId;
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
/// Window-limited at some point: counted in `Link::sharing_streams`, among which the
/// link's receive budget is split.
pub(crate) const SHARING: u16 = 1 << 15;

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
#[derive(Debug, Default)]
pub(crate) struct Stream {
    pub(crate) flags: u16,
    /// Reset code, when `RESET_SENT` or `RESET_RECV` is set.
    pub(crate) reset_code: u32,
    /// Bytes we may still send (peer-granted credit not yet used).
    pub(crate) send_credit: u32,
    /// Current receive window size (grows for busy streams).
    pub(crate) recv_window: u32,
    /// Bytes the peer may still send before it violates the window.
    pub(crate) recv_avail: u32,
    /// Bytes consumed by the application and not yet returned as credit.
    pub(crate) recv_unacked: u32,
}

impl Stream {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_stream_state_is_small() {
        // An idle stream is one map entry: key + value + 1 hashbrown control byte;
        // the table is at most half empty after growing, so at worst twice that.
        let entry = std::mem::size_of::<(u64, Stream)>() + 1;
        assert!(entry <= 40, "idle stream entry is {entry} bytes");
        assert!(2 * entry <= 128);
    }
}
