//! Endpoint selection (upstream topology.go).

use super::fixtures::*;
use crate::{Endpoint, Protocol, ServicePort, TrafficPolicy};

/// Endpoint shorthand: last octet of 198.18.0.x, then (ready, serving, terminating, local).
type Spec = (u8, bool, bool, bool, bool);

const READY: (bool, bool, bool) = (true, true, false);
const TERMINATING: (bool, bool, bool) = (false, true, true);
const NOT_SERVING_TERMINATING: (bool, bool, bool) = (false, false, true);
const NOT_READY: (bool, bool, bool) = (false, false, false);
/// Serving but not terminating and not ready: never selected (upstream needs both).
const SERVING_ONLY: (bool, bool, bool) = (false, true, false);

fn e(n: u8, state: (bool, bool, bool), local: bool) -> Spec {
    (n, state.0, state.1, state.2, local)
}

fn port_with(specs: &[Spec], internal: TrafficPolicy, external: TrafficPolicy) -> ServicePort {
    let endpoints = specs
        .iter()
        .map(|&(n, ready, serving, terminating, local)| Endpoint {
            ip: ip(&format!("198.18.0.{n}")),
            port: 8080,
            ready,
            serving,
            terminating,
            local,
            node_name: Some(if local { NODE } else { "node-b" }.to_owned()),
            hints: None,
        })
        .collect();
    ServicePort {
        key: key("web", "", Protocol::Tcp),
        port: 80,
        cluster_ips: ips(&["198.18.128.10"]),
        node_port: Some(30080),
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        session_affinity_timeout: None,
        external_traffic_policy: external,
        internal_traffic_policy: internal,
        health_check_node_port: None,
        endpoints,
        topology: Default::default(),
        frontends: vec![],
    }
}

fn last_octets(eps: Vec<&Endpoint>) -> Vec<u8> {
    eps.iter()
        .map(|e| match e.ip {
            std::net::IpAddr::V4(v4) => v4.octets()[3],
            std::net::IpAddr::V6(_) => 0,
        })
        .collect()
}

#[test]
fn cluster_and_local_sets() {
    // (case, endpoints, cluster set, local set)
    let cases: Vec<(&str, Vec<Spec>, Vec<u8>, Vec<u8>)> = vec![
        ("no endpoints", vec![], vec![], vec![]),
        (
            "all ready",
            vec![e(1, READY, false), e(2, READY, true)],
            vec![1, 2],
            vec![2],
        ),
        (
            "ready beat terminating",
            vec![e(1, READY, false), e(2, TERMINATING, false)],
            vec![1],
            vec![],
        ),
        (
            "no ready: serving+terminating fallback",
            vec![
                e(1, TERMINATING, false),
                e(2, NOT_READY, false),
                e(3, NOT_SERVING_TERMINATING, false),
            ],
            vec![1],
            vec![],
        ),
        (
            "never a non-serving endpoint",
            vec![e(1, NOT_READY, true), e(2, NOT_SERVING_TERMINATING, true)],
            vec![],
            vec![],
        ),
        (
            "serving without terminating is not a fallback",
            vec![e(1, SERVING_ONLY, true)],
            vec![],
            vec![],
        ),
        (
            "local set falls back on its own",
            vec![e(1, READY, false), e(2, TERMINATING, true)],
            vec![1],
            vec![2],
        ),
        (
            "local ready beats local terminating",
            vec![
                e(1, READY, true),
                e(2, TERMINATING, true),
                e(3, READY, false),
            ],
            vec![1, 3],
            vec![1],
        ),
        (
            "cluster falls back while local has nothing",
            vec![e(1, TERMINATING, false), e(2, NOT_READY, true)],
            vec![1],
            vec![],
        ),
    ];
    for (case, specs, cluster, local) in cases {
        let p = port_with(&specs, TrafficPolicy::Cluster, TrafficPolicy::Cluster);
        assert_eq!(
            last_octets(p.cluster_endpoints()),
            cluster,
            "{case}: cluster"
        );
        assert_eq!(last_octets(p.local_endpoints()), local, "{case}: local");
    }
}

#[test]
fn traffic_policies_pick_the_set() {
    use TrafficPolicy::{Cluster, Local};
    let specs = vec![
        e(1, READY, false),
        e(2, READY, true),
        e(3, TERMINATING, true),
    ];
    // (case, internal, external, internal set, external set)
    let cases: Vec<(&str, TrafficPolicy, TrafficPolicy, Vec<u8>, Vec<u8>)> = vec![
        ("both Cluster", Cluster, Cluster, vec![1, 2], vec![1, 2]),
        ("internal Local", Local, Cluster, vec![2], vec![1, 2]),
        ("external Local", Cluster, Local, vec![1, 2], vec![2]),
        ("both Local", Local, Local, vec![2], vec![2]),
    ];
    for (case, internal, external, want_internal, want_external) in cases {
        let p = port_with(&specs, internal, external);
        assert_eq!(last_octets(p.internal_endpoints()), want_internal, "{case}");
        assert_eq!(last_octets(p.external_endpoints()), want_external, "{case}");
    }
}

#[test]
fn local_policy_without_local_endpoints_is_empty() {
    use TrafficPolicy::Local;
    let p = port_with(
        &[e(1, READY, false), e(2, TERMINATING, false)],
        Local,
        Local,
    );
    assert!(p.internal_endpoints().is_empty());
    assert!(p.external_endpoints().is_empty());
    assert_eq!(last_octets(p.cluster_endpoints()), vec![1]);
}
