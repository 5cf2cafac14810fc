//! Stream handles: [`Stream`] for threads (`std::io::Read`/`Write`) and [`AsyncStream`]
//! for async code (`futures_io::AsyncRead`/`AsyncWrite`).
//!
//! A handle is thin: the stream's state lives in the shard that owns it. A read asks the
//! shard for bytes; a write hands the shard a copy of the bytes (at most
//! [`MAX_WRITE`]) and returns, and the next write waits until the shard's core has taken
//! all of the previous one within the stream's credit. So a writer is held back by the
//! peer's window, and at most one write's bytes per stream are in flight.

use astranet_engine::{wait_timeout, Addr, StreamRef, Wait};
use bytes::Bytes;
use futures_channel::oneshot;
use std::future::Future;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The most bytes one `write` call takes.
pub const MAX_WRITE: usize = 256 * 1024;
/// The most bytes one `read` asks the shard for (the rest stays queued there).
const READ_CHUNK: usize = 256 * 1024;

type Rx<T> = oneshot::Receiver<io::Result<T>>;

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "node is shut down")
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}

/// Moves bytes from `src` into `buf`; keeps the rest in `src`.
fn copy_out(src: &mut Bytes, buf: &mut [u8]) -> usize {
    let n = src.len().min(buf.len());
    buf[..n].copy_from_slice(&src[..n]);
    let _ = src.split_to(n);
    n
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
    r: StreamRef,
    /// The previous write, until the stream has taken all of it.
    pending_write: Option<Rx<usize>>,
    /// Rarely used state, allocated only while in use: a million idle handles cost
    /// a few dozen bytes each.
    x: Option<Box<Extra>>,
    write_shut: bool,
}

#[derive(Default)]
struct Extra {
    /// Bytes of a chunk that did not fit the caller's buffer.
    leftover: Bytes,
    /// A read that timed out; its bytes go to the next read.
    pending_read: Option<Rx<Bytes>>,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

impl Extra {
    fn is_idle(&self) -> bool {
        self.leftover.is_empty()
            && self.pending_read.is_none()
            && self.read_timeout.is_none()
            && self.write_timeout.is_none()
    }
}

fn write_after_shutdown() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "write after shutdown_write")
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("local", &self.r.local_addr())
            .field("peer", &self.r.peer_addr())
            .finish()
    }
}

impl Stream {
    pub(crate) fn new(r: StreamRef) -> Self {
        Self {
            r,
            pending_write: None,
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

    /// This end's address (this node and an ephemeral or listening port).
    pub fn local_addr(&self) -> Addr {
        self.r.local_addr()
    }

    /// The other end's address.
    pub fn peer_addr(&self) -> Addr {
        self.r.peer_addr()
    }

    /// Half-closes the stream: the peer reads end of stream after the data written so
    /// far, and can still write back.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        let timeout = self.write_timeout();
        self.finish_write(timeout)?;
        self.write_shut = true;
        let rx = self.r.shutdown_write();
        match wait_timeout(rx, deadline(timeout)) {
            Wait::Done(r) => r,
            Wait::TimedOut(_) => Err(timed_out("shutdown_write")),
        }
    }

    /// Another handle on the same stream; the stream closes when the last one drops.
    /// Each handle has its own timeouts; reads or writes from two handles at once
    /// interleave in an unspecified order, as with `TcpStream::try_clone`.
    pub fn try_clone(&self) -> io::Result<Stream> {
        let mut s = Stream::new(self.r.try_clone());
        s.set_read_timeout(self.read_timeout())?;
        s.set_write_timeout(self.write_timeout())?;
        Ok(s)
    }

    /// Sets how long a read may block; `None` waits forever. A zero duration is an
    /// `InvalidInput` error, as for `TcpStream`.
    pub fn set_read_timeout(&mut self, dur: Option<Duration>) -> io::Result<()> {
        check_timeout(dur)?;
        self.x().read_timeout = dur;
        self.tidy();
        Ok(())
    }

    /// Sets how long a write may block waiting for the peer's window.
    pub fn set_write_timeout(&mut self, dur: Option<Duration>) -> io::Result<()> {
        check_timeout(dur)?;
        self.x().write_timeout = dur;
        self.tidy();
        Ok(())
    }

    /// The read timeout.
    pub fn read_timeout(&self) -> Option<Duration> {
        self.x.as_ref().and_then(|x| x.read_timeout)
    }

    /// The write timeout.
    pub fn write_timeout(&self) -> Option<Duration> {
        self.x.as_ref().and_then(|x| x.write_timeout)
    }

    /// Waits until the previous write was fully taken by the stream.
    fn finish_write(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let Some(rx) = self.pending_write.take() else {
            return Ok(());
        };
        match wait_timeout(rx, deadline(timeout)) {
            Wait::Done(r) => r.map(|_| ()),
            Wait::TimedOut(rx) => {
                // Still in flight: keep waiting for it on the next call.
                self.pending_write = Some(rx);
                Err(timed_out("write"))
            }
        }
    }
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

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let (pending, timeout) = match self.x.as_mut() {
            Some(x) if !x.leftover.is_empty() => {
                let n = copy_out(&mut x.leftover, buf);
                self.tidy();
                return Ok(n);
            }
            Some(x) => (x.pending_read.take(), x.read_timeout),
            None => (None, None),
        };
        let rx = pending.unwrap_or_else(|| self.r.read(buf.len().max(READ_CHUNK)));
        let r = match wait_timeout(rx, deadline(timeout)) {
            Wait::Done(Ok(mut b)) => {
                let n = copy_out(&mut b, buf);
                if !b.is_empty() {
                    self.x().leftover = b;
                }
                Ok(n)
            }
            Wait::Done(Err(e)) => Err(e),
            Wait::TimedOut(rx) => {
                // The request stays with the shard; its bytes go to the next read.
                self.x().pending_read = Some(rx);
                Err(timed_out("read"))
            }
        };
        self.tidy();
        r
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.write_shut {
            return Err(write_after_shutdown());
        }
        if buf.is_empty() {
            return Ok(0);
        }
        self.finish_write(self.write_timeout())?;
        let n = buf.len().min(MAX_WRITE);
        self.pending_write = Some(self.r.write(Bytes::copy_from_slice(&buf[..n])));
        Ok(n)
    }

    /// Waits until everything written was taken by the stream (within the peer's
    /// window); like TCP, that is not a delivery receipt.
    fn flush(&mut self) -> io::Result<()> {
        self.finish_write(self.write_timeout())
    }
}

/// A stream for async code: `futures_io::AsyncRead + AsyncWrite`; `close` half-closes.
/// Use `tokio_util::compat` to get tokio's traits.
pub struct AsyncStream {
    r: StreamRef,
    leftover: Bytes,
    pending_read: Option<Rx<Bytes>>,
    pending_write: Option<Rx<usize>>,
    pending_close: Option<Rx<()>>,
    write_shut: bool,
}

impl std::fmt::Debug for AsyncStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncStream")
            .field("local", &self.r.local_addr())
            .field("peer", &self.r.peer_addr())
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
        Self {
            r,
            leftover: Bytes::new(),
            pending_read: None,
            pending_write: None,
            pending_close: None,
            write_shut: false,
        }
    }

    /// This end's address.
    pub fn local_addr(&self) -> Addr {
        self.r.local_addr()
    }

    /// The other end's address.
    pub fn peer_addr(&self) -> Addr {
        self.r.peer_addr()
    }

    fn poll_pending_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(rx) = self.pending_write.as_mut() {
            let r = std::task::ready!(poll_rx(rx, cx));
            self.pending_write = None;
            r?;
        }
        Poll::Ready(Ok(()))
    }
}

impl futures_io::AsyncRead for AsyncStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if !this.leftover.is_empty() {
            return Poll::Ready(Ok(copy_out(&mut this.leftover, buf)));
        }
        let rx = this
            .pending_read
            .get_or_insert_with(|| this.r.read(buf.len().max(READ_CHUNK)));
        let r = std::task::ready!(poll_rx(rx, cx));
        this.pending_read = None;
        let mut b = r?;
        let n = copy_out(&mut b, buf);
        this.leftover = b;
        Poll::Ready(Ok(n))
    }
}

impl futures_io::AsyncWrite for AsyncStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.write_shut {
            return Poll::Ready(Err(write_after_shutdown()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        std::task::ready!(this.poll_pending_write(cx))?;
        let n = buf.len().min(MAX_WRITE);
        this.pending_write = Some(this.r.write(Bytes::copy_from_slice(&buf[..n])));
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_pending_write(cx)
    }

    /// Half-close: flushes, then sends FIN. Reading still works.
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_pending_write(cx))?;
        this.write_shut = true;
        let rx = this
            .pending_close
            .get_or_insert_with(|| this.r.shutdown_write());
        let r = std::task::ready!(poll_rx(rx, cx));
        this.pending_close = None;
        Poll::Ready(r)
    }
}

// Handles are moved across threads and tasks freely.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Stream>();
    assert_send::<AsyncStream>();
};
