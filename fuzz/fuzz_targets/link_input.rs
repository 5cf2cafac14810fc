//! Feeds arbitrary bytes to the link state machine, after a valid handshake, in chunks
//! split where the input says. The link must never panic, hang or grow without bound.
#![no_main]

use astranet_engine::proto::frame::{self, Frame, Hello, PREAMBLE, VERSION};
use astranet_engine::proto::{Link, LinkConfig, Recv};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let cfg = LinkConfig { node_id: 5, max_streams: 64, ..Default::default() };
    let mut link = Link::new(cfg, now);
    // The first byte chooses whether to do a valid handshake or fuzz it too.
    let (handshake, rest) = match data.split_first() {
        Some((b, rest)) => (b & 1 == 0, rest),
        None => return,
    };
    if handshake {
        let mut hello = BytesMut::from(&PREAMBLE[..]);
        frame::encode(
            &Frame::Hello(Hello {
                min_version: VERSION,
                max_version: VERSION,
                node_id: 9,
                roles: 0,
                max_frame_size: 65536,
                initial_window: 4096,
                max_streams: 16,
                keepalive_interval_ms: 1000,
                keepalive_timeout_ms: 3000,
                extensions: vec![],
            }),
            &mut hello,
        );
        link.handle_input(&hello, now).unwrap();
    }
    let mut t = now;
    for chunk in rest.chunks(97) {
        t += Duration::from_millis(10);
        let _ = link.handle_input(chunk, t);
        link.handle_timeout(t);
        while let Some(ev) = link.poll_event() {
            use astranet_engine::proto::Event::*;
            match ev {
                Incoming { id, .. } => {
                    let _ = link.accept(id);
                    let _ = link.send(id, &mut bytes::Bytes::from_static(b"reply"));
                }
                Readable(id) => {
                    for _ in 0..16 {
                        match link.recv(id, 1000) {
                            Ok(Recv::Data(_)) => {}
                            _ => break,
                        }
                    }
                    link.close(id);
                }
                _ => {}
            }
        }
        let mut out = BytesMut::new();
        link.poll_transmit(&mut out, 1 << 20);
        assert!(link.stream_count() <= 64 + 16);
    }
});
