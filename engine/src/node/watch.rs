//! Watchers of services and routes: bounded channels fed by the control task.

use super::view::{RouteEvent, ServiceEvent};

/// Events a watcher may fall behind by; a watcher further behind is closed (its
/// iterator or stream ends), so an unread watch cannot grow the node's memory.
pub(crate) const WATCH_BACKLOG: usize = 65_536;

#[derive(Default)]
pub(crate) struct Watchers {
    services: Vec<async_channel::Sender<ServiceEvent>>,
    routes: Vec<async_channel::Sender<RouteEvent>>,
}

/// Sends `ev` to every watcher, dropping those that are gone or too far behind.
fn send_all<E: Clone>(list: &mut Vec<async_channel::Sender<E>>, ev: E) {
    list.retain(|tx| match tx.try_send(ev.clone()) {
        Ok(()) => true,
        Err(async_channel::TrySendError::Full(_)) => {
            tracing::warn!("a watcher fell {WATCH_BACKLOG} events behind; closing it");
            false
        }
        Err(async_channel::TrySendError::Closed(_)) => false,
    });
}

impl Watchers {
    pub(crate) fn wants_routes(&self) -> bool {
        !self.routes.is_empty()
    }

    pub(crate) fn service(&mut self, ev: ServiceEvent) {
        send_all(&mut self.services, ev);
    }

    pub(crate) fn route(&mut self, ev: RouteEvent) {
        send_all(&mut self.routes, ev);
    }

    /// Adds a services watcher that first hears `current`.
    pub(crate) fn add_services(
        &mut self,
        tx: async_channel::Sender<ServiceEvent>,
        current: impl Iterator<Item = ServiceEvent>,
    ) {
        add(&mut self.services, tx, current);
    }

    /// Adds a routes watcher that first hears `current`.
    pub(crate) fn add_routes(
        &mut self,
        tx: async_channel::Sender<RouteEvent>,
        current: impl Iterator<Item = RouteEvent>,
    ) {
        add(&mut self.routes, tx, current);
    }
}

/// Adds `tx` to `list` once it heard `current` (unless it fell behind already).
fn add<E: Clone>(
    list: &mut Vec<async_channel::Sender<E>>,
    tx: async_channel::Sender<E>,
    current: impl Iterator<Item = E>,
) {
    let mut one = vec![tx];
    for ev in current {
        send_all(&mut one, ev);
    }
    list.extend(one);
}
