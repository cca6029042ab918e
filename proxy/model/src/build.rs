//! Joining services with their endpoints into the desired state of this node.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::endpoints::{self, EndpointGroup, LABEL_SERVICE_NAME};
use super::incremental::ModelCache;
use super::node::NodeContext;
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

/// The service an EndpointSlice belongs to (its namespace + service-name label), or `None`
/// for a slice the proxy skips; a slice without that label belongs to no service and is
/// reported.
pub(crate) fn slice_owner(
    key: &ObjectKey,
    slice: &EndpointSlice,
) -> (Option<ObjectKey>, Option<InputWarning>) {
    let labels = slice.metadata.labels.as_ref();
    if service::skipped_by_labels(labels) {
        return (None, None);
    }
    match labels.and_then(|l| l.get(LABEL_SERVICE_NAME)) {
        Some(service) if !service.is_empty() => (
            Some(ObjectKey::new(key.namespace.clone(), service.clone())),
            None,
        ),
        _ => (
            None,
            Some(InputWarning::new(
                kinds::ENDPOINT_SLICE,
                key,
                format!("metadata.labels[{LABEL_SERVICE_NAME}]"),
                "missing; the slice belongs to no service and is ignored",
            )),
        ),
    }
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
    slices: &[(&ObjectKey, &EndpointSlice)],
    legacy: Option<&Endpoints>,
    node: &NodeContext,
    warnings: &mut Vec<InputWarning>,
) -> Vec<EndpointGroup> {
    if !slices.is_empty() {
        let mut groups = Vec::new();
        for (slice_key, slice) in slices {
            match endpoints::parse_slice(slice_key, slice, node) {
                Ok(Some(group)) => groups.push(group),
                Ok(None) => {}
                Err(warning) => warnings.push(warning),
            }
        }
        return groups;
    }
    let Some(legacy) = legacy else {
        return Vec::new();
    };
    match endpoints::parse_legacy_endpoints(key, legacy, node) {
        Ok((groups, soft)) => {
            warnings.extend(soft);
            groups
        }
        Err(warning) => {
            warnings.push(warning);
            Vec::new()
        }
    }
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

/// What one Service contributes to the desired state, before frontend conflicts between
/// services are resolved.
#[derive(Clone, Debug, Default)]
pub(crate) struct ServiceResult {
    /// Its service ports, each with its endpoints and every frontend it claims.
    pub(crate) ports: Vec<Arc<ServicePort>>,
    /// Problems found in the Service and in the endpoint objects read for it.
    pub(crate) warnings: Vec<InputWarning>,
    /// `metadata.creationTimestamp`, which ranks its claims in a conflict.
    pub(crate) created: Option<Time>,
}

/// Joins one Service with its endpoint objects: `slices` are the EndpointSlices that name it
/// (in key order), `legacy` its Endpoints object, read only when it has no slices; `zone`
/// is this node's topology zone label (empty when unknown).
///
/// Never panics on any input: an invalid object is skipped with one warning naming it and the
/// field.
pub(crate) fn service_ports(
    key: &ObjectKey,
    svc: &Service,
    slices: &[(&ObjectKey, &EndpointSlice)],
    legacy: Option<&Endpoints>,
    node: &NodeContext,
    zone: &str,
) -> ServiceResult {
    let mut result = ServiceResult::default();
    let (parsed, soft) = match service::parse_service(key, svc, node) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return result,
        Err(warning) => {
            result.warnings.push(warning);
            return result;
        }
    };
    result.warnings.extend(soft);
    if parsed.ports.is_empty() {
        return result;
    }
    result.created = svc.metadata.creation_timestamp.clone();
    // Endpoint objects are only read for services that produce ports, so a slice of a
    // skipped service never warns.
    let groups = endpoint_groups(key, slices, legacy, node, &mut result.warnings);
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
            key: port_key,
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
        result.ports.push(Arc::new(port));
    }
    result
}

/// Computes what this node should program from everything the sources have seen.
///
/// Never panics on any input: an invalid object is skipped with one warning naming it and the
/// field, and every other service keeps working. A frontend claimed by several service ports
/// is left to one of them (module `conflicts`), with a warning naming both.
///
/// This is a fresh [`ModelCache`]'s first update; a long-lived caller keeps the cache and
/// pays only for what changed.
pub fn compute_desired_state(objects: &ClusterObjects, node: &NodeContext) -> Computed {
    let mut cache = ModelCache::default();
    cache.update(objects, node);
    Computed {
        warnings: cache.warnings(),
        state: cache.into_state(),
    }
}
