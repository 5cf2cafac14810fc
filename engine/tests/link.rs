//! Deterministic tests of the link state machine: two cores wired together in memory.

mod common;

use astranet_engine::proto::frame::{self, Frame, Hello, PREAMBLE, VERSION};
use astranet_engine::proto::{
    ErrorCode, Event, Link, LinkConfig, LinkError, OpenHeader, Recv, StreamError, StreamId,
};
use bytes::{Bytes, BytesMut};
use common::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn pattern(seed: u64, len: usize) -> Vec<u8> {
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

#[test]
fn handshake_assigns_opposite_parities() {
    let mut p = Pair::new();
    let a1 = p.a.open(OpenHeader::default()).unwrap();
    let b1 = p.b.open(OpenHeader::default()).unwrap();
    assert_ne!(a1 & 1, b1 & 1);
    assert_eq!(p.a.peer().unwrap().node_id, B_ID);
    assert_eq!(p.b.peer().unwrap().node_id, A_ID);
}

#[test]
fn thousands_of_interleaved_streams_both_ways() {
    let mut p = Pair::new();
    const N: usize = 3000;
    let mut ids = Vec::new();
    // Half opened by each side.
    for i in 0..N {
        let (opener, _) = if i % 2 == 0 {
            (&mut p.a, 0)
        } else {
            (&mut p.b, 1)
        };
        ids.push((i, opener.open(OpenHeader::default()).unwrap()));
    }
    // Sizes vary so frames interleave; some exceed the initial window.
    let size = |i: usize| (i * 7919) % 150_000 + 1;
    let mut to_send: HashMap<(usize, bool), Bytes> = HashMap::new();
    for &(i, _) in &ids {
        to_send.insert((i, true), Bytes::from(pattern(i as u64, size(i))));
        to_send.insert(
            (i, false),
            Bytes::from(pattern(i as u64 + 1_000_000, size(i) / 3 + 1)),
        );
    }
    let mut got: HashMap<(usize, bool), Vec<u8>> = HashMap::new();
    let mut fin: HashMap<(usize, bool), bool> = HashMap::new();
    let by_id: HashMap<u64, usize> = ids.iter().map(|&(i, id)| (id, i)).collect();
    for _round in 0..2000 {
        let mut progress = false;
        for &(i, id) in &ids {
            let opener_is_a = i % 2 == 0;
            // Opener writes "forward" data, acceptor writes "back" data.
            for forward in [true, false] {
                let writer_is_a = opener_is_a == forward;
                let w = if writer_is_a { &mut p.a } else { &mut p.b };
                let d = to_send.get_mut(&(i, forward)).unwrap();
                if !d.is_empty() {
                    // Write in pieces to interleave.
                    let mut piece = d.split_to(d.len().min(20_000));
                    match w.send(id, &mut piece) {
                        Ok(_) => {}
                        Err(StreamError::Unknown) => {} // acceptor: not accepted yet
                        Err(e) => panic!("send: {e}"),
                    }
                    // Put back what was not taken.
                    if !piece.is_empty() {
                        let mut rest = BytesMut::from(&piece[..]);
                        rest.extend_from_slice(d);
                        *d = rest.freeze();
                    }
                    progress = true;
                } else if !fin.contains_key(&(i, forward)) && w.finish(id).is_ok() {
                    fin.insert((i, forward), false);
                }
            }
        }
        p.pump();
        // Accept incoming on both sides.
        for e in p.eb.drain(..).chain(p.ea.drain(..)).collect::<Vec<_>>() {
            if let Event::Incoming { id, .. } = e {
                let opener_is_a = by_id[&id].is_multiple_of(2);
                if opener_is_a {
                    p.b.accept(id).unwrap()
                } else {
                    p.a.accept(id).unwrap()
                }
            }
        }
        // Readers drain.
        for &(i, id) in &ids {
            let opener_is_a = i % 2 == 0;
            for forward in [true, false] {
                let reader_is_a = opener_is_a != forward;
                let r = if reader_is_a { &mut p.a } else { &mut p.b };
                let buf = got.entry((i, forward)).or_default();
                if read_all(r, id, buf) {
                    fin.insert((i, forward), true);
                }
            }
        }
        p.pump();
        if !progress && fin.values().filter(|&&v| v).count() == 2 * N {
            break;
        }
    }
    for &(i, _) in &ids {
        assert_eq!(
            got[&(i, true)],
            pattern(i as u64, size(i)),
            "stream {i} forward"
        );
        assert_eq!(
            got[&(i, false)],
            pattern(i as u64 + 1_000_000, size(i) / 3 + 1),
            "stream {i} back"
        );
        assert!(fin[&(i, true)] && fin[&(i, false)]);
    }
    // Close everything: all state is freed on both sides.
    for &(_, id) in &ids {
        p.a.close(id);
        p.b.close(id);
    }
    p.pump();
    assert_eq!(p.a.stream_count(), 0);
    assert_eq!(p.b.stream_count(), 0);
}

#[test]
fn half_close_each_way() {
    let mut p = Pair::new();
    let id = p.open_ab();
    p.a.send(id, &mut Bytes::from_static(b"ping")).unwrap();
    p.a.finish(id).unwrap();
    p.pump();
    let mut got = Vec::new();
    assert!(read_all(&mut p.b, id, &mut got), "b sees FIN");
    assert_eq!(got, b"ping");
    // a's writes now fail, b can still write back.
    assert_eq!(
        p.a.send(id, &mut Bytes::from_static(b"x")),
        Err(StreamError::Finished)
    );
    p.b.send(id, &mut Bytes::from_static(b"pong")).unwrap();
    p.pump();
    let mut back = Vec::new();
    assert!(!read_all(&mut p.a, id, &mut back));
    assert_eq!(back, b"pong");
    p.b.finish(id).unwrap();
    p.pump();
    assert!(read_all(&mut p.a, id, &mut back));
    // Both directions done; handles close; state freed on both sides.
    p.a.close(id);
    p.b.close(id);
    p.pump();
    assert_eq!((p.a.stream_count(), p.b.stream_count()), (0, 0));
    assert!(p.ea.contains(&Event::Freed(id)) && p.eb.contains(&Event::Freed(id)));
}

#[test]
fn reset_carries_its_code_and_frees_state() {
    let mut p = Pair::new();
    let id = p.open_ab();
    p.a.send(id, &mut Bytes::from_static(b"data")).unwrap();
    p.a.reset(id, ErrorCode::CANCELLED);
    p.pump();
    assert!(p.eb.contains(&Event::Reset {
        id,
        code: ErrorCode::CANCELLED
    }));
    assert_eq!(
        p.b.recv(id, 10),
        Err(StreamError::Reset(ErrorCode::CANCELLED))
    );
    assert_eq!(
        p.b.send(id, &mut Bytes::from_static(b"x")),
        Err(StreamError::Reset(ErrorCode::CANCELLED))
    );
    assert_eq!(
        p.a.send(id, &mut Bytes::from_static(b"x")),
        Err(StreamError::Reset(ErrorCode::CANCELLED))
    );
    p.a.close(id);
    p.b.close(id);
    p.pump();
    assert_eq!((p.a.stream_count(), p.b.stream_count()), (0, 0));
}

#[test]
fn refused_open_reports_code_to_opener() {
    let mut p = Pair::new();
    let id = p.a.open(OpenHeader::default()).unwrap();
    p.a.send(id, &mut Bytes::from_static(b"early data"))
        .unwrap();
    p.pump();
    assert!(matches!(p.eb[0], Event::Incoming { .. }));
    p.b.refuse(id, ErrorCode::REFUSED);
    p.pump();
    assert!(p.ea.contains(&Event::Reset {
        id,
        code: ErrorCode::REFUSED
    }));
    assert!(!p.ea.contains(&Event::Accepted(id)));
    assert_eq!(p.b.stream_count(), 0);
}

#[test]
fn open_carries_data_without_round_trip() {
    let mut p = Pair::new();
    let id =
        p.a.open(OpenHeader {
            service: Bytes::from_static(b"echo"),
            ..Default::default()
        })
        .unwrap();
    p.a.send(id, &mut Bytes::from_static(b"hello")).unwrap();
    p.a.finish(id).unwrap();
    // One transmit carries OPEN+data+FIN in one frame.
    let mut out = BytesMut::new();
    p.a.poll_transmit(&mut out, 1 << 20);
    assert_eq!(out[0], 0x1, "OPEN frame");
    assert_eq!(out[1], 0x1, "with FIN");
    p.b.handle_input(&out, p.now).unwrap();
    let ev = p.b.poll_event().unwrap();
    match ev {
        Event::Incoming { id: i, header } => {
            assert_eq!(i, id);
            assert_eq!(&header.service[..], b"echo");
        }
        e => panic!("{e:?}"),
    }
    p.b.accept(id).unwrap();
    let mut got = Vec::new();
    assert!(read_all(&mut p.b, id, &mut got));
    assert_eq!(got, b"hello");
}

#[test]
fn window_exhaustion_blocks_writer_and_recovers() {
    let mut p = Pair::new();
    let id = p.open_ab();
    let init = LinkConfig::default().initial_window as usize;
    let mut big = Bytes::from(vec![7u8; init * 3]);
    let taken = p.a.send(id, &mut big).unwrap();
    assert_eq!(taken, init, "writer takes exactly the credit");
    assert_eq!(p.a.send(id, &mut big).unwrap(), 0, "then blocks");
    p.pump();
    assert_eq!(p.b.readable_bytes(id), init);
    assert!(!p.ea.contains(&Event::Writable(id)));
    // The reader consumes: credit returns, the writer is told.
    let mut sink = Vec::new();
    read_all(&mut p.b, id, &mut sink);
    p.pump();
    assert!(p.ea.contains(&Event::Writable(id)));
    assert!(p.a.send(id, &mut big).unwrap() > 0);
    p.pump();
    read_all(&mut p.b, id, &mut sink);
    p.pump();
    while !big.is_empty() {
        assert!(p.a.send(id, &mut big).unwrap() > 0);
        p.pump();
        read_all(&mut p.b, id, &mut sink);
        p.pump();
    }
    assert_eq!(sink.len(), init * 3);
}

#[test]
fn busy_stream_window_grows_within_cap() {
    let mut p = Pair::new();
    let id = p.open_ab();
    let cfg = LinkConfig::default();
    let (floor, max) = (cfg.window_floor as usize, cfg.max_window as usize);
    // One round: the writer takes what its credit allows, the reader drains it all.
    let round = |p: &mut Pair| {
        let mut d = Bytes::from(vec![1u8; 8 * 1024 * 1024]);
        let n = p.a.send(id, &mut d).unwrap();
        p.pump();
        read_all(&mut p.b, id, &mut Vec::new());
        p.pump();
        n
    };
    // Alone on its link the stream delays nobody: it grows past the floor, to at
    // most max_window.
    let alone = (0..200).map(|_| round(&mut p)).max().unwrap();
    assert!(alone > floor && alone <= max, "alone: {alone}");
    // With company (another stream open, even idle), the window follows the path:
    // the pair answers PINGs at once, a round trip of zero, so it shrinks back to the
    // floor (more would only queue in the socket ahead of the other stream).
    let _other = p.open_ab();
    let beside: Vec<usize> = (0..50).map(|_| round(&mut p)).collect();
    let settled = *beside.last().unwrap();
    assert!(
        settled > 0 && settled <= floor,
        "beside another stream: {settled}"
    );
    assert!(
        p.b.rtt().is_some(),
        "the handshake PING measured a round trip"
    );
}

/// Busy streams share the link's receive budget: one stream alone grows to the whole
/// budget, and once three more are busy it gives back what is above its share, so
/// none keeps a window larger than the others' (fanout fairness).
#[test]
fn grown_windows_share_the_budget() {
    let init = LinkConfig::default().initial_window as usize;
    let cb = LinkConfig {
        recv_budget: 4 * init as u64,
        ..cfg(B_ID)
    };
    let mut p = Pair::with(cfg(A_ID), cb);
    let ids: Vec<StreamId> = (0..4).map(|_| p.open_ab()).collect();
    // One round: each stream sends what its credit allows, the reader drains it all.
    let round = |p: &mut Pair, ids: &[StreamId]| -> Vec<usize> {
        let taken: Vec<usize> = ids
            .iter()
            .map(|&id| {
                let mut d = Bytes::from(vec![3u8; 8 << 20]);
                p.a.send(id, &mut d).unwrap()
            })
            .collect();
        p.pump();
        for &id in ids {
            read_all(&mut p.b, id, &mut Vec::new());
        }
        p.pump();
        taken
    };
    // Alone, stream 0 grows past the initial window (what a round takes is the credit
    // back by then: the window less the last unacknowledged quarter).
    let alone = (0..50).map(|_| round(&mut p, &ids[..1])[0]).max().unwrap();
    assert!(alone >= 4 * init, "alone it grew: {alone}");
    // All four busy: after a settling period each moves the same per round. Without
    // the fair share, stream 0 kept the whole budget and moved 4 x what the others did.
    for _ in 0..20 {
        round(&mut p, &ids);
    }
    let mut moved = [0usize; 4];
    for _ in 0..40 {
        for (m, n) in moved.iter_mut().zip(round(&mut p, &ids)) {
            *m += n;
        }
    }
    let (lo, hi) = (*moved.iter().min().unwrap(), *moved.iter().max().unwrap());
    assert!(hi * 4 <= lo * 5, "shares within 25 %: {moved:?}");
    assert!(
        lo >= 40 * init,
        "every stream at least its initial window per round: {moved:?}"
    );
}

#[test]
fn slow_reader_does_not_stall_other_streams() {
    let mut p = Pair::new();
    let slow = p.open_ab();
    let fast = p.open_ab();
    // The slow stream's reader never reads: its writer fills the window and blocks.
    let mut s = Bytes::from(vec![0u8; 10 << 20]);
    p.a.send(slow, &mut s).unwrap();
    p.pump();
    // The fast stream still moves 20 MiB.
    let mut got = 0;
    for _ in 0..10_000 {
        if got >= 20 << 20 {
            break;
        }
        let mut d = Bytes::from(vec![1u8; 1 << 20]);
        p.a.send(fast, &mut d).unwrap();
        p.pump();
        let mut v = Vec::new();
        read_all(&mut p.b, fast, &mut v);
        got += v.len();
        p.pump();
    }
    assert!(got >= 20 << 20, "fast stream moved {got}");
    assert_eq!(
        p.b.readable_bytes(slow),
        LinkConfig::default().initial_window as usize
    );
}

/// A hand-driven peer: sends raw frames to a real link.
struct RawPeer {
    link: Link,
    now: Instant,
}

impl RawPeer {
    /// The link under test is node A; the raw peer claims `B_ID` (so A has odd ids).
    fn new(cfg_a: LinkConfig) -> Self {
        let now = Instant::now();
        let mut link = Link::new(cfg_a, now);
        let mut hello = BytesMut::from(&PREAMBLE[..]);
        frame::encode(
            &Frame::Hello(Hello {
                min_version: VERSION,
                max_version: VERSION,
                node_id: B_ID,
                roles: 0,
                max_frame_size: 65536,
                initial_window: 65536,
                max_streams: 100,
                keepalive_interval_ms: 10_000,
                keepalive_timeout_ms: 30_000,
                extensions: vec![],
            }),
            &mut hello,
        );
        link.handle_input(&hello, now).unwrap();
        assert_eq!(link.poll_event(), Some(Event::Connected));
        let mut sink = BytesMut::new();
        link.poll_transmit(&mut sink, usize::MAX);
        Self { link, now }
    }
    fn send(&mut self, f: Frame) -> Result<(), LinkError> {
        let mut b = BytesMut::new();
        frame::encode(&f, &mut b);
        self.link.handle_input(&b, self.now)
    }
    fn output(&mut self) -> Vec<Frame> {
        let mut out = BytesMut::new();
        self.link.poll_transmit(&mut out, usize::MAX);
        let mut frames = Vec::new();
        while let Ok(Some(frame::Decoded::Frame(f))) = frame::decode(&mut out, 1 << 24) {
            frames.push(f);
        }
        frames
    }
    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.link.poll_event()).collect()
    }
}

fn open_frame(id: u64, data: &'static [u8]) -> Frame {
    Frame::Open {
        id,
        fin: false,
        header: OpenHeader::default(),
        data: Bytes::from_static(data),
    }
}

#[test]
fn window_violation_resets_only_that_stream() {
    let mut r = RawPeer::new(cfg(A_ID));
    // B's ids are even (B has the higher node id).
    r.send(open_frame(2, b"")).unwrap();
    r.send(open_frame(4, b"")).unwrap();
    for e in r.events() {
        if let Event::Incoming { id, .. } = e {
            r.link.accept(id).unwrap();
        }
    }
    r.output();
    let window = LinkConfig::default().initial_window as usize;
    // Stream 2 gets one byte more than its window.
    r.send(Frame::Data {
        id: 2,
        fin: false,
        data: Bytes::from(vec![0u8; window]),
    })
    .unwrap();
    r.send(Frame::Data {
        id: 2,
        fin: false,
        data: Bytes::from_static(b"!"),
    })
    .unwrap();
    let out = r.output();
    assert!(out.contains(&Frame::Reset {
        id: 2,
        code: ErrorCode::FLOW_CONTROL
    }));
    assert!(r.events().contains(&Event::Reset {
        id: 2,
        code: ErrorCode::FLOW_CONTROL
    }));
    // Stream 4 carries on, and the link is open.
    r.send(Frame::Data {
        id: 4,
        fin: true,
        data: Bytes::from_static(b"still fine"),
    })
    .unwrap();
    let mut got = Vec::new();
    assert!(read_all(&mut r.link, 4, &mut got));
    assert_eq!(got, b"still fine");
    assert!(r.link.is_open());
    // Late data for the reset stream is dropped without breaking framing.
    r.send(Frame::Data {
        id: 2,
        fin: false,
        data: Bytes::from_static(b"late"),
    })
    .unwrap();
    assert!(r.link.is_open());
}

#[test]
fn exceeding_open_credit_resets_only_that_stream() {
    let mut c = cfg(A_ID);
    c.max_streams = 2;
    let mut r = RawPeer::new(c);
    r.send(open_frame(2, b"")).unwrap();
    r.send(open_frame(4, b"")).unwrap();
    r.send(open_frame(6, b"one too many")).unwrap();
    let out = r.output();
    assert!(out.contains(&Frame::Reset {
        id: 6,
        code: ErrorCode::LIMIT_EXCEEDED
    }));
    assert!(r.link.is_open());
    let ev = r.events();
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, Event::Incoming { .. }))
            .count(),
        2
    );
    // Closing streams grants credit back (threshold is 1 for max_streams = 2). The
    // refused open used up stream number 3, so two must close before number 4 fits.
    for id in [2, 4] {
        r.link.accept(id).unwrap();
        r.link.close(id);
        r.send(Frame::Data {
            id,
            fin: true,
            data: Bytes::new(),
        })
        .unwrap();
    }
    let out = r.output();
    assert!(out.contains(&Frame::Streams { max: 4 }), "{out:?}");
    r.send(open_frame(8, b"")).unwrap();
    assert!(r
        .events()
        .iter()
        .any(|e| matches!(e, Event::Incoming { id: 8, .. })));
}

#[test]
fn opener_waits_for_open_credit() {
    let mut cb = cfg(B_ID);
    cb.max_streams = 3;
    let mut p = Pair::with(cfg(A_ID), cb);
    let ids: Vec<_> = (0..3)
        .map(|_| p.a.open(OpenHeader::default()).unwrap())
        .collect();
    assert_eq!(p.a.open(OpenHeader::default()), Err(StreamError::Limit));
    p.pump();
    for &id in &ids {
        p.b.accept(id).unwrap();
        p.a.finish(id).unwrap();
        p.b.finish(id).unwrap();
    }
    p.pump();
    for &id in &ids {
        p.a.close(id);
        p.b.close(id);
    }
    p.pump();
    assert!(p.ea.contains(&Event::OpenCredit));
    assert!(p.a.open(OpenHeader::default()).is_ok());
}

#[test]
fn wrong_parity_and_reused_ids_are_protocol_errors() {
    let mut r = RawPeer::new(cfg(A_ID));
    // Odd ids are A's own.
    let e = r.send(open_frame(3, b"")).unwrap_err();
    assert!(matches!(e, LinkError::Protocol(_)), "{e}");
    assert!(r.output().iter().any(|f| matches!(
        f,
        Frame::GoAway {
            code: ErrorCode::PROTOCOL,
            ..
        }
    )));

    let mut r = RawPeer::new(cfg(A_ID));
    r.send(open_frame(4, b"")).unwrap();
    let e = r.send(open_frame(4, b"")).unwrap_err();
    assert!(matches!(e, LinkError::Protocol(_)));
    let mut r = RawPeer::new(cfg(A_ID));
    r.send(open_frame(4, b"")).unwrap();
    assert!(r.send(open_frame(2, b"")).is_err(), "ids must increase");
}

#[test]
fn frames_for_closed_and_unknown_streams() {
    let mut r = RawPeer::new(cfg(A_ID));
    r.send(open_frame(2, b"")).unwrap();
    r.link.accept(2).unwrap();
    r.link.reset(2, ErrorCode::CANCELLED);
    r.link.close(2);
    r.events();
    r.output();
    assert_eq!(r.link.stream_count(), 0);
    // Late frames for a closed stream: ignored, framing intact.
    r.send(Frame::Data {
        id: 2,
        fin: true,
        data: Bytes::from_static(b"late"),
    })
    .unwrap();
    r.send(Frame::Window {
        id: 2,
        ack: false,
        increment: 5,
    })
    .unwrap();
    r.send(Frame::Reset {
        id: 2,
        code: ErrorCode::CANCELLED,
    })
    .unwrap();
    r.send(Frame::Ping {
        ack: false,
        opaque: 9,
    })
    .unwrap();
    assert!(r.output().contains(&Frame::Ping {
        ack: true,
        opaque: 9
    }));
    assert!(r.link.is_open());
    // A frame for a stream never opened is a protocol error.
    let e = r
        .send(Frame::Data {
            id: 10,
            fin: false,
            data: Bytes::from_static(b"?"),
        })
        .unwrap_err();
    assert!(matches!(e, LinkError::Protocol(_)));
}

#[test]
fn keepalive_pings_idle_link_and_keeps_it_alive() {
    let mut p = Pair::new();
    let id = p.open_ab();
    // An hour of silence in 5 s steps: pings answer, nothing dies.
    for _ in 0..720 {
        p.advance(Duration::from_secs(5));
    }
    assert!(p.a.is_open() && p.b.is_open());
    p.a.send(id, &mut Bytes::from_static(b"x")).unwrap();
    p.pump();
    assert_eq!(p.b.readable_bytes(id), 1);
}

#[test]
fn keepalive_timeout_fails_every_stream_with_link_lost() {
    let mut p = Pair::new();
    let ids: Vec<_> = (0..100).map(|_| p.open_ab()).collect();
    // The wire stalls silently in both directions.
    p.a_to_b_flowing = false;
    p.b_to_a_flowing = false;
    let timeout = LinkConfig::default().keepalive_timeout;
    let mut elapsed = Duration::ZERO;
    while p.a.is_open() {
        p.advance(Duration::from_secs(1));
        elapsed += Duration::from_secs(1);
        assert!(
            elapsed <= timeout + Duration::from_secs(1),
            "declared dead late"
        );
    }
    assert!(elapsed >= timeout, "declared dead early: {elapsed:?}");
    assert!(p
        .ea
        .iter()
        .any(|e| matches!(e, Event::Closed(LinkError::Timeout(_)))));
    for id in ids {
        assert!(matches!(p.a.recv(id, 1), Err(StreamError::LinkLost(_))));
        assert!(matches!(
            p.a.send(id, &mut Bytes::from_static(b"x")),
            Err(StreamError::LinkLost(_))
        ));
    }
    assert_eq!(p.a.poll_timeout(), None);
}

#[test]
fn keepalive_survives_heavy_one_way_load() {
    let mut p = Pair::new();
    let id = p.open_ab();
    // Data flows a→b for twice the timeout; b never writes data, only credit.
    for _ in 0..120 {
        let mut d = Bytes::from(vec![0u8; 256 * 1024]);
        p.a.send(id, &mut d).unwrap();
        p.advance(Duration::from_millis(500));
        read_all(&mut p.b, id, &mut Vec::new());
    }
    assert!(p.a.is_open() && p.b.is_open());
}

#[test]
fn control_frames_jump_ahead_of_queued_data() {
    let mut p = Pair::new();
    let id = p.open_ab();
    let other = p.open_ab();
    // 60 KB of data queued and not yet transmitted...
    p.a.send(id, &mut Bytes::from(vec![0u8; 60_000])).unwrap();
    // ...then a reset and a keep-alive probe are queued behind it.
    p.a.reset(other, ErrorCode::CANCELLED);
    p.now += LinkConfig::default().keepalive_interval;
    p.a.handle_timeout(p.now);
    let mut out = BytesMut::new();
    // A budget just above the two control frames: one data frame follows them.
    p.a.poll_transmit(&mut out, 40);
    let mut kinds = Vec::new();
    while let Ok(Some(frame::Decoded::Frame(f))) = frame::decode(&mut out, 1 << 24) {
        kinds.push(f.frame_type());
    }
    use frame::FrameType::*;
    assert_eq!(kinds, vec![Reset, Ping, Data]);
}

#[test]
fn reset_before_open_is_sent_stays_local() {
    let mut p = Pair::new();
    let id = p.a.open(OpenHeader::default()).unwrap();
    p.a.reset(id, ErrorCode::CANCELLED);
    p.a.close(id);
    let next = p.a.open(OpenHeader::default()).unwrap();
    p.pump();
    assert!(p.a.is_open() && p.b.is_open());
    assert!(matches!(p.eb[..], [Event::Incoming { id: i, .. }] if i == next));
}

#[test]
fn goaway_lets_in_flight_streams_finish_and_refuses_new() {
    let mut p = Pair::new();
    let inflight = p.open_ab();
    p.b.go_away(ErrorCode::SHUTDOWN, "maintenance");
    // An open racing the GOAWAY.
    let racing = p.a.open(OpenHeader::default()).unwrap();
    p.pump();
    assert!(p.ea.iter().any(|e| matches!(
        e,
        Event::GoAway {
            code: ErrorCode::SHUTDOWN,
            ..
        }
    )));
    assert!(p.ea.contains(&Event::Reset {
        id: racing,
        code: ErrorCode::REFUSED
    }));
    assert_eq!(p.a.open(OpenHeader::default()), Err(StreamError::GoingAway));
    // The in-flight stream still works both ways.
    p.a.send(inflight, &mut Bytes::from_static(b"finish me"))
        .unwrap();
    p.a.finish(inflight).unwrap();
    p.pump();
    let mut got = Vec::new();
    assert!(read_all(&mut p.b, inflight, &mut got));
    assert_eq!(got, b"finish me");
    p.b.send(inflight, &mut Bytes::from_static(b"bye")).unwrap();
    p.b.finish(inflight).unwrap();
    p.pump();
    assert!(p.a.is_open());
    p.a.close(racing);
    p.a.close(inflight);
    p.b.close(inflight);
    p.pump();
    // Drained: both ends close gracefully.
    assert!(p.ea.contains(&Event::Closed(LinkError::Graceful)));
    assert!(p.eb.contains(&Event::Closed(LinkError::Graceful)));
}

#[test]
fn closing_with_peer_still_writing_resets_peer() {
    let mut p = Pair::new();
    let id = p.open_ab();
    p.b.close(id);
    p.pump();
    // a sees b's FIN; a's further writes are answered with RESET(CANCELLED).
    assert!(read_all(&mut p.a, id, &mut Vec::new()));
    p.a.send(id, &mut Bytes::from_static(b"anyone?")).unwrap();
    p.pump();
    assert!(p.ea.contains(&Event::Reset {
        id,
        code: ErrorCode::CANCELLED
    }));
    assert_eq!(p.b.stream_count(), 0);
    p.a.close(id);
    p.pump();
    assert_eq!(p.a.stream_count(), 0);
}

#[test]
fn data_sent_before_close_is_delivered() {
    let mut p = Pair::new();
    let id = p.open_ab();
    let payload = pattern(1, 300_000);
    let mut d = Bytes::from(payload.clone());
    let mut got = Vec::new();
    let mut fin = false;
    for _ in 0..1000 {
        if !d.is_empty() {
            p.a.send(id, &mut d).unwrap();
            if d.is_empty() {
                p.a.close(id);
            }
        }
        p.pump();
        fin = read_all(&mut p.b, id, &mut got);
        p.pump();
        if fin {
            break;
        }
    }
    assert!(fin);
    assert_eq!(got, payload);
}

#[test]
fn self_link_and_bad_preamble_rejected() {
    let now = Instant::now();
    let mut a = Link::new(cfg(A_ID), now);
    let mut a2 = Link::new(cfg(A_ID), now);
    let mut out = BytesMut::new();
    a2.poll_transmit(&mut out, usize::MAX);
    assert!(matches!(
        a.handle_input(&out, now),
        Err(LinkError::Handshake(_))
    ));
    let mut b = Link::new(cfg(B_ID), now);
    assert!(matches!(
        b.handle_input(b"GET / HTTP/1.1\r\n", now),
        Err(LinkError::Frame(_))
    ));
}

#[test]
fn idle_streams_hold_no_heap_buffers() {
    // 10,000 idle streams after 1 byte each way: the links' stream maps hold them,
    // with no per-stream buffers left once the byte is read.
    let mut p = Pair::new();
    let mut ids = Vec::new();
    for _ in 0..10_000 {
        let id = p.a.open(OpenHeader::default()).unwrap();
        p.a.send(id, &mut Bytes::from_static(b"1")).unwrap();
        ids.push(id);
    }
    p.pump();
    for e in p.eb.drain(..).collect::<Vec<_>>() {
        if let Event::Incoming { id, .. } = e {
            p.b.accept(id).unwrap();
            assert_eq!(p.b.recv(id, 10), Ok(Recv::Data(Bytes::from_static(b"1"))));
        }
    }
    p.pump();
    assert_eq!(p.a.stream_count(), 10_000);
    assert_eq!(p.b.stream_count(), 10_000);
}

#[test]
fn goaway_does_not_re_reset_a_stream_already_reset() {
    let mut p = Pair::new();
    // Opened and reset before its OPEN left: b never sees it, so b's GOAWAY (last id
    // 0) refuses it; it must keep its own code and get no second Reset event.
    let id = p.a.open(OpenHeader::default()).unwrap();
    p.a.reset(id, ErrorCode::CANCELLED);
    p.b.go_away(ErrorCode::SHUTDOWN, "bye");
    p.pump();
    assert!(
        p.ea.iter()
            .any(|e| matches!(e, Event::GoAway { last_id: 0, .. })),
        "{:?}",
        p.ea
    );
    assert!(
        !p.ea.iter().any(|e| matches!(e, Event::Reset { .. })),
        "{:?}",
        p.ea
    );
    assert_eq!(
        p.a.recv(id, 1),
        Err(StreamError::Reset(ErrorCode::CANCELLED))
    );
}
