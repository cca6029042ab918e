//! Resolved settings: defaults, overridden by the config file, overridden by flags.
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::{Cli, ConfigError, ProxyMode};
use crate::config::file::ConfigFile;

/// Default cgroup v2 mount point searched when `--cgroup-path` is not given.
pub const DEFAULT_CGROUP_ROOTS: &[&str] = &["/sys/fs/cgroup/unified", "/sys/fs/cgroup"];
/// Default pin directory.
pub const DEFAULT_BPFFS_PATH: &str = "/sys/fs/bpf/switchyard";

/// Entries of the eBPF maps whose size depends on the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EbpfMapSizes {
    /// Services map (one entry per frontend and path).
    pub services: u32,
    /// Backends map (one entry per backend slot).
    pub backends: u32,
    /// Packet-path conntrack map.
    pub conntrack: u32,
}

fn nonzero(field: &'static str, value: u32) -> Result<u32, ConfigError> {
    if value == 0 {
        return Err(ConfigError::InvalidValue {
            field,
            message: "must be at least 1".into(),
        });
    }
    Ok(value)
}

/// Where Kubernetes objects come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// YAML files under a directory, watched for edits.
    Manifests(PathBuf),
    /// The API server through a kubeconfig file.
    Kubeconfig(PathBuf),
    /// The API server through the pod's service account.
    InCluster,
}

/// Everything the proxy runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Dataplane mode.
    pub mode: ProxyMode,
    /// This node's name.
    pub node_name: String,
    /// Object source.
    pub source: Source,
    /// Pod CIDRs.
    pub cluster_cidrs: Vec<IpNet>,
    /// NodePort address filter (empty: all local addresses).
    pub nodeport_cidrs: Vec<IpNet>,
    /// Masquerade all ClusterIP traffic.
    pub masquerade_all: bool,
    /// Health server address, `None` when disabled.
    pub healthz_bind: Option<SocketAddr>,
    /// Metrics server address, `None` when disabled.
    pub metrics_bind: Option<SocketAddr>,
    /// Coalescing interval.
    pub min_sync_period: Duration,
    /// Full resync interval.
    pub sync_period: Duration,
    /// cgroup v2 directory for socket programs.
    pub cgroup_path: Option<PathBuf>,
    /// bpffs pin directory.
    pub bpffs_path: PathBuf,
    /// Interfaces for packet programs (empty: detect).
    pub devices: Vec<String>,
    /// eBPF map sizes.
    pub ebpf_map_sizes: EbpfMapSizes,
    /// iptables backend override.
    pub iptables_backend: Option<crate::iptables::IptablesBackend>,
    /// Valid NodePort numbers.
    pub nodeport_range: RangeInclusive<u16>,
    /// Remove our state and exit.
    pub cleanup: bool,
    /// klog-style verbosity.
    pub verbosity: u8,
    /// Config-file fields that are accepted but have no effect.
    pub ignored_config_fields: Vec<String>,
}

impl Settings {
    /// Resolves flags over the config file over defaults. `hostname` is used when no override is set.
    pub fn resolve(cli: Cli, hostname: impl FnOnce() -> String) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        let mode = cli.proxy_mode.or(file.mode).unwrap_or(ProxyMode::Iptables);
        let node_name = cli
            .hostname_override
            .clone()
            .or(file.hostname_override.clone())
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().to_lowercase())
            .unwrap_or_else(hostname);

        let kubeconfig = cli.kubeconfig.clone().or(file
            .client_connection
            .kubeconfig
            .clone()
            .filter(|s| !s.is_empty())
            .map(PathBuf::from));
        let source = match (&cli.manifests, kubeconfig) {
            (Some(dir), _) => {
                if !dir.is_dir() {
                    return Err(ConfigError::MissingManifests(dir.clone()));
                }
                Source::Manifests(dir.clone())
            }
            (None, Some(kc)) => {
                if !kc.is_file() {
                    return Err(ConfigError::MissingKubeconfig(kc));
                }
                Source::Kubeconfig(kc)
            }
            (None, None) => Source::InCluster,
        };

        let cluster_cidrs = if cli.cluster_cidr.is_empty() {
            parse_cidr_list("clusterCIDR", file.cluster_cidr.as_deref().unwrap_or(""))?
        } else {
            cli.cluster_cidr.clone()
        };
        let nodeport_cidrs = if cli.nodeport_addresses.is_empty() {
            let joined = file
                .node_port_addresses
                .clone()
                .unwrap_or_default()
                .join(",");
            parse_cidr_list("nodePortAddresses", &joined)?
        } else {
            cli.nodeport_addresses.clone()
        };

        let healthz_bind = parse_bind(
            "--healthz-bind-address",
            cli.healthz_bind_address
                .as_deref()
                .or(file.healthz_bind_address.as_deref()),
            "0.0.0.0:10256",
            10256,
        )?;
        let metrics_bind = parse_bind(
            "--metrics-bind-address",
            cli.metrics_bind_address
                .as_deref()
                .or(file.metrics_bind_address.as_deref()),
            "127.0.0.1:10249",
            10249,
        )?;

        let min_sync_period = match cli.min_sync_period {
            Some(d) => d,
            None => parse_duration(
                "minSyncPeriod",
                file.min_sync_period
                    .as_deref()
                    .or(file.iptables.min_sync_period.as_deref()),
                Duration::from_secs(1),
            )?,
        };
        let sync_period = match cli.sync_period {
            Some(d) => d,
            None => parse_duration(
                "syncPeriod",
                file.sync_period
                    .as_deref()
                    .or(file.iptables.sync_period.as_deref()),
                Duration::from_secs(30),
            )?,
        };
        if sync_period.is_zero() {
            return Err(ConfigError::InvalidValue {
                field: "syncPeriod",
                message: "must be greater than 0".into(),
            });
        }

        let nodeport_range = match &cli.service_node_port_range {
            Some(text) => parse_port_range(text)?,
            None => 30000..=32767,
        };

        Ok(Settings {
            mode,
            node_name,
            source,
            cluster_cidrs,
            nodeport_cidrs,
            masquerade_all: cli.masquerade_all || file.iptables.masquerade_all.unwrap_or(false),
            healthz_bind,
            metrics_bind,
            min_sync_period,
            sync_period,
            cgroup_path: cli.cgroup_path.clone(),
            bpffs_path: cli
                .bpffs_path
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_BPFFS_PATH)),
            devices: cli.devices.clone(),
            iptables_backend: cli.iptables_backend,
            ebpf_map_sizes: EbpfMapSizes {
                services: nonzero("--ebpf-services-map-size", cli.ebpf_services_map_size)?,
                backends: nonzero("--ebpf-backends-map-size", cli.ebpf_backends_map_size)?,
                conntrack: nonzero("--ebpf-conntrack-map-size", cli.ebpf_conntrack_map_size)?,
            },
            nodeport_range,
            cleanup: cli.cleanup,
            verbosity: cli.verbosity,
            ignored_config_fields: file.ignored.keys().cloned().collect(),
        })
    }
}

fn parse_cidr_list(field: &'static str, text: &str) -> Result<Vec<IpNet>, ConfigError> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>().map_err(|e| ConfigError::InvalidValue {
                field,
                message: format!("{s:?}: {e}"),
            })
        })
        .collect()
}

/// kube-proxy accepts `ip:port`, a bare `ip` (default port), or empty to disable.
fn parse_bind(
    field: &'static str,
    value: Option<&str>,
    default: &str,
    default_port: u16,
) -> Result<Option<SocketAddr>, ConfigError> {
    let text = value.unwrap_or(default).trim();
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(Some(addr));
    }
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok(Some(SocketAddr::new(ip, default_port)));
    }
    Err(ConfigError::InvalidValue {
        field,
        message: format!("{text:?} is not ip:port"),
    })
}

fn parse_duration(
    field: &'static str,
    value: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(text) => {
            humantime::parse_duration(text.trim()).map_err(|e| ConfigError::InvalidValue {
                field,
                message: format!("{text:?}: {e}"),
            })
        }
    }
}

fn parse_port_range(text: &str) -> Result<RangeInclusive<u16>, ConfigError> {
    let invalid = |message: String| ConfigError::InvalidValue {
        field: "--service-node-port-range",
        message,
    };
    let (lo, hi) = text
        .split_once('-')
        .ok_or_else(|| invalid(format!("{text:?} is not FROM-TO")))?;
    let lo: u16 = lo
        .trim()
        .parse()
        .map_err(|e| invalid(format!("{lo:?}: {e}")))?;
    let hi: u16 = hi
        .trim()
        .parse()
        .map_err(|e| invalid(format!("{hi:?}: {e}")))?;
    if lo == 0 || lo > hi {
        return Err(invalid(format!("{text:?} is not a valid port range")));
    }
    Ok(lo..=hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn resolve(args: &[&str]) -> Result<Settings, ConfigError> {
        let cli = Cli::try_parse_from(std::iter::once("switchyard").chain(args.iter().copied()))
            .map_err(|e| ConfigError::InvalidValue {
                field: "args",
                message: e.to_string(),
            })?;
        Settings::resolve(cli, || "host-a".into())
    }

    #[test]
    fn defaults_match_kube_proxy() {
        let s = resolve(&[]).expect("defaults resolve");
        assert_eq!(s.mode, ProxyMode::Iptables);
        assert_eq!(s.node_name, "host-a");
        assert_eq!(s.healthz_bind, Some("0.0.0.0:10256".parse().unwrap()));
        assert_eq!(s.metrics_bind, Some("127.0.0.1:10249".parse().unwrap()));
        assert_eq!(s.min_sync_period, Duration::from_secs(1));
        assert_eq!(s.source, Source::InCluster);
        assert_eq!(s.nodeport_range, 30000..=32767);
    }

    #[test]
    fn kube_proxy_flag_names_are_accepted() {
        let s = resolve(&[
            "--proxy-mode",
            "ebpf",
            "--hostname-override",
            "Node-1",
            "--cluster-cidr",
            "198.19.0.0/16,198.20.0.0/16",
            "--nodeport-addresses",
            "198.18.0.0/24",
            "--masquerade-all",
            "--healthz-bind-address",
            "198.18.0.11",
            "--metrics-bind-address",
            "",
            "--iptables-min-sync-period",
            "250ms",
            "-v",
            "4",
        ])
        .expect("resolve");
        assert_eq!(s.mode, ProxyMode::Ebpf);
        assert_eq!(s.node_name, "node-1");
        assert_eq!(s.cluster_cidrs.len(), 2);
        assert_eq!(s.nodeport_cidrs, vec!["198.18.0.0/24".parse().unwrap()]);
        assert!(s.masquerade_all);
        assert_eq!(s.healthz_bind, Some("198.18.0.11:10256".parse().unwrap()));
        assert_eq!(s.metrics_bind, None);
        assert_eq!(s.min_sync_period, Duration::from_millis(250));
        assert_eq!(s.verbosity, 4);
    }

    #[test]
    fn missing_kubeconfig_is_named() {
        let err = resolve(&["--kubeconfig", "/nonexistent/kubeconfig"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--kubeconfig /nonexistent/kubeconfig: file does not exist"
        );
    }

    #[test]
    fn bad_cidr_and_bind_are_named() {
        let err = resolve(&["--healthz-bind-address", "nope"]).unwrap_err();
        assert!(err.to_string().contains("--healthz-bind-address"), "{err}");
        let err = resolve(&["--service-node-port-range", "40000-30000"]).unwrap_err();
        assert!(
            err.to_string().contains("--service-node-port-range"),
            "{err}"
        );
    }

    #[test]
    fn config_file_is_read_and_flags_override_it() {
        let dir = std::env::temp_dir().join(format!("swy-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.yaml");
        std::fs::write(
            &path,
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
             mode: ebpf\nclusterCIDR: 198.19.0.0/16\nnodePortAddresses: [198.18.0.0/24]\n\
             iptables:\n  masqueradeAll: true\n  minSyncPeriod: 2s\n  syncPeriod: 1m\n\
             conntrack:\n  maxPerCore: 0\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let s = resolve(&["--config", p, "--proxy-mode", "iptables"]).expect("resolve");
        assert_eq!(s.mode, ProxyMode::Iptables, "flag overrides file");
        assert_eq!(s.cluster_cidrs, vec!["198.19.0.0/16".parse().unwrap()]);
        assert!(s.masquerade_all);
        assert_eq!(s.min_sync_period, Duration::from_secs(2));
        assert_eq!(s.sync_period, Duration::from_secs(60));
        assert_eq!(s.ignored_config_fields, vec!["conntrack".to_string()]);

        std::fs::write(&path, "kind: KubeProxyConfiguration\nmode: warp\n").unwrap();
        let err = resolve(&["--config", p]).unwrap_err();
        assert!(err.to_string().contains("mode"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
