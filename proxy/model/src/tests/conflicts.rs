//! Frontends claimed by more than one service port: one owner, chosen the same way in both
//! modes, and a warning naming both services.

use serde_json::json;

use super::fixtures::*;
use crate::{FrontendKind, Protocol};

fn external(cluster_ip: &str, external_ip: &str, created: Option<&str>) -> serde_json::Value {
    let mut meta = json!({});
    if let Some(t) = created {
        meta = json!({ "creationTimestamp": t });
    }
    json!({
        "metadata": meta,
        "spec": { "clusterIP": cluster_ip, "externalIPs": [external_ip] }
    })
}

fn has_external(c: &crate::Computed, name: &str, ip_text: &str) -> bool {
    let port = &c.state.ports[&key(name, "", Protocol::Tcp)];
    let in_frontends = port
        .frontends_of(FrontendKind::ExternalIp)
        .any(|f| f.ip == ip(ip_text));
    // Both renderings must agree: iptables reads the address list, eBPF the frontends.
    assert_eq!(
        in_frontends,
        port.external_ips.contains(&ip(ip_text)),
        "{port:#?}"
    );
    in_frontends
}

#[test]
fn the_older_service_owns_a_shared_external_ip_and_the_younger_is_warned() {
    // "b" sorts after "a" but is older: age decides before the name.
    let c = World::new()
        .svc(service(
            "a",
            external(
                "198.18.128.10",
                "198.18.200.1",
                Some("2024-05-02T00:00:00Z"),
            ),
        ))
        .svc(service(
            "b",
            external(
                "198.18.128.11",
                "198.18.200.1",
                Some("2024-05-01T00:00:00Z"),
            ),
        ))
        .compute(&node_v4());
    assert!(has_external(&c, "b", "198.18.200.1"));
    assert!(!has_external(&c, "a", "198.18.200.1"));
    assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
    let text = c.warnings[0].to_string();
    assert!(
        text.starts_with("Service default/a: spec.externalIPs: 198.18.200.1:80/TCP"),
        "{text}"
    );
    assert!(text.contains("Service default/b"), "{text}");
}

#[test]
fn without_timestamps_the_first_by_namespace_and_name_owns_it_whatever_the_input_order() {
    for order in [["a", "b"], ["b", "a"]] {
        let mut world = World::new();
        for (name, cip) in order.iter().zip(["198.18.128.10", "198.18.128.11"]) {
            world = world.svc(service(name, external(cip, "198.18.200.1", None)));
        }
        let c = world.compute(&node_v4());
        assert!(has_external(&c, "a", "198.18.200.1"), "{order:?}");
        assert!(!has_external(&c, "b", "198.18.200.1"), "{order:?}");
    }
}

#[test]
fn a_cluster_ip_beats_an_external_ip_on_the_same_destination() {
    // The older service's externalIP equals the younger one's cluster IP: the cluster IP
    // wins (an externalIP must not hijack a ClusterIP).
    let c = World::new()
        .svc(service(
            "old",
            external(
                "198.18.128.10",
                "198.18.128.11",
                Some("2020-01-01T00:00:00Z"),
            ),
        ))
        .svc(service(
            "young",
            json!({ "metadata": { "creationTimestamp": "2024-01-01T00:00:00Z" },
                    "spec": { "clusterIP": "198.18.128.11" } }),
        ))
        .compute(&node_v4());
    assert!(!has_external(&c, "old", "198.18.128.11"));
    assert!(c.state.ports.contains_key(&key("young", "", Protocol::Tcp)));
    assert_eq!(warning_fields(&c), vec!["spec.externalIPs"]);
}

#[test]
fn a_duplicate_cluster_ip_leaves_the_younger_port_unserved() {
    let c = World::new()
        .svc(service("a", json!({})))
        .svc(service("b", json!({})))
        .compute(&node_v4());
    assert_eq!(c.state.ports.len(), 1);
    assert!(c.state.ports.contains_key(&key("a", "", Protocol::Tcp)));
    assert_eq!(c.warnings.len(), 1);
    assert!(c.warnings[0].to_string().contains("the port is not served"));
}

#[test]
fn a_shared_node_port_number_stays_with_one_port_only() {
    let np = |cip: &str| {
        json!({ "spec": { "type": "NodePort", "clusterIP": cip,
                          "ports": [{ "port": 80, "nodePort": 30080 }] } })
    };
    let c = World::new()
        .svc(service("a", np("198.18.128.10")))
        .svc(service("b", np("198.18.128.11")))
        .compute(&node_v4());
    let a = &c.state.ports[&key("a", "", Protocol::Tcp)];
    let b = &c.state.ports[&key("b", "", Protocol::Tcp)];
    assert_eq!(a.node_port, Some(30080));
    assert_eq!(a.frontends_of(FrontendKind::NodePort).count(), 1);
    assert_eq!(b.node_port, None);
    assert_eq!(b.frontends_of(FrontendKind::NodePort).count(), 0);
    assert_eq!(warning_fields(&c), vec!["spec.ports[].nodePort"]);
}

#[test]
fn an_external_ip_on_a_node_address_shadows_a_node_port_there() {
    // The older service's NodePort 30080 on 198.18.1.10 collides with the younger one's
    // externalIP 198.18.1.10:30080; the externalIP wins as in the iptables chain order.
    let c = World::new()
        .svc(service(
            "np",
            json!({ "metadata": { "creationTimestamp": "2020-01-01T00:00:00Z" },
                    "spec": { "type": "NodePort", "ports": [{ "port": 80, "nodePort": 30080 }] } }),
        ))
        .svc(service(
            "ext",
            json!({ "spec": { "clusterIP": "198.18.128.11", "externalIPs": ["198.18.1.10"],
                              "ports": [{ "port": 30080 }] } }),
        ))
        .compute(&node_v4());
    let np = &c.state.ports[&key("np", "", Protocol::Tcp)];
    assert_eq!(
        np.node_port,
        Some(30080),
        "the nodePort stays for other addresses"
    );
    assert_eq!(np.frontends_of(FrontendKind::NodePort).count(), 0);
    let ext = &c.state.ports[&key("ext", "", Protocol::Tcp)];
    assert_eq!(ext.frontends_of(FrontendKind::ExternalIp).count(), 1);
    assert_eq!(c.warnings.len(), 1);
    assert!(c.warnings[0].to_string().contains("Service default/ext"));
}

#[test]
fn different_protocols_do_not_conflict() {
    let c = World::new()
        .svc(service(
            "a",
            external("198.18.128.10", "198.18.200.1", None),
        ))
        .svc(service(
            "b",
            json!({ "spec": { "clusterIP": "198.18.128.11", "externalIPs": ["198.18.200.1"],
                              "ports": [{ "port": 80, "protocol": "UDP" }] } }),
        ))
        .compute(&node_v4());
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    assert_eq!(c.state.ports.len(), 2);
}
