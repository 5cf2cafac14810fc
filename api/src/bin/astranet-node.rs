//! `astranet-node`: runs one node from the command line (used by the multi-host test,
//! handy for trying a mesh by hand).
//!
//! ```text
//! astranet-node [--listen ADDR]... [--join ADDR]... [--serve NAME]
//!               [--dial NAME --bytes N] [--expect-hops H] [--timeout SECS]
//! ```
//! `--serve` echoes every stream of the service NAME until killed. `--dial` sends N
//! bytes to NAME, checks the echo, prints the route taken and exits (0 = success).
//! Without either, the node runs (and relays for its mesh) until killed.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

struct Args {
    listen: Vec<String>,
    join: Vec<String>,
    serve: Option<String>,
    dial: Option<String>,
    bytes: usize,
    expect_hops: Option<u32>,
    timeout: Duration,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        listen: vec![],
        join: vec![],
        serve: None,
        dial: None,
        bytes: 1 << 20,
        expect_hops: None,
        timeout: Duration::from_secs(20),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => a.listen.push(val()?),
            "--join" => a.join.push(val()?),
            "--serve" => a.serve = Some(val()?),
            "--dial" => a.dial = Some(val()?),
            "--bytes" => a.bytes = val()?.parse().map_err(|e| format!("--bytes: {e}"))?,
            "--expect-hops" => {
                a.expect_hops = Some(val()?.parse().map_err(|e| format!("--expect-hops: {e}"))?)
            }
            "--timeout" => {
                a.timeout =
                    Duration::from_secs(val()?.parse().map_err(|e| format!("--timeout: {e}"))?)
            }
            "-h" | "--help" => {
                return Err(
                    "usage: astranet-node [--listen ADDR]... [--join ADDR]... [--serve NAME] \
                            [--dial NAME --bytes N] [--expect-hops H] [--timeout SECS]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(a)
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args) {
        eprintln!("astranet-node: {e}");
        std::process::exit(1);
    }
}

fn run(a: Args) -> std::io::Result<()> {
    let node = astranet::Node::builder()
        .shards(1)
        .keepalive(Duration::from_millis(500), Duration::from_secs(3))
        .dial_timeout(a.timeout)
        .join_timeout(a.timeout)
        .build()?;
    for l in &a.listen {
        println!("{} listening on {}", node.id(), node.listen(l)?);
    }
    for j in &a.join {
        node.join(j)?;
        println!("{} joined {j}", node.id());
    }
    if let Some(name) = &a.serve {
        let l = node.bind(name)?;
        println!("{} serving {name} at {}", node.id(), l.local_addr());
        for s in l.incoming() {
            let mut s = s?;
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s.shutdown_write();
            });
        }
    }
    if a.dial.is_none() {
        // Nothing to dial: stay up as a router until killed.
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    if let Some(name) = &a.dial {
        let t = Instant::now();
        let mut s = node.dial(name)?;
        let data: Vec<u8> = (0..a.bytes).map(|i| (i * 31 + 7) as u8).collect();
        let mut r = s.try_clone()?;
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            r.read_to_end(&mut got).map(|_| got)
        });
        s.write_all(&data)?;
        s.shutdown_write()?;
        let got = reader
            .join()
            .map_err(|_| std::io::Error::other("reader panicked"))??;
        if got != data {
            return Err(std::io::Error::other(format!(
                "echo mismatch: sent {} bytes, got {}",
                data.len(),
                got.len()
            )));
        }
        let peer = s.peer_addr().node;
        let route = node.routes().into_iter().find(|r| r.node == peer);
        let hops = route.as_ref().map_or(0, |r| r.hops);
        println!(
            "ok: {} bytes echoed by {peer} in {:?}, route {:?}",
            a.bytes,
            t.elapsed(),
            route
        );
        if let Some(h) = a.expect_hops {
            if h != hops {
                return Err(std::io::Error::other(format!(
                    "expected {h} hops, took {hops}"
                )));
            }
        }
    }
    Ok(())
}
