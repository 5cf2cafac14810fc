//! Routing and discovery together, as one pure state machine: what the control task
//! runs for each input, minus the IO (frames to shards, watchers, the published view).
//! The fuzz target `control_plane` drives it directly.

use super::auth::AnnounceAuth;
use super::discovery::{Discovery, DiscoveryLimits, Entry, Out};
use super::routing::{Change, Routing};
use super::LinkId;
use crate::proto::frame::{RouteEntry, ServicesUpdate};
use crate::types::NodeId;
use std::sync::Arc;

pub(crate) struct Plane {
    pub(crate) routing: Routing,
    pub(crate) discovery: Discovery,
}

impl Plane {
    /// `auth` and `first_version`: see [`Discovery::new`].
    pub(crate) fn new(
        me: NodeId,
        announces: bool,
        forwards: bool,
        max_routes_per_link: usize,
        limits: DiscoveryLimits,
        auth: Option<Arc<dyn AnnounceAuth>>,
        first_version: u64,
    ) -> Self {
        Self {
            routing: Routing::new(me, max_routes_per_link),
            discovery: Discovery::new(me, announces, forwards, limits, auth, first_version),
        }
    }

    /// A link finished its handshake with `peer`.
    pub(crate) fn link_up(
        &mut self,
        link: LinkId,
        peer: NodeId,
        shard: u32,
        out: &mut Out,
    ) -> Vec<Change> {
        // Link ids are never reused; should one come up twice, the old link is gone.
        let mut changes = if self.routing.peer_of(link).is_some() {
            self.link_down(link, out)
        } else {
            Vec::new()
        };
        let up = self.routing.link_up(link, peer, shard);
        self.discovery.link_up(link, out);
        self.routed(&up, out);
        changes.extend(up);
        changes
    }

    pub(crate) fn link_down(&mut self, link: LinkId, out: &mut Out) -> Vec<Change> {
        let changes = self.routing.link_down(link);
        self.routed(&changes, out);
        self.discovery.link_down(link);
        changes
    }

    pub(crate) fn routes(
        &mut self,
        link: LinkId,
        entries: &[RouteEntry],
        out: &mut Out,
    ) -> Vec<Change> {
        let changes = self.routing.advert(link, entries);
        self.routed(&changes, out);
        changes
    }

    pub(crate) fn services(&mut self, link: LinkId, u: &ServicesUpdate, out: &mut Out) {
        let route = self.routing.get(NodeId(u.origin));
        self.discovery.on_update(link, u, route, out);
    }

    pub(crate) fn local(&mut self, announce: bool, e: Entry, out: &mut Out) {
        self.discovery.local_change(announce, e, out);
    }

    /// Discovery follows every route change.
    fn routed(&mut self, changes: &[Change], out: &mut Out) {
        for (node, route) in changes {
            self.discovery.on_route(*node, *route, out);
        }
    }

    /// Updates refused for a cap, since the start.
    pub(crate) fn limit_hits(&self) -> u64 {
        self.routing.limit_hits + self.discovery.limit_hits
    }

    /// Announcements rejected because their origin did not sign them, since the start.
    pub(crate) fn rejected(&self) -> u64 {
        self.discovery.rejected
    }

    /// Checks the invariants that bound what peers can make us hold (for tests and
    /// fuzzing): panics if one is broken.
    pub(crate) fn check(&self) {
        self.routing.check();
        self.discovery
            .check(|n| self.routing.get(n).map(|r| r.link));
    }
}

/// The control plane's pure state machine, for the fuzz target, and a test-double
/// identity for tests of signed discovery (not a stable API).
#[doc(hidden)]
pub mod fuzzing {
    use super::*;
    use crate::node::discovery::signing::message;
    use crate::node::NodeConfig;
    use crate::proto::frame::ServicesSig;
    use bytes::Bytes;
    use std::collections::BTreeSet;

    pub use crate::node::test_auth::TestAuth;

    /// Makes a node sign its announcements and accept only signed ones, with a
    /// test-double identity instead of a certificate.
    pub fn set_test_auth(cfg: &mut NodeConfig, auth: TestAuth) {
        cfg.announce_auth = Some(Arc::new(auth));
    }

    /// The mesh seed the signed control plane's test identities share.
    pub const SEED: u64 = 0x5eed;

    /// Routing and discovery of one node, driven by hand.
    pub struct ControlPlane {
        plane: Plane,
        out: Out,
    }

    impl ControlPlane {
        /// A router with small caps, so a fuzzer reaches them.
        pub fn new(me: u64, cap: usize) -> Self {
            Self::with(me, cap, None)
        }

        /// Like [`ControlPlane::new`], in a signed mesh of test identities ([`SEED`]).
        pub fn new_signed(me: u64, cap: usize) -> Self {
            Self::with(me, cap, Some(Arc::new(TestAuth::new(SEED, me))))
        }

        fn with(me: u64, cap: usize, auth: Option<Arc<dyn AnnounceAuth>>) -> Self {
            let limits = DiscoveryLimits {
                max_origins_per_link: cap,
                max_entries_per_origin: cap,
                max_entries_per_link: cap * 2,
                max_update_bytes: cap * 64,
            };
            Self {
                plane: Plane::new(NodeId(me), true, true, cap, limits, auth, 1),
                out: Out::default(),
            }
        }

        /// A link to `peer` came up.
        pub fn link_up(&mut self, link: u64, peer: u64) {
            self.plane.link_up(link, NodeId(peer), 0, &mut self.out);
        }

        /// A link went down.
        pub fn link_down(&mut self, link: u64) {
            self.plane.link_down(link, &mut self.out);
        }

        /// A ROUTES frame arrived.
        pub fn routes(&mut self, link: u64, entries: &[RouteEntry]) {
            self.plane.routes(link, entries, &mut self.out);
        }

        /// A SERVICES frame (update or REQUEST) arrived.
        pub fn services(&mut self, link: u64, u: &ServicesUpdate) {
            self.plane.services(link, u, &mut self.out);
        }

        /// Signs `u` as its origin's test identity would, over the state it produces
        /// on top of what this node holds, or spoils it, by `how % 6`: 0 signed,
        /// 1 signed with credentials, 2 a wrong signature, 3 signed by another node
        /// with its credentials, 4 signed for another version, 5 unsigned.
        pub fn sign_as_origin(&self, u: &mut ServicesUpdate, how: u8) {
            let mut state: BTreeSet<Entry> = if u.full {
                BTreeSet::new()
            } else {
                self.plane
                    .discovery
                    .entries_of(NodeId(u.origin))
                    .cloned()
                    .collect()
            };
            for op in &u.ops {
                let e = Entry {
                    env: op.env.clone(),
                    name: op.name.clone(),
                    port: op.port,
                };
                if op.announce {
                    state.insert(e);
                } else if !u.full {
                    state.remove(&e);
                }
            }
            let how = how % 6;
            let signer = TestAuth::new(SEED, if how == 3 { u.origin ^ 1 } else { u.origin });
            let version = if how == 4 { u.version ^ 1 } else { u.version };
            let msg = message(NodeId(u.origin), version, state.iter(), 0);
            let mut signature = signer.sign_bytes(&msg);
            if how == 2 {
                signature = Bytes::from_static(b"forged!!");
            }
            u.signed = (how != 5).then(|| ServicesSig {
                signature,
                credentials: if how == 0 {
                    Bytes::new()
                } else {
                    signer.credentials_bytes()
                },
            });
        }

        /// We bound or unbound a service.
        pub fn local(&mut self, announce: bool, name: &[u8], port: u32) {
            let e = Entry {
                env: bytes::Bytes::new(),
                name: bytes::Bytes::copy_from_slice(name),
                port,
            };
            self.plane.local(announce, e, &mut self.out);
        }

        /// Frames produced since the last call (and forgets them).
        pub fn take_frames(&mut self) -> usize {
            let n = self.out.sends.len();
            self.out = Out::default();
            n
        }

        /// Remote origins and entries held, routes, and updates refused for a cap.
        pub fn figures(&self) -> (usize, usize, usize, u64) {
            (
                self.plane.discovery.origin_count(),
                self.plane.discovery.entry_count(),
                self.plane.routing.len(),
                self.plane.limit_hits(),
            )
        }

        /// Announcements rejected because their origin did not sign them.
        pub fn rejected(&self) -> u64 {
            self.plane.rejected()
        }

        /// Panics if an invariant is broken (in a signed mesh: also if anything held
        /// is not signed by its origin).
        pub fn check(&self) {
            self.plane.check();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fuzzing::ControlPlane;
    use crate::proto::frame::{ServiceOp, ServicesUpdate};
    use bytes::Bytes;

    fn upd(full: bool, base: u64, version: u64, name: &'static str) -> ServicesUpdate {
        ServicesUpdate {
            origin: 7,
            base_version: base,
            version,
            full,
            hops: 0,
            ops: vec![ServiceOp {
                announce: true,
                port: 1,
                env: Bytes::new(),
                name: Bytes::from_static(name.as_bytes()),
            }],
            request: false,
            signed: None,
        }
    }

    /// The fuzz target's signing helper makes what a signed node accepts, and its
    /// spoilt variants what it rejects: the fuzzer reaches both paths.
    #[test]
    fn the_fuzz_signer_reaches_accept_and_reject() {
        let mut cp = ControlPlane::new_signed(1, 8);
        cp.link_up(10, 7);
        for how in 2..6 {
            let mut u = upd(true, 0, 5, "a");
            cp.sign_as_origin(&mut u, how);
            cp.services(10, &u);
        }
        assert_eq!((cp.figures().1, cp.rejected()), (0, 4));
        let mut u = upd(true, 0, 5, "a");
        cp.sign_as_origin(&mut u, 1);
        cp.services(10, &u);
        let mut d = upd(false, 5, 6, "b");
        cp.sign_as_origin(&mut d, 0);
        cp.services(10, &d);
        assert_eq!((cp.figures().1, cp.rejected()), (2, 4));
        cp.check();
    }
}
