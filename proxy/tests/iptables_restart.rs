//! iptables mode across a controller crash (ebpf mode has `ebpf_restart.rs`): switchyard is
//! SIGKILLed while clients keep opening TCP connections to a ClusterIP (from a pod) and a
//! NodePort (from outside) and UDP exchanges with the ClusterIP. The rules stay in the
//! kernel while no controller runs; an endpoint that no held flow uses is removed meanwhile;
//! the new process's first sync (a full rewrite, then the conntrack reconcile) applies it.
//! Not one new connection fails, the held TCP connections and the held UDP flow keep their
//! backends (the reconciler deletes no entry of a serving endpoint), and no new connection
//! reaches the removed endpoint once that sync has returned.
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchyard_testbed::hold::summarize;
use switchyard_testbed::load::{relative, RestartTimes};
use switchyard_testbed::{
    start_switchyard, wait_for, wait_for_log, Destination, Hold, LoadSpec, Manifests, Place, Proto,
    Recorder, Testbed, TopologySpec,
};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const HOLD_INTERVAL: Duration = Duration::from_millis(200);
const PROXY_TIMEOUT: Duration = Duration::from_secs(60);

const CLUSTER_TCP: &str = "198.18.128.31:80";
const CLUSTER_UDP: &str = "198.18.128.31:53";
const NODE_PORT: &str = "198.18.0.11:30081";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// A ClusterIP + NodePort service (TCP 80, UDP 53, both to 8080) over `pods`.
fn service_yaml(testbed: &Testbed, pods: &[&str]) -> String {
    let endpoints = testbed.ready_endpoints_yaml(pods);
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: crash, namespace: crash}}
spec:
  type: NodePort
  clusterIP: 198.18.128.31
  ports:
  - {{name: tcp, port: 80, targetPort: 8080, nodePort: 30081, protocol: TCP}}
  - {{name: dns, port: 53, targetPort: 8080, protocol: UDP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: crash-1
  namespace: crash
  labels: {{kubernetes.io/service-name: crash}}
addressType: IPv4
ports:
- {{name: tcp, port: 8080, protocol: TCP}}
- {{name: dns, port: 8080, protocol: UDP}}
endpoints:
{endpoints}"
    )
}

/// One metric's value from node1's /metrics, 0 when absent.
fn metric(testbed: &Testbed, series: &str) -> f64 {
    switchyard_testbed::metric(testbed.node(1), series).unwrap_or(0.0)
}

#[test]
fn sigkilled_controller_is_replaced_without_losing_a_connection_or_a_udp_flow() {
    // Six endpoints, five held flows: one endpoint is left for the removal.
    let testbed = Testbed::new(TopologySpec {
        nodes: 2,
        pods_per_node: 3,
    })
    .expect("testbed");
    let _echo = testbed
        .start_echo_everywhere(8080, 8080)
        .expect("echo servers");
    let all: Vec<&str> = testbed.pods().iter().map(|p| p.name.as_str()).collect();
    let manifests = Manifests::new().expect("manifests");
    manifests
        .write("nodes.yaml", &testbed.nodes_yaml())
        .expect("write nodes");
    manifests
        .write("svc.yaml", &service_yaml(&testbed, &all))
        .expect("write service");
    let node1 = testbed.node(1);
    let start = || {
        start_switchyard(&testbed, node1, BIN.as_ref(), "iptables", &manifests, &[])
            .expect("switchyard")
    };
    let (cluster_tcp, cluster_udp, node_port) =
        (addr(CLUSTER_TCP), addr(CLUSTER_UDP), addr(NODE_PORT));
    let (pod11, pod12) = (testbed.pod(1, 1), testbed.pod(1, 2));

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
    for (place, proto, to) in [
        (Place::from(pod11), Proto::Tcp, cluster_tcp),
        (Place::from(pod11), Proto::Udp, cluster_udp),
        (Place::Client, Proto::Tcp, node_port),
    ] {
        testbed
            .wait_for_answer(place, proto, to, PROXY_TIMEOUT)
            .unwrap_or_else(|e| fail(e, &proxy));
    }

    // Established flows: TCP on both paths, and connected UDP sockets (a conntrack entry
    // each). Three of them: were their entries deleted, each next datagram would pick a
    // backend again, and all three landing on their old ones is a 1-in-125 chance.
    let holds: Vec<(&str, Hold)> = [
        ("ClusterIP TCP", Place::from(pod11), Proto::Tcp, cluster_tcp),
        (
            "ClusterIP UDP 1",
            Place::from(pod11),
            Proto::Udp,
            cluster_udp,
        ),
        (
            "ClusterIP UDP 2",
            Place::from(pod11),
            Proto::Udp,
            cluster_udp,
        ),
        (
            "ClusterIP UDP 3",
            Place::from(pod12),
            Proto::Udp,
            cluster_udp,
        ),
        ("NodePort TCP", Place::Client, Proto::Tcp, node_port),
    ]
    .into_iter()
    .map(|(name, place, proto, to)| {
        let hold = testbed
            .hold(place, proto, to, HOLD_INTERVAL)
            .unwrap_or_else(|e| panic!("held {name}: {e}"));
        (name, hold)
    })
    .collect();
    let held_backends: BTreeSet<String> = holds
        .iter()
        .map(|(name, h)| {
            h.steady()
                .unwrap_or_else(|e| panic!("{name} before the kill: {e}"))
                .0
        })
        .collect();
    // The endpoint to remove while no controller runs: one no held flow uses.
    let removed = all
        .iter()
        .copied()
        .find(|p| !held_backends.contains(*p))
        .expect("an endpoint no held flow uses")
        .to_owned();
    let remaining: Vec<&str> = all.iter().copied().filter(|p| *p != removed).collect();

    let (recorded, killed, down_since, restarted, synced, marks, proxy) =
        std::thread::scope(|scope| {
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
                LoadSpec::default(),
            );
            recorder
                .wait_batches_after(
                    "new connections before the kill",
                    Instant::now(),
                    2,
                    PROXY_TIMEOUT,
                )
                .expect("recorder running");

            // SIGKILL: no clean shutdown; the rules and conntrack are all that is left.
            let killed = Instant::now();
            proxy.kill().expect("SIGKILL switchyard");
            let status = proxy.wait().expect("reap switchyard");
            assert!(!status.success(), "switchyard was killed: {status}");
            let down_since = Instant::now();
            manifests
                .write("svc.yaml", &service_yaml(&testbed, &remaining))
                .expect("edit while down");
            recorder
                .wait_batches_after(
                    "new connections while no controller runs",
                    down_since,
                    2,
                    PROXY_TIMEOUT,
                )
                .expect("connections during the downtime");

            let restarted = Instant::now();
            let mut proxy = start();
            // Logged once the whole sync (rules, then the conntrack reconcile) returned.
            wait_for_log(
                &mut proxy,
                "the new process's first sync",
                PROXY_TIMEOUT,
                &[&["synced", "full=true"]],
            )
            .unwrap_or_else(|e| fail(e, &proxy));
            let synced = Instant::now();
            let marks: Vec<Duration> = holds.iter().map(|(_, h)| h.elapsed()).collect();
            for ((name, hold), mark) in holds.iter().zip(&marks) {
                wait_for("a held round trip after the restart", PROXY_TIMEOUT, || {
                    if hold.answered_after(*mark) {
                        Ok(())
                    } else {
                        Err(format!("{name}: {}", summarize(&hold.timeline())))
                    }
                })
                .unwrap_or_else(|e| fail(e, &proxy));
            }
            recorder
                .wait_batches_after(
                    "new connections after the restart",
                    synced,
                    3,
                    PROXY_TIMEOUT,
                )
                .expect("connections after the restart");
            (
                recorder.stop(),
                killed,
                down_since,
                restarted,
                synced,
                marks,
                proxy,
            )
        });

    let failures = recorded.failures(restarted, |b| {
        RestartTimes {
            killed,
            down_since,
            restarted,
            synced,
        }
        .phase_of(b)
    });
    assert!(
        failures.is_empty(),
        "{} of {} new connections failed (times relative to the new process's start; its \
         first sync returned at {}):\n{}\n{}",
        failures.len(),
        recorded.attempts(),
        relative(synced, restarted),
        failures.join("\n"),
        proxy.stderr()
    );
    let phases = [
        recorded.count(|b| b.ended < killed),
        recorded.count(|b| b.started >= down_since && b.ended <= restarted),
        recorded.count(|b| b.started >= synced),
    ];
    assert!(
        phases.iter().all(|n| *n >= 1),
        "batches before/during/after the downtime: {phases:?}"
    );
    // The removal applied by the first sync: no connection that started after it got there.
    let late = recorded.reached(&removed, |b| b.started >= synced);
    assert!(
        late.is_empty(),
        "{removed} answered after its removal was applied: {late:?}"
    );

    for ((name, hold), mark) in holds.iter().zip(&marks) {
        let (backend, timeline) = hold
            .steady()
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", proxy.stderr()));
        assert!(
            timeline.iter().any(|r| r.at > *mark),
            "held {name}: no round trip after the restart: {}",
            summarize(&timeline)
        );
        assert_ne!(backend, removed);
    }
    // The reconciler ran after the first sync. What it deleted, if anything, was the
    // recorder's exchanges with the removed endpoint; the held UDP flow's entry stayed, as
    // its round trips show.
    let reconciles = metric(
        &testbed,
        "kubeproxy_conntrack_reconciler_sync_duration_seconds_count{ip_family=\"IPv4\"}",
    );
    assert!(reconciles >= 1.0, "the reconciler ran: {reconciles}");
    let log = proxy.stderr();
    assert!(
        !log.contains("ERROR"),
        "the new process logged errors:\n{log}"
    );
    eprintln!(
        "{} new connections, none failed; batches before/during/after the downtime {phases:?}; \
         held flows stayed on {held_backends:?}; {removed} removed while down",
        recorded.attempts()
    );
}
