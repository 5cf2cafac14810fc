//! Echo at scale, over TCP loopback and over `attach` with an in-memory pipe, from
//! plain threads (blocking API) and from tokio (async API).

mod common;

use astranet::{Node, Stream};
use common::*;
use std::io::{Read, Write};
use std::time::Duration;

/// Serves echo on `l` from `threads` threads: read `len` bytes, write them back, close.
fn serve_echo(
    l: astranet::Listener,
    threads: usize,
    streams: usize,
    len: usize,
) -> Vec<std::thread::JoinHandle<()>> {
    let l = std::sync::Arc::new(l);
    (0..threads)
        .map(|t| {
            let l = l.clone();
            std::thread::spawn(move || {
                let mine = streams / threads + usize::from(t < streams % threads);
                let mut buf = vec![0u8; len];
                for _ in 0..mine {
                    let mut s = l.accept().unwrap();
                    s.read_exact(&mut buf).unwrap();
                    s.write_all(&buf).unwrap();
                }
            })
        })
        .collect()
}

/// Opens `n` streams, all at once, then writes on each, then reads every echo.
fn echo_many(client: &Node, server: &Node, n: usize) {
    let l = server.bind("echo-many").unwrap();
    let servers = serve_echo(l, 4, n, 16);
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let client = client.clone();
            std::thread::spawn(move || {
                let mine = n / 8;
                let mut streams: Vec<Stream> = (0..mine)
                    .map(|_| client.dial("echo-many").unwrap())
                    .collect();
                for (i, s) in streams.iter_mut().enumerate() {
                    s.write_all(format!("{w:03}-{i:012}").as_bytes()).unwrap();
                }
                for (i, s) in streams.iter_mut().enumerate() {
                    let mut b = [0u8; 16];
                    s.read_exact(&mut b).unwrap();
                    assert_eq!(&b, format!("{w:03}-{i:012}").as_bytes());
                    let mut end = [0u8; 1];
                    assert_eq!(s.read(&mut end).unwrap(), 0, "server closed");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    for s in servers {
        s.join().unwrap();
    }
    assert!(
        eventually(Duration::from_secs(10), || {
            client.stats().unwrap().streams == 0 && server.stats().unwrap().streams == 0
        }),
        "all stream state freed: {:?} {:?}",
        client.stats(),
        server.stats()
    );
}

#[test]
fn ten_thousand_streams_at_once_over_tcp() {
    let (client, server) = tcp_pair();
    echo_many(&client, &server, 10_000);
}

#[test]
fn ten_thousand_streams_at_once_over_attached_pipe() {
    let (client, server) = pipe_pair();
    echo_many(&client, &server, 10_000);
}

fn one_mib_transfers(client: &Node, server: &Node) {
    const LEN: usize = 1 << 20;
    let l = server.bind(":7").unwrap();
    let srv = std::thread::spawn(move || {
        let mut hs = Vec::new();
        for _ in 0..8 {
            let mut s = l.accept().unwrap();
            hs.push(std::thread::spawn(move || {
                // Echo everything until EOF, in odd-sized pieces.
                let mut buf = vec![0u8; 7919];
                loop {
                    let n = s.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    s.write_all(&buf[..n]).unwrap();
                }
                s.shutdown_write().unwrap();
            }));
        }
        for h in hs {
            h.join().unwrap();
        }
    });
    let clients: Vec<_> = (0..8u64)
        .map(|i| {
            let mut s = client.dial(&format!("{}:7", server.id())).unwrap();
            std::thread::spawn(move || {
                let data = pattern(i, LEN);
                let mut r = s.try_clone().unwrap();
                let reader = std::thread::spawn(move || {
                    let mut got = Vec::with_capacity(LEN);
                    r.read_to_end(&mut got).unwrap();
                    got
                });
                for chunk in data.chunks(100_003) {
                    s.write_all(chunk).unwrap();
                }
                s.shutdown_write().unwrap();
                assert!(reader.join().unwrap() == data, "stream {i} content");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    srv.join().unwrap();
}

#[test]
fn one_mib_transfers_checked_over_tcp() {
    let (client, server) = tcp_pair();
    one_mib_transfers(&client, &server);
}

#[test]
fn one_mib_transfers_checked_over_attached_pipe() {
    let (client, server) = pipe_pair();
    one_mib_transfers(&client, &server);
}

#[test]
fn async_api_from_tokio() {
    use futures_util::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::compat::FuturesAsyncReadCompatExt;
    let (client, server) = tcp_pair();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let l = server.bind_async("tokio-echo").unwrap();
        let srv = tokio::spawn(async move {
            let mut tasks = Vec::new();
            for _ in 0..2000 {
                let s = l.accept().await.unwrap();
                tasks.push(tokio::spawn(async move {
                    // tokio's traits through compat.
                    let mut s = s.compat();
                    let (mut r, mut w) = tokio::io::split(&mut s);
                    tokio::io::copy(&mut r, &mut w).await.unwrap();
                    tokio::io::AsyncWriteExt::shutdown(&mut w).await.unwrap();
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
        let mut tasks = Vec::new();
        for i in 0..2000u64 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut s = client.dial_async("tokio-echo").await.unwrap();
                let data = pattern(i, 1000 + i as usize);
                s.write_all(&data).await.unwrap();
                s.close().await.unwrap(); // half-close
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                assert_eq!(got, data);
            }));
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("echo finished")
                .unwrap();
        }
        srv.await.unwrap();
    });
}
