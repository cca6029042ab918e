//! Planner tests: orderings and failure handling on the fake maps, the adoption of a previous
//! instance's state, and a property test over random sync sequences.
use std::net::Ipv4Addr;

use switchyard_common::{Backend, BackendKey, ServiceKey, PROTO_TCP};

use super::fake::{FakeError, FakeMaps};
use super::{MapOp, Planner, SyncOutcome};
use crate::{
    Endpoint, Frontend, FrontendKind, Protocol, ServicePort, ServicePortKey, TrafficPolicy,
};

mod adoption;
mod ipv6;
mod order;
mod random_syncs;
mod udp_routes;

pub(super) fn key(name: &str) -> ServicePortKey {
    ServicePortKey {
        namespace: "demo".into(),
        name: name.into(),
        port_name: String::new(),
        protocol: Protocol::Tcp,
    }
}

pub(super) fn endpoint(ip: &str, local: bool) -> Endpoint {
    Endpoint {
        ip: ip.parse().expect("test literal"),
        port: 8080,
        ready: true,
        serving: true,
        terminating: false,
        local,
        node_name: None,
        hints: None,
    }
}

pub(super) fn port(
    name: &str,
    frontends: &[(FrontendKind, &str)],
    endpoints: Vec<Endpoint>,
) -> ServicePort {
    ServicePort {
        key: key(name),
        port: 80,
        cluster_ips: vec![],
        node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        session_affinity_timeout: None,
        external_traffic_policy: TrafficPolicy::Cluster,
        internal_traffic_policy: TrafficPolicy::Cluster,
        health_check_node_port: None,
        endpoints,
        topology: Default::default(),
        frontends: frontends
            .iter()
            .map(|(kind, ip)| Frontend {
                kind: *kind,
                ip: ip.parse().expect("test literal"),
                port: 80,
            })
            .collect(),
    }
}

/// A ClusterIP port `name` on `ip` with ready endpoints at `eps`.
pub(super) fn cluster(name: &str, ip: &str, eps: &[&str]) -> ServicePort {
    port(
        name,
        &[(FrontendKind::ClusterIp, ip)],
        eps.iter().map(|e| endpoint(e, true)).collect(),
    )
}

/// The socket-scope service key of `ip`:80/TCP.
pub(super) fn service_key(ip: &str) -> ServiceKey {
    let ip: Ipv4Addr = ip.parse().expect("test literal");
    ServiceKey {
        addr: u32::from(ip).to_be(),
        port: 80u16.to_be(),
        proto: PROTO_TCP,
        scope: switchyard_common::SCOPE_SOCKET,
    }
}

pub(super) fn backend(ip: &str) -> Backend {
    super::entries::backend_of::<super::V4>(&endpoint(ip, true)).expect("IPv4 literal")
}

/// One sync of `changes` (port or removal by key) on `maps`.
pub(super) fn sync(
    planner: &mut Planner,
    maps: &mut FakeMaps,
    changes: &[(ServicePortKey, Option<&ServicePort>)],
) -> SyncOutcome<FakeError> {
    let errors = planner.begin_sync(maps);
    assert!(errors.is_empty(), "{errors:?}");
    let plan = planner.plan_sync(changes);
    planner.run(plan, maps)
}

/// Adds or changes `ports`.
pub(super) fn put(
    planner: &mut Planner,
    maps: &mut FakeMaps,
    ports: &[&ServicePort],
) -> SyncOutcome<FakeError> {
    let changes: Vec<_> = ports.iter().map(|p| (p.key.clone(), Some(*p))).collect();
    sync(planner, maps, &changes)
}

/// The backends the entry at `key` covers, in slot order; panics on a missing slot.
pub(super) fn served(maps: &FakeMaps, key: &ServiceKey) -> Vec<Backend> {
    let Some(value) = maps.services.get(key) else {
        return Vec::new();
    };
    (0..u32::from(value.count))
        .map(|slot| {
            let k = BackendKey {
                service_id: value.id,
                slot,
            };
            *maps
                .backends
                .get(&k)
                .unwrap_or_else(|| panic!("{key:?} counts missing slot {k:?}"))
        })
        .collect()
}

/// Asserts the planner knows exactly what the fake holds.
pub(super) fn assert_no_drift(planner: &Planner, maps: &FakeMaps) {
    let drift = planner.check_drift(
        maps.services.iter().map(|(k, v)| (*k, *v)),
        maps.backends.iter().map(|(k, v)| (*k, *v)),
    );
    assert!(drift.is_none(), "{drift}");
    assert_eq!(planner.maps.services, maps.services, "service entries");
    assert_eq!(planner.maps.backends, maps.backends, "backend slots");
    assert_eq!(planner.maps.ranges, maps.ranges, "source ranges");
}

pub(super) fn is_put_backend(op: &MapOp) -> bool {
    matches!(op, MapOp::PutBackend(..))
}

pub(super) fn is_put_service(op: &MapOp) -> bool {
    matches!(op, MapOp::PutService(..))
}

/// Runs every operation on the fake, then `check` on the result: lets a test assert an
/// invariant between any two operations, as a concurrent program would see the maps.
pub(super) struct Checked<'a, F: FnMut(&FakeMaps)> {
    pub(super) maps: &'a mut FakeMaps,
    pub(super) check: F,
}

impl<F: FnMut(&FakeMaps)> super::MapWriter for Checked<'_, F> {
    type Error = FakeError;

    fn run(&mut self, op: &MapOp) -> Result<(), FakeError> {
        let result = self.maps.run(op);
        (self.check)(self.maps);
        result
    }
}

/// Every service entry counts only slots that exist.
pub(super) fn assert_counted_slots_exist(maps: &FakeMaps) {
    for key in maps.services.keys() {
        served(maps, key);
    }
}

/// The planner takes what `maps` holds as the truth (start-up, or before a full sync).
pub(super) fn observe(planner: &mut Planner, maps: &FakeMaps) {
    planner.observe(
        maps.services.clone(),
        maps.backends.clone(),
        maps.ranges.clone(),
    );
}

#[test]
fn a_rotating_sample_covers_every_backend_slot_and_services_are_checked_alone() {
    let mut planner = Planner::default();
    let mut maps = FakeMaps::default();
    let ports: Vec<ServicePort> = (0..5)
        .map(|i| {
            cluster(
                &format!("svc-{i}"),
                &format!("198.18.128.{}", i + 1),
                &["198.19.1.10", "198.19.2.10"],
            )
        })
        .collect();
    let refs: Vec<&ServicePort> = ports.iter().collect();
    put(&mut planner, &mut maps, &refs);
    let stride = 3;
    let mut sampled: Vec<(BackendKey, Backend)> = (0..stride)
        .flat_map(|phase| planner.backend_slots_sample(phase, stride))
        .collect();
    sampled.sort();
    let all: Vec<(BackendKey, Backend)> = maps.backends.iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(sampled, all, "every slot once over `stride` phases");
    assert!(planner.backend_slots_sample(0, stride).len() < all.len());

    let services = || maps.services.iter().map(|(k, v)| (*k, *v));
    assert!(planner.check_services(services()).is_none());
    let mut fewer: Vec<_> = services().collect();
    fewer.pop();
    assert_eq!(planner.check_services(fewer).missing, 1);
}

#[test]
fn topology_hints_narrow_the_cluster_sets_the_maps_hold() {
    // This node ("this", zone-a) proxies a NodePort with externalTrafficPolicy Local. The
    // cluster IP and the NodePort from a local socket (short-circuit) use the zone-a
    // endpoints; the NodePort from outside uses the local one, whatever its hints.
    let hinted = |ip: &str, local: bool, zone: &str| Endpoint {
        hints: Some(Box::new(crate::TopologyHints {
            zones: [zone.to_owned()].into(),
            nodes: Default::default(),
        })),
        ..endpoint(ip, local)
    };
    let mut web = port(
        "web",
        &[
            (FrontendKind::ClusterIp, "198.18.128.10"),
            (FrontendKind::NodePort, "198.18.0.11"),
        ],
        vec![
            hinted("198.19.1.10", true, "zone-b"),
            hinted("198.19.1.11", false, "zone-a"),
            hinted("198.19.2.10", false, "zone-b"),
        ],
    );
    web.node_port = Some(80);
    web.external_traffic_policy = TrafficPolicy::Local;
    web.topology = web.topology_for("this", "zone-a");
    let (mut planner, mut maps) = (Planner::default(), FakeMaps::default());
    assert!(put(&mut planner, &mut maps, &[&web]).failed.is_empty());
    let external = |ip: &str| ServiceKey {
        scope: switchyard_common::SCOPE_EXTERNAL,
        ..service_key(ip)
    };
    assert_eq!(
        served(&maps, &service_key("198.18.128.10")),
        vec![backend("198.19.1.11")]
    );
    assert_eq!(
        served(&maps, &service_key("198.18.0.11")),
        vec![backend("198.19.1.11")]
    );
    assert_eq!(
        served(&maps, &external("198.18.0.11")),
        vec![backend("198.19.1.10")]
    );
    assert_no_drift(&planner, &maps);

    // The zone label goes away: the cluster sets take every endpoint again.
    web.topology = web.topology_for("this", "");
    assert!(put(&mut planner, &mut maps, &[&web]).failed.is_empty());
    let all = vec![
        backend("198.19.1.10"),
        backend("198.19.1.11"),
        backend("198.19.2.10"),
    ];
    let mut served_now = served(&maps, &service_key("198.18.128.10"));
    served_now.sort_by_key(|b| (b.addr, b.port));
    let mut want = all;
    want.sort_by_key(|b| (b.addr, b.port));
    assert_eq!(served_now, want);
    assert_no_drift(&planner, &maps);
}
