//! The resource kinds the fake API server serves, and where they live in the API.

use std::fmt;

/// A resource kind served by the fake API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// core/v1 Service (namespaced).
    Service,
    /// discovery.k8s.io/v1 EndpointSlice (namespaced).
    EndpointSlice,
    /// core/v1 Node (cluster-scoped).
    Node,
}

impl Kind {
    /// Every kind, in a fixed order ([`Kind::index`] indexes into it).
    pub const ALL: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Node];

    /// The `kind` field of an object, e.g. `Service`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
        }
    }

    /// The `kind` field of a list response, e.g. `ServiceList`.
    pub fn list_name(self) -> &'static str {
        match self {
            Kind::Service => "ServiceList",
            Kind::EndpointSlice => "EndpointSliceList",
            Kind::Node => "NodeList",
        }
    }

    /// The `apiVersion` field, e.g. `discovery.k8s.io/v1`.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Node => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
        }
    }

    /// The API group, empty for core.
    pub fn group(self) -> &'static str {
        match self {
            Kind::Service | Kind::Node => "",
            Kind::EndpointSlice => "discovery.k8s.io",
        }
    }

    /// The resource name in URL paths, e.g. `endpointslices`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Node => "nodes",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Node)
    }

    /// The kind named by an object's `kind` field, if served.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Position in [`Kind::ALL`], for per-kind arrays.
    pub(crate) fn index(self) -> usize {
        match self {
            Kind::Service => 0,
            Kind::EndpointSlice => 1,
            Kind::Node => 2,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
