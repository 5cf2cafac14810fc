//! `--tls`: astranet links on TLS 1.3, with certificates of an in-memory development
//! CA made once per process; and the `join` scenario, time to a usable link.

use astranet::certs::DevCa;
use astranet::{Node, NodeBuilder, NodeId};
use hdrhistogram::Histogram;
use std::io;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn ca() -> io::Result<&'static DevCa> {
    static CA: OnceLock<DevCa> = OnceLock::new();
    if let Some(c) = CA.get() {
        return Ok(c);
    }
    let c = DevCa::generate()?;
    Ok(CA.get_or_init(|| c))
}

/// `b` with a fresh node certificate when `on`.
pub fn secure(b: NodeBuilder, on: bool) -> io::Result<NodeBuilder> {
    if !on {
        return Ok(b);
    }
    Ok(b.tls(ca()?.node_config(NodeId::random())?))
}

/// Time from `join` to a usable (routable) link, over `n` joins, each by a fresh
/// node (its start and shutdown are not timed). Returns (p50, p99, max) in µs.
pub fn join_latency(n: usize, tls: bool) -> io::Result<(u64, u64, u64)> {
    let server = secure(Node::builder().shards(1), tls)?.build()?;
    let addr = server.listen("127.0.0.1:0")?.to_string();
    let mut h = Histogram::<u64>::new(3).map_err(io::Error::other)?;
    for _ in 0..n {
        let client = secure(Node::builder().shards(1).direct_upgrade(false), tls)?.build()?;
        let t = Instant::now();
        client.join(&addr)?;
        let us = t.elapsed().as_micros() as u64;
        h.record(us.max(1)).map_err(io::Error::other)?;
        client.shutdown();
    }
    Ok((h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max()))
}

/// The `join` scenario: plaintext and TLS side by side.
pub fn run_join(n: usize, json: bool) -> io::Result<()> {
    for tls in [false, true] {
        let t = Instant::now();
        let (p50, p99, max) = join_latency(n, tls)?;
        let mode = if tls { "tls" } else { "plaintext" };
        if json {
            println!(
                "{{\"scenario\":\"join\",\"system\":\"astranet\",\"mode\":\"{mode}\",\"joins\":{n},\"p50_us\":{p50},\"p99_us\":{p99},\"max_us\":{max}}}"
            );
        } else {
            println!(
                "join {mode:9}: {n} joins, time to a usable link p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({:.1?} total)",
                p50 as f64 / 1e3,
                p99 as f64 / 1e3,
                max as f64 / 1e3,
                Duration::from_secs_f64(t.elapsed().as_secs_f64())
            );
        }
    }
    Ok(())
}
