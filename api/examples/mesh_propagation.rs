//! How long a new `bind` takes to become dialable on every node of a 100-node mesh in
//! one process, for a line and for a binary tree.
//!
//! ```text
//! cargo run --release -p astranet --example mesh_propagation -- 100
//! ```

use astranet::Node;
use std::time::{Duration, Instant};

fn build(n: usize, parent: impl Fn(usize) -> usize) -> std::io::Result<Vec<Node>> {
    let mut nodes: Vec<Node> = Vec::with_capacity(n);
    let mut addrs = Vec::with_capacity(n);
    for i in 0..n {
        let node = Node::builder().shards(1).direct_upgrade(false).build()?;
        addrs.push(node.listen("127.0.0.1:0")?.to_string());
        if i > 0 {
            node.join(&addrs[parent(i)])?;
        }
        nodes.push(node);
    }
    // Wait until routing has settled: every node reaches every other.
    let t = Instant::now();
    while !nodes.iter().all(|x| x.routes().len() == n - 1) {
        if t.elapsed() > Duration::from_secs(60) {
            return Err(std::io::Error::other("routes did not converge"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(nodes)
}

/// Binds a new name on `nodes[0]`; returns (time until the farthest node, time until
/// all nodes) could dial it.
fn measure(nodes: &[Node], far: usize, name: &str) -> std::io::Result<(Duration, Duration)> {
    let t = Instant::now();
    let _l = nodes[0].bind(name)?;
    let mut far_at = None;
    let mut pending: Vec<usize> = (1..nodes.len()).collect();
    while !pending.is_empty() {
        if t.elapsed() > Duration::from_secs(30) {
            return Err(std::io::Error::other(format!(
                "{} nodes never saw {name}",
                pending.len()
            )));
        }
        pending.retain(|&i| {
            let seen = nodes[i].services().iter().any(|s| s.name == name);
            if seen && i == far && far_at.is_none() {
                far_at = Some(t.elapsed());
            }
            !seen
        });
    }
    let all = t.elapsed();
    // Dialable in fact, not only listed: the far end opens a stream through the mesh.
    let s = nodes[far].dial_timeout(name, Duration::from_secs(10))?;
    drop(s);
    Ok((far_at.unwrap_or(all), all))
}

fn main() -> std::io::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    for (shape, parent) in [
        (
            "line",
            Box::new(|i: usize| i - 1) as Box<dyn Fn(usize) -> usize>,
        ),
        ("tree", Box::new(|i: usize| (i - 1) / 2)),
    ] {
        let t = Instant::now();
        let nodes = build(n, parent)?;
        let far = n - 1;
        let depth = nodes[far]
            .routes()
            .iter()
            .find(|r| r.node == nodes[0].id())
            .map_or(0, |r| r.hops);
        println!(
            "{shape} of {n} nodes built in {:.1} s; node {far} is {depth} hops from node 0",
            t.elapsed().as_secs_f64()
        );
        let mut fars = Vec::new();
        let mut alls = Vec::new();
        for k in 0..5 {
            let (f, a) = measure(&nodes, far, &format!("{shape}-probe-{k}"))?;
            fars.push(f);
            alls.push(a);
        }
        fars.sort();
        alls.sort();
        println!(
            "  bind -> dialable: far end median {:.1} ms (min {:.1}, max {:.1}); every node median {:.1} ms",
            fars[2].as_secs_f64() * 1e3,
            fars[0].as_secs_f64() * 1e3,
            fars[4].as_secs_f64() * 1e3,
            alls[2].as_secs_f64() * 1e3
        );
        for x in &nodes {
            x.shutdown();
        }
    }
    Ok(())
}
