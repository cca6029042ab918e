//! Switchyard's pure core: Kubernetes objects -> desired dataplane state for this node -> diff,
//! and the dataplane renderings of that state ([`iptables`] rules, the [`ebpf_plan`] of map
//! writes, the [`conntrack`] entries iptables mode deletes, the [`tc_conntrack`] flows ebpf mode
//! expires).
//!
//! Nothing in this crate does I/O or reads the clock, and its dependency graph holds no
//! runtime, kernel or API-client crate; the sources fill [`ClusterObjects`], the dataplanes
//! consume [`DesiredState`] and [`StateDiff`].
//!
//! Flow: [`compute_desired_state`] reads [`ClusterObjects`] for one [`NodeContext`] and returns
//! a [`DesiredState`] (one [`ServicePort`] per service port this node proxies) plus the
//! [`InputWarning`]s about objects it had to skip; [`StateDiff::between`] compares two states
//! so dataplanes can resync only what changed. Semantics follow upstream kube-proxy
//! (`pkg/proxy/serviceport.go`, `endpointslicecache.go`, `topology.go`), including the
//! topology hints (`hints.forZones`, `hints.forNodes`) against this node's zone label.
//!
//! Decisions worth knowing when reading the code:
//! - Bad input never fails the computation. An invalid field makes its object (Service,
//!   EndpointSlice, Endpoints) skipped with exactly one [`InputWarning`]; a value that is valid
//!   Kubernetes but cannot be used here (an address of a family this node does not serve)
//!   drops only that value, with a warning, and the object is kept.
//! - A service is served in the families it has a cluster IP for on this node; its NodePort,
//!   external and LoadBalancer addresses and endpoints of other families are left out. Slices
//!   of another family are expected in dual-stack clusters and ignored without a warning.
//! - When a service has EndpointSlices, its legacy Endpoints object is not read.
//! - Warnings are recomputed on every call; callers that log them should log changes only.

mod build;
mod conflicts;
pub mod conntrack;
pub mod conntrack_sysctls;
mod diff;
pub mod ebpf_plan;
mod endpoints;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod health_check;
mod incremental;
pub mod iptables;
mod map_diff;
mod node;
mod objects;
mod parse;
mod service;
mod service_port;
pub mod status;
mod sync_counts;
pub mod tc_conntrack;
mod topology;
mod warnings;

#[cfg(test)]
mod tests;

pub use build::{compute_desired_state, Computed};
pub use diff::StateDiff;
pub use endpoints::{Endpoint, TopologyHints, LABEL_SERVICE_NAME};
pub use health_check::{
    health_check_services, HealthCheckBind, HealthCheckService, HealthChecks, ListenerPlan,
    ListenerSpec,
};
pub use incremental::{Before, ModelCache};
pub use node::{reported_node_ips, select_nodeport_addresses, NodeContext, DEFAULT_NODEPORT_RANGE};
pub use objects::{ClusterObjects, ObjectKey, DEFAULT_NAMESPACE};
pub use service::{
    DEFAULT_AFFINITY_TIMEOUT_SECONDS, LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME,
    MAX_AFFINITY_TIMEOUT_SECONDS,
};
pub use service_port::{
    DesiredState, Frontend, FrontendKind, Protocol, ServicePort, ServicePortKey, TrafficPolicy,
};
pub use sync_counts::{NoLocalEndpoints, ObjectChanges};
pub use topology::{Topology, TopologyMode, LABEL_TOPOLOGY_ZONE};
pub use warnings::{kinds, InputWarning};
