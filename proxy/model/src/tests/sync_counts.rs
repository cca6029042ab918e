//! The counts behind upstream's metrics: ports without local endpoints, object changes.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{json, Value};

use super::fixtures::*;
use crate::{ClusterObjects, NoLocalEndpoints, ObjectChanges, ObjectKey};

#[test]
fn ports_without_local_endpoints_are_counted_per_policy() {
    // (case, service spec patch, slice endpoints, expected (internal, external))
    let cases: Vec<(&str, Value, Vec<Value>, (usize, usize))> = vec![
        (
            "internal Local, only remote endpoints",
            json!({"internalTrafficPolicy": "Local"}),
            vec![ready("198.19.2.11", "node-b")],
            (1, 0),
        ),
        (
            "external Local, only remote endpoints",
            json!({"type": "NodePort", "externalTrafficPolicy": "Local"}),
            vec![ready("198.19.2.11", "node-b")],
            (0, 1),
        ),
        (
            "both Local, only remote endpoints: counted under both",
            json!({"type": "NodePort", "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local"}),
            vec![ready("198.19.2.11", "node-b")],
            (1, 1),
        ),
        (
            "a local endpoint",
            json!({"type": "NodePort", "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local"}),
            vec![ready("198.19.2.11", "node-b"), ready("198.19.1.11", NODE)],
            (0, 0),
        ),
        (
            "no endpoint anywhere is a reject, not counted",
            json!({"type": "NodePort", "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local"}),
            vec![],
            (0, 0),
        ),
        (
            "Cluster policies never count",
            json!({"type": "NodePort"}),
            vec![ready("198.19.2.11", "node-b")],
            (0, 0),
        ),
    ];
    for (case, spec, endpoints, (internal, external)) in cases {
        let c = World::new()
            .svc(service("web", json!({ "spec": spec })))
            .slice(slice("web-1", "web", json!({ "endpoints": endpoints })))
            .compute(&node_v4());
        assert!(c.warnings.is_empty(), "{case}: {:?}", c.warnings);
        assert_eq!(
            NoLocalEndpoints::of_family(c.state.ports.values().map(|p| &**p), false),
            NoLocalEndpoints { internal, external },
            "{case}"
        );
        assert_eq!(
            NoLocalEndpoints::of_family(c.state.ports.values().map(|p| &**p), true),
            NoLocalEndpoints::default(),
            "{case}: no IPv6 port"
        );
    }
}

#[test]
fn a_dual_stack_port_counts_in_each_family_with_that_familys_endpoints() {
    // IPv4: a local endpoint; IPv6: only a remote one. Upstream's IPv4 proxier counts
    // nothing, its IPv6 proxier counts the port under both policies.
    let c = World::new()
        .svc(service(
            "web",
            json!({ "spec": {
                "type": "NodePort", "externalTrafficPolicy": "Local",
                "internalTrafficPolicy": "Local",
                "ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"],
                "clusterIPs": ["198.18.128.10", "2001:db8:5::10"],
            }}),
        ))
        .slice(slice(
            "web-4",
            "web",
            json!({ "endpoints": [ready("198.19.1.11", NODE)] }),
        ))
        .slice(slice(
            "web-6",
            "web",
            json!({ "addressType": "IPv6", "endpoints": [ready("2001:db8:2::11", "node-b")] }),
        ))
        .compute(&node_dual());
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let ports = || c.state.ports.values().map(|p| &**p);
    assert_eq!(
        NoLocalEndpoints::of_family(ports(), false),
        NoLocalEndpoints::default()
    );
    assert_eq!(
        NoLocalEndpoints::of_family(ports(), true),
        NoLocalEndpoints {
            internal: 1,
            external: 1
        }
    );
}

fn keys(names: &[&str]) -> BTreeSet<ObjectKey> {
    names
        .iter()
        .map(|n| ObjectKey::new("default", *n))
        .collect()
}

#[test]
fn object_changes_count_what_differs_between_snapshots() {
    let mut old = ClusterObjects::default();
    old.insert_service(service("same", json!({})));
    old.insert_service(service("edited", json!({})));
    old.insert_service(service("removed", json!({})));
    old.insert_service(service("reread", json!({})));
    old.insert_slice(slice("same-1", "same", json!({})));
    old.insert_slice(slice("edited-1", "edited", json!({})));
    old.insert_endpoints(legacy("legacy", json!({})));

    let mut new = ClusterObjects {
        services: old.services.clone(),
        endpoint_slices: old.endpoint_slices.clone(),
        ..ClusterObjects::default()
    };
    new.insert_service(service(
        "edited",
        json!({"spec": {"clusterIP": "198.18.128.11"}}),
    ));
    new.remove_service(&ObjectKey::new("default", "removed"));
    new.insert_service(service("added", json!({})));
    // Read again from its file: a new object with the same content is no change.
    new.insert_service(service("reread", json!({})));
    new.insert_slice(slice(
        "edited-1",
        "edited",
        json!({"endpoints": [ready("198.19.1.11", NODE)]}),
    ));
    new.insert_slice(slice("added-1", "added", json!({})));
    new.insert_slice(slice("added-2", "added", json!({})));
    // The legacy Endpoints went away.

    let changes = ObjectChanges::between(&old, &new);
    assert_eq!(changes.services, keys(&["added", "edited", "removed"]));
    assert_eq!(
        changes.endpoint_objects, 4,
        "edited-1, added-1, added-2, legacy"
    );
    assert_eq!(
        changes.endpoint_services,
        keys(&["added", "edited", "legacy"]),
        "pending is counted per service"
    );
    assert_eq!(ObjectChanges::between(&new, &new), ObjectChanges::default());
    let shared = Arc::new(new);
    assert_eq!(
        ObjectChanges::between(&shared, &shared.clone()),
        ObjectChanges::default()
    );
}
