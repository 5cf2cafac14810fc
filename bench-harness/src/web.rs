//! `http` and `grpc`: the same hyper / tonic client and server over astranet (one
//! mesh link) and over plain TCP on loopback, closed loops from `n` tasks.

use crate::scenarios::{new_hist, record, Outcome};
use crate::sys::SysOpts;
use crate::System;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::{connect::Connect, connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use indicatif::ProgressBar;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The response body of `http`, and the message size of `grpc`.
const BODY: [u8; 64] = [b'x'; 64];
/// No single request may take longer than this (the run fails instead of hanging).
const REQ_TIMEOUT: Duration = Duration::from_secs(10);
/// Setting up either end (nodes, listeners, a tonic channel).
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}

async fn astranet_nodes(
    o: &SysOpts,
    service: &'static str,
) -> io::Result<(astranet::Node, astranet::Node, astranet::AsyncListener)> {
    let o = o.clone();
    let f = tokio::task::spawn_blocking(move || crate::sys::astranet_sys::nodes(&o, service));
    tokio::time::timeout(SETUP_TIMEOUT, f)
        .await
        .map_err(|_| timed_out("astranet setup"))?
        .map_err(io::Error::other)?
}

/// `n` tasks each make one unmeasured call, then all run `op` in a closed loop for
/// `run_for`. Returns the figures `rps`, `p50_us`, `p99_us` and the histogram.
async fn closed_loop<F, Fut>(
    n: usize,
    run_for: Duration,
    pb: &ProgressBar,
    op: F,
) -> io::Result<Outcome>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    let ready = Arc::new(tokio::sync::Barrier::new(n + 1));
    let go = Arc::new(tokio::sync::Notify::new());
    let start_at = Arc::new(std::sync::OnceLock::<Instant>::new());
    pb.set_length(run_for.as_millis() as u64);
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (op, ready, go, start_at) = (op.clone(), ready.clone(), go.clone(), start_at.clone());
        tasks.push(tokio::spawn(async move {
            let warm = op().await;
            let notified = go.notified();
            ready.wait().await;
            warm?;
            notified.await;
            let until = *start_at.get().expect("start time set") + run_for;
            let mut h = new_hist();
            while Instant::now() < until {
                let t = Instant::now();
                op().await?;
                record(&mut h, t);
            }
            Ok::<Histogram<u64>, io::Error>(h)
        }));
    }
    ready.wait().await;
    let start = Instant::now();
    let _ = start_at.set(start);
    go.notify_waiters();
    let ticker = {
        let pb = pb.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                pb.set_position(start.elapsed().as_millis() as u64);
            }
        })
    };
    let mut h = new_hist();
    let mut err = None;
    for t in tasks {
        match t.await.map_err(io::Error::other).and_then(|r| r) {
            Ok(x) => {
                h.add(x).ok();
            }
            Err(e) => {
                err.get_or_insert(e);
            }
        }
    }
    ticker.abort();
    if let Some(e) = err {
        return Err(e);
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Outcome {
        figures: vec![
            ("rps", h.len() as f64 / secs),
            ("p50_us", h.value_at_quantile(0.50) as f64),
            ("p99_us", h.value_at_quantile(0.99) as f64),
        ],
        hist: Some(h),
        note: None,
    })
}

/// Aborts a task when dropped (servers must not outlive their run).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);
impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ---------------------------------------------------------------- http

/// The HTTP service: 200 with a 64 B body for every request.
#[derive(Clone, Copy, Debug)]
struct Hello;

impl tower_service::Service<Request<Incoming>> for Hello {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Incoming>) -> Self::Future {
        std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(&BODY)))))
    }
}

async fn get<C>(client: &Client<C, Empty<Bytes>>, uri: &Uri) -> io::Result<()>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let call = async {
        let resp = client.get(uri.clone()).await.map_err(io::Error::other)?;
        if !resp.status().is_success() {
            return Err(io::Error::other(format!("HTTP {}", resp.status())));
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(io::Error::other)?
            .to_bytes();
        if body.len() != BODY.len() {
            return Err(io::Error::other(format!("body of {} B", body.len())));
        }
        Ok(())
    };
    tokio::time::timeout(REQ_TIMEOUT, call)
        .await
        .map_err(|_| timed_out("HTTP request"))?
}

async fn http_load<C>(
    connector: C,
    uri: Uri,
    n: usize,
    run_for: Duration,
    pb: &ProgressBar,
) -> io::Result<Outcome>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    // Keep-alive (the default), a pool big enough for every task's connection.
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(n)
        .build::<_, Empty<Bytes>>(connector);
    closed_loop(n, run_for, pb, move || {
        let (client, uri) = (client.clone(), uri.clone());
        async move { get(&client, &uri).await }
    })
    .await
}

/// `http`: HTTP/1.1 GETs with keep-alive from `n` tasks in closed loops for `run_for`.
pub async fn http(
    sys: System,
    o: &SysOpts,
    n: usize,
    run_for: Duration,
    pb: &ProgressBar,
) -> io::Result<Outcome> {
    match sys {
        System::Astranet => {
            let (server, client, listener) = astranet_nodes(o, "bench-http").await?;
            let serving = AbortOnDrop(tokio::spawn(
                astranet::http::Server::new().serve(listener, Hello),
            ));
            let out = http_load(
                astranet::http::Connector::new(client.clone()),
                Uri::from_static("http://bench-http/"),
                n,
                run_for,
                pb,
            )
            .await;
            drop(serving);
            drop((client, server));
            out
        }
        System::Tcp => {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = l.local_addr()?;
            // The same hyper-util server astranet::http::Server runs, on TCP.
            let _serving = AbortOnDrop(tokio::spawn(async move {
                let builder = auto::Builder::new(TokioExecutor::new());
                while let Ok((s, _)) = l.accept().await {
                    let _ = s.set_nodelay(true);
                    let conn = builder
                        .serve_connection_with_upgrades(
                            TokioIo::new(s),
                            TowerToHyperService::new(Hello),
                        )
                        .into_owned();
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
            }));
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            let uri: Uri = format!("http://{addr}/")
                .parse()
                .map_err(io::Error::other)?;
            http_load(connector, uri, n, run_for, pb).await
        }
        System::YamuxRs | System::TcpGlommio | System::AstranetLocal => Err(io::Error::other(
            format!("http does not apply to {}", sys.name()),
        )),
    }
}

// ---------------------------------------------------------------- grpc

/// A unary echo service written out by hand (no `protoc`), after
/// `api/examples/support/grpc_echo.rs`:
/// `service Echo { rpc Unary(EchoRequest) returns (EchoReply); }`.
mod echo {
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tonic::codegen::{http, Service};
    use tonic_prost::ProstCodec;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EchoRequest {
        #[prost(bytes = "bytes", tag = "1")]
        pub message: bytes::Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EchoReply {
        #[prost(bytes = "bytes", tag = "1")]
        pub message: bytes::Bytes,
    }

    type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

    #[derive(Clone, Copy, Debug, Default)]
    pub struct EchoServer;

    impl tonic::server::NamedService for EchoServer {
        const NAME: &'static str = "echo.Echo";
    }

    struct Unary;

    impl tonic::server::UnaryService<EchoRequest> for Unary {
        type Response = EchoReply;
        type Future = std::future::Ready<Result<tonic::Response<EchoReply>, tonic::Status>>;
        fn call(&mut self, req: tonic::Request<EchoRequest>) -> Self::Future {
            std::future::ready(Ok(tonic::Response::new(EchoReply {
                message: req.into_inner().message,
            })))
        }
    }

    impl<B> Service<http::Request<B>> for EchoServer
    where
        B: tonic::codegen::Body + Send + 'static,
        B::Error: Into<tonic::codegen::StdError> + Send + 'static,
    {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = BoxFuture<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<B>) -> Self::Future {
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
            match req.uri().path() {
                "/echo.Echo/Unary" => Box::pin(async move { Ok(grpc.unary(Unary, req).await) }),
                _ => Box::pin(async {
                    Ok(tonic::Status::unimplemented("no such method").into_http())
                }),
            }
        }
    }

    /// The client, over any tonic channel.
    #[derive(Clone, Debug)]
    pub struct EchoClient {
        grpc: tonic::client::Grpc<tonic::transport::Channel>,
    }

    impl EchoClient {
        pub fn new(channel: tonic::transport::Channel) -> Self {
            Self {
                grpc: tonic::client::Grpc::new(channel),
            }
        }

        pub async fn unary(&mut self, req: EchoRequest) -> Result<EchoReply, tonic::Status> {
            self.grpc
                .ready()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let path = http::uri::PathAndQuery::from_static("/echo.Echo/Unary");
            let codec = ProstCodec::<EchoRequest, EchoReply>::default();
            let resp = self
                .grpc
                .unary(tonic::Request::new(req), path, codec)
                .await?;
            Ok(resp.into_inner())
        }
    }
}

async fn grpc_load(
    channel: tonic::transport::Channel,
    n: usize,
    run_for: Duration,
    pb: &ProgressBar,
) -> io::Result<Outcome> {
    let client = echo::EchoClient::new(channel);
    closed_loop(n, run_for, pb, move || {
        let mut client = client.clone();
        async move {
            let req = echo::EchoRequest {
                message: Bytes::from_static(&BODY),
            };
            let r = tokio::time::timeout(REQ_TIMEOUT, client.unary(req))
                .await
                .map_err(|_| timed_out("gRPC call"))?
                .map_err(io::Error::other)?;
            if r.message.len() != BODY.len() {
                return Err(io::Error::other("short gRPC reply"));
            }
            Ok(())
        }
    })
    .await
}

/// `grpc`: tonic unary calls over one channel from `n` tasks for `run_for`.
pub async fn grpc(
    sys: System,
    o: &SysOpts,
    n: usize,
    run_for: Duration,
    pb: &ProgressBar,
) -> io::Result<Outcome> {
    use tonic::transport::{Endpoint, Server};
    match sys {
        System::Astranet => {
            let (server, client, listener) = astranet_nodes(o, "bench-grpc").await?;
            let incoming = astranet::Incoming::new(listener);
            let serving = AbortOnDrop(tokio::spawn(
                Server::builder()
                    .add_service(echo::EchoServer)
                    .serve_with_incoming(incoming),
            ));
            let endpoint =
                Endpoint::from_static("http://bench-grpc").connect_timeout(SETUP_TIMEOUT);
            let channel =
                endpoint.connect_with_connector(astranet::http::Connector::new(client.clone()));
            let channel = tokio::time::timeout(SETUP_TIMEOUT, channel)
                .await
                .map_err(|_| timed_out("gRPC connect"))?
                .map_err(io::Error::other)?;
            let out = grpc_load(channel, n, run_for, pb).await;
            drop(serving);
            drop((client, server));
            out
        }
        System::Tcp => {
            // What `Server::serve(127.0.0.1:0)` does, keeping the bound address.
            let incoming =
                tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().expect("addr"))?
                    .with_nodelay(Some(true));
            let addr = incoming.local_addr()?;
            let _serving = AbortOnDrop(tokio::spawn(
                Server::builder()
                    .add_service(echo::EchoServer)
                    .serve_with_incoming(incoming),
            ));
            let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                .map_err(io::Error::other)?
                .connect_timeout(SETUP_TIMEOUT);
            let channel = endpoint.connect();
            let channel = tokio::time::timeout(SETUP_TIMEOUT, channel)
                .await
                .map_err(|_| timed_out("gRPC connect"))?
                .map_err(io::Error::other)?;
            grpc_load(channel, n, run_for, pb).await
        }
        System::YamuxRs | System::TcpGlommio | System::AstranetLocal => Err(io::Error::other(
            format!("grpc does not apply to {}", sys.name()),
        )),
    }
}
