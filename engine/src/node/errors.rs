//! The `io::Error`s users see, built in one place.

use crate::proto::{ErrorCode, LinkError, StreamError};
use std::io;

/// The error for any operation on a node that was shut down.
pub fn node_gone() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "node is shut down")
}

/// Maps a stream failure to the `io::Error` users see.
pub(crate) fn stream_error(e: StreamError) -> io::Error {
    use io::ErrorKind as K;
    match e {
        StreamError::Reset(code) => {
            io::Error::new(code_kind(code), format!("stream reset by peer: {code}"))
        }
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
