//! The systems under test, behind one interface: something that opens streams and
//! something that accepts them, both yielding `futures-io` byte streams.

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite};
use std::io;
use std::sync::Arc;

/// A byte stream of any system.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Conn for T {}

pub type BoxConn = Box<dyn Conn>;

/// Opens streams (client side).
pub trait Dialer: Send + Sync + 'static {
    fn open(&self) -> BoxFuture<'static, io::Result<BoxConn>>;
}

/// Accepts streams (server side).
pub trait Acceptor: Send + 'static {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<BoxConn>>;
}

/// A client and a server, connected as the scenario requires. `_keep` holds whatever
/// must live as long as the pair (nodes, drivers).
pub struct Pair {
    pub dialer: Arc<dyn Dialer>,
    pub acceptor: Box<dyn Acceptor>,
    pub _keep: Vec<Box<dyn std::any::Any + Send>>,
}

/// Settings a system is set up with.
#[derive(Clone, Debug)]
pub struct SysOpts {
    /// astranet links run TLS (`--tls`).
    pub tls: bool,
    pub shards: usize,
    /// Streams the scenario will hold open at once (limits are raised to it).
    pub max_streams: usize,
}

pub mod astranet_sys {
    use super::*;

    struct D(astranet::Node);
    impl Dialer for D {
        fn open(&self) -> BoxFuture<'static, io::Result<BoxConn>> {
            let f = self.0.dial_async("bench");
            Box::pin(async move { Ok(Box::new(f.await?) as BoxConn) })
        }
    }
    struct A(astranet::AsyncListener);
    impl Acceptor for A {
        fn accept(&mut self) -> BoxFuture<'_, io::Result<BoxConn>> {
            Box::pin(async move { Ok(Box::new(self.0.accept().await?) as BoxConn) })
        }
    }

    /// A and C linked only through B (a router); C binds "bench", A dials it.
    pub fn relay_pair(o: &SysOpts) -> io::Result<Pair> {
        let build = || {
            crate::tls::secure(astranet::Node::builder(), o.tls)?
                .shards(o.shards)
                .direct_upgrade(false)
                .max_streams((o.max_streams as u64 + 1024).max(1 << 20))
                .build()
        };
        let (a, b, c) = (build()?, build()?, build()?);
        let addr = b.listen("127.0.0.1:0")?.to_string();
        a.join(&addr)?;
        c.join(&addr)?;
        let l = c.bind_async("bench")?;
        let t = std::time::Instant::now();
        while !a
            .services()
            .iter()
            .any(|s| s.name == "bench" && s.hops == 2)
        {
            if t.elapsed() > std::time::Duration::from_secs(10) {
                return Err(io::Error::other("service announcement did not arrive"));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(Pair {
            dialer: Arc::new(D(a)),
            acceptor: Box::new(A(l)),
            _keep: vec![Box::new(b), Box::new(c)],
        })
    }

    /// Two nodes joined by one TCP connection; the server binds "bench".
    pub fn pair(o: &SysOpts) -> io::Result<Pair> {
        let (server, client, l) = nodes(o, "bench")?;
        Ok(Pair {
            dialer: Arc::new(D(client)),
            acceptor: Box::new(A(l)),
            _keep: vec![Box::new(server)],
        })
    }

    /// Two nodes joined by one TCP connection, the server bound to `service` and the
    /// client aware of it: (server, client, listener). Blocks until announced.
    pub fn nodes(
        o: &SysOpts,
        service: &str,
    ) -> io::Result<(astranet::Node, astranet::Node, astranet::AsyncListener)> {
        let build = || {
            crate::tls::secure(astranet::Node::builder(), o.tls)?
                .shards(o.shards)
                .max_streams((o.max_streams as u64 + 1024).max(1 << 20))
                .build()
        };
        let server = build()?;
        let client = build()?;
        let addr = server.listen("127.0.0.1:0")?;
        client.join(&addr.to_string())?;
        let l = server.bind_async(service)?;
        // Wait until the client has heard of the service.
        let t = std::time::Instant::now();
        while !client.services().iter().any(|s| s.name == service) {
            if t.elapsed() > std::time::Duration::from_secs(10) {
                return Err(io::Error::other("service announcement did not arrive"));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok((server, client, l))
    }
}

pub mod tcp_sys {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::compat::TokioAsyncReadCompatExt;

    /// Plain TCP: every stream is its own connection (the physical baseline).
    struct D(std::net::SocketAddr);
    impl Dialer for D {
        fn open(&self) -> BoxFuture<'static, io::Result<BoxConn>> {
            let a = self.0;
            Box::pin(async move {
                let s = TcpStream::connect(a).await?;
                s.set_nodelay(true)?;
                Ok(Box::new(s.compat()) as BoxConn)
            })
        }
    }
    struct A(TcpListener);
    impl Acceptor for A {
        fn accept(&mut self) -> BoxFuture<'_, io::Result<BoxConn>> {
            Box::pin(async move {
                let (s, _) = self.0.accept().await?;
                s.set_nodelay(true)?;
                Ok(Box::new(s.compat()) as BoxConn)
            })
        }
    }

    pub async fn pair() -> io::Result<Pair> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        Ok(Pair {
            dialer: Arc::new(D(addr)),
            acceptor: Box::new(A(l)),
            _keep: vec![],
        })
    }
}

pub mod yamux_sys {
    use super::*;
    use futures::channel::{mpsc, oneshot};
    use futures::StreamExt;
    use std::future::poll_fn;
    use std::task::Poll;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

    type Req = oneshot::Sender<io::Result<yamux::Stream>>;

    /// Drives a yamux connection: serves requests for outbound streams and hands
    /// inbound ones to `inbound`. Ends when the connection does.
    async fn drive(
        mut conn: yamux::Connection<Compat<TcpStream>>,
        mut reqs: mpsc::UnboundedReceiver<Req>,
        inbound: mpsc::UnboundedSender<yamux::Stream>,
    ) {
        let mut waiting: Option<Req> = None;
        poll_fn(|cx| {
            loop {
                if waiting.is_none() {
                    match reqs.poll_next_unpin(cx) {
                        Poll::Ready(Some(r)) => waiting = Some(r),
                        Poll::Ready(None) | Poll::Pending => break,
                    }
                }
                match conn.poll_new_outbound(cx) {
                    Poll::Ready(r) => {
                        if let Some(w) = waiting.take() {
                            let _ = w.send(r.map_err(io::Error::other));
                        }
                    }
                    Poll::Pending => break,
                }
            }
            loop {
                match conn.poll_next_inbound(cx) {
                    Poll::Ready(Some(Ok(s))) => {
                        let _ = inbound.unbounded_send(s);
                    }
                    Poll::Ready(Some(Err(_))) | Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await
    }

    struct D(mpsc::UnboundedSender<Req>);
    impl Dialer for D {
        fn open(&self) -> BoxFuture<'static, io::Result<BoxConn>> {
            let (tx, rx) = oneshot::channel();
            let sent = self.0.unbounded_send(tx);
            Box::pin(async move {
                sent.map_err(|_| io::Error::other("yamux connection closed"))?;
                let s = rx
                    .await
                    .map_err(|_| io::Error::other("yamux connection closed"))??;
                Ok(Box::new(s) as BoxConn)
            })
        }
    }
    struct A(mpsc::UnboundedReceiver<yamux::Stream>);
    impl Acceptor for A {
        fn accept(&mut self) -> BoxFuture<'_, io::Result<BoxConn>> {
            Box::pin(async move {
                match self.0.next().await {
                    Some(s) => Ok(Box::new(s) as BoxConn),
                    None => Err(io::Error::other("yamux connection closed")),
                }
            })
        }
    }

    /// One TCP connection with a yamux session on each end, limits raised as a user
    /// would for the scenario (max streams; no connection-wide window cap).
    pub async fn pair(o: &SysOpts) -> io::Result<Pair> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        let (c, (s, _)) = (c?, s?);
        c.set_nodelay(true)?;
        s.set_nodelay(true)?;
        let mut cfg = yamux::Config::default();
        cfg.set_max_connection_receive_window(None);
        cfg.set_max_num_streams(o.max_streams.max(512) + 64);
        let client = yamux::Connection::new(c.compat(), cfg.clone(), yamux::Mode::Client);
        let server = yamux::Connection::new(s.compat(), cfg, yamux::Mode::Server);
        let (creq_tx, creq_rx) = mpsc::unbounded();
        let (cin_tx, _cin_rx) = mpsc::unbounded();
        let (_sreq_tx, sreq_rx) = mpsc::unbounded();
        let (sin_tx, sin_rx) = mpsc::unbounded();
        let t1 = tokio::spawn(drive(client, creq_rx, cin_tx));
        let t2 = tokio::spawn(drive(server, sreq_rx, sin_tx));
        Ok(Pair {
            dialer: Arc::new(D(creq_tx)),
            acceptor: Box::new(A(sin_rx)),
            _keep: vec![
                Box::new(_sreq_tx),
                Box::new(_cin_rx),
                Box::new(AbortOnDrop(t1)),
                Box::new(AbortOnDrop(t2)),
            ],
        })
    }

    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
}
