//! Node ids, virtual addresses and the address grammar shared by the engine and the API.

use std::fmt;
use std::io;
use std::str::FromStr;

/// A node's identity: a random 64-bit number, written as 16 lowercase hex digits.
///
/// ```
/// use astranet_engine::NodeId;
/// let id: NodeId = "00000000000004d2".parse().unwrap();
/// assert_eq!(id, NodeId(1234));
/// assert_eq!(id.to_string(), "00000000000004d2");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

impl NodeId {
    /// A fresh random non-zero id.
    pub fn random() -> Self {
        loop {
            let v: u64 = rand::random();
            if v != 0 {
                return NodeId(v);
            }
        }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({:016x})", self.0)
    }
}

/// Error parsing a [`NodeId`] or [`Addr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {input:?} ({why})")]
pub struct ParseError {
    what: &'static str,
    input: String,
    why: &'static str,
}

impl From<ParseError> for io::Error {
    fn from(e: ParseError) -> Self {
        io::Error::new(io::ErrorKind::InvalidInput, e)
    }
}

fn is_node_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl FromStr for NodeId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        if !is_node_id(s) {
            return Err(ParseError {
                what: "node id",
                input: s.into(),
                why: "expected 16 hex digits",
            });
        }
        u64::from_str_radix(s, 16)
            .map(NodeId)
            .map_err(|_| ParseError {
                what: "node id",
                input: s.into(),
                why: "expected 16 hex digits",
            })
    }
}

/// A virtual address: a node and a port on it.
///
/// ```
/// use astranet_engine::{Addr, NodeId};
/// let a = Addr { node: NodeId(1), port: 80 };
/// assert_eq!(a.to_string(), "0000000000000001:80");
/// assert_eq!(a.to_string().parse::<Addr>().unwrap(), a);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Addr {
    /// The node.
    pub node: NodeId,
    /// The port.
    pub port: u32,
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.node, self.port)
    }
}

impl FromStr for Addr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let err = |why| ParseError {
            what: "address",
            input: s.into(),
            why,
        };
        let (n, p) = s.rsplit_once(':').ok_or(err("expected <node id>:<port>"))?;
        Ok(Addr {
            node: n.parse().map_err(|_| err("bad node id"))?,
            port: p.parse().map_err(|_| err("bad port"))?,
        })
    }
}

/// Whether `name` is a valid service name or env: 1–255 bytes of `[A-Za-z0-9._-]`,
/// beginning with a letter, and not 16 hex digits (so never mistaken for a node id).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.as_bytes()[0].is_ascii_alphabetic()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        && !is_node_id(name)
}

/// What a dial names (README "Address grammar").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `<node id>:<port>`.
    Node(Addr),
    /// `:<port>`: a port on this node.
    LocalPort(u32),
    /// `<name>` or `<name>:<port>`.
    Service {
        /// Service name.
        name: String,
        /// Port, when given.
        port: Option<u32>,
    },
}

fn parse_port(p: &str, input: &str) -> Result<u32, ParseError> {
    match p.parse::<u32>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(ParseError {
            what: "port",
            input: input.into(),
            why: "expected a number from 1 to 4294967295",
        }),
    }
}

impl Target {
    /// Parses a dial address.
    ///
    /// ```
    /// use astranet_engine::{Target, Addr, NodeId};
    /// assert_eq!(Target::parse("echo").unwrap(), Target::Service { name: "echo".into(), port: None });
    /// assert_eq!(Target::parse("echo:80").unwrap(), Target::Service { name: "echo".into(), port: Some(80) });
    /// assert_eq!(Target::parse(":80").unwrap(), Target::LocalPort(80));
    /// assert_eq!(Target::parse("00000000000000ff:80").unwrap(),
    ///            Target::Node(Addr { node: NodeId(255), port: 80 }));
    /// assert!(Target::parse("00000000000000ff").is_err()); // a node id needs a port
    /// ```
    pub fn parse(s: &str) -> Result<Target, ParseError> {
        let err = |why| ParseError {
            what: "address",
            input: s.into(),
            why,
        };
        let (head, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(parse_port(p, s)?)),
            None => (s, None),
        };
        if head.is_empty() {
            return port.map(Target::LocalPort).ok_or(err("empty address"));
        }
        if is_node_id(head) {
            let node = head.parse().map_err(|_| err("bad node id"))?;
            let port = port.ok_or(err("a node id needs a port: <node id>:<port>"))?;
            return Ok(Target::Node(Addr { node, port }));
        }
        if !valid_name(head) {
            return Err(err(
                "service names are 1-255 of [A-Za-z0-9._-] starting with a letter",
            ));
        }
        Ok(Target::Service {
            name: head.to_string(),
            port,
        })
    }
}

/// A parsed bind address: `":80"`, `"echo"` or `"echo:80"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindSpec {
    /// Service name, if any.
    pub name: Option<String>,
    /// Port, if any (else one is allocated).
    pub port: Option<u32>,
}

impl BindSpec {
    /// Parses a bind address.
    ///
    /// ```
    /// use astranet_engine::BindSpec;
    /// assert_eq!(BindSpec::parse(":80").unwrap(), BindSpec { name: None, port: Some(80) });
    /// assert_eq!(BindSpec::parse("echo:80").unwrap().name.as_deref(), Some("echo"));
    /// assert!(BindSpec::parse("0000000000000001:80").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<BindSpec, ParseError> {
        match Target::parse(s)? {
            Target::LocalPort(p) => Ok(BindSpec {
                name: None,
                port: Some(p),
            }),
            Target::Service { name, port } => Ok(BindSpec {
                name: Some(name),
                port,
            }),
            Target::Node(_) => Err(ParseError {
                what: "bind address",
                input: s.into(),
                why: "bind takes \":<port>\", \"<name>\" or \"<name>:<port>\", not a node id",
            }),
        }
    }
}
