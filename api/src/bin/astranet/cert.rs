//! `astranet cert`: a development CA and node certificates for TLS links.

use astranet::certs::{self, CertPair, DevCa};
use astranet::NodeId;
use std::io;
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand, Debug)]
pub enum CertCmd {
    /// Make a development cluster CA: DIR/ca.pem (give it to every node) and
    /// DIR/ca.key (keep it away from the nodes).
    #[command(after_help = "Example:\n  astranet cert ca --out certs")]
    Ca {
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Make a node certificate signed by the CA in --ca: OUT/node.pem, OUT/node.key.
    /// The certificate names the node id (random unless --id).
    #[command(after_help = "Example:\n  astranet cert node --ca certs --out certs/a")]
    Node {
        /// Directory holding ca.pem and ca.key.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// Node id (16 hex digits) [default: random].
        #[arg(long, value_name = "HEX", value_parser = parse_id)]
        id: Option<NodeId>,
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Make a self-signed node certificate for pinned trust: OUT/node.pem, OUT/node.key.
    /// Give node.pem to the peers that should accept this node (--tls-pinned).
    #[command(after_help = "Example:\n  astranet cert self-signed --out certs/a")]
    SelfSigned {
        /// Node id (16 hex digits) [default: random].
        #[arg(long, value_name = "HEX", value_parser = parse_id)]
        id: Option<NodeId>,
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

fn parse_id(s: &str) -> Result<NodeId, String> {
    s.parse::<NodeId>().map_err(|e| e.to_string())
}

fn write(dir: &Path, name: &str, text: &str, secret: bool) -> io::Result<PathBuf> {
    let p = dir.join(name);
    let ctx = |e: io::Error| io::Error::new(e.kind(), format!("writing {}: {e}", p.display()));
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = o.open(&p).map_err(ctx)?;
    io::Write::write_all(&mut f, text.as_bytes()).map_err(ctx)?;
    Ok(p)
}

fn mkdir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())))
}

fn read(p: &Path) -> io::Result<String> {
    std::fs::read_to_string(p)
        .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", p.display())))
}

fn write_node(out: &Path, id: NodeId, c: &CertPair) -> io::Result<()> {
    mkdir(out)?;
    let cert = write(out, "node.pem", &c.cert_pem, false)?;
    let key = write(out, "node.key", &c.key_pem, true)?;
    println!(
        "node {id}: certificate {}, key {}",
        cert.display(),
        key.display()
    );
    Ok(())
}

pub fn run(cmd: CertCmd) -> io::Result<()> {
    match cmd {
        CertCmd::Ca { out } => {
            mkdir(&out)?;
            let ca = DevCa::generate()?;
            let cert = write(&out, "ca.pem", ca.cert_pem(), false)?;
            let key = write(&out, "ca.key", ca.key_pem(), true)?;
            println!("CA certificate {}, key {}", cert.display(), key.display());
            Ok(())
        }
        CertCmd::Node { ca, id, out } => {
            let dev = DevCa::from_pem(&read(&ca.join("ca.pem"))?, &read(&ca.join("ca.key"))?)?;
            let id = id.unwrap_or_else(NodeId::random);
            write_node(&out, id, &dev.node_cert(id)?)
        }
        CertCmd::SelfSigned { id, out } => {
            let id = id.unwrap_or_else(NodeId::random);
            write_node(&out, id, &certs::self_signed(id)?)
        }
    }
}
