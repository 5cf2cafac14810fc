//! A raw TLS client for hostile tests: it presents a certificate of our choosing and
//! accepts whatever the node presents, so a test sees what the node does with a peer
//! it authenticates. [`tls_bridge`] puts a [`super::raw::RawPeer`] on such a link, to
//! speak frames by hand as a cluster member holding a valid certificate.
#![allow(dead_code)]

use astranet::certs::{CertPair, DevCa};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// Cluster-CA trust for the node holding `c`.
pub fn ca_config(ca: &DevCa, c: &CertPair) -> astranet::TlsConfig {
    astranet::TlsConfig::ca(
        ca.cert_pem().as_bytes(),
        c.cert_pem.as_bytes(),
        c.key_pem.as_bytes(),
    )
    .expect("tls config")
}

pub fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("certificate")
}

/// Accepts any server certificate: the raw client plays a peer that does not care
/// whom it talks to, to see what the node does with what it presents.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2".into()))
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub type RawTls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS client presenting `me`, handshake done.
pub fn raw_tls(addr: &str, me: &CertPair) -> io::Result<RawTls> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(
            vec![der(&me.cert_pem)],
            PrivateKeyDer::from_pem_slice(me.key_pem.as_bytes()).map_err(io::Error::other)?,
        )
        .map_err(io::Error::other)?;
    cfg.alpn_protocols = vec![b"astranet/1".to_vec()];
    let sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    sock.set_write_timeout(Some(Duration::from_secs(5)))?;
    let name = ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(io::Error::other)?;
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// Joins `addr` over TLS presenting `me` (handshake done before it returns) and gives
/// a loopback address whose first connection carries that link's plaintext: connect
/// a [`super::raw::RawPeer`] to it and it speaks frames to the node as `me`.
pub fn tls_bridge(addr: &str, me: &CertPair) -> io::Result<String> {
    let tls = raw_tls(addr, me)?;
    let l = TcpListener::bind("127.0.0.1:0")?;
    let local = l.local_addr()?.to_string();
    std::thread::Builder::new()
        .name("tls-bridge".into())
        .spawn(move || {
            if let Ok((plain, _)) = l.accept() {
                let _ = pump(tls, plain);
            }
        })?;
    Ok(local)
}

/// Moves bytes between the plaintext socket and the TLS link until either ends, then
/// closes both. One thread drives the TLS connection (non-blocking socket), a helper
/// reads the plaintext side (blocking) and hands it over.
fn pump(tls: RawTls, plain: TcpStream) -> io::Result<()> {
    let (mut conn, mut sock) = (tls.conn, tls.sock);
    // The raw peer's frames are small and few; don't let rustls refuse any.
    conn.set_buffer_limit(None);
    sock.set_nonblocking(true)?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let mut from_peer = plain.try_clone()?;
    std::thread::Builder::new()
        .name("tls-bridge-in".into())
        .spawn(move || {
            let mut b = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = from_peer.read(&mut b) {
                if tx.send(b[..n].to_vec()).is_err() {
                    return;
                }
            }
        })?;
    let mut to_peer = plain;
    let r = pump_loop(&mut conn, &mut sock, &rx, &mut to_peer);
    let _ = to_peer.shutdown(Shutdown::Both);
    let _ = sock.shutdown(Shutdown::Both);
    r
}

fn pump_loop(
    conn: &mut rustls::ClientConnection,
    sock: &mut TcpStream,
    rx: &mpsc::Receiver<Vec<u8>>,
    to_peer: &mut TcpStream,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut busy = false;
        // Plaintext from the raw peer into TLS records; its end closes the link.
        let mut closed = false;
        loop {
            match rx.try_recv() {
                Ok(c) => {
                    conn.writer().write_all(&c)?;
                    busy = true;
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    conn.send_close_notify();
                    closed = true;
                    break;
                }
            }
        }
        while conn.wants_write() {
            match conn.write_tls(sock) {
                Ok(_) => busy = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if closed {
            return Ok(());
        }
        // TLS records from the node, decrypted, to the raw peer.
        match conn.read_tls(sock) {
            Ok(0) => return Ok(()),
            Ok(_) => {
                busy = true;
                conn.process_new_packets().map_err(io::Error::other)?;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        loop {
            match conn.reader().read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => to_peer.write_all(&buf[..n])?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if !busy {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
