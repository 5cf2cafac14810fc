//! Signed announcements with real certificates over TLS (issue 10, PROTOCOL.md
//! §11.5): a hostile router holding a VALID certificate of the cluster CA forges,
//! alters and injects announcements about another origin; the victim rejects and
//! counts them, lists nothing of them, dials nothing, and still reaches the real
//! service. Also: the same frames are taken in a plaintext mesh (the check can fail),
//! and a node that reloads its certificate re-announces under its new key.
//!
//! Mesh (engine/tests/signed.rs shows the same claims with a stand-in signer):
//!
//! ```text
//!   O ——— R ——— V
//!          \   /
//!            M      (raw peer speaking frames by hand over its own TLS links)
//! ```
//!
//! O serves `svc` and joins router R; V joins R. M links to R (where it learns O's
//! real signed state, as any member of the mesh can) and to V, and claims O at one
//! hop. V then reaches O at two hops through R or M; ties go to the lowest neighbour
//! id, M's, so M is V's next hop to O and the only neighbour whose announcements
//! about O V considers (the reverse-path check). O neither advertises nor upgrades
//! (`direct_upgrade(false)`), so V does not link to it directly; V has the smallest
//! id, so it is the side that would dial an address record for O (PROTOCOL.md §10.5).

mod common;

use astranet::certs::{CertPair, DevCa};
use astranet::{Node, NodeBuilder, NodeId, Role};
use astranet_engine::proto::frame::{Frame, ServiceOp, ServicesSig, ServicesUpdate};
use bytes::{BufMut, Bytes, BytesMut};
use common::raw::{addr_op, svc_op, RawOpts, RawPeer};
use common::tls::{ca_config, der, tls_bridge};
use common::{echo, eventually, roundtrip};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::SignatureScheme;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(10);

/// Ids in the order the topology needs: V smallest, M below R, O largest.
struct Ids {
    v: NodeId,
    m: NodeId,
    r: NodeId,
    o: NodeId,
}

fn ids(base: u64) -> Ids {
    Ids {
        v: NodeId(base + 1),
        m: NodeId(base + 2),
        r: NodeId(base + 3),
        o: NodeId(base + 4),
    }
}

/// A node with id `id`: over TLS with a certificate of `ca`, or plaintext.
fn node(ca: Option<&DevCa>, id: NodeId, f: impl FnOnce(NodeBuilder) -> NodeBuilder) -> Node {
    let b = Node::builder()
        .shards(common::shards())
        .join_timeout(Duration::from_secs(5))
        .dial_timeout(Duration::from_secs(5));
    let b = match ca {
        Some(ca) => b.tls(ca.node_config(id).expect("node certificate")),
        None => b.id(id),
    };
    f(b).build().expect("node")
}

/// M's link to the node at `addr`: a raw peer that keeps the SERVICES it is sent
/// and answers PINGs; over TLS presenting `cert`, or plaintext.
fn raw_link(addr: &str, id: NodeId, cert: Option<&CertPair>) -> RawPeer {
    let at = match cert {
        Some(c) => tls_bridge(addr, c).expect("M's TLS handshake"),
        None => addr.to_string(),
    };
    let mut opts = RawOpts::new(id.0);
    opts.record_services = true;
    let mut p = RawPeer::connect(&at, opts).expect("M links");
    p.start_reader(true);
    p
}

/// M's signing material: its own key and credentials (a valid certificate of the
/// cluster CA), encoded as nodes encode theirs (engine/src/node/tls/announce.rs).
struct Signer {
    key: Arc<dyn rustls::sign::SigningKey>,
    creds: Bytes,
}

impl Signer {
    fn new(c: &CertPair) -> Signer {
        let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).expect("key");
        let key = rustls::crypto::ring::sign::any_supported_type(&key).expect("signing key");
        let cert = der(&c.cert_pem);
        let mut creds = BytesMut::new();
        creds.put_u8(1);
        creds.put_u32(cert.len() as u32);
        creds.put_slice(&cert);
        Signer {
            key,
            creds: creds.freeze(),
        }
    }

    /// A signature over `origin`'s state `ops` at `version`, exactly as an origin
    /// makes one, but with M's key.
    fn sign(&self, origin: NodeId, version: u64, ops: &[ServiceOp]) -> Bytes {
        let signer = self
            .key
            .choose_scheme(&[
                SignatureScheme::ED25519,
                SignatureScheme::ECDSA_NISTP256_SHA256,
                SignatureScheme::ECDSA_NISTP384_SHA384,
                SignatureScheme::RSA_PSS_SHA256,
            ])
            .expect("scheme");
        let mut m = b"astranet-announce-v1:".to_vec();
        m.extend_from_slice(&state_message(origin, version, ops));
        let mut out = BytesMut::new();
        out.put_u16(u16::from(signer.scheme()));
        out.put_slice(&signer.sign(&m).expect("sign"));
        out.freeze()
    }
}

/// What an origin signs for its state at `version` (PROTOCOL.md §11.5).
fn state_message(origin: NodeId, version: u64, ops: &[ServiceOp]) -> Vec<u8> {
    let mut e: Vec<(&[u8], &[u8], u32)> = ops
        .iter()
        .filter(|o| o.announce)
        .map(|o| (&o.env[..], &o.name[..], o.port))
        .collect();
    e.sort();
    e.dedup();
    let mut m = b"astranet-services-v1".to_vec();
    m.put_u64(origin.0);
    m.put_u64(version);
    m.put_u32(e.len() as u32);
    for (env, name, port) in e {
        m.put_u8(env.len() as u8);
        m.put_slice(env);
        m.put_u8(name.len() as u8);
        m.put_slice(name);
        m.put_u32(port);
    }
    m
}

fn full(origin: NodeId, version: u64, ops: Vec<ServiceOp>, signed: Option<ServicesSig>) -> Frame {
    Frame::Services(ServicesUpdate {
        origin: origin.0,
        base_version: 0,
        version,
        full: true,
        hops: 1,
        ops,
        request: false,
        signed,
    })
}

struct Mesh {
    ids: Ids,
    o: Node,
    r: Node,
    v: Node,
    /// M's links: to V (where it attacks) and to R (where it learns O's state).
    m_v: RawPeer,
    m_r: RawPeer,
    m_key: Signer,
    svc: u32,
    svc2: u32,
}

fn ports(n: &Node, at: NodeId) -> Vec<(String, u32)> {
    let mut v: Vec<(String, u32)> = n
        .services()
        .into_iter()
        .filter(|s| s.addr.node == at)
        .map(|s| (s.name, s.addr.port))
        .collect();
    v.sort();
    v
}

fn has(n: &Node, name: &str, at: NodeId) -> bool {
    n.services()
        .iter()
        .any(|s| s.name == name && s.addr.node == at)
}

fn next_hop(n: &Node, to: NodeId) -> Option<NodeId> {
    n.routes()
        .into_iter()
        .find(|r| r.node == to)
        .map(|r| r.next_hop)
}

fn rejected(n: &Node) -> u64 {
    n.stats().expect("stats").rejected_announcements
}

/// O's SERVICES updates M was sent on `link`.
fn seen_of(link: &RawPeer, origin: NodeId) -> Vec<ServicesUpdate> {
    link.log.with(|s| {
        s.services
            .iter()
            .filter(|u| u.origin == origin.0 && !u.request)
            .cloned()
            .collect()
    })
}

/// Builds the mesh (TLS with one cluster CA, or plaintext), makes M V's next hop to
/// O, and has M relay O's real `svc2` announcement to V, which V must take: M holds
/// the route, and a real origin-signed update through it is accepted.
fn mesh(tls: bool, base: u64) -> Mesh {
    let ca = DevCa::generate().expect("CA");
    let ids = ids(base);
    let nca = tls.then_some(&ca);
    let r = node(nca, ids.r, |b| b);
    let o = node(nca, ids.o, |b| b.role(Role::Server).direct_upgrade(false));
    let v = node(nca, ids.v, |b| b);
    let r_addr = r.listen("127.0.0.1:0").expect("listen").to_string();
    let v_addr = v.listen("127.0.0.1:0").expect("listen").to_string();
    o.join(&r_addr).expect("O joins R");
    v.join(&r_addr).expect("V joins R");
    let l = o.bind("svc").expect("bind");
    let svc = l.local_addr().port;
    echo(l);
    assert!(eventually(WITHIN, || has(&v, "svc", ids.o)), "V sees svc");
    assert_eq!(next_hop(&v, ids.o), Some(ids.r));

    // M: a cluster member with a valid certificate (or none, in plaintext).
    let m_cert = ca.node_cert(ids.m).expect("M's certificate");
    let m_tls = tls.then_some(&m_cert);
    let m_r = raw_link(&r_addr, ids.m, m_tls);
    assert!(
        eventually(WITHIN, || seen_of(&m_r, ids.o).iter().any(|u| u.full)),
        "R sends M O's state"
    );
    let m_v = raw_link(&v_addr, ids.m, m_tls);
    m_v.routes(&[(ids.o.0, 1)]).expect("ROUTES");
    assert!(
        eventually(WITHIN, || next_hop(&v, ids.o) == Some(ids.m)),
        "M is V's next hop to O: {:?}",
        v.routes()
    );

    // Like a router, M answers the REQUEST V sent it for O with O's state (in a
    // plaintext mesh V takes no diff for O through M before that).
    let o_full = seen_of(&m_r, ids.o)
        .into_iter()
        .rev()
        .find(|u| u.full)
        .expect("a full");
    m_v.send(&Frame::Services(o_full)).expect("answer");

    // O's next change reaches V only through M: R's copy fails the reverse path.
    let before = seen_of(&m_r, ids.o).len();
    let l2 = o.bind("svc2").expect("bind");
    let svc2 = l2.local_addr().port;
    echo(l2);
    assert!(eventually(WITHIN, || seen_of(&m_r, ids.o).len() > before));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !has(&v, "svc2", ids.o),
        "V took O's update from R, not its route"
    );
    for u in &seen_of(&m_r, ids.o)[before..] {
        m_v.send(&Frame::Services(u.clone())).expect("relay");
    }
    assert!(
        eventually(WITHIN, || has(&v, "svc2", ids.o)),
        "V takes O's real update relayed by M"
    );
    assert_eq!(rejected(&v), 0);
    Mesh {
        ids,
        o,
        r,
        v,
        m_v,
        m_r,
        m_key: Signer::new(&m_cert),
        svc,
        svc2,
    }
}

impl Mesh {
    /// O's latest full update M saw, the highest version it saw, and that version's
    /// signature.
    fn latest(&self) -> (ServicesUpdate, u64, ServicesSig) {
        let seen = seen_of(&self.m_r, self.ids.o);
        let f = seen.iter().rev().find(|u| u.full).cloned().expect("a full");
        let last = seen.iter().max_by_key(|u| u.version).expect("an update");
        let sig = last.signed.clone().unwrap_or(ServicesSig {
            signature: Bytes::from_static(b"unsigned"),
            credentials: Bytes::new(),
        });
        (f, last.version, sig)
    }

    /// The forged update of (1): O's state plus `evil` and an address record for
    /// `trap`, at a newer version, signed by M over exactly that state, carrying
    /// `creds`.
    fn forged(&self, trap: &str, creds: Bytes) -> Frame {
        let (f, version, _) = self.latest();
        let mut ops = f.ops.clone();
        ops.push(svc_op("svc2", self.svc2));
        ops.push(svc_op("evil", 1));
        ops.push(addr_op(trap));
        let version = version + 10;
        let signature = self.m_key.sign(self.ids.o, version, &ops);
        full(
            self.ids.o,
            version,
            ops,
            Some(ServicesSig {
                signature,
                credentials: creds,
            }),
        )
    }

    /// (3): an address record for O pointing at `trap`, as a diff on the version V
    /// holds (with O's signature of that version) and as a full update (O's genuine
    /// entries and credentials plus the record).
    fn addr_injection(&self, trap: &str) -> [Frame; 2] {
        let (f, version, sig) = self.latest();
        let diff = Frame::Services(ServicesUpdate {
            origin: self.ids.o.0,
            base_version: version,
            version: version + 1,
            full: false,
            hops: 1,
            ops: vec![addr_op(trap)],
            request: false,
            signed: Some(ServicesSig {
                credentials: Bytes::new(),
                ..sig
            }),
        });
        let mut ops = f.ops.clone();
        ops.push(svc_op("svc2", self.svc2));
        ops.push(addr_op(trap));
        [diff, full(self.ids.o, version + 1, ops, f.signed.clone())]
    }
}

/// Sends `frames` on M's link to V and waits for V to count `n` more rejections.
#[track_caller]
fn expect_rejected(mesh: &Mesh, what: &str, frames: &[Frame], n: u64) {
    let before = rejected(&mesh.v);
    mesh.m_v.send_all(frames).expect("send");
    assert!(
        eventually(WITHIN, || rejected(&mesh.v) >= before + n),
        "{what}: V counted {} rejections, expected {n}",
        rejected(&mesh.v) - before
    );
    assert!(
        !has(&mesh.v, "evil", mesh.ids.o),
        "{what}: V lists the forged service"
    );
}

/// Whether anyone connects to `trap` within `within`.
fn dialed(trap: &TcpListener, within: Duration) -> bool {
    trap.set_nonblocking(true).expect("nonblocking");
    eventually(within, || trap.accept().is_ok())
}

#[test]
fn a_router_with_a_valid_certificate_cannot_forge_alter_or_inject_announcements() {
    let mesh = mesh(true, 0x7100);
    let o = mesh.ids.o;
    let trap = TcpListener::bind("127.0.0.1:0").expect("trap");
    let trap_addr = trap.local_addr().expect("addr").to_string();
    let (f, version, _) = mesh.latest();
    let o_creds = f.signed.as_ref().expect("signed").credentials.clone();
    assert!(!o_creds.is_empty(), "a full update carries O's credentials");

    // Control for the signer below: M's own state, signed with M's key and
    // credentials, is taken; so the refusals that follow are about whose key, not
    // about how M signs.
    let mine = vec![svc_op("mine", 7)];
    let sig = mesh.m_key.sign(mesh.ids.m, 1, &mine);
    mesh.m_v
        .send(&full(
            mesh.ids.m,
            1,
            mine,
            Some(ServicesSig {
                signature: sig,
                credentials: mesh.m_key.creds.clone(),
            }),
        ))
        .expect("send");
    assert!(
        eventually(WITHIN, || has(&mesh.v, "mine", mesh.ids.m)),
        "V takes M's own signed state"
    );

    // 1. A forged update for O signed by M: with M's credentials (valid, but not
    //    O's), and with O's credentials (M's signature does not verify under them).
    expect_rejected(
        &mesh,
        "forged, M's credentials",
        &[mesh.forged(&trap_addr, mesh.m_key.creds.clone())],
        1,
    );
    expect_rejected(
        &mesh,
        "forged, O's credentials",
        &[mesh.forged(&trap_addr, o_creds.clone())],
        1,
    );
    // 2. O's real signed state replayed with an altered version.
    let mut altered = f.clone();
    altered.version = version + 10;
    expect_rejected(&mesh, "altered version", &[Frame::Services(altered)], 1);
    // 3. An address record for O pointing at the trap (a diff and a full update).
    expect_rejected(
        &mesh,
        "injected address record",
        &mesh.addr_injection(&trap_addr),
        2,
    );
    // 4. O's credentials with a garbage signature.
    let mut ops = f.ops.clone();
    ops.push(svc_op("evil", 1));
    let mut garbage = vec![0x04, 0x03];
    garbage.extend((0..70u8).map(|i| i.wrapping_mul(37)));
    expect_rejected(
        &mesh,
        "garbage signature",
        &[full(
            o,
            version + 1,
            ops,
            Some(ServicesSig {
                signature: Bytes::from(garbage),
                credentials: o_creds,
            }),
        )],
        1,
    );

    // Nothing dialed, nothing made up: V holds exactly O's real services.
    assert!(
        !dialed(&trap, Duration::from_millis(1500)),
        "V dialed the injected address"
    );
    assert_eq!(
        ports(&mesh.v, o),
        [
            ("svc".to_string(), mesh.svc),
            ("svc2".to_string(), mesh.svc2)
        ]
    );
    assert_eq!(rejected(&mesh.v), 6);
    // R, which the forgeries never crossed, rejected nothing.
    assert_eq!(rejected(&mesh.r), 0);

    // The real service is still dialable: M withdraws its claim, V's route to O
    // moves to R and V keeps what it holds. Had a forgery been taken (another port
    // for svc, a version from the future), the dial or O's next update would fail.
    mesh.m_v.routes(&[(o.0, 255)]).expect("withdraw");
    assert!(
        eventually(WITHIN, || next_hop(&mesh.v, o) == Some(mesh.ids.r)),
        "{:?}",
        mesh.v.routes()
    );
    roundtrip(&mut mesh.v.dial("svc").expect("dial svc"), b"real svc");
    roundtrip(&mut mesh.v.dial("svc2").expect("dial svc2"), b"real svc2");
    let _svc3 = mesh.o.bind("svc3").expect("bind");
    assert!(
        eventually(WITHIN, || has(&mesh.v, "svc3", o)),
        "O's own next update still gets through"
    );
    assert_eq!(rejected(&mesh.v), 6);
    drop(mesh.m_r);
}

/// The same frames in a plaintext mesh: the forged service is listed and the
/// injected address dialed; what the test above shows signing prevents.
#[test]
fn without_tls_the_same_forgeries_are_taken_and_the_trap_is_dialed() {
    let mesh = mesh(false, 0x7200);
    let o = mesh.ids.o;
    let trap = TcpListener::bind("127.0.0.1:0").expect("trap");
    let trap_addr = trap.local_addr().expect("addr").to_string();
    mesh.m_v
        .send_all(&mesh.addr_injection(&trap_addr))
        .expect("send");
    assert!(
        dialed(&trap, WITHIN),
        "an unsigned mesh dials what a router injects"
    );
    mesh.m_v
        .send(&mesh.forged(&trap_addr, mesh.m_key.creds.clone()))
        .expect("send");
    assert!(eventually(WITHIN, || has(&mesh.v, "evil", o)));
    assert_eq!(rejected(&mesh.v), 0);
}

/// A node that reloads its certificate re-announces at once under its new key, and
/// its peers (direct and through a router) keep its services and take its next
/// change, signed with the new key, without a rejection.
#[test]
fn a_reloaded_certificate_is_re_announced_and_peers_keep_the_services() {
    let ca = DevCa::generate().expect("CA");
    let ids = ids(0x7300);
    let r = node(Some(&ca), ids.r, |b| b);
    let c1 = ca.node_cert(ids.o).expect("cert");
    let o = node(None, ids.o, |b| {
        b.id(ids.o)
            .tls(ca_config(&ca, &c1))
            .role(Role::Server)
            .direct_upgrade(false)
    });
    let v = node(Some(&ca), ids.v, |b| b.direct_upgrade(false));
    let r_addr = r.listen("127.0.0.1:0").expect("listen").to_string();
    o.join(&r_addr).expect("join");
    v.join(&r_addr).expect("join");
    let l = o.bind("svc").expect("bind");
    echo(l);
    assert!(eventually(WITHIN, || has(&v, "svc", ids.o)));
    // An observer on R: what R forwards about O, and with which credentials.
    let m = raw_link(&r_addr, ids.m, Some(&ca.node_cert(ids.m).expect("cert")));
    let creds_of = |u: &ServicesUpdate| {
        u.signed
            .as_ref()
            .map(|s| s.credentials.clone())
            .unwrap_or_default()
    };
    let has_cert = |creds: &[u8], c: &CertPair| {
        let d = der(&c.cert_pem);
        creds.windows(d.len()).any(|w| w == &d[..])
    };
    assert!(eventually(WITHIN, || seen_of(&m, ids.o)
        .iter()
        .any(|u| u.full && has_cert(&creds_of(u), &c1))));
    let old_version = seen_of(&m, ids.o).iter().map(|u| u.version).max();

    let c2 = ca.node_cert(ids.o).expect("cert");
    o.reload_tls(ca_config(&ca, &c2)).expect("reload");
    // O re-announces in full, at a new version, with the new credentials; R took
    // it (it forwards only what it verified).
    assert!(
        eventually(WITHIN, || seen_of(&m, ids.o).iter().any(|u| u.full
            && Some(u.version) > old_version
            && has_cert(&creds_of(u), &c2))),
        "no re-announcement with the new certificate"
    );
    // Its next change is a diff signed with the new key: taken by R and V only if
    // they hold the new key (else they reject it, count it and ask).
    let l3 = o.bind("svc3").expect("bind");
    echo(l3);
    assert!(eventually(WITHIN, || has(&v, "svc3", ids.o)));
    assert!(has(&v, "svc", ids.o), "V kept O's services");
    assert!(has(&r, "svc", ids.o), "R kept O's services");
    assert_eq!(rejected(&v), 0);
    assert_eq!(rejected(&r), 0);
    roundtrip(&mut v.dial("svc").expect("dial"), b"after the reload");
    roundtrip(&mut v.dial("svc3").expect("dial"), b"new service");
}
