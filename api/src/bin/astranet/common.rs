//! What the subcommands share: mesh options, building a node, signals, durations.

use astranet::{Node, NodeId, Role};
use std::io;
use std::time::Duration;

/// How a node joins the mesh.
#[derive(clap::Args, Debug, Clone)]
pub struct MeshArgs {
    /// Join the node listening at ADDR (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub join: Vec<String>,
    /// Only see and dial services of this env namespace.
    #[arg(long, value_name = "ENV")]
    pub env: Option<String>,
    /// How long a dial or a join may wait (e.g. 10s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Shards (executor threads) of the node [default: number of cores].
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// TLS flags: a cluster CA (`--tls-ca`) or pinned peers (`--tls-pinned`), with this
/// node's certificate and key. Without them the node's links are plaintext.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// Cluster CA certificate (PEM): links run TLS 1.3 and accept peers whose
    /// certificate it signed. Needs --tls-cert and --tls-key.
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_key"], conflicts_with = "tls_pinned")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// This node's certificate (PEM); its id is the one the certificate names.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// A peer certificate to accept (repeatable; a file may hold several): links run
    /// TLS 1.3 and accept only these peers. Needs --tls-cert and --tls-key.
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_key"])]
    pub tls_pinned: Vec<std::path::PathBuf>,
    /// Run plaintext links to other hosts (without TLS flags, only loopback addresses
    /// are allowed): anyone who reaches the node can then join the mesh and read it.
    #[arg(long, conflicts_with_all = ["tls_ca", "tls_cert", "tls_key", "tls_pinned"])]
    pub plaintext: bool,
}

impl TlsArgs {
    /// The TLS configuration the flags name, read from disk now (None: plaintext).
    pub fn load(&self) -> io::Result<Option<astranet::TlsConfig>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        match &self.tls_ca {
            Some(ca) => astranet::TlsConfig::ca_files(ca, cert, key).map(Some),
            None if !self.tls_pinned.is_empty() => {
                astranet::TlsConfig::pinned_files(cert, key, &self.tls_pinned).map(Some)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "--tls-cert and --tls-key need a trust: --tls-ca FILE or --tls-pinned FILE",
            )),
        }
    }
}

/// Reloads the TLS files on every SIGHUP (new links use them; links up stay).
pub fn reload_on_sighup(node: &Node, tls: &TlsArgs) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        let (node, tls) = (node.clone(), tls.clone());
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match tls.load() {
                    Ok(Some(cfg)) => match node.reload_tls(cfg) {
                        Ok(()) => println!("{} reloaded its TLS certificate and trust", node.id()),
                        Err(e) => eprintln!("reloading TLS: {e}"),
                    },
                    Ok(None) => {}
                    Err(e) => eprintln!("reloading TLS: {e}"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (node, tls);
}

/// The `--role` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum RoleArg {
    /// Announces nothing and relays nothing.
    Client,
    /// Announces its services, does not relay.
    Server,
    /// Announces and relays (the default).
    Router,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Client => Role::Client,
            RoleArg::Server => Role::Server,
            RoleArg::Router => Role::Router,
        }
    }
}

/// Builds a node, listens on `listen` (printing each address bound, one line each:
/// `<id> listening on <addr>`) and joins every `--join` address.
pub fn start(m: &MeshArgs, role: Role, id: Option<NodeId>, listen: &[String]) -> io::Result<Node> {
    let mut b = Node::builder()
        .role(role)
        .dial_timeout(m.timeout)
        .join_timeout(m.timeout);
    if let Some(env) = &m.env {
        b = b.env(env);
    }
    if let Some(n) = m.shards {
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "--shards must be at least 1",
            ));
        }
        b = b.shards(n);
    }
    if let Some(id) = id {
        b = b.id(id);
    }
    if let Some(t) = m.tls.load()? {
        b = b.tls(t);
    }
    if m.tls.plaintext {
        b = b.plaintext();
    }
    let node = b.build()?;
    for l in listen {
        let addr = node
            .listen(l)
            .map_err(|e| io::Error::new(e.kind(), format!("listen on {l}: {e}")))?;
        println!("{} listening on {addr}", node.id());
    }
    for j in &m.join {
        // The engine's error already names the address.
        node.join(j)?;
    }
    Ok(node)
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Parses `500ms`, `2s`, `1.5s`, `3m`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration such as 500ms, 2s or 1m"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "" | "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// A multi-threaded tokio runtime with a few workers: streams are served by tasks, so
/// the thread count stays bounded however many streams there are.
pub fn runtime() -> io::Result<tokio::runtime::Runtime> {
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads(16)
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5h").is_err());
    }
}
