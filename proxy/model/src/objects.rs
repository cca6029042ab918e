//! The raw Kubernetes objects the sources have seen, keyed by namespace/name.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Namespace used when an object's metadata has none, as `kubectl apply` would.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Identity of a Kubernetes object: namespace + name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// The object's namespace.
    pub namespace: String,
    /// The object's name.
    pub name: String,
}

impl ObjectKey {
    /// Builds a key from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Key of an object from its metadata; a missing namespace means [`DEFAULT_NAMESPACE`],
    /// a missing name the empty string.
    pub fn from_meta(meta: &ObjectMeta) -> Self {
        let namespace = match meta.namespace.as_deref() {
            Some(ns) if !ns.is_empty() => ns,
            _ => DEFAULT_NAMESPACE,
        };
        Self::new(namespace, meta.name.clone().unwrap_or_default())
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Everything the sources have seen, keyed by object.
///
/// Sources (manifest directory watcher, kube-rs reflectors) fill it. The map key is the
/// object's identity for the model; metadata inside the object is not consulted again.
/// Objects are shared, not copied: a snapshot holds the same `Arc`s as the reflector stores.
#[derive(Clone, Debug, Default)]
pub struct ClusterObjects {
    /// Services by namespace/name.
    pub services: BTreeMap<ObjectKey, Arc<Service>>,
    /// EndpointSlices by their own namespace/name (joined to services by label).
    pub endpoint_slices: BTreeMap<ObjectKey, Arc<EndpointSlice>>,
    /// Legacy Endpoints by namespace/name (equal to their service's), for selector-less
    /// services in manifest mode.
    pub endpoints: BTreeMap<ObjectKey, Arc<Endpoints>>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, Arc<Node>>,
}

impl ClusterObjects {
    /// Inserts or replaces a Service, keyed by its metadata; returns the key.
    pub fn insert_service(&mut self, service: Service) -> ObjectKey {
        self.insert_service_arc(Arc::new(service))
    }

    /// Inserts or replaces a shared Service (as a reflector store holds it), keyed by its
    /// metadata; returns the key.
    pub fn insert_service_arc(&mut self, service: Arc<Service>) -> ObjectKey {
        let key = ObjectKey::from_meta(&service.metadata);
        self.services.insert(key.clone(), service);
        key
    }

    /// Inserts or replaces an EndpointSlice, keyed by its metadata; returns the key.
    pub fn insert_slice(&mut self, slice: EndpointSlice) -> ObjectKey {
        self.insert_slice_arc(Arc::new(slice))
    }

    /// Inserts or replaces a shared EndpointSlice (as a reflector store holds it), keyed by its
    /// metadata; returns the key.
    pub fn insert_slice_arc(&mut self, slice: Arc<EndpointSlice>) -> ObjectKey {
        let key = ObjectKey::from_meta(&slice.metadata);
        self.endpoint_slices.insert(key.clone(), slice);
        key
    }

    /// Inserts or replaces a legacy Endpoints object, keyed by its metadata; returns the key.
    pub fn insert_endpoints(&mut self, endpoints: Endpoints) -> ObjectKey {
        self.insert_endpoints_arc(Arc::new(endpoints))
    }

    /// Inserts or replaces a shared Endpoints (as a reflector store holds it), keyed by its
    /// metadata; returns the key.
    pub fn insert_endpoints_arc(&mut self, endpoints: Arc<Endpoints>) -> ObjectKey {
        let key = ObjectKey::from_meta(&endpoints.metadata);
        self.endpoints.insert(key.clone(), endpoints);
        key
    }

    /// Inserts or replaces a Node, keyed by its name; returns the name.
    pub fn insert_node(&mut self, node: Node) -> String {
        self.insert_node_arc(Arc::new(node))
    }

    /// Inserts or replaces a shared Node, keyed by its name; returns the name.
    pub fn insert_node_arc(&mut self, node: Arc<Node>) -> String {
        let name = node.metadata.name.clone().unwrap_or_default();
        self.nodes.insert(name.clone(), node);
        name
    }

    /// Removes a Service; returns it if it was present.
    pub fn remove_service(&mut self, key: &ObjectKey) -> Option<Arc<Service>> {
        self.services.remove(key)
    }

    /// Removes an EndpointSlice; returns it if it was present.
    pub fn remove_slice(&mut self, key: &ObjectKey) -> Option<Arc<EndpointSlice>> {
        self.endpoint_slices.remove(key)
    }

    /// Removes a legacy Endpoints object; returns it if it was present.
    pub fn remove_endpoints(&mut self, key: &ObjectKey) -> Option<Arc<Endpoints>> {
        self.endpoints.remove(key)
    }

    /// Removes a Node; returns it if it was present.
    pub fn remove_node(&mut self, name: &str) -> Option<Arc<Node>> {
        self.nodes.remove(name)
    }
}
