//! A raw-frame peer for hostile tests, built on the engine's sans-IO codec: it speaks
//! the wire protocol by hand, so a test can send any frame a broken or malicious node
//! could send (PROTOCOL.md), read the victim's frames or never read at all. Plus
//! process figures (RSS, threads), a healthy-link probe and a watchdog.
#![allow(dead_code)]

use astranet::{Node, Role};
use astranet_engine::proto::frame::{
    self, Decoded, ErrorCode, Frame, Hello, OpenHeader, RouteEntry, ServiceOp, ServicesUpdate,
};
use bytes::{Bytes, BytesMut};
use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the raw peer advertises in its HELLO.
#[derive(Debug, Clone)]
pub struct RawOpts {
    pub id: u64,
    pub roles: u16,
    pub max_frame_size: u32,
    pub initial_window: u32,
    pub max_streams: u64,
    pub keepalive_interval_ms: u32,
    pub keepalive_timeout_ms: u32,
    /// Socket write timeout: a write the victim does not take within it fails.
    pub write_timeout: Duration,
    /// Accept the victim's OPENs (WINDOW with ACK) instead of refusing them.
    pub accept_opens: bool,
    /// Keep the SERVICES updates the victim sends in [`Seen::services`].
    pub record_services: bool,
}

impl RawOpts {
    pub fn new(id: u64) -> RawOpts {
        RawOpts {
            id,
            roles: frame::ROLE_ROUTER | frame::ROLE_SERVER,
            max_frame_size: frame::MAX_PAYLOAD_LEN,
            initial_window: 64 * 1024,
            max_streams: 1 << 20,
            keepalive_interval_ms: 10_000,
            keepalive_timeout_ms: 30_000,
            write_timeout: Duration::from_secs(10),
            accept_opens: false,
            record_services: false,
        }
    }
}

/// What the background reader saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub frames: u64,
    pub opens: Vec<OpenHeader>,
    /// Stream ids of the victim's OPENs, in order.
    pub open_ids: Vec<u64>,
    pub resets: Vec<(u64, ErrorCode)>,
    pub goaways: Vec<ErrorCode>,
    pub ping_acks: HashSet<u64>,
    /// The victim's SERVICES updates, if [`RawOpts::record_services`].
    pub services: Vec<ServicesUpdate>,
    pub pings: u64,
    /// When the byte stream ended (EOF, reset or undecodable bytes).
    pub eof: Option<Instant>,
    pub eof_why: String,
}

#[derive(Default)]
pub struct Log {
    seen: Mutex<Seen>,
    cv: Condvar,
}

impl Log {
    pub fn with<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits until `cond` holds or `timeout` passes; returns whether it held.
    pub fn wait(&self, timeout: Duration, mut cond: impl FnMut(&Seen) -> bool) -> bool {
        let end = Instant::now() + timeout;
        let mut s = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if cond(&s) {
                return true;
            }
            let now = Instant::now();
            if now >= end {
                return false;
            }
            s = self
                .cv
                .wait_timeout(s, (end - now).min(Duration::from_millis(50)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn update(&self, f: impl FnOnce(&mut Seen)) {
        f(&mut self.seen.lock().unwrap_or_else(|e| e.into_inner()));
        self.cv.notify_all();
    }
}

/// A hand-driven peer on one TCP connection to a node.
pub struct RawPeer {
    pub id: u64,
    /// The victim's HELLO.
    pub hello: Hello,
    sock: TcpStream,
    writer: Arc<Mutex<TcpStream>>,
    /// Bytes read past the victim's HELLO, handed to the reader.
    leftover: Option<BytesMut>,
    parity: u64,
    next_num: u64,
    pub log: Arc<Log>,
    reader: Option<JoinHandle<()>>,
    next_ping: AtomicU64,
    accept_opens: bool,
    record_services: bool,
}

impl RawPeer {
    /// Connects, sends preamble + HELLO, reads the victim's preamble + HELLO.
    pub fn connect(addr: &str, opts: RawOpts) -> io::Result<RawPeer> {
        let sa = addr
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e}")))?;
        let sock = TcpStream::connect_timeout(&sa, Duration::from_secs(3))?;
        sock.set_nodelay(true)?;
        sock.set_write_timeout(Some(opts.write_timeout))?;
        let hello = Hello {
            min_version: frame::VERSION,
            max_version: frame::VERSION,
            node_id: opts.id,
            roles: opts.roles,
            max_frame_size: opts.max_frame_size,
            initial_window: opts.initial_window,
            max_streams: opts.max_streams,
            keepalive_interval_ms: opts.keepalive_interval_ms,
            keepalive_timeout_ms: opts.keepalive_timeout_ms,
            extensions: vec![],
        };
        let mut out = BytesMut::new();
        out.extend_from_slice(&frame::PREAMBLE);
        frame::encode(&Frame::Hello(hello), &mut out);
        (&sock).write_all(&out)?;
        // The victim's preamble and HELLO.
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = BytesMut::new();
        let mut chunk = [0u8; 4096];
        let mut preamble_done = false;
        let their = loop {
            if !preamble_done && buf.len() >= 8 {
                if buf[..8] != frame::PREAMBLE {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "bad preamble"));
                }
                let _ = buf.split_to(8);
                preamble_done = true;
            }
            if preamble_done {
                match frame::decode(&mut buf, frame::MAX_PAYLOAD_LEN) {
                    Ok(Some(Decoded::Frame(Frame::Hello(h)))) => break h,
                    Ok(None) => {}
                    Ok(Some(_)) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "first frame is not HELLO",
                        ))
                    }
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                }
            }
            let n = (&sock).read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        sock.set_read_timeout(None)?;
        let parity = u64::from(opts.id < their.node_id);
        let writer = Arc::new(Mutex::new(sock.try_clone()?));
        Ok(RawPeer {
            id: opts.id,
            hello: their,
            sock,
            writer,
            leftover: Some(buf),
            parity,
            next_num: 1,
            log: Arc::new(Log::default()),
            reader: None,
            next_ping: AtomicU64::new(1 << 63),
            accept_opens: opts.accept_opens,
            record_services: opts.record_services,
        })
    }

    /// Starts a thread that reads and decodes everything the victim sends, records it
    /// in [`RawPeer::log`], answers PINGs when the writer is idle (`auto_pong`) and
    /// refuses the victim's OPENs with RESET REFUSED.
    pub fn start_reader(&mut self, auto_pong: bool) {
        let mut r = self.sock.try_clone().expect("clone");
        let w = self.writer.clone();
        let log = self.log.clone();
        let mut buf = self.leftover.take().unwrap_or_default();
        let accept_opens = self.accept_opens;
        let record_services = self.record_services;
        self.reader = Some(
            std::thread::Builder::new()
                .name("raw-reader".into())
                .spawn(move || {
                    let mut chunk = vec![0u8; 256 * 1024];
                    loop {
                        loop {
                            match frame::decode(&mut buf, frame::MAX_PAYLOAD_LEN) {
                                Ok(None) => break,
                                Ok(Some(Decoded::Skipped)) => {}
                                Ok(Some(Decoded::Frame(f))) => {
                                    let mut reply = None;
                                    log.update(|s| {
                                        s.frames += 1;
                                        match f {
                                            Frame::Open { id, header, .. } => {
                                                s.opens.push(header);
                                                s.open_ids.push(id);
                                                reply = Some(if accept_opens {
                                                    Frame::Window {
                                                        id,
                                                        ack: true,
                                                        increment: 0,
                                                    }
                                                } else {
                                                    Frame::Reset {
                                                        id,
                                                        code: ErrorCode::REFUSED,
                                                    }
                                                });
                                            }
                                            Frame::Reset { id, code } => s.resets.push((id, code)),
                                            Frame::GoAway { code, .. } => s.goaways.push(code),
                                            Frame::Services(u) if record_services => {
                                                s.services.push(u)
                                            }
                                            Frame::Ping { ack: true, opaque } => {
                                                s.ping_acks.insert(opaque);
                                            }
                                            Frame::Ping { ack: false, opaque } => {
                                                s.pings += 1;
                                                if auto_pong {
                                                    reply = Some(Frame::Ping { ack: true, opaque });
                                                }
                                            }
                                            _ => {}
                                        }
                                    });
                                    if let Some(f) = reply {
                                        // Only when idle: a flooding writer is liveness enough,
                                        // and blocking here would stop us reading.
                                        if let Ok(mut w) = w.try_lock() {
                                            let mut out = BytesMut::new();
                                            frame::encode(&f, &mut out);
                                            let _ = w.write_all(&out);
                                        }
                                    }
                                }
                                Err(e) => {
                                    log.update(|s| {
                                        s.eof = Some(Instant::now());
                                        s.eof_why = format!("undecodable: {e}");
                                    });
                                    return;
                                }
                            }
                        }
                        match r.read(&mut chunk) {
                            Ok(0) => {
                                log.update(|s| {
                                    s.eof = Some(Instant::now());
                                    s.eof_why = "EOF".into();
                                });
                                return;
                            }
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                log.update(|s| {
                                    s.eof = Some(Instant::now());
                                    s.eof_why = e.to_string();
                                });
                                return;
                            }
                        }
                    }
                })
                .expect("spawn reader"),
        );
    }

    /// Our stream id parity: the lower node id uses odd ids (PROTOCOL.md §5.2).
    pub fn parity(&self) -> u64 {
        self.parity
    }

    /// The next stream id of ours (number n: id 2n + parity).
    pub fn next_id(&mut self) -> u64 {
        let id = 2 * self.next_num + self.parity;
        self.next_num += 1;
        id
    }

    pub fn send_raw(&self, bytes: &[u8]) -> io::Result<()> {
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(bytes)
    }

    pub fn send(&self, f: &Frame) -> io::Result<()> {
        let mut out = BytesMut::new();
        frame::encode(f, &mut out);
        self.send_raw(&out)
    }

    pub fn send_all(&self, fs: &[Frame]) -> io::Result<()> {
        let mut out = BytesMut::new();
        for f in fs {
            frame::encode(f, &mut out);
        }
        self.send_raw(&out)
    }

    pub fn routes(&self, entries: &[(u64, u8)]) -> io::Result<()> {
        let fs: Vec<Frame> = entries
            .chunks(7000)
            .map(|c| Frame::Routes {
                entries: c
                    .iter()
                    .map(|&(node, hops)| RouteEntry { node, hops })
                    .collect(),
            })
            .collect();
        self.send_all(&fs)
    }

    /// Opens a stream on the victim to service `name` (env none), with `data`.
    pub fn open_service(&mut self, name: &str, data: &[u8], fin: bool) -> io::Result<u64> {
        let id = self.next_id();
        self.send(&Frame::Open {
            id,
            fin,
            header: open_header(self.id, name),
            data: Bytes::copy_from_slice(data),
        })?;
        Ok(id)
    }

    /// Sends a PING and waits for its ACK: every frame sent before it was processed.
    pub fn sync(&self, timeout: Duration) -> bool {
        let opaque = self.next_ping.fetch_add(1, Ordering::Relaxed);
        if self.send(&Frame::Ping { ack: false, opaque }).is_err() {
            return false;
        }
        self.log.wait(timeout, |s| s.ping_acks.contains(&opaque))
    }

    /// Waits for the victim to end the byte stream.
    pub fn wait_eof(&self, timeout: Duration) -> bool {
        self.log.wait(timeout, |s| s.eof.is_some())
    }

    /// Closes the connection (both directions).
    pub fn close(mut self) {
        let _ = self.sock.shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }

    pub fn socket(&self) -> &TcpStream {
        &self.sock
    }
}

impl Drop for RawPeer {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}

pub fn open_header(src: u64, name: &str) -> OpenHeader {
    OpenHeader {
        dst_node: 0,
        dst_port: 0,
        src_node: src,
        src_port: 1 << 31,
        hop_limit: 128,
        env: Bytes::new(),
        service: Bytes::copy_from_slice(name.as_bytes()),
    }
}

pub fn svc_op(name: &str, port: u32) -> ServiceOp {
    ServiceOp {
        announce: true,
        port,
        env: Bytes::new(),
        name: Bytes::copy_from_slice(name.as_bytes()),
    }
}

pub fn addr_op(addr: &str) -> ServiceOp {
    ServiceOp {
        announce: true,
        port: 0,
        env: Bytes::from_static(b"!addr"),
        name: Bytes::from(format!("tcp:{addr}")),
    }
}

/// A full SERVICES update: `origin`'s whole set is `ops`.
pub fn full_update(origin: u64, version: u64, ops: Vec<ServiceOp>) -> Frame {
    Frame::Services(ServicesUpdate {
        origin,
        base_version: 0,
        version,
        full: true,
        hops: 0,
        ops,
        request: false,
        signed: None,
    })
}

/// A SERVICES diff from `base` to `base + 1`.
pub fn diff_update(origin: u64, base: u64, ops: Vec<ServiceOp>) -> Frame {
    Frame::Services(ServicesUpdate {
        origin,
        base_version: base,
        version: base + 1,
        full: false,
        hops: 0,
        ops,
        request: false,
        signed: None,
    })
}

pub fn encoded_len(f: &Frame) -> usize {
    let mut out = BytesMut::new();
    frame::encode(f, &mut out);
    out.len()
}

// ---------------------------------------------------------------- process figures

fn status_field(name: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident set size of this process, in bytes.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if pages > 0 {
        pages * 4096
    } else {
        status_field("VmRSS:") * 1024
    }
}

/// Threads of this process.
pub fn thread_count() -> u64 {
    status_field("Threads:")
}

pub const MIB: u64 = 1 << 20;

type Trip = Box<dyn FnOnce(String) + Send>;

/// Samples RSS and thread count every 10 ms and keeps the peaks. Armed with bars, it
/// runs a trip action (e.g. cutting the attacker off) the moment either is passed, so
/// an attack that exhausts today's node fails the test instead of the machine.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    peak_rss: Arc<AtomicU64>,
    peak_threads: Arc<AtomicU64>,
    pub base_rss: u64,
    pub base_threads: u64,
    trip: Arc<Mutex<Option<(u64, u64, Trip)>>>,
    tripped: Arc<Mutex<Option<String>>>,
    t: Option<JoinHandle<()>>,
}

impl Sampler {
    pub fn start() -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_rss = Arc::new(AtomicU64::new(0));
        let peak_threads = Arc::new(AtomicU64::new(0));
        let base = Arc::new(Mutex::new((u64::MAX, u64::MAX)));
        let trip: Arc<Mutex<Option<(u64, u64, Trip)>>> = Arc::new(Mutex::new(None));
        let tripped = Arc::new(Mutex::new(None));
        let (s, r, th, b, tr, td) = (
            stop.clone(),
            peak_rss.clone(),
            peak_threads.clone(),
            base.clone(),
            trip.clone(),
            tripped.clone(),
        );
        let t = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let (rss, threads) = (rss_bytes(), thread_count());
                r.fetch_max(rss, Ordering::Relaxed);
                th.fetch_max(threads, Ordering::Relaxed);
                let (brss, bth) = *b.lock().unwrap_or_else(|e| e.into_inner());
                let mut g = tr.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((rss_bar, thread_bar, _)) = g.as_ref() {
                    let why = if rss.saturating_sub(brss) > *rss_bar {
                        Some(format!("RSS grew by {} MiB", (rss - brss) / MIB))
                    } else if threads.saturating_sub(bth) > *thread_bar {
                        Some(format!("{} new threads", threads - bth))
                    } else {
                        None
                    };
                    if let Some(why) = why {
                        if let Some((_, _, f)) = g.take() {
                            *td.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
                            f(why);
                        }
                    }
                }
                drop(g);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        // The sampler's own thread is part of the baseline.
        std::thread::sleep(Duration::from_millis(20));
        let base_rss = rss_bytes();
        let base_threads = thread_count();
        *base.lock().unwrap_or_else(|e| e.into_inner()) = (base_rss, base_threads);
        peak_rss.store(base_rss, Ordering::Relaxed);
        peak_threads.store(base_threads, Ordering::Relaxed);
        Sampler {
            stop,
            peak_rss,
            peak_threads,
            base_rss,
            base_threads,
            trip,
            tripped,
            t: Some(t),
        }
    }

    /// Runs `f` once, as soon as RSS grows by more than `rss_bar` bytes or the thread
    /// count by more than `thread_bar`.
    pub fn arm(&self, rss_bar: u64, thread_bar: u64, f: impl FnOnce(String) + Send + 'static) {
        *self.trip.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((rss_bar, thread_bar, Box::new(f)));
    }

    /// Why the trip action ran, if it did.
    pub fn tripped(&self) -> Option<String> {
        self.tripped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Peak RSS growth above the baseline so far, in bytes.
    pub fn rss_growth(&self) -> u64 {
        self.peak_rss
            .load(Ordering::Relaxed)
            .max(rss_bytes())
            .saturating_sub(self.base_rss)
    }

    /// Peak thread count growth above the baseline so far.
    pub fn thread_growth(&self) -> u64 {
        self.peak_threads
            .load(Ordering::Relaxed)
            .max(thread_count())
            .saturating_sub(self.base_threads)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.t.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------- healthy probe

/// The victim's echo port for the probe.
pub const PROBE_PORT: u32 = 7007;

/// What a probe saw.
#[derive(Debug, Clone, Default)]
pub struct ProbeReport {
    pub rounds: u64,
    pub max_rtt: Duration,
    pub errors: Vec<String>,
}

impl ProbeReport {
    /// The healthy link never failed, made progress, and every round trip took less
    /// than `max_rtt`.
    pub fn assert_healthy(&self, what: &str, max_rtt: Duration) {
        assert!(
            self.errors.is_empty(),
            "{what}: the healthy link failed: {:?} (after {} round trips)",
            self.errors,
            self.rounds
        );
        assert!(
            self.rounds >= 5,
            "{what}: the healthy link made only {} round trips",
            self.rounds
        );
        assert!(
            self.max_rtt < max_rtt,
            "{what}: a round trip on the healthy link took {:?} (bound {max_rtt:?})",
            self.max_rtt
        );
    }
}

/// A second, well-behaved node joined to the victim doing echo round trips on one
/// long-lived stream, all the time, on its own thread.
pub struct Probe {
    pub node: Node,
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    t: Option<JoinHandle<ProbeReport>>,
    _echo: JoinHandle<()>,
}

impl Probe {
    /// Binds an echo port on `victim`, joins a fresh node to `victim_addr` and starts
    /// round trips. Panics if the healthy link cannot even be set up.
    pub fn start(victim: &Node, victim_addr: &str) -> Probe {
        let l = victim
            .bind(&format!(":{PROBE_PORT}"))
            .expect("bind probe echo port");
        let echo = std::thread::Builder::new()
            .name("probe-echo".into())
            .spawn(move || {
                while let Ok(mut s) = l.accept() {
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 4096];
                        loop {
                            match s.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if s.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    });
                }
            })
            .expect("spawn echo");
        let node = Node::builder()
            .shards(1)
            .keepalive(Duration::from_millis(200), Duration::from_secs(1))
            .role(Role::Client)
            .direct_upgrade(false)
            .dial_timeout(Duration::from_secs(3))
            .join_timeout(Duration::from_secs(5))
            .build()
            .expect("probe node");
        node.join(victim_addr).expect("probe joins the victim");
        let target = format!("{}:{PROBE_PORT}", victim.id());
        let mut s = node.dial(&target).expect("probe dials the victim");
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let rounds = Arc::new(AtomicU64::new(0));
        let rc = rounds.clone();
        let n2 = node.clone();
        let t = std::thread::Builder::new()
            .name("probe".into())
            .spawn(move || {
                let mut rep = ProbeReport::default();
                let mut s = Some(s);
                let mut seq = 0u64;
                while !st.load(Ordering::Relaxed) {
                    let Some(st_) = s.as_mut() else {
                        // After a failure: keep trying, so "after" still says something.
                        std::thread::sleep(Duration::from_millis(100));
                        match n2.dial_timeout(&target, Duration::from_secs(1)) {
                            Ok(mut ns) => {
                                let _ = ns.set_read_timeout(Some(Duration::from_secs(3)));
                                let _ = ns.set_write_timeout(Some(Duration::from_secs(3)));
                                s = Some(ns);
                            }
                            Err(e) => rep.errors.push(format!("re-dial: {e}")),
                        }
                        continue;
                    };
                    seq += 1;
                    let msg = seq.to_be_bytes();
                    let t0 = Instant::now();
                    let r = st_.write_all(&msg).and_then(|_| {
                        let mut back = [0u8; 8];
                        st_.read_exact(&mut back).and_then(|_| {
                            if back == msg {
                                Ok(())
                            } else {
                                Err(io::Error::other("echo mismatch"))
                            }
                        })
                    });
                    let rtt = t0.elapsed();
                    match r {
                        Ok(()) => {
                            rep.rounds += 1;
                            rc.fetch_add(1, Ordering::Relaxed);
                            rep.max_rtt = rep.max_rtt.max(rtt);
                        }
                        Err(e) => {
                            rep.errors
                                .push(format!("round trip {seq} after {rtt:?}: {e}"));
                            rep.max_rtt = rep.max_rtt.max(rtt);
                            s = None;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                rep
            })
            .expect("spawn probe");
        Probe {
            node,
            stop,
            rounds,
            t: Some(t),
            _echo: echo,
        }
    }

    /// Stops the round trips and reports.
    pub fn stop(mut self) -> ProbeReport {
        // "After": a few more round trips once the attack is over (up to 3 s).
        let r0 = self.rounds.load(Ordering::Relaxed);
        let end = Instant::now() + Duration::from_secs(3);
        while self.rounds.load(Ordering::Relaxed) < r0 + 5 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.stop.store(true, Ordering::Relaxed);
        let r = self
            .t
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        self.node.shutdown();
        r
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        // Also on a failed test: a node that keeps rejoining must not outlive it.
        self.stop.store(true, Ordering::Relaxed);
        self.node.shutdown();
    }
}

// ---------------------------------------------------------------- watchdog

/// Runs `f` on its own thread; if it has not finished within `limit`, fails with a
/// clear message instead of hanging the suite (the stuck thread is left behind).
pub fn watchdog<T: Send + 'static>(
    name: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(r);
        })
        .expect("spawn");
    match rx.recv_timeout(limit) {
        Ok(Ok(v)) => v,
        Ok(Err(p)) => std::panic::resume_unwind(p),
        Err(_) => panic!("{name}: still running after {limit:?}: the node hangs or deadlocks"),
    }
}
