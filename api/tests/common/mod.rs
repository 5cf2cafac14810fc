//! Helpers: node pairs over TCP loopback or an in-memory pipe, and a TCP proxy that a
//! test can kill or freeze to simulate a dying link.
#![allow(dead_code)]

pub mod raw;
pub mod tls;

use astranet::Node;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shards per test node: 1, or `ASTRANET_TEST_SHARDS` (CI runs the suite on 2 too).
pub fn shards() -> usize {
    std::env::var("ASTRANET_TEST_SHARDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

thread_local! {
    /// Nodes this test thread builds run TLS (see [`with_tls`]).
    static TLS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every node that [`node`] and [`node_with`] build on this thread
/// running TLS (certificates of one test CA). `ASTRANET_TEST_TLS=1` turns it on for
/// every test.
pub fn with_tls<R>(f: impl FnOnce() -> R) -> R {
    TLS.with(|t| t.set(true));
    let r = f();
    TLS.with(|t| t.set(false));
    r
}

pub fn tls_on() -> bool {
    TLS.with(|t| t.get()) || std::env::var("ASTRANET_TEST_TLS").is_ok_and(|v| v == "1")
}

/// The test CA, made once per process.
pub fn test_ca() -> &'static astranet::certs::DevCa {
    static CA: std::sync::OnceLock<astranet::certs::DevCa> = std::sync::OnceLock::new();
    CA.get_or_init(|| astranet::certs::DevCa::generate().expect("test CA"))
}

/// `b` with a fresh node certificate of the test CA when TLS is on.
pub fn secure(b: astranet::NodeBuilder) -> astranet::NodeBuilder {
    if tls_on() {
        b.tls(
            test_ca()
                .node_config(astranet::NodeId::random())
                .expect("node certificate"),
        )
    } else {
        b
    }
}

pub fn node() -> Node {
    secure(Node::builder())
        .shards(shards())
        .dial_timeout(Duration::from_secs(10))
        .build()
        .expect("node")
}

pub fn node_with(f: impl FnOnce(astranet::NodeBuilder) -> astranet::NodeBuilder) -> Node {
    f(secure(Node::builder()).shards(shards()))
        .build()
        .expect("node")
}

/// Two nodes joined over TCP loopback: (client, server).
pub fn tcp_pair() -> (Node, Node) {
    let server = node();
    let client = node();
    let addr = server.listen("127.0.0.1:0").unwrap();
    client.join(&addr.to_string()).unwrap();
    (client, server)
}

/// Two nodes joined over an in-memory pipe with `attach`.
pub fn pipe_pair() -> (Node, Node) {
    let server = node();
    let client = node();
    let (a, b) = astranet::pipe();
    let s2 = server.clone();
    let t = std::thread::spawn(move || s2.attach(b));
    client.attach(a).unwrap();
    t.join().unwrap().unwrap();
    (client, server)
}

/// Polls `cond` every 5 ms for up to `limit`.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Serves echo on `l` until the listener closes: one thread per stream (tests open few).
pub fn echo(l: astranet::Listener) {
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
    });
}

#[track_caller]
pub fn roundtrip(s: &mut astranet::Stream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

/// A TCP proxy in front of `target`. `kill()` resets both sides; `freeze()` stops
/// forwarding but keeps the sockets open (a silent stall).
pub struct Proxy {
    pub addr: String,
    frozen: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn start(target: String) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let frozen = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (f, c) = (frozen.clone(), conns.clone());
        std::thread::spawn(move || {
            // One connection is all these tests need.
            let Ok((down, _)) = l.accept() else { return };
            let up = TcpStream::connect(&target).unwrap();
            c.lock().unwrap().push(down.try_clone().unwrap());
            c.lock().unwrap().push(up.try_clone().unwrap());
            for (mut from, mut to) in [
                (down.try_clone().unwrap(), up.try_clone().unwrap()),
                (up, down),
            ] {
                let f = f.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        // Frozen: swallow the bytes, as a black-holed route would.
                        if f.load(Ordering::SeqCst) {
                            continue;
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Proxy {
            addr,
            frozen,
            conns,
        }
    }

    pub fn kill(&self) {
        for c in self.conns.lock().unwrap().iter() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
}
