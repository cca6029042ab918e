//! Object sources: where Services, EndpointSlices, Endpoints and Nodes come from.
pub mod api_access;
pub mod kube_api;
pub mod manifest_dir;
mod manifest_watch;
/// The manifest parser (the pure `switchyard-manifest` crate, kept at its old path).
pub use switchyard_manifest as manifest_parse;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use crate::model::ClusterObjects;

pub use manifest_dir::ManifestDir;

/// What a source currently knows, and the problems it met reading it.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// All objects.
    pub objects: Arc<ClusterObjects>,
    /// Source-level problems (unreadable files, malformed documents), each naming its place.
    pub warnings: Vec<String>,
    /// The most recent EndpointSlice change triggers, every one of them already reflected in
    /// `objects` (at most [`TRIGGERS_KEPT`]).
    pub triggers: Arc<Vec<Trigger>>,
}

/// How many recent triggers a snapshot carries; a controller that falls further behind than
/// this loses the latency samples of the oldest ones.
pub const TRIGGERS_KEPT: usize = 4096;

/// When a change that a snapshot holds began (`endpoints.kubernetes.io/last-change-trigger-time`),
/// for `kubeproxy_network_programming_duration_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trigger {
    /// Increases by one per trigger, so a consumer knows which it has observed.
    pub seq: u64,
    /// The trigger time.
    pub at: SystemTime,
    /// Whether the changed EndpointSlice holds IPv6 addresses: its latency is written for
    /// `ip_family="IPv6"`, as upstream's IPv6 proxier observes the slices of its family.
    pub ipv6: bool,
}

/// A source that cannot run at all.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The manifest directory cannot be listed.
    #[error("--manifests {path}: {source}")]
    ReadDir {
        /// Directory.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file watcher could not be set up.
    #[error("cannot watch the manifest directory {path}: {source}")]
    Watch {
        /// Directory.
        path: PathBuf,
        /// Underlying error.
        source: notify::Error,
    },
    /// The thread that reads the manifest directory could not be started.
    #[error("cannot start the manifest directory reader: {0}")]
    Thread(#[source] std::io::Error),
    /// No API client could be built.
    #[error("Kubernetes API client: {0}")]
    Client(String),
}
