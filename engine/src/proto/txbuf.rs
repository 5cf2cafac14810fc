//! Where [`Link::poll_transmit`](crate::proto::Link::poll_transmit) writes frames.
//!
//! Two kinds of output: a plain `BytesMut`, which receives every byte (tests, the
//! in-memory loopback link, TLS, which must copy into records anyway), and a
//! [`TxBuf`], a gather list for vectored socket writes: frame headers, control frames
//! and small payloads are copied into one contiguous buffer, and large payloads stay
//! the `Bytes` the writer handed over, so the kernel copies them straight from the
//! writer's chunk. That saves the encode copy of every bulk byte (a tenth of a bulk
//! transfer's CPU on this machine's profile).

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::IoSlice;

/// Payloads smaller than this are copied beside their header: an iovec entry per
/// small frame would cost more than the copy.
pub const GATHER_MIN: usize = 2048;

/// Where frames are encoded: [`BytesMut`] (every byte copied) or [`TxBuf`] (large
/// payloads by reference).
pub trait FrameSink {
    /// The contiguous buffer headers and small frames are encoded into.
    fn head(&mut self) -> &mut BytesMut;
    /// Appends a frame's payload.
    fn put_payload(&mut self, b: Bytes);
    /// Bytes held in all.
    fn total(&self) -> usize;
}

impl FrameSink for BytesMut {
    fn head(&mut self) -> &mut BytesMut {
        self
    }

    fn put_payload(&mut self, b: Bytes) {
        self.extend_from_slice(&b);
    }

    fn total(&self) -> usize {
        self.len()
    }
}

/// Encoded frames waiting for the socket, in order: `segs` first, then `head`.
#[derive(Debug, Default)]
pub struct TxBuf {
    segs: VecDeque<Bytes>,
    head: BytesMut,
    len: usize,
}

impl FrameSink for TxBuf {
    fn head(&mut self) -> &mut BytesMut {
        // `len` counts `head` lazily: see `total`.
        &mut self.head
    }

    fn put_payload(&mut self, b: Bytes) {
        if b.len() < GATHER_MIN {
            self.head.extend_from_slice(&b);
            return;
        }
        self.seal_head();
        self.len += b.len();
        self.segs.push_back(b);
    }

    fn total(&self) -> usize {
        self.len + self.head.len()
    }
}

impl TxBuf {
    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.total()
    }

    /// True if nothing waits.
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// Moves the contiguous bytes so far behind the payloads already listed, so that
    /// what comes next follows them.
    fn seal_head(&mut self) {
        if !self.head.is_empty() {
            let h = self.head.split().freeze();
            self.len += h.len();
            self.segs.push_back(h);
        }
    }

    /// Fills `out` with the waiting bytes' first pieces, in order, for one vectored
    /// write; returns how many it filled.
    pub fn io_slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for s in self.segs.iter().take(out.len()) {
            out[n] = IoSlice::new(s);
            n += 1;
        }
        if n < out.len() && !self.head.is_empty() {
            out[n] = IoSlice::new(&self.head);
            n += 1;
        }
        n
    }

    /// The first contiguous piece, for transports that take one slice at a time.
    pub fn first_chunk(&self) -> &[u8] {
        match self.segs.front() {
            Some(s) => s,
            None => &self.head,
        }
    }

    /// Drops the first `n` bytes (written).
    pub fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.segs.front_mut() else {
                break;
            };
            if front.len() > n {
                front.advance(n);
                self.len -= n;
                return;
            }
            n -= front.len();
            self.len -= front.len();
            self.segs.pop_front();
        }
        debug_assert!(n <= self.head.len(), "advanced past the end of a TxBuf");
        self.head.advance(n.min(self.head.len()));
        if self.head.is_empty() {
            // Keep the allocation: the next batch reuses it once nothing refers to it.
            self.head.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(t: &TxBuf) -> Vec<u8> {
        let mut v = Vec::new();
        let mut s = [IoSlice::new(&[]); 64];
        let n = t.io_slices(&mut s);
        for x in &s[..n] {
            v.extend_from_slice(x);
        }
        v
    }

    #[test]
    fn order_is_kept_and_large_payloads_are_not_copied() {
        let mut t = TxBuf::default();
        t.head().extend_from_slice(b"h1");
        t.put_payload(Bytes::from_static(b"small"));
        let big = Bytes::from(vec![7u8; GATHER_MIN]);
        t.put_payload(big.clone());
        t.head().extend_from_slice(b"h2");
        assert_eq!(t.len(), 2 + 5 + GATHER_MIN + 2);
        let mut expect = b"h1small".to_vec();
        expect.extend_from_slice(&big);
        expect.extend_from_slice(b"h2");
        assert_eq!(flat(&t), expect);
        // The big payload is the writer's own chunk, listed by reference.
        assert_eq!(t.segs[1].as_ptr(), big.as_ptr());
    }

    #[test]
    fn advance_across_segments_and_head() {
        let mut t = TxBuf::default();
        t.head().extend_from_slice(b"ab");
        t.put_payload(Bytes::from(vec![1u8; GATHER_MIN]));
        t.head().extend_from_slice(b"cd");
        t.advance(1);
        assert_eq!(t.first_chunk(), b"b");
        t.advance(1 + GATHER_MIN - 3);
        assert_eq!(t.first_chunk(), &[1u8; 3][..]);
        t.advance(4);
        assert_eq!(t.first_chunk(), b"d");
        assert_eq!(t.len(), 1);
        t.advance(1);
        assert!(t.is_empty());
        let mut s = [IoSlice::new(&[]); 8];
        assert_eq!(t.io_slices(&mut s), 0);
    }

    #[test]
    fn io_slices_respects_the_limit() {
        let mut t = TxBuf::default();
        for _ in 0..3 {
            t.head().extend_from_slice(b"x");
            t.put_payload(Bytes::from(vec![0u8; GATHER_MIN]));
        }
        let mut s = [IoSlice::new(&[]); 4];
        assert_eq!(t.io_slices(&mut s), 4);
        let mut s = [IoSlice::new(&[]); 100];
        assert_eq!(t.io_slices(&mut s), 6);
    }
}
