//! The shard-local API: tasks on the node's own shards (`Node::spawn_on`).

mod common;

use astranet::Node;
use futures_util::{AsyncReadExt, AsyncWriteExt};
use std::io;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Two TCP-linked nodes with `shards` shards each: (client, server).
fn pair(shards: usize) -> (Node, Node) {
    let server = Node::builder().shards(shards).build().unwrap();
    let client = Node::builder().shards(shards).build().unwrap();
    let addr = server.listen("127.0.0.1:0").unwrap();
    client.join(&addr.to_string()).unwrap();
    (client, server)
}

#[test]
fn echo_on_one_shard_is_local_both_ways() {
    let node = Node::builder().shards(1).build().unwrap();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let server = node
        .spawn_on(0, |local| async move {
            let l = local.bind("echo").await?;
            let _ = ready_tx.send(());
            let mut s = l.accept().await?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await?;
            s.write_all(&buf).await?;
            s.close().await?;
            io::Result::Ok(s.is_local())
        })
        .unwrap();
    ready.recv_timeout(T).unwrap();
    let client = node
        .spawn_on(0, |local| async move {
            let mut s = local.dial("echo").await?;
            let data = pattern(300_000, 1);
            s.write_all(&data).await?;
            s.close().await?;
            let mut back = Vec::new();
            s.read_to_end(&mut back).await?;
            io::Result::Ok((s.is_local(), back == data))
        })
        .unwrap();
    assert_eq!(client.join_timeout(T).unwrap().unwrap(), (true, true));
    assert!(server.join_timeout(T).unwrap().unwrap());
}

/// A task placed on the shard of the link to its peer gets local streams, moves
/// megabytes both ways intact, and interoperates with the peer's `Send` handles.
#[test]
fn task_placed_on_the_links_shard_streams_locally_over_tcp() {
    let (client, server) = pair(2);
    let l = server.bind("sink").unwrap();
    // The server answers with the blocking API: SHA-like check via a simple sum.
    let srv = std::thread::spawn(move || -> io::Result<usize> {
        use std::io::{Read, Write};
        let mut s = l.accept_timeout(T)?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        let expect = pattern(buf.len(), 7);
        assert!(buf == expect, "server got corrupted bytes");
        s.write_all(&pattern(3 << 20, 9))?;
        s.shutdown_write()?;
        Ok(buf.len())
    });
    let shard = client.shard_of(server.id()).expect("a route to the server");
    let task = client
        .spawn_on(shard, |local| async move {
            let mut s = local.dial("sink").await?;
            let local_here = s.is_local();
            s.write_all(&pattern(5 << 20, 7)).await?;
            s.close().await?;
            let mut back = Vec::new();
            s.read_to_end(&mut back).await?;
            io::Result::Ok((local_here, back == pattern(3 << 20, 9)))
        })
        .unwrap();
    assert_eq!(task.join_timeout(T).unwrap().unwrap(), (true, true));
    assert_eq!(srv.join().unwrap().unwrap(), 5 << 20);
}

/// From the other shard, the same dial works through the `Send` path.
#[test]
fn task_on_another_shard_gets_a_working_elsewhere_stream() {
    let (client, server) = pair(2);
    let shard = client.shard_of(server.id()).unwrap();
    let other = 1 - shard;
    let l = server.bind("echo").unwrap();
    let srv = std::thread::spawn(move || -> io::Result<()> {
        use std::io::{Read, Write};
        let mut s = l.accept_timeout(T)?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        s.write_all(&buf)
    });
    let task = client
        .spawn_on(other, |local| async move {
            let mut s = local.dial("echo").await?;
            s.write_all(b"across cores").await?;
            s.close().await?;
            let mut back = Vec::new();
            s.read_to_end(&mut back).await?;
            io::Result::Ok((s.is_local(), back))
        })
        .unwrap();
    let (is_local, back) = task.join_timeout(T).unwrap().unwrap();
    assert!(!is_local);
    assert_eq!(back, b"across cores");
    srv.join().unwrap().unwrap();
}

/// A writer far ahead of a reader waits for credit (it is woken by the window
/// update), many streams at once on one shard, all bytes intact.
#[test]
fn many_local_streams_with_backpressure() {
    let node = Node::builder().shards(1).build().unwrap();
    const STREAMS: usize = 100; // within the listener's backlog
    const BYTES: usize = 600_000; // beyond the initial window
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let server = node
        .spawn_on(0, |local| async move {
            let l = local.bind(":9").await?;
            let _ = ready_tx.send(());
            let mut tasks = Vec::new();
            for _ in 0..STREAMS {
                let mut s = l.accept().await?;
                tasks.push(Box::pin(async move {
                    // Read slowly at first: the writer must block on credit.
                    let mut total = 0usize;
                    let mut buf = vec![0u8; 7_000];
                    loop {
                        let n = s.read(&mut buf).await?;
                        if n == 0 {
                            return io::Result::Ok(total);
                        }
                        total += n;
                    }
                }));
            }
            let mut sum = 0;
            for r in futures_util::future::join_all(tasks).await {
                sum += r?;
            }
            io::Result::Ok(sum)
        })
        .unwrap();
    ready.recv_timeout(T).unwrap();
    let client = node
        .spawn_on(0, |local| async move {
            let mut tasks = Vec::new();
            for i in 0..STREAMS {
                let local = local.clone();
                tasks.push(Box::pin(async move {
                    let mut s = local.dial(&format!("{}:9", local.node_id())).await?;
                    s.write_all(&pattern(BYTES, i as u8)).await?;
                    s.close().await?;
                    io::Result::Ok(())
                }));
            }
            for r in futures_util::future::join_all(tasks).await {
                r?;
            }
            io::Result::Ok(())
        })
        .unwrap();
    client.join_timeout(T).unwrap().unwrap();
    assert_eq!(server.join_timeout(T).unwrap().unwrap(), STREAMS * BYTES);
}

/// The peer node dies: a local read fails with an error, it does not hang.
#[test]
fn local_read_fails_when_the_link_dies() {
    let (client, server) = pair(1);
    let l = server.bind("hold").unwrap();
    let task = client
        .spawn_on(0, |local| async move {
            let mut s = local.dial("hold").await?;
            s.write_all(b"x").await?;
            let mut buf = [0u8; 16];
            // Blocks until the server's node goes away.
            s.read(&mut buf).await
        })
        .unwrap();
    let _s = l.accept_timeout(T).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    server.shutdown();
    let r = task.join_timeout(T).unwrap();
    match r {
        Err(e) => assert!(
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
            ),
            "{e}"
        ),
        Ok(n) => assert_eq!(n, 0, "a clean end is also acceptable, data is not"),
    }
}

/// A panicking task is reported by its handle, and the shard keeps working.
#[test]
fn a_panicking_task_does_not_take_the_shard_down() {
    let node = Node::builder().shards(1).build().unwrap();
    let bad = node
        .spawn_on(0, |_local| async move {
            if std::env::var("NEVER_SET_ASTRANET").is_err() {
                panic!("task panics on purpose");
            }
        })
        .unwrap();
    assert!(bad.join_timeout(T).is_err());
    let good = node
        .spawn_on(0, |local| async move { local.shard() })
        .unwrap();
    assert_eq!(good.join_timeout(T).unwrap(), 0);
    // And the node still serves dials.
    let l = node.bind("still").unwrap();
    let _s = node.dial("still").unwrap();
    l.accept_timeout(T).unwrap();
}

/// Dropping a local listener unbinds it; a bad shard index is an error.
#[test]
fn local_listener_unbinds_on_drop_and_bad_shard_is_an_error() {
    let node = Node::builder().shards(1).build().unwrap();
    let bound = node
        .spawn_on(0, |local| async move {
            let l = local.bind("gone-soon").await?;
            let addr = l.local_addr();
            drop(l);
            io::Result::Ok(addr)
        })
        .unwrap()
        .join_timeout(T)
        .unwrap()
        .unwrap();
    assert!(common::eventually(Duration::from_secs(5), || node
        .dial_timeout(&bound.to_string(), Duration::from_millis(200))
        .is_err()));
    assert!(node.services().iter().all(|s| s.name != "gone-soon"));
    let e = node.spawn_on(5, |_| async {}).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
}
