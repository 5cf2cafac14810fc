//! Resolving a dial target to a link and an OPEN header (README "Address grammar").
//!
//! User threads resolve against the published [`View`] and their own binds; a
//! service nobody announced yet becomes a [`DialWait`] held by the control task until
//! it appears or the deadline passes (no thread, no polling).

use super::routing::INFINITY;
use super::view::View;
use super::{open_header, LinkId, NodeShared, Reply, StreamRef};
use crate::proto::frame::OpenHeader;
use crate::types::{Addr, Target};
use std::io;
use std::time::Instant;

/// A stream to open on a link.
pub(crate) struct DialReq {
    pub(crate) shard: u32,
    pub(crate) link: LinkId,
    pub(crate) header: OpenHeader,
    pub(crate) local: Addr,
    pub(crate) peer: Addr,
}

/// A dial for a service not known yet.
pub(crate) struct DialWait {
    pub(crate) name: String,
    pub(crate) port: Option<u32>,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) src_port: u32,
    pub(crate) deadline: Instant,
    pub(crate) reply: Reply<StreamRef>,
}

impl NodeShared {
    fn req(&self, via: (u32, LinkId), src_port: u32, dst: Addr, service: Option<&str>) -> DialReq {
        let local = Addr {
            node: self.id,
            port: src_port,
        };
        DialReq {
            shard: via.0,
            link: via.1,
            header: open_header(local, dst, INFINITY, &self.cfg.env, service),
            local,
            peer: dst,
        }
    }

    /// A dial of the service `name` (on `port`, if given): this node's own instance
    /// first (`local`: the port it is bound to here), then the nearest instances in
    /// `view`, at random among equals or by rendezvous hashing when the caller gave a
    /// key. `None`: no instance is known.
    pub(crate) fn service_req(
        &self,
        view: &View,
        local: Option<u32>,
        name: &str,
        port: Option<u32>,
        key: Option<&[u8]>,
        src_port: u32,
    ) -> Option<DialReq> {
        if let Some(p) = local.filter(|p| port.is_none_or(|w| w == *p)) {
            let dst = Addr {
                node: self.id,
                port: p,
            };
            return Some(self.req(self.loopback, src_port, dst, Some(name)));
        }
        let mut instances = view.instances(name, port);
        let min = instances.iter().map(|(_, r)| r.hops).min()?;
        instances.retain(|(_, r)| r.hops == min);
        let i = match key {
            Some(k) => rendezvous(k, instances.iter().map(|(a, _)| *a)),
            None => rand::random_range(0..instances.len()),
        };
        let (addr, r) = instances[i];
        Some(self.req((r.shard, r.link), src_port, addr, Some(name)))
    }

    /// Resolves a target for a user thread. `Ok(None)`: a service not known (yet).
    pub(crate) fn resolve(
        &self,
        view: &View,
        t: &Target,
        src_port: u32,
        key: Option<&[u8]>,
    ) -> io::Result<Option<DialReq>> {
        match t {
            Target::LocalPort(p) => Ok(Some(self.req(
                self.loopback,
                src_port,
                Addr {
                    node: self.id,
                    port: *p,
                },
                None,
            ))),
            Target::Node(a) if a.node == self.id => {
                Ok(Some(self.req(self.loopback, src_port, *a, None)))
            }
            Target::Node(a) => match view.routes.get(&a.node) {
                Some(r) => Ok(Some(self.req((r.shard, r.link), src_port, *a, None))),
                None => Err(io::Error::new(
                    io::ErrorKind::HostUnreachable,
                    format!("no route to node {}", a.node),
                )),
            },
            Target::Service { name, port } => {
                let local = self
                    .registry
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .by_name
                    .get(name)
                    .copied();
                Ok(self.service_req(view, local, name, *port, key, src_port))
            }
        }
    }
}

/// Rendezvous (highest random weight) hashing: the index of the address that `key`
/// maps to. Stable while the set is unchanged; a removed instance moves only its keys.
fn rendezvous(key: &[u8], addrs: impl Iterator<Item = Addr>) -> usize {
    use std::hash::{Hash, Hasher};
    let mut best = (0u64, 0usize);
    for (i, a) in addrs.enumerate() {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        a.node.0.hash(&mut h);
        a.port.hash(&mut h);
        let w = h.finish();
        if i == 0 || w > best.0 {
            best = (w, i);
        }
    }
    best.1
}
