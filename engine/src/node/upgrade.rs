//! Direct upgrade (PROTOCOL.md §10.5) without threads: which addresses to dial, how
//! many at once, and when again. The dials themselves are async tasks on shard 0.
//!
//! Bounded against a peer that announces addresses it chose: only origins we route
//! to through relays are dialed (checked by the caller), at most `max_in_flight` dials
//! run at once, each address waits `retry` (doubling per failure) before it is dialed
//! again, and the queue and the memory of tried addresses are capped.

use crate::types::NodeId;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Origins waiting for a free dial slot.
const MAX_QUEUED: usize = 1024;
/// Addresses whose retry time we remember.
const MAX_TRIED: usize = 4096;

pub(crate) struct Upgrades {
    enabled: bool,
    max_in_flight: usize,
    retry: Duration,
    in_flight: usize,
    queue: VecDeque<NodeId>,
    queued: HashSet<NodeId>,
    /// Address → (not before, failures).
    tried: HashMap<SocketAddr, (Instant, u32)>,
}

impl Upgrades {
    pub(crate) fn new(enabled: bool, max_in_flight: usize, retry: Duration) -> Self {
        Self {
            enabled,
            max_in_flight,
            retry,
            in_flight: 0,
            queue: VecDeque::new(),
            queued: HashSet::new(),
            tried: HashMap::new(),
        }
    }

    /// `origin` announced addresses: consider joining it.
    pub(crate) fn want(&mut self, origin: NodeId) {
        if self.enabled && self.queue.len() < MAX_QUEUED && self.queued.insert(origin) {
            self.queue.push_back(origin);
        }
    }

    /// The next dial to start, if a slot is free: the first address of a queued
    /// origin that is not waiting out its retry time. `addrs` says where an origin
    /// may be dialed (empty: not at all).
    pub(crate) fn next(
        &mut self,
        now: Instant,
        addrs: impl Fn(NodeId) -> Vec<SocketAddr>,
    ) -> Option<(NodeId, SocketAddr)> {
        while self.in_flight < self.max_in_flight {
            let origin = self.queue.pop_front()?;
            self.queued.remove(&origin);
            let ready = addrs(origin)
                .into_iter()
                .find(|a| self.tried.get(a).is_none_or(|(t, _)| *t <= now));
            let Some(addr) = ready else {
                continue;
            };
            if self.tried.len() >= MAX_TRIED && !self.tried.contains_key(&addr) {
                self.tried.retain(|_, (t, _)| *t > now);
                if self.tried.len() >= MAX_TRIED {
                    continue;
                }
            }
            let failures = self.tried.get(&addr).map_or(0, |(_, f)| *f);
            self.tried
                .insert(addr, (now + self.retry * (1 << failures.min(4)), failures));
            self.in_flight += 1;
            return Some((origin, addr));
        }
        None
    }

    /// A dial ended.
    pub(crate) fn done(&mut self, addr: SocketAddr, ok: bool, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some((t, f)) = self.tried.get_mut(&addr) {
            if ok {
                *f = 0;
            } else {
                *f += 1;
                *t = now + self.retry * (1 << (*f).min(4));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_flight_and_retry() {
        let mut u = Upgrades::new(true, 2, Duration::from_secs(30));
        let now = Instant::now();
        let a = |i: u16| SocketAddr::from(([127, 0, 0, 1], i));
        for i in 0..10 {
            u.want(NodeId(i));
            u.want(NodeId(i)); // queued once
        }
        let d1 = u.next(now, |n| vec![a(n.0 as u16 + 1)]).unwrap();
        let d2 = u.next(now, |n| vec![a(n.0 as u16 + 1)]).unwrap();
        assert!(
            u.next(now, |n| vec![a(n.0 as u16 + 1)]).is_none(),
            "two in flight at most"
        );
        assert_eq!((d1.0, d2.0), (NodeId(0), NodeId(1)));
        u.done(d1.1, false, now);
        // The failed address waits out its retry time.
        u.want(NodeId(0));
        let d3 = u.next(now, |n| vec![a(n.0 as u16 + 1)]).unwrap();
        assert_eq!(d3.0, NodeId(2), "origin 0's address is backing off");
        // Origins with no address we may dial are skipped.
        u.done(d2.1, true, now);
        assert!(u.next(now, |_| vec![]).is_none());
    }
}
