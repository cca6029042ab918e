//! Upstream's `TestCategorizeEndpoints` (`pkg/proxy/topology_test.go`), case by case and
//! under the same names, against [`ServicePort`]'s endpoint sets.
//!
//! Upstream's addresses 10.1.2.N and 10.0.0.N are written 198.18.2.N and 198.18.0.N here
//! (this project uses no 10/8 address). As upstream, an expected set of `None` means "the
//! port never uses this kind of endpoints", and `all` may be left out when only one kind is
//! used (it is then that set). Upstream's endpoints default to not ready, not serving, not
//! terminating, remote and unhinted; so do these.
//!
//! The PreferSameNode cases come from the change that added node hints (KEP-3015,
//! kubernetes#130844). Its case "PreferSameNode falls back to same-zone when feature gate
//! disabled" has no counterpart: `PreferSameTrafficDistribution` is GA and locked on in 1.35.
//! Cases after the upstream ones (named `switchyard: ...`) cover what upstream's table does
//! not: hints together with terminating endpoints, and two IP families.

use super::fixtures::*;
use crate::{Endpoint, Protocol, ServicePort, TopologyHints, TrafficPolicy};

/// An endpoint under construction.
#[derive(Clone)]
struct E(Endpoint);

fn ep(addr: &str) -> E {
    let sa: std::net::SocketAddr = addr.parse().expect("test literal");
    E(Endpoint {
        ip: sa.ip(),
        port: sa.port(),
        ready: false,
        serving: false,
        terminating: false,
        local: false,
        node_name: None,
        hints: None,
    })
}

impl E {
    fn ready(mut self) -> E {
        self.0.ready = true;
        self
    }
    fn serving(mut self) -> E {
        self.0.serving = true;
        self
    }
    fn terminating(mut self) -> E {
        self.0.terminating = true;
        self
    }
    fn local(mut self) -> E {
        self.0.local = true;
        self
    }
    fn hints(&mut self) -> &mut TopologyHints {
        self.0.hints.get_or_insert_with(Default::default)
    }
    fn zones(mut self, zones: &[&str]) -> E {
        self.hints().zones = zones.iter().map(|z| z.to_string()).collect();
        self
    }
    fn nodes(mut self, nodes: &[&str]) -> E {
        self.hints().nodes = nodes.iter().map(|n| n.to_string()).collect();
        self
    }
}

/// Upstream's `BaseServicePortInfo` fields that matter here.
#[derive(Clone, Copy, Default)]
struct Svc {
    internal_policy_local: bool,
    external_policy_local: bool,
    /// Upstream `nodePort: 8080` (any non-zero nodePort makes the port externally accessible).
    node_port: bool,
}

const CLUSTER: Svc = Svc {
    internal_policy_local: false,
    external_policy_local: false,
    node_port: false,
};

fn svc(internal_policy_local: bool, external_policy_local: bool, node_port: bool) -> Svc {
    Svc {
        internal_policy_local,
        external_policy_local,
        node_port,
    }
}

struct Case {
    name: &'static str,
    /// Upstream `nodeName` (empty unless a case sets it).
    node_name: &'static str,
    /// The node's `topology.kubernetes.io/zone` label (empty: none).
    zone: &'static str,
    svc: Svc,
    endpoints: Vec<E>,
    cluster: Option<Vec<&'static str>>,
    local: Option<Vec<&'static str>>,
    all: Option<Vec<&'static str>>,
    only_remote: bool,
}

impl Default for Case {
    fn default() -> Self {
        Case {
            name: "",
            node_name: "",
            zone: "",
            svc: CLUSTER,
            endpoints: Vec::new(),
            cluster: None,
            local: None,
            all: None,
            only_remote: false,
        }
    }
}

fn port_of(case: &Case) -> ServicePort {
    let policy = |local| {
        if local {
            TrafficPolicy::Local
        } else {
            TrafficPolicy::Cluster
        }
    };
    let mut port = ServicePort {
        key: key("web", "", Protocol::Tcp),
        port: 80,
        cluster_ips: ips(&["198.18.128.10"]),
        node_port: case.svc.node_port.then_some(30080),
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        session_affinity_timeout: None,
        external_traffic_policy: policy(case.svc.external_policy_local),
        internal_traffic_policy: policy(case.svc.internal_policy_local),
        health_check_node_port: None,
        endpoints: case.endpoints.iter().map(|e| e.0.clone()).collect(),
        topology: Default::default(),
        frontends: vec![],
    };
    port.topology = port.topology_for(case.node_name, case.zone);
    port
}

fn sorted(eps: Vec<&Endpoint>) -> Vec<String> {
    let mut out = addrs(eps);
    out.sort();
    out
}

fn want(set: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = set.iter().map(|s| s.to_string()).collect();
    out.sort();
    out
}

/// Runs one case as upstream's test loop does.
fn check(case: &Case) {
    let port = port_of(case);
    let name = case.name;
    match &case.cluster {
        None => assert!(
            !port.uses_cluster_endpoints(),
            "{name}: expected no cluster endpoints"
        ),
        Some(set) => {
            assert!(port.uses_cluster_endpoints(), "{name}: uses cluster");
            assert_eq!(
                sorted(port.cluster_endpoints()),
                want(set),
                "{name}: cluster"
            );
        }
    }
    match &case.local {
        None => assert!(
            !port.uses_local_endpoints(),
            "{name}: expected no local endpoints"
        ),
        Some(set) => {
            assert!(port.uses_local_endpoints(), "{name}: uses local");
            assert_eq!(sorted(port.local_endpoints()), want(set), "{name}: local");
        }
    }
    let all = match (&case.cluster, &case.local) {
        (Some(c), None) => c.clone(),
        (None, Some(l)) => l.clone(),
        _ => case.all.clone().unwrap_or_default(),
    };
    assert_eq!(
        sorted(port.reachable_endpoints()),
        want(&all),
        "{name}: allEndpoints"
    );
    assert_eq!(
        port.has_any_endpoints(),
        !all.is_empty() || case.only_remote,
        "{name}: hasAnyEndpoints"
    );
}

/// The zone-hinted endpoints most of upstream's topology cases use.
fn zoned_abca(local_first_two: bool) -> Vec<E> {
    let l = |e: E| if local_first_two { e.local() } else { e };
    vec![
        l(ep("198.18.2.3:80").zones(&["zone-a"]).ready()),
        l(ep("198.18.2.4:80").zones(&["zone-b"]).ready()),
        ep("198.18.2.5:80").zones(&["zone-c"]).ready(),
        ep("198.18.2.6:80").zones(&["zone-a"]).ready(),
    ]
}

/// The node- and zone-hinted endpoints of upstream's PreferSameNode cases.
fn node_hinted() -> Vec<E> {
    vec![
        ep("198.18.2.3:80")
            .zones(&["zone-a"])
            .nodes(&["node-1"])
            .ready(),
        ep("198.18.2.4:80")
            .zones(&["zone-b"])
            .nodes(&["node-2"])
            .ready(),
        ep("198.18.2.5:80")
            .zones(&["zone-c"])
            .nodes(&["node-3"])
            .ready(),
        ep("198.18.2.6:80")
            .zones(&["zone-a"])
            .nodes(&["node-4"])
            .ready(),
    ]
}

fn upstream_cases() -> Vec<Case> {
    vec![
        Case {
            name: "should use topology since all endpoints have hints, node has a zone label and and there are endpoints for the node's zone",
            zone: "zone-a",
            endpoints: zoned_abca(false),
            cluster: Some(vec!["198.18.2.3:80", "198.18.2.6:80"]),
            ..Case::default()
        },
        Case {
            name: "externalTrafficPolicy: Local, topology ignored for Local endpoints",
            zone: "zone-a",
            svc: svc(false, true, true),
            endpoints: zoned_abca(true),
            cluster: Some(vec!["198.18.2.3:80", "198.18.2.6:80"]),
            local: Some(vec!["198.18.2.3:80", "198.18.2.4:80"]),
            all: Some(vec!["198.18.2.3:80", "198.18.2.4:80", "198.18.2.6:80"]),
            ..Case::default()
        },
        Case {
            name: "internalTrafficPolicy: Local, topology ignored for Local endpoints",
            zone: "zone-a",
            svc: svc(true, false, true),
            endpoints: zoned_abca(true),
            cluster: Some(vec!["198.18.2.3:80", "198.18.2.6:80"]),
            local: Some(vec!["198.18.2.3:80", "198.18.2.4:80"]),
            all: Some(vec!["198.18.2.3:80", "198.18.2.4:80", "198.18.2.6:80"]),
            ..Case::default()
        },
        Case {
            name: "empty node labels",
            endpoints: vec![ep("198.18.2.3:80").zones(&["zone-a"]).ready()],
            cluster: Some(vec!["198.18.2.3:80"]),
            ..Case::default()
        },
        Case {
            name: "empty zone label",
            zone: "",
            endpoints: vec![ep("198.18.2.3:80").zones(&["zone-a"]).ready()],
            cluster: Some(vec!["198.18.2.3:80"]),
            ..Case::default()
        },
        Case {
            name: "node in different zone, no endpoint filtering",
            zone: "zone-b",
            endpoints: vec![ep("198.18.2.3:80").zones(&["zone-a"]).ready()],
            cluster: Some(vec!["198.18.2.3:80"]),
            ..Case::default()
        },
        Case {
            name: "unready endpoint",
            zone: "zone-a",
            endpoints: vec![
                ep("198.18.2.3:80").zones(&["zone-a"]).ready(),
                ep("198.18.2.4:80").zones(&["zone-b"]).ready(),
                ep("198.18.2.5:80").zones(&["zone-c"]).ready(),
                ep("198.18.2.6:80").zones(&["zone-a"]),
            ],
            cluster: Some(vec!["198.18.2.3:80"]),
            ..Case::default()
        },
        Case {
            name: "only unready endpoints in same zone (should not filter)",
            zone: "zone-a",
            endpoints: vec![
                ep("198.18.2.3:80").zones(&["zone-a"]),
                ep("198.18.2.4:80").zones(&["zone-b"]).ready(),
                ep("198.18.2.5:80").zones(&["zone-c"]).ready(),
                ep("198.18.2.6:80").zones(&["zone-a"]),
            ],
            cluster: Some(vec!["198.18.2.4:80", "198.18.2.5:80"]),
            ..Case::default()
        },
        Case {
            name: "missing hints, no filtering applied",
            zone: "zone-a",
            endpoints: vec![
                ep("198.18.2.3:80").zones(&["zone-a"]).ready(),
                ep("198.18.2.4:80").zones(&["zone-b"]).ready(),
                ep("198.18.2.5:80").ready(),
                ep("198.18.2.6:80").zones(&["zone-a"]).ready(),
            ],
            cluster: Some(vec!["198.18.2.3:80", "198.18.2.4:80", "198.18.2.5:80", "198.18.2.6:80"]),
            ..Case::default()
        },
        Case {
            name: "multiple hints per endpoint, filtering includes any endpoint with zone included",
            zone: "zone-c",
            endpoints: vec![
                ep("198.18.2.3:80").zones(&["zone-a", "zone-b", "zone-c"]).ready(),
                ep("198.18.2.4:80").zones(&["zone-b", "zone-c"]).ready(),
                ep("198.18.2.5:80").zones(&["zone-b", "zone-d"]).ready(),
                ep("198.18.2.6:80").zones(&["zone-c"]).ready(),
            ],
            cluster: Some(vec!["198.18.2.3:80", "198.18.2.4:80", "198.18.2.6:80"]),
            ..Case::default()
        },
        Case {
            name: "PreferSameNode available",
            node_name: "node-1",
            zone: "zone-a",
            endpoints: node_hinted(),
            cluster: Some(vec!["198.18.2.3:80"]),
            ..Case::default()
        },
        Case {
            name: "PreferSameNode ignored if some endpoints unhinted",
            node_name: "node-1",
            zone: "zone-a",
            endpoints: {
                let mut eps = node_hinted();
                eps[1] = ep("198.18.2.4:80").ready();
                eps
            },
            cluster: Some(vec!["198.18.2.3:80", "198.18.2.4:80", "198.18.2.5:80", "198.18.2.6:80"]),
            ..Case::default()
        },
        Case {
            name: "PreferSameNode falls back to PreferSameZone if no endpoint for node",
            node_name: "node-0",
            zone: "zone-a",
            endpoints: node_hinted(),
            cluster: Some(vec!["198.18.2.3:80", "198.18.2.6:80"]),
            ..Case::default()
        },
        Case {
            name: "conflicting topology and localness require merging allEndpoints",
            zone: "zone-a",
            svc: svc(false, true, true),
            endpoints: vec![
                ep("198.18.0.0:80").zones(&["zone-a"]).ready().local(),
                ep("198.18.0.1:80").zones(&["zone-b"]).ready().local(),
                ep("198.18.0.2:80").zones(&["zone-a"]).ready(),
                ep("198.18.0.3:80").zones(&["zone-b"]).ready(),
            ],
            cluster: Some(vec!["198.18.0.0:80", "198.18.0.2:80"]),
            local: Some(vec!["198.18.0.0:80", "198.18.0.1:80"]),
            all: Some(vec!["198.18.0.0:80", "198.18.0.1:80", "198.18.0.2:80"]),
            ..Case::default()
        },
        Case {
            name: "internalTrafficPolicy: Local, with empty endpoints",
            svc: svc(true, false, false),
            cluster: None,
            local: Some(vec![]),
            ..Case::default()
        },
        Case {
            name: "internalTrafficPolicy: Local, but all endpoints are remote",
            svc: svc(true, false, false),
            endpoints: vec![ep("198.18.0.0:80").ready(), ep("198.18.0.1:80").ready()],
            cluster: None,
            local: Some(vec![]),
            only_remote: true,
            ..Case::default()
        },
        Case {
            name: "internalTrafficPolicy: Local, all endpoints are local",
            svc: svc(true, false, false),
            endpoints: vec![
                ep("198.18.0.0:80").ready().local(),
                ep("198.18.0.1:80").ready().local(),
            ],
            cluster: None,
            local: Some(vec!["198.18.0.0:80", "198.18.0.1:80"]),
            ..Case::default()
        },
        Case {
            name: "internalTrafficPolicy: Local, some endpoints are local",
            svc: svc(true, false, false),
            endpoints: vec![ep("198.18.0.0:80").ready().local(), ep("198.18.0.1:80").ready()],
            cluster: None,
            local: Some(vec!["198.18.0.0:80"]),
            ..Case::default()
        },
        Case {
            name: "Cluster traffic policy, endpoints not Ready",
            endpoints: vec![ep("198.18.0.0:80"), ep("198.18.0.1:80")],
            cluster: Some(vec![]),
            ..Case::default()
        },
        Case {
            name: "Cluster traffic policy, some endpoints are Ready",
            endpoints: vec![ep("198.18.0.0:80"), ep("198.18.0.1:80").ready()],
            cluster: Some(vec!["198.18.0.1:80"]),
            ..Case::default()
        },
        Case {
            name: "Cluster traffic policy, all endpoints are terminating",
            endpoints: vec![
                ep("198.18.0.0:80").serving().terminating().local(),
                ep("198.18.0.1:80").serving().terminating(),
            ],
            cluster: Some(vec!["198.18.0.0:80", "198.18.0.1:80"]),
            ..Case::default()
        },
        Case {
            name: "iTP: Local, eTP: Cluster, some endpoints local",
            svc: svc(true, false, true),
            endpoints: vec![ep("198.18.0.0:80").ready().local(), ep("198.18.0.1:80").ready()],
            cluster: Some(vec!["198.18.0.0:80", "198.18.0.1:80"]),
            local: Some(vec!["198.18.0.0:80"]),
            all: Some(vec!["198.18.0.0:80", "198.18.0.1:80"]),
            ..Case::default()
        },
        Case {
            name: "iTP: Cluster, eTP: Local, some endpoints local",
            svc: svc(false, true, true),
            endpoints: vec![ep("198.18.0.0:80").ready().local(), ep("198.18.0.1:80").ready()],
            cluster: Some(vec!["198.18.0.0:80", "198.18.0.1:80"]),
            local: Some(vec!["198.18.0.0:80"]),
            all: Some(vec!["198.18.0.0:80", "198.18.0.1:80"]),
            ..Case::default()
        },
        Case {
            name: "iTP: Local, eTP: Local, some endpoints local",
            svc: svc(true, true, true),
            endpoints: vec![ep("198.18.0.0:80").ready().local(), ep("198.18.0.1:80").ready()],
            cluster: Some(vec!["198.18.0.0:80", "198.18.0.1:80"]),
            local: Some(vec!["198.18.0.0:80"]),
            all: Some(vec!["198.18.0.0:80", "198.18.0.1:80"]),
            ..Case::default()
        },
        Case {
            name: "iTP: Local, eTP: Local, all endpoints remote",
            svc: svc(true, true, true),
            endpoints: vec![ep("198.18.0.0:80").ready(), ep("198.18.0.1:80").ready()],
            cluster: Some(vec!["198.18.0.0:80", "198.18.0.1:80"]),
            local: Some(vec![]),
            all: Some(vec!["198.18.0.0:80", "198.18.0.1:80"]),
            ..Case::default()
        },
        Case {
            name: "iTP: Local, eTP: Local, all endpoints remote and terminating",
            svc: svc(true, true, true),
            endpoints: vec![
                ep("198.18.0.0:80").serving().terminating(),
                ep("198.18.0.1:80").serving().terminating(),
            ],
            cluster: Some(vec!["198.18.0.0:80", "198.18.0.1:80"]),
            local: Some(vec![]),
            all: Some(vec!["198.18.0.0:80", "198.18.0.1:80"]),
            only_remote: true,
            ..Case::default()
        },
        Case {
            name: "iTP: Cluster, eTP: Local, with terminating endpoints",
            svc: svc(false, true, true),
            endpoints: vec![
                ep("198.18.0.0:80").ready(),
                ep("198.18.0.1:80").local(),
                ep("198.18.0.2:80").serving().terminating().local(),
                ep("198.18.0.3:80").serving().terminating(),
            ],
            cluster: Some(vec!["198.18.0.0:80"]),
            local: Some(vec!["198.18.0.2:80"]),
            all: Some(vec!["198.18.0.0:80", "198.18.0.2:80"]),
            ..Case::default()
        },
        Case {
            name: "externalTrafficPolicy ignored if not externally accessible",
            svc: svc(false, true, false),
            endpoints: vec![ep("198.18.0.0:80").ready(), ep("198.18.0.1:80").ready().local()],
            cluster: Some(vec!["198.18.0.0:80", "198.18.0.1:80"]),
            local: None,
            all: Some(vec!["198.18.0.0:80", "198.18.0.1:80"]),
            ..Case::default()
        },
        Case {
            name: "no cluster endpoints for iTP:Local internal-only service",
            svc: svc(true, false, false),
            endpoints: vec![ep("198.18.0.0:80").ready(), ep("198.18.0.1:80").ready().local()],
            cluster: None,
            local: Some(vec!["198.18.0.1:80"]),
            all: Some(vec!["198.18.0.1:80"]),
            ..Case::default()
        },
    ]
}

/// Hints with terminating endpoints and with two families: upstream's rules, in cases its
/// table does not spell out.
fn switchyard_cases() -> Vec<Case> {
    vec![
        Case {
            name: "switchyard: no ready endpoint, terminating fallback ignores the hints",
            zone: "zone-a",
            endpoints: vec![
                ep("198.18.2.3:80").zones(&["zone-b"]).serving().terminating(),
                ep("198.18.2.4:80").zones(&["zone-c"]).serving().terminating(),
                ep("198.18.2.5:80").zones(&["zone-a"]),
            ],
            cluster: Some(vec!["198.18.2.3:80", "198.18.2.4:80"]),
            ..Case::default()
        },
        Case {
            name: "switchyard: a terminating endpoint without hints does not disable topology",
            zone: "zone-a",
            endpoints: vec![
                ep("198.18.2.3:80").zones(&["zone-a"]).ready(),
                ep("198.18.2.4:80").zones(&["zone-b"]).ready(),
                ep("198.18.2.5:80").serving().terminating(),
            ],
            cluster: Some(vec!["198.18.2.3:80"]),
            ..Case::default()
        },
        Case {
            name: "switchyard: the zone's only endpoint terminating is not ready, so hints are ignored",
            zone: "zone-a",
            endpoints: vec![
                ep("198.18.2.3:80").zones(&["zone-a"]).serving().terminating(),
                ep("198.18.2.4:80").zones(&["zone-b"]).ready(),
                ep("198.18.2.5:80").zones(&["zone-b"]).ready(),
            ],
            cluster: Some(vec!["198.18.2.4:80", "198.18.2.5:80"]),
            ..Case::default()
        },
        Case {
            name: "switchyard: eTP Local with a terminating local endpoint and zone hints",
            zone: "zone-a",
            svc: svc(false, true, true),
            endpoints: vec![
                ep("198.18.0.0:80").zones(&["zone-b"]).serving().terminating().local(),
                ep("198.18.0.1:80").zones(&["zone-a"]).ready(),
                ep("198.18.0.2:80").zones(&["zone-b"]).ready(),
            ],
            cluster: Some(vec!["198.18.0.1:80"]),
            local: Some(vec!["198.18.0.0:80"]),
            all: Some(vec!["198.18.0.0:80", "198.18.0.1:80"]),
            ..Case::default()
        },
        Case {
            name: "switchyard: iTP Local ignores node hints, eTP Cluster external traffic uses them",
            node_name: "node-1",
            zone: "zone-a",
            svc: svc(true, false, true),
            endpoints: vec![
                ep("198.18.0.0:80").zones(&["zone-a"]).nodes(&["node-1"]).ready(),
                ep("198.18.0.1:80").zones(&["zone-a"]).nodes(&["node-2"]).ready().local(),
            ],
            cluster: Some(vec!["198.18.0.0:80"]),
            local: Some(vec!["198.18.0.1:80"]),
            all: Some(vec!["198.18.0.0:80", "198.18.0.1:80"]),
            ..Case::default()
        },
        Case {
            name: "switchyard: each family picks its own mode and its own fallback",
            zone: "zone-a",
            endpoints: vec![
                // IPv4: every ready endpoint hinted, one for zone-a: narrowed.
                ep("198.18.2.3:80").zones(&["zone-a"]).ready(),
                ep("198.18.2.4:80").zones(&["zone-b"]).ready(),
                // IPv6: one ready endpoint without hints: not narrowed.
                ep("[2001:db8::3]:80").zones(&["zone-a"]).ready(),
                ep("[2001:db8::4]:80").ready(),
            ],
            cluster: Some(vec!["198.18.2.3:80", "[2001:db8::3]:80", "[2001:db8::4]:80"]),
            ..Case::default()
        },
        Case {
            name: "switchyard: a family without ready endpoints falls back while the other is ready",
            endpoints: vec![
                ep("198.18.2.3:80").ready(),
                ep("198.18.2.4:80").serving().terminating(),
                ep("[2001:db8::3]:80").serving().terminating(),
            ],
            cluster: Some(vec!["198.18.2.3:80", "[2001:db8::3]:80"]),
            ..Case::default()
        },
    ]
}

#[test]
fn categorize_endpoints() {
    for case in upstream_cases().iter().chain(&switchyard_cases()) {
        check(case);
    }
}

/// The topology mode is what a port carries, so a state diff sees exactly the changes
/// that move traffic: one upstream case per mode.
#[test]
fn topology_mode_per_case() {
    use crate::TopologyMode::{Any, PreferSameNode, PreferSameZone};
    let cases: Vec<(&str, &str, &str, Vec<E>, crate::TopologyMode)> = vec![
        (
            "zone hints",
            "",
            "zone-a",
            zoned_abca(false),
            PreferSameZone("zone-a".into()),
        ),
        (
            "node hints",
            "node-1",
            "zone-a",
            node_hinted(),
            PreferSameNode("node-1".into()),
        ),
        (
            "no hint for the node",
            "node-0",
            "zone-a",
            node_hinted(),
            PreferSameZone("zone-a".into()),
        ),
        ("no hint for either", "node-0", "zone-x", node_hinted(), Any),
        (
            "no hints",
            "node-1",
            "zone-a",
            vec![ep("198.18.2.3:80").ready()],
            Any,
        ),
        ("no zone label", "", "", zoned_abca(false), Any),
    ];
    for (name, node_name, zone, endpoints, want) in cases {
        let case = Case {
            name,
            node_name,
            zone,
            endpoints,
            ..Case::default()
        };
        let port = port_of(&case);
        assert_eq!(port.topology.ipv4, want, "{name}");
        assert_eq!(port.topology.ipv6, Any, "{name}: no IPv6 endpoints");
    }
}
