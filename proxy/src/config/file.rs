//! The `--config` file: kube-proxy's KubeProxyConfiguration, the subset Switchyard implements.
use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::ConfigError;
use crate::config::cli::ProxyMode;

/// Fields of KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) that Switchyard honours.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigFile {
    /// Must be kubeproxy.config.k8s.io/v1alpha1 when present.
    pub api_version: Option<String>,
    /// Must be KubeProxyConfiguration when present.
    pub kind: Option<String>,
    /// Proxy mode.
    pub mode: Option<ProxyMode>,
    /// Node name override.
    pub hostname_override: Option<String>,
    /// Comma-separated pod CIDRs.
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Option<String>,
    /// NodePort address CIDRs.
    pub node_port_addresses: Option<Vec<String>>,
    /// Health check bind address.
    pub healthz_bind_address: Option<String>,
    /// Metrics bind address.
    pub metrics_bind_address: Option<String>,
    /// Top-level sync period (newer v1alpha1 layout).
    pub sync_period: Option<String>,
    /// Top-level minimum sync period (newer v1alpha1 layout).
    pub min_sync_period: Option<String>,
    /// iptables section.
    #[serde(default)]
    pub iptables: IptablesSection,
    /// API client section.
    #[serde(default)]
    pub client_connection: ClientConnection,
    /// Fields kube-proxy knows that Switchyard ignores (logged once at start-up).
    #[serde(flatten)]
    pub ignored: BTreeMap<String, serde_norway::Value>,
}

/// `iptables:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IptablesSection {
    /// Masquerade all service traffic.
    pub masquerade_all: Option<bool>,
    /// Minimum sync period.
    pub min_sync_period: Option<String>,
    /// Full resync period.
    pub sync_period: Option<String>,
}

/// `clientConnection:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientConnection {
    /// Kubeconfig path.
    pub kubeconfig: Option<String>,
}

impl ConfigFile {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadConfig {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::InvalidConfig {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses config text; the error names the offending field.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: ConfigFile = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        if let Some(kind) = &file.kind {
            if kind != "KubeProxyConfiguration" {
                return Err(format!("kind: expected KubeProxyConfiguration, got {kind}"));
            }
        }
        if let Some(v) = &file.api_version {
            if v != "kubeproxy.config.k8s.io/v1alpha1" {
                return Err(format!(
                    "apiVersion: expected kubeproxy.config.k8s.io/v1alpha1, got {v}"
                ));
            }
        }
        Ok(file)
    }
}
