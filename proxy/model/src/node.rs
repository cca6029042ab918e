//! What the model needs to know about the node it computes rules for.

use std::net::IpAddr;
use std::ops::RangeInclusive;

use ipnet::IpNet;

use super::objects::ClusterObjects;
use super::topology::LABEL_TOPOLOGY_ZONE;

/// Kubernetes' default `--service-node-port-range`.
pub const DEFAULT_NODEPORT_RANGE: RangeInclusive<u16> = 30000..=32767;

/// What the model needs to know about this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeContext {
    /// Node name (`--hostname-override`); endpoints whose `nodeName` equals it are local.
    pub name: String,
    /// Addresses NodePorts are served on (already filtered by `--nodeport-addresses`).
    pub nodeport_addresses: Vec<IpAddr>,
    /// Whether this node serves IPv4.
    pub ipv4: bool,
    /// Whether this node serves IPv6.
    pub ipv6: bool,
    /// Valid NodePort numbers; a service's nodePort outside it is rejected.
    pub nodeport_range: RangeInclusive<u16>,
}

impl NodeContext {
    /// An IPv4-only node with no NodePort addresses and the default NodePort range.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            nodeport_addresses: Vec::new(),
            ipv4: true,
            ipv6: false,
            nodeport_range: DEFAULT_NODEPORT_RANGE,
        }
    }

    /// Whether this node serves the IP family of `ip`.
    pub fn serves(&self, ip: &IpAddr) -> bool {
        match ip {
            IpAddr::V4(_) => self.ipv4,
            IpAddr::V6(_) => self.ipv6,
        }
    }

    /// Human name of the families this node serves, for warnings.
    pub(crate) fn families_text(&self) -> &'static str {
        match (self.ipv4, self.ipv6) {
            (true, true) => "IPv4 and IPv6",
            (true, false) => "only IPv4",
            (false, true) => "only IPv6",
            (false, false) => "no IP family",
        }
    }
}

/// Local addresses filtered by `--nodeport-addresses` CIDRs (an empty list means all
/// addresses). The result is sorted and free of duplicates so it is stable across calls.
pub fn select_nodeport_addresses(local: &[IpAddr], cidrs: &[IpNet]) -> Vec<IpAddr> {
    let mut selected: Vec<IpAddr> = local
        .iter()
        .copied()
        .filter(|ip| cidrs.is_empty() || cidrs.iter().any(|net| net.contains(ip)))
        .collect();
    selected.sort();
    selected.dedup();
    selected
}

/// The addresses a Node object reports in `status.addresses` (InternalIP and ExternalIP),
/// skipping unparsable ones.
pub fn reported_node_ips(node: &k8s_openapi::api::core::v1::Node) -> Vec<IpAddr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| a.address.trim().parse().ok())
        .collect()
}

/// The zone label of this node's Node object, empty when the Node or the label is missing
/// (upstream reads `topologyLabels[LabelTopologyZone]` the same way). Both sources deliver
/// this node's Node, and a label change is a new snapshot like any other object change.
pub(crate) fn zone_label<'a>(objects: &'a ClusterObjects, node: &NodeContext) -> &'a str {
    objects
        .nodes
        .get(&node.name)
        .and_then(|n| n.metadata.labels.as_ref())
        .and_then(|labels| labels.get(LABEL_TOPOLOGY_ZONE))
        .map_or("", String::as_str)
}
