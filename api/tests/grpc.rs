//! gRPC over astranet with tonic: `serve_with_incoming(astranet::Incoming)` on one
//! node, `Endpoint::connect_with_connector(astranet::http::Connector)` on another.
#![cfg(feature = "grpc")]

#[path = "../examples/support/grpc_echo.rs"]
mod grpc_echo;

use astranet::Node;
use grpc_echo::{EchoClient, EchoRequest, EchoServer};
use std::time::Duration;

fn pair() -> (Node, Node) {
    let server = Node::builder().shards(1).build().unwrap();
    let client = Node::builder().shards(1).build().unwrap();
    let addr = server.listen("127.0.0.1:0").unwrap();
    client.join(&addr.to_string()).unwrap();
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_server_streaming_calls() {
    let (server, client) = pair();
    let incoming = astranet::Incoming::new(server.bind_async("grpc-svc").unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServer)
            .serve_with_incoming_shutdown(incoming, async {
                stopped.await.ok();
            }),
    );
    let channel = tonic::transport::Endpoint::from_static("http://grpc-svc")
        .connect_timeout(Duration::from_secs(10))
        .connect_with_connector(astranet::http::Connector::new(client.clone()))
        .await
        .unwrap();
    let mut echo = EchoClient::new(channel.clone());

    // Unary; the server sees the client's node through tonic's `Connected`.
    let r = echo
        .unary(EchoRequest {
            message: "hello".into(),
            count: 0,
        })
        .await
        .unwrap();
    assert_eq!(r.message, "hello");
    assert!(
        r.peer.starts_with(&client.id().to_string()),
        "server saw peer {} (client is {})",
        r.peer,
        client.id()
    );

    // Server streaming: every reply, in order.
    let all = echo
        .stream(EchoRequest {
            message: "tick".into(),
            count: 200,
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 200);
    for (i, m) in all.iter().enumerate() {
        assert_eq!((m.message.as_str(), m.index), ("tick", i as u32));
    }
    // An error status crosses too.
    let e = echo
        .stream(EchoRequest {
            message: "x".into(),
            count: 1_000_000,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // Many concurrent calls over one channel (one HTTP/2 connection, one link).
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..500u32 {
        let mut echo = EchoClient::new(channel.clone());
        tasks.spawn(async move {
            if i % 10 == 0 {
                let all = echo
                    .stream(EchoRequest {
                        message: format!("s{i}"),
                        count: 20,
                    })
                    .await?;
                assert_eq!(all.len(), 20);
                assert!(all
                    .iter()
                    .enumerate()
                    .all(|(k, m)| m.index == k as u32 && m.message == format!("s{i}")));
            } else {
                let r = echo
                    .unary(EchoRequest {
                        message: format!("u{i}"),
                        count: 0,
                    })
                    .await?;
                assert_eq!(r.message, format!("u{i}"));
            }
            Ok::<_, tonic::Status>(())
        });
    }
    let done = tokio::time::timeout(Duration::from_secs(60), async {
        let mut n = 0;
        while let Some(r) = tasks.join_next().await {
            r.unwrap().unwrap();
            n += 1;
        }
        n
    })
    .await
    .expect("500 calls within 60 s");
    assert_eq!(done, 500);
    let links = client.stats().unwrap().links;
    assert_eq!(links, 1, "one link to the server");

    drop((echo, channel));
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
}

/// The incoming stream ends when the node shuts down, so tonic's server returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_ends_when_the_node_shuts_down() {
    let (server, _client) = pair();
    let incoming = astranet::Incoming::new(server.bind_async("grpc-svc").unwrap());
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServer)
            .serve_with_incoming(incoming),
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.shutdown();
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("tonic returns once the node is down")
        .unwrap()
        .unwrap();
}
