//! Transports a link runs over: glommio TCP sockets on the shard itself (plain, or
//! TLS once the handshake authenticated the peer), or, for `attach`, any blocking
//! byte stream driven by a reader and a writer thread.

use crate::proto::TxBuf;
use bytes::BytesMut;
use crossbeam::channel::{self, Receiver, Sender, TryRecvError, TrySendError};
use futures_lite::{AsyncRead, AsyncWrite};
use futures_util::task::AtomicWaker;
use socket2::SockRef;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Pieces one vectored socket write takes at most (Linux's `IOV_MAX` is 1024).
const MAX_IOV: usize = 64;
/// Largest read through the scratch buffer (TLS and attached transports).
const SCRATCH_MAX: usize = 64 * 1024;

/// A byte stream under a link.
pub(crate) enum Transport {
    Tcp(glommio::net::TcpStream),
    Tls(Box<super::tls::TlsIo>),
    Threads(ThreadIo),
}

impl Transport {
    /// Converts a connected std socket into a glommio one. Must run on the shard.
    pub(crate) fn tcp(s: std::net::TcpStream) -> io::Result<Transport> {
        use std::os::fd::{FromRawFd, IntoRawFd};
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        let fd = s.into_raw_fd();
        // SAFETY: `into_raw_fd` gave up ownership of a valid, open socket descriptor;
        // `from_raw_fd` takes that ownership exactly once, so the descriptor is closed
        // exactly once, by the glommio stream.
        let g = unsafe { glommio::net::TcpStream::from_raw_fd(fd) };
        Ok(Transport::Tcp(g))
    }

    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self {
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            Transport::Threads(t) => t.poll_read(cx, buf),
        }
    }

    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self {
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            Transport::Threads(t) => t.poll_write(cx, buf),
        }
    }

    /// Writes from the front of `tx`: on TCP one vectored `sendmsg` of up to
    /// [`MAX_IOV`] pieces (payloads go from the writer's chunks straight to the
    /// kernel), elsewhere its first piece.
    pub(crate) fn poll_write_tx(
        &mut self,
        cx: &mut Context<'_>,
        tx: &TxBuf,
    ) -> Poll<io::Result<usize>> {
        let Transport::Tcp(s) = self else {
            return self.poll_write(cx, tx.first_chunk());
        };
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let n = tx.io_slices(&mut iov);
        // MSG_DONTWAIT: not every link socket is in non-blocking mode (glommio's own
        // calls pass the flag too), and a shard must never block in a syscall.
        let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
        match with_sock(s, |sock| sock.send_vectored_with_flags(&iov[..n], flags)) {
            Ok(k) => Poll::Ready(Ok(k)),
            // No room: glommio's own write tries once more, then arms the reactor to
            // wake us when the socket takes bytes again.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                Pin::new(s).poll_write(cx, tx.first_chunk())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// Reads at most `max` bytes onto the end of `buf`, which must have that much
    /// spare capacity. TCP receives straight into the spare capacity (no zeroing, no
    /// copy); other transports read into `scratch` (kept zeroed, reused) and copy.
    pub(crate) fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        max: usize,
        scratch: &mut Vec<u8>,
    ) -> Poll<io::Result<usize>> {
        let max = max.min(buf.capacity() - buf.len());
        if let Transport::Tcp(s) = self {
            let spare = &mut buf.spare_capacity_mut()[..max];
            match with_sock(s, |sock| sock.recv_with_flags(spare, libc::MSG_DONTWAIT)) {
                Ok(n) => {
                    // SAFETY: `recv` initialised the first `n` bytes of the spare
                    // capacity (it returns how many it wrote), and `n <= max <= spare`.
                    unsafe { buf.set_len(buf.len() + n) };
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
            // Nothing waiting: glommio's read arms the reactor to wake us (and takes
            // bytes that arrived meanwhile into `scratch`).
        }
        let want = max.clamp(1, SCRATCH_MAX);
        if scratch.len() < want {
            scratch.resize(want, 0);
        }
        let r = self.poll_read(cx, &mut scratch[..want]);
        if let Poll::Ready(Ok(n)) = r {
            buf.extend_from_slice(&scratch[..n]);
        }
        r
    }

    /// Pushes out what the transport itself holds: TLS may keep encrypted records
    /// when the socket took only part of a write.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Transport::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            Transport::Tcp(_) | Transport::Threads(_) => Poll::Ready(Ok(())),
        }
    }

    pub(crate) async fn close(self) {
        match self {
            Transport::Tcp(s) => {
                let _ = s.shutdown(std::net::Shutdown::Both).await;
            }
            // No close_notify: GOAWAY already ends a link gracefully, and a peer that
            // does not read must not hold the close up.
            Transport::Tls(s) => {
                let _ = s
                    .get_ref()
                    .0
                    .socket()
                    .shutdown(std::net::Shutdown::Both)
                    .await;
            }
            Transport::Threads(t) => t.close(),
        }
    }
}

/// Runs `f` on a socket2 view of `s`'s descriptor, for the calls glommio lacks
/// (vectored sends, receives into uninitialised memory).
fn with_sock<R>(s: &glommio::net::TcpStream, f: impl FnOnce(SockRef<'_>) -> R) -> R {
    // SAFETY: `s` owns the open socket descriptor and is borrowed for this whole call,
    // so the descriptor stays open (and is not reused) while `b` and the view live.
    let b = unsafe { BorrowedFd::borrow_raw(s.as_raw_fd()) };
    f(SockRef::from(&b))
}

/// Chunks in flight between a link and its IO threads, each way.
const THREAD_QUEUE: usize = 16;
const CHUNK: usize = 64 * 1024;

/// The link side of a reader thread and a writer thread.
pub(crate) struct ThreadIo {
    input: Receiver<io::Result<Vec<u8>>>,
    pending_in: Option<(Vec<u8>, usize)>,
    output: Option<Sender<Vec<u8>>>,
    in_waker: Arc<AtomicWaker>,
    out_waker: Arc<AtomicWaker>,
    closer: Option<Box<dyn FnOnce() + Send>>,
}

impl ThreadIo {
    /// Starts the two threads. `closer` unblocks the reader at close (e.g. a socket
    /// shutdown); without it the reader ends when the peer closes.
    pub(crate) fn spawn(
        mut reader: Box<dyn Read + Send>,
        mut writer: Box<dyn Write + Send>,
        closer: Option<Box<dyn FnOnce() + Send>>,
    ) -> io::Result<ThreadIo> {
        let (in_tx, in_rx) = channel::bounded::<io::Result<Vec<u8>>>(THREAD_QUEUE);
        let (out_tx, out_rx) = channel::bounded::<Vec<u8>>(THREAD_QUEUE);
        let in_waker = Arc::new(AtomicWaker::new());
        let out_waker = Arc::new(AtomicWaker::new());
        let iw = in_waker.clone();
        std::thread::Builder::new()
            .name("astranet-attach-rd".into())
            .spawn(move || {
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let r = match reader.read(&mut buf) {
                        Ok(n) => Ok(buf[..n].to_vec()),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => Err(e),
                    };
                    let end = !matches!(&r, Ok(v) if !v.is_empty());
                    let sent = in_tx.send(r).is_ok();
                    iw.wake();
                    if end || !sent {
                        return;
                    }
                }
            })?;
        let ow = out_waker.clone();
        std::thread::Builder::new()
            .name("astranet-attach-wr".into())
            .spawn(move || {
                while let Ok(chunk) = out_rx.recv() {
                    ow.wake();
                    if writer
                        .write_all(&chunk)
                        .and_then(|_| writer.flush())
                        .is_err()
                    {
                        break;
                    }
                }
                // Dropping `out_rx` makes the link's next write fail.
                drop(out_rx);
                ow.wake();
            })?;
        Ok(ThreadIo {
            input: in_rx,
            pending_in: None,
            output: Some(out_tx),
            in_waker,
            out_waker,
            closer,
        })
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if self.pending_in.is_none() {
            self.in_waker.register(cx.waker());
            match self.input.try_recv() {
                Ok(Ok(v)) => self.pending_in = Some((v, 0)),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(TryRecvError::Empty) => return Poll::Pending,
                Err(TryRecvError::Disconnected) => return Poll::Ready(Ok(0)),
            }
        }
        let Some((v, off)) = self.pending_in.as_mut() else {
            return Poll::Pending;
        };
        let n = (v.len() - *off).min(buf.len());
        buf[..n].copy_from_slice(&v[*off..*off + n]);
        *off += n;
        if *off == v.len() {
            self.pending_in = None;
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let Some(out) = &self.output else {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        };
        self.out_waker.register(cx.waker());
        let n = buf.len().min(CHUNK);
        match out.try_send(buf[..n].to_vec()) {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(TrySendError::Full(_)) => Poll::Pending,
            Err(TrySendError::Disconnected(_)) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "writer thread ended",
            ))),
        }
    }

    fn close(mut self) {
        // The writer drains what is queued, then ends and drops the byte stream's
        // write half.
        self.output = None;
        if let Some(c) = self.closer.take() {
            c();
        }
    }
}
