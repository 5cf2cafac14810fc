//! A node's settings: its role, its limits, and what it advertises on links.

use super::auth::AnnounceAuth;
use crate::proto::{frame, LinkConfig};
use crate::types::NodeId;
use std::sync::Arc;
use std::time::Duration;

/// What a node does for its mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Dials only: announces nothing and relays for nobody.
    Client,
    /// Announces its services; does not relay.
    Server,
    /// Announces and relays streams for other nodes (the default, as in the original
    /// astranet: out of the box any node relays for its mesh).
    #[default]
    Router,
}

/// Limits that protect a node from its peers (PROTOCOL.md §13). Everything a peer can
/// make a node hold is bounded by one of these; the reaction to each is documented
/// there. The defaults suit a production service; tests lower them.
///
/// ```
/// use std::time::Duration;
/// let limits = astranet_engine::Limits {
///     handshake_timeout: Duration::from_secs(2),
///     max_links: 512,
///     ..astranet_engine::Limits::default()
/// };
/// assert_eq!(limits.max_handshaking, 256);
/// ```
#[derive(Debug, Clone)]
pub struct Limits {
    /// The peer's preamble and HELLO must arrive within this time of accepting (or
    /// connecting) the TCP connection, however the bytes trickle in. Default 5 s.
    pub handshake_timeout: Duration,
    /// Accepted connections still in their handshake; beyond, new ones are closed at
    /// once. Default 256.
    pub max_handshaking: usize,
    /// Links to other nodes; beyond, accepted connections are closed at once.
    /// Default 4,096.
    pub max_links: usize,
    /// Routes one neighbour may advertise; further entries are ignored.
    /// Default 16,384.
    pub max_routes_per_link: usize,
    /// Origins whose services arrive over one link; updates for more are ignored.
    /// Default 16,384.
    pub max_origins_per_link: usize,
    /// Entries (services and address records) one origin may announce; an update
    /// with more is ignored. Default 4,096.
    pub max_services_per_origin: usize,
    /// Entries all origins behind one link may hold together. Default 65,536.
    pub max_service_entries_per_link: usize,
    /// Bytes of ops in one SERVICES update; a larger update is ignored. This node's
    /// own announcement must fit too (`bind` fails beyond). Default 60 KiB.
    pub max_update_bytes: usize,
    /// Bytes queued to send on one stream, whatever window the peer advertises.
    /// Default 4 MiB.
    pub max_stream_send_buffer: u32,
    /// Bytes queued to send on one link. Default 32 MiB.
    pub max_link_send_buffer: u64,
    /// Streams a peer may reset before we accepted them, or that we refuse, per
    /// `reset_window`; beyond, GOAWAY EXCESSIVE_RESETS. Default 1,000.
    pub max_reset_streams: u32,
    /// The window of `max_reset_streams`. Default 10 s.
    pub reset_window: Duration,
    /// Bytes of control frames (routes, services, PING answers) waiting to be sent on
    /// one link; beyond, the peer does not take what it asks for: GOAWAY
    /// LIMIT_EXCEEDED. Default 8 MiB.
    pub max_control_backlog: usize,
    /// Relayed streams in flight per inbound link; beyond, RESET LIMIT_EXCEEDED.
    /// Default 16,384.
    pub max_relayed_streams_per_link: usize,
    /// Relayed OPENs per second per inbound link (a token bucket with a burst of one
    /// second's worth); beyond, RESET LIMIT_EXCEEDED. Default 20,000.
    pub max_relayed_opens_per_sec: u32,
    /// Direct-upgrade dials in flight per node. Default 4.
    pub max_upgrade_dials: usize,
    /// Time before a direct-upgrade address is dialed again; doubles per failure up
    /// to 16 times this. Default 30 s.
    pub upgrade_retry: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(5),
            max_handshaking: 256,
            max_links: 4096,
            max_routes_per_link: 16_384,
            max_origins_per_link: 16_384,
            max_services_per_origin: 4096,
            max_service_entries_per_link: 65_536,
            max_update_bytes: 60 * 1024,
            max_stream_send_buffer: 4 << 20,
            max_link_send_buffer: 32 << 20,
            max_reset_streams: 1000,
            reset_window: Duration::from_secs(10),
            max_control_backlog: 8 << 20,
            max_relayed_streams_per_link: 16_384,
            max_relayed_opens_per_sec: 20_000,
            max_upgrade_dials: 4,
            upgrade_retry: Duration::from_secs(30),
        }
    }
}

/// Settings of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// What the node does for its mesh.
    pub role: Role,
    /// Node id (random by default).
    pub id: NodeId,
    /// Number of shards (executor threads).
    pub shards: usize,
    /// Pin shard i to core i (mod the number of cores).
    pub pin_cores: bool,
    /// Env namespace ("" = none).
    pub env: String,
    /// Limits advertised on every link (node id and keep-alive are filled in).
    pub link: LinkConfig,
    /// Limits against peers.
    pub limits: Limits,
    /// Most accepted streams waiting in one listener's queue; beyond, opens are refused.
    pub backlog: usize,
    /// How long `join` keeps trying to connect before it gives up.
    pub join_timeout: Duration,
    /// Advertise this node's listen addresses, and join nodes reached only through
    /// relays directly when they advertise theirs (PROTOCOL.md §10.5).
    pub direct_upgrade: bool,
    /// Signs this node's announcements and verifies other origins' (PROTOCOL.md
    /// §11.5); `None`: an unsigned mesh. Set from the node's TLS identity.
    pub(crate) announce_auth: Option<Arc<dyn AnnounceAuth>>,
    /// TLS 1.3 on every link, mutually authenticated (None: plaintext). The node's id
    /// is then the one its certificate names.
    pub tls: Option<super::TlsConfig>,
    /// Plaintext links to other hosts were chosen explicitly. Without TLS and without
    /// this, `listen` and `join` accept only loopback addresses (demos, tests).
    pub plaintext: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            role: Role::Router,
            id: NodeId::random(),
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pin_cores: false,
            env: String::new(),
            link: LinkConfig::default(),
            limits: Limits::default(),
            backlog: 1 << 20,
            join_timeout: Duration::from_secs(10),
            direct_upgrade: true,
            announce_auth: None,
            tls: None,
            plaintext: false,
        }
    }
}

impl NodeConfig {
    /// The link settings this node advertises and enforces.
    pub(crate) fn link_config(&self, self_link_parity: Option<u64>) -> LinkConfig {
        let l = &self.limits;
        LinkConfig {
            node_id: self.id.0,
            self_link_parity,
            roles: match self.role {
                Role::Client => 0,
                Role::Server => frame::ROLE_SERVER,
                Role::Router => frame::ROLE_SERVER | frame::ROLE_ROUTER,
            },
            handshake_timeout: l.handshake_timeout,
            max_stream_send_buffer: l.max_stream_send_buffer,
            max_link_send_buffer: l.max_link_send_buffer,
            max_reset_streams: l.max_reset_streams,
            reset_window: l.reset_window,
            max_control_backlog: l.max_control_backlog,
            ..self.link.clone()
        }
    }
}
