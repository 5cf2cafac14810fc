//! Property tests of the frame codec and of the link's input path.

use astranet_engine::proto::frame::{
    self, Decoded, ErrorCode, Frame, FrameError, FrameType, Hello, OpenHeader, RouteEntry,
    ServiceOp, ServicesSig, ServicesUpdate, HEADER_LEN, MAX_STREAM_ID, PREAMBLE, VERSION,
};
use astranet_engine::proto::{Link, LinkConfig};
use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use std::time::Instant;

const MAX: u32 = 64 * 1024;

fn bytes_upto(n: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..=n).prop_map(Bytes::from)
}

fn sid() -> impl Strategy<Value = u64> {
    1..=MAX_STREAM_ID
}

fn utf8_upto(n: usize) -> impl Strategy<Value = Bytes> {
    proptest::string::string_regex(&format!(".{{0,{n}}}"))
        .unwrap()
        .prop_map(|s| {
            let mut b = s.into_bytes();
            b.truncate(255);
            while std::str::from_utf8(&b).is_err() {
                b.pop();
            }
            Bytes::from(b)
        })
}

fn open_header() -> impl Strategy<Value = OpenHeader> {
    (
        any::<u64>(),
        any::<u32>(),
        any::<u64>(),
        any::<u32>(),
        any::<u8>(),
        bytes_upto(255),
        bytes_upto(255),
    )
        .prop_map(
            |(dst_node, dst_port, src_node, src_port, hop_limit, env, service)| OpenHeader {
                dst_node,
                dst_port,
                src_node,
                src_port,
                hop_limit,
                env,
                service,
            },
        )
}

fn any_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            any::<u16>(),
            any::<u16>(),
            any::<u64>(),
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec((any::<u16>(), bytes_upto(40)), 0..5)
        )
            .prop_map(|(a, b, c, d, e, f, g, h, i, ext)| Frame::Hello(Hello {
                min_version: a,
                max_version: b,
                node_id: c,
                roles: d,
                max_frame_size: e,
                initial_window: f,
                max_streams: g,
                keepalive_interval_ms: h,
                keepalive_timeout_ms: i,
                extensions: ext,
            })),
        (sid(), any::<bool>(), open_header(), bytes_upto(3000)).prop_map(
            |(id, fin, header, data)| Frame::Open {
                id,
                fin,
                header,
                data
            }
        ),
        (sid(), any::<bool>(), bytes_upto(5000)).prop_map(|(id, fin, data)| Frame::Data {
            id,
            fin,
            data
        }),
        (sid(), any::<bool>(), any::<u32>()).prop_map(|(id, ack, increment)| Frame::Window {
            id,
            ack,
            increment
        }),
        (sid(), any::<u32>()).prop_map(|(id, c)| Frame::Reset {
            id,
            code: ErrorCode(c)
        }),
        (any::<bool>(), any::<u64>()).prop_map(|(ack, opaque)| Frame::Ping { ack, opaque }),
        (0..=MAX_STREAM_ID, any::<u32>(), utf8_upto(100)).prop_map(|(last_id, c, reason)| {
            Frame::GoAway {
                last_id,
                code: ErrorCode(c),
                reason,
            }
        }),
        any::<u64>().prop_map(|max| Frame::Streams { max }),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
            any::<u8>(),
            proptest::collection::vec(
                (any::<bool>(), any::<u32>(), bytes_upto(20), bytes_upto(60)),
                0..20
            ),
            any::<bool>(),
            proptest::option::of((bytes_upto(64), bytes_upto(100))),
        )
            .prop_map(
                |(origin, base_version, version, full, hops, ops, request, signed)| {
                    Frame::Services(ServicesUpdate {
                        origin,
                        base_version,
                        version,
                        full,
                        hops,
                        request,
                        // A signature is never empty.
                        signed: signed.map(|(s, credentials)| ServicesSig {
                            signature: if s.is_empty() {
                                Bytes::from_static(b"s")
                            } else {
                                s
                            },
                            credentials,
                        }),
                        ops: ops
                            .into_iter()
                            .map(|(announce, port, env, name)| ServiceOp {
                                announce,
                                port,
                                env,
                                name,
                            })
                            .collect(),
                    })
                }
            ),
        proptest::collection::vec((any::<u64>(), any::<u8>()), 0..50).prop_map(|e| {
            Frame::Routes {
                entries: e
                    .into_iter()
                    .map(|(node, hops)| RouteEntry { node, hops })
                    .collect(),
            }
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Every frame round-trips, alone and in a stream of frames split at any point.
    #[test]
    fn every_frame_round_trips(frames in proptest::collection::vec(any_frame(), 1..8), split in any::<usize>()) {
        let mut wire = BytesMut::new();
        for f in &frames {
            frame::encode(f, &mut wire);
        }
        let split = split % (wire.len() + 1);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&wire[..split]);
        let mut decoded = Vec::new();
        loop {
            match frame::decode(&mut buf, MAX).unwrap() {
                Some(Decoded::Frame(f)) => decoded.push(f),
                Some(Decoded::Skipped) => unreachable!(),
                None => break,
            }
        }
        buf.extend_from_slice(&wire[split..]);
        while let Some(Decoded::Frame(f)) = frame::decode(&mut buf, MAX).unwrap() {
            decoded.push(f);
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoded, frames);
    }

    /// Any bytes either decode or fail; never panic, never buffer beyond one bounded frame.
    #[test]
    fn arbitrary_bytes_never_panic_or_overallocate(input in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut buf = BytesMut::from(&input[..]);
        for _ in 0..=input.len() {
            match frame::decode(&mut buf, MAX) {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
        prop_assert!(buf.capacity() <= input.len().max(HEADER_LEN + MAX as usize) + 64,
            "capacity {}", buf.capacity());
    }

    /// A header with any type/flags/length/id, followed by any payload, decodes or errs.
    #[test]
    fn any_header_any_payload(kind in any::<u8>(), flags in any::<u8>(), id in 0..=MAX_STREAM_ID,
                              payload in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut buf = BytesMut::new();
        frame::put_header_raw(&mut buf, kind, flags, payload.len(), id);
        buf.put_slice(&payload);
        let r = frame::decode(&mut buf, MAX);
        if kind >= 0x80 {
            prop_assert!(matches!(r, Ok(Some(Decoded::Skipped))));
        } else if kind > 0x9 {
            prop_assert_eq!(r.unwrap_err(), FrameError::UnknownType(kind));
        }
    }

    /// Arbitrary bytes after a valid handshake: the link never panics, and once it
    /// reports an error it stays closed.
    #[test]
    fn link_survives_arbitrary_input(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..10)) {
        let now = Instant::now();
        let mut link = Link::new(LinkConfig { node_id: 5, ..Default::default() }, now);
        let mut hello = BytesMut::from(&PREAMBLE[..]);
        frame::encode(&Frame::Hello(Hello {
            min_version: VERSION, max_version: VERSION, node_id: 9, roles: 0,
            max_frame_size: 65536, initial_window: 65536, max_streams: 10,
            keepalive_interval_ms: 1000, keepalive_timeout_ms: 3000, extensions: vec![],
        }), &mut hello);
        link.handle_input(&hello, now).unwrap();
        let mut failed = false;
        for c in chunks {
            if link.handle_input(&c, now).is_err() {
                failed = true;
            }
            if failed {
                prop_assert!(!link.is_open());
            }
            let mut out = BytesMut::new();
            link.poll_transmit(&mut out, 1 << 20);
            while link.poll_event().is_some() {}
        }
    }
}

#[test]
fn oversized_frames_rejected_for_every_type() {
    for kind in [FrameType::Data, FrameType::Open, FrameType::Services] {
        let mut buf = BytesMut::new();
        frame::put_header(&mut buf, kind, 0, MAX as usize + 1, 1);
        assert_eq!(
            frame::decode(&mut buf, MAX).unwrap_err(),
            FrameError::TooLarge {
                len: MAX + 1,
                max: MAX
            }
        );
    }
    // HELLO is bounded before limits are known.
    let mut buf = BytesMut::new();
    frame::put_header(&mut buf, FrameType::Hello, 0, 5000, 0);
    assert!(matches!(
        frame::decode(&mut buf, MAX),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn stream_frames_on_link_id_and_link_frames_on_streams_rejected() {
    let mut buf = BytesMut::new();
    frame::encode(
        &Frame::Data {
            id: 1,
            fin: false,
            data: Bytes::new(),
        },
        &mut buf,
    );
    buf[11] = 0; // id 0
    assert!(matches!(
        frame::decode(&mut buf, MAX),
        Err(FrameError::WrongStream { .. })
    ));
    let mut buf = BytesMut::new();
    frame::encode(&Frame::Streams { max: 1 }, &mut buf);
    buf[11] = 7;
    assert!(matches!(
        frame::decode(&mut buf, MAX),
        Err(FrameError::WrongStream { .. })
    ));
}

#[test]
fn malformed_payloads_rejected() {
    // WINDOW with 3 bytes.
    let mut buf = BytesMut::new();
    frame::put_header(&mut buf, FrameType::Window, 0, 3, 1);
    buf.put_slice(&[0, 0, 1]);
    assert!(matches!(
        frame::decode(&mut buf, MAX),
        Err(FrameError::Malformed { .. })
    ));
    // PING with trailing bytes.
    let mut buf = BytesMut::new();
    frame::put_header(&mut buf, FrameType::Ping, 0, 9, 0);
    buf.put_slice(&[0; 9]);
    assert!(matches!(
        frame::decode(&mut buf, MAX),
        Err(FrameError::Malformed { .. })
    ));
    // OPEN whose name length runs past the payload.
    let mut buf = BytesMut::new();
    frame::put_header(&mut buf, FrameType::Open, 0, 28, 1);
    buf.put_slice(&[0; 25]);
    buf.put_slice(&[0, 200, 0]);
    assert!(matches!(
        frame::decode(&mut buf, MAX),
        Err(FrameError::Malformed { .. })
    ));
}
