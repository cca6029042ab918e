//! `cargo xtask bench -- controlplane`: what the control plane costs at scale, for the real
//! `switchyard` binary with the `--manifests` source.
//!
//! For each mode and service count, on a fresh one-node testbed (switchyard runs in the
//! node's namespace and cgroup, with its own pin directory):
//!
//! 1. time from spawning the process to the first complete sync, and that sync's own
//!    duration as the proxy reports it;
//! 2. one service's EndpointSlice rewritten: time until the sync that applied it has
//!    completed, and that sync's duration;
//! 3. CPU of the process over an idle window;
//! 4. its peak RSS.
//!
//! Timings come from `/metrics` (scraped inside the node's namespace), not from log lines.
pub(crate) mod cluster;
mod flows;
mod lifecycle;
mod measure;
pub(crate) mod metrics;
pub(crate) mod procfs;
mod report;
mod source;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;

use measure::{measure, tail, Plan};
use report::{Document, Outcome};
use source::SourceKind;

/// Options of the control-plane benchmark.
#[derive(clap::Args)]
pub struct Args {
    /// Service counts to measure, each in its own sandbox (e.g. `1000,10000`).
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    pub services: Vec<usize>,
    /// Ready endpoints per service, all in one EndpointSlice.
    #[arg(long, default_value_t = 10)]
    pub endpoints: usize,
    /// Dataplanes to measure, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ebpf,iptables-legacy,iptables-nft"
    )]
    pub modes: Vec<Mode>,
    /// Object sources to measure (the fake API server serves the same objects).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "manifests,api"
    )]
    pub sources: Vec<SourceKind>,
    /// Skip the restart, mode-switch and cleanup steps after each manifest-source run.
    #[arg(long)]
    pub no_lifecycle: bool,
    /// Length of the idle window, seconds.
    #[arg(long, default_value_t = 30)]
    pub idle_seconds: u64,
    /// One-service changes per run (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub changes: usize,
    /// ebpf mode, manifest source: established flows written into the packet-path conntrack
    /// map (two entries each) for a second idle window, which shows what a busy node's
    /// verifies cost; 0 skips it.
    #[arg(long, default_value_t = 100_000)]
    pub flows: u32,
    /// Give up on a first sync (or a change) after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub sync_timeout: u64,
    /// Quick harness check for CI: 200 services and a 3 s idle window (overrides
    /// --services and --idle-seconds).
    #[arg(long)]
    pub quick: bool,
    /// Where the JSON result and the proxy logs go [default: <workspace>/target/bench].
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
}

/// A dataplane configuration under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `--proxy-mode=ebpf`.
    Ebpf,
    /// `--proxy-mode=iptables --iptables-backend=legacy`.
    IptablesLegacy,
    /// `--proxy-mode=iptables --iptables-backend=nft`.
    IptablesNft,
}

impl Mode {
    /// The `--proxy-mode` value.
    pub fn proxy_mode(self) -> &'static str {
        match self {
            Mode::Ebpf => "ebpf",
            Mode::IptablesLegacy | Mode::IptablesNft => "iptables",
        }
    }

    /// Flags besides `node_args` (the backend is forced, not detected, so both are measured
    /// whatever the machine's default is).
    pub fn extra_flags(self) -> &'static [&'static str] {
        match self {
            Mode::Ebpf => &[],
            Mode::IptablesLegacy => &["--iptables-backend=legacy"],
            Mode::IptablesNft => &["--iptables-backend=nft"],
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Ebpf => "ebpf",
            Mode::IptablesLegacy => "iptables-legacy",
            Mode::IptablesNft => "iptables-nft",
        })
    }
}

/// Runs every (mode, service count) in turn, prints the table and writes the JSON. A failed
/// run is reported in its row and makes the benchmark fail at the end, after the others ran.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let (services, idle_seconds) = if args.quick {
        (vec![200], 3)
    } else {
        (args.services.clone(), args.idle_seconds)
    };
    if args.modes.is_empty() || services.is_empty() {
        bail!("nothing to measure: --modes and --services must not be empty");
    }
    let unix_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // benches/ is one level below the workspace root, whose target/ holds the results.
    let dir = args.output_dir.clone().unwrap_or_else(|| {
        let benches = Path::new(env!("CARGO_MANIFEST_DIR"));
        benches.parent().unwrap_or(benches).join("target/bench")
    });
    std::fs::create_dir_all(&dir)?;
    let mut outcomes = Vec::new();
    for &n in &services {
        for (&source, &mode) in args
            .sources
            .iter()
            .flat_map(|s| args.modes.iter().map(move |m| (s, m)))
        {
            let plan = Plan {
                mode,
                source,
                // The dataplane's restart and cleanup do not depend on the source.
                lifecycle: !args.no_lifecycle && source == SourceKind::Manifests,
                services: n,
                endpoints: args.endpoints,
                changes: args.changes.max(1),
                idle: Duration::from_secs(idle_seconds),
                sync_timeout: Duration::from_secs(args.sync_timeout),
                flows: match (args.quick, source) {
                    (_, SourceKind::Api) => 0,
                    (true, _) => args.flows.min(1000),
                    (false, _) => args.flows,
                },
            };
            eprintln!(
                "controlplane: {mode}, {source} source, {n} services x {} endpoints...",
                args.endpoints
            );
            let started = Instant::now();
            let mut log = String::new();
            let result = measure(&plan, &mut log);
            let total_s = started.elapsed().as_secs_f64();
            let log_path = dir.join(format!("controlplane-{unix_time}-{mode}-{source}-{n}.log"));
            let log = std::fs::write(&log_path, &log).ok().map(|()| log_path);
            match &result {
                Ok(m) => eprintln!(
                    "  done in {total_s:.0} s: first sync {:.2} s{}",
                    m.first_sync.wall_s,
                    m.notes
                        .iter()
                        .map(|n| format!("\n  note: {n}"))
                        .collect::<String>()
                ),
                Err(e) => eprintln!(
                    "  FAILED after {total_s:.0} s: {}",
                    tail(&format!("{e:#}"), 25)
                ),
            }
            let (measured, error) = match result {
                Ok(m) => (Some(m), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            };
            outcomes.push(Outcome {
                mode: mode.to_string(),
                source: source.to_string(),
                services: n,
                endpoints: args.endpoints,
                total_s,
                measured,
                error,
                log,
            });
        }
    }

    println!(
        "\nControl plane, {} ready endpoints per service, one node, idle window {idle_seconds} s\n",
        args.endpoints
    );
    print!("{}", report::table(&outcomes));
    let lifecycle = report::lifecycle_table(&outcomes);
    if !lifecycle.is_empty() {
        println!(
            "\nRestart over the node's own state, mode switches over the other mode's, cleanup\n"
        );
        print!("{lifecycle}");
    }
    let busy = report::busy_table(&outcomes);
    if !busy.is_empty() {
        println!("\nebpf mode, idle with established flows in the packet-path conntrack map\n");
        print!("{busy}");
    }
    println!(
        "\niptables-restore or program load: {}",
        report::RESTORE_TIME
    );
    let doc = Document {
        unix_time,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        switchyard: switchyard_testbed::switchyard_binary()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        idle_seconds,
        iptables_restore_time: report::RESTORE_TIME,
        runs: &outcomes,
    };
    let path = report::write_json(&dir, &doc)?;
    println!("JSON: {}", path.display());
    let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
    if failed > 0 {
        bail!("{failed} of {} runs failed", outcomes.len());
    }
    Ok(())
}
