//! The client side: a hyper-util connector that dials the URI's host on the mesh.

use crate::{Addr, Node, TokioStream};
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A connector for hyper-util's `Client` and tonic's `Endpoint`: dials the URI's host
/// (and port, if given) as a mesh address, so `http://echo/` reaches the service
/// `echo` and `http://0123456789abcdef:80/` port 80 on that node. The scheme is not
/// looked at (wrap it in a TLS connector for `https`).
///
/// A host that is not a mesh address (`http://10.0.0.1/`, a node id without a port)
/// fails with `InvalidInput`; other failures are those of
/// [`Node::dial_async`](crate::Node::dial_async).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use http_body_util::{BodyExt, Empty};
/// use hyper_util::{client::legacy::Client, rt::TokioExecutor};
///
/// let node = astranet::Node::builder().shards(1).build()?;
/// let app = axum::Router::new().route("/hi", axum::routing::get(|| async { "hello" }));
/// let listener = node.bind_async("web")?;
/// tokio::spawn(astranet::http::Server::new().serve(listener, app));
///
/// let client = Client::builder(TokioExecutor::new())
///     .build::<_, Empty<bytes::Bytes>>(astranet::http::Connector::new(node));
/// let resp = client.get("http://web/hi".parse()?).await?;
/// assert_eq!(resp.into_body().collect().await?.to_bytes(), "hello");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Connector {
    node: Node,
}

impl Connector {
    /// Dials through `node`.
    pub fn new(node: Node) -> Self {
        Self { node }
    }
}

/// The mesh address a URI names: its host, with `:port` when it has one.
fn target(uri: &Uri) -> io::Result<String> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: {why}"));
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let t = match uri.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    astranet_engine::Target::parse(&t).map_err(|e| bad(&format!("not a mesh address: {e}")))?;
    Ok(t)
}

impl tower_service::Service<Uri> for Connector {
    type Response = HttpStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<HttpStream>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Cancel-safe: dropping the future abandons the dial (a stream opened later is
    /// closed).
    fn call(&mut self, uri: Uri) -> Self::Future {
        let node = self.node.clone();
        Box::pin(async move {
            let t = target(&uri)?;
            let s = node.dial_async(&t).await?;
            Ok(HttpStream {
                io: TokioIo::new(TokioStream::new(s)),
            })
        })
    }
}

/// A connection made by [`Connector`]: a stream with hyper's IO traits
/// (`hyper::rt::Read`/`Write`) and hyper-util's `Connection`.
#[derive(Debug)]
pub struct HttpStream {
    io: TokioIo<TokioStream>,
}

impl HttpStream {
    /// This end's address.
    pub fn local_addr(&self) -> Addr {
        self.io.inner().local_addr()
    }

    /// The other end's address (the server's node and port).
    pub fn peer_addr(&self) -> Addr {
        self.io.inner().peer_addr()
    }

    /// The stream inside.
    pub fn into_inner(self) -> TokioStream {
        self.io.into_inner()
    }
}

impl Connection for HttpStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for HttpStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for HttpStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::target;

    #[test]
    fn uri_hosts_map_to_mesh_addresses() {
        let t = |s: &str| target(&s.parse().unwrap());
        assert_eq!(t("http://echo/path").unwrap(), "echo");
        assert_eq!(t("http://echo:8080/").unwrap(), "echo:8080");
        assert_eq!(
            t("http://0123456789abcdef:80/").unwrap(),
            "0123456789abcdef:80"
        );
        for bad in ["http://0123456789abcdef/", "http://10.0.0.1/", "/relative"] {
            let e = t(bad).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{bad}");
        }
    }
}
