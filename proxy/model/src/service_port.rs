//! The desired state of one service port and of the whole node.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::endpoints::Endpoint;
use super::objects::ObjectKey;
use super::topology::Topology;

/// Transport protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP (ebpf mode serves it through netfilter, see `switchyard::ebpf::sctp_fallback`).
    Sctp,
}

impl Protocol {
    /// The Kubernetes spelling: `TCP`, `UDP` or `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One service port: namespace/name:port-name + protocol.
///
/// Displays as `ns/name:port/TCP`, or `ns/name/TCP` when the port has no name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortKey {
    /// The service's namespace.
    pub namespace: String,
    /// The service's name.
    pub name: String,
    /// The port's name (empty for a service's single unnamed port).
    pub port_name: String,
    /// The port's protocol.
    pub protocol: Protocol,
}

impl ServicePortKey {
    /// The service this port belongs to.
    pub fn service(&self) -> ObjectKey {
        ObjectKey::new(self.namespace.clone(), self.name.clone())
    }
}

impl fmt::Display for ServicePortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port_name.is_empty() {
            write!(f, ":{}", self.port_name)?;
        }
        write!(f, "/{}", self.protocol)
    }
}

/// Which kind of address a frontend listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    /// A cluster IP of the service.
    ClusterIp,
    /// A node address with the service's nodePort.
    NodePort,
    /// One of `spec.externalIPs`.
    ExternalIp,
    /// A VIP-mode `status.loadBalancer.ingress[].ip`.
    LoadBalancer,
}

/// One address + port on which a service port accepts traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    /// What kind of address this is (decides the traffic policy that applies).
    pub kind: FrontendKind,
    /// The destination address.
    pub ip: IpAddr,
    /// The destination port (the service port, or the nodePort for [`FrontendKind::NodePort`]).
    pub port: u16,
}

/// `externalTrafficPolicy` / `internalTrafficPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TrafficPolicy {
    /// Any ready endpoint in the cluster (the default).
    #[default]
    Cluster,
    /// Only endpoints on this node.
    Local,
}

/// Everything a dataplane needs to program one service port on this node.
///
/// A dual-stack service has frontends and endpoints of both families in one `ServicePort`;
/// dataplanes pair each frontend only with endpoints of its own family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Which service port this is.
    pub key: ServicePortKey,
    /// The service port number.
    pub port: u16,
    /// Cluster IPs of the families this node serves (at most one per family).
    pub cluster_ips: Vec<IpAddr>,
    /// The nodePort, only for types NodePort and LoadBalancer.
    pub node_port: Option<u16>,
    /// `spec.externalIPs` of the service's served families.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` of VIP-mode entries (type LoadBalancer only).
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`, trimmed and parsed (type LoadBalancer only); empty
    /// means every source may use the LoadBalancer IPs. Holds both families: a non-empty list
    /// with no range of an LB IP's family admits no source to that IP.
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// `Some(seconds)` iff sessionAffinity is ClientIP.
    pub session_affinity_timeout: Option<u32>,
    /// `externalTrafficPolicy`; `Local` only when the service is reachable from outside
    /// (NodePort, LoadBalancer or externalIPs), as upstream `ExternalPolicyLocal`.
    pub external_traffic_policy: TrafficPolicy,
    /// `internalTrafficPolicy`.
    pub internal_traffic_policy: TrafficPolicy,
    /// The health check port, only for type LoadBalancer with externalTrafficPolicy Local.
    pub health_check_node_port: Option<u16>,
    /// All known endpoints for this port (deduplicated by ip+port, sorted), including
    /// non-serving ones; use the selection methods to get those that take traffic.
    pub endpoints: Vec<Endpoint>,
    /// How the endpoints' topology hints narrow the cluster set on this node, per family
    /// (decided from the hints, this node's name and its zone label; see `topology.rs`).
    pub topology: Topology,
    /// All frontends: cluster IPs, NodePort on each node address, externalIPs, LoadBalancer
    /// IPs (sorted, deduplicated).
    pub frontends: Vec<Frontend>,
}

impl ServicePort {
    /// The frontends of one kind.
    pub fn frontends_of(&self, kind: FrontendKind) -> impl Iterator<Item = &Frontend> {
        self.frontends.iter().filter(move |f| f.kind == kind)
    }

    /// Whether the port accepts traffic on something other than its cluster IPs
    /// (upstream `ExternallyAccessible`).
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }
}

/// The desired dataplane state of this node: every service port it proxies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// Service ports by key. Shared, so that keeping the last state and comparing it with the
    /// next costs a pointer per unchanged port.
    pub ports: BTreeMap<ServicePortKey, Arc<ServicePort>>,
}
