//! What this node announces about itself: its entries, their version, and (signed
//! mesh) its signature over them and its credentials (PROTOCOL.md §11.3, §11.5).

use super::signing::message;
use super::{full, wire_bytes, Discovery, Entry, Out, Send};
use crate::node::auth::AnnounceAuth;
use crate::proto::frame::{
    Frame, ServicesSig, ServicesUpdate, MAX_CREDENTIALS_LEN, MAX_SIGNATURE_LEN,
};
use bytes::Bytes;
use std::collections::BTreeSet;
use std::sync::Arc;

/// Our own signed state.
pub(super) struct Own {
    pub(super) auth: Arc<dyn AnnounceAuth>,
    /// Our signature over our state at the current version, and the credentials it
    /// was made under (`None` after a change, until signed).
    pub(super) sig: Option<(Bytes, Bytes)>,
}

impl Discovery {
    /// Our signature over our current state, made under our current credentials
    /// (which it carries); `None` in an unsigned mesh, or if they don't fit a frame.
    fn own_sig(&mut self) -> Option<ServicesSig> {
        let own = self.own.as_mut()?;
        let creds = own.auth.credentials();
        let sig = match &own.sig {
            Some((c, s)) if *c == creds => s.clone(),
            _ => {
                let msg = message(
                    self.me,
                    self.version,
                    self.local.iter(),
                    wire_bytes(&self.local),
                );
                let s = own.auth.sign(&msg);
                own.sig = Some((creds.clone(), s.clone()));
                s
            }
        };
        if sig.is_empty() || sig.len() > MAX_SIGNATURE_LEN || creds.len() > MAX_CREDENTIALS_LEN {
            // Every receiver would take the frame for malformed and close the link:
            // announce unsigned instead (receivers reject it, links stay up). The
            // node's configuration should have refused such an identity.
            tracing::error!(
                node = %self.me,
                signature = sig.len(),
                credentials = creds.len(),
                "cannot sign announcements: signature or credentials exceed the \
                 SERVICES frame's bounds ({MAX_SIGNATURE_LEN} / {MAX_CREDENTIALS_LEN} bytes)"
            );
            return None;
        }
        Some(ServicesSig {
            signature: sig,
            credentials: creds,
        })
    }

    /// We bound or unbound an entry: a new version, announced everywhere as a diff
    /// (as a full update if our credentials changed since we last signed: receivers
    /// hold our old key, the full update carries the new one).
    pub(crate) fn local_change(&mut self, announce: bool, e: Entry, out: &mut Out) {
        let changed = if announce {
            self.local.insert(e.clone())
        } else {
            self.local.remove(&e)
        };
        if !changed || !self.announces {
            return;
        }
        self.version += 1;
        let creds_before = self.own.as_mut().and_then(|o| o.sig.take()).map(|(c, _)| c);
        let frame = match self.own_sig() {
            Some(s) if creds_before.is_some_and(|c| c != s.credentials) => {
                full(self.me, self.version, &self.local, Some(s))
            }
            signed => Frame::Services(ServicesUpdate {
                origin: self.me.0,
                base_version: self.version - 1,
                version: self.version,
                full: false,
                hops: 0,
                ops: vec![e.op(announce)],
                request: false,
                // Diffs go where our full update went before: no credentials.
                signed: signed.map(|s| ServicesSig {
                    credentials: Bytes::new(),
                    ..s
                }),
            }),
        };
        out.sends.push(Send::All {
            frame,
            except: None,
        });
    }

    /// Our credentials changed (a certificate reload): announce our state anew, at a
    /// new version, with them, so every node learns our new key.
    pub(crate) fn credentials_changed(&mut self, out: &mut Out) {
        if self.own.is_none() || !self.announces {
            return;
        }
        self.version += 1;
        if let Some(o) = self.own.as_mut() {
            o.sig = None;
        }
        out.sends.push(Send::All {
            frame: self.own_full(),
            except: None,
        });
    }

    /// Our own full update (empty for a client). A full update is signed under our
    /// current credentials, which it carries.
    pub(super) fn own_full(&mut self) -> Frame {
        if !self.announces {
            return full(self.me, self.version, &BTreeSet::new(), None);
        }
        let signed = self.own_sig();
        full(self.me, self.version, &self.local, signed)
    }

    /// The node shuts down: withdraw everything (an empty full update).
    pub(crate) fn shutdown(&mut self, out: &mut Out) {
        self.local.clear();
        if self.announces {
            self.version += 1;
            if let Some(o) = self.own.as_mut() {
                o.sig = None;
            }
            let frame = self.own_full();
            out.sends.push(Send::All {
                frame,
                except: None,
            });
        }
    }
}
