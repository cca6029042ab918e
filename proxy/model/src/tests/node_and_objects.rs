//! NodePort address selection, object keys and the object store.

use serde_json::json;

use super::fixtures::*;
use crate::{
    kinds, select_nodeport_addresses, ClusterObjects, InputWarning, NodeContext, ObjectKey,
};

#[test]
fn nodeport_address_selection() {
    let local = ips(&[
        "198.18.1.10",
        "198.18.0.5",
        "127.0.0.1",
        "2001:db8::10",
        "fe80::1",
        "198.18.0.5",
    ]);
    // (case, CIDRs, expected)
    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            "no CIDRs: every address, sorted, deduplicated",
            vec![],
            vec![
                "127.0.0.1",
                "198.18.0.5",
                "198.18.1.10",
                "2001:db8::10",
                "fe80::1",
            ],
        ),
        ("one IPv4 CIDR", vec!["198.18.1.0/24"], vec!["198.18.1.10"]),
        ("IPv6 CIDR", vec!["2001:db8::/32"], vec!["2001:db8::10"]),
        (
            "several CIDRs",
            vec!["198.18.0.0/24", "127.0.0.0/8", "2001:db8::/32"],
            vec!["127.0.0.1", "198.18.0.5", "2001:db8::10"],
        ),
        ("single address", vec!["198.18.0.5/32"], vec!["198.18.0.5"]),
        ("nothing matches", vec!["203.0.113.0/24"], vec![]),
    ];
    for (case, cidrs, want) in cases {
        let cidrs: Vec<ipnet::IpNet> = cidrs.iter().map(|c| c.parse().expect("literal")).collect();
        assert_eq!(
            select_nodeport_addresses(&local, &cidrs),
            ips(&want),
            "{case}"
        );
    }
    assert!(select_nodeport_addresses(&[], &[]).is_empty());
}

#[test]
fn node_context_defaults() {
    let n = NodeContext::new("n1");
    assert_eq!(n.name, "n1");
    assert!(n.ipv4 && !n.ipv6);
    assert_eq!(n.nodeport_range, 30000..=32767);
    assert!(n.serves(&ip("198.18.0.1")));
    assert!(!n.serves(&ip("2001:db8::1")));
}

#[test]
fn object_keys_from_metadata() {
    // (case, metadata, expected key)
    let cases = vec![
        (
            "namespaced",
            json!({"name": "web", "namespace": "shop"}),
            ("shop", "web"),
        ),
        (
            "no namespace means default",
            json!({"name": "web"}),
            ("default", "web"),
        ),
        (
            "empty namespace means default",
            json!({"name": "web", "namespace": ""}),
            ("default", "web"),
        ),
        ("no name", json!({"namespace": "shop"}), ("shop", "")),
    ];
    for (case, meta, (ns, name)) in cases {
        let svc = from_json(json!({ "metadata": meta }));
        let mut objects = ClusterObjects::default();
        let key = objects.insert_service(svc);
        assert_eq!(key, ObjectKey::new(ns, name), "{case}");
        assert_eq!(key.to_string(), format!("{ns}/{name}"), "{case}");
        assert!(objects.services.contains_key(&key), "{case}");
    }
}

#[test]
fn insert_replace_remove() {
    let mut objects = ClusterObjects::default();
    let k = objects.insert_service(service("web", json!({})));
    objects.insert_service(service(
        "web",
        json!({"spec": {"clusterIP": "198.18.128.99"}}),
    ));
    assert_eq!(objects.services.len(), 1, "insert replaces");
    let sk = objects.insert_slice(slice("web-1", "web", json!({})));
    let ek = objects.insert_endpoints(legacy("web", json!({})));
    let node = objects.insert_node(from_json(json!({"metadata": {"name": "node-a"}})));
    assert_eq!(sk, ObjectKey::new("default", "web-1"));
    assert_eq!(ek, k);
    assert!(objects.remove_service(&k).is_some());
    assert!(objects.remove_service(&k).is_none());
    assert!(objects.remove_slice(&sk).is_some());
    assert!(objects.remove_endpoints(&ek).is_some());
    assert!(objects.remove_node(&node).is_some());
    assert!(objects.services.is_empty() && objects.endpoint_slices.is_empty());
    assert!(objects.endpoints.is_empty() && objects.nodes.is_empty());
}

#[test]
fn warning_display() {
    let w = InputWarning::new(
        kinds::SERVICE,
        &ObjectKey::new("default", "web"),
        "spec.ports[1].port",
        "0 is not a valid port number (1-65535)",
    );
    assert_eq!(
        w.to_string(),
        "Service default/web: spec.ports[1].port: 0 is not a valid port number (1-65535)"
    );
    let as_error: &dyn std::error::Error = &w;
    assert!(as_error.source().is_none());
}
