//! Multi-host: three network namespaces joined by veth pairs, A–B and B–C, with no IP
//! route between A and C. A dials C's service by name and talks to it through B.
//!
//! Needs root and `ip netns`; where they are missing the test says so on stderr and
//! returns without checking anything (it never pretends to have passed a check).

#![cfg(feature = "cli")] // runs the `astranet-node` binary

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Namespaces and processes, removed however the test ends.
struct Hosts {
    ns: Vec<String>,
    children: Vec<Child>,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.ns {
            let _ = ip(&["netns", "del", n]);
        }
    }
}

fn spawn_in(ns: &str, args: &[String]) -> std::io::Result<Child> {
    Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_astranet-node")])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
}

fn wait_with_limit(mut c: Child, limit: Duration) -> Result<String, String> {
    let end = Instant::now() + limit;
    loop {
        match c.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = c.kill();
                return Err(format!("did not finish within {limit:?}"));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    let out = c.wait_with_output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("exited with {}: {stdout}", out.status))
    }
}

#[test]
fn a_reaches_c_only_through_b_across_namespaces() {
    across_namespaces(false);
}

/// The same with every link on TLS 1.3 (certificates of a development CA).
#[test]
fn a_reaches_c_only_through_b_across_namespaces_over_tls() {
    across_namespaces(true);
}

/// `--tls-*` flags for one node, with a certificate of `ca` written under `dir`.
fn tls_flags(ca: &astranet::certs::DevCa, dir: &std::path::Path, host: &str) -> Vec<String> {
    let c = ca.node_cert(astranet::NodeId::random()).unwrap();
    let (cert, key) = (
        dir.join(format!("{host}.pem")),
        dir.join(format!("{host}.key")),
    );
    std::fs::write(&cert, &c.cert_pem).unwrap();
    std::fs::write(&key, &c.key_pem).unwrap();
    // Written once, before any node starts (a node reads it at start).
    let ca_file = dir.join("ca.pem");
    if !ca_file.exists() {
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    }
    [
        ("--tls-ca", &ca_file),
        ("--tls-cert", &cert),
        ("--tls-key", &key),
    ]
    .iter()
    .flat_map(|(f, p)| [f.to_string(), p.display().to_string()])
    .collect()
}

fn across_namespaces(tls: bool) {
    let tag = format!(
        "{}{}",
        std::process::id() % 100_000,
        if tls { "t" } else { "" }
    );
    let names: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|h| format!("astr{h}{tag}"))
        .collect();
    if let Err(e) = ip(&["netns", "add", &names[0]]) {
        eprintln!("SKIPPED a_reaches_c_only_through_b_across_namespaces (tls={tls}): network namespaces are unavailable here ({e}); run the tests as root on Linux with iproute2 to exercise it");
        return;
    }
    let dir = std::env::temp_dir().join(format!("astranet-netns-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ca = astranet::certs::DevCa::generate().unwrap();
    let flags = |host: &str| -> Vec<String> {
        if tls {
            tls_flags(&ca, &dir, host)
        } else {
            // Plaintext beyond loopback must be chosen explicitly.
            vec!["--plaintext".to_string()]
        }
    };
    let with = |args: &[&str], host: &str| -> Vec<String> {
        args.iter()
            .map(|s| s.to_string())
            .chain(flags(host))
            .collect()
    };
    let mut hosts = Hosts {
        ns: vec![names[0].clone()],
        children: vec![],
    };
    let (na, nb, nc) = (&names[0], &names[1], &names[2]);
    let setup = || -> Result<(), String> {
        for n in [nb, nc] {
            ip(&["netns", "add", n])?;
        }
        let (ab_a, ab_b) = (format!("va{tag}"), format!("vb{tag}"));
        let (bc_b, bc_c) = (format!("wb{tag}"), format!("wc{tag}"));
        ip(&["link", "add", &ab_a, "type", "veth", "peer", "name", &ab_b])?;
        ip(&["link", "add", &bc_b, "type", "veth", "peer", "name", &bc_c])?;
        for (dev, ns) in [(&ab_a, na), (&ab_b, nb), (&bc_b, nb), (&bc_c, nc)] {
            ip(&["link", "set", dev, "netns", ns])?;
        }
        for (ns, dev, addr) in [
            (na, &ab_a, "10.231.1.1/24"),
            (nb, &ab_b, "10.231.1.2/24"),
            (nb, &bc_b, "10.231.2.2/24"),
            (nc, &bc_c, "10.231.2.3/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        for ns in [na, nb, nc] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    };
    hosts.ns.extend([nb.clone(), nc.clone()]);
    setup().expect("namespace setup");
    // A has no IP route to C: only the overlay can connect them.
    assert!(
        ip(&["-n", na, "route", "get", "10.231.2.3"]).is_err(),
        "A must not have an IP route to C"
    );
    hosts.children.push(
        spawn_in(
            nb,
            &with(
                &["--listen", "10.231.1.2:7000", "--listen", "10.231.2.2:7000"],
                "b",
            ),
        )
        .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    hosts.children.push(
        spawn_in(
            nc,
            &with(&["--join", "10.231.2.2:7000", "--serve", "echo"], "c"),
        )
        .unwrap(),
    );
    let a = spawn_in(
        na,
        &with(
            &[
                "--join",
                "10.231.1.2:7000",
                "--dial",
                "echo",
                "--bytes",
                "1048576",
                "--expect-hops",
                "2",
                "--timeout",
                "20",
            ],
            "a",
        ),
    )
    .unwrap();
    let out = wait_with_limit(a, Duration::from_secs(60)).expect("A's dial through B");
    assert!(out.contains("ok: 1048576 bytes echoed"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
