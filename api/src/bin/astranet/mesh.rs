//! `services`, `routes` and `links`: what a node joined to the mesh sees, as a table or
//! as JSON.

use astranet::{Node, RouteInfo, ServiceInfo, Watch};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Which listing.
#[derive(Debug, Clone, Copy)]
pub enum What {
    Services,
    Routes,
    Links,
}

/// Waits for the view to settle: returns once no change came for a quarter of `wait`
/// after the first one, or once `wait` is over.
async fn settle<T>(w: Watch<T>, wait: Duration) {
    let end = Instant::now() + wait;
    let quiet = wait / 4;
    let mut seen = false;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let limit = if seen { quiet.min(left) } else { left };
        match tokio::time::timeout(limit, w.recv()).await {
            Ok(Some(_)) => seen = true,
            Ok(None) | Err(_) => return,
        }
    }
}

/// Prints the listing of `what` as `node` sees it after `wait`.
pub async fn show(node: &Node, what: What, wait: Duration, as_json: bool) -> std::io::Result<()> {
    match what {
        What::Services => settle(node.watch_services(), wait).await,
        What::Routes | What::Links => settle(node.watch_routes(), wait).await,
    }
    let out = match what {
        What::Services => services(node.services(), as_json),
        What::Routes => routes(node.routes(), as_json),
        What::Links => links(node, as_json)?,
    };
    print!("{out}");
    Ok(())
}

fn services(mut v: Vec<ServiceInfo>, as_json: bool) -> String {
    v.sort_by(|a, b| (&a.name, a.addr.node, a.addr.port).cmp(&(&b.name, b.addr.node, b.addr.port)));
    if as_json {
        let list: Vec<Value> = v
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "node": s.addr.node.to_string(),
                    "port": s.addr.port,
                    "addr": s.addr.to_string(),
                    "hops": s.hops,
                })
            })
            .collect();
        return format!("{}\n", Value::Array(list));
    }
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.addr.node.to_string(),
                s.addr.port.to_string(),
                s.hops.to_string(),
            ]
        })
        .collect();
    table(&["NAME", "NODE", "PORT", "HOPS"], &rows)
}

fn routes(mut v: Vec<RouteInfo>, as_json: bool) -> String {
    v.sort_by_key(|r| (r.hops, r.node));
    if as_json {
        let list: Vec<Value> = v
            .iter()
            .map(|r| {
                json!({
                    "node": r.node.to_string(),
                    "next_hop": r.next_hop.to_string(),
                    "hops": r.hops,
                })
            })
            .collect();
        return format!("{}\n", Value::Array(list));
    }
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|r| {
            vec![
                r.node.to_string(),
                r.next_hop.to_string(),
                r.hops.to_string(),
            ]
        })
        .collect();
    table(&["NODE", "NEXT HOP", "HOPS"], &rows)
}

/// The links of the node that joined: peer, address, RTT, streams, traffic, age.
fn links(node: &Node, as_json: bool) -> std::io::Result<String> {
    let st = node.stats()?;
    let links = node.links()?;
    let peer = |l: &astranet::LinkInfo| l.peer.map_or("-".to_string(), |p| p.to_string());
    let addr = |l: &astranet::LinkInfo| l.addr.map_or("-".to_string(), |a| a.to_string());
    if as_json {
        let list: Vec<_> = links
            .iter()
            .map(|l| {
                json!({
                    "peer": peer(l),
                    "addr": addr(l),
                    "rtt_us": l.rtt.map(|r| r.as_micros() as u64),
                    "streams": l.streams,
                    "bytes_in": l.bytes_in,
                    "bytes_out": l.bytes_out,
                    "age_s": l.age.as_secs_f64(),
                })
            })
            .collect();
        let v = json!({
            "node": node.id().to_string(),
            "links": st.links,
            "streams": st.streams,
            "list": list,
        });
        return Ok(format!("{v}\n"));
    }
    let rows: Vec<Vec<String>> = links
        .iter()
        .map(|l| {
            vec![
                peer(l),
                addr(l),
                l.rtt.map_or("-".to_string(), |r| {
                    format!("{:.2} ms", r.as_secs_f64() * 1e3)
                }),
                l.streams.to_string(),
                l.bytes_in.to_string(),
                l.bytes_out.to_string(),
                format!("{:.0} s", l.age.as_secs_f64()),
            ]
        })
        .collect();
    Ok(format!(
        "node {}: {} links, {} streams\n{}",
        node.id(),
        st.links,
        st.streams,
        table(
            &[
                "PEER",
                "ADDRESS",
                "RTT",
                "STREAMS",
                "BYTES IN",
                "BYTES OUT",
                "AGE"
            ],
            &rows
        ),
    ))
}

/// Left-aligned columns, two spaces apart.
fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(head.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
    out
}
