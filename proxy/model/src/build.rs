//! Joining services with their endpoints into the desired state of this node.

use std::collections::BTreeMap;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::conflicts::{self, CreationTimes};
use super::endpoints::{self, EndpointGroup, LABEL_SERVICE_NAME};
use super::node::{self, NodeContext};
use super::objects::{ClusterObjects, ObjectKey};
use super::service::{self, ParsedService};
use super::service_port::{DesiredState, Frontend, FrontendKind, ServicePort, ServicePortKey};
use super::warnings::{kinds, InputWarning};

/// The result of [`compute_desired_state`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Computed {
    /// Every service port this node proxies.
    pub state: DesiredState,
    /// Problems found in the input (sorted); each object named here was skipped in whole or
    /// in the part the warning names.
    pub warnings: Vec<InputWarning>,
}

/// EndpointSlices grouped by the service they belong to (slice namespace + service-name
/// label). Slices without that label belong to no service and are reported.
fn slices_by_service<'a>(
    objects: &'a ClusterObjects,
    warnings: &mut Vec<InputWarning>,
) -> BTreeMap<ObjectKey, Vec<(&'a ObjectKey, &'a EndpointSlice)>> {
    let mut by_service: BTreeMap<ObjectKey, Vec<_>> = BTreeMap::new();
    for (key, slice) in &objects.endpoint_slices {
        let labels = slice.metadata.labels.as_ref();
        if service::skipped_by_labels(labels) {
            continue;
        }
        match labels.and_then(|l| l.get(LABEL_SERVICE_NAME)) {
            Some(service) if !service.is_empty() => by_service
                .entry(ObjectKey::new(key.namespace.clone(), service.clone()))
                .or_default()
                .push((key, &**slice)),
            _ => warnings.push(InputWarning::new(
                kinds::ENDPOINT_SLICE,
                key,
                format!("metadata.labels[{LABEL_SERVICE_NAME}]"),
                "missing; the slice belongs to no service and is ignored",
            )),
        }
    }
    by_service
}

/// The endpoint groups of one service.
///
/// When at least one EndpointSlice names the service, the slices are the whole truth and a
/// legacy Endpoints object is not read: in a cluster the mirroring controller turns every
/// Endpoints into slices, so reading both would count the same endpoints twice and a stale
/// Endpoints could resurrect removed ones. Legacy Endpoints only matter in manifest mode,
/// where hand-written objects for selector-less services have no slices.
fn endpoint_groups(
    key: &ObjectKey,
    slices: Option<&Vec<(&ObjectKey, &EndpointSlice)>>,
    objects: &ClusterObjects,
    node: &NodeContext,
    warnings: &mut Vec<InputWarning>,
) -> Vec<EndpointGroup> {
    let mut groups = Vec::new();
    match slices {
        Some(slices) if !slices.is_empty() => {
            for (slice_key, slice) in slices {
                match endpoints::parse_slice(slice_key, slice, node) {
                    Ok(Some(group)) => groups.push(group),
                    Ok(None) => {}
                    Err(warning) => warnings.push(warning),
                }
            }
        }
        _ => {
            if let Some(legacy) = objects.endpoints.get(key) {
                match endpoints::parse_legacy_endpoints(key, legacy, node) {
                    Ok((parsed, soft)) => {
                        groups = parsed;
                        warnings.extend(soft);
                    }
                    Err(warning) => warnings.push(warning),
                }
            }
        }
    }
    groups
}

/// All frontends of one service port, sorted and deduplicated.
fn frontends(
    svc: &ParsedService,
    port: u16,
    node_port: Option<u16>,
    node: &NodeContext,
) -> Vec<Frontend> {
    let mut out: Vec<Frontend> = Vec::new();
    let with = |kind, ip, port| Frontend { kind, ip, port };
    out.extend(
        svc.cluster_ips
            .iter()
            .map(|ip| with(FrontendKind::ClusterIp, *ip, port)),
    );
    if let Some(np) = node_port {
        // A NodePort of a family the service has no cluster IP for could not reach its
        // endpoints, so only node addresses of the service's families are used.
        out.extend(
            node.nodeport_addresses
                .iter()
                .filter(|a| svc.cluster_ips.iter().any(|c| c.is_ipv6() == a.is_ipv6()))
                .map(|ip| with(FrontendKind::NodePort, *ip, np)),
        );
    }
    out.extend(
        svc.external_ips
            .iter()
            .map(|ip| with(FrontendKind::ExternalIp, *ip, port)),
    );
    out.extend(
        svc.load_balancer_ips
            .iter()
            .map(|ip| with(FrontendKind::LoadBalancer, *ip, port)),
    );
    out.sort();
    out.dedup();
    out
}

/// Computes what this node should program from everything the sources have seen.
///
/// Never panics on any input: an invalid object is skipped with one warning naming it and the
/// field, and every other service keeps working. A frontend claimed by several service ports
/// is left to one of them (module `conflicts`), with a warning naming both.
pub fn compute_desired_state(objects: &ClusterObjects, node: &NodeContext) -> Computed {
    let mut warnings = Vec::new();
    let mut state = DesiredState::default();
    let mut created = CreationTimes::new();
    let slices = slices_by_service(objects, &mut warnings);
    let zone = node::zone_label(objects, node);

    for (key, svc) in &objects.services {
        let (parsed, soft) = match service::parse_service(key, svc, node) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => continue,
            Err(warning) => {
                warnings.push(warning);
                continue;
            }
        };
        warnings.extend(soft);
        if parsed.ports.is_empty() {
            continue;
        }
        created.insert(key.clone(), svc.metadata.creation_timestamp.clone());
        // Slices are only read for services that produce ports, so a slice of a skipped or
        // unknown service never warns.
        let groups = endpoint_groups(key, slices.get(key), objects, node, &mut warnings);
        let group_refs: Vec<&EndpointGroup> = groups.iter().collect();

        for p in &parsed.ports {
            let port_key = ServicePortKey {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                port_name: p.name.clone(),
                protocol: p.protocol,
            };
            let endpoints =
                endpoints::resolve(&group_refs, &p.name, p.protocol, &parsed.cluster_ips, node);
            let mut port = ServicePort {
                key: port_key.clone(),
                port: p.port,
                cluster_ips: parsed.cluster_ips.clone(),
                node_port: p.node_port,
                external_ips: parsed.external_ips.clone(),
                load_balancer_ips: parsed.load_balancer_ips.clone(),
                load_balancer_source_ranges: parsed.load_balancer_source_ranges.clone(),
                session_affinity_timeout: parsed.session_affinity_timeout,
                external_traffic_policy: parsed.external_traffic_policy,
                internal_traffic_policy: parsed.internal_traffic_policy,
                health_check_node_port: parsed.health_check_node_port,
                endpoints,
                topology: Default::default(),
                frontends: frontends(&parsed, p.port, p.node_port, node),
            };
            port.topology = port.topology_for(&node.name, zone);
            state.ports.insert(port_key, port);
        }
    }

    conflicts::resolve(&mut state, &created, &mut warnings);
    warnings.sort();
    warnings.dedup();
    Computed { state, warnings }
}
