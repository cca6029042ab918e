use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use switchyard_common::{
    Backend, CtKey, CtValue, CT_FLAG_REPLY, CT_FLAG_SNAT, CT_STATE_FIN, CT_STATE_RST,
    CT_STATE_SEEN, PROTO_TCP, PROTO_UDP,
};

use super::{expired, flow_state, partner_key, recently_active, sweep, FlowState, FlowTimeouts};

const SEC: u64 = 1_000_000_000;

fn be(addr: [u8; 4]) -> u32 {
    u32::from(Ipv4Addr::from(addr)).to_be()
}

const CLIENT: [u8; 4] = [203, 0, 113, 7];
const FRONTEND: [u8; 4] = [198, 18, 0, 11];
const BACKEND: [u8; 4] = [198, 19, 1, 12];
const NODE: [u8; 4] = [198, 18, 0, 11];

fn key(src: ([u8; 4], u16), dst: ([u8; 4], u16), proto: u8) -> CtKey {
    CtKey {
        src_addr: be(src.0),
        dst_addr: be(dst.0),
        src_port: src.1.to_be(),
        dst_port: dst.1.to_be(),
        proto,
        pad: [0; 3],
    }
}

/// Both entries of a DNAT-only flow from `client_port`, as the programs write them.
fn dnat_flow(
    proto: u8,
    client_port: u16,
    fwd: (u16, u64),
    rep: (u16, u64),
) -> [(CtKey, CtValue); 2] {
    let client = (CLIENT, client_port);
    [
        (
            key(client, (FRONTEND, 30080), proto),
            CtValue {
                addr: be(BACKEND),
                port: 8080u16.to_be(),
                state: fwd.0,
                last_seen_ns: fwd.1,
                ..CtValue::default()
            },
        ),
        (
            key((BACKEND, 8080), client, proto),
            CtValue {
                addr: be(FRONTEND),
                port: 30080u16.to_be(),
                flags: CT_FLAG_REPLY,
                state: rep.0,
                last_seen_ns: rep.1,
                ..CtValue::default()
            },
        ),
    ]
}

/// Both entries of a source-NATed flow (node port `nat_port`).
fn snat_flow(client_port: u16, nat_port: u16, seen: u64) -> [(CtKey, CtValue); 2] {
    let client = (CLIENT, client_port);
    [
        (
            key(client, (FRONTEND, 30080), PROTO_TCP),
            CtValue {
                addr: be(BACKEND),
                port: 8080u16.to_be(),
                flags: CT_FLAG_SNAT,
                nat_addr: be(NODE),
                nat_port: nat_port.to_be(),
                state: CT_STATE_SEEN,
                last_seen_ns: seen,
            },
        ),
        (
            key((BACKEND, 8080), (NODE, nat_port), PROTO_TCP),
            CtValue {
                addr: be(FRONTEND),
                port: 30080u16.to_be(),
                flags: CT_FLAG_REPLY | CT_FLAG_SNAT,
                nat_addr: be(CLIENT),
                nat_port: client_port.to_be(),
                state: CT_STATE_SEEN,
                last_seen_ns: seen,
            },
        ),
    ]
}

#[test]
fn each_entry_names_the_other_direction() {
    for [(fk, fv), (rk, rv)] in [
        dnat_flow(PROTO_TCP, 40000, (0, 0), (0, 0)),
        dnat_flow(PROTO_UDP, 40000, (0, 0), (0, 0)),
        snat_flow(40000, 33000, 0),
    ] {
        assert_eq!(partner_key(&fk, &fv), rk);
        assert_eq!(partner_key(&rk, &rv), fk);
    }
}

#[test]
fn tcp_states_follow_both_directions_bits() {
    let fin = CT_STATE_SEEN | CT_STATE_FIN;
    let rst = CT_STATE_SEEN | CT_STATE_RST;
    let cases = [
        // (forward bits, reply bits, state)
        (CT_STATE_SEEN, 0, FlowState::Unanswered),
        (CT_STATE_SEEN, CT_STATE_SEEN, FlowState::Established),
        (fin, CT_STATE_SEEN, FlowState::ClientClosed),
        (CT_STATE_SEEN, fin, FlowState::BackendClosed),
        (fin, fin, FlowState::Closed),
        (rst, CT_STATE_SEEN, FlowState::Reset),
        (CT_STATE_SEEN, rst, FlowState::Reset),
        (fin, rst, FlowState::Reset),
    ];
    for (sent, answered, want) in cases {
        let [(_, f), (_, r)] = dnat_flow(PROTO_TCP, 1, (sent, 0), (answered, 0));
        assert_eq!(
            flow_state(PROTO_TCP, Some(&f), Some(&r)),
            want,
            "forward {sent:#x}, reply {answered:#x}"
        );
    }
    let [(_, f), (_, r)] = dnat_flow(PROTO_TCP, 1, (CT_STATE_SEEN, 0), (CT_STATE_SEEN, 0));
    assert_eq!(
        flow_state(PROTO_TCP, Some(&f), None),
        FlowState::Unanswered,
        "a flow without its reply entry is not answered any more"
    );
    assert_eq!(flow_state(PROTO_TCP, None, Some(&r)), FlowState::Unanswered);
}

#[test]
fn udp_is_answered_once_a_reply_passed() {
    let [(_, f), (_, r)] = dnat_flow(PROTO_UDP, 1, (CT_STATE_SEEN, 0), (0, 0));
    assert_eq!(
        flow_state(PROTO_UDP, Some(&f), Some(&r)),
        FlowState::UdpUnanswered
    );
    let [(_, f), (_, r)] = dnat_flow(PROTO_UDP, 1, (CT_STATE_SEEN, 0), (CT_STATE_SEEN, 0));
    assert_eq!(
        flow_state(PROTO_UDP, Some(&f), Some(&r)),
        FlowState::UdpAnswered
    );
}

#[test]
fn a_flow_expires_when_idle_longer_than_its_state_allows_from_its_later_direction() {
    let t = FlowTimeouts::default();
    // Established: 5 days. The reply direction was busy until 100 s, the requests stopped at 1 s.
    let [(_, f), (_, r)] = dnat_flow(
        PROTO_TCP,
        1,
        (CT_STATE_SEEN, SEC),
        (CT_STATE_SEEN, 100 * SEC),
    );
    let five_days = 5 * 24 * 3600 * SEC;
    assert!(!expired(
        PROTO_TCP,
        Some(&f),
        Some(&r),
        100 * SEC + five_days,
        &t
    ));
    assert!(expired(
        PROTO_TCP,
        Some(&f),
        Some(&r),
        101 * SEC + five_days,
        &t
    ));
    // Closed (both FINs): time_wait, 120 s.
    let fin = CT_STATE_SEEN | CT_STATE_FIN;
    let [(_, f), (_, r)] = dnat_flow(PROTO_TCP, 1, (fin, 10 * SEC), (fin, 10 * SEC));
    assert!(!expired(PROTO_TCP, Some(&f), Some(&r), 130 * SEC, &t));
    assert!(expired(PROTO_TCP, Some(&f), Some(&r), 131 * SEC, &t));
    // Reset: close, 10 s.
    let [(_, f), (_, r)] = dnat_flow(PROTO_TCP, 1, (CT_STATE_SEEN | CT_STATE_RST, 0), (0, 0));
    assert!(!expired(PROTO_TCP, Some(&f), Some(&r), 10 * SEC, &t));
    assert!(expired(PROTO_TCP, Some(&f), Some(&r), 10 * SEC + 1, &t));
    // A last packet after the clock reading (another CPU) is not idle at all.
    let [(_, f), (_, r)] = dnat_flow(PROTO_UDP, 1, (CT_STATE_SEEN, 50 * SEC), (0, 0));
    assert!(!expired(PROTO_UDP, Some(&f), Some(&r), 40 * SEC, &t));
}

#[test]
fn netfilter_sysctls_override_the_defaults_they_name() {
    let t = FlowTimeouts::from_netfilter(|name| match name {
        "nf_conntrack_tcp_timeout_established" => Some(86_400),
        "nf_conntrack_tcp_timeout_time_wait" => Some(1),
        "nf_conntrack_udp_timeout" => Some(5),
        _ => None,
    });
    assert_eq!(t.tcp_established, Duration::from_secs(86_400));
    assert_eq!(t.tcp_time_wait, Duration::from_secs(1));
    assert_eq!(t.udp, Duration::from_secs(5));
    let d = FlowTimeouts::default();
    assert_eq!(
        (t.tcp_syn_sent, t.tcp_close, t.udp_stream),
        (d.tcp_syn_sent, d.tcp_close, d.udp_stream)
    );
    assert_eq!(FlowTimeouts::from_netfilter(|_| None), d);
}

fn sorted(mut keys: Vec<CtKey>) -> Vec<CtKey> {
    keys.sort_by_key(|k| (k.src_addr, k.dst_addr, k.src_port, k.dst_port, k.proto));
    keys
}

#[test]
fn a_sweep_deletes_both_directions_of_ended_flows_and_nothing_else() {
    let t = FlowTimeouts {
        tcp_time_wait: Duration::from_secs(1),
        ..FlowTimeouts::default()
    };
    let fin = CT_STATE_SEEN | CT_STATE_FIN;
    let closed = dnat_flow(PROTO_TCP, 1, (fin, 0), (fin, 0));
    let open = dnat_flow(PROTO_TCP, 2, (CT_STATE_SEEN, 0), (CT_STATE_SEEN, 0));
    let snat_idle = snat_flow(3, 33000, 0);
    let mut entries: Vec<(CtKey, CtValue)> = Vec::new();
    entries.extend(closed);
    entries.extend(open);
    entries.extend(snat_idle);
    let now = 5 * SEC;
    let result = sweep(&entries, now, Some(&t), &BTreeSet::new());
    assert_eq!(
        sorted(result.delete.clone()),
        sorted(vec![closed[0].0, closed[1].0]),
        "only the closed flow, both its entries"
    );
    assert_eq!((result.expired, result.to_gone_backends), (1, 0));

    // Between verifies no lifetime is checked.
    assert!(sweep(&entries, now, None, &BTreeSet::new())
        .delete
        .is_empty());

    // An established flow past its (here short) timeout goes too, whatever direction was busy.
    let t = FlowTimeouts {
        tcp_established: Duration::from_secs(3),
        ..t
    };
    let result = sweep(&entries, now, Some(&t), &BTreeSet::new());
    assert_eq!(result.delete.len(), 6, "{result:?}");
}

#[test]
fn udp_flows_to_gone_backends_go_whatever_their_age_and_tcp_flows_stay() {
    let a = dnat_flow(
        PROTO_UDP,
        1,
        (CT_STATE_SEEN, 10 * SEC),
        (CT_STATE_SEEN, 10 * SEC),
    );
    let b = snat_flow(2, 33001, 10 * SEC);
    let mut entries: Vec<(CtKey, CtValue)> = a.to_vec();
    entries.extend(b);
    let gone: BTreeSet<Backend> = [Backend {
        addr: be(BACKEND),
        port: 8080u16.to_be(),
        pad: 0,
    }]
    .into();
    let result = sweep(&entries, 10 * SEC, None, &gone);
    // The UDP flow goes; the TCP one (b, source-NATed) is left to end, as upstream leaves
    // TCP conntrack entries to a removed endpoint alone.
    assert_eq!(sorted(result.delete), sorted(vec![a[0].0, a[1].0]));
    assert_eq!((result.expired, result.to_gone_backends), (0, 1));
    let other: BTreeSet<Backend> = [Backend {
        addr: be(BACKEND),
        port: 9090u16.to_be(),
        pad: 0,
    }]
    .into();
    assert!(sweep(&entries, 10 * SEC, None, &other).delete.is_empty());
}

#[test]
fn an_entry_without_its_other_direction_gets_the_unanswered_timeout() {
    let t = FlowTimeouts::default();
    let [forward, reply] = dnat_flow(PROTO_TCP, 1, (CT_STATE_SEEN, 0), (CT_STATE_SEEN, 0));
    // Just written (the other insert is in flight, or the pass read one and not the other):
    // kept.
    for orphan in [forward, reply] {
        let kept = sweep(&[orphan], 60 * SEC, Some(&t), &BTreeSet::new());
        assert!(kept.delete.is_empty());
        let gone = sweep(&[orphan], 121 * SEC, Some(&t), &BTreeSet::new());
        assert_eq!(gone.delete, vec![orphan.0]);
    }
}

#[test]
fn an_entry_of_another_flow_at_the_partner_key_is_not_taken_for_the_partner() {
    let t = FlowTimeouts::default();
    let [forward, mut reply] = dnat_flow(PROTO_TCP, 1, (CT_STATE_SEEN, 0), (CT_STATE_SEEN, 0));
    // The reply tuple belongs to a flow through another frontend (the programs never let
    // two flows share one, but the map is read entry by entry while it changes).
    reply.1.port = 30081u16.to_be();
    let result = sweep(&[forward, reply], 200 * SEC, Some(&t), &BTreeSet::new());
    // Each is an orphan past the unanswered timeout, judged (and counted) alone.
    assert_eq!(result.expired, 2);
    assert_eq!(sorted(result.delete), sorted(vec![forward.0, reply.0]));
}

#[test]
fn a_flow_is_recently_active_while_either_direction_passed_a_packet_within_the_quiet_time() {
    let quiet = Duration::from_secs(1);
    let now = 100 * SEC;
    // Client quiet for 5 s, the backend answered 0.5 s ago: active, counted once.
    let talking = dnat_flow(
        PROTO_TCP,
        40000,
        (CT_STATE_SEEN, now - 5 * SEC),
        (CT_STATE_SEEN, now - SEC / 2),
    );
    // Both directions quiet for 2 s: over, as far as a handover is concerned.
    let quiet_flow = dnat_flow(
        PROTO_TCP,
        40001,
        (CT_STATE_SEEN, now - 2 * SEC),
        (CT_STATE_SEEN, now - 2 * SEC),
    );
    let snat = snat_flow(40002, 40123, now - SEC / 10);
    let mut entries: Vec<(CtKey, CtValue)> =
        talking.into_iter().chain(quiet_flow).chain(snat).collect();
    assert_eq!(recently_active(&entries, now, quiet), 2);
    // A reply entry whose original is gone counts by itself.
    entries.retain(|(k, _)| *k != snat[0].0);
    assert_eq!(recently_active(&entries, now, quiet), 2);
    assert_eq!(recently_active(&entries, now + 2 * SEC, quiet), 0);
    assert_eq!(recently_active(&[], now, quiet), 0);
}

/// `SWY_CONNTRACK6` is judged as `SWY_CONNTRACK`: both entries of an IPv6 flow go together,
/// when idle too long or when its UDP backend left; a live one stays.
#[test]
fn ipv6_flows_are_swept_both_directions_together() {
    use super::{sweep_family, V6};
    use switchyard_common::{Backend6, CtKey6, CtValue6};
    let addr = |last: u32| [0x2001_0db8_u32.to_be(), 0, 0, last.to_be()];
    let (client, frontend, backend) = (addr(7), addr(0x11), addr(0x12));
    let key = |src: ([u32; 4], u16), dst: ([u32; 4], u16)| CtKey6 {
        src_addr: src.0,
        dst_addr: dst.0,
        src_port: src.1.to_be(),
        dst_port: dst.1.to_be(),
        proto: PROTO_UDP,
        pad: [0; 3],
    };
    let flow = |port: u16, last_seen_ns: u64| {
        [
            (
                key((client, port), (frontend, 30080)),
                CtValue6 {
                    addr: backend,
                    port: 8080u16.to_be(),
                    state: CT_STATE_SEEN,
                    last_seen_ns,
                    ..CtValue6::default()
                },
            ),
            (
                key((backend, 8080), (client, port)),
                CtValue6 {
                    addr: frontend,
                    port: 30080u16.to_be(),
                    flags: CT_FLAG_REPLY,
                    state: CT_STATE_SEEN,
                    last_seen_ns,
                    ..CtValue6::default()
                },
            ),
        ]
    };
    let (old, live) = (flow(40001, 0), flow(40002, 1000 * SEC));
    let entries: Vec<(CtKey6, CtValue6)> = old.iter().chain(&live).copied().collect();
    let timeouts = FlowTimeouts::default();
    let now = 1000 * SEC + 1;
    let swept = sweep_family::<V6>(&entries, now, Some(&timeouts), &BTreeSet::new());
    assert_eq!(swept.expired, 1);
    let mut want = vec![old[0].0, old[1].0];
    let mut got = swept.delete.clone();
    want.sort_by_key(|k| (k.src_addr, k.src_port));
    got.sort_by_key(|k| (k.src_addr, k.src_port));
    assert_eq!(got, want);

    // The backend left: its UDP flows go at once, idle or not.
    let gone: BTreeSet<Backend6> = [Backend6 {
        addr: backend,
        port: 8080u16.to_be(),
        pad: 0,
    }]
    .into();
    let swept = sweep_family::<V6>(&live, now, None, &gone);
    assert_eq!((swept.to_gone_backends, swept.delete.len()), (1, 2));
}
