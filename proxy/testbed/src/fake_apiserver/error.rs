//! Errors of the fake API server's control API.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::Kind;

/// What can go wrong starting or driving a [`super::FakeApiServer`].
#[derive(Debug, thiserror::Error)]
pub enum FakeApiError {
    /// The listening socket could not be created.
    #[error("binding the fake API server to {addr}: {source}")]
    Bind {
        /// The requested address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Entering the network namespace to bind in failed.
    #[error("binding the fake API server inside a network namespace: {0}")]
    Netns(#[source] Box<crate::Error>),

    /// The server's tokio runtime or thread could not be started.
    #[error("starting the fake API server: {0}")]
    Runtime(#[source] io::Error),

    /// The server thread ended before it reported that it was serving.
    #[error("the fake API server thread exited during start-up")]
    StartupAborted,

    /// An object given to `apply` is not a usable Kubernetes object.
    #[error("invalid object: {0}")]
    InvalidObject(String),

    /// An object of a kind the server does not serve.
    #[error("unsupported kind {0:?}: the fake API server serves Service, EndpointSlice and Node")]
    UnsupportedKind(String),

    /// `delete` named an object that does not exist.
    #[error("{kind} {namespace}/{name} not found")]
    NotFound {
        /// Its kind.
        kind: Kind,
        /// Its namespace (empty for nodes).
        namespace: String,
        /// Its name.
        name: String,
    },

    /// `apply_yaml` got text that is not YAML.
    #[error("parsing YAML: {0}")]
    Yaml(#[from] serde_norway::Error),

    /// The kubeconfig file could not be written.
    #[error("writing kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}
