//! The sans-IO protocol core: frames, stream and link state machines.
//!
//! Nothing here touches a socket, a thread or a clock: the caller feeds bytes and the
//! current time in and takes bytes and [`Event`]s out. `PROTOCOL.md` at the repository
//! root is the specification this code implements.

mod bufqueue;
pub mod frame;
mod link;
mod stream;
mod txbuf;

pub use bufqueue::BufQueue;
pub use frame::{
    ErrorCode, Frame, FrameError, OpenHeader, RouteEntry, ServiceOp, ServicesUpdate, StreamId,
};
pub use link::{Counters, Event, Link, LinkConfig, LinkError, PeerInfo, Recv, StreamError};
pub use txbuf::{FrameSink, TxBuf, GATHER_MIN};
