//! Stream handles: [`Stream`] for threads (`std::io::Read`/`Write`) and [`AsyncStream`]
//! for async code (`futures_io::AsyncRead`/`AsyncWrite`).
//!
//! A handle is thin: the stream's state lives in the shard that owns it, and while the
//! stream is busy, in a mailbox the handle and the shard share. A read takes bytes that
//! already arrived straight from the mailbox (no round trip, no wake-up); a write
//! copies the bytes (at most [`MAX_WRITE`]) into it and returns at once while fewer
//! than [`MAX_IN_FLIGHT`] bytes wait there for the peer's window; beyond, it waits. So
//! a writer is held back by the peer's window, and what a stream buffers beyond that
//! window is bounded.

use astranet_engine::proto::ErrorCode;
use astranet_engine::{block_on_until, Addr, StreamRef};
use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The most bytes one `write` call takes.
pub const MAX_WRITE: usize = astranet_engine::MAX_WRITE;
/// Bytes a stream's writer may have handed over and not yet taken by the stream
/// before `write` blocks (or pends).
pub const MAX_IN_FLIGHT: usize = astranet_engine::MAX_STAGED;

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

/// A handle's timeouts, allocated only once one is set, so a million idle handles
/// cost a few dozen bytes each.
#[derive(Default)]
struct Timeouts {
    read: Option<Duration>,
    write: Option<Duration>,
}

/// What both handle types share.
/// A blocking stream's handle and timeouts (boxed: most streams have none). Whether
/// it half-closed is kept in the handle ([`StreamRef::write_shut`]), so a held stream
/// is the engine's handle and one word.
struct Inner {
    r: StreamRef,
    t: Option<Box<Timeouts>>,
}

impl Inner {
    fn new(r: StreamRef) -> Self {
        Self { r, t: None }
    }

    fn timeouts(&mut self) -> &mut Timeouts {
        self.t.get_or_insert_with(Default::default)
    }

    fn tidy(&mut self) {
        if self
            .t
            .as_ref()
            .is_some_and(|t| t.read.is_none() && t.write.is_none())
        {
            self.t = None;
        }
    }

    /// Blocks on a poll of the stream until it is ready or `until` passes.
    fn block<T>(
        &self,
        until: Option<Instant>,
        what: &str,
        mut poll: impl FnMut(&StreamRef, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> io::Result<T> {
        let r = &self.r;
        let mut fut = poll_fn(|cx| poll(r, cx));
        match block_on_until(&mut fut, until) {
            Some(res) => res,
            None => Err(timed_out(what)),
        }
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
    /// far, and can still write back. Like `TcpStream::shutdown(Write)`, it never waits
    /// for the peer: the FIN is queued behind the bytes already written.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        self.i.r.set_write_shut();
        self.i.r.shutdown_write()
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
        self.i.timeouts().read = dur;
        self.i.tidy();
        Ok(())
    }

    /// Sets how long a write may block waiting for the peer's window.
    pub fn set_write_timeout(&mut self, dur: Option<Duration>) -> io::Result<()> {
        check_timeout(dur)?;
        self.i.timeouts().write = dur;
        self.i.tidy();
        Ok(())
    }

    /// The read timeout.
    pub fn read_timeout(&self) -> Option<Duration> {
        self.i.t.as_ref().and_then(|t| t.read)
    }

    /// The write timeout.
    pub fn write_timeout(&self) -> Option<Duration> {
        self.i.t.as_ref().and_then(|t| t.write)
    }
}

impl Read for Stream {
    /// Bytes that already arrived are copied without asking the shard. A read that
    /// times out consumed nothing: bytes arriving later go to the next read.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let until = deadline(self.read_timeout());
        self.i.block(until, "read", |r, cx| r.poll_read(cx, buf))
    }
}

impl Write for Stream {
    /// Returns at once while the stream has room; blocks (up to the write timeout)
    /// only when [`MAX_IN_FLIGHT`] bytes already wait for the peer's window. A write
    /// that times out took no byte; one that returns `Ok(n)` took exactly `n`.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.i.r.write_shut() {
            return Err(write_after_shutdown());
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let until = deadline(self.write_timeout());
        self.i.block(until, "write", |r, cx| r.poll_write(cx, buf))
    }

    /// Never waits, like `TcpStream::flush`: written bytes are already on their way
    /// (not a delivery receipt). Fails when the stream already has a write error.
    fn flush(&mut self) -> io::Result<()> {
        let until = deadline(self.write_timeout());
        self.i.block(until, "flush", |r, cx| r.poll_flush(cx))
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
    r: StreamRef,
}

impl std::fmt::Debug for AsyncStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncStream")
            .field("local", &self.r.local_addr())
            .field("peer", &self.r.peer_addr())
            .finish()
    }
}

impl AsyncStream {
    pub(crate) fn new(r: StreamRef) -> Self {
        Self { r }
    }

    /// This end's address.
    pub fn local_addr(&self) -> Addr {
        self.r.local_addr()
    }

    /// The other end's address.
    pub fn peer_addr(&self) -> Addr {
        self.r.peer_addr()
    }

    /// Aborts the stream at once, like a TCP reset: data not yet delivered is
    /// discarded and the peer's reads and writes fail with `ConnectionReset`.
    pub fn reset(self) {
        self.r.reset(ErrorCode::CANCELLED);
    }

    /// The engine's handle (for adapters that read chunks straight into their own
    /// buffers).
    pub(crate) fn handle(&self) -> &StreamRef {
        &self.r
    }
}

impl futures_io::AsyncRead for AsyncStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.r.poll_read(cx, buf)
    }
}

impl futures_io::AsyncWrite for AsyncStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.r.write_shut() {
            return Poll::Ready(Err(write_after_shutdown()));
        }
        self.r.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.r.poll_flush(cx)
    }

    /// Half-close: the FIN goes after the bytes written so far. Reading still works.
    /// Like `shutdown(Write)` on a socket it does not wait for the peer's window.
    fn poll_close(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.r.write_shut() {
            return Poll::Ready(Ok(()));
        }
        self.r.set_write_shut();
        Poll::Ready(self.r.shutdown_write())
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
        assert!(std::mem::size_of::<super::Stream>() <= 56);
        assert!(std::mem::size_of::<super::AsyncStream>() <= 48);
    }
}
