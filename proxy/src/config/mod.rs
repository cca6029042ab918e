//! Configuration: command-line flags, the kube-proxy config file, and the resolved [`Settings`].
//!
//! Precedence follows kube-proxy (`cmd/kube-proxy/app/options.go`): without `--config`, the
//! flags over upstream's defaults; with `--config`, the file (defaulted as upstream defaults it)
//! and of the kube-proxy flags only `--hostname-override` and the logging flags (`-v`,
//! `--logging-format`). Switchyard's own extension flags always apply, since the file has no
//! fields for them. A change of the file ends the process ([`watch`]), as in kube-proxy.
pub mod cli;
pub mod defaults;
pub mod file;
pub mod ignored_flags;
pub mod logging;
pub mod nodeport;
pub mod settings;
mod upstream_fields;
pub mod watch;

pub use cli::{Cli, Command, ProxyMode};
pub use logging::LogFormat;
pub use settings::{LoadedConfigFile, Settings, Source};

use std::path::PathBuf;

/// A configuration problem, naming the flag or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadConfig {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The config file is not a valid KubeProxyConfiguration.
    #[error("invalid config file {path}: {message}")]
    InvalidConfig {
        /// File path.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
    /// A flag or config field has an invalid value.
    #[error("invalid value for {field}: {message}")]
    InvalidValue {
        /// Flag or field name.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The kubeconfig does not exist.
    #[error("{field} {path}: file does not exist")]
    MissingKubeconfig {
        /// `--kubeconfig` or `clientConnection.kubeconfig`.
        field: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// The manifest directory does not exist.
    #[error("--manifests {0}: not a directory")]
    MissingManifests(PathBuf),
}
