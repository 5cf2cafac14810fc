//! A deterministic harness: two sans-IO links wired together in memory, a virtual clock.
#![allow(dead_code)]

use astranet_engine::proto::{Event, Link, LinkConfig, OpenHeader, Recv, StreamId};
use bytes::{Bytes, BytesMut};
use std::time::{Duration, Instant};

pub const A_ID: u64 = 0x1111;
pub const B_ID: u64 = 0x2222;

pub fn cfg(node_id: u64) -> LinkConfig {
    LinkConfig {
        node_id,
        ..LinkConfig::default()
    }
}

pub struct Pair {
    pub a: Link,
    pub b: Link,
    pub now: Instant,
    pub ea: Vec<Event>,
    pub eb: Vec<Event>,
    /// Bytes moved a→b and b→a in all.
    pub moved: (usize, usize),
    /// While false, bytes a→b are held back (a stalled link).
    pub a_to_b_flowing: bool,
    pub b_to_a_flowing: bool,
    held_ab: BytesMut,
    held_ba: BytesMut,
}

impl Pair {
    pub fn new() -> Self {
        Self::with(cfg(A_ID), cfg(B_ID))
    }

    pub fn with(ca: LinkConfig, cb: LinkConfig) -> Self {
        let now = Instant::now();
        let mut p = Self {
            a: Link::new(ca, now),
            b: Link::new(cb, now),
            now,
            ea: Vec::new(),
            eb: Vec::new(),
            moved: (0, 0),
            a_to_b_flowing: true,
            b_to_a_flowing: true,
            held_ab: BytesMut::new(),
            held_ba: BytesMut::new(),
        };
        p.pump();
        assert!(p.ea.contains(&Event::Connected) && p.eb.contains(&Event::Connected));
        p.ea.clear();
        p.eb.clear();
        p
    }

    /// Moves bytes both ways until nothing moves (bounded: panics after 100,000 rounds).
    pub fn pump(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            let mut buf = BytesMut::new();
            self.a.poll_transmit(&mut buf, 256 * 1024);
            self.held_ab.extend_from_slice(&buf);
            if self.a_to_b_flowing && !self.held_ab.is_empty() && self.b.wants_input() {
                let chunk = self.held_ab.split();
                self.moved.0 += chunk.len();
                let _ = self.b.handle_input(&chunk, self.now);
                moved = true;
            }
            let mut buf = BytesMut::new();
            self.b.poll_transmit(&mut buf, 256 * 1024);
            self.held_ba.extend_from_slice(&buf);
            if self.b_to_a_flowing && !self.held_ba.is_empty() && self.a.wants_input() {
                let chunk = self.held_ba.split();
                self.moved.1 += chunk.len();
                let _ = self.a.handle_input(&chunk, self.now);
                moved = true;
            }
            while let Some(e) = self.a.poll_event() {
                self.ea.push(e);
            }
            while let Some(e) = self.b.poll_event() {
                self.eb.push(e);
            }
            if !moved {
                return;
            }
        }
        panic!("pump did not settle");
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
        self.pump();
    }

    /// Opens a stream a→b; b accepts it. Returns (a's id, b's id) — the same number.
    pub fn open_ab(&mut self) -> StreamId {
        let id = self.a.open(OpenHeader::default()).expect("open");
        self.pump();
        let pos = self
            .eb
            .iter()
            .position(|e| matches!(e, Event::Incoming { id: i, .. } if *i == id))
            .expect("incoming");
        self.eb.remove(pos);
        self.b.accept(id).unwrap();
        self.pump();
        id
    }

    /// Writes all of `data` on `id` from a, pumping when credit runs out. Bounded.
    pub fn write_all_a(&mut self, id: StreamId, data: &[u8]) {
        let mut d = Bytes::copy_from_slice(data);
        for _ in 0..100_000 {
            if d.is_empty() {
                return;
            }
            self.a.send(id, &mut d).unwrap();
            self.pump();
            // Drain b so credit comes back.
            read_all(&mut self.b, id, &mut Vec::new());
        }
        panic!("write_all did not finish");
    }
}

/// Reads everything available; returns true at FIN.
pub fn read_all(l: &mut Link, id: StreamId, into: &mut Vec<u8>) -> bool {
    loop {
        match l.recv(id, usize::MAX) {
            Ok(Recv::Data(b)) => into.extend_from_slice(&b),
            Ok(Recv::Fin) => return true,
            Ok(Recv::WouldBlock) => return false,
            Err(_) => return false,
        }
    }
}
