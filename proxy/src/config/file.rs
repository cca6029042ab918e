//! The `--config` file: kube-proxy's KubeProxyConfiguration. The fields Switchyard reads are
//! typed here and defaulted as upstream defaults them ([`super::defaults`]); every other field
//! upstream knows is accepted, and one that is set but has no effect is named in a warning.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::defaults::{
    self, check_periods, complete_bind, non_negative, oom_score_adj, parse_bind_address,
    parse_cidr_list, period, timeout, ProxyConfig, RequestedMode, Section, HEALTHZ_PORT,
    METRICS_PORT, OOM_SCORE_ADJ,
};
use super::logging::LogFormat;
use super::nodeport::NodePortAddresses;
use super::upstream_fields::unused_field_warnings;
use super::ConfigError;
use crate::model::conntrack_sysctls::ConntrackSettings;

/// Fields of KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) that Switchyard reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigFile {
    /// Must be kubeproxy.config.k8s.io/v1alpha1 when present.
    pub api_version: Option<String>,
    /// Must be KubeProxyConfiguration when present.
    pub kind: Option<String>,
    /// Proxy mode; empty means the default.
    pub mode: Option<String>,
    /// Node name override.
    pub hostname_override: Option<String>,
    /// Overrides the node's primary IP(s); also picks the family of the default binds.
    pub bind_address: Option<String>,
    /// Comma-separated pod CIDRs.
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Option<String>,
    /// NodePort address CIDRs, or `primary`.
    pub node_port_addresses: Option<Vec<String>>,
    /// Health check bind address; empty means the default.
    pub healthz_bind_address: Option<String>,
    /// Metrics bind address; empty means the default.
    pub metrics_bind_address: Option<String>,
    /// Extension: sync period for any mode, over the mode's section.
    pub sync_period: Option<String>,
    /// Extension: minimum sync period for any mode, over the mode's section.
    pub min_sync_period: Option<String>,
    /// Extension: remove upstream kube-proxy's leftovers after the first sync
    /// (`--cleanup-kube-proxy`).
    pub cleanup_kube_proxy: Option<bool>,
    /// `iptables:` section.
    pub iptables: Option<ModeSection>,
    /// `ipvs:` section (its periods, in ipvs mode).
    pub ipvs: Option<ModeSection>,
    /// `nftables:` section (its periods and masqueradeAll, in nftables mode).
    pub nftables: Option<ModeSection>,
    /// API client section.
    pub client_connection: Option<ClientConnection>,
    /// Logging section.
    pub logging: Option<Logging>,
    /// `oomScoreAdj`; null means -999.
    pub oom_score_adj: Option<i32>,
    /// `conntrack:` section.
    pub conntrack: Option<ConntrackSection>,
    /// The whole document, for naming fields that have no effect.
    #[serde(skip)]
    raw: serde_norway::Value,
    /// The text as read, for the watch that notices a change.
    #[serde(skip)]
    text: String,
}

/// `conntrack:` section. The pointer fields of upstream's type (null: the default) are
/// `Option`s; in the others, null and zero are the same.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConntrackSection {
    /// Entries per CPU; null means 32768, 0 leaves the limit.
    pub max_per_core: Option<i32>,
    /// The least limit; null means 131072.
    pub min: Option<i32>,
    /// Null means 24h, 0s leaves it.
    pub tcp_established_timeout: Option<String>,
    /// Null means 1h, 0s leaves it.
    pub tcp_close_wait_timeout: Option<String>,
    /// Sets `nf_conntrack_tcp_be_liberal` to 1.
    pub tcp_be_liberal: Option<bool>,
    /// 0s (the default) leaves it.
    pub udp_timeout: Option<String>,
    /// 0s (the default) leaves it.
    pub udp_stream_timeout: Option<String>,
}

impl ConntrackSection {
    fn settings(&self) -> Result<ConntrackSettings, ConfigError> {
        let defaults = ConntrackSettings::default();
        let count = |field, value: Option<i32>, default: u32| match value {
            Some(value) => non_negative(field, value),
            None => Ok(default),
        };
        Ok(ConntrackSettings {
            max_per_core: count(
                "conntrack.maxPerCore",
                self.max_per_core,
                defaults.max_per_core,
            )?,
            min: count("conntrack.min", self.min, defaults.min)?,
            tcp_established_timeout: timeout(
                "conntrack.tcpEstablishedTimeout",
                self.tcp_established_timeout.as_deref(),
                defaults.tcp_established_timeout,
            )?,
            tcp_close_wait_timeout: timeout(
                "conntrack.tcpCloseWaitTimeout",
                self.tcp_close_wait_timeout.as_deref(),
                defaults.tcp_close_wait_timeout,
            )?,
            tcp_be_liberal: self.tcp_be_liberal.unwrap_or(false),
            udp_timeout: timeout(
                "conntrack.udpTimeout",
                self.udp_timeout.as_deref(),
                defaults.udp_timeout,
            )?,
            udp_stream_timeout: timeout(
                "conntrack.udpStreamTimeout",
                self.udp_stream_timeout.as_deref(),
                defaults.udp_stream_timeout,
            )?,
        })
    }
}

/// The parts of the `iptables:`, `ipvs:` and `nftables:` sections Switchyard reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModeSection {
    /// Masquerade all service traffic.
    pub masquerade_all: Option<bool>,
    /// Serve NodePorts on localhost (`iptables:` only).
    pub localhost_nodeports: Option<bool>,
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

/// `logging:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Logging {
    /// klog verbosity.
    pub verbosity: Option<u8>,
    /// `text` (default) or `json`.
    pub format: Option<String>,
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
        let raw: serde_norway::Value = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        if !matches!(
            raw,
            serde_norway::Value::Mapping(_) | serde_norway::Value::Null
        ) {
            return Err("expected a KubeProxyConfiguration mapping".into());
        }
        let mut file: ConfigFile = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        file.raw = raw;
        file.text = text.to_owned();
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

    /// The text the file was parsed from.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn section(&self, section: Section) -> Option<&ModeSection> {
        match section {
            Section::Iptables => self.iptables.as_ref(),
            Section::Ipvs => self.ipvs.as_ref(),
            Section::Nftables => self.nftables.as_ref(),
        }
    }

    /// What kube-proxy would run with from this file: each zero-valued field defaulted as
    /// upstream does, the mode-dependent fields read from the mode's section.
    pub fn kube_proxy_config(&self) -> Result<ProxyConfig, ConfigError> {
        let mode = match self.mode.as_deref() {
            None => RequestedMode::Default,
            Some(text) => {
                RequestedMode::parse(text).map_err(|message| ConfigError::InvalidValue {
                    field: "mode",
                    message,
                })?
            }
        };
        let mut warnings = Vec::new();

        let mut nodeport = NodePortAddresses::parse(
            "nodePortAddresses",
            self.node_port_addresses
                .iter()
                .flatten()
                .map(String::as_str),
        )?;
        // Upstream's platformApplyDefaults: nftables mode serves NodePorts on the primary IPs.
        let primary_defaulted = mode == RequestedMode::Nftables && nodeport.is_unset();
        if primary_defaulted {
            nodeport = NodePortAddresses::primary();
        }
        warnings.extend(mode.fallback_warning("mode", primary_defaulted));

        let node_ip_overrides =
            parse_bind_address("bindAddress", self.bind_address.as_deref().unwrap_or(""))?;
        let (healthz_host, metrics_host) =
            defaults::default_bind_hosts(node_ip_overrides.first().copied());
        let healthz_bind = file_bind(
            "healthzBindAddress",
            self.healthz_bind_address.as_deref(),
            SocketAddr::new(healthz_host, HEALTHZ_PORT),
        )?;
        let metrics_bind = file_bind(
            "metricsBindAddress",
            self.metrics_bind_address.as_deref(),
            SocketAddr::new(metrics_host, METRICS_PORT),
        )?;

        let section = mode.section();
        let periods = self.section(section);
        let (min_field, sync_field) = period_fields(section);
        // Zero means the default, as in upstream's defaults.go. (Upstream leaves a zero
        // ipvs.minSyncPeriod at zero; Switchyard runs iptables mode and uses its default.)
        let min_sync_period = period(
            "minSyncPeriod",
            self.min_sync_period.as_deref(),
            period(
                min_field,
                periods.and_then(|s| s.min_sync_period.as_deref()),
                defaults::MIN_SYNC_PERIOD,
            )?,
        )?;
        let sync_period = period(
            "syncPeriod",
            self.sync_period.as_deref(),
            period(
                sync_field,
                periods.and_then(|s| s.sync_period.as_deref()),
                defaults::SYNC_PERIOD,
            )?,
        )?;
        check_periods(sync_field, min_sync_period, sync_period)?;

        let masquerade_all = self
            .section(section.masquerade_all())
            .and_then(|s| s.masquerade_all)
            .unwrap_or(false);
        let localhost_nodeports = self
            .iptables
            .as_ref()
            .and_then(|s| s.localhost_nodeports)
            .unwrap_or(true)
            && mode.localhost_nodeports();

        warnings.extend(unused_field_warnings(&self.raw, section));
        Ok(ProxyConfig {
            mode,
            hostname_override: self.hostname_override.clone(),
            kubeconfig: self
                .client_connection
                .as_ref()
                .and_then(|c| c.kubeconfig.as_deref())
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(|k| (PathBuf::from(k), "clientConnection.kubeconfig")),
            cluster_cidrs: parse_cidr_list(
                "clusterCIDR",
                self.cluster_cidr.as_deref().unwrap_or(""),
            )?,
            nodeport,
            masquerade_all,
            localhost_nodeports,
            healthz_bind,
            metrics_bind,
            min_sync_period,
            sync_period,
            node_ip_overrides,
            verbosity: self.logging.as_ref().and_then(|l| l.verbosity),
            logging_format: self
                .logging
                .as_ref()
                .and_then(|l| l.format.as_deref())
                .map(LogFormat::from_field)
                .transpose()?,
            oom_score_adj: oom_score_adj(
                "oomScoreAdj",
                self.oom_score_adj.unwrap_or(OOM_SCORE_ADJ),
            )?,
            conntrack: self
                .conntrack
                .as_ref()
                .map(ConntrackSection::settings)
                .transpose()?
                .unwrap_or_default(),
            warnings,
        })
    }
}

/// A bind-address field: empty means the default (a file cannot disable a server, as in
/// kube-proxy), a bare IP gets the default port.
fn file_bind(
    field: &'static str,
    value: Option<&str>,
    default: SocketAddr,
) -> Result<Option<SocketAddr>, ConfigError> {
    match value.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(Some(default)),
        Some(text) => complete_bind(field, text, default.port()).map(Some),
    }
}

fn period_fields(section: Section) -> (&'static str, &'static str) {
    match section {
        Section::Iptables => ("iptables.minSyncPeriod", "iptables.syncPeriod"),
        Section::Ipvs => ("ipvs.minSyncPeriod", "ipvs.syncPeriod"),
        Section::Nftables => ("nftables.minSyncPeriod", "nftables.syncPeriod"),
    }
}
