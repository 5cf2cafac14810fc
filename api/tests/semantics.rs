//! Socket semantics of streams, each as its own test.

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

#[test]
fn dialing_unbound_port_is_refused_promptly() {
    let (client, server) = tcp_pair();
    let t = Instant::now();
    let e = client.dial(&format!("{}:4242", server.id())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    // And on the node itself.
    let e = client.dial(":4242").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn unknown_service_is_not_found_after_the_dial_timeout() {
    let (client, _server) = tcp_pair();
    let t = Instant::now();
    let e = client
        .dial_timeout("nosuch", Duration::from_millis(300))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[test]
fn binding_twice_is_addr_in_use() {
    let n = node();
    let _a = n.bind(":80").unwrap();
    assert_eq!(n.bind(":80").unwrap_err().kind(), ErrorKind::AddrInUse);
    let _b = n.bind("echo").unwrap();
    assert_eq!(n.bind("echo").unwrap_err().kind(), ErrorKind::AddrInUse);
    assert_eq!(n.bind("echo:81").unwrap_err().kind(), ErrorKind::AddrInUse);
    // Unbinding frees the name and port.
    drop(_a);
    drop(_b);
    let _c = n.bind("echo:80").unwrap();
}

#[test]
fn bad_addresses_are_invalid_input() {
    let n = node();
    for a in ["", ":0", "1echo", "echo:x", "0123456789abcdef", "a b"] {
        assert_eq!(
            n.dial_timeout(a, Duration::from_millis(10))
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidInput,
            "{a:?}"
        );
    }
    assert_eq!(
        n.bind("0123456789abcdef:80").unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

#[test]
fn node_dials_its_own_services() {
    let n = node();
    let l = n.bind("self-echo").unwrap();
    let t = std::thread::spawn(move || {
        let mut s = l.accept().unwrap();
        let mut b = [0u8; 3];
        s.read_exact(&mut b).unwrap();
        s.write_all(&b).unwrap();
    });
    let mut c = n.dial("self-echo").unwrap();
    assert_eq!(c.peer_addr().node, n.id());
    c.write_all(b"abc").unwrap();
    let mut b = [0u8; 3];
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"abc");
    t.join().unwrap();
}

#[test]
fn half_close_then_peer_writes_back() {
    let (client, server) = tcp_pair();
    let l = server.bind(":9").unwrap();
    let t = std::thread::spawn(move || {
        let mut s = l.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap(); // EOF after the client's shutdown_write
        s.write_all(&got).unwrap();
        s.write_all(b" and more").unwrap();
    });
    let mut c = client.dial(&format!("{}:9", server.id())).unwrap();
    c.write_all(b"request").unwrap();
    c.shutdown_write().unwrap();
    assert_eq!(c.write(b"x").unwrap_err().kind(), ErrorKind::BrokenPipe);
    let mut back = String::new();
    c.read_to_string(&mut back).unwrap();
    assert_eq!(back, "request and more");
    t.join().unwrap();
}

#[test]
fn dropping_a_stream_is_seen_and_frees_state_on_both_sides() {
    let (client, server) = tcp_pair();
    let l = server.bind(":10").unwrap();
    let mut streams = Vec::new();
    for _ in 0..100 {
        streams.push(client.dial(&format!("{}:10", server.id())).unwrap());
    }
    let accepted: Vec<_> = (0..100).map(|_| l.accept().unwrap()).collect();
    assert_eq!(client.stats().unwrap().streams, 100);
    assert_eq!(server.stats().unwrap().streams, 100);
    // The client drops its ends: the server reads EOF.
    drop(streams);
    for mut s in accepted {
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).unwrap(), 0);
    }
    assert!(eventually(Duration::from_secs(5), || {
        client.stats().unwrap().streams == 0 && server.stats().unwrap().streams == 0
    }));
}

#[test]
fn killed_connection_fails_every_stream_promptly() {
    let server = node();
    let client = node_with(|b| b.keepalive(Duration::from_millis(200), Duration::from_secs(2)));
    let addr = server.listen("127.0.0.1:0").unwrap();
    let proxy = Proxy::start(addr.to_string());
    client.join(&proxy.addr).unwrap();
    let l = server.bind(":11").unwrap();
    let mut cs: Vec<_> = (0..20)
        .map(|_| client.dial(&format!("{}:11", server.id())).unwrap())
        .collect();
    let mut ss: Vec<_> = (0..20).map(|_| l.accept().unwrap()).collect();
    let readers: Vec<_> = cs
        .drain(..10)
        .map(|mut s| {
            std::thread::spawn(move || {
                let mut b = [0u8; 10];
                s.read(&mut b)
            })
        })
        .collect();
    let t = Instant::now();
    proxy.kill();
    for r in readers {
        assert!(r.join().unwrap().is_err(), "blocked read fails");
    }
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    for s in cs.iter_mut() {
        let mut b = [0u8; 1];
        assert!(s.read(&mut b).is_err());
        assert!(s.write_all(&[0u8; 1]).and_then(|_| s.flush()).is_err());
    }
    for s in ss.iter_mut() {
        let mut b = [0u8; 1];
        assert!(s.read(&mut b).is_err());
    }
}

#[test]
fn silent_stall_fails_streams_within_the_keepalive_timeout() {
    let ka = |b: astranet::NodeBuilder| {
        b.keepalive(Duration::from_millis(100), Duration::from_millis(600))
    };
    let server = node_with(ka);
    let client = node_with(ka);
    let addr = server.listen("127.0.0.1:0").unwrap();
    let proxy = Proxy::start(addr.to_string());
    client.join(&proxy.addr).unwrap();
    let l = server.bind(":12").unwrap();
    let mut c = client.dial(&format!("{}:12", server.id())).unwrap();
    let mut s = l.accept().unwrap();
    proxy.freeze();
    let t = Instant::now();
    let mut b = [0u8; 1];
    let e = c.read(&mut b).unwrap_err();
    let e2 = s.read(&mut b).unwrap_err();
    assert!(
        t.elapsed() < Duration::from_millis(600 + 1500),
        "{:?}",
        t.elapsed()
    );
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    assert_eq!(e2.kind(), ErrorKind::TimedOut, "{e2}");
}

#[test]
fn slow_reader_does_not_stall_other_streams() {
    let (client, server) = tcp_pair();
    let l = server.bind(":13").unwrap();
    let mut slow = client
        .dial(&format!("{}:13", server.id()))
        .expect("dial slow");
    let _slow_server_end = l.accept().unwrap(); // never read
    slow.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // Fill the slow stream until its writer blocks.
    let chunk = vec![1u8; 64 * 1024];
    let mut stuck = false;
    for _ in 0..1000 {
        if slow.write(&chunk).is_err() {
            stuck = true;
            break;
        }
    }
    assert!(stuck, "writer to a reader that never reads must block");
    // Another stream on the same link moves 32 MiB meanwhile.
    let mut fast = client.dial(&format!("{}:13", server.id())).unwrap();
    let mut fs = l.accept().unwrap();
    let t = std::thread::spawn(move || {
        let mut total = 0;
        let mut b = vec![0u8; 65536];
        loop {
            match fs.read(&mut b).unwrap() {
                0 => return total,
                n => total += n,
            }
        }
    });
    for _ in 0..512 {
        fast.write_all(&chunk).unwrap();
    }
    fast.shutdown_write().unwrap();
    assert_eq!(t.join().unwrap(), 512 * 64 * 1024);
}

#[test]
fn writer_blocks_when_window_is_full_and_nothing_is_buffered_unboundedly() {
    let (client, server) = tcp_pair();
    let l = server.bind(":14").unwrap();
    let mut c = client.dial(&format!("{}:14", server.id())).unwrap();
    let mut s = l.accept().unwrap();
    c.set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let chunk = vec![7u8; 16 * 1024];
    let mut written = 0usize;
    let t = Instant::now();
    loop {
        match c.write(&chunk) {
            Ok(n) => written += n,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::TimedOut);
                break;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(10));
    }
    // Accepted = the peer's initial window plus what a handle may have in flight.
    assert!(
        written <= 64 * 1024 + astranet::MAX_IN_FLIGHT + 16 * 1024,
        "{written}"
    );
    assert!(written >= 64 * 1024, "{written}");
    // Reading frees the window and the writer continues; nothing was lost.
    let reader = std::thread::spawn(move || {
        let mut got = 0usize;
        let mut b = vec![0u8; 65536];
        loop {
            match s.read(&mut b).unwrap() {
                0 => return got,
                n => {
                    assert!(b[..n].iter().all(|&x| x == 7));
                    got += n
                }
            }
        }
    });
    c.set_write_timeout(None).unwrap();
    for _ in 0..64 {
        c.write_all(&chunk).unwrap();
        written += chunk.len();
    }
    c.shutdown_write().unwrap();
    assert_eq!(reader.join().unwrap(), written);
}

#[test]
fn read_timeout_is_honoured_and_data_is_not_lost() {
    let (client, server) = tcp_pair();
    let l = server.bind(":15").unwrap();
    let mut c = client.dial(&format!("{}:15", server.id())).unwrap();
    let mut s = l.accept().unwrap();
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let t = Instant::now();
    let mut b = [0u8; 4];
    let e = c.read(&mut b).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut);
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert!(t.elapsed() < Duration::from_secs(2));
    // Data that arrives after the timeout goes to the next read.
    s.write_all(b"late").unwrap();
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"late");
    assert_eq!(
        c.set_read_timeout(Some(Duration::ZERO)).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

#[test]
fn try_clone_shares_the_stream_and_addresses_are_right() {
    let (client, server) = tcp_pair();
    let l = server.bind("addrs:16").unwrap();
    assert_eq!(l.local_addr().port, 16);
    assert_eq!(l.local_addr().node, server.id());
    let c = client.dial("addrs").unwrap();
    let mut s = l.accept().unwrap();
    assert_eq!(c.peer_addr(), l.local_addr());
    assert_eq!(s.peer_addr(), c.local_addr());
    assert_eq!(c.local_addr().node, client.id());
    let mut c2 = c.try_clone().unwrap();
    drop(c); // the clone keeps the stream open
    c2.write_all(b"still open").unwrap();
    drop(c2);
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert_eq!(got, "still open");
}

#[test]
fn shutdown_fails_streams_and_refuses_new_work() {
    let (client, server) = tcp_pair();
    let l = server.bind(":17").unwrap();
    let mut c = client.dial(&format!("{}:17", server.id())).unwrap();
    let _s = l.accept().unwrap();
    server.shutdown();
    let mut b = [0u8; 1];
    // The client sees the link go: EOF or an error, promptly.
    let r = c.read(&mut b);
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(server.bind(":18").is_err());
    assert!(l.accept().is_err());
    assert!(eventually(Duration::from_secs(3), || client
        .routes()
        .is_empty()));
}

#[test]
fn binding_past_what_one_announcement_holds_fails_clearly() {
    let node = common::node_with(|b| {
        b.limits(astranet::Limits {
            max_update_bytes: 1000,
            ..astranet::Limits::default()
        })
    });
    // Each name takes 7 + 60 bytes of the announcement: 14 fit in 1,000.
    let mut held = Vec::new();
    let err = loop {
        let name = format!("s{:059}", held.len());
        match node.bind(&name) {
            Ok(l) => held.push(l),
            Err(e) => break e,
        }
        assert!(held.len() < 100, "no limit reached");
    };
    assert_eq!(held.len(), 14);
    assert_eq!(err.kind(), ErrorKind::QuotaExceeded, "{err}");
    assert!(err.to_string().contains("max_update_bytes"), "{err}");
    // Unbinding makes room again; ports without names never count.
    held.pop();
    assert!(node.bind(&format!("t{:059}", 0)).is_ok());
    assert!(node.bind(":4242").is_ok());
}

/// Runs `f` on a thread and fails the test if it does not finish in `limit` (a
/// deadlock shows as a failure, not a hang).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .expect("deadlock: did not finish in time")
}

#[test]
fn half_close_after_a_large_request_does_not_wait_for_the_peer() {
    // Like TcpStream::shutdown(Write): the FIN queues behind 256 KiB (more than the
    // peer's window) and returns; the peer reads only after we half-closed.
    let (client, server) = tcp_pair();
    let l = server.bind(":17").unwrap();
    let req = pattern(17, 256 * 1024);
    let srv = std::thread::spawn(move || {
        let mut s = l.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(format!("got {}", got.len()).as_bytes())
            .unwrap();
        got
    });
    let addr = format!("{}:17", server.id());
    let answer = within(Duration::from_secs(20), move || {
        let mut c = client.dial(&addr).unwrap();
        c.write_all(&req).unwrap();
        let t = Instant::now();
        c.shutdown_write().unwrap();
        let took = t.elapsed();
        let mut back = String::new();
        c.read_to_string(&mut back).unwrap();
        (back, took, client)
    });
    assert_eq!(answer.0, format!("got {}", 256 * 1024));
    assert!(answer.1 < Duration::from_millis(500), "{:?}", answer.1);
    assert_eq!(srv.join().unwrap(), pattern(17, 256 * 1024));
}

#[test]
fn flush_does_not_wait_for_the_peer_to_read() {
    // Like TcpStream::flush: bytes a write took are on their way; flushing them does
    // not wait until the peer's window lets them go. The peer reads only after we
    // flushed and wrote a second request; everything arrives once, in order.
    let (client, server) = tcp_pair();
    let l = server.bind(":18").unwrap();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let srv = std::thread::spawn(move || {
        let mut s = l.accept().unwrap();
        go_rx.recv().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let addr = format!("{}:18", server.id());
    let took = within(Duration::from_secs(20), move || {
        let mut c = client.dial(&addr).unwrap();
        c.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(&pattern(18, 512 * 1024)).unwrap();
        let t = Instant::now();
        c.flush().unwrap();
        let took = t.elapsed();
        go_tx.send(()).unwrap();
        c.write_all(b"end").unwrap();
        c.flush().unwrap();
        drop(c);
        (took, client)
    });
    assert!(took.0 < Duration::from_millis(500), "{:?}", took.0);
    let mut want = pattern(18, 512 * 1024);
    want.extend_from_slice(b"end");
    assert_eq!(srv.join().unwrap(), want);
}

#[test]
fn write_timeout_then_half_close_loses_and_repeats_nothing() {
    let (client, server) = tcp_pair();
    let l = server.bind(":18").unwrap();
    let mut c = client.dial(&format!("{}:18", server.id())).unwrap();
    let mut s = l.accept().unwrap();
    c.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Nobody reads: write a numbered byte sequence until a write times out.
    let data = pattern(18, 8 << 20);
    let mut sent = 0usize;
    let t = Instant::now();
    loop {
        match c.write(&data[sent..sent + 40_000]) {
            Ok(n) => sent += n,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::TimedOut);
                break;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "writes never blocked"
        );
    }
    // A half-close right after the timeout does not wait either.
    let t = Instant::now();
    c.shutdown_write().unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // The peer gets exactly the bytes the writes reported: none lost, none twice.
    let got = within(Duration::from_secs(20), move || {
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    assert_eq!(got.len(), sent);
    assert!(got == data[..sent], "bytes differ");
}
