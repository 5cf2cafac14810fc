//! The `astranet` and `astranet-node` binaries, run as processes on 127.0.0.1.
#![cfg(feature = "cli")]

mod common;

use astranet::Node;
use common::{eventually, pattern};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_astranet");
const NODE_BIN: &str = env!("CARGO_BIN_EXE_astranet-node");

/// A child process, killed when dropped, with its stdout lines on a channel.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(bin: &str, args: &[&str]) -> Proc {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines }
    }

    /// The first stdout line containing `pat`, within 20 s.
    fn line_with(&self, pat: &str) -> String {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(pat) => return l,
                Ok(_) => {}
                Err(e) => panic!("no line with {pat:?} within 20 s: {e}"),
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `astranet node --listen 127.0.0.1:0 ...`; returns the process and its address.
fn router(extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["node", "--listen", "127.0.0.1:0", "--shards", "1"];
    args.extend_from_slice(extra);
    let p = Proc::spawn(BIN, &args);
    let l = p.line_with("listening on");
    let addr = l.rsplit(' ').next().unwrap().to_string();
    (p, addr)
}

/// Runs a command to completion within 30 s, feeding it `stdin`; returns stdout.
fn run(args: &[&str], stdin: &[u8]) -> String {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    // Feed stdin and drain stdout and stderr at once, so no pipe fills up.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
        // Dropping `input` closes stdin: end of input.
    });
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("astranet {args:?} did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    writer.join().unwrap();
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(
        status.success(),
        "astranet {args:?}: {status}\n{}",
        String::from_utf8_lossy(&err)
    );
    String::from_utf8(out).unwrap()
}

fn threads_of(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn help_lists_every_subcommand_with_examples() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for sub in [
        "node", "cat", "forward", "expose", "services", "routes", "links",
    ] {
        assert!(text.contains(sub), "--help lacks {sub}: {text}");
    }
    assert!(text.contains("Examples:"), "{text}");
    // Bad input: a clear message and a failing status, no panic.
    let out = Command::new(BIN)
        .args(["cat", "--timeout", "soon", "echo"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected a duration"));
    let out = Command::new(BIN)
        .args(["cat", "--join", "127.0.0.1:1", "--timeout", "200ms", "echo"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("astranet: join 127.0.0.1:1"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn cat_round_trips_through_an_echo_service() {
    let (_r, addr) = router(&["--serve", "echo"]);
    let data = pattern(7, 300_000);
    let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
    let out = run(
        &["cat", "--join", &addr, "--shards", "1", "echo"],
        hex.as_bytes(),
    );
    assert_eq!(out.len(), hex.len());
    assert!(out == hex, "echo differs");
}

/// TCP client → forward (process) → router (process) → expose (process) → TCP
/// server, bytes checked both ways, half-close honoured.
#[test]
fn forward_and_expose_across_processes() {
    let (_r, addr) = router(&[]);
    // The TCP server: reads to EOF (the client's half-close), answers with the
    // bytes reversed, then closes.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = server.local_addr().unwrap().to_string();
    let (seen_tx, seen_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut s, _) = server.accept().unwrap();
            let seen_tx = seen_tx.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                s.read_to_end(&mut got).unwrap();
                seen_tx.send(got.len()).unwrap();
                got.reverse();
                s.write_all(&got).unwrap();
                s.shutdown(Shutdown::Write).unwrap();
            });
        }
    });
    let e = Proc::spawn(
        BIN,
        &[
            "expose",
            "--join",
            &addr,
            "--shards",
            "1",
            "db",
            &server_addr,
        ],
    );
    e.line_with("exposing db");
    let f = Proc::spawn(
        BIN,
        &[
            "forward",
            "--join",
            &addr,
            "--shards",
            "1",
            "127.0.0.1:0",
            "db",
        ],
    );
    let line = f.line_with("forwarding");
    let local = line.split(' ').nth(1).unwrap().to_string();

    for (i, len) in [(0u64, 1usize << 20), (1, 10)] {
        let mut c = TcpStream::connect(&local).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let data = pattern(i, len);
        c.write_all(&data).unwrap();
        // Nothing comes back before the half-close: the server waits for EOF.
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut b = [0u8; 1];
        let early = c.read(&mut b);
        assert!(early.is_err(), "no reply before the half-close: {early:?}");
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        assert_eq!(
            seen_rx.recv_timeout(Duration::from_secs(20)).unwrap(),
            len,
            "server saw EOF after every byte"
        );
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap(); // ends: the server's close crossed too
        let mut want = data;
        want.reverse();
        assert!(back == want, "reply differs ({} bytes)", back.len());
    }
}

/// `services --json` and `routes --json` parse and match the joined node's view.
#[test]
fn services_and_routes_json_match_the_nodes_view() {
    let n = Node::builder().shards(1).build().unwrap();
    let m = Node::builder()
        .shards(1)
        .direct_upgrade(false)
        .build()
        .unwrap();
    let addr = n.listen("127.0.0.1:0").unwrap().to_string();
    m.join(&addr).unwrap();
    let _l1 = n.bind("alpha:80").unwrap();
    let _l2 = n.bind("beta").unwrap();
    let _l3 = m.bind("gamma").unwrap();
    assert!(eventually(Duration::from_secs(10), || n.services().len() == 3));

    let out = run(
        &["services", "--join", &addr, "--wait", "1s", "--json"],
        b"",
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut got: Vec<(String, String, u64)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let addr = s["addr"].as_str().unwrap().to_string();
            assert_eq!(
                addr,
                format!("{}:{}", s["node"].as_str().unwrap(), s["port"])
            );
            (
                s["name"].as_str().unwrap().to_string(),
                addr,
                s["hops"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut want: Vec<(String, String, u64)> = n
        .services()
        .iter()
        .map(|s| (s.name.clone(), s.addr.to_string(), u64::from(s.hops) + 1))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);

    let out = run(&["routes", "--join", &addr, "--wait", "1s", "--json"], b"");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let got: Vec<(String, String, u64)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["node"].as_str().unwrap().to_string(),
                r["next_hop"].as_str().unwrap().to_string(),
                r["hops"].as_u64().unwrap(),
            )
        })
        .collect();
    // The CLI's node reaches N directly and everything N reaches through N.
    let n_id = n.id().to_string();
    assert!(got.contains(&(n_id.clone(), n_id.clone(), 1)), "{got:?}");
    for r in n.routes() {
        if r.node == n.id() {
            continue;
        }
        let want = (r.node.to_string(), n_id.clone(), u64::from(r.hops) + 1);
        assert!(got.contains(&want), "{want:?} missing from {got:?}");
    }
    assert!(got.iter().any(|r| r.0 == m.id().to_string() && r.2 == 2));

    let out = run(
        &["links", "--join", &addr, "--wait", "200ms", "--json"],
        b"",
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["links"].as_u64(), Some(1));
    let list = v["list"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["peer"], serde_json::json!(n_id));
    assert_eq!(list[0]["addr"], serde_json::json!(addr));

    let table = run(&["services", "--join", &addr, "--wait", "1s"], b"");
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("gamma"), "{table}");
}

/// 3,000 concurrent streams to a node's echo service: the node serves them all with
/// a bounded number of threads, for `astranet node` and for `astranet-node`.
#[test]
fn echo_serving_keeps_threads_bounded_under_3000_streams() {
    for bin in ["astranet node", "astranet-node"] {
        let mut p = if bin == "astranet node" {
            Proc::spawn(
                BIN,
                &[
                    "node",
                    "--listen",
                    "127.0.0.1:0",
                    "--shards",
                    "1",
                    "--serve",
                    "echo",
                ],
            )
        } else {
            Proc::spawn(NODE_BIN, &["--listen", "127.0.0.1:0", "--serve", "echo"])
        };
        let addr = p
            .line_with("listening on")
            .rsplit(' ')
            .next()
            .unwrap()
            .to_string();
        p.line_with("serving echo");
        let before = threads_of(p.pid());

        let client = Node::builder().shards(1).build().unwrap();
        client.join(&addr).unwrap();
        assert!(eventually(Duration::from_secs(10), || client
            .services()
            .iter()
            .any(|s| s.name == "echo")));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let peak = rt.block_on(async {
            use futures_util::io::{AsyncReadExt, AsyncWriteExt};
            // Open all 3,000, write on each, and only then read the echoes: all are
            // open at the server at once.
            let mut streams = Vec::new();
            for _ in 0..3000 {
                streams.push(client.dial_async("echo"));
            }
            let mut open = Vec::new();
            for s in streams {
                open.push(s.await.unwrap());
            }
            for (i, s) in open.iter_mut().enumerate() {
                s.write_all(format!("{i:08}").as_bytes()).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let peak = threads_of(p.pid());
            for (i, s) in open.iter_mut().enumerate() {
                let mut b = [0u8; 8];
                s.read_exact(&mut b).await.unwrap();
                assert_eq!(&b, format!("{i:08}").as_bytes());
            }
            peak
        });
        assert!(p.alive(), "{bin} crashed");
        let after = threads_of(p.pid());
        assert!(
            peak <= before + 4 && after <= before + 4 && peak <= 32,
            "{bin}: threads {before} before, {peak} with 3,000 streams, {after} after"
        );
        client.shutdown();
    }
}

/// GETs `path` from `addr` over plain HTTP/1.1; returns the body.
fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    body.to_string()
}

/// The value of the first sample of `series` in a Prometheus text body.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn metrics_scrape_has_the_documented_series_and_they_move_under_load() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let maddr = format!("127.0.0.1:{port}");
    let (p, addr) = router(&["--serve", "echo", "--metrics", &maddr]);
    p.line_with("metrics on");
    let client = Node::builder().shards(1).build().unwrap();
    client.join(&addr).unwrap();
    // The exporter records once a second: wait until it saw the link and its first
    // RTT (the PING answered after the handshake).
    let mut before = String::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            before = http_get(&maddr, "/metrics");
            sample(&before, "astranet_links").is_some_and(|v| v >= 1.0)
                && sample(&before, "astranet_link_rtt_seconds").is_some()
        }),
        "no link or RTT in the scrape: {before}"
    );
    for series in [
        "astranet_links",
        "astranet_streams",
        "astranet_routes",
        "astranet_bytes_in_total",
        "astranet_bytes_out_total",
        "astranet_frames_in_total",
        "astranet_streams_opened_total",
        "astranet_limit_hits_total",
        "astranet_link_rtt_seconds",
    ] {
        assert!(
            sample(&before, series).is_some(),
            "{series} missing:\n{before}"
        );
    }
    // Load: 1 MiB echoed.
    let data = pattern(7, 1 << 20);
    let mut s = client.dial("echo").unwrap();
    let mut r = s.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        r.read_to_end(&mut got).map(|_| got)
    });
    s.write_all(&data).unwrap();
    s.shutdown_write().unwrap();
    assert_eq!(reader.join().unwrap().unwrap(), data);
    let bytes = |b: &str| sample(b, "astranet_bytes_in_total").unwrap();
    let opened = |b: &str| sample(b, "astranet_streams_opened_total").unwrap();
    let mut after = String::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            after = http_get(&maddr, "/metrics");
            bytes(&after) >= bytes(&before) + (1 << 20) as f64 && opened(&after) > opened(&before)
        }),
        "counters did not move: before {} / {}, after {} / {}",
        bytes(&before),
        opened(&before),
        bytes(&after),
        opened(&after)
    );
    client.shutdown();
}
