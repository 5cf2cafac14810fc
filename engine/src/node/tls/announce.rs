//! The node's TLS identity as discovery's signer and verifier ([`AnnounceAuth`]):
//! credentials are the certificate chain, signatures are made with the node's key
//! and checked against the certificate's public key.
//!
//! Encodings (PROTOCOL.md §3.1):
//! - credentials: `count:u8`, then per certificate `len:u32` (big endian) and its DER,
//!   leaf first;
//! - signature: `scheme:u16` (the TLS SignatureScheme, big endian), then the
//!   signature over `"astranet-announce-v1:" || msg` (domain separation: a signature
//!   made here is never valid anywhere else).

use super::verify::NodeVerifier;
use super::TlsConfig;
use crate::node::auth::{AnnounceAuth, AuthError, OriginKey};
use crate::types::NodeId;
use bytes::{BufMut, Bytes, BytesMut};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::sign::Signer;
use rustls::SignatureScheme;
use std::io;
use std::sync::Arc;

const DOMAIN: &[u8] = b"astranet-announce-v1:";
/// Most certificates in credentials, and the largest one.
const MAX_CERTS: usize = 5;
const MAX_CERT_LEN: usize = 16 * 1024;

pub(crate) struct CertAuth {
    creds: Bytes,
    signer: Box<dyn Signer>,
    verifier: Arc<NodeVerifier>,
    algs: WebPkiSupportedAlgorithms,
}

impl CertAuth {
    pub(crate) fn new(
        cfg: &TlsConfig,
        provider: &CryptoProvider,
        verifier: Arc<NodeVerifier>,
    ) -> io::Result<CertAuth> {
        let key = provider
            .key_provider
            .load_private_key(cfg.key.clone_key())
            .map_err(|e| super::bad("node key", e))?;
        let signer = key
            .choose_scheme(&[
                SignatureScheme::ED25519,
                SignatureScheme::ECDSA_NISTP256_SHA256,
                SignatureScheme::ECDSA_NISTP384_SHA384,
                SignatureScheme::RSA_PSS_SHA256,
            ])
            .ok_or_else(|| super::bad("node key", "no signature scheme for this key type"))?;
        let mut creds = BytesMut::new();
        creds.put_u8(cfg.chain.len().min(MAX_CERTS) as u8);
        for c in cfg.chain.iter().take(MAX_CERTS) {
            creds.put_u32(c.len() as u32);
            creds.put_slice(c);
        }
        if creds.len() > crate::proto::frame::MAX_CREDENTIALS_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the certificate chain takes {} bytes, more than a signed announcement carries ({}): configure the node certificate without its CA, or a smaller key",
                    creds.len(),
                    crate::proto::frame::MAX_CREDENTIALS_LEN
                ),
            ));
        }
        Ok(CertAuth {
            creds: creds.freeze(),
            signer,
            verifier,
            algs: provider.signature_verification_algorithms,
        })
    }
}

fn decode(mut b: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let (&n, rest) = b.split_first().ok_or("empty credentials")?;
    b = rest;
    if n == 0 || n as usize > MAX_CERTS {
        return Err(format!(
            "credentials hold {n} certificates (1..={MAX_CERTS})"
        ));
    }
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        if b.len() < 4 {
            return Err("credentials truncated".into());
        }
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        b = &b[4..];
        if len > MAX_CERT_LEN || len > b.len() {
            return Err("certificate length out of range".into());
        }
        out.push(CertificateDer::from(b[..len].to_vec()));
        b = &b[len..];
    }
    if !b.is_empty() {
        return Err("trailing bytes after the certificates".into());
    }
    Ok(out)
}

impl AnnounceAuth for CertAuth {
    fn credentials(&self) -> Bytes {
        self.creds.clone()
    }

    fn sign(&self, msg: &[u8]) -> Bytes {
        let mut m = Vec::with_capacity(DOMAIN.len() + msg.len());
        m.extend_from_slice(DOMAIN);
        m.extend_from_slice(msg);
        let mut out = BytesMut::new();
        out.put_u16(u16::from(self.signer.scheme()));
        // Signing with a loaded key fails only on a broken provider: an empty
        // signature then fails verification everywhere (and says so in the log).
        match self.signer.sign(&m) {
            Ok(s) => out.put_slice(&s),
            Err(e) => tracing::error!(error = %e, "signing an announcement failed"),
        }
        out.freeze()
    }

    fn verify_credentials(
        &self,
        origin: NodeId,
        creds: &[u8],
    ) -> Result<Arc<dyn OriginKey>, AuthError> {
        let chain = decode(creds).map_err(AuthError::Untrusted)?;
        let id = self
            .verifier
            .verify(&chain[0], &chain[1..], UnixTime::now(), true)
            .map_err(|e| {
                AuthError::Untrusted(super::verify::explain(&e, self.verifier.is_pinned()))
            })?;
        if id != origin {
            return Err(AuthError::WrongOrigin(id));
        }
        Ok(Arc::new(CertKey {
            cert: chain.into_iter().next().expect("one certificate at least"),
            algs: self.algs,
        }))
    }
}

/// An origin's certificate, whose public key checks its signatures.
struct CertKey {
    cert: CertificateDer<'static>,
    algs: WebPkiSupportedAlgorithms,
}

impl OriginKey for CertKey {
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Some((scheme, sig)) = sig.split_first_chunk::<2>() else {
            return false;
        };
        let scheme = SignatureScheme::from(u16::from_be_bytes(*scheme));
        let Ok(cert) = webpki::EndEntityCert::try_from(&self.cert) else {
            return false;
        };
        let Some((_, algs)) = self.algs.mapping.iter().find(|(s, _)| *s == scheme) else {
            return false;
        };
        let mut m = Vec::with_capacity(DOMAIN.len() + msg.len());
        m.extend_from_slice(DOMAIN);
        m.extend_from_slice(msg);
        algs.iter()
            .any(|alg| cert.verify_signature(*alg, &m, sig).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ca, node};
    use super::*;

    fn auth(cfg: &TlsConfig) -> Arc<CertAuth> {
        cfg.build().unwrap().auth
    }

    #[test]
    fn sign_then_verify_and_the_refusals() {
        let ca1 = ca();
        let (a, b) = (NodeId(0xa), NodeId(0xb));
        let (ca_cert, ca_key) = node(Some(&ca1), a);
        let (cb_cert, cb_key) = node(Some(&ca1), b);
        let na = TlsConfig::ca(ca1.pem.as_bytes(), ca_cert.as_bytes(), ca_key.as_bytes()).unwrap();
        let nb = TlsConfig::ca(ca1.pem.as_bytes(), cb_cert.as_bytes(), cb_key.as_bytes()).unwrap();
        let (aa, ab) = (auth(&na), auth(&nb));

        // A signs; B verifies with A's credentials.
        let msg = b"services of a, version 7";
        let sig = aa.sign(msg);
        let key = ab.verify_credentials(a, &aa.credentials()).unwrap();
        assert!(key.verify(msg, &sig));
        // Altered message or signature: refused.
        assert!(!key.verify(b"services of a, version 8", &sig));
        let mut bad = sig.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(!key.verify(msg, &bad));
        assert!(!key.verify(msg, &[]));
        // Signed by another key (B's), presented as A's: refused.
        assert!(!key.verify(msg, &ab.sign(msg)));
        // A's credentials for another origin: WrongOrigin naming A.
        match ab.verify_credentials(b, &aa.credentials()) {
            Err(AuthError::WrongOrigin(id)) => assert_eq!(id, a),
            Err(e) => panic!("expected WrongOrigin, got {e}"),
            Ok(_) => panic!("expected WrongOrigin, got a key"),
        }
        // A certificate from another CA: Untrusted.
        let ca2 = ca();
        let (c2, k2) = node(Some(&ca2), a);
        let other = TlsConfig::ca(ca2.pem.as_bytes(), c2.as_bytes(), k2.as_bytes()).unwrap();
        match ab.verify_credentials(a, &auth(&other).credentials()) {
            Err(AuthError::Untrusted(why)) => assert!(why.contains("cluster CA"), "{why}"),
            _ => panic!("expected Untrusted"),
        }
        // Garbage credentials: Untrusted, no panic.
        for junk in [&[][..], &[1], &[1, 0, 0, 0, 9, 1], &[9; 40]] {
            assert!(matches!(
                ab.verify_credentials(a, junk),
                Err(AuthError::Untrusted(_))
            ));
        }
    }

    #[test]
    fn pinned_credentials_verify_only_when_pinned() {
        let (a, b) = (NodeId(0xa), NodeId(0xb));
        let (ca_cert, ca_key) = node(None, a);
        let (cb_cert, cb_key) = node(None, b);
        let na =
            TlsConfig::pinned(ca_cert.as_bytes(), ca_key.as_bytes(), cb_cert.as_bytes()).unwrap();
        let nb =
            TlsConfig::pinned(cb_cert.as_bytes(), cb_key.as_bytes(), ca_cert.as_bytes()).unwrap();
        let (aa, ab) = (auth(&na), auth(&nb));
        let sig = aa.sign(b"m");
        assert!(ab
            .verify_credentials(a, &aa.credentials())
            .unwrap()
            .verify(b"m", &sig));
        // B does not pin itself: its own credentials are untrusted at B.
        match ab.verify_credentials(b, &ab.credentials()) {
            Err(AuthError::Untrusted(why)) => assert!(why.contains("pinned"), "{why}"),
            _ => panic!("expected Untrusted"),
        }
    }
}
