//! Which conntrack entries iptables mode deletes after a sync: upstream's reconciler
//! (`pkg/proxy/conntrack/cleanup.go`, 1.33+), as a pure function of the desired state and the
//! entries the kernel listed.
//!
//! UDP has no connection end, so a conntrack entry that DNATs a flow to an endpoint keeps
//! doing so for as long as the client sends, whatever the rules now say. Upstream therefore
//! deletes, once per sync, every UDP entry whose original destination is a frontend of a UDP
//! service port that has serving endpoints, and whose reply source (the DNAT target) is not
//! one of them:
//! - an entry to an endpoint that went away, stopped serving, or changed its port;
//! - an entry created while the frontend had no endpoints and was not DNATed at all (its
//!   reply source is the frontend itself): the flow was black-holed and would stay so.
//!
//! What it leaves alone, as upstream does:
//! - every entry of a port without serving endpoints (there is nowhere better to send it);
//! - entries to serving endpoints, whatever the traffic policies, topology or terminating
//!   state say about *new* flows (UDP flows behave like TCP connections there);
//! - entries of service ports that no longer exist, and anything that is not UDP.
//!
//! One difference: upstream matches a NodePort on any destination address; here only on the
//! addresses the port's NodePort frontends list (the node addresses serving NodePorts), so a
//! UDP flow to some other host's port of the same number is never touched.
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use super::service_port::{DesiredState, Protocol};

/// IANA protocol number of UDP, as conntrack reports it.
pub const IPPROTO_UDP: u8 = 17;
/// IANA protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IANA protocol number of SCTP.
pub const IPPROTO_SCTP: u8 = 132;

/// One direction of a conntrack entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowTuple {
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
}

/// A conntrack entry as the reconciler sees it: the layer-4 protocol and both tuples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Flow {
    /// IANA protocol number ([`IPPROTO_UDP`] is the only one ever deleted).
    pub protocol: u8,
    /// Original direction: client -> frontend.
    pub original: FlowTuple,
    /// Reply direction: its source is the DNAT target, an endpoint when the flow was
    /// translated, the frontend itself when it was not.
    pub reply: FlowTuple,
}

/// The serving endpoints (address and port) of every UDP frontend whose port has any; what a
/// UDP entry to that frontend may point at and keep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServingEndpoints {
    by_frontend: BTreeMap<SocketAddr, BTreeSet<SocketAddr>>,
}

impl ServingEndpoints {
    /// Indexes the UDP service ports of `state`.
    pub fn new(state: &DesiredState) -> Self {
        let mut by_frontend: BTreeMap<SocketAddr, BTreeSet<SocketAddr>> = BTreeMap::new();
        for port in state.ports.values() {
            if port.key.protocol != Protocol::Udp {
                continue;
            }
            // Serving, not ready: a terminating endpoint that still serves keeps its flows,
            // and traffic policies only steer new flows (upstream's comment in cleanup.go).
            let serving: BTreeSet<SocketAddr> = port
                .endpoints
                .iter()
                .filter(|e| e.serving)
                .map(|e| SocketAddr::new(e.ip, e.port))
                .collect();
            if serving.is_empty() {
                continue;
            }
            for frontend in &port.frontends {
                // The model gives each frontend one owner; should two ports still list one,
                // an entry to either's endpoints is kept.
                by_frontend
                    .entry(SocketAddr::new(frontend.ip, frontend.port))
                    .or_default()
                    .extend(serving.iter().copied());
            }
        }
        Self { by_frontend }
    }

    /// Whether no entry can be stale (no UDP port has serving endpoints): the table need not
    /// even be read.
    pub fn is_empty(&self) -> bool {
        self.by_frontend.is_empty()
    }

    /// Whether `flow` is a UDP entry to one of the frontends whose reply source is not a
    /// serving endpoint of it.
    pub fn is_stale(&self, flow: &Flow) -> bool {
        flow.protocol == IPPROTO_UDP
            && self
                .by_frontend
                .get(&flow.original.dst)
                .is_some_and(|serving| !serving.contains(&flow.reply.src))
    }
}

/// The entries among `flows` to delete for `state`, in their order.
pub fn stale_flows<'a>(state: &DesiredState, flows: &'a [Flow]) -> Vec<&'a Flow> {
    let serving = ServingEndpoints::new(state);
    flows.iter().filter(|f| serving.is_stale(f)).collect()
}
