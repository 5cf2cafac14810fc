//! A small gRPC service, written out by hand instead of generated (no `protoc` needed):
//!
//! ```proto
//! package echo;
//! service Echo {
//!   rpc Unary(EchoRequest) returns (EchoReply);
//!   rpc Stream(EchoRequest) returns (stream EchoReply);   // `count` replies
//! }
//! message EchoRequest { string message = 1; uint32 count = 2; }
//! message EchoReply { string message = 1; uint32 index = 2; string peer = 3; }
//! ```
//!
//! Shared by `examples/grpc_tonic.rs` and `tests/grpc.rs`. Replies carry the client's
//! node id as the server saw it (tonic's `Connected` info for astranet streams).
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::codegen::{http, Service};
use tonic_prost::ProstCodec;

/// The request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    /// Text to echo.
    #[prost(string, tag = "1")]
    pub message: String,
    /// Replies wanted from `Stream`.
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

/// A reply.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    /// The request's text.
    #[prost(string, tag = "1")]
    pub message: String,
    /// 0, 1, 2… in a stream.
    #[prost(uint32, tag = "2")]
    pub index: u32,
    /// The client's address as the server saw it.
    #[prost(string, tag = "3")]
    pub peer: String,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type ReplyStream =
    Pin<Box<dyn futures_core::Stream<Item = Result<EchoReply, tonic::Status>> + Send>>;

fn peer_of<T>(req: &tonic::Request<T>) -> String {
    req.extensions()
        .get::<astranet::grpc::StreamInfo>()
        .map_or_else(|| "unknown".into(), |i| i.peer.to_string())
}

/// The server: `tonic::transport::Server::builder().add_service(EchoServer)`.
#[derive(Clone, Debug, Default)]
pub struct EchoServer;

impl tonic::server::NamedService for EchoServer {
    const NAME: &'static str = "echo.Echo";
}

struct Unary;

impl tonic::server::UnaryService<EchoRequest> for Unary {
    type Response = EchoReply;
    type Future = BoxFuture<Result<tonic::Response<EchoReply>, tonic::Status>>;
    fn call(&mut self, req: tonic::Request<EchoRequest>) -> Self::Future {
        let peer = peer_of(&req);
        let r = req.into_inner();
        Box::pin(async move {
            Ok(tonic::Response::new(EchoReply {
                message: r.message,
                index: 0,
                peer,
            }))
        })
    }
}

struct Streaming;

impl tonic::server::ServerStreamingService<EchoRequest> for Streaming {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<Result<tonic::Response<ReplyStream>, tonic::Status>>;
    fn call(&mut self, req: tonic::Request<EchoRequest>) -> Self::Future {
        let peer = peer_of(&req);
        let r = req.into_inner();
        Box::pin(async move {
            if r.count > 10_000 {
                return Err(tonic::Status::invalid_argument("count is at most 10000"));
            }
            let replies = (0..r.count).map(move |index| {
                Ok(EchoReply {
                    message: r.message.clone(),
                    index,
                    peer: peer.clone(),
                })
            });
            let s: ReplyStream = Box::pin(tokio_stream::iter(replies));
            Ok(tonic::Response::new(s))
        })
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
        let mut grpc = tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
        match req.uri().path() {
            "/echo.Echo/Unary" => Box::pin(async move { Ok(grpc.unary(Unary, req).await) }),
            "/echo.Echo/Stream" => {
                Box::pin(async move { Ok(grpc.server_streaming(Streaming, req).await) })
            }
            _ => Box::pin(async { Ok(tonic::Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// The client, over any tonic channel.
#[derive(Clone, Debug)]
pub struct EchoClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl EchoClient {
    /// A client on `channel`.
    pub fn new(channel: tonic::transport::Channel) -> Self {
        Self {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    /// `Unary`.
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

    /// `Stream`: every reply, in order.
    pub async fn stream(&mut self, req: EchoRequest) -> Result<Vec<EchoReply>, tonic::Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_static("/echo.Echo/Stream");
        let codec = ProstCodec::<EchoRequest, EchoReply>::default();
        let resp = self
            .grpc
            .server_streaming(tonic::Request::new(req), path, codec)
            .await?;
        let mut s = resp.into_inner();
        let mut all = Vec::new();
        while let Some(m) = s.message().await? {
            all.push(m);
        }
        Ok(all)
    }
}
