//! Counts upstream kube-proxy exports as metrics, computed from the objects and the desired
//! state: service ports with a Local policy and no local endpoint
//! (`sync_proxy_rules_no_local_endpoints_total`), and which objects changed between two
//! snapshots (`sync_proxy_rules_{service,endpoint}_changes_{total,pending}`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::endpoints::LABEL_SERVICE_NAME;
use super::map_diff::differing_keys;
use super::objects::{ClusterObjects, ObjectKey};
use super::service_port::{ServicePort, TrafficPolicy};

/// Service ports whose Local traffic policy leaves them without an endpoint on this node
/// while they have endpoints elsewhere (upstream counts only those: a port without any
/// endpoint is rejected, not dropped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoLocalEndpoints {
    /// `internalTrafficPolicy: Local` ports (`traffic_policy="internal"`).
    pub internal: usize,
    /// `externalTrafficPolicy: Local` ports (`traffic_policy="external"`).
    pub external: usize,
}

impl NoLocalEndpoints {
    /// The counts over `ports` of one family (IPv6 if `ipv6`), as upstream's iptables proxier
    /// of that family counts them: a dual-stack port counts in each family with that family's
    /// endpoints only.
    pub fn of_family<'a>(ports: impl IntoIterator<Item = &'a ServicePort>, ipv6: bool) -> Self {
        let mut counts = Self::default();
        for port in ports {
            let internal = port.internal_traffic_policy == TrafficPolicy::Local;
            let external = port.external_traffic_policy == TrafficPolicy::Local;
            // Cheap first: most ports have no Local policy (this runs on every sync).
            if !internal && !external {
                continue;
            }
            if !port.cluster_ips.iter().any(|ip| ip.is_ipv6() == ipv6) {
                continue;
            }
            // Only Local ports with endpoints of both families pay for the copy.
            let own_family;
            let port = if port.endpoints.iter().all(|ep| ep.ip.is_ipv6() == ipv6) {
                port
            } else {
                own_family = ServicePort {
                    endpoints: port
                        .endpoints
                        .iter()
                        .filter(|ep| ep.ip.is_ipv6() == ipv6)
                        .cloned()
                        .collect(),
                    ..port.clone()
                };
                &own_family
            };
            // Upstream: `hasEndpoints` and no local endpoint for a Local policy.
            if !port.has_any_endpoints() || !port.local_endpoints().is_empty() {
                continue;
            }
            counts.internal += usize::from(internal);
            counts.external += usize::from(external);
        }
        counts
    }
}

/// What changed between two snapshots of the objects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectChanges {
    /// Services added, removed or changed.
    pub services: BTreeSet<ObjectKey>,
    /// EndpointSlices and legacy Endpoints added, removed or changed.
    pub endpoint_objects: usize,
    /// The services those endpoint objects belong to (a slice by its service-name label, a
    /// legacy Endpoints by its own name); upstream's pending count is per service.
    pub endpoint_services: BTreeSet<ObjectKey>,
}

impl ObjectChanges {
    /// The changes from `old` to `new`. Objects are compared by identity first (sources share
    /// unchanged objects between snapshots), then by content, so a re-read that changed
    /// nothing counts nothing.
    pub fn between(old: &ClusterObjects, new: &ClusterObjects) -> Self {
        let mut changes = Self {
            services: changed_keys(&old.services, &new.services)
                .into_iter()
                .cloned()
                .collect(),
            ..Self::default()
        };
        for key in changed_keys(&old.endpoint_slices, &new.endpoint_slices) {
            changes.endpoint_objects += 1;
            let slice = new
                .endpoint_slices
                .get(key)
                .or_else(|| old.endpoint_slices.get(key));
            let service = slice.and_then(|s| s.metadata.labels.as_ref()?.get(LABEL_SERVICE_NAME));
            if let Some(service) = service {
                changes
                    .endpoint_services
                    .insert(ObjectKey::new(key.namespace.clone(), service.clone()));
            }
        }
        for key in changed_keys(&old.endpoints, &new.endpoints) {
            changes.endpoint_objects += 1;
            changes.endpoint_services.insert(key.clone());
        }
        changes
    }
}

/// Keys present in only one map, or whose objects differ: by identity first, then by
/// content.
fn changed_keys<'a, T: PartialEq>(
    old: &'a BTreeMap<ObjectKey, Arc<T>>,
    new: &'a BTreeMap<ObjectKey, Arc<T>>,
) -> Vec<&'a ObjectKey> {
    differing_keys(old, new, Arc::ptr_eq, |o, n| o == n)
}
