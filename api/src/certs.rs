//! Development certificates for TLS links: a cluster CA and node certificates that
//! carry a node id, made with `rcgen` (what `astranet cert ca` / `astranet cert node`
//! write to disk).
//!
//! For production, issue node certificates from your own CA with the same two
//! properties: a DNS subject alternative name `<16 lowercase hex digits>.node.astranet`
//! naming the node id, and both the serverAuth and clientAuth extended key usages.
//!
//! ```
//! use astranet::certs::DevCa;
//! let ca = DevCa::generate()?;
//! let (a, b) = (astranet::NodeId(0xa), astranet::NodeId(0xb));
//! let server = astranet::Node::builder().shards(1).tls(ca.node_config(a)?).build()?;
//! let client = astranet::Node::builder().shards(1).tls(ca.node_config(b)?).build()?;
//! assert_eq!(server.id(), a);
//! let addr = server.listen("127.0.0.1:0")?;
//! client.join(&addr.to_string())?; // TLS 1.3, both sides authenticated
//! # Ok::<(), std::io::Error>(())
//! ```

use crate::{NodeId, TlsConfig};
use std::io;
use std::time::Duration;

fn err(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("certificate: {e}"))
}

/// A node certificate and its private key, PEM encoded.
#[derive(Clone)]
pub struct CertPair {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for CertPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertPair").finish_non_exhaustive()
    }
}

/// Parameters of a node certificate for `id`: its name and both EKUs.
fn node_params(id: NodeId, valid_for: Duration) -> io::Result<rcgen::CertificateParams> {
    let mut p = rcgen::CertificateParams::new(vec![astranet_engine::node::tls_node_name(id)])
        .map_err(err)?;
    p.distinguished_name
        .push(rcgen::DnType::CommonName, format!("astranet node {id}"));
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let now = time_now();
    p.not_before = now - time::Duration::minutes(5);
    p.not_after = now + time::Duration::try_from(valid_for).map_err(err)?;
    Ok(p)
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// A development cluster CA (ECDSA P-256).
pub struct DevCa {
    cert_pem: String,
    key_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

/// How long generated certificates are valid: CA 10 years, nodes 1 year.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
const NODE_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

impl DevCa {
    /// A new CA with a fresh key. Its name carries a random suffix, so two
    /// development CAs never look alike.
    pub fn generate() -> io::Result<DevCa> {
        let mut p = rcgen::CertificateParams::new(vec![]).map_err(err)?;
        let tag: u32 = rand_tag();
        p.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("astranet development CA {tag:08x}"),
        );
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let now = time_now();
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = now + time::Duration::try_from(CA_VALIDITY).map_err(err)?;
        let key = rcgen::KeyPair::generate().map_err(err)?;
        let cert = p.self_signed(&key).map_err(err)?;
        Ok(DevCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: rcgen::Issuer::new(p, key),
        })
    }

    /// A CA from its certificate and key (PEM), e.g. as `astranet cert ca` wrote them.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> io::Result<DevCa> {
        let key = rcgen::KeyPair::from_pem(key_pem).map_err(err)?;
        let issuer = rcgen::Issuer::from_ca_cert_pem(cert_pem, key).map_err(err)?;
        Ok(DevCa {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            issuer,
        })
    }

    /// The CA certificate (what every node trusts).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key (keep it off the nodes).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A node certificate for `id`, signed by this CA, valid for a year.
    pub fn node_cert(&self, id: NodeId) -> io::Result<CertPair> {
        self.node_cert_valid_for(id, NODE_VALIDITY)
    }

    /// A node certificate for `id` valid for `valid_for` from now.
    pub fn node_cert_valid_for(&self, id: NodeId, valid_for: Duration) -> io::Result<CertPair> {
        let key = rcgen::KeyPair::generate().map_err(err)?;
        let cert = node_params(id, valid_for)?
            .signed_by(&key, &self.issuer)
            .map_err(err)?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A [`TlsConfig`] for node `id` trusting this CA, with a fresh certificate.
    pub fn node_config(&self, id: NodeId) -> io::Result<TlsConfig> {
        let c = self.node_cert(id)?;
        TlsConfig::ca(
            self.cert_pem.as_bytes(),
            c.cert_pem.as_bytes(),
            c.key_pem.as_bytes(),
        )
    }
}

/// A self-signed certificate for node `id`, for pinned trust
/// ([`TlsConfig::pinned`]): valid for a year.
pub fn self_signed(id: NodeId) -> io::Result<CertPair> {
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let cert = node_params(id, NODE_VALIDITY)?
        .self_signed(&key)
        .map_err(err)?;
    Ok(CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn rand_tag() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}
