//! One measured path: its own two-node testbed with the servers, and for a proxy path the
//! proxies on both nodes with N services loaded.
//!
//! ```text
//!   client 203.0.113.10 ── node1 ─┬─ pod1 198.19.1.11  load clients, iperf3 -c
//!                                 └─ pod2 198.19.1.12  server (the NodePort's local backend)
//!                          node2 ─── pod1 198.19.2.11  server, iperf3 -s (every other backend)
//! ```
//!
//! The direct path has no proxy at all; its external client is routed to the pods through
//! node1 (and node2 answers it back through node1), the same hops a NodePort flow takes.
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use switchyard_testbed::netns::write_sysctl;
use switchyard_testbed::{
    start_switchyard, switchyard_binary, wait_for, ChildGuard, Manifests, Place, Signal, Testbed,
    TopologySpec,
};

use switchyard_common::{map_names, CtKey, CtValue, DEFAULT_CONNTRACK_MAX};

use super::load::{ClientArgs, Outcome, READY_LINE};
use super::services::{self, Targets, APP_PORT, IPERF_PORT};
use crate::controlplane::metrics::Scraper;
use crate::controlplane::procfs::CpuTimes;
use crate::controlplane::Mode;

/// Port of the proxies' metrics servers, on each node's underlay address.
const METRICS_PORT: u16 = 10249;

/// Where the load clients run for pod traffic.
pub const CLIENT_POD: Place = Place::Pod { node: 1, pod: 1 };
/// The NodePort's local backend.
const LOCAL_BACKEND: Place = Place::Pod { node: 1, pod: 2 };
/// Every other backend.
const BACKEND: Place = Place::Pod { node: 2, pod: 1 };

/// A path under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// No proxy: straight to the pod IPs.
    Direct,
    /// switchyard in this mode on both nodes.
    Proxy(Mode),
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathKind::Direct => f.write_str("no proxy"),
            PathKind::Proxy(mode) => write!(f, "{mode}"),
        }
    }
}

/// A built sandbox, serving.
pub struct Sandbox {
    /// Which path it is.
    pub kind: PathKind,
    /// Where each measurement connects.
    pub targets: Targets,
    /// Seconds from the start of the build until everything answered.
    pub ready_s: f64,
    /// The proxies' full first sync as they reported it, seconds (node1, node2).
    pub first_sync_s: Vec<f64>,
    // Field order is drop order: the proxies and servers stop before the sandbox goes.
    proxies: Vec<ChildGuard>,
    paused: bool,
    _servers: Vec<ChildGuard>,
    _manifests: Option<Manifests>,
    testbed: Testbed,
}

/// What a sandbox needs to know.
#[derive(Debug, Clone, Copy)]
pub struct Build {
    /// The path.
    pub kind: PathKind,
    /// Services in total (decoys + the measured ClusterIP service).
    pub services: usize,
    /// Ready endpoints per decoy service.
    pub endpoints: usize,
    /// Longest wait for the proxies' first sync.
    pub sync_timeout: Duration,
}

impl Sandbox {
    /// Builds the testbed and starts the servers, and for a proxy path the proxies (it does
    /// not wait for them: see [`Sandbox::wait_ready`], so several sandboxes sync at once).
    pub fn start(build: &Build) -> anyhow::Result<Self> {
        let testbed = Testbed::new(TopologySpec {
            nodes: 2,
            pods_per_node: 2,
        })?;
        let backend = testbed.pod(2, 1).ip;
        let local_backend = testbed.pod(1, 2).ip;
        let node1 = testbed.node(1).underlay_ip;
        // Clients close first and so keep TIME_WAIT sockets; with tcp_tw_reuse a port is free
        // again a second later instead of after a minute (per-namespace sysctl).
        for path in [&testbed.pod(1, 1).netns_path, &testbed.client().netns_path] {
            write_sysctl(path, "net/ipv4/tcp_tw_reuse", "1")?;
        }
        let exe = std::env::current_exe().context("locating the benchmark binary")?;
        let serve = |place: Place| -> anyhow::Result<ChildGuard> {
            let mut server = testbed.spawn(
                place,
                &exe,
                ["load", "serve", "--port", &APP_PORT.to_string()],
            )?;
            server
                .wait_for_stdout_line(|l| l.trim() == READY_LINE, Duration::from_secs(10))
                .with_context(|| format!("load server in {place}: {}", server.stderr()))?;
            Ok(server)
        };
        let servers = vec![
            serve(BACKEND)?,
            serve(LOCAL_BACKEND)?,
            super::iperf::start_server(&testbed, BACKEND, IPERF_PORT)?,
        ];
        let (targets, manifests, proxies): (_, _, Vec<ChildGuard>) = match build.kind {
            PathKind::Direct => {
                route_client_through_node1(&testbed)?;
                (Targets::direct(local_backend, backend), None, Vec::new())
            }
            PathKind::Proxy(mode) => {
                let manifests = Manifests::new()?;
                services::write(
                    &manifests,
                    build.services,
                    build.endpoints,
                    backend,
                    local_backend,
                )?;
                // node1's proxy only: node2's starts once node1's has synced
                // (`wait_first_node`).
                let proxies = vec![start_proxy(&testbed, 1, mode, &manifests)?];
                (Targets::via_proxy(node1, backend), Some(manifests), proxies)
            }
        };
        Ok(Self {
            kind: build.kind,
            targets,
            ready_s: 0.0,
            first_sync_s: Vec::new(),
            proxies,
            paused: false,
            _servers: servers,
            _manifests: manifests,
            testbed,
        })
    }

    /// Waits until node1's proxy has completed a sync with every service port, then starts
    /// node2's. One node at a time: in iptables-legacy mode both nodes' restores would
    /// otherwise contend for the one `/run/xtables.lock` of this machine (real nodes each
    /// have their own), and at 30,000 services every full sync of either could time out
    /// waiting. A no-op for the no-proxy path and once node2's proxy runs.
    pub fn wait_first_node(&mut self, build: &Build, progress: &str) -> anyhow::Result<()> {
        let PathKind::Proxy(mode) = self.kind else {
            return Ok(());
        };
        if self.proxies.len() != 1 {
            return Ok(());
        }
        let expected = services::decoys(build.services) + services::MEASURED_PORTS;
        let reported = self.wait_synced(0, expected, build.sync_timeout, progress)?;
        self.first_sync_s.push(reported);
        let manifests = self
            ._manifests
            .as_ref()
            .context("a proxy sandbox without manifests")?;
        let node2 = start_proxy(&self.testbed, 2, mode, manifests)?;
        self.proxies.push(node2);
        Ok(())
    }

    /// Waits until every proxy has completed a sync with every service port (node1's first,
    /// see [`Sandbox::wait_first_node`]) and each measured address answers; `started` is
    /// when the build began.
    pub fn wait_ready(
        &mut self,
        build: &Build,
        started: Instant,
        progress: &str,
    ) -> anyhow::Result<()> {
        self.wait_first_node(build, progress)?;
        if let PathKind::Proxy(_) = self.kind {
            let expected = services::decoys(build.services) + services::MEASURED_PORTS;
            for i in self.first_sync_s.len()..self.proxies.len() {
                let reported = self.wait_synced(i, expected, build.sync_timeout, progress)?;
                self.first_sync_s.push(reported);
            }
        }
        for (what, place, to) in [
            ("the service", CLIENT_POD, self.targets.service),
            ("the pod", CLIENT_POD, self.targets.pod),
            (
                "the NodePort (local backend)",
                Place::Client,
                self.targets.node_port_local,
            ),
            (
                "the NodePort (remote backend)",
                Place::Client,
                self.targets.node_port_remote,
            ),
        ] {
            wait_for(
                &format!("{what} {to} to answer from {place}"),
                Duration::from_secs(30),
                || match self.connect(place, to, 0.5, 1) {
                    Ok(o) if o.done == 1 => Ok(()),
                    other => Err(other.map_err(|e| format!("{e:#}"))),
                },
            )
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.kind))
            .with_context(|| self.proxy_log_tail())?;
        }
        self.ready_s = started.elapsed().as_secs_f64();
        Ok(())
    }

    /// Polls proxy `i`'s metrics until a completed sync has `expected` service ports;
    /// returns the summed duration of its full syncs so far (the first one, normally).
    fn wait_synced(
        &mut self,
        i: usize,
        expected: usize,
        timeout: Duration,
        progress: &str,
    ) -> anyhow::Result<f64> {
        let node = self.testbed.node(i + 1).clone();
        let scraper = Scraper::new(
            node.netns_path.clone(),
            SocketAddr::from((node.underlay_ip, METRICS_PORT)),
        );
        let started = Instant::now();
        let mut next_progress = Duration::from_secs(30);
        loop {
            if let Some(status) = self.proxies[i].try_wait()? {
                bail!(
                    "{} on {} exited {status} before its first sync: {}",
                    self.kind,
                    node.name,
                    tail(&self.proxies[i].stderr(), 20)
                );
            }
            let last = match scraper.scrape() {
                Ok(m) if m.last_sync > 0.0 && m.service_ports >= expected as f64 => {
                    return Ok(m.full_sync_seconds)
                }
                Ok(m) => format!("{m:?}"),
                Err(e) => format!("{e:#}"),
            };
            let waited = started.elapsed();
            if waited >= timeout {
                bail!(
                    "{} on {}: no sync with {expected} service ports after {} s (last: {last})",
                    self.kind,
                    node.name,
                    waited.as_secs()
                );
            }
            if waited >= next_progress {
                eprintln!(
                    "  {progress}: {} on {} still syncing ({} s)",
                    self.kind,
                    node.name,
                    waited.as_secs()
                );
                next_progress += Duration::from_secs(30);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of node1's proxy log, for a failure.
    pub fn proxy_log_tail(&self) -> String {
        match self.proxies.first() {
            Some(p) => format!("node1 proxy log: {}", tail(&p.stderr(), 15)),
            None => "no proxy".to_owned(),
        }
    }

    /// The whole log of each proxy (node1 first).
    pub fn proxy_logs(&self) -> Vec<String> {
        self.proxies.iter().map(ChildGuard::stderr).collect()
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the proxies. While another path is measured
    /// the proxies of this one are stopped, so that their periodic work (a resync, a
    /// manifest rescan) does not land in the other path's figures; the kernel state they
    /// programmed keeps working meanwhile.
    pub fn pause(&mut self, paused: bool) -> anyhow::Result<()> {
        if self.paused == paused {
            return Ok(());
        }
        let signal = if paused {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        for proxy in &mut self.proxies {
            proxy.signal(signal)?;
        }
        self.paused = paused;
        Ok(())
    }

    /// CPU time of the proxies so far, seconds (their own and their reaped children's).
    pub fn proxy_cpu_s(&self) -> f64 {
        let ticks = crate::controlplane::procfs::clock_ticks() as f64;
        self.proxies
            .iter()
            .filter_map(|p| CpuTimes::of(p.pid()).ok())
            .map(|t| (t.own + t.children) as f64 / ticks)
            .sum()
    }

    /// Fails if a proxy has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for proxy in &mut self.proxies {
            if let Some(status) = proxy.try_wait()? {
                bail!(
                    "{}: a proxy exited {status}: {}",
                    self.kind,
                    tail(&proxy.stderr(), 20)
                );
            }
        }
        Ok(())
    }

    /// Runs a load client in `place` making new connections to `to`.
    pub fn connect(
        &self,
        place: Place,
        to: SocketAddr,
        seconds: f64,
        max: usize,
    ) -> anyhow::Result<Outcome> {
        self.load(place, "connect", &client(to, 1, seconds, max))
    }

    /// Runs a load client with the given shape.
    pub fn load(&self, place: Place, role: &str, args: &ClientArgs) -> anyhow::Result<Outcome> {
        let exe = std::env::current_exe()?;
        let argv = vec![
            "load".to_owned(),
            role.to_owned(),
            "--to".to_owned(),
            args.to.to_string(),
            "--concurrency".to_owned(),
            args.concurrency.to_string(),
            "--seconds".to_owned(),
            args.seconds.to_string(),
            "--max".to_owned(),
            args.max.to_string(),
            "--timeout-ms".to_owned(),
            args.timeout_ms.to_string(),
        ];
        let budget = Duration::from_secs_f64(args.seconds) + Duration::from_secs(15);
        let done = self.testbed.run(place, &exe, &argv, budget)?;
        if !done.status.success() {
            bail!(
                "load {role} to {} in {place} exited {}: {}",
                args.to,
                done.status,
                done.stderr
            );
        }
        serde_json::from_str(done.stdout.trim())
            .with_context(|| format!("load {role} output {:?}", done.stdout))
    }

    /// The testbed, for iperf3 runs.
    pub fn testbed(&self) -> &Testbed {
        &self.testbed
    }

    /// netfilter conntrack entries in node1's namespace (`conntrack -C`); none means no
    /// netfilter hook tracks connections there.
    pub fn node1_conntrack_entries(&self) -> Option<u64> {
        let done = self
            .testbed
            .run(Place::Node(1), "conntrack", ["-C"], Duration::from_secs(10))
            .ok()?;
        done.stdout.trim().parse().ok()
    }

    /// Entries of node1's tc conntrack map (`SWY_CONNTRACK`, read from its pin), ebpf only.
    pub fn node1_tc_conntrack_entries(&self) -> Option<usize> {
        if self.kind != PathKind::Proxy(Mode::Ebpf) {
            return None;
        }
        let pin = self
            .testbed
            .bpffs_dir(self.testbed.node(1))
            .join("maps")
            .join(map_names::CONNTRACK);
        let map = aya::maps::MapData::from_pin(pin).ok()?;
        let map = aya::maps::Map::LruHashMap(map);
        let table: aya::maps::HashMap<_, CtKey, CtValue> =
            aya::maps::HashMap::try_from(map).ok()?;
        // A key deleted during the walk restarts it: bounded by the default capacity.
        Some(
            table
                .keys()
                .take(DEFAULT_CONNTRACK_MAX as usize)
                .filter(Result::is_ok)
                .count(),
        )
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // A stopped process dies of SIGKILL too, but resuming first lets it be reaped the
        // ordinary way.
        let _ = self.pause(false);
    }
}

/// Starts switchyard in `mode` on node `index` with its metrics on the node's address.
fn start_proxy(
    testbed: &Testbed,
    index: usize,
    mode: Mode,
    manifests: &Manifests,
) -> anyhow::Result<ChildGuard> {
    let node = testbed.node(index);
    let bind = format!(
        "--metrics-bind-address={}",
        SocketAddr::from((node.underlay_ip, METRICS_PORT))
    );
    let mut extra = vec![bind.as_str()];
    extra.extend(mode.extra_flags());
    let binary = switchyard_binary()?;
    Ok(start_switchyard(
        testbed,
        node,
        &binary,
        mode.proxy_mode(),
        manifests,
        &extra,
    )?)
}

/// The shape of a load client run.
pub fn client(to: SocketAddr, concurrency: usize, seconds: f64, max: usize) -> ClientArgs {
    ClientArgs {
        to,
        concurrency,
        seconds,
        max,
        timeout_ms: 1000,
    }
}

/// The direct sandbox's external client reaches the pods through node1, and node2 answers
/// it through node1 too (otherwise it would answer on-link over the underlay).
fn route_client_through_node1(testbed: &Testbed) -> anyhow::Result<()> {
    let node1 = testbed.node(1).underlay_ip.to_string();
    let cluster = testbed.cluster_cidr().to_string();
    let client = switchyard_testbed::topology::client_cidr().to_string();
    for (place, args) in [
        (
            Place::Client,
            vec!["route", "add", &cluster, "via", &node1, "dev", "eth0"],
        ),
        (
            Place::Node(2),
            vec!["route", "replace", &client, "via", &node1, "dev", "eth0"],
        ),
    ] {
        let done = testbed.run(place, "ip", &args, Duration::from_secs(10))?;
        if !done.status.success() {
            bail!("ip {} in {place}: {}", args.join(" "), done.stderr);
        }
    }
    Ok(())
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
