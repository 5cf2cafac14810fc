//! Timers: the handshake deadline, keep-alive probes and silence, and the IO
//! shell's report of a peer that stopped reading.

use super::{Link, LinkError, Phase};
use crate::proto::frame::ErrorCode;
use std::time::{Duration, Instant};

impl Link {
    /// When [`Link::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Closed => None,
            Phase::Handshake => Some(self.handshake_deadline),
            Phase::Open => {
                let dead = self.last_recv + self.cfg.keepalive_timeout;
                let probe = match self.ping_sent_at {
                    Some(_) => dead,
                    None => self.last_recv + self.ping_interval,
                };
                Some(dead.min(probe))
            }
        }
    }

    /// True if nothing was heard from the peer for the keep-alive timeout. An IO shell
    /// that may have been busy should first look at its transport (the peer's bytes
    /// may be waiting there, unread by us) and call [`Link::handle_timeout`] only if
    /// it found nothing: the keep-alive judges the peer's silence, not our own delay.
    pub fn silence_expired(&self, now: Instant) -> bool {
        self.phase == Phase::Open
            && now.saturating_duration_since(self.last_recv) >= self.cfg.keepalive_timeout
    }

    /// Acts on timers: ends a handshake past its deadline, probes an idle link with
    /// PING, declares a silent one dead.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        match self.phase {
            Phase::Closed => return,
            Phase::Handshake => {
                if now >= self.handshake_deadline {
                    self.send_goaway_frame(ErrorCode::TIMEOUT, "handshake timeout");
                    self.close_link(LinkError::Handshake(format!(
                        "no HELLO from the peer within {:?}",
                        self.cfg.handshake_timeout
                    )));
                }
                return;
            }
            Phase::Open => {}
        }
        let silent = now.saturating_duration_since(self.last_recv);
        if silent >= self.cfg.keepalive_timeout {
            self.send_goaway_frame(ErrorCode::TIMEOUT, "keep-alive timeout");
            self.close_link(LinkError::Timeout(silent));
            return;
        }
        if silent >= self.ping_interval && self.ping_sent_at.is_none() {
            self.probe(now);
            self.ping_sent_at = Some(now);
        }
    }

    /// The IO shell could write nothing to the transport for `stalled`: the peer does
    /// not read. Ends the link, so a zombie peer cannot pin our buffers.
    pub fn write_stalled(&mut self, stalled: Duration) {
        self.fail(LinkError::WriteStall(stalled));
    }
}

pub(super) fn dur_ms(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}
