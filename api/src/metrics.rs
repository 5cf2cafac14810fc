//! A node's figures through the [`metrics`](https://docs.rs/metrics) facade, so any
//! exporter (Prometheus, StatsD, ...) installed by the application publishes them.
//! `astranet node --metrics ADDR` serves them as Prometheus text.
//!
//! Series (every one labelled `node` with the node id):
//!
//! | name | kind | what |
//! |---|---|---|
//! | `astranet_links` | gauge | links to other nodes |
//! | `astranet_links_handshaking` | gauge | of which in their handshake |
//! | `astranet_streams` | gauge | streams holding state |
//! | `astranet_relaying` | gauge | relayed streams in flight |
//! | `astranet_origins`, `astranet_service_entries`, `astranet_routes` | gauge | discovery and routing state |
//! | `astranet_bytes_in_total`, `astranet_bytes_out_total` | counter | link bytes |
//! | `astranet_frames_in_total`, `astranet_frames_out_total` | counter | link frames |
//! | `astranet_streams_opened_total` | counter | streams dialed or accepted |
//! | `astranet_refused_opens_total` | counter | peers' streams refused |
//! | `astranet_resets_total` (label `code`) | counter | resets received, by error code |
//! | `astranet_relayed_streams_total`, `astranet_relayed_bytes_total` | counter | relaying |
//! | `astranet_limit_hits_total` | counter | times a peer hit one of the node's limits |
//! | `astranet_rejected_announcements_total` | counter | SERVICES updates rejected: not signed by their origin |
//! | `astranet_link_rtt_seconds` (label `peer`) | gauge | keep-alive round-trip time per link |

use crate::Node;
use ::metrics::{counter, gauge};
use std::io;

/// Records the node's figures once, through the `metrics` facade (a no-op until the
/// application installs a recorder).
///
/// ```
/// let node = astranet::Node::builder().shards(1).build()?;
/// astranet::metrics::record(&node)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn record(node: &Node) -> io::Result<()> {
    let s = node.stats()?;
    let id = node.id().to_string();
    let g = |name: &'static str, v: usize| gauge!(name, "node" => id.clone()).set(v as f64);
    g("astranet_links", s.links);
    g("astranet_links_handshaking", s.handshaking);
    g("astranet_streams", s.streams);
    g("astranet_relaying", s.relaying);
    g("astranet_origins", s.origins);
    g("astranet_service_entries", s.service_entries);
    g("astranet_routes", s.routes);
    let c = |name: &'static str, v: u64| counter!(name, "node" => id.clone()).absolute(v);
    c("astranet_bytes_in_total", s.bytes_in);
    c("astranet_bytes_out_total", s.bytes_out);
    c("astranet_frames_in_total", s.frames_in);
    c("astranet_frames_out_total", s.frames_out);
    c("astranet_streams_opened_total", s.streams_opened);
    c("astranet_refused_opens_total", s.refused_opens);
    c("astranet_relayed_streams_total", s.relayed_streams);
    c("astranet_relayed_bytes_total", s.relayed_bytes);
    c("astranet_limit_hits_total", s.limit_hits);
    c(
        "astranet_rejected_announcements_total",
        s.rejected_announcements,
    );
    for (code, n) in &s.resets_by_code {
        counter!("astranet_resets_total", "node" => id.clone(), "code" => code.to_string())
            .absolute(*n);
    }
    for l in node.links()? {
        if let (Some(peer), Some(rtt)) = (l.peer, l.rtt) {
            gauge!("astranet_link_rtt_seconds", "node" => id.clone(), "peer" => peer.to_string())
                .set(rtt.as_secs_f64());
        }
    }
    Ok(())
}

/// Records the node's figures every `every` until the node shuts down (then returns
/// its error). Spawn it on a tokio runtime; dropping the future stops it (cancel-safe).
#[cfg(feature = "tokio")]
pub async fn publish(node: Node, every: std::time::Duration) -> io::Result<()> {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        record(&node)?;
    }
}
