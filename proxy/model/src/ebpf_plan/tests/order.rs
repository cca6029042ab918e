//! Operation order within a sync, and what a failure leaves behind.
use std::collections::BTreeMap;

use switchyard_common::{BackendKey, PROTO_TCP};

use super::*;
use crate::ebpf_plan::{Phase, PortFailure};

#[test]
fn backends_are_written_before_the_service_entry() {
    let mut planner = Planner::default();
    let web = cluster("web", "198.18.128.10", &["198.19.1.10", "198.19.2.10"]);
    let plan = planner.plan_sync(&[(web.key.clone(), Some(&web))]);
    let ops: Vec<MapOp> = plan.ops().copied().collect();
    assert!(
        matches!(
            ops.as_slice(),
            [MapOp::PutBackend(..), MapOp::PutBackend(..), MapOp::PutService(k, v)]
                if *k == service_key("198.18.128.10") && k.proto == PROTO_TCP && v.count == 2
        ),
        "{ops:?}"
    );
    let mut maps = FakeMaps::default();
    assert!(planner.run(plan, &mut maps).failed.is_empty());
    assert_no_drift(&planner, &maps);
}

#[test]
fn shrinking_lowers_the_count_and_deletes_the_slot_one_sync_later() {
    let (mut planner, mut maps) = (Planner::default(), FakeMaps::default());
    let two = cluster("web", "198.18.128.10", &["198.19.1.10", "198.19.2.10"]);
    put(&mut planner, &mut maps, &[&two]);
    let one = cluster("web", "198.18.128.10", &["198.19.1.10"]);
    let outcome = put(&mut planner, &mut maps, &[&one]);
    assert!(outcome.failed.is_empty());
    let key = service_key("198.18.128.10");
    assert_eq!(served(&maps, &key), vec![backend("198.19.1.10")]);
    // A program that read the two-slot entry just before it changed may still read slot 1.
    assert_eq!(maps.backends.len(), 2, "slot 1 stays until the next sync");
    assert_no_drift(&planner, &maps);
    sync(&mut planner, &mut maps, &[]);
    assert_eq!(maps.backends.len(), 1);
    assert_no_drift(&planner, &maps);
}

#[test]
fn removal_deletes_the_service_entry_first_and_the_id_comes_back_a_sync_later() {
    let (mut planner, mut maps) = (Planner::default(), FakeMaps::default());
    let web = cluster("web", "198.18.128.10", &["198.19.1.10"]);
    put(&mut planner, &mut maps, &[&web]);
    let plan = planner.plan_sync(&[(web.key.clone(), None)]);
    let ops: Vec<MapOp> = plan.ops().copied().collect();
    assert!(
        matches!(ops.as_slice(), [MapOp::DeleteService(_)]),
        "{ops:?}"
    );
    planner.run(plan, &mut maps);
    assert!(maps.services.is_empty());
    assert_eq!(maps.backends.len(), 1, "the slot goes with the next sync");
    assert_eq!(planner.programmed_ports().count(), 0);
    // Within the same sync the retired id is not handed out again.
    let plan = planner.plan_sync(&[(web.key.clone(), Some(&web))]);
    let Some(MapOp::PutBackend(k, _)) = plan.ops().next() else {
        panic!("{plan:?}")
    };
    assert_eq!(k.service_id, 2);
    planner.run(plan, &mut maps);
    sync(&mut planner, &mut maps, &[(web.key.clone(), None)]);
    sync(&mut planner, &mut maps, &[]);
    assert!(maps.backends.is_empty() && maps.services.is_empty());
    let outcome = put(&mut planner, &mut maps, &[&web]);
    assert!(outcome.failed.is_empty());
    let id = maps.services[&service_key("198.18.128.10")].id;
    assert!(id == 1 || id == 2, "a cooled id is reused: {id}");
}

#[test]
fn internal_policy_local_applies_to_cluster_ip_only() {
    let mut planner = Planner::default();
    let mut web = port(
        "web",
        &[
            (FrontendKind::ClusterIp, "198.18.128.10"),
            (FrontendKind::NodePort, "198.18.0.11"),
        ],
        vec![
            endpoint("198.19.1.10", true),
            endpoint("198.19.2.10", false),
        ],
    );
    web.internal_traffic_policy = TrafficPolicy::Local;
    let plan = planner.plan_sync(&[(web.key.clone(), Some(&web))]);
    let counts: BTreeMap<u32, u16> = plan
        .ops()
        .filter_map(|op| match op {
            MapOp::PutService(k, v) => Some((k.addr, v.count)),
            _ => None,
        })
        .collect();
    let cluster_ip = u32::from(Ipv4Addr::new(198, 18, 128, 10)).to_be();
    let node_ip = u32::from(Ipv4Addr::new(198, 18, 0, 11)).to_be();
    assert_eq!(counts[&cluster_ip], 1, "ClusterIP uses the local set");
    assert_eq!(
        counts[&node_ip], 2,
        "local sockets to a NodePort use the cluster set"
    );
}

#[test]
fn no_endpoints_programs_a_zero_count_entry_that_rejects() {
    let mut planner = Planner::default();
    let empty = cluster("empty", "198.18.128.11", &[]);
    let plan = planner.plan_sync(&[(empty.key.clone(), Some(&empty))]);
    let ops: Vec<MapOp> = plan.ops().copied().collect();
    assert!(
        matches!(ops.as_slice(), [MapOp::PutService(_, v)] if v.count == 0),
        "{ops:?}"
    );
}

#[test]
fn backends_keep_their_slots_across_changes() {
    let (mut planner, mut maps) = (Planner::default(), FakeMaps::default());
    let with = |ips: &[&str]| cluster("web", "198.18.128.10", ips);
    put(
        &mut planner,
        &mut maps,
        &[&with(&["198.19.1.11", "198.19.1.12", "198.19.1.13"])],
    );
    // Scale up: only the new slot is written, then the count.
    let abcd = with(&["198.19.1.11", "198.19.1.12", "198.19.1.13", "198.19.1.14"]);
    let plan = planner.plan_sync(&[(abcd.key.clone(), Some(&abcd))]);
    let ops: Vec<MapOp> = plan.ops().copied().collect();
    assert!(
        matches!(ops.as_slice(), [MapOp::PutBackend(k, _), MapOp::PutService(_, v)] if k.slot == 3 && v.count == 4),
        "{ops:?}"
    );
    planner.run(plan, &mut maps);
    // Scale down by one in the middle: the last backend fills the hole, the others stay;
    // slot 3 goes with the next sync.
    let acd = with(&["198.19.1.11", "198.19.1.13", "198.19.1.14"]);
    let plan = planner.plan_sync(&[(acd.key.clone(), Some(&acd))]);
    let ops: Vec<MapOp> = plan.ops().copied().collect();
    let d = backend("198.19.1.14");
    assert!(
        matches!(ops.as_slice(),
            [MapOp::PutBackend(k, b), MapOp::PutService(_, v)]
            if k.slot == 1 && *b == d && v.count == 3),
        "{ops:?}"
    );
}

/// The bug of issue #10: the new owner of a frontend was planned before the old owner had
/// released it, hit the conflict check, and the frontend vanished until the next full sync.
#[test]
fn a_frontend_moving_between_two_ports_of_one_sync_is_served_whatever_their_order() {
    for new_owner_first in [true, false] {
        let (mut planner, mut maps) = (Planner::default(), FakeMaps::default());
        let a = port(
            "a",
            &[
                (FrontendKind::ClusterIp, "198.18.128.10"),
                (FrontendKind::ExternalIp, "198.18.200.1"),
            ],
            vec![endpoint("198.19.1.10", true)],
        );
        let b = cluster("b", "198.18.128.11", &["198.19.2.10"]);
        put(&mut planner, &mut maps, &[&a, &b]);
        let a2 = cluster("a", "198.18.128.10", &["198.19.1.10"]);
        let b2 = port(
            "b",
            &[
                (FrontendKind::ClusterIp, "198.18.128.11"),
                (FrontendKind::ExternalIp, "198.18.200.1"),
            ],
            vec![endpoint("198.19.2.10", true)],
        );
        let mut changes = vec![(a2.key.clone(), Some(&a2)), (b2.key.clone(), Some(&b2))];
        if new_owner_first {
            changes.reverse();
        }
        let outcome = sync(&mut planner, &mut maps, &changes);
        assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
        assert_eq!(
            served(&maps, &service_key("198.18.200.1")),
            vec![backend("198.19.2.10")],
            "new owner first: {new_owner_first}"
        );
        assert_no_drift(&planner, &maps);
    }
}

#[test]
fn every_release_runs_before_any_assign() {
    let mut planner = Planner::default();
    let (mut maps, a, b) = (
        FakeMaps::default(),
        cluster("a", "198.18.128.10", &["198.19.1.10"]),
        cluster("b", "198.18.128.11", &["198.19.2.10"]),
    );
    put(&mut planner, &mut maps, &[&a, &b]);
    // The two swap their cluster IPs.
    let a2 = cluster("a", "198.18.128.11", &["198.19.1.10"]);
    let b2 = cluster("b", "198.18.128.10", &["198.19.2.10"]);
    let plan = planner.plan_sync(&[(a2.key.clone(), Some(&a2)), (b2.key.clone(), Some(&b2))]);
    let phases: Vec<Phase> = plan.steps().iter().map(|s| s.phase()).collect();
    assert_eq!(
        phases,
        vec![Phase::Release, Phase::Release, Phase::Assign, Phase::Assign]
    );
    let outcome = planner.run(plan, &mut maps);
    assert!(outcome.failed.is_empty());
    assert_eq!(
        served(&maps, &service_key("198.18.128.10")),
        vec![backend("198.19.2.10")]
    );
    assert_eq!(
        served(&maps, &service_key("198.18.128.11")),
        vec![backend("198.19.1.10")]
    );
}

/// The second bug of issue #10: a scale-up that filled the backends map rolled back the old
/// entries too, taking a working service down.
#[test]
fn a_scale_up_into_a_full_backends_map_leaves_the_old_service_serving() {
    let (mut planner, mut maps) = (Planner::default(), FakeMaps::default());
    let two = cluster("web", "198.18.128.10", &["198.19.1.10", "198.19.1.11"]);
    put(&mut planner, &mut maps, &[&two]);
    maps.capacity.backends = Some(3);
    let four = cluster(
        "web",
        "198.18.128.10",
        &["198.19.1.10", "198.19.1.11", "198.19.1.12", "198.19.1.13"],
    );
    let outcome = put(&mut planner, &mut maps, &[&four]);
    assert!(
        matches!(outcome.failed.as_slice(), [(k, PortFailure::Map(FakeError::Full("backends")))] if *k == four.key),
        "{:?}",
        outcome.failed
    );
    let key = service_key("198.18.128.10");
    assert_eq!(
        served(&maps, &key),
        vec![backend("198.19.1.10"), backend("198.19.1.11")],
        "the old entry and its slots are intact"
    );
    assert_no_drift(&planner, &maps);
    // The slot it managed to write goes with the next sync; with room the retry succeeds.
    sync(&mut planner, &mut maps, &[]);
    assert_eq!(maps.backends.len(), 2);
    maps.capacity.backends = None;
    let outcome = put(&mut planner, &mut maps, &[&four]);
    assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
    assert_eq!(served(&maps, &key).len(), 4);
    assert_no_drift(&planner, &maps);
}

#[test]
fn a_failure_among_the_in_place_writes_puts_back_what_was_overwritten() {
    let (mut planner, mut maps) = (Planner::default(), FakeMaps::default());
    let before = port(
        "web",
        &[
            (FrontendKind::ClusterIp, "198.18.128.10"),
            (FrontendKind::ExternalIp, "198.18.200.1"),
        ],
        vec![endpoint("198.19.1.10", true), endpoint("198.19.1.11", true)],
    );
    put(&mut planner, &mut maps, &[&before]);
    let snapshot = maps.clone();
    // A replaced endpoint: slot 1 and the entries are rewritten in place.
    let mut after = before.clone();
    after.endpoints[1] = endpoint("198.19.1.12", true);
    after.session_affinity_timeout = Some(10);
    assert!(sync(&mut planner, &mut maps, &[]).failed.is_empty());
    let ops: Vec<MapOp> = planner
        .plan_sync(&[(after.key.clone(), Some(&after))])
        .ops()
        .copied()
        .collect();
    assert!(
        ops.iter()
            .all(|op| is_put_backend(op) || is_put_service(op)),
        "{ops:?}"
    );
    // Each op in turn fails once; the old state must come back every time.
    for fail in 0..ops.len() {
        let (mut p, mut m) = (Planner::default(), FakeMaps::default());
        put(&mut p, &mut m, &[&before]);
        m.fail_op(fail);
        let outcome = put(&mut p, &mut m, &[&after]);
        assert_eq!(outcome.failed.len(), 1, "op {fail}");
        assert_eq!(m.services, snapshot.services, "op {fail}");
        assert_eq!(m.backends, snapshot.backends, "op {fail}");
        assert_no_drift(&p, &m);
    }
}

#[test]
fn a_frontend_still_held_after_a_failed_release_fails_the_new_owner_not_the_old() {
    let (mut planner, mut maps) = (Planner::default(), FakeMaps::default());
    let a = cluster("a", "198.18.128.10", &["198.19.1.10"]);
    put(&mut planner, &mut maps, &[&a]);
    let b = cluster("b", "198.18.128.10", &["198.19.2.10"]);
    sync(&mut planner, &mut maps, &[]);
    maps.fail_op(0); // a's release
    let outcome = sync(
        &mut planner,
        &mut maps,
        &[(a.key.clone(), None), (b.key.clone(), Some(&b))],
    );
    let failed: Vec<String> = outcome
        .failed
        .iter()
        .map(|(k, e)| format!("{k}: {e}"))
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(failed[1].contains("still held by demo/a/TCP"), "{failed:?}");
    assert_eq!(
        served(&maps, &service_key("198.18.128.10")),
        vec![backend("198.19.1.10")]
    );
    assert_no_drift(&planner, &maps);
    // The retry of both succeeds.
    let outcome = sync(
        &mut planner,
        &mut maps,
        &[(a.key.clone(), None), (b.key.clone(), Some(&b))],
    );
    assert!(outcome.failed.is_empty());
    assert_eq!(
        served(&maps, &service_key("198.18.128.10")),
        vec![backend("198.19.2.10")]
    );
    sync(&mut planner, &mut maps, &[]);
    assert_no_drift(&planner, &maps);
    assert_eq!(maps.backends.len(), 1);
}

#[test]
fn a_source_range_shared_by_two_ports_stays_while_one_still_wants_it() {
    let (mut planner, mut maps) = (Planner::default(), FakeMaps::default());
    let lb = |name: &str, number: u16| {
        let mut p = port(
            name,
            &[(FrontendKind::LoadBalancer, "198.18.210.1")],
            vec![endpoint("198.19.1.10", true)],
        );
        p.frontends[0].port = number;
        p.load_balancer_source_ranges = vec!["203.0.113.0/24".parse().expect("literal")];
        p
    };
    let (a, b) = (lb("a", 80), lb("b", 443));
    put(&mut planner, &mut maps, &[&a, &b]);
    assert_eq!(maps.ranges.len(), 1);
    sync(&mut planner, &mut maps, &[(a.key.clone(), None)]);
    sync(&mut planner, &mut maps, &[]);
    assert_eq!(maps.ranges.len(), 1, "b still relies on it");
    sync(&mut planner, &mut maps, &[(b.key.clone(), None)]);
    assert_eq!(maps.ranges.len(), 1, "deleted one sync later");
    sync(&mut planner, &mut maps, &[]);
    assert!(maps.ranges.is_empty());
    assert_no_drift(&planner, &maps);
}

#[test]
fn drift_is_none_for_what_was_written_and_counts_what_changed_behind_our_back() {
    let (mut planner, mut maps) = (Planner::default(), FakeMaps::default());
    let web = cluster("web", "198.18.128.10", &["198.19.1.10", "198.19.2.10"]);
    let api = cluster("api", "198.18.128.11", &["198.19.1.11", "198.19.2.11"]);
    put(&mut planner, &mut maps, &[&web, &api]);
    let (services, backends) = (maps.services.clone(), maps.backends.clone());
    let check = |s: &BTreeMap<_, _>, b: &BTreeMap<BackendKey, Backend>| {
        planner.check_drift(
            s.iter().map(|(k, v)| (*k, *v)),
            b.iter().map(|(k, v)| (*k, *v)),
        )
    };
    assert!(check(&services, &backends).is_none());

    let mut gone = services.clone();
    let first = *gone.keys().next().expect("two entries");
    gone.remove(&first);
    assert_eq!(check(&gone, &backends).missing, 1);

    let mut changed = backends.clone();
    if let Some(b) = changed.values_mut().next() {
        b.port ^= 1;
    }
    assert_eq!(check(&services, &changed).wrong, 1);
    assert_eq!(check(&services, &BTreeMap::new()).missing, 4);

    let mut extra = services.clone();
    let mut stray = first;
    stray.port ^= 1;
    extra.insert(stray, services[&first]);
    assert_eq!(check(&extra, &backends).unexpected, 1);
}

#[test]
fn a_full_sync_after_observing_the_maps_repairs_what_changed_behind_our_back() {
    let (mut planner, mut maps) = (Planner::default(), FakeMaps::default());
    let web = cluster("web", "198.18.128.10", &["198.19.1.10", "198.19.2.10"]);
    put(&mut planner, &mut maps, &[&web]);
    maps.services.clear();
    let stray = BackendKey {
        service_id: 99,
        slot: 0,
    };
    maps.backends.insert(stray, backend("198.19.9.9"));
    planner.observe(
        maps.services.clone(),
        maps.backends.clone(),
        maps.ranges.clone(),
    );
    assert!(planner.begin_sync(&mut maps).is_empty());
    let plan = planner
        .plan_sync(&[(web.key.clone(), Some(&web))])
        .collecting_garbage();
    assert!(planner.run(plan, &mut maps).failed.is_empty());
    assert_eq!(served(&maps, &service_key("198.18.128.10")).len(), 2);
    sync(&mut planner, &mut maps, &[]);
    assert!(!maps.backends.contains_key(&stray), "the unknown set went");
    assert_no_drift(&planner, &maps);
}
