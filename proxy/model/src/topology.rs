//! Which endpoints take traffic for a service port (upstream `pkg/proxy/topology.go`).
//!
//! Topology hints (traffic distribution) are not applied: every usable endpoint in the
//! cluster is a candidate for Cluster policy.

use super::endpoints::Endpoint;
use super::service_port::{ServicePort, TrafficPolicy};

/// Ready endpoints; if there are none, those that are serving and terminating (so a rolling
/// update that has only terminating pods left still answers). Never a non-serving endpoint.
fn usable<'a>(candidates: impl Iterator<Item = &'a Endpoint> + Clone) -> Vec<&'a Endpoint> {
    let ready: Vec<&Endpoint> = candidates.clone().filter(|ep| ep.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    candidates
        .filter(|ep| ep.serving && ep.terminating)
        .collect()
}

impl ServicePort {
    /// The cluster set: ready endpoints, else serving+terminating ones, never non-serving.
    pub fn cluster_endpoints(&self) -> Vec<&Endpoint> {
        usable(self.endpoints.iter())
    }

    /// The local set: the same rule applied on its own to this node's endpoints only, so a
    /// local terminating endpoint is used when no local one is ready even if remote ready
    /// endpoints exist.
    pub fn local_endpoints(&self) -> Vec<&Endpoint> {
        usable(self.endpoints.iter().filter(|ep| ep.local))
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
