//! Which endpoints take traffic for a service port: upstream `pkg/proxy/topology.go` of
//! Kubernetes 1.35 (`CategorizeEndpoints`, `topologyModeFromHints`, `availableForTopology`).
//!
//! Upstream runs one proxier per IP family, so every rule here applies to each family's
//! endpoints on their own: the ready/terminating fallback and the topology mode of IPv4
//! never depend on the IPv6 endpoints, and the other way round.
//!
//! Topology narrows only the cluster set. `spec.trafficDistribution` is not read: the
//! EndpointSlice controller turns it into hints (`forZones` for PreferClose and
//! PreferSameZone, `forNodes` plus `forZones` for PreferSameNode), and the hints are what
//! the proxy follows. The `PreferSameTrafficDistribution` gate is GA and locked on in 1.35,
//! so node hints are always honoured.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::endpoints::Endpoint;
use super::service_port::{ServicePort, TrafficPolicy};

/// The Node label that names the node's zone (`v1.LabelTopologyZone`).
pub const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";

/// How the hints narrow one IP family's cluster set (upstream's topology mode, with the
/// name it matches against).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TopologyMode {
    /// No narrowing (upstream `""`): no ready endpoint, some ready endpoint without hints,
    /// or no ready endpoint hinted for this node or its zone.
    #[default]
    Any,
    /// Only endpoints whose `hints.forNodes` name this node (holds the node's name).
    PreferSameNode(String),
    /// Only endpoints whose `hints.forZones` name this node's zone (holds the zone).
    PreferSameZone(String),
}

impl TopologyMode {
    /// Upstream `topologyModeFromHints` over one family's endpoints. `zone` is the node's
    /// zone label, empty when the Node or its label is missing (as upstream reads it).
    fn from_hints<'a>(
        endpoints: impl Iterator<Item = &'a Endpoint>,
        node_name: &str,
        zone: &str,
    ) -> TopologyMode {
        let mut has_ready = false;
        let mut all_have_node_hints = true;
        let mut has_endpoint_for_node = false;
        let mut all_have_zone_hints = true;
        let mut has_endpoint_for_zone = false;
        // Only ready endpoints count: a terminating one never needs a hint.
        for ep in endpoints.filter(|ep| ep.ready) {
            has_ready = true;
            let nodes = ep.node_hints();
            if nodes.is_empty() {
                all_have_node_hints = false;
            } else if nodes.contains(node_name) {
                has_endpoint_for_node = true;
            }
            let zones = ep.zone_hints();
            if zones.is_empty() {
                all_have_zone_hints = false;
            } else if zones.contains(zone) {
                has_endpoint_for_zone = true;
            }
        }
        if !has_ready {
            return TopologyMode::Any;
        }
        if all_have_node_hints && has_endpoint_for_node {
            return TopologyMode::PreferSameNode(node_name.to_owned());
        }
        if all_have_zone_hints && has_endpoint_for_zone {
            return TopologyMode::PreferSameZone(zone.to_owned());
        }
        TopologyMode::Any
    }

    /// Upstream `availableForTopology`: whether `ep` may take cluster traffic in this mode
    /// (no fallback here: that was decided when the mode was chosen).
    pub fn allows(&self, ep: &Endpoint) -> bool {
        match self {
            TopologyMode::Any => true,
            TopologyMode::PreferSameNode(node) => ep.node_hints().contains(node),
            TopologyMode::PreferSameZone(zone) => ep.zone_hints().contains(zone),
        }
    }
}

/// The topology mode of each IP family of a service port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    /// For the IPv4 endpoints.
    pub ipv4: TopologyMode,
    /// For the IPv6 endpoints.
    pub ipv6: TopologyMode,
}

impl Topology {
    /// The mode for endpoints of `ip`'s family.
    pub fn of(&self, ip: &IpAddr) -> &TopologyMode {
        self.family(ip.is_ipv6())
    }

    fn family(&self, v6: bool) -> &TopologyMode {
        if v6 {
            &self.ipv6
        } else {
            &self.ipv4
        }
    }
}

/// The endpoints of one family, in their order.
fn family(endpoints: &[Endpoint], v6: bool) -> impl Iterator<Item = &Endpoint> + Clone {
    endpoints.iter().filter(move |ep| ep.ip.is_ipv6() == v6)
}

impl ServicePort {
    /// Upstream `UsesClusterEndpoints`: traffic ever goes to the cluster set (Cluster
    /// internal policy, or any external frontend: even with externalTrafficPolicy Local,
    /// traffic from this node short-circuits to the cluster set).
    pub fn uses_cluster_endpoints(&self) -> bool {
        self.internal_traffic_policy == TrafficPolicy::Cluster || self.externally_accessible()
    }

    /// Upstream `UsesLocalEndpoints`: traffic ever goes to the local set.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_traffic_policy == TrafficPolicy::Local
            || (self.external_traffic_policy == TrafficPolicy::Local
                && self.externally_accessible())
    }

    /// The topology of this port's cluster set for a node named `node_name` in `zone`
    /// (empty when unknown). Only a port that uses the cluster set gets one.
    pub(crate) fn topology_for(&self, node_name: &str, zone: &str) -> Topology {
        if !self.uses_cluster_endpoints() {
            return Topology::default();
        }
        Topology {
            ipv4: TopologyMode::from_hints(family(&self.endpoints, false), node_name, zone),
            ipv6: TopologyMode::from_hints(family(&self.endpoints, true), node_name, zone),
        }
    }

    /// The cluster set, per family: ready endpoints the topology allows; if there are none,
    /// the serving and terminating ones, topology ignored (it can only be empty of ready
    /// endpoints when there are none at all, since a mode that matches no ready endpoint is
    /// never chosen). Never a non-serving endpoint.
    pub fn cluster_endpoints(&self) -> Vec<&Endpoint> {
        self.cluster_set(true)
    }

    /// The cluster set as if no endpoint had hints. For deciding which established UDP flows
    /// point at a gone endpoint: upstream's conntrack cleanup ignores topology, so an
    /// endpoint outside this node's zone is not gone.
    pub fn cluster_endpoints_ignoring_topology(&self) -> Vec<&Endpoint> {
        self.cluster_set(false)
    }

    fn cluster_set(&self, with_topology: bool) -> Vec<&Endpoint> {
        let mut out = Vec::new();
        for v6 in [false, true] {
            let eps = family(&self.endpoints, v6);
            let mode = self.topology.family(v6);
            let ready: Vec<&Endpoint> = eps
                .clone()
                .filter(|ep| ep.ready && (!with_topology || mode.allows(ep)))
                .collect();
            if ready.is_empty() {
                out.extend(eps.filter(|ep| ep.serving && ep.terminating));
            } else {
                out.extend(ready);
            }
        }
        out
    }

    /// The local set, per family: this node's ready endpoints, else its serving and
    /// terminating ones (chosen on its own, so a local terminating endpoint is used when no
    /// local one is ready even if remote ready endpoints exist). Topology does not apply.
    pub fn local_endpoints(&self) -> Vec<&Endpoint> {
        let mut out = Vec::new();
        for v6 in [false, true] {
            let local = family(&self.endpoints, v6).filter(|ep| ep.local);
            let ready: Vec<&Endpoint> = local.clone().filter(|ep| ep.ready).collect();
            if ready.is_empty() {
                out.extend(local.filter(|ep| ep.serving && ep.terminating));
            } else {
                out.extend(ready);
            }
        }
        out
    }

    /// Upstream `allReachableEndpoints`: every endpoint some traffic of this node can go to,
    /// the union of the cluster set (if used) and the local set (if used), in endpoint
    /// order. With topology or a terminating local set, neither contains the other.
    pub fn reachable_endpoints(&self) -> Vec<&Endpoint> {
        match (self.uses_cluster_endpoints(), self.uses_local_endpoints()) {
            (true, false) => self.cluster_endpoints(),
            (false, true) => self.local_endpoints(),
            (false, false) => Vec::new(),
            (true, true) => {
                let mut keep: BTreeSet<(IpAddr, u16)> = BTreeSet::new();
                for ep in self
                    .cluster_endpoints()
                    .into_iter()
                    .chain(self.local_endpoints())
                {
                    keep.insert((ep.ip, ep.port));
                }
                self.endpoints
                    .iter()
                    .filter(|ep| keep.remove(&(ep.ip, ep.port)))
                    .collect()
            }
        }
    }

    /// Upstream `hasAnyEndpoints`: some endpoint anywhere in the cluster could serve this
    /// port (even if none is reachable from here: an internalTrafficPolicy Local port with
    /// only remote endpoints drops instead of rejecting).
    pub fn has_any_endpoints(&self) -> bool {
        (self.uses_cluster_endpoints() && !self.cluster_endpoints().is_empty())
            || (self.uses_local_endpoints()
                && self
                    .endpoints
                    .iter()
                    .any(|ep| ep.ready || (ep.serving && ep.terminating)))
    }

    /// Endpoints for traffic to the cluster IPs (internalTrafficPolicy applied).
    pub fn internal_endpoints(&self) -> Vec<&Endpoint> {
        match self.internal_traffic_policy {
            TrafficPolicy::Cluster => self.cluster_endpoints(),
            TrafficPolicy::Local => self.local_endpoints(),
        }
    }

    /// Endpoints for traffic from outside the node to NodePorts, externalIPs and
    /// LoadBalancer IPs (externalTrafficPolicy applied). Pods on this node reaching those
    /// addresses use [`ServicePort::cluster_endpoints`] instead (upstream short-circuit).
    pub fn external_endpoints(&self) -> Vec<&Endpoint> {
        match self.external_traffic_policy {
            TrafficPolicy::Cluster => self.cluster_endpoints(),
            TrafficPolicy::Local => self.local_endpoints(),
        }
    }
}
