//! Taking over a previous instance's maps: its entries keep serving until replaced, and its
//! sets are deleted one sync after nothing uses them.
use std::collections::BTreeSet;

use super::*;

/// A LoadBalancer port `x` with source ranges, and a ClusterIP port `y`.
fn previous_ports() -> (ServicePort, ServicePort) {
    let mut x = port(
        "x",
        &[
            (FrontendKind::ClusterIp, "198.18.128.10"),
            (FrontendKind::LoadBalancer, "198.18.210.1"),
        ],
        vec![endpoint("198.19.1.10", true), endpoint("198.19.1.11", true)],
    );
    x.load_balancer_source_ranges = vec!["203.0.113.0/24".parse().expect("literal")];
    let y = cluster("y", "198.18.128.11", &["198.19.2.10"]);
    (x, y)
}

/// The maps a previous instance left, and a fresh planner that took them over.
fn adopted() -> (Planner, FakeMaps, ServicePort) {
    let (x, y) = previous_ports();
    let (mut previous, mut maps) = (Planner::default(), FakeMaps::default());
    // Some churn first, so the previous instance's ids differ from a fresh planner's.
    put(&mut previous, &mut maps, &[&y]);
    put(&mut previous, &mut maps, &[&x, &y]);
    sync(&mut previous, &mut maps, &[]);
    let mut planner = Planner::default();
    observe(&mut planner, &maps);
    (planner, maps, x)
}

/// Every slot is counted by some service entry (retired ids may be handed out again, so
/// leftovers are found by coverage, not by id).
fn assert_no_leftovers(maps: &FakeMaps) {
    for key in maps.backends.keys() {
        let covered = maps
            .services
            .values()
            .any(|v| v.id == key.service_id && key.slot < u32::from(v.count));
        assert!(covered, "leftover slot {key:?}");
    }
}

fn ids_of(maps: &FakeMaps) -> BTreeSet<u32> {
    maps.backends.keys().map(|k| k.service_id).collect()
}

#[test]
fn the_first_full_sync_replaces_adopted_entries_and_deletes_old_slots_one_sync_later() {
    let (mut planner, mut maps, x) = adopted();
    let old_ids = ids_of(&maps);
    let old_ranges = maps.ranges.clone();
    assert!(planner.begin_sync(&mut maps).is_empty());
    let plan = planner
        .plan_sync(&[(x.key.clone(), Some(&x))])
        .collecting_garbage();
    let mut checked = Checked {
        maps: &mut maps,
        check: assert_counted_slots_exist,
    };
    let outcome = planner.run(plan, &mut checked);
    assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
    assert!(
        !maps.services.contains_key(&service_key("198.18.128.11")),
        "the service deleted meanwhile is gone"
    );
    let new_ids: BTreeSet<u32> = maps.services.values().map(|v| v.id).collect();
    assert!(
        new_ids.is_disjoint(&old_ids),
        "fresh ids: {new_ids:?} {old_ids:?}"
    );
    // A program that read an adopted entry just before it was replaced may still read its
    // slots: they stay for this sync.
    assert!(old_ids.is_subset(&ids_of(&maps)));
    assert_eq!(maps.ranges, old_ranges, "the range x still wants stays");
    assert_no_drift(&planner, &maps);
    sync(&mut planner, &mut maps, &[]);
    assert!(ids_of(&maps).is_disjoint(&old_ids));
    assert_no_leftovers(&maps);
    assert_eq!(maps.ranges, old_ranges);
    assert_no_drift(&planner, &maps);
}

#[test]
fn an_adopted_entry_whose_port_fails_keeps_serving_until_the_port_succeeds() {
    let (mut planner, mut maps, x) = adopted();
    let y_id = maps.services[&service_key("198.18.128.11")].id;
    let lb = {
        let mut k = service_key("198.18.210.1");
        k.scope = switchyard_common::SCOPE_EXTERNAL;
        k
    };
    let before = served(&maps, &lb);
    // No room for x's new sets next to the old ones.
    maps.capacity.backends = Some(maps.backends.len() + 1);
    assert!(planner.begin_sync(&mut maps).is_empty());
    let plan = planner
        .plan_sync(&[(x.key.clone(), Some(&x))])
        .collecting_garbage();
    let outcome = planner.run(plan, &mut maps);
    assert_eq!(outcome.failed.len(), 1);
    assert_eq!(served(&maps, &lb), before, "the adopted entry still serves");
    assert!(!maps.services.contains_key(&service_key("198.18.128.11")));
    assert_no_drift(&planner, &maps);
    sync(&mut planner, &mut maps, &[]);
    assert_eq!(
        served(&maps, &lb),
        before,
        "and its slots survive the next sync"
    );
    assert_eq!(maps.ranges.len(), 1, "as does its source range");
    // y's old set is unused now and has gone; x's is still in use.
    assert!(!ids_of(&maps).contains(&y_id));
    maps.capacity.backends = None;
    let outcome = put(&mut planner, &mut maps, &[&x]);
    assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
    sync(&mut planner, &mut maps, &[]);
    assert_no_leftovers(&maps);
    assert_eq!(maps.ranges.len(), 1);
    assert_no_drift(&planner, &maps);
}

#[test]
fn an_adopted_entry_whose_port_goes_away_before_it_succeeded_is_removed() {
    let (mut planner, mut maps, x) = adopted();
    maps.capacity.backends = Some(maps.backends.len());
    assert!(planner.begin_sync(&mut maps).is_empty());
    let plan = planner
        .plan_sync(&[(x.key.clone(), Some(&x))])
        .collecting_garbage();
    assert_eq!(planner.run(plan, &mut maps).failed.len(), 1);
    sync(&mut planner, &mut maps, &[(x.key.clone(), None)]);
    assert!(maps.services.is_empty());
    // A program that read the LoadBalancer entry just before it went may still look up its
    // source range: it goes one sync later, with the slots.
    assert_eq!(maps.ranges.len(), 1);
    sync(&mut planner, &mut maps, &[]);
    assert!(
        maps.backends.is_empty() && maps.ranges.is_empty(),
        "{maps:?}"
    );
    assert_no_drift(&planner, &maps);
}
