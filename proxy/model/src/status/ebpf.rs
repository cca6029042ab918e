//! ebpf mode: the entries of the pinned maps -> rows.
//!
//! A service entry (`SWY_SERVICES`) is a frontend and scope pointing at a backend set (id,
//! count); the set's slots `0..count` are in `SWY_BACKENDS`; the names map (`SWY_SVC_NAMES`)
//! says which service port a set id belongs to. Whether a frontend is a cluster IP follows from
//! the entries alone: every other frontend has an entry for each scope, a cluster IP only the
//! socket one.
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use switchyard_common::{
    Backend, Backend6, BackendKey, ServiceKey, ServiceKey6, ServiceName, ServiceValue,
    SourceRangeKey, SCOPE_EXTERNAL, SERVICE_FLAG_AFFINITY, SERVICE_FLAG_DROP_EMPTY,
    SERVICE_FLAG_HANDOVER, SERVICE_FLAG_MASQUERADE, SERVICE_FLAG_SOURCE_RANGES,
};

use super::{
    protocol_name, share, sort_rows, BackendEntry, BackendRow, FrontendType, ServiceRow, Verdict,
};
use crate::ebpf_plan::{names, Family, SetKind, V4, V6};

/// A service key of either family: address, port, protocol, scope.
type Frontend = (IpAddr, u16, u8, u8);

/// The maps' contents as read from the kernel.
#[derive(Clone, Debug, Default)]
pub struct EbpfMaps {
    /// `SWY_SERVICES`.
    pub services: Vec<(ServiceKey, ServiceValue)>,
    /// `SWY_BACKENDS`.
    pub backends: Vec<(BackendKey, Backend)>,
    /// `SWY_SVC_NAMES`; `None` when it is not pinned (state of an older version).
    pub names: Option<Vec<(u32, ServiceName)>>,
    /// `SWY_SOURCE_RANGES`: key and prefix length in bits.
    pub source_ranges: Vec<(SourceRangeKey, u32)>,
    /// `SWY_SERVICES6` (empty when it is not pinned, as an older version left the maps).
    pub services6: Vec<(ServiceKey6, ServiceValue)>,
    /// `SWY_BACKENDS6`.
    pub backends6: Vec<(BackendKey, Backend6)>,
}

/// The rows of the maps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decoded {
    /// One row per service entry.
    pub services: Vec<ServiceRow>,
    /// One row per backend slot.
    pub backends: Vec<BackendEntry>,
    /// What the rows cannot show.
    pub notes: Vec<String>,
}

/// Decodes the maps into rows.
pub fn decode(maps: &EbpfMaps) -> Decoded {
    let mut notes = Vec::new();
    let names = read_names(maps.names.as_deref(), &mut notes);
    // Both families at once: their backend-set ids never meet (IPv6 ones start at
    // IPV6_SET_ID_BASE), so one slot table holds both.
    let entries: Vec<(Frontend, ServiceValue)> = maps
        .services
        .iter()
        .map(|(k, v)| (V4::parts(k), *v))
        .chain(maps.services6.iter().map(|(k, v)| (V6::parts(k), *v)))
        .collect();
    let slots: BTreeMap<BackendKey, (IpAddr, u16)> = maps
        .backends
        .iter()
        .map(|(k, b)| (*k, V4::backend_parts(b)))
        .chain(
            maps.backends6
                .iter()
                .map(|(k, b)| (*k, V6::backend_parts(b))),
        )
        .collect();
    let external: BTreeSet<(IpAddr, u16, u8)> = entries
        .iter()
        .filter(|((.., scope), _)| *scope == SCOPE_EXTERNAL)
        .map(|((addr, port, proto, _), _)| (*addr, *port, *proto))
        .collect();
    let mut ranges: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    for (key, prefix) in &maps.source_ranges {
        let client = Ipv4Addr::from(u32::from_be(key.client_addr));
        // The LoadBalancer IP's 32 bits come first in the prefix.
        let bits = prefix.saturating_sub(32);
        ranges
            .entry(Ipv4Addr::from(u32::from_be(key.lb_addr)).into())
            .or_default()
            .push(format!("{client}/{bits}"));
    }

    let mut services = Vec::new();
    let mut unnamed = 0;
    for (key, value) in &entries {
        let name = names.get(&value.id);
        if name.is_none() {
            unnamed += 1;
        }
        let frontend = (key.0, key.1, key.2);
        let row = row(
            key,
            value,
            name,
            external.contains(&frontend),
            &slots,
            &ranges,
        );
        for slot in 0..u32::from(value.count) {
            if !slots.contains_key(&BackendKey {
                service_id: value.id,
                slot,
            }) {
                notes.push(format!(
                    "{}: backend set {} has no slot {slot} (a connection that picks it fails)",
                    frontend_text(&row),
                    value.id
                ));
            }
        }
        services.push(row);
    }
    sort_rows(&mut services);
    let handed_over = entries
        .iter()
        .filter(|(_, v)| v.flags & SERVICE_FLAG_HANDOVER != 0)
        .count();
    if handed_over > 0 {
        notes.push(format!(
            "{handed_over} packet-path entries are handed over to iptables mode: the tc programs \
             start no new flow there and finish the ones they translate"
        ));
    }
    let socket_only6 = services
        .iter()
        .filter(|r| r.kind == FrontendType::External && r.address.is_some_and(|a| a.is_ipv6()))
        .count();
    if socket_only6 > 0 {
        notes.push(format!(
            "{socket_only6} IPv6 NodePort, externalIP or LoadBalancer entries serve this node's \
             sockets only: the packet programs are IPv4-only, IPv6 traffic from outside is not served"
        ));
    }
    if unnamed > 0 && maps.names.is_some() {
        notes.push(format!(
            "{unnamed} service entries point at backend sets the names map does not name"
        ));
    }

    let counted: BTreeMap<u32, u16> =
        entries
            .iter()
            .fold(BTreeMap::new(), |mut counts, (_, value)| {
                let count = counts.entry(value.id).or_insert(0);
                *count = (*count).max(value.count);
                counts
            });
    let backends = slots
        .iter()
        .map(|(key, (address, port))| {
            let name = names.get(&key.service_id);
            BackendEntry {
                service: name.map(|(n, _)| n.clone()),
                address: *address,
                port: *port,
                id: Some(key.service_id),
                slot: Some(key.slot),
                set: name.map(|(_, set)| set.as_str()),
                chain: None,
                in_use: counted
                    .get(&key.service_id)
                    .is_some_and(|count| key.slot < u32::from(*count)),
            }
        })
        .collect();
    Decoded {
        services,
        backends,
        notes,
    }
}

/// Set id -> (service port as text, set), from the names map.
fn read_names(
    names: Option<&[(u32, ServiceName)]>,
    notes: &mut Vec<String>,
) -> BTreeMap<u32, (String, SetKind)> {
    let Some(names) = names else {
        notes.push(
            "the names map (SWY_SVC_NAMES) is not pinned, as an older version left the maps: \
             services are shown by backend-set id"
                .to_owned(),
        );
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    let mut unreadable = 0;
    for (id, value) in names {
        match names::decode(value) {
            Some((key, set)) => drop(out.insert(*id, (key.to_string(), set))),
            None => unreadable += 1,
        }
    }
    if unreadable > 0 {
        notes.push(format!(
            "{unreadable} entries of the names map cannot be read by this version"
        ));
    }
    out
}

fn row(
    key: &Frontend,
    value: &ServiceValue,
    name: Option<&(String, SetKind)>,
    has_external_entry: bool,
    slots: &BTreeMap<BackendKey, (IpAddr, u16)>,
    ranges: &BTreeMap<IpAddr, Vec<String>>,
) -> ServiceRow {
    let (addr, port, proto, scope) = *key;
    let count = u32::from(value.count);
    let backends: Vec<BackendRow> = (0..count)
        .filter_map(|slot| {
            let (address, port) = slots.get(&BackendKey {
                service_id: value.id,
                slot,
            })?;
            Some(BackendRow {
                address: *address,
                port: *port,
                // The programs pick a slot uniformly at random.
                probability: share(1.0 / f64::from(count)),
                slot: Some(slot),
                chain: None,
            })
        })
        .collect();
    let flag = |bit: u16| value.flags & bit != 0;
    let verdict = (count == 0).then_some(if flag(SERVICE_FLAG_DROP_EMPTY) {
        Verdict::Drop
    } else {
        Verdict::Reject
    });
    let mut source_ranges = if flag(SERVICE_FLAG_SOURCE_RANGES) {
        ranges.get(&addr).cloned().unwrap_or_default()
    } else {
        Vec::new()
    };
    source_ranges.sort();
    ServiceRow {
        service: name.map(|(n, _)| n.clone()),
        // IPv6 frontends have socket entries only (the packet path serves no IPv6): there
        // the set tells, as cluster IPs use the internal set and the others the cluster set.
        kind: if has_external_entry || name.is_some_and(|(_, set)| *set != SetKind::Internal) {
            FrontendType::External
        } else {
            FrontendType::ClusterIp
        },
        address: Some(addr),
        port,
        protocol: protocol_name(proto),
        scope: Some(if scope == SCOPE_EXTERNAL {
            "external"
        } else {
            "socket"
        }),
        id: Some(value.id),
        chain: None,
        affinity_timeout_seconds: flag(SERVICE_FLAG_AFFINITY).then_some(value.affinity_timeout),
        masquerade: flag(SERVICE_FLAG_MASQUERADE),
        source_ranges,
        verdict,
        backends,
    }
}

/// `address:port/PROTOCOL (scope)` of a row, for notes.
fn frontend_text(row: &ServiceRow) -> String {
    let address = row
        .address
        .map(|a| SocketAddr::new(a, row.port).to_string())
        .unwrap_or_else(|| format!("*:{}", row.port));
    format!("{address}/{} ({})", row.protocol, row.scope.unwrap_or("-"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Protocol, ServicePortKey};
    use switchyard_common::{PROTO_TCP, PROTO_UDP, SCOPE_SOCKET};

    fn ip(text: &str) -> u32 {
        u32::from(text.parse::<Ipv4Addr>().expect("ip")).to_be()
    }

    fn service(addr: &str, port: u16, proto: u8, scope: u8) -> ServiceKey {
        ServiceKey {
            addr: ip(addr),
            port: port.to_be(),
            proto,
            scope,
        }
    }

    fn value(id: u32, count: u16, flags: u16) -> ServiceValue {
        ServiceValue {
            id,
            count,
            flags,
            affinity_timeout: if flags & SERVICE_FLAG_AFFINITY != 0 {
                10800
            } else {
                0
            },
            pad: 0,
        }
    }

    fn slot(id: u32, slot: u32, addr: &str, port: u16) -> (BackendKey, Backend) {
        (
            BackendKey {
                service_id: id,
                slot,
            },
            Backend {
                addr: ip(addr),
                port: port.to_be(),
                pad: 0,
            },
        )
    }

    fn name(port: &str, protocol: Protocol, set: SetKind) -> ServiceName {
        names::encode(
            &ServicePortKey {
                namespace: "demo".into(),
                name: "web".into(),
                port_name: port.into(),
                protocol,
            },
            set,
        )
    }

    /// A ClusterIP with two backends, a NodePort (both scopes, Local policy without a local
    /// endpoint outside, affinity), a UDP ClusterIP without endpoints, a LoadBalancer IP with
    /// source ranges, and a doomed slot beyond a count.
    fn maps() -> EbpfMaps {
        let nodeport = SERVICE_FLAG_AFFINITY;
        EbpfMaps {
            services: vec![
                (
                    service("198.18.128.10", 80, PROTO_TCP, SCOPE_SOCKET),
                    value(1, 2, 0),
                ),
                (
                    service("198.18.0.11", 30080, PROTO_TCP, SCOPE_SOCKET),
                    value(2, 1, nodeport),
                ),
                (
                    service("198.18.0.11", 30080, PROTO_TCP, SCOPE_EXTERNAL),
                    value(3, 0, nodeport | SERVICE_FLAG_DROP_EMPTY),
                ),
                (
                    service("198.18.128.11", 53, PROTO_UDP, SCOPE_SOCKET),
                    value(4, 0, 0),
                ),
                (
                    service("203.0.113.200", 443, PROTO_TCP, SCOPE_EXTERNAL),
                    value(5, 1, SERVICE_FLAG_MASQUERADE | SERVICE_FLAG_SOURCE_RANGES),
                ),
            ],
            backends: vec![
                slot(1, 0, "198.19.1.11", 8080),
                slot(1, 1, "198.19.2.11", 8080),
                slot(1, 2, "198.19.2.12", 8080),
                slot(2, 0, "198.19.2.11", 8080),
                slot(5, 0, "198.19.2.12", 8443),
            ],
            names: Some(vec![
                (1, name("http", Protocol::Tcp, SetKind::Internal)),
                (2, name("np", Protocol::Tcp, SetKind::Cluster)),
                (3, name("np", Protocol::Tcp, SetKind::External)),
                (4, name("", Protocol::Udp, SetKind::Internal)),
            ]),
            source_ranges: vec![(
                SourceRangeKey {
                    lb_addr: ip("203.0.113.200"),
                    client_addr: ip("192.0.2.0"),
                },
                32 + 24,
            )],
            services6: vec![],
            backends6: vec![],
        }
    }

    /// Service, kind, frontend, scope, backends.
    type Summary<'a> = (
        Option<&'a str>,
        FrontendType,
        String,
        Option<&'a str>,
        Vec<String>,
    );

    #[test]
    fn entries_become_named_rows_with_their_slots() {
        let decoded = decode(&maps());
        let rows = &decoded.services;
        let summary: Vec<Summary> = rows
            .iter()
            .map(|r| {
                (
                    r.service.as_deref(),
                    r.kind,
                    format!("{}:{}/{}", r.address.expect("address"), r.port, r.protocol),
                    r.scope,
                    r.backends
                        .iter()
                        .map(|b| format!("{}:{}", b.address, b.port))
                        .collect(),
                )
            })
            .collect();
        let ext = FrontendType::External;
        assert_eq!(
            summary,
            [
                (
                    Some("demo/web/UDP"),
                    FrontendType::ClusterIp,
                    "198.18.128.11:53/UDP".to_owned(),
                    Some("socket"),
                    vec![]
                ),
                (
                    Some("demo/web:http/TCP"),
                    FrontendType::ClusterIp,
                    "198.18.128.10:80/TCP".to_owned(),
                    Some("socket"),
                    vec!["198.19.1.11:8080".to_owned(), "198.19.2.11:8080".to_owned()]
                ),
                (
                    Some("demo/web:np/TCP"),
                    ext,
                    "198.18.0.11:30080/TCP".to_owned(),
                    Some("socket"),
                    vec!["198.19.2.11:8080".to_owned()]
                ),
                (
                    Some("demo/web:np/TCP"),
                    ext,
                    "198.18.0.11:30080/TCP".to_owned(),
                    Some("external"),
                    vec![]
                ),
                (
                    None,
                    ext,
                    "203.0.113.200:443/TCP".to_owned(),
                    Some("external"),
                    vec!["198.19.2.12:8443".to_owned()]
                ),
            ]
        );
        let web = &rows[1];
        assert_eq!(web.backends[0].probability, 0.5);
        assert_eq!(web.backends[1].slot, Some(1));
        assert_eq!(web.verdict, None);
        assert_eq!(
            rows[0].verdict,
            Some(Verdict::Reject),
            "UDP without endpoints"
        );
        let outside = &rows[3];
        assert_eq!(
            outside.verdict,
            Some(Verdict::Drop),
            "Local without endpoint"
        );
        assert_eq!(outside.affinity_timeout_seconds, Some(10800));
        assert!(!outside.masquerade);
        let lb = &rows[4];
        assert!(lb.masquerade);
        assert_eq!(lb.source_ranges, ["192.0.2.0/24"]);
        assert_eq!(lb.affinity_timeout_seconds, None);
        assert_eq!(
            decoded.notes,
            ["1 service entries point at backend sets the names map does not name"]
        );
    }

    #[test]
    fn slots_beyond_every_count_are_listed_as_unused() {
        let decoded = decode(&maps());
        let unused: Vec<(Option<u32>, Option<u32>, bool)> = decoded
            .backends
            .iter()
            .map(|b| (b.id, b.slot, b.in_use))
            .collect();
        assert_eq!(
            unused,
            [
                (Some(1), Some(0), true),
                (Some(1), Some(1), true),
                (Some(1), Some(2), false),
                (Some(2), Some(0), true),
                (Some(5), Some(0), true),
            ]
        );
        assert_eq!(decoded.backends[3].set, Some("cluster"));
        assert_eq!(decoded.backends[4].service, None);
    }

    #[test]
    fn a_missing_slot_and_a_missing_names_map_are_noted() {
        let mut maps = maps();
        maps.backends.remove(1);
        maps.names = None;
        let decoded = decode(&maps);
        assert!(decoded.services.iter().all(|r| r.service.is_none()));
        assert_eq!(decoded.notes.len(), 2, "{:?}", decoded.notes);
        assert!(
            decoded.notes[0].contains("SWY_SVC_NAMES"),
            "{:?}",
            decoded.notes
        );
        assert_eq!(
            decoded.notes[1],
            "198.18.128.10:80/TCP (socket): backend set 1 has no slot 1 (a connection that picks it fails)"
        );
        let web = decoded
            .services
            .iter()
            .find(|r| r.id == Some(1))
            .expect("web");
        assert_eq!(web.backends.len(), 1, "only the slot that is there");
    }

    #[test]
    fn entries_handed_over_to_iptables_mode_are_noted() {
        let mut maps = maps();
        for (key, value) in &mut maps.services {
            if key.scope == SCOPE_EXTERNAL {
                value.flags |= SERVICE_FLAG_HANDOVER;
            }
        }
        let decoded = decode(&maps);
        assert!(
            decoded
                .notes
                .iter()
                .any(|n| n.starts_with("2 packet-path entries are handed over to iptables mode")),
            "{:?}",
            decoded.notes
        );
        assert!(!decode(&super::tests::maps())
            .notes
            .iter()
            .any(|n| n.contains("handed over")));
    }

    #[test]
    fn ipv6_entries_become_rows_beside_the_ipv4_ones() {
        let mut maps = maps();
        let id = switchyard_common::IPV6_SET_ID_BASE + 1;
        let v6 = |text: &str| text.parse::<IpAddr>().expect("ip");
        maps.services6 = vec![(
            V6::key(v6("2001:db8:128::10"), 80, PROTO_TCP, SCOPE_SOCKET).expect("IPv6"),
            value(id, 1, SERVICE_FLAG_AFFINITY),
        )];
        maps.backends6 = vec![(
            BackendKey {
                service_id: id,
                slot: 0,
            },
            V6::backend(v6("2001:db8:1::11"), 8080).expect("IPv6"),
        )];
        if let Some(names) = &mut maps.names {
            names.push((id, name("http", Protocol::Tcp, SetKind::Internal)));
        }
        let decoded = decode(&maps);
        let row = decoded
            .services
            .iter()
            .find(|r| r.address == Some(v6("2001:db8:128::10")))
            .expect("the IPv6 row");
        assert_eq!(row.service.as_deref(), Some("demo/web:http/TCP"));
        assert_eq!(row.kind, FrontendType::ClusterIp);
        assert_eq!(row.affinity_timeout_seconds, Some(10800));
        assert_eq!(row.backends.len(), 1);
        assert_eq!(row.backends[0].address, v6("2001:db8:1::11"));
        assert_eq!(row.backends[0].port, 8080);
        assert!(decoded
            .backends
            .iter()
            .any(|b| b.address == v6("2001:db8:1::11") && b.in_use));
        assert_eq!(decoded.services.len(), 6, "the IPv4 rows stay");

        // An IPv6 NodePort has only its socket entry, on the port's cluster set.
        let mut maps = maps.clone();
        maps.services6.push((
            V6::key(v6("2001:db8::11"), 30080, PROTO_TCP, SCOPE_SOCKET).expect("IPv6"),
            value(id + 1, 0, 0),
        ));
        if let Some(names) = &mut maps.names {
            names.push((id + 1, name("np", Protocol::Tcp, SetKind::Cluster)));
        }
        let decoded = decode(&maps);
        let row = decoded
            .services
            .iter()
            .find(|r| r.address == Some(v6("2001:db8::11")))
            .expect("the IPv6 NodePort row");
        assert_eq!(row.kind, FrontendType::External);
        assert!(
            decoded
                .notes
                .iter()
                .any(|n| n.starts_with("1 IPv6 NodePort, externalIP or LoadBalancer entries")),
            "{:?}",
            decoded.notes
        );
    }
}
