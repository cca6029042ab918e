//! The (frontend, backend) pairs local connected UDP sockets may use, which the dataplane
//! compares before and after a sync to find the sockets to destroy.
use std::collections::BTreeSet;

use switchyard_common::SockTermKey;

use super::*;
use crate::FrontendKind;

fn udp(name: &str, eps: &[&str]) -> ServicePort {
    let mut p = port(
        name,
        &[
            (FrontendKind::ClusterIp, "198.18.128.53"),
            (FrontendKind::ExternalIp, "203.0.113.53"),
        ],
        eps.iter().map(|e| endpoint(e, true)).collect(),
    );
    p.key.protocol = Protocol::Udp;
    p
}

fn pair(frontend: &str, backend_ip: &str) -> SockTermKey {
    let f = service_key(frontend);
    let b = backend(backend_ip);
    SockTermKey {
        frontend_addr: f.addr,
        backend_addr: b.addr,
        frontend_port: f.port,
        backend_port: b.port,
    }
}

#[test]
fn every_socket_frontend_pairs_with_every_backend_and_a_removed_backend_leaves_its_pairs() {
    let mut planner = Planner::default();
    let mut maps = FakeMaps::default();
    let before = udp("dns", &["198.19.1.1", "198.19.1.2"]);
    assert!(put(&mut planner, &mut maps, &[&before]).failed.is_empty());
    let all = planner.udp_socket_routes(&before.key);
    // Socket-scope entries only (the ClusterIP and the external IP from local sockets).
    let expected: BTreeSet<SockTermKey> = ["198.18.128.53", "203.0.113.53"]
        .iter()
        .flat_map(|f| ["198.19.1.1", "198.19.1.2"].map(|b| pair(f, b)))
        .collect();
    assert_eq!(all, expected);

    let after = udp("dns", &["198.19.1.1"]);
    assert!(put(&mut planner, &mut maps, &[&after]).failed.is_empty());
    let gone: BTreeSet<SockTermKey> = all
        .difference(&planner.udp_socket_routes(&after.key))
        .copied()
        .collect();
    assert_eq!(
        gone,
        BTreeSet::from([
            pair("198.18.128.53", "198.19.1.2"),
            pair("203.0.113.53", "198.19.1.2")
        ])
    );

    // Removing the port strands every pair.
    assert!(sync(&mut planner, &mut maps, &[(after.key.clone(), None)])
        .failed
        .is_empty());
    assert!(planner.udp_socket_routes(&after.key).is_empty());
}

#[test]
fn tcp_ports_have_no_udp_routes() {
    let mut planner = Planner::default();
    let mut maps = FakeMaps::default();
    let web = cluster("web", "198.18.128.80", &["198.19.1.1"]);
    assert!(put(&mut planner, &mut maps, &[&web]).failed.is_empty());
    assert!(planner.udp_socket_routes(&web.key).is_empty());
}

#[test]
fn a_full_sync_after_adoption_finds_the_pairs_a_previous_instance_left() {
    // The previous instance served two backends; one went while no controller ran.
    let (mut previous, mut maps) = (Planner::default(), FakeMaps::default());
    let before = udp("dns", &["198.19.1.1", "198.19.1.2"]);
    assert!(put(&mut previous, &mut maps, &[&before]).failed.is_empty());
    let mut planner = Planner::default();
    observe(&mut planner, &maps);
    // A fresh planner owns no port yet, so only the maps' view knows the old pairs.
    assert!(planner.udp_socket_routes(&before.key).is_empty());
    let old = planner.all_udp_socket_routes();
    assert_eq!(old, previous.udp_socket_routes(&before.key));

    let after = udp("dns", &["198.19.1.1"]);
    assert!(planner.begin_sync(&mut maps).is_empty());
    let plan = planner
        .plan_sync(&[(after.key.clone(), Some(&after))])
        .collecting_garbage();
    assert!(planner.run(plan, &mut maps).failed.is_empty());
    let gone: BTreeSet<SockTermKey> = old
        .difference(&planner.all_udp_socket_routes())
        .copied()
        .collect();
    assert_eq!(
        gone,
        BTreeSet::from([
            pair("198.18.128.53", "198.19.1.2"),
            pair("203.0.113.53", "198.19.1.2")
        ])
    );
}

#[test]
fn ipv6_socket_frontends_pair_with_their_ipv6_backends_only() {
    use super::super::fake::FakeMaps6;
    use super::super::{Family, Planner6, V6};
    use switchyard_common::{SockTermKey6, PROTO_UDP, SCOPE_SOCKET};

    let dual = |eps: &[&str]| {
        let mut p = port(
            "dns",
            &[
                (FrontendKind::ClusterIp, "198.18.128.53"),
                (FrontendKind::ClusterIp, "2001:db8:5::53"),
            ],
            eps.iter().map(|e| endpoint(e, true)).collect(),
        );
        p.key.protocol = Protocol::Udp;
        p
    };
    let pair6 = |backend_ip: &str| {
        let f = V6::key(
            "2001:db8:5::53".parse().expect("literal"),
            80,
            PROTO_UDP,
            SCOPE_SOCKET,
        )
        .expect("IPv6");
        let b = V6::backend(backend_ip.parse().expect("literal"), 8080).expect("IPv6");
        V6::term_key(&f, &b)
    };
    let (mut planner6, mut maps6) = (Planner6::default(), FakeMaps6::default());
    let mut sync6 = |p: &ServicePort| {
        assert!(planner6.begin_sync(&mut maps6).is_empty());
        let plan = planner6.plan_sync(&[(p.key.clone(), Some(p))]);
        assert!(planner6.run(plan, &mut maps6).failed.is_empty());
        planner6.udp_socket_routes(&p.key)
    };
    let before = dual(&["198.19.1.1", "2001:db8:1::1", "2001:db8:1::2"]);
    let all = sync6(&before);
    let expected: BTreeSet<SockTermKey6> = ["2001:db8:1::1", "2001:db8:1::2"].map(pair6).into();
    assert_eq!(all, expected);

    let after = dual(&["198.19.1.1", "2001:db8:1::1"]);
    let gone: BTreeSet<SockTermKey6> = all.difference(&sync6(&after)).copied().collect();
    assert_eq!(gone, BTreeSet::from([pair6("2001:db8:1::2")]));
}
