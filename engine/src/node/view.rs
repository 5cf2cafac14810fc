//! What the control task publishes for everyone else: routes and the services of our
//! env, as one immutable snapshot swapped on change. Readers (user threads, shards
//! resolving a relay) never wait on a writer, and a snapshot costs O(1) to publish:
//! its maps are persistent (`imbl`), shared with the control task's own copy.

use super::routing::Route;
use crate::types::{Addr, NodeId};
use arc_swap::ArcSwap;
use std::sync::Arc;

/// A remote service instance of our env: (name, node, port).
pub(crate) type SvcKey = (Arc<str>, NodeId, u32);

/// One published snapshot.
#[derive(Clone, Default)]
pub(crate) struct View {
    pub(crate) routes: imbl::HashMap<NodeId, Route>,
    /// Remote instances of our env whose origin we can reach.
    pub(crate) services: imbl::OrdSet<SvcKey>,
}

impl View {
    /// Instances of `name` (and `port`, if given), with their routes.
    pub(crate) fn instances(&self, name: &str, port: Option<u32>) -> Vec<(Addr, Route)> {
        let name: Arc<str> = Arc::from(name);
        let lo = (name.clone(), NodeId(0), 0);
        let hi = (name, NodeId(u64::MAX), u32::MAX);
        self.services
            .range(lo..=hi)
            .filter(|(_, _, p)| port.is_none_or(|w| w == *p))
            .filter_map(|(_, node, p)| {
                let r = self.routes.get(node)?;
                Some((
                    Addr {
                        node: *node,
                        port: *p,
                    },
                    *r,
                ))
            })
            .collect()
    }

    pub(crate) fn service_info(&self, k: &SvcKey) -> Option<ServiceInfo> {
        let r = self.routes.get(&k.1)?;
        Some(ServiceInfo {
            name: k.0.to_string(),
            addr: Addr {
                node: k.1,
                port: k.2,
            },
            hops: u32::from(r.hops),
        })
    }
}

/// The current snapshot, swapped atomically.
pub(crate) struct Published(ArcSwap<View>);

impl Published {
    pub(crate) fn new() -> Self {
        Self(ArcSwap::from_pointee(View::default()))
    }

    pub(crate) fn load(&self) -> Arc<View> {
        self.0.load_full()
    }

    pub(crate) fn store(&self, v: View) {
        self.0.store(Arc::new(v));
    }
}

/// A service instance, as listed by `services()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Service name (without env).
    pub name: String,
    /// Where it is bound.
    pub addr: Addr,
    /// Links between us and it (0 = this node).
    pub hops: u32,
}

/// A reachable node, as listed by `routes()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    /// The node.
    pub node: NodeId,
    /// The neighbour traffic to it goes through.
    pub next_hop: NodeId,
    /// Links to cross.
    pub hops: u32,
}

impl RouteInfo {
    pub(crate) fn new(node: NodeId, r: &Route) -> Self {
        RouteInfo {
            node,
            next_hop: r.via,
            hops: u32::from(r.hops),
        }
    }
}

/// A change in the services a node can dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceEvent {
    /// A service instance became dialable.
    Up(ServiceInfo),
    /// A service instance went away (unbound, node gone, or unreachable).
    Down(ServiceInfo),
}

/// A change in the nodes a node can reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteEvent {
    /// A node became reachable, or its route changed.
    Up(RouteInfo),
    /// A node is no longer reachable.
    Down(NodeId),
}
