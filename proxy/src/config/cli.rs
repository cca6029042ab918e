//! Command-line flags. Names follow kube-proxy wherever the meaning is shared.
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use ipnet::IpNet;

/// Which dataplane programs the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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
#[derive(Debug, Parser, Default)]
#[command(name = "switchyard", version, about)]
pub struct Cli {
    /// Dataplane: iptables or ebpf.
    #[arg(long = "proxy-mode", value_enum)]
    pub proxy_mode: Option<ProxyMode>,
    /// Node name to use instead of the hostname.
    #[arg(long)]
    pub hostname_override: Option<String>,
    /// Kubeconfig file for the API source.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Pod CIDRs of the cluster (comma list); traffic from outside them is masqueraded.
    #[arg(long, value_delimiter = ',')]
    pub cluster_cidr: Vec<IpNet>,
    /// CIDRs whose local addresses serve NodePorts (comma list; default: every local address).
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Vec<IpNet>,
    /// Masquerade all traffic sent to service cluster IPs.
    #[arg(long)]
    pub masquerade_all: bool,
    /// Health check server address (ip:port; empty disables). Default 0.0.0.0:10256.
    #[arg(long)]
    pub healthz_bind_address: Option<String>,
    /// Metrics server address (ip:port; empty disables). Default 127.0.0.1:10249.
    #[arg(long)]
    pub metrics_bind_address: Option<String>,
    /// KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Remove everything Switchyard programmed on this node, then exit.
    #[arg(long)]
    pub cleanup: bool,
    /// Log verbosity, as kube-proxy's klog level (0 info, 2 more, 4 debug, 6+ trace).
    #[arg(short = 'v', long = "v", default_value_t = 0)]
    pub verbosity: u8,
    /// Minimum interval between syncs; bursts of changes inside it are coalesced (e.g. 1s).
    #[arg(long, alias = "iptables-min-sync-period", value_parser = humantime::parse_duration)]
    pub min_sync_period: Option<std::time::Duration>,
    /// Interval of the full resync that repairs state changed behind our back (e.g. 30s).
    #[arg(long, alias = "iptables-sync-period", value_parser = humantime::parse_duration)]
    pub sync_period: Option<std::time::Duration>,
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
    /// Extension: the cluster's NodePort range (apiserver's --service-node-port-range), e.g. 30000-32767.
    #[arg(long)]
    pub service_node_port_range: Option<String>,
}
