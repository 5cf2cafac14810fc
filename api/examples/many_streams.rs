//! Two nodes in one process, joined by one TCP connection: open N streams (default
//! 100,000), all held open at once, echo one message on each, and report the time and
//! the memory each open stream costs (both ends together).
//!
//! ```text
//! cargo run --release -p astranet --example many_streams -- 100000
//! ```

use std::io::{Read, Write};
use std::time::Instant;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() -> std::io::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let server = astranet::Node::builder().shards(1).build()?;
    let client = astranet::Node::builder().shards(1).build()?;
    let addr = server.listen("127.0.0.1:0")?;
    client.join(&addr.to_string())?;
    let listener = server.bind("many")?;

    let rss0 = rss_bytes();
    let t = Instant::now();
    // Server: accept every stream, echo its message, keep it open.
    let acceptor = std::thread::spawn(move || -> std::io::Result<Vec<astranet::Stream>> {
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            let mut s = listener.accept()?;
            let mut b = [0u8; 8];
            s.read_exact(&mut b)?;
            s.write_all(&b)?;
            held.push(s);
        }
        Ok(held)
    });
    // Client: 8 threads open their share, send on each, then read every echo.
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let client = client.clone();
            std::thread::spawn(move || -> std::io::Result<Vec<astranet::Stream>> {
                let mine = n / 8 + usize::from(w < n % 8);
                let mut streams = Vec::with_capacity(mine);
                for i in 0..mine {
                    let mut s = client.dial("many")?;
                    s.write_all(&(i as u64).to_be_bytes())?;
                    streams.push(s);
                }
                for (i, s) in streams.iter_mut().enumerate() {
                    let mut b = [0u8; 8];
                    s.read_exact(&mut b)?;
                    assert_eq!(u64::from_be_bytes(b), i as u64);
                }
                Ok(streams)
            })
        })
        .collect();
    let mut client_ends = Vec::with_capacity(n);
    for w in workers {
        client_ends.extend(w.join().expect("worker")?);
    }
    let server_ends = acceptor.join().expect("acceptor")?;
    let elapsed = t.elapsed();
    let rss1 = rss_bytes();
    let cs = client.stats()?.streams;
    let ss = server.stats()?.streams;
    println!(
        "{n} streams opened and echoed in {:.2} s ({:.0} streams/s); open now: client {cs}, server {ss}",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    println!(
        "memory per open stream, both ends together: {:.0} bytes (RSS {} -> {} MiB)",
        (rss1.saturating_sub(rss0)) as f64 / n as f64,
        rss0 >> 20,
        rss1 >> 20
    );
    assert_eq!(client_ends.len(), n);
    assert_eq!(server_ends.len(), n);
    drop(client_ends);
    drop(server_ends);
    client.shutdown();
    server.shutdown();
    Ok(())
}
