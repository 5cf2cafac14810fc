//! Checking a peer's certificate: chained to the cluster CA or exactly one of the
//! pinned certificates, valid now, with the right extended key usage, naming exactly
//! one node id. Used by both TLS sides and by announcement verification.

use super::{Trust, NODE_NAME_SUFFIX};
use crate::types::NodeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError};
use std::io;
use std::sync::Arc;

/// At most this many intermediates in a peer's chain.
const MAX_INTERMEDIATES: usize = 4;

/// The node id a certificate names (`<16 lowercase hex>.node.astranet`).
pub(crate) fn node_id_of(der: &CertificateDer<'_>) -> Result<NodeId, String> {
    let cert = webpki::EndEntityCert::try_from(der)
        .map_err(|e| format!("certificate does not parse: {e}"))?;
    let mut found: Option<NodeId> = None;
    for name in cert.valid_dns_names() {
        let Some(hex) = name.strip_suffix(NODE_NAME_SUFFIX) else {
            continue;
        };
        let id = hex
            .parse::<NodeId>()
            .ok()
            .filter(|id| id.0 != 0 && *hex == id.to_string())
            .ok_or_else(|| {
                format!(
                    "certificate name {name:?} is not <16 lowercase hex digits>{NODE_NAME_SUFFIX}"
                )
            })?;
        match found {
            Some(f) if f != id => {
                return Err(format!(
                    "certificate names two node ids ({f} and {id}); it must name one"
                ))
            }
            _ => found = Some(id),
        }
    }
    found.ok_or_else(|| {
        format!(
            "certificate names no node id (expected a DNS subject alternative name \
             <16 hex digits>{NODE_NAME_SUFFIX})"
        )
    })
}

fn other(msg: String) -> rustls::Error {
    #[derive(Debug)]
    struct Msg(String);
    impl std::fmt::Display for Msg {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Msg {}
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Msg(msg)))))
}

/// webpki's verdict as the rustls error (which picks the TLS alert the peer gets).
fn pki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    let c = match e {
        E::BadDer | E::BadDerTime | E::TrailingData(_) => CertificateError::BadEncoding,
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::RequiredEkuNotFoundContext(_) => {
            return other(
                "certificate lacks the extended key usage this side needs (node \
                 certificates need both serverAuth and clientAuth)"
                    .into(),
            )
        }
        e => return other(format!("certificate refused: {e}")),
    };
    rustls::Error::InvalidCertificate(c)
}

/// A person-readable reason for a certificate refusal, local or from the peer.
pub(crate) fn explain(e: &rustls::Error, pinned: bool) -> String {
    use rustls::AlertDescription as A;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer if pinned => {
                "peer's certificate is not in this node's pinned set".into()
            }
            // A CA of the same name but another key fails its signature check.
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                "peer's certificate is not signed by this node's cluster CA (wrong CA?)".into()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "peer's certificate has expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "peer's certificate is not valid yet (check the clocks)".into()
            }
            CertificateError::Other(o) => format!("peer's {o}"),
            c => format!("peer's certificate refused: {c:?}"),
        },
        rustls::Error::AlertReceived(
            a @ (A::UnknownCA
            | A::BadCertificate
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::CertificateRevoked
            | A::UnsupportedCertificate
            | A::AccessDenied
            | A::CertificateRequired),
        ) => format!(
            "peer refused this node's certificate (TLS alert {a:?}): check that it is \
             signed by the peer's cluster CA or in its pinned set, names this node's id, \
             and is not expired"
        ),
        rustls::Error::AlertReceived(a) => format!("peer ended the TLS handshake (alert {a:?})"),
        rustls::Error::NoApplicationProtocol => {
            "peer does not speak astranet/1 over TLS (ALPN)".into()
        }
        e => format!("TLS handshake failed: {e}"),
    }
}

/// The trust store, in the form webpki checks against.
#[derive(Debug)]
pub(crate) struct NodeVerifier {
    anchors: Vec<TrustAnchor<'static>>,
    /// Pinned mode: the exact certificates accepted.
    pinned: Option<Vec<CertificateDer<'static>>>,
    algs: WebPkiSupportedAlgorithms,
}

impl NodeVerifier {
    pub(crate) fn new(trust: &Trust, provider: &CryptoProvider) -> io::Result<NodeVerifier> {
        let (certs, pinned) = match trust {
            Trust::Ca(c) => (c, None),
            Trust::Pinned(c) => (c, Some(c.clone())),
        };
        let mut anchors = Vec::with_capacity(certs.len());
        for c in certs {
            let a = webpki::anchor_from_trusted_cert(c).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("trusted certificate does not parse: {e}"),
                )
            })?;
            anchors.push(a.to_owned());
        }
        Ok(NodeVerifier {
            anchors,
            pinned,
            algs: provider.signature_verification_algorithms,
        })
    }

    #[allow(dead_code)] // Used by announcement verification.
    pub(crate) fn is_pinned(&self) -> bool {
        self.pinned.is_some()
    }

    /// Checks a peer's chain; returns the node id it certifies. `server`: the peer is
    /// the TLS server (so its certificate needs serverAuth), else clientAuth.
    pub(crate) fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        server: bool,
    ) -> Result<NodeId, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        let intermediates = match &self.pinned {
            Some(p) => {
                if !p.iter().any(|c| c == end_entity) {
                    return Err(rustls::Error::InvalidCertificate(
                        CertificateError::UnknownIssuer,
                    ));
                }
                // A pinned certificate stands alone.
                &[][..]
            }
            None if intermediates.len() > MAX_INTERMEDIATES => {
                return Err(other(format!(
                    "certificate chain has more than {MAX_INTERMEDIATES} intermediates"
                )))
            }
            None => intermediates,
        };
        let usage = if server {
            webpki::KeyUsage::server_auth()
        } else {
            webpki::KeyUsage::client_auth()
        };
        cert.verify_for_usage(
            self.algs.all,
            &self.anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(pki_error)?;
        node_id_of(end_entity).map_err(other)
    }
}

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = self.verify(end_entity, intermediates, now, true)?;
        // A dialer that expects a node (direct upgrade) names it; joins by address
        // name no one and learn the id from the certificate.
        if let ServerName::DnsName(n) = server_name {
            let want = n.as_ref().strip_suffix(NODE_NAME_SUFFIX).unwrap_or("");
            if want != id.to_string() {
                return Err(other(format!(
                    "certificate is for node {id}, but node {want} was expected"
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is enabled.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ClientCertVerifier for NodeVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now, false)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}
