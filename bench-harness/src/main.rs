//! astranet-bench: the scenarios of `shared/bench/SCENARIOS.md`, for astranet, plain TCP
//! and yamux-rs, measured side by side in one run.

mod local;
mod plot;
mod report;
mod scenarios;
mod sys;
mod tls;
mod web;

use clap::{Parser, ValueEnum};

/// Every system in this process shares one allocator. mimalloc, because the glibc
/// allocator was the top entry of the `open` profile for all systems alike.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use indicatif::{ProgressBar, ProgressStyle};
use scenarios::Outcome;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;
use sys::{Pair, SysOpts};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// 1 stream, 1 GiB client→server in 64 KiB writes.
    Bulk,
    /// 256 streams at once, 4 MiB each.
    Fanout,
    /// 64 workers, 200,000 streams: open, 1 byte each way, close.
    Open,
    /// 1,000 streams in closed loops of 64 B request/response, 10 s.
    Rpc,
    /// N streams (100,000 and 1,000,000) held open after 1 byte each.
    Idle,
    /// rpc on 64 streams, alone and beside a bulk stream.
    Hol,
    /// astranet only: bulk (256 MiB) and open (20,000 streams) through one relay,
    /// beside the same figures direct.
    Relay,
    /// astranet and tcp only: HTTP/1.1 GETs (64 B body, keep-alive) with a hyper-util
    /// client from --concurrency tasks (64) in closed loops for --duration (5 s);
    /// astranet::http::{Server, Connector} vs the same hyper server and client on TCP.
    Http,
    /// astranet and tcp only: tonic unary calls (64 B) over one channel from
    /// --concurrency tasks (64) in closed loops for --duration (5 s);
    /// serve_with_incoming(astranet::Incoming) + connect_with_connector vs tonic on TCP.
    Grpc,
    /// astranet only: time from `join` to a usable link over --streams joins (1,000),
    /// plaintext and TLS side by side (p50/p99).
    Join,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Bulk => "bulk",
            Scenario::Fanout => "fanout",
            Scenario::Open => "open",
            Scenario::Rpc => "rpc",
            Scenario::Idle => "idle",
            Scenario::Hol => "hol",
            Scenario::Relay => "relay",
            Scenario::Http => "http",
            Scenario::Grpc => "grpc",
            Scenario::Join => "join",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SystemSel {
    Astranet,
    Tcp,
    /// Plain TCP with client and server tasks on glommio executors (thread per core).
    #[value(name = "tcp-glommio")]
    TcpGlommio,
    /// astranet's shard-local API: the scenarios run as tasks on the nodes' shards.
    #[value(name = "astranet-local")]
    AstranetLocal,
    #[value(name = "yamux-rs")]
    YamuxRs,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Astranet,
    Tcp,
    /// Thread per core: the scenarios run on the system's executors (`local`).
    TcpGlommio,
    /// The same, on astranet's shard-local API (`Node::spawn_on`).
    AstranetLocal,
    YamuxRs,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Astranet => "astranet",
            System::Tcp => "tcp",
            System::TcpGlommio => "tcp-glommio",
            System::AstranetLocal => "astranet-local",
            System::YamuxRs => "yamux-rs",
        }
    }
}

/// Side-by-side load tests with latency histograms.
#[derive(Parser, Debug)]
#[command(name = "astranet-bench", version)]
struct Cli {
    /// The scenario (shared/bench/SCENARIOS.md).
    #[arg(value_enum)]
    scenario: Scenario,
    /// Which system(s) to measure.
    #[arg(long, value_enum, default_value = "all")]
    system: SystemSel,
    /// Streams: open's total, rpc's and fanout's streams, idle's N (default: both
    /// 100,000 and 1,000,000).
    #[arg(long)]
    streams: Option<usize>,
    /// Concurrent workers (open, idle's openers; http's and grpc's client tasks).
    #[arg(long)]
    concurrency: Option<usize>,
    /// How long rpc, http and grpc run, and each phase of hol (e.g. 10s, 500ms).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// astranet shards per node (two nodes run in this process).
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Runs per system; the report gives medians (and min–max).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Print only JSON lines (SCENARIOS.md format) on stdout.
    #[arg(long)]
    json: bool,
    /// Write an SVG latency-percentile plot here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// astranet links run TLS 1.3, mutually authenticated (certificates of an
    /// in-memory development CA).
    #[arg(long)]
    tls: bool,
    /// Internal: run one idle measurement in this process and print it as JSON.
    #[arg(long, hide = true)]
    child: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "s" => v,
        "ms" => v / 1e3,
        "m" => v * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s or m)")),
    };
    if !(secs > 0.0 && secs < 86_400.0) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Raises RLIMIT_NOFILE to its hard limit (or to fs.nr_open for root), as a user
/// running a load test would.
fn raise_fd_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return;
        }
        let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(r.rlim_max);
        let want = libc::rlimit {
            rlim_cur: nr_open.max(r.rlim_max),
            rlim_max: nr_open.max(r.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn make_pair(sys: System, o: &SysOpts) -> std::io::Result<Pair> {
    match sys {
        System::Astranet => {
            let o = o.clone();
            tokio::task::spawn_blocking(move || sys::astranet_sys::pair(&o))
                .await
                .map_err(std::io::Error::other)?
        }
        System::Tcp => sys::tcp_sys::pair().await,
        System::YamuxRs => sys::yamux_sys::pair(o).await,
        System::TcpGlommio | System::AstranetLocal => Err(std::io::Error::other(
            "thread-per-core systems run their scenarios on their own executors (run_local)",
        )),
    }
}

/// How long one run may take before it fails.
fn run_limit(sc: Scenario) -> Duration {
    Duration::from_secs(match sc {
        Scenario::Idle => 900,
        _ => 300,
    })
}

/// One run of a thread-per-core system: its scenario code runs on its executors and
/// this thread only coordinates.
fn run_local(cli: &Cli, sys: System, n_idle: usize) -> std::io::Result<Outcome> {
    use local::scenarios as ls;
    let limit = run_limit(cli.scenario);
    let s: Box<dyn local::LocalSys> = match sys {
        System::TcpGlommio => Box::new(local::tcp_glommio::TcpGlommio::new(cli.shards)?),
        System::AstranetLocal => Box::new(local::astranet_local::AstranetLocal::new(&SysOpts {
            tls: cli.tls,
            shards: cli.shards,
            max_streams: n_idle.max(cli.streams.unwrap_or(0)),
        })?),
        _ => unreachable!("{} is not thread-per-core", sys.name()),
    };
    let s = &*s;
    let streams = cli.streams;
    match cli.scenario {
        Scenario::Bulk => ls::bulk(s, 1 << 30, limit),
        Scenario::Fanout => ls::fanout(s, streams.unwrap_or(256), 4 << 20, limit),
        Scenario::Open => ls::open(
            s,
            cli.concurrency.unwrap_or(64),
            streams.unwrap_or(200_000) as u64,
            limit,
        ),
        Scenario::Rpc => ls::rpc(
            s,
            streams.unwrap_or(1000),
            cli.duration.unwrap_or(Duration::from_secs(10)),
            1_000_000,
            limit,
        ),
        Scenario::Hol => ls::hol(
            s,
            streams.unwrap_or(64),
            cli.duration.unwrap_or(Duration::from_secs(3)),
            limit,
        ),
        Scenario::Idle => ls::idle(s, n_idle, cli.concurrency.unwrap_or(64), limit),
        Scenario::Relay | Scenario::Http | Scenario::Grpc | Scenario::Join => {
            Err(std::io::Error::other(format!(
                "{} does not run on {}",
                cli.scenario.name(),
                sys.name()
            )))
        }
    }
}

/// One run of one scenario on one system, in this process.
fn run_once(cli: &Cli, sys: System, n_idle: usize, pb: &ProgressBar) -> std::io::Result<Outcome> {
    if matches!(sys, System::TcpGlommio | System::AstranetLocal) {
        return run_local(cli, sys, n_idle);
    }
    let rt = runtime();
    let streams = cli.streams;
    let o = SysOpts {
        tls: cli.tls,
        shards: cli.shards,
        max_streams: match cli.scenario {
            Scenario::Idle => n_idle,
            Scenario::Rpc => streams.unwrap_or(1000),
            Scenario::Fanout => streams.unwrap_or(256),
            _ => 4096,
        },
    };
    // No run may hang the harness: each has a generous time limit.
    let limit = run_limit(cli.scenario);
    let out = rt.block_on(async {
        tokio::time::timeout(limit, run_scenario(cli, sys, &o, n_idle, pb))
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("run did not finish within {limit:?}"),
                ))
            })
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    out
}

async fn run_scenario(
    cli: &Cli,
    sys: System,
    o: &SysOpts,
    n_idle: usize,
    pb: &ProgressBar,
) -> std::io::Result<Outcome> {
    let streams = cli.streams;
    let web_secs = cli.duration.unwrap_or(Duration::from_secs(5));
    let web_tasks = cli.concurrency.unwrap_or(64);
    match cli.scenario {
        Scenario::Http => return web::http(sys, o, web_tasks, web_secs, pb).await,
        Scenario::Grpc => return web::grpc(sys, o, web_tasks, web_secs, pb).await,
        _ => {}
    }
    {
        let pair = make_pair(sys, o).await?;
        match cli.scenario {
            Scenario::Bulk => scenarios::bulk(pair, 1 << 30, pb).await,
            Scenario::Fanout => scenarios::fanout(pair, streams.unwrap_or(256), 4 << 20, pb).await,
            Scenario::Open => {
                scenarios::open(
                    pair,
                    cli.concurrency.unwrap_or(64),
                    streams.unwrap_or(200_000) as u64,
                    pb,
                )
                .await
            }
            Scenario::Rpc => {
                scenarios::rpc(
                    pair,
                    streams.unwrap_or(1000),
                    cli.duration.unwrap_or(Duration::from_secs(10)),
                    1_000_000,
                    pb,
                )
                .await
            }
            Scenario::Hol => {
                scenarios::hol(
                    pair,
                    streams.unwrap_or(64),
                    cli.duration.unwrap_or(Duration::from_secs(3)),
                    pb,
                )
                .await
            }
            Scenario::Idle => {
                scenarios::idle(pair, n_idle, cli.concurrency.unwrap_or(64), pb).await
            }
            Scenario::Relay => relay(cli, o, pair, pb).await,
            Scenario::Http | Scenario::Grpc | Scenario::Join => unreachable!("served above"),
        }
    }
}

/// `relay`: the same bulk and open work direct (`pair`) and through one relay.
async fn relay(cli: &Cli, o: &SysOpts, direct: Pair, pb: &ProgressBar) -> std::io::Result<Outcome> {
    const BULK: u64 = 256 << 20;
    let streams = cli.streams.unwrap_or(20_000) as u64;
    let workers = cli.concurrency.unwrap_or(64);
    let d_bulk = scenarios::bulk(direct, BULK, pb).await?;
    let direct = make_pair(System::Astranet, o).await?;
    let d_open = scenarios::open(direct, workers, streams, pb).await?;
    let oo = o.clone();
    let relayed = || {
        let oo = oo.clone();
        tokio::task::spawn_blocking(move || sys::astranet_sys::relay_pair(&oo))
    };
    let r_bulk =
        scenarios::bulk(relayed().await.map_err(std::io::Error::other)??, BULK, pb).await?;
    let r_open = scenarios::open(
        relayed().await.map_err(std::io::Error::other)??,
        workers,
        streams,
        pb,
    )
    .await?;
    let f = |o: &Outcome, k: &str| {
        o.figures
            .iter()
            .find(|(n, _)| *n == k)
            .map_or(0.0, |(_, v)| *v)
    };
    let (db, rb) = (f(&d_bulk, "mb_per_s"), f(&r_bulk, "mb_per_s"));
    let (dp, rp) = (f(&d_open, "streams_per_s"), f(&r_open, "streams_per_s"));
    Ok(Outcome {
        figures: vec![
            ("direct_mb_per_s", db),
            ("relay_mb_per_s", rb),
            ("bulk_ratio", rb / db.max(1e-9)),
            ("direct_streams_per_s", dp),
            ("relay_streams_per_s", rp),
            ("open_ratio", rp / dp.max(1e-9)),
        ],
        hist: r_open.hist,
        note: Some("relay_* through one relay node; ratios are relay / direct".into()),
    })
}

/// `idle` runs in a child process each, so one run's freed memory does not flatter the
/// next run's RSS growth.
fn run_idle_child(cli: &Cli, sys: System, n: usize) -> std::io::Result<Outcome> {
    let exe = std::env::current_exe()?;
    let out = std::process::Command::new(exe)
        .args([
            "idle",
            "--child",
            "--system",
            sys.name(),
            "--streams",
            &n.to_string(),
            "--shards",
            &cli.shards.to_string(),
            "--concurrency",
            &cli.concurrency.unwrap_or(64).to_string(),
        ])
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "idle child for {} exited with {}",
            sys.name(),
            out.status
        )));
    }
    report::parse_child(&String::from_utf8_lossy(&out.stdout))
}

fn progress(cli: &Cli, msg: String) -> ProgressBar {
    if cli.json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template("{msg:28} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(msg);
    pb
}

fn main() {
    let cli = Cli::parse();
    raise_fd_limit();
    if cli.scenario == Scenario::Join {
        if let Err(e) = tls::run_join(cli.streams.unwrap_or(1000), cli.json) {
            eprintln!("join failed: {e}");
            std::process::exit(1);
        }
        return;
    }
    if cli.scenario == Scenario::Relay
        && cli.system != SystemSel::Astranet
        && cli.system != SystemSel::All
    {
        eprintln!("relay measures astranet only (it compares astranet direct and relayed)");
        std::process::exit(2);
    }
    let web = matches!(cli.scenario, Scenario::Http | Scenario::Grpc);
    if web
        && matches!(
            cli.system,
            SystemSel::YamuxRs | SystemSel::TcpGlommio | SystemSel::AstranetLocal
        )
    {
        eprintln!(
            "{} compares astranet with plain tcp (tokio) only; it does not apply to {}",
            cli.scenario.name(),
            match cli.system {
                SystemSel::YamuxRs => "yamux-rs",
                SystemSel::TcpGlommio => "tcp-glommio (hyper and tonic run on tokio here)",
                _ => "astranet-local (hyper and tonic run on tokio here)",
            }
        );
        std::process::exit(2);
    }
    let systems: Vec<System> = match cli.system {
        _ if cli.scenario == Scenario::Relay => vec![System::Astranet],
        SystemSel::All if web => vec![System::Astranet, System::Tcp],
        SystemSel::All => vec![
            System::Astranet,
            System::AstranetLocal,
            System::Tcp,
            System::TcpGlommio,
            System::YamuxRs,
        ],
        SystemSel::Astranet => vec![System::Astranet],
        SystemSel::Tcp => vec![System::Tcp],
        SystemSel::TcpGlommio => vec![System::TcpGlommio],
        SystemSel::AstranetLocal => vec![System::AstranetLocal],
        SystemSel::YamuxRs => vec![System::YamuxRs],
    };
    if cli.child {
        let n = cli.streams.unwrap_or(100_000);
        let pb = ProgressBar::hidden();
        match run_once(&cli, systems[0], n, &pb) {
            Ok(o) => println!(
                "{}",
                report::json_line(systems[0], Scenario::Idle, &o.figures, o.note.as_deref())
            ),
            Err(e) => {
                eprintln!("idle run failed: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let idle_ns: Vec<usize> = match (cli.scenario, cli.streams) {
        (Scenario::Idle, Some(n)) => vec![n],
        (Scenario::Idle, None) => vec![100_000, 1_000_000],
        _ => vec![0],
    };
    let mut results: Vec<report::SystemResult> = Vec::new();
    let mut failed = false;
    for &n in &idle_ns {
        for &sys in &systems {
            let mut runs = Vec::new();
            for r in 0..cli.runs.max(1) {
                let label = if cli.scenario == Scenario::Idle {
                    format!("{} {} N={n} run {}", cli.scenario.name(), sys.name(), r + 1)
                } else {
                    format!("{} {} run {}", cli.scenario.name(), sys.name(), r + 1)
                };
                let pb = progress(&cli, label);
                let res = if cli.scenario == Scenario::Idle {
                    run_idle_child(&cli, sys, n)
                } else {
                    run_once(&cli, sys, n, &pb)
                };
                pb.finish_and_clear();
                match res {
                    Ok(o) => runs.push(o),
                    Err(e) => {
                        eprintln!(
                            "{} on {}: run {} failed: {e}",
                            cli.scenario.name(),
                            sys.name(),
                            r + 1
                        );
                        failed = true;
                    }
                }
            }
            if !runs.is_empty() {
                results.push(report::SystemResult::new(sys, runs, n));
            }
        }
    }
    if cli.json {
        for r in &results {
            println!(
                "{}",
                report::json_line(r.system, cli.scenario, &r.medians(), None)
            );
        }
    } else {
        print!(
            "{}",
            report::human(cli.scenario, &results, cli.runs, cli.shards)
        );
    }
    if let Some(path) = &cli.plot {
        if let Err(e) = plot::write_svg(path, cli.scenario, &results) {
            eprintln!("writing {}: {e}", path.display());
            failed = true;
        }
    }
    if failed {
        std::process::exit(1);
    }
}
