//! Stream operations on a shard's state: reads answered from the core's queues,
//! writes handed to the core within credit, half-close, and failing what waits on a
//! stream or link that died.

use super::super::errors::{link_error, stream_error};
use super::super::{Chunks, StreamKey};
use super::State;
use crate::proto::{ErrorCode, LinkError, Recv, StreamError};
use std::io;

/// The error for an operation on a link that is gone: why it died, if we remember.
pub(super) fn link_gone(st: &State, link: super::LinkId) -> io::Error {
    match st.dead.get(&link) {
        Some(why) => link_error(why),
        None => io::Error::new(io::ErrorKind::ConnectionAborted, "link lost: link closed"),
    }
}

/// Takes up to `max` bytes of queued chunks; `None` if nothing is there yet.
pub(super) fn try_read(st: &mut State, key: StreamKey, max: usize) -> Option<io::Result<Chunks>> {
    let Some(slot) = st.links.get_mut(&key.link) else {
        return Some(Err(link_gone(st, key.link)));
    };
    let mut out = Chunks::default();
    let mut got = 0;
    loop {
        match slot.core.recv(key.id, max - got) {
            Ok(Recv::Data(b)) => {
                got += b.len();
                out.push(b);
                if got >= max {
                    return Some(Ok(out));
                }
            }
            // End of stream is reported on its own, after the data before it.
            Ok(Recv::Fin) => return Some(Ok(out)),
            Ok(Recv::WouldBlock) => return (got > 0).then_some(Ok(out)),
            Err(e) if got == 0 => return Some(Err(stream_error(e))),
            Err(_) => return Some(Ok(out)),
        }
    }
}

/// Hands queued writes to the core, oldest first, as far as the stream's credit
/// allows; each is answered once all its bytes are taken. When the queue empties, a
/// half-close or close waiting behind it goes ahead.
pub(super) fn drive_writes(st: &mut State, key: StreamKey) {
    loop {
        let Some(mut pw) = st.writes.get_mut(&key).and_then(|q| q.pop_front()) else {
            break;
        };
        let Some(slot) = st.links.get_mut(&key.link) else {
            let _ = pw.reply.send(Err(link_gone(st, key.link)));
            continue;
        };
        match slot.core.send(key.id, &mut pw.data) {
            Ok(n) => {
                if n > 0 {
                    st.dirty.push(key.link);
                }
                pw.taken += n;
                if !pw.data.is_empty() {
                    // Out of credit: wait for `Writable`.
                    if let Some(q) = st.writes.get_mut(&key) {
                        q.push_front(pw);
                    }
                    return;
                }
                let _ = pw.reply.send(Ok(pw.taken));
            }
            Err(e) => {
                let _ = pw.reply.send(Err(stream_error(e)));
            }
        }
    }
    st.writes.remove(&key);
    if let Some(r) = st.shutdowns.remove(&key) {
        let res = finish(st, key);
        let _ = r.send(res);
    }
    if st.closing.remove(&key) {
        if let Some(slot) = st.links.get_mut(&key.link) {
            slot.core.close(key.id);
            st.dirty.push(key.link);
        }
    }
}

pub(super) fn finish(st: &mut State, key: StreamKey) -> io::Result<()> {
    let Some(slot) = st.links.get_mut(&key.link) else {
        return Err(link_gone(st, key.link));
    };
    let r = slot.core.finish(key.id).map_err(stream_error);
    st.dirty.push(key.link);
    r
}

/// The peer (or our core, for a violation) reset a stream: everything waiting on it
/// fails, data the peer finished sending stays readable.
pub(super) fn on_reset(st: &mut State, key: StreamKey, code: ErrorCode) {
    let err = || stream_error(StreamError::Reset(code));
    if let Some(d) = st.dials.remove(&key) {
        let _ = d.reply.send(Err(err()));
        // The dial failed: nobody holds a handle, free the state.
        if let Some(slot) = st.links.get_mut(&key.link) {
            slot.core.close(key.id);
        }
    }
    if let Some((max, reply)) = st.reads.remove(&key) {
        let r = try_read(st, key, max).unwrap_or_else(|| Err(err()));
        let _ = reply.send(r);
    }
    for pw in st.writes.remove(&key).unwrap_or_default() {
        let _ = pw.reply.send(Err(err()));
    }
    if let Some(r) = st.shutdowns.remove(&key) {
        let _ = r.send(Err(err()));
    }
    if st.closing.remove(&key) {
        if let Some(slot) = st.links.get_mut(&key.link) {
            slot.core.close(key.id);
        }
    }
}

/// Fails every pending operation on a dead link.
pub(super) fn fail_link(st: &mut State, link: super::LinkId, why: &LinkError) {
    let on = |k: &StreamKey| k.link == link;
    for (_, (_, r)) in st.reads.extract_if(|k, _| on(k)) {
        let _ = r.send(Err(link_error(why)));
    }
    for (_, q) in st.writes.extract_if(|k, _| on(k)) {
        for pw in q {
            let _ = pw.reply.send(Err(link_error(why)));
        }
    }
    for (_, r) in st.shutdowns.extract_if(|k, _| on(k)) {
        let _ = r.send(Err(link_error(why)));
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
