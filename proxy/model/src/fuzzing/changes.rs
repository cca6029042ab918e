//! Fuzz bytes -> a sequence of object changes a source could make.
//!
//! Values come from small pools, so that changes meet: names collide, cluster IPs, external
//! IPs and NodePorts are shared between services, slices move between services. The pools
//! hold the hostile values too (ports 0, -1, 65536 and `i32::MAX`, addresses that are not
//! addresses, unknown enum values, names with quotes and control characters), so the
//! fuzzer's job is finding the combinations.
use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    ClientIPConfig, EndpointAddress, EndpointPort as LegacyPort, EndpointSubset, Endpoints,
    LoadBalancerIngress, LoadBalancerStatus, Node, Service, ServicePort, ServiceSpec,
    ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode, ForZone,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::Deserialize;

use super::bytes::Bytes;
use super::MAX_CHANGES;
use crate::{
    ClusterObjects, NodeContext, ObjectKey, LABEL_HEADLESS, LABEL_SERVICE_NAME,
    LABEL_SERVICE_PROXY_NAME, LABEL_TOPOLOGY_ZONE,
};

/// Namespaces; the empty one reads as `default`.
const NAMESPACES: &[&str] = &["default", "", "other"];
/// Service names (the first ones most often), plus the unusual.
const SERVICES: &[&str] = &[
    "svc-0",
    "svc-1",
    "svc-2",
    "svc-3",
    "",
    "UPPER.dotted",
    "ünï-名前",
    "x23456789012345678901234567890123456789012345678901234567890123",
];
/// Node names: this node's first.
const NODES: &[&str] = &["node-a", "node-b", ""];
const ZONES: &[&str] = &["zone-a", "zone-b", ""];
/// Cluster, external and LoadBalancer addresses share a pool, so they meet.
const SERVICE_IPS: &[&str] = &[
    "198.18.128.10",
    "198.18.128.11",
    "198.18.200.1",
    "2001:db8::a",
    "2001:db8::b",
    "198.018.128.010",
    "::ffff:198.18.128.11",
    "None",
    "",
    "198.18.128.256",
    "198.18.128.10/32",
    " 198.18.128.10",
    "0.0.0.0",
    "::",
];
const ENDPOINT_IPS: &[&str] = &[
    "198.19.0.10",
    "198.19.0.11",
    "198.19.0.12",
    "2001:db8:1::10",
    "2001:db8:1::11",
    "198.019.000.010",
    "::ffff:198.19.0.13",
    "198.19.0.300",
    "",
    "fe80::1%eth0",
];
const TYPES: &[&str] = &[
    "ClusterIP",
    "NodePort",
    "LoadBalancer",
    "ExternalName",
    "",
    "nodeport",
];
const PORT_NAMES: &[&str] = &[
    "",
    "http",
    "dns",
    "HTTP",
    "a\nb",
    "q\"uote",
    "back\\slash",
    "rlo\u{202e}x",
];
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP", "tcp", "ICMP", ""];
const PORTS: &[i32] = &[80, 81, 53, 8080, 0, -1, 65535, 65536, i32::MAX, i32::MIN];
const NODE_PORTS: &[i32] = &[30000, 30001, 32767, 0, 29999, 32768, 65536, -30000];
const RANGES: &[&str] = &[
    "203.0.113.0/24",
    " 198.51.100.0/24 ",
    "2001:db8::/32",
    "198.18.0.10/32",
    "0.0.0.0/0",
    "203.0.113.7/33",
    "bogus",
];
const AFFINITY: &[&str] = &["None", "ClientIP", "", "Sticky"];
const TIMEOUTS: &[i32] = &[10800, 1, 86400, 0, 86401, -1, i32::MAX];
const POLICIES: &[&str] = &["Cluster", "Local", "", "local"];
const IP_MODES: &[&str] = &["VIP", "Proxy", "Other"];
const CREATED: &[&str] = &[
    "2026-01-01T00:00:00Z",
    "2026-01-02T00:00:00Z",
    "2026-01-02T00:00:00Z",
];
const ADDRESS_TYPES: &[&str] = &["IPv4", "IPv6", "FQDN", "ipv4"];
const SLICES: usize = 6;

/// One change to the objects or to the node, as a source or the node's configuration makes it.
#[derive(Clone, Debug)]
pub enum Change {
    /// A Service written.
    Service(Arc<Service>),
    /// A Service deleted.
    DeleteService(ObjectKey),
    /// An EndpointSlice written.
    Slice(Arc<EndpointSlice>),
    /// An EndpointSlice deleted.
    DeleteSlice(ObjectKey),
    /// A legacy Endpoints object written.
    Endpoints(Arc<Endpoints>),
    /// A legacy Endpoints object deleted.
    DeleteEndpoints(ObjectKey),
    /// A Node written.
    Node(Arc<Node>),
    /// A Node deleted.
    DeleteNode(String),
    /// The `n`-th object of each kind replaced by an equal copy (a resync of the source).
    Touch(usize),
    /// This node's context switched (see [`node_context`]).
    NodeContext(usize),
}

/// Decodes at most [`MAX_CHANGES`] changes; every input decodes.
pub fn decode(data: &[u8]) -> Vec<Change> {
    let mut bytes = Bytes::new(data);
    let mut out = Vec::new();
    while !bytes.is_empty() && out.len() < MAX_CHANGES {
        out.push(change(&mut bytes));
    }
    out
}

fn change(b: &mut Bytes<'_>) -> Change {
    match b.below(16) {
        0..=4 => Change::Service(Arc::new(service(b))),
        5 => Change::DeleteService(key(b, SERVICES)),
        6..=9 => Change::Slice(Arc::new(slice(b))),
        10 => Change::DeleteSlice(key(b, &slice_names())),
        11 => Change::Endpoints(Arc::new(endpoints(b))),
        12 => Change::DeleteEndpoints(key(b, SERVICES)),
        13 => Change::Node(Arc::new(node(b))),
        14 if b.flag() => Change::DeleteNode(b.pick(NODES).to_owned()),
        14 => Change::Touch(b.below(SLICES)),
        _ => Change::NodeContext(b.below(6)),
    }
}

impl Change {
    /// Applies the change.
    pub fn apply(&self, objects: &mut ClusterObjects, node: &mut NodeContext) {
        match self {
            Change::Service(s) => drop(objects.insert_service_arc(s.clone())),
            Change::DeleteService(k) => drop(objects.remove_service(k)),
            Change::Slice(s) => drop(objects.insert_slice_arc(s.clone())),
            Change::DeleteSlice(k) => drop(objects.remove_slice(k)),
            Change::Endpoints(e) => drop(objects.insert_endpoints_arc(e.clone())),
            Change::DeleteEndpoints(k) => drop(objects.remove_endpoints(k)),
            Change::Node(n) => drop(objects.insert_node_arc(n.clone())),
            Change::DeleteNode(name) => drop(objects.remove_node(name)),
            Change::Touch(n) => touch(objects, *n),
            Change::NodeContext(n) => *node = node_context(*n),
        }
    }
}

/// Replaces the `n`-th object of each map by an equal copy: a new `Arc`, the same value.
fn touch(objects: &mut ClusterObjects, n: usize) {
    fn copy<K: Ord + Clone, V: Clone>(map: &mut BTreeMap<K, Arc<V>>, n: usize) {
        let len = map.len().max(1);
        if let Some((k, v)) = map.iter().nth(n % len) {
            let (k, v) = (k.clone(), Arc::new((**v).clone()));
            map.insert(k, v);
        }
    }
    copy(&mut objects.services, n);
    copy(&mut objects.endpoint_slices, n);
    copy(&mut objects.endpoints, n);
    copy(&mut objects.nodes, n);
}

/// Node context `n % 6`: IPv4, IPv6 or dual-stack, as `node-a` or (for the last ones)
/// `node-b` with a narrow NodePort range and no NodePort addresses.
pub fn node_context(n: usize) -> NodeContext {
    let n = n % 6;
    let (ipv4, ipv6) = [(true, false), (false, true), (true, true)][n % 3];
    let mut addresses = Vec::new();
    if ipv4 {
        addresses.push(std::net::IpAddr::from([198, 18, 0, 10]));
    }
    if ipv6 {
        addresses.push(std::net::IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10]));
    }
    if n < 3 {
        NodeContext {
            name: "node-a".into(),
            nodeport_addresses: addresses,
            ipv4,
            ipv6,
            nodeport_range: crate::DEFAULT_NODEPORT_RANGE,
        }
    } else {
        NodeContext {
            name: "node-b".into(),
            nodeport_addresses: Vec::new(),
            ipv4,
            ipv6,
            nodeport_range: 30000..=30001,
        }
    }
}

fn slice_names() -> Vec<&'static str> {
    ["slice-0", "slice-1", "slice-2", "slice-3", "slice-4", ""].to_vec()
}

fn key(b: &mut Bytes<'_>, names: &[&str]) -> ObjectKey {
    let namespace = b.pick(NAMESPACES);
    let namespace = if namespace.is_empty() {
        crate::DEFAULT_NAMESPACE
    } else {
        namespace
    };
    ObjectKey::new(namespace, b.pick(names))
}

fn string(b: &mut Bytes<'_>, pool: &[&str]) -> Option<String> {
    b.maybe(pool).map(str::to_owned)
}

fn strings(b: &mut Bytes<'_>, max: usize, pool: &[&str]) -> Option<Vec<String>> {
    b.flag().then(|| b.list(max, |b| b.pick(pool).to_owned()))
}

fn meta(b: &mut Bytes<'_>, names: &[&str]) -> ObjectMeta {
    ObjectMeta {
        name: b.flag().then(|| b.pick(names).to_owned()),
        namespace: string(b, NAMESPACES),
        ..ObjectMeta::default()
    }
}

/// Labels the model reads on every kind: another proxy's or the headless label, rarely.
fn proxy_labels(b: &mut Bytes<'_>, labels: &mut BTreeMap<String, String>) {
    match b.below(8) {
        0 => drop(labels.insert(LABEL_SERVICE_PROXY_NAME.into(), "other-proxy".into())),
        1 => drop(labels.insert(LABEL_HEADLESS.into(), String::new())),
        _ => {}
    }
}

fn service(b: &mut Bytes<'_>) -> Service {
    let mut metadata = meta(b, SERVICES);
    // Most services are named: an unnamed one is only rejected.
    if metadata.name.is_none() && b.below(4) != 0 {
        metadata.name = Some(b.pick(SERVICES).to_owned());
    }
    if let Some(text) = b.maybe(CREATED) {
        metadata.creation_timestamp = time(text);
    }
    let mut labels = BTreeMap::new();
    proxy_labels(b, &mut labels);
    metadata.labels = (!labels.is_empty()).then_some(labels);
    let (cluster_ip, cluster_ips) = match b.below(4) {
        0 => (None, None),
        1 | 2 => (Some(b.pick(SERVICE_IPS).to_owned()), None),
        _ => (
            string(b, SERVICE_IPS),
            Some(b.list(2, |b| b.pick(SERVICE_IPS).to_owned())),
        ),
    };
    let spec = ServiceSpec {
        type_: string(b, TYPES),
        cluster_ip,
        cluster_ips,
        ports: Some(b.list(3, service_port)),
        external_ips: strings(b, 2, SERVICE_IPS),
        load_balancer_source_ranges: strings(b, 2, RANGES),
        session_affinity: string(b, AFFINITY),
        session_affinity_config: b.flag().then(|| SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: b.maybe(TIMEOUTS),
            }),
        }),
        external_traffic_policy: string(b, POLICIES),
        internal_traffic_policy: string(b, POLICIES),
        health_check_node_port: b.maybe(NODE_PORTS),
        ..ServiceSpec::default()
    };
    let ingress = b.list(2, |b| LoadBalancerIngress {
        ip: string(b, SERVICE_IPS),
        ip_mode: string(b, IP_MODES),
        ..LoadBalancerIngress::default()
    });
    Service {
        metadata,
        spec: (b.below(8) != 0).then_some(spec),
        status: (!ingress.is_empty()).then(|| ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(ingress),
            }),
            ..ServiceStatus::default()
        }),
    }
}

fn service_port(b: &mut Bytes<'_>) -> ServicePort {
    ServicePort {
        name: string(b, PORT_NAMES),
        protocol: string(b, PROTOCOLS),
        port: b.pick(PORTS),
        node_port: b.maybe(NODE_PORTS),
        ..ServicePort::default()
    }
}

fn time(text: &str) -> Option<Time> {
    let de = serde::de::value::StrDeserializer::<serde::de::value::Error>::new(text);
    Time::deserialize(de).ok()
}

fn slice(b: &mut Bytes<'_>) -> EndpointSlice {
    let names = slice_names();
    let mut metadata = meta(b, &names);
    if metadata.name.is_none() && b.below(4) != 0 {
        metadata.name = Some(b.pick(&names).to_owned());
    }
    let mut labels = BTreeMap::new();
    if let Some(owner) = b.maybe(SERVICES) {
        labels.insert(LABEL_SERVICE_NAME.to_owned(), owner.to_owned());
    }
    proxy_labels(b, &mut labels);
    metadata.labels = (!labels.is_empty()).then_some(labels);
    EndpointSlice {
        metadata,
        address_type: b.pick(ADDRESS_TYPES).to_owned(),
        endpoints: b.list(4, slice_endpoint),
        ports: b.flag().then(|| {
            b.list(3, |b| EndpointPort {
                name: string(b, PORT_NAMES),
                protocol: string(b, PROTOCOLS),
                port: b.maybe(PORTS),
                ..EndpointPort::default()
            })
        }),
    }
}

fn slice_endpoint(b: &mut Bytes<'_>) -> Endpoint {
    let condition = |b: &mut Bytes<'_>| b.maybe(&[true, false]);
    let hints = b.flag().then(|| EndpointHints {
        for_zones: b.flag().then(|| {
            b.list(2, |b| ForZone {
                name: b.pick(ZONES).to_owned(),
            })
        }),
        for_nodes: b.flag().then(|| {
            b.list(2, |b| ForNode {
                name: b.pick(NODES).to_owned(),
            })
        }),
    });
    Endpoint {
        addresses: b.list(2, |b| b.pick(ENDPOINT_IPS).to_owned()),
        conditions: b.flag().then(|| EndpointConditions {
            ready: condition(b),
            serving: condition(b),
            terminating: condition(b),
        }),
        hints,
        node_name: string(b, NODES),
        zone: string(b, ZONES),
        ..Endpoint::default()
    }
}

fn endpoints(b: &mut Bytes<'_>) -> Endpoints {
    let address = |b: &mut Bytes<'_>| EndpointAddress {
        ip: b.pick(ENDPOINT_IPS).to_owned(),
        node_name: string(b, NODES),
        ..EndpointAddress::default()
    };
    Endpoints {
        metadata: meta(b, SERVICES),
        subsets: b.flag().then(|| {
            b.list(2, |b| EndpointSubset {
                addresses: b.flag().then(|| b.list(3, address)),
                not_ready_addresses: b.flag().then(|| b.list(2, address)),
                ports: b.flag().then(|| {
                    b.list(2, |b| LegacyPort {
                        name: string(b, PORT_NAMES),
                        protocol: string(b, PROTOCOLS),
                        port: b.pick(PORTS),
                        ..LegacyPort::default()
                    })
                }),
            })
        }),
    }
}

fn node(b: &mut Bytes<'_>) -> Node {
    let labels = b
        .maybe(ZONES)
        .map(|zone| BTreeMap::from([(LABEL_TOPOLOGY_ZONE.to_owned(), zone.to_owned())]));
    Node {
        metadata: ObjectMeta {
            name: Some(b.pick(NODES).to_owned()),
            labels,
            ..ObjectMeta::default()
        },
        ..Node::default()
    }
}
