//! TLS 1.3 on links (PROTOCOL.md §3.1): a node's certificate, whom it trusts, and the
//! rustls configurations its links are secured with.
//!
//! - [`TlsConfig`] is what users give: their certificate chain and key, and a trust
//!   form (a cluster CA, or a set of pinned peer certificates).
//! - [`TlsState`] is what links use: the rustls client and server configurations
//!   built from it, swapped as a whole when the node reloads its certificate, so a
//!   handshake always sees one consistent identity and trust.
//! - `verify` checks peer certificates (chain or pin, validity, EKU) and reads the node
//!   id they certify; `handshake` runs the handshake over a glommio socket; `announce`
//!   signs and verifies announcements with the same identity.
//!
//! A node's id is certified together with its key: the certificate carries the DNS
//! name `<16 lowercase hex digits>.node.astranet` (subject alternative name). A link
//! is refused unless the HELLO's node id is the one its certificate names.

mod announce;
mod handshake;
mod verify;

pub(crate) use handshake::{describe_transport_error, secure, TlsIo};

use crate::types::NodeId;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io;
use std::path::Path;
use std::sync::Arc;
use verify::NodeVerifier;

/// The ALPN protocol astranet links negotiate.
pub const ALPN: &[u8] = b"astranet/1";

/// The DNS name suffix that carries node ids in certificates.
pub const NODE_NAME_SUFFIX: &str = ".node.astranet";

/// The DNS name a node's certificate must carry: `<id>.node.astranet`.
///
/// ```
/// use astranet_engine::{node::tls_node_name, NodeId};
/// assert_eq!(tls_node_name(NodeId(0x1234)), "0000000000001234.node.astranet");
/// ```
pub fn node_name(id: NodeId) -> String {
    format!("{id}{NODE_NAME_SUFFIX}")
}

/// Whom a node trusts.
#[derive(Clone)]
pub(crate) enum Trust {
    /// Peers whose certificate chains to one of these CA certificates.
    Ca(Vec<CertificateDer<'static>>),
    /// Exactly these peer certificates (self-signed or not), nothing else.
    Pinned(Vec<CertificateDer<'static>>),
}

/// A node's TLS identity and trust: give it to `NodeBuilder::tls`.
///
/// Links then run TLS 1.3 with mutual authentication, and the node's id is the one
/// its certificate names (`<id>.node.astranet`). Two trust forms:
///
/// - [`TlsConfig::ca`]: a cluster CA signs every node's certificate; a node accepts
///   any peer whose certificate chains to the CA and is valid now.
/// - [`TlsConfig::pinned`]: small meshes without a CA; each node lists the exact
///   certificates (typically self-signed) of the peers it accepts.
///
/// Node certificates need both the serverAuth and clientAuth extended key usages
/// (every node both dials and accepts). `astranet cert ca` / `astranet cert node`
/// make suitable development certificates.
#[derive(Clone)]
pub struct TlsConfig {
    pub(crate) chain: Arc<Vec<CertificateDer<'static>>>,
    pub(crate) key: Arc<PrivateKeyDer<'static>>,
    pub(crate) trust: Trust,
    id: NodeId,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let trust = match &self.trust {
            Trust::Ca(c) => format!("ca({} certificates)", c.len()),
            Trust::Pinned(c) => format!("pinned({} peers)", c.len()),
        };
        f.debug_struct("TlsConfig")
            .field("id", &self.id)
            .field("trust", &trust)
            .finish_non_exhaustive()
    }
}

fn bad(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {e}"))
}

fn certs(pem: &[u8], what: &str) -> io::Result<Vec<CertificateDer<'static>>> {
    let v = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(what, e))?;
    if v.is_empty() {
        return Err(bad(what, "no PEM certificate found"));
    }
    Ok(v)
}

fn key(pem: &[u8]) -> io::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| bad("node key", e))
}

fn read(path: &Path, what: &str) -> io::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("reading the {what} {}: {e}", path.display()),
        )
    })
}

impl TlsConfig {
    /// Cluster-CA trust from PEM text: the CA certificate(s), this node's certificate
    /// chain (leaf first, then any intermediates) and its private key (PKCS#8,
    /// PKCS#1 or SEC1). Fails with `InvalidInput` if a part does not parse, the key
    /// does not match the certificate, the certificate names no node id, or it is
    /// not signed by the CA.
    ///
    /// ```
    /// # fn pems() -> (Vec<u8>, Vec<u8>, Vec<u8>) { unimplemented!() }
    /// # fn run() -> std::io::Result<()> {
    /// let (ca, cert, key) = pems();
    /// let tls = astranet_engine::node::TlsConfig::ca(&ca, &cert, &key)?;
    /// println!("this node is {}", tls.id());
    /// # Ok(()) }
    /// ```
    pub fn ca(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> io::Result<TlsConfig> {
        let ca = certs(ca_pem, "CA certificate")?;
        Self::new(
            certs(cert_pem, "node certificate")?,
            key(key_pem)?,
            Trust::Ca(ca),
        )
    }

    /// [`TlsConfig::ca`] from PEM files.
    pub fn ca_files(
        ca: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> io::Result<TlsConfig> {
        Self::ca(
            &read(ca.as_ref(), "CA certificate")?,
            &read(cert.as_ref(), "node certificate")?,
            &read(key.as_ref(), "node key")?,
        )
    }

    /// Pinned trust from PEM text: this node's certificate and key, and the exact
    /// certificates of the peers it accepts (any number, concatenated). A peer is
    /// accepted only if it presents one of them, valid now. Removing a certificate
    /// from the set (and [reloading](crate::NodeCore::reload_tls)) refuses that peer
    /// at its next handshake.
    pub fn pinned(cert_pem: &[u8], key_pem: &[u8], peers_pem: &[u8]) -> io::Result<TlsConfig> {
        let peers = CertificateDer::pem_slice_iter(peers_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("pinned peer certificates", e))?;
        Self::new(
            certs(cert_pem, "node certificate")?,
            key(key_pem)?,
            Trust::Pinned(peers),
        )
    }

    /// [`TlsConfig::pinned`] from PEM files: one for this node's certificate, one for
    /// its key, and any number of files of pinned peer certificates.
    pub fn pinned_files(
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
        peers: &[impl AsRef<Path>],
    ) -> io::Result<TlsConfig> {
        let mut all = Vec::new();
        for p in peers {
            all.extend(read(p.as_ref(), "pinned peer certificate")?);
            all.push(b'\n');
        }
        Self::pinned(
            &read(cert.as_ref(), "node certificate")?,
            &read(key.as_ref(), "node key")?,
            &all,
        )
    }

    fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        trust: Trust,
    ) -> io::Result<TlsConfig> {
        let id = verify::node_id_of(&chain[0]).map_err(|e| bad("node certificate", e))?;
        let cfg = TlsConfig {
            chain: Arc::new(chain),
            key: Arc::new(key),
            trust,
            id,
        };
        // Build once now, so every mistake shows at configuration time.
        cfg.build()?;
        Ok(cfg)
    }

    /// The node id this configuration's certificate names.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Whether trust is a pinned set (else a CA).
    pub fn is_pinned(&self) -> bool {
        matches!(self.trust, Trust::Pinned(_))
    }

    /// The rustls configurations for links.
    pub(crate) fn build(&self) -> io::Result<TlsState> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(NodeVerifier::new(&self.trust, &provider)?);
        if let Trust::Ca(_) = &self.trust {
            // Our own certificate must be one our peers (sharing the CA) accept.
            verifier
                .verify(
                    &self.chain[0],
                    &self.chain[1..],
                    rustls::pki_types::UnixTime::now(),
                    true,
                )
                .map_err(|e| {
                    let why = verify::explain(&e, false).replacen("peer's certificate", "it", 1);
                    bad("node certificate is refused by its own CA", why)
                })?;
        }
        let versions = &[&rustls::version::TLS13];
        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| bad("TLS", e))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_auth_cert(self.chain.to_vec(), self.key.clone_key())
            .map_err(|e| bad("node certificate and key", e))?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        // No SNI: a dialer expecting a node would otherwise name it in clear text.
        client.enable_sni = false;
        // Every link is fully authenticated (a resumed session would skip the
        // certificate check, and so a reload's new trust).
        client.resumption = rustls::client::Resumption::disabled();
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| bad("TLS", e))?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(self.chain.to_vec(), self.key.clone_key())
            .map_err(|e| bad("node certificate and key", e))?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        let auth = announce::CertAuth::new(self, &provider, verifier.clone())?;
        Ok(TlsState {
            pinned: self.is_pinned(),
            client: Arc::new(client),
            server: Arc::new(server),
            auth: Arc::new(auth),
        })
    }
}

/// What links are secured with, swapped whole on reload.
pub(crate) struct TlsState {
    pub(crate) pinned: bool,
    pub(crate) client: Arc<rustls::ClientConfig>,
    pub(crate) server: Arc<rustls::ServerConfig>,
    pub(crate) auth: Arc<announce::CertAuth>,
}

/// The node's identity as it is now, for discovery: every call loads the TLS state
/// current at that moment, so a reload (`NodeCore::reload_tls`) changes the key that
/// signs and the trust that verifies without rebuilding discovery.
pub(crate) struct CurrentIdentity(pub(crate) std::sync::Weak<super::NodeShared>);

impl CurrentIdentity {
    fn now(&self) -> Option<std::sync::Arc<dyn crate::node::auth::AnnounceAuth>> {
        self.0.upgrade().and_then(|n| n.announce_auth())
    }
}

impl crate::node::auth::AnnounceAuth for CurrentIdentity {
    fn credentials(&self) -> bytes::Bytes {
        self.now().map(|a| a.credentials()).unwrap_or_default()
    }

    fn sign(&self, msg: &[u8]) -> bytes::Bytes {
        self.now().map(|a| a.sign(msg)).unwrap_or_default()
    }

    fn verify_credentials(
        &self,
        origin: crate::types::NodeId,
        creds: &[u8],
    ) -> Result<std::sync::Arc<dyn crate::node::auth::OriginKey>, crate::node::auth::AuthError>
    {
        match self.now() {
            Some(a) => a.verify_credentials(origin, creds),
            None => Err(crate::node::auth::AuthError::Untrusted(
                "the node is shutting down".into(),
            )),
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Certificates minted for unit tests.
    use crate::types::NodeId;

    pub(crate) struct Ca {
        pub(crate) pem: String,
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    pub(crate) fn ca() -> Ca {
        let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(p, key),
        }
    }

    /// A node certificate and key (PEM) for `id`, signed by `ca` (self-signed if None).
    pub(crate) fn node(ca: Option<&Ca>, id: NodeId) -> (String, String) {
        let mut p = rcgen::CertificateParams::new(vec![super::node_name(id)]).unwrap();
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = match ca {
            Some(ca) => p.signed_by(&key, &ca.issuer).unwrap(),
            None => p.self_signed(&key).unwrap(),
        };
        (cert.pem(), key.serialize_pem())
    }
}
