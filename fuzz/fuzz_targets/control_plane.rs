//! Drives the control plane's pure state machine (routing and discovery together, as
//! the control task runs them) with arbitrary link events, ROUTES, SERVICES and
//! REQUEST frames from several peers, and local binds. After every input the
//! invariants that bound what peers can make a node hold must hold (caps per link and
//! per origin, every origin held over its current route, counters consistent), and
//! nothing may panic.
//!
//! The first byte picks an unsigned or a signed mesh (test-double identities). In a
//! signed mesh each update is signed as its origin would sign it over the state it
//! produces, or spoiled (wrong signature, another node's credentials, another
//! version, unsigned), and the invariants include: everything held verifies with its
//! origin's signature.
#![no_main]

use astranet_engine::node::fuzzing::ControlPlane;
use astranet_engine::proto::frame::{RouteEntry, ServiceOp, ServicesUpdate};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

const CAP: usize = 8;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    /// A small node id (1 is us), so origins, peers and routes collide often.
    fn node(&mut self) -> Option<u64> {
        Some(u64::from(self.byte()? % 24) + 1)
    }
    fn version(&mut self) -> Option<u64> {
        let b = self.byte()?;
        Some(match b {
            250..=255 => u64::MAX - u64::from(255 - b),
            _ => u64::from(b % 12),
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, data)) = data.split_first() else {
        return;
    };
    let signed = mode & 1 == 1;
    let mut cp = if signed {
        ControlPlane::new_signed(1, CAP)
    } else {
        ControlPlane::new(1, CAP)
    };
    let mut input = Input(data);
    let mut steps = 0;
    while let Some(op) = input.byte() {
        steps += 1;
        if steps > 2000 {
            break;
        }
        let Some(link) = input.byte().map(|b| u64::from(b % 5) + 10) else {
            break;
        };
        match op % 6 {
            0 => {
                let Some(peer) = input.node() else { break };
                cp.link_up(link, peer);
            }
            1 => cp.link_down(link),
            2 => {
                let n = input.byte().unwrap_or(0) % 24;
                let mut entries = Vec::new();
                for _ in 0..n {
                    let (Some(node), Some(h)) = (input.node(), input.byte()) else { break };
                    entries.push(RouteEntry { node, hops: h % 8 + if h > 200 { 120 } else { 0 } });
                }
                cp.routes(link, &entries);
            }
            3 | 4 => {
                let (Some(origin), Some(flags), Some(base), Some(version), Some(n)) =
                    (input.node(), input.byte(), input.version(), input.version(), input.byte())
                else {
                    break;
                };
                let ops = (0..n % 12)
                    .map_while(|_| {
                        let b = input.byte()?;
                        Some(ServiceOp {
                            announce: b & 0x80 == 0,
                            port: u32::from(b & 3),
                            env: if b & 0x40 != 0 { Bytes::from_static(b"!addr") } else { Bytes::new() },
                            name: Bytes::from(vec![b'a' + (b & 0x0f) % 26; usize::from(b & 0x30) + 1]),
                        })
                    })
                    .collect();
                let mut u = ServicesUpdate {
                    origin,
                    base_version: base,
                    version,
                    full: flags & 1 != 0,
                    hops: flags >> 4,
                    ops,
                    request: flags & 6 == 6,
                    signed: None,
                };
                if signed {
                    let Some(how) = input.byte() else { break };
                    cp.sign_as_origin(&mut u, how);
                }
                cp.services(link, &u);
            }
            _ => {
                let Some(b) = input.byte() else { break };
                cp.local(b & 1 == 0, &[b'a' + (b >> 1) % 8], u32::from(b >> 4));
            }
        }
        cp.check();
        let (origins, entries, _routes, _hits) = cp.figures();
        if !signed {
            assert_eq!(cp.rejected(), 0);
        }
        // 5 links at most, each within its caps.
        assert!(origins <= 5 * CAP && entries <= 5 * 2 * CAP);
        let _ = cp.take_frames();
    }
});
