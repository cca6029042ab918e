//! What one service port needs in the maps: its service entries (one per frontend and scope),
//! the endpoint set each one uses, and the backend slot layout of a set.
use std::net::IpAddr;

use ipnet::IpNet;
use switchyard_common::{
    Backend, ServiceKey, SourceRangeKey, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SCOPE_SOCKET,
    SERVICE_FLAG_AFFINITY, SERVICE_FLAG_DROP_EMPTY, SERVICE_FLAG_MASQUERADE,
    SERVICE_FLAG_SOURCE_RANGES,
};

use super::RangeKey;
use crate::{Endpoint, FrontendKind, Protocol, ServicePort, TrafficPolicy};

/// Which endpoint set a frontend uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetKind {
    /// ClusterIP from local sockets: internalTrafficPolicy applies.
    Internal,
    /// NodePort, externalIPs, LoadBalancer IPs reached from a local socket: upstream sends
    /// node-local traffic to the cluster set even with externalTrafficPolicy Local.
    Cluster,
    /// NodePort, externalIPs, LoadBalancer IPs reached from outside the node (tc path):
    /// externalTrafficPolicy applies.
    External,
}

impl SetKind {
    /// Lower-case name, as `switchyard status` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            SetKind::Internal => "internal",
            SetKind::Cluster => "cluster",
            SetKind::External => "external",
        }
    }
}

/// One service entry to write: where, which set, which flags.
pub(super) struct Entry {
    pub(super) key: ServiceKey,
    pub(super) set: SetKind,
    pub(super) flags: u16,
}

/// The service entries of one port: every IPv4 frontend for local sockets, and the
/// NodePort, externalIP and LoadBalancer frontends once more for traffic from outside. None
/// for an SCTP port: the programs do not handle SCTP (the tc path would have to recompute its
/// CRC32c over the whole packet), ebpf mode serves those ports with netfilter rules instead.
pub(super) fn entries(port: &ServicePort) -> Vec<Entry> {
    let proto = match port.key.protocol {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
        Protocol::Sctp => return Vec::new(),
    };
    let affinity = if port.session_affinity_timeout.is_some() {
        SERVICE_FLAG_AFFINITY
    } else {
        0
    };
    let local_policy = port.external_traffic_policy == TrafficPolicy::Local;
    let mut out = Vec::new();
    for frontend in &port.frontends {
        let IpAddr::V4(ip) = frontend.ip else {
            continue; // IPv4 programs only
        };
        let key = |scope| ServiceKey {
            addr: u32::from(ip).to_be(),
            port: frontend.port.to_be(),
            proto,
            scope,
        };
        let socket_set = if frontend.kind == FrontendKind::ClusterIp {
            SetKind::Internal
        } else {
            SetKind::Cluster
        };
        out.push(Entry {
            key: key(SCOPE_SOCKET),
            set: socket_set,
            flags: affinity,
        });
        if frontend.kind == FrontendKind::ClusterIp {
            continue;
        }
        let mut flags = affinity;
        flags |= if local_policy {
            // Local policy keeps the client address and drops when no local endpoint.
            SERVICE_FLAG_DROP_EMPTY
        } else {
            SERVICE_FLAG_MASQUERADE
        };
        if frontend.kind == FrontendKind::LoadBalancer
            && !port.load_balancer_source_ranges.is_empty()
        {
            flags |= SERVICE_FLAG_SOURCE_RANGES;
        }
        out.push(Entry {
            key: key(SCOPE_EXTERNAL),
            set: SetKind::External,
            flags,
        });
    }
    out
}

/// The backends of one set, in the model's order, at most as many as a count can hold.
pub(super) fn wanted_backends(port: &ServicePort, set: SetKind) -> Vec<Backend> {
    let endpoints = match set {
        SetKind::Internal => port.internal_endpoints(),
        SetKind::Cluster => port.cluster_endpoints(),
        SetKind::External => port.external_endpoints(),
    };
    endpoints
        .into_iter()
        .filter_map(backend_of)
        .take(usize::from(u16::MAX))
        .collect()
}

/// LPM entries allowing `ranges` (IPv4 ones) to reach the LoadBalancer IP `lb_addr`.
pub(super) fn source_ranges(lb_addr: u32, ranges: &[IpNet]) -> Vec<RangeKey> {
    ranges
        .iter()
        .filter_map(|range| match range {
            IpNet::V4(net) => Some((
                SourceRangeKey {
                    lb_addr,
                    client_addr: u32::from(net.network()).to_be(),
                },
                // The LoadBalancer IP is always matched whole, then the range's bits.
                32 + u32::from(net.prefix_len()),
            )),
            IpNet::V6(_) => None,
        })
        .collect()
}

/// Slot assignment that keeps every backend still wanted in its old slot when that slot
/// still exists, and fills the holes with the new ones (in their given order).
pub(super) fn stable_slots(previous: &[Backend], wanted: Vec<Backend>) -> Vec<Backend> {
    let count = wanted.len();
    let mut slots: Vec<Option<Backend>> = vec![None; count];
    let mut placed = Vec::new();
    for (slot, backend) in previous.iter().enumerate().take(count) {
        if wanted.contains(backend) && !placed.contains(backend) {
            slots[slot] = Some(*backend);
            placed.push(*backend);
        }
    }
    let mut rest = wanted.into_iter().filter(|b| !placed.contains(b));
    slots
        .into_iter()
        .map(|slot| slot.or_else(|| rest.next()).unwrap_or_default())
        .collect()
}

/// The map value of an IPv4 endpoint.
pub(super) fn backend_of(endpoint: &Endpoint) -> Option<Backend> {
    match endpoint.ip {
        IpAddr::V4(ip) => Some(Backend {
            addr: u32::from(ip).to_be(),
            port: endpoint.port.to_be(),
            pad: 0,
        }),
        IpAddr::V6(_) => None,
    }
}
