//! HTTP over astranet: an axum app served on the mesh service `web`, and a hyper
//! client that reaches it by name (`http://web/...`).
//!
//! ```sh
//! cargo run -p astranet --example http_axum
//! ```

use axum::{extract::Path, routing::get, Router};
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Two nodes joined over TCP loopback (in real use, two machines).
    let server = astranet::Node::builder().shards(1).build()?;
    let client = astranet::Node::builder().shards(1).build()?;
    let addr = server.listen("127.0.0.1:0")?;
    client.join(&addr.to_string())?;

    // Server: an axum router on the mesh service `web`, stopped by a oneshot.
    let app = Router::new().route(
        "/hello/{name}",
        get(|Path(n): Path<String>| async move { format!("hello, {n}\n") }),
    );
    let listener = server.bind_async("web")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving =
        tokio::spawn(
            astranet::http::Server::new().serve_with_shutdown(listener, app, async {
                stopped.await.ok();
            }),
        );

    // Client: hyper-util's pooled client with the astranet connector.
    let http = Client::builder(TokioExecutor::new())
        .build::<_, Empty<bytes::Bytes>>(astranet::http::Connector::new(client.clone()));
    for who in ["mesh", "world"] {
        let resp = http.get(format!("http://web/hello/{who}").parse()?).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        print!("{status} {}", String::from_utf8_lossy(&body));
    }

    drop(http); // close pooled connections, so the graceful shutdown is quick
    stop.send(()).ok();
    serving.await??;
    Ok(())
}
