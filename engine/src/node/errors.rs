//! The `io::Error`s users see, built in one place.

use crate::proto::{ErrorCode, LinkError, StreamError};
use std::io;

/// The error for any operation on a node that was shut down.
pub fn node_gone() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "node is shut down")
}

/// What an `io::Error` for a stream reset by its peer carries: the reset code
/// (`io::Error::get_ref` and `downcast_ref` get it back).
///
/// ```
/// use astranet_engine::{proto::ErrorCode, StreamReset};
/// let e = std::io::Error::new(std::io::ErrorKind::ConnectionReset, StreamReset(ErrorCode::CANCELLED));
/// let code = e.get_ref().and_then(|i| i.downcast_ref::<StreamReset>()).map(|r| r.0);
/// assert_eq!(code, Some(ErrorCode::CANCELLED));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamReset(pub ErrorCode);

impl std::fmt::Display for StreamReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stream reset by peer: {}", self.0)
    }
}

impl std::error::Error for StreamReset {}

/// The reset code an `io::Error` from a stream carries, if the stream was reset.
pub(crate) fn reset_code(e: &io::Error) -> Option<ErrorCode> {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<StreamReset>())
        .map(|r| r.0)
}

/// Maps a stream failure to the `io::Error` users see.
pub(crate) fn stream_error(e: StreamError) -> io::Error {
    use io::ErrorKind as K;
    match e {
        StreamError::Reset(code) => io::Error::new(code_kind(code), StreamReset(code)),
        StreamError::Finished => io::Error::new(K::BrokenPipe, "write after shutdown_write"),
        StreamError::LinkLost(e) => link_error(&e),
        StreamError::Unknown => io::Error::new(K::NotConnected, "stream is closed"),
        StreamError::NotReady => io::Error::new(K::NotConnected, "link not ready"),
        StreamError::Limit => io::Error::new(K::WouldBlock, "peer's stream limit reached"),
        StreamError::GoingAway => {
            io::Error::new(K::ConnectionAborted, "link is shutting down (GOAWAY)")
        }
        StreamError::IdsExhausted => io::Error::new(K::AddrNotAvailable, "stream ids exhausted"),
    }
}

/// The `io::ErrorKind` a reset code surfaces as.
pub(crate) fn code_kind(code: ErrorCode) -> io::ErrorKind {
    use io::ErrorKind as K;
    match code {
        ErrorCode::REFUSED | ErrorCode::LIMIT_EXCEEDED => K::ConnectionRefused,
        ErrorCode::NOT_FOUND => K::NotFound,
        ErrorCode::LINK_LOST => K::ConnectionAborted,
        ErrorCode::NO_ROUTE | ErrorCode::HOP_LIMIT | ErrorCode::NOT_ROUTER => K::HostUnreachable,
        _ => K::ConnectionReset,
    }
}

pub(crate) fn link_error(e: &LinkError) -> io::Error {
    if let LinkError::Refused(why) = e {
        return io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("link refused: {why}"),
        );
    }
    let kind = match e {
        LinkError::Timeout(_) | LinkError::WriteStall(_) => io::ErrorKind::TimedOut,
        LinkError::Handshake(_) | LinkError::Frame(_) | LinkError::Protocol(_) => {
            io::ErrorKind::InvalidData
        }
        _ => io::ErrorKind::ConnectionAborted,
    };
    io::Error::new(kind, format!("link lost: {e}"))
}

pub(crate) fn not_found(target: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("no service {target:?} is known"),
    )
}
