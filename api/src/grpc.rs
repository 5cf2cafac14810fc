//! gRPC with tonic: [`TokioStream`] implements tonic's
//! `Connected`, so an [`Incoming`](crate::Incoming) feeds `serve_with_incoming`, and
//! [`http::Connector`](crate::http::Connector) feeds `Endpoint::connect_with_connector`.
//!
//! ```no_run
//! # async fn f<S>(svc: S) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
//! # where S: tonic::codegen::Service<http::Request<tonic::body::Body>,
//! #         Response = http::Response<tonic::body::Body>, Error = std::convert::Infallible>
//! #     + tonic::server::NamedService + Clone + Send + Sync + 'static,
//! #     S::Future: Send + 'static {
//! let node = astranet::Node::builder().build()?;
//! // Server: a tonic service on the mesh service `grpc-svc`.
//! let incoming = astranet::Incoming::new(node.bind_async("grpc-svc")?);
//! tokio::spawn(tonic::transport::Server::builder().add_service(svc).serve_with_incoming(incoming));
//! // Client: a channel that dials `grpc-svc` wherever it runs.
//! let channel = tonic::transport::Endpoint::from_static("http://grpc-svc")
//!     .connect_with_connector(astranet::http::Connector::new(node))
//!     .await?;
//! # Ok(()) }
//! ```

use crate::{Addr, TokioStream};

/// What a tonic service learns about a request's connection (its
/// `Request::extensions().get::<StreamInfo>()`, or `request.remote_addr()`-like use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    /// The server's end: this node and the bound port.
    pub local: Addr,
    /// The client's end: its node and ephemeral port.
    pub peer: Addr,
}

impl tonic::transport::server::Connected for TokioStream {
    type ConnectInfo = StreamInfo;

    fn connect_info(&self) -> StreamInfo {
        StreamInfo {
            local: self.local_addr(),
            peer: self.peer_addr(),
        }
    }
}
