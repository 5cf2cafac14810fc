//! A mesh that no peer can break (issue 8): one test per attack a hostile or broken
//! peer can mount with well-formed frames. Each checks the victim's documented
//! reaction, its memory, that a healthy link on the same victim keeps working during
//! and after the attack, and that the attacker's state is gone once it disconnects.
//!
//! The tests measure this process's RSS and thread count, so they run one at a time
//! (`SERIAL`), and each runs under a watchdog so a hang fails instead of stalling.

mod common;

use astranet::{Limits, Node, NodeId, NodeStats};
use astranet_engine::proto::frame::{self, ErrorCode, Frame, ServiceOp};
use bytes::BytesMut;
use common::eventually;
use common::raw::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const KA_INTERVAL: Duration = Duration::from_millis(200);
const KA_TIMEOUT: Duration = Duration::from_secs(1);
/// Round trips on the healthy link stay below this during every attack.
const RTT_BOUND: Duration = Duration::from_secs(1);
/// Memory bars: floods, and peers that never read.
const FLOOD_RSS: u64 = 256 * MIB;
const NEVER_READS_RSS: u64 = 128 * MIB;
/// Stop an attack that makes today's node eat memory well past the bar, so the test
/// fails cleanly instead of exhausting the machine.
const RSS_ABORT: u64 = 768 * MIB;
/// Likewise for threads (today a victim that stalls makes its peers' rejoin threads
/// multiply until the process runs out of memory maps).
const THREAD_ABORT: u64 = 256;
/// Error code 16: the peer reset (or made us refuse) too many streams.
const EXCESSIVE_RESETS: ErrorCode = ErrorCode(16);

fn builder() -> astranet::NodeBuilder {
    Node::builder()
        .shards(1)
        .keepalive(KA_INTERVAL, KA_TIMEOUT)
        .dial_timeout(Duration::from_secs(3))
        .join_timeout(Duration::from_secs(5))
}

/// The victim: one shard, short keep-alive, the given limits, listening on loopback.
fn victim_with(
    limits: Limits,
    f: impl FnOnce(astranet::NodeBuilder) -> astranet::NodeBuilder,
) -> (Node, String) {
    let v = f(builder().limits(limits)).build().expect("victim");
    let addr = v.listen("127.0.0.1:0").expect("listen").to_string();
    (v, addr)
}

fn victim(limits: Limits) -> (Node, String) {
    victim_with(limits, |b| b)
}

fn stats(n: &Node) -> NodeStats {
    n.stats().expect("stats")
}

/// An id for an attacker that is neither the victim's nor 0.
fn attacker_id(v: &Node, seed: u64) -> u64 {
    let id = 0x0a77_ac00_0000_0000 | seed;
    assert_ne!(id, v.id().0);
    id
}

fn has_service(n: &Node, name: &str, at: NodeId) -> bool {
    n.services()
        .iter()
        .any(|s| s.name == name && s.addr.node == at)
}

fn route_to(n: &Node, to: NodeId) -> Option<(NodeId, u32)> {
    n.routes()
        .into_iter()
        .find(|r| r.node == to)
        .map(|r| (r.next_hop, r.hops))
}

/// Waits until the victim has exactly `links` links to other nodes.
fn links_become(v: &Node, links: usize, within: Duration) -> bool {
    eventually(within, || v.stats().is_ok_and(|s| s.links == links))
}

/// Sends `total` frames made by `make(i, out)`, `batch` per write, until done, the
/// deadline, a write error, or the process grew by more than `RSS_ABORT`.
fn flood(
    peer: &RawPeer,
    total: usize,
    batch: usize,
    deadline: Instant,
    sampler: &Sampler,
    mut make: impl FnMut(usize, &mut BytesMut),
) -> Result<(), String> {
    let mut out = BytesMut::with_capacity(256 * 1024);
    let mut i = 0;
    while i < total {
        out.clear();
        let end = (i + batch).min(total);
        for j in i..end {
            make(j, &mut out);
        }
        if let Err(e) = peer.send_raw(&out) {
            return Err(format!("write failed after {i} of {total} frames: {e}"));
        }
        i = end;
        if Instant::now() > deadline {
            return Err(format!(
                "the victim took only {i} of {total} frames in time"
            ));
        }
        if let Some(why) = sampler.tripped() {
            return Err(format!("aborted after {i} of {total} frames: {why}"));
        }
    }
    Ok(())
}

/// Arms `sampler`: past the abort bars, cut the attacker off and stop the probe's node
/// (whose rejoin threads multiply while the victim stalls, today).
fn cut_off_when_exhausted(sampler: &Sampler, a: &RawPeer, probe: &Probe) {
    let sock = a.socket().try_clone().expect("clone");
    let node = probe.node.clone();
    sampler.arm(RSS_ABORT, THREAD_ABORT, move |why| {
        eprintln!("cutting the attack short: {why}");
        let _ = sock.shutdown(std::net::Shutdown::Both);
        node.shutdown();
    });
}

fn names(prefix: &str, n: usize) -> Vec<ServiceOp> {
    (0..n)
        .map(|i| svc_op(&format!("{prefix}-{i:05}"), 1000 + i as u32))
        .collect()
}

// ------------------------------------------------------------------ 1. route hijack

/// A peer advertising hops=0 for another node's id (S, directly linked to the victim)
/// must not attract S's traffic: a direct link always wins, and hops=0 is only
/// accepted for the peer's own id.
#[test]
fn route_hijack_a_direct_link_always_wins() {
    let _g = serial();
    watchdog("route_hijack", Duration::from_secs(40), || {
        let (v, addr) = victim(Limits::default());
        let probe = Probe::start(&v, &addr);
        // S with a high id: today's tie-break (lowest neighbour id) favours the attacker.
        let s = builder().id(NodeId(u64::MAX - 0x51)).build().unwrap();
        s.join(&addr).unwrap();
        let l = s.bind("svc").unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let acc = accepted.clone();
        std::thread::spawn(move || {
            while let Ok(mut st) = l.accept() {
                acc.fetch_add(1, Ordering::SeqCst);
                let mut b = Vec::new();
                let _ = st.read_to_end(&mut b);
            }
        });
        assert!(
            eventually(Duration::from_secs(5), || has_service(&v, "svc", s.id())),
            "victim never saw S's service"
        );
        let mut a = RawPeer::connect(&addr, RawOpts::new(2)).unwrap();
        a.start_reader(true);
        let fake = 0x5eed_0000_0000_0001;
        a.routes(&[(s.id().0, 0), (fake, 0), (a.id, 0)]).unwrap();
        assert!(
            a.sync(Duration::from_secs(3)),
            "victim did not answer a PING"
        );
        std::thread::sleep(Duration::from_millis(200));

        assert_eq!(
            route_to(&v, s.id()),
            Some((s.id(), 1)),
            "route to S must stay on the direct link; routes {:?}",
            v.routes()
        );
        assert!(
            route_to(&v, NodeId(fake)).is_none(),
            "hops=0 for an id other than the peer's own must be ignored; routes {:?}",
            v.routes()
        );
        assert_eq!(route_to(&v, NodeId(a.id)), Some((NodeId(a.id), 1)));
        let mut ok = 0;
        for i in 0..3 {
            match v.dial_timeout("svc", Duration::from_secs(2)) {
                Ok(mut st) => {
                    if st.write_all(b"hi").is_ok() && st.shutdown_write().is_ok() {
                        ok += 1;
                    }
                }
                Err(e) => eprintln!("dial {i}: {e}"),
            }
        }
        let opens = a.log.with(|s| s.opens.len());
        assert_eq!(opens, 0, "the attacker received {opens} OPENs meant for S");
        assert_eq!(ok, 3, "only {ok} of 3 dials of svc succeeded");
        assert!(
            eventually(Duration::from_secs(2), || accepted.load(Ordering::SeqCst)
                == 3),
            "S accepted {} of 3 streams",
            accepted.load(Ordering::SeqCst)
        );
        a.close();
        assert!(
            eventually(Duration::from_secs(2), || route_to(&v, NodeId(2)).is_none()),
            "attacker's route outlived its link: {:?}",
            v.routes()
        );
        assert_eq!(route_to(&v, s.id()), Some((s.id(), 1)));
        probe.stop().assert_healthy("route hijack", RTT_BOUND);
        s.shutdown();
        v.shutdown();
    });
}

// ------------------------------------------------- 2. SERVICES for another origin

/// A full, empty SERVICES update for another node's origin with version 2^64-1 must
/// not wipe (or freeze) that node's services.
#[test]
fn forged_services_cannot_wipe_another_origin() {
    let _g = serial();
    watchdog("forged_services", Duration::from_secs(40), || {
        let (v, addr) = victim(Limits::default());
        let probe = Probe::start(&v, &addr);
        let s = builder().build().unwrap();
        s.join(&addr).unwrap();
        let l = s.bind("svc").unwrap();
        std::thread::spawn(move || {
            while let Ok(st) = l.accept() {
                drop(st);
            }
        });
        assert!(eventually(Duration::from_secs(5), || has_service(
            &v,
            "svc",
            s.id()
        )));
        let mut a = RawPeer::connect(&addr, RawOpts::new(attacker_id(&v, 2))).unwrap();
        a.start_reader(true);
        a.send(&full_update(s.id().0, u64::MAX, vec![])).unwrap();
        assert!(a.sync(Duration::from_secs(3)));
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            has_service(&v, "svc", s.id()),
            "a forged update wiped S's services: {:?}",
            v.services()
        );
        v.dial_timeout("svc", Duration::from_secs(2))
            .expect("svc dialable during the attack");
        a.close();
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            has_service(&v, "svc", s.id()),
            "S's services gone after the attacker left: {:?}",
            v.services()
        );
        v.dial_timeout("svc", Duration::from_secs(2))
            .expect("svc dialable after the attack");
        // The forged version must not freeze S's later announcements either.
        let _l2 = s.bind("svc2").unwrap();
        assert!(
            eventually(Duration::from_secs(3), || has_service(&v, "svc2", s.id())),
            "S's next announcement was ignored after the forged version: {:?}",
            v.services()
        );
        probe.stop().assert_healthy("forged services", RTT_BOUND);
        s.shutdown();
        v.shutdown();
    });
}

// --------------------------------------------------------- 3. fake origins expire

/// Origins a peer announced disappear with its link: routed or not, visible or not,
/// and they do not come back when someone else later routes to them (a node's own
/// loopback broadcast is not a source).
#[test]
fn fake_origins_vanish_with_the_link_that_announced_them() {
    let _g = serial();
    watchdog("fake_origins_expire", Duration::from_secs(40), || {
        let (v, addr) = victim(Limits::default());
        let probe = Probe::start(&v, &addr);
        let base = stats(&v);
        let f = 0xfa4e_0000_0000_0001u64;
        let g = 0xfa4e_0000_0000_0002u64;
        let mut a = RawPeer::connect(&addr, RawOpts::new(attacker_id(&v, 3))).unwrap();
        a.start_reader(true);
        a.routes(&[(f, 1)]).unwrap();
        a.send_all(&[
            full_update(f, 1, vec![svc_op("fake-f", 1)]),
            full_update(g, 1, vec![svc_op("fake-g", 1)]),
            full_update(a.id, 1, vec![svc_op("fake-a", 1)]),
        ])
        .unwrap();
        assert!(a.sync(Duration::from_secs(3)));
        assert!(
            eventually(Duration::from_secs(2), || has_service(
                &v,
                "fake-f",
                NodeId(f)
            ) && has_service(
                &v,
                "fake-a",
                NodeId(a.id)
            )),
            "victim never listed the fake services: {:?}",
            v.services()
        );
        let during = stats(&v);
        assert!(
            during.origins >= base.origins + 2,
            "stats().origins should count the announced origins: {during:?}"
        );
        a.close();
        let t0 = Instant::now();
        let clean = eventually(Duration::from_secs(2), || {
            let st = stats(&v);
            !v.services().iter().any(|s| s.name.starts_with("fake-"))
                && route_to(&v, NodeId(f)).is_none()
                && st.origins == base.origins
                && st.service_entries == base.service_entries
                && st.routes == base.routes
        });
        assert!(
            clean,
            "attacker's origins outlived its link by {:?}: services {:?}, routes {:?}, stats {:?}",
            t0.elapsed(),
            v.services(),
            v.routes(),
            stats(&v)
        );
        // Someone else now routes to F and G: nothing of the old announcements returns.
        let mut b = RawPeer::connect(&addr, RawOpts::new(attacker_id(&v, 4))).unwrap();
        b.start_reader(true);
        b.routes(&[(f, 1), (g, 1)]).unwrap();
        assert!(b.sync(Duration::from_secs(3)));
        std::thread::sleep(Duration::from_millis(300));
        let stale: Vec<_> = v
            .services()
            .into_iter()
            .filter(|s| s.name.starts_with("fake-"))
            .collect();
        assert!(
            stale.is_empty(),
            "services of a departed announcer came back: {stale:?}"
        );
        b.close();
        probe.stop().assert_healthy("fake origins", RTT_BOUND);
        v.shutdown();
    });
}

// ------------------------------------------------ 4. 18,000 service names (~300 KB)

/// 18,000 service names in 6 SERVICES frames, all within the default caps: the victim
/// (with a watcher subscribed) digests them without stalling its other links, and
/// without dropping them for silence it caused itself.
#[test]
fn eighteen_thousand_service_names_do_not_stall_the_node() {
    let _g = serial();
    watchdog("eighteen_thousand_names", Duration::from_secs(60), || {
        let (v, addr) = victim(Limits::default());
        let probe = Probe::start(&v, &addr);
        let watch = v.watch_services();
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(AtomicU64::new(0));
        let (st, ev) = (stop.clone(), events.clone());
        let watcher = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                if watch.next_timeout(Duration::from_millis(20)).is_some() {
                    ev.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let sampler = Sampler::start();
        let mut a = RawPeer::connect(&addr, RawOpts::new(attacker_id(&v, 5))).unwrap();
        cut_off_when_exhausted(&sampler, &a, &probe);
        a.start_reader(true);
        let fakes: Vec<u64> = (1..=5).map(|k| 0xfa4e_0001_0000_0000 + k).collect();
        a.routes(&fakes.iter().map(|&f| (f, 1)).collect::<Vec<_>>())
            .unwrap();
        let mut frames = vec![full_update(a.id, 1, names("n0", 3000))];
        for (k, &f) in fakes.iter().enumerate() {
            frames.push(full_update(f, 1, names(&format!("n{}", k + 1), 3000)));
        }
        let bytes: usize = frames.iter().map(encoded_len).sum();
        assert!((250_000..350_000).contains(&bytes), "{bytes} bytes");
        let t0 = Instant::now();
        a.send_all(&frames).unwrap();
        let synced = a.sync(Duration::from_secs(15));
        let took = t0.elapsed();
        std::thread::sleep(Duration::from_millis(500));
        assert!(synced, "victim did not digest 18,000 names within 15 s");
        let listed = v
            .services()
            .iter()
            .filter(|s| s.name.starts_with('n'))
            .count();
        assert_eq!(listed, 18_000, "names within the caps must be listed");
        a.close();
        assert!(
            eventually(Duration::from_secs(3), || {
                let st = stats(&v);
                st.origins == 0
                    && st.service_entries == 0
                    && !v.services().iter().any(|s| s.name.starts_with('n'))
            }),
            "names outlived the attacker's link: {} listed, {:?}",
            v.services().len(),
            stats(&v)
        );
        stop.store(true, Ordering::Relaxed);
        let _ = watcher.join();
        assert!(
            events.load(Ordering::Relaxed) > 0,
            "the watcher heard nothing"
        );
        eprintln!("18,000 names digested in {took:?}");
        probe.stop().assert_healthy("18,000 names", RTT_BOUND);
        v.shutdown();
    });
}

/// With small caps, entries beyond them are refused and counted as limit hits.
#[test]
fn service_entries_beyond_the_caps_are_refused() {
    let _g = serial();
    watchdog("service_caps", Duration::from_secs(60), || {
        let cap = 1000;
        let (v, addr) = victim(Limits {
            max_services_per_origin: cap,
            ..Limits::default()
        });
        let probe = Probe::start(&v, &addr);
        let sampler = Sampler::start();
        let mut a = RawPeer::connect(&addr, RawOpts::new(attacker_id(&v, 6))).unwrap();
        cut_off_when_exhausted(&sampler, &a, &probe);
        a.start_reader(true);
        let fakes: Vec<u64> = (1..=5).map(|k| 0xfa4e_0002_0000_0000 + k).collect();
        a.routes(&fakes.iter().map(|&f| (f, 1)).collect::<Vec<_>>())
            .unwrap();
        // Our own origin: 800 names (within the cap), then a diff taking it to 3,800.
        let mut frames = vec![
            full_update(a.id, 1, names("own", 800)),
            diff_update(a.id, 1, names("more", 3000)),
        ];
        for (k, &f) in fakes.iter().enumerate() {
            frames.push(full_update(f, 1, names(&format!("f{k}"), 3000)));
        }
        a.send_all(&frames).unwrap();
        assert!(a.sync(Duration::from_secs(15)), "victim did not answer");
        std::thread::sleep(Duration::from_millis(300));
        let st = stats(&v);
        assert!(st.limit_hits > 0, "no limit hit counted: {st:?}");
        let svcs = v.services();
        for origin in std::iter::once(a.id).chain(fakes.iter().copied()) {
            let n = svcs
                .iter()
                .filter(|s| s.addr.node == NodeId(origin))
                .count();
            assert!(n <= cap, "origin {origin:x} holds {n} entries (cap {cap})");
        }
        assert!(
            st.service_entries <= cap * 6,
            "{} entries held: {st:?}",
            st.service_entries
        );
        a.close();
        assert!(
            eventually(Duration::from_secs(3), || {
                let st = stats(&v);
                st.origins == 0 && st.service_entries == 0 && v.services().is_empty()
            }),
            "state outlived the attacker: {:?}",
            stats(&v)
        );
        probe.stop().assert_healthy("service caps", RTT_BOUND);
        v.shutdown();
    });
}

// ------------------------------------------------------ 5. a million fake origins

/// 1,000,000 SERVICES frames, each a full update of a distinct fake origin.
#[test]
fn a_million_fake_origins_stay_within_the_memory_bar() {
    let _g = serial();
    watchdog("million_origins", Duration::from_secs(90), || {
        let (v, addr) = victim(Limits::default());
        let probe = Probe::start(&v, &addr);
        let sampler = Sampler::start();
        let mut opts = RawOpts::new(attacker_id(&v, 7));
        opts.write_timeout = Duration::from_secs(5);
        let mut a = RawPeer::connect(&addr, opts).unwrap();
        cut_off_when_exhausted(&sampler, &a, &probe);
        a.start_reader(true);
        let base_id = 0xfa4e_0003_0000_0000u64;
        // The first thousand are routed, so they are listed while the link lives.
        a.routes(&(0..1000).map(|i| (base_id + i, 1)).collect::<Vec<_>>())
            .unwrap();
        let total = 1_000_000;
        let t0 = Instant::now();
        let r = flood(
            &a,
            total,
            5000,
            t0 + Duration::from_secs(40),
            &sampler,
            |i, out| {
                frame::encode(
                    &full_update(base_id + i as u64, 1, vec![svc_op("x", 1)]),
                    out,
                )
            },
        );
        let synced = a.sync(Duration::from_secs(15));
        let growth = sampler.rss_growth();
        eprintln!(
            "1M origins: {r:?} in {:?}, synced {synced}, RSS +{} MiB",
            t0.elapsed(),
            growth / MIB
        );
        assert!(
            growth <= FLOOD_RSS,
            "RSS grew by {} MiB (bar {} MiB)",
            growth / MIB,
            FLOOD_RSS / MIB
        );
        r.unwrap();
        assert!(synced, "victim stopped answering after the flood");
        assert!(
            v.services().iter().any(|s| s.addr.node.0 == base_id),
            "the first fake origin (routed, within the caps) should be listed"
        );
        a.close();
        assert!(
            eventually(Duration::from_secs(5), || stats(&v).origins == 0
                && !v.services().iter().any(|s| s.name == "x")),
            "fake origins outlived the link: {:?}",
            stats(&v)
        );
        probe.stop().assert_healthy("1M origins", RTT_BOUND);
        v.shutdown();
    });
}

// ------------------------------------------------------- 6. 1.5 million fake routes

#[test]
fn a_million_and_a_half_fake_routes_are_capped() {
    let _g = serial();
    watchdog("fake_routes", Duration::from_secs(90), || {
        let cap = 16_384;
        let (v, addr) = victim(Limits {
            max_routes_per_link: cap,
            ..Limits::default()
        });
        let probe = Probe::start(&v, &addr);
        let sampler = Sampler::start();
        let mut opts = RawOpts::new(attacker_id(&v, 8));
        opts.write_timeout = Duration::from_secs(5);
        let mut a = RawPeer::connect(&addr, opts).unwrap();
        cut_off_when_exhausted(&sampler, &a, &probe);
        a.start_reader(true);
        let base_id = 0xfa4e_0004_0000_0000u64;
        let per_frame = 7000usize;
        let total = 1_500_000usize;
        let frames = total.div_ceil(per_frame);
        let t0 = Instant::now();
        let r = flood(
            &a,
            frames,
            4,
            t0 + Duration::from_secs(40),
            &sampler,
            |k, out| {
                let from = k * per_frame;
                let to = (from + per_frame).min(total);
                frame::encode(
                    &Frame::Routes {
                        entries: (from..to)
                            .map(|i| frame::RouteEntry {
                                node: base_id + i as u64,
                                hops: 1,
                            })
                            .collect(),
                    },
                    out,
                )
            },
        );
        eprintln!(
            "1.5M routes: {r:?} in {:?}, RSS +{} MiB, threads +{}",
            t0.elapsed(),
            sampler.rss_growth() / MIB,
            sampler.thread_growth()
        );
        r.unwrap();
        assert!(
            a.sync(Duration::from_secs(15)),
            "victim stopped answering after the flood"
        );
        let st = stats(&v);
        // Legitimate routes: the probe and the attacker itself.
        assert!(
            st.routes <= cap + 2,
            "{} routes held (cap {cap} per link): {st:?}",
            st.routes
        );
        assert!(
            v.routes().len() <= cap + 2,
            "{} routes listed",
            v.routes().len()
        );
        assert!(st.limit_hits > 0, "no limit hit counted: {st:?}");
        assert!(
            sampler.rss_growth() <= FLOOD_RSS,
            "RSS grew by {} MiB",
            sampler.rss_growth() / MIB
        );
        a.close();
        assert!(
            eventually(Duration::from_secs(3), || {
                let r = v.routes();
                r.len() == 1 && r[0].node == probe.node.id() && stats(&v).routes == 1
            }),
            "fake routes outlived the link: {} routes",
            v.routes().len()
        );
        probe.stop().assert_healthy("1.5M routes", RTT_BOUND);
        v.shutdown();
    });
}

// --------------------------------------------- 7. address records of fake origins

/// A test-owned TCP listener that counts accepted connections and holds a few open
/// without a word (as a black hole would).
struct Sink {
    addr: String,
    accepts: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Sink {
    fn start() -> Sink {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let accepts = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (accepts.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        a.fetch_add(1, Ordering::SeqCst);
                        if held.len() < 32 {
                            held.push(c);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Sink {
            addr,
            accepts,
            stop,
        }
    }
    fn accepts(&self) -> u64 {
        self.accepts.load(Ordering::SeqCst)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// 1,000 fake origins advertise address records; `routed`: the attacker also
/// advertises routes to them (so they look relayed, the case direct upgrade is for).
fn address_records(routed: bool) {
    let limits = Limits {
        max_upgrade_dials: 4,
        ..Limits::default()
    };
    // A low victim id, so today's rule (the lower id dials) makes the victim dial.
    let vid = NodeId(0x0000_0100_0000_0000 | u64::from(routed));
    let (v, addr) = victim_with(limits.clone(), |b| b.id(vid));
    let probe = Probe::start(&v, &addr);
    let sink = Sink::start();
    let sampler = Sampler::start();
    let mut a = RawPeer::connect(&addr, RawOpts::new(0x0a77_ac00_0000_0007)).unwrap();
    cut_off_when_exhausted(&sampler, &a, &probe);
    a.start_reader(true);
    let base_id = 0x7a4e_0005_0000_0000u64;
    if routed {
        a.routes(&(0..1000).map(|i| (base_id + i, 1)).collect::<Vec<_>>())
            .unwrap();
    }
    let frames: Vec<Frame> = (0..1000)
        .map(|i| full_update(base_id + i, 1, vec![addr_op(&sink.addr)]))
        .collect();
    a.send_all(&frames).unwrap();
    assert!(
        a.sync(Duration::from_secs(5)),
        "victim did not answer; {:?}",
        sampler.tripped()
    );
    std::thread::sleep(Duration::from_secs(4));
    let accepts = sink.accepts();
    let threads = sampler.thread_growth();
    eprintln!("address records (routed {routed}): {accepts} accepts, threads +{threads}");
    assert!(
        threads <= limits.max_upgrade_dials as u64 + 4,
        "thread count grew by {threads} (max_upgrade_dials {})",
        limits.max_upgrade_dials
    );
    if routed {
        assert!(
            accepts <= 2 * limits.max_upgrade_dials as u64,
            "{accepts} upgrade connections in 4 s (max_upgrade_dials {})",
            limits.max_upgrade_dials
        );
    } else {
        assert_eq!(accepts, 0, "unrouted origins must never be dialed");
    }
    a.close();
    assert!(
        eventually(Duration::from_secs(3), || stats(&v).origins == 0),
        "fake origins outlived the link: {:?}",
        stats(&v)
    );
    probe.stop().assert_healthy("address records", RTT_BOUND);
    v.shutdown();
}

#[test]
fn address_records_of_unrouted_origins_are_never_dialed() {
    let _g = serial();
    watchdog("addr_unrouted", Duration::from_secs(40), || {
        address_records(false)
    });
}

#[test]
fn address_records_are_dialed_a_bounded_number_at_a_time() {
    let _g = serial();
    watchdog("addr_routed", Duration::from_secs(40), || {
        address_records(true)
    });
}

// --------------------------------------------------- 8. PING flood, never reading

/// A peer that floods PINGs and never reads the answers is dropped within twice the
/// keep-alive timeout (write stall), without the victim buffering the answers.
#[test]
fn ping_flood_from_a_peer_that_never_reads_is_dropped() {
    let _g = serial();
    watchdog("ping_flood", Duration::from_secs(40), || {
        let (v, addr) = victim(Limits::default());
        let probe = Probe::start(&v, &addr);
        let sampler = Sampler::start();
        let mut opts = RawOpts::new(attacker_id(&v, 9));
        opts.write_timeout = Duration::from_millis(500);
        let a = RawPeer::connect(&addr, opts).unwrap();
        cut_off_when_exhausted(&sampler, &a, &probe);
        assert!(links_become(&v, 2, Duration::from_secs(2)));
        let stop = Arc::new(AtomicBool::new(false));
        let a = Arc::new(a);
        let (a2, st) = (a.clone(), stop.clone());
        let t0 = Instant::now();
        let flooder = std::thread::spawn(move || {
            let mut out = BytesMut::new();
            for i in 0..4096u64 {
                frame::encode(
                    &Frame::Ping {
                        ack: false,
                        opaque: i,
                    },
                    &mut out,
                );
            }
            let mut sent = 0u64;
            let end = Instant::now() + Duration::from_secs(8);
            while !st.load(Ordering::Relaxed) && Instant::now() < end {
                match a2.send_raw(&out) {
                    Ok(()) => sent += 4096,
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => break,
                }
            }
            sent
        });
        let dropped = links_become(&v, 1, 2 * KA_TIMEOUT + Duration::from_millis(700));
        let took = t0.elapsed();
        stop.store(true, Ordering::Relaxed);
        let sent = flooder.join().unwrap();
        let growth = sampler.rss_growth();
        eprintln!(
            "ping flood: {sent} pings, dropped {dropped} after {took:?}, RSS +{} MiB",
            growth / MIB
        );
        assert!(
            dropped,
            "the victim still holds the link of a peer that never reads, {took:?} into the flood: {:?}",
            stats(&v)
        );
        assert!(
            growth <= NEVER_READS_RSS,
            "RSS grew by {} MiB",
            growth / MIB
        );
        drop(a);
        probe.stop().assert_healthy("ping flood", RTT_BOUND);
        v.shutdown();
    });
}

/// When the writing handler finished, what it wrote, and how it ended.
type WriterOutcome = (Instant, u64, Result<(), String>);

// ---------------------------------------- 9. huge window, never reading

/// A peer advertising a 4 GiB window that opens a stream to a service writing 1 GiB
/// and never reads: the victim queues a bounded amount, drops the link within twice
/// the keep-alive timeout, and the writer gets an error instead of hanging.
#[test]
fn huge_window_peer_that_never_reads_is_dropped_and_the_writer_fails() {
    let _g = serial();
    watchdog("huge_window", Duration::from_secs(40), || {
        let (v, addr) = victim(Limits::default());
        let probe = Probe::start(&v, &addr);
        let sampler = Arc::new(Sampler::start());
        let l = v.bind("big").unwrap();
        let done: Arc<Mutex<Option<WriterOutcome>>> = Arc::new(Mutex::new(None));
        let (d, smp) = (done.clone(), sampler.clone());
        std::thread::spawn(move || {
            let Ok(mut s) = l.accept_timeout(Duration::from_secs(10)) else {
                return;
            };
            let chunk = vec![0x5au8; 1 << 20];
            let mut written = 0u64;
            let mut res = Ok(());
            for _ in 0..1024 {
                if smp.rss_growth() > RSS_ABORT {
                    res = Err(format!("aborted: RSS +{} MiB", smp.rss_growth() / MIB));
                    break;
                }
                if let Err(e) = s.write_all(&chunk) {
                    res = Err(format!("write failed: {e}"));
                    break;
                }
                written += chunk.len() as u64;
            }
            *d.lock().unwrap() = Some((Instant::now(), written, res));
        });
        let mut opts = RawOpts::new(attacker_id(&v, 10));
        opts.initial_window = u32::MAX;
        opts.write_timeout = Duration::from_millis(500);
        let mut a = RawPeer::connect(&addr, opts).unwrap();
        cut_off_when_exhausted(&sampler, &a, &probe);
        let t0 = Instant::now();
        a.open_service("big", b"", false).unwrap();
        // Alive (PINGs every 200 ms), but never reading.
        let a = Arc::new(a);
        let stop = Arc::new(AtomicBool::new(false));
        let (a2, st) = (a.clone(), stop.clone());
        let pinger = std::thread::spawn(move || {
            let mut i = 0;
            while !st.load(Ordering::Relaxed) && i < 100 {
                i += 1;
                if a2
                    .send(&Frame::Ping {
                        ack: false,
                        opaque: i,
                    })
                    .is_err()
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let bound = 2 * KA_TIMEOUT + Duration::from_secs(1);
        let dropped = links_become(&v, 1, bound);
        let writer_done = eventually(
            bound + Duration::from_secs(1) - t0.elapsed().min(bound),
            || done.lock().unwrap().is_some(),
        );
        stop.store(true, Ordering::Relaxed);
        let _ = pinger.join();
        let growth = sampler.rss_growth();
        let outcome = done.lock().unwrap().clone();
        eprintln!(
            "huge window: dropped {dropped}, writer {outcome:?} at {:?}, RSS +{} MiB",
            outcome.as_ref().map(|o| o.0 - t0),
            growth / MIB
        );
        assert!(
            growth <= NEVER_READS_RSS,
            "RSS grew by {} MiB queueing for a peer that never reads",
            growth / MIB
        );
        assert!(
            dropped,
            "link of a peer that never reads not dropped within {bound:?}"
        );
        assert!(writer_done, "the writing handler hangs");
        let (_, written, res) = outcome.unwrap();
        assert!(
            res.is_err(),
            "the handler wrote all {written} bytes to a peer that never reads"
        );
        drop(a);
        probe.stop().assert_healthy("huge window", RTT_BOUND);
        v.shutdown();
    });
}

// ------------------------------------------------------ 10. trickling handshakes

/// Connections that send one preamble byte every 200 ms are dropped once the
/// handshake timeout (1 s) passes, however slowly they keep talking.
#[test]
fn trickling_handshakes_are_dropped_at_the_handshake_timeout() {
    let _g = serial();
    watchdog("trickle", Duration::from_secs(40), || {
        let hs = Duration::from_secs(1);
        let (v, addr) = victim(Limits {
            handshake_timeout: hs,
            ..Limits::default()
        });
        let probe = Probe::start(&v, &addr);
        let mut bytes = frame::PREAMBLE.to_vec();
        let mut h = BytesMut::new();
        frame::encode(
            &Frame::Hello(frame::Hello {
                min_version: 1,
                max_version: 1,
                node_id: 0x0a77_ac00_0000_0011,
                roles: 0,
                max_frame_size: 65536,
                initial_window: 65536,
                max_streams: 100,
                keepalive_interval_ms: 10_000,
                keepalive_timeout_ms: 30_000,
                extensions: vec![],
            }),
            &mut h,
        );
        bytes.extend_from_slice(&h);
        let tricklers: Vec<_> = (0..5)
            .map(|_| {
                let addr = addr.clone();
                let bytes = bytes.clone();
                std::thread::spawn(move || -> Option<Duration> {
                    let s = TcpStream::connect(&addr).ok()?;
                    let t0 = Instant::now();
                    let mut r = s.try_clone().ok()?;
                    let closed = Arc::new(AtomicBool::new(false));
                    let c = closed.clone();
                    let reader = std::thread::spawn(move || {
                        let mut b = [0u8; 1024];
                        while let Ok(n) = r.read(&mut b) {
                            if n == 0 {
                                break;
                            }
                        }
                        c.store(true, Ordering::SeqCst);
                        t0.elapsed()
                    });
                    for b in bytes.iter().take(20) {
                        if closed.load(Ordering::SeqCst) || (&s).write_all(&[*b]).is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    let _ = s.shutdown(std::net::Shutdown::Both);
                    let when = reader.join().ok()?;
                    closed.load(Ordering::SeqCst).then_some(when)
                })
            })
            .collect();
        let tolerance = Duration::from_millis(700);
        for (i, t) in tricklers.into_iter().enumerate() {
            let closed_after = t.join().unwrap().expect("connect");
            // 20 bytes take 4 s: anything under that means the victim closed first.
            assert!(
                closed_after <= hs + tolerance,
                "trickling connection {i} survived {closed_after:?} (handshake timeout {hs:?})"
            );
        }
        assert!(eventually(Duration::from_secs(1), || {
            let s = stats(&v);
            s.handshaking == 0 && s.links == 1
        }));
        probe
            .stop()
            .assert_healthy("trickling handshakes", RTT_BOUND);
        v.shutdown();
    });
}

/// 300 idle connections against `max_handshaking` 64: at most 64 wait in handshake,
/// the others are closed at once, and a legitimate join still gets in.
#[test]
fn idle_connections_beyond_max_handshaking_are_closed_at_once() {
    let _g = serial();
    watchdog("handshake_slots", Duration::from_secs(40), || {
        let max = 64;
        // A long keep-alive timeout: idle connections must be closed for the handshake
        // limits, not for silence.
        let (v, addr) = victim_with(
            Limits {
                max_handshaking: max,
                handshake_timeout: Duration::from_secs(3),
                ..Limits::default()
            },
            |b| b.keepalive(KA_INTERVAL, Duration::from_secs(10)),
        );
        let probe = Probe::start(&v, &addr);
        let sa: std::net::SocketAddr = addr.parse().unwrap();
        let t0 = Instant::now();
        let mut conns = Vec::new();
        for _ in 0..300 {
            if let Ok(c) = TcpStream::connect_timeout(&sa, Duration::from_millis(500)) {
                c.set_nonblocking(true).unwrap();
                conns.push(c);
            }
        }
        let opened = conns.len();
        let open_took = t0.elapsed();
        std::thread::sleep(Duration::from_millis(500));
        let st = stats(&v);
        // Closed: the victim's preamble and HELLO (if any), then EOF or a reset.
        let closed = conns
            .iter()
            .filter(|c| {
                let mut r: &TcpStream = c;
                let mut b = [0u8; 4096];
                loop {
                    match r.read(&mut b) {
                        Ok(0) => return true,
                        Ok(_) => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                        Err(_) => return true,
                    }
                }
            })
            .count();
        let checked_at = t0.elapsed();
        eprintln!(
            "{opened} idle connections opened in {open_took:?}: {closed} closed at {checked_at:?}; {st:?}"
        );
        assert!(
            st.handshaking <= max,
            "{} connections in handshake (max {max})",
            st.handshaking
        );
        assert!(
            closed + max + 4 >= opened,
            "only {closed} of {opened} idle connections closed at once (max_handshaking {max})"
        );
        // A legitimate node gets in while the idle connections are still held.
        let legit = builder().build().unwrap();
        let end = Instant::now() + Duration::from_secs(8);
        let joined = loop {
            match legit.join(&addr) {
                Ok(()) => break true,
                Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => {
                    eprintln!("legit join: {e}");
                    break false;
                }
            }
        };
        assert!(joined, "a legitimate join failed during the flood");
        drop(conns);
        assert!(eventually(Duration::from_secs(5), || stats(&v).handshaking == 0));
        probe.stop().assert_healthy("handshake slots", RTT_BOUND);
        legit.shutdown();
        v.shutdown();
    });
}

// -------------------------------------------------------------- 11. rapid reset

/// Builds `n` OPEN + RESET pairs to a service nobody bound.
fn open_reset_pairs(a: &mut RawPeer, n: usize, out: &mut BytesMut) {
    for _ in 0..n {
        let id = a.next_id();
        frame::encode(
            &Frame::Open {
                id,
                fin: false,
                header: open_header(a.id, "nope"),
                data: bytes::Bytes::new(),
            },
            out,
        );
        frame::encode(
            &Frame::Reset {
                id,
                code: ErrorCode::CANCELLED,
            },
            out,
        );
    }
}

/// Past `max_reset_streams` in the window: GOAWAY EXCESSIVE_RESETS and the link closes.
#[test]
fn rapid_reset_ends_with_goaway_excessive_resets() {
    let _g = serial();
    watchdog("rapid_reset_goaway", Duration::from_secs(40), || {
        let (v, addr) = victim(Limits {
            max_reset_streams: 100,
            reset_window: Duration::from_secs(10),
            ..Limits::default()
        });
        let probe = Probe::start(&v, &addr);
        let mut opts = RawOpts::new(attacker_id(&v, 12));
        opts.write_timeout = Duration::from_secs(2);
        let mut a = RawPeer::connect(&addr, opts).unwrap();
        a.start_reader(true);
        let t0 = Instant::now();
        let mut out = BytesMut::new();
        for _ in 0..50 {
            if a.log.with(|s| s.eof.is_some() || !s.goaways.is_empty()) {
                break;
            }
            out.clear();
            open_reset_pairs(&mut a, 100, &mut out);
            if a.send_raw(&out).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let closed = a.wait_eof(Duration::from_secs(3));
        let (goaways, why) = a.log.with(|s| (s.goaways.clone(), s.eof_why.clone()));
        eprintln!(
            "rapid reset: GOAWAYs {goaways:?}, closed {closed} ({why}) after {:?}",
            t0.elapsed()
        );
        assert!(
            goaways.contains(&EXCESSIVE_RESETS),
            "no GOAWAY EXCESSIVE_RESETS (16); got {goaways:?}"
        );
        assert!(closed, "the link stayed open after GOAWAY EXCESSIVE_RESETS");
        assert!(links_become(&v, 1, Duration::from_secs(2)));
        probe.stop().assert_healthy("rapid reset", RTT_BOUND);
        v.shutdown();
    });
}

/// With a budget large enough, 50,000 OPEN + RESET pairs leave no stream state behind.
#[test]
fn rapid_reset_within_budget_leaks_no_streams() {
    let _g = serial();
    watchdog("rapid_reset_leak", Duration::from_secs(60), || {
        let (v, addr) = victim(Limits {
            max_reset_streams: u32::MAX,
            ..Limits::default()
        });
        let probe = Probe::start(&v, &addr);
        let sampler = Sampler::start();
        let base = stats(&v).streams;
        let mut opts = RawOpts::new(attacker_id(&v, 13));
        opts.write_timeout = Duration::from_secs(5);
        let mut a = RawPeer::connect(&addr, opts).unwrap();
        cut_off_when_exhausted(&sampler, &a, &probe);
        a.start_reader(true);
        let t0 = Instant::now();
        let mut out = BytesMut::new();
        let mut sent = 0;
        while sent < 50_000 && t0.elapsed() < Duration::from_secs(20) {
            out.clear();
            open_reset_pairs(&mut a, 500, &mut out);
            a.send_raw(&out).expect("victim stopped reading");
            sent += 500;
        }
        assert_eq!(sent, 50_000, "only {sent} pairs sent in 20 s");
        assert!(a.sync(Duration::from_secs(10)), "victim did not answer");
        assert!(
            eventually(Duration::from_secs(3), || stats(&v).streams == base),
            "stream state leaked: {} streams, baseline {base}",
            stats(&v).streams
        );
        let (goaways, eof) = a.log.with(|s| (s.goaways.clone(), s.eof));
        assert!(
            goaways.is_empty() && eof.is_none(),
            "link closed within the reset budget: {goaways:?}"
        );
        assert!(
            sampler.rss_growth() <= FLOOD_RSS,
            "RSS grew by {} MiB",
            sampler.rss_growth() / MIB
        );
        a.close();
        assert!(links_become(&v, 1, Duration::from_secs(3)));
        assert!(eventually(Duration::from_secs(2), || stats(&v).streams == base));
        probe
            .stop()
            .assert_healthy("rapid reset within budget", RTT_BOUND);
        v.shutdown();
    });
}

/// Relayed OPENs whose next hop refuses them, each followed by DATA before the relay
/// heard back: the bytes the relay took for the inbound stream in the meantime must go
/// with the refusal (they used to stay in a mailbox nobody would ever read, forever).
#[test]
fn refused_relayed_opens_with_early_data_leave_no_mailboxes() {
    let _g = serial();
    watchdog("refused_relayed_leak", Duration::from_secs(60), || {
        let (v, addr) = victim(Limits {
            max_reset_streams: u32::MAX,
            ..Limits::default()
        });
        let far = builder().build().expect("far node");
        far.join(&addr).expect("join");
        assert!(eventually(Duration::from_secs(5), || route_to(
            &v,
            far.id()
        )
        .is_some()));
        let mut a = RawPeer::connect(&addr, RawOpts::new(attacker_id(&v, 21))).unwrap();
        a.start_reader(true);
        let base = stats(&v).mailboxes;
        const N: usize = 64;
        for _ in 0..N {
            let id = a.next_id();
            let mut header = open_header(a.id, "");
            header.dst_node = far.id().0;
            // Nobody listens there: the far node refuses.
            header.dst_port = 4242;
            a.send_all(&[
                Frame::Open {
                    id,
                    fin: false,
                    header,
                    data: bytes::Bytes::new(),
                },
                Frame::Data {
                    id,
                    fin: false,
                    data: bytes::Bytes::from(vec![7u8; 32 * 1024]),
                },
            ])
            .unwrap();
        }
        assert!(
            a.log.wait(Duration::from_secs(10), |s| s.resets.len() >= N),
            "the relayed opens were not all refused"
        );
        assert!(
            eventually(Duration::from_secs(3), || stats(&v).mailboxes <= base),
            "mailboxes leaked: {} (baseline {base})",
            stats(&v).mailboxes
        );
        a.close();
        far.shutdown();
        v.shutdown();
    });
}
