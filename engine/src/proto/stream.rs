//! Per-stream state: flags, credit counters and two byte queues.
//!
//! Kept small on purpose (see the `idle_stream_state_is_small` test): an idle stream
//! costs its map entry and nothing on the heap. Buffers hold `Bytes` chunks, so data is
//! never copied inside the core.

use super::frame::StreamId;
use bytes::Bytes;
use hashbrown::HashMap;
use std::collections::VecDeque;

/// A FIFO of byte chunks that keeps its first chunk inline and allocates only when two
/// or more chunks are queued at once.
#[derive(Debug, Default)]
pub(crate) struct BufQueue {
    first: Bytes,
    rest: Option<Box<Rest>>,
}

#[derive(Debug, Default)]
struct Rest {
    chunks: VecDeque<Bytes>,
    bytes: usize,
}

impl BufQueue {
    /// Queued bytes.
    pub(crate) fn len(&self) -> usize {
        self.first.len() + self.rest.as_ref().map_or(0, |r| r.bytes)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_empty()
    }

    /// Appends a chunk (empty chunks are dropped).
    pub(crate) fn push(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        if self.first.is_empty() {
            self.first = b;
            return;
        }
        let rest = self.rest.get_or_insert_with(Default::default);
        rest.bytes += b.len();
        rest.chunks.push_back(b);
    }

    /// Takes up to `max` bytes off the front, zero-copy (one chunk or part of it).
    pub(crate) fn pop(&mut self, max: usize) -> Option<Bytes> {
        if self.first.is_empty() || max == 0 {
            return None;
        }
        let out = if self.first.len() <= max {
            std::mem::take(&mut self.first)
        } else {
            return Some(self.first.split_to(max));
        };
        // Refill `first` from the overflow queue; the queue's allocation is kept while
        // it is busy and released once it runs dry, so an idle stream holds no heap.
        if let Some(rest) = self.rest.as_mut() {
            if let Some(next) = rest.chunks.pop_front() {
                rest.bytes -= next.len();
                self.first = next;
            }
            if rest.chunks.is_empty() {
                self.rest = None;
            }
        }
        Some(out)
    }

    /// Drops everything.
    pub(crate) fn clear(&mut self) {
        self.first = Bytes::new();
        self.rest = None;
    }
}

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

    #[test]
    fn bufqueue_fifo_and_frees_overflow() {
        let mut q = BufQueue::default();
        q.push(Bytes::from_static(b"abc"));
        q.push(Bytes::from_static(b"de"));
        q.push(Bytes::new());
        q.push(Bytes::from_static(b"f"));
        assert_eq!(q.len(), 6);
        assert_eq!(q.pop(2).unwrap(), "ab");
        assert_eq!(q.pop(10).unwrap(), "c");
        assert_eq!(q.pop(10).unwrap(), "de");
        assert!(q.rest.is_none());
        assert_eq!(q.pop(10).unwrap(), "f");
        assert!(q.pop(10).is_none());
        assert_eq!(q.len(), 0);
    }
}
