//! `astranet-local`: astranet's shard-local API (`Node::spawn_on`). Two nodes joined by
//! one TCP connection, as for `astranet`; client jobs run on the client node's shards
//! and server jobs on the server node's, with `LocalStream`s. Server shard `i` listens
//! on port `BASE_PORT + i` and client shard `i` dials it. With several shards, a
//! stream whose link lives on another shard than the task's works through that
//! shard's inbox (`LocalStream::Elsewhere`); with one shard every stream is local.

use super::{run_jobs, Job, LocalAcceptor, LocalBox, LocalDialer, LocalSys, Runners};
use crate::sys::SysOpts;
use astranet::local::{Local, LocalListener};
use astranet::{Node, NodeId};
use futures::future::LocalBoxFuture;
use std::io;
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::mpsc::unbounded_channel;

const BASE_PORT: u32 = 7100;

struct Dialer {
    local: Local,
    target: String,
}

impl LocalDialer for Dialer {
    fn open(&self) -> LocalBoxFuture<'static, io::Result<LocalBox>> {
        let (local, target) = (self.local.clone(), self.target.clone());
        Box::pin(async move { Ok(Box::new(local.dial(&target).await?) as LocalBox) })
    }
}

struct Acceptor(LocalListener);

impl LocalAcceptor for Acceptor {
    fn accept(&self) -> LocalBoxFuture<'_, io::Result<LocalBox>> {
        Box::pin(async move { Ok(Box::new(self.0.accept().await?) as LocalBox) })
    }
}

/// The two nodes and, per shard, the channel its job runner listens on.
pub struct AstranetLocal {
    runners: Runners,
    _nodes: (Node, Node),
}

impl AstranetLocal {
    pub fn new(o: &SysOpts) -> io::Result<Self> {
        let build = || {
            crate::tls::secure(Node::builder(), o.tls)?
                .shards(o.shards)
                .max_streams((o.max_streams as u64 + 1024).max(1 << 20))
                .build()
        };
        let server = build()?;
        let client = build()?;
        let addr = server.listen("127.0.0.1:0")?;
        client.join(&addr.to_string())?;
        let sides = server.shards();
        let mut runners = Runners::default();
        for i in 0..sides {
            let (tx, rx) = unbounded_channel();
            let (ready_tx, ready) = std::sync::mpsc::channel();
            // The runner lives as long as its channel: detach its handle.
            let _runner = server.spawn_on(i, move |local| async move {
                let port = BASE_PORT + i as u32;
                match local.bind(&format!(":{port}")).await {
                    Ok(l) => {
                        let _ = ready_tx.send(Ok(()));
                        run_jobs(Rc::new(Acceptor(l)) as Rc<dyn LocalAcceptor>, rx).await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })?;
            ready
                .recv_timeout(Duration::from_secs(10))
                .map_err(|_| io::Error::other("server shard did not bind"))??;
            runners.servers.push(tx);
        }
        let server_id: NodeId = server.id();
        for i in 0..sides {
            let (tx, rx) = unbounded_channel();
            let target = format!("{server_id}:{}", BASE_PORT + i as u32);
            let _runner = client.spawn_on(i, move |local| async move {
                run_jobs(Rc::new(Dialer { local, target }) as Rc<dyn LocalDialer>, rx).await;
            })?;
            runners.clients.push(tx);
        }
        Ok(AstranetLocal {
            runners,
            _nodes: (server, client),
        })
    }
}

impl LocalSys for AstranetLocal {
    fn sides(&self) -> usize {
        self.runners.sides()
    }

    fn client(&self, i: usize, job: Job<Rc<dyn LocalDialer>>) {
        self.runners.client(i, job)
    }

    fn server(&self, i: usize, job: Job<Rc<dyn LocalAcceptor>>) {
        self.runners.server(i, job)
    }
}

impl Drop for AstranetLocal {
    fn drop(&mut self) {
        // Closing the channels ends the runners; the nodes shut down with `_nodes`.
        self.runners.close();
    }
}
