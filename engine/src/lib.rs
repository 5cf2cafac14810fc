//! The astranet engine.
//!
//! - [`proto`]: the sans-IO protocol core (codec, link and stream state machines,
//!   flow control, keep-alive), specified in `PROTOCOL.md`.
//! - [`node`]: the thread-per-core runtime around it (glommio shards, links, handles).

#![warn(missing_docs)]

pub mod node;
pub mod proto;
mod types;

pub use node::{
    wait_timeout, Chunks, Incoming, ListenerRef, NodeConfig, NodeCore, Role, RouteEvent, RouteInfo,
    ServiceEvent, ServiceInfo, StreamRef, Wait,
};
pub use types::{valid_name, Addr, BindSpec, NodeId, ParseError, Target};
