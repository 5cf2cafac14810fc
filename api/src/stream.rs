//! Stream handles: [`Stream`] for threads (`std::io::Read`/`Write`) and [`AsyncStream`]
//! for async code (`futures_io::AsyncRead`/`AsyncWrite`).
//!
//! A handle is thin: the stream's state lives in the shard that owns it. A read asks the
//! shard for the bytes queued (several chunks at once, up to the request). A write
//! hands the shard a copy of the bytes (at most [`MAX_WRITE`]) and returns at once;
//! writes wait only once [`MAX_IN_FLIGHT`] bytes are handed over and not yet taken by
//! the stream within its credit. So a writer is held back by the peer's window, and
//! what a stream buffers beyond that window is bounded.

use astranet_engine::proto::ErrorCode;
use astranet_engine::{node_gone as gone, wait_timeout, Addr, Chunks, Rx, StreamRef, Wait};
use bytes::Bytes;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The most bytes one `write` call takes.
pub const MAX_WRITE: usize = 256 * 1024;
/// Bytes a stream's writer may have handed over and not yet taken by the stream
/// before `write` blocks (or pends).
pub const MAX_IN_FLIGHT: usize = 1024 * 1024;
/// The most bytes one `read` asks the shard for (the rest stays queued there).
const READ_CHUNK: usize = 1024 * 1024;

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}

fn write_after_shutdown() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "write after shutdown_write")
}

fn check_timeout(dur: Option<Duration>) -> io::Result<()> {
    if dur == Some(Duration::ZERO) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a zero timeout is not allowed",
        ));
    }
    Ok(())
}

fn deadline(t: Option<Duration>) -> Option<Instant> {
    t.map(|d| Instant::now() + d)
}

/// A handle's state beyond its ids, allocated only while in use, so a million idle
/// handles cost a few dozen bytes each.
#[derive(Default)]
struct Extra {
    /// Bytes received and not yet copied to the caller.
    leftover: Chunks,
    /// A read in progress (timed out, or pending in async code).
    pending_read: Option<Rx<Chunks>>,
    /// Writes handed to the shard and not yet fully taken, oldest first.
    writes: VecDeque<(Rx<usize>, usize)>,
    in_flight: usize,
    pending_close: Option<Rx<()>>,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

impl Extra {
    fn is_idle(&self) -> bool {
        self.leftover.is_empty()
            && self.pending_read.is_none()
            && self.writes.is_empty()
            && self.pending_close.is_none()
            && self.read_timeout.is_none()
            && self.write_timeout.is_none()
    }
}

/// What both handle types share.
struct Inner {
    r: StreamRef,
    x: Option<Box<Extra>>,
    write_shut: bool,
}

impl Inner {
    fn new(r: StreamRef) -> Self {
        Self {
            r,
            x: None,
            write_shut: false,
        }
    }

    fn x(&mut self) -> &mut Extra {
        self.x.get_or_insert_with(Default::default)
    }

    fn tidy(&mut self) {
        if self.x.as_ref().is_some_and(|x| x.is_idle()) {
            self.x = None;
        }
    }

    /// Serves a read from bytes already here.
    fn read_leftover(&mut self, buf: &mut [u8]) -> Option<usize> {
        let x = self.x.as_mut()?;
        if x.leftover.is_empty() {
            return None;
        }
        let n = x.leftover.copy_to(buf);
        self.tidy();
        Some(n)
    }

    /// Copies a read's reply into `buf`, keeping the rest.
    fn take_chunks(&mut self, mut c: Chunks, buf: &mut [u8]) -> usize {
        let n = c.copy_to(buf);
        if !c.is_empty() {
            self.x().leftover = c;
        }
        self.tidy();
        n
    }

    /// Drops writes the shard has finished; reports the first failure.
    fn reap_writes(&mut self) -> io::Result<()> {
        let Some(x) = self.x.as_mut() else {
            return Ok(());
        };
        while let Some((rx, len)) = x.writes.front_mut() {
            match rx.try_recv() {
                Ok(Some(r)) => {
                    x.in_flight -= *len;
                    x.writes.pop_front();
                    r?;
                }
                Ok(None) => break,
                Err(_) => return Err(gone()),
            }
        }
        self.tidy();
        Ok(())
    }

    fn queue_write(&mut self, buf: &[u8]) -> usize {
        let n = buf.len().min(MAX_WRITE);
        let rx = self.r.write(Bytes::copy_from_slice(&buf[..n]));
        let x = self.x();
        x.writes.push_back((rx, n));
        x.in_flight += n;
        n
    }

    fn in_flight(&self) -> usize {
        self.x.as_ref().map_or(0, |x| x.in_flight)
    }
}

/// A stream for threaded code: a drop-in for `std::net::TcpStream`.
///
/// Dropping it closes the stream gracefully: data already written is delivered, then
/// the peer reads end of stream.
///
/// ```
/// use std::io::{Read, Write};
/// let node = astranet::Node::builder().shards(1).build().unwrap();
/// let listener = node.bind("echo").unwrap();
/// let server = std::thread::spawn(move || {
///     let mut s = listener.accept().unwrap();
///     let mut buf = [0u8; 5];
///     s.read_exact(&mut buf).unwrap();
///     s.write_all(&buf).unwrap();
/// });
/// let mut c = node.dial("echo").unwrap();
/// c.write_all(b"hello").unwrap();
/// let mut back = [0u8; 5];
/// c.read_exact(&mut back).unwrap();
/// assert_eq!(&back, b"hello");
/// server.join().unwrap();
/// ```
pub struct Stream {
    i: Inner,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("local", &self.i.r.local_addr())
            .field("peer", &self.i.r.peer_addr())
            .finish()
    }
}

impl Stream {
    pub(crate) fn new(r: StreamRef) -> Self {
        Self { i: Inner::new(r) }
    }

    /// This end's address (this node and an ephemeral or listening port).
    pub fn local_addr(&self) -> Addr {
        self.i.r.local_addr()
    }

    /// The other end's address.
    pub fn peer_addr(&self) -> Addr {
        self.i.r.peer_addr()
    }

    /// Aborts the stream at once, like a TCP reset: data not yet delivered is
    /// discarded and the peer's reads and writes fail with `ConnectionReset`.
    pub fn reset(self) {
        self.i.r.reset(ErrorCode::CANCELLED);
    }

    /// Half-closes the stream: the peer reads end of stream after the data written so
    /// far, and can still write back.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        let timeout = self.write_timeout();
        self.wait_writes(0, deadline(timeout))?;
        self.i.write_shut = true;
        let rx = self.i.r.shutdown_write();
        match wait_timeout(rx, deadline(timeout)) {
            Wait::Done(r) => r,
            Wait::TimedOut(_) => Err(timed_out("shutdown_write")),
        }
    }

    /// Another handle on the same stream; the stream closes when the last one drops.
    /// Each handle has its own timeouts; reads or writes from two handles at once
    /// interleave in an unspecified order, as with `TcpStream::try_clone`.
    pub fn try_clone(&self) -> io::Result<Stream> {
        let mut s = Stream::new(self.i.r.try_clone());
        s.set_read_timeout(self.read_timeout())?;
        s.set_write_timeout(self.write_timeout())?;
        Ok(s)
    }

    /// Sets how long a read may block; `None` waits forever. A zero duration is an
    /// `InvalidInput` error, as for `TcpStream`.
    pub fn set_read_timeout(&mut self, dur: Option<Duration>) -> io::Result<()> {
        check_timeout(dur)?;
        self.i.x().read_timeout = dur;
        self.i.tidy();
        Ok(())
    }

    /// Sets how long a write may block waiting for the peer's window.
    pub fn set_write_timeout(&mut self, dur: Option<Duration>) -> io::Result<()> {
        check_timeout(dur)?;
        self.i.x().write_timeout = dur;
        self.i.tidy();
        Ok(())
    }

    /// The read timeout.
    pub fn read_timeout(&self) -> Option<Duration> {
        self.i.x.as_ref().and_then(|x| x.read_timeout)
    }

    /// The write timeout.
    pub fn write_timeout(&self) -> Option<Duration> {
        self.i.x.as_ref().and_then(|x| x.write_timeout)
    }

    /// Blocks until at most `limit` bytes are in flight.
    fn wait_writes(&mut self, limit: usize, until: Option<Instant>) -> io::Result<()> {
        self.i.reap_writes()?;
        while self.i.in_flight() > limit {
            let Some(x) = self.i.x.as_mut() else { break };
            let Some((rx, len)) = x.writes.pop_front() else {
                break;
            };
            match wait_timeout(rx, until) {
                Wait::Done(r) => {
                    x.in_flight -= len;
                    r?;
                }
                Wait::TimedOut(rx) => {
                    // Still in flight: keep waiting for it on the next call.
                    x.writes.push_front((rx, len));
                    return Err(timed_out("write"));
                }
            }
        }
        self.i.tidy();
        Ok(())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if let Some(n) = self.i.read_leftover(buf) {
            return Ok(n);
        }
        let (pending, timeout) = match self.i.x.as_mut() {
            Some(x) => (x.pending_read.take(), x.read_timeout),
            None => (None, None),
        };
        let rx = pending.unwrap_or_else(|| self.i.r.read(buf.len().max(READ_CHUNK)));
        match wait_timeout(rx, deadline(timeout)) {
            Wait::Done(Ok(c)) => Ok(self.i.take_chunks(c, buf)),
            Wait::Done(Err(e)) => {
                self.i.tidy();
                Err(e)
            }
            Wait::TimedOut(rx) => {
                // The request stays with the shard; its bytes go to the next read.
                self.i.x().pending_read = Some(rx);
                Err(timed_out("read"))
            }
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.i.write_shut {
            return Err(write_after_shutdown());
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let until = deadline(self.write_timeout());
        self.wait_writes(
            MAX_IN_FLIGHT.saturating_sub(buf.len().min(MAX_WRITE)),
            until,
        )?;
        Ok(self.i.queue_write(buf))
    }

    /// Waits until everything written was taken by the stream (within the peer's
    /// window); like TCP, that is not a delivery receipt.
    fn flush(&mut self) -> io::Result<()> {
        let until = deadline(self.write_timeout());
        self.wait_writes(0, until)
    }
}

/// A stream for async code: `futures_io::AsyncRead + AsyncWrite`; `close` half-closes.
/// Use `tokio_util::compat` to get tokio's traits (or [`crate::TokioStream`]).
///
/// Cancel-safety, as with the futures-io traits of a socket: a `poll_read` that returns
/// `Pending` consumed nothing (bytes that arrive meanwhile wait for the next poll); a
/// `poll_write` that returns `Ready(Ok(n))` took exactly `n` bytes, and one that
/// returns `Pending` took none; dropping a read or write future in between loses no
/// byte. `poll_close` may be polled again after `Pending`.
pub struct AsyncStream {
    i: Inner,
}

impl std::fmt::Debug for AsyncStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncStream")
            .field("local", &self.i.r.local_addr())
            .field("peer", &self.i.r.peer_addr())
            .finish()
    }
}

fn poll_rx<T>(rx: &mut Rx<T>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
    match Pin::new(rx).poll(cx) {
        Poll::Ready(Ok(r)) => Poll::Ready(r),
        Poll::Ready(Err(_)) => Poll::Ready(Err(gone())),
        Poll::Pending => Poll::Pending,
    }
}

impl AsyncStream {
    pub(crate) fn new(r: StreamRef) -> Self {
        Self { i: Inner::new(r) }
    }

    /// This end's address.
    pub fn local_addr(&self) -> Addr {
        self.i.r.local_addr()
    }

    /// The other end's address.
    pub fn peer_addr(&self) -> Addr {
        self.i.r.peer_addr()
    }

    /// Aborts the stream at once, like a TCP reset: data not yet delivered is
    /// discarded and the peer's reads and writes fail with `ConnectionReset`.
    pub fn reset(self) {
        self.i.r.reset(ErrorCode::CANCELLED);
    }

    /// Polls writes until at most `limit` bytes are in flight.
    fn poll_writes(&mut self, cx: &mut Context<'_>, limit: usize) -> Poll<io::Result<()>> {
        self.i.reap_writes()?;
        while self.i.in_flight() > limit {
            let Some(x) = self.i.x.as_mut() else { break };
            let Some((rx, len)) = x.writes.front_mut() else {
                break;
            };
            let len = *len;
            let r = std::task::ready!(poll_rx(rx, cx));
            x.writes.pop_front();
            x.in_flight -= len;
            r?;
        }
        self.i.tidy();
        Poll::Ready(Ok(()))
    }
}

impl futures_io::AsyncRead for AsyncStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut self.i;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if let Some(n) = this.read_leftover(buf) {
            return Poll::Ready(Ok(n));
        }
        let max = buf.len().max(READ_CHUNK);
        if this.x.as_ref().is_none_or(|x| x.pending_read.is_none()) {
            let rx = this.r.read(max);
            this.x().pending_read = Some(rx);
        }
        let x = this.x();
        let rx = x.pending_read.as_mut().expect("a read is pending");
        let r = std::task::ready!(poll_rx(rx, cx));
        x.pending_read = None;
        match r {
            Ok(c) => Poll::Ready(Ok(this.take_chunks(c, buf))),
            Err(e) => {
                this.tidy();
                Poll::Ready(Err(e))
            }
        }
    }
}

impl futures_io::AsyncWrite for AsyncStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.i.write_shut {
            return Poll::Ready(Err(write_after_shutdown()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let limit = MAX_IN_FLIGHT.saturating_sub(buf.len().min(MAX_WRITE));
        std::task::ready!(this.poll_writes(cx, limit))?;
        Poll::Ready(Ok(this.i.queue_write(buf)))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_writes(cx, 0)
    }

    /// Half-close: flushes, then sends FIN. Reading still works.
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_writes(cx, 0))?;
        this.i.write_shut = true;
        if this.i.x.as_ref().is_none_or(|x| x.pending_close.is_none()) {
            let rx = this.i.r.shutdown_write();
            this.i.x().pending_close = Some(rx);
        }
        let x = this.i.x();
        let rx = x.pending_close.as_mut().expect("a close is pending");
        let r = std::task::ready!(poll_rx(rx, cx));
        x.pending_close = None;
        this.i.tidy();
        Poll::Ready(r)
    }
}

// Handles are moved across threads and tasks freely.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Stream>();
    assert_send::<AsyncStream>();
};

#[cfg(test)]
mod tests {
    /// A held, idle handle is small: a million of them are part of the idle figure.
    #[test]
    fn idle_handles_are_small() {
        assert!(std::mem::size_of::<super::Stream>() <= 64);
        assert!(std::mem::size_of::<super::AsyncStream>() <= 64);
    }
}
