//! `astranet-node`: runs one node from the command line (used by the multi-host test,
//! handy for trying a mesh by hand). `astranet node` is the general form.
//!
//! ```text
//! astranet-node [--listen ADDR]... [--join ADDR]... [--serve NAME]
//!               [--dial NAME --bytes N] [--expect-hops H] [--timeout SECS]
//!               [--tls-ca FILE | --tls-pinned FILE...] [--tls-cert FILE --tls-key FILE]
//!               [--plaintext]
//! ```
//! With the TLS flags, every link runs TLS 1.3, mutually authenticated; SIGHUP
//! re-reads the TLS files (new links use them, links up are unaffected).
//! `--serve` echoes every stream of the service NAME (one tokio task per stream, at
//! most `--max-streams` at once) until killed. `--dial` sends N bytes to NAME, checks
//! the echo, prints the route taken and exits (0 = success). Without `--dial`, the
//! node runs (and relays for its mesh) until SIGINT or SIGTERM.

#[path = "astranet/common.rs"]
#[allow(dead_code)]
mod common;
#[path = "astranet/echo.rs"]
mod echo;

use clap::Parser;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "astranet-node",
    about = "Runs one astranet node (see also `astranet node`)"
)]
struct Args {
    /// Accept links on this TCP address (repeatable).
    #[arg(long, value_name = "ADDR")]
    listen: Vec<String>,
    /// Join the node listening at ADDR (repeatable).
    #[arg(long, value_name = "ADDR")]
    join: Vec<String>,
    /// Serve an echo service under this name.
    #[arg(long, value_name = "NAME")]
    serve: Option<String>,
    /// Most echo streams served at once; more wait in the backlog.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_streams: usize,
    /// Send --bytes to this service, check the echo and exit.
    #[arg(long, value_name = "NAME")]
    dial: Option<String>,
    /// Bytes to send with --dial.
    #[arg(long, value_name = "N", default_value_t = 1 << 20)]
    bytes: usize,
    /// Fail unless the dialed node is this many hops away.
    #[arg(long, value_name = "H")]
    expect_hops: Option<u32>,
    /// Seconds a join or dial may take.
    #[arg(long, value_name = "SECS", default_value_t = 20)]
    timeout: u64,
    #[command(flatten)]
    tls: common::TlsArgs,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("astranet-node: {e}");
        std::process::exit(1);
    }
}

fn run(a: Args) -> io::Result<()> {
    let timeout = Duration::from_secs(a.timeout);
    let mut b = astranet::Node::builder()
        .shards(1)
        .keepalive(Duration::from_millis(500), Duration::from_secs(3))
        .dial_timeout(timeout)
        .join_timeout(timeout);
    if let Some(t) = a.tls.load()? {
        b = b.tls(t);
    }
    if a.tls.plaintext {
        b = b.plaintext();
    }
    let node = b.build()?;
    for l in &a.listen {
        println!("{} listening on {}", node.id(), node.listen(l)?);
    }
    for j in &a.join {
        // The engine's error already names the address.
        node.join(j)?;
        println!("{} joined {j}", node.id());
    }
    let rt = common::runtime()?;
    if let Some(name) = &a.serve {
        let l = node.bind_async(name)?;
        println!("{} serving {name} at {}", node.id(), l.local_addr());
        let (name, max) = (name.clone(), a.max_streams);
        rt.spawn(async move {
            if let Err(e) = echo::serve(l, max).await {
                eprintln!("astranet-node: serving {name}: {e}");
            }
        });
    }
    let Some(name) = &a.dial else {
        // Nothing to dial: stay up (serving, relaying) until told to stop.
        {
            let _guard = rt.enter();
            common::reload_on_sighup(&node, &a.tls);
        }
        rt.block_on(common::stop_signal());
        node.shutdown();
        return Ok(());
    };
    let t = Instant::now();
    let mut s = node
        .dial(name)
        .map_err(|e| io::Error::new(e.kind(), format!("dial {name}: {e}")))?;
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
        .map_err(|_| io::Error::other("reader panicked"))??;
    if got != data {
        return Err(io::Error::other(format!(
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
            return Err(io::Error::other(format!("expected {h} hops, took {hops}")));
        }
    }
    Ok(())
}
