//! The control task: the one owner of routing, discovery, watchers, dials that wait
//! for a service, and direct upgrades. It lives on shard 0 and is driven by messages
//! ([`Msg`]) from shards (what their links report) and user threads (binds, dials,
//! watches). It answers with commands: frames for links go to the shard that owns
//! each link, batched per shard; what users read is published as a [`View`].
//!
//! Nothing here blocks or takes a lock; each message costs work proportional to what
//! it carries (see `routing.rs` and `discovery.rs`).

use super::dial::DialWait;
use super::discovery::{Discovery, DiscoveryLimits, Entry, Out, Rejected, Send};
use super::errors::not_found;
use super::plane::Plane;
use super::routing::{Change, Routing};
use super::upgrade::Upgrades;
use super::view::{RouteEvent, RouteInfo, ServiceEvent, ServiceInfo, SvcKey, View};
use super::watch::Watchers;
use super::{Cmd, LinkId, NodeShared, Reply, Role};
use crate::proto::frame::{Frame, RouteEntry, ServicesUpdate};
use crate::types::{Addr, NodeId};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// What the control task is told.
pub(crate) enum Msg {
    /// A link finished its handshake; `reply` answers the `join` waiting for it once
    /// the link is routable.
    LinkUp {
        link: LinkId,
        peer: NodeId,
        shard: u32,
        reply: Option<Reply<NodeId>>,
    },
    LinkDown(LinkId),
    Routes(LinkId, Vec<RouteEntry>, Credit),
    Services(LinkId, ServicesUpdate, Credit),
    /// We bound or unbound a service, or gained a listen address.
    Local {
        announce: bool,
        entry: Entry,
    },
    /// A dial for a service not known yet.
    Dial(DialWait),
    WatchServices(async_channel::Sender<ServiceEvent>),
    WatchRoutes(async_channel::Sender<RouteEvent>),
    /// Withdraw our services everywhere, then reply.
    Shutdown(Reply<()>),
    /// A direct-upgrade dial ended.
    UpgradeDone {
        addr: SocketAddr,
        ok: bool,
    },
    /// The node's credentials changed (a certificate reload): announce our services
    /// anew, signed with the new key and carrying the new credentials.
    CredentialsChanged,
}

/// Messages a link may have waiting at the control task; beyond, the link stops
/// reading its peer until the control task catches up (backpressure on floods).
pub(crate) const CONTROL_INFLIGHT: usize = 64;

/// A link's place in the control task's queue, given back once its message is done.
pub(crate) struct Credit {
    pub(crate) count: Arc<std::sync::atomic::AtomicUsize>,
    pub(crate) shard: u32,
    pub(crate) link: LinkId,
}

impl Credit {
    fn release(self, node: &NodeShared) {
        use std::sync::atomic::Ordering;
        if self.count.fetch_sub(1, Ordering::AcqRel) == CONTROL_INFLIGHT {
            // The link stopped reading at the limit: let it go on.
            node.push(self.shard, Cmd::Wake(self.link));
        }
    }
}

/// Figures for `stats()`.
#[derive(Default, Clone, Copy)]
pub(crate) struct Figures {
    pub(crate) origins: usize,
    pub(crate) service_entries: usize,
    pub(crate) routes: usize,
}

pub(crate) struct Control {
    node: Arc<NodeShared>,
    plane: Plane,
    /// Remote services of our env (published in the view).
    services: imbl::OrdSet<SvcKey>,
    /// Our own services of our env: name → port.
    local: HashMap<String, u32>,
    local_addrs: usize,
    watchers: Watchers,
    waits: HashMap<u64, DialWait>,
    waits_by_name: HashMap<String, Vec<u64>>,
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    next_wait: u64,
    upgrades: Upgrades,
    /// Frames to hand to shards at the end of the batch.
    outbox: HashMap<u32, Vec<(LinkId, Frame)>>,
    dirty: bool,
    hits_seen: u64,
    rejected_seen: u64,
    reject_log: RejectLog,
}

/// Rejected announcements are logged at most [`RejectLog::BURST`] times per
/// [`RejectLog::WINDOW`], then summed up: a router that forges a flood of updates
/// must not flood the log too.
#[derive(Default)]
struct RejectLog {
    window: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl RejectLog {
    const BURST: u32 = 10;
    const WINDOW: Duration = Duration::from_secs(10);

    fn log(&mut self, me: NodeId, r: &Rejected, peer: Option<NodeId>, now: Instant) {
        if self
            .window
            .is_none_or(|t| now.duration_since(t) >= Self::WINDOW)
        {
            if self.suppressed > 0 {
                tracing::warn!(
                    node = %me,
                    count = self.suppressed,
                    "more SERVICES updates rejected (not signed by their origin) in the last {:?}",
                    Self::WINDOW
                );
            }
            *self = RejectLog {
                window: Some(now),
                ..RejectLog::default()
            };
        }
        if self.logged >= Self::BURST {
            self.suppressed += 1;
            return;
        }
        self.logged += 1;
        let peer = peer.map_or_else(|| "?".to_string(), |p| p.to_string());
        tracing::warn!(
            node = %me,
            link = r.link,
            %peer,
            origin = %r.origin,
            reason = %r.why,
            "rejected a SERVICES update that its origin did not sign; the peer relayed \
             a forged or altered announcement"
        );
    }
}

/// The version a node's announcements start from: in a signed mesh, receivers take
/// only versions above the ones they hold, so a restarted node must not start over
/// from 1. Microseconds since the Unix epoch exceed every version a previous run used
/// unless it announced more than a million changes per second of its life, or the
/// clock stepped back across the restart. An unsigned mesh starts from 1, as ever.
fn first_version(signed: bool) -> u64 {
    if !signed {
        return 1;
    }
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX >> 1))
}

impl Control {
    pub(crate) fn new(node: Arc<NodeShared>) -> Self {
        let l = &node.cfg.limits;
        // The node's identity, if it signs its announcements (PROTOCOL.md §11.5).
        // A TLS node signs with its certificate's key (the one current at each call);
        // tests may set a stand-in.
        let auth = node.cfg.announce_auth.clone().or_else(|| {
            node.tls.is_some().then(|| {
                Arc::new(super::tls::CurrentIdentity(Arc::downgrade(&node)))
                    as Arc<dyn super::auth::AnnounceAuth>
            })
        });
        let first = first_version(auth.is_some());
        let plane = Plane::new(
            node.id,
            node.cfg.role != Role::Client,
            node.cfg.role == Role::Router,
            l.max_routes_per_link,
            DiscoveryLimits {
                max_origins_per_link: l.max_origins_per_link,
                max_entries_per_origin: l.max_services_per_origin,
                max_entries_per_link: l.max_service_entries_per_link,
                max_update_bytes: l.max_update_bytes,
            },
            auth,
            first,
        );
        let upgrades = Upgrades::new(
            node.cfg.direct_upgrade,
            l.max_upgrade_dials,
            l.upgrade_retry,
        );
        Self {
            node,
            plane,
            services: imbl::OrdSet::new(),
            local: HashMap::new(),
            local_addrs: 0,
            watchers: Watchers::default(),
            waits: HashMap::new(),
            waits_by_name: HashMap::new(),
            deadlines: BinaryHeap::new(),
            next_wait: 0,
            upgrades,
            outbox: HashMap::new(),
            dirty: false,
            hits_seen: 0,
            rejected_seen: 0,
            reject_log: RejectLog::default(),
        }
    }

    pub(crate) fn figures(&self) -> Figures {
        Figures {
            origins: self.plane.discovery.origin_count(),
            service_entries: self.plane.discovery.entry_count(),
            routes: self.plane.routing.len(),
        }
    }

    /// Handles one message; returns the direct-upgrade dials to start.
    pub(crate) fn handle(&mut self, m: Msg) -> Vec<(NodeId, SocketAddr)> {
        let mut out = Out::default();
        let now = Instant::now();
        match m {
            Msg::LinkUp {
                link,
                peer,
                shard,
                reply,
            } => {
                let changes = self.plane.link_up(link, peer, shard, &mut out);
                if self.node.is_router() {
                    for f in self.plane.routing.advert_for(link, None) {
                        self.send_to(link, f);
                    }
                }
                self.route_changes(&changes, Some(link));
                if let Some(r) = reply {
                    // Routable before `join` returns, so a dial right after it works.
                    self.publish();
                    let _ = r.send(Ok(peer));
                }
            }
            Msg::LinkDown(link) => {
                let changes = self.plane.link_down(link, &mut out);
                self.route_changes(&changes, None);
            }
            Msg::Routes(link, entries, credit) => {
                let changes = self.plane.routes(link, &entries, &mut out);
                self.route_changes(&changes, None);
                credit.release(&self.node);
            }
            Msg::Services(link, u, credit) => {
                self.plane.services(link, &u, &mut out);
                credit.release(&self.node);
            }
            Msg::Local { announce, entry } => self.local_change(announce, entry, &mut out),
            Msg::Dial(w) => self.dial(w),
            Msg::WatchServices(tx) => {
                let mut current: Vec<ServiceEvent> = Vec::new();
                if self.node.cfg.role != Role::Client {
                    current.extend(
                        self.local
                            .iter()
                            .map(|(n, p)| ServiceEvent::Up(self.local_info(n, *p))),
                    );
                }
                let view = self.view();
                current.extend(
                    self.services
                        .iter()
                        .filter_map(|k| view.service_info(k))
                        .map(ServiceEvent::Up),
                );
                self.watchers.add_services(tx, current.into_iter());
            }
            Msg::WatchRoutes(tx) => {
                let current: Vec<RouteEvent> = self
                    .plane
                    .routing
                    .table()
                    .iter()
                    .map(|(n, r)| RouteEvent::Up(RouteInfo::new(*n, r)))
                    .collect();
                self.watchers.add_routes(tx, current.into_iter());
            }
            Msg::Shutdown(reply) => {
                self.plane.discovery.shutdown(&mut out);
                self.sends(out.sends.drain(..));
                self.flush();
                let _ = reply.send(Ok(()));
            }
            Msg::UpgradeDone { addr, ok } => self.upgrades.done(addr, ok, now),
            Msg::CredentialsChanged => self.plane.discovery.credentials_changed(&mut out),
        }
        for r in &out.rejected {
            let peer = self.plane.routing.peer_of(r.link).map(|(p, _)| p);
            self.reject_log.log(self.node.id, r, peer, now);
        }
        self.sends(out.sends.drain(..));
        self.seen(&out);
        let mut dials = Vec::new();
        for origin in out.new_addrs {
            self.upgrades.want(origin);
        }
        let (node, routing, discovery, local_addrs) = (
            &self.node,
            &self.plane.routing,
            &self.plane.discovery,
            self.local_addrs,
        );
        while let Some(d) = self.upgrades.next(now, |origin| {
            upgrade_addrs(node, routing, discovery, local_addrs, origin)
        }) {
            dials.push(d);
        }
        let hits = self.plane.limit_hits();
        self.node
            .hit_limit("routes or services per link", hits - self.hits_seen);
        self.hits_seen = hits;
        let rejected = self.plane.rejected();
        self.node.rejected_announcements.fetch_add(
            rejected - self.rejected_seen,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.rejected_seen = rejected;
        dials
    }

    fn local_info(&self, name: &str, port: u32) -> ServiceInfo {
        ServiceInfo {
            name: name.to_string(),
            addr: Addr {
                node: self.node.id,
                port,
            },
            hops: 0,
        }
    }

    fn local_change(&mut self, announce: bool, entry: Entry, out: &mut Out) {
        if entry.is_addr() {
            if announce {
                self.local_addrs += 1;
            } else {
                self.local_addrs -= 1;
            }
        } else if entry.env == self.node.cfg.env.as_bytes() {
            let name = String::from_utf8_lossy(&entry.name).into_owned();
            let info = self.local_info(&name, entry.port);
            if announce {
                self.local.insert(name.clone(), entry.port);
            } else {
                if self.local.get(&name) == Some(&entry.port) {
                    self.local.remove(&name);
                }
            }
            if self.node.cfg.role != Role::Client {
                self.watchers.service(if announce {
                    ServiceEvent::Up(info)
                } else {
                    ServiceEvent::Down(info)
                });
            }
            if announce {
                self.wake_waits(&name);
            }
        }
        self.plane.local(announce, entry, out);
    }

    /// Route changes (discovery already followed them): triggered updates to every
    /// neighbour but `skip` (which got the whole table), watchers.
    fn route_changes(&mut self, changes: &[Change], skip: Option<LinkId>) {
        if changes.is_empty() {
            return;
        }
        self.dirty = true;
        if self.node.is_router() {
            let nodes: Vec<NodeId> = changes.iter().map(|(n, _)| *n).collect();
            let links: Vec<LinkId> = self
                .plane
                .routing
                .links()
                .map(|(l, _)| l)
                .filter(|l| Some(*l) != skip)
                .collect();
            for link in links {
                for f in self.plane.routing.advert_for(link, Some(&nodes)) {
                    self.send_to(link, f);
                }
            }
        }
        for (node, route) in changes {
            if self.watchers.wants_routes() {
                self.watchers.route(match route {
                    Some(r) => RouteEvent::Up(RouteInfo::new(*node, r)),
                    None => RouteEvent::Down(*node),
                });
            }
        }
    }

    /// Entries that appeared or went: the services of our env enter or leave the view.
    fn seen(&mut self, out: &Out) {
        for s in &out.seen {
            if s.entry.is_addr() || s.entry.env != self.node.cfg.env.as_bytes() {
                continue;
            }
            self.dirty = true;
            let name: Arc<str> = Arc::from(String::from_utf8_lossy(&s.entry.name).as_ref());
            let key = (name.clone(), s.origin, s.entry.port);
            let info = |route: Option<super::routing::Route>| ServiceInfo {
                name: name.to_string(),
                addr: Addr {
                    node: s.origin,
                    port: s.entry.port,
                },
                hops: route.map_or(0, |r| u32::from(r.hops)),
            };
            if s.up {
                self.services.insert(key);
                self.watchers
                    .service(ServiceEvent::Up(info(self.plane.routing.get(s.origin))));
                self.wake_waits(&name);
            } else {
                self.services.remove(&key);
                self.watchers
                    .service(ServiceEvent::Down(info(self.plane.routing.get(s.origin))));
            }
        }
    }

    fn view(&self) -> View {
        View {
            routes: self.plane.routing.table(),
            services: self.services.clone(),
        }
    }

    /// Publishes the view if it changed (O(1): persistent maps).
    pub(crate) fn publish(&mut self) {
        if self.dirty {
            self.dirty = false;
            self.node.view.store(self.view());
        }
    }

    // ------------------------------------------------------------ waiting dials

    fn try_dial(&self, w: &DialWait) -> Option<super::dial::DialReq> {
        let local = self.local.get(&w.name).copied();
        let view = self.view();
        self.node
            .service_req(&view, local, &w.name, w.port, w.key.as_deref(), w.src_port)
    }

    fn dial(&mut self, w: DialWait) {
        if let Some(w) = self.dispatch(w) {
            let id = self.next_wait;
            self.next_wait += 1;
            self.deadlines.push(Reverse((w.deadline, id)));
            self.park(id, w);
        }
    }

    /// Sends the dial to its link's shard if its service is known; else gives it back.
    fn dispatch(&self, w: DialWait) -> Option<DialWait> {
        if w.reply.is_canceled() {
            return None;
        }
        match self.try_dial(&w) {
            Some(req) => {
                self.node.push(
                    req.shard,
                    Cmd::Dial {
                        req,
                        reply: w.reply,
                    },
                );
                None
            }
            None => Some(w),
        }
    }

    fn park(&mut self, id: u64, w: DialWait) {
        self.waits_by_name
            .entry(w.name.clone())
            .or_default()
            .push(id);
        self.waits.insert(id, w);
    }

    fn wake_waits(&mut self, name: &str) {
        let Some(ids) = self.waits_by_name.remove(name) else {
            return;
        };
        for id in ids {
            if let Some(w) = self.waits.remove(&id) {
                // Dispatched now, or back in the queue under the same id and deadline
                // (another port of the name was announced).
                if let Some(w) = self.dispatch(w) {
                    self.park(id, w);
                }
            }
        }
    }

    /// When [`Control::handle_timeout`] must run next.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((t, _))| *t)
    }

    /// Dials whose deadline passed fail with `NotFound`.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((t, id))) = self.deadlines.peek().copied() {
            if t > now {
                break;
            }
            self.deadlines.pop();
            if let Some(w) = self.waits.remove(&id) {
                if let Some(ids) = self.waits_by_name.get_mut(&w.name) {
                    ids.retain(|i| *i != id);
                    if ids.is_empty() {
                        self.waits_by_name.remove(&w.name);
                    }
                }
                let _ = w.reply.send(Err(not_found(&w.name)));
            }
        }
    }

    // ------------------------------------------------------------ output

    fn send_to(&mut self, link: LinkId, f: Frame) {
        if let Some((_, shard)) = self.plane.routing.peer_of(link) {
            self.outbox.entry(shard).or_default().push((link, f));
        }
    }

    fn sends(&mut self, sends: impl Iterator<Item = Send>) {
        for s in sends {
            match s {
                Send::To(link, f) => self.send_to(link, f),
                Send::All { frame, except } => {
                    let links: Vec<(LinkId, u32)> = self
                        .plane
                        .routing
                        .links()
                        .filter(|(l, _)| Some(*l) != except)
                        .collect();
                    for (link, shard) in links {
                        self.outbox
                            .entry(shard)
                            .or_default()
                            .push((link, frame.clone()));
                    }
                }
            }
        }
    }

    /// Hands the batch's frames to the shards, one command per shard.
    pub(crate) fn flush(&mut self) {
        for (shard, frames) in self.outbox.drain() {
            self.node.push(shard, Cmd::SendTo(frames));
        }
    }
}

/// Where `origin` may be joined directly, if we should (PROTOCOL.md §10.5): only
/// towards origins we route to through relays; the lower id dials unless only one
/// side listens.
fn upgrade_addrs(
    node: &NodeShared,
    routing: &Routing,
    discovery: &Discovery,
    local_addrs: usize,
    origin: NodeId,
) -> Vec<SocketAddr> {
    if node.stopped.load(std::sync::atomic::Ordering::Relaxed) {
        return Vec::new();
    }
    match routing.get(origin) {
        Some(r) if r.hops > 1 => {}
        _ => return Vec::new(),
    }
    if local_addrs > 0 && node.id > origin {
        return Vec::new();
    }
    discovery
        .entries_of(origin)
        .filter(|e| e.is_addr())
        .filter_map(|e| {
            std::str::from_utf8(&e.name)
                .ok()?
                .strip_prefix("tcp:")?
                .parse()
                .ok()
        })
        .collect()
}
