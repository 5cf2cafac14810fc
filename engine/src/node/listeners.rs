//! Bound ports and service names.
//!
//! Two copies, no shared lock: the [`Registry`] is the user threads' (it decides
//! `AddrInUse` and what `services()` lists as ours); each shard keeps a [`Table`] of
//! the listeners' queues, updated by `Listen`/`Unlisten` commands, to route incoming
//! OPENs without asking anyone.

use super::handle::Incoming;
use crate::proto::frame::OpenHeader;
use crate::proto::ErrorCode;
use crate::types::{Addr, BindSpec, NodeId};
use std::collections::HashMap;
use std::io;

/// A listener's queue, as each shard holds it.
#[derive(Clone)]
pub(crate) struct ListenerEntry {
    pub(crate) port: u32,
    pub(crate) name: Option<String>,
    pub(crate) tx: async_channel::Sender<Incoming>,
}

/// This node's binds, as user threads see them.
#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) by_port: HashMap<u32, Option<String>>,
    pub(crate) by_name: HashMap<String, u32>,
    /// Our listen addresses, announced as address records.
    pub(crate) addrs: Vec<String>,
    /// Bytes our announcement takes on the wire (must fit one SERVICES frame).
    pub(crate) announce_bytes: usize,
}

impl Registry {
    /// Reserves the port and name of `spec` (an ephemeral port from `ephemeral` if it
    /// names none). `entry_bytes` is what announcing the name adds to our
    /// announcement, which must stay within `max_bytes`.
    pub(crate) fn reserve(
        &mut self,
        spec: &BindSpec,
        mut ephemeral: impl FnMut() -> u32,
        entry_bytes: usize,
        max_bytes: usize,
    ) -> io::Result<u32> {
        if let Some(n) = &spec.name {
            if self.by_name.contains_key(n) {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("service {n:?} is already bound on this node"),
                ));
            }
            if self.announce_bytes + entry_bytes > max_bytes {
                return Err(io::Error::new(
                    io::ErrorKind::QuotaExceeded,
                    format!(
                        "cannot announce service {n:?}: this node's announcement would exceed \
                         {max_bytes} bytes (Limits::max_update_bytes)"
                    ),
                ));
            }
        }
        let port = match spec.port {
            Some(p) if self.by_port.contains_key(&p) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("port {p} is already bound on this node"),
                ))
            }
            Some(p) => p,
            None => loop {
                let p = ephemeral();
                if !self.by_port.contains_key(&p) {
                    break p;
                }
            },
        };
        self.by_port.insert(port, spec.name.clone());
        if let Some(n) = &spec.name {
            self.by_name.insert(n.clone(), port);
            self.announce_bytes += entry_bytes;
        }
        Ok(port)
    }

    /// Frees a port; returns the name it had.
    pub(crate) fn release(
        &mut self,
        port: u32,
        entry_bytes: impl Fn(&str) -> usize,
    ) -> Option<String> {
        let name = self.by_port.remove(&port)??;
        self.by_name.remove(&name);
        self.announce_bytes -= entry_bytes(&name);
        Some(name)
    }
}

/// A shard's copy of the listeners.
#[derive(Default)]
pub(crate) struct Table {
    by_port: HashMap<u32, ListenerEntry>,
    by_name: HashMap<String, u32>,
}

impl Table {
    pub(crate) fn add(&mut self, e: ListenerEntry) {
        if let Some(n) = &e.name {
            self.by_name.insert(n.clone(), e.port);
        }
        self.by_port.insert(e.port, e);
    }

    pub(crate) fn remove(&mut self, port: u32) {
        if let Some(n) = self.by_port.remove(&port).and_then(|e| e.name) {
            // Only if the name still points here (it may have been bound again).
            if self.by_name.get(&n) == Some(&port) {
                self.by_name.remove(&n);
            }
        }
    }

    /// Where an incoming OPEN for this node goes: the listener's queue and our
    /// address, or the code to refuse it with.
    pub(crate) fn route(
        &self,
        h: &OpenHeader,
        me: NodeId,
        env: &str,
        backlog: usize,
    ) -> Result<(async_channel::Sender<Incoming>, Addr), ErrorCode> {
        let by_name = !h.service.is_empty();
        if by_name && h.env != env.as_bytes() {
            return Err(ErrorCode::NOT_FOUND);
        }
        let name = std::str::from_utf8(&h.service).unwrap_or("");
        let port = if h.dst_port != 0 {
            h.dst_port
        } else {
            *self.by_name.get(name).ok_or(ErrorCode::NOT_FOUND)?
        };
        let Some(e) = self.by_port.get(&port) else {
            return Err(if by_name {
                ErrorCode::NOT_FOUND
            } else {
                ErrorCode::REFUSED
            });
        };
        if by_name && e.name.as_deref() != Some(name) {
            return Err(ErrorCode::NOT_FOUND);
        }
        if e.tx.len() >= backlog {
            return Err(ErrorCode::REFUSED);
        }
        Ok((e.tx.clone(), Addr { node: me, port }))
    }
}
