//! The Kubernetes API object source of the scenario runner ([`super::model::Via::Api`]).
//!
//! Every node that runs switchyard gets its own [`FakeApiServer`], listening on
//! 127.0.0.1:6443 inside that node's network namespace, and switchyard runs with
//! `--kubeconfig` pointing at it. The scenario's manifest files are turned into API calls,
//! identically on every server:
//!
//! - writing a file applies each of its objects, then deletes the objects its previous
//!   version had and the new one lacks;
//! - removing a file deletes all of its objects;
//! - an object that another file still holds is not deleted (so moving an object between
//!   files in one edit step does not blink).
//!
//! Legacy v1 Endpoints are not served by the API (switchyard, like kube-proxy, watches
//! only EndpointSlices): they are mirrored into EndpointSlices here, as the cluster's
//! endpointslice-mirroring controller does for selector-less services (the only ones the
//! table writes Endpoints for).
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Map, Value};
use switchyard_testbed::fake_apiserver::{FakeApiServer, Kind};
use switchyard_testbed::{Manifests, Node};

/// Where each node's server listens, inside the node's network namespace.
pub const API_ADDR: &str = "127.0.0.1:6443";

/// An object in the API: kind, namespace (empty for nodes), name.
pub type ObjectKey = (Kind, String, String);

/// The managed-by label value of slices the mirroring controller writes.
const MIRRORING_CONTROLLER: &str = "endpointslicemirroring-controller.k8s.io";

/// The fake API servers of one scenario and what each manifest file put into them.
pub struct ApiObjects {
    /// One server per proxied node: (node index, server, kubeconfig it wrote).
    servers: Vec<(usize, FakeApiServer, PathBuf)>,
    /// The objects each file currently stands for, in document order.
    files: BTreeMap<String, Vec<ObjectKey>>,
    /// Holds the kubeconfigs; removed on drop (after the servers, declared above).
    _dir: Manifests,
}

impl ApiObjects {
    /// Starts a server in each of `nodes`' network namespaces and writes its kubeconfig.
    pub fn start(nodes: &[&Node]) -> Result<Self, String> {
        let dir = Manifests::new().map_err(|e| format!("kubeconfig dir: {e}"))?;
        let bind: SocketAddr = API_ADDR.parse().expect("a socket address");
        let mut servers = Vec::new();
        for node in nodes {
            let server = FakeApiServer::start_in_netns(&node.netns_path, bind)
                .map_err(|e| format!("starting the fake API server on {}: {e}", node.name))?;
            let kubeconfig = dir.path().join(format!("{}.kubeconfig", node.name));
            server
                .kubeconfig(&kubeconfig)
                .map_err(|e| format!("{}: {e}", node.name))?;
            servers.push((node.index, server, kubeconfig));
        }
        Ok(ApiObjects {
            servers,
            files: BTreeMap::new(),
            _dir: dir,
        })
    }

    /// The kubeconfig for switchyard on node `n`.
    pub fn kubeconfig(&self, n: usize) -> Result<&Path, String> {
        self.servers
            .iter()
            .find(|(i, _, _)| *i == n)
            .map(|(_, _, path)| path.as_path())
            .ok_or_else(|| format!("no fake API server on node{n}"))
    }

    /// Writes (or replaces) manifest file `file`: applies its objects, then deletes those
    /// only its previous version had.
    pub fn write(&mut self, file: &str, yaml: &str) -> Result<(), String> {
        let objects = api_objects(yaml).map_err(|e| format!("{file}: {e}"))?;
        for (_, server, _) in &self.servers {
            for (key, object) in &objects {
                server
                    .apply(object.clone())
                    .map_err(|e| format!("{file}: applying {}: {e}", show(key)))?;
            }
        }
        let keys = objects.into_iter().map(|(key, _)| key).collect();
        let old = self.files.insert(file.to_owned(), keys).unwrap_or_default();
        self.delete_unowned(file, old)
    }

    /// Removes manifest file `file`: deletes its objects.
    pub fn remove(&mut self, file: &str) -> Result<(), String> {
        let old = self
            .files
            .remove(file)
            .ok_or_else(|| format!("{file}: no such manifest file"))?;
        self.delete_unowned(file, old)
    }

    /// Deletes those of `keys` (what `file` held) that no file holds now.
    fn delete_unowned(&self, file: &str, keys: Vec<ObjectKey>) -> Result<(), String> {
        for key in keys {
            if self.files.values().flatten().any(|k| *k == key) {
                continue;
            }
            let (kind, namespace, name) = &key;
            for (_, server, _) in &self.servers {
                server
                    .delete(*kind, namespace, name)
                    .map_err(|e| format!("{file}: deleting {}: {e}", show(&key)))?;
            }
        }
        Ok(())
    }

    /// For failure reports: each server's request count and open watches.
    pub fn describe(&self) -> String {
        self.servers
            .iter()
            .map(|(n, server, _)| {
                let watches: Vec<String> = Kind::ALL
                    .iter()
                    .map(|k| format!("{k} {}", server.open_watches(*k)))
                    .collect();
                format!(
                    "--- fake API server on node{n} ({}): {} requests, resourceVersion {}, \
                     open watches: {} ---",
                    server.url(),
                    server.requests().len(),
                    server.resource_version(),
                    watches.join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn show((kind, namespace, name): &ObjectKey) -> String {
    if namespace.is_empty() {
        format!("{kind} {name}")
    } else {
        format!("{kind} {namespace}/{name}")
    }
}

/// The API objects a manifest file stands for, with their keys, in document order
/// (a `kind: List` contributes its items; Endpoints become mirrored EndpointSlices).
pub fn api_objects(yaml: &str) -> Result<Vec<(ObjectKey, Value)>, String> {
    let mut out = Vec::new();
    for document in serde_norway::Deserializer::from_str(yaml) {
        let value = Value::deserialize(document).map_err(|e| format!("parsing YAML: {e}"))?;
        match value {
            Value::Null => {}
            Value::Object(ref map) if kind_of(map) == "List" => {
                let items = map.get("items").and_then(Value::as_array);
                for item in items.into_iter().flatten() {
                    push_object(&mut out, item.clone())?;
                }
            }
            other => push_object(&mut out, other)?,
        }
    }
    Ok(out)
}

fn kind_of(map: &Map<String, Value>) -> &str {
    map.get("kind").and_then(Value::as_str).unwrap_or_default()
}

fn push_object(out: &mut Vec<(ObjectKey, Value)>, object: Value) -> Result<(), String> {
    let Value::Object(map) = &object else {
        return Err(format!("a document that is no object: {object}"));
    };
    if kind_of(map) == "Endpoints" {
        for slice in mirror_endpoints(&object)? {
            out.push((key_of(&slice)?, slice));
        }
    } else {
        out.push((key_of(&object)?, object));
    }
    Ok(())
}

/// The key the fake API server files `object` under (a missing namespace is `default`).
fn key_of(object: &Value) -> Result<ObjectKey, String> {
    let kind_name = object["kind"].as_str().unwrap_or_default();
    let kind = Kind::from_name(kind_name).ok_or_else(|| {
        format!("kind {kind_name:?} is not served by the API (Service, EndpointSlice, Node)")
    })?;
    let meta = &object["metadata"];
    let name = meta["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("a {kind} without metadata.name"))?;
    let namespace = if kind.namespaced() {
        meta["namespace"]
            .as_str()
            .filter(|ns| !ns.is_empty())
            .unwrap_or("default")
    } else {
        ""
    };
    Ok((kind, namespace.to_owned(), name.to_owned()))
}

/// What the endpointslice-mirroring controller makes of a v1 Endpoints: per subset and
/// address family, one slice labelled with the service and the controller, with the
/// subset's ports, ready addresses as `ready: true` and not-ready ones as `ready: false`
/// (only `ready` is set, as upstream's `addressToEndpoint` does).
fn mirror_endpoints(endpoints: &Value) -> Result<Vec<Value>, String> {
    let meta = &endpoints["metadata"];
    let name = meta["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or("an Endpoints without metadata.name")?;
    let namespace = meta["namespace"].as_str().unwrap_or("default");
    let mut labels = meta["labels"].as_object().cloned().unwrap_or_default();
    labels.insert("kubernetes.io/service-name".into(), name.into());
    labels.insert(
        "endpointslice.kubernetes.io/managed-by".into(),
        MIRRORING_CONTROLLER.into(),
    );
    let empty = Vec::new();
    let subsets = endpoints["subsets"].as_array().unwrap_or(&empty);
    let mut slices = Vec::new();
    for (s, subset) in subsets.iter().enumerate() {
        let ports: Vec<Value> = subset["ports"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|p| {
                let mut port = json!({
                    "port": p["port"],
                    "protocol": p["protocol"].as_str().unwrap_or("TCP"),
                });
                if let Some(name) = p["name"].as_str() {
                    port["name"] = name.into();
                }
                port
            })
            .collect();
        let mut by_family: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
        for (list, ready) in [("addresses", true), ("notReadyAddresses", false)] {
            for address in subset[list].as_array().unwrap_or(&empty) {
                let ip = address["ip"].as_str().ok_or_else(|| {
                    format!("Endpoints {namespace}/{name}: an address without ip")
                })?;
                let family = if ip.contains(':') { "IPv6" } else { "IPv4" };
                let mut endpoint = json!({"addresses": [ip], "conditions": {"ready": ready}});
                for field in ["nodeName", "hostname", "targetRef"] {
                    if let Some(v) = address.get(field).filter(|v| !v.is_null()) {
                        endpoint[field] = v.clone();
                    }
                }
                by_family.entry(family).or_default().push(endpoint);
            }
        }
        for (family, endpoints) in by_family {
            slices.push(json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": format!("{name}-mirror-{s}-{}", family.to_ascii_lowercase()),
                    "namespace": namespace,
                    "labels": labels,
                },
                "addressType": family,
                "ports": ports,
                "endpoints": endpoints,
            }));
        }
    }
    Ok(slices)
}
