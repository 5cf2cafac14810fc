//! Relayed streams spliced on the shard (issue 9, "relays splice on the shard").
//!
//! When both links of a relayed stream live on this shard, its bytes move from one
//! link's core to the other's inside the shard's event handling: no handle, no
//! channel, no task. A direction is driven by its two streams' events: `Readable` on
//! the source moves what arrived, `Writable` on the destination moves what waited for
//! credit.
//!
//! Backpressure holds end to end: the relay takes bytes from the source only after the
//! previous piece went to the destination, so the source's window reopens only as
//! fast as the destination's credit allows. A direction holds at most one piece
//! ([`PIECE`]) beyond the two streams' windows. Work per event is proportional to the
//! bytes it moves, which the peers' windows bound.
//!
//! A reset crosses with its code unchanged; a FIN crosses after the data before it;
//! when either link dies the other side is reset with `LINK_LOST`.

use super::State;
use crate::node::relay::RelayGuard;
use crate::node::StreamKey;
use crate::proto::{ErrorCode, Recv, StreamError};
use bytes::Bytes;
use std::collections::VecDeque;
use std::rc::Rc;

/// Largest piece moved at once.
const PIECE: usize = 64 * 1024;

/// One direction of a spliced stream, keyed by its source stream.
pub(crate) struct Splice {
    to: StreamKey,
    /// Bytes taken from the source that the destination had no credit for yet.
    held: VecDeque<Bytes>,
    /// The source finished (its FIN went on to the destination).
    done: bool,
    /// The inbound link's allowance, given back when both directions are gone.
    _guard: Rc<RelayGuard>,
}

/// The code a relayed stream's failure carries to its other side.
fn code_of(e: &StreamError) -> ErrorCode {
    match e {
        StreamError::Reset(c) => *c,
        StreamError::LinkLost(_) | StreamError::NotReady | StreamError::GoingAway => {
            ErrorCode::LINK_LOST
        }
        _ => ErrorCode::CANCELLED,
    }
}

impl super::Shard {
    /// Splices `a` and `b` (both on this shard's links) and moves what is already
    /// queued on either.
    pub(crate) fn splice(
        &self,
        st: &mut State,
        a: StreamKey,
        b: StreamKey,
        guard: RelayGuard,
    ) -> u64 {
        let guard = Rc::new(guard);
        for (from, to) in [(a, b), (b, a)] {
            // Bytes a mailbox took for the stream before the splice go first.
            let held = self.take_direct(st, from);
            st.splices.insert(
                from,
                Splice {
                    to,
                    held,
                    done: false,
                    _guard: guard.clone(),
                },
            );
        }
        st.splice_pump(a) + st.splice_pump(b)
    }
}

impl State {
    /// Moves bytes from `from` to its destination as far as data and credit allow;
    /// returns the bytes moved.
    pub(crate) fn splice_pump(&mut self, from: StreamKey) -> u64 {
        let mut moved = 0u64;
        loop {
            let Some(sp) = self.splices.get_mut(&from) else {
                return moved;
            };
            let to = sp.to;
            if let Some(mut b) = sp.held.pop_front() {
                let r = match self.links.get_mut(&to.link) {
                    Some(slot) => slot.core.send(to.id, &mut b),
                    None => Err(StreamError::LinkLost(crate::proto::LinkError::Graceful)),
                };
                match r {
                    Ok(n) => {
                        moved += n as u64;
                        self.dirty.push(to.link);
                        if !b.is_empty() {
                            // Out of credit: `Writable(to)` brings us back.
                            if let Some(sp) = self.splices.get_mut(&from) {
                                sp.held.push_front(b);
                            }
                            return moved;
                        }
                    }
                    Err(e) => {
                        self.unsplice(from, Some((from, code_of(&e))));
                        return moved;
                    }
                }
                continue;
            }
            let r = match self.links.get_mut(&from.link) {
                Some(slot) => slot.core.recv(from.id, PIECE),
                None => Err(StreamError::LinkLost(crate::proto::LinkError::Graceful)),
            };
            match r {
                Ok(Recv::Data(b)) => {
                    // The source's window reopens by what we took.
                    self.dirty.push(from.link);
                    if let Some(sp) = self.splices.get_mut(&from) {
                        sp.held.push_back(b);
                    }
                }
                Ok(Recv::Fin) => {
                    self.splice_fin(from, to);
                    return moved;
                }
                Ok(Recv::WouldBlock) => return moved,
                Err(e) => {
                    self.unsplice(from, Some((to, code_of(&e))));
                    return moved;
                }
            }
        }
    }

    /// `from` finished: its FIN goes on; once both directions are done the two
    /// streams are released.
    fn splice_fin(&mut self, from: StreamKey, to: StreamKey) {
        if let Some(slot) = self.links.get_mut(&to.link) {
            let _ = slot.core.finish(to.id);
            self.dirty.push(to.link);
        }
        let both = match self.splices.get_mut(&from) {
            Some(sp) => {
                sp.done = true;
                self.splices.get(&to).is_some_and(|o| o.done)
            }
            None => false,
        };
        if both {
            self.unsplice(from, None);
        }
    }

    /// Ends the splice of `key`'s stream pair, resetting `reset.0` with `reset.1` if
    /// given, and releases both streams (their state is freed once both directions
    /// are finished, like any closed stream).
    pub(crate) fn unsplice(&mut self, key: StreamKey, reset: Option<(StreamKey, ErrorCode)>) {
        let Some(sp) = self.splices.remove(&key) else {
            return;
        };
        self.splices.remove(&sp.to);
        self.direct.remove(&key);
        self.direct.remove(&sp.to);
        if let Some((k, code)) = reset {
            if let Some(slot) = self.links.get_mut(&k.link) {
                slot.core.reset(k.id, code);
                self.dirty.push(k.link);
            }
        }
        for k in [key, sp.to] {
            if let Some(slot) = self.links.get_mut(&k.link) {
                slot.core.close(k.id);
                self.dirty.push(k.link);
            }
        }
    }

    /// A spliced stream was reset by its peer: the reset crosses with its code.
    pub(crate) fn splice_reset(&mut self, key: StreamKey, code: ErrorCode) -> bool {
        let Some(to) = self.splices.get(&key).map(|s| s.to) else {
            return false;
        };
        self.unsplice(key, Some((to, code)));
        true
    }

    /// `link` died: every splice through it resets its other side with `LINK_LOST`.
    pub(crate) fn splice_link_lost(&mut self, link: super::LinkId) {
        let hit: Vec<(StreamKey, StreamKey)> = self
            .splices
            .iter()
            .filter(|(k, _)| k.link == link)
            .map(|(k, s)| (*k, s.to))
            .collect();
        for (k, to) in hit {
            self.unsplice(k, Some((to, ErrorCode::LINK_LOST)));
        }
    }

    /// The destination `to` got credit: move what waits for it.
    pub(crate) fn splice_writable(&mut self, to: StreamKey) -> u64 {
        match self.splices.get(&to).map(|s| s.to) {
            // The direction into `to` is keyed by `to`'s partner.
            Some(partner) => self.splice_pump(partner),
            None => 0,
        }
    }
}
