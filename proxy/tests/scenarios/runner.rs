//! Runs scenarios against the real `switchyard` binary in a two-node testbed.
//!
//! One scenario = one testbed: nodes with pods that run echo servers on [`ECHO_PORTS`] (TCP
//! and UDP, each answering `<pod>:<port>`), the scenario's objects (its files plus
//! `nodes.yaml`), and switchyard on the chosen nodes. The objects reach switchyard one of
//! two ways ([`Via`]): as a manifest directory (`--manifests`; edits write and remove files),
//! or through a fake API server in each proxied node's network namespace (`--kubeconfig`;
//! edits become applies and deletes, see `api.rs`). The runner waits until every proxy
//! logged its first sync and the first check passes, then runs the steps. Scenarios run in
//! parallel, each on its own testbed. Held flows (`Step::Hold`) are `swy-probe hold`
//! processes that run in the background until the scenario ends; `Step::Held` judges what
//! they reported so far, and failure reports show every held flow's timeline.
//!
//! Addition to the plain testbed, inside its own namespaces: the external client gets the
//! scenario's `client_routes` (e.g. an externalIP range via a node).
//!
//! Environment knobs:
//! - `SWY_SCENARIOS=a,b`: only scenarios whose name contains one of these substrings;
//! - `SWY_SCENARIOS_JOBS=N`: scenarios run at once (default 4);
//! - `SWY_SCENARIOS_PENDING=1`: also run the `iptables only` scenarios in ebpf mode.
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use switchyard_testbed::hold::summarize as summarize_flow;
use switchyard_testbed::switchyard::node_args;
use switchyard_testbed::{
    wait_for, ChildGuard, HeldReply, Hold, Manifests, ObjectSource, OutputMode, Place, Reply,
    RequestError, RequestSpec, Testbed, TopologySpec,
};

use super::api::ApiObjects;
use super::model::{
    At, Check, FileEdit, Flow, Held, Mode, Outcome, Scenario, Source, Step, Via, ECHO_PORTS,
    HOLD_INTERVAL, HOLD_MAX_GAP, HOLD_SETTLE, NODES,
};

/// How long switchyard may take to report its first sync: a deadline, not an expectation. The
/// table starts up to a dozen proxies at once on two cores (every variant runs in parallel),
/// each parsing the kernel's BTF and verifying its programs; a CI run saw 20 s then.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the first check may take to pass (the readiness condition).
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an edit may take to show.
const EDIT_TIMEOUT: Duration = Duration::from_secs(20);
/// The first probe run of a check makes at most this many attempts, so a check that fails
/// (for example while polling) costs at most a few timeouts.
const FIRST_CHUNK: usize = 4;
/// Log lines of each proxy shown on failure.
const LOG_TAIL_LINES: usize = 120;

/// One scenario's result: its name, how long it took, and the failure report if any.
type ScenarioResult = (&'static str, Duration, Result<(), String>);

/// Runs every scenario of `table` that runs in `mode`, with objects fed `via` manifests or
/// the API, and panics with all failures.
pub fn run_table(mode: Mode, via: Via, table: Vec<Scenario>) {
    let label = via.label(mode);
    let pending = std::env::var("SWY_SCENARIOS_PENDING").is_ok_and(|v| v == "1");
    let filter: Vec<String> = std::env::var("SWY_SCENARIOS")
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let selected = |s: &Scenario| filter.is_empty() || filter.iter().any(|f| s.name.contains(f));
    let (to_run, skipped): (Vec<Scenario>, Vec<Scenario>) = table
        .into_iter()
        .filter(|s| selected(s))
        .partition(|s| s.runs_in(mode, pending));
    for s in &skipped {
        if let super::model::Ebpf::IptablesOnly(why) = &s.ebpf {
            eprintln!("[{label}] {}: skipped, iptables only (ebpf: {why})", s.name);
        }
    }
    assert!(
        !to_run.is_empty() || !filter.is_empty(),
        "no scenario runs in {label} mode"
    );
    let jobs = std::env::var("SWY_SCENARIOS_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4usize)
        .max(1);

    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<ScenarioResult>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(to_run.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(scenario) = to_run.get(i) else {
                    break;
                };
                let t = Instant::now();
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_scenario(scenario, mode, via)
                }))
                .unwrap_or_else(|panic| {
                    let text = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "unknown panic".into());
                    Err(format!(
                        "[{label}] scenario {}: panicked: {text}",
                        scenario.name
                    ))
                });
                let elapsed = t.elapsed();
                match &result {
                    Ok(()) => eprintln!("[{label}] {}: passed in {elapsed:.1?}", scenario.name),
                    Err(_) => eprintln!("[{label}] {}: FAILED after {elapsed:.1?}", scenario.name),
                }
                results.lock().unwrap_or_else(|e| e.into_inner()).push((
                    scenario.name,
                    elapsed,
                    result,
                ));
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let failures: Vec<&String> = results
        .iter()
        .filter_map(|(_, _, r)| r.as_ref().err())
        .collect();
    eprintln!(
        "[{label}] {} scenarios run, {} failed, {} skipped, in {:.1?}",
        results.len(),
        failures.len(),
        skipped.len(),
        started.elapsed()
    );
    if !failures.is_empty() {
        let names: Vec<&str> = results
            .iter()
            .filter(|(_, _, r)| r.is_err())
            .map(|(n, _, _)| *n)
            .collect();
        panic!(
            "{} of {} scenarios failed in {label} mode: {}\n\n{}",
            failures.len(),
            results.len(),
            names.join(", "),
            failures
                .iter()
                .map(|f| f.as_str())
                .collect::<Vec<_>>()
                .join("\n\n========================================\n\n")
        );
    }
}

/// A running scenario: its testbed, objects, echo servers, proxies and held flows.
struct Run<'a> {
    scenario: &'a Scenario,
    mode: Mode,
    /// `mode` plus the object source, for messages.
    label: String,
    testbed: Testbed,
    proxies: Vec<(usize, ChildGuard)>,
    /// Declared after the proxies, so they stop before their API servers do.
    objects: Objects,
    _echo: Vec<ChildGuard>,
    /// Held flows by name, in the order they were started.
    flows: Vec<HeldFlow>,
    /// When the latest edit was written (what [`Held::Moved`] counts from), and how many
    /// syncs each proxy had logged just before.
    last_edit: Option<(Instant, Vec<usize>)>,
}

/// A held flow of a running scenario and what it has been judged to be so far.
struct HeldFlow {
    flow: Flow,
    hold: Hold,
    /// Index of the first round trip of its current leg (0, or where it last moved).
    since: usize,
    /// The backend answering the current leg, and the source address it sees.
    backend: String,
    source: SocketAddr,
}

/// Where the scenario's objects live, and how edits reach switchyard.
enum Objects {
    /// A manifest directory (`--manifests`).
    Files(Manifests),
    /// A fake API server per proxied node (`--kubeconfig`).
    Api(ApiObjects),
}

impl Objects {
    /// An empty manifest directory, or started (still empty) API servers on `proxies`.
    fn new(via: Via, testbed: &Testbed, proxies: &[usize]) -> Result<Self, String> {
        match via {
            Via::Manifests => Manifests::new()
                .map(Objects::Files)
                .map_err(|e| format!("manifest dir: {e}")),
            Via::Api => {
                let nodes = proxies
                    .iter()
                    .map(|&n| testbed.try_node(n).ok_or_else(|| format!("no node{n}")))
                    .collect::<Result<Vec<_>, _>>()?;
                ApiObjects::start(&nodes).map(Objects::Api)
            }
        }
    }

    /// Writes (or replaces) manifest file `name`.
    fn write(&mut self, name: &str, yaml: &str) -> Result<(), String> {
        match self {
            Objects::Files(m) => m
                .write(name, yaml)
                .map_err(|e| format!("writing {name}: {e}")),
            Objects::Api(api) => api.write(name, yaml),
        }
    }

    /// Removes manifest file `name`.
    fn remove(&mut self, name: &str) -> Result<(), String> {
        match self {
            Objects::Files(m) => m.remove(name).map_err(|e| format!("removing {name}: {e}")),
            Objects::Api(api) => api.remove(name),
        }
    }

    /// The source switchyard on node `n` reads.
    fn source(&self, n: usize) -> Result<ObjectSource<'_>, String> {
        match self {
            Objects::Files(m) => Ok(ObjectSource::Manifests(m.path())),
            Objects::Api(api) => api.kubeconfig(n).map(ObjectSource::Kubeconfig),
        }
    }
}

/// Runs one scenario; `Err` holds the whole failure report.
pub fn run_scenario(scenario: &Scenario, mode: Mode, via: Via) -> Result<(), String> {
    let label = via.label(mode);
    let fail = |what: String| format!("[{label}] scenario {}: {what}", scenario.name);
    let mut testbed = Testbed::new(TopologySpec {
        nodes: NODES,
        pods_per_node: scenario.pods_per_node,
    })
    .map_err(|e| fail(format!("building the testbed: {e}")))?;
    testbed.set_probe_binary(probe_binary().map_err(fail)?);

    let mut echo = Vec::new();
    for pod in testbed.pods() {
        for port in ECHO_PORTS {
            let name = format!("{}:{port}", pod.name);
            echo.push(
                testbed
                    .start_echo_sctp(pod, &name, &[port], &[port], &[port])
                    .map_err(|e| fail(format!("starting echo server {name}: {e}")))?,
            );
        }
    }
    for (cidr, node) in &scenario.client_routes {
        // An IPv6 prefix goes via the node's IPv6 underlay address.
        let gateway = if cidr.contains(':') {
            testbed.node(*node).underlay_ipv6.to_string()
        } else {
            testbed.node(*node).underlay_ip.to_string()
        };
        ip(
            &testbed.client().netns,
            &["route", "add", cidr, "via", &gateway, "dev", "eth0"],
        )
        .map_err(&fail)?;
    }

    let mut objects = Objects::new(via, &testbed, &scenario.proxies).map_err(&fail)?;
    objects
        .write("nodes.yaml", &testbed.nodes_yaml())
        .map_err(&fail)?;
    for (name, yaml) in &scenario.manifests {
        objects.write(name, yaml).map_err(&fail)?;
    }

    let mut run = Run {
        scenario,
        mode,
        label,
        testbed,
        proxies: Vec::new(),
        objects,
        _echo: echo,
        flows: Vec::new(),
        last_edit: None,
    };
    for &n in &scenario.proxies {
        let child = run.start_proxy(n).map_err(|e| run.report("start", &e))?;
        run.proxies.push((n, child));
    }
    run.wait_started().map_err(|e| run.report("start", &e))?;

    for (i, step) in scenario.steps.iter().enumerate() {
        let what = format!("step {} ({})", i + 1, step.describe(mode));
        let result = match (i, step) {
            (0, Step::Check(c)) => wait_for(
                "the first check to pass (switchyard has programmed the dataplane)",
                READY_TIMEOUT,
                || run.check(c),
            )
            .map(|_| ())
            .map_err(|e| e.to_string()),
            _ => run.step(step),
        };
        result.map_err(|e| run.report(&what, &e))?;
    }
    Ok(())
}

impl Run<'_> {
    fn start_proxy(&self, n: usize) -> Result<ChildGuard, String> {
        let node = self
            .testbed
            .try_node(n)
            .ok_or_else(|| format!("no node{n}"))?;
        let mut args = node_args(
            &self.testbed,
            node,
            self.mode.flag(),
            self.objects.source(n)?,
        );
        args.extend(self.mode.extra_flags().iter().map(|f| f.to_string()));
        args.extend(self.scenario.flags.iter().map(|f| f.to_string()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        // The "synced" log line is the start condition; a RUST_LOG from the caller must not
        // hide it.
        cmd.args(&args).env_remove("RUST_LOG");
        self.testbed
            .spawn_with(node, cmd, OutputMode::Capture)
            .map_err(|e| format!("starting switchyard on node{n}: {e}"))
    }

    /// Waits until every proxy's /healthz says it has synced; fails at once if one exits.
    fn wait_started(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        for (n, child) in &mut self.proxies {
            let node = self.testbed.node(*n);
            loop {
                if matches!(
                    switchyard_testbed::http_get(node, 10256, "/healthz"),
                    Ok((200, _))
                ) {
                    break;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "switchyard on node{n} exited ({status}) before syncing"
                    ));
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "switchyard on node{n}: /healthz not 200 within {START_TIMEOUT:?}"
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    fn step(&mut self, step: &Step) -> Result<(), String> {
        match step {
            Step::Check(c) => self.check(c).map(|_| ()),
            Step::Edit {
                edits,
                until,
                steady,
            } => {
                let synced = self.synced_counts();
                for edit in edits {
                    match edit {
                        FileEdit::Write(name, yaml) => self.objects.write(name, yaml),
                        FileEdit::Remove(name) => self.objects.remove(name),
                    }
                    .map_err(|e| format!("applying the edit: {e}"))?;
                }
                self.last_edit = Some((Instant::now(), synced));
                let mut steady_failure = None;
                let waited = wait_for("the edit to take effect", EDIT_TIMEOUT, || {
                    if steady_failure.is_some() {
                        return Ok(());
                    }
                    for c in steady {
                        if let Err(e) = self.check(c) {
                            steady_failure = Some(format!(
                                "steady check {} failed while the edit was taken up: {e}",
                                c.describe(self.mode)
                            ));
                            return Ok(());
                        }
                    }
                    let mut observed = Vec::new();
                    for c in until {
                        if let Err(e) = self.check(c) {
                            observed.push(format!("{}: {e}", c.describe(self.mode)));
                        }
                    }
                    if observed.is_empty() {
                        Ok(())
                    } else {
                        Err(observed)
                    }
                });
                if let Some(failure) = steady_failure {
                    return Err(failure);
                }
                waited.map_err(|e| e.to_string())?;
                // Once taken up, the steady checks still hold.
                for c in steady {
                    self.check(c)
                        .map_err(|e| format!("steady check {}: {e}", c.describe(self.mode)))?;
                }
                Ok(())
            }
            Step::AffinityExpires {
                check,
                timeout,
                rounds,
            } => {
                let once = |c: &Check| -> Result<Reply, String> {
                    let results = self.probe(c, 1)?;
                    match results.into_iter().next() {
                        Some(Ok(reply)) => Ok(reply),
                        other => Err(format!("expected an answer, got {other:?}")),
                    }
                };
                let stuck = once(check)?.backend;
                let mut seen = Vec::new();
                for _ in 0..*rounds {
                    // The only fixed sleep: the affinity timeout itself must pass, idle.
                    std::thread::sleep(*timeout + Duration::from_millis(500));
                    let reply = once(check)?;
                    if reply.backend != stuck {
                        return Ok(());
                    }
                    seen.push(reply.backend);
                }
                Err(format!(
                    "stuck to {stuck} for {rounds} rounds of waiting {timeout:?} idle: {seen:?}"
                ))
            }
            Step::Hold(flow) => self.start_flow(flow),
            Step::Held { flow, expect } => {
                let label = self.label.clone();
                let last_edit = self.last_edit.as_ref().map(|(at, _)| *at);
                if *expect == Held::Kept {
                    // The edit's `until` checks may only show one node's proxy; the flow
                    // must have seen every proxy apply it.
                    self.wait_synced_since_edit()?;
                }
                let f = self
                    .flows
                    .iter_mut()
                    .find(|f| f.flow.name == *flow)
                    .ok_or_else(|| format!("no held flow {flow} was started"))?;
                match expect {
                    Held::Kept => f.kept(),
                    Held::Moved { backends, within } => {
                        let edit = last_edit.ok_or("no edit came before this step")?;
                        f.moved(backends, edit + *within, &label)
                    }
                }
            }
        }
    }

    /// How many syncs each proxy has logged.
    fn synced_counts(&self) -> Vec<usize> {
        self.proxies
            .iter()
            .map(|(_, child)| child.stderr().matches(" synced ").count())
            .collect()
    }

    /// Waits until every proxy has logged a sync since the latest edit was written (no-op
    /// without an edit).
    fn wait_synced_since_edit(&self) -> Result<(), String> {
        let Some((_, before)) = &self.last_edit else {
            return Ok(());
        };
        wait_for("every proxy to sync after the edit", EDIT_TIMEOUT, || {
            let lagging: Vec<String> = self
                .synced_counts()
                .iter()
                .zip(before)
                .zip(&self.proxies)
                .filter(|((now, before), _)| now <= before)
                .map(|(_, (n, _))| format!("switchyard on node{n} logged no sync yet"))
                .collect();
            if lagging.is_empty() {
                Ok(())
            } else {
                Err(lagging)
            }
        })
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    /// Starts a held flow and judges its first round trip by the flow's check.
    fn start_flow(&mut self, flow: &Flow) -> Result<(), String> {
        if self.flows.iter().any(|f| f.flow.name == flow.name) {
            return Err(format!("held flow {} started twice", flow.name));
        }
        let c = &flow.check;
        let hold = self
            .testbed
            .hold(place(c.from), c.proto, c.to, HOLD_INTERVAL)
            .map_err(|e| format!("starting held flow {}: {e}", flow.name))?;
        let first = hold
            .timeline()
            .into_iter()
            .next()
            .ok_or("the held flow reported nothing")?
            .result;
        let reply = first.map_err(|e| format!("the held flow's first round trip failed: {e}"))?;
        if let Some(problem) =
            self.violation(c, c.outcome.get(self.mode), &Ok(reply.clone()), &mut None)
        {
            return Err(format!("the held flow's first round trip: {problem}"));
        }
        self.flows.push(HeldFlow {
            flow: flow.clone(),
            hold,
            since: 0,
            backend: reply.backend,
            source: reply.seen_source,
        });
        Ok(())
    }

    fn probe(&self, c: &Check, count: usize) -> Result<Vec<Result<Reply, RequestError>>, String> {
        let spec = RequestSpec::new(c.proto, c.to)
            .count(count)
            .timeout(c.timeout)
            .unconnected(c.unconnected)
            .dest_options(c.dest_options)
            .size(c.size);
        self.testbed
            .request_with(place(c.from), &spec)
            .map_err(|e| format!("running the probe: {e}"))
    }

    /// Runs one check; `Err` describes what was observed instead.
    fn check(&self, c: &Check) -> Result<(), String> {
        let outcome = c.outcome.get(self.mode);
        let total = c.attempts_in(self.mode);
        let mut results = Vec::with_capacity(total);
        let mut sticky: Option<String> = None;
        let first = total.min(FIRST_CHUNK);
        for count in [first, total - first] {
            if count == 0 {
                continue;
            }
            let batch = self.probe(c, count)?;
            for r in &batch {
                if let Some(problem) = self.violation(c, outcome, r, &mut sticky) {
                    results.extend(batch.iter().cloned());
                    return Err(format!("{problem}; observed {}", summarize(&results)));
                }
            }
            results.extend(batch);
        }
        if let Outcome::Backends(set) = outcome {
            let want: BTreeSet<&str> = set.iter().map(String::as_str).collect();
            let got: BTreeSet<&str> = results
                .iter()
                .flatten()
                .map(|r| r.backend.as_str())
                .collect();
            if want != got {
                let missing: Vec<&&str> = want.difference(&got).collect();
                return Err(format!(
                    "not every backend answered within {total} attempts, missing {missing:?}; \
                     observed {}",
                    summarize(&results)
                ));
            }
        }
        Ok(())
    }

    /// What is wrong with one attempt's result, if anything.
    fn violation(
        &self,
        c: &Check,
        outcome: &Outcome,
        result: &Result<Reply, RequestError>,
        sticky: &mut Option<String>,
    ) -> Option<String> {
        match (outcome, result) {
            (Outcome::Backends(set), Ok(reply)) => {
                if !set.contains(&reply.backend) {
                    return Some(format!("unexpected backend {}", reply.backend));
                }
                self.reply_problem(c, reply)
            }
            (Outcome::Sticky(set), Ok(reply)) => {
                if !set.contains(&reply.backend) {
                    return Some(format!("unexpected backend {}", reply.backend));
                }
                match sticky {
                    Some(first) if *first != reply.backend => {
                        return Some(format!("affinity broken: {} after {first}", reply.backend))
                    }
                    Some(_) => {}
                    None => *sticky = Some(reply.backend.clone()),
                }
                self.reply_problem(c, reply)
            }
            (Outcome::Backends(_) | Outcome::Sticky(_), Err(e)) => {
                Some(format!("an attempt failed ({e})"))
            }
            (Outcome::Refused, Err(RequestError::Refused)) => None,
            (Outcome::Dropped, Err(RequestError::Timeout)) => None,
            (Outcome::NoAnswer, Err(RequestError::Refused | RequestError::Timeout)) => None,
            (Outcome::Refused | Outcome::Dropped | Outcome::NoAnswer, other) => {
                Some(format!("expected {outcome:?}, got {other:?}"))
            }
        }
    }

    /// Source address and reverse-NAT problems of an answered attempt.
    fn reply_problem(&self, c: &Check, reply: &Reply) -> Option<String> {
        if c.unconnected && reply.replied_from != c.to {
            return Some(format!(
                "the reply came from {} instead of {} (missing reverse NAT)",
                reply.replied_from, c.to
            ));
        }
        let want = *c.source.as_ref()?.get(self.mode);
        let seen = reply.seen_source.ip();
        if seen.is_ipv4() != c.to.is_ipv4() {
            return Some(format!(
                "source {} is not of the family of {}",
                reply.seen_source, c.to
            ));
        }
        let ok = match want {
            Source::Own => self.own_addresses(c.from).contains(&seen),
            Source::Node => self.node_addresses().contains(&seen),
            Source::Ip(ip) => seen == IpAddr::V4(ip),
            Source::NodeUnlessLocal => match self.translating_node(c) {
                Some(n) if reply.backend.starts_with(&format!("node{n}-")) => {
                    self.own_addresses(c.from).contains(&seen)
                }
                Some(_) => self.node_addresses().contains(&seen),
                None => {
                    self.node_addresses().contains(&seen)
                        || self.own_addresses(c.from).contains(&seen)
                }
            },
        };
        (!ok).then(|| {
            format!(
                "{} saw source {seen}, expected {want:?} of {}",
                reply.backend, c.from
            )
        })
    }

    /// The requester's own addresses, of both families.
    fn own_addresses(&self, at: At) -> Vec<IpAddr> {
        match at {
            At::Pod(n, p) => self
                .testbed
                .try_pod(n, p)
                .map(|p| vec![p.ip.into(), p.ip6.into()])
                .unwrap_or_default(),
            At::Node(n) => self
                .testbed
                .try_node(n)
                .map(|node| {
                    vec![
                        node.underlay_ip.into(),
                        node.pod_gateway.into(),
                        node.underlay_ipv6.into(),
                        node.pod_gateway_v6.into(),
                    ]
                })
                .unwrap_or_default(),
            At::Client => vec![
                self.testbed.client().ip.into(),
                self.testbed.client().ipv6.into(),
            ],
        }
    }

    /// The node whose tc program translates the check's traffic: the owner of the
    /// destination address, or the node a client route sends it to.
    fn translating_node(&self, c: &Check) -> Option<usize> {
        if let Some(node) = self.testbed.nodes().iter().find(|n| {
            c.to.ip() == IpAddr::from(n.underlay_ip) || c.to.ip() == IpAddr::from(n.underlay_ipv6)
        }) {
            return Some(node.index);
        }
        let IpAddr::V4(to) = c.to.ip() else {
            return None;
        };
        self.scenario
            .client_routes
            .iter()
            .find(|(cidr, _)| {
                cidr.parse::<switchyard_testbed::Cidr>()
                    .is_ok_and(|cidr| cidr.contains(to))
            })
            .map(|(_, node)| *node)
    }

    /// Every node's addresses, of both families.
    fn node_addresses(&self) -> Vec<IpAddr> {
        self.testbed
            .nodes()
            .iter()
            .flat_map(|n| {
                [
                    n.underlay_ip.into(),
                    n.pod_gateway.into(),
                    n.underlay_ipv6.into(),
                    n.pod_gateway_v6.into(),
                ]
            })
            .collect()
    }

    /// The failure report: scenario, mode, step, what was observed, and the proxies' logs.
    fn report(&self, what: &str, observed: &str) -> String {
        let mut out = format!(
            "[{}] scenario {}: {what} failed:\n  {observed}\n",
            self.label, self.scenario.name
        );
        for f in &self.flows {
            out.push_str(&format!(
                "\n--- held flow {} ({}) ---\n{}\n",
                f.flow.name,
                f.hold.describe(),
                summarize_flow(&f.hold.timeline())
            ));
        }
        for (n, child) in &self.proxies {
            let log = strip_ansi(&child.stderr());
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            out.push_str(&format!(
                "\n--- switchyard on node{n} ({} of {} log lines) ---\n{}\n",
                tail.len(),
                lines.len(),
                tail.join("\n")
            ));
        }
        if let Objects::Api(api) = &self.objects {
            out.push_str(&format!("\n{}\n", api.describe()));
        }
        out
    }
}

/// Counts per backend (with the sources it saw) and per error, for messages.
fn summarize(results: &[Result<Reply, RequestError>]) -> String {
    let mut by: BTreeMap<String, (usize, BTreeSet<IpAddr>)> = BTreeMap::new();
    for r in results {
        match r {
            Ok(reply) => {
                let e = by.entry(reply.backend.clone()).or_default();
                e.0 += 1;
                e.1.insert(reply.seen_source.ip());
            }
            Err(err) => by.entry(format!("error {err}")).or_default().0 += 1,
        }
    }
    let parts: Vec<String> = by
        .iter()
        .map(|(k, (n, sources))| {
            if sources.is_empty() {
                format!("{k} x{n}")
            } else {
                format!("{k} x{n} (saw {sources:?})")
            }
        })
        .collect();
    format!("{} attempts: {}", results.len(), parts.join(", "))
}

fn place(at: At) -> Place {
    match at {
        At::Pod(node, pod) => Place::Pod { node, pod },
        At::Node(n) => Place::Node(n),
        At::Client => Place::Client,
    }
}

/// `ip -n NETNS ARGS...` inside one of the testbed's own namespaces.
fn ip(netns: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(["-n", netns])
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip -n {netns} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// swy-probe: `$SWY_PROBE_BIN`, next to this test binary, else the one `cargo xtask build`
/// left in the workspace's target directory (a test built with its own `CARGO_TARGET_DIR`
/// does not build the testbed crate's binaries).
fn probe_binary() -> Result<PathBuf, String> {
    if let Ok(path) = switchyard_testbed::probe_binary() {
        return Ok(path);
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for profile in ["debug", "release"] {
        let candidate = workspace.join("target").join(profile).join("swy-probe");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err("swy-probe not found: run `cargo xtask build` (or set SWY_PROBE_BIN)".into())
}

/// Removes ANSI colour sequences from a log.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl HeldFlow {
    /// How long to wait for one more round trip of this flow.
    fn next_round_trip(&self) -> Duration {
        self.hold.spec().reply_timeout() + HOLD_INTERVAL + Duration::from_secs(2)
    }

    /// [`Held::Kept`]: one more round trip, then every round trip of the current leg.
    fn kept(&mut self) -> Result<(), String> {
        let seen = self.hold.timeline().len();
        let timeline = self
            .hold
            .wait_for_replies(seen + 1, self.next_round_trip())
            .map_err(|e| format!("the held flow stopped answering: {e}"))?;
        let leg = &timeline[self.since..];
        let problem = leg.iter().enumerate().find_map(|(i, r)| {
            let at = r.at.as_secs_f64();
            match &r.result {
                Err(e) => Some(format!("round trip at {at:.2}s failed ({e})")),
                Ok(reply) if reply.backend != self.backend => Some(format!(
                    "round trip at {at:.2}s answered by {} instead of {}",
                    reply.backend, self.backend
                )),
                Ok(reply) if reply.seen_source != self.source => Some(format!(
                    "round trip at {at:.2}s seen from {} instead of {} (a new flow)",
                    reply.seen_source, self.source
                )),
                Ok(_) => {
                    let gap = i
                        .checked_sub(1)
                        .map(|p| r.at.saturating_sub(leg[p].at))
                        .unwrap_or_default();
                    (gap > HOLD_MAX_GAP).then(|| {
                        format!("no answer for {gap:?} before {at:.2}s (max {HOLD_MAX_GAP:?})")
                    })
                }
            }
        });
        match problem {
            None => Ok(()),
            Some(p) => Err(format!(
                "held flow {} ({}) was not kept: {p}; observed {}",
                self.flow.name,
                self.hold.describe(),
                summarize_flow(leg)
            )),
        }
    }

    /// [`Held::Moved`]: the first answer from `backends` by `deadline`, only its old
    /// backend (or failures) before, and [`HOLD_SETTLE`] answers from the new one after.
    fn moved(&mut self, backends: &[String], deadline: Instant, label: &str) -> Result<(), String> {
        let is_new =
            |r: &HeldReply| matches!(&r.result, Ok(reply) if backends.contains(&reply.backend));
        let (name, flow) = (self.flow.name, self.hold.describe());
        let fail = |what: String, timeline: &[HeldReply]| {
            format!(
                "[{label}] held flow {name} ({flow}) did not move to one of {backends:?}: {what}; \
                 observed {}",
                summarize_flow(timeline)
            )
        };
        let found = loop {
            let timeline = self.hold.timeline();
            if let Some(i) = timeline[self.since..].iter().position(is_new) {
                break self.since + i;
            }
            if Instant::now() >= deadline {
                return Err(fail(
                    "no answer from there in time".into(),
                    &timeline[self.since..],
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let timeline = self
            .hold
            .wait_for_replies(
                found + 1 + HOLD_SETTLE,
                self.next_round_trip() * (HOLD_SETTLE as u32),
            )
            .map_err(|e| format!("the held flow stopped answering after it moved: {e}"))?;
        for r in &timeline[self.since..found] {
            if let Ok(reply) = &r.result {
                if reply.backend != self.backend {
                    return Err(fail(
                        format!(
                            "answered by {} before it moved, neither its old backend nor a new one",
                            reply.backend
                        ),
                        &timeline[self.since..],
                    ));
                }
            }
        }
        let Ok(first) = timeline[found].result.clone() else {
            unreachable!("found is an answer");
        };
        for r in &timeline[found..] {
            let ok = matches!(&r.result, Ok(reply)
                if reply.backend == first.backend && reply.seen_source == first.seen_source);
            if !ok {
                return Err(fail(
                    format!(
                        "after moving to {} it got {} at {:.2}s",
                        first.backend,
                        match &r.result {
                            Ok(reply) =>
                                format!("{} (seen from {})", reply.backend, reply.seen_source),
                            Err(e) => format!("error {e}"),
                        },
                        r.at.as_secs_f64()
                    ),
                    &timeline[self.since..],
                ));
            }
        }
        self.since = found;
        self.backend = first.backend;
        self.source = first.seen_source;
        Ok(())
    }
}
