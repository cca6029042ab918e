//! `cargo xtask bench` (the default) / `-- dataplane`: the dataplane benchmark.
//!
//! Every path has its own two-node sandbox ([`sandbox`]): no proxy at all (straight to the
//! pod IPs), and switchyard on both nodes in each mode (ebpf, iptables-legacy,
//! iptables-nft) with N services loaded (decoys with real endpoints plus the measured ones,
//! [`services`]). The no-proxy sandbox lives for the whole run; the proxy sandboxes are
//! built per service count, all at once, and removed before the next count. At each count,
//! rounds alternate between the paths, one measurement at a time ([`measure`]), so drift on
//! the machine hits every path alike, and the ratios are to the no-proxy path measured in
//! the same rounds. While one path is measured the other paths' proxies are stopped
//! (SIGSTOP) so their periodic work does not land in its figures.
//!
//! Then the tc programs' cost per packet with BPF_PROG_TEST_RUN ([`testrun`]). The run
//! ends with a JSON document, Markdown tables and an SVG plot in `target/bench/`.
mod iperf;
pub mod load;
mod measure;
mod plot;
mod report;
mod sandbox;
mod services;
mod testrun;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;

use crate::controlplane::Mode;
use measure::{Kind, Shape};
use report::{Document, Group, PathRun};
use sandbox::{Build, PathKind, Sandbox};

/// Options of the dataplane benchmark.
#[derive(clap::Args)]
pub struct Args {
    /// Service counts, each measured on freshly built proxy sandboxes.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000,30000")]
    pub services: Vec<usize>,
    /// Proxy modes measured against the no-proxy path.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ebpf,iptables-legacy,iptables-nft"
    )]
    pub modes: Vec<Mode>,
    /// Ready endpoints per decoy service. The per-packet cost depends on the number of
    /// services (one SWY-SERVICES rule each, one map entry each), not on the decoys'
    /// endpoints, which only make the syncs longer (the control-plane benchmark measures
    /// those with 10).
    #[arg(long, default_value_t = 2)]
    pub endpoints: usize,
    /// Alternating rounds per service count (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Length of one measurement, seconds (iperf3 rounds up to whole seconds).
    #[arg(long, default_value_t = 1.0)]
    pub seconds: f64,
    /// Parallel connections of the TCP request clients.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    /// Service counts in the maps for the tc per-packet cost.
    #[arg(long, value_delimiter = ',', default_value = "1,10000")]
    pub testrun_services: Vec<usize>,
    /// Skip the tc per-packet cost.
    #[arg(long)]
    pub no_testrun: bool,
    /// Program runs per BPF_PROG_TEST_RUN call.
    #[arg(long, default_value_t = 1_000_000)]
    pub repeat: u32,
    /// Give up on a proxy's first sync after this many seconds (that path is then reported
    /// as failed, the others are measured).
    #[arg(long, default_value_t = 300)]
    pub sync_timeout: u64,
    /// Quick harness check for CI (seconds, not minutes): 1 and 50 services, 2 endpoints,
    /// one round of 0.3 s measurements, 10,000 test runs (overrides those options).
    #[arg(long)]
    pub quick: bool,
    /// Where the results go [default: <workspace>/target/bench].
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
}

/// The options in force after `--quick`.
struct Plan {
    services: Vec<usize>,
    modes: Vec<Mode>,
    endpoints: usize,
    rounds: usize,
    shape: Shape,
    testrun_services: Vec<usize>,
    repeat: u32,
    new_flows: usize,
    sync_timeout: Duration,
}

impl Plan {
    fn new(args: &Args) -> Self {
        let quick = args.quick;
        let seconds = if quick { 0.3 } else { args.seconds.max(0.1) };
        Plan {
            services: if quick {
                vec![1, 50]
            } else {
                args.services.clone()
            },
            modes: args.modes.clone(),
            endpoints: if quick { 2 } else { args.endpoints },
            rounds: if quick { 1 } else { args.rounds.max(1) },
            shape: Shape {
                seconds,
                concurrency: args.concurrency.max(1),
                // Far above what 2 cores make in `seconds`; the time bound ends a run.
                max_requests: (seconds * 200_000.0) as usize,
            },
            testrun_services: if args.no_testrun {
                Vec::new()
            } else if quick {
                vec![1, 50]
            } else {
                args.testrun_services.clone()
            },
            repeat: if quick { 10_000 } else { args.repeat },
            new_flows: if quick { 1_000 } else { 20_000 },
            sync_timeout: Duration::from_secs(args.sync_timeout),
        }
    }

    /// The command line that repeats this run.
    fn command(&self, quick: bool) -> String {
        if quick {
            return "cargo xtask bench -- dataplane --quick".to_owned();
        }
        let list = |v: &[usize]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let testrun = if self.testrun_services.is_empty() {
            "--no-testrun".to_owned()
        } else {
            format!(
                "--testrun-services {} --repeat {}",
                list(&self.testrun_services),
                self.repeat
            )
        };
        format!(
            "cargo xtask bench -- dataplane --services {} --modes {} --endpoints {} --rounds {} --seconds {} --concurrency {} {testrun}",
            list(&self.services),
            self.modes
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            self.endpoints,
            self.rounds,
            self.shape.seconds,
            self.shape.concurrency,
        )
    }
}

/// Runs the benchmark, prints the tables and writes JSON, Markdown and SVG. A path that
/// failed is reported in its row and makes the run fail at the end, after the others ran.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let plan = Plan::new(args);
    if plan.services.is_empty() {
        bail!("nothing to measure: --services is empty");
    }
    if !plan.testrun_services.is_empty() {
        testrun::check_object()?;
    }
    let unix_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let dir = args.output_dir.clone().unwrap_or_else(|| {
        let benches = Path::new(env!("CARGO_MANIFEST_DIR"));
        benches.parent().unwrap_or(benches).join("target/bench")
    });
    std::fs::create_dir_all(&dir)?;
    eprintln!("dataplane: load average at start {load_average}");

    let direct_build = Build {
        kind: PathKind::Direct,
        services: 0,
        endpoints: plan.endpoints,
        sync_timeout: plan.sync_timeout,
    };
    let build_started = Instant::now();
    let mut direct = Sandbox::start(&direct_build)?;
    direct.wait_ready(&direct_build, build_started, "no proxy")?;

    let mut groups = Vec::new();
    for &n in &plan.services {
        groups.push(measure_count(&plan, n, &mut direct, &dir, unix_time));
    }
    drop(direct);

    let (testrun, testrun_error) = if plan.testrun_services.is_empty() {
        (Vec::new(), None)
    } else {
        eprintln!(
            "dataplane: tc programs, BPF_PROG_TEST_RUN at {:?} services...",
            plan.testrun_services
        );
        match testrun::measure(&plan.testrun_services, plan.repeat, plan.new_flows) {
            Ok(cases) => (cases, None),
            Err(e) => (Vec::new(), Some(format!("{e:#}"))),
        }
    };

    let total_s = started.elapsed().as_secs_f64();
    let md = report::markdown(&groups, &testrun, &plan.shape, plan.rounds);
    println!("\nDataplane\n\n{md}");
    if let Some(e) = &testrun_error {
        println!("tc per-packet cost FAILED: {e}");
    }
    let command = plan.command(args.quick);
    let doc = Document {
        unix_time,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average_at_start: load_average,
        command: command.clone(),
        shape: plan.shape,
        rounds: plan.rounds,
        endpoints: plan.endpoints,
        groups: &groups,
        testrun: &testrun,
        testrun_error: testrun_error.clone(),
        total_s,
    };
    let json = report::write_json(&dir, &doc)?;
    let md_path = dir.join(format!("dataplane-{unix_time}.md"));
    std::fs::write(&md_path, format!("{md}\nReproduce: `{command}`\n"))?;
    let svg = plot::write(
        &dir,
        unix_time,
        &groups,
        "Pod -> ClusterIP, new TCP connections/s (no proxy: pod -> pod IP)",
    )?;
    println!("Reproduce: {command}");
    println!(
        "JSON: {}\nMarkdown: {}\nSVG: {}",
        json.display(),
        md_path.display(),
        svg.display()
    );
    println!("Total time: {total_s:.0} s");

    // Failed requests are results (a dataplane that drops connections), reported in the
    // tables; only in the harness check do they fail the run, like a measurement that could
    // not run at all.
    let request_errors: Vec<String> = groups.iter().flat_map(Group::request_errors).collect();
    for e in &request_errors {
        println!("failed requests: {e}");
    }
    let failed: usize = groups.iter().map(Group::harness_failures).sum();
    if failed > 0 || testrun_error.is_some() || (args.quick && !request_errors.is_empty()) {
        bail!(
            "{failed} sandboxes or measurements failed, {} series with failed requests{}",
            request_errors.len(),
            if testrun_error.is_some() {
                ", and the tc per-packet part failed"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Builds the proxy sandboxes for `n` services and runs the alternating rounds.
fn measure_count(plan: &Plan, n: usize, direct: &mut Sandbox, dir: &Path, unix_time: u64) -> Group {
    let progress = format!("{n} services");
    eprintln!(
        "dataplane: {progress}: building {} proxy sandboxes...",
        plan.modes.len()
    );
    let build_started = Instant::now();
    let mut runs = vec![PathRun::new(PathKind::Direct.to_string())];
    // Started all at once so their first syncs overlap; then waited for in turn.
    let mut sandboxes: Vec<Option<Sandbox>> = Vec::new();
    let builds: Vec<Build> = plan
        .modes
        .iter()
        .map(|&mode| Build {
            kind: PathKind::Proxy(mode),
            services: n,
            endpoints: plan.endpoints,
            sync_timeout: plan.sync_timeout,
        })
        .collect();
    for build in &builds {
        let mut run = PathRun::new(build.kind.to_string());
        match Sandbox::start(build) {
            Ok(s) => sandboxes.push(Some(s)),
            Err(e) => {
                run.error = Some(format!("{e:#}"));
                sandboxes.push(None);
            }
        }
        runs.push(run);
    }
    // node1's proxies first (each sandbox then starts node2's), then the rest.
    for phase in [false, true] {
        for ((slot, build), run) in sandboxes.iter_mut().zip(&builds).zip(&mut runs[1..]) {
            let Some(sandbox) = slot else { continue };
            let done = if phase {
                sandbox.wait_ready(build, build_started, &progress)
            } else {
                sandbox.wait_first_node(build, &progress)
            };
            match done {
                Ok(()) if !phase => {}
                Ok(()) => {
                    run.ready_s = Some(sandbox.ready_s);
                    run.first_sync_s = sandbox.first_sync_s.clone();
                }
                Err(e) => {
                    run.error = Some(format!("{e:#}"));
                    run.logs = save_logs(dir, unix_time, n, sandbox);
                    *slot = None;
                }
            }
        }
    }
    let build_s = build_started.elapsed().as_secs_f64();
    eprintln!("dataplane: {progress}: built in {build_s:.0} s; measuring...");

    let measure_started = Instant::now();
    let mut cpu_s = vec![0.0f64; runs.len()];
    let mut timed_s = vec![0.0f64; runs.len()];
    for round in 0..plan.rounds {
        for kind in Kind::ALL {
            // Path 0 is the no-proxy one; the proxy paths take turns going first.
            let m = sandboxes.len();
            let mut order: Vec<usize> = vec![0];
            order.extend((0..m).map(|i| 1 + (i + round) % m));
            for &p in &order {
                if p == 0 && kind == Kind::PodToPod {
                    continue;
                }
                let Some((sample, cpu, secs)) =
                    measure_path(direct, &mut sandboxes, p, kind, &plan.shape)
                else {
                    continue;
                };
                match sample {
                    Ok(s) => runs[p].series_mut(kind).samples.push(s),
                    Err(e) => {
                        eprintln!("  {progress}: {} {kind}: {e:#}", runs[p].path);
                        runs[p].series_mut(kind).failures.push(format!("{e:#}"));
                    }
                }
                cpu_s[p] += cpu;
                timed_s[p] += secs;
            }
        }
        eprintln!(
            "dataplane: {progress}: round {} of {} done",
            round + 1,
            plan.rounds
        );
    }
    let measure_s = measure_started.elapsed().as_secs_f64();

    for (p, run) in runs.iter_mut().enumerate() {
        let sandbox = if p == 0 {
            Some(&*direct)
        } else {
            sandboxes[p - 1].as_ref()
        };
        let Some(sandbox) = sandbox else { continue };
        run.node1_conntrack_entries = sandbox.node1_conntrack_entries();
        run.node1_tc_conntrack_entries = sandbox.node1_tc_conntrack_entries();
        if p > 0 && timed_s[p] > 0.0 {
            run.proxy_cpu_pct = Some(100.0 * cpu_s[p] / timed_s[p]);
        }
        if p > 0 {
            run.logs = save_logs(dir, unix_time, n, sandbox);
        }
    }
    // The proxy sandboxes go now, before the next count's are built.
    drop(sandboxes);
    let mut group = Group {
        services: n,
        build_s,
        measure_s,
        paths: runs,
    };
    group.summarize();
    eprintln!("dataplane: {progress}: measured in {measure_s:.0} s");
    group
}

/// Measures `kind` on path `p` (0: no proxy, else `sandboxes[p - 1]`) with every other
/// path's proxies stopped: the sample, and the CPU seconds its own proxies used over the
/// wall seconds it took. None if that sandbox is gone.
fn measure_path(
    direct: &mut Sandbox,
    sandboxes: &mut [Option<Sandbox>],
    p: usize,
    kind: Kind,
    shape: &Shape,
) -> Option<(anyhow::Result<measure::Sample>, f64, f64)> {
    if p > 0 && sandboxes.get(p - 1)?.is_none() {
        return None;
    }
    for (i, other) in sandboxes.iter_mut().enumerate() {
        if let Some(other) = other {
            if let Err(e) = other.pause(i + 1 != p) {
                return Some((Err(e), 0.0, 0.0));
            }
        }
    }
    let sandbox: &mut Sandbox = if p == 0 {
        direct
    } else {
        sandboxes.get_mut(p - 1)?.as_mut()?
    };
    let cpu_before = sandbox.proxy_cpu_s();
    let started = Instant::now();
    let mut result = measure::measure(sandbox, kind, shape);
    let secs = started.elapsed().as_secs_f64();
    let cpu = sandbox.proxy_cpu_s() - cpu_before;
    if let Err(e) = sandbox.check_alive() {
        result = Err(e);
    }
    if let Ok(sample) = &mut result {
        sample.proxy_cpu_pct = 100.0 * cpu / secs.max(1e-6);
    }
    Some((result, cpu, secs))
}

/// Writes each proxy's log of the sandbox next to the results; returns the files.
fn save_logs(dir: &Path, unix_time: u64, n: usize, sandbox: &Sandbox) -> Vec<PathBuf> {
    sandbox
        .proxy_logs()
        .iter()
        .enumerate()
        .filter_map(|(i, log)| {
            let path = dir.join(format!(
                "dataplane-{unix_time}-{}-{n}-node{}.log",
                sandbox.kind,
                i + 1
            ));
            std::fs::write(&path, log).ok().map(|()| path)
        })
        .collect()
}
