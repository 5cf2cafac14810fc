//! What a node reports about itself: `stats()` figures that move with traffic,
//! refusals, resets and relays, and `links()` with peer, address and RTT.

mod common;

use common::{eventually, pattern};
use std::io::{ErrorKind, Read, Write};
use std::time::Duration;

fn echo_once(s: &mut astranet::Stream, data: &[u8]) {
    let mut r = s.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        r.read_to_end(&mut got).map(|_| got)
    });
    s.write_all(data).unwrap();
    s.shutdown_write().unwrap();
    assert_eq!(reader.join().unwrap().unwrap(), data);
}

fn serve_echo(l: astranet::Listener) {
    std::thread::spawn(move || {
        while let Ok(mut s) = l.accept() {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if s.read_to_end(&mut buf).is_ok() {
                    let _ = s.write_all(&buf);
                }
            });
        }
    });
}

#[test]
fn links_report_peer_address_and_rtt() {
    let server = common::node();
    let client = common::node();
    let addr = server.listen("127.0.0.1:0").unwrap();
    client.join(&addr.to_string()).unwrap();
    let mut links = Vec::new();
    // The RTT comes from the PING sent when the handshake completes.
    assert!(eventually(Duration::from_secs(5), || {
        links = client.links().unwrap();
        links.len() == 1 && links[0].rtt.is_some()
    }));
    let l = &links[0];
    assert_eq!(l.peer, Some(server.id()));
    assert_eq!(l.addr, Some(addr));
    assert!(l.rtt.unwrap() < Duration::from_secs(1), "{l:?}");
    assert!(l.bytes_in > 0 && l.bytes_out > 0, "{l:?}");
    let on_server = server.links().unwrap();
    assert_eq!(on_server.len(), 1);
    assert_eq!(on_server[0].peer, Some(client.id()));
}

#[test]
fn stats_count_traffic_refusals_resets_and_relays() {
    // A — B — C, no direct upgrade: A's streams to C are relayed by B.
    let mk = || common::node_with(|b| b.direct_upgrade(false));
    let (a, b, c) = (mk(), mk(), mk());
    let b_addr = b.listen("127.0.0.1:0").unwrap().to_string();
    a.join(&b_addr).unwrap();
    c.join(&b_addr).unwrap();
    serve_echo(c.bind("echo").unwrap());
    let before_a = a.stats().unwrap();
    let before_c = c.stats().unwrap();
    let data = pattern(3, 300_000);
    let mut s = a.dial("echo").unwrap();
    assert_eq!(s.peer_addr().node, c.id());
    echo_once(&mut s, &data);
    drop(s);
    let st_a = a.stats().unwrap();
    assert!(
        st_a.bytes_out >= before_a.bytes_out + data.len() as u64,
        "{st_a:?}"
    );
    assert!(
        st_a.bytes_in >= before_a.bytes_in + data.len() as u64,
        "{st_a:?}"
    );
    assert!(st_a.frames_out > before_a.frames_out && st_a.frames_in > before_a.frames_in);
    assert_eq!(st_a.streams_opened, before_a.streams_opened + 1);
    let st_b = b.stats().unwrap();
    assert_eq!(st_b.relayed_streams, 1, "{st_b:?}");
    assert!(st_b.relayed_bytes >= 2 * data.len() as u64, "{st_b:?}");
    assert!(eventually(Duration::from_secs(5), || b
        .stats()
        .unwrap()
        .relaying
        == 0));
    let st_c = c.stats().unwrap();
    assert_eq!(st_c.streams_opened, before_c.streams_opened + 1);
    // A refused stream: counted where it was refused, and the reset code where it
    // arrived.
    let e = a.dial(&format!("{}:99", c.id())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
    assert!(eventually(Duration::from_secs(5), || c
        .stats()
        .unwrap()
        .refused_opens
        >= 1));
    let st_a = a.stats().unwrap();
    assert_eq!(
        st_a.resets_by_code.get(&4),
        Some(&1),
        "REFUSED is code 4: {st_a:?}"
    );
}
