//! Reading a core/v1 Service into the values the model needs, with validation.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Service, ServiceSpec};

use super::node::NodeContext;
use super::objects::ObjectKey;
use super::parse;
use super::service_port::{Protocol, TrafficPolicy};
use super::warnings::{kinds, InputWarning, ObjectWarnings};

/// Services (and their slices) with this label belong to another service proxy.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Set by the EndpointSlice controller on slices of headless services.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Session affinity timeout when sessionAffinityConfig does not give one (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;
/// Largest session affinity timeout the API accepts (1 day).
pub const MAX_AFFINITY_TIMEOUT_SECONDS: u32 = 86_400;

/// Whether an object with these labels is meant for some other proxy or is headless; upstream
/// kube-proxy filters both kinds out in its informers' label selector.
pub(crate) fn skipped_by_labels(
    labels: Option<&std::collections::BTreeMap<String, String>>,
) -> bool {
    labels
        .is_some_and(|l| l.contains_key(LABEL_SERVICE_PROXY_NAME) || l.contains_key(LABEL_HEADLESS))
}

/// `spec.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

/// One proxied port of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ParsedPort {
    pub(crate) name: String,
    pub(crate) protocol: Protocol,
    pub(crate) port: u16,
    pub(crate) node_port: Option<u16>,
}

/// A validated service, with addresses already narrowed to what this node serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ParsedService {
    pub(crate) cluster_ips: Vec<IpAddr>,
    pub(crate) ports: Vec<ParsedPort>,
    pub(crate) external_ips: Vec<IpAddr>,
    pub(crate) load_balancer_ips: Vec<IpAddr>,
    pub(crate) load_balancer_source_ranges: Vec<IpNet>,
    pub(crate) session_affinity_timeout: Option<u32>,
    pub(crate) external_traffic_policy: TrafficPolicy,
    pub(crate) internal_traffic_policy: TrafficPolicy,
    pub(crate) health_check_node_port: Option<u16>,
}

/// A usable service and the soft warnings found on the way.
pub(crate) type ServiceParse = (ParsedService, Vec<InputWarning>);

/// Reads a Service.
///
/// `Ok(None)`: not proxied by design (ExternalName, headless, labelled for another proxy or
/// headless), silently. `Err`: the one warning that made the whole service unusable.
pub(crate) fn parse_service(
    key: &ObjectKey,
    service: &Service,
    node: &NodeContext,
) -> Result<Option<ServiceParse>, InputWarning> {
    if skipped_by_labels(service.metadata.labels.as_ref()) {
        return Ok(None);
    }
    let mut w = ObjectWarnings::new(kinds::SERVICE, key);
    // Without a name the port keys, chain names and log lines of this service would all read
    // `namespace/`, colliding with any other nameless one.
    if key.name.is_empty() {
        return Err(w.fatal("metadata.name", "missing; a Service needs a name"));
    }
    let default_spec = ServiceSpec::default();
    let spec = service.spec.as_ref().unwrap_or(&default_spec);

    let svc_type = match spec.type_.as_deref() {
        None | Some("") | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => return Ok(None),
        Some(other) => {
            return Err(w.fatal(
                "spec.type",
                format!(
                    "unknown service type {other:?} (expected ClusterIP, NodePort, LoadBalancer or ExternalName)"
                ),
            ))
        }
    };

    let Some(cluster_ips) = cluster_ips(&mut w, spec, node)? else {
        return Ok(None);
    };
    let ports = ports(&mut w, spec, svc_type, node)?;
    let external_ips = addresses_of_families(
        &mut w,
        spec.external_ips
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, text)| (format!("spec.externalIPs[{i}]"), text.as_str())),
        &cluster_ips,
        node,
    )?;

    let (load_balancer_ips, load_balancer_source_ranges) = if svc_type == ServiceType::LoadBalancer
    {
        (
            load_balancer_ips(&mut w, service, &cluster_ips, node)?,
            source_ranges(&w, spec)?,
        )
    } else {
        // Only LoadBalancer IPs are filtered by source ranges; on other types the field is
        // meaningless and not worth rejecting the service over.
        (Vec::new(), Vec::new())
    };

    let session_affinity_timeout = session_affinity(&w, spec)?;
    let external_policy = traffic_policy(
        &w,
        "spec.externalTrafficPolicy",
        spec.external_traffic_policy.as_deref(),
    )?;
    let internal_traffic_policy = traffic_policy(
        &w,
        "spec.internalTrafficPolicy",
        spec.internal_traffic_policy.as_deref(),
    )?;
    // Upstream ExternalPolicyLocal: the policy only applies to services reachable from outside.
    let externally_accessible =
        matches!(svc_type, ServiceType::NodePort | ServiceType::LoadBalancer)
            || spec
                .external_ips
                .as_ref()
                .is_some_and(|ips| !ips.is_empty());
    let external_traffic_policy = if externally_accessible {
        external_policy
    } else {
        TrafficPolicy::Cluster
    };
    // Upstream NeedsHealthCheck: LoadBalancer with externalTrafficPolicy Local. An unset or zero
    // port means none was allocated (upstream logs and serves no health check).
    let health_check_node_port = match spec.health_check_node_port {
        Some(p)
            if p != 0
                && svc_type == ServiceType::LoadBalancer
                && external_traffic_policy == TrafficPolicy::Local =>
        {
            Some(parse::port_number(p).map_err(|msg| w.fatal("spec.healthCheckNodePort", msg))?)
        }
        _ => None,
    };

    Ok(Some((
        ParsedService {
            cluster_ips,
            ports,
            external_ips,
            load_balancer_ips,
            load_balancer_source_ranges,
            session_affinity_timeout,
            external_traffic_policy,
            internal_traffic_policy,
            health_check_node_port,
        },
        w.into_soft(),
    )))
}

/// The cluster IPs this node serves; `Ok(None)` for a headless service.
///
/// An address of a family the node does not serve is dropped with a soft warning (a
/// dual-stack service on a single-stack node keeps working on the other family). When no
/// address is left the service cannot be served at all, which is one fatal warning.
fn cluster_ips(
    w: &mut ObjectWarnings<'_>,
    spec: &ServiceSpec,
    node: &NodeContext,
) -> Result<Option<Vec<IpAddr>>, InputWarning> {
    // spec.clusterIPs supersedes spec.clusterIP (its first entry equals it when both are set).
    let (field, texts): (&str, Vec<&str>) = match spec.cluster_ips.as_deref() {
        Some(list) if !list.is_empty() => {
            ("spec.clusterIPs", list.iter().map(String::as_str).collect())
        }
        _ => match spec.cluster_ip.as_deref() {
            Some(ip) if !ip.is_empty() => ("spec.clusterIP", vec![ip]),
            _ => {
                return Err(w.fatal(
                    "spec.clusterIP",
                    "no cluster IP; the API server allocates one, in manifests it must be set",
                ))
            }
        },
    };
    if texts.first() == Some(&"None") {
        return Ok(None);
    }
    let indexed = field == "spec.clusterIPs";
    let path = |i: usize| {
        if indexed {
            format!("{field}[{i}]")
        } else {
            field.to_owned()
        }
    };

    let mut all: Vec<IpAddr> = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let ip = parse::parse_ip(text)
            .ok_or_else(|| w.fatal(path(i), format!("{text:?} is not a valid IP address")))?;
        if all.iter().any(|seen| seen.is_ipv6() == ip.is_ipv6()) {
            return Err(w.fatal(
                path(i),
                format!(
                    "second {} cluster IP {ip}; at most one per family",
                    parse::family_name(&ip)
                ),
            ));
        }
        all.push(ip);
    }
    let served: Vec<IpAddr> = all.iter().copied().filter(|ip| node.serves(ip)).collect();
    if served.is_empty() {
        let first = all
            .first()
            .map(|ip| (ip.to_string(), parse::family_name(ip)));
        let (ip, family) = first.unwrap_or_default();
        return Err(w.fatal(
            path(0),
            format!(
                "{ip} is {family} but this node serves {}; the service has no cluster IP this node can serve",
                node.families_text()
            ),
        ));
    }
    for (i, ip) in all.iter().enumerate() {
        if !node.serves(ip) {
            w.soft(
                path(i),
                format!(
                    "{ip} is {} but this node serves {}; address ignored",
                    parse::family_name(ip),
                    node.families_text()
                ),
            );
        }
    }
    Ok(Some(served))
}

/// Parses a list of addresses, keeping those of a family the service has a served cluster IP
/// for (traffic to another family could not reach the service's endpoints).
fn addresses_of_families<'t>(
    w: &mut ObjectWarnings<'_>,
    texts: impl Iterator<Item = (String, &'t str)>,
    cluster_ips: &[IpAddr],
    node: &NodeContext,
) -> Result<Vec<IpAddr>, InputWarning> {
    let mut out = Vec::new();
    for (path, text) in texts {
        let ip = parse::parse_ip(text)
            .ok_or_else(|| w.fatal(&path, format!("{text:?} is not a valid IP address")))?;
        if cluster_ips.iter().any(|c| c.is_ipv6() == ip.is_ipv6()) {
            out.push(ip);
        } else if !node.serves(&ip) {
            w.soft(
                path,
                format!(
                    "{ip} is {} but this node serves {}; address ignored",
                    parse::family_name(&ip),
                    node.families_text()
                ),
            );
        } else {
            w.soft(
                path,
                format!(
                    "{ip} is {} but the service has no {} cluster IP; address ignored",
                    parse::family_name(&ip),
                    parse::family_name(&ip)
                ),
            );
        }
    }
    Ok(out)
}

/// `spec.ports`: validated.
fn ports(
    w: &mut ObjectWarnings<'_>,
    spec: &ServiceSpec,
    svc_type: ServiceType,
    node: &NodeContext,
) -> Result<Vec<ParsedPort>, InputWarning> {
    let mut out: Vec<ParsedPort> = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let protocol = parse::protocol(p.protocol.as_deref())
            .map_err(|msg| w.fatal(format!("spec.ports[{i}].protocol"), msg))?;
        let port = parse::port_number(p.port)
            .map_err(|msg| w.fatal(format!("spec.ports[{i}].port"), msg))?;
        let name = p.name.clone().unwrap_or_default();
        // The name is part of the port's key, so of every log line and warning naming it.
        if name.chars().any(parse::is_unsafe_char) {
            return Err(w.fatal(
                format!("spec.ports[{i}].name"),
                format!("{name:?} contains control characters (a port name is a DNS label)"),
            ));
        }
        // The key of a service port is name+protocol; a duplicate would silently shadow one.
        if out.iter().any(|o| o.name == name && o.protocol == protocol) {
            return Err(w.fatal(
                format!("spec.ports[{i}].name"),
                format!("duplicate port name {name:?} for protocol {protocol}"),
            ));
        }
        let node_port = match (svc_type, p.node_port) {
            // ClusterIP services have no NodePort even if the field is (wrongly) set.
            (ServiceType::ClusterIp, _) | (_, None) | (_, Some(0)) => None,
            (_, Some(np)) => {
                let range = &node.nodeport_range;
                match u16::try_from(np) {
                    Ok(np) if range.contains(&np) => Some(np),
                    _ => {
                        return Err(w.fatal(
                            format!("spec.ports[{i}].nodePort"),
                            format!(
                                "{np} is outside the NodePort range {}-{}",
                                range.start(),
                                range.end()
                            ),
                        ))
                    }
                }
            }
        };
        out.push(ParsedPort {
            name,
            protocol,
            port,
            node_port,
        });
    }
    Ok(out)
}

/// VIP-mode `status.loadBalancer.ingress[].ip`s of the service's served families.
fn load_balancer_ips(
    w: &mut ObjectWarnings<'_>,
    service: &Service,
    cluster_ips: &[IpAddr],
    node: &NodeContext,
) -> Result<Vec<IpAddr>, InputWarning> {
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let mut vips: Vec<(String, &str)> = Vec::new();
    for (i, entry) in ingress.into_iter().flatten().enumerate() {
        // Hostname-only entries (e.g. AWS ELB) have no address to program.
        let Some(ip) = entry.ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        match entry.ip_mode.as_deref() {
            None | Some("VIP") => vips.push((format!("status.loadBalancer.ingress[{i}].ip"), ip)),
            // The load balancer proxies to the node itself; traffic never arrives for the VIP.
            Some("Proxy") => {}
            Some(other) => w.soft(
                format!("status.loadBalancer.ingress[{i}].ipMode"),
                format!("unknown ipMode {other:?} (expected VIP or Proxy); entry ignored"),
            ),
        }
    }
    addresses_of_families(w, vips.into_iter(), cluster_ips, node)
}

/// `spec.loadBalancerSourceRanges`, trimmed (API validation lets whitespace through).
fn source_ranges(w: &ObjectWarnings<'_>, spec: &ServiceSpec) -> Result<Vec<IpNet>, InputWarning> {
    let mut out = Vec::new();
    for (i, text) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        let trimmed = text.trim();
        let net = parse::parse_cidr(trimmed).ok_or_else(|| {
            w.fatal(
                format!("spec.loadBalancerSourceRanges[{i}]"),
                format!("{trimmed:?} is not a valid CIDR"),
            )
        })?;
        out.push(net);
    }
    Ok(out)
}

/// `Some(timeout)` for sessionAffinity ClientIP.
fn session_affinity(
    w: &ObjectWarnings<'_>,
    spec: &ServiceSpec,
) -> Result<Option<u32>, InputWarning> {
    match spec.session_affinity.as_deref() {
        None | Some("") | Some("None") => Ok(None),
        Some("ClientIP") => {
            let configured = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match configured {
                None => Ok(Some(DEFAULT_AFFINITY_TIMEOUT_SECONDS)),
                Some(t) => match u32::try_from(t) {
                    Ok(t) if (1..=MAX_AFFINITY_TIMEOUT_SECONDS).contains(&t) => Ok(Some(t)),
                    _ => Err(w.fatal(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        format!(
                            "{t} is not a valid timeout (1-{MAX_AFFINITY_TIMEOUT_SECONDS} seconds)"
                        ),
                    )),
                },
            }
        }
        Some(other) => Err(w.fatal(
            "spec.sessionAffinity",
            format!("unknown session affinity {other:?} (expected None or ClientIP)"),
        )),
    }
}

/// An external or internal traffic policy field; unset means Cluster.
fn traffic_policy(
    w: &ObjectWarnings<'_>,
    field: &str,
    value: Option<&str>,
) -> Result<TrafficPolicy, InputWarning> {
    match value {
        None | Some("") | Some("Cluster") => Ok(TrafficPolicy::Cluster),
        Some("Local") => Ok(TrafficPolicy::Local),
        Some(other) => Err(w.fatal(
            field,
            format!("unknown traffic policy {other:?} (expected Cluster or Local)"),
        )),
    }
}
