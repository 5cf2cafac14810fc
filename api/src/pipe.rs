//! An in-memory, full-duplex byte stream: the two ends of a wire inside one process.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::{Arc, Condvar, Mutex};

/// Bytes one direction buffers before a writer blocks.
const CAPACITY: usize = 1 << 20;

#[derive(Default)]
struct Dir {
    buf: Mutex<(VecDeque<u8>, bool)>,
    cond: Condvar,
}

impl Dir {
    fn lock(&self) -> std::sync::MutexGuard<'_, (VecDeque<u8>, bool)> {
        self.buf.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn close(&self) {
        self.lock().1 = true;
        self.cond.notify_all();
    }
}

/// One end of a [`pipe`]: `Read` + `Write` + `Send`, and splittable into halves.
/// Dropping an end closes both directions: the other end reads EOF and its writes fail.
pub struct PipeEnd {
    r: PipeReader,
    w: PipeWriter,
}

/// The reading half of a [`PipeEnd`].
pub struct PipeReader(Arc<Dir>);
/// The writing half of a [`PipeEnd`]; dropping it ends the stream for the reader.
pub struct PipeWriter(Arc<Dir>);

/// Creates a connected pair of in-memory byte streams.
///
/// ```
/// use std::io::{Read, Write};
/// let (mut a, mut b) = astranet::pipe();
/// a.write_all(b"hi").unwrap();
/// let mut buf = [0u8; 2];
/// b.read_exact(&mut buf).unwrap();
/// assert_eq!(&buf, b"hi");
/// ```
pub fn pipe() -> (PipeEnd, PipeEnd) {
    let ab = Arc::new(Dir::default());
    let ba = Arc::new(Dir::default());
    (
        PipeEnd {
            r: PipeReader(ba.clone()),
            w: PipeWriter(ab.clone()),
        },
        PipeEnd {
            r: PipeReader(ab),
            w: PipeWriter(ba),
        },
    )
}

impl PipeEnd {
    /// Splits into halves that can be used from two threads.
    pub fn split(self) -> (PipeReader, PipeWriter) {
        (self.r, self.w)
    }
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut g = self.0.lock();
        loop {
            if !g.0.is_empty() {
                let n = buf.len().min(g.0.len());
                for (d, s) in buf.iter_mut().zip(g.0.drain(..n)) {
                    *d = s;
                }
                self.0.cond.notify_all();
                return Ok(n);
            }
            if g.1 {
                return Ok(0);
            }
            g = self.0.cond.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut g = self.0.lock();
        loop {
            if g.1 {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "pipe closed"));
            }
            if g.0.len() < CAPACITY {
                let n = buf.len().min(CAPACITY - g.0.len());
                g.0.extend(&buf[..n]);
                self.0.cond.notify_all();
                return Ok(n);
            }
            g = self.0.cond.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl Read for PipeEnd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.r.read(buf)
    }
}

impl Write for PipeEnd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.w.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
