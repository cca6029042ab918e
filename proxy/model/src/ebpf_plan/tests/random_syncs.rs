//! Property test: random sequences of desired states for a few service ports (random
//! endpoints, frontends shared between ports and moving, random map capacities and injected
//! failures), run op by op on the fake maps. Between any two operations every service entry
//! must count only existing slots, all of one port's old or new backends; after every sync
//! the planner must know exactly what the maps hold, and a failed port must still serve what
//! it served before.
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;
use switchyard_common::{Backend, ServiceKey, ServiceValue};

use super::*;
use crate::ebpf_plan::entries::{entries, wanted_backends};
use crate::ebpf_plan::{Doomed, PortFailure, V4};

const PORTS: usize = 4;
/// Endpoints each port may have: 198.19.(i+1).10..
const ENDPOINTS: usize = 5;
/// Shared external IPs: 198.18.200.1..
const EXTERNALS: usize = 3;
const LB_IP: &str = "198.18.210.1";
const RANGES: [&str; 2] = ["203.0.113.0/24", "198.51.100.0/24"];

/// One port's random shape in one sync.
#[derive(Clone, Debug)]
struct PortSpec {
    present: bool,
    endpoints: u8,
    local: u8,
    externals: u8,
    lb: bool,
    ranges: u8,
    node_port: bool,
    affinity: bool,
    etp_local: bool,
    itp_local: bool,
}

/// One sync: the desired ports and the conditions it runs under.
#[derive(Clone, Debug)]
struct SyncSpec {
    ports: Vec<PortSpec>,
    full: bool,
    reverse: bool,
    /// Room left in each map (services, backends, ranges); `None`: unlimited.
    room: (Option<u8>, Option<u8>, Option<u8>),
    fail_at: Option<u8>,
}

fn port_spec() -> impl Strategy<Value = PortSpec> {
    (
        prop::bool::weighted(0.85),
        0u8..(1 << ENDPOINTS),
        0u8..(1 << ENDPOINTS),
        0u8..(1 << EXTERNALS),
        any::<bool>(),
        0u8..4,
        any::<bool>(),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(present, endpoints, local, externals, lb, ranges, node_port, affinity, etp, itp)| {
                PortSpec {
                    present,
                    endpoints,
                    local,
                    externals,
                    lb,
                    ranges,
                    node_port,
                    affinity,
                    etp_local: etp,
                    itp_local: itp,
                }
            },
        )
}

fn room() -> impl Strategy<Value = Option<u8>> {
    prop::option::weighted(0.3, 0u8..6)
}

fn sync_spec() -> impl Strategy<Value = SyncSpec> {
    (
        prop::collection::vec(port_spec(), PORTS),
        prop::bool::weighted(0.25),
        any::<bool>(),
        (room(), room(), room()),
        prop::option::weighted(0.3, 0u8..40),
    )
        .prop_map(|(ports, full, reverse, room, fail_at)| SyncSpec {
            ports,
            full,
            reverse,
            room,
            fail_at,
        })
}

fn v4(text: &str) -> IpAddr {
    text.parse().expect("test literal")
}

/// Service port `i` as `spec` describes it. Ports 0 and 1 listen on port 80, ports 2 and 3 on
/// 81: the first pair contends for the shared externalIPs and the LoadBalancer IP on 80, the
/// second on 81, and an owner from each pair shares the LoadBalancer IP's source ranges.
fn build(i: usize, spec: &PortSpec) -> Option<ServicePort> {
    if !spec.present {
        return None;
    }
    let number = if i < 2 { 80 } else { 81 };
    let mut frontends = vec![Frontend {
        kind: FrontendKind::ClusterIp,
        ip: v4(&format!("198.18.128.{}", 10 + i)),
        port: number,
    }];
    if spec.node_port {
        frontends.push(Frontend {
            kind: FrontendKind::NodePort,
            ip: v4("198.18.0.11"),
            port: 30000 + i as u16,
        });
    }
    for b in 0..EXTERNALS {
        if spec.externals & (1 << b) != 0 {
            frontends.push(Frontend {
                kind: FrontendKind::ExternalIp,
                ip: v4(&format!("198.18.200.{}", b + 1)),
                port: number,
            });
        }
    }
    if spec.lb {
        frontends.push(Frontend {
            kind: FrontendKind::LoadBalancer,
            ip: v4(LB_IP),
            port: number,
        });
    }
    let endpoints = (0..ENDPOINTS)
        .filter(|b| spec.endpoints & (1 << b) != 0)
        .map(|b| {
            endpoint(
                &format!("198.19.{}.{}", i + 1, 10 + b),
                spec.local & (1 << b) != 0,
            )
        })
        .collect();
    let mut p = port(&format!("p{i}"), &[], endpoints);
    p.port = number;
    p.frontends = frontends;
    p.load_balancer_source_ranges = (0..RANGES.len())
        .filter(|b| spec.ranges & (1 << b) != 0)
        .map(|b| RANGES[b].parse().expect("literal"))
        .collect();
    p.session_affinity_timeout = spec.affinity.then_some(30);
    if spec.etp_local {
        p.external_traffic_policy = TrafficPolicy::Local;
    }
    if spec.itp_local {
        p.internal_traffic_policy = TrafficPolicy::Local;
    }
    Some(p)
}

/// The desired state of one sync, with one owner per frontend (the lowest port number), as
/// the model hands it over.
fn desired(spec: &SyncSpec) -> BTreeMap<ServicePortKey, ServicePort> {
    let mut taken = BTreeSet::new();
    let mut out = BTreeMap::new();
    for (i, p) in spec.ports.iter().enumerate() {
        if let Some(mut port) = build(i, p) {
            port.frontends.retain(|f| taken.insert((f.ip, f.port)));
            out.insert(port.key.clone(), port);
        }
    }
    out
}

/// Which port a backend belongs to (its address's third octet is the port number + 1).
fn port_of(backend: &Backend) -> ServicePortKey {
    let octets = Ipv4Addr::from(u32::from_be(backend.addr)).octets();
    key(&format!("p{}", octets[2] - 1))
}

/// What a port may show between two operations: the backends and service entries of the
/// state it last completed and of the one it is changing to.
#[derive(Default)]
struct Allowed {
    backends: BTreeMap<ServicePortKey, BTreeSet<Backend>>,
    keys: BTreeMap<ServicePortKey, BTreeSet<ServiceKey>>,
}

impl Allowed {
    fn add(&mut self, port: &ServicePort) {
        let backends = self.backends.entry(port.key.clone()).or_default();
        for e in entries::<V4>(port) {
            backends.extend(wanted_backends::<V4>(port, e.set));
        }
        self.keys
            .entry(port.key.clone())
            .or_default()
            .extend(entries::<V4>(port).iter().map(|e| e.key));
    }

    /// The invariant a concurrent program relies on.
    fn check(&self, maps: &FakeMaps) {
        assert_counted_slots_exist(maps);
        for key in maps.services.keys() {
            let backends = served(maps, key);
            let owners: BTreeSet<ServicePortKey> = backends.iter().map(port_of).collect();
            assert!(owners.len() <= 1, "{key:?} mixes ports: {owners:?}");
            match owners.first() {
                Some(owner) => {
                    let allowed = &self.backends[owner];
                    assert!(
                        backends.iter().all(|b| allowed.contains(b)),
                        "{key:?} serves a backend {owner} neither had nor wants"
                    );
                    assert!(
                        self.keys[owner].contains(key),
                        "{key:?} serves {owner}, which neither had nor wants it"
                    );
                }
                None => assert!(
                    self.keys.values().any(|keys| keys.contains(key)),
                    "{key:?} belongs to nobody"
                ),
            }
        }
    }
}

/// A port's service entries and the backends each serves.
type Snapshot = BTreeMap<ServiceKey, (ServiceValue, Vec<Backend>)>;

fn snapshot(maps: &FakeMaps, port: &ServicePort) -> Snapshot {
    entries::<V4>(port)
        .iter()
        .filter_map(|e| {
            let value = maps.services.get(&e.key)?;
            Some((e.key, (*value, served(maps, &e.key))))
        })
        .collect()
}

/// The test world: the controller's view (what it believes applied), each port's last
/// completed state, the planner and the maps.
#[derive(Default)]
struct World {
    planner: Planner,
    maps: FakeMaps,
    applied: BTreeMap<ServicePortKey, ServicePort>,
    good: BTreeMap<ServicePortKey, (ServicePort, Snapshot)>,
    /// Every state a port was asked for since its last completed change: a failure whose
    /// restore failed too may leave entries of any of them.
    tried: BTreeMap<ServicePortKey, Vec<ServicePort>>,
}

impl World {
    fn sync(&mut self, spec: &SyncSpec) {
        let want = desired(spec);
        let len = (
            self.maps.services.len(),
            self.maps.backends.len(),
            self.maps.ranges.len(),
        );
        let limit = |room: Option<u8>, len: usize| room.map(|r| len + usize::from(r));
        self.maps.capacity.services = limit(spec.room.0, len.0);
        self.maps.capacity.backends = limit(spec.room.1, len.1);
        self.maps.capacity.ranges = limit(spec.room.2, len.2);
        self.maps.fail_at = None;
        if spec.full {
            observe(&mut self.planner, &self.maps);
        }
        // Retired slots of the previous sync go first (no failure injected there).
        let errors = self.planner.begin_sync(&mut self.maps);
        assert!(errors.is_empty(), "{errors:?}");
        if let Some(n) = spec.fail_at {
            self.maps.fail_op(usize::from(n));
        }
        let mut changes: Vec<(ServicePortKey, Option<&ServicePort>)> = if spec.full {
            let mut keys: BTreeSet<ServicePortKey> = want.keys().cloned().collect();
            keys.extend(self.planner.programmed_ports().cloned());
            keys.into_iter()
                .map(|k| {
                    let p = want.get(&k);
                    (k, p)
                })
                .collect()
        } else {
            let mut keys: BTreeSet<ServicePortKey> = BTreeSet::new();
            keys.extend(
                want.iter()
                    .filter(|(k, p)| self.applied.get(*k) != Some(*p))
                    .map(|(k, _)| k.clone()),
            );
            keys.extend(
                self.applied
                    .keys()
                    .filter(|k| !want.contains_key(*k))
                    .cloned(),
            );
            // Ports whose last change failed are retried with whatever they want now.
            keys.extend(self.planner.unsettled().cloned());
            keys.into_iter()
                .map(|k| {
                    let p = want.get(&k);
                    (k, p)
                })
                .collect()
        };
        if spec.reverse {
            changes.reverse();
        }
        let mut allowed = Allowed::default();
        for (port, _) in self.good.values() {
            allowed.add(port);
        }
        for port in self.tried.values().flatten() {
            allowed.add(port);
        }
        for port in want.values() {
            allowed.add(port);
        }
        let mut plan = self.planner.plan_sync(&changes);
        if spec.full {
            plan = plan.collecting_garbage();
        }
        let mut writer = Checked {
            maps: &mut self.maps,
            check: |maps: &FakeMaps| allowed.check(maps),
        };
        let outcome = self.planner.run(plan, &mut writer);
        if spec.room == (None, None, None) && spec.fail_at.is_none() {
            // Nothing can fail without a full map or an injected failure: in particular no
            // frontend moving between ports of this sync may be refused.
            assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
        }
        self.after(&want, &changes, outcome);
    }

    fn after(
        &mut self,
        want: &BTreeMap<ServicePortKey, ServicePort>,
        changes: &[(ServicePortKey, Option<&ServicePort>)],
        outcome: SyncOutcome<FakeError>,
    ) {
        assert_no_drift(&self.planner, &self.maps);
        // Nothing leaks: whatever no entry counts and no port wants is due for deletion.
        for key in self.maps.backends.keys() {
            let counted = self
                .maps
                .services
                .values()
                .any(|v| v.id == key.service_id && key.slot < u32::from(v.count));
            assert!(
                counted || self.planner.doomed.contains(&Doomed::Backend(*key)),
                "leaked slot {key:?}"
            );
        }
        let claimed: BTreeSet<_> = self
            .planner
            .ports
            .values()
            .flat_map(|p| p.ranges.iter())
            .collect();
        for range in &self.maps.ranges {
            assert!(
                claimed.contains(range) || self.planner.doomed.contains(&Doomed::Range(*range)),
                "leaked range {range:?}"
            );
        }
        let failed: BTreeMap<&ServicePortKey, &PortFailure<FakeError>> =
            outcome.failed.iter().map(|(k, e)| (k, e)).collect();
        for (key, desired) in changes {
            if failed.contains_key(key) {
                // A failed port serves what it served before, for every frontend it keeps
                // (unless putting that back failed too); the frontends it gave up are gone
                // from its previous state.
                let still: BTreeSet<ServiceKey> = desired
                    .map(|p| entries::<V4>(p).iter().map(|e| e.key).collect())
                    .unwrap_or_default();
                if let Some(port) = desired {
                    self.tried
                        .entry(key.clone())
                        .or_default()
                        .push((*port).clone());
                }
                if let Some((_, before)) = self.good.get_mut(key) {
                    before.retain(|k, _| still.contains(k));
                    if outcome.housekeeping.is_empty() {
                        for (k, (value, backends)) in before.iter() {
                            assert_eq!(self.maps.services.get(k), Some(value), "{key}: {k:?}");
                            assert_eq!(&served(&self.maps, k), backends, "{key}: {k:?}");
                        }
                    }
                }
                continue;
            }
            match desired {
                Some(port) => {
                    assert_serves(&self.maps, port);
                    let snap = snapshot(&self.maps, port);
                    self.good.insert(key.clone(), ((*port).clone(), snap));
                    self.tried.remove(key);
                    self.applied.insert(key.clone(), (*port).clone());
                }
                None => {
                    self.good.remove(key);
                    self.tried.remove(key);
                    self.applied.remove(key);
                }
            }
        }
        // As the controller does: a failed port stays at its previous applied version.
        let _ = want;
    }
}

/// `port` is served exactly as it wants.
fn assert_serves(maps: &FakeMaps, port: &ServicePort) {
    for e in entries::<V4>(port) {
        assert!(
            maps.services.contains_key(&e.key),
            "{}: {:?} missing",
            port.key,
            e.key
        );
        let served: BTreeSet<Backend> = served(maps, &e.key).into_iter().collect();
        let wanted: BTreeSet<Backend> = wanted_backends::<V4>(port, e.set).into_iter().collect();
        assert_eq!(served, wanted, "{}: {:?}", port.key, e.key);
    }
}

proptest! {
    // Few cases by default, so `cargo test -p switchyard-model` stays fast; a longer search:
    // `PROPTEST_CASES=5000 cargo test -p switchyard-model random_syncs`.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_state_between_two_operations_is_consistent(
        syncs in prop::collection::vec(sync_spec(), 1..10)
    ) {
        let mut world = World::default();
        for spec in &syncs {
            world.sync(spec);
        }
        // With room and no failures everything converges.
        let calm = SyncSpec { room: (None, None, None), fail_at: None, full: false, reverse: false, ..syncs[syncs.len() - 1].clone() };
        world.sync(&calm);
        for port in desired(&calm).values() {
            assert_serves(&world.maps, port);
        }
        prop_assert!(world.planner.unsettled().next().is_none());
    }
}
