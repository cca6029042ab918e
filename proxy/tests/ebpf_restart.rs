//! ebpf mode across a controller crash: switchyard is SIGKILLed while clients keep opening
//! connections to a ClusterIP (socket path) and a NodePort (tc path). The pinned programs and
//! maps keep serving while no controller runs, a new process adopts them, established flows
//! never notice, the new process controls the adopted maps, and `--cleanup` removes it all.
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchyard_testbed::hold::summarize;
use switchyard_testbed::load::{relative, RestartTimes};
use switchyard_testbed::{
    backend_names, start_switchyard, wait_for, wait_for_log, Destination, LoadSpec, Manifests,
    Place, Proto, Recorder, RequestError, Testbed, TopologySpec,
};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
/// Per-attempt timeout of a new connection: generous, a loaded machine is no failure.
const ATTEMPT: Duration = Duration::from_secs(3);
/// Round-trip interval of the held flows.
const HOLD_INTERVAL: Duration = Duration::from_millis(200);
/// Waits for the proxy: start-up, syncs, edits.
const PROXY_TIMEOUT: Duration = Duration::from_secs(60);

const CLUSTER_IP: &str = "198.18.128.30:80";
const NODE_PORT: &str = "198.18.0.11:30080";

const ALL_PODS: [&str; 4] = ["node1-pod1", "node1-pod2", "node2-pod1", "node2-pod2"];
/// The endpoint the post-restart edit removes.
const REMOVED: &str = "node2-pod2";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// A ClusterIP + NodePort service whose EndpointSlice lists the given pods.
fn service_yaml(testbed: &Testbed, pods: &[&str]) -> String {
    let endpoints = testbed.ready_endpoints_yaml(pods);
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: restart, namespace: restart}}
spec:
  type: NodePort
  clusterIP: 198.18.128.30
  selector: {{app: restart}}
  ports:
  - {{name: tcp, port: 80, targetPort: 8080, nodePort: 30080, protocol: TCP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: restart-1
  namespace: restart
  labels: {{kubernetes.io/service-name: restart}}
addressType: IPv4
ports: [{{name: tcp, port: 8080, protocol: TCP}}]
endpoints:
{endpoints}"
    )
}

/// When the controller went away and came back; `synced_*` are the same moment as
/// `synced`, on each held flow's clock ([`switchyard_testbed::Hold::elapsed`]).
struct Times {
    killed: Instant,
    down_since: Instant,
    restarted: Instant,
    synced: Instant,
    synced_cluster: Duration,
    synced_nodeport: Duration,
}

#[test]
fn sigkilled_controller_is_replaced_without_dropping_connections_and_cleanup_removes_all() {
    let testbed = Testbed::new(TopologySpec {
        nodes: 2,
        pods_per_node: 2,
    })
    .expect("testbed");
    let _echo = testbed
        .start_echo_everywhere(8080, 8080)
        .expect("echo servers");
    let manifests = Manifests::new().expect("manifests");
    manifests
        .write("nodes.yaml", &testbed.nodes_yaml())
        .expect("write nodes");
    manifests
        .write("svc.yaml", &service_yaml(&testbed, &ALL_PODS))
        .expect("write service");
    let node1 = testbed.node(1);
    let pins = testbed.bpffs_dir(node1);
    let start = || {
        start_switchyard(&testbed, node1, BIN.as_ref(), "ebpf", &manifests, &[])
            .expect("switchyard")
    };

    let cluster_ip = addr(CLUSTER_IP);
    let node_port = addr(NODE_PORT);
    let pod11 = testbed.pod(1, 1);
    let pod12 = testbed.pod(1, 2);

    let mut proxy = start();
    let fail = |e: switchyard_testbed::Error, proxy: &switchyard_testbed::ChildGuard| -> ! {
        panic!("{e}\n{}", proxy.stderr())
    };
    wait_for_log(
        &mut proxy,
        "the first sync",
        PROXY_TIMEOUT,
        &[&["synced", "full=true"]],
    )
    .unwrap_or_else(|e| fail(e, &proxy));
    wait_for(
        "the ClusterIP (from node1-pod1) and the NodePort (from the client) to answer",
        PROXY_TIMEOUT,
        || {
            let c = testbed.request(pod11, Proto::Tcp, cluster_ip, 1, ATTEMPT);
            let n = testbed.request(Place::Client, Proto::Tcp, node_port, 1, ATTEMPT);
            if c.iter().chain(&n).all(Result::is_ok) {
                Ok(())
            } else {
                Err((c, n, proxy.stderr()))
            }
        },
    )
    .expect("switchyard serves the service");
    assert!(
        pins.join("maps").is_dir() && pins.join("links").is_dir(),
        "maps and links pinned under {}",
        pins.display()
    );

    // 1. Established flows, one per datapath.
    let held_cluster = testbed
        .hold(pod11, Proto::Tcp, cluster_ip, HOLD_INTERVAL)
        .expect("held ClusterIP flow");
    let held_nodeport = testbed
        .hold(Place::Client, Proto::Tcp, node_port, HOLD_INTERVAL)
        .expect("held NodePort flow");

    let (times, recorded, mut proxy) = std::thread::scope(|scope| {
        // 2. New connections, batch after batch, until told to stop.
        let recorder = Recorder::start(
            scope,
            &testbed,
            vec![
                Destination::new("ClusterIP from node1-pod2", pod12, Proto::Tcp, cluster_ip),
                Destination::new(
                    "NodePort from the client",
                    Place::Client,
                    Proto::Tcp,
                    node_port,
                ),
            ],
            LoadSpec {
                attempt: ATTEMPT,
                ..LoadSpec::default()
            },
        );
        recorder
            .wait_batches_after(
                "new connections to run before the kill",
                Instant::now(),
                2,
                PROXY_TIMEOUT,
            )
            .expect("recorder running");

        // 3. SIGKILL: no clean shutdown, the pins are all that is left.
        let killed = Instant::now();
        proxy.kill().expect("SIGKILL switchyard");
        let status = proxy.wait().expect("reap switchyard");
        assert!(!status.success(), "switchyard was killed: {status}");
        let down_since = Instant::now();
        recorder
            .wait_batches_after(
                "a batch of new connections while no controller runs",
                down_since,
                1,
                PROXY_TIMEOUT,
            )
            .expect("connections during the downtime");

        let restarted = Instant::now();
        let mut proxy = start();
        wait_for_log(
            &mut proxy,
            "the new process to adopt the pinned maps and sync",
            PROXY_TIMEOUT,
            &[&["adopted pinned eBPF maps"], &["synced", "full=true"]],
        )
        .unwrap_or_else(|e| fail(e, &proxy));
        let synced = Instant::now();
        let synced_cluster = held_cluster.elapsed();
        let synced_nodeport = held_nodeport.elapsed();

        // 4. Both held flows answer after the new process took over, and new connections
        // keep working.
        for (name, hold, mark) in [
            ("ClusterIP flow", &held_cluster, synced_cluster),
            ("NodePort flow", &held_nodeport, synced_nodeport),
        ] {
            wait_for(
                "a held round trip after the new process synced",
                PROXY_TIMEOUT,
                || {
                    if hold.answered_after(mark) {
                        Ok(())
                    } else {
                        Err(format!("{name}: {}", summarize(&hold.timeline())))
                    }
                },
            )
            .expect("held flow answers after the restart");
        }
        recorder
            .wait_batches_after(
                "new connections after the new process synced",
                synced,
                3,
                PROXY_TIMEOUT,
            )
            .expect("connections after the restart");
        let times = Times {
            killed,
            down_since,
            restarted,
            synced,
            synced_cluster,
            synced_nodeport,
        };
        (times, recorder.stop(), proxy)
    });
    let Times {
        killed,
        down_since,
        restarted,
        synced,
        synced_cluster,
        synced_nodeport,
    } = times;

    // Batch times are relative to the new process's start in failure reports.
    let failures = recorded.failures(restarted, |b| {
        RestartTimes {
            killed,
            down_since,
            restarted,
            synced,
        }
        .phase_of(b)
    });
    if !failures.is_empty() {
        // Evidence for the report: the node's netfilter view of the client's flows (a
        // NodePort connection to another node's pod that missed the masquerade shows up
        // UNREPLIED, with no SNAT).
        let conntrack = testbed
            .run(
                Place::Node(1),
                "conntrack",
                ["-L", "-p", "tcp", "-s", "203.0.113.10"],
                PROXY_TIMEOUT,
            )
            .map(|f| f.stdout)
            .unwrap_or_else(|e| format!("conntrack -L failed: {e}"));
        let unreplied: Vec<&str> = conntrack
            .lines()
            .filter(|l| l.contains("UNREPLIED"))
            .collect();
        panic!(
            "{} of {} new connections failed (times relative to the new process's start; it \
             logged its first sync at {}):\n{}\nnode1 conntrack, unreplied client flows:\n{}\n\
             new switchyard log:\n{}",
            failures.len(),
            recorded.attempts(),
            relative(synced, restarted),
            failures.join("\n"),
            unreplied.join("\n"),
            proxy.stderr()
        );
    }
    let before = recorded.count(|b| b.ended < killed);
    let during = recorded.count(|b| b.started >= down_since && b.ended <= restarted);
    let after = recorded.count(|b| b.started >= synced);
    assert!(
        before >= 1 && during >= 1 && after >= 1,
        "new connections before/during/after the downtime: {before}/{during}/{after} batches"
    );

    let mut backends = Vec::new();
    for (name, hold, mark) in [
        ("ClusterIP flow", &held_cluster, synced_cluster),
        ("NodePort flow", &held_nodeport, synced_nodeport),
    ] {
        let (backend, timeline) = hold.steady().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            timeline.iter().any(|r| r.at > mark),
            "held {name}: no round trip after the new process synced ({:.2?}): {}",
            mark,
            summarize(&timeline)
        );
        backends.push(backend);
    }
    let log = proxy.stderr();
    assert!(
        !log.contains("ERROR"),
        "the new process logged errors:\n{log}"
    );
    drop(held_cluster.stop());
    drop(held_nodeport.stop());
    eprintln!(
        "held flows stayed on {} (ClusterIP) and {} (NodePort); \
         {before}/{during}/{after} batches of new connections before/during/after the downtime",
        backends[0], backends[1]
    );

    // 5. The new process owns the adopted maps: an edit made after the restart takes effect.
    let remaining: Vec<&str> = ALL_PODS.iter().copied().filter(|p| *p != REMOVED).collect();
    manifests
        .write("svc.yaml", &service_yaml(&testbed, &remaining))
        .expect("edit service");
    let expected: BTreeSet<String> = remaining.iter().map(|p| p.to_string()).collect();
    wait_for(
        "the removed endpoint to stop answering",
        PROXY_TIMEOUT,
        || {
            let c = testbed.request(pod11, Proto::Tcp, cluster_ip, 12, ATTEMPT);
            let n = testbed.request(Place::Client, Proto::Tcp, node_port, 12, ATTEMPT);
            let (cs, ns) = (backend_names(&c), backend_names(&n));
            if cs == expected && ns == expected {
                Ok(())
            } else {
                Err((cs, ns))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.stderr()));
    let c = testbed.request(pod11, Proto::Tcp, cluster_ip, 20, ATTEMPT);
    let n = testbed.request(Place::Client, Proto::Tcp, node_port, 20, ATTEMPT);
    assert!(
        c.iter().chain(&n).all(Result::is_ok) && !backend_names(&c).contains(REMOVED),
        "ClusterIP {c:?}\nNodePort {n:?}"
    );
    assert!(!backend_names(&n).contains(REMOVED), "NodePort {n:?}");

    // 6. Stop it, then --cleanup with the same pin directory removes everything.
    proxy.terminate().expect("SIGTERM switchyard");
    proxy
        .wait_timeout(PROXY_TIMEOUT)
        .expect("wait")
        .unwrap_or_else(|| panic!("switchyard did not exit on SIGTERM:\n{}", proxy.stderr()));
    assert!(
        pins.exists(),
        "pins outlive the process: {}",
        pins.display()
    );
    let bpffs_flag = format!("--bpffs-path={}", pins.display());
    let cleanup = testbed
        .run(
            Place::Node(1),
            BIN,
            ["--cleanup", bpffs_flag.as_str()],
            PROXY_TIMEOUT,
        )
        .expect("switchyard --cleanup");
    assert!(cleanup.status.success(), "{cleanup:?}");
    assert!(
        !pins.exists(),
        "{} still exists after --cleanup",
        pins.display()
    );
    wait_for(
        "the service to stop being translated after --cleanup",
        PROXY_TIMEOUT,
        || {
            let c = testbed.request(pod11, Proto::Tcp, cluster_ip, 3, ATTEMPT);
            let n = testbed.request(Place::Client, Proto::Tcp, node_port, 3, ATTEMPT);
            if c.iter().chain(&n).all(Result::is_err) {
                Ok(())
            } else {
                Err((c, n))
            }
        },
    )
    .expect("nothing translated after --cleanup");
    let c = testbed.request(pod11, Proto::Tcp, cluster_ip, 5, ATTEMPT);
    let n = testbed.request(Place::Client, Proto::Tcp, node_port, 5, ATTEMPT);
    assert!(
        c.iter()
            .all(|r| matches!(r, Err(RequestError::Refused | RequestError::Timeout))),
        "ClusterIP after --cleanup: {c:?}"
    );
    assert!(
        n.iter().all(Result::is_err),
        "NodePort after --cleanup: {n:?}"
    );
}
