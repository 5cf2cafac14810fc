//! HTTP (and so gRPC) over astranet streams, with hyper.
//!
//! - Client: [`Connector`] is a hyper-util connector (`tower::Service<Uri>`). The
//!   URI's host is the mesh address: `http://echo/path` dials the service `echo`,
//!   `http://echo:8080/` the instance of `echo` on port 8080, and
//!   `http://0123456789abcdef:80/` port 80 on that node. It works with
//!   `hyper_util::client::legacy::Client` and with tonic's
//!   `Endpoint::connect_with_connector`.
//! - Server: [`Server`] serves any hyper or tower service (an axum `Router`, a tonic
//!   `Routes`, …) on an [`AsyncListener`](crate::AsyncListener), HTTP/1 and HTTP/2,
//!   one tokio task per connection, with a bound on connections and graceful
//!   shutdown.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use http_body_util::{BodyExt, Empty};
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//!
//! let node = astranet::Node::builder().build()?;
//! node.join("10.0.0.2:7000")?;
//! let client = Client::builder(TokioExecutor::new())
//!     .build::<_, Empty<bytes::Bytes>>(astranet::http::Connector::new(node));
//! let resp = client.get("http://echo/hello".parse()?).await?;
//! let body = resp.into_body().collect().await?.to_bytes();
//! # Ok(()) }
//! ```

mod connector;
mod server;

pub use connector::{Connector, HttpStream};
pub use server::Server;
