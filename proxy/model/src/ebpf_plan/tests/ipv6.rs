//! The IPv6 planner: a dual-stack port is split between the two families' maps, IPv6 sets
//! get ids of their own share, and IPv6 external frontends get packet-path entries too.
use std::collections::BTreeSet;

use switchyard_common::{
    BackendKey, ServiceKey6, IPV6_SET_ID_BASE, PROTO_TCP, SCOPE_EXTERNAL, SCOPE_SOCKET,
    SERVICE_FLAG_AFFINITY, SERVICE_FLAG_MASQUERADE,
};

use super::super::fake::FakeMaps6;
use super::super::{Family, FamilyOp, Planner6, V6};
use super::*;

fn key6(ip: &str, port: u16) -> ServiceKey6 {
    key6_scoped(ip, port, SCOPE_SOCKET)
}

fn key6_scoped(ip: &str, port: u16, scope: u8) -> ServiceKey6 {
    V6::key(ip.parse().expect("literal"), port, PROTO_TCP, scope).expect("IPv6")
}

fn backends6(maps: &FakeMaps6, key: &ServiceKey6) -> BTreeSet<String> {
    let Some(value) = maps.services.get(key) else {
        return BTreeSet::new();
    };
    (0..u32::from(value.count))
        .map(|slot| {
            let backend = maps
                .backends
                .get(&BackendKey {
                    service_id: value.id,
                    slot,
                })
                .unwrap_or_else(|| panic!("{key:?} counts missing slot {slot}"));
            let (ip, port) = V6::backend_parts(backend);
            std::net::SocketAddr::new(ip, port).to_string()
        })
        .collect()
}

fn sync6(
    planner: &mut Planner6,
    maps: &mut FakeMaps6,
    ports: &[(ServicePortKey, Option<&ServicePort>)],
) -> SyncOutcome<FakeError> {
    assert!(planner.begin_sync(maps).is_empty());
    let plan = planner.plan_sync(ports);
    planner.run(plan, maps)
}

/// A dual-stack NodePort service with ClientIP affinity: both cluster IPs, a NodePort on
/// one node address of each family, endpoints of both families.
fn dual_stack() -> ServicePort {
    let mut web = port(
        "web",
        &[
            (FrontendKind::ClusterIp, "198.18.128.10"),
            (FrontendKind::ClusterIp, "2001:db8:128::10"),
            (FrontendKind::NodePort, "198.18.0.11"),
            (FrontendKind::NodePort, "2001:db8::11"),
            (FrontendKind::NodePort, "::1"),
        ],
        vec![
            endpoint("198.19.1.10", true),
            endpoint("2001:db8:1::10", true),
            endpoint("2001:db8:2::10", false),
        ],
    );
    web.node_port = Some(80);
    web.session_affinity_timeout = Some(10800);
    web
}

#[test]
fn a_dual_stack_port_is_split_between_the_families_maps() {
    let web = dual_stack();
    let (mut planner, mut maps) = (Planner::default(), FakeMaps::default());
    let (mut planner6, mut maps6) = (Planner6::default(), FakeMaps6::default());
    assert!(put(&mut planner, &mut maps, &[&web]).failed.is_empty());
    let outcome = sync6(&mut planner6, &mut maps6, &[(web.key.clone(), Some(&web))]);
    assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
    assert_eq!(outcome.written, vec![web.key.clone()]);

    // IPv4: cluster IP, NodePort for sockets and from outside, IPv4 endpoints only.
    assert_eq!(maps.services.len(), 3, "{:?}", maps.services);
    assert_eq!(
        served(&maps, &service_key("198.18.128.10")),
        vec![backend("198.19.1.10")]
    );
    // IPv6: the socket entries and the NodePort's entry for the packet path (traffic from
    // outside the node), IPv6 endpoints only.
    let keys: Vec<ServiceKey6> = maps6.services.keys().copied().collect();
    let mut scopes: Vec<u8> = keys.iter().map(|k| k.scope).collect();
    scopes.sort_unstable();
    assert_eq!(
        scopes,
        vec![SCOPE_SOCKET, SCOPE_SOCKET, SCOPE_EXTERNAL],
        "{keys:?}"
    );
    let external: Vec<&ServiceKey6> = keys.iter().filter(|k| k.scope == SCOPE_EXTERNAL).collect();
    assert_eq!(
        external,
        vec![&key6_scoped("2001:db8::11", 80, SCOPE_EXTERNAL)]
    );
    assert_ne!(
        maps6.services[external[0]].flags & SERVICE_FLAG_MASQUERADE,
        0,
        "externalTrafficPolicy Cluster"
    );
    assert!(
        !maps6.services.contains_key(&key6("::1", 80)),
        "no NodePort on ::1, as upstream"
    );
    let want: BTreeSet<String> = ["[2001:db8:1::10]:8080", "[2001:db8:2::10]:8080"]
        .map(String::from)
        .into();
    assert_eq!(backends6(&maps6, &key6("2001:db8:128::10", 80)), want);
    assert_eq!(backends6(&maps6, &key6("2001:db8::11", 80)), want);
    for value in maps6.services.values() {
        assert!(
            value.id > IPV6_SET_ID_BASE,
            "IPv6 set ids are their own: {value:?}"
        );
        assert_ne!(value.flags & SERVICE_FLAG_AFFINITY, 0);
        assert_eq!(value.affinity_timeout, 10800);
    }
    for value in maps.services.values() {
        assert!(value.id < IPV6_SET_ID_BASE, "{value:?}");
    }
    let drift = planner6.check_drift(
        maps6.services.iter().map(|(k, v)| (*k, *v)),
        maps6.backends.iter().map(|(k, v)| (*k, *v)),
    );
    assert!(drift.is_none(), "{drift}");
}

#[test]
fn ipv6_changes_keep_every_counted_slot_present_and_removal_cleans_up() {
    let mut web = dual_stack();
    let (mut planner6, mut maps6) = (Planner6::default(), FakeMaps6::default());
    sync6(&mut planner6, &mut maps6, &[(web.key.clone(), Some(&web))]);
    let before = maps6.services[&key6("2001:db8:128::10", 80)];

    // An endpoint goes, another comes: the set keeps its id (affinity survives), and no
    // state between two operations counts a slot that is not there.
    web.endpoints = vec![
        endpoint("2001:db8:2::10", false),
        endpoint("2001:db8:2::11", false),
    ];
    let mut checked = Vec::new();
    {
        assert!(planner6.begin_sync(&mut maps6).is_empty());
        let plan = planner6.plan_sync(&[(web.key.clone(), Some(&web))]);
        assert!(plan
            .ops()
            .all(|op| !matches!(op, FamilyOp::PutSourceRange(..))));
        let outcome = planner6.run(plan, &mut Checked6(&mut maps6, &mut checked));
        assert!(outcome.failed.is_empty());
    }
    assert!(checked.iter().all(Option::is_none), "{checked:?}");
    let after = maps6.services[&key6("2001:db8:128::10", 80)];
    assert_eq!(after.id, before.id);
    let want: BTreeSet<String> = ["[2001:db8:2::10]:8080", "[2001:db8:2::11]:8080"]
        .map(String::from)
        .into();
    assert_eq!(backends6(&maps6, &key6("2001:db8:128::10", 80)), want);
    sync6(&mut planner6, &mut maps6, &[]);
    // Three sets (the cluster IP's, the NodePort's for sockets and from outside), two slots
    // each, replaced in place.
    assert_eq!(maps6.backends.len(), 6, "{:?}", maps6.backends);

    sync6(&mut planner6, &mut maps6, &[(web.key.clone(), None)]);
    assert!(maps6.services.is_empty());
    sync6(&mut planner6, &mut maps6, &[]);
    assert!(maps6.backends.is_empty(), "{:?}", maps6.backends);
}

/// Records after each operation the first counted slot the maps lack.
struct Checked6<'a>(
    &'a mut FakeMaps6,
    &'a mut Vec<Option<(ServiceKey6, BackendKey)>>,
);

impl super::super::MapWriter<V6> for Checked6<'_> {
    type Error = FakeError;

    fn run(&mut self, op: &FamilyOp<V6>) -> Result<(), FakeError> {
        let result = self.0.run(op);
        self.1.push(self.0.missing_slot());
        result
    }
}

#[test]
fn a_restarted_planner_adopts_ipv6_entries_and_collects_what_nothing_uses() {
    let web = dual_stack();
    let gone = port(
        "gone",
        &[(FrontendKind::ClusterIp, "2001:db8:128::99")],
        vec![endpoint("2001:db8:1::10", true)],
    );
    let (mut previous, mut maps6) = (Planner6::default(), FakeMaps6::default());
    let both = [
        (web.key.clone(), Some(&web)),
        (gone.key.clone(), Some(&gone)),
    ];
    sync6(&mut previous, &mut maps6, &both);
    let old_ids: BTreeSet<u32> = maps6.services.values().map(|v| v.id).collect();

    // A new instance finds the pinned IPv6 maps: the entries keep serving, their ids are
    // not handed out again while in use.
    let mut planner6 = Planner6::default();
    planner6.observe(maps6.services.clone(), maps6.backends.clone(), []);
    assert_eq!(planner6.foreign_sets().collect::<BTreeSet<u32>>(), old_ids);
    let plan_and_run = |planner6: &mut Planner6, maps6: &mut FakeMaps6| {
        assert!(planner6.begin_sync(maps6).is_empty());
        let plan = planner6
            .plan_sync(&[(web.key.clone(), Some(&web))])
            .collecting_garbage();
        let mut checked = Vec::new();
        let outcome = planner6.run(plan, &mut Checked6(maps6, &mut checked));
        assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
        assert!(checked.iter().all(Option::is_none), "{checked:?}");
    };
    plan_and_run(&mut planner6, &mut maps6);
    assert!(
        !maps6.services.contains_key(&key6("2001:db8:128::99", 80)),
        "the port deleted while no controller ran is gone"
    );
    let new_ids: BTreeSet<u32> = maps6.services.values().map(|v| v.id).collect();
    assert!(new_ids.is_disjoint(&old_ids), "{new_ids:?} {old_ids:?}");
    assert!(new_ids.iter().all(|id| *id > IPV6_SET_ID_BASE));
    // The old sets' slots go one sync later.
    plan_and_run(&mut planner6, &mut maps6);
    assert!(maps6
        .backends
        .keys()
        .all(|k| new_ids.contains(&k.service_id)));
    assert_eq!(planner6.foreign_sets().count(), 0);
}
