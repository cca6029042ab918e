//! The conntrack reconciler's choice of entries to delete, mirroring upstream's
//! `pkg/proxy/conntrack/cleanup_test.go` (addresses moved into Switchyard's test ranges).

use std::collections::BTreeSet;
use std::net::SocketAddr;

use serde_json::json;

use super::fixtures::*;
use crate::conntrack::{
    stale_flows, Flow, FlowTuple, ServingEndpoints, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP,
};
use crate::DesiredState;

const CLUSTER_IP: &str = "198.18.128.1";
const EXTERNAL_IP: &str = "198.18.200.100";
const LOAD_BALANCER_IP: &str = "198.18.201.4";
/// The NodePort address of [`node_v4`].
const NODE_IP: &str = "198.18.1.10";

const SERVING_IP: &str = "198.19.0.4";
const NON_SERVING_IP: &str = "198.19.1.5";
const DELETED_IP: &str = "198.19.2.6";
const TERMINATING_IP: &str = "198.19.3.7";

const SERVICE_PORT: u16 = 8000;
const NODE_PORT: u16 = 32000;
/// A port on the service's addresses that no service port uses: not ours to clean.
const NON_SERVICE_PORT: u16 = 3000;
const ENDPOINT_PORT: u16 = 9000;
/// The endpoints' port before a change of targetPort.
const OLD_ENDPOINT_PORT: u16 = 8999;

const CLIENT: &str = "192.0.2.1:40000";

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("test literal"), port)
}

/// An entry from [`CLIENT`] to `dst`, answered (after DNAT) by `reply_src`.
fn flow(protocol: u8, dst: SocketAddr, reply_src: SocketAddr) -> Flow {
    let client: SocketAddr = CLIENT.parse().expect("test literal");
    Flow {
        protocol,
        original: FlowTuple { src: client, dst },
        reply: FlowTuple {
            src: reply_src,
            dst: client,
        },
    }
}

/// Upstream's fixture: one service with a TCP, a UDP (with a nodePort) and an SCTP port on
/// 8000, a cluster IP, an externalIP and a LoadBalancer IP; its slice has one serving and
/// one non-serving endpoint. The SCTP port's entries are never deleted, as upstream.
fn upstream_state() -> DesiredState {
    let svc = service(
        "cleanup-test",
        json!({
            "spec": {
                "type": "LoadBalancer",
                "clusterIP": CLUSTER_IP,
                "externalIPs": [EXTERNAL_IP],
                "ports": [
                    {"name": "test-tcp", "port": SERVICE_PORT, "targetPort": ENDPOINT_PORT,
                     "protocol": "TCP"},
                    {"name": "test-udp", "port": SERVICE_PORT, "targetPort": ENDPOINT_PORT,
                     "nodePort": NODE_PORT, "protocol": "UDP"},
                    {"name": "test-sctp", "port": SERVICE_PORT, "targetPort": ENDPOINT_PORT,
                     "protocol": "SCTP"},
                ]
            },
            "status": {"loadBalancer": {"ingress": [{"ip": LOAD_BALANCER_IP}]}}
        }),
    );
    let eps = slice(
        "cleanup-test-0",
        "cleanup-test",
        json!({
            "ports": [
                {"name": "test-tcp", "port": ENDPOINT_PORT, "protocol": "TCP"},
                {"name": "test-udp", "port": ENDPOINT_PORT, "protocol": "UDP"},
                {"name": "test-sctp", "port": ENDPOINT_PORT, "protocol": "SCTP"},
            ],
            "endpoints": [
                ep(SERVING_IP, "node-b", json!({"ready": true, "serving": true})),
                ep(NON_SERVING_IP, "node-b", json!({"ready": false, "serving": false})),
            ]
        }),
    );
    let computed = World::new().svc(svc).slice(eps).compute(&node_v4());
    assert!(computed.warnings.is_empty(), "{:?}", computed.warnings);
    assert_eq!(computed.state.ports.len(), 3, "{:#?}", computed.state);
    computed.state
}

/// Upstream's `TestCleanStaleEntries`: every combination of endpoint (serving, not serving,
/// deleted), protocol and destination; only UDP entries to a frontend of the UDP port that a
/// serving endpoint does not answer go.
#[test]
fn only_udp_entries_to_a_frontend_not_answered_by_a_serving_endpoint_are_deleted() {
    let state = upstream_state();
    let mut flows = Vec::new();
    let mut expected = BTreeSet::new();
    // The endpoint changed its port but not its address: the old entries are stale.
    for dst in [CLUSTER_IP, LOAD_BALANCER_IP, EXTERNAL_IP] {
        let f = flow(
            IPPROTO_UDP,
            sock(dst, SERVICE_PORT),
            sock(SERVING_IP, OLD_ENDPOINT_PORT),
        );
        flows.push(f);
        expected.insert(f);
    }
    for dnat in [SERVING_IP, NON_SERVING_IP, DELETED_IP] {
        for protocol in [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP] {
            for dst in [CLUSTER_IP, LOAD_BALANCER_IP, EXTERNAL_IP] {
                for port in [SERVICE_PORT, NON_SERVICE_PORT] {
                    let f = flow(protocol, sock(dst, port), sock(dnat, ENDPOINT_PORT));
                    flows.push(f);
                    if protocol == IPPROTO_UDP && port == SERVICE_PORT && dnat != SERVING_IP {
                        expected.insert(f);
                    }
                }
            }
            let f = flow(
                protocol,
                sock(NODE_IP, NODE_PORT),
                sock(dnat, ENDPOINT_PORT),
            );
            flows.push(f);
            if protocol == IPPROTO_UDP && dnat != SERVING_IP {
                expected.insert(f);
            }
        }
    }
    // Not DNATed (reply source = original destination): sent while the frontend had no
    // endpoints and no rule rejected it. Stale on the service's port.
    for ip in [CLUSTER_IP, LOAD_BALANCER_IP, EXTERNAL_IP] {
        for port in [SERVICE_PORT, NON_SERVICE_PORT] {
            let f = flow(IPPROTO_UDP, sock(ip, port), sock(ip, port));
            flows.push(f);
            if port == SERVICE_PORT {
                expected.insert(f);
            }
        }
    }
    assert_eq!(flows.len(), 3 + 63 + 6);

    let deleted: BTreeSet<Flow> = stale_flows(&state, &flows).into_iter().copied().collect();
    let unexpected: Vec<&Flow> = deleted.difference(&expected).collect();
    let missed: Vec<&Flow> = expected.difference(&deleted).collect();
    assert!(
        unexpected.is_empty() && missed.is_empty(),
        "deleted but should stay: {unexpected:#?}\nstayed but should go: {missed:#?}"
    );
    assert_eq!(deleted.len(), 3 + 8 + 3);
}

/// Upstream's `TestServiceWithoutEndpoints`: the only slice belongs to another service, so
/// the UDP port has no endpoints and nothing of it is deleted, not even an entry to an
/// endpoint that is gone.
#[test]
fn a_service_without_endpoints_keeps_all_its_entries() {
    let svc = service(
        "cleanup-test",
        json!({"spec": {
            "clusterIP": CLUSTER_IP,
            "externalIPs": [EXTERNAL_IP],
            "ports": [{"name": "test-udp", "port": SERVICE_PORT, "targetPort": ENDPOINT_PORT,
                       "protocol": "UDP"}]
        }}),
    );
    let other = slice(
        "cleanup-test-0",
        "non-existing-service",
        json!({
            "ports": [{"name": "test-udp", "port": ENDPOINT_PORT, "protocol": "UDP"}],
            "endpoints": [ready(SERVING_IP, "node-b")]
        }),
    );
    let state = World::new().svc(svc).slice(other).compute(&node_v4()).state;
    let flows = [
        flow(
            IPPROTO_UDP,
            sock(EXTERNAL_IP, SERVICE_PORT),
            sock(SERVING_IP, ENDPOINT_PORT),
        ),
        flow(
            IPPROTO_UDP,
            sock(EXTERNAL_IP, SERVICE_PORT),
            sock(DELETED_IP, ENDPOINT_PORT),
        ),
    ];
    assert!(stale_flows(&state, &flows).is_empty());
    assert!(ServingEndpoints::new(&state).is_empty(), "no dump needed");
}

/// Upstream's `TestPerformanceCleanStaleEntries`, smaller: many entries to the externalIP on
/// random ports, of which only those on the service port go.
#[test]
fn among_many_entries_only_those_to_the_service_port_go() {
    let state = upstream_state();
    let mut flows = vec![
        flow(
            IPPROTO_UDP,
            sock(EXTERNAL_IP, SERVICE_PORT),
            sock(SERVING_IP, ENDPOINT_PORT),
        ),
        flow(
            IPPROTO_UDP,
            sock(EXTERNAL_IP, SERVICE_PORT),
            sock(DELETED_IP, ENDPOINT_PORT),
        ),
    ];
    let mut expected_deleted = 1;
    // A fixed linear congruential sequence: random-looking ports, same every run.
    let mut x: u32 = 12345;
    for _ in 0..100_000 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let port = (x >> 16) as u16;
        if port == SERVICE_PORT {
            expected_deleted += 1;
        }
        flows.push(flow(
            IPPROTO_UDP,
            sock(EXTERNAL_IP, port),
            sock(DELETED_IP, ENDPOINT_PORT),
        ));
    }
    assert_eq!(stale_flows(&state, &flows).len(), expected_deleted);
}

/// One endpoint entry of a slice: address and (ready, serving, terminating).
type EndpointSpec = (&'static str, (bool, bool, bool));

const READY: (bool, bool, bool) = (true, true, false);
const SERVING_TERMINATING: (bool, bool, bool) = (false, true, true);
const NOT_SERVING: (bool, bool, bool) = (false, false, true);

/// A UDP service `dns` (cluster IP, externalIP, NodePort, ETP Local) with the endpoints
/// given, all on another node.
fn dns_state(endpoints: &[EndpointSpec]) -> DesiredState {
    let svc = service(
        "dns",
        json!({"spec": {
            "type": "NodePort",
            "clusterIP": CLUSTER_IP,
            "externalIPs": [EXTERNAL_IP],
            "externalTrafficPolicy": "Local",
            "ports": [{"name": "dns", "port": 53, "targetPort": ENDPOINT_PORT,
                       "nodePort": NODE_PORT, "protocol": "UDP"}]
        }}),
    );
    let eps: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|(ip, (ready, serving, terminating))| {
            ep(
                ip,
                "node-b",
                json!({"ready": ready, "serving": serving, "terminating": terminating}),
            )
        })
        .collect();
    let slice = slice(
        "dns-1",
        "dns",
        json!({
            "ports": [{"name": "dns", "port": ENDPOINT_PORT, "protocol": "UDP"}],
            "endpoints": eps
        }),
    );
    let computed = World::new().svc(svc).slice(slice).compute(&node_v4());
    assert!(computed.warnings.is_empty(), "{:?}", computed.warnings);
    computed.state
}

#[test]
fn each_kind_of_entry_is_kept_or_deleted_as_upstream_does() {
    let udp = |dst: SocketAddr, reply_src: SocketAddr| flow(IPPROTO_UDP, dst, reply_src);
    let cluster = sock(CLUSTER_IP, 53);
    let serving = sock(SERVING_IP, ENDPOINT_PORT);
    let gone = sock(DELETED_IP, ENDPOINT_PORT);
    let cases: Vec<(&str, Vec<EndpointSpec>, Flow, bool)> = vec![
        (
            "to a serving endpoint",
            vec![(SERVING_IP, READY)],
            udp(cluster, serving),
            false,
        ),
        (
            "to an endpoint that went away",
            vec![(SERVING_IP, READY)],
            udp(cluster, gone),
            true,
        ),
        (
            "to an endpoint that stopped serving",
            vec![(SERVING_IP, READY), (DELETED_IP, NOT_SERVING)],
            udp(cluster, gone),
            true,
        ),
        (
            "to a terminating endpoint that still serves, while another is ready",
            vec![(SERVING_IP, READY), (TERMINATING_IP, SERVING_TERMINATING)],
            udp(cluster, sock(TERMINATING_IP, ENDPOINT_PORT)),
            false,
        ),
        (
            "to a serving endpoint on the port it had before a targetPort change",
            vec![(SERVING_IP, READY)],
            udp(cluster, sock(SERVING_IP, OLD_ENDPOINT_PORT)),
            true,
        ),
        (
            "not DNATed: sent while the service had no endpoints",
            vec![(SERVING_IP, READY)],
            udp(cluster, cluster),
            true,
        ),
        (
            "not DNATed, and the service still has no endpoints",
            vec![],
            udp(cluster, cluster),
            false,
        ),
        (
            "to a gone endpoint of a service whose endpoints all stopped serving",
            vec![(SERVING_IP, NOT_SERVING)],
            udp(cluster, gone),
            false,
        ),
        (
            "TCP to a gone endpoint (TCP connections end on their own)",
            vec![(SERVING_IP, READY)],
            flow(IPPROTO_TCP, cluster, gone),
            false,
        ),
        (
            "another port of the cluster IP",
            vec![(SERVING_IP, READY)],
            udp(sock(CLUSTER_IP, 5353), gone),
            false,
        ),
        (
            "the externalIP, to a gone endpoint",
            vec![(SERVING_IP, READY)],
            udp(sock(EXTERNAL_IP, 53), gone),
            true,
        ),
        (
            "the NodePort on the node address, to a gone endpoint",
            vec![(SERVING_IP, READY)],
            udp(sock(NODE_IP, NODE_PORT), gone),
            true,
        ),
        (
            // Upstream matches the NodePort number on any address; this flow is a node
            // process talking to another host that happens to use the same port.
            "the NodePort number on an address that is not the node's",
            vec![(SERVING_IP, READY)],
            udp(sock("198.18.0.99", NODE_PORT), gone),
            false,
        ),
        (
            // Traffic policies only choose endpoints for new flows.
            "the NodePort (externalTrafficPolicy Local) to a serving remote endpoint",
            vec![(SERVING_IP, READY)],
            udp(sock(NODE_IP, NODE_PORT), serving),
            false,
        ),
    ];
    for (name, endpoints, f, stale) in cases {
        let state = dns_state(&endpoints);
        assert_eq!(
            !stale_flows(&state, &[f]).is_empty(),
            stale,
            "{name}: {f:?}"
        );
    }
}

#[test]
fn entries_of_ports_that_no_longer_exist_or_are_tcp_are_left_alone() {
    // No state at all: nothing is a frontend any more (upstream leaves such entries to
    // time out).
    let f = flow(
        IPPROTO_UDP,
        sock(CLUSTER_IP, 53),
        sock(DELETED_IP, ENDPOINT_PORT),
    );
    assert!(stale_flows(&DesiredState::default(), &[f]).is_empty());
    // A UDP entry to the frontend of a TCP port.
    let tcp_only = service(
        "web",
        json!({"spec": {"clusterIP": CLUSTER_IP,
                        "ports": [{"port": 53, "targetPort": ENDPOINT_PORT}]}}),
    );
    let eps = slice(
        "web-1",
        "web",
        json!({"ports": [{"port": ENDPOINT_PORT}], "endpoints": [ready(SERVING_IP, "node-b")]}),
    );
    let state = World::new()
        .svc(tcp_only)
        .slice(eps)
        .compute(&node_v4())
        .state;
    assert!(stale_flows(&state, &[f]).is_empty());
}

#[test]
fn ipv6_entries_follow_the_same_rule() {
    let svc = service(
        "dns6",
        json!({"spec": {
            "clusterIP": "2001:db8:1::a",
            "clusterIPs": ["2001:db8:1::a"],
            "ipFamilies": ["IPv6"],
            "ports": [{"port": 53, "targetPort": ENDPOINT_PORT, "protocol": "UDP"}]
        }}),
    );
    let eps = slice(
        "dns6-1",
        "dns6",
        json!({
            "addressType": "IPv6",
            "ports": [{"port": ENDPOINT_PORT, "protocol": "UDP"}],
            "endpoints": [ready("2001:db8:2::4", "node-b")]
        }),
    );
    let computed = World::new().svc(svc).slice(eps).compute(&node_v6());
    assert!(computed.warnings.is_empty(), "{:?}", computed.warnings);
    let client: SocketAddr = "[2001:db8:3::1]:40000".parse().expect("literal");
    let entry = |reply_src: &str| Flow {
        protocol: IPPROTO_UDP,
        original: FlowTuple {
            src: client,
            dst: "[2001:db8:1::a]:53".parse().expect("literal"),
        },
        reply: FlowTuple {
            src: reply_src.parse().expect("literal"),
            dst: client,
        },
    };
    let kept = entry("[2001:db8:2::4]:9000");
    let gone = entry("[2001:db8:2::5]:9000");
    assert_eq!(
        stale_flows(&computed.state, &[kept, gone]),
        vec![&gone],
        "only the entry to the gone endpoint"
    );
}
