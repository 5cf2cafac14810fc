//! A busy stream's mailbox: what its handles and its shard share, so that a read of
//! bytes already here and a write within the stream's room need no round trip.
//!
//! Who owns what:
//! - The shard owns the stream: its sans-IO core state, the peer's credit, frames. The
//!   mailbox is a staging area beside it: bytes the shard took out of the core for
//!   readers ([`Link::recv_take`](crate::proto::Link::recv_take); they count as
//!   consumed only once a reader took them, so flow control stays exact), bytes writers
//!   staged for the shard to hand to the core within credit, and who waits for what.
//! - Each direction is one `Mutex`. User threads lock it for a push or pop of a
//!   `Bytes` (never a copy, never a wait). The shard only ever `try_lock`s it: when a
//!   user thread holds it, the shard does not wait but services the mailbox again on
//!   its next turn (`Cmd::Service`). So a shard never blocks on a lock a user thread
//!   holds, and the critical sections are a few dozen instructions, which a lock-free
//!   queue would not beat (and crossbeam's cost 256 B of padding and a block
//!   allocation per 31 items).
//! - A state word (atomic) holds what is read without a lock: how many handle calls
//!   are inside ([`Mailbox::enter`]), whether the shard was already told to look
//!   (`NOTIFY`: one notification per burst of writes or reads), whether the mailbox
//!   is detached, and the stream's ends (EOF, errors, half-close).
//! - A reader is woken once per empty→non-empty transition: it registers its waker
//!   only when it found nothing, and the shard takes the wakers when it adds bytes.
//! - Mailboxes exist only while a stream is busy: the shard detaches one that stayed
//!   idle for a sweep (nothing queued, nobody inside or waiting), so a million idle
//!   streams hold none. Handles find the mailbox in the shard's lock-free map
//!   ([`MailMap`]: `papaya`; only the shard writes it, so no writer ever waits on a user
//!   thread, and readers never block).

use super::errors::node_gone;
use super::{Cmd, NodeShared, StreamKey};
use crate::proto::BufQueue;
use bytes::Bytes;
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

/// Bytes writers may stage in a mailbox beyond what the stream's core took (within
/// the peer's credit) before a write waits.
pub const MAX_STAGED: usize = 1024 * 1024;
/// The most bytes one write call takes.
pub const MAX_WRITE: usize = 256 * 1024;

const USERS: u32 = 0xffff;
/// The shard removed the mailbox from its map: nobody may enter any more.
pub(crate) const DETACHED: u32 = 1 << 16;
/// A `Cmd::Mail` for this mailbox is queued at the shard.
pub(crate) const NOTIFY: u32 = 1 << 17;
/// A handle was inside since the shard's last sweep.
pub(crate) const TOUCHED: u32 = 1 << 18;
/// The writer half-closed: FIN goes after the staged bytes.
pub(crate) const SHUT: u32 = 1 << 19;
/// Every byte the peer sent is in the queue: then end of stream.
pub(crate) const EOF: u32 = 1 << 20;
/// Reads fail (after the queued bytes) with `err`.
pub(crate) const RERR: u32 = 1 << 21;
/// Writes fail with `err`.
pub(crate) const WERR: u32 = 1 << 22;
/// The shard knows this mailbox (it is in the shard's map).
pub(crate) const ATTACHED: u32 = 1 << 23;
/// The shard handed the FIN to the core.
pub(crate) const FIN_DONE: u32 = 1 << 24;
/// A `Cmd::Service` for this mailbox is queued: the shard found a side locked and
/// looks again on its next turn (once, however many times it found it locked).
pub(crate) const RETRY: u32 = 1 << 25;

/// A shard's attached mailboxes, as handles look them up: a lock-free map (`papaya`)
/// only the shard writes. A papaya table resizes only on an insert, so after a burst
/// of busy streams it would keep the burst's room for good; the shard then swaps in a
/// fresh table sized for what is still attached ([`MailMap::rebuild`]).
///
/// Why a swap is safe: a handle loads the current table for each lookup. One that
/// loaded the old table just before the swap sees it as it was at the swap at the
/// latest (the shard writes only the new one afterwards), which is what it would
/// have seen had its lookup run a moment earlier. A mailbox it finds there and the
/// shard detached since refuses entry (`DETACHED`), and the handle looks again (in
/// the new table); a mailbox it misses makes it offer one (`Cmd::Attach`), which the
/// shard declines when it has one already, waking the handle to look again.
pub(crate) struct MailMap(arc_swap::ArcSwap<MailTable>);

/// The table behind a [`MailMap`]. Hashed with hashbrown's default (foldhash, seeded
/// per process) rather than papaya's SipHash: a lookup runs on every `read` and
/// `write`, and SipHash alone was ~2 % of an rpc profile.
type MailTable = papaya::HashMap<StreamKey, Arc<Mailbox>, hashbrown::DefaultHashBuilder>;

/// An empty [`MailTable`] with room for `room` mailboxes.
fn mail_table(room: usize) -> MailTable {
    papaya::HashMap::with_capacity_and_hasher(room, hashbrown::DefaultHashBuilder::default())
}

impl Default for MailMap {
    fn default() -> Self {
        Self(arc_swap::ArcSwap::from_pointee(mail_table(0)))
    }
}

impl MailMap {
    /// The stream's mailbox, if one is attached (any thread).
    pub(crate) fn get(&self, key: &StreamKey) -> Option<Arc<Mailbox>> {
        self.0.load().pin().get(key).cloned()
    }

    /// Attached mailboxes (an estimate while the shard writes).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.load().len()
    }

    /// The shard attaches a mailbox (shard only).
    pub(crate) fn insert(&self, mb: Arc<Mailbox>) {
        self.0.load().pin().insert(mb.key, mb);
    }

    /// The shard detaches a mailbox (shard only).
    pub(crate) fn remove(&self, key: &StreamKey) {
        self.0.load().pin().remove(key);
    }

    /// The shard stops (shard only).
    pub(crate) fn clear(&self) {
        self.0.load().pin().clear();
    }

    /// Replaces the table with a fresh one of room for `room` holding exactly `live`,
    /// the shard's own record of what is attached (shard only). The old table is
    /// freed once no handle is inside a lookup on it.
    pub(crate) fn rebuild<'a>(
        &self,
        live: impl ExactSizeIterator<Item = &'a Arc<Mailbox>>,
        room: usize,
    ) {
        let fresh = mail_table(room.max(live.len()));
        {
            let m = fresh.pin();
            for mb in live {
                m.insert(mb.key, mb.clone());
            }
        }
        self.0.store(Arc::new(fresh));
    }

    /// The current table (tests).
    #[cfg(test)]
    pub(crate) fn table(&self) -> Arc<MailTable> {
        self.0.load_full()
    }
}

/// The shard's own record of its attached mailboxes, found by stream key: a table of
/// the `Arc`s alone (each mailbox knows its key), 8 bytes a slot where a map that
/// also stores the 16-byte key takes 24. A burst of a million busy streams grows it to
/// 2^21 slots until the sweep has detached them and it shrinks (`shrink_mail`).
#[derive(Default)]
pub(crate) struct Mailboxes {
    table: hashbrown::HashTable<Arc<Mailbox>>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl Mailboxes {
    pub(crate) fn get(&self, key: &StreamKey) -> Option<&Arc<Mailbox>> {
        self.table
            .find(self.hasher.hash_one(key), |m| m.key == *key)
    }

    pub(crate) fn contains_key(&self, key: &StreamKey) -> bool {
        self.get(key).is_some()
    }

    /// Records `mb` under its key; returns the mailbox it replaced, if any.
    pub(crate) fn insert(&mut self, mb: Arc<Mailbox>) -> Option<Arc<Mailbox>> {
        let hasher = &self.hasher;
        let hash = hasher.hash_one(&mb.key);
        match self
            .table
            .entry(hash, |m| m.key == mb.key, |m| hasher.hash_one(m.key))
        {
            hashbrown::hash_table::Entry::Occupied(mut e) => {
                Some(std::mem::replace(e.get_mut(), mb))
            }
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(mb);
                None
            }
        }
    }

    pub(crate) fn remove(&mut self, key: &StreamKey) -> Option<Arc<Mailbox>> {
        let hash = self.hasher.hash_one(key);
        let e = self.table.find_entry(hash, |m| m.key == *key).ok()?;
        Some(e.remove().0)
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.table.capacity()
    }

    pub(crate) fn shrink_to(&mut self, min: usize) {
        let hasher = &self.hasher;
        self.table.shrink_to(min, |m| hasher.hash_one(m.key));
    }

    pub(crate) fn values(&self) -> impl ExactSizeIterator<Item = &Arc<Mailbox>> {
        self.table.iter()
    }

    pub(crate) fn drain(&mut self) -> impl Iterator<Item = Arc<Mailbox>> + '_ {
        self.table.drain()
    }
}

/// Received bytes waiting for readers.
#[derive(Default)]
///
/// The counters are `u32`: the bytes a stream holds here, read or not, stay within its
/// receive window (a `u32`), and the narrower fields keep `Mailbox` in the same
/// allocator size class (224 bytes with its `Arc` counts) as before `ChunkQ` grew it.
pub(crate) struct RecvSide {
    pub(crate) q: ChunkQ,
    pub(crate) bytes: u32,
    /// Bytes readers took that the shard has not reported to the core yet.
    pub(crate) consumed: u32,
    /// Report `consumed` to the shard once it reaches this (the core's next credit).
    pub(crate) due: u32,
    pub(crate) wakers: Vec<Waker>,
}

/// Written bytes waiting for the stream's credit.
#[derive(Default)]
pub(crate) struct SendSide {
    pub(crate) q: ChunkQ,
    pub(crate) bytes: usize,
    pub(crate) wakers: Vec<Waker>,
}

/// See the module documentation.
pub(crate) struct Mailbox {
    pub(crate) key: StreamKey,
    state: AtomicU32,
    pub(crate) recv: Mutex<RecvSide>,
    pub(crate) send: Mutex<SendSide>,
    /// Why reads or writes fail (`RERR`, `WERR`), set once by the shard.
    err: OnceLock<io::Error>,
}

/// Locks a side from a user thread (or a relay pump on the shard, whose streams no
/// user thread touches). Nothing panics while holding it; a poisoned lock is fine.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn add_waker(v: &mut Vec<Waker>, w: &Waker) {
    if !v.iter().any(|x| x.will_wake(w)) {
        v.push(w.clone());
    }
}

/// A mailbox side's queue of chunks, the first one inline. Most streams queue one
/// chunk at a time, and a mailbox keeps its queues until it is detached: a
/// `VecDeque`'s buffer for that one chunk was a heap block each side (48 bytes with
/// glibc's header), a tenth of a KiB per busy stream for a million of them. The
/// overflow queue is allocated when a second chunk waits and then kept while the
/// mailbox lives, as the `VecDeque` kept its room (a stream that queued two chunks
/// once likely will again; no allocation churn per burst).
#[derive(Default)]
pub(crate) struct ChunkQ {
    /// The oldest chunk; `None` only when the whole queue is empty.
    first: Option<Bytes>,
    // Boxed on purpose: 8 bytes in every mailbox side instead of a `VecDeque`'s 32,
    // for a queue few streams ever need.
    #[allow(clippy::box_collection)]
    rest: Option<Box<VecDeque<Bytes>>>,
}

impl ChunkQ {
    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    pub(crate) fn front_mut(&mut self) -> Option<&mut Bytes> {
        self.first.as_mut()
    }

    pub(crate) fn push_back(&mut self, b: Bytes) {
        if self.first.is_none() {
            self.first = Some(b);
        } else {
            self.rest.get_or_insert_with(Default::default).push_back(b);
        }
    }

    pub(crate) fn pop_front(&mut self) -> Option<Bytes> {
        let out = self.first.take()?;
        self.first = self.rest.as_mut().and_then(|r| r.pop_front());
        Some(out)
    }

    /// Every chunk, oldest first, as one queue.
    pub(crate) fn into_deque(self) -> VecDeque<Bytes> {
        let mut v = self.rest.map_or_else(VecDeque::new, |r| *r);
        if let Some(f) = self.first {
            v.push_front(f);
        }
        v
    }

    /// Drops every chunk (the overflow queue keeps its room, as above).
    pub(crate) fn clear(&mut self) {
        self.first = None;
        if let Some(r) = &mut self.rest {
            r.clear();
        }
    }
}

/// Wakes everything in `v` (taken out under the lock, woken after it).
pub(crate) fn wake_all(v: Vec<Waker>) {
    for w in v {
        w.wake();
    }
}

impl Mailbox {
    pub(crate) fn new(key: StreamKey, state: u32) -> Self {
        Self {
            key,
            state: AtomicU32::new(state),
            recv: Mutex::default(),
            send: Mutex::default(),
            err: OnceLock::new(),
        }
    }

    pub(crate) fn state(&self) -> u32 {
        self.state.load(Ordering::Acquire)
    }

    pub(crate) fn set(&self, bits: u32) -> u32 {
        self.state.fetch_or(bits, Ordering::AcqRel)
    }

    pub(crate) fn clear(&self, bits: u32) -> u32 {
        self.state.fetch_and(!bits, Ordering::AcqRel)
    }

    /// The shard detaches an idle mailbox: succeeds only if the state is still `seen`
    /// (nobody inside, nothing asked), so no handle can be inside afterwards.
    pub(crate) fn try_detach(&self, seen: u32) -> bool {
        seen & (USERS | NOTIFY | DETACHED) == 0
            && self
                .state
                .compare_exchange(seen, seen | DETACHED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// A handle call starts; false if the mailbox was detached (look it up again).
    pub(crate) fn enter(&self) -> bool {
        self.state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s & DETACHED == 0 && s & USERS != USERS).then_some((s + 1) | TOUCHED)
            })
            .is_ok()
    }

    pub(crate) fn exit(&self) {
        self.state.fetch_sub(1, Ordering::AcqRel);
    }

    /// Records why the stream failed (the first reason wins) and which directions fail.
    pub(crate) fn fail(&self, e: io::Error, bits: u32) {
        let _ = self.err.set(e);
        self.set(bits);
    }

    pub(crate) fn error(&self) -> io::Error {
        match self.err.get() {
            // A reset keeps its code for the reader (`StreamReset`).
            Some(e) => match super::errors::reset_code(e) {
                Some(code) => io::Error::new(e.kind(), super::errors::StreamReset(code)),
                None => io::Error::new(e.kind(), e.to_string()),
            },
            None => node_gone(),
        }
    }

    /// Tells the shard to look at this mailbox, unless it was told already.
    pub(crate) fn notify(self: &Arc<Self>, node: &NodeShared, shard: u32) {
        if self.set(NOTIFY) & NOTIFY == 0 {
            node.push(shard, Cmd::Mail(self.clone()));
        }
    }

    // ------------------------------------------------------------- handle side

    /// Copies queued bytes into `buf`; `Ok(0)` at end of stream. Sets `report` when the
    /// shard should hear of the consumption (credit is due).
    pub(crate) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
        report: &mut bool,
    ) -> Poll<io::Result<usize>> {
        let mut done = 0;
        loop {
            let mut r = lock(&self.recv);
            let Some(front) = r.q.front_mut() else {
                if done > 0 {
                    break;
                }
                return self.nothing_to_read(r, cx);
            };
            let take = front.len().min(buf.len() - done);
            let chunk = if take == front.len() {
                r.q.pop_front().expect("front exists")
            } else {
                front.split_to(take)
            };
            // `take` is at most `r.bytes`, a u32.
            r.bytes -= take as u32;
            r.consumed += take as u32;
            *report |= r.consumed >= r.due;
            let more = !r.q.is_empty();
            drop(r);
            // The copy happens outside the lock, so the shard rarely finds it taken.
            buf[done..done + take].copy_from_slice(&chunk);
            done += take;
            if done == buf.len() || !more {
                break;
            }
        }
        Poll::Ready(Ok(done))
    }

    /// Takes up to `max` queued bytes as the chunks they arrived in (no copy); empty at
    /// end of stream.
    pub(crate) fn poll_read_chunks(
        &self,
        cx: &mut Context<'_>,
        max: usize,
        report: &mut bool,
    ) -> Poll<io::Result<BufQueue>> {
        let mut r = lock(&self.recv);
        if r.q.is_empty() {
            return self
                .nothing_to_read(r, cx)
                .map(|r| r.map(|_| BufQueue::default()));
        }
        let mut out = BufQueue::default();
        let mut got = 0;
        while got < max {
            let Some(front) = r.q.front_mut() else { break };
            let take = front.len().min(max - got);
            let chunk = if take == front.len() {
                r.q.pop_front().expect("front exists")
            } else {
                front.split_to(take)
            };
            got += take;
            out.push(chunk);
        }
        // `got` is at most `r.bytes`, a u32.
        r.bytes -= got as u32;
        r.consumed += got as u32;
        *report = r.consumed >= r.due;
        Poll::Ready(Ok(out))
    }

    /// The queue is empty: end of stream, an error, or wait (registered under the lock,
    /// so bytes the shard adds afterwards wake us).
    fn nothing_to_read(
        &self,
        mut r: MutexGuard<'_, RecvSide>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        let s = self.state();
        if s & EOF != 0 {
            return Poll::Ready(Ok(0));
        }
        if s & RERR != 0 {
            return Poll::Ready(Err(self.error()));
        }
        add_waker(&mut r.wakers, cx.waker());
        Poll::Pending
    }

    /// Stages up to `len` bytes made by `make(n)`; `Pending` (nothing taken) while the
    /// mailbox is full.
    pub(crate) fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        len: usize,
        make: impl FnOnce(usize) -> Bytes,
    ) -> Poll<io::Result<usize>> {
        let s = self.state();
        if s & WERR != 0 {
            return Poll::Ready(Err(self.error()));
        }
        if s & SHUT != 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown_write",
            )));
        }
        let room = {
            let mut w = lock(&self.send);
            let room = MAX_STAGED.saturating_sub(w.bytes);
            if room == 0 {
                add_waker(&mut w.wakers, cx.waker());
                return Poll::Pending;
            }
            room
        };
        let n = len.min(room).min(MAX_WRITE);
        // The copy (if `make` copies) happens outside the lock.
        let b = make(n);
        let mut w = lock(&self.send);
        w.bytes += n;
        w.q.push_back(b);
        Poll::Ready(Ok(n))
    }

    /// Flushing has nothing to wait for: staged bytes are already on their way (the
    /// shard was told when they were staged), like bytes in a socket's send buffer. It
    /// reports a write error the stream already has.
    pub(crate) fn flush(&self) -> io::Result<()> {
        if self.state() & WERR != 0 {
            return Err(self.error());
        }
        Ok(())
    }

    /// Half-close: the FIN goes after the staged bytes; never waits.
    pub(crate) fn shutdown(&self) -> io::Result<()> {
        let s = self.set(SHUT);
        if s & WERR != 0 {
            return Err(self.error());
        }
        Ok(())
    }

    /// A handle call waits for the shard to attach this mailbox.
    pub(crate) fn wait_attached(&self, cx: &mut Context<'_>) {
        add_waker(&mut lock(&self.recv).wakers, cx.waker());
    }
}

#[cfg(test)]
mod tests {
    use super::{ChunkQ, Mailbox, Mailboxes};
    use crate::node::StreamKey;
    use bytes::Bytes;
    use std::sync::Arc;

    /// The queue is FIFO across the inline chunk and the overflow, and a side that
    /// held one chunk at a time never allocated.
    #[test]
    fn chunk_queue_is_fifo_and_holds_one_inline() {
        let mut q = ChunkQ::default();
        assert!(q.is_empty() && q.pop_front().is_none());
        q.push_back(Bytes::from_static(b"echo"));
        assert!(q.rest.is_none());
        assert_eq!(q.pop_front().as_deref(), Some(&b"echo"[..]));
        assert!(q.is_empty() && q.rest.is_none());
        for w in [&b"a"[..], b"bc", b"def"] {
            q.push_back(Bytes::from_static(w));
        }
        q.front_mut().unwrap().clear();
        assert_eq!(q.pop_front().as_deref(), Some(&b""[..]));
        assert_eq!(q.pop_front().as_deref(), Some(&b"bc"[..]));
        q.push_back(Bytes::from_static(b"g"));
        assert_eq!(q.pop_front().as_deref(), Some(&b"def"[..]));
        assert_eq!(q.pop_front().as_deref(), Some(&b"g"[..]));
        assert!(q.is_empty());
        for w in [&b"h"[..], b"i", b"j"] {
            q.push_back(Bytes::from_static(w));
        }
        assert_eq!(q.pop_front().as_deref(), Some(&b"h"[..]));
        let mut q = std::mem::take(&mut q).into_deque();
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop_front().as_deref(), Some(&b"i"[..]));
        let mut q = ChunkQ::default();
        q.push_back(Bytes::from_static(b"k"));
        q.push_back(Bytes::from_static(b"l"));
        q.clear();
        assert!(q.is_empty() && q.pop_front().is_none());
    }

    /// The shard's table finds, replaces and removes mailboxes by their own key,
    /// through growth and shrinking.
    #[test]
    fn mailboxes_by_their_key() {
        let key = |id| StreamKey { link: 3, id };
        let mut t = Mailboxes::default();
        for id in 0..5000 {
            assert!(t.insert(Arc::new(Mailbox::new(key(id), 0))).is_none());
        }
        assert_eq!(t.len(), 5000);
        let again = Arc::new(Mailbox::new(key(7), 0));
        let old = t.insert(again.clone()).expect("replaced");
        assert!(!Arc::ptr_eq(&old, &again) && Arc::ptr_eq(t.get(&key(7)).unwrap(), &again));
        for id in 10..5000 {
            assert_eq!(t.remove(&key(id)).map(|m| m.key), Some(key(id)));
        }
        assert!(t.remove(&key(10)).is_none() && !t.contains_key(&key(4999)));
        t.shrink_to(20);
        assert!(t.capacity() < 100, "room {}", t.capacity());
        assert!((0..10).all(|id| t.get(&key(id)).is_some_and(|m| m.key == key(id))));
        assert_eq!(t.values().len(), 10);
        assert_eq!(t.drain().count(), 10);
        assert_eq!(t.len(), 0);
        // 8 bytes a slot (plus hashbrown's control byte), not 24.
        assert_eq!(std::mem::size_of::<Arc<Mailbox>>(), 8);
    }

    /// A busy stream holds one mailbox, with its `Arc` counts 224 bytes: mimalloc's
    /// size class (glibc's chunk is 240), so any growth shows here.
    #[test]
    fn mailbox_is_small() {
        let size = std::mem::size_of::<Mailbox>() + 16;
        assert!(size <= 224, "ArcInner<Mailbox> is {size} bytes");
    }
}
