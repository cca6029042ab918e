//! Health check node ports: which services get one, their local endpoint counts, where they
//! listen and which listeners a change touches.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::fixtures::*;
use crate::{
    health_check_services, HealthCheckBind, HealthCheckService, HealthChecks, ListenerPlan,
    ListenerSpec, ObjectKey,
};

/// A LoadBalancer service `default/<name>` with two ports (http 80, https 443), the given
/// external policy and health check port; `n` makes its cluster IP and node ports unique.
fn lb_n(name: &str, n: u16, policy: &str, hc: Option<u16>) -> k8s_openapi::api::core::v1::Service {
    let mut spec = json!({
        "type": "LoadBalancer",
        "clusterIP": format!("198.18.128.{}", 10 + n),
        "externalTrafficPolicy": policy,
        "ports": [
            {"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080 + n},
            {"name": "https", "port": 443, "targetPort": 8443, "nodePort": 30443 + n}
        ]
    });
    if let Some(hc) = hc {
        spec["healthCheckNodePort"] = json!(hc);
    }
    service(name, json!({ "spec": spec }))
}

fn lb(name: &str, policy: &str, hc: Option<u16>) -> k8s_openapi::api::core::v1::Service {
    lb_n(name, 0, policy, hc)
}

/// A slice of `service` serving both ports with `endpoints`.
fn both_ports(
    name: &str,
    service: &str,
    endpoints: Vec<Value>,
) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    slice(
        name,
        service,
        json!({
            "ports": [{"name": "http", "port": 8080}, {"name": "https", "port": 8443}],
            "endpoints": endpoints
        }),
    )
}

fn svc(name: &str) -> ObjectKey {
    ObjectKey::new("default", name)
}

#[test]
fn local_ready_endpoints_are_counted_once_per_address_over_all_ports() {
    // (case, endpoints of the slice, expected local count)
    let cases: Vec<(&str, Vec<Value>, usize)> = vec![
        ("none at all", vec![], 0),
        (
            "one local pod serving two ports counts once",
            vec![ready("198.19.1.11", NODE)],
            1,
        ),
        (
            "remote pods do not count",
            vec![ready("198.19.2.11", "node-b"), ready("198.19.1.11", NODE)],
            1,
        ),
        ("only remote pods", vec![ready("198.19.2.11", "node-b")], 0),
        (
            "a terminating local pod that still serves does not count (the LB drains the node)",
            vec![ep(
                "198.19.1.12",
                NODE,
                json!({"ready": false, "serving": true, "terminating": true}),
            )],
            0,
        ),
        (
            "a not-ready local pod does not count",
            vec![ep("198.19.1.13", NODE, json!({"ready": false}))],
            0,
        ),
        (
            "two local pods",
            vec![ready("198.19.1.11", NODE), ready("198.19.1.12", NODE)],
            2,
        ),
    ];
    for (case, endpoints, expected) in cases {
        let c = World::new()
            .svc(lb("web", "Local", Some(32000)))
            .slice(both_ports("web-1", "web", endpoints))
            .compute(&node_v4());
        assert!(c.warnings.is_empty(), "{case}: {:?}", c.warnings);
        let services = health_check_services(c.state.ports.values().map(|p| &**p));
        assert_eq!(
            services.get(&svc("web")),
            Some(&HealthCheckService {
                port: 32000,
                local_endpoints: expected
            }),
            "{case}"
        );
        assert_eq!(services.len(), 1, "{case}");
    }
}

#[test]
fn only_local_load_balancers_with_a_port_get_a_health_check() {
    let c = World::new()
        .svc(lb_n("local", 0, "Local", Some(32000)))
        .svc(lb_n("cluster", 1, "Cluster", Some(32001)))
        .svc(lb_n("unallocated", 2, "Local", None))
        .svc(service(
            "nodeport",
            json!({"spec": {"type": "NodePort", "clusterIP": "198.18.128.20",
                            "externalTrafficPolicy": "Local", "healthCheckNodePort": 32002}}),
        ))
        .compute(&node_v4());
    let services = health_check_services(c.state.ports.values().map(|p| &**p));
    let keys: Vec<&ObjectKey> = services.keys().collect();
    assert_eq!(keys, vec![&svc("local")]);
    assert_eq!(services[&svc("local")].local_endpoints, 0, "no slice yet");
}

#[test]
fn servers_bind_all_addresses_or_the_selected_node_port_addresses() {
    let local = ips(&["127.0.0.1", "198.18.0.11", "198.51.100.7"]);
    assert_eq!(
        HealthCheckBind::from_nodeport_addresses(&[], &local),
        HealthCheckBind::All
    );
    assert_eq!(HealthCheckBind::All.addresses(), vec![None]);
    let cidrs = vec![
        "198.18.0.0/24".parse().unwrap(),
        "127.0.0.0/8".parse().unwrap(),
    ];
    let bind = HealthCheckBind::from_nodeport_addresses(&cidrs, &local);
    assert_eq!(
        bind,
        HealthCheckBind::Addresses(ips(&["127.0.0.1", "198.18.0.11"]))
    );
    assert_eq!(
        bind.addresses(),
        vec![Some(ip("127.0.0.1")), Some(ip("198.18.0.11"))]
    );
    let none = HealthCheckBind::from_nodeport_addresses(&["192.0.2.0/24".parse().unwrap()], &local);
    assert!(
        none.addresses().is_empty(),
        "nothing matches: nothing served"
    );
}

fn spec(port: u16, addresses: &[&str]) -> ListenerSpec {
    ListenerSpec {
        port,
        addresses: addresses
            .iter()
            .map(|a| (!a.is_empty()).then(|| ip(a)))
            .collect(),
    }
}

#[test]
fn listener_plans_touch_only_what_changed() {
    let open: BTreeMap<ObjectKey, ListenerSpec> = [
        (svc("kept"), spec(32000, &[""])),
        (svc("moved"), spec(32001, &[""])),
        (svc("rebound"), spec(32002, &[""])),
        (svc("gone"), spec(32003, &[""])),
    ]
    .into_iter()
    .collect();
    let wanted: BTreeMap<ObjectKey, ListenerSpec> = [
        (svc("kept"), spec(32000, &[""])),
        (svc("moved"), spec(32011, &[""])),
        (svc("rebound"), spec(32002, &["198.18.0.11"])),
        // Took the gone service's port: the close comes first in the plan.
        (svc("new"), spec(32003, &[""])),
    ]
    .into_iter()
    .collect();
    let plan = ListenerPlan::between(&open, &wanted);
    assert_eq!(plan.close, vec![svc("gone"), svc("moved"), svc("rebound")]);
    let opened: Vec<(&ObjectKey, u16)> = plan.open.iter().map(|(k, s)| (k, s.port)).collect();
    assert_eq!(
        opened,
        vec![
            (&svc("moved"), 32011),
            (&svc("new"), 32003),
            (&svc("rebound"), 32002)
        ]
    );
    assert!(ListenerPlan::between(&wanted, &wanted).is_empty());
    // A service whose bind failed is not among the open ones: the next plan opens it again.
    let mut partly = wanted.clone();
    partly.remove(&svc("new"));
    let retry = ListenerPlan::between(&partly, &wanted);
    assert!(retry.close.is_empty());
    assert_eq!(retry.open, vec![(svc("new"), spec(32003, &[""]))]);
}

#[test]
fn health_checks_give_every_service_the_bind_addresses() {
    let checks = HealthChecks {
        services: [
            (
                svc("a"),
                HealthCheckService {
                    port: 32000,
                    local_endpoints: 1,
                },
            ),
            (
                svc("b"),
                HealthCheckService {
                    port: 32001,
                    local_endpoints: 0,
                },
            ),
        ]
        .into_iter()
        .collect(),
        bind: HealthCheckBind::Addresses(ips(&["198.18.0.11", "2001:db8::11"])),
    };
    let listeners = checks.listeners();
    assert_eq!(
        listeners[&svc("b")],
        spec(32001, &["198.18.0.11", "2001:db8::11"])
    );
    assert_eq!(
        listeners[&svc("a")].describe(),
        "198.18.0.11:32000, [2001:db8::11]:32000"
    );
    assert_eq!(
        spec(32000, &[""]).describe(),
        "0.0.0.0:32000 (all addresses)"
    );
}
