//! Signed announcements over real nodes (issue 10, PROTOCOL.md §11.5), with the
//! test-double identity in place of certificates: a hostile router on the path
//! forges a SERVICES update for another origin, alters a version, and injects an
//! address record. The victim rejects and counts them, the real service stays
//! dialable, and nothing is dialed.
//!
//! Mesh: origin O —— router M —— hostile proxy —— victim V. The proxy sits on V's
//! link to M and adds frames to what M sends V: to V, they come from its route to O
//! (the reverse-path check lets them through), exactly as from a router that
//! forges. With TLS on links the proxy would be M itself; what V checks is the same.

use astranet_engine::node::fuzzing::{set_test_auth, TestAuth};
use astranet_engine::proto::frame::{
    self, Decoded, Frame, FrameType, ServiceOp, ServicesSig, ServicesUpdate, HEADER_LEN,
};
use astranet_engine::{block_on_until, wait_timeout, NodeConfig, NodeCore, NodeId, Role, Wait};
use bytes::{Bytes, BytesMut};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SEED: u64 = 0xca;
const WITHIN: Duration = Duration::from_secs(10);

fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn start(id: u64, role: Role, signed: bool) -> NodeCore {
    let mut cfg = NodeConfig::default();
    cfg.id = NodeId(id);
    cfg.role = role;
    cfg.shards = 1;
    cfg.join_timeout = Duration::from_secs(5);
    if signed {
        set_test_auth(&mut cfg, TestAuth::new(SEED, id));
    }
    NodeCore::start(cfg).expect("start")
}

/// SERVICES updates about one origin that the proxy saw M send V.
type Seen = Arc<Mutex<Vec<ServicesUpdate>>>;

/// A man in the middle on V's link to M: passes bytes both ways, records M's
/// SERVICES updates about `origin`, and sends V the frames it is given, between M's.
struct Proxy {
    addr: SocketAddr,
    inject: mpsc::Sender<Frame>,
    seen: Seen,
}

impl Proxy {
    fn start(to: SocketAddr, origin: u64) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let (inject, rx) = mpsc::channel::<Frame>();
        let seen = Seen::default();
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            let Ok((v, _)) = l.accept() else { return };
            let Ok(m) = TcpStream::connect(to) else {
                return;
            };
            let (mut v_r, mut m_w) = (v.try_clone().expect("clone"), m.try_clone().expect("clone"));
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut v_r, &mut m_w);
                let _ = m_w.shutdown(std::net::Shutdown::Write);
            });
            m_to_v(m, v, rx, &seen2, origin);
        });
        Proxy { addr, inject, seen }
    }

    fn inject(&self, f: Frame) {
        self.inject.send(f).expect("proxy gone");
    }

    /// The latest full update and version of the origin M sent V.
    fn latest(&self) -> (ServicesUpdate, u64) {
        let seen = self.seen.lock().unwrap();
        let full = seen
            .iter()
            .rev()
            .find(|u| u.full)
            .cloned()
            .expect("a full update");
        let version = seen.iter().map(|u| u.version).max().unwrap_or(0);
        (full, version)
    }
}

fn m_to_v(mut m: TcpStream, mut v: TcpStream, rx: mpsc::Receiver<Frame>, seen: &Seen, origin: u64) {
    m.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let mut buf = BytesMut::new();
    let mut preamble = true;
    let mut chunk = [0u8; 64 * 1024];
    loop {
        match m.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
        if preamble {
            if buf.len() < frame::PREAMBLE.len() {
                continue;
            }
            let p = buf.split_to(frame::PREAMBLE.len());
            if v.write_all(&p).is_err() {
                return;
            }
            preamble = false;
        }
        // Whole frames only, so injected frames land between M's.
        while buf.len() >= HEADER_LEN {
            let h = frame::parse_header(&buf);
            let total = HEADER_LEN + h.len as usize;
            if buf.len() < total {
                break;
            }
            let raw = buf.split_to(total);
            if h.kind == FrameType::Services as u8 {
                let mut copy = raw.clone();
                if let Ok(Some(Decoded::Frame(Frame::Services(u)))) =
                    frame::decode(&mut copy, frame::MAX_PAYLOAD_LEN)
                {
                    if u.origin == origin && !u.request {
                        seen.lock().unwrap().push(u);
                    }
                }
            }
            if v.write_all(&raw).is_err() {
                return;
            }
        }
        if preamble {
            continue;
        }
        while let Ok(f) = rx.try_recv() {
            let mut out = BytesMut::new();
            frame::encode(&f, &mut out);
            if v.write_all(&out).is_err() {
                return;
            }
        }
    }
}

struct Mesh {
    o: NodeCore,
    _m: NodeCore,
    v: NodeCore,
    proxy: Proxy,
    svc: astranet_engine::ListenerRef,
}

fn has(n: &NodeCore, name: &str, at: NodeId) -> bool {
    n.services()
        .iter()
        .any(|s| s.name == name && s.addr.node == at)
}

/// O serves `svc`; V sees it through M and the proxy.
fn mesh(signed: bool, base: u64) -> Mesh {
    let o = start(base + 1, Role::Server, signed);
    let m = start(base + 2, Role::Router, signed);
    // V's id is the smallest: it is the one that dials direct upgrades.
    let v = start(base, Role::Router, signed);
    let m_addr = m.listen("127.0.0.1:0").expect("listen");
    o.join(&m_addr.to_string()).expect("join");
    let proxy = Proxy::start(m_addr, o.id().0);
    v.join(&proxy.addr.to_string()).expect("join via proxy");
    let svc = o.bind("svc").expect("bind");
    assert!(eventually(WITHIN, || has(&v, "svc", o.id())), "V sees svc");
    assert!(eventually(WITHIN, || {
        v.routes().iter().any(|r| r.node == o.id() && r.hops == 2)
    }));
    assert!(eventually(WITHIN, || !proxy
        .seen
        .lock()
        .unwrap()
        .is_empty()));
    Mesh {
        o,
        _m: m,
        v,
        proxy,
        svc,
    }
}

fn op(name: &str, port: u32) -> ServiceOp {
    ServiceOp {
        announce: true,
        port,
        env: Bytes::new(),
        name: Bytes::copy_from_slice(name.as_bytes()),
    }
}

fn addr_op(addr: SocketAddr) -> ServiceOp {
    ServiceOp {
        announce: true,
        port: 0,
        env: Bytes::from_static(b"!addr"),
        name: Bytes::from(format!("tcp:{addr}")),
    }
}

/// An address record for O pointing at `trap`, injected as a diff on top of the
/// version V holds (with O's last genuine signature) and as a full update (O's
/// genuine entries and credentials plus the record, a newer version).
fn inject_addr_record(mesh: &Mesh, trap: SocketAddr) {
    let (full, version) = mesh.proxy.latest();
    mesh.proxy.inject(Frame::Services(ServicesUpdate {
        origin: full.origin,
        base_version: version,
        version: version + 1,
        full: false,
        hops: 1,
        ops: vec![addr_op(trap)],
        request: false,
        signed: full.signed.clone().map(|s| ServicesSig {
            credentials: Bytes::new(),
            ..s
        }),
    }));
    let mut f = full;
    f.version = version + 1;
    f.ops.push(addr_op(trap));
    mesh.proxy.inject(Frame::Services(f));
}

/// Whether anyone connects to `trap` within `within`.
fn dialed(trap: &TcpListener, within: Duration) -> bool {
    trap.set_nonblocking(true).expect("nonblocking");
    eventually(within, || trap.accept().is_ok())
}

/// V dials `svc` and O accepts the stream: the real service works.
fn dial_works(mesh: &Mesh, svc: &astranet_engine::ListenerRef) {
    let deadline = Instant::now() + WITHIN;
    let rx = mesh.v.dial("svc", deadline).expect("dial");
    let Wait::Done(Ok(s)) = wait_timeout(rx, Some(deadline)) else {
        panic!("dial failed");
    };
    let write = std::future::poll_fn(|cx| s.poll_write(cx, b"ping"));
    let Some(Ok(4)) = block_on_until(&mut std::pin::pin!(write), Some(deadline)) else {
        panic!("write failed");
    };
    let mut recv = Box::pin(svc.queue().recv());
    let inc = block_on_until(&mut recv, Some(deadline))
        .expect("O accepts in time")
        .expect("listener open");
    assert_eq!(inc.stream.peer_addr().node, mesh.v.id());
    let mut b = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let read = std::future::poll_fn(|cx| inc.stream.poll_read(cx, &mut b[got..]));
        let Some(Ok(n @ 1..)) = block_on_until(&mut std::pin::pin!(read), Some(deadline)) else {
            panic!("read failed");
        };
        got += n;
    }
    assert_eq!(&b, b"ping");
}

#[test]
fn a_hostile_router_cannot_forge_alter_or_inject_announcements() {
    let mesh = mesh(true, 0x5100);
    let o = mesh.o.id();
    let trap = TcpListener::bind("127.0.0.1:0").expect("trap");
    let trap_addr = trap.local_addr().expect("addr");
    let (full, version) = mesh.proxy.latest();
    assert!(full
        .signed
        .as_ref()
        .is_some_and(|s| !s.credentials.is_empty()));

    // 1. A forged update for O: another node's (valid) credentials and signature.
    let attacker = TestAuth::new(SEED, 0x5166);
    let forged = ServicesUpdate {
        origin: o.0,
        base_version: 0,
        version: version + 10,
        full: true,
        hops: 1,
        ops: vec![op("svc", 999), op("evil", 1), addr_op(trap_addr)],
        request: false,
        signed: Some(ServicesSig {
            signature: attacker.sign_bytes(b"whatever it signs, it is not O"),
            credentials: attacker.credentials_bytes(),
        }),
    };
    mesh.proxy.inject(Frame::Services(forged));
    // 2. O's genuine full update with its version altered.
    let mut altered = full.clone();
    altered.version = version + 10;
    mesh.proxy.inject(Frame::Services(altered));
    // 3. An address record injected for O (a diff and a full update).
    inject_addr_record(&mesh, trap_addr);

    assert!(
        eventually(WITHIN, || {
            mesh.v.stats().is_ok_and(|s| s.rejected_announcements >= 4)
        }),
        "rejected and counted: {:?}",
        mesh.v.stats().map(|s| s.rejected_announcements)
    );
    // Nothing dialed, nothing made up, the real service intact and dialable.
    assert!(
        !dialed(&trap, Duration::from_millis(1500)),
        "V dialed the injected address"
    );
    assert!(!has(&mesh.v, "evil", o));
    let svcs: Vec<u32> = mesh
        .v
        .services()
        .iter()
        .filter(|s| s.addr.node == o)
        .map(|s| s.addr.port)
        .collect();
    assert_eq!(svcs, [mesh.svc.local_addr().port]);
    dial_works(&mesh, &mesh.svc);
    // The origin's own later updates still get through.
    let _svc2 = mesh.o.bind("svc2").expect("bind");
    assert!(eventually(WITHIN, || has(&mesh.v, "svc2", o)));
    assert_eq!(mesh.v.stats().expect("stats").rejected_announcements, 4);
}

/// The same injection in an unsigned mesh is taken and dialed: what the test above
/// shows signing prevents.
#[test]
fn without_signatures_an_injected_address_record_is_dialed() {
    let mesh = mesh(false, 0x5200);
    let trap = TcpListener::bind("127.0.0.1:0").expect("trap");
    let trap_addr = trap.local_addr().expect("addr");
    inject_addr_record(&mesh, trap_addr);
    assert!(
        dialed(&trap, WITHIN),
        "an unsigned mesh dials what a router injects"
    );
    assert_eq!(mesh.v.stats().expect("stats").rejected_announcements, 0);
}
