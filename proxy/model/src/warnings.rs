//! Problems found in the input objects, reported instead of failing the whole computation.

use super::objects::ObjectKey;

/// Object kind names used in [`InputWarning::kind`].
pub mod kinds {
    /// A core/v1 Service.
    pub const SERVICE: &str = "Service";
    /// A discovery.k8s.io/v1 EndpointSlice.
    pub const ENDPOINT_SLICE: &str = "EndpointSlice";
    /// A legacy core/v1 Endpoints object.
    pub const ENDPOINTS: &str = "Endpoints";
    /// A core/v1 Node.
    pub const NODE: &str = "Node";
}

/// One problem in the input: names the object and the field.
///
/// Displays as e.g.
/// `Service default/web: spec.ports[1].port: 0 is not a valid port number (1-65535)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, thiserror::Error)]
#[error("{kind} {object}: {field}: {message}")]
pub struct InputWarning {
    /// Object kind: one of the names in [`kinds`].
    pub kind: &'static str,
    /// Namespace and name of the object the problem is in.
    pub object: ObjectKey,
    /// Field path inside the object, e.g. `spec.ports[1].nodePort`.
    pub field: String,
    /// What is wrong and what Switchyard did about it.
    pub message: String,
}

impl InputWarning {
    /// Builds a warning; `field` and `message` are taken as given.
    pub fn new(
        kind: &'static str,
        object: &ObjectKey,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            object: object.clone(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Collects warnings about one object while it is being parsed.
///
/// Problems come in two strengths: a *fatal* one makes the whole object unusable (only that one
/// warning is reported, so the operator sees the cause and not a cascade), while a *soft* one
/// drops a single value (an address of a family this node does not serve) and
/// the rest of the object is kept.
#[derive(Debug)]
pub(crate) struct ObjectWarnings<'a> {
    kind: &'static str,
    object: &'a ObjectKey,
    soft: Vec<InputWarning>,
}

impl<'a> ObjectWarnings<'a> {
    /// Starts collecting for one object.
    pub(crate) fn new(kind: &'static str, object: &'a ObjectKey) -> Self {
        Self {
            kind,
            object,
            soft: Vec::new(),
        }
    }

    /// A problem that makes the object unusable; return it as the `Err` of the parser.
    pub(crate) fn fatal(
        &self,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> InputWarning {
        InputWarning::new(self.kind, self.object, field, message)
    }

    /// A problem that only drops one value; the object is still used.
    pub(crate) fn soft(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.soft
            .push(InputWarning::new(self.kind, self.object, field, message));
    }

    /// The soft warnings, to report once the object turned out usable.
    pub(crate) fn into_soft(self) -> Vec<InputWarning> {
        self.soft
    }
}
