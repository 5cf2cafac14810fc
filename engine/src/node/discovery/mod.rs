//! Service discovery (PROTOCOL.md §11): who serves what, as a pure state machine.
//!
//! No locks, no IO, no clock: inputs are link events, SERVICES frames and route
//! changes; outputs ([`Out`]) are the frames to send, the entries that appeared or
//! went away, and the updates rejected. One owner drives it (the control task,
//! `control.rs`).
//!
//! Rules that keep a neighbour from taking over the mesh's names:
//! - **Reverse-path check**: an update about origin O is taken only over the link
//!   that is our current route to O. A neighbour can speak for O only if we already
//!   send O's traffic through it.
//! - Diffs apply only on top of the version we hold, and move it by at most one per
//!   op; a full update replaces what we hold only when it is newer, or (unsigned mesh)
//!   when it answers the REQUEST we sent after the route to O moved to another link.
//! - What a link makes us hold is capped: origins per link, entries per origin and per
//!   link, bytes per update. An update over a cap is refused whole and counted.
//! - When O becomes unreachable, everything about O goes at once.
//!
//! **Signed mesh** (built with an [`AnnounceAuth`]; PROTOCOL.md §11.5): on top of
//! the rules above, nothing about O is held unless O signed it. O signs its whole
//! state (entries and version) at every version; a receiver builds the state an
//! update produces, checks O's signature over it with the key from O's credentials
//! (carried by full updates, verified against our trust, cached per held origin),
//! and commits only then. A router that forges, alters or replays O's announcements
//! can't get them held: forged and altered ones are rejected, counted
//! ([`Discovery::rejected`]) and reported in [`Out::rejected`]; an older state is
//! ignored, because versions only move forward (O starts its versions from the wall
//! clock, so a restart doesn't reuse them). Address records are entries like any
//! other, so direct upgrades ([`Out::new_addrs`]) only go to addresses O signed.
//!
//! Work per input is proportional to that input (ordered sets keyed by entry),
//! except the full table sent to a new neighbour, which is proportional to what it
//! must learn, and, in a signed mesh, checking or making a signature, which costs
//! O(the origin's state): bounded by `max_update_bytes` (a full update must fit it,
//! and diffs can't grow an origin past it), plus one signature verification, plus
//! one credentials verification when they differ from the cached ones.

mod own;
pub(crate) mod signing;

use super::auth::AnnounceAuth;
use super::routing::Route;
use super::LinkId;
use crate::proto::frame::{Frame, ServiceOp, ServicesSig, ServicesUpdate};
use crate::types::NodeId;
use bytes::Bytes;
use own::Own;
pub(crate) use signing::Reject;
use signing::{message, verify, Proof};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// The env of address records (PROTOCOL.md §10.5): `!` is not allowed in a real env,
/// so no service can collide with them.
pub(crate) const ADDR_ENV: &str = "!addr";

/// One announced entry: a service instance, or an address record. Ordered by (env,
/// name, port): the order entries are signed in.
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
    /// whatever its version (unsigned mesh only: in a signed one, every held state
    /// is the origin's own, so only a newer one replaces it).
    resync: bool,
    entries: BTreeSet<Entry>,
    /// Bytes the entries take on the wire: our full update about the origin must fit
    /// one frame, however many diffs built it up.
    bytes: usize,
    /// Signed mesh: the origin's key and signature over `entries` at `version`.
    proof: Option<Proof>,
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

/// An update rejected because its origin did not sign it (signed mesh).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejected {
    /// The link it came over.
    pub(crate) link: LinkId,
    /// The origin it claimed.
    pub(crate) origin: NodeId,
    pub(crate) why: Reject,
}

/// What one input produced.
#[derive(Debug, Default)]
pub(crate) struct Out {
    pub(crate) sends: Vec<Send>,
    pub(crate) seen: Vec<Seen>,
    /// Origins that announced address records in this input.
    pub(crate) new_addrs: Vec<NodeId>,
    /// Updates rejected in this input.
    pub(crate) rejected: Vec<Rejected>,
}

/// Discovery state of one node.
pub(crate) struct Discovery {
    me: NodeId,
    /// Announces its own services (not a client).
    announces: bool,
    /// Carries other origins' announcements (a router).
    forwards: bool,
    version: u64,
    local: BTreeSet<Entry>,
    /// Signs what we announce and verifies what others do (`None`: unsigned mesh).
    own: Option<Own>,
    origins: HashMap<NodeId, Origin>,
    usage: HashMap<LinkId, Usage>,
    limits: DiscoveryLimits,
    entries_held: usize,
    /// Updates refused for a cap.
    pub(crate) limit_hits: u64,
    /// Updates rejected because their origin did not sign them (signed mesh).
    pub(crate) rejected: u64,
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
        signed: None,
    })
}

/// A full update; `entries` is ordered, so equal states encode equally.
fn full(
    origin: NodeId,
    version: u64,
    entries: &BTreeSet<Entry>,
    signed: Option<ServicesSig>,
) -> Frame {
    Frame::Services(ServicesUpdate {
        origin: origin.0,
        base_version: 0,
        version,
        full: true,
        hops: 0,
        ops: entries.iter().map(|e| e.op(true)).collect(),
        request: false,
        signed,
    })
}

fn wire_bytes(entries: &BTreeSet<Entry>) -> usize {
    entries.iter().map(Entry::wire_len).sum()
}

impl Discovery {
    /// `auth`: sign our announcements and accept only signed ones (`None`: an
    /// unsigned mesh). `first_version`: the version our announcements start from; in
    /// a signed mesh it must exceed every version a previous run of this node used
    /// (the caller takes it from the wall clock), since receivers only move forward.
    pub(crate) fn new(
        me: NodeId,
        announces: bool,
        forwards: bool,
        limits: DiscoveryLimits,
        auth: Option<Arc<dyn AnnounceAuth>>,
        first_version: u64,
    ) -> Self {
        Self {
            me,
            announces,
            forwards,
            version: first_version.max(1),
            local: BTreeSet::new(),
            own: auth.map(|auth| Own { auth, sig: None }),
            origins: HashMap::new(),
            usage: HashMap::new(),
            limits,
            entries_held: 0,
            limit_hits: 0,
            rejected: 0,
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

    /// The version of a remote origin's state we hold.
    #[cfg(test)]
    pub(crate) fn version_of(&self, origin: NodeId) -> Option<u64> {
        self.origins.get(&origin).map(|o| o.version)
    }

    /// Our full update about a remote origin we hold, with its proof.
    fn held_full(&self, origin: NodeId) -> Option<Frame> {
        let o = self.origins.get(&origin)?;
        Some(full(
            origin,
            o.version,
            &o.entries,
            o.proof.as_ref().map(Proof::wire),
        ))
    }

    /// A new neighbour hears everything we know (PROTOCOL.md §11.3).
    pub(crate) fn link_up(&mut self, link: LinkId, out: &mut Out) {
        if self.announces {
            let f = self.own_full();
            out.sends.push(Send::To(link, f));
        }
        if self.forwards {
            for n in self.origins.keys() {
                if let Some(f) = self.held_full(*n) {
                    out.sends.push(Send::To(link, f));
                }
            }
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
                    let f = self.own_full();
                    out.sends.push(Send::To(link, f));
                }
            } else if self.forwards {
                if let Some(f) = self.held_full(origin) {
                    out.sends.push(Send::To(link, f));
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
        } else if self.own.is_some() {
            self.apply_signed_diff(link, origin, u, out)
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

    /// Checks `origin`'s signature over `entries` at `version` (signed mesh); an
    /// update that fails is rejected, counted and reported. `Ok(None)`: unsigned mesh.
    fn check_signed(
        &mut self,
        link: LinkId,
        origin: NodeId,
        version: u64,
        entries: &BTreeSet<Entry>,
        sig: Option<&ServicesSig>,
        out: &mut Out,
    ) -> Result<Option<Proof>, ()> {
        let Some(own) = &self.own else {
            return Ok(None);
        };
        let held = self.origins.get(&origin).and_then(|o| o.proof.as_ref());
        let msg = message(origin, version, entries.iter(), wire_bytes(entries));
        match verify(own.auth.as_ref(), origin, held, sig, &msg) {
            Ok(p) => Ok(Some(p)),
            Err(why) => {
                self.rejected += 1;
                out.rejected.push(Rejected { link, origin, why });
                Err(())
            }
        }
    }

    fn apply_full(
        &mut self,
        link: LinkId,
        origin: NodeId,
        u: &ServicesUpdate,
        out: &mut Out,
    ) -> bool {
        let new: BTreeSet<Entry> = u
            .ops
            .iter()
            .filter(|op| op.announce)
            .map(Entry::from_op)
            .collect();
        let signed = self.own.is_some();
        let (held, fresh) = match self.origins.get(&origin) {
            Some(o) => {
                let newer = u.version > o.version;
                let taken = if signed {
                    // Only forward (a replayed older state is ignored), or the same
                    // version under other credentials: the origin's key rotated.
                    newer
                        || (u.version == o.version
                            && u.signed.as_ref().is_some_and(|s| {
                                !s.credentials.is_empty()
                                    && o.proof.as_ref().is_none_or(|p| p.creds != s.credentials)
                            }))
                } else {
                    newer || o.resync
                };
                if !taken {
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
        let Ok(proof) = self.check_signed(link, origin, u.version, &new, u.signed.as_ref(), out)
        else {
            return false;
        };
        self.replace(link, origin, new, u.version, proof, out);
        true
    }

    /// Makes `new` the state held about `origin` (learned over `link`, within its
    /// caps): reports what appeared and went, and keeps the accounting.
    fn replace(
        &mut self,
        link: LinkId,
        origin: NodeId,
        new: BTreeSet<Entry>,
        version: u64,
        proof: Option<Proof>,
        out: &mut Out,
    ) {
        let fresh = !self.origins.contains_key(&origin);
        let o = self.origins.entry(origin).or_insert_with(|| Origin {
            version: 0,
            link,
            resync: false,
            entries: BTreeSet::new(),
            bytes: 0,
            proof: None,
        });
        let held = o.entries.len();
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
        self.entries_held = self.entries_held - held + new.len();
        o.bytes = wire_bytes(&new);
        o.entries = new;
        o.version = version;
        o.resync = false;
        o.proof = proof;
        let use_ = self.usage.entry(link).or_default();
        use_.entries = use_.entries - held + o.entries.len();
        if fresh {
            use_.origins += 1;
        }
        if addrs {
            out.new_addrs.push(origin);
        }
    }

    /// Whether a diff applies on top of what we hold (else a REQUEST goes back), and
    /// the entries it adds and their bytes, within the caps (else counted). `None`:
    /// not applied.
    fn diff_fits(
        &mut self,
        link: LinkId,
        origin: NodeId,
        u: &ServicesUpdate,
        out: &mut Out,
    ) -> Option<()> {
        let signed = self.own.is_some();
        let Some(o) = self.origins.get(&origin) else {
            // Never heard of it in full: ask.
            out.sends.push(Send::To(link, request(origin)));
            return None;
        };
        if u.version <= o.version {
            return None;
        }
        let step = u.version.wrapping_sub(u.base_version);
        if (o.resync && !signed)
            || u.base_version != o.version
            || step == 0
            || step > u.ops.len().max(1) as u64
        {
            // A gap, or a version that jumps further than its ops: ask for the whole.
            out.sends.push(Send::To(link, request(origin)));
            return None;
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
            return None;
        }
        Some(())
    }

    /// A diff in a signed mesh: applied to a copy, committed only if the origin's
    /// signature verifies over the result. One that fails may also come from an
    /// origin whose key rotated: we ask for the whole, which carries its credentials.
    fn apply_signed_diff(
        &mut self,
        link: LinkId,
        origin: NodeId,
        u: &ServicesUpdate,
        out: &mut Out,
    ) -> bool {
        if self.diff_fits(link, origin, u, out).is_none() {
            return false;
        }
        let Some(o) = self.origins.get(&origin) else {
            return false;
        };
        let mut next = o.entries.clone();
        for op in &u.ops {
            let e = Entry::from_op(op);
            if op.announce {
                next.insert(e);
            } else {
                next.remove(&e);
            }
        }
        match self.check_signed(link, origin, u.version, &next, u.signed.as_ref(), out) {
            Ok(proof) => {
                self.replace(link, origin, next, u.version, proof, out);
                true
            }
            Err(()) => {
                out.sends.push(Send::To(link, request(origin)));
                false
            }
        }
    }

    /// A diff in an unsigned mesh: applied in place, in O(its ops).
    fn apply_diff(
        &mut self,
        link: LinkId,
        origin: NodeId,
        u: &ServicesUpdate,
        out: &mut Out,
    ) -> bool {
        if self.diff_fits(link, origin, u, out).is_none() {
            return false;
        }
        let Some(o) = self.origins.get_mut(&origin) else {
            return false;
        };
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
                // route vouches for the origin; in a signed mesh, its signature does),
                // and ask that link for the whole.
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
    /// caps hold, the counters match what is held, and in a signed mesh every origin's
    /// state is verified by its origin's signature. `route_link` gives our route's
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
            assert_eq!(o.bytes, wire_bytes(&o.entries));
            if self.own.is_some() {
                let p = o
                    .proof
                    .as_ref()
                    .expect("signed mesh: origin held without proof");
                let msg = message(*n, o.version, o.entries.iter(), o.bytes);
                assert!(p.key.verify(&msg, &p.sig), "origin held unsigned state");
            }
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
mod signed_tests;
#[cfg(test)]
mod tests;
