//! An echo server: accepts links on a TCP address and echoes every stream of the
//! service "echo".
//!
//! ```text
//! cargo run --release -p astranet --example echo_server -- 127.0.0.1:7000
//! ```

use std::io::{Read, Write};

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7000".into());
    let node = astranet::Node::builder().build()?;
    let bound = node.listen(&addr)?;
    let listener = node.bind("echo")?;
    println!(
        "node {} listening on {bound}, serving {:?}",
        node.id(),
        listener.local_addr()
    );
    for stream in listener.incoming() {
        let mut s = stream?;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        eprintln!("stream from {}: {e}", s.peer_addr());
                        break;
                    }
                }
            }
        });
    }
    Ok(())
}
