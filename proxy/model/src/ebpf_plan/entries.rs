//! What one service port needs in the maps: its service entries (one per frontend and scope),
//! the endpoint set each one uses, and the backend slot layout of a set.
use switchyard_common::{
    PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SCOPE_SOCKET, SERVICE_FLAG_AFFINITY,
    SERVICE_FLAG_DROP_EMPTY, SERVICE_FLAG_MASQUERADE, SERVICE_FLAG_SOURCE_RANGES,
};

use super::Family;
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
pub(super) struct Entry<F: Family> {
    pub(super) key: F::Key,
    pub(super) set: SetKind,
    pub(super) flags: u16,
}

/// The service entries of one port in family `F`: every frontend of that family for local
/// sockets, and (where the packet path serves the family) the NodePort, externalIP and
/// LoadBalancer frontends once more for traffic from outside. None for an SCTP port: the
/// programs do not handle SCTP (the tc path would have to recompute its CRC32c over the whole
/// packet), ebpf mode serves those ports with netfilter rules instead.
pub(super) fn entries<F: Family>(port: &ServicePort) -> Vec<Entry<F>> {
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
        if frontend.kind == FrontendKind::NodePort
            && frontend.ip.is_loopback()
            && !F::LOOPBACK_NODEPORTS
        {
            continue; // `[::1]:nodePort` is not served, as upstream
        }
        let key = |scope| F::key(frontend.ip, frontend.port, proto, scope);
        let Some(socket_key) = key(SCOPE_SOCKET) else {
            continue; // the other family's planner
        };
        let socket_set = if frontend.kind == FrontendKind::ClusterIp {
            SetKind::Internal
        } else {
            SetKind::Cluster
        };
        out.push(Entry {
            key: socket_key,
            set: socket_set,
            flags: affinity,
        });
        if frontend.kind == FrontendKind::ClusterIp || !F::PACKET_PATH {
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
        if let Some(external_key) = key(SCOPE_EXTERNAL) {
            out.push(Entry {
                key: external_key,
                set: SetKind::External,
                flags,
            });
        }
    }
    out
}

/// The backends of one set in family `F`, in the model's order, at most as many as a count
/// can hold.
pub(super) fn wanted_backends<F: Family>(port: &ServicePort, set: SetKind) -> Vec<F::Backend> {
    let endpoints = match set {
        SetKind::Internal => port.internal_endpoints(),
        SetKind::Cluster => port.cluster_endpoints(),
        SetKind::External => port.external_endpoints(),
    };
    endpoints
        .into_iter()
        .filter_map(backend_of::<F>)
        .take(usize::from(u16::MAX))
        .collect()
}

/// Slot assignment that keeps every backend still wanted in its old slot when that slot
/// still exists, and fills the holes with the new ones (in their given order).
pub(super) fn stable_slots<B: Copy + Default + PartialEq>(
    previous: &[B],
    wanted: Vec<B>,
) -> Vec<B> {
    let count = wanted.len();
    let mut slots: Vec<Option<B>> = vec![None; count];
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

/// The map value of an endpoint of family `F`.
pub(super) fn backend_of<F: Family>(endpoint: &Endpoint) -> Option<F::Backend> {
    F::backend(endpoint.ip, endpoint.port)
}
