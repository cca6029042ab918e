//! Endpoints of a service port, from EndpointSlices or legacy v1 Endpoints.
//!
//! Both sources are first read into [`EndpointGroup`]s (a set of addresses that all serve the
//! same named ports), then each service port picks the group port whose name and protocol
//! equal its own. That is how a named `targetPort` resolves: the endpoint port may differ
//! from the service port and even between groups.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{EndpointAddress, EndpointSubset, Endpoints};
use k8s_openapi::api::discovery::v1::{EndpointHints, EndpointSlice};

use super::node::NodeContext;
use super::objects::ObjectKey;
use super::parse;
use super::service_port::Protocol;
use super::warnings::{kinds, InputWarning, ObjectWarnings};

/// Label joining an EndpointSlice to its service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// One backend of a service port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// The endpoint's address.
    pub ip: IpAddr,
    /// The endpoint's port for this service port (the resolved targetPort).
    pub port: u16,
    /// Ready condition (unset means ready).
    pub ready: bool,
    /// Serving condition (unset means serving).
    pub serving: bool,
    /// Terminating condition (unset means not terminating).
    pub terminating: bool,
    /// Whether the endpoint's nodeName is this node's name.
    pub local: bool,
    /// The node the endpoint runs on, when known.
    pub node_name: Option<String>,
    /// The slice's topology hints for this endpoint; `None` when it has neither zone nor
    /// node hints (boxed: almost every endpoint has none, and there may be 100,000).
    pub hints: Option<Box<TopologyHints>>,
}

/// An EndpointSlice endpoint's `hints`: the zones and nodes that should use it.
///
/// The EndpointSlice controller writes them for services with `spec.trafficDistribution`
/// (forZones for PreferClose / PreferSameZone, forNodes and forZones for PreferSameNode);
/// kube-proxy, and so Switchyard, reads only the hints, never the service field.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopologyHints {
    /// `hints.forZones[].name`.
    pub zones: BTreeSet<String>,
    /// `hints.forNodes[].name`.
    pub nodes: BTreeSet<String>,
}

impl TopologyHints {
    /// The hints of one slice endpoint, as upstream's endpointslicecache reads them (names
    /// as given, duplicates merged); `None` when both lists are empty or missing.
    pub(crate) fn from_api(hints: Option<&EndpointHints>) -> Option<Box<TopologyHints>> {
        let hints = hints?;
        let zones: BTreeSet<String> = hints
            .for_zones
            .iter()
            .flatten()
            .map(|z| z.name.clone())
            .collect();
        let nodes: BTreeSet<String> = hints
            .for_nodes
            .iter()
            .flatten()
            .map(|n| n.name.clone())
            .collect();
        if zones.is_empty() && nodes.is_empty() {
            return None;
        }
        Some(Box::new(TopologyHints { zones, nodes }))
    }
}

impl Endpoint {
    /// `hints.forZones` names (empty when there are none).
    pub fn zone_hints(&self) -> &BTreeSet<String> {
        self.hints.as_ref().map_or(&EMPTY_HINTS, |h| &h.zones)
    }

    /// `hints.forNodes` names (empty when there are none).
    pub fn node_hints(&self) -> &BTreeSet<String> {
        self.hints.as_ref().map_or(&EMPTY_HINTS, |h| &h.nodes)
    }
}

static EMPTY_HINTS: BTreeSet<String> = BTreeSet::new();

/// One named port of an endpoint group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GroupPort {
    /// Port name; empty for an unnamed port (a missing name reads as empty).
    pub(crate) name: String,
    /// Port protocol.
    pub(crate) protocol: Protocol,
    /// Port number on the endpoints.
    pub(crate) port: u16,
}

/// One address of an endpoint group, before a port is attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GroupAddress {
    pub(crate) ip: IpAddr,
    pub(crate) ready: bool,
    pub(crate) serving: bool,
    pub(crate) terminating: bool,
    pub(crate) node_name: Option<String>,
    pub(crate) hints: Option<Box<TopologyHints>>,
}

/// Addresses that all serve the same ports: one EndpointSlice, or one legacy subset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct EndpointGroup {
    pub(crate) ports: Vec<GroupPort>,
    pub(crate) addresses: Vec<GroupAddress>,
}

/// Reads one group port.
fn group_port(
    w: &ObjectWarnings<'_>,
    path: &str,
    name: Option<&str>,
    protocol: Option<&str>,
    port: i32,
    seen: &[GroupPort],
) -> Result<GroupPort, InputWarning> {
    let protocol =
        parse::protocol(protocol).map_err(|msg| w.fatal(format!("{path}.protocol"), msg))?;
    let port = parse::port_number(port).map_err(|msg| w.fatal(format!("{path}.port"), msg))?;
    let name = name.unwrap_or_default().to_owned();
    // Two entries with the same name and protocol would make the targetPort ambiguous.
    if seen
        .iter()
        .any(|p| p.name == name && p.protocol == protocol)
    {
        return Err(w.fatal(
            format!("{path}.name"),
            format!("duplicate port name {name:?} for protocol {protocol}"),
        ));
    }
    Ok(GroupPort {
        name,
        protocol,
        port,
    })
}

/// Reads an EndpointSlice. `Ok(None)` when the slice does not concern this node: FQDN
/// slices, and slices of an IP family the node does not serve (a dual-stack service has one
/// slice set per family, so that is normal and not worth a warning).
pub(crate) fn parse_slice(
    key: &ObjectKey,
    slice: &EndpointSlice,
    node: &NodeContext,
) -> Result<Option<EndpointGroup>, InputWarning> {
    let w = ObjectWarnings::new(kinds::ENDPOINT_SLICE, key);
    let want_v6 = match slice.address_type.as_str() {
        "IPv4" => false,
        "IPv6" => true,
        "FQDN" => return Ok(None),
        other => {
            return Err(w.fatal(
                "addressType",
                format!("unknown address type {other:?} (expected IPv4, IPv6 or FQDN)"),
            ))
        }
    };
    if (want_v6 && !node.ipv6) || (!want_v6 && !node.ipv4) {
        return Ok(None);
    }

    let mut group = EndpointGroup::default();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let path = format!("ports[{i}]");
        // A missing port number means "all ports" in the API, which upstream kube-proxy does
        // not implement either; such an entry matches no service port.
        let Some(number) = p.port else { continue };
        let gp = group_port(
            &w,
            &path,
            p.name.as_deref(),
            p.protocol.as_deref(),
            number,
            &group.ports,
        )?;
        group.ports.push(gp);
    }

    for (i, ep) in slice.endpoints.iter().enumerate() {
        // Upstream uses only the first address; the API says consumers may ignore the rest.
        let Some(text) = ep.addresses.first() else {
            return Err(w.fatal(
                format!("endpoints[{i}].addresses"),
                "no address (exactly one is expected)",
            ));
        };
        // Named only on an error: a slice of 100,000 endpoints would format it 100,000 times.
        let field = || format!("endpoints[{i}].addresses[0]");
        let ip = parse::parse_ip(text)
            .ok_or_else(|| w.fatal(field(), format!("{text:?} is not a valid IP address")))?;
        if ip.is_ipv6() != want_v6 {
            return Err(w.fatal(
                field(),
                format!(
                    "{ip} is {} but the slice's addressType is {}",
                    parse::family_name(&ip),
                    slice.address_type
                ),
            ));
        }
        // Condition defaults exactly as upstream endpointslicecache.go.
        let cond = ep.conditions.as_ref();
        let ready = cond.and_then(|c| c.ready).unwrap_or(true);
        let serving = cond.and_then(|c| c.serving).unwrap_or(true);
        let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
        group.addresses.push(GroupAddress {
            ip,
            ready,
            serving,
            terminating,
            node_name: ep.node_name.clone(),
            hints: TopologyHints::from_api(ep.hints.as_ref()),
        });
    }
    Ok(Some(group))
}

/// Reads one legacy address; `Ok(None)` (with a soft warning) for an unserved family.
fn legacy_address(
    w: &mut ObjectWarnings<'_>,
    node: &NodeContext,
    field: String,
    address: &EndpointAddress,
    ready: bool,
) -> Result<Option<GroupAddress>, InputWarning> {
    let ip = parse::parse_ip(&address.ip).ok_or_else(|| {
        w.fatal(
            &field,
            format!("{:?} is not a valid IP address", address.ip),
        )
    })?;
    if !node.serves(&ip) {
        // Hand-written Endpoints may mix families; dropping one address keeps the rest
        // of the service working.
        w.soft(
            field,
            format!(
                "{ip} is {} but this node serves {}; address ignored",
                parse::family_name(&ip),
                node.families_text()
            ),
        );
        return Ok(None);
    }
    Ok(Some(GroupAddress {
        ip,
        // Legacy Endpoints only know ready / not ready: a ready address serves, a not-ready
        // one neither serves nor is terminating (so it is never used).
        ready,
        serving: ready,
        terminating: false,
        node_name: address.node_name.clone(),
        // Legacy Endpoints have no hints (nor do the slices mirrored from them).
        hints: None,
    }))
}

/// Reads one legacy subset.
fn legacy_subset(
    w: &mut ObjectWarnings<'_>,
    node: &NodeContext,
    s: usize,
    subset: &EndpointSubset,
) -> Result<EndpointGroup, InputWarning> {
    let mut group = EndpointGroup::default();
    for (i, p) in subset.ports.iter().flatten().enumerate() {
        let path = format!("subsets[{s}].ports[{i}]");
        let gp = group_port(
            w,
            &path,
            p.name.as_deref(),
            p.protocol.as_deref(),
            p.port,
            &group.ports,
        )?;
        group.ports.push(gp);
    }
    let lists = [
        ("addresses", true, &subset.addresses),
        ("notReadyAddresses", false, &subset.not_ready_addresses),
    ];
    for (list_name, ready, list) in lists {
        for (i, address) in list.iter().flatten().enumerate() {
            let field = format!("subsets[{s}].{list_name}[{i}].ip");
            if let Some(ga) = legacy_address(w, node, field, address, ready)? {
                group.addresses.push(ga);
            }
        }
    }
    Ok(group)
}

/// Reads a legacy v1 Endpoints object into one group per subset; the soft warnings (dropped
/// addresses of an unserved family) come back with the groups.
pub(crate) fn parse_legacy_endpoints(
    key: &ObjectKey,
    endpoints: &Endpoints,
    node: &NodeContext,
) -> Result<(Vec<EndpointGroup>, Vec<InputWarning>), InputWarning> {
    let mut w = ObjectWarnings::new(kinds::ENDPOINTS, key);
    let mut groups = Vec::new();
    for (s, subset) in endpoints.subsets.iter().flatten().enumerate() {
        groups.push(legacy_subset(&mut w, node, s, subset)?);
    }
    Ok((groups, w.into_soft()))
}

/// Rank used to pick one entry among duplicates (same ip+port): ready first, then serving,
/// then local (upstream favours a local entry).
fn preference(ep: &Endpoint) -> (bool, bool, bool) {
    (ep.ready, ep.serving, ep.local)
}

/// The endpoints of one service port: for each group, the group port with the same name and
/// protocol, applied to all of the group's addresses whose family is in `families`.
/// Duplicates (same ip+port, e.g. an endpoint moving between slices) are merged.
pub(crate) fn resolve(
    groups: &[&EndpointGroup],
    port_name: &str,
    protocol: Protocol,
    families: &[IpAddr],
    node: &NodeContext,
) -> Vec<Endpoint> {
    let mut merged: BTreeMap<(IpAddr, u16), Endpoint> = BTreeMap::new();
    for group in groups {
        let Some(gp) = group
            .ports
            .iter()
            .find(|p| p.name == port_name && p.protocol == protocol)
        else {
            continue;
        };
        for a in &group.addresses {
            // Only families the service has a cluster IP for on this node can be reached.
            if !families.iter().any(|f| f.is_ipv6() == a.ip.is_ipv6()) {
                continue;
            }
            let local = !node.name.is_empty() && a.node_name.as_deref() == Some(node.name.as_str());
            let ep = Endpoint {
                ip: a.ip,
                port: gp.port,
                ready: a.ready,
                serving: a.serving,
                terminating: a.terminating,
                local,
                node_name: a.node_name.clone(),
                hints: a.hints.clone(),
            };
            match merged.get(&(ep.ip, ep.port)) {
                Some(old) if preference(old) >= preference(&ep) => {}
                _ => {
                    merged.insert((ep.ip, ep.port), ep);
                }
            }
        }
    }
    merged.into_values().collect()
}
