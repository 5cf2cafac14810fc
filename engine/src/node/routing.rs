//! Distance-vector routing over the node's links (PROTOCOL.md §10.4): split horizon
//! with poisoned reverse, infinity at 128 hops, triggered updates.
//!
//! A pure state machine: no locks, no IO. Work is proportional to the change: an
//! advertisement of k entries recomputes those k destinations only, each over the
//! node's links. What a neighbour may claim is checked: a direct link always wins
//! (a neighbour's entries are at least 2 hops away once we add its own link), entries
//! for ourselves or for the neighbour itself are ignored, and each link may hold at
//! most `max_per_link` advertised routes (PROTOCOL.md §13).

use super::LinkId;
use crate::proto::frame::{Frame, RouteEntry};
use crate::types::NodeId;
use std::collections::HashMap;

/// Distances at or above this are unreachable. Large enough for a line of 100 nodes;
/// still bounded, so a loop counts itself out (fast, with triggered updates).
pub(crate) const INFINITY: u8 = 128;
/// The hops value of a withdrawn route on the wire.
pub(crate) const WITHDRAWN: u8 = 255;
/// Entries per ROUTES frame (9 bytes each, well under any frame limit).
const ENTRIES_PER_FRAME: usize = 1000;

/// How to reach one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) link: LinkId,
    pub(crate) shard: u32,
    /// The neighbour at the other end of `link`.
    pub(crate) via: NodeId,
    pub(crate) hops: u8,
}

struct Neighbour {
    peer: NodeId,
    shard: u32,
    /// What the neighbour advertised: node → its distance to it (1 ..< INFINITY).
    adverts: HashMap<NodeId, u8>,
}

/// The routing table of one node.
pub(crate) struct Routing {
    me: NodeId,
    max_per_link: usize,
    links: HashMap<LinkId, Neighbour>,
    /// Direct links per neighbour id (usually one).
    direct: HashMap<NodeId, Vec<LinkId>>,
    /// Best routes; a persistent map, so publishing a snapshot costs O(1).
    best: imbl::HashMap<NodeId, Route>,
    /// Advertised entries refused because a link was at its limit.
    pub(crate) limit_hits: u64,
}

/// A route that changed: the node and its new route (`None`: unreachable now).
pub(crate) type Change = (NodeId, Option<Route>);

impl Routing {
    pub(crate) fn new(me: NodeId, max_per_link: usize) -> Self {
        Self {
            me,
            max_per_link,
            links: HashMap::new(),
            direct: HashMap::new(),
            best: imbl::HashMap::new(),
            limit_hits: 0,
        }
    }

    pub(crate) fn get(&self, n: NodeId) -> Option<Route> {
        self.best.get(&n).copied()
    }

    /// The best routes (a cheap persistent copy).
    pub(crate) fn table(&self) -> imbl::HashMap<NodeId, Route> {
        self.best.clone()
    }

    pub(crate) fn len(&self) -> usize {
        self.best.len()
    }

    /// The neighbour at the other end of `link`.
    pub(crate) fn peer_of(&self, link: LinkId) -> Option<(NodeId, u32)> {
        self.links.get(&link).map(|n| (n.peer, n.shard))
    }

    pub(crate) fn link_up(&mut self, link: LinkId, peer: NodeId, shard: u32) -> Vec<Change> {
        if peer == self.me {
            return Vec::new();
        }
        self.links.insert(
            link,
            Neighbour {
                peer,
                shard,
                adverts: HashMap::new(),
            },
        );
        self.direct.entry(peer).or_default().push(link);
        self.recompute([peer])
    }

    pub(crate) fn link_down(&mut self, link: LinkId) -> Vec<Change> {
        let Some(n) = self.links.remove(&link) else {
            return Vec::new();
        };
        if let Some(v) = self.direct.get_mut(&n.peer) {
            v.retain(|&l| l != link);
            if v.is_empty() {
                self.direct.remove(&n.peer);
            }
        }
        let affected = n.adverts.into_keys().chain(std::iter::once(n.peer));
        self.recompute(affected)
    }

    /// Applies a neighbour's ROUTES frame: O(entries × links).
    pub(crate) fn advert(&mut self, link: LinkId, entries: &[RouteEntry]) -> Vec<Change> {
        let me = self.me;
        let max = self.max_per_link;
        let Some(n) = self.links.get_mut(&link) else {
            return Vec::new();
        };
        let mut touched = Vec::with_capacity(entries.len());
        for e in entries {
            let dst = NodeId(e.node);
            // Distance 0 is the sender itself, which its link already gives us; routes
            // to us or to the sender are not the sender's to advertise.
            if dst == me || dst == n.peer || e.hops == 0 {
                continue;
            }
            if e.hops >= INFINITY {
                if n.adverts.remove(&dst).is_some() {
                    touched.push(dst);
                }
            } else if n.adverts.len() < max || n.adverts.contains_key(&dst) {
                if n.adverts.insert(dst, e.hops) != Some(e.hops) {
                    touched.push(dst);
                }
            } else {
                self.limit_hits += 1;
            }
        }
        touched.sort_unstable();
        touched.dedup();
        self.recompute(touched)
    }

    /// Recomputes the best route of each node in `nodes`, over every link.
    fn recompute(&mut self, nodes: impl IntoIterator<Item = NodeId>) -> Vec<Change> {
        let mut changes = Vec::new();
        for dst in nodes {
            let new = self.best_route(dst);
            let old = self.best.get(&dst).copied();
            if new == old {
                continue;
            }
            match new {
                Some(r) => self.best.insert(dst, r),
                None => self.best.remove(&dst),
            };
            changes.push((dst, new));
        }
        changes
    }

    fn best_route(&self, dst: NodeId) -> Option<Route> {
        if dst == self.me {
            return None;
        }
        // A direct link always wins (PROTOCOL.md §10.4).
        if let Some(&link) = self.direct.get(&dst).and_then(|v| v.iter().min()) {
            let n = &self.links[&link];
            return Some(Route {
                link,
                shard: n.shard,
                via: n.peer,
                hops: 1,
            });
        }
        let mut best: Option<Route> = None;
        for (&link, n) in &self.links {
            let Some(&h) = n.adverts.get(&dst) else {
                continue;
            };
            let r = Route {
                link,
                shard: n.shard,
                via: n.peer,
                hops: h.saturating_add(1),
            };
            if r.hops >= INFINITY {
                continue;
            }
            if best.is_none_or(|b| (r.hops, r.via, r.link) < (b.hops, b.via, b.link)) {
                best = Some(r);
            }
        }
        best
    }

    /// What to tell the neighbour on `link` about `nodes` (all when `None`): our
    /// distance, or WITHDRAWN for routes through that neighbour (poisoned reverse) and
    /// for unreachable nodes.
    pub(crate) fn advert_for(&self, link: LinkId, nodes: Option<&[NodeId]>) -> Vec<Frame> {
        let Some(n) = self.links.get(&link) else {
            return Vec::new();
        };
        let entry = |dst: NodeId| {
            if dst == n.peer {
                return None;
            }
            let hops = match self.best.get(&dst) {
                Some(r) if r.via != n.peer => r.hops,
                _ => WITHDRAWN,
            };
            Some(RouteEntry { node: dst.0, hops })
        };
        let entries: Vec<RouteEntry> = match nodes {
            Some(ns) => ns.iter().filter_map(|d| entry(*d)).collect(),
            None => self.best.keys().filter_map(|d| entry(*d)).collect(),
        };
        entries
            .chunks(ENTRIES_PER_FRAME)
            .map(|c| Frame::Routes {
                entries: c.to_vec(),
            })
            .collect()
    }

    /// Panics if an invariant is broken: caps per link hold, every best route goes
    /// over a live link, direct links win, and `best` is what recomputing gives.
    pub(crate) fn check(&self) {
        for n in self.links.values() {
            assert!(n.adverts.len() <= self.max_per_link, "advert cap broken");
            assert!(!n.adverts.contains_key(&self.me) && !n.adverts.contains_key(&n.peer));
        }
        for (dst, r) in self.best.iter() {
            assert!(self.links.contains_key(&r.link), "route over a dead link");
            assert!(r.hops >= 1 && r.hops < INFINITY);
            if self.direct.contains_key(dst) {
                assert_eq!(r.hops, 1, "a direct link must win");
            }
            assert_eq!(self.best_route(*dst), Some(*r), "stale route");
        }
    }

    /// The links and the shards they live on.
    pub(crate) fn links(&self) -> impl Iterator<Item = (LinkId, u32)> + '_ {
        self.links.iter().map(|(l, n)| (*l, n.shard))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(node: u64, hops: u8) -> RouteEntry {
        RouteEntry { node, hops }
    }

    #[test]
    fn shortest_path_and_withdrawal() {
        let mut r = Routing::new(NodeId(1), 100);
        r.link_up(10, NodeId(2), 0);
        r.link_up(11, NodeId(3), 0);
        // 2 reaches 9 in 3 hops, 3 in 1 hop.
        r.advert(10, &[e(9, 3)]);
        r.advert(11, &[e(9, 1)]);
        assert_eq!(
            r.get(NodeId(9)).map(|x| (x.via, x.hops)),
            Some((NodeId(3), 2))
        );
        // 3's link dies: fall back to 2.
        let ch = r.link_down(11);
        assert!(ch.contains(&(NodeId(3), None)));
        assert_eq!(
            r.get(NodeId(9)).map(|x| (x.via, x.hops)),
            Some((NodeId(2), 4))
        );
        // 2 withdraws 9.
        r.advert(10, &[e(9, WITHDRAWN)]);
        assert_eq!(r.get(NodeId(9)), None);
    }

    #[test]
    fn poisoned_reverse_and_infinity() {
        let mut r = Routing::new(NodeId(1), 100);
        r.link_up(10, NodeId(2), 0);
        r.advert(10, &[e(9, 1), e(8, INFINITY - 1)]);
        assert!(r.get(NodeId(8)).is_none(), "INFINITY hops is unreachable");
        // To neighbour 2 we advertise 9 as withdrawn (its route goes through 2).
        let f = r.advert_for(10, None);
        match &f[0] {
            Frame::Routes { entries } => {
                assert!(entries.contains(&e(9, WITHDRAWN)));
                assert!(!entries.iter().any(|x| x.node == 2), "no route to itself");
            }
            _ => panic!(),
        }
    }

    #[test]
    fn a_neighbour_cannot_hijack_a_direct_route() {
        let mut r = Routing::new(NodeId(5), 100);
        r.link_up(10, NodeId(9), 0); // the real node 9, directly linked
        r.link_up(11, NodeId(2), 0); // a hostile neighbour with a lower id
                                     // 2 claims 9 at distance 0 and 1, and claims a route to us.
        let ch = r.advert(11, &[e(9, 0), e(9, 1), e(5, 1)]);
        assert!(ch.is_empty(), "nothing changes: {ch:?}");
        let route = r.get(NodeId(9)).unwrap();
        assert_eq!((route.link, route.hops), (10, 1));
        assert!(r.get(NodeId(5)).is_none());
        // A claim for the neighbour itself is ignored too.
        r.advert(11, &[e(2, 1)]);
        assert_eq!(r.get(NodeId(2)).unwrap().hops, 1);
    }

    #[test]
    fn adverts_per_link_are_capped_and_dropped_with_the_link() {
        let mut r = Routing::new(NodeId(1), 3);
        r.link_up(10, NodeId(2), 0);
        let entries: Vec<_> = (100..110).map(|n| e(n, 1)).collect();
        let ch = r.advert(10, &entries);
        assert_eq!(ch.len(), 3);
        assert_eq!(r.limit_hits, 7);
        assert_eq!(r.len(), 4);
        // Updating a held entry is fine at the cap.
        assert_eq!(r.advert(10, &[e(100, 4)]).len(), 1);
        let ch = r.link_down(10);
        assert_eq!(ch.len(), 4);
        assert_eq!(r.len(), 0);
    }
}
