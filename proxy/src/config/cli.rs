//! Command-line flags. Names follow kube-proxy wherever the meaning is shared; kube-proxy
//! flags Switchyard has no use for are accepted too ([`NoEffectFlags`]).
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ipnet::IpNet;

use super::defaults::{
    self, check_periods, complete_bind, non_negative, oom_score_adj, parse_go_bool, ProxyConfig,
    RequestedMode, HEALTHZ_PORT, METRICS_PORT, OOM_SCORE_ADJ,
};
use super::ignored_flags::NoEffectFlags;
use super::logging::LogFormat;
use super::nodeport::NodePortAddresses;
use super::ConfigError;
use crate::model::conntrack_sysctls::ConntrackSettings;

/// Which dataplane programs the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProxyMode {
    /// kube-proxy-compatible iptables chains written with iptables-restore.
    Iptables,
    /// eBPF programs whose maps hold services and backends.
    Ebpf,
}

impl std::fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProxyMode::Iptables => "iptables",
            ProxyMode::Ebpf => "ebpf",
        })
    }
}

/// `switchyard`: a kube-proxy replacement. Without a subcommand it runs the proxy.
///
/// kube-proxy takes no positional arguments, so a first word that is not a flag can only be
/// a subcommand; flags of the proxy and a subcommand do not mix (`switchyard --config F status`
/// is an error), so neither is ever read as the other.
#[derive(Debug, Parser, Default)]
#[command(
    name = "switchyard",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Something other than running the proxy.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Dataplane: iptables (default) or ebpf. nftables and ipvs are accepted and run as iptables.
    #[arg(long = "proxy-mode", value_parser = RequestedMode::parse)]
    pub proxy_mode: Option<RequestedMode>,
    /// Node name to use instead of the hostname.
    #[arg(long)]
    pub hostname_override: Option<String>,
    /// Kubeconfig file for the API source.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Pod CIDRs of the cluster (comma list); traffic from outside them is masqueraded.
    #[arg(long, value_delimiter = ',')]
    pub cluster_cidr: Vec<IpNet>,
    /// CIDRs whose local addresses serve NodePorts, or `primary` for the Node object's primary
    /// IPs (comma list; default: every local address).
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Vec<String>,
    /// Masquerade all traffic sent to service cluster IPs.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = parse_go_bool)]
    pub masquerade_all: Option<bool>,
    /// Serve NodePorts on 127.0.0.1 too (iptables mode, as kube-proxy; default true).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = parse_go_bool)]
    pub iptables_localhost_nodeports: Option<bool>,
    /// Overrides the node's primary IP (of its family), as kube-proxy; used by
    /// `--nodeport-addresses primary`.
    #[arg(long)]
    pub bind_address: Option<IpAddr>,
    /// Health check server address (ip[:port]; empty disables). Default 0.0.0.0:10256.
    #[arg(long)]
    pub healthz_bind_address: Option<String>,
    /// Metrics server address (ip[:port]; empty disables). Default 127.0.0.1:10249.
    #[arg(long)]
    pub metrics_bind_address: Option<String>,
    /// KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1). As in kube-proxy, it
    /// replaces the other kube-proxy flags except --hostname-override, -v and
    /// --logging-format, and a change of it ends the process (exit status 1).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Remove everything Switchyard programmed on this node, then exit.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = parse_go_bool)]
    pub cleanup: Option<bool>,
    /// kube-proxy's privileged init step: sets the conntrack sysctls (and, in iptables
    /// mode, route_localnet) and exits, so that the proxy itself needs no privileged container.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = parse_go_bool)]
    pub init_only: Option<bool>,
    /// kube-proxy writes its default configuration here and exits; Switchyard cannot, and
    /// exits with an error.
    #[arg(long)]
    pub write_config_to: Option<PathBuf>,
    /// Log verbosity, as kube-proxy's klog level (0 info, 2 more, 4 debug, 6+ trace).
    #[arg(short = 'v', long = "v")]
    pub verbosity: Option<u8>,
    /// Log format: text (default) or json. Applies with --config too, as -v does.
    #[arg(long, value_name = "FORMAT", value_parser = LogFormat::parse)]
    pub logging_format: Option<LogFormat>,
    /// oom_score_adj of the process, in [-1000, 1000] (default -999).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub oom_score_adj: Option<i32>,
    /// nf_conntrack_max per CPU (default 32768); 0 leaves the machine's limit and hash size
    /// as they are, and ignores --conntrack-min.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub conntrack_max_per_core: Option<i32>,
    /// The least nf_conntrack_max is set to (default 131072).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub conntrack_min: Option<i32>,
    /// nf_conntrack_tcp_timeout_established (default 24h; 0 leaves it).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub conntrack_tcp_timeout_established: Option<Duration>,
    /// nf_conntrack_tcp_timeout_close_wait (default 1h; 0 leaves it).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub conntrack_tcp_timeout_close_wait: Option<Duration>,
    /// Set nf_conntrack_tcp_be_liberal to 1 (false leaves it).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = parse_go_bool)]
    pub conntrack_tcp_be_liberal: Option<bool>,
    /// nf_conntrack_udp_timeout, for unreplied UDP (default 0: leave it).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub conntrack_udp_timeout: Option<Duration>,
    /// nf_conntrack_udp_timeout_stream, for assured UDP (default 0: leave it).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub conntrack_udp_timeout_stream: Option<Duration>,
    /// Minimum interval between syncs; bursts of changes inside it are coalesced (e.g. 1s).
    #[arg(long, alias = "iptables-min-sync-period", value_parser = humantime::parse_duration)]
    pub min_sync_period: Option<Duration>,
    /// Interval of the full resync that repairs state changed behind our back (e.g. 30s).
    #[arg(long, alias = "iptables-sync-period", value_parser = humantime::parse_duration)]
    pub sync_period: Option<Duration>,
    /// --min-sync-period for --proxy-mode ipvs (which runs as iptables), as kube-proxy.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ipvs_min_sync_period: Option<Duration>,
    /// --sync-period for --proxy-mode ipvs (which runs as iptables), as kube-proxy.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ipvs_sync_period: Option<Duration>,
    /// Extension: read Services, EndpointSlices, Endpoints and Nodes from YAML files under DIR.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// Extension: cgroup v2 directory the socket programs attach to (ebpf mode).
    #[arg(long)]
    pub cgroup_path: Option<PathBuf>,
    /// Extension: bpffs directory for pinned maps and links (ebpf mode).
    #[arg(long)]
    pub bpffs_path: Option<PathBuf>,
    /// Extension: interfaces for packet programs (comma list; default: every up interface with a node address).
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,
    /// Extension: iptables backend to write through (default: the one `iptables` points at).
    #[arg(long, value_enum)]
    pub iptables_backend: Option<crate::iptables::IptablesBackend>,
    /// Extension: entries of the eBPF services map (frontends).
    #[arg(long, default_value_t = switchyard_common::DEFAULT_SERVICES_MAX)]
    pub ebpf_services_map_size: u32,
    /// Extension: entries of the eBPF backends map (backend slots).
    #[arg(long, default_value_t = switchyard_common::DEFAULT_BACKENDS_MAX)]
    pub ebpf_backends_map_size: u32,
    /// Extension: entries of the eBPF connection-tracking map (external flows, LRU).
    #[arg(long, default_value_t = switchyard_common::DEFAULT_CONNTRACK_MAX)]
    pub ebpf_conntrack_map_size: u32,
    /// Extension: once the first sync is complete, remove what upstream kube-proxy left on
    /// the node (its KUBE-* chains, its nftables table, the IPVS dummy interface); for
    /// migrating a node from kube-proxy (config field `cleanupKubeProxy`).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = parse_go_bool)]
    pub cleanup_kube_proxy: Option<bool>,
    /// Extension: the cluster's NodePort range (apiserver's --service-node-port-range), e.g. 30000-32767.
    #[arg(long)]
    pub service_node_port_range: Option<String>,
    /// kube-proxy flags that are accepted but change nothing.
    #[command(flatten)]
    pub no_effect: NoEffectFlags,
}

/// Subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Prints what is programmed on this node, read back from the kernel (pinned eBPF maps
    /// or SWY-* chains); works with or without a running proxy.
    Status(crate::status::StatusArgs),
}

impl Cli {
    /// The kube-proxy flags given that map onto config-file fields. kube-proxy ignores them
    /// all when `--config` is given (its `Complete()` replaces the flag-built config with the
    /// file's), and so does Switchyard, with one warning each.
    pub fn replaced_by_config(&self) -> Vec<String> {
        let given = [
            ("--proxy-mode", self.proxy_mode.is_some()),
            ("--kubeconfig", self.kubeconfig.is_some()),
            ("--cluster-cidr", !self.cluster_cidr.is_empty()),
            ("--nodeport-addresses", !self.nodeport_addresses.is_empty()),
            ("--masquerade-all", self.masquerade_all.is_some()),
            (
                "--iptables-localhost-nodeports",
                self.iptables_localhost_nodeports.is_some(),
            ),
            ("--bind-address", self.bind_address.is_some()),
            (
                "--healthz-bind-address",
                self.healthz_bind_address.is_some(),
            ),
            (
                "--metrics-bind-address",
                self.metrics_bind_address.is_some(),
            ),
            ("--min-sync-period", self.min_sync_period.is_some()),
            ("--sync-period", self.sync_period.is_some()),
            (
                "--ipvs-min-sync-period",
                self.ipvs_min_sync_period.is_some(),
            ),
            ("--ipvs-sync-period", self.ipvs_sync_period.is_some()),
            ("--oom-score-adj", self.oom_score_adj.is_some()),
            (
                "--conntrack-max-per-core",
                self.conntrack_max_per_core.is_some(),
            ),
            ("--conntrack-min", self.conntrack_min.is_some()),
            (
                "--conntrack-tcp-timeout-established",
                self.conntrack_tcp_timeout_established.is_some(),
            ),
            (
                "--conntrack-tcp-timeout-close-wait",
                self.conntrack_tcp_timeout_close_wait.is_some(),
            ),
            (
                "--conntrack-tcp-be-liberal",
                self.conntrack_tcp_be_liberal.is_some(),
            ),
            (
                "--conntrack-udp-timeout",
                self.conntrack_udp_timeout.is_some(),
            ),
            (
                "--conntrack-udp-timeout-stream",
                self.conntrack_udp_timeout_stream.is_some(),
            ),
        ];
        given
            .into_iter()
            .filter(|(_, set)| *set)
            .map(|(flag, _)| {
                format!(
                    "{flag} is ignored because --config is given (as in kube-proxy); set it in the config file"
                )
            })
            .collect()
    }

    /// What kube-proxy would run with from these flags alone (no `--config`): upstream's
    /// defaults with the flags applied.
    pub fn kube_proxy_config(&self) -> Result<ProxyConfig, ConfigError> {
        let mode = self.proxy_mode.unwrap_or_default();
        let mut warnings = Vec::new();
        let mut nodeport = NodePortAddresses::parse(
            "--nodeport-addresses",
            self.nodeport_addresses.iter().map(String::as_str),
        )?;
        let primary_defaulted = mode == RequestedMode::Nftables && nodeport.is_unset();
        if primary_defaulted {
            nodeport = NodePortAddresses::primary();
        }
        warnings.extend(mode.fallback_warning("--proxy-mode", primary_defaulted));

        // kube-proxy applies --iptables-* only outside ipvs mode and --ipvs-* only in it.
        let ipvs = mode == RequestedMode::Ipvs;
        let (min, sync, unused, why) = if ipvs {
            let unused = [
                ("--min-sync-period", self.min_sync_period.is_some()),
                ("--sync-period", self.sync_period.is_some()),
            ];
            let why = "with --proxy-mode ipvs; use --ipvs-*";
            (
                self.ipvs_min_sync_period,
                self.ipvs_sync_period,
                unused,
                why,
            )
        } else {
            let unused = [
                (
                    "--ipvs-min-sync-period",
                    self.ipvs_min_sync_period.is_some(),
                ),
                ("--ipvs-sync-period", self.ipvs_sync_period.is_some()),
            ];
            let why = "unless --proxy-mode is ipvs";
            (self.min_sync_period, self.sync_period, unused, why)
        };
        for (flag, _) in unused.iter().filter(|(_, set)| *set) {
            warnings.push(format!("{flag} has no effect {why} (as in kube-proxy)"));
        }
        let min_sync_period = min.unwrap_or(defaults::MIN_SYNC_PERIOD);
        let sync_period = sync.unwrap_or(defaults::SYNC_PERIOD);
        check_periods("--sync-period", min_sync_period, sync_period)?;

        let (healthz_host, metrics_host) = defaults::default_bind_hosts(None);
        Ok(ProxyConfig {
            mode,
            hostname_override: None,
            kubeconfig: self.kubeconfig.clone().map(|p| (p, "--kubeconfig")),
            cluster_cidrs: self.cluster_cidr.clone(),
            nodeport,
            masquerade_all: self.masquerade_all.unwrap_or(false),
            localhost_nodeports: self.iptables_localhost_nodeports.unwrap_or(true)
                && mode.localhost_nodeports(),
            healthz_bind: flag_bind(
                "--healthz-bind-address",
                self.healthz_bind_address.as_deref(),
                (healthz_host, HEALTHZ_PORT).into(),
            )?,
            metrics_bind: flag_bind(
                "--metrics-bind-address",
                self.metrics_bind_address.as_deref(),
                (metrics_host, METRICS_PORT).into(),
            )?,
            min_sync_period,
            sync_period,
            node_ip_overrides: self.bind_address.into_iter().collect(),
            verbosity: None,
            logging_format: None,
            oom_score_adj: oom_score_adj(
                "--oom-score-adj",
                self.oom_score_adj.unwrap_or(OOM_SCORE_ADJ),
            )?,
            conntrack: self.conntrack()?,
            warnings,
        })
    }

    /// The `--conntrack-*` flags over upstream's defaults.
    fn conntrack(&self) -> Result<ConntrackSettings, ConfigError> {
        let defaults = ConntrackSettings::default();
        let count = |field, value: Option<i32>, default: u32| match value {
            Some(value) => non_negative(field, value),
            None => Ok(default),
        };
        Ok(ConntrackSettings {
            max_per_core: count(
                "--conntrack-max-per-core",
                self.conntrack_max_per_core,
                defaults.max_per_core,
            )?,
            min: count("--conntrack-min", self.conntrack_min, defaults.min)?,
            tcp_established_timeout: self
                .conntrack_tcp_timeout_established
                .unwrap_or(defaults.tcp_established_timeout),
            tcp_close_wait_timeout: self
                .conntrack_tcp_timeout_close_wait
                .unwrap_or(defaults.tcp_close_wait_timeout),
            tcp_be_liberal: self.conntrack_tcp_be_liberal.unwrap_or(false),
            udp_timeout: self.conntrack_udp_timeout.unwrap_or(defaults.udp_timeout),
            udp_stream_timeout: self
                .conntrack_udp_timeout_stream
                .unwrap_or(defaults.udp_stream_timeout),
        })
    }
}

/// A bind-address flag: absent means the default, empty disables the server, a bare IP gets
/// the default port (kube-proxy's `IPPortVar` plus `addressFromDeprecatedFlags`).
fn flag_bind(
    field: &'static str,
    value: Option<&str>,
    default: std::net::SocketAddr,
) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    match value.map(str::trim) {
        None => Ok(Some(default)),
        Some("") => Ok(None),
        Some(text) => complete_bind(field, text, default.port()).map(Some),
    }
}
