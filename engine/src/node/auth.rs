//! What discovery needs from a node's identity to sign its own announcements and
//! verify other origins' (issue 10, "signed announcements").
//!
//! Implemented by the TLS identity (the node's certificate and key) and, in unit
//! tests, by test doubles. Discovery stays a pure state machine: it calls these
//! methods and never touches files, clocks or sockets itself.

use crate::types::NodeId;
use bytes::Bytes;
use std::sync::Arc;

/// Why an origin's credentials or signature were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    /// The credentials are malformed, untrusted (wrong CA, not pinned) or expired.
    #[error("untrusted credentials: {0}")]
    Untrusted(String),
    /// The credentials are valid but certify another node.
    #[error("credentials are for node {0}, not for the announcement's origin")]
    WrongOrigin(NodeId),
}

/// A verified origin's public key.
pub(crate) trait OriginKey: Send + Sync {
    /// True if `sig` is this key's signature over `msg`.
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool;
}

/// Signs this node's announcements and verifies other origins' credentials.
pub(crate) trait AnnounceAuth: Send + Sync {
    /// This node's credentials (its certificate chain, encoded), carried with its
    /// announcements so that nodes it never linked with can verify them.
    fn credentials(&self) -> Bytes;
    /// This node's signature over `msg`, with its current key.
    fn sign(&self, msg: &[u8]) -> Bytes;
    /// Checks `creds` against the node's trust (cluster CA or pinned set, validity
    /// period) and that they certify `origin`; returns the key to verify its
    /// signatures with.
    fn verify_credentials(
        &self,
        origin: NodeId,
        creds: &[u8],
    ) -> Result<Arc<dyn OriginKey>, AuthError>;
}

// So that the node's settings, which hold one, can be printed.
impl std::fmt::Debug for dyn AnnounceAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnnounceAuth")
    }
}
