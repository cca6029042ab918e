//! Upstream's defaulting rules (`pkg/proxy/apis/config/v1alpha1/defaults.go`, the v1alpha1
//! conversion and `platformApplyDefaults`), field by field. kubeadm writes every field of a
//! KubeProxyConfiguration with its zero value (`mode: ""`, `syncPeriod: 0s`,
//! `healthzBindAddress: ""` …), and kube-proxy reads each zero as "use the default"; so must we.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::logging::LogFormat;
use super::nodeport::NodePortAddresses;
use super::{ConfigError, ProxyMode};
use crate::model::conntrack_sysctls::ConntrackSettings;

/// kube-proxy's health server port (`ports.ProxyHealthzPort`).
pub const HEALTHZ_PORT: u16 = 10256;
/// kube-proxy's metrics server port (`ports.ProxyStatusPort`).
pub const METRICS_PORT: u16 = 10249;
/// Default `syncPeriod`.
pub const SYNC_PERIOD: Duration = Duration::from_secs(30);
/// Default `minSyncPeriod`.
pub const MIN_SYNC_PERIOD: Duration = Duration::from_secs(1);
/// Default `oomScoreAdj` (`qos.KubeProxyOOMScoreAdj`).
pub const OOM_SCORE_ADJ: i32 = -999;

/// The proxy mode as asked for, before it is mapped onto a mode Switchyard implements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RequestedMode {
    /// `""`: the platform default, iptables on Linux.
    #[default]
    Default,
    /// `iptables`.
    Iptables,
    /// `nftables`: not implemented; runs as iptables.
    Nftables,
    /// `ipvs`: not implemented; runs as iptables.
    Ipvs,
    /// `ebpf`: Switchyard's own mode.
    Ebpf,
}

/// The section of a KubeProxyConfiguration that holds the sync periods and `masqueradeAll`
/// for a mode (upstream's v1alpha1 conversion picks it by mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// `iptables:` (also for `""` and `ebpf`).
    Iptables,
    /// `ipvs:`.
    Ipvs,
    /// `nftables:`.
    Nftables,
}

impl Section {
    /// The section's key in the config file.
    pub fn key(self) -> &'static str {
        match self {
            Section::Iptables => "iptables",
            Section::Ipvs => "ipvs",
            Section::Nftables => "nftables",
        }
    }

    /// Where `masqueradeAll` is read for the mode whose periods live here: ipvs has none of
    /// its own and uses `iptables.masqueradeAll`.
    pub fn masquerade_all(self) -> Section {
        match self {
            Section::Nftables => Section::Nftables,
            Section::Iptables | Section::Ipvs => Section::Iptables,
        }
    }
}

impl RequestedMode {
    /// Parses a `mode` value; the error lists what is accepted.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "" => Ok(Self::Default),
            "iptables" => Ok(Self::Iptables),
            "nftables" => Ok(Self::Nftables),
            "ipvs" => Ok(Self::Ipvs),
            "ebpf" => Ok(Self::Ebpf),
            other => Err(format!(
                "{other:?} is not a proxy mode: expected iptables, ebpf, or \"\" for the default \
                 (iptables); nftables and ipvs are accepted and run as iptables"
            )),
        }
    }

    /// The mode Switchyard runs.
    pub fn effective(self) -> ProxyMode {
        match self {
            Self::Ebpf => ProxyMode::Ebpf,
            Self::Default | Self::Iptables | Self::Nftables | Self::Ipvs => ProxyMode::Iptables,
        }
    }

    /// Where this mode's sync periods and `masqueradeAll` live in the config file.
    pub fn section(self) -> Section {
        match self {
            Self::Ipvs => Section::Ipvs,
            Self::Nftables => Section::Nftables,
            Self::Default | Self::Iptables | Self::Ebpf => Section::Iptables,
        }
    }

    /// Whether the requested mode serves NodePorts on 127.0.0.1. Upstream does so only in
    /// iptables mode; someone who asked for nftables or ipvs never had them, and keeping them
    /// off also keeps `route_localnet` off.
    pub fn localhost_nodeports(self) -> bool {
        !matches!(self, Self::Nftables | Self::Ipvs)
    }

    /// The one warning for a mode Switchyard does not implement, naming the flag or field.
    pub fn fallback_warning(self, field: &str, primary_defaulted: bool) -> Option<String> {
        let name = match self {
            Self::Nftables => "nftables",
            Self::Ipvs => "ipvs",
            _ => return None,
        };
        let mut text = format!(
            "{field}: {name} is not implemented by Switchyard; running in iptables mode, \
             without localhost NodePorts as in kube-proxy's {name} mode"
        );
        if primary_defaulted {
            text.push_str(
                ", and with NodePorts on the node's primary IPs (nftables mode's default)",
            );
        }
        Some(text)
    }
}

/// The settings kube-proxy itself would run with, resolved from either the flags or the
/// config file and defaulted; Switchyard's extension flags are added on top by
/// [`super::Settings`].
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Requested mode.
    pub mode: RequestedMode,
    /// Node name override, if any.
    pub hostname_override: Option<String>,
    /// Kubeconfig path and the flag or field it came from.
    pub kubeconfig: Option<(PathBuf, &'static str)>,
    /// Pod CIDRs.
    pub cluster_cidrs: Vec<IpNet>,
    /// NodePort addresses.
    pub nodeport: NodePortAddresses,
    /// Masquerade all ClusterIP traffic.
    pub masquerade_all: bool,
    /// Whether NodePorts may answer on 127.0.0.1 (`iptables.localhostNodePorts`).
    pub localhost_nodeports: bool,
    /// Health server address (`None`: disabled).
    pub healthz_bind: Option<SocketAddr>,
    /// Metrics server address (`None`: disabled).
    pub metrics_bind: Option<SocketAddr>,
    /// Coalescing interval.
    pub min_sync_period: Duration,
    /// Resync interval.
    pub sync_period: Duration,
    /// `bindAddress` / `--bind-address`: overrides the node's primary IP of its family.
    pub node_ip_overrides: Vec<IpAddr>,
    /// Log verbosity, when set.
    pub verbosity: Option<u8>,
    /// Log format, when set.
    pub logging_format: Option<LogFormat>,
    /// `oomScoreAdj` of the process.
    pub oom_score_adj: i32,
    /// The conntrack sysctls to set at start-up.
    pub conntrack: ConntrackSettings,
    /// Problems worth one warning each (modes run differently, fields without effect).
    pub warnings: Vec<String>,
}

/// Default hosts of the health and metrics servers: all addresses and loopback, of the
/// family of `bindAddress` (upstream's `getDefaultAddresses`).
pub fn default_bind_hosts(bind_address: Option<IpAddr>) -> (IpAddr, IpAddr) {
    match bind_address {
        Some(IpAddr::V6(_)) => (
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ),
        _ => (
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        ),
    }
}

/// A bind address as kube-proxy completes and validates it: `IP:PORT` as given, a bare `IP`
/// gets `port` (upstream's `AppendPortIfNeeded`). The host must be an IP: kube-proxy rejects
/// `:PORT` too (its `validateHostPort` and `IPPortVar`), so a config that starts kube-proxy
/// never has one.
pub fn complete_bind(
    field: &'static str,
    text: &str,
    port: u16,
) -> Result<SocketAddr, ConfigError> {
    let text = text.trim();
    let invalid = |message: String| ConfigError::InvalidValue { field, message };
    let addr = if let Ok(addr) = text.parse::<SocketAddr>() {
        addr
    } else if let Ok(ip) = text.parse::<IpAddr>() {
        SocketAddr::new(ip, port)
    } else if text.starts_with(':') {
        return Err(invalid(format!(
            "{text:?}: the address needs an IP, e.g. 0.0.0.0{text} (kube-proxy rejects a bare :PORT as well)"
        )));
    } else {
        return Err(invalid(format!("{text:?} is not IP or IP:PORT")));
    };
    if addr.port() == 0 {
        return Err(invalid(format!("{text:?}: port must be 1-65535")));
    }
    Ok(addr)
}

/// A `metav1.Duration` field: absent or zero means the default, as upstream cannot tell
/// `0s` from unset.
pub fn period(
    field: &'static str,
    text: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(default);
    };
    let parsed = humantime::parse_duration(text).map_err(|e| ConfigError::InvalidValue {
        field,
        message: format!("{text:?}: {e}"),
    })?;
    Ok(if parsed.is_zero() { default } else { parsed })
}

/// A `*metav1.Duration` conntrack timeout: absent (null) means `default`, zero means "leave
/// the sysctl as it is" (unlike the periods, where zero means the default).
pub fn timeout(
    field: &'static str,
    text: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(default),
        Some(text) => humantime::parse_duration(text).map_err(|e| ConfigError::InvalidValue {
            field,
            message: format!("{text:?}: {e}"),
        }),
    }
}

/// A count upstream's validation requires to be at least 0.
pub fn non_negative(field: &'static str, value: i32) -> Result<u32, ConfigError> {
    u32::try_from(value).map_err(|_| ConfigError::InvalidValue {
        field,
        message: format!("{value}: must be greater than or equal to 0"),
    })
}

/// `oomScoreAdj` in the kernel's range, as upstream validates it.
pub fn oom_score_adj(field: &'static str, value: i32) -> Result<i32, ConfigError> {
    if (-1000..=1000).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::InvalidValue {
            field,
            message: format!("{value}: must be within the range [-1000, 1000]"),
        })
    }
}

/// Upstream's validation of the pair: the resync must be positive and no shorter than the
/// coalescing interval.
pub fn check_periods(
    field: &'static str,
    min_sync_period: Duration,
    sync_period: Duration,
) -> Result<(), ConfigError> {
    if sync_period.is_zero() {
        return Err(ConfigError::InvalidValue {
            field,
            message: "syncPeriod must be greater than 0".into(),
        });
    }
    if min_sync_period > sync_period {
        return Err(ConfigError::InvalidValue {
            field,
            message: format!(
                "syncPeriod ({}) must be greater than or equal to minSyncPeriod ({})",
                humantime::format_duration(sync_period),
                humantime::format_duration(min_sync_period)
            ),
        });
    }
    Ok(())
}

/// A comma-separated CIDR list; blanks are skipped.
pub fn parse_cidr_list(field: &'static str, text: &str) -> Result<Vec<IpNet>, ConfigError> {
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

/// `bindAddress`: one IP, or a comma-separated pair of families. Unspecified addresses
/// (kubeadm writes `0.0.0.0`) override nothing.
pub fn parse_bind_address(field: &'static str, text: &str) -> Result<Vec<IpAddr>, ConfigError> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let ip: IpAddr = part.parse().map_err(|e| ConfigError::InvalidValue {
            field,
            message: format!("{part:?}: {e}"),
        })?;
        out.push(ip);
    }
    Ok(out)
}

/// A boolean flag value as Go's `strconv.ParseBool` reads it (`--masquerade-all=false`).
pub fn parse_go_bool(text: &str) -> Result<bool, String> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(format!("{other:?} is not a boolean (true or false)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_periods_take_the_defaults() {
        for zero in [None, Some(""), Some("0"), Some("0s"), Some("0m0s")] {
            assert_eq!(
                period("f", zero, SYNC_PERIOD).unwrap(),
                SYNC_PERIOD,
                "{zero:?}"
            );
        }
        assert_eq!(
            period("f", Some("15m0s"), SYNC_PERIOD).unwrap(),
            Duration::from_secs(900)
        );
        assert_eq!(
            period("f", Some("250ms"), SYNC_PERIOD).unwrap(),
            Duration::from_millis(250)
        );
        let err = period("iptables.syncPeriod", Some("soon"), SYNC_PERIOD).unwrap_err();
        assert!(err.to_string().contains("iptables.syncPeriod"), "{err}");
    }

    #[test]
    fn conntrack_timeouts_keep_zero_and_default_absent() {
        let day = Duration::from_secs(86_400);
        assert_eq!(timeout("f", None, day).unwrap(), day);
        assert_eq!(timeout("f", Some(""), day).unwrap(), day);
        assert_eq!(timeout("f", Some("0s"), day).unwrap(), Duration::ZERO);
        assert_eq!(
            timeout("f", Some("1h0m0s"), day).unwrap(),
            Duration::from_secs(3600)
        );
        let err = timeout("conntrack.udpTimeout", Some("-1s"), day).unwrap_err();
        assert!(err.to_string().contains("conntrack.udpTimeout"), "{err}");
        assert!(non_negative("conntrack.min", -1).is_err());
        assert_eq!(non_negative("conntrack.min", 7).unwrap(), 7);
        assert!(oom_score_adj("oomScoreAdj", 1001).is_err());
        assert_eq!(oom_score_adj("oomScoreAdj", -1000).unwrap(), -1000);
    }

    #[test]
    fn bind_addresses_are_completed_as_upstream() {
        let bind = |t| complete_bind("healthzBindAddress", t, HEALTHZ_PORT);
        assert_eq!(
            bind("127.0.0.1").unwrap(),
            "127.0.0.1:10256".parse().unwrap()
        );
        assert_eq!(bind("::1").unwrap(), "[::1]:10256".parse().unwrap());
        assert_eq!(
            bind("0.0.0.0:9999").unwrap(),
            "0.0.0.0:9999".parse().unwrap()
        );
        assert_eq!(bind("[::]:9999").unwrap(), "[::]:9999".parse().unwrap());
        let err = bind(":10256").unwrap_err().to_string();
        assert!(
            err.contains("healthzBindAddress") && err.contains("0.0.0.0:10256"),
            "{err}"
        );
        assert!(bind("localhost:1").is_err());
        assert!(bind("1.2.3.4:0").is_err());
    }

    #[test]
    fn default_hosts_follow_the_bind_address_family() {
        let v4 = default_bind_hosts(None);
        assert_eq!(v4.0.to_string(), "0.0.0.0");
        assert_eq!(v4.1.to_string(), "127.0.0.1");
        let v6 = default_bind_hosts(Some("fd00::1".parse().unwrap()));
        assert_eq!(v6.0.to_string(), "::");
        assert_eq!(v6.1.to_string(), "::1");
    }

    #[test]
    fn modes_map_onto_what_runs() {
        assert_eq!(
            RequestedMode::parse("").unwrap().effective(),
            ProxyMode::Iptables
        );
        assert_eq!(
            RequestedMode::parse("ipvs").unwrap().effective(),
            ProxyMode::Iptables
        );
        assert_eq!(
            RequestedMode::parse("nftables").unwrap().effective(),
            ProxyMode::Iptables
        );
        assert_eq!(
            RequestedMode::parse("ebpf").unwrap().effective(),
            ProxyMode::Ebpf
        );
        assert!(RequestedMode::parse("userspace").is_err());
        assert_eq!(RequestedMode::Ipvs.section(), Section::Ipvs);
        assert_eq!(RequestedMode::Ebpf.section(), Section::Iptables);
        assert!(RequestedMode::Iptables
            .fallback_warning("mode", false)
            .is_none());
        let warning = RequestedMode::Nftables
            .fallback_warning("mode", true)
            .unwrap();
        assert!(warning.starts_with("mode: nftables"), "{warning}");
    }

    #[test]
    fn go_bools() {
        assert_eq!(parse_go_bool("false"), Ok(false));
        assert_eq!(parse_go_bool("T"), Ok(true));
        assert!(parse_go_bool("yes").is_err());
    }
}
