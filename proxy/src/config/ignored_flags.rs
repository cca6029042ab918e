//! kube-proxy flags Switchyard accepts, so that a kube-proxy command line starts it, but which
//! have no effect here. Each one that is given gets one warning naming it and saying why.
//! Values are still parsed with their upstream types, so a typo fails as it would in
//! kube-proxy.
use std::fmt::Display;

use clap::Args;

use super::defaults::parse_go_bool;

const CLIENT: &str = "the API client uses kube-rs' defaults";
const IPVS: &str = "ipvs mode is not implemented";
const LOCAL: &str = "Switchyard tells local traffic by --cluster-cidr only";
const LOGGING: &str = "logging is configured with -v, --logging-format or RUST_LOG";

/// A value as shown in a warning.
fn shown(value: &impl Display) -> String {
    value.to_string()
}

/// Declares the flags: field, type, flag name, the value that means "what Switchyard does
/// anyway" (no warning), the reason shown in the warning, and extra clap attributes.
macro_rules! no_effect_flags {
    ($( $field:ident : $ty:ty = $flag:literal, same: $same:expr, $reason:expr $(, [$($attr:tt)*])? ; )*) => {
        /// kube-proxy flags without effect in Switchyard (accepted for compatibility).
        #[derive(Debug, Default, Clone, Args)]
        #[command(next_help_heading = "kube-proxy flags accepted without effect")]
        pub struct NoEffectFlags {
            $(
                #[doc = concat!("kube-proxy's --", $flag, "; no effect here.")]
                #[arg(long = $flag, value_name = "VALUE", help = $reason $(, $($attr)*)?)]
                pub $field: Option<$ty>,
            )*
        }

        impl NoEffectFlags {
            /// `(flag, value, reason)` of every flag given, in declaration order.
            fn given(&self) -> Vec<(&'static str, String, &'static str)> {
                let mut out = Vec::new();
                $(
                    if let Some(value) = &self.$field {
                        let value = shown(value);
                        let same: Option<&str> = $same;
                        if same != Some(value.as_str()) {
                            out.push(($flag, value, $reason));
                        }
                    }
                )*
                out
            }
        }
    };
}

no_effect_flags! {
    feature_gates: String = "feature-gates", same: None, "Switchyard has no feature gates",
        [value_parser = parse_feature_gates];
    master: String = "master", same: None,
        "the API server address comes from the kubeconfig (or in-cluster config)";
    kube_api_content_type: String = "kube-api-content-type", same: None, CLIENT;
    kube_api_qps: f32 = "kube-api-qps", same: None, CLIENT;
    kube_api_burst: i32 = "kube-api-burst", same: None, CLIENT;
    config_sync_period: humantime::Duration = "config-sync-period", same: None,
        "the API watches run without a periodic resync";
    bind_address_hard_fail: bool = "bind-address-hard-fail", same: Some("true"),
        "a server that cannot bind always stops Switchyard", [num_args = 0..=1,
        require_equals = true, default_missing_value = "true", value_parser = parse_go_bool];
    profiling: bool = "profiling", same: Some("false"), "there is no /debug/pprof",
        [num_args = 0..=1, require_equals = true, default_missing_value = "true",
        value_parser = parse_go_bool];
    show_hidden_metrics_for_version: String = "show-hidden-metrics-for-version", same: None,
        "Switchyard hides no metrics";
    vmodule: String = "vmodule", same: None, LOGGING;
    log_flush_frequency: humantime::Duration = "log-flush-frequency", same: None, LOGGING;
    iptables_masquerade_bit: i32 = "iptables-masquerade-bit", same: Some("14"),
        "Switchyard always marks with bit 14 (0x4000)";
    detect_local_mode: String = "detect-local-mode", same: Some("ClusterCIDR"), LOCAL;
    pod_bridge_interface: String = "pod-bridge-interface", same: None, LOCAL;
    pod_interface_name_prefix: String = "pod-interface-name-prefix", same: None, LOCAL;
    ipvs_scheduler: String = "ipvs-scheduler", same: None, IPVS;
    ipvs_exclude_cidrs: String = "ipvs-exclude-cidrs", same: None, IPVS;
    ipvs_strict_arp: bool = "ipvs-strict-arp", same: Some("false"), IPVS, [num_args = 0..=1,
        require_equals = true, default_missing_value = "true", value_parser = parse_go_bool];
    ipvs_tcp_timeout: humantime::Duration = "ipvs-tcp-timeout", same: None, IPVS;
    ipvs_tcpfin_timeout: humantime::Duration = "ipvs-tcpfin-timeout", same: None, IPVS;
    ipvs_udp_timeout: humantime::Duration = "ipvs-udp-timeout", same: None, IPVS;
    healthz_port: i32 = "healthz-port", same: None,
        "deprecated in kube-proxy; use --healthz-bind-address";
    metrics_port: i32 = "metrics-port", same: None,
        "deprecated in kube-proxy; use --metrics-bind-address";
}

impl NoEffectFlags {
    /// One warning per flag given that changes nothing.
    pub fn warnings(&self) -> Vec<String> {
        self.given()
            .into_iter()
            .map(|(flag, value, reason)| format!("--{flag}={value}: has no effect ({reason})"))
            .collect()
    }
}

/// `--feature-gates A=true,B=false`, checked as kube-proxy's `MapStringBool` checks it.
fn parse_feature_gates(text: &str) -> Result<String, String> {
    for pair in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?}: expected NAME=true|false"))?;
        if name.trim().is_empty() {
            return Err(format!("{pair:?}: the gate name is empty"));
        }
        parse_go_bool(value.trim())?;
    }
    Ok(text.to_owned())
}
