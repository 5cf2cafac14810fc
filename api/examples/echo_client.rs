//! An echo client: joins the server's node, dials the service "echo" by name, sends a
//! message and prints the echo.
//!
//! ```text
//! cargo run --release -p astranet --example echo_client -- 127.0.0.1:7000 "hello"
//! ```

use std::io::{Read, Write};
use std::time::Duration;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7000".into());
    let msg = args.next().unwrap_or_else(|| "hello, astranet".into());
    let node = astranet::Node::builder().shards(1).build()?;
    node.join(&addr)?;
    let mut s = node.dial_timeout("echo", Duration::from_secs(5))?;
    s.write_all(msg.as_bytes())?;
    s.shutdown_write()?;
    let mut back = String::new();
    s.read_to_string(&mut back)?;
    println!("{} -> {back}", s.peer_addr());
    assert_eq!(back, msg);
    node.shutdown();
    Ok(())
}
