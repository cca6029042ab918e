//! Endpoint churn soak, in both modes: for a while (10 s here; `SWITCHYARD_CHURN_SECONDS`
//! sets it, `cargo xtask bench -- churn` runs 60 s) the endpoints of one service are added,
//! removed and flipped to terminating every 100 ms through the API source (the fake API
//! server, as a cluster's EndpointSlice controller would), while clients keep connecting to
//! its ClusterIP (TCP and UDP, from a pod) and its NodePort (from outside). Checked:
//! - not one new connection fails (two endpoints stay ready throughout), except in ebpf mode
//!   a UDP exchange whose socket was destroyed because its endpoint left while the exchange
//!   was in flight (ECONNABORTED, each such socket counted by
//!   `switchyard_ebpf_sockets_destroyed_total`; iptables mode deletes the flow's conntrack
//!   entry instead, and such an exchange's reply is lost);
//! - no new connection reaches an endpoint after its removal (or its flip to terminating)
//!   was applied and before it was made ready again;
//! - held flows to the endpoints that stay (TCP on both paths, a connected UDP socket) never
//!   break nor move;
//! - once the churn has ended where it began, the programmed state (map entries, or our
//!   iptables rules) is what it was, and the process's RSS is within a small margin of it.
//!
//! When was a change applied? Each write of the slice carries a fresh
//! `endpoints.kubernetes.io/last-change-trigger-time`; the source records one trigger per
//! live change, and the controller observes each one into
//! `kubeproxy_network_programming_duration_seconds` exactly when the sync holding it has
//! returned (upstream's definition of programmed). A monitor scrapes `/metrics`; the first
//! scrape whose count covers change k was answered after change k was in the kernel. The
//! checks use only such conservative bounds, never a duration: a connection counts against
//! a removal only if it started after that scrape, and only until the next write that made
//! the endpoint ready again was even sent.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use switchyard_testbed::fake_apiserver::FakeApiServer;
use switchyard_testbed::hold::summarize;
use switchyard_testbed::{
    metric, start_switchyard_from, wait_for, wait_for_log, Destination, Hold, LoadSpec,
    ObjectSource, Place, Proto, Recorded, Recorder, Testbed, TopologySpec,
};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
/// The churn's length unless `SWITCHYARD_CHURN_SECONDS` says otherwise.
const DEFAULT_SECONDS: u64 = 10;
/// One change every this long.
const STEP: Duration = Duration::from_millis(100);
const HOLD_INTERVAL: Duration = Duration::from_millis(200);
const WAIT: Duration = Duration::from_secs(60);
/// How much the RSS may grow over the churn: allocator and runtime caches, not a leak
/// (a leak of the state churned, a few hundred changes, grows without bound in the long run).
const RSS_SLACK_BYTES: u64 = 8 << 20;

const CLUSTER_TCP: &str = "198.18.128.50:80";
const CLUSTER_UDP: &str = "198.18.128.50:53";
const NODE_PORT: &str = "198.18.0.11:30050";

/// Endpoints that are ready throughout.
const STABLE: [&str; 2] = ["node1-pod1", "node2-pod1"];
/// Endpoints that churn.
const CHURNED: [&str; 4] = ["node1-pod2", "node1-pod3", "node2-pod2", "node2-pod3"];

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// A churned endpoint's state in one write of the slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Absent,
    Ready,
    /// Serving, terminating: no new connection while others are ready.
    Terminating,
}

/// The Service, and the Node objects.
fn service_yaml() -> String {
    "apiVersion: v1
kind: Service
metadata: {name: churn, namespace: churn}
spec:
  type: NodePort
  clusterIP: 198.18.128.50
  ports:
  - {name: tcp, port: 80, targetPort: 8080, nodePort: 30050, protocol: TCP}
  - {name: dns, port: 53, targetPort: 8080, protocol: UDP}
"
    .to_owned()
}

/// The slice with the stable endpoints and the churned ones in `states`.
fn slice_yaml(testbed: &Testbed, states: &[State; 4]) -> String {
    let trigger = humantime::format_rfc3339_micros(std::time::SystemTime::now());
    let endpoint = |name: &str, conditions: &str| {
        let pod = testbed.pod_by_name(name).expect("pod");
        format!(
            "- addresses: [{}]\n  nodeName: node{}\n  conditions: {conditions}\n",
            pod.ip, pod.node
        )
    };
    let mut endpoints: String = STABLE
        .iter()
        .map(|n| endpoint(n, "{ready: true, serving: true, terminating: false}"))
        .collect();
    for (name, state) in CHURNED.iter().zip(states) {
        match state {
            State::Absent => {}
            State::Ready => endpoints.push_str(&endpoint(
                name,
                "{ready: true, serving: true, terminating: false}",
            )),
            State::Terminating => endpoints.push_str(&endpoint(
                name,
                "{ready: false, serving: true, terminating: true}",
            )),
        }
    }
    format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: churn-1
  namespace: churn
  labels: {{kubernetes.io/service-name: churn}}
  annotations: {{endpoints.kubernetes.io/last-change-trigger-time: \"{trigger}\"}}
addressType: IPv4
ports:
- {{name: tcp, port: 8080, protocol: TCP}}
- {{name: dns, port: 8080, protocol: UDP}}
endpoints:
{endpoints}"
    )
}

/// The churn's length: `SWITCHYARD_CHURN_SECONDS`, else [`DEFAULT_SECONDS`].
fn churn_length() -> Duration {
    let seconds = std::env::var("SWITCHYARD_CHURN_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SECONDS);
    Duration::from_secs(seconds)
}

/// A small deterministic generator (xorshift), so a failing run can be told apart by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// The next state of a churned endpoint.
fn step(state: State, rng: &mut Rng) -> State {
    match state {
        State::Absent => State::Ready,
        State::Ready if rng.next().is_multiple_of(2) => State::Terminating,
        State::Ready | State::Terminating => State::Absent,
    }
}

/// Every write of the slice: when it was sent (before the request) and what it said.
/// Index 0 is the state before the churn, already programmed.
struct Writes {
    sent: Vec<Instant>,
    states: Vec<[State; 4]>,
}

/// Scrapes of the change counter: when each answer arrived, and the count it showed.
#[derive(Default)]
struct Applied {
    scrapes: Mutex<Vec<(Instant, u64)>>,
}

impl Applied {
    /// The first scrape that showed write `k` (1-based since the churn began at `base`)
    /// applied, if any did.
    fn applied_by(&self, base: u64, k: usize) -> Option<Instant> {
        let scrapes = self.scrapes.lock().unwrap_or_else(|e| e.into_inner());
        scrapes
            .iter()
            .find(|(_, count)| *count >= base + k as u64)
            .map(|(at, _)| *at)
    }

    fn latest(&self) -> Option<u64> {
        let scrapes = self.scrapes.lock().unwrap_or_else(|e| e.into_inner());
        scrapes.last().map(|(_, c)| *c)
    }
}

/// The number of triggers the controller has observed (changes applied).
fn programmed_changes(testbed: &Testbed) -> Option<u64> {
    metric(
        testbed.node(1),
        "kubeproxy_network_programming_duration_seconds_count",
    )
    .map(|v| v as u64)
}

/// Connected UDP sockets ebpf mode destroyed (0 in iptables mode, which has no such counter).
fn sockets_destroyed(testbed: &Testbed) -> u64 {
    metric(testbed.node(1), "switchyard_ebpf_sockets_destroyed_total").map_or(0, |v| v as u64)
}

/// Syncs completed (every kind, verifies included).
fn syncs(testbed: &Testbed) -> u64 {
    metric(
        testbed.node(1),
        "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}",
    )
    .map_or(0, |v| v as u64)
}

/// What is programmed, counted from the kernel: ebpf mode's map entries (the LRU maps, which
/// the clients' own flows fill, aside), or the lines of our chains in iptables-save.
fn programmed(testbed: &Testbed, mode: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    if mode == "ebpf" {
        let pins = switchyard::status::read_ebpf::read(&testbed.bpffs_dir(testbed.node(1)))
            .expect("read the pinned maps");
        counts.insert("SWY_SERVICES".to_owned(), pins.maps.services.len());
        counts.insert("SWY_BACKENDS".to_owned(), pins.maps.backends.len());
        counts.insert(
            "SWY_SVC_NAMES".to_owned(),
            pins.maps.names.as_ref().map_or(0, Vec::len),
        );
        counts.insert(
            "SWY_SOURCE_RANGES".to_owned(),
            pins.maps.source_ranges.len(),
        );
    } else {
        for table in ["nat", "filter"] {
            let out = testbed
                .run(
                    Place::Node(1),
                    "iptables-save",
                    ["-t", table],
                    Duration::from_secs(30),
                )
                .expect("iptables-save");
            let ours = out.stdout.lines().filter(|l| l.contains("SWY-")).count();
            counts.insert(format!("{table} lines of ours"), ours);
        }
    }
    counts
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Connections that reached a churned endpoint after its removal was applied: for each
/// answer of endpoint X in a batch, the last write sent before the batch ended; if X was not
/// ready there, the write that took it out (the first not-ready one after its last ready
/// one) must not have been seen applied before the batch started. Returns the violations
/// and how many (batch, churned endpoint) pairs were checked against an applied removal.
///
/// One exception, as in kube-proxy: a UDP datagram from a source port an earlier exchange
/// with X used (the kernel hands ports out again) continues that exchange's netfilter
/// conntrack entry, and entries to an endpoint that is terminating but still serving are
/// kept on purpose (iptables mode; ebpf mode translates each socket at connect). Such an
/// answer is recognised by the source X saw, the same as the earlier exchange's.
fn late_arrivals(
    recorded: &Recorded,
    writes: &Writes,
    applied: &Applied,
    base: u64,
) -> (Vec<String>, usize, usize) {
    let mut violations = Vec::new();
    let mut checked = 0;
    let mut continued = 0;
    let origin = writes.sent[0];
    // (destination, source the backend saw, backend) of every UDP answer so far.
    let mut udp_flows: std::collections::BTreeSet<(usize, SocketAddr, String)> = Default::default();
    let continues = |flows: &std::collections::BTreeSet<(usize, SocketAddr, String)>,
                     d: usize,
                     reply: &switchyard_testbed::Reply| {
        recorded.destinations[d].proto == Proto::Udp
            && flows.contains(&(d, reply.seen_source, reply.backend.clone()))
    };
    for batch in &recorded.batches {
        // Writes 1.. are the churn; 0 is the state before it.
        let last = writes
            .sent
            .iter()
            .rposition(|w| *w <= batch.ended)
            .unwrap_or(0);
        for (i, name) in CHURNED.iter().enumerate() {
            let last_ready = (0..=last)
                .rev()
                .find(|k| writes.states[*k][i] == State::Ready);
            let removal = match last_ready {
                Some(k) if k == last => continue,
                Some(k) => k + 1,
                None => 0,
            };
            let removed_at = if removal == 0 {
                Some(origin)
            } else {
                applied.applied_by(base, removal)
            };
            let Some(removed_at) = removed_at else {
                continue;
            };
            if removed_at > batch.started {
                continue;
            }
            checked += 1;
            for (d, result) in &batch.results {
                let Ok(reply) = result else { continue };
                if reply.backend != *name {
                    continue;
                }
                if continues(&udp_flows, *d, reply) {
                    continued += 1;
                } else {
                    violations.push(format!(
                        "{}: {name} answered a connection of the batch {:.3}s..{:.3}s; it left \
                         with write {removal} ({:?}), seen applied at {:.3}s",
                        recorded.destinations[*d].label,
                        batch.started.duration_since(origin).as_secs_f64(),
                        batch.ended.duration_since(origin).as_secs_f64(),
                        writes.states[removal][i],
                        removed_at.duration_since(origin).as_secs_f64(),
                    ));
                }
            }
        }
        for (d, result) in &batch.results {
            if let Ok(reply) = result {
                if recorded.destinations[*d].proto == Proto::Udp {
                    udp_flows.insert((*d, reply.seen_source, reply.backend.clone()));
                }
            }
        }
    }
    (violations, checked, continued)
}

fn run(mode: &str) {
    let length = churn_length();
    let testbed = Testbed::new(TopologySpec {
        nodes: 2,
        pods_per_node: 3,
    })
    .expect("testbed");
    let _echo = testbed
        .start_echo_everywhere(8080, 8080)
        .expect("echo servers");
    let server = FakeApiServer::start_in_netns(&testbed.node(1).netns_path, addr("127.0.0.1:6443"))
        .expect("fake API server in node1");
    let dir = TempDir::new(&testbed);
    let kubeconfig = dir.0.join("kubeconfig");
    server.kubeconfig(&kubeconfig).expect("kubeconfig");
    server.apply_yaml(&testbed.nodes_yaml()).expect("nodes");
    server.apply_yaml(&service_yaml()).expect("service");
    let mut states = [State::Absent; 4];
    server
        .apply_yaml(&slice_yaml(&testbed, &states))
        .expect("slice");
    let mut proxy = start_switchyard_from(
        &testbed,
        testbed.node(1),
        BIN.as_ref(),
        mode,
        ObjectSource::Kubeconfig(&kubeconfig),
        // Verifies every second: ebpf mode deletes a removed backend's slot at the next sync.
        &["--sync-period=1s"],
    )
    .expect("switchyard");
    let fail = |e: switchyard_testbed::Error, proxy: &switchyard_testbed::ChildGuard| -> ! {
        panic!("[{mode}] {e}\n{}", proxy.stderr())
    };
    wait_for_log(
        &mut proxy,
        "the first sync",
        WAIT,
        &[&["synced", "full=true"]],
    )
    .unwrap_or_else(|e| fail(e, &proxy));
    let (cluster_tcp, cluster_udp, node_port) =
        (addr(CLUSTER_TCP), addr(CLUSTER_UDP), addr(NODE_PORT));
    let (pod12, pod13) = (testbed.pod(1, 2), testbed.pod(1, 3));
    for (place, proto, to) in [
        (Place::from(pod13), Proto::Tcp, cluster_tcp),
        (Place::from(pod13), Proto::Udp, cluster_udp),
        (Place::Client, Proto::Tcp, node_port),
    ] {
        testbed
            .wait_for_answer(place, proto, to, WAIT)
            .unwrap_or_else(|e| fail(e, &proxy));
    }
    // Held flows while only the stable endpoints are in the slice: they stay on those.
    let holds: Vec<(&str, Hold)> = [
        ("ClusterIP TCP", Place::from(pod13), Proto::Tcp, cluster_tcp),
        ("ClusterIP UDP", Place::from(pod13), Proto::Udp, cluster_udp),
        ("NodePort TCP", Place::Client, Proto::Tcp, node_port),
    ]
    .into_iter()
    .map(|(name, place, proto, to)| {
        let hold = testbed
            .hold(place, proto, to, HOLD_INTERVAL)
            .unwrap_or_else(|e| panic!("[{mode}] held {name}: {e}"));
        (name, hold)
    })
    .collect();
    // The state before the churn, after a verify has run on it (ebpf mode's deferred
    // deletions, and its gauges, settle there).
    let synced = syncs(&testbed);
    wait_for("a verify on the state before the churn", WAIT, || {
        let now = syncs(&testbed);
        if now >= synced + 2 {
            Ok(())
        } else {
            Err(now)
        }
    })
    .unwrap_or_else(|e| fail(e, &proxy));
    let before = programmed(&testbed, mode);
    let rss_before = rss_bytes(proxy.pid());
    let base = programmed_changes(&testbed).unwrap_or(0);

    let applied = Applied::default();
    let monitoring = AtomicBool::new(true);
    let mut rng = Rng(0x5eed_c4a5_e000_0001);
    let (recorded, writes) = std::thread::scope(|scope| {
        let monitor = scope.spawn(|| {
            while monitoring.load(Ordering::Relaxed) {
                if let Some(count) = programmed_changes(&testbed) {
                    let at = Instant::now();
                    applied
                        .scrapes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((at, count));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let recorder = Recorder::start(
            scope,
            &testbed,
            vec![
                Destination::new(
                    "ClusterIP TCP from node1-pod2",
                    pod12,
                    Proto::Tcp,
                    cluster_tcp,
                ),
                Destination::new(
                    "ClusterIP UDP from node1-pod2",
                    pod12,
                    Proto::Udp,
                    cluster_udp,
                ),
                Destination::new(
                    "NodePort TCP from the client",
                    Place::Client,
                    Proto::Tcp,
                    node_port,
                ),
            ],
            LoadSpec {
                per_batch: 2,
                ..LoadSpec::default()
            },
        );
        let mut writes = Writes {
            sent: vec![Instant::now()],
            states: vec![states],
        };
        let began = Instant::now();
        let mut k = 0u32;
        while began.elapsed() < length {
            k += 1;
            // One endpoint changes per step; every endpoint goes through all its states.
            let i = (rng.next() % CHURNED.len() as u64) as usize;
            states[i] = step(states[i], &mut rng);
            let sent = Instant::now();
            server
                .apply_yaml(&slice_yaml(&testbed, &states))
                .unwrap_or_else(|e| panic!("[{mode}] write {k}: {e}"));
            writes.sent.push(sent);
            writes.states.push(states);
            let next = began + STEP * k;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        // It ends where it began.
        states = [State::Absent; 4];
        writes.sent.push(Instant::now());
        server
            .apply_yaml(&slice_yaml(&testbed, &states))
            .unwrap_or_else(|e| panic!("[{mode}] last write: {e}"));
        writes.states.push(states);
        let total = (writes.sent.len() - 1) as u64;
        wait_for("every change to be applied", WAIT, || {
            match applied.latest() {
                Some(n) if n >= base + total => Ok(()),
                other => Err(other),
            }
        })
        .unwrap_or_else(|e| fail(e, &proxy));
        recorder
            .wait_batches_after("new connections after the churn", Instant::now(), 2, WAIT)
            .unwrap_or_else(|e| fail(e, &proxy));
        let recorded = recorder.stop();
        monitoring.store(false, Ordering::Relaxed);
        let _ = monitor.join();
        (recorded, writes)
    });

    let (aborted, failures): (Vec<String>, Vec<String>) = recorded
        .failures(writes.sent[0], |b| {
            if b.ended < writes.sent[1] {
                "before the churn".to_owned()
            } else {
                "during the churn".to_owned()
            }
        })
        .into_iter()
        .partition(|f| {
            mode == "ebpf" && f.starts_with("ClusterIP UDP") && f.contains("os error 103")
        });
    // Each abort is a socket the controller destroyed on purpose (its endpoint was removed),
    // never more of them than it counted.
    let destroyed = sockets_destroyed(&testbed);
    assert!(
        aborted.len() as u64 <= destroyed,
        "[{mode}] {} UDP exchanges aborted, {destroyed} sockets destroyed:\n{}",
        aborted.len(),
        aborted.join("\n")
    );
    assert!(
        failures.is_empty(),
        "[{mode}] {} of {} new connections failed (times since the churn began):\n{}\n{}",
        failures.len(),
        recorded.attempts(),
        failures.join("\n"),
        proxy.stderr()
    );
    let (late, checked, continued) = late_arrivals(&recorded, &writes, &applied, base);
    assert!(
        late.is_empty(),
        "[{mode}] connections reached endpoints after their removal was applied:\n{}",
        late.join("\n")
    );
    // The check had something to catch: the churned endpoints did get new connections while
    // ready, and connections ran after removals were applied.
    let churned_answers: usize = CHURNED
        .iter()
        .map(|n| recorded.reached(n, |_| true).len())
        .sum();
    assert!(
        churned_answers > 0 && checked > 0,
        "[{mode}] answers from churned endpoints {churned_answers}, checks {checked}"
    );
    for (name, hold) in &holds {
        let (backend, timeline) = hold
            .steady()
            .unwrap_or_else(|e| panic!("[{mode}] {name}: {e}\n{}", proxy.stderr()));
        assert!(
            STABLE.contains(&backend.as_str()),
            "[{mode}] held {name} on {backend}: {}",
            summarize(&timeline)
        );
    }
    // Back where it began: the same entries or rules (once a verify has run on the last
    // state; bounded wait, not a timing goal), and the RSS within a margin.
    let after = wait_for("the programmed state to be what it was", WAIT, || {
        let now = programmed(&testbed, mode);
        if now == before {
            Ok(now)
        } else {
            Err(now)
        }
    })
    .unwrap_or_else(|e| panic!("[{mode}] before the churn {before:?}: {e}"));
    let rss_after = rss_bytes(proxy.pid());
    assert!(
        rss_after <= rss_before + RSS_SLACK_BYTES,
        "[{mode}] RSS grew from {rss_before} to {rss_after} bytes over the churn"
    );
    let log = proxy.stderr();
    assert!(!log.contains("ERROR"), "[{mode}] {log}");
    eprintln!(
        "[{mode}] {} writes over {length:?}, {} new connections ({churned_answers} to churned \
         endpoints), none failed, none late ({checked} batch x endpoint checks, {continued} UDP \
         answers on an earlier exchange's conntrack entry); state {after:?}; RSS {:.1} -> {:.1} MiB",
        writes.sent.len() - 1,
        recorded.attempts(),
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0,
    );
}

/// A directory for the kubeconfig, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(testbed: &Testbed) -> Self {
        let dir = std::env::temp_dir().join(format!("swy-churn-{}", testbed.id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn endpoint_churn_in_iptables_mode() {
    run("iptables");
}

#[test]
fn endpoint_churn_in_ebpf_mode() {
    run("ebpf");
}

/// A connection in progress to an endpoint that leaves the slice (its pod still answers)
/// keeps going, in both modes, as upstream leaves TCP conntrack entries alone: through the
/// NodePort from outside (netfilter conntrack, or ebpf mode's packet-path flow entries) and
/// through the ClusterIP from a pod. Only new connections avoid the endpoint.
fn removed_endpoint_keeps_its_connections(mode: &str) {
    let testbed = Testbed::new(TopologySpec {
        nodes: 2,
        pods_per_node: 2,
    })
    .expect("testbed");
    let _echo = testbed.start_echo_everywhere(8080, 0).expect("echo");
    let manifests = switchyard_testbed::Manifests::new().expect("manifests");
    manifests
        .write("nodes.yaml", &testbed.nodes_yaml())
        .expect("nodes");
    let pods = ["node1-pod1", "node2-pod1"];
    let write = |pods: &[&str]| {
        let endpoints: String = pods
            .iter()
            .map(|name| {
                let pod = testbed.pod_by_name(name).expect("pod");
                format!("- addresses: [{}]\n  nodeName: node{}\n", pod.ip, pod.node)
            })
            .collect();
        manifests
            .write(
                "svc.yaml",
                &format!(
                    "{}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                     metadata: {{name: churn-1, namespace: churn, labels: \
                     {{kubernetes.io/service-name: churn}}}}\naddressType: IPv4\n\
                     ports: [{{name: tcp, port: 8080, protocol: TCP}}]\nendpoints:\n{endpoints}",
                    service_yaml()
                ),
            )
            .expect("write service");
    };
    write(&pods);
    let proxy = switchyard_testbed::start_switchyard(
        &testbed,
        testbed.node(1),
        BIN.as_ref(),
        mode,
        &manifests,
        // Verifies (and ebpf mode's sweeps of its flows) every second.
        &["--sync-period=1s"],
    )
    .expect("switchyard");
    let (cluster_tcp, node_port) = (addr(CLUSTER_TCP), addr(NODE_PORT));
    let client_pod = testbed.pod(1, 2);
    for (place, to) in [
        (Place::from(client_pod), cluster_tcp),
        (Place::Client, node_port),
    ] {
        testbed
            .wait_for_answer(place, Proto::Tcp, to, WAIT)
            .unwrap_or_else(|e| panic!("[{mode}] {e}\n{}", proxy.stderr()));
    }
    let mut holds: Vec<(&str, Hold)> = [
        ("ClusterIP", Place::from(client_pod), cluster_tcp),
        ("NodePort", Place::Client, node_port),
    ]
    .into_iter()
    .map(|(name, place, to)| {
        let hold = testbed
            .hold(place, Proto::Tcp, to, HOLD_INTERVAL)
            .unwrap_or_else(|e| panic!("[{mode}] held {name}: {e}"));
        (name, hold)
    })
    .collect();
    for (name, hold) in &mut holds {
        // Each held connection leaves with its backend; the other one stays.
        let (backend, _) = hold
            .steady()
            .unwrap_or_else(|e| panic!("[{mode}] {name}: {e}"));
        let stays: Vec<&str> = pods.iter().copied().filter(|p| *p != backend).collect();
        write(&stays);
        let to = if *name == "ClusterIP" {
            cluster_tcp
        } else {
            node_port
        };
        let from = hold.place();
        wait_for(
            "new connections to avoid the removed endpoint",
            WAIT,
            || {
                let got = switchyard_testbed::backend_names(&testbed.request(
                    from,
                    Proto::Tcp,
                    to,
                    6,
                    Duration::from_secs(2),
                ));
                if got.len() == 1 && got.contains(stays[0]) {
                    Ok(())
                } else {
                    Err(got)
                }
            },
        )
        .unwrap_or_else(|e| panic!("[{mode}] {name}: {e}\n{}", proxy.stderr()));
        // Several syncs later (each verify sweeps the packet path's flows), it still answers.
        let mark = hold.timeline().len();
        let replies = hold
            .wait_for_replies(mark + 8, HOLD_INTERVAL * 60)
            .unwrap_or_else(|e| panic!("[{mode}] held {name}: {e}"));
        assert!(
            replies[mark..]
                .iter()
                .all(|r| r.result.as_ref().is_ok_and(|r| r.backend == backend)),
            "[{mode}] held {name} to the removed {backend}: {}\n{}",
            summarize(&replies),
            proxy.stderr()
        );
        write(&pods);
    }
}

#[test]
fn removed_endpoint_keeps_its_connections_in_iptables_mode() {
    removed_endpoint_keeps_its_connections("iptables");
}

#[test]
fn removed_endpoint_keeps_its_connections_in_ebpf_mode() {
    removed_endpoint_keeps_its_connections("ebpf");
}
