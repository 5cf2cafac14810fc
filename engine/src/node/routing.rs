//! Distance-vector routing over the node's links (PROTOCOL.md §10.4): split horizon
//! with poisoned reverse, infinity at 128 hops, triggered updates.

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
    /// What the neighbour advertised: node → its distance to it.
    adverts: HashMap<NodeId, u8>,
}

/// The routing table of one node.
#[derive(Default)]
pub(crate) struct Routing {
    links: HashMap<LinkId, Neighbour>,
    best: HashMap<NodeId, Route>,
}

/// A route that changed: the node and its new route (`None`: unreachable now).
pub(crate) type Change = (NodeId, Option<Route>);

impl Routing {
    pub(crate) fn get(&self, n: NodeId) -> Option<Route> {
        self.best.get(&n).copied()
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = (&NodeId, &Route)> {
        self.best.iter()
    }

    pub(crate) fn link_up(
        &mut self,
        me: NodeId,
        link: LinkId,
        peer: NodeId,
        shard: u32,
    ) -> Vec<Change> {
        self.links.insert(
            link,
            Neighbour {
                peer,
                shard,
                adverts: HashMap::new(),
            },
        );
        self.recompute(me)
    }

    pub(crate) fn link_down(&mut self, me: NodeId, link: LinkId) -> Vec<Change> {
        self.links.remove(&link);
        self.recompute(me)
    }

    /// Applies a neighbour's ROUTES frame.
    pub(crate) fn advert(
        &mut self,
        me: NodeId,
        link: LinkId,
        entries: &[RouteEntry],
    ) -> Vec<Change> {
        let Some(n) = self.links.get_mut(&link) else {
            return Vec::new();
        };
        for e in entries {
            if e.hops >= INFINITY {
                n.adverts.remove(&NodeId(e.node));
            } else {
                n.adverts.insert(NodeId(e.node), e.hops);
            }
        }
        self.recompute(me)
    }

    fn recompute(&mut self, me: NodeId) -> Vec<Change> {
        let mut best: HashMap<NodeId, Route> = HashMap::new();
        let mut consider = |dst: NodeId, r: Route| {
            if dst == me || r.hops >= INFINITY {
                return;
            }
            let better = match best.get(&dst) {
                None => true,
                Some(b) => (r.hops, r.via, r.link) < (b.hops, b.via, b.link),
            };
            if better {
                best.insert(dst, r);
            }
        };
        for (&link, n) in &self.links {
            let base = Route {
                link,
                shard: n.shard,
                via: n.peer,
                hops: 1,
            };
            consider(n.peer, base);
            for (&dst, &h) in &n.adverts {
                consider(
                    dst,
                    Route {
                        hops: h.saturating_add(1),
                        ..base
                    },
                );
            }
        }
        let mut changes = Vec::new();
        for (n, r) in &best {
            if self.best.get(n) != Some(r) {
                changes.push((*n, Some(*r)));
            }
        }
        for n in self.best.keys() {
            if !best.contains_key(n) {
                changes.push((*n, None));
            }
        }
        self.best = best;
        changes
    }

    /// What to tell the neighbour on `link` about `nodes` (all when `None`): our
    /// distance, or WITHDRAWN for routes through that neighbour (poisoned reverse) and
    /// for unreachable nodes.
    pub(crate) fn advert_for(&self, link: LinkId, nodes: Option<&[NodeId]>) -> Vec<Frame> {
        let Some(n) = self.links.get(&link) else {
            return Vec::new();
        };
        let entry = |dst: NodeId| {
            let hops = match self.best.get(&dst) {
                Some(r) if r.via != n.peer && dst != n.peer => r.hops,
                Some(_) if dst == n.peer => return None,
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

    /// The links and the shards they live on.
    pub(crate) fn links(&self) -> Vec<(LinkId, u32)> {
        self.links.iter().map(|(l, n)| (*l, n.shard)).collect()
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
        let me = NodeId(1);
        let mut r = Routing::default();
        r.link_up(me, 10, NodeId(2), 0);
        r.link_up(me, 11, NodeId(3), 0);
        // 2 reaches 9 in 3 hops, 3 in 1 hop.
        r.advert(me, 10, &[e(9, 3)]);
        r.advert(me, 11, &[e(9, 1)]);
        assert_eq!(
            r.get(NodeId(9)).map(|x| (x.via, x.hops)),
            Some((NodeId(3), 2))
        );
        // 3's link dies: fall back to 2.
        let ch = r.link_down(me, 11);
        assert!(ch.contains(&(NodeId(3), None)));
        assert_eq!(
            r.get(NodeId(9)).map(|x| (x.via, x.hops)),
            Some((NodeId(2), 4))
        );
        // 2 withdraws 9.
        r.advert(me, 10, &[e(9, WITHDRAWN)]);
        assert_eq!(r.get(NodeId(9)), None);
    }

    #[test]
    fn poisoned_reverse_and_infinity() {
        let me = NodeId(1);
        let mut r = Routing::default();
        r.link_up(me, 10, NodeId(2), 0);
        r.advert(me, 10, &[e(9, 1), e(8, INFINITY - 1)]);
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
}
