//! The cache against a fresh computation, over random sequences of object changes.

use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::ModelCache;
use crate::tests::fixtures::{self, node_dual, node_v4};
use crate::{compute_desired_state, ClusterObjects, NodeContext, ObjectKey, StateDiff};

const SERVICES: usize = 5;
const SLICES: usize = 6;

/// One change a source could make.
#[derive(Clone, Debug)]
enum Op {
    /// Service `i` (re)written with the given shape.
    Service(usize, ServiceShape),
    /// Service `i` deleted.
    DeleteService(usize),
    /// Slice `i` (re)written: owner (None = no label), endpoints (address index, ready, local).
    Slice(usize, Option<usize>, Vec<(u8, bool, bool)>),
    /// Slice `i` deleted.
    DeleteSlice(usize),
    /// Legacy Endpoints of service `i` written with addresses.
    Legacy(usize, Vec<u8>),
    /// The same object replaced by an equal copy (a resync of the source).
    Touch(usize),
    /// The node context switched.
    Node(bool),
    /// This node's Node object written with a zone label (or none).
    Zone(Option<u8>),
}

#[derive(Clone, Debug)]
struct ServiceShape {
    /// Index into a small pool, so cluster IPs collide.
    cluster_ip: u8,
    external_ip: Option<u8>,
    node_port: Option<u8>,
    udp: bool,
    created: Option<u8>,
}

fn shape() -> impl Strategy<Value = ServiceShape> {
    (
        0u8..4,
        proptest::option::of(0u8..4),
        proptest::option::of(0u8..2),
        any::<bool>(),
        proptest::option::of(0u8..3),
    )
        .prop_map(
            |(cluster_ip, external_ip, node_port, udp, created)| ServiceShape {
                cluster_ip,
                external_ip,
                node_port,
                udp,
                created,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..SERVICES, shape()).prop_map(|(i, s)| Op::Service(i, s)),
        1 => (0..SERVICES).prop_map(Op::DeleteService),
        3 => (
            0..SLICES,
            proptest::option::of(0..SERVICES),
            proptest::collection::vec((0u8..6, any::<bool>(), any::<bool>()), 0..4)
        )
            .prop_map(|(i, owner, eps)| Op::Slice(i, owner, eps)),
        1 => (0..SLICES).prop_map(Op::DeleteSlice),
        1 => (0..SERVICES, proptest::collection::vec(0u8..6, 0..3))
            .prop_map(|(i, addrs)| Op::Legacy(i, addrs)),
        1 => (0..SERVICES).prop_map(Op::Touch),
        1 => any::<bool>().prop_map(Op::Node),
        1 => proptest::option::of(0u8..2).prop_map(Op::Zone),
    ]
}

fn service_name(i: usize) -> String {
    format!("svc-{i}")
}

fn service_object(i: usize, s: &ServiceShape) -> k8s_openapi::api::core::v1::Service {
    let mut patch = json!({
        "spec": {
            "clusterIP": format!("198.18.128.{}", 10 + s.cluster_ip),
            "ports": [ { "port": 80, "protocol": if s.udp { "UDP" } else { "TCP" } } ]
        }
    });
    if let Some(e) = s.external_ip {
        // Pool shared with cluster IPs: an externalIP may hit another service's cluster IP.
        patch["spec"]["externalIPs"] = json!([format!("198.18.128.{}", 10 + e)]);
    }
    if let Some(n) = s.node_port {
        patch["spec"]["type"] = json!("NodePort");
        patch["spec"]["ports"][0]["nodePort"] = json!(30000 + u16::from(n));
    }
    if let Some(c) = s.created {
        patch["metadata"] = json!({ "creationTimestamp": format!("2026-01-0{}T00:00:00Z", 1 + c) });
    }
    fixtures::service(&service_name(i), patch)
}

fn apply(objects: &mut ClusterObjects, node: &mut NodeContext, op: &Op) {
    match op {
        Op::Service(i, s) => drop(objects.insert_service(service_object(*i, s))),
        Op::DeleteService(i) => {
            objects.remove_service(&ObjectKey::new("default", service_name(*i)));
        }
        Op::Slice(i, owner, eps) => {
            let endpoints: Vec<Value> = eps
                .iter()
                .map(|(a, ready, local)| {
                    let node = if *local { fixtures::NODE } else { "node-b" };
                    let mut ep = fixtures::ep(
                        &format!("198.19.0.{}", 10 + a),
                        node,
                        json!({ "ready": ready, "serving": ready }),
                    );
                    // Odd addresses carry a zone hint, so hints are used or ignored.
                    if a % 2 == 1 {
                        ep["hints"] =
                            json!({ "forZones": [ { "name": format!("zone-{}", a % 4 / 2) } ] });
                    }
                    ep
                })
                .collect();
            let owner_name = owner.map(service_name).unwrap_or_default();
            let mut slice = fixtures::slice(
                &format!("slice-{i}"),
                &owner_name,
                json!({ "endpoints": endpoints, "ports": [ { "port": 8080 }, { "port": 8080, "protocol": "UDP" } ] }),
            );
            if owner.is_none() {
                slice.metadata.labels = None;
            }
            objects.insert_slice(slice);
        }
        Op::DeleteSlice(i) => {
            objects.remove_slice(&ObjectKey::new("default", format!("slice-{i}")));
        }
        Op::Legacy(i, addrs) => {
            let addresses: Vec<Value> = addrs
                .iter()
                .map(|a| json!({ "ip": format!("198.19.1.{}", 10 + a) }))
                .collect();
            let patch =
                json!({ "subsets": [ { "addresses": addresses, "ports": [ { "port": 8080 } ] } ] });
            objects.insert_endpoints(fixtures::legacy(&service_name(*i), patch));
        }
        Op::Touch(i) => {
            let key = ObjectKey::new("default", service_name(*i));
            if let Some(svc) = objects.services.get(&key) {
                let copy = Arc::new((**svc).clone());
                objects.services.insert(key.clone(), copy);
            }
            if let Some(slice) = objects
                .endpoint_slices
                .get(&ObjectKey::new("default", format!("slice-{i}")))
            {
                let copy = Arc::new((**slice).clone());
                objects.insert_slice_arc(copy);
            }
        }
        Op::Node(dual) => *node = if *dual { node_dual() } else { node_v4() },
        Op::Zone(zone) => {
            let labels =
                zone.map(|z| json!({ "topology.kubernetes.io/zone": format!("zone-{z}") }));
            let node: k8s_openapi::api::core::v1::Node = fixtures::from_json(
                json!({ "metadata": { "name": fixtures::NODE, "labels": labels } }),
            );
            objects.insert_node(node);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// After every change the cache holds exactly what a fresh computation gives (state and
    /// warnings), what it reports as changed is exactly the difference to the last state, and
    /// the warnings never change without their generation changing.
    #[test]
    fn the_cache_equals_a_fresh_computation_after_every_change(ops in proptest::collection::vec(op(), 1..40)) {
        let mut objects = ClusterObjects::default();
        let mut node = node_v4();
        let mut cache = ModelCache::default();
        let mut last = cache.state().clone();
        let mut last_warnings = (cache.warnings_generation(), cache.warnings());
        for op in &ops {
            apply(&mut objects, &mut node, op);
            let before = cache.update(&objects, &node);
            let fresh = compute_desired_state(&objects, &node);
            prop_assert_eq!(cache.state(), &fresh.state, "state after {:?}", op);
            prop_assert_eq!(cache.warnings(), fresh.warnings.clone(), "warnings after {:?}", op);
            if cache.warnings_generation() == last_warnings.0 {
                prop_assert_eq!(&cache.warnings(), &last_warnings.1, "same generation after {:?}", op);
            }
            last_warnings = (cache.warnings_generation(), cache.warnings());
            prop_assert_eq!(
                StateDiff::from_before(&before, cache.state()),
                StateDiff::between(&last, cache.state()),
                "reported changes after {:?}", op
            );
            last = cache.state().clone();
        }
    }
}

#[test]
fn an_update_without_changes_reports_nothing_and_keeps_the_same_ports() {
    let mut objects = ClusterObjects::default();
    let shape = ServiceShape {
        cluster_ip: 0,
        external_ip: None,
        node_port: None,
        udp: false,
        created: None,
    };
    apply(&mut objects, &mut node_v4(), &Op::Service(0, shape));
    let mut cache = ModelCache::default();
    let first = cache.update(&objects, &node_v4());
    assert_eq!(first.len(), 1);
    let port = cache.state().ports.values().next().cloned();
    assert!(cache.update(&objects, &node_v4()).is_empty());
    let again = cache.state().ports.values().next().cloned();
    assert!(matches!((port, again), (Some(a), Some(b)) if Arc::ptr_eq(&a, &b)));
}
