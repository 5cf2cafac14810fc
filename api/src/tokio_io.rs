//! tokio integration: [`TokioStream`] (an [`AsyncStream`] with tokio's IO traits) and
//! [`Incoming`] (a listener as a stream of connections, for servers that take one,
//! such as tonic's `serve_with_incoming`).

use crate::{Addr, AsyncListener, AsyncStream};
use futures_core::Stream as FuturesStream;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

/// An [`AsyncStream`] with tokio's `AsyncRead` and `AsyncWrite`.
///
/// `poll_shutdown` half-closes, like `TcpStream`'s: the peer reads end of stream and
/// can still write back. Dropping it closes the stream gracefully.
///
/// ```
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let node = astranet::Node::builder().shards(1).build()?;
/// let l = node.bind_async("up")?;
/// tokio::spawn(async move {
///     let mut s = astranet::TokioStream::new(l.accept().await?);
///     let mut text = String::new();
///     s.read_to_string(&mut text).await?; // until the client half-closes
///     s.write_all(text.to_uppercase().as_bytes()).await?;
///     s.shutdown().await
/// });
/// let mut s = astranet::TokioStream::new(node.dial_async("up").await?);
/// s.write_all(b"hello").await?;
/// s.shutdown().await?;
/// let mut back = String::new();
/// s.read_to_string(&mut back).await?;
/// assert_eq!(back, "HELLO");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TokioStream {
    inner: Compat<AsyncStream>,
}

impl TokioStream {
    /// Wraps a stream.
    pub fn new(s: AsyncStream) -> Self {
        Self { inner: s.compat() }
    }

    /// The stream inside.
    pub fn into_inner(self) -> AsyncStream {
        self.inner.into_inner()
    }

    /// The stream inside.
    pub fn get_ref(&self) -> &AsyncStream {
        self.inner.get_ref()
    }

    /// This end's address.
    pub fn local_addr(&self) -> Addr {
        self.get_ref().local_addr()
    }

    /// The other end's address.
    pub fn peer_addr(&self) -> Addr {
        self.get_ref().peer_addr()
    }
}

impl From<AsyncStream> for TokioStream {
    fn from(s: AsyncStream) -> Self {
        Self::new(s)
    }
}

impl tokio::io::AsyncRead for TokioStream {
    /// Copies queued bytes straight into `buf`'s unfilled part, initialised or not.
    /// (Through `Compat`, every read would first zero all of it: hyper hands over a
    /// fresh uninitialised view of its read buffer each time, and that memset was
    /// 2.5 % of an HTTP/1 profile.) Cancel-safe: nothing is taken unless it returns
    /// `Ready`.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let handle = self.inner.get_ref().handle();
        let mut chunks = std::task::ready!(handle.poll_read_chunks(cx, buf.remaining()))?;
        while let Some(c) = chunks.pop_chunk() {
            buf.put_slice(&c);
        }
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for TokioStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

type Accepts = Pin<Box<dyn FuturesStream<Item = io::Result<TokioStream>> + Send>>;

/// A listener as a stream (`futures_core::Stream`) of accepted connections, each a
/// [`TokioStream`]. It ends when the node shuts down; dropping it unbinds.
///
/// With the `grpc` feature it feeds tonic directly:
/// `Server::builder().add_service(svc).serve_with_incoming(Incoming::new(listener))`.
/// Polling it is cancel-safe: a stream is never lost between polls.
pub struct Incoming {
    accepts: Accepts,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming").finish_non_exhaustive()
    }
}

impl Incoming {
    /// Accepts from `listener`.
    pub fn new(listener: AsyncListener) -> Self {
        let accepts = futures_util::stream::unfold(Some(listener), |l| async move {
            let l = l?;
            match l.accept().await {
                Ok(s) => Some((Ok(TokioStream::new(s)), Some(l))),
                // The node shut down: the stream ends.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => None,
                Err(e) => Some((Err(e), Some(l))),
            }
        });
        Self {
            accepts: Box::pin(accepts),
        }
    }
}

impl FuturesStream for Incoming {
    type Item = io::Result<TokioStream>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.accepts.as_mut().poll_next(cx)
    }
}
