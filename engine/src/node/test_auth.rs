//! A stand-in for the TLS identity behind [`AnnounceAuth`], for unit tests, the
//! `control_plane` fuzz target and end-to-end tests of signed discovery without
//! certificates. Not secure and not meant to be: a "signature" is a keyed hash.
//!
//! Model: a mesh shares a `seed` (its "cluster CA"). A node's credentials name its id
//! and key generation and carry a tag only the seed makes (its "certificate"); its
//! secret key is derived from the seed, its id and the generation. A router that
//! does not use the seed cannot forge another origin's credentials or signatures, so
//! the tests' attackers, which never do, are in the position of a router without the
//! origin's private key.

use super::auth::{AnnounceAuth, AuthError, OriginKey};
use crate::types::NodeId;
use bytes::{BufMut, Bytes, BytesMut};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

const TAG: &[u8; 8] = b"testcred";
const CREDS_LEN: usize = 8 + 8 + 4 + 8;

fn mac(parts: &[&[u8]]) -> u64 {
    // SipHash with fixed keys: deterministic within a build, which is all a test
    // double needs.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}

fn secret(seed: u64, node: NodeId, generation: u32) -> u64 {
    mac(&[
        b"key",
        &seed.to_be_bytes(),
        &node.0.to_be_bytes(),
        &generation.to_be_bytes(),
    ])
}

fn sign_with(secret: u64, msg: &[u8]) -> Bytes {
    Bytes::copy_from_slice(&mac(&[b"sig", &secret.to_be_bytes(), msg]).to_be_bytes())
}

/// Test-double identity of one node (see the module docs). Cloning shares the key
/// generation, so [`TestAuth::rotate`] on a clone rotates the node's key.
#[derive(Clone, Debug)]
pub struct TestAuth {
    seed: u64,
    me: NodeId,
    generation: Arc<AtomicU32>,
}

impl TestAuth {
    /// The identity of node `me` in the mesh of `seed`.
    pub fn new(seed: u64, me: u64) -> Self {
        Self {
            seed,
            me: NodeId(me),
            generation: Arc::new(AtomicU32::new(1)),
        }
    }

    /// A new key (and credentials) for the same node, as a certificate reload does.
    pub fn rotate(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    fn creds(&self, generation: u32) -> Bytes {
        let mut b = BytesMut::with_capacity(CREDS_LEN);
        b.put_slice(TAG);
        b.put_u64(self.me.0);
        b.put_u32(generation);
        b.put_u64(mac(&[
            b"cert",
            &self.seed.to_be_bytes(),
            &self.me.0.to_be_bytes(),
            &generation.to_be_bytes(),
        ]));
        b.freeze()
    }

    /// This node's credentials (see [`AnnounceAuth::credentials`]).
    pub fn credentials_bytes(&self) -> Bytes {
        self.creds(self.generation.load(Ordering::Relaxed))
    }

    /// This node's signature over `msg` (see [`AnnounceAuth::sign`]).
    pub fn sign_bytes(&self, msg: &[u8]) -> Bytes {
        let g = self.generation.load(Ordering::Relaxed);
        sign_with(secret(self.seed, self.me, g), msg)
    }
}

struct TestKey(u64);

impl OriginKey for TestKey {
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        sign_with(self.0, msg) == sig
    }
}

impl AnnounceAuth for TestAuth {
    fn credentials(&self) -> Bytes {
        self.credentials_bytes()
    }

    fn sign(&self, msg: &[u8]) -> Bytes {
        self.sign_bytes(msg)
    }

    fn verify_credentials(
        &self,
        origin: NodeId,
        creds: &[u8],
    ) -> Result<Arc<dyn OriginKey>, AuthError> {
        if creds.len() != CREDS_LEN || &creds[..8] != TAG {
            return Err(AuthError::Untrusted("not test credentials".into()));
        }
        let node = NodeId(u64::from_be_bytes(
            creds[8..16].try_into().unwrap_or_default(),
        ));
        let generation = u32::from_be_bytes(creds[16..20].try_into().unwrap_or_default());
        let issuer = TestAuth {
            seed: self.seed,
            me: node,
            generation: Arc::default(),
        };
        if issuer.creds(generation) != creds {
            return Err(AuthError::Untrusted(
                "not issued by this mesh's seed".into(),
            ));
        }
        if node != origin {
            return Err(AuthError::WrongOrigin(node));
        }
        Ok(Arc::new(TestKey(secret(self.seed, node, generation))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_double_verifies_its_own_and_refuses_the_rest() {
        let a = TestAuth::new(5, 7);
        let b = TestAuth::new(5, 8);
        let key = b.verify_credentials(NodeId(7), &a.credentials()).unwrap();
        assert!(key.verify(b"m", &a.sign(b"m")));
        assert!(!key.verify(b"n", &a.sign(b"m")));
        assert!(!key.verify(b"m", &b.sign(b"m")));
        assert_eq!(
            b.verify_credentials(NodeId(9), &a.credentials()).err(),
            Some(AuthError::WrongOrigin(NodeId(7)))
        );
        let other_mesh = TestAuth::new(6, 7);
        assert!(matches!(
            b.verify_credentials(NodeId(7), &other_mesh.credentials()),
            Err(AuthError::Untrusted(_))
        ));
        // Rotation: new credentials, and the old key no longer verifies.
        a.rotate();
        assert!(!key.verify(b"m", &a.sign(b"m")));
        let key2 = b.verify_credentials(NodeId(7), &a.credentials()).unwrap();
        assert!(key2.verify(b"m", &a.sign(b"m")));
    }
}
