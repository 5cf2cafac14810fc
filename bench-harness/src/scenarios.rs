//! The six scenarios of `shared/bench/SCENARIOS.md`, written once for every system.

use crate::sys::{BoxConn, Pair};
use futures::{AsyncReadExt, AsyncWriteExt};
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Figures in the order SCENARIOS.md lists them.
    pub figures: Vec<(&'static str, f64)>,
    /// Latencies in µs, for latency scenarios.
    pub hist: Option<Histogram<u64>>,
    /// A remark for the human report (e.g. which limit stopped `tcp` in `idle`).
    pub note: Option<String>,
}

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, since: Instant) {
    let us = since.elapsed().as_micros().clamp(1, 60_000_000) as u64;
    let _ = h.record(us);
}

pub(crate) fn latency_figures(h: &Histogram<u64>) -> [(&'static str, f64); 3] {
    [
        ("p50_us", h.value_at_quantile(0.50) as f64),
        ("p99_us", h.value_at_quantile(0.99) as f64),
        ("p999_us", h.value_at_quantile(0.999) as f64),
    ]
}

/// Spawns an accept loop that runs `serve` on every stream.
fn serve<F, Fut>(
    mut pair_acceptor: Box<dyn crate::sys::Acceptor>,
    serve: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(BoxConn) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        while let Ok(s) = pair_acceptor.accept().await {
            tokio::spawn(serve(s));
        }
    })
}

pub(crate) const CHUNK: usize = 64 * 1024;

/// `bulk`: one stream, `total` bytes client→server in 64 KiB writes.
pub async fn bulk(pair: Pair, total: u64, pb: &ProgressBar) -> io::Result<Outcome> {
    let Pair {
        dialer,
        mut acceptor,
        _keep,
    } = pair;
    pb.set_length(total);
    let server = tokio::spawn(async move {
        let mut s = acceptor.accept().await?;
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0u64;
        while got < total {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "bulk ended early",
                ));
            }
            got += n as u64;
        }
        Ok::<_, io::Error>(Instant::now())
    });
    let mut c = dialer.open().await?;
    let buf = vec![0x5au8; CHUNK];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(CHUNK as u64) as usize;
        c.write_all(&buf[..n]).await?;
        sent += n as u64;
        if sent.is_multiple_of(64 * CHUNK as u64) {
            pb.set_position(sent);
        }
    }
    c.flush().await?;
    let end = server.await.map_err(io::Error::other)??;
    let secs = (end - start).as_secs_f64();
    c.close().await.ok();
    Ok(Outcome {
        figures: vec![("mb_per_s", total as f64 / 1e6 / secs)],
        hist: None,
        note: None,
    })
}

/// `fanout`: `streams` streams at once, each `per` bytes client→server.
pub async fn fanout(pair: Pair, streams: usize, per: u64, pb: &ProgressBar) -> io::Result<Outcome> {
    let Pair {
        dialer,
        mut acceptor,
        _keep,
    } = pair;
    pb.set_length(streams as u64);
    let start = Arc::new(std::sync::OnceLock::<Instant>::new());
    let st = start.clone();
    let server = tokio::spawn(async move {
        let mut tasks = Vec::with_capacity(streams);
        for _ in 0..streams {
            let mut s = acceptor.accept().await?;
            let st = st.clone();
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; CHUNK];
                let mut got = 0u64;
                while got < per {
                    let n = s.read(&mut buf).await?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "fanout ended early",
                        ));
                    }
                    got += n as u64;
                }
                let secs = st
                    .get()
                    .map_or(1.0, |t: &Instant| t.elapsed().as_secs_f64());
                Ok::<f64, io::Error>(per as f64 / secs)
            }));
        }
        let mut rates = Vec::with_capacity(streams);
        for t in tasks {
            rates.push(t.await.map_err(io::Error::other)??);
        }
        Ok::<_, io::Error>((rates, Instant::now()))
    });
    let mut conns = Vec::with_capacity(streams);
    for _ in 0..streams {
        conns.push(dialer.open().await?);
    }
    let t0 = Instant::now();
    let _ = start.set(t0);
    let mut writers = Vec::with_capacity(streams);
    for mut c in conns {
        let pb = pb.clone();
        writers.push(tokio::spawn(async move {
            let buf = vec![0xa5u8; CHUNK];
            let mut sent = 0u64;
            while sent < per {
                let n = (per - sent).min(CHUNK as u64) as usize;
                c.write_all(&buf[..n]).await?;
                sent += n as u64;
            }
            c.flush().await?;
            pb.inc(1);
            Ok::<_, io::Error>(c)
        }));
    }
    let mut keep = Vec::new();
    for w in writers {
        keep.push(w.await.map_err(io::Error::other)??);
    }
    let (rates, end) = server.await.map_err(io::Error::other)??;
    let secs = (end - t0).as_secs_f64();
    let sum: f64 = rates.iter().sum();
    let sumsq: f64 = rates.iter().map(|r| r * r).sum();
    let jain = sum * sum / (rates.len() as f64 * sumsq);
    Ok(Outcome {
        figures: vec![
            ("mb_per_s", (per * streams as u64) as f64 / 1e6 / secs),
            ("jain", jain),
        ],
        hist: None,
        note: None,
    })
}

/// `open`: `workers` concurrent workers, `total` streams: open, 1 byte each way, close.
pub async fn open(pair: Pair, workers: usize, total: u64, pb: &ProgressBar) -> io::Result<Outcome> {
    let Pair {
        dialer,
        acceptor,
        _keep,
    } = pair;
    pb.set_length(total);
    let server = serve(acceptor, |mut s| async move {
        let mut b = [0u8; 1];
        if s.read_exact(&mut b).await.is_ok() && s.write_all(&b).await.is_ok() {
            let _ = s.flush().await;
            let _ = s.close().await;
        }
    });
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let dialer = dialer.clone();
        let next = next.clone();
        let pb = pb.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = new_hist();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let t = Instant::now();
                let mut s = dialer.open().await?;
                s.write_all(b"x").await?;
                s.flush().await?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await?;
                s.close().await?;
                drop(s);
                record(&mut h, t);
                pb.inc(1);
            }
            Ok::<_, io::Error>(h)
        }));
    }
    let mut h = new_hist();
    for t in tasks {
        h.add(t.await.map_err(io::Error::other)??).ok();
    }
    let secs = start.elapsed().as_secs_f64();
    server.abort();
    let mut figures = vec![("streams_per_s", total as f64 / secs)];
    figures.extend(latency_figures(&h));
    Ok(Outcome {
        figures,
        hist: Some(h),
        note: None,
    })
}

/// Opens `n` streams and runs a closed loop of 64 B request → 64 B response on each
/// until `until` or `max_rt` round trips in all. Returns the merged histogram and the
/// round trips done.
async fn rpc_loop(
    dialer: &Arc<dyn crate::sys::Dialer>,
    n: usize,
    run_for: Duration,
    max_rt: u64,
    pb: &ProgressBar,
    at_start: impl FnOnce(),
) -> io::Result<(Histogram<u64>, u64, f64)> {
    // Each stream opens and makes one unmeasured round trip (which also acknowledges
    // it: yamux stops opening after 256 streams its acceptor has not answered), then
    // all start together.
    let ready = Arc::new(tokio::sync::Barrier::new(n + 1));
    let go = Arc::new(tokio::sync::Notify::new());
    let start_at = Arc::new(std::sync::OnceLock::<Instant>::new());
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (dialer, done, pb) = (dialer.clone(), done.clone(), pb.clone());
        let (ready, start_at) = (ready.clone(), start_at.clone());
        let go = go.clone();
        tasks.push(tokio::spawn(async move {
            let req = [0x42u8; 64];
            let mut resp = [0u8; 64];
            let warm = async {
                let mut c = dialer.open().await?;
                c.write_all(&req).await?;
                c.flush().await?;
                c.read_exact(&mut resp).await?;
                Ok::<_, io::Error>(c)
            }
            .await;
            let notified = go.notified();
            ready.wait().await;
            let mut c = warm?;
            notified.await;
            let until = *start_at.get().expect("start time set") + run_for;
            let mut h = new_hist();
            while Instant::now() < until && done.fetch_add(1, Ordering::Relaxed) < max_rt {
                let t = Instant::now();
                c.write_all(&req).await?;
                c.flush().await?;
                c.read_exact(&mut resp).await?;
                record(&mut h, t);
                pb.inc(1);
            }
            c.close().await.ok();
            Ok::<_, io::Error>(h)
        }));
    }
    ready.wait().await;
    let start = Instant::now();
    at_start();
    let _ = start_at.set(start);
    go.notify_waiters();
    let mut h = new_hist();
    for t in tasks {
        h.add(t.await.map_err(io::Error::other)??).ok();
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((h.clone(), h.len(), secs))
}

/// Echoes 64 B messages until the stream ends (any system's stream).
pub(crate) async fn echo_64<S: futures::AsyncRead + futures::AsyncWrite + Unpin>(mut s: S) {
    let mut b = [0u8; 64];
    while s.read_exact(&mut b).await.is_ok() {
        if s.write_all(&b).await.is_err() || s.flush().await.is_err() {
            return;
        }
    }
}

/// `rpc`: `n` long-lived streams in closed loops.
pub async fn rpc(
    pair: Pair,
    n: usize,
    run_for: Duration,
    max_rt: u64,
    pb: &ProgressBar,
) -> io::Result<Outcome> {
    let Pair {
        dialer,
        acceptor,
        _keep,
    } = pair;
    pb.set_length(max_rt);
    let server = serve(acceptor, echo_64);
    let (h, count, secs) = rpc_loop(&dialer, n, run_for, max_rt, pb, || {}).await?;
    server.abort();
    let mut figures = vec![("rps", count as f64 / secs)];
    figures.extend(latency_figures(&h));
    Ok(Outcome {
        figures,
        hist: Some(h),
        note: None,
    })
}

/// `hol`: `rpc` on `n` streams alone; a bulk stream alone (its rate is
/// `bulk_alone_mb_per_s`); then `rpc` again beside the bulk stream running flat out on
/// the same connection (`p99_beside_us`, `bulk_beside_mb_per_s`). The bulk rates are
/// what the server read, so a low `p99_ratio` bought by starving bulk shows.
pub async fn hol(pair: Pair, n: usize, run_for: Duration, pb: &ProgressBar) -> io::Result<Outcome> {
    let Pair {
        dialer,
        acceptor,
        _keep,
    } = pair;
    pb.set_length(3);
    // Bytes the server has read on the bulk stream.
    let bulk_read = Arc::new(AtomicU64::new(0));
    let counter = bulk_read.clone();
    // The server tells the bulk stream (first byte 0x5a) from rpc streams (0x42).
    let server = serve(acceptor, move |mut s| {
        let counter = counter.clone();
        async move {
            let mut b = [0u8; 64];
            if s.read_exact(&mut b).await.is_err() {
                return;
            }
            if b[0] == 0x5a {
                counter.fetch_add(b.len() as u64, Ordering::Relaxed);
                let mut sink = vec![0u8; CHUNK];
                while let Ok(n @ 1..) = s.read(&mut sink).await {
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
                return;
            }
            if s.write_all(&b).await.is_err() || s.flush().await.is_err() {
                return;
            }
            echo_64(s).await
        }
    });
    let quiet = ProgressBar::hidden();
    let (alone, _, _) = rpc_loop(&dialer, n, run_for, u64::MAX, &quiet, || {}).await?;
    pb.inc(1);
    let stop = Arc::new(AtomicBool::new(false));
    let mut bulk = dialer.open().await?;
    let st = stop.clone();
    let writer = tokio::spawn(async move {
        let buf = vec![0x5au8; CHUNK];
        while !st.load(Ordering::Relaxed) {
            bulk.write_all(&buf).await?;
        }
        bulk.close().await.ok();
        Ok::<_, io::Error>(())
    });
    // Let the bulk stream reach full speed first, then measure it alone.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rate = |from: (u64, Instant)| {
        let bytes = bulk_read.load(Ordering::Relaxed).saturating_sub(from.0);
        bytes as f64 / 1e6 / from.1.elapsed().as_secs_f64().max(1e-9)
    };
    let mark = || (bulk_read.load(Ordering::Relaxed), Instant::now());
    let from = mark();
    tokio::time::sleep(run_for).await;
    let bulk_alone = rate(from);
    pb.inc(1);
    let from = std::sync::Mutex::new(mark());
    let (beside, _, _) = rpc_loop(&dialer, n, run_for, u64::MAX, &quiet, || {
        *from.lock().unwrap_or_else(|e| e.into_inner()) = mark();
    })
    .await?;
    let bulk_beside = rate(*from.lock().unwrap_or_else(|e| e.into_inner()));
    stop.store(true, Ordering::Relaxed);
    writer.await.map_err(io::Error::other)??;
    pb.inc(1);
    server.abort();
    let a = alone.value_at_quantile(0.99) as f64;
    let b = beside.value_at_quantile(0.99) as f64;
    Ok(Outcome {
        figures: hol_figures(a, b, bulk_alone, bulk_beside),
        hist: Some(beside),
        note: Some(format!(
            "bulk kept {:.0} % of its alone rate beside the rpc load",
            100.0 * bulk_beside / bulk_alone.max(1e-9)
        )),
    })
}

/// hol's figures, in SCENARIOS.md's order: p99 alone and beside bulk (µs), their ratio,
/// and the bulk stream's MB/s alone and beside the rpc load.
pub fn hol_figures(
    p99_alone: f64,
    p99_beside: f64,
    bulk_alone: f64,
    bulk_beside: f64,
) -> Vec<(&'static str, f64)> {
    vec![
        ("p99_alone_us", p99_alone),
        ("p99_beside_us", p99_beside),
        ("p99_ratio", p99_beside / p99_alone.max(1.0)),
        ("bulk_alone_mb_per_s", bulk_alone),
        ("bulk_beside_mb_per_s", bulk_beside),
    ]
}

/// `idle`: open `n` streams, one byte each way so both ends know, hold them all.
/// `workers` openers and as many acceptors run concurrently, so the time to open
/// (`open_s`) measures the system, not one task answering streams one by one.
pub async fn idle(pair: Pair, n: usize, workers: usize, pb: &ProgressBar) -> io::Result<Outcome> {
    let Pair {
        dialer,
        acceptor,
        _keep,
    } = pair;
    pb.set_length(n as u64);
    let rss0 = rss_bytes();
    let start = Instant::now();
    // Set when an opener fails (the system's limit): the others stop, and an attempt
    // still waiting (e.g. for an echo from an acceptor that hit the same limit) is
    // abandoned instead of waiting forever.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    // The acceptors take turns at the one accept queue, then answer concurrently.
    let acceptor = Arc::new(tokio::sync::Mutex::new(acceptor));
    let claimed = Arc::new(AtomicU64::new(0));
    // One Vec of exactly n handles, as a single acceptor held them (per-task Vecs
    // would add their growth garbage to the RSS figure).
    let server_held = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n)));
    let mut acceptors = Vec::with_capacity(workers.max(1));
    for _ in 0..workers.max(1) {
        let (acceptor, claimed) = (acceptor.clone(), claimed.clone());
        let held = server_held.clone();
        acceptors.push(tokio::spawn(async move {
            while claimed.fetch_add(1, Ordering::Relaxed) < n as u64 {
                let r = async {
                    let mut s = acceptor.lock().await.accept().await?;
                    // One byte each way: both ends know the stream (and yamux, which
                    // acknowledges a stream only when its acceptor sends, does not
                    // stall the opener after 256 streams).
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).await?;
                    s.write_all(&b).await?;
                    s.flush().await?;
                    Ok::<_, io::Error>(s)
                }
                .await;
                match r {
                    Ok(s) => held.lock().unwrap_or_else(|e| e.into_inner()).push(s),
                    Err(e) => return Some(e),
                }
            }
            None
        }));
    }
    let next = Arc::new(AtomicU64::new(0));
    // Likewise one Vec of exactly n for the openers' handles (per-task Vecs, grown by
    // doubling and then copied into one, left their garbage in the RSS figure).
    let client_held = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n)));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let dialer = dialer.clone();
        let next = next.clone();
        let held = client_held.clone();
        let (mut stop, stop_tx) = (stop.clone(), stop_tx.clone());
        let pb = pb.clone();
        tasks.push(tokio::spawn(async move {
            while !*stop.borrow() && next.fetch_add(1, Ordering::Relaxed) < n as u64 {
                let attempt = async {
                    let mut s = dialer.open().await?;
                    s.write_all(b"1").await?;
                    s.flush().await?;
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).await?;
                    Ok::<_, io::Error>(s)
                };
                let r = tokio::select! {
                    r = attempt => r,
                    _ = stop.wait_for(|s| *s) => break,
                };
                match r {
                    Ok(s) => {
                        held.lock().unwrap_or_else(|e| e.into_inner()).push(s);
                        pb.inc(1);
                    }
                    Err(e) => {
                        let _ = stop_tx.send(true);
                        return Some(e);
                    }
                }
            }
            None
        }));
    }
    let mut first_err: Option<io::Error> = None;
    for t in tasks {
        let e = t.await.map_err(io::Error::other)?;
        if first_err.is_none() {
            first_err = e;
        }
    }
    // When an opener failed, the limit is reached: the grace period the acceptors get
    // below is no part of the time to open.
    let clients_done = start.elapsed().as_secs_f64();
    let reached = client_held.lock().unwrap_or_else(|e| e.into_inner()).len();
    // When an opener failed, acceptors may wait for streams that will never come:
    // give them a moment to report their own error (often the real limit), then stop
    // them.
    let deadline = first_err
        .is_some()
        .then(|| tokio::time::Instant::now() + Duration::from_secs(2));
    let mut server_err = None;
    for mut t in acceptors {
        let r = match deadline {
            Some(d) => match tokio::time::timeout_at(d, &mut t).await {
                Ok(r) => r,
                Err(_) => {
                    t.abort();
                    continue;
                }
            },
            None => t.await,
        };
        let e = r.map_err(io::Error::other)?;
        if server_err.is_none() {
            server_err = e;
        }
    }
    let open_s = if first_err.is_some() {
        clients_done
    } else {
        start.elapsed().as_secs_f64()
    };
    let rss1 = rss_bytes();
    // The server's error is the cause when it stopped first (e.g. out of descriptors).
    let note = server_err
        .or(first_err)
        .map(|e| format!("stopped at {reached} streams: {e} ({})", limit_hint(&e)));
    let per = rss1.saturating_sub(rss0) as f64 / reached.max(1) as f64;
    drop(server_held);
    drop(client_held);
    Ok(Outcome {
        figures: vec![
            ("streams", reached as f64),
            ("bytes_per_stream", per),
            ("open_s", open_s),
        ],
        hist: None,
        note,
    })
}

pub(crate) fn limit_hint(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EMFILE) => {
            let mut r = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
            format!(
                "RLIMIT_NOFILE = {} file descriptors per process",
                r.rlim_cur
            )
        }
        Some(libc::ENFILE) => "fs.file-max: the system-wide file limit".into(),
        Some(libc::EADDRNOTAVAIL) => {
            "ephemeral ports exhausted (net.ipv4.ip_local_port_range)".into()
        }
        Some(libc::ENOMEM) | Some(libc::ENOBUFS) => "kernel memory for sockets".into(),
        _ => "see the error".into(),
    }
}

/// Resident set size of this process.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    pages * page
}
