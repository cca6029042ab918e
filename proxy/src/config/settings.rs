//! Resolved settings: kube-proxy's flags or its config file, with kube-proxy's precedence (see
//! [`crate::config`]), plus Switchyard's extension flags.
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;

use super::defaults::ProxyConfig;
use super::logging::LogFormat;
use super::nodeport::{primary_cidrs, primary_node_ips};
use super::{Cli, ConfigError, ProxyMode};
use crate::config::file::ConfigFile;
use crate::model::conntrack_sysctls::ConntrackSettings;

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

/// The `--config` file as start-up read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedConfigFile {
    /// Its path, as given.
    pub path: PathBuf,
    /// Its content.
    pub text: String,
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
    /// The flag or field the kubeconfig path came from, for errors.
    pub kubeconfig_field: &'static str,
    /// Pod CIDRs.
    pub cluster_cidrs: Vec<IpNet>,
    /// NodePort address filter (empty: all local addresses).
    pub nodeport_cidrs: Vec<IpNet>,
    /// `primary` was asked for: the Node's primary IPs join `nodeport_cidrs` once the first
    /// snapshot is in ([`Settings::resolve_primary_nodeport_addresses`]).
    pub nodeport_primary: bool,
    /// `bindAddress` / `--bind-address`: overrides the node's primary IP of its family.
    pub node_ip_overrides: Vec<IpAddr>,
    /// Whether NodePorts may answer on 127.0.0.1 (iptables mode, as kube-proxy).
    pub localhost_nodeports: bool,
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
    /// `--cleanup-kube-proxy` / `cleanupKubeProxy`: remove upstream kube-proxy's leftovers
    /// once the first sync is complete.
    pub cleanup_kube_proxy: bool,
    /// `--init-only`: the privileged init step (conntrack sysctls, route_localnet), then exit.
    pub init_only: bool,
    /// `--write-config-to`: not supported; start-up stops with an error naming it.
    pub write_config_to: Option<PathBuf>,
    /// klog-style verbosity.
    pub verbosity: u8,
    /// Log format.
    pub logging_format: LogFormat,
    /// `oomScoreAdj` / `--oom-score-adj`, written to `/proc/self/oom_score_adj` at start.
    pub oom_score_adj: i32,
    /// The conntrack sysctls set at start-up.
    pub conntrack: ConntrackSettings,
    /// The `--config` file as read, watched so that a change ends the process.
    pub config_file: Option<LoadedConfigFile>,
    /// One line each, logged once at start-up: modes that run as another, flags and fields
    /// without effect, flags the config file replaces.
    pub warnings: Vec<String>,
}

impl Settings {
    /// Resolves the flags and the config file ([`Settings::build`]), then checks that the
    /// paths they name exist.
    pub fn resolve(cli: Cli, hostname: impl FnOnce() -> String) -> Result<Self, ConfigError> {
        let settings = Self::build(cli, hostname)?;
        settings.check_paths()?;
        Ok(settings)
    }

    /// Reads `--config` if given and resolves everything, without touching other files.
    /// `hostname` is used when no override is set.
    pub fn build(cli: Cli, hostname: impl FnOnce() -> String) -> Result<Self, ConfigError> {
        let file = cli.config.as_deref().map(ConfigFile::load).transpose()?;
        Self::from_parts(cli, file.as_ref(), hostname)
    }

    /// Resolves flags and an already parsed config file: kube-proxy's precedence (see
    /// [`crate::config`]), then Switchyard's extension flags.
    pub fn from_parts(
        cli: Cli,
        file: Option<&ConfigFile>,
        hostname: impl FnOnce() -> String,
    ) -> Result<Self, ConfigError> {
        let mut warnings = Vec::new();
        let mut proxy: ProxyConfig = match file {
            Some(file) => {
                warnings.extend(cli.replaced_by_config());
                file.kube_proxy_config()?
            }
            None => cli.kube_proxy_config()?,
        };
        warnings.append(&mut proxy.warnings);
        warnings.extend(cli.no_effect.warnings());

        let node_name = match cli.hostname_override.as_deref() {
            // kube-proxy: the flag wins over the file; an empty flag counts as unset, one of
            // only whitespace is an error.
            None | Some("") => proxy.hostname_override.clone(),
            Some(name) if name.trim().is_empty() => {
                return Err(ConfigError::InvalidValue {
                    field: "--hostname-override",
                    message: "must not be empty".into(),
                })
            }
            Some(name) => Some(name.to_owned()),
        }
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_else(hostname);

        let (source, kubeconfig_field) = match (&cli.manifests, &proxy.kubeconfig) {
            (Some(dir), _) => (Source::Manifests(dir.clone()), "--kubeconfig"),
            (None, Some((path, field))) => (Source::Kubeconfig(path.clone()), *field),
            (None, None) => (Source::InCluster, "--kubeconfig"),
        };

        if !proxy.node_ip_overrides.iter().all(IpAddr::is_unspecified) && !proxy.nodeport.primary {
            warnings.push(format!(
                "bindAddress/--bind-address {:?}: has no effect without `primary` in \
                 nodePortAddresses/--nodeport-addresses (it only overrides the node's primary IP)",
                proxy.node_ip_overrides
            ));
        }

        let nodeport_range = match &cli.service_node_port_range {
            Some(text) => parse_port_range(text)?,
            None => 30000..=32767,
        };

        Ok(Settings {
            mode: proxy.mode.effective(),
            node_name,
            source,
            kubeconfig_field,
            cluster_cidrs: proxy.cluster_cidrs,
            nodeport_cidrs: proxy.nodeport.cidrs,
            nodeport_primary: proxy.nodeport.primary,
            node_ip_overrides: proxy.node_ip_overrides,
            localhost_nodeports: proxy.localhost_nodeports,
            masquerade_all: proxy.masquerade_all,
            healthz_bind: proxy.healthz_bind,
            metrics_bind: proxy.metrics_bind,
            min_sync_period: proxy.min_sync_period,
            sync_period: proxy.sync_period,
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
            cleanup: cli.cleanup.unwrap_or(false),
            // An extension: the flag applies over the file.
            cleanup_kube_proxy: cli
                .cleanup_kube_proxy
                .or(file.and_then(|f| f.cleanup_kube_proxy))
                .unwrap_or(false),
            init_only: cli.init_only.unwrap_or(false),
            write_config_to: cli.write_config_to.clone(),
            verbosity: cli.verbosity.or(proxy.verbosity).unwrap_or(0),
            // The logging flags win over the file, as -v does (upstream's copyLogsFromFlags).
            logging_format: cli
                .logging_format
                .or(proxy.logging_format)
                .unwrap_or_default(),
            oom_score_adj: proxy.oom_score_adj,
            conntrack: proxy.conntrack,
            config_file: cli
                .config
                .clone()
                .zip(file)
                .map(|(path, file)| LoadedConfigFile {
                    path,
                    text: file.text().to_owned(),
                }),
            warnings,
        })
    }

    /// The kubeconfig file and the manifest directory must exist.
    pub fn check_paths(&self) -> Result<(), ConfigError> {
        match &self.source {
            Source::Manifests(dir) if !dir.is_dir() => {
                Err(ConfigError::MissingManifests(dir.clone()))
            }
            Source::Kubeconfig(path) if !path.is_file() => Err(ConfigError::MissingKubeconfig {
                field: self.kubeconfig_field,
                path: path.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Turns `primary` into the Node's primary IPs as host CIDRs, once, as kube-proxy does at
    /// start-up. Returns what to log (`None` without `primary`): `Ok` with the addresses
    /// chosen, or `Err` when the Node reports none and only the other CIDRs, or every local
    /// address (upstream's fallback), serve NodePorts.
    pub fn resolve_primary_nodeport_addresses(
        &mut self,
        node: Option<&Node>,
    ) -> Option<Result<String, String>> {
        if !self.nodeport_primary {
            return None;
        }
        self.nodeport_primary = false;
        let primary = primary_cidrs(&primary_node_ips(node, &self.node_ip_overrides));
        let message = if primary.is_empty() {
            Err(if self.nodeport_cidrs.is_empty() {
                format!(
                    "nodePortAddresses primary: Node {} reports no InternalIP or ExternalIP; \
                     NodePorts are served on every local address, as kube-proxy does",
                    self.node_name
                )
            } else {
                format!(
                    "nodePortAddresses primary: Node {} reports no InternalIP or ExternalIP; \
                     NodePorts are served on {:?} only",
                    self.node_name, self.nodeport_cidrs
                )
            })
        } else {
            Ok(format!(
                "nodePortAddresses primary: NodePorts on {primary:?}"
            ))
        };
        for cidr in primary {
            if !self.nodeport_cidrs.contains(&cidr) {
                self.nodeport_cidrs.push(cidr);
            }
        }
        Some(message)
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
    use crate::config::nodeport::NodePortAddresses;
    use clap::Parser;

    /// kubeadm's stock kube-proxy ConfigMap (`config.conf`, as `kubeadm init` 1.34 writes it
    /// into `kube-system/kube-proxy`): every field present with its zero value.
    const KUBEADM_CONFIG: &str =
        include_str!("../../tests/fixtures/kubeadm-kube-proxy-config.conf");

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("switchyard").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn resolve(args: &[&str]) -> Result<Settings, ConfigError> {
        Settings::build(cli(args), || "host-a".into())
    }

    fn with_file(text: &str, args: &[&str]) -> Result<Settings, ConfigError> {
        let file = ConfigFile::parse(text).map_err(|message| ConfigError::InvalidConfig {
            path: "test.yaml".into(),
            message,
        })?;
        Settings::from_parts(cli(args), Some(&file), || "host-a".into())
    }

    fn addr(text: &str) -> Option<SocketAddr> {
        Some(text.parse().expect("a socket address"))
    }

    #[test]
    fn defaults_match_kube_proxy() {
        let s = resolve(&[]).expect("defaults resolve");
        assert_eq!(s.mode, ProxyMode::Iptables);
        assert_eq!(s.node_name, "host-a");
        assert_eq!(s.healthz_bind, addr("0.0.0.0:10256"));
        assert_eq!(s.metrics_bind, addr("127.0.0.1:10249"));
        assert_eq!(s.min_sync_period, Duration::from_secs(1));
        assert_eq!(s.sync_period, Duration::from_secs(30));
        assert_eq!(s.source, Source::InCluster);
        assert_eq!(s.nodeport_range, 30000..=32767);
        assert!(s.localhost_nodeports);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
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
        assert_eq!(s.healthz_bind, addr("198.18.0.11:10256"));
        assert_eq!(s.metrics_bind, None);
        assert_eq!(s.min_sync_period, Duration::from_millis(250));
        assert_eq!(s.verbosity, 4);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        let off = resolve(&[
            "--masquerade-all=false",
            "--iptables-localhost-nodeports=false",
        ])
        .expect("Go-style booleans");
        assert!(!off.masquerade_all);
        assert!(!off.localhost_nodeports);
    }

    #[test]
    fn missing_kubeconfig_is_named() {
        let err = Settings::resolve(cli(&["--kubeconfig", "/nonexistent/kubeconfig"]), || {
            "host-a".into()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "--kubeconfig /nonexistent/kubeconfig: file does not exist"
        );
    }

    #[test]
    fn bad_cidr_and_bind_are_named() {
        let err = resolve(&["--healthz-bind-address", "nope"]).unwrap_err();
        assert!(err.to_string().contains("--healthz-bind-address"), "{err}");
        let err = resolve(&["--metrics-bind-address", ":10249"]).unwrap_err();
        assert!(err.to_string().contains("--metrics-bind-address"), "{err}");
        let err = resolve(&["--service-node-port-range", "40000-30000"]).unwrap_err();
        assert!(
            err.to_string().contains("--service-node-port-range"),
            "{err}"
        );
        let err = resolve(&["--nodeport-addresses", "198.18.0.1"]).unwrap_err();
        assert!(err.to_string().contains("--nodeport-addresses"), "{err}");
        let err = resolve(&["--sync-period", "500ms"]).unwrap_err();
        assert!(err.to_string().contains("minSyncPeriod"), "{err}");
    }

    #[test]
    fn kubeadm_default_configmap_starts_switchyard() {
        let s = with_file(KUBEADM_CONFIG, &["--hostname-override=node-1"])
            .expect("kubeadm's ConfigMap resolves");
        assert_eq!(
            s.mode,
            ProxyMode::Iptables,
            "mode \"\" is the platform default"
        );
        assert_eq!(
            s.sync_period,
            Duration::from_secs(30),
            "iptables.syncPeriod 0s"
        );
        assert_eq!(
            s.min_sync_period,
            Duration::from_secs(1),
            "iptables.minSyncPeriod 0s"
        );
        assert_eq!(
            s.healthz_bind,
            addr("0.0.0.0:10256"),
            "healthzBindAddress \"\""
        );
        assert_eq!(
            s.metrics_bind,
            addr("127.0.0.1:10249"),
            "metricsBindAddress \"\""
        );
        assert_eq!(
            s.source,
            Source::Kubeconfig("/var/lib/kube-proxy/kubeconfig.conf".into())
        );
        assert_eq!(s.node_name, "node-1");
        assert_eq!(s.cluster_cidrs, vec!["172.17.0.0/16".parse().unwrap()]);
        assert!(s.nodeport_cidrs.is_empty() && !s.nodeport_primary);
        assert!(!s.masquerade_all);
        assert!(s.localhost_nodeports);
        assert_eq!(s.verbosity, 0);
        assert!(s.node_ip_overrides.iter().all(IpAddr::is_unspecified));
        // Every field is at its zero value: nothing to warn about.
        assert!(s.warnings.is_empty(), "{:#?}", s.warnings);
        // The kubeconfig is checked after resolution, and named by its field.
        let err = s.check_paths().unwrap_err().to_string();
        assert_eq!(
            err,
            "clientConnection.kubeconfig /var/lib/kube-proxy/kubeconfig.conf: file does not exist"
        );
    }

    #[test]
    fn file_fields_are_defaulted_and_completed_as_upstream() {
        let s = with_file(
            "kind: KubeProxyConfiguration\nhealthzBindAddress: 127.0.0.1\n\
             metricsBindAddress: 0.0.0.0:9100\n",
            &[],
        )
        .unwrap();
        assert_eq!(s.healthz_bind, addr("127.0.0.1:10256"));
        assert_eq!(s.metrics_bind, addr("0.0.0.0:9100"));
        let v6 = with_file("bindAddress: \"::\"\n", &[]).unwrap();
        assert_eq!(v6.healthz_bind, addr("[::]:10256"));
        assert_eq!(v6.metrics_bind, addr("[::1]:10249"));
        let err = with_file("healthzBindAddress: \":10256\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("healthzBindAddress"), "{err}");
        let err = with_file("bindAddress: nope\n", &[]).unwrap_err();
        assert!(err.to_string().contains("bindAddress"), "{err}");
        // Switchyard's top-level periods win over the section's.
        let s = with_file(
            "minSyncPeriod: 2s\nsyncPeriod: 0s\niptables: {syncPeriod: 1m, minSyncPeriod: 5s}\n",
            &[],
        )
        .unwrap();
        assert_eq!(s.min_sync_period, Duration::from_secs(2));
        assert_eq!(s.sync_period, Duration::from_secs(60));
    }

    #[test]
    fn config_file_replaces_kube_proxy_flags() {
        let file = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
                    mode: ebpf\nclusterCIDR: 198.19.0.0/16\nnodePortAddresses: [198.18.0.0/24]\n\
                    hostnameOverride: from-file\nlogging: {verbosity: 2}\n\
                    iptables:\n  masqueradeAll: true\n  minSyncPeriod: 2s\n  syncPeriod: 1m\n";
        let s = with_file(
            file,
            &[
                "--proxy-mode=iptables",
                "--cluster-cidr=10.0.0.0/8",
                "--sync-period=5s",
                "--hostname-override=From-Flag",
                "--v=6",
                "--bpffs-path=/sys/fs/bpf/other",
            ],
        )
        .expect("resolve");
        assert_eq!(s.mode, ProxyMode::Ebpf, "the file wins over --proxy-mode");
        assert_eq!(s.cluster_cidrs, vec!["198.19.0.0/16".parse().unwrap()]);
        assert!(s.masquerade_all);
        assert_eq!(s.min_sync_period, Duration::from_secs(2));
        assert_eq!(s.sync_period, Duration::from_secs(60));
        assert_eq!(
            s.node_name, "from-flag",
            "--hostname-override wins over the file"
        );
        assert_eq!(s.verbosity, 6, "-v wins over logging.verbosity");
        assert_eq!(
            s.bpffs_path,
            PathBuf::from("/sys/fs/bpf/other"),
            "extensions apply"
        );
        assert_eq!(s.warnings.len(), 3, "{:#?}", s.warnings);
        for flag in ["--proxy-mode", "--cluster-cidr", "--sync-period"] {
            assert!(
                s.warnings
                    .iter()
                    .any(|w| w.starts_with(&format!("{flag} is ignored because --config"))),
                "{flag}: {:#?}",
                s.warnings
            );
        }
        let without_flag = with_file(file, &["--hostname-override="]).unwrap();
        assert_eq!(
            without_flag.node_name, "from-file",
            "an empty flag counts as unset"
        );
        let err = with_file(file, &["--hostname-override= "]).unwrap_err();
        assert!(err.to_string().contains("--hostname-override"), "{err}");
        assert_eq!(without_flag.verbosity, 2);
    }

    #[test]
    fn config_file_is_loaded_and_bad_fields_are_named() {
        let dir = std::env::temp_dir().join(format!("swy-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.yaml");
        std::fs::write(&path, "kind: KubeProxyConfiguration\nmode: ebpf\n").unwrap();
        let p = path.to_str().unwrap();
        let s = resolve(&["--config", p]).unwrap();
        assert_eq!(s.mode, ProxyMode::Ebpf);
        assert_eq!(
            s.config_file,
            Some(LoadedConfigFile {
                path: path.clone(),
                text: "kind: KubeProxyConfiguration\nmode: ebpf\n".into()
            }),
            "kept for the watch"
        );
        std::fs::write(&path, "kind: KubeProxyConfiguration\nmode: warp\n").unwrap();
        let err = resolve(&["--config", p]).unwrap_err();
        assert!(err.to_string().contains("mode"), "{err}");
        std::fs::write(&path, "iptables: {syncPeriod: soon}\n").unwrap();
        let err = resolve(&["--config", p]).unwrap_err();
        assert!(err.to_string().contains("iptables.syncPeriod"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nftables_and_ipvs_run_as_iptables_with_one_warning() {
        let s = with_file(
            "mode: nftables\nnftables: {masqueradeAll: true, syncPeriod: 10s}\n\
             iptables: {masqueradeAll: false}\n",
            &[],
        )
        .unwrap();
        assert_eq!(s.mode, ProxyMode::Iptables);
        assert_eq!(
            s.sync_period,
            Duration::from_secs(10),
            "nftables.syncPeriod"
        );
        assert!(s.masquerade_all, "nftables.masqueradeAll");
        assert!(
            s.nodeport_primary,
            "nftables mode defaults to primary NodePort IPs"
        );
        assert!(!s.localhost_nodeports);
        assert_eq!(s.warnings.len(), 1, "{:#?}", s.warnings);
        assert!(s.warnings[0].starts_with("mode: nftables is not implemented"));

        let s = with_file(
            "mode: ipvs\nipvs: {syncPeriod: 20s, minSyncPeriod: 2s}\n\
             iptables: {masqueradeAll: true}\n",
            &[],
        )
        .unwrap();
        assert_eq!(s.mode, ProxyMode::Iptables);
        assert_eq!(
            (s.min_sync_period, s.sync_period),
            (Duration::from_secs(2), Duration::from_secs(20))
        );
        assert!(s.masquerade_all, "ipvs mode reads iptables.masqueradeAll");
        assert!(!s.nodeport_primary);
        assert_eq!(s.warnings.len(), 1, "{:#?}", s.warnings);
        assert!(s.warnings[0].starts_with("mode: ipvs is not implemented"));

        for mode in ["nftables", "ipvs"] {
            let s = resolve(&["--proxy-mode", mode]).unwrap();
            assert_eq!(s.mode, ProxyMode::Iptables);
            assert_eq!(s.warnings.len(), 1, "{:#?}", s.warnings);
            assert!(
                s.warnings[0].starts_with(&format!("--proxy-mode: {mode} is not implemented")),
                "{:?}",
                s.warnings
            );
        }
        let s = resolve(&[
            "--proxy-mode=ipvs",
            "--ipvs-sync-period=9s",
            "--sync-period=1h",
        ])
        .unwrap();
        assert_eq!(s.sync_period, Duration::from_secs(9));
        assert!(s
            .warnings
            .iter()
            .any(|w| w.starts_with("--sync-period has no effect")));
        assert_eq!(
            resolve(&["--proxy-mode="]).unwrap().mode,
            ProxyMode::Iptables
        );
    }

    #[test]
    fn no_effect_flags_parse_and_warn_once_each() {
        let flags: &[(&str, &str)] = &[
            ("--feature-gates", "Foo=true,Bar=false"),
            ("--master", "https://198.18.0.1:6443"),
            ("--kube-api-content-type", "application/json"),
            ("--kube-api-qps", "50"),
            ("--kube-api-burst", "100"),
            ("--config-sync-period", "15m0s"),
            ("--bind-address-hard-fail", "false"),
            ("--profiling", "true"),
            ("--show-hidden-metrics-for-version", "1.33"),
            ("--vmodule", "proxier=4"),
            ("--log-flush-frequency", "5s"),
            ("--iptables-masquerade-bit", "13"),
            ("--detect-local-mode", "NodeCIDR"),
            ("--pod-bridge-interface", "cni0"),
            ("--pod-interface-name-prefix", "veth"),
            ("--ipvs-scheduler", "rr"),
            ("--ipvs-exclude-cidrs", "10.0.0.0/8"),
            ("--ipvs-strict-arp", "true"),
            ("--ipvs-tcp-timeout", "0s"),
            ("--ipvs-tcpfin-timeout", "0s"),
            ("--ipvs-udp-timeout", "0s"),
            ("--healthz-port", "10256"),
            ("--metrics-port", "10249"),
        ];
        for (flag, value) in flags {
            let arg = format!("{flag}={value}");
            let s = resolve(&[&arg]).unwrap_or_else(|e| panic!("{arg}: {e}"));
            assert_eq!(s.warnings.len(), 1, "{arg}: {:#?}", s.warnings);
            // Durations are shown normalised (15m0s as 15m).
            assert!(
                s.warnings[0].starts_with(&format!("{flag}="))
                    && s.warnings[0].contains(": has no effect ("),
                "{arg}: {}",
                s.warnings[0]
            );
        }
        // All at once: one warning each.
        let args: Vec<String> = flags.iter().map(|(f, v)| format!("{f}={v}")).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(resolve(&args).unwrap().warnings.len(), flags.len());
        // Values that mean what Switchyard does anyway are not worth a warning.
        let same = resolve(&[
            "--iptables-masquerade-bit=14",
            "--detect-local-mode=ClusterCIDR",
            "--bind-address-hard-fail",
        ])
        .unwrap();
        assert!(same.warnings.is_empty(), "{:#?}", same.warnings);
        // A bad value still fails, as in kube-proxy, and so does a flag nobody knows.
        let bad = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("switchyard").chain(args.iter().copied())).is_err()
        };
        assert!(bad(&["--conntrack-min=lots"]));
        assert!(bad(&["--logging-format=xml"]));
        assert!(bad(&["--feature-gates=Foo"]));
        assert!(bad(&["--profiling=maybe"]));
        assert!(bad(&["--no-such-flag"]));
    }

    #[test]
    fn oom_score_conntrack_and_log_format_as_upstream() {
        use std::time::Duration;
        let s = resolve(&[]).unwrap();
        assert_eq!(s.oom_score_adj, -999);
        assert_eq!(s.conntrack, ConntrackSettings::default());
        assert_eq!(s.logging_format, LogFormat::Text);
        assert_eq!(s.config_file, None);

        let s = resolve(&[
            "--oom-score-adj",
            "-500",
            "--conntrack-max-per-core=0",
            "--conntrack-min=1000",
            "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=10m",
            "--conntrack-tcp-be-liberal",
            "--conntrack-udp-timeout=30s",
            "--conntrack-udp-timeout-stream=2m",
            "--logging-format=json",
        ])
        .unwrap();
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        assert_eq!(s.oom_score_adj, -500);
        assert_eq!(
            s.conntrack,
            ConntrackSettings {
                max_per_core: 0,
                min: 1000,
                tcp_established_timeout: Duration::ZERO,
                tcp_close_wait_timeout: Duration::from_secs(600),
                tcp_be_liberal: true,
                udp_timeout: Duration::from_secs(30),
                udp_stream_timeout: Duration::from_secs(120),
            }
        );
        assert_eq!(s.logging_format, LogFormat::Json);
        for (args, field) in [
            (&["--oom-score-adj=-1001"][..], "--oom-score-adj"),
            (&["--conntrack-min=-1"][..], "--conntrack-min"),
            (
                &["--conntrack-max-per-core=-5"][..],
                "--conntrack-max-per-core",
            ),
        ] {
            let err = resolve(args).unwrap_err().to_string();
            assert!(err.contains(field), "{args:?}: {err}");
        }

        // kubeadm's nulls are the defaults.
        let s = with_file(KUBEADM_CONFIG, &[]).unwrap();
        assert_eq!(s.oom_score_adj, -999);
        assert_eq!(s.conntrack, ConntrackSettings::default());
        // Zero leaves a value as it is; the flags are replaced by the file, except the
        // logging format.
        let s = with_file(
            "oomScoreAdj: 0\nlogging: {format: json}\nconntrack:\n  maxPerCore: 0\n  min: 5\n  \
             tcpEstablishedTimeout: 0s\n  tcpCloseWaitTimeout: 2m0s\n  tcpBeLiberal: true\n  \
             udpTimeout: 10s\n  udpStreamTimeout: 1m\n",
            &["--conntrack-min=7", "--oom-score-adj=5"],
        )
        .unwrap();
        assert_eq!(s.oom_score_adj, 0);
        assert_eq!(
            s.conntrack,
            ConntrackSettings {
                max_per_core: 0,
                min: 5,
                tcp_established_timeout: Duration::ZERO,
                tcp_close_wait_timeout: Duration::from_secs(120),
                tcp_be_liberal: true,
                udp_timeout: Duration::from_secs(10),
                udp_stream_timeout: Duration::from_secs(60),
            }
        );
        assert_eq!(s.logging_format, LogFormat::Json);
        assert_eq!(s.warnings.len(), 2, "{:#?}", s.warnings);
        assert!(s
            .warnings
            .iter()
            .all(|w| w.contains("ignored because --config")));
        let s = with_file("logging: {format: json}\n", &["--logging-format=text"]).unwrap();
        assert_eq!(s.logging_format, LogFormat::Text, "the flag wins, as -v");
        for (text, field) in [
            ("oomScoreAdj: 1001\n", "oomScoreAdj"),
            ("conntrack: {maxPerCore: -1}\n", "conntrack.maxPerCore"),
            ("conntrack: {udpTimeout: soon}\n", "conntrack.udpTimeout"),
            ("logging: {format: xml}\n", "logging.format"),
        ] {
            let err = with_file(text, &[]).unwrap_err().to_string();
            assert!(err.contains(field), "{text}: {err}");
        }
    }

    #[test]
    fn init_only_and_bind_address_are_reported() {
        // --init-only is the DaemonSet's privileged init step: no warning.
        let s = resolve(&["--init-only"]).unwrap();
        assert!(s.init_only);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        let s = resolve(&["--cleanup-kube-proxy"]).unwrap();
        assert!(s.cleanup_kube_proxy && s.warnings.is_empty());
        let s = with_file("cleanupKubeProxy: true\n", &[]).unwrap();
        assert!(
            s.cleanup_kube_proxy && s.warnings.is_empty(),
            "{:?}",
            s.warnings
        );
        let s = with_file("cleanupKubeProxy: true\n", &["--cleanup-kube-proxy=false"]).unwrap();
        assert!(
            !s.cleanup_kube_proxy,
            "the extension flag applies over the file"
        );
        let s = resolve(&["--bind-address=198.18.0.50"]).unwrap();
        assert!(
            s.warnings[0].starts_with("bindAddress/--bind-address"),
            "{:?}",
            s.warnings
        );
        let s = resolve(&["--bind-address=0.0.0.0"]).unwrap();
        assert!(
            s.warnings.is_empty(),
            "unspecified overrides nothing: {:?}",
            s.warnings
        );
    }

    #[test]
    fn primary_nodeport_addresses_resolve_from_the_node() {
        use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
        let node = Node {
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress {
                        type_: "ExternalIP".into(),
                        address: "203.0.113.7".into(),
                    },
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: "198.18.0.11".into(),
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut s = resolve(&["--nodeport-addresses", "primary"]).unwrap();
        assert!(s.nodeport_primary && s.nodeport_cidrs.is_empty());
        let log = s.resolve_primary_nodeport_addresses(Some(&node)).unwrap();
        assert!(
            log.as_ref().is_ok_and(|l| l.contains("198.18.0.11/32")),
            "{log:?}"
        );
        assert_eq!(s.nodeport_cidrs, vec!["198.18.0.11/32".parse().unwrap()]);
        assert!(!s.nodeport_primary);
        assert_eq!(
            s.resolve_primary_nodeport_addresses(Some(&node)),
            None,
            "once"
        );

        let mut s =
            resolve(&["--nodeport-addresses=primary", "--bind-address=198.18.0.50"]).unwrap();
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        s.resolve_primary_nodeport_addresses(Some(&node));
        assert_eq!(s.nodeport_cidrs, vec!["198.18.0.50/32".parse().unwrap()]);

        let mut s = with_file("nodePortAddresses: [primary, 198.19.0.0/16]\n", &[]).unwrap();
        assert_eq!(
            NodePortAddresses {
                cidrs: s.nodeport_cidrs.clone(),
                primary: s.nodeport_primary
            },
            NodePortAddresses {
                cidrs: vec!["198.19.0.0/16".parse().unwrap()],
                primary: true
            }
        );
        let log = s.resolve_primary_nodeport_addresses(None).unwrap();
        assert!(
            log.as_ref()
                .is_err_and(|l| l.contains("reports no InternalIP")),
            "{log:?}"
        );
        assert_eq!(s.nodeport_cidrs, vec!["198.19.0.0/16".parse().unwrap()]);
    }
}
