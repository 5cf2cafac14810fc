//! HTTP over astranet: an axum app served with `astranet::http::Server`, called with
//! hyper-util's client and `astranet::http::Connector`, directly and through a relay.
#![cfg(feature = "http")]

mod common;

use astranet::http::{Connector, Server};
use astranet::Node;
use axum::{
    extract::Path,
    routing::{get, post},
    Router,
};
use bytes::Bytes;
use common::eventually;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use std::time::Duration;

fn app() -> Router {
    Router::new()
        .route(
            "/hello/{name}",
            get(|Path(n): Path<String>| async move { format!("hello, {n}") }),
        )
        .route(
            "/sum",
            post(|body: Bytes| async move {
                let s: u64 = body.iter().map(|&b| u64::from(b)).sum();
                format!("{}:{s}", body.len())
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "done"
            }),
        )
}

fn node(f: impl FnOnce(astranet::NodeBuilder) -> astranet::NodeBuilder) -> Node {
    f(Node::builder()
        .shards(1)
        .dial_timeout(Duration::from_secs(10)))
    .build()
    .unwrap()
}

fn client(node: &Node) -> Client<Connector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(Connector::new(node.clone()))
}

async fn get_text(c: &Client<Connector, Full<Bytes>>, uri: &str) -> (u16, String) {
    let resp = c.get(uri.parse().unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// A named service and a node-id address both reach the axum app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_on_a_named_service_through_the_connector() {
    let (server, client_node) = (node(|b| b), node(|b| b));
    let addr = server.listen("127.0.0.1:0").unwrap();
    client_node.join(&addr.to_string()).unwrap();
    let l = server.bind_async("web:80").unwrap();
    let serving = tokio::spawn(Server::new().serve(l, app()));
    let c = client(&client_node);

    let (status, body) = get_text(&c, "http://web/hello/mesh").await;
    assert_eq!((status, body.as_str()), (200, "hello, mesh"));
    let (status, body) = get_text(&c, "http://web:80/hello/port").await;
    assert_eq!((status, body.as_str()), (200, "hello, port"));
    let by_id = format!("http://{}:80/hello/id", server.id());
    let (status, body) = get_text(&c, &by_id).await;
    assert_eq!((status, body.as_str()), (200, "hello, id"));
    let (status, _) = get_text(&c, "http://web/nope").await;
    assert_eq!(status, 404);

    // Not a mesh address: a clear error, no panic.
    let err = c
        .get("http://10.1.2.3/".parse().unwrap())
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");

    // The node shutting down ends `serve` with ConnectionAborted.
    drop(c);
    server.shutdown();
    let r = tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("serve returns once the node is down")
        .unwrap();
    assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::ConnectionAborted);
}

/// A–B–C in a line, no direct link between A and C: 1,000 concurrent requests from
/// A's hyper client to C's axum app, through B, all answered correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_requests_over_a_relay_hop() {
    let a = node(|b| b.direct_upgrade(false));
    let b = node(|b| b.direct_upgrade(false));
    let c = node(|b| b.direct_upgrade(false));
    let b_addr = b.listen("127.0.0.1:0").unwrap().to_string();
    a.join(&b_addr).unwrap();
    c.join(&b_addr).unwrap();
    let l = c.bind_async("web").unwrap();
    let serving = tokio::spawn(Server::new().serve(l, app()));
    let (a2, c_id, b_id) = (a.clone(), c.id(), b.id());
    assert!(
        tokio::task::spawn_blocking(move || eventually(Duration::from_secs(10), || {
            a2.services().iter().any(|s| s.name == "web" && s.hops == 2)
        }))
        .await
        .unwrap(),
        "A learns C's service two hops away"
    );
    let route = a.routes().into_iter().find(|r| r.node == c_id).unwrap();
    assert_eq!((route.next_hop, route.hops), (b_id, 2), "A reaches C via B");

    let http = client(&a);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000u32 {
        let http = http.clone();
        tasks.spawn(async move {
            let body: Vec<u8> = (0..(i % 300) as usize)
                .map(|k| (k as u32 * 7 + i) as u8)
                .collect();
            let want_sum: u64 = body.iter().map(|&b| u64::from(b)).sum();
            let want = format!("{}:{want_sum}", body.len());
            let req = http::Request::post("http://web/sum")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let resp = http.request(req).await.map_err(|e| format!("{i}: {e:?}"))?;
            if resp.status() != 200 {
                return Err(format!("{i}: status {}", resp.status()));
            }
            let got = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if got != want.as_bytes() {
                return Err(format!("{i}: got {got:?}, want {want}"));
            }
            Ok(())
        });
    }
    let all = tokio::time::timeout(Duration::from_secs(120), async {
        let mut ok = 0;
        while let Some(r) = tasks.join_next().await {
            r.unwrap().unwrap();
            ok += 1;
        }
        ok
    })
    .await
    .expect("1,000 requests answered within 120 s");
    assert_eq!(all, 1000);
    serving.abort();
}

/// Graceful shutdown: a request in flight completes, the server returns, and the
/// service is withdrawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_requests_in_flight_finish() {
    let n = node(|b| b.dial_timeout(Duration::from_secs(1)));
    let l = n.bind_async("web").unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(Server::new().max_connections(4).serve_with_shutdown(
        l,
        app(),
        async {
            stopped.await.ok();
        },
    ));
    let c = client(&n);
    let slow = {
        let c = c.clone();
        tokio::spawn(async move { get_text(&c, "http://web/slow").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    let (status, body) = slow.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "done"));
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("server returns after the drain")
        .unwrap()
        .unwrap();
    let e = n.dial_async("web").await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "service withdrawn");
}
