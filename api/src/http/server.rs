//! The server side: serves a hyper or tower service on a listener.

use crate::{AsyncListener, TokioStream};
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::sync::Arc;
use tokio::sync::Semaphore;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves HTTP/1 and HTTP/2 (prior knowledge) on an
/// [`AsyncListener`](crate::AsyncListener): each accepted stream is one HTTP
/// connection, served by its own tokio task with hyper-util's `auto::Builder`.
///
/// The service is any `tower::Service<http::Request<hyper::body::Incoming>>` that is
/// `Clone`, such as an axum `Router` or a tonic `Routes` (for a hyper `Service`, use
/// `tower::service_fn`); it is cloned for each connection.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let node = astranet::Node::builder().shards(1).build()?;
/// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
/// let listener = node.bind_async("web")?;
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let server = tokio::spawn(
///     astranet::http::Server::new()
///         .max_connections(1000)
///         .serve_with_shutdown(listener, app, async { stopped.await.ok(); }),
/// );
/// // ... serve for a while, then:
/// stop.send(()).unwrap();
/// server.await.unwrap()?; // returns once every connection has finished
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Server {
    builder: auto::Builder<TokioExecutor>,
    max_connections: usize,
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl Server {
    /// A server with hyper's defaults, at most 10,000 connections at once.
    pub fn new() -> Self {
        Self {
            builder: auto::Builder::new(TokioExecutor::new()),
            max_connections: 10_000,
        }
    }

    /// Most connections served at once (default 10,000). Beyond it the server stops
    /// accepting: new streams wait in the listener's backlog, and once that is full
    /// the mesh refuses them (`ConnectionRefused` at the dialer).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// hyper-util's connection builder, to tune HTTP/1 and HTTP/2 (`.http2()`,
    /// `.http1()`, `.http2_only()`, …).
    pub fn http_builder(&mut self) -> &mut auto::Builder<TokioExecutor> {
        &mut self.builder
    }

    /// Serves until the node shuts down; see [`Server::serve_with_shutdown`].
    pub async fn serve<S, B>(self, listener: AsyncListener, service: S) -> io::Result<()>
    where
        S: tower_service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        self.serve_with_shutdown(listener, service, std::future::pending::<()>())
            .await
    }

    /// Serves until `signal` completes, then shuts down gracefully: it stops accepting
    /// and unbinds (dropping the listener), tells every connection to finish (HTTP/1:
    /// after the request in progress; HTTP/2: GOAWAY, in-flight requests complete),
    /// and returns once all have closed. Bound that wait with `tokio::time::timeout`
    /// if you must. Returns `Ok` after `signal`, or `Err(ConnectionAborted)` (after the
    /// same drain) if the node shut down first.
    ///
    /// Needs a tokio runtime. Cancel-safety: dropping the future stops accepting; the
    /// connections' tasks run on until they end.
    pub async fn serve_with_shutdown<S, B, F>(
        self,
        listener: AsyncListener,
        service: S,
        signal: F,
    ) -> io::Result<()>
    where
        S: tower_service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        F: Future,
    {
        if self.max_connections == 0 || self.max_connections > Semaphore::MAX_PERMITS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "max_connections must be at least 1",
            ));
        }
        let sem = Arc::new(Semaphore::new(self.max_connections));
        let graceful = GracefulShutdown::new();
        tokio::pin!(signal);
        let result = loop {
            let permit = tokio::select! {
                _ = &mut signal => break Ok(()),
                p = sem.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            };
            let stream = tokio::select! {
                _ = &mut signal => break Ok(()),
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => break Err(e),
                },
            };
            let io = TokioIo::new(TokioStream::new(stream));
            let svc = TowerToHyperService::new(service.clone());
            let conn = self
                .builder
                .serve_connection_with_upgrades(io, svc)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                // A connection's error (peer reset, bad request) ends that connection.
                let _ = conn.await;
                drop(permit);
            });
        };
        drop(listener);
        graceful.shutdown().await;
        result
    }
}
