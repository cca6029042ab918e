//! The controller driven by hand with a fake clock and a fake dataplane: no runtime, no
//! kernel, no waiting.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::config::Cli;
use crate::dataplane::{PortError, SyncError, SyncReport};
use crate::model::{ClusterObjects, DesiredState};
use crate::source::Trigger;

/// A clock that moves only when told.
#[derive(Clone)]
struct FakeClock(Arc<Mutex<(Instant, SystemTime)>>);

impl FakeClock {
    fn new() -> Self {
        Self(Arc::new(Mutex::new((
            Instant::now(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        ))))
    }
    fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap();
        t.0 += by;
        t.1 += by;
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.0.lock().unwrap().0
    }
    fn wall(&self) -> SystemTime {
        self.0.lock().unwrap().1
    }
}

/// Records each sync as (kind, ports in the state, ports in the diff); fails whole syncs or
/// single ports on request; each sync takes `takes` on the fake clock.
#[derive(Clone)]
struct FakeDataplane {
    calls: Arc<Mutex<Vec<(SyncKind, usize, usize)>>>,
    fail: Arc<Mutex<usize>>,
    /// Service names whose ports fail (like a full map) while listed.
    failing_ports: Arc<Mutex<Vec<String>>>,
    clock: FakeClock,
    takes: Duration,
}

impl Dataplane for FakeDataplane {
    fn sync(
        &mut self,
        kind: SyncKind,
        state: &DesiredState,
        diff: &StateDiff,
    ) -> Result<SyncReport, SyncError> {
        self.clock.advance(self.takes);
        let changed = diff.added.len() + diff.changed.len() + diff.removed.len();
        self.calls
            .lock()
            .unwrap()
            .push((kind, state.ports.len(), changed));
        let mut fail = self.fail.lock().unwrap();
        if *fail > 0 {
            *fail -= 1;
            return Err(SyncError::new("fake", std::io::Error::other("refused")));
        }
        let failing = self.failing_ports.lock().unwrap();
        let errors: Vec<PortError> = diff
            .added
            .iter()
            .chain(&diff.changed)
            .filter(|k| failing.contains(&k.name))
            .map(|k| PortError {
                port: k.clone(),
                full_map: Some("SWY_BACKENDS"),
                source: "map SWY_BACKENDS is full".into(),
            })
            .collect();
        Ok(SyncReport {
            full: kind == SyncKind::Full,
            ports_written: changed - errors.len(),
            errors,
            ..SyncReport::default()
        })
    }
    fn cleanup(&mut self) -> Result<(), SyncError> {
        Ok(())
    }
}

struct Harness {
    controller: Controller,
    clock: FakeClock,
    dataplane: FakeDataplane,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

fn harness() -> Harness {
    harness_with(None)
}

/// A harness whose controller publishes health checks to `health_checks`, if given.
fn harness_with(health_checks: Option<watch::Sender<HealthChecks>>) -> Harness {
    let cli = <Cli as clap::Parser>::parse_from(["switchyard"]);
    let mut settings = Settings::resolve(cli, || "node1".into()).unwrap();
    settings.min_sync_period = Duration::from_secs(1);
    settings.sync_period = Duration::from_secs(30);
    let clock = FakeClock::new();
    let dataplane = FakeDataplane {
        calls: Arc::default(),
        fail: Arc::default(),
        failing_ports: Arc::default(),
        clock: clock.clone(),
        takes: Duration::from_millis(20),
    };
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(Duration::from_secs(60)));
    let mut controller = Controller::new(
        settings,
        Box::new(dataplane.clone()),
        metrics.clone(),
        health.clone(),
        Box::new(clock.clone()),
    );
    if let Some(sender) = health_checks {
        controller = controller.with_health_checks(sender);
    }
    Harness {
        controller,
        clock,
        dataplane,
        metrics,
        health,
    }
}

/// `services` ClusterIP services, each with a NodePort.
fn objects(services: usize) -> ClusterObjects {
    let mut objects = ClusterObjects::default();
    for i in 0..services {
        let service = serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{i}"), "namespace": "burst"},
            "spec": {"type": "NodePort", "clusterIP": format!("198.18.128.{}", i + 1),
                     "ports": [{"port": 80, "nodePort": 30000 + i}]}
        });
        objects.insert_service(
            serde_json::from_value::<k8s_openapi::api::core::v1::Service>(service).unwrap(),
        );
    }
    objects
}

fn input(services: usize, triggers: &[Trigger], addresses: &[&str]) -> NodeSnapshot {
    NodeSnapshot {
        objects: Snapshot {
            objects: Arc::new(objects(services)),
            triggers: Arc::new(triggers.to_vec()),
            ..Snapshot::default()
        },
        addresses: Arc::new(addresses.iter().map(|a| a.parse().unwrap()).collect()),
    }
}

impl Harness {
    /// Runs every sync due from now until `until` has passed on the fake clock, stepping to
    /// each wake-up, always reading `input`.
    fn run_for(&mut self, until: Duration, input: &NodeSnapshot) {
        let end = self.clock.now() + until;
        loop {
            if let Some(kind) = self.controller.due() {
                self.controller.sync(kind, input);
                continue;
            }
            let wake = self.controller.next_wakeup();
            if wake > end {
                let now = self.clock.now();
                self.clock.advance(end.saturating_duration_since(now));
                break;
            }
            let now = self.clock.now();
            self.clock.advance(
                wake.saturating_duration_since(now)
                    .max(Duration::from_millis(1)),
            );
        }
    }

    fn calls(&self) -> Vec<(SyncKind, usize, usize)> {
        self.dataplane.calls.lock().unwrap().clone()
    }

    fn latency_samples(&self) -> u64 {
        let text = self.metrics.encode();
        // Every family's series (a dual-stack node prints both, in no fixed order).
        text.lines()
            .filter(|l| l.starts_with("kubeproxy_network_programming_duration_seconds_count"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum()
    }
}

#[test]
fn a_burst_of_changes_inside_min_sync_period_is_one_sync_with_the_last_state() {
    let mut h = harness();
    h.run_for(Duration::ZERO, &input(1, &[], &["198.18.0.11"]));
    assert_eq!(
        h.calls(),
        vec![(SyncKind::Full, 1, 1)],
        "first sync is full"
    );
    // Ten changes 10 ms apart, all inside one minSyncPeriod: nothing is due until it ends.
    for _ in 0..10 {
        h.clock.advance(Duration::from_millis(10));
        h.controller.changed();
        assert_eq!(h.controller.due(), None);
    }
    h.run_for(Duration::from_secs(2), &input(11, &[], &["198.18.0.11"]));
    assert_eq!(
        h.calls(),
        vec![(SyncKind::Full, 1, 1), (SyncKind::Partial, 11, 10)]
    );
}

#[test]
fn idle_syncs_only_verify_each_sync_period_and_write_nothing() {
    let mut h = harness();
    let same = input(50, &[], &["198.18.0.11"]);
    h.run_for(Duration::from_secs(95), &same);
    let calls = h.calls();
    assert_eq!(calls[0], (SyncKind::Full, 50, 50));
    assert_eq!(
        &calls[1..],
        &[(SyncKind::Verify, 50, 0); 3],
        "three verifies in 95 s, with empty diffs"
    );
}

#[test]
fn the_first_sync_is_announced_only_once_it_succeeded() {
    let h = harness();
    let (done, mut first_sync) = tokio::sync::oneshot::channel();
    let controller = h.controller.with_first_sync(done);
    let mut h = Harness { controller, ..h };
    // The first full sync fails: what waits for it (the other mode's state going, kube-proxy's
    // rules going) must keep waiting; the old state serves meanwhile.
    *h.dataplane.fail.lock().unwrap() = 1;
    h.run_for(Duration::ZERO, &input(1, &[], &["198.18.0.11"]));
    assert_eq!(h.calls().len(), 1);
    assert_eq!(
        first_sync.try_recv(),
        Err(tokio::sync::oneshot::error::TryRecvError::Empty),
        "not after a failure"
    );
    // Its retry succeeds.
    h.run_for(Duration::from_secs(2), &input(1, &[], &["198.18.0.11"]));
    assert_eq!(h.calls().len(), 2);
    assert_eq!(first_sync.try_recv(), Ok(()));
}

#[test]
fn a_failed_sync_keeps_the_state_and_is_retried_as_a_full_sync() {
    let mut h = harness();
    h.run_for(Duration::ZERO, &input(1, &[], &["198.18.0.11"]));
    *h.dataplane.fail.lock().unwrap() = 1;
    h.clock.advance(Duration::from_secs(5));
    h.controller.changed();
    h.run_for(Duration::from_secs(3), &input(2, &[], &["198.18.0.11"]));
    let calls = h.calls();
    assert_eq!(
        calls[1],
        (SyncKind::Partial, 2, 1),
        "the change, which fails"
    );
    // The retry still sees the one-port diff: the failed sync applied nothing.
    assert_eq!(calls[2], (SyncKind::Full, 2, 1), "retried as a full sync");
    assert_eq!(calls.len(), 3);
    assert!(h
        .metrics
        .encode()
        .contains("switchyard_sync_failures_total 1"));
}

#[test]
fn trigger_latency_is_observed_once_per_trigger_and_only_when_its_sync_succeeds() {
    let mut h = harness();
    let at = h.clock.wall();
    let first = [Trigger {
        seq: 1,
        at,
        ipv6: false,
    }];
    h.run_for(Duration::ZERO, &input(1, &first, &["198.18.0.11"]));
    assert_eq!(h.latency_samples(), 1);

    // Two more triggers arrive; the first snapshot holding them fails to sync.
    let later = [
        Trigger {
            seq: 1,
            at,
            ipv6: false,
        },
        Trigger {
            seq: 2,
            at,
            ipv6: false,
        },
        Trigger {
            seq: 3,
            at,
            ipv6: false,
        },
    ];
    *h.dataplane.fail.lock().unwrap() = 1;
    h.clock.advance(Duration::from_secs(2));
    h.controller.changed();
    h.run_for(Duration::ZERO, &input(2, &later, &["198.18.0.11"]));
    assert_eq!(h.latency_samples(), 1, "nothing observed for a failed sync");
    h.run_for(Duration::from_secs(2), &input(2, &later, &["198.18.0.11"]));
    assert_eq!(
        h.latency_samples(),
        3,
        "seq 2 and 3 observed after the retry, seq 1 not again"
    );
}

#[test]
fn node_addresses_in_the_snapshot_decide_the_nodeport_frontends() {
    let mut h = harness();
    h.run_for(Duration::ZERO, &input(3, &[], &["198.18.0.11"]));
    h.clock.advance(Duration::from_secs(2));
    h.controller.changed();
    h.run_for(
        Duration::ZERO,
        &input(3, &[], &["198.18.0.11", "198.18.0.21"]),
    );
    assert_eq!(
        h.calls().last(),
        Some(&(SyncKind::Partial, 3, 3)),
        "every NodePort service gains the new address"
    );
}

#[test]
fn a_port_that_failed_is_retried_by_the_next_verify_not_by_a_full_sync_every_second() {
    let mut h = harness();
    h.dataplane
        .failing_ports
        .lock()
        .unwrap()
        .push("svc-1".into());
    let state = input(3, &[], &["198.18.0.11"]);
    h.run_for(Duration::from_secs(20), &state);
    assert_eq!(h.calls(), vec![(SyncKind::Full, 3, 3)], "no retry loop");
    assert!(h
        .metrics
        .encode()
        .contains("switchyard_ebpf_map_full_total{map=\"SWY_BACKENDS\"} 1"));
    // The map has room again; the verify at 30 s retries the one port.
    h.dataplane.failing_ports.lock().unwrap().clear();
    h.run_for(Duration::from_secs(15), &state);
    assert_eq!(
        h.calls()[1],
        (SyncKind::Verify, 3, 1),
        "only the failed port is in the diff"
    );
    h.run_for(Duration::from_secs(30), &state);
    assert_eq!(
        h.calls()[2],
        (SyncKind::Verify, 3, 0),
        "and then it is applied"
    );
}

/// This node's Node, optionally tainted by the cluster autoscaler.
fn with_node(mut input: NodeSnapshot, autoscaler_taint: bool) -> NodeSnapshot {
    let taints = if autoscaler_taint {
        serde_json::json!([{"key": crate::health::TO_BE_DELETED_TAINT, "effect": "NoSchedule"}])
    } else {
        serde_json::json!([])
    };
    let node = serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node1"},
        "spec": {"taints": taints},
    });
    let mut objects = (*input.objects.objects).clone();
    objects.insert_node(serde_json::from_value(node).unwrap());
    input.objects.objects = Arc::new(objects);
    input
}

#[test]
fn syncs_feed_the_nodes_eligibility_into_health() {
    let mut h = harness();
    let wall = |h: &Harness| h.clock.wall();
    assert!(!h.health.healthz(wall(&h)).healthy, "nothing synced yet");
    h.run_for(
        Duration::ZERO,
        &with_node(input(1, &[], &["198.18.0.11"]), false),
    );
    let view = h.health.healthz(wall(&h));
    assert!(view.healthy && view.node_eligible, "{view:?}");

    // The autoscaler taints the node: the next sync makes /healthz 503, /livez stays 200.
    h.controller.changed();
    h.run_for(
        Duration::from_secs(2),
        &with_node(input(1, &[], &["198.18.0.11"]), true),
    );
    let view = h.health.healthz(wall(&h));
    assert!(!view.healthy && !view.node_eligible, "{view:?}");
    assert!(h.health.livez(wall(&h)).healthy);

    // The Node disappears from the snapshot: still not eligible.
    h.controller.changed();
    h.run_for(Duration::from_secs(2), &input(1, &[], &["198.18.0.11"]));
    assert!(!h.health.healthz(wall(&h)).node_eligible);
}

#[test]
fn a_first_sync_that_never_runs_fails_livez() {
    let h = harness();
    assert!(h.health.livez(h.clock.wall()).healthy);
    h.clock.advance(Duration::from_secs(61));
    assert!(
        !h.health.livez(h.clock.wall()).healthy,
        "the initial snapshot counts as queued"
    );
}

/// The value of the one sample `series` (name, with labels if any) in the exposition.
fn sample(h: &Harness, series: &str) -> f64 {
    let text = h.metrics.encode();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing:\n{text}"))
}

#[test]
fn change_counters_count_objects_as_upstream_and_pending_clears_with_a_sync() {
    let mut h = harness();
    let total = "kubeproxy_sync_proxy_rules_service_changes_total";
    let pending = "kubeproxy_sync_proxy_rules_service_changes_pending";
    h.run_for(Duration::ZERO, &input(3, &[], &["198.18.0.11"]));
    assert_eq!(sample(&h, total), 3.0, "the initial list counts");
    assert_eq!(sample(&h, pending), 0.0);
    assert_eq!(
        sample(&h, "switchyard_service_port_changes_total"),
        3.0,
        "ports the sync wrote"
    );

    // Two services added while nothing syncs yet: seen, pending.
    let later = input(5, &[], &["198.18.0.11"]);
    h.clock.advance(Duration::from_secs(2));
    h.controller.changed();
    h.controller.observe(&later.objects.objects);
    assert_eq!(sample(&h, total), 5.0);
    assert_eq!(sample(&h, pending), 2.0);
    // The same snapshot again changes nothing.
    h.controller.observe(&later.objects.objects);
    assert_eq!(sample(&h, total), 5.0);

    // A failed sync leaves them pending; the retry clears them.
    *h.dataplane.fail.lock().unwrap() = 1;
    h.run_for(Duration::ZERO, &later);
    assert_eq!(sample(&h, pending), 2.0, "not programmed yet");
    h.run_for(Duration::from_secs(2), &later);
    assert_eq!(sample(&h, pending), 0.0);
    assert_eq!(sample(&h, total), 5.0, "each change counted once");
}

/// A LoadBalancer service with externalTrafficPolicy Local and a health check port, and a
/// slice with `local` ready endpoints on node1 and one on node2.
fn lb_local(local: usize) -> NodeSnapshot {
    let service = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "lb", "namespace": "shop"},
        "spec": {"type": "LoadBalancer", "clusterIP": "198.18.128.50",
                 "externalTrafficPolicy": "Local", "healthCheckNodePort": 32100,
                 "ports": [{"port": 80, "nodePort": 31080}]}
    });
    let mut endpoints: Vec<serde_json::Value> = (0..local)
        .map(|i| serde_json::json!({"addresses": [format!("198.19.1.{}", 11 + i)], "nodeName": "node1"}))
        .collect();
    endpoints.push(serde_json::json!({"addresses": ["198.19.2.11"], "nodeName": "node2"}));
    let slice = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "lb-1", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "lb"}},
        "addressType": "IPv4", "ports": [{"port": 8080}], "endpoints": endpoints
    });
    let mut objects = ClusterObjects::default();
    objects.insert_service(serde_json::from_value(service).unwrap());
    objects.insert_slice(serde_json::from_value(slice).unwrap());
    NodeSnapshot {
        objects: Snapshot {
            objects: Arc::new(objects),
            ..Snapshot::default()
        },
        addresses: Arc::new(vec!["198.18.0.11".parse().unwrap()]),
    }
}

#[test]
fn health_checks_and_no_local_counts_follow_the_applied_state() {
    let (sender, receiver) = watch::channel(HealthChecks::default());
    let mut h = harness_with(Some(sender));
    let service = crate::model::ObjectKey::new("shop", "lb");
    let local_count = |r: &watch::Receiver<HealthChecks>| {
        r.borrow()
            .services
            .get(&service)
            .map(|s| (s.port, s.local_endpoints))
    };
    h.run_for(Duration::ZERO, &lb_local(2));
    assert_eq!(local_count(&receiver), Some((32100, 2)));
    assert_eq!(receiver.borrow().bind, HealthCheckBind::All);
    let external = "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv4\",traffic_policy=\"external\"}";
    assert_eq!(sample(&h, external), 0.0);

    // The local endpoints go, but the sync fails: the servers keep what is programmed.
    *h.dataplane.fail.lock().unwrap() = 1;
    h.clock.advance(Duration::from_secs(2));
    h.controller.changed();
    h.run_for(Duration::ZERO, &lb_local(0));
    assert_eq!(
        local_count(&receiver),
        Some((32100, 2)),
        "failed sync: unchanged"
    );
    h.run_for(Duration::from_secs(2), &lb_local(0));
    assert_eq!(
        local_count(&receiver),
        Some((32100, 0)),
        "the retry publishes it"
    );
    assert_eq!(sample(&h, external), 1.0, "only a remote endpoint is left");
}

#[test]
fn input_problems_are_counted_as_they_come_and_go() {
    let mut h = harness();
    let warnings = "switchyard_input_warnings";
    let with_bad_service = |source_warnings: &[&str]| {
        let mut objects = objects(2);
        let bad = serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "bad", "namespace": "burst"},
            "spec": {"clusterIP": "198.18.128.99", "ports": [{"port": 0}]}
        });
        objects.insert_service(serde_json::from_value(bad).unwrap());
        NodeSnapshot {
            objects: Snapshot {
                objects: Arc::new(objects),
                warnings: source_warnings.iter().map(ToString::to_string).collect(),
                ..Snapshot::default()
            },
            addresses: Arc::new(vec!["198.18.0.11".parse().unwrap()]),
        }
    };
    let bad = with_bad_service(&[]);
    h.run_for(Duration::ZERO, &bad);
    assert_eq!(sample(&h, warnings), 1.0, "the bad port");
    // A sync that touches nothing keeps the count.
    h.clock.advance(Duration::from_secs(2));
    h.controller.changed();
    h.run_for(Duration::ZERO, &bad);
    assert_eq!(sample(&h, warnings), 1.0, "unchanged input");
    // A source warning alone (the same objects) is counted too.
    h.clock.advance(Duration::from_secs(2));
    h.controller.changed();
    let mut with_file_warning = bad.clone();
    with_file_warning.objects.warnings = vec!["x.yaml: not UTF-8".into()];
    h.run_for(Duration::ZERO, &with_file_warning);
    assert_eq!(sample(&h, warnings), 2.0, "plus the source's");
    // The bad service goes: only the source's warning is left.
    h.clock.advance(Duration::from_secs(2));
    h.controller.changed();
    let mut fixed = input(2, &[], &["198.18.0.11"]);
    fixed.objects.warnings = vec!["x.yaml: not UTF-8".into()];
    h.run_for(Duration::ZERO, &fixed);
    assert_eq!(sample(&h, warnings), 1.0, "the service was fixed");
}
