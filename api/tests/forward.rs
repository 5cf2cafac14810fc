//! `astranet::forward` in one process: TCP client → forward → mesh → expose → TCP
//! server, with half-close and failures carried across.
#![cfg(feature = "tokio")]

use astranet::forward::{expose, forward, ForwardConfig};
use astranet::Node;
use std::io::ErrorKind;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn pair() -> (Node, Node) {
    let a = Node::builder()
        .shards(1)
        .dial_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let b = Node::builder().shards(1).build().unwrap();
    let addr = b.listen("127.0.0.1:0").unwrap();
    a.join(&addr.to_string()).unwrap();
    (a, b)
}

/// Starts `forward` on a local port to `target`; returns the port's address.
async fn start_forward(node: &Node, target: &str) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(forward(
        node.clone(),
        l,
        target.into(),
        ForwardConfig::default(),
        std::future::pending::<()>(),
    ));
    addr
}

/// Reads to the end or to the first error; `Err` only for the error.
async fn read_all(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).await.map(|_| v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_crosses_both_ways_for_many_connections() {
    let (a, b) = pair();
    // The TCP server: reads until EOF, answers with the length, then closes.
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = server.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = server.accept().await.unwrap();
            tokio::spawn(async move {
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap(); // EOF: the client half-closed
                s.write_all(format!("{} bytes", got.len()).as_bytes())
                    .await
                    .unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    let service = b.bind_async("db").unwrap();
    tokio::spawn(expose(
        service,
        server_addr,
        ForwardConfig::default().max_connections(8),
        std::future::pending::<()>(),
    ));
    let local = start_forward(&a, "db").await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50usize {
        let local = local.clone();
        tasks.spawn(async move {
            let mut c = TcpStream::connect(&local).await.unwrap();
            let data = vec![i as u8; i * 1000];
            c.write_all(&data).await.unwrap();
            c.shutdown().await.unwrap();
            let back = read_all(&mut c).await.unwrap();
            assert_eq!(
                String::from_utf8(back).unwrap(),
                format!("{} bytes", i * 1000)
            );
        });
    }
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    })
    .await
    .expect("50 connections within 60 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_tcp_connect_resets_the_connection() {
    let (a, b) = pair();
    // A port with nobody listening.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let service = b.bind_async("nothing").unwrap();
    tokio::spawn(expose(
        service,
        closed_addr,
        ForwardConfig::default(),
        std::future::pending::<()>(),
    ));
    // Straight from the mesh: the stream is reset.
    let mut s = a.dial_async("nothing").await.unwrap();
    let mut buf = [0u8; 8];
    let e = futures_util::io::AsyncReadExt::read(&mut s, &mut buf)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionReset);
    // Through forward: the TCP client is reset, with no data.
    let local = start_forward(&a, "nothing").await;
    // On loopback the reset can come so fast that it already fails the connect.
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        let mut c = TcpStream::connect(&local).await?;
        read_all(&mut c).await
    })
    .await
    .expect("the failure arrives within 10 s");
    assert_eq!(r.unwrap_err().kind(), ErrorKind::ConnectionReset);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_dial_resets_the_tcp_connection() {
    let (a, _b) = pair();
    let local = start_forward(&a, "no-such-service").await;
    let mut c = TcpStream::connect(&local).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), read_all(&mut c))
        .await
        .expect("the dial gives up after its 2 s timeout");
    assert_eq!(r.unwrap_err().kind(), ErrorKind::ConnectionReset);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_errors() {
    let (a, _b) = pair();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = forward(
        a.clone(),
        l,
        "not a service!".into(),
        ForwardConfig::default(),
        std::future::pending::<()>(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = forward(
        a.clone(),
        l,
        "db".into(),
        ForwardConfig::default().max_connections(0),
        std::future::pending::<()>(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
}

/// The shutdown signal stops accepting; forward returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_forward() {
    let (a, _b) = pair();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let t = tokio::spawn(forward(
        a,
        l,
        "db".into(),
        ForwardConfig::default(),
        stopped,
    ));
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), t)
        .await
        .expect("forward returns")
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "port closed");
}
