//! The rule renderer's output against real iptables-restore (legacy and nft), in a throwaway
//! network namespace: every rule shape loads, 10,000 services load with each backend's
//! strategy, a partial sync works on the big table, and cleanup leaves nothing behind.
use std::net::IpAddr;
use std::time::Instant;

use ipnet::IpNet;
use switchyard::dataplane::{Dataplane, SyncKind};
use switchyard::iptables::dataplane::TABLES;
use switchyard::iptables::rule_set::{RuleConfig, Table};
use switchyard::iptables::{exec, IptablesBackend, IptablesDataplane, SystemIptables};
use switchyard::model::{
    compute_desired_state, ClusterObjects, DesiredState, Endpoint, NodeContext, ObjectKey,
    Protocol, ServicePort, ServicePortKey, StateDiff, TrafficPolicy,
};
use switchyard_testbed::{netns::run_in_netns, Testbed, TopologySpec};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

fn net(text: &str) -> IpNet {
    text.parse().expect("test CIDR")
}

fn one_node() -> Testbed {
    // Never the root namespace: removed on drop, also on failure.
    Testbed::new(TopologySpec {
        nodes: 1,
        pods_per_node: 0,
    })
    .expect("testbed")
}

fn port(
    name: &str,
    protocol: Protocol,
    cluster_ip: &str,
    port: u16,
    eps: Vec<Endpoint>,
) -> ServicePort {
    ServicePort {
        key: ServicePortKey {
            namespace: "demo".into(),
            name: name.into(),
            port_name: "p".into(),
            protocol,
        },
        port,
        cluster_ips: vec![ip(cluster_ip)],
        node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        session_affinity_timeout: None,
        external_traffic_policy: TrafficPolicy::Cluster,
        internal_traffic_policy: TrafficPolicy::Cluster,
        health_check_node_port: None,
        endpoints: eps,
        topology: Default::default(),
        frontends: vec![],
    }
}

fn ep(addr: &str, port: u16, local: bool) -> Endpoint {
    Endpoint {
        ip: ip(addr),
        port,
        ready: true,
        serving: true,
        terminating: false,
        local,
        node_name: Some(if local { "this" } else { "other" }.into()),
        hints: None,
    }
}

/// A mix of ports touching every rule shape: plain, affinity + source ranges + ETP Local,
/// UDP with ITP Local, no endpoints, no local endpoints.
fn sample_ports() -> Vec<ServicePort> {
    let plain = port(
        "web",
        Protocol::Tcp,
        "198.18.128.10",
        80,
        vec![ep("198.19.1.5", 8080, false), ep("198.19.2.6", 8080, false)],
    );
    let mut sticky = port(
        "sticky",
        Protocol::Tcp,
        "198.18.128.11",
        443,
        vec![ep("198.19.1.5", 8443, false), ep("198.19.1.6", 8443, true)],
    );
    sticky.node_port = Some(30443);
    sticky.external_ips = vec![ip("203.0.113.5")];
    sticky.load_balancer_ips = vec![ip("203.0.113.10")];
    sticky.session_affinity_timeout = Some(10800);
    sticky.external_traffic_policy = TrafficPolicy::Local;
    sticky.health_check_node_port = Some(31000);
    sticky.load_balancer_source_ranges = vec![net("198.51.100.0/24"), net("198.18.0.0/24")];
    let mut dns = port(
        "dns",
        Protocol::Udp,
        "198.18.128.53",
        53,
        vec![ep("198.19.1.7", 53, true)],
    );
    dns.internal_traffic_policy = TrafficPolicy::Local;
    dns.node_port = Some(30053);
    let mut empty = port("empty", Protocol::Tcp, "198.18.128.12", 80, vec![]);
    empty.node_port = Some(30080);
    let mut no_local = port(
        "nolocal",
        Protocol::Tcp,
        "198.18.128.13",
        80,
        vec![ep("198.19.2.6", 8080, false)],
    );
    no_local.internal_traffic_policy = TrafficPolicy::Local;
    no_local.external_traffic_policy = TrafficPolicy::Local;
    no_local.node_port = Some(30081);
    vec![plain, sticky, dns, empty, no_local]
}

#[test]
fn generated_rules_load_into_a_real_kernel_with_both_backends() {
    let testbed = one_node();
    let ns = testbed.node(1).netns_path.clone();
    let state = DesiredState {
        ports: sample_ports()
            .into_iter()
            .map(|p| (p.key.clone(), std::sync::Arc::new(p)))
            .collect(),
    };
    let base = RuleConfig {
        cluster_cidrs: vec![net("198.19.0.0/16")],
        node_ips: vec![ip("198.18.0.11")],
        ..RuleConfig::default()
    };
    for backend in [IptablesBackend::Legacy, IptablesBackend::Nft] {
        // Each configuration replaces the previous one's chains in the same namespace, so
        // the rewrite and stale-chain removal paths run against the kernel too.
        for config in [
            base.clone(),
            RuleConfig {
                cluster_cidrs: vec![net("198.19.0.0/16"), net("198.18.64.0/18")],
                masquerade_all: true,
                nodeport_cidrs: vec![net("0.0.0.0/1"), net("198.18.0.0/24")],
                ..base.clone()
            },
            RuleConfig {
                localhost_nodeports: true,
                ..base.clone()
            },
        ] {
            let report = run_in_netns(&ns, || {
                let mut dp = IptablesDataplane::new(
                    Box::new(SystemIptables::ipv4(backend)),
                    backend.strategy(),
                    config,
                );
                Ok(dp.sync(SyncKind::Full, &state, &StateDiff::default()))
            })
            .expect("run in namespace");
            let report =
                report.unwrap_or_else(|e| panic!("{backend}: the kernel refused the rules: {e}"));
            assert_eq!(report.ports_written, state.ports.len());
        }
        // The check itself works: a jump to a chain that does not exist is refused.
        let broken = "*nat\n:SWY-X - [0:0]\n-A SWY-X -j SWY-MISSING\nCOMMIT\n";
        let refused = run_in_netns(&ns, || Ok(exec::restore(backend, broken).is_err()))
            .expect("run in namespace");
        assert!(refused, "{backend}");
    }
}

/// `count` services `svc-N`, each with a ClusterIP and two endpoints.
fn objects(count: usize) -> ClusterObjects {
    let mut objects = ClusterObjects::default();
    for i in 0..count {
        let name = format!("svc-{i}");
        let service = serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "scale"},
            "spec": {"clusterIP": format!("198.18.{}.{}", 128 + i / 250, 1 + i % 250),
                     "ports": [{"name": "http", "port": 80}]}
        });
        let slice = serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-1"), "namespace": "scale",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [format!("198.19.1.{}", 1 + i % 250)]},
                          {"addresses": [format!("198.19.2.{}", 1 + i % 250)]}]
        });
        objects.insert_service(
            serde_json::from_value::<k8s_openapi::api::core::v1::Service>(service).unwrap(),
        );
        objects.insert_slice(
            serde_json::from_value::<k8s_openapi::api::discovery::v1::EndpointSlice>(slice)
                .unwrap(),
        );
    }
    objects
}

fn state(objects: &ClusterObjects) -> DesiredState {
    let computed = compute_desired_state(objects, &NodeContext::new("node1"));
    assert!(computed.warnings.is_empty(), "{:?}", computed.warnings);
    computed.state
}

#[test]
fn ten_thousand_services_load_into_a_real_kernel_with_both_backends() {
    let testbed = one_node();
    let objects = objects(10_000);
    let big = state(&objects);
    let mut smaller = objects.clone();
    smaller.services.remove(&ObjectKey::new("scale", "svc-77"));
    let smaller = state(&smaller);
    for backend in [IptablesBackend::Legacy, IptablesBackend::Nft] {
        let ns = testbed.node(1).netns_path.clone();
        let (left, present) = run_in_netns(&ns, || {
            let mut dp = IptablesDataplane::new(Box::new(SystemIptables::ipv4(backend)), backend.strategy(), RuleConfig::default());
            let started = Instant::now();
            let full = dp.sync(SyncKind::Full, &big, &StateDiff::default());
            let full_took = started.elapsed();
            let full = full.unwrap_or_else(|e| panic!("{backend}: {e}"));
            assert_eq!(full.ports_written, 10_000);
            let started = Instant::now();
            let partial = dp
                .sync(SyncKind::Partial, &smaller, &StateDiff::between(&big, &smaller))
                .unwrap_or_else(|e| panic!("{backend}: {e}"));
            let partial_took = started.elapsed();
            assert!(!partial.full, "{backend}: {partial:?}");
            // Reported, not asserted: timings belong to the benchmarks.
            eprintln!("{backend}: full sync of 10,000 services: {full_took:.1?}; partial sync of one: {partial_took:.2?}");
            let present = exec::our_chains(backend, Table::Nat).map(|c| c.len()).unwrap_or(0);
            dp.cleanup().expect("cleanup");
            let left: usize = TABLES
                .iter()
                .map(|t| exec::our_chains(backend, *t).map(|c| c.len()).unwrap_or(usize::MAX))
                .sum();
            Ok((left, present))
        })
        .expect("run in the namespace");
        // 9,999 services x (SVC + 2 SEP) plus the static chains.
        assert!(present >= 9_999 * 3, "{backend}: {present} chains");
        assert_eq!(left, 0, "{backend}: cleanup left chains behind");
    }
}
