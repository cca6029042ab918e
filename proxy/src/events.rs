//! Kubernetes Events, as kube-proxy records them (events.k8s.io/v1, through kube-rs'
//! [`Recorder`], which turns a repeated event into a series by patching it):
//!
//! - on start, `Normal` `Starting` (action `StartKubeProxy`) regarding this node's Node, as
//!   `cmd/kube-proxy/app/server.go` does;
//! - when a health check node port cannot be opened, `Warning`
//!   `FailedToStartServiceHealthcheck` (action `Listen`) regarding the Service, with
//!   upstream's note (`pkg/proxy/healthcheck/service_health.go`), on every failed attempt.
//!
//! Only the API source has a client to record them with. Publishing runs on its own task
//! and never holds anything up; a failure is logged at debug level (an API server that
//! refuses events must not flood the log).
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;

use crate::model::ObjectKey;

/// The reporting controller's name in every event.
pub const CONTROLLER: &str = "switchyard";

/// Records this node's events.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
    node_name: String,
}

impl Events {
    /// Events of the proxy on `node_name`, through `client`.
    pub fn new(client: Client, node_name: &str) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER.into(),
            instance: Some(node_name.to_owned()),
        };
        Self {
            recorder: Recorder::new(client, reporter),
            node_name: node_name.to_owned(),
        }
    }

    /// `Starting`, regarding the Node (upstream's node reference: kind, name, and the name as
    /// UID; the Node is cluster-scoped, so the event lives in `default`).
    pub fn starting(&self) {
        let node = ObjectReference {
            kind: Some("Node".into()),
            api_version: Some("v1".into()),
            name: Some(self.node_name.clone()),
            uid: Some(self.node_name.clone()),
            ..ObjectReference::default()
        };
        self.publish(
            Event {
                type_: EventType::Normal,
                reason: "Starting".into(),
                note: Some(format!("Starting switchyard on node {}.", self.node_name)),
                action: "StartKubeProxy".into(),
                secondary: None,
            },
            node,
        );
    }

    /// `FailedToStartServiceHealthcheck`, regarding the Service (upstream: its namespace and
    /// name, and `namespace/name` as UID).
    pub fn health_check_failed(&self, service: &ObjectKey, port: u16, error: &str) {
        let reference = ObjectReference {
            kind: Some("Service".into()),
            api_version: Some("v1".into()),
            namespace: Some(service.namespace.clone()),
            name: Some(service.name.clone()),
            uid: Some(format!("{}/{}", service.namespace, service.name)),
            ..ObjectReference::default()
        };
        self.publish(
            Event {
                type_: EventType::Warning,
                reason: "FailedToStartServiceHealthcheck".into(),
                note: Some(health_check_note(&self.node_name, service, port, error)),
                action: "Listen".into(),
                secondary: None,
            },
            reference,
        );
    }

    fn publish(&self, event: Event, reference: ObjectReference) {
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::debug!(reason = %event.reason, error = %e, "cannot record the event");
            }
        });
    }
}

/// Upstream's note: `node %s failed to start healthcheck %q on port %d: %v`.
pub fn health_check_note(node: &str, service: &ObjectKey, port: u16, error: &str) -> String {
    format!(
        "node {node} failed to start healthcheck \"{}/{}\" on port {port}: {error}",
        service.namespace, service.name
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_note_is_upstreams() {
        let service = crate::model::ObjectKey::new("web", "lb");
        assert_eq!(
            super::health_check_note("node1", &service, 30100, "address in use"),
            "node node1 failed to start healthcheck \"web/lb\" on port 30100: address in use"
        );
    }
}
