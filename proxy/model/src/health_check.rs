//! Service health check node ports: which services need one on this node, how many local
//! endpoints each reports, where the servers listen, and which listeners a change opens and
//! closes (upstream `pkg/proxy/healthcheck/service_health.go` and its inputs,
//! `ServicePortMap.HealthCheckNodePorts` and `EndpointsMap.LocalReadyEndpoints`).
//!
//! The listeners themselves are I/O and live in the binary; everything here is pure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use super::node::select_nodeport_addresses;
use super::objects::ObjectKey;
use super::service_port::ServicePort;

/// One service's health check server as the desired state asks for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheckService {
    /// `spec.healthCheckNodePort`.
    pub port: u16,
    /// Distinct addresses of this node's ready endpoints, over all the service's ports (a
    /// pod serving two ports counts once, as upstream squashes by IP). Terminating endpoints
    /// never count, even when they still serve: the load balancer should drain the node.
    pub local_endpoints: usize,
}

/// The services that need a health check node port (type LoadBalancer with
/// `externalTrafficPolicy: Local` and a port allocated; the model only sets
/// [`crate::ServicePort::health_check_node_port`] for those), with their local endpoint counts.
/// `ports` are the service ports as programmed (a desired state's, or the controller's view
/// with failed writes held back).
pub fn health_check_services<'a>(
    ports: impl IntoIterator<Item = &'a ServicePort>,
) -> BTreeMap<ObjectKey, HealthCheckService> {
    let mut hc_ports: BTreeMap<ObjectKey, u16> = BTreeMap::new();
    let mut local: BTreeMap<ObjectKey, BTreeSet<IpAddr>> = BTreeMap::new();
    for port in ports {
        let Some(hc) = port.health_check_node_port else {
            continue;
        };
        let service = port.key.service();
        // Every port of a service carries the service's one value; the first one decides.
        hc_ports.entry(service.clone()).or_insert(hc);
        let ips = local.entry(service).or_default();
        ips.extend(
            port.endpoints
                .iter()
                .filter(|ep| ep.local && ep.ready)
                .map(|ep| ep.ip),
        );
    }
    hc_ports
        .into_iter()
        .map(|(service, port)| {
            let local_endpoints = local.get(&service).map_or(0, BTreeSet::len);
            (
                service,
                HealthCheckService {
                    port,
                    local_endpoints,
                },
            )
        })
        .collect()
}

/// Where health check servers listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthCheckBind {
    /// Every address of the node (no `nodePortAddresses`): one wildcard listener per port,
    /// serving both families where the node has IPv6, as upstream's `0.0.0.0` does in Go.
    All,
    /// The node's addresses inside `nodePortAddresses`, one listener each. Empty when no
    /// local address matches: then nothing is served, as upstream.
    Addresses(Vec<IpAddr>),
}

impl HealthCheckBind {
    /// Upstream's choice: all addresses without `nodePortAddresses`, else the local addresses
    /// they select (`local` are this node's interface addresses).
    pub fn from_nodeport_addresses(cidrs: &[IpNet], local: &[IpAddr]) -> Self {
        if cidrs.is_empty() {
            HealthCheckBind::All
        } else {
            HealthCheckBind::Addresses(select_nodeport_addresses(local, cidrs))
        }
    }

    /// The addresses to bind: `None` stands for the wildcard.
    pub fn addresses(&self) -> Vec<Option<IpAddr>> {
        match self {
            HealthCheckBind::All => vec![None],
            HealthCheckBind::Addresses(ips) => ips.iter().copied().map(Some).collect(),
        }
    }
}

/// What the health check servers should serve: the services and where to listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthChecks {
    /// Services with their port and local endpoint count.
    pub services: BTreeMap<ObjectKey, HealthCheckService>,
    /// Where every port listens.
    pub bind: HealthCheckBind,
}

impl Default for HealthChecks {
    fn default() -> Self {
        Self {
            services: BTreeMap::new(),
            bind: HealthCheckBind::All,
        }
    }
}

/// The listeners of one service: its port on each address (`None`: the wildcard).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerSpec {
    /// The health check node port.
    pub port: u16,
    /// Addresses to listen on.
    pub addresses: Vec<Option<IpAddr>>,
}

impl ListenerSpec {
    /// Human-readable addresses, for logs.
    pub fn describe(&self) -> String {
        let addresses: Vec<String> = self
            .addresses
            .iter()
            .map(|a| match a {
                Some(ip) if ip.is_ipv6() => format!("[{ip}]:{}", self.port),
                Some(ip) => format!("{ip}:{}", self.port),
                None => format!("{}:{} (all addresses)", Ipv4Addr::UNSPECIFIED, self.port),
            })
            .collect();
        addresses.join(", ")
    }
}

impl HealthChecks {
    /// Each service's listeners.
    pub fn listeners(&self) -> BTreeMap<ObjectKey, ListenerSpec> {
        let addresses = self.bind.addresses();
        self.services
            .iter()
            .map(|(service, hc)| {
                (
                    service.clone(),
                    ListenerSpec {
                        port: hc.port,
                        addresses: addresses.clone(),
                    },
                )
            })
            .collect()
    }
}

/// The listener changes that take `open` (what is listening now) to `wanted`: a service
/// whose port or addresses changed is closed and opened again, a gone one closed, a new one
/// (or one that failed before and so is not in `open`) opened; an unchanged one is left alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenerPlan {
    /// Services whose listeners close, first (a port may move to another service).
    pub close: Vec<ObjectKey>,
    /// Services whose listeners open, after the closes.
    pub open: Vec<(ObjectKey, ListenerSpec)>,
}

impl ListenerPlan {
    /// The plan from `open` to `wanted`.
    pub fn between(
        open: &BTreeMap<ObjectKey, ListenerSpec>,
        wanted: &BTreeMap<ObjectKey, ListenerSpec>,
    ) -> Self {
        let close = open
            .iter()
            .filter(|(service, spec)| wanted.get(*service) != Some(*spec))
            .map(|(service, _)| service.clone())
            .collect();
        let open = wanted
            .iter()
            .filter(|(service, spec)| open.get(*service) != Some(*spec))
            .map(|(service, spec)| (service.clone(), spec.clone()))
            .collect();
        Self { close, open }
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.close.is_empty() && self.open.is_empty()
    }
}
