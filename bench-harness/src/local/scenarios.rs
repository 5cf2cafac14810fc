//! The scenarios of `shared/bench/SCENARIOS.md` for thread-per-core systems: the same
//! work as `crate::scenarios`, with every stream's task on an executor of the system
//! and the client work split evenly over the client executors. The calling thread
//! only coordinates (start signals, clocks, results) and never touches a stream.

use super::{share, LocalAcceptor, LocalBox, LocalDialer, LocalSys, Results};
use crate::scenarios::{echo_64, hol_figures, latency_figures, new_hist, record, rss_bytes};
use crate::scenarios::{limit_hint, Outcome, CHUNK};
use futures::future::{select, Either, LocalBoxFuture};
use futures::{AsyncReadExt, AsyncWriteExt};
use hdrhistogram::Histogram;
use std::io;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Runs `f` on every client executor; each sends its result to `res`.
fn on_clients<T, F>(sys: &dyn LocalSys, res: &Results<T>, f: F)
where
    T: Send + 'static,
    F: Fn(usize, Rc<dyn LocalDialer>) -> LocalBoxFuture<'static, io::Result<T>>
        + Send
        + Clone
        + 'static,
{
    for i in 0..sys.sides() {
        let (tx, f) = (res.sender(), f.clone());
        sys.client(
            i,
            Box::new(move |d| {
                Box::pin(async move {
                    let _ = tx.send(f(i, d).await);
                })
            }),
        );
    }
}

/// Accepts on every server executor until the system stops, running `handle` as a
/// task per stream.
fn serve_all<F>(sys: &dyn LocalSys, handle: F)
where
    F: Fn(LocalBox) -> LocalBoxFuture<'static, ()> + Send + Clone + 'static,
{
    for i in 0..sys.sides() {
        let handle = handle.clone();
        sys.server(
            i,
            Box::new(move |a: Rc<dyn LocalAcceptor>| {
                Box::pin(async move {
                    while let Ok(s) = a.accept().await {
                        glommio::spawn_local(handle(s)).detach();
                    }
                })
            }),
        );
    }
}

/// A start signal from the coordinating thread to tasks on the executors.
#[derive(Clone)]
struct Gate(watch::Receiver<bool>);

impl Gate {
    fn new() -> (watch::Sender<bool>, Gate) {
        let (tx, rx) = watch::channel(false);
        (tx, Gate(rx))
    }

    async fn wait(mut self) {
        let _ = self.0.wait_for(|open| *open).await;
    }

    fn is_open(&self) -> bool {
        *self.0.borrow()
    }
}

/// Lets the executor's other tasks run. glommio has no cooperative budget (tokio forces
/// a yield after 128 socket operations) and its sockets try the syscall before going
/// through the ring, so a reader or writer whose socket is never empty or full would
/// never yield and would starve every other stream on its executor. A glommio user
/// yields in such loops; these scenarios do so after every 64 KiB.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

async fn read_n(s: &mut LocalBox, total: u64) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    while got < total {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stream ended early",
            ));
        }
        got += n as u64;
        yield_now().await;
    }
    Ok(())
}

async fn write_n(s: &mut LocalBox, total: u64, byte: u8) -> io::Result<()> {
    let buf = vec![byte; CHUNK];
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(CHUNK as u64) as usize;
        s.write_all(&buf[..n]).await?;
        sent += n as u64;
        yield_now().await;
    }
    s.flush().await
}

/// Keeps `v` alive until the system stops (its executors drop the task).
async fn hold<T>(v: T) {
    futures::future::pending::<()>().await;
    drop(v);
}

/// `bulk`: one stream, `total` bytes client→server in 64 KiB writes, timed until the
/// server has read the last byte.
pub fn bulk(sys: &dyn LocalSys, total: u64, limit: Duration) -> io::Result<Outcome> {
    let ends = Results::<Instant>::new(limit);
    // Every server executor accepts; the one the kernel hands the stream to reads it.
    for i in 0..sys.sides() {
        let tx = ends.sender();
        sys.server(
            i,
            Box::new(move |a| {
                Box::pin(async move {
                    let r = async {
                        let mut s = a.accept().await?;
                        read_n(&mut s, total).await?;
                        Ok(Instant::now())
                    }
                    .await;
                    let _ = tx.send(r);
                })
            }),
        );
    }
    let starts = Results::<Instant>::new(limit);
    let tx = starts.sender();
    sys.client(
        0,
        Box::new(move |d| {
            Box::pin(async move {
                let r = async {
                    let mut c = d.open().await?;
                    let start = Instant::now();
                    write_n(&mut c, total, 0x5a).await?;
                    Ok((start, c))
                }
                .await;
                match r {
                    Ok((start, c)) => {
                        let _ = tx.send(Ok(start));
                        hold(c).await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })
        }),
    );
    let start = starts.next()?;
    let end = ends.next()?;
    let secs = (end - start).as_secs_f64();
    Ok(Outcome {
        figures: vec![("mb_per_s", total as f64 / 1e6 / secs)],
        hist: None,
        note: None,
    })
}

/// `fanout`: `streams` streams at once, each `per` bytes client→server.
pub fn fanout(
    sys: &dyn LocalSys,
    streams: usize,
    per: u64,
    limit: Duration,
) -> io::Result<Outcome> {
    let start = Arc::new(OnceLock::<Instant>::new());
    let accepted = Arc::new(AtomicU64::new(0));
    let rates = Results::<(f64, Instant)>::new(limit);
    for i in 0..sys.sides() {
        let (tx, start, accepted) = (rates.sender(), start.clone(), accepted.clone());
        sys.server(
            i,
            Box::new(move |a| {
                Box::pin(async move {
                    while accepted.fetch_add(1, Ordering::Relaxed) < streams as u64 {
                        let mut s = match a.accept().await {
                            Ok(s) => s,
                            Err(e) => {
                                let _ = tx.send(Err(e));
                                return;
                            }
                        };
                        let (tx, start) = (tx.clone(), start.clone());
                        glommio::spawn_local(async move {
                            let r = read_n(&mut s, per).await.map(|()| {
                                let secs = start.get().map_or(1.0, |t| t.elapsed().as_secs_f64());
                                (per as f64 / secs, Instant::now())
                            });
                            let _ = tx.send(r);
                        })
                        .detach();
                    }
                })
            }),
        );
    }
    let opened = Results::<()>::new(limit);
    let written = Results::<()>::new(limit);
    let (go, gate) = Gate::new();
    let sides = sys.sides();
    for i in 0..sides {
        let (otx, wtx, gate) = (opened.sender(), written.sender(), gate.clone());
        sys.client(
            i,
            Box::new(move |d| {
                Box::pin(async move {
                    let mut conns = Vec::new();
                    for _ in 0..share(streams as u64, sides, i) {
                        match d.open().await {
                            Ok(c) => conns.push(c),
                            Err(e) => {
                                let _ = otx.send(Err(e));
                                return;
                            }
                        }
                    }
                    let _ = otx.send(Ok(()));
                    gate.wait().await;
                    let writers: Vec<_> = conns
                        .into_iter()
                        .map(|mut c| {
                            glommio::spawn_local(async move {
                                write_n(&mut c, per, 0xa5).await.map(|()| c)
                            })
                        })
                        .collect();
                    let mut keep = Vec::new();
                    for w in writers {
                        match w.await {
                            Ok(c) => keep.push(c),
                            Err(e) => {
                                let _ = wtx.send(Err(e));
                                return;
                            }
                        }
                    }
                    let _ = wtx.send(Ok(()));
                    hold(keep).await;
                })
            }),
        );
    }
    opened.take(sides)?;
    let t0 = Instant::now();
    let _ = start.set(t0);
    let _ = go.send(true);
    written.take(sides)?;
    let got = rates.take(streams)?;
    let end = got.iter().map(|(_, e)| *e).max().unwrap_or(t0);
    let secs = (end - t0).as_secs_f64();
    let sum: f64 = got.iter().map(|(r, _)| r).sum();
    let sumsq: f64 = got.iter().map(|(r, _)| r * r).sum();
    Ok(Outcome {
        figures: vec![
            ("mb_per_s", (per * streams as u64) as f64 / 1e6 / secs),
            ("jain", sum * sum / (got.len() as f64 * sumsq)),
        ],
        hist: None,
        note: None,
    })
}

/// `open`: `workers` concurrent workers (split over the client executors), `total`
/// streams: open, 1 byte each way, close.
pub fn open(
    sys: &dyn LocalSys,
    workers: usize,
    total: u64,
    limit: Duration,
) -> io::Result<Outcome> {
    serve_all(sys, |mut s| {
        Box::pin(async move {
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).await.is_ok() && s.write_all(&b).await.is_ok() {
                let _ = s.flush().await;
                let _ = s.close().await;
            }
        })
    });
    let next = Arc::new(AtomicU64::new(0));
    let hists = Results::<Histogram<u64>>::new(limit);
    let sides = sys.sides();
    let start = Instant::now();
    on_clients(sys, &hists, move |i, d| {
        let next = next.clone();
        Box::pin(async move {
            let tasks: Vec<_> = (0..share(workers as u64, sides, i).max(1))
                .map(|_| {
                    let (d, next) = (d.clone(), next.clone());
                    glommio::spawn_local(async move {
                        let mut h = new_hist();
                        while next.fetch_add(1, Ordering::Relaxed) < total {
                            let t = Instant::now();
                            let mut s = d.open().await?;
                            s.write_all(b"x").await?;
                            s.flush().await?;
                            let mut b = [0u8; 1];
                            s.read_exact(&mut b).await?;
                            s.close().await?;
                            drop(s);
                            record(&mut h, t);
                        }
                        Ok::<_, io::Error>(h)
                    })
                })
                .collect();
            let mut h = new_hist();
            for t in tasks {
                h.add(t.await?).ok();
            }
            Ok(h)
        })
    });
    let mut h = new_hist();
    for x in hists.take(sides)? {
        h.add(x).ok();
    }
    let secs = start.elapsed().as_secs_f64();
    let mut figures = vec![("streams_per_s", total as f64 / secs)];
    figures.extend(latency_figures(&h));
    Ok(Outcome {
        figures,
        hist: Some(h),
        note: None,
    })
}

/// Opens `n` streams (split over the client executors), makes one unmeasured round
/// trip on each, then runs closed loops of 64 B request → 64 B response until
/// `run_for` or `max_rt` round trips in all. `at_start` runs when the loops start.
/// Returns the merged histogram, the round trips and the seconds measured.
fn rpc_loop(
    sys: &dyn LocalSys,
    n: usize,
    run_for: Duration,
    max_rt: u64,
    limit: Duration,
    at_start: impl FnOnce(),
) -> io::Result<(Histogram<u64>, u64, f64)> {
    let sides = sys.sides();
    let ready = Results::<()>::new(limit);
    let hists = Results::<Histogram<u64>>::new(limit);
    let (go, gate) = Gate::new();
    let start_at = Arc::new(OnceLock::<Instant>::new());
    let done = Arc::new(AtomicU64::new(0));
    for i in 0..sides {
        let (rtx, htx, gate) = (ready.sender(), hists.sender(), gate.clone());
        let (start_at, done) = (start_at.clone(), done.clone());
        sys.client(
            i,
            Box::new(move |d| {
                Box::pin(async move {
                    let warm: Vec<_> = (0..share(n as u64, sides, i))
                        .map(|_| {
                            let d = d.clone();
                            glommio::spawn_local(async move {
                                let mut c = d.open().await?;
                                let mut resp = [0u8; 64];
                                c.write_all(&[0x42; 64]).await?;
                                c.flush().await?;
                                c.read_exact(&mut resp).await?;
                                Ok::<_, io::Error>(c)
                            })
                        })
                        .collect();
                    let mut conns = Vec::with_capacity(warm.len());
                    for w in warm {
                        match w.await {
                            Ok(c) => conns.push(c),
                            Err(e) => {
                                let _ = rtx.send(Err(e));
                                return;
                            }
                        }
                    }
                    let _ = rtx.send(Ok(()));
                    gate.wait().await;
                    let until = *start_at.get().expect("start time set") + run_for;
                    let loops: Vec<_> = conns
                        .into_iter()
                        .map(|mut c| {
                            let done = done.clone();
                            glommio::spawn_local(async move {
                                let (req, mut resp) = ([0x42u8; 64], [0u8; 64]);
                                let mut h = new_hist();
                                while Instant::now() < until
                                    && done.fetch_add(1, Ordering::Relaxed) < max_rt
                                {
                                    let t = Instant::now();
                                    c.write_all(&req).await?;
                                    c.flush().await?;
                                    c.read_exact(&mut resp).await?;
                                    record(&mut h, t);
                                }
                                c.close().await.ok();
                                Ok::<_, io::Error>(h)
                            })
                        })
                        .collect();
                    let mut h = new_hist();
                    for l in loops {
                        match l.await {
                            Ok(x) => {
                                h.add(x).ok();
                            }
                            Err(e) => {
                                let _ = htx.send(Err(e));
                                return;
                            }
                        }
                    }
                    let _ = htx.send(Ok(h));
                })
            }),
        );
    }
    ready.take(sides)?;
    let start = Instant::now();
    at_start();
    let _ = start_at.set(start);
    let _ = go.send(true);
    let mut h = new_hist();
    for x in hists.take(sides)? {
        h.add(x).ok();
    }
    let secs = start.elapsed().as_secs_f64();
    let count = h.len();
    Ok((h, count, secs))
}

/// `rpc`: `n` long-lived streams in closed loops.
pub fn rpc(
    sys: &dyn LocalSys,
    n: usize,
    run_for: Duration,
    max_rt: u64,
    limit: Duration,
) -> io::Result<Outcome> {
    serve_all(sys, |s| Box::pin(echo_64(s)));
    let (h, count, secs) = rpc_loop(sys, n, run_for, max_rt, limit, || {})?;
    let mut figures = vec![("rps", count as f64 / secs)];
    figures.extend(latency_figures(&h));
    Ok(Outcome {
        figures,
        hist: Some(h),
        note: None,
    })
}

/// `hol`: `rpc` on `n` streams alone, the bulk stream alone, then both together (see
/// `crate::scenarios::hol`).
pub fn hol(
    sys: &dyn LocalSys,
    n: usize,
    run_for: Duration,
    limit: Duration,
) -> io::Result<Outcome> {
    let bulk_read = Arc::new(AtomicU64::new(0));
    let counter = bulk_read.clone();
    serve_all(sys, move |mut s| {
        let counter = counter.clone();
        Box::pin(async move {
            let mut b = [0u8; 64];
            if s.read_exact(&mut b).await.is_err() {
                return;
            }
            if b[0] == 0x5a {
                counter.fetch_add(b.len() as u64, Ordering::Relaxed);
                let mut sink = vec![0u8; CHUNK];
                while let Ok(n @ 1..) = s.read(&mut sink).await {
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    yield_now().await;
                }
                return;
            }
            if s.write_all(&b).await.is_ok() && s.flush().await.is_ok() {
                echo_64(s).await
            }
        })
    });
    let (alone, _, _) = rpc_loop(sys, n, run_for, u64::MAX, limit, || {})?;
    let stop = Arc::new(AtomicBool::new(false));
    let bulk_done = Results::<()>::new(limit + run_for * 2);
    let (tx, st) = (bulk_done.sender(), stop.clone());
    sys.client(
        0,
        Box::new(move |d| {
            Box::pin(async move {
                let r = async {
                    let mut c = d.open().await?;
                    let buf = vec![0x5au8; CHUNK];
                    while !st.load(Ordering::Relaxed) {
                        c.write_all(&buf).await?;
                        yield_now().await;
                    }
                    c.close().await
                }
                .await;
                let _ = tx.send(r);
            })
        }),
    );
    // Let the bulk stream reach full speed first, then measure it alone.
    std::thread::sleep(Duration::from_millis(200));
    let mark = || (bulk_read.load(Ordering::Relaxed), Instant::now());
    let rate = |(b0, t0): (u64, Instant)| {
        let bytes = bulk_read.load(Ordering::Relaxed).saturating_sub(b0);
        bytes as f64 / 1e6 / t0.elapsed().as_secs_f64().max(1e-9)
    };
    let from = mark();
    std::thread::sleep(run_for);
    let bulk_alone = rate(from);
    let mut from = mark();
    let (beside, _, _) = rpc_loop(sys, n, run_for, u64::MAX, limit, || from = mark())?;
    let bulk_beside = rate(from);
    stop.store(true, Ordering::Relaxed);
    bulk_done.next()?;
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

/// `idle`: open `n` streams with `workers` openers and as many acceptors (split over
/// the executors), one byte each way, hold them all; RSS growth of the process / N.
pub fn idle(sys: &dyn LocalSys, n: usize, workers: usize, limit: Duration) -> io::Result<Outcome> {
    let sides = sys.sides();
    let rss0 = rss_bytes();
    let start = Instant::now();
    // Set when an opener fails (the system's limit): the others stop, and an attempt
    // still waiting (e.g. for an echo from an acceptor that hit the same limit) is
    // abandoned instead of waiting forever.
    let (stop_tx, stop) = Gate::new();
    let stop_tx = Arc::new(stop_tx);
    let claimed = Arc::new(AtomicU64::new(0));
    // Each side reports (streams held, first error) per executor.
    let servers = Results::<(usize, Option<io::Error>)>::new(limit);
    for i in 0..sides {
        let (tx, claimed) = (servers.sender(), claimed.clone());
        sys.server(
            i,
            Box::new(move |a| {
                Box::pin(async move {
                    let held = Rc::new(std::cell::RefCell::new(Vec::with_capacity(share(
                        n as u64, sides, i,
                    )
                        as usize)));
                    let tasks: Vec<_> = (0..share(workers as u64, sides, i).max(1))
                        .map(|_| {
                            let (a, claimed, held) = (a.clone(), claimed.clone(), held.clone());
                            glommio::spawn_local(async move {
                                while claimed.fetch_add(1, Ordering::Relaxed) < n as u64 {
                                    let mut s = a.accept().await?;
                                    let mut b = [0u8; 1];
                                    s.read_exact(&mut b).await?;
                                    s.write_all(&b).await?;
                                    s.flush().await?;
                                    held.borrow_mut().push(s);
                                }
                                Ok::<_, io::Error>(())
                            })
                        })
                        .collect();
                    let mut err = None;
                    for t in tasks {
                        if let Err(e) = t.await {
                            err.get_or_insert(e);
                        }
                    }
                    let count = held.borrow().len();
                    let _ = tx.send(Ok((count, err)));
                    hold(held).await;
                })
            }),
        );
    }
    let clients = Results::<(usize, Option<io::Error>)>::new(limit);
    let next = Arc::new(AtomicU64::new(0));
    for i in 0..sides {
        let (tx, next) = (clients.sender(), next.clone());
        let (stop, stop_tx) = (stop.clone(), stop_tx.clone());
        sys.client(
            i,
            Box::new(move |d| {
                Box::pin(async move {
                    let held = Rc::new(std::cell::RefCell::new(Vec::with_capacity(share(
                        n as u64, sides, i,
                    )
                        as usize)));
                    let tasks: Vec<_> = (0..share(workers as u64, sides, i).max(1))
                        .map(|_| {
                            let (d, next, held) = (d.clone(), next.clone(), held.clone());
                            let (stop, stop_tx) = (stop.clone(), stop_tx.clone());
                            glommio::spawn_local(async move {
                                while !stop.is_open()
                                    && next.fetch_add(1, Ordering::Relaxed) < n as u64
                                {
                                    let attempt = async {
                                        let mut s = d.open().await?;
                                        s.write_all(b"1").await?;
                                        s.flush().await?;
                                        let mut b = [0u8; 1];
                                        s.read_exact(&mut b).await?;
                                        Ok::<_, io::Error>(s)
                                    };
                                    let stopped = stop.clone().wait();
                                    let r = match select(pin!(attempt), pin!(stopped)).await {
                                        Either::Left((r, _)) => r,
                                        Either::Right(_) => break,
                                    };
                                    match r {
                                        Ok(s) => held.borrow_mut().push(s),
                                        Err(e) => {
                                            let _ = stop_tx.send(true);
                                            return Err(e);
                                        }
                                    }
                                }
                                Ok(())
                            })
                        })
                        .collect();
                    let mut err = None;
                    for t in tasks {
                        if let Err(e) = t.await {
                            err.get_or_insert(e);
                        }
                    }
                    let count = held.borrow().len();
                    let _ = tx.send(Ok((count, err)));
                    hold(held).await;
                })
            }),
        );
    }
    let mut reached = 0;
    let mut first_err = None;
    for (count, e) in clients.take(sides)? {
        reached += count;
        first_err = first_err.or(e);
    }
    // When an opener failed, the limit is reached: the grace period the acceptors get
    // below is no part of the time to open.
    let clients_done = start.elapsed().as_secs_f64();
    // After an opener failed, acceptors may wait for streams that will never come:
    // give them 2 s to report their own error (often the real limit).
    let wait = if first_err.is_some() {
        servers.within(Duration::from_secs(2))
    } else {
        servers
    };
    let mut server_err = None;
    for _ in 0..sides {
        match wait.next() {
            Ok((_, e)) => server_err = server_err.or(e),
            Err(_) if first_err.is_some() => break,
            Err(e) => return Err(e),
        }
    }
    let open_s = if first_err.is_some() {
        clients_done
    } else {
        start.elapsed().as_secs_f64()
    };
    let rss1 = rss_bytes();
    let note = server_err
        .or(first_err)
        .map(|e| format!("stopped at {reached} streams: {e} ({})", limit_hint(&e)));
    Ok(Outcome {
        figures: vec![
            ("streams", reached as f64),
            (
                "bytes_per_stream",
                rss1.saturating_sub(rss0) as f64 / reached.max(1) as f64,
            ),
            ("open_s", open_s),
        ],
        hist: None,
        note,
    })
}
