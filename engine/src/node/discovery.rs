//! Service discovery (PROTOCOL.md §11): who serves what, as a pure state machine.
//!
//! No locks, no IO, no clock: inputs are link events, SERVICES frames and route
//! changes; outputs ([`Out`]) are the frames to send and the entries that appeared or
//! went away. One owner drives it (the control task, `control.rs`).
//!
//! Rules that keep a neighbour from taking over the mesh's names:
//! - **Reverse-path check**: an update about origin O is taken only over the link
//!   that is our current route to O. A neighbour can speak for O only if we already
//!   send O's traffic through it.
//! - Diffs apply only on top of the version we hold, and move it by at most one per
//!   op; a full update replaces what we hold only when it is newer, or when it answers
//!   the REQUEST we sent after the route to O moved to another link.
//! - What a link makes us hold is capped: origins per link, entries per origin and per
//!   link, bytes per update. An update over a cap is refused whole and counted.
//! - When O becomes unreachable, everything about O goes at once.
//!
//! Work per input is proportional to that input (hash sets keyed by entry), except
//! the full table sent to a new neighbour, which is proportional to what it must learn.

use super::routing::Route;
use super::LinkId;
use crate::proto::frame::{Frame, ServiceOp, ServicesUpdate};
use crate::types::NodeId;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};

/// The env of address records (PROTOCOL.md §10.5): `!` is not allowed in a real env,
/// so no service can collide with them.
pub(crate) const ADDR_ENV: &str = "!addr";

/// One announced entry: a service instance, or an address record.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Entry {
    pub(crate) env: Bytes,
    pub(crate) name: Bytes,
    pub(crate) port: u32,
}

impl Entry {
    fn from_op(op: &ServiceOp) -> Self {
        Entry {
            env: op.env.clone(),
            name: op.name.clone(),
            port: op.port,
        }
    }

    fn op(&self, announce: bool) -> ServiceOp {
        ServiceOp {
            announce,
            port: self.port,
            env: self.env.clone(),
            name: self.name.clone(),
        }
    }

    /// Bytes this entry takes in a SERVICES frame.
    pub(crate) fn wire_len(&self) -> usize {
        1 + 4 + 1 + self.env.len() + 1 + self.name.len()
    }

    pub(crate) fn is_addr(&self) -> bool {
        self.env == ADDR_ENV.as_bytes()
    }
}

/// Caps on what one link can make us hold (PROTOCOL.md §13).
#[derive(Clone, Debug)]
pub(crate) struct DiscoveryLimits {
    pub(crate) max_origins_per_link: usize,
    pub(crate) max_entries_per_origin: usize,
    pub(crate) max_entries_per_link: usize,
    pub(crate) max_update_bytes: usize,
}

struct Origin {
    version: u64,
    /// The link the entries were learned over (our route to the origin then).
    link: LinkId,
    /// The route moved: the next full update from `link` replaces the entries
    /// whatever its version.
    resync: bool,
    entries: HashSet<Entry>,
    /// Bytes the entries take on the wire: our full update about the origin must fit
    /// one frame, however many diffs built it up.
    bytes: usize,
}

#[derive(Default, Clone, Copy)]
struct Usage {
    origins: usize,
    entries: usize,
}

/// A frame to send.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Send {
    /// On one link.
    To(LinkId, Frame),
    /// On every link but `except`.
    All {
        frame: Frame,
        except: Option<LinkId>,
    },
}

/// An entry of a remote origin that appeared or went away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) up: bool,
    pub(crate) origin: NodeId,
    pub(crate) entry: Entry,
}

/// What one input produced.
#[derive(Debug, Default)]
pub(crate) struct Out {
    pub(crate) sends: Vec<Send>,
    pub(crate) seen: Vec<Seen>,
    /// Origins that announced address records in this input.
    pub(crate) new_addrs: Vec<NodeId>,
}

/// Discovery state of one node.
pub(crate) struct Discovery {
    me: NodeId,
    /// Announces its own services (not a client).
    announces: bool,
    /// Carries other origins' announcements (a router).
    forwards: bool,
    version: u64,
    local: HashSet<Entry>,
    origins: HashMap<NodeId, Origin>,
    usage: HashMap<LinkId, Usage>,
    limits: DiscoveryLimits,
    entries_held: usize,
    /// Updates refused for a cap.
    pub(crate) limit_hits: u64,
}

fn request(origin: NodeId) -> Frame {
    Frame::Services(ServicesUpdate {
        origin: origin.0,
        base_version: 0,
        version: 0,
        full: false,
        hops: 0,
        ops: vec![],
        request: true,
    })
}

fn full(origin: NodeId, version: u64, entries: &HashSet<Entry>) -> Frame {
    let mut ops: Vec<ServiceOp> = entries.iter().map(|e| e.op(true)).collect();
    // A stable order, so equal states encode equally.
    ops.sort_by(|a, b| (&a.env, &a.name, a.port).cmp(&(&b.env, &b.name, b.port)));
    Frame::Services(ServicesUpdate {
        origin: origin.0,
        base_version: 0,
        version,
        full: true,
        hops: 0,
        ops,
        request: false,
    })
}

impl Discovery {
    pub(crate) fn new(
        me: NodeId,
        announces: bool,
        forwards: bool,
        limits: DiscoveryLimits,
    ) -> Self {
        Self {
            me,
            announces,
            forwards,
            version: 1,
            local: HashSet::new(),
            origins: HashMap::new(),
            usage: HashMap::new(),
            limits,
            entries_held: 0,
            limit_hits: 0,
        }
    }

    /// Remote origins held.
    pub(crate) fn origin_count(&self) -> usize {
        self.origins.len()
    }

    /// Remote entries held (services and address records, all envs).
    pub(crate) fn entry_count(&self) -> usize {
        self.entries_held
    }

    /// Entries of a remote origin.
    pub(crate) fn entries_of(&self, origin: NodeId) -> impl Iterator<Item = &Entry> {
        self.origins
            .get(&origin)
            .into_iter()
            .flat_map(|o| o.entries.iter())
    }

    /// We bound or unbound an entry: a new version, announced everywhere as a diff.
    pub(crate) fn local_change(&mut self, announce: bool, e: Entry, out: &mut Out) {
        let changed = if announce {
            self.local.insert(e.clone())
        } else {
            self.local.remove(&e)
        };
        if !changed || !self.announces {
            return;
        }
        self.version += 1;
        out.sends.push(Send::All {
            frame: Frame::Services(ServicesUpdate {
                origin: self.me.0,
                base_version: self.version - 1,
                version: self.version,
                full: false,
                hops: 0,
                ops: vec![e.op(announce)],
                request: false,
            }),
            except: None,
        });
    }

    /// Our own full update (empty for a client).
    fn own_full(&self) -> Frame {
        if self.announces {
            full(self.me, self.version, &self.local)
        } else {
            full(self.me, self.version, &HashSet::new())
        }
    }

    /// A new neighbour hears everything we know (PROTOCOL.md §11.3).
    pub(crate) fn link_up(&mut self, link: LinkId, out: &mut Out) {
        if self.announces {
            out.sends.push(Send::To(link, self.own_full()));
        }
        if self.forwards {
            for (n, o) in &self.origins {
                out.sends
                    .push(Send::To(link, full(*n, o.version, &o.entries)));
            }
        }
    }

    /// The node shuts down: withdraw everything (an empty full update).
    pub(crate) fn shutdown(&mut self, out: &mut Out) {
        self.local.clear();
        if self.announces {
            self.version += 1;
            out.sends.push(Send::All {
                frame: full(self.me, self.version, &self.local),
                except: None,
            });
        }
    }

    /// A SERVICES frame arrived over `link`; `route` is our current route to its
    /// origin.
    pub(crate) fn on_update(
        &mut self,
        link: LinkId,
        u: &ServicesUpdate,
        route: Option<Route>,
        out: &mut Out,
    ) {
        let origin = NodeId(u.origin);
        if u.request {
            if origin == self.me {
                if self.announces {
                    out.sends.push(Send::To(link, self.own_full()));
                }
            } else if self.forwards {
                if let Some(o) = self.origins.get(&origin) {
                    out.sends
                        .push(Send::To(link, full(origin, o.version, &o.entries)));
                }
            }
            return;
        }
        if origin == self.me {
            return;
        }
        // Reverse-path check: only our next hop towards the origin speaks for it.
        if route.is_none_or(|r| r.link != link) {
            return;
        }
        let bytes: usize = u.ops.iter().map(|op| Entry::from_op(op).wire_len()).sum();
        if bytes > self.limits.max_update_bytes {
            self.limit_hits += 1;
            return;
        }
        let applied = if u.full {
            self.apply_full(link, origin, u, out)
        } else {
            self.apply_diff(link, origin, u, out)
        };
        if applied && self.forwards {
            // Flood onwards; nodes that already hold this version stop it.
            out.sends.push(Send::All {
                frame: Frame::Services(ServicesUpdate {
                    hops: u.hops.saturating_add(1),
                    ..u.clone()
                }),
                except: Some(link),
            });
        }
    }

    fn apply_full(
        &mut self,
        link: LinkId,
        origin: NodeId,
        u: &ServicesUpdate,
        out: &mut Out,
    ) -> bool {
        let new: HashSet<Entry> = u
            .ops
            .iter()
            .filter(|op| op.announce)
            .map(Entry::from_op)
            .collect();
        let (held, fresh) = match self.origins.get(&origin) {
            Some(o) => {
                if !o.resync && u.version <= o.version {
                    return false;
                }
                (o.entries.len(), false)
            }
            None => (0, true),
        };
        let usage = self.usage.get(&link).copied().unwrap_or_default();
        if new.len() > self.limits.max_entries_per_origin
            || usage.entries - held + new.len() > self.limits.max_entries_per_link
            || (fresh && usage.origins >= self.limits.max_origins_per_link)
        {
            self.limit_hits += 1;
            return false;
        }
        let o = self.origins.entry(origin).or_insert_with(|| Origin {
            version: 0,
            link,
            resync: false,
            entries: HashSet::new(),
            bytes: 0,
        });
        let mut addrs = false;
        for e in o.entries.difference(&new) {
            out.seen.push(Seen {
                up: false,
                origin,
                entry: e.clone(),
            });
        }
        for e in new.difference(&o.entries) {
            addrs |= e.is_addr();
            out.seen.push(Seen {
                up: true,
                origin,
                entry: e.clone(),
            });
        }
        self.entries_held = self.entries_held - o.entries.len() + new.len();
        o.bytes = new.iter().map(Entry::wire_len).sum();
        o.entries = new;
        o.version = u.version;
        o.resync = false;
        let use_ = self.usage.entry(link).or_default();
        use_.entries = use_.entries - held + o.entries.len();
        if fresh {
            use_.origins += 1;
        }
        if addrs {
            out.new_addrs.push(origin);
        }
        true
    }

    fn apply_diff(
        &mut self,
        link: LinkId,
        origin: NodeId,
        u: &ServicesUpdate,
        out: &mut Out,
    ) -> bool {
        let Some(o) = self.origins.get_mut(&origin) else {
            // Never heard of it in full: ask.
            out.sends.push(Send::To(link, request(origin)));
            return false;
        };
        if u.version <= o.version {
            return false;
        }
        let step = u.version.wrapping_sub(u.base_version);
        if o.resync || u.base_version != o.version || step == 0 || step > u.ops.len().max(1) as u64
        {
            // A gap, or a version that jumps further than its ops: ask for the whole.
            out.sends.push(Send::To(link, request(origin)));
            return false;
        }
        let (mut adds, mut add_bytes) = (0, 0);
        for e in u.ops.iter().filter(|op| op.announce).map(Entry::from_op) {
            if !o.entries.contains(&e) {
                adds += 1;
                add_bytes += e.wire_len();
            }
        }
        let usage = self.usage.get(&link).copied().unwrap_or_default();
        if o.entries.len() + adds > self.limits.max_entries_per_origin
            || usage.entries + adds > self.limits.max_entries_per_link
            || o.bytes + add_bytes > self.limits.max_update_bytes
        {
            self.limit_hits += 1;
            return false;
        }
        let before = o.entries.len();
        let mut addrs = false;
        for op in &u.ops {
            let e = Entry::from_op(op);
            let changed = if op.announce {
                addrs |= e.is_addr();
                o.entries.insert(e.clone())
            } else {
                o.entries.remove(&e)
            };
            if changed {
                if op.announce {
                    o.bytes += e.wire_len();
                } else {
                    o.bytes -= e.wire_len();
                }
                out.seen.push(Seen {
                    up: op.announce,
                    origin,
                    entry: e,
                });
            }
        }
        o.version = u.version;
        self.entries_held = self.entries_held - before + o.entries.len();
        let use_ = self.usage.entry(link).or_default();
        use_.entries = use_.entries - before + o.entries.len();
        if addrs {
            out.new_addrs.push(origin);
        }
        true
    }

    /// Our route to `node` changed (`None`: unreachable).
    pub(crate) fn on_route(&mut self, node: NodeId, route: Option<Route>, out: &mut Out) {
        if node == self.me {
            return;
        }
        let Some(r) = route else {
            self.forget(node, out);
            return;
        };
        match self.origins.get_mut(&node) {
            Some(o)
                if o.link != r.link
                    && !fits(&self.usage, &self.limits, r.link, o.entries.len()) =>
            {
                // The new link is at its caps: hold nothing about the origin until it
                // answers for it in full, within them.
                self.forget(node, out);
                out.sends.push(Send::To(r.link, request(node)));
            }
            Some(o) if o.link != r.link => {
                // Another link speaks for the origin now: keep what we hold (the new
                // route vouches for the origin), and ask that link for the whole.
                let n = o.entries.len();
                if let Some(u) = self.usage.get_mut(&o.link) {
                    u.origins -= 1;
                    u.entries -= n;
                }
                let u = self.usage.entry(r.link).or_default();
                u.origins += 1;
                u.entries += n;
                o.link = r.link;
                o.resync = true;
                out.sends.push(Send::To(r.link, request(node)));
            }
            Some(_) => {}
            None => out.sends.push(Send::To(r.link, request(node))),
        }
    }

    /// A link is gone: what it carried goes with the routes through it (the caller
    /// passes those route changes to [`Discovery::on_route`]); drop its accounting.
    pub(crate) fn link_down(&mut self, link: LinkId) {
        if self.usage.get(&link).is_some_and(|u| u.origins == 0) {
            self.usage.remove(&link);
        }
    }

    /// Panics if an invariant is broken: every origin is held over its current route,
    /// caps hold, and the counters match what is held. `route_link` gives our route's
    /// link to a node.
    pub(crate) fn check(&self, route_link: impl Fn(NodeId) -> Option<LinkId>) {
        let mut per_link: HashMap<LinkId, Usage> = HashMap::new();
        let mut total = 0;
        for (n, o) in &self.origins {
            assert_eq!(
                route_link(*n),
                Some(o.link),
                "origin held without its route"
            );
            assert!(o.entries.len() <= self.limits.max_entries_per_origin);
            let u = per_link.entry(o.link).or_default();
            u.origins += 1;
            u.entries += o.entries.len();
            total += o.entries.len();
        }
        assert_eq!(total, self.entries_held);
        for (l, u) in &per_link {
            let held = self.usage.get(l).copied().unwrap_or_default();
            assert_eq!(
                (held.origins, held.entries),
                (u.origins, u.entries),
                "usage of link {l}"
            );
            assert!(u.origins <= self.limits.max_origins_per_link);
            assert!(u.entries <= self.limits.max_entries_per_link);
        }
    }

    fn forget(&mut self, node: NodeId, out: &mut Out) {
        let Some(o) = self.origins.remove(&node) else {
            return;
        };
        self.entries_held -= o.entries.len();
        if let Some(u) = self.usage.get_mut(&o.link) {
            u.origins -= 1;
            u.entries -= o.entries.len();
            if u.origins == 0 {
                self.usage.remove(&o.link);
            }
        }
        for e in o.entries {
            out.seen.push(Seen {
                up: false,
                origin: node,
                entry: e,
            });
        }
    }
}

/// Whether `link` can take one more origin with `entries` entries.
fn fits(
    usage: &HashMap<LinkId, Usage>,
    limits: &DiscoveryLimits,
    link: LinkId,
    entries: usize,
) -> bool {
    let u = usage.get(&link).copied().unwrap_or_default();
    u.origins < limits.max_origins_per_link && u.entries + entries <= limits.max_entries_per_link
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: NodeId = NodeId(1);
    const O: NodeId = NodeId(7);

    fn limits() -> DiscoveryLimits {
        DiscoveryLimits {
            max_origins_per_link: 4,
            max_entries_per_origin: 8,
            max_entries_per_link: 12,
            max_update_bytes: 4096,
        }
    }

    fn route(link: LinkId) -> Option<Route> {
        Some(Route {
            link,
            shard: 0,
            via: NodeId(99),
            hops: 2,
        })
    }

    fn op(announce: bool, name: &str) -> ServiceOp {
        ServiceOp {
            announce,
            port: 80,
            env: Bytes::new(),
            name: Bytes::copy_from_slice(name.as_bytes()),
        }
    }

    fn upd(
        origin: NodeId,
        full: bool,
        base: u64,
        version: u64,
        ops: Vec<ServiceOp>,
    ) -> ServicesUpdate {
        ServicesUpdate {
            origin: origin.0,
            base_version: base,
            version,
            full,
            hops: 1,
            ops,
            request: false,
        }
    }

    fn names(d: &Discovery, o: NodeId) -> Vec<String> {
        let mut v: Vec<String> = d
            .entries_of(o)
            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .collect();
        v.sort();
        v
    }

    fn requests(out: &Out) -> Vec<(LinkId, u64)> {
        out.sends
            .iter()
            .filter_map(|s| match s {
                Send::To(l, Frame::Services(u)) if u.request => Some((*l, u.origin)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn full_then_diffs_in_order_and_out_of_order() {
        let mut d = Discovery::new(ME, true, true, limits());
        let mut out = Out::default();
        d.on_update(
            10,
            &upd(O, true, 0, 3, vec![op(true, "a")]),
            route(10),
            &mut out,
        );
        assert_eq!(names(&d, O), ["a"]);
        assert_eq!(out.seen.len(), 1);
        // Forwarded to every other link.
        assert!(out.sends.iter().any(|s| matches!(
            s,
            Send::All {
                except: Some(10),
                ..
            }
        )));
        // The next diff applies.
        let mut out = Out::default();
        d.on_update(
            10,
            &upd(O, false, 3, 4, vec![op(true, "b")]),
            route(10),
            &mut out,
        );
        assert_eq!(names(&d, O), ["a", "b"]);
        // A diff from the future (a gap) is not applied: REQUEST goes back.
        let mut out = Out::default();
        d.on_update(
            10,
            &upd(O, false, 6, 7, vec![op(true, "c")]),
            route(10),
            &mut out,
        );
        assert_eq!(names(&d, O), ["a", "b"]);
        assert_eq!(requests(&out), [(10, O.0)]);
        // A duplicate is ignored and not forwarded.
        let mut out = Out::default();
        d.on_update(
            10,
            &upd(O, false, 3, 4, vec![op(true, "b")]),
            route(10),
            &mut out,
        );
        assert!(out.sends.is_empty() && out.seen.is_empty());
        // The full answer repairs the gap, withdrawing what is gone.
        let mut out = Out::default();
        d.on_update(
            10,
            &upd(O, true, 0, 7, vec![op(true, "b"), op(true, "c")]),
            route(10),
            &mut out,
        );
        assert_eq!(names(&d, O), ["b", "c"]);
        assert_eq!(out.seen.iter().filter(|s| !s.up).count(), 1);
        // A diff for an origin never seen in full asks for it.
        let mut out = Out::default();
        d.on_update(
            10,
            &upd(NodeId(8), false, 1, 2, vec![op(true, "x")]),
            route(10),
            &mut out,
        );
        assert_eq!(requests(&out), [(10, 8)]);
        assert_eq!(d.origin_count(), 1);
    }

    #[test]
    fn only_the_route_to_an_origin_speaks_for_it() {
        let mut d = Discovery::new(ME, true, true, limits());
        let mut out = Out::default();
        d.on_update(
            10,
            &upd(O, true, 0, 3, vec![op(true, "a")]),
            route(10),
            &mut out,
        );
        // Link 11 is not our route to O: it cannot erase, replace or add.
        let mut out = Out::default();
        d.on_update(11, &upd(O, true, 0, u64::MAX, vec![]), route(10), &mut out);
        d.on_update(
            11,
            &upd(O, false, 3, 4, vec![op(true, "evil")]),
            route(10),
            &mut out,
        );
        assert_eq!(names(&d, O), ["a"]);
        assert!(out.sends.is_empty());
        // No route at all: ignored.
        d.on_update(
            10,
            &upd(NodeId(9), true, 0, 1, vec![op(true, "z")]),
            None,
            &mut out,
        );
        assert_eq!(d.origin_count(), 1);
        // Our own id is never learned.
        d.on_update(
            10,
            &upd(ME, true, 0, 9, vec![op(true, "me")]),
            route(10),
            &mut out,
        );
        assert_eq!(d.origin_count(), 1);
    }

    #[test]
    fn a_diff_cannot_jump_versions() {
        let mut d = Discovery::new(ME, true, true, limits());
        let mut out = Out::default();
        d.on_update(
            10,
            &upd(O, true, 0, 3, vec![op(true, "a")]),
            route(10),
            &mut out,
        );
        let mut out = Out::default();
        d.on_update(
            10,
            &upd(O, false, 3, u64::MAX, vec![op(false, "a")]),
            route(10),
            &mut out,
        );
        assert_eq!(names(&d, O), ["a"]);
        assert_eq!(requests(&out), [(10, O.0)]);
    }

    #[test]
    fn route_moves_resync_and_unreachable_origins_go() {
        let mut d = Discovery::new(ME, true, true, limits());
        let mut out = Out::default();
        d.on_update(
            10,
            &upd(O, true, 0, 5, vec![op(true, "a")]),
            route(10),
            &mut out,
        );
        // The route moves to link 11: entries stay, link 11 is asked for the whole.
        let mut out = Out::default();
        d.on_route(O, route(11), &mut out);
        assert_eq!(names(&d, O), ["a"]);
        assert_eq!(requests(&out), [(11, O.0)]);
        // Its answer replaces the entries even with a lower version (the origin
        // restarted, or the old path lied).
        let mut out = Out::default();
        d.on_update(
            11,
            &upd(O, true, 0, 2, vec![op(true, "b")]),
            route(11),
            &mut out,
        );
        assert_eq!(names(&d, O), ["b"]);
        // Unreachable: everything about O goes.
        let mut out = Out::default();
        d.on_route(O, None, &mut out);
        assert_eq!(d.origin_count(), 0);
        assert_eq!(d.entry_count(), 0);
        assert_eq!(
            out.seen,
            [Seen {
                up: false,
                origin: O,
                entry: Entry::from_op(&op(true, "b"))
            }]
        );
        // A newly reachable node is asked for its services.
        let mut out = Out::default();
        d.on_route(NodeId(5), route(12), &mut out);
        assert_eq!(requests(&out), [(12, 5)]);
    }

    #[test]
    fn caps_refuse_whole_updates() {
        let mut d = Discovery::new(ME, true, true, limits());
        let mut out = Out::default();
        // Too many entries for one origin.
        let many: Vec<_> = (0..9).map(|i| op(true, &format!("s{i}"))).collect();
        d.on_update(10, &upd(O, true, 0, 1, many), route(10), &mut out);
        assert_eq!(d.origin_count(), 0);
        assert_eq!(d.limit_hits, 1);
        // Origins per link.
        for i in 0..6u64 {
            d.on_update(
                10,
                &upd(NodeId(100 + i), true, 0, 1, vec![op(true, "x")]),
                route(10),
                &mut out,
            );
        }
        assert_eq!(d.origin_count(), 4);
        assert_eq!(d.limit_hits, 3);
        // Entries per link: 4 held, 8 more fit, not 9.
        let eight: Vec<_> = (0..8).map(|i| op(true, &format!("e{i}"))).collect();
        d.on_update(
            10,
            &upd(NodeId(100), false, 1, 2, eight.clone()),
            route(10),
            &mut out,
        );
        assert_eq!(d.limit_hits, 4, "1 + 8 entries for one origin");
        d.on_update(
            10,
            &upd(NodeId(100), true, 0, 3, eight[..7].to_vec()),
            route(10),
            &mut out,
        );
        assert_eq!(d.entry_count(), 10);
        d.on_update(
            10,
            &upd(NodeId(101), true, 0, 3, eight[..4].to_vec()),
            route(10),
            &mut out,
        );
        assert_eq!(d.limit_hits, 5);
        // Another link has its own budget.
        d.on_update(
            11,
            &upd(NodeId(200), true, 0, 1, vec![op(true, "y")]),
            route(11),
            &mut out,
        );
        assert_eq!(d.origin_count(), 5);
        // Oversized update.
        let big = ServiceOp {
            name: Bytes::from(vec![b'n'; 5000]),
            ..op(true, "")
        };
        d.on_update(
            11,
            &upd(NodeId(201), true, 0, 1, vec![big]),
            route(11),
            &mut out,
        );
        assert_eq!(d.limit_hits, 6);
    }

    #[test]
    fn an_origin_built_by_diffs_still_fits_one_frame() {
        let mut d = Discovery::new(
            ME,
            true,
            true,
            DiscoveryLimits {
                max_update_bytes: 100,
                ..limits()
            },
        );
        let mut out = Out::default();
        d.on_update(
            10,
            &upd(
                O,
                true,
                0,
                1,
                vec![op(true, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")],
            ),
            route(10),
            &mut out,
        );
        let names = [
            "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
            "cccccccccccccccccccccccccccccc",
            "dddddddddddddddddddddddddddddd",
        ];
        for (v, name) in (1..).zip(names) {
            d.on_update(
                10,
                &upd(O, false, v, v + 1, vec![op(true, name)]),
                route(10),
                &mut out,
            );
        }
        // Each entry is 37 bytes: two fit in 100, the third diff is refused (and the
        // one after it, built on the refused version, is a gap: asked for in full).
        assert_eq!(d.entries_of(O).count(), 2);
        assert_eq!(d.limit_hits, 1);
        // Withdrawing makes room again.
        d.on_update(
            10,
            &upd(
                O,
                false,
                2,
                3,
                vec![op(false, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")],
            ),
            route(10),
            &mut out,
        );
        d.on_update(
            10,
            &upd(
                O,
                false,
                3,
                4,
                vec![op(true, "dddddddddddddddddddddddddddddd")],
            ),
            route(10),
            &mut out,
        );
        assert_eq!(d.entries_of(O).count(), 2);
        d.check(|_| Some(10));
    }

    #[test]
    fn a_route_move_respects_the_new_links_caps() {
        let mut d = Discovery::new(
            ME,
            true,
            true,
            DiscoveryLimits {
                max_origins_per_link: 1,
                ..limits()
            },
        );
        let mut out = Out::default();
        d.on_update(
            10,
            &upd(O, true, 0, 1, vec![op(true, "a")]),
            route(10),
            &mut out,
        );
        d.on_update(
            11,
            &upd(NodeId(3), true, 0, 1, vec![op(true, "b")]),
            route(11),
            &mut out,
        );
        // O's route moves to link 11, which already holds its one origin.
        let mut out = Out::default();
        d.on_route(O, route(11), &mut out);
        assert_eq!(d.origin_count(), 1);
        assert_eq!(requests(&out), [(11, O.0)]);
        d.check(|_| Some(11));
    }

    #[test]
    fn local_changes_are_versioned_diffs_and_requests_answered() {
        let mut d = Discovery::new(ME, true, false, limits());
        let e = Entry::from_op(&op(true, "svc"));
        let mut out = Out::default();
        d.local_change(true, e.clone(), &mut out);
        d.local_change(true, e.clone(), &mut out); // no change, no version
        match &out.sends[..] {
            [Send::All {
                frame: Frame::Services(u),
                except: None,
            }] => {
                assert_eq!((u.base_version, u.version, u.full), (1, 2, false));
            }
            other => panic!("{other:?}"),
        }
        let mut out = Out::default();
        d.on_update(
            3,
            &ServicesUpdate {
                request: true,
                ..upd(ME, false, 0, 0, vec![])
            },
            None,
            &mut out,
        );
        match &out.sends[..] {
            [Send::To(3, Frame::Services(u))] => {
                assert!(u.full && u.ops.len() == 1 && u.version == 2)
            }
            other => panic!("{other:?}"),
        }
        // A non-router neither forwards nor answers for others.
        let mut out = Out::default();
        d.on_update(
            3,
            &upd(O, true, 0, 1, vec![op(true, "a")]),
            route(3),
            &mut out,
        );
        assert!(out.sends.is_empty());
        assert_eq!(names(&d, O), ["a"]);
    }
}
