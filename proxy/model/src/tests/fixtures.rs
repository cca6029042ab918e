//! Builders for test objects: a small valid base object per kind, patched with JSON (so a
//! table row only states what differs), plus YAML for whole-manifest scenarios.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::{
    compute_desired_state, ClusterObjects, Computed, Endpoint, NodeContext, ServicePort,
    ServicePortKey, DEFAULT_NODEPORT_RANGE,
};

/// Name of the node the tests compute for.
pub const NODE: &str = "node-a";

/// Merges `patch` into `base`: objects merge key by key, `null` deletes a key, anything else
/// (arrays included) replaces.
pub fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(&k);
                } else {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (b, p) => *b = p,
    }
}

/// Deserializes a JSON value into a k8s-openapi type; test input is trusted.
pub fn from_json<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("test fixture must deserialize")
}

/// Deserializes YAML into a k8s-openapi type; test input is trusted.
pub fn from_yaml<T: DeserializeOwned>(yaml: &str) -> T {
    serde_norway::from_str(yaml).expect("test fixture must deserialize")
}

/// A ClusterIP service `default/<name>` (clusterIP 198.18.128.10, one unnamed TCP port 80),
/// patched.
pub fn service(name: &str, patch: Value) -> Service {
    let mut base = json!({
        "metadata": { "name": name, "namespace": "default" },
        "spec": { "clusterIP": "198.18.128.10", "ports": [ { "port": 80, "targetPort": 8080 } ] }
    });
    merge(&mut base, patch);
    from_json(base)
}

/// An IPv4 EndpointSlice `default/<name>` for service `<service>` with one unnamed TCP port
/// 8080 and no endpoints, patched.
pub fn slice(name: &str, service: &str, patch: Value) -> EndpointSlice {
    let mut base = json!({
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": { "kubernetes.io/service-name": service }
        },
        "addressType": "IPv4",
        "ports": [ { "port": 8080 } ],
        "endpoints": []
    });
    merge(&mut base, patch);
    from_json(base)
}

/// A legacy Endpoints `default/<name>`, patched (no subsets by default).
pub fn legacy(name: &str, patch: Value) -> Endpoints {
    let mut base = json!({ "metadata": { "name": name, "namespace": "default" } });
    merge(&mut base, patch);
    from_json(base)
}

/// A slice endpoint entry: one address, its node and its conditions.
pub fn ep(ip: &str, node: &str, conditions: Value) -> Value {
    json!({ "addresses": [ip], "nodeName": node, "conditions": conditions })
}

/// A ready slice endpoint entry on `node`.
pub fn ready(ip: &str, node: &str) -> Value {
    ep(ip, node, json!({ "ready": true }))
}

/// IPv4-only node `node-a` with NodePort address 198.18.1.10.
pub fn node_v4() -> NodeContext {
    NodeContext {
        name: NODE.to_owned(),
        nodeport_addresses: vec!["198.18.1.10".parse().expect("literal")],
        ipv4: true,
        ipv6: false,
        nodeport_range: DEFAULT_NODEPORT_RANGE,
    }
}

/// IPv6-only node `node-a` with NodePort address 2001:db8::10.
pub fn node_v6() -> NodeContext {
    NodeContext {
        nodeport_addresses: vec!["2001:db8::10".parse().expect("literal")],
        ipv4: false,
        ipv6: true,
        ..node_v4()
    }
}

/// Dual-stack node `node-a` with NodePort addresses 198.18.1.10 and 2001:db8::10.
pub fn node_dual() -> NodeContext {
    NodeContext {
        nodeport_addresses: vec![
            "198.18.1.10".parse().expect("literal"),
            "2001:db8::10".parse().expect("literal"),
        ],
        ipv6: true,
        ..node_v4()
    }
}

/// Collects objects into a [`ClusterObjects`].
#[derive(Default)]
pub struct World {
    /// The objects so far.
    pub objects: ClusterObjects,
}

impl World {
    /// An empty world.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a service.
    pub fn svc(mut self, s: Service) -> Self {
        self.objects.insert_service(s);
        self
    }

    /// Adds an EndpointSlice.
    pub fn slice(mut self, s: EndpointSlice) -> Self {
        self.objects.insert_slice(s);
        self
    }

    /// Adds a legacy Endpoints.
    pub fn legacy(mut self, e: Endpoints) -> Self {
        self.objects.insert_endpoints(e);
        self
    }

    /// Computes for `node`.
    pub fn compute(&self, node: &NodeContext) -> Computed {
        compute_desired_state(&self.objects, node)
    }
}

/// Key of a port of service `default/<name>`.
pub fn key(name: &str, port_name: &str, protocol: crate::Protocol) -> ServicePortKey {
    ServicePortKey {
        namespace: "default".to_owned(),
        name: name.to_owned(),
        port_name: port_name.to_owned(),
        protocol,
    }
}

/// The only port of the computed state; fails the test when there is not exactly one.
pub fn only_port(c: &Computed) -> &ServicePort {
    assert_eq!(
        c.state.ports.len(),
        1,
        "expected exactly one service port: {c:#?}"
    );
    c.state.ports.values().next().expect("checked above")
}

/// Parses an address literal.
pub fn ip(text: &str) -> IpAddr {
    text.parse().expect("test literal")
}

/// Parses address literals.
pub fn ips(texts: &[&str]) -> Vec<IpAddr> {
    texts.iter().map(|t| ip(t)).collect()
}

/// `ip:port` of each endpoint, for compact assertions.
pub fn addrs<'a>(eps: impl IntoIterator<Item = &'a Endpoint>) -> Vec<String> {
    eps.into_iter()
        .map(|e| match e.ip {
            IpAddr::V4(_) => format!("{}:{}", e.ip, e.port),
            IpAddr::V6(_) => format!("[{}]:{}", e.ip, e.port),
        })
        .collect()
}

/// The fields of all warnings, for compact assertions.
pub fn warning_fields(c: &Computed) -> Vec<String> {
    c.warnings.iter().map(|w| w.field.clone()).collect()
}
