//! Topology hints from the objects: EndpointSlice `hints`, the Node's zone label, and what a
//! change of either does to the desired state (and so to both dataplanes).

use k8s_openapi::api::core::v1::Node;
use serde_json::{json, Value};

use super::fixtures::*;
use crate::{StateDiff, TopologyMode, LABEL_TOPOLOGY_ZONE};

/// Node `name`, with the zone label when `zone` is given.
fn node(name: &str, zone: Option<&str>) -> Node {
    let mut meta = json!({ "name": name });
    if let Some(zone) = zone {
        meta["labels"] = json!({ LABEL_TOPOLOGY_ZONE: zone });
    }
    from_json(json!({ "metadata": meta }))
}

/// A ready endpoint on `node_name` with these hints (`null`: no `hints` field).
fn hinted(ip: &str, node_name: &str, hints: Value) -> Value {
    let mut e = ready(ip, node_name);
    if !hints.is_null() {
        e["hints"] = hints;
    }
    e
}

fn zones(names: &[&str]) -> Value {
    json!({ "forZones": names.iter().map(|n| json!({ "name": n })).collect::<Vec<_>>() })
}

/// Service `web` with one slice of these endpoints, and this node's Node object.
fn world(endpoints: Vec<Value>, zone: Option<&str>) -> World {
    let mut w = World::new().svc(service("web", json!({}))).slice(slice(
        "web-1",
        "web",
        json!({ "endpoints": endpoints }),
    ));
    w.objects.insert_node(node(NODE, zone));
    w
}

fn two_zones() -> Vec<Value> {
    vec![
        hinted("198.19.1.11", "node-a", zones(&["zone-a"])),
        hinted("198.19.1.12", "node-a", zones(&["zone-a"])),
        hinted("198.19.2.11", "node-b", zones(&["zone-b"])),
        hinted("198.19.2.12", "node-b", zones(&["zone-b"])),
    ]
}

#[test]
fn slice_hints_are_read() {
    // (case, hints, zone hints, node hints)
    let cases: Vec<(&str, Value, Vec<&str>, Vec<&str>)> = vec![
        ("no hints field", Value::Null, vec![], vec![]),
        ("empty hints", json!({}), vec![], vec![]),
        (
            "empty lists",
            json!({ "forZones": [], "forNodes": [] }),
            vec![],
            vec![],
        ),
        (
            "zones",
            zones(&["zone-b", "zone-a", "zone-b"]),
            vec!["zone-a", "zone-b"],
            vec![],
        ),
        (
            "nodes and zones",
            json!({ "forZones": [{ "name": "zone-a" }], "forNodes": [{ "name": "node-a" }] }),
            vec!["zone-a"],
            vec!["node-a"],
        ),
    ];
    for (case, hints, want_zones, want_nodes) in cases {
        let c =
            world(vec![hinted("198.19.1.11", "node-a", hints)], Some("zone-a")).compute(&node_v4());
        assert!(c.warnings.is_empty(), "{case}: {:?}", c.warnings);
        let ep = &only_port(&c).endpoints[0];
        assert_eq!(
            ep.zone_hints().iter().collect::<Vec<_>>(),
            want_zones,
            "{case}"
        );
        assert_eq!(
            ep.node_hints().iter().collect::<Vec<_>>(),
            want_nodes,
            "{case}"
        );
        assert_eq!(
            ep.hints.is_none(),
            want_zones.is_empty() && want_nodes.is_empty(),
            "{case}: no box without hints"
        );
    }
}

#[test]
fn the_zone_comes_from_this_nodes_node_object() {
    // (case, Node objects: (name, zone label), topology mode, cluster set)
    let cases: Vec<(&str, Vec<(&str, Option<&str>)>, TopologyMode, Vec<&str>)> = vec![
        (
            "labelled zone-a",
            vec![(NODE, Some("zone-a"))],
            TopologyMode::PreferSameZone("zone-a".into()),
            vec!["198.19.1.11:8080", "198.19.1.12:8080"],
        ),
        (
            "labelled zone-b",
            vec![(NODE, Some("zone-b"))],
            TopologyMode::PreferSameZone("zone-b".into()),
            vec!["198.19.2.11:8080", "198.19.2.12:8080"],
        ),
        (
            "a zone no endpoint is hinted for",
            vec![(NODE, Some("zone-c"))],
            TopologyMode::Any,
            vec![
                "198.19.1.11:8080",
                "198.19.1.12:8080",
                "198.19.2.11:8080",
                "198.19.2.12:8080",
            ],
        ),
        (
            "no zone label",
            vec![(NODE, None)],
            TopologyMode::Any,
            vec![
                "198.19.1.11:8080",
                "198.19.1.12:8080",
                "198.19.2.11:8080",
                "198.19.2.12:8080",
            ],
        ),
        (
            "empty zone label",
            vec![(NODE, Some(""))],
            TopologyMode::Any,
            vec![
                "198.19.1.11:8080",
                "198.19.1.12:8080",
                "198.19.2.11:8080",
                "198.19.2.12:8080",
            ],
        ),
        (
            "no Node object; another node's label is not ours",
            vec![("node-b", Some("zone-b"))],
            TopologyMode::Any,
            vec![
                "198.19.1.11:8080",
                "198.19.1.12:8080",
                "198.19.2.11:8080",
                "198.19.2.12:8080",
            ],
        ),
    ];
    for (case, nodes, want_mode, want_cluster) in cases {
        let mut w = world(two_zones(), None);
        w.objects.nodes.clear();
        for (name, zone) in nodes {
            w.objects.insert_node(node(name, zone));
        }
        let c = w.compute(&node_v4());
        let port = only_port(&c);
        assert_eq!(port.topology.ipv4, want_mode, "{case}");
        assert_eq!(addrs(port.cluster_endpoints()), want_cluster, "{case}");
    }
}

#[test]
fn prefer_same_node_from_slices() {
    // What the EndpointSlice controller writes for PreferSameNode: forNodes (the endpoint's
    // node) and forZones. Only this node's endpoint is used; if it has none, its zone's.
    let both = |node: &str, zone: &str| json!({ "forNodes": [{ "name": node }], "forZones": [{ "name": zone }] });
    let endpoints = |with_local: bool| {
        let mut eps = vec![
            hinted("198.19.1.12", "node-c", both("node-c", "zone-a")),
            hinted("198.19.2.11", "node-b", both("node-b", "zone-b")),
        ];
        if with_local {
            eps.push(hinted("198.19.1.11", NODE, both(NODE, "zone-a")));
        }
        eps
    };
    let c = world(endpoints(true), Some("zone-a")).compute(&node_v4());
    let port = only_port(&c);
    assert_eq!(
        port.topology.ipv4,
        TopologyMode::PreferSameNode(NODE.into())
    );
    assert_eq!(addrs(port.cluster_endpoints()), vec!["198.19.1.11:8080"]);

    let c = world(endpoints(false), Some("zone-a")).compute(&node_v4());
    let port = only_port(&c);
    assert_eq!(
        port.topology.ipv4,
        TopologyMode::PreferSameZone("zone-a".into())
    );
    assert_eq!(addrs(port.cluster_endpoints()), vec!["198.19.1.12:8080"]);
}

#[test]
fn a_zone_label_change_changes_exactly_the_hinted_ports() {
    let hinted_and_plain = |zone: &str| {
        let mut w = world(two_zones(), Some(zone));
        w.objects.insert_service(service(
            "plain",
            json!({ "spec": { "clusterIP": "198.18.128.11" } }),
        ));
        w.objects.insert_slice(slice(
            "plain-1",
            "plain",
            json!({ "endpoints": [ready("198.19.2.11", "node-b")] }),
        ));
        w.compute(&node_v4()).state
    };
    let before = hinted_and_plain("zone-a");
    let after = hinted_and_plain("zone-b");
    let diff = StateDiff::between(&before, &after);
    assert!(diff.added.is_empty() && diff.removed.is_empty(), "{diff:?}");
    let changed: Vec<&str> = diff.changed.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(changed, vec!["web"]);
    // The same label again is no change at all.
    assert!(StateDiff::between(&after, &hinted_and_plain("zone-b")).is_empty());
}

#[test]
fn one_endpoint_without_a_hint_ignores_them_all() {
    let mut eps = two_zones();
    eps.push(hinted("198.19.2.13", "node-b", Value::Null));
    let c = world(eps, Some("zone-a")).compute(&node_v4());
    let port = only_port(&c);
    assert_eq!(port.topology.ipv4, TopologyMode::Any);
    assert_eq!(port.cluster_endpoints().len(), 5);
}

#[test]
fn legacy_endpoints_have_no_hints() {
    let mut w = World::new().svc(service("web", json!({}))).legacy(legacy(
        "web",
        json!({ "subsets": [{
                "addresses": [{ "ip": "198.19.1.11", "nodeName": "node-a" }],
                "ports": [{ "port": 8080 }]
            }] }),
    ));
    w.objects.insert_node(node(NODE, Some("zone-a")));
    let c = w.compute(&node_v4());
    let port = only_port(&c);
    assert!(port.endpoints[0].hints.is_none());
    assert_eq!(port.topology.ipv4, TopologyMode::Any);
}
