//! A queue of byte chunks, allocation-free while it holds at most one.

use bytes::Bytes;
use std::collections::VecDeque;

/// A FIFO of byte chunks that keeps its first chunk inline and allocates only when two
/// or more chunks are queued at once. Streams queue their bytes in it, and a read
/// returns one (as `Chunks`), so received bytes reach the reader without a copy.
#[derive(Debug, Default)]
pub struct BufQueue {
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
    pub fn len(&self) -> usize {
        self.first.len() + self.rest.as_ref().map_or(0, |r| r.bytes)
    }

    /// True if no bytes are queued.
    pub fn is_empty(&self) -> bool {
        self.first.is_empty()
    }

    /// Appends a chunk (empty chunks are dropped).
    pub fn push(&mut self, b: Bytes) {
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
    pub fn pop(&mut self, max: usize) -> Option<Bytes> {
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

    /// Takes the next chunk whole (zero-copy).
    pub fn pop_chunk(&mut self) -> Option<Bytes> {
        self.pop(usize::MAX)
    }

    /// Copies as many bytes as fit into `buf`, consuming them; returns the count.
    pub fn copy_to(&mut self, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() {
            let Some(b) = self.pop(buf.len() - done) else {
                break;
            };
            buf[done..done + b.len()].copy_from_slice(&b);
            done += b.len();
        }
        done
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.first = Bytes::new();
        self.rest = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn copy_to_spans_chunks() {
        let mut q = BufQueue::default();
        q.push(Bytes::from_static(b"abc"));
        q.push(Bytes::from_static(b"def"));
        let mut buf = [0u8; 4];
        assert_eq!(q.copy_to(&mut buf), 4);
        assert_eq!(&buf, b"abcd");
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop_chunk().unwrap(), "ef");
    }
}
