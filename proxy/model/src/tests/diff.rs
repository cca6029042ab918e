//! StateDiff between two computed states.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::fixtures::*;
use crate::{DesiredState, ObjectKey, Protocol, StateDiff};

/// Slice ports for every port name the table uses.
fn slice_ports() -> Value {
    json!([
        {"port": 8080},
        {"name": "a", "port": 8080},
        {"name": "b", "port": 8081},
        {"name": "x", "port": 8082},
        {"name": "y", "port": 8083}
    ])
}

/// Computes the state of a list of (service name, service patch, slice endpoints).
fn state(services: &[(&str, Value, Value)]) -> DesiredState {
    let mut w = World::new();
    for (name, patch, eps) in services {
        // Derived from the name so a service keeps its IP whatever else is in the list.
        let cluster_ip = format!("198.18.128.{}", name.bytes().next().unwrap_or(b'z'));
        let mut p = json!({"spec": {"clusterIP": cluster_ip}});
        merge(&mut p, patch.clone());
        w = w.svc(service(name, p)).slice(slice(
            &format!("{name}-1"),
            name,
            json!({ "ports": slice_ports(), "endpoints": eps }),
        ));
    }
    let c = w.compute(&node_v4());
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    c.state
}

#[test]
fn diff_table() {
    let two_ports =
        json!({"spec": {"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]}});
    let one_ep = json!([ready("198.18.0.1", "n")]);
    let two_eps = json!([ready("198.18.0.1", "n"), ready("198.18.0.2", "n")]);
    let tcp = |svc: &str, port: &str| key(svc, port, Protocol::Tcp);
    // (case, old, new, added, removed, changed)
    type Row<'a> = (
        &'a str,
        Vec<(&'a str, Value, Value)>,
        Vec<(&'a str, Value, Value)>,
        Vec<crate::ServicePortKey>,
        Vec<crate::ServicePortKey>,
        Vec<crate::ServicePortKey>,
    );
    let cases: Vec<Row> = vec![
        ("nothing", vec![], vec![], vec![], vec![], vec![]),
        (
            "identical",
            vec![("web", json!({}), one_ep.clone())],
            vec![("web", json!({}), one_ep.clone())],
            vec![],
            vec![],
            vec![],
        ),
        (
            "service added",
            vec![("web", json!({}), one_ep.clone())],
            vec![
                ("api", json!({}), one_ep.clone()),
                ("web", json!({}), one_ep.clone()),
            ],
            vec![tcp("api", "")],
            vec![],
            vec![],
        ),
        (
            "service removed",
            vec![
                ("web", json!({}), one_ep.clone()),
                ("api", two_ports.clone(), one_ep.clone()),
            ],
            vec![("web", json!({}), one_ep.clone())],
            vec![],
            vec![tcp("api", "a"), tcp("api", "b")],
            vec![],
        ),
        (
            "endpoint added changes every port of the service",
            vec![("api", two_ports.clone(), one_ep.clone())],
            vec![("api", two_ports.clone(), two_eps.clone())],
            vec![],
            vec![],
            vec![tcp("api", "a"), tcp("api", "b")],
        ),
        (
            "one port renumbered",
            vec![("api", two_ports.clone(), one_ep.clone())],
            vec![(
                "api",
                json!({"spec": {"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 8081}]}}),
                one_ep.clone(),
            )],
            vec![],
            vec![],
            vec![tcp("api", "b")],
        ),
        (
            "port renamed is remove + add",
            vec![(
                "web",
                json!({"spec": {"ports": [{"name": "x", "port": 80}]}}),
                one_ep.clone(),
            )],
            vec![(
                "web",
                json!({"spec": {"ports": [{"name": "y", "port": 80}]}}),
                one_ep.clone(),
            )],
            vec![tcp("web", "y")],
            vec![tcp("web", "x")],
            vec![],
        ),
        (
            "condition flip is a change",
            vec![("web", json!({}), one_ep.clone())],
            vec![(
                "web",
                json!({}),
                json!([ep("198.18.0.1", "n", json!({"ready": false}))]),
            )],
            vec![],
            vec![],
            vec![tcp("web", "")],
        ),
    ];
    for (case, old, new, added, removed, changed) in cases {
        let d = StateDiff::between(&state(&old), &state(&new));
        assert_eq!(d.added, added, "{case}: added");
        assert_eq!(d.removed, removed, "{case}: removed");
        assert_eq!(d.changed, changed, "{case}: changed");
        assert_eq!(
            d.is_empty(),
            added.is_empty() && removed.is_empty() && changed.is_empty(),
            "{case}"
        );
        // The reverse diff swaps added and removed.
        let r = StateDiff::between(&state(&new), &state(&old));
        assert_eq!(
            (r.added, r.removed, r.changed),
            (d.removed, d.added, d.changed),
            "{case}: reverse"
        );
    }
}

#[test]
fn diff_services_and_order() {
    let old = state(&[("c", json!({}), json!([])), ("a", json!({}), json!([]))]);
    let new = state(&[
        ("b", json!({}), json!([])),
        ("a", json!({}), json!([ready("198.18.0.1", "n")])),
        (
            "d",
            json!({"spec": {"ports": [{"name": "x", "port": 1}, {"name": "y", "port": 2}]}}),
            json!([]),
        ),
    ]);
    let d = StateDiff::between(&old, &new);
    let names =
        |keys: &[crate::ServicePortKey]| keys.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(
        names(&d.added),
        vec!["default/b/TCP", "default/d:x/TCP", "default/d:y/TCP"]
    );
    assert_eq!(names(&d.removed), vec!["default/c/TCP"]);
    assert_eq!(names(&d.changed), vec!["default/a/TCP"]);
    let services: BTreeSet<ObjectKey> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| ObjectKey::new("default", *n))
        .collect();
    assert_eq!(d.services(), services);
    assert!(StateDiff::default().services().is_empty());
}
