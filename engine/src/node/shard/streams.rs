//! The shard's side of stream mailboxes (`node::mailbox`): received bytes moved out
//! of the core for readers, staged bytes handed to the core within credit, consumed
//! bytes reported so credit flows back, half-close, close after the last handle,
//! failing what waits on a stream or link that died, and detaching idle mailboxes.
//!
//! The shard only `try_lock`s a mailbox's sides; when a user thread holds one, the
//! mailbox is looked at again on the shard's next turn (`Cmd::Service`).

use super::super::errors::{link_error, node_gone, stream_error};
use super::super::mailbox::{
    lock, wake_all, MailMap, Mailbox, ATTACHED, DETACHED, EOF, FIN_DONE, MAX_STAGED, NOTIFY, RERR,
    RETRY, SHUT, TOUCHED, WERR,
};
use super::super::{Cmd, StreamKey};
use super::{Shard, State};
use crate::proto::{ErrorCode, LinkError, Recv, StreamError};
use std::io;
use std::sync::Arc;
use std::task::Waker;

/// Mailboxes one sweep (one timer tick) looks at, at most.
const SWEEP_BATCH: usize = 32 * 1024;
/// The mailbox tables keep room for this many without shrinking.
const MAIL_ROOM_KEPT: usize = 1024;

/// The error for an operation on a link that is gone: why it died, if we remember.
pub(super) fn link_gone(st: &State, link: super::LinkId) -> io::Error {
    match st.dead.get(&link) {
        Some(why) => link_error(why),
        None => io::Error::new(io::ErrorKind::ConnectionAborted, "link lost: link closed"),
    }
}

impl Shard {
    /// A user thread holds one of the mailbox's locks: look again on the next turn.
    /// One retry is queued per mailbox however often its locks were found taken (one
    /// `Cmd::Service` used to queue two more while the lock stayed held), and the
    /// shard yields to its other tasks before it looks again (`run_shard`), so a user
    /// thread descheduled inside its critical section costs the shard no busy loop.
    fn retry(&self, mb: &Arc<Mailbox>) {
        self.retried.set(true);
        if mb.set(RETRY) & RETRY == 0 {
            self.node.push(self.idx, Cmd::Service(mb.clone()));
        }
    }

    /// Whether a retry was queued since the last call.
    pub(crate) fn take_retried(&self) -> bool {
        self.retried.replace(false)
    }

    fn is_current(st: &State, mb: &Arc<Mailbox>) -> bool {
        st.mail.get(&mb.key).is_some_and(|m| Arc::ptr_eq(m, mb))
    }

    /// The stream's mailbox, attached now if it has none.
    pub(super) fn attach(&self, st: &mut State, key: StreamKey) -> Arc<Mailbox> {
        if let Some(mb) = st.mail.get(&key) {
            return mb.clone();
        }
        let mb = Arc::new(Mailbox::new(key, ATTACHED));
        self.insert_mail(st, mb.clone());
        mb
    }

    fn insert_mail(&self, st: &mut State, mb: Arc<Mailbox>) {
        insert_mail(&self.node.mail[self.idx as usize], st, mb);
    }

    fn detach(&self, st: &mut State, key: StreamKey) {
        self.detach_mail(st, key);
    }

    /// Removes the stream's mailbox, if any: handles that look find none.
    pub(crate) fn detach_mail(&self, st: &mut State, key: StreamKey) -> Option<Arc<Mailbox>> {
        detach_mail(&self.node.mail[self.idx as usize], st, key)
    }

    /// A handle found no mailbox and offers one.
    pub(super) fn on_attach(&self, st: &mut State, mb: Arc<Mailbox>) {
        if st.mail.contains_key(&mb.key) {
            // Attached meanwhile: the handle looks it up again once woken.
            mb.set(DETACHED);
        } else {
            mb.set(ATTACHED);
            self.insert_mail(st, mb.clone());
            self.service(st, &mb);
        }
        self.wake_everyone(&mb);
    }

    /// Moves a mailbox's wakers aside (the mailbox keeps its `Vec`'s capacity, so
    /// waiting allocates nothing in steady state); [`Shard::wake_collected`] wakes them
    /// once the lock is released.
    fn collect_wakers(&self, v: &mut Vec<Waker>) {
        self.wake_buf.borrow_mut().append(v);
    }

    fn wake_collected(&self) {
        // No borrow is held while waking.
        while let Some(w) = self.wake_buf.borrow_mut().pop() {
            w.wake();
        }
    }

    /// Wakes whoever waits on `mb`, whatever for (they look again).
    pub(super) fn wake_everyone(&self, mb: &Arc<Mailbox>) {
        let (Ok(mut r), Ok(mut w)) = (mb.recv.try_lock(), mb.send.try_lock()) else {
            return self.retry(mb);
        };
        self.collect_wakers(&mut r.wakers);
        self.collect_wakers(&mut w.wakers);
        drop((r, w));
        self.wake_collected();
    }

    /// Everything a mailbox may ask: staged bytes, consumed bytes, half-close.
    pub(super) fn service(&self, st: &mut State, mb: &Arc<Mailbox>) {
        if !Self::is_current(st, mb) {
            // Detached, or offered by a handle and not taken: only wake its waiters.
            return self.wake_everyone(mb);
        }
        // First, so that what a handle does after our look notifies again.
        mb.clear(NOTIFY);
        self.pump_send(st, mb);
        if Self::is_current(st, mb) {
            self.pump_recv(st, mb);
        }
    }

    /// Moves received bytes from the core into the mailbox (they stay unconsumed for
    /// flow control until a reader takes them) and reports what readers consumed.
    pub(super) fn pump_recv(&self, st: &mut State, mb: &Arc<Mailbox>) {
        let key = mb.key;
        let Ok(mut r) = mb.recv.try_lock() else {
            return self.retry(mb);
        };
        let closing = st.closing.contains(&key);
        if !st.links.contains_key(&key.link) {
            mb.fail(link_gone(st, key.link), RERR | WERR);
        } else if let Some(slot) = st.links.get_mut(&key.link) {
            if r.consumed > 0 {
                slot.core
                    .recv_consumed(key.id, r.consumed as usize, r.bytes as usize);
                r.consumed = 0;
                st.dirty.push(key.link);
            }
            // A released stream's bytes stay in the core, which discards them at close.
            loop {
                if closing {
                    break;
                }
                match slot.core.recv_take(key.id, usize::MAX) {
                    Ok(Recv::Data(b)) => {
                        // Within the stream's receive window, a u32.
                        r.bytes += b.len() as u32;
                        r.q.push_back(b);
                    }
                    Ok(Recv::Fin) => {
                        mb.set(EOF);
                        break;
                    }
                    Ok(Recv::WouldBlock) => break,
                    Err(e) => {
                        mb.fail(stream_error(e), RERR);
                        break;
                    }
                }
            }
            let due = slot.core.credit_due(key.id, r.bytes as usize);
            r.due = u32::try_from(due).unwrap_or(u32::MAX);
        }
        // One wake per empty→non-empty transition: readers register only when they
        // found nothing, and their wakers are taken here.
        if !r.wakers.is_empty() && (r.bytes > 0 || mb.state() & (EOF | RERR) != 0) {
            self.collect_wakers(&mut r.wakers);
        }
        drop(r);
        self.wake_collected();
    }

    /// Hands staged bytes to the core as far as the stream's credit allows, then the
    /// FIN if the writer half-closed, then closes a released stream once drained.
    pub(super) fn pump_send(&self, st: &mut State, mb: &Arc<Mailbox>) {
        let key = mb.key;
        let Ok(mut w) = mb.send.try_lock() else {
            return self.retry(mb);
        };
        let s = mb.state();
        let mut took = 0usize;
        let mut failed = None;
        if !st.links.contains_key(&key.link) {
            failed = Some(link_gone(st, key.link));
        } else if let Some(slot) = st.links.get_mut(&key.link) {
            while let Some(front) = w.q.front_mut() {
                match slot.core.send(key.id, front) {
                    Ok(n) => {
                        took += n;
                        if !front.is_empty() {
                            // Out of credit: the core reports `Writable` later.
                            break;
                        }
                        w.q.pop_front();
                    }
                    Err(e) => {
                        failed = Some(stream_error(e));
                        break;
                    }
                }
            }
            if failed.is_none() && w.q.is_empty() && s & SHUT != 0 && s & FIN_DONE == 0 {
                mb.set(FIN_DONE);
                if let Err(e) = slot.core.finish(key.id) {
                    failed = Some(stream_error(e));
                }
                st.dirty.push(key.link);
            }
            if took > 0 {
                st.dirty.push(key.link);
            }
        }
        w.bytes -= took;
        let failed_now = failed.is_some();
        if let Some(e) = failed {
            // Staged bytes die with the stream; writers and flushes see the error.
            mb.fail(e, WERR);
            w.q.clear();
            w.bytes = 0;
        }
        // A writer waits only on a full mailbox: wake it once half is free, so it
        // stages a large burst per wake-up instead of one write per piece we took.
        if (took > 0 && w.bytes <= MAX_STAGED / 2) || failed_now {
            self.collect_wakers(&mut w.wakers);
        }
        let drained = w.q.is_empty();
        drop(w);
        self.wake_collected();
        if drained && st.closing.contains(&key) {
            self.close_now(st, mb);
        }
    }

    /// The last handle is gone and its staged bytes are in the core: close the
    /// stream (FIN after them); bytes nobody read are discarded.
    fn close_now(&self, st: &mut State, mb: &Arc<Mailbox>) {
        let key = mb.key;
        let Ok(mut r) = mb.recv.try_lock() else {
            return self.retry(mb);
        };
        let (consumed, unread) = (r.consumed as usize, r.bytes as usize);
        r.q.clear();
        r.bytes = 0;
        r.consumed = 0;
        drop(r);
        st.closing.remove(&key);
        self.detach(st, key);
        if let Some(slot) = st.links.get_mut(&key.link) {
            slot.core.recv_consumed(key.id, consumed, unread);
            slot.core.close_discarding(key.id, unread);
            st.dirty.push(key.link);
        }
    }

    /// The last handle of a stream was dropped.
    pub(super) fn release_stream(&self, st: &mut State, key: StreamKey) {
        if let Some(mb) = st.mail.get(&key).cloned() {
            // Staged bytes go out first; `pump_send` closes once they are in the core.
            st.closing.insert(key);
            self.pump_send(st, &mb);
            return;
        }
        if let Some(slot) = st.links.get_mut(&key.link) {
            slot.core.close(key.id);
            st.dirty.push(key.link);
        }
    }

    /// A half-close from a handle that found no mailbox.
    pub(super) fn shutdown_stream(&self, st: &mut State, key: StreamKey) {
        if let Some(mb) = st.mail.get(&key).cloned() {
            mb.set(SHUT);
            return self.pump_send(st, &mb);
        }
        if let Some(slot) = st.links.get_mut(&key.link) {
            let _ = slot.core.finish(key.id);
            st.dirty.push(key.link);
        }
    }

    /// The peer (or our core, for a violation) reset a stream: writes fail, data the
    /// peer finished sending stays readable.
    pub(super) fn on_reset(&self, st: &mut State, key: StreamKey, code: ErrorCode) {
        let err = || stream_error(StreamError::Reset(code));
        if let Some(d) = st.dials.remove(&key) {
            let _ = d.reply.send(Err(err()));
            // The dial failed: nobody holds a handle, free the state.
            if let Some(slot) = st.links.get_mut(&key.link) {
                slot.core.close(key.id);
            }
        }
        if let Some(mb) = st.mail.get(&key).cloned() {
            mb.fail(err(), WERR);
            self.pump_send(st, &mb);
            if Self::is_current(st, &mb) {
                self.pump_recv(st, &mb);
            }
            self.wake_everyone(&mb);
        }
    }

    /// Fails everything pending on a dead link.
    pub(super) fn fail_link(&self, st: &mut State, link: super::LinkId, why: &LinkError) {
        let on = |k: &StreamKey| k.link == link;
        let mbs: Vec<Arc<Mailbox>> = st.mail.values().filter(|m| on(&m.key)).cloned().collect();
        for mb in mbs {
            mb.fail(link_error(why), RERR | WERR);
            self.pump_send(st, &mb);
            if Self::is_current(st, &mb) {
                self.pump_recv(st, &mb);
            }
            self.wake_everyone(&mb);
        }
        for (_, d) in st.dials.extract_if(|k, _| on(k)) {
            let _ = d.reply.send(Err(link_error(why)));
        }
        for (_, reply) in st.blocked.remove(&link).into_iter().flatten() {
            let _ = reply.send(Err(link_error(why)));
        }
        st.refs.retain(|k, _| !on(k));
        st.closing.retain(|k| !on(k));
    }

    /// Detaches mailboxes that stayed idle since the last sweep (nothing queued, nobody
    /// inside or waiting), so idle streams hold none. Bounded work per call.
    pub(crate) fn sweep_mail(&self) {
        let mut st = self.st.borrow_mut();
        let n = st.mail_order.len().min(SWEEP_BATCH);
        for _ in 0..n {
            let Some(key) = st.mail_order.pop_front() else {
                break;
            };
            let Some(mb) = st.mail.get(&key).cloned() else {
                continue;
            };
            let s = mb.state();
            if st.closing.contains(&key) || s & TOUCHED != 0 {
                mb.clear(TOUCHED);
                st.mail_order.push_back(key);
                continue;
            }
            match idle(&mb, s) {
                Idle::Yes if mb.try_detach(s) => self.detach(&mut st, key),
                Idle::Report => {
                    // Consumed bytes below the credit threshold: report them now, and
                    // detach at once if that left it idle (untouched since the last
                    // sweep, as checked above), rather than a sweep later.
                    self.service(&mut st, &mb);
                    let s = mb.state();
                    if Self::is_current(&st, &mb)
                        && s & TOUCHED == 0
                        && matches!(idle(&mb, s), Idle::Yes)
                        && mb.try_detach(s)
                    {
                        self.detach(&mut st, key);
                    } else {
                        st.mail_order.push_back(key);
                    }
                }
                _ => st.mail_order.push_back(key),
            }
        }
        shrink_mail(&self.node.mail[self.idx as usize], &mut st);
    }

    /// The shard stops: every mailbox (and every one a handle still offers) fails, so
    /// nobody waits for a shard that is gone.
    pub(crate) fn fail_all_mail(&self) {
        let inbox = &self.node.inboxes[self.idx as usize];
        inbox.close();
        let mut mbs: Vec<Arc<Mailbox>> = self.st.borrow_mut().mail.drain().collect();
        for c in inbox.drain_all() {
            if let Cmd::Mail(m) | Cmd::Service(m) | Cmd::Attach(m) = c {
                mbs.push(m);
            }
        }
        self.node.mail[self.idx as usize].clear();
        for mb in mbs {
            mb.fail(node_gone(), RERR | WERR);
            mb.set(DETACHED);
            // Nothing else runs on this shard any more: waiting for a user thread's
            // few-instruction critical section is harmless here.
            let a = std::mem::take(&mut lock(&mb.recv).wakers);
            let b = std::mem::take(&mut lock(&mb.send).wakers);
            wake_all(a);
            wake_all(b);
        }
    }
}

fn insert_mail(map: &MailMap, st: &mut State, mb: Arc<Mailbox>) {
    let key = mb.key;
    map.insert(mb.clone());
    st.mail.insert(mb);
    st.mail_order.push_back(key);
}

fn detach_mail(map: &MailMap, st: &mut State, key: StreamKey) -> Option<Arc<Mailbox>> {
    let mb = st.mail.remove(&key)?;
    mb.set(DETACHED);
    map.remove(&key);
    Some(mb)
}

/// After a burst of busy streams (a million opened at once, each with a mailbox until
/// the sweep detached it), the mailbox tables would keep the burst's room for good:
/// hash tables do not shrink on removals. Once at most an eighth of their room is
/// used, they are rebuilt with room for twice what is still attached. Work: a copy of
/// what is attached (at most an eighth of the room the burst grew), at most once per
/// sweep.
fn shrink_mail(map: &MailMap, st: &mut State) {
    let room = |len: usize| (2 * len).max(MAIL_ROOM_KEPT / 4);
    let sparse = |len: usize, cap: usize| cap > MAIL_ROOM_KEPT && len <= cap / 8;
    if sparse(st.mail.len(), st.mail.capacity()) {
        let keep = room(st.mail.len());
        st.mail.shrink_to(keep);
        map.rebuild(st.mail.values(), keep);
    }
    // Detaching leaves a key behind until the sweep reaches it, so the order queue
    // is at least as long as the map: judged on its own.
    if sparse(st.mail_order.len(), st.mail_order.capacity()) {
        st.mail_order.shrink_to(room(st.mail_order.len()));
    }
}

enum Idle {
    Yes,
    No,
    /// Idle but for consumed bytes not reported yet.
    Report,
}

fn idle(mb: &Mailbox, s: u32) -> Idle {
    if s & SHUT != 0 && s & FIN_DONE == 0 {
        return Idle::No;
    }
    let (Ok(r), Ok(w)) = (mb.recv.try_lock(), mb.send.try_lock()) else {
        return Idle::No;
    };
    if !r.q.is_empty() || !r.wakers.is_empty() || !w.q.is_empty() || !w.wakers.is_empty() {
        return Idle::No;
    }
    if r.consumed > 0 {
        return Idle::Report;
    }
    Idle::Yes
}

#[cfg(test)]
mod tests {
    use super::super::State;
    use super::{detach_mail, insert_mail, shrink_mail};
    use crate::node::mailbox::{MailMap, Mailbox, ATTACHED};
    use crate::node::{block_on_until, NodeConfig, NodeCore, StreamKey};
    use std::sync::Arc;
    use std::task::{Context, Waker};
    use std::time::{Duration, Instant};

    /// A burst of busy streams (each attached a mailbox) grows the mailbox tables; once
    /// the sweep detached them, the tables shrink back (hash tables keep their room on
    /// removals), and the handles' table is a fresh one with what is still attached.
    #[test]
    fn mail_tables_shrink_after_a_burst() {
        let map = MailMap::default();
        let mut st = State::default();
        let key = |id| StreamKey { link: 7, id };
        for id in 0..50_000u64 {
            insert_mail(&map, &mut st, Arc::new(Mailbox::new(key(id), ATTACHED)));
        }
        assert!(st.mail.capacity() >= 50_000);
        let burst_table = map.table();
        for id in 10..50_000u64 {
            detach_mail(&map, &mut st, key(id));
        }
        shrink_mail(&map, &mut st);
        assert!(st.mail.capacity() < 1024, "map room {}", st.mail.capacity());
        assert!(
            !Arc::ptr_eq(&burst_table, &map.table()),
            "handles' table kept"
        );
        assert_eq!(map.len(), 10);
        assert!((0..10).all(|id| map.get(&key(id)).is_some()));
        assert!(map.get(&key(10)).is_none());
        // A handle that loaded the burst's table just before the swap still finds
        // what was attached then.
        assert!(burst_table.pin().get(&key(3)).is_some());
        // The order queue still holds the detached keys until the sweep visits them.
        assert!(st.mail_order.capacity() >= 50_000);
        st.mail_order.retain(|k| st.mail.contains_key(k));
        shrink_mail(&map, &mut st);
        assert!(
            st.mail_order.capacity() < 1024,
            "order room {}",
            st.mail_order.capacity()
        );
        // Nothing to shrink any more: the table stays.
        let t = map.table();
        shrink_mail(&map, &mut st);
        assert!(Arc::ptr_eq(&t, &map.table()));
    }

    /// A user thread that holds a mailbox lock (say, descheduled inside its critical
    /// section) makes the shard queue one retry for that mailbox, not a pile that
    /// grows for as long as the lock is held.
    #[test]
    fn a_held_mailbox_lock_queues_one_retry() {
        let node = NodeCore::start(NodeConfig {
            shards: 1,
            ..NodeConfig::default()
        })
        .unwrap();
        let l = node.bind("svc").unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        let until = Some(end);
        let mut dialed = node.dial("svc", end).unwrap();
        let c = block_on_until(&mut dialed, until)
            .unwrap()
            .unwrap()
            .unwrap();
        let mut acc = Box::pin(l.queue().recv());
        let s = block_on_until(&mut acc, until).unwrap().unwrap().stream;
        let shared = node.shared().clone();
        let mb = shared.mail[0].get(&s.key()).expect("a mailbox");
        let held = mb.recv.lock().unwrap();
        // Bytes arrive for the held mailbox: the shard finds its lock taken.
        let mut cx = Context::from_waker(Waker::noop());
        assert!(c.poll_write(&mut cx, b"hello").is_ready());
        let mut most = 0;
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(300) {
            most = most.max(shared.inboxes[0].len());
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(held);
        assert!(most <= 8, "{most} commands queued while one lock was held");
        let mut buf = [0u8; 5];
        let mut read = std::future::poll_fn(|cx| s.poll_read(cx, &mut buf));
        assert_eq!(block_on_until(&mut read, until).unwrap().unwrap(), 5);
        drop(read);
        assert_eq!(&buf, b"hello");
        node.shutdown();
    }
}
