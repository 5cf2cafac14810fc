//! TLS links (issue 10): who is refused and with what error, what the wire shows,
//! certificate rotation, pinned trust, and the handshake's bounds.

mod common;

use astranet::certs::{self, CertPair, DevCa};
use astranet::{Limits, Node, NodeId, TlsConfig};
use astranet_engine::proto::frame::{self, Frame, Hello};
use common::tls::{ca_config, der, raw_tls};
use common::{echo, eventually, roundtrip};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn builder() -> astranet::NodeBuilder {
    Node::builder()
        .shards(common::shards())
        .join_timeout(Duration::from_secs(3))
        .dial_timeout(Duration::from_secs(5))
}

fn tls_node(cfg: TlsConfig) -> Node {
    builder().tls(cfg).build().expect("node")
}

fn pinned(me: &CertPair, peers: &[&CertPair]) -> TlsConfig {
    let peers: String = peers.iter().map(|p| p.cert_pem.as_str()).collect();
    TlsConfig::pinned(
        me.cert_pem.as_bytes(),
        me.key_pem.as_bytes(),
        peers.as_bytes(),
    )
    .expect("pinned config")
}

#[track_caller]
fn assert_refused(r: io::Result<()>, needle: &str) {
    let e = r.expect_err("the link must be refused");
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    assert!(
        e.to_string().contains(needle),
        "expected {needle:?} in: {e}"
    );
}

fn refused_links(n: &Node) -> u64 {
    n.stats().map_or(0, |s| s.refused_links)
}

/// Preamble + HELLO claiming `id`.
fn hello_bytes(id: NodeId) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    out.extend_from_slice(&frame::PREAMBLE);
    frame::encode(
        &Frame::Hello(Hello {
            min_version: frame::VERSION,
            max_version: frame::VERSION,
            node_id: id.0,
            roles: frame::ROLE_ROUTER | frame::ROLE_SERVER,
            max_frame_size: frame::MAX_PAYLOAD_LEN,
            initial_window: 64 * 1024,
            max_streams: 1 << 20,
            keepalive_interval_ms: 10_000,
            keepalive_timeout_ms: 30_000,
            extensions: vec![],
        }),
        &mut out,
    );
    out.to_vec()
}

/// Everything readable until EOF, an error, or 5 s.
fn read_all(s: &mut impl Read) -> (Vec<u8>, Option<io::Error>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => return (got, None),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// ------------------------------------------------------------ a recording proxy

/// A TCP proxy that records every byte in both directions, for any number of
/// connections; `kill` cuts the connections up now.
struct Tap {
    addr: String,
    seen: Arc<Mutex<Vec<u8>>>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

/// Bytes a tap keeps (the tests send far less).
const TAP_CAP: usize = 64 << 20;

impl Tap {
    fn start(target: String) -> Tap {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, c2, st2) = (seen.clone(), conns.clone(), stop.clone());
        std::thread::spawn(move || {
            for down in l.incoming() {
                if st2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(down) = down else { return };
                let Ok(up) = TcpStream::connect(&target) else {
                    continue;
                };
                c2.lock().unwrap().push(down.try_clone().unwrap());
                c2.lock().unwrap().push(up.try_clone().unwrap());
                for (mut from, mut to) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, down),
                ] {
                    let seen = s2.clone();
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 65536];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            {
                                let mut s = seen.lock().unwrap();
                                if s.len() + n <= TAP_CAP {
                                    s.extend_from_slice(&buf[..n]);
                                }
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        Tap {
            addr,
            seen,
            conns,
            stop,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        self.seen.lock().unwrap().clone()
    }

    fn kill(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.kill();
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(&self.addr);
    }
}

// ------------------------------------------------------------ refusals

#[test]
fn a_peer_of_another_ca_is_refused() {
    let (ca1, ca2) = (DevCa::generate().unwrap(), DevCa::generate().unwrap());
    let server = tls_node(ca1.node_config(NodeId::random()).unwrap());
    let client = tls_node(ca2.node_config(NodeId::random()).unwrap());
    let addr = server.listen("127.0.0.1:0").unwrap().to_string();
    // The joiner checks the server's certificate first and refuses it.
    assert_refused(client.join(&addr), "not signed by this node's cluster CA");
    assert!(eventually(Duration::from_secs(3), || refused_links(
        &client
    ) >= 1));
    // A client presenting a certificate of the other CA: the server refuses it.
    let stranger = ca2.node_cert(NodeId::random()).unwrap();
    let before = refused_links(&server);
    if let Ok(mut s) = raw_tls(&addr, &stranger) {
        // TLS 1.3: the client finishes first; the refusal arrives as an alert.
        let (_, err) = read_all(&mut s);
        let e = err.expect("the server must end the connection with an alert");
        assert!(e.to_string().contains("alert"), "{e}");
    }
    assert!(eventually(Duration::from_secs(3), || refused_links(
        &server
    ) > before));
    assert_eq!(server.stats().unwrap().links, 0);
}

#[test]
fn an_expired_certificate_is_refused_at_the_next_handshake() {
    let ca = DevCa::generate().unwrap();
    let server = tls_node(ca.node_config(NodeId::random()).unwrap());
    let addr = server.listen("127.0.0.1:0").unwrap().to_string();
    // Nodes whose certificates expire in a second: one joins, one is joined.
    let short = |id| {
        ca_config(
            &ca,
            &ca.node_cert_valid_for(id, Duration::from_secs(1)).unwrap(),
        )
    };
    let joiner = tls_node(short(NodeId::random()));
    let expiring_server = tls_node(short(NodeId::random()));
    let addr2 = expiring_server.listen("127.0.0.1:0").unwrap().to_string();
    std::thread::sleep(Duration::from_millis(2100));
    // The server refuses the joiner's expired certificate; the joiner says so.
    assert_refused(joiner.join(&addr), "CertificateExpired");
    assert!(eventually(Duration::from_secs(3), || refused_links(
        &server
    ) >= 1));
    // A valid node refuses to join a server whose certificate expired.
    let fresh = tls_node(ca.node_config(NodeId::random()).unwrap());
    assert_refused(fresh.join(&addr2), "peer's certificate has expired");
}

#[test]
fn a_hello_claiming_another_id_than_the_certificate_is_refused() {
    let ca = DevCa::generate().unwrap();
    let server = tls_node(ca.node_config(NodeId::random()).unwrap());
    let addr = server.listen("127.0.0.1:0").unwrap().to_string();
    let (x, y) = (NodeId(0x1111_2222_3333_4444), NodeId(0x5555_6666_7777_8888));
    let mut s = raw_tls(&addr, &ca.node_cert(x).unwrap()).expect("valid certificate for X");
    s.write_all(&hello_bytes(y)).unwrap();
    s.flush().unwrap();
    let (got, _) = read_all(&mut s);
    let want = format!("peer's certificate is for node {x} but its HELLO claims {y}");
    assert!(
        contains(&got, want.as_bytes()),
        "the GOAWAY must give the reason; got {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(eventually(Duration::from_secs(3), || refused_links(
        &server
    ) == 1));
    assert!(server.routes().iter().all(|r| r.node != y && r.node != x));
    assert_eq!(server.stats().unwrap().links, 0);
    // The same certificate with an honest HELLO is accepted (the check is the id).
    let mut s = raw_tls(&addr, &ca.node_cert(x).unwrap()).unwrap();
    s.write_all(&hello_bytes(x)).unwrap();
    s.flush().unwrap();
    assert!(eventually(Duration::from_secs(3), || server
        .routes()
        .iter()
        .any(|r| r.node == x)));
}

#[test]
fn plaintext_and_tls_nodes_refuse_each_other_with_a_reason() {
    let ca = DevCa::generate().unwrap();
    let secure = tls_node(ca.node_config(NodeId::random()).unwrap());
    let plain = builder().build().unwrap();
    let saddr = secure.listen("127.0.0.1:0").unwrap().to_string();
    let paddr = plain.listen("127.0.0.1:0").unwrap().to_string();
    assert_refused(
        plain.join(&saddr),
        "peer speaks TLS, but this node has no TLS configured",
    );
    assert_refused(
        secure.join(&paddr),
        "peer speaks plaintext astranet, but this node requires TLS",
    );
    // Each side counted both refusals (the one it made and the one it suffered).
    assert!(eventually(Duration::from_secs(3), || refused_links(
        &secure
    ) >= 2
        && refused_links(&plain) >= 2));
    // attach has no TLS: a TLS node refuses it.
    let (a, _b) = astranet::pipe();
    assert_eq!(
        secure.attach(a).unwrap_err().kind(),
        io::ErrorKind::PermissionDenied
    );
}

#[test]
fn a_silent_connection_holds_a_handshake_slot_only_until_the_timeout() {
    let ca = DevCa::generate().unwrap();
    let node = builder()
        .tls(ca.node_config(NodeId::random()).unwrap())
        .limits(Limits {
            handshake_timeout: Duration::from_millis(300),
            max_handshaking: 2,
            ..Limits::default()
        })
        .build()
        .unwrap();
    let addr = node.listen("127.0.0.1:0").unwrap();
    let silent: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    assert!(eventually(Duration::from_secs(2), || node
        .stats()
        .unwrap()
        .handshaking
        == 2));
    // Beyond the cap: closed at once.
    let mut third = TcpStream::connect(addr).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert!(matches!(third.read(&mut [0u8; 16]), Ok(0) | Err(_)));
    // The silent ones are dropped at the handshake timeout.
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let t = Instant::now();
        let r = s.read(&mut [0u8; 16]);
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }
    assert!(eventually(Duration::from_secs(2), || node
        .stats()
        .unwrap()
        .handshaking
        == 0));
}

// ------------------------------------------------------------ confidentiality

const SECRET: &[u8] = b"the launch code is 0000 ";

/// Bytes seen on the wire while 256 KiB of SECRET cross an echo stream.
fn wire_bytes(tls: bool) -> Vec<u8> {
    let (a, b) = if tls {
        let ca = DevCa::generate().unwrap();
        (
            tls_node(ca.node_config(NodeId::random()).unwrap()),
            tls_node(ca.node_config(NodeId::random()).unwrap()),
        )
    } else {
        (builder().build().unwrap(), builder().build().unwrap())
    };
    let addr = b.listen("127.0.0.1:0").unwrap().to_string();
    let tap = Tap::start(addr);
    a.join(&tap.addr).unwrap();
    echo(b.bind("vault").unwrap());
    let mut s = a.dial("vault").unwrap();
    let data: Vec<u8> = SECRET.iter().copied().cycle().take(256 * 1024).collect();
    let mut r = s.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        r.read_to_end(&mut got).map(|_| got)
    });
    s.write_all(&data).unwrap();
    s.shutdown_write().unwrap();
    assert_eq!(reader.join().unwrap().unwrap(), data);
    let seen = tap.bytes();
    assert!(
        seen.len() >= 2 * data.len(),
        "the tap saw {} bytes",
        seen.len()
    );
    seen
}

#[test]
fn the_wire_shows_no_stream_bytes_over_tls() {
    // Control: in plaintext the tap sees the secret, so the check below can fail.
    assert!(contains(&wire_bytes(false), SECRET));
    let seen = wire_bytes(true);
    assert!(!contains(&seen, SECRET), "stream bytes visible on the wire");
    assert!(
        !contains(&seen, &frame::PREAMBLE),
        "astranet framing visible"
    );
    assert!(!contains(&seen, b"vault"), "service name visible");
}

// ------------------------------------------------------------ rotation and pinning

#[test]
fn reload_rotates_the_certificate_and_keeps_streams() {
    let ca = DevCa::generate().unwrap();
    let id = NodeId::random();
    let (c1, c2) = (ca.node_cert(id).unwrap(), ca.node_cert(id).unwrap());
    let server = tls_node(ca_config(&ca, &c1));
    assert_eq!(server.id(), id);
    let addr = server.listen("127.0.0.1:0").unwrap().to_string();
    echo(server.bind("echo").unwrap());
    let a = tls_node(ca.node_config(NodeId::random()).unwrap());
    a.join(&addr).unwrap();
    let mut s = a.dial("echo").unwrap();
    roundtrip(&mut s, b"before the reload");
    let probe = ca.node_cert(NodeId::random()).unwrap();
    let presented = |addr: &str| {
        raw_tls(addr, &probe)
            .unwrap()
            .conn
            .peer_certificates()
            .unwrap()[0]
            .clone()
    };
    assert_eq!(presented(&addr), der(&c1.cert_pem));

    server.reload_tls(ca_config(&ca, &c2)).unwrap();
    // New links see the new certificate; a new node joins and dials.
    assert_eq!(presented(&addr), der(&c2.cert_pem));
    let b = tls_node(ca.node_config(NodeId::random()).unwrap());
    b.join(&addr).unwrap();
    roundtrip(&mut b.dial("echo").unwrap(), b"through a new link");
    // The stream made before the reload is unaffected.
    roundtrip(&mut s, b"after the reload");
    // A certificate for another id, or TLS on a plaintext node: refused.
    let other = ca.node_config(NodeId::random()).unwrap();
    assert_eq!(
        server.reload_tls(other.clone()).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    let plain = builder().build().unwrap();
    assert_eq!(
        plain.reload_tls(other).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    // Setting an id that is not the certificate's: refused at build.
    let e = builder()
        .id(NodeId(7))
        .tls(ca.node_config(NodeId(8)).unwrap())
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
}

#[test]
fn pinned_peers_link_and_a_removed_peer_is_refused_at_its_next_handshake() {
    let (ia, ib, ic) = (NodeId::random(), NodeId::random(), NodeId::random());
    let pa = certs::self_signed(ia).unwrap();
    let pb = certs::self_signed(ib).unwrap();
    let pc = certs::self_signed(ic).unwrap();
    let a = tls_node(pinned(&pa, &[&pb, &pc]));
    let b = tls_node(pinned(&pb, &[&pa]));
    let c = builder()
        .tls(pinned(&pc, &[&pa]))
        .keepalive(Duration::from_millis(200), Duration::from_secs(1))
        .build()
        .unwrap();
    let addr = a.listen("127.0.0.1:0").unwrap().to_string();
    echo(a.bind("echo").unwrap());
    b.join(&addr).unwrap();
    let tap = Tap::start(addr.clone());
    c.join(&tap.addr).unwrap();
    let mut s = c.dial("echo").unwrap();
    roundtrip(&mut s, b"pinned");

    // A drops C from its pinned set: C's link stays up until its next handshake.
    a.reload_tls(pinned(&pa, &[&pb])).unwrap();
    roundtrip(&mut s, b"still up");
    let before = refused_links(&a);
    tap.kill();
    // C reconnects through the tap (with backoff) and is refused each time.
    assert!(eventually(Duration::from_secs(5), || refused_links(&a) > before));
    std::thread::sleep(Duration::from_millis(300));
    assert!(a.links().unwrap().iter().all(|l| l.peer != Some(ic)));
    // B, still pinned, links again fine; a node pinning no one refuses A.
    roundtrip(&mut b.dial("echo").unwrap(), b"b is pinned");
    let d = tls_node(pinned(&certs::self_signed(NodeId::random()).unwrap(), &[]));
    assert_refused(d.join(&addr), "not in this node's pinned set");
}
