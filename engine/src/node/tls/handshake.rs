//! The TLS handshake of a link, over a glommio socket, bounded by the link's
//! handshake timeout; and the socket wrapper the secured link runs on.

use super::verify::{explain, node_id_of};
use super::{node_name, TlsState, ALPN};
use crate::proto::frame::PREAMBLE;
use crate::types::NodeId;
use futures_lite::{AsyncRead, AsyncWrite};
use rustls::pki_types::ServerName;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// A secured link's transport.
pub(crate) type TlsIo = futures_rustls::TlsStream<NetIo>;

/// Socket reads of an established link, handed to rustls in the pieces it asks for
/// (it reads a few KiB at a time).
const READ_BUF: usize = 64 * 1024;
/// Encrypted records coalesced into one socket write (glommio has no writev).
const WRITE_COALESCE: usize = 256 * 1024;
/// Plaintext rustls may hold for sending on an established link.
const TLS_BUFFER_LIMIT: usize = 256 * 1024;

/// The socket under TLS. Remembers the first bytes the peer sent, so a failed
/// handshake can tell a plaintext astranet peer from anything else. Buffers reads and
/// coalesces writes only once the link is authenticated: before that it holds nothing.
pub(crate) struct NetIo {
    s: glommio::net::TcpStream,
    first: [u8; 8],
    nfirst: usize,
    rbuf: Vec<u8>,
    rpos: usize,
    rlen: usize,
    wbuf: Vec<u8>,
}

impl NetIo {
    fn new(s: glommio::net::TcpStream) -> Self {
        NetIo {
            s,
            first: [0; 8],
            nfirst: 0,
            rbuf: Vec::new(),
            rpos: 0,
            rlen: 0,
            wbuf: Vec::new(),
        }
    }

    fn note_first(&mut self, got: &[u8]) {
        let n = (self.first.len() - self.nfirst).min(got.len());
        self.first[self.nfirst..self.nfirst + n].copy_from_slice(&got[..n]);
        self.nfirst += n;
    }

    /// The peer opened with astranet's plaintext preamble.
    fn saw_plaintext_peer(&self) -> bool {
        self.nfirst >= 2 && self.first[..self.nfirst] == PREAMBLE[..self.nfirst]
    }

    pub(crate) fn socket(&self) -> &glommio::net::TcpStream {
        &self.s
    }
}

impl AsyncRead for NetIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.rpos == this.rlen && (this.rbuf.is_empty() || buf.len() >= this.rbuf.len()) {
            let r = Pin::new(&mut this.s).poll_read(cx, buf);
            if let Poll::Ready(Ok(n)) = r {
                if this.nfirst < this.first.len() {
                    this.note_first(&buf[..n]);
                }
            }
            return r;
        }
        if this.rpos == this.rlen {
            match Pin::new(&mut this.s).poll_read(cx, &mut this.rbuf) {
                Poll::Ready(Ok(n)) => {
                    this.rpos = 0;
                    this.rlen = n;
                }
                other => return other,
            }
        }
        let n = (this.rlen - this.rpos).min(buf.len());
        buf[..n].copy_from_slice(&this.rbuf[this.rpos..this.rpos + n]);
        this.rpos += n;
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for NetIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().s).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut it = bufs.iter().filter(|b| !b.is_empty());
        let Some(first) = it.next() else {
            return Poll::Ready(Ok(0));
        };
        if this.rbuf.is_empty() || first.len() >= WRITE_COALESCE || bufs.len() == 1 {
            return Pin::new(&mut this.s).poll_write(cx, first);
        }
        // Several records: one socket write. A partial write reports a prefix, as
        // `write_vectored` may; the rest is offered again by the caller.
        this.wbuf.clear();
        this.wbuf.extend_from_slice(first);
        for b in it {
            if this.wbuf.len() + b.len() > WRITE_COALESCE {
                break;
            }
            this.wbuf.extend_from_slice(b);
        }
        Pin::new(&mut this.s).poll_write(cx, &this.wbuf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().s).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().s).poll_close(cx)
    }
}

/// A link's authenticated transport and the node its certificate names.
pub(crate) struct Secured {
    pub(crate) io: TlsIo,
    pub(crate) peer: NodeId,
}

/// A TLS alert record: fatal, handshake_failure. Sent to a plaintext astranet peer so
/// that its link reports "peer speaks TLS" instead of a bare disconnect.
const ALERT_HANDSHAKE_FAILURE: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28];

/// Runs the handshake: `dialer` is the TLS client; `expect` (direct upgrades) is the
/// node the peer's certificate must name. Refusals are `PermissionDenied` with a
/// reason a person can act on; a handshake longer than `timeout` is `TimedOut`.
pub(crate) async fn secure(
    state: Arc<TlsState>,
    s: glommio::net::TcpStream,
    dialer: bool,
    expect: Option<NodeId>,
    timeout: Duration,
) -> io::Result<Secured> {
    let io = NetIo::new(s);
    let handshake = async {
        if dialer {
            let name = expect
                .and_then(|id| ServerName::try_from(node_name(id)).ok())
                .unwrap_or(ServerName::IpAddress(
                    std::net::IpAddr::from([0, 0, 0, 0]).into(),
                ));
            futures_rustls::TlsConnector::from(state.client.clone())
                .connect(name, io)
                .into_fallible()
                .await
                .map(|mut t| {
                    t.get_mut().1.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
                    futures_rustls::TlsStream::from(t)
                })
        } else {
            futures_rustls::TlsAcceptor::from(state.server.clone())
                .accept(io)
                .into_fallible()
                .await
                .map(|mut t| {
                    t.get_mut().1.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
                    futures_rustls::TlsStream::from(t)
                })
        }
    };
    let outcome = futures_lite::future::or(async { Some(handshake.await) }, async {
        glommio::timer::sleep(timeout).await;
        None
    })
    .await;
    match outcome {
        None => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("TLS handshake did not complete within {timeout:?}"),
        )),
        Some(Err((e, mut io))) => {
            let plain = io.saw_plaintext_peer();
            if plain && !dialer {
                // Best effort, never waiting: the socket is fresh and has room.
                let w = futures_lite::future::poll_once(futures_lite::AsyncWriteExt::write_all(
                    &mut io,
                    &ALERT_HANDSHAKE_FAILURE,
                ));
                let _ = w.await;
            }
            Err(refusal(e, plain, state.pinned))
        }
        Some(Ok(mut t)) => {
            let (io, conn) = t.get_mut();
            if conn.alpn_protocol() != Some(ALPN) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "peer does not speak astranet/1 over TLS (ALPN)",
                ));
            }
            let peer = conn
                .peer_certificates()
                .and_then(|c| c.first())
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::PermissionDenied, "peer sent no certificate")
                })
                .and_then(|c| {
                    node_id_of(c).map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))
                })?;
            // Authenticated: from now on, large reads and coalesced writes.
            io.rbuf = vec![0; READ_BUF];
            Ok(Secured { io: t, peer })
        }
    }
}

/// The error a failed handshake surfaces as.
fn refusal(e: io::Error, plain: bool, pinned: bool) -> io::Error {
    use io::ErrorKind as K;
    if plain {
        return io::Error::new(
            K::PermissionDenied,
            "peer speaks plaintext astranet, but this node requires TLS: give the peer a \
             certificate and trust (NodeBuilder::tls, astranet-node --tls-*)",
        );
    }
    if let Some(r) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        let kind = match r {
            rustls::Error::InvalidCertificate(_)
            | rustls::Error::AlertReceived(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::NoApplicationProtocol
            | rustls::Error::PeerIncompatible(_) => K::PermissionDenied,
            _ => K::InvalidData,
        };
        return io::Error::new(kind, explain(r, pinned));
    }
    if e.kind() == K::UnexpectedEof {
        return io::Error::new(
            K::ConnectionAborted,
            "peer closed the connection during the TLS handshake (it may refuse this \
             node's certificate, or not speak TLS)",
        );
    }
    io::Error::new(e.kind(), format!("TLS handshake: {e}"))
}

/// A secured link's transport failed: if the peer refused us (a TLS 1.3 server
/// rejects a client certificate after the client finished), the reason to report.
pub(crate) fn describe_transport_error(e: &io::Error) -> Option<String> {
    let r = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    matches!(r, rustls::Error::AlertReceived(_)).then(|| explain(r, false))
}
