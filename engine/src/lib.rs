//! The astranet engine.
//!
//! - [`proto`]: the sans-IO protocol core (codec, link and stream state machines,
//!   flow control, keep-alive), specified in `PROTOCOL.md`.
//! - [`node`]: the thread-per-core runtime around it (glommio shards, links, handles,
//!   and the control plane: routing and discovery).

#![warn(missing_docs)]

pub mod node;
pub mod proto;
mod types;

pub use node::{
    block_on_until, node_gone, wait_timeout, Chunks, Incoming, Limits, LinkInfo, ListenerRef,
    NodeConfig, NodeCore, NodeStats, Role, RouteEvent, RouteInfo, Rx, ServiceEvent, ServiceInfo,
    StreamRef, TlsConfig, Wait, MAX_STAGED, MAX_WRITE,
};
pub use node::{LocalDialed, LocalListener, LocalShard, LocalStream, StreamReset};
pub use types::{valid_name, Addr, BindSpec, NodeId, ParseError, Target};
