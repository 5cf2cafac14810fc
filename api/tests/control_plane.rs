//! The control plane under churn: user threads reading services and routes, dialing
//! and watching, while services and routes come and go, must never deadlock (issue 8:
//! a lock-order inversion between the routing and the services tables).
//!
//! Nodes A — R — B (R relays; A and B join R). B binds and drops the service "churn"
//! over and over, and short-lived nodes join R and leave (so A's routes change too),
//! while threads on A call `services()`, `routes()`, `dial("churn")` and consume
//! `watch_services()` / `watch_routes()`. Everything must finish within a bound; after
//! the churn, with "churn" bound, A sees it and dials it.

mod common;

use astranet::Node;
use common::eventually;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const CYCLES: usize = 60;
/// Everything (setup, churn, workers) must be done within this.
const BOUND: Duration = Duration::from_secs(60);

fn node(shards: usize) -> Node {
    Node::builder()
        .shards(shards)
        .keepalive(Duration::from_millis(200), Duration::from_secs(2))
        .dial_timeout(Duration::from_secs(5))
        .join_timeout(Duration::from_secs(5))
        .build()
        .expect("node")
}

/// Serves "churn" on `n` until the node shuts down: echoes each stream.
fn serve(l: astranet::Listener) {
    std::thread::spawn(move || {
        while let Ok(mut s) = l.accept() {
            std::thread::spawn(move || {
                let mut b = [0u8; 64];
                while let Ok(k) = s.read(&mut b) {
                    if k == 0 || s.write_all(&b[..k]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// What one worker thread on A is doing, for the failure message.
struct Worker {
    name: &'static str,
    ops: AtomicU64,
    busy: AtomicBool,
}

fn churn_never_deadlocks(shards: usize) {
    let start = Instant::now();
    let r = node(shards);
    let addr = r.listen("127.0.0.1:0").unwrap().to_string();
    let a = node(shards);
    let b = node(shards);
    a.join(&addr).unwrap();
    b.join(&addr).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || a
            .routes()
            .iter()
            .any(|x| x.node == b.id())),
        "A never learned a route to B"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = mpsc::channel::<&'static str>();
    let mut workers = Vec::new();
    let mut spawn = |name: &'static str, f: Box<dyn Fn(&Node) + Send>| {
        let w = Arc::new(Worker {
            name,
            ops: AtomicU64::new(0),
            busy: AtomicBool::new(false),
        });
        workers.push(w.clone());
        let (a, stop, tx) = (a.clone(), stop.clone(), done_tx.clone());
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) && start.elapsed() < BOUND {
                    w.busy.store(true, Ordering::SeqCst);
                    f(&a);
                    w.busy.store(false, Ordering::SeqCst);
                    w.ops.fetch_add(1, Ordering::Relaxed);
                }
                let _ = tx.send(w.name);
            })
            .unwrap();
    };
    spawn(
        "services",
        Box::new(|a| {
            let _ = a.services();
        }),
    );
    spawn(
        "routes",
        Box::new(|a| {
            let _ = a.routes();
        }),
    );
    spawn(
        "services+routes",
        Box::new(|a| {
            let _ = a.services().len() + a.routes().len();
        }),
    );
    spawn(
        "dial",
        Box::new(|a| {
            if let Ok(mut s) = a.dial_timeout("churn", Duration::from_millis(200)) {
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let _ = s.write_all(b"x");
                let mut b = [0u8; 1];
                let _ = s.read(&mut b);
            }
        }),
    );
    spawn(
        "watch_services",
        Box::new(|a| {
            let w = a.watch_services();
            for _ in 0..50 {
                if w.next_timeout(Duration::from_millis(10)).is_none() {
                    break;
                }
            }
        }),
    );
    spawn(
        "watch_routes",
        Box::new(|a| {
            let w = a.watch_routes();
            for _ in 0..50 {
                if w.next_timeout(Duration::from_millis(10)).is_none() {
                    break;
                }
            }
        }),
    );
    // One long-lived watcher of each kind too.
    let ws = a.watch_services();
    let wr = a.watch_routes();
    spawn(
        "long watch_services",
        Box::new(move |_| {
            let _ = ws.next_timeout(Duration::from_millis(20));
        }),
    );
    spawn(
        "long watch_routes",
        Box::new(move |_| {
            let _ = wr.next_timeout(Duration::from_millis(20));
        }),
    );
    drop(done_tx);

    // The churn: B announces and withdraws "churn"; transient nodes join R and leave,
    // so A's routes (and services of the transient nodes) change too.
    let (churn_tx, churn_rx) = mpsc::channel::<Result<astranet::Listener, String>>();
    {
        let (b, addr) = (b.clone(), addr.clone());
        std::thread::Builder::new()
            .name("churn".into())
            .spawn(move || {
                let res = (|| {
                    for i in 0..CYCLES {
                        if start.elapsed() > BOUND {
                            return Err(format!("churn cycle {i} after {:?}", start.elapsed()));
                        }
                        let l = b.bind("churn").map_err(|e| format!("bind {i}: {e}"))?;
                        let c = node(1);
                        if c.join(&addr).is_ok() {
                            let _c_svc = c.bind("transient").ok();
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        drop(l);
                        c.shutdown();
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    b.bind("churn").map_err(|e| format!("final bind: {e}"))
                })();
                let _ = churn_tx.send(res);
            })
            .unwrap();
    }
    let churned = churn_rx.recv_timeout(BOUND.saturating_sub(start.elapsed()));
    stop.store(true, Ordering::Relaxed);
    let mut finished = Vec::new();
    while finished.len() < workers.len() {
        let left = BOUND.saturating_sub(start.elapsed());
        match done_rx.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(n) => finished.push(n),
            Err(_) => break,
        }
    }
    let stuck: Vec<String> = workers
        .iter()
        .filter(|w| !finished.contains(&w.name))
        .map(|w| {
            format!(
                "{} (after {} calls, in a call: {})",
                w.name,
                w.ops.load(Ordering::Relaxed),
                w.busy.load(Ordering::SeqCst)
            )
        })
        .collect();
    let churn_ok = match &churned {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.clone()),
        Err(_) => Some("the churn thread is stuck".to_string()),
    };
    if !stuck.is_empty() || churn_ok.is_some() {
        // Deadlocked nodes cannot be shut down (their shards never stop): leave them.
        std::mem::forget(a);
        std::mem::forget(b);
        std::mem::forget(r);
        panic!(
            "shards({shards}): control plane deadlocked or stalled within {BOUND:?}: \
             stuck workers {stuck:?}; churn: {churn_ok:?}"
        );
    }
    let listener = churned.unwrap().unwrap();
    serve(listener);
    assert!(
        eventually(Duration::from_secs(10), || a
            .services()
            .iter()
            .any(|s| s.name == "churn" && s.addr.node == b.id())),
        "shards({shards}): A never saw the final 'churn': {:?}",
        a.services()
    );
    let mut s = a
        .dial_timeout("churn", Duration::from_secs(5))
        .expect("dial churn after the churn");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"ok").unwrap();
    let mut back = [0u8; 2];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ok");
    drop(s);
    eprintln!(
        "shards({shards}): {} calls on A in {:?}",
        workers
            .iter()
            .map(|w| w.ops.load(Ordering::Relaxed))
            .sum::<u64>(),
        start.elapsed()
    );
    a.shutdown();
    b.shutdown();
    r.shutdown();
}

#[test]
fn churn_never_deadlocks_one_shard() {
    common::raw::watchdog("churn_1", BOUND + Duration::from_secs(30), || {
        churn_never_deadlocks(1)
    });
}

#[test]
fn churn_never_deadlocks_two_shards() {
    common::raw::watchdog("churn_2", BOUND + Duration::from_secs(30), || {
        churn_never_deadlocks(2)
    });
}
