//! gRPC over astranet with tonic: a server on the mesh service `grpc-svc`, a client
//! that reaches it by name, a unary call and a server-streaming call.
//!
//! ```sh
//! cargo run -p astranet --example grpc_tonic
//! ```

#[path = "support/grpc_echo.rs"]
mod grpc_echo;

use grpc_echo::{EchoClient, EchoRequest, EchoServer};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Two nodes joined over TCP loopback (in real use, two machines).
    let server = astranet::Node::builder().shards(1).build()?;
    let client = astranet::Node::builder().shards(1).build()?;
    let addr = server.listen("127.0.0.1:0")?;
    client.join(&addr.to_string())?;

    // Server: tonic reads connections from the mesh service `grpc-svc`.
    let incoming = astranet::Incoming::new(server.bind_async("grpc-svc")?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServer)
            .serve_with_incoming_shutdown(incoming, async {
                stopped.await.ok();
            }),
    );

    // Client: the URI's host is the service name.
    let channel = tonic::transport::Endpoint::from_static("http://grpc-svc")
        .connect_timeout(Duration::from_secs(10))
        .connect_with_connector(astranet::http::Connector::new(client.clone()))
        .await?;
    let mut echo = EchoClient::new(channel);

    let r = echo
        .unary(EchoRequest {
            message: "hello".into(),
            count: 0,
        })
        .await?;
    println!("unary: {:?} (server saw client {})", r.message, r.peer);

    let all = echo
        .stream(EchoRequest {
            message: "tick".into(),
            count: 5,
        })
        .await?;
    for m in &all {
        println!("stream: {} #{}", m.message, m.index);
    }

    stop.send(()).ok();
    serving.await??;
    Ok(())
}
