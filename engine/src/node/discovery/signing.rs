//! Signed announcements (PROTOCOL.md §11.5): what an origin signs, and how a
//! receiver checks it before it holds anything.
//!
//! An origin signs its whole state per version, not its diffs: a receiver applies a
//! diff to a copy of what it holds, checks the signature over the result, and only
//! then commits. So a router can forward diffs and answer REQUESTs with a full update
//! built from what it holds, and every node still checks the origin's own signature,
//! whichever path the state came by.

use super::Entry;
use crate::node::auth::{AnnounceAuth, AuthError, OriginKey};
use crate::proto::frame::ServicesSig;
use crate::types::NodeId;
use bytes::{BufMut, Bytes};
use std::fmt;
use std::sync::Arc;

/// Domain separation: a signature over announcements can't be taken for one over
/// anything else the key signs (TLS handshakes sign with their own contexts).
pub(crate) const DOMAIN: &[u8] = b"astranet-services-v1";

/// The bytes an origin signs for its state at `version`: [`DOMAIN`], origin (u64),
/// version (u64), entry count (u32), then each entry in ascending (env, name, port)
/// order as (u8 env_len, env, u8 name_len, name, u32 port). `entries` must come
/// sorted and without duplicates (a `BTreeSet`'s order).
pub(crate) fn message<'a>(
    origin: NodeId,
    version: u64,
    entries: impl ExactSizeIterator<Item = &'a Entry>,
    bytes: usize,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 20 + bytes);
    m.put_slice(DOMAIN);
    m.put_u64(origin.0);
    m.put_u64(version);
    m.put_u32(entries.len() as u32);
    for e in entries {
        // Names and envs are at most 255 bytes (PROTOCOL.md §11.1; the frame's u8
        // lengths enforce it for remote entries).
        m.put_u8(e.env.len() as u8);
        m.put_slice(&e.env);
        m.put_u8(e.name.len() as u8);
        m.put_slice(&e.name);
        m.put_u32(e.port);
    }
    m
}

/// What a held origin's state is verified by.
#[derive(Clone)]
pub(crate) struct Proof {
    pub(crate) key: Arc<dyn OriginKey>,
    /// The credentials `key` came from (forwarded in full updates, and compared with
    /// new ones so unchanged credentials are not verified again).
    pub(crate) creds: Bytes,
    /// The origin's signature over the state held.
    pub(crate) sig: Bytes,
}

impl Proof {
    pub(crate) fn wire(&self) -> ServicesSig {
        ServicesSig {
            signature: self.sig.clone(),
            credentials: self.creds.clone(),
        }
    }
}

/// Why an update was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reject {
    /// No signature, in a signed mesh.
    Unsigned,
    /// A full update without credentials, for an origin whose key we don't hold.
    NoCredentials,
    /// The credentials are untrusted or certify another node.
    Credentials(AuthError),
    /// The signature does not verify over the state the update produces.
    BadSignature,
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reject::Unsigned => f.write_str("unsigned update in a signed mesh"),
            Reject::NoCredentials => {
                f.write_str("full update without credentials for an origin whose key we lack")
            }
            Reject::Credentials(e) => write!(f, "{e}"),
            Reject::BadSignature => f.write_str(
                "signature does not verify over the state the update produces \
                 (forged, altered, or signed with a key we don't hold)",
            ),
        }
    }
}

/// Checks that `sig` is `origin`'s signature over `msg`, with the credentials it
/// carries or, when it carries none or the same ones, the key we hold. Verifying
/// credentials (a certificate chain) costs more than a signature, so unchanged ones
/// are not verified again.
pub(crate) fn verify(
    auth: &dyn AnnounceAuth,
    origin: NodeId,
    held: Option<&Proof>,
    sig: Option<&ServicesSig>,
    msg: &[u8],
) -> Result<Proof, Reject> {
    let sig = sig.ok_or(Reject::Unsigned)?;
    let (key, creds) = match held {
        Some(p) if sig.credentials.is_empty() || sig.credentials == p.creds => {
            (p.key.clone(), p.creds.clone())
        }
        _ if sig.credentials.is_empty() => return Err(Reject::NoCredentials),
        _ => (
            auth.verify_credentials(origin, &sig.credentials)
                .map_err(Reject::Credentials)?,
            sig.credentials.clone(),
        ),
    };
    if !key.verify(msg, &sig.signature) {
        return Err(Reject::BadSignature);
    }
    Ok(Proof {
        key,
        creds,
        sig: sig.signature.clone(),
    })
}
