//! The mesh: discovery across hops, relays, rerouting, churn, env namespaces, roles.
//! Representative tests run twice, in plaintext and over TLS (`_over_tls`);
//! `ASTRANET_TEST_TLS=1` runs them all over TLS.

mod common;

use astranet::{Node, Role, RouteEvent, ServiceEvent};
use common::*;
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

fn fast_node(f: impl FnOnce(astranet::NodeBuilder) -> astranet::NodeBuilder) -> Node {
    node_with(|b| f(b.keepalive(Duration::from_millis(200), Duration::from_secs(1))))
}

/// `a` joins `b` through a proxy the test can kill.
fn join_via_proxy(a: &Node, b: &Node) -> Proxy {
    let addr = b.listen("127.0.0.1:0").unwrap();
    let p = Proxy::start(addr.to_string());
    a.join(&p.addr).unwrap();
    p
}

fn sees_service(n: &Node, name: &str) -> bool {
    n.services().iter().any(|s| s.name == name)
}

fn echo_server(l: astranet::Listener) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while let Ok(mut s) = l.accept() {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = s.shutdown_write();
            });
        }
    })
}

/// Sends `data` and checks the echo.
fn echo_check(n: &Node, target: &str, data: &[u8]) {
    let mut s = n.dial_timeout(target, Duration::from_secs(10)).unwrap();
    let mut r = s.try_clone().unwrap();
    let len = data.len();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::with_capacity(len);
        r.read_to_end(&mut got).map(|_| got)
    });
    s.write_all(data).unwrap();
    s.shutdown_write().unwrap();
    assert!(
        reader.join().unwrap().unwrap() == data,
        "echo through {target}"
    );
}

#[test]
fn line_relays_10_mib_and_fails_both_ends_when_the_relay_dies() {
    line_relays_10_mib_and_fails_both_ends_when_the_relay_dies_body()
}

/// The same over TLS links.
#[test]
fn line_relays_10_mib_and_fails_both_ends_when_the_relay_dies_over_tls() {
    with_tls(line_relays_10_mib_and_fails_both_ends_when_the_relay_dies_body)
}

fn line_relays_10_mib_and_fails_both_ends_when_the_relay_dies_body() {
    let a = fast_node(|b| b);
    let b = fast_node(|b| b);
    let c = fast_node(|b| b);
    let pa = join_via_proxy(&a, &b);
    let pc = join_via_proxy(&c, &b);
    let l = c.bind("far").unwrap();
    assert!(eventually(Duration::from_secs(5), || sees_service(
        &a, "far"
    )));
    let route = a.routes().into_iter().find(|r| r.node == c.id()).unwrap();
    assert_eq!((route.next_hop, route.hops), (b.id(), 2));
    // 10 MiB through the relay, content checked, both directions.
    let srv = echo_server(l);
    echo_check(&a, "far", &pattern(7, 10 << 20));
    // A long-lived relayed stream, then B "dies" (both its links cut).
    let l2 = c.bind("far2").unwrap();
    assert!(eventually(Duration::from_secs(5), || sees_service(
        &a, "far2"
    )));
    let mut s = a.dial("far2").unwrap();
    let mut sc = l2.accept().unwrap();
    s.write_all(b"hi").unwrap();
    let mut b2 = [0u8; 2];
    sc.read_exact(&mut b2).unwrap();
    let far_end = std::thread::spawn(move || {
        let mut buf = [0u8; 1];
        let t = Instant::now();
        (sc.read(&mut buf).is_err(), t.elapsed())
    });
    let t = Instant::now();
    pa.kill();
    pc.kill();
    let mut buf = [0u8; 1];
    assert!(s.read(&mut buf).is_err(), "relayed stream fails at A");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let (failed, took) = far_end.join().unwrap();
    assert!(failed, "relayed stream fails at C");
    assert!(took < Duration::from_secs(3), "C noticed after {took:?}");
    assert!(eventually(Duration::from_secs(3), || !sees_service(
        &a, "far"
    )));
    assert!(a.routes().iter().all(|r| r.node != c.id()));
    drop(srv);
}

#[test]
fn relay_holds_backpressure_end_to_end() {
    let a = node();
    let b = node();
    let c = node();
    let addr = b.listen("127.0.0.1:0").unwrap();
    a.join(&addr.to_string()).unwrap();
    c.join(&addr.to_string()).unwrap();
    let l = c.bind("slow").unwrap();
    assert!(eventually(Duration::from_secs(5), || sees_service(
        &a, "slow"
    )));
    let mut s = a.dial("slow").unwrap();
    let _never_read = l.accept().unwrap();
    s.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0usize;
    loop {
        match s.write(&chunk) {
            Ok(n) => written += n,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::TimedOut);
                break;
            }
        }
        assert!(
            written < 64 << 20,
            "writer never blocked: backpressure lost"
        );
    }
    // What A could write is bounded by windows and in-flight limits at A, B and C,
    // not by C's reader: nothing piles up on B.
    assert!(written <= 8 << 20, "{written}");
}

#[test]
fn ring_of_five_takes_the_shortest_path_and_reroutes() {
    ring_of_five_takes_the_shortest_path_and_reroutes_body()
}

/// The same over TLS links.
#[test]
fn ring_of_five_takes_the_shortest_path_and_reroutes_over_tls() {
    with_tls(ring_of_five_takes_the_shortest_path_and_reroutes_body)
}

fn ring_of_five_takes_the_shortest_path_and_reroutes_body() {
    // Every node listens here: without this, direct upgrades would make a full mesh.
    let nodes: Vec<Node> = (0..5)
        .map(|_| fast_node(|b| b.direct_upgrade(false)))
        .collect();
    let mut proxies = Vec::new();
    for i in 0..5 {
        proxies.push(join_via_proxy(&nodes[i], &nodes[(i + 1) % 5]));
    }
    let l = nodes[2].bind("ring").unwrap();
    let srv = echo_server(l);
    assert!(eventually(Duration::from_secs(5), || {
        nodes[0]
            .routes()
            .iter()
            .any(|r| r.node == nodes[2].id() && r.hops == 2)
    }));
    let r = nodes[0]
        .routes()
        .into_iter()
        .find(|r| r.node == nodes[2].id())
        .unwrap();
    assert_eq!(r.next_hop, nodes[1].id(), "0-1-2, not 0-4-3-2");
    for i in 0..20u64 {
        echo_check(&nodes[0], "ring", &pattern(i, 10_000));
    }
    // Cut 0-1: new streams go 0-4-3-2.
    proxies[0].kill();
    assert!(
        eventually(Duration::from_secs(5), || {
            nodes[0]
                .routes()
                .iter()
                .any(|r| r.node == nodes[2].id() && r.next_hop == nodes[4].id() && r.hops == 3)
        }),
        "{:?}",
        nodes[0].routes()
    );
    for i in 0..20u64 {
        echo_check(&nodes[0], "ring", &pattern(i + 100, 10_000));
    }
    // Nothing loops or lingers: every relayed stream's state is freed everywhere.
    assert!(
        eventually(Duration::from_secs(5), || {
            nodes.iter().all(|n| n.stats().unwrap().streams == 0)
        }),
        "{:?}",
        nodes.iter().map(|n| n.stats().unwrap()).collect::<Vec<_>>()
    );
    drop(srv);
}

#[test]
fn service_churn_never_reaches_withdrawn_services_and_leaks_nothing() {
    let a = node();
    let b = node();
    let addr = b.listen("127.0.0.1:0").unwrap();
    a.join(&addr.to_string()).unwrap();
    let mut bound = Vec::new();
    for i in 0..1000 {
        bound.push(b.bind(&format!("churn{i}")).unwrap());
    }
    assert!(eventually(Duration::from_secs(10), || {
        a.services()
            .iter()
            .filter(|s| s.name.starts_with("churn"))
            .count()
            == 1000
    }));
    // Unbind the odd ones while dials to the even ones run.
    let dialer = {
        let a = a.clone();
        std::thread::spawn(move || {
            for round in 0..5 {
                for i in (0..1000).step_by(50) {
                    let _ = round;
                    let s = a.dial_timeout(&format!("churn{i}"), Duration::from_secs(5));
                    assert!(s.is_ok(), "even service {i} stays dialable");
                }
            }
        })
    };
    let mut kept = Vec::new();
    for (i, l) in bound.into_iter().enumerate() {
        if i % 2 == 0 {
            kept.push(l);
        }
    }
    dialer.join().unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        a.services()
            .iter()
            .filter(|s| s.name.starts_with("churn"))
            .count()
            == 500
    }));
    // Withdrawn: not dialable (NotFound once the dial timeout passes).
    for i in (1..1000).step_by(100) {
        let e = a
            .dial_timeout(&format!("churn{i}"), Duration::from_millis(50))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "churn{i}");
    }
    drop(kept);
    assert!(eventually(Duration::from_secs(10), || {
        !a.services().iter().any(|s| s.name.starts_with("churn"))
    }));
    assert!(eventually(Duration::from_secs(5), || {
        a.stats().unwrap().streams == 0 && b.stats().unwrap().streams == 0
    }));
}

#[test]
fn env_namespaces_partition_services() {
    let staging = node_with(|b| b.env("staging"));
    let staging2 = node_with(|b| b.env("staging"));
    let prod = node();
    let addr = prod.listen("127.0.0.1:0").unwrap();
    staging.join(&addr.to_string()).unwrap();
    staging2.join(&addr.to_string()).unwrap();
    let _s = staging2.bind("db").unwrap();
    let _p = prod.bind("db:5432").unwrap();
    assert!(eventually(Duration::from_secs(5), || sees_service(
        &staging, "db"
    )));
    // Staging sees only the staging instance; prod only its own.
    let seen: Vec<_> = staging
        .services()
        .into_iter()
        .filter(|s| s.name == "db")
        .collect();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].addr.node, staging2.id());
    let seen: Vec<_> = prod
        .services()
        .into_iter()
        .filter(|s| s.name == "db")
        .collect();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].addr.node, prod.id());
    let s = staging.dial("db").unwrap();
    assert_eq!(s.peer_addr().node, staging2.id());
    // The staging node can still relay: prod routes do not care about env.
    assert!(staging.routes().iter().any(|r| r.node == staging2.id()));
}

#[test]
fn non_routers_do_not_relay() {
    let a = node();
    let b = node_with(|b| b.role(Role::Server));
    let c = node();
    let addr = b.listen("127.0.0.1:0").unwrap();
    a.join(&addr.to_string()).unwrap();
    c.join(&addr.to_string()).unwrap();
    let _l = c.bind("behind").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        a.routes().iter().all(|r| r.node != c.id()),
        "B advertises no transit"
    );
    assert!(!sees_service(&a, "behind"));
    let e = a
        .dial_timeout(&format!("{}:1", c.id()), Duration::from_millis(200))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::HostUnreachable);
    // A client announces nothing.
    let d = node_with(|b| b.role(Role::Client));
    d.join(&addr.to_string()).unwrap();
    let _x = d.bind("hidden").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!sees_service(&b, "hidden"));
}

#[test]
fn watches_report_services_and_routes() {
    watches_report_services_and_routes_body()
}

/// The same over TLS links.
#[test]
fn watches_report_services_and_routes_over_tls() {
    with_tls(watches_report_services_and_routes_body)
}

fn watches_report_services_and_routes_body() {
    let a = node();
    let b = node();
    let ws = a.watch_services();
    let wr = a.watch_routes();
    let addr = b.listen("127.0.0.1:0").unwrap();
    a.join(&addr.to_string()).unwrap();
    match wr.next_timeout(Duration::from_secs(5)) {
        Some(RouteEvent::Up(r)) => assert_eq!(r.node, b.id()),
        e => panic!("{e:?}"),
    }
    let l = b.bind("watched").unwrap();
    match ws.next_timeout(Duration::from_secs(5)) {
        Some(ServiceEvent::Up(s)) => assert_eq!(s.name, "watched"),
        e => panic!("{e:?}"),
    }
    drop(l);
    match ws.next_timeout(Duration::from_secs(5)) {
        Some(ServiceEvent::Down(s)) => assert_eq!(s.name, "watched"),
        e => panic!("{e:?}"),
    }
    b.shutdown();
    match wr.next_timeout(Duration::from_secs(5)) {
        Some(RouteEvent::Down(n)) => assert_eq!(n, b.id()),
        e => panic!("{e:?}; routes now {:?}; stats {:?}", a.routes(), a.stats()),
    }
}

#[test]
fn sticky_dial_by_key_is_stable() {
    let a = node();
    let servers: Vec<Node> = (0..3).map(|_| node()).collect();
    let mut ls = Vec::new();
    for s in &servers {
        let addr = s.listen("127.0.0.1:0").unwrap();
        a.join(&addr.to_string()).unwrap();
        ls.push(s.bind("sticky").unwrap());
    }
    assert!(eventually(Duration::from_secs(5), || {
        a.services().iter().filter(|s| s.name == "sticky").count() == 3
    }));
    let mut spread = std::collections::HashSet::new();
    for k in 0..30u32 {
        let key = k.to_be_bytes();
        let first = a.dial_key("sticky", &key).unwrap().peer_addr();
        for _ in 0..3 {
            assert_eq!(a.dial_key("sticky", &key).unwrap().peer_addr(), first);
        }
        spread.insert(first.node);
    }
    assert!(spread.len() > 1, "keys spread over instances");
}

#[test]
fn direct_upgrade_skips_the_relay_unless_turned_off() {
    direct_upgrade_skips_the_relay_unless_turned_off_body()
}

/// The same over TLS links.
#[test]
fn direct_upgrade_skips_the_relay_unless_turned_off_over_tls() {
    with_tls(direct_upgrade_skips_the_relay_unless_turned_off_body)
}

fn direct_upgrade_skips_the_relay_unless_turned_off_body() {
    for upgrade in [true, false] {
        let a = node_with(|b| b.direct_upgrade(upgrade));
        let b = node_with(|b| b.direct_upgrade(upgrade));
        let c = node_with(|b| b.direct_upgrade(upgrade));
        let addr = b.listen("127.0.0.1:0").unwrap();
        c.listen("127.0.0.1:0").unwrap();
        a.join(&addr.to_string()).unwrap();
        c.join(&addr.to_string()).unwrap();
        let l = c.bind("up").unwrap();
        let srv = echo_server(l);
        let direct = eventually(Duration::from_secs(3), || {
            a.routes().iter().any(|r| r.node == c.id() && r.hops == 1)
        });
        assert_eq!(direct, upgrade, "upgrade={upgrade}: {:?}", a.routes());
        echo_check(&a, "up", &pattern(3, 100_000));
        drop(srv);
    }
}

/// A reset crosses a relay with its code unchanged (it used to pass through an
/// `io::ErrorKind`, so FLOW_CONTROL arrived as CANCELLED).
#[test]
fn reset_codes_cross_a_relay_unchanged() {
    use astranet_engine::proto::frame::{ErrorCode, Frame};
    use common::raw::{full_update, svc_op, RawOpts, RawPeer};
    let a = node();
    let b = node();
    let addr = b.listen("127.0.0.1:0").unwrap();
    a.join(&addr.to_string()).unwrap();
    // C is a raw peer behind B: it announces a service, accepts the relayed OPEN,
    // then resets the stream with FLOW_CONTROL.
    let mut opts = RawOpts::new(0x00c0_ffee_0000_0001);
    opts.accept_opens = true;
    let mut c = RawPeer::connect(&addr.to_string(), opts).unwrap();
    c.start_reader(true);
    c.send(&full_update(c.id, 1, vec![svc_op("raw-svc", 5)]))
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || sees_service(
        &a, "raw-svc"
    )));
    let mut s = a.dial("raw-svc").unwrap();
    let mut id = 0;
    assert!(c.log.wait(Duration::from_secs(5), |seen| {
        id = seen.open_ids.last().copied().unwrap_or(0);
        id != 0
    }));
    c.send(&Frame::Reset {
        id,
        code: ErrorCode::FLOW_CONTROL,
    })
    .unwrap();
    let mut buf = [0u8; 8];
    let e = s.read(&mut buf).unwrap_err();
    let code = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<astranet::StreamReset>())
        .map(|r| r.0);
    assert_eq!(code, Some(ErrorCode::FLOW_CONTROL), "{e}");
}

/// A relayed stream half-closed by the dialer at once still carries 12 MiB the other
/// way, intact, and ends with end of stream on both sides (on one shard the relay
/// splices: the FIN crosses while the other direction keeps moving).
#[test]
fn half_closed_relay_carries_megabytes_the_other_way() {
    let a = node();
    let b = node();
    let c = node();
    let addr = b.listen("127.0.0.1:0").unwrap();
    a.join(&addr.to_string()).unwrap();
    c.join(&addr.to_string()).unwrap();
    let l = c.bind("talker").unwrap();
    assert!(eventually(Duration::from_secs(5), || sees_service(
        &a, "talker"
    )));
    let data = pattern(3, 12 << 20);
    let sent = data.clone();
    let srv = std::thread::spawn(move || -> std::io::Result<()> {
        let mut s = l.accept()?;
        let mut req = Vec::new();
        s.read_to_end(&mut req)?;
        assert_eq!(req, b"go");
        s.write_all(&sent)?;
        s.shutdown_write()
    });
    let mut s = a.dial("talker").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"go").unwrap();
    s.shutdown_write().unwrap();
    let mut got = Vec::with_capacity(data.len());
    s.read_to_end(&mut got).unwrap();
    assert!(got == data, "{} bytes back, {} sent", got.len(), data.len());
    srv.join().unwrap().unwrap();
    assert!(eventually(Duration::from_secs(3), || b
        .stats()
        .is_ok_and(|s| s.relaying == 0)));
}
