//! `astranet`: run a node, talk to services, carry TCP in and out of the mesh, and
//! look at the mesh, from the command line. `astranet --help` lists the subcommands.

mod cert;
mod common;
mod echo;
mod mesh;

use astranet::forward::{expose, forward, ForwardConfig};
use astranet::{NodeId, Role, TokioStream};
use clap::{Parser, Subcommand};
use common::{parse_duration, runtime, start, stop_signal, MeshArgs, RoleArg};
use std::io;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const EXAMPLES: &str = "\
Examples:
  # A router that others join, and a node serving the echo service through it:
  astranet node --listen 0.0.0.0:7000
  astranet node --join 10.0.0.1:7000 --serve echo

  # Talk to a service (stdin to the stream, the stream to stdout):
  echo hello | astranet cat --join 10.0.0.1:7000 echo

  # Publish a local TCP server as the service `db`, and reach it from elsewhere:
  astranet expose --join 10.0.0.1:7000 db 127.0.0.1:5432
  astranet forward --join 10.0.0.1:7000 127.0.0.1:15432 db

  # TLS: a development CA, a node certificate, a node that requires TLS:
  astranet cert ca --out certs
  astranet cert node --ca certs --out certs/a
  astranet node --listen 0.0.0.0:7000 --tls-ca certs/ca.pem \
      --tls-cert certs/a/node.pem --tls-key certs/a/node.key

  # What the mesh looks like:
  astranet services --join 10.0.0.1:7000
  astranet routes --join 10.0.0.1:7000 --json";

#[derive(Parser, Debug)]
#[command(
    name = "astranet",
    version,
    about = "Millions of streams between machines over one link per pair, on a flat \
             virtual network",
    after_help = EXAMPLES
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a node (and relay for the mesh) until SIGINT or SIGTERM.
    #[command(after_help = "Example:\n  astranet node --listen 0.0.0.0:7000 --serve echo")]
    Node(NodeArgs),
    /// Netcat over the mesh: stdin to a stream, the stream to stdout.
    ///
    /// The end of stdin half-closes the stream; the command exits when the stream ends.
    #[command(after_help = "Example:\n  echo hello | astranet cat --join 127.0.0.1:7000 echo")]
    Cat(CatArgs),
    /// Carry each connection to a local TCP port to a mesh service.
    #[command(after_help = "Example:\n  astranet forward --join 10.0.0.1:7000 127.0.0.1:15432 db")]
    Forward(ForwardArgs),
    /// Publish a local TCP server as a mesh service.
    #[command(after_help = "Example:\n  astranet expose --join 10.0.0.1:7000 db 127.0.0.1:5432")]
    Expose(ExposeArgs),
    /// List the services the mesh offers (as seen from a node that joins it).
    #[command(after_help = "Example:\n  astranet services --join 127.0.0.1:7000 --json")]
    Services(QueryArgs),
    /// List the nodes reachable, with next hop and distance.
    #[command(after_help = "Example:\n  astranet routes --join 127.0.0.1:7000")]
    Routes(QueryArgs),
    /// Show the links of a node that joins the mesh (counts and direct neighbours).
    #[command(after_help = "Example:\n  astranet links --join 127.0.0.1:7000 --json")]
    Links(QueryArgs),
    /// Make development certificates for TLS links (a CA, node certificates).
    #[command(subcommand)]
    Cert(cert::CertCmd),
}

#[derive(clap::Args, Debug)]
struct NodeArgs {
    /// Accept links from other nodes on this TCP address (repeatable).
    #[arg(long, value_name = "ADDR")]
    listen: Vec<String>,
    #[command(flatten)]
    mesh: MeshArgs,
    /// Serve an echo service under this name (repeatable).
    #[arg(long, value_name = "NAME")]
    serve: Vec<String>,
    /// What the node does for the mesh.
    #[arg(long, value_enum, default_value = "router")]
    role: RoleArg,
    /// Node id (16 hex digits) instead of a random one.
    #[arg(long, value_name = "HEX", value_parser = parse_id)]
    id: Option<NodeId>,
    /// Most echo streams served at once; more wait in the backlog.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_streams: usize,
    /// Serve the node's figures as Prometheus text on this address (GET /metrics).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

#[derive(clap::Args, Debug)]
struct CatArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    /// Where to connect: `name`, `name:port` or `<node id>:port`.
    target: String,
}

#[derive(clap::Args, Debug)]
struct ForwardArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    /// Also accept links from other nodes on this TCP address (repeatable).
    #[arg(long, value_name = "ADDR")]
    listen: Vec<String>,
    /// Most connections carried at once; more wait in the TCP backlog.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_conns: usize,
    /// Local TCP address to listen on, e.g. 127.0.0.1:15432.
    local: String,
    /// Mesh address to carry connections to: `name`, `name:port` or `<node id>:port`.
    target: String,
}

#[derive(clap::Args, Debug)]
struct ExposeArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    /// Also accept links from other nodes on this TCP address (repeatable).
    #[arg(long, value_name = "ADDR")]
    listen: Vec<String>,
    /// Most connections carried at once; more wait in the listener's backlog.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_conns: usize,
    /// What the node does for the mesh.
    #[arg(long, value_enum, default_value = "server")]
    role: RoleArg,
    /// Service to publish: `name` or `name:port`.
    name: String,
    /// TCP server to carry its streams to, e.g. 127.0.0.1:5432.
    tcp: String,
}

#[derive(clap::Args, Debug)]
struct QueryArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    /// How long to let discovery settle after joining; the listing is printed sooner
    /// once no change came for a quarter of it.
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_duration)]
    wait: Duration,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_id(s: &str) -> Result<NodeId, String> {
    s.parse::<NodeId>().map_err(|e| e.to_string())
}

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("astranet: {e}");
            1
        }
    };
    let _ = io::Write::flush(&mut io::stdout());
    // Exit without waiting for a thread `cat` may leave blocked reading stdin.
    std::process::exit(code);
}

fn run(cli: Cli) -> io::Result<()> {
    if let Cmd::Cert(c) = cli.cmd {
        return cert::run(c);
    }
    let rt = runtime()?;
    match cli.cmd {
        Cmd::Cert(_) => unreachable!("handled above"),
        Cmd::Node(a) => {
            let node = start(&a.mesh, a.role.into(), a.id, &a.listen)?;
            let _guard = rt.enter();
            common::reload_on_sighup(&node, &a.mesh.tls);
            if let Some(addr) = a.metrics {
                metrics_exporter_prometheus::PrometheusBuilder::new()
                    .with_http_listener(addr)
                    .install()
                    .map_err(|e| io::Error::other(format!("--metrics {addr}: {e}")))?;
                println!("{} metrics on http://{addr}/metrics", node.id());
                let n = node.clone();
                rt.spawn(async move {
                    let every = std::time::Duration::from_secs(1);
                    if let Err(e) = astranet::metrics::publish(n, every).await {
                        eprintln!("astranet: metrics: {e}");
                    }
                });
            }
            for name in &a.serve {
                let l = node.bind_async(name)?;
                println!("{} serving {name} at {}", node.id(), l.local_addr());
                let (name, max) = (name.clone(), a.max_streams);
                rt.spawn(async move {
                    if let Err(e) = echo::serve(l, max).await {
                        eprintln!("astranet: serving {name}: {e}");
                    }
                });
            }
            rt.block_on(stop_signal());
            node.shutdown();
            Ok(())
        }
        Cmd::Cat(a) => {
            let node = start(&a.mesh, Role::Client, None, &[])?;
            let r = rt.block_on(cat(&node, &a.target));
            node.shutdown();
            r
        }
        Cmd::Forward(a) => {
            let node = start(&a.mesh, Role::Client, None, &a.listen)?;
            rt.block_on(async {
                let l = tokio::net::TcpListener::bind(&a.local)
                    .await
                    .map_err(|e| io::Error::new(e.kind(), format!("listen on {}: {e}", a.local)))?;
                println!("forwarding {} to {}", l.local_addr()?, a.target);
                let cfg = config(a.max_conns);
                forward(node.clone(), l, a.target, cfg, stop_signal()).await
            })?;
            node.shutdown();
            Ok(())
        }
        Cmd::Expose(a) => {
            let node = start(&a.mesh, a.role.into(), None, &a.listen)?;
            let l = node.bind_async(&a.name)?;
            println!("exposing {} at {} to {}", a.name, l.local_addr(), a.tcp);
            let cfg = config(a.max_conns);
            let r = rt.block_on(expose(l, a.tcp, cfg, stop_signal()));
            node.shutdown();
            r
        }
        Cmd::Services(q) => query(&rt, q, mesh::What::Services),
        Cmd::Routes(q) => query(&rt, q, mesh::What::Routes),
        Cmd::Links(q) => query(&rt, q, mesh::What::Links),
    }
}

fn config(max_conns: usize) -> ForwardConfig {
    ForwardConfig::default()
        .max_connections(max_conns)
        .on_error(|e| eprintln!("astranet: {e}"))
}

fn query(rt: &tokio::runtime::Runtime, q: QueryArgs, what: mesh::What) -> io::Result<()> {
    let node = start(&q.mesh, Role::Client, None, &[])?;
    let r = rt.block_on(mesh::show(&node, what, q.wait, q.json));
    node.shutdown();
    r
}

/// stdin to the stream (then half-close), the stream to stdout, until the stream ends.
async fn cat(node: &astranet::Node, target: &str) -> io::Result<()> {
    let s = node
        .dial_async(target)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("dial {target}: {e}")))?;
    let (mut r, mut w) = tokio::io::split(TokioStream::new(s));
    let up = async {
        tokio::io::copy(&mut tokio::io::stdin(), &mut w).await?;
        w.shutdown().await
    };
    let down = async {
        let mut out = tokio::io::stdout();
        tokio::io::copy(&mut r, &mut out).await?;
        out.flush().await
    };
    tokio::pin!(up, down);
    tokio::select! {
        r = &mut down => r,
        r = &mut up => {
            r?;
            down.await
        }
    }
}
