//! Every field of kube-proxy's KubeProxyConfiguration (v1alpha1, up to 1.35, plus removed
//! ones old files still carry), and whether Switchyard uses it. A field that is set to
//! something other than its zero value but has no effect here gets one warning, as does a
//! field upstream does not know (upstream decodes leniently and warns too). Zero values are
//! what kubeadm writes for everything it leaves unset, so they say nothing.
use serde_norway::Value;

use super::defaults::Section;

/// How Switchyard treats a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Use {
    /// Read by Switchyard.
    Used,
    /// Read only when the requested mode's section is this one (upstream's conversion).
    ModeSection(Section),
    /// `masqueradeAll` of this section: read from `nftables:` in nftables mode, else from
    /// `iptables:` (upstream's conversion).
    MasqueradeAllOf(Section),
    /// No effect; the reason goes into the warning.
    NoEffect(&'static str),
    /// No effect unless set to this value, which is what Switchyard does anyway.
    NoEffectUnless(&'static str, &'static str),
}

const CLIENT: &str = "the API client uses kube-rs' defaults";
const IPVS: &str = "ipvs mode is not implemented";
const WINDOWS: &str = "Windows only";
const LOGGING: &str = "logging is configured with verbosity, format or RUST_LOG";

/// Sections whose fields are listed one by one below.
const SECTIONS: &[&str] = &[
    "clientConnection",
    "logging",
    "iptables",
    "ipvs",
    "nftables",
    "winkernel",
    "detectLocal",
    "conntrack",
];

const FIELDS: &[(&str, Use)] = &[
    ("apiVersion", Use::Used),
    ("kind", Use::Used),
    (
        "featureGates",
        Use::NoEffect("Switchyard has no feature gates"),
    ),
    ("clientConnection.kubeconfig", Use::Used),
    ("clientConnection.acceptContentTypes", Use::NoEffect(CLIENT)),
    ("clientConnection.contentType", Use::NoEffect(CLIENT)),
    ("clientConnection.qps", Use::NoEffect(CLIENT)),
    ("clientConnection.burst", Use::NoEffect(CLIENT)),
    ("logging.verbosity", Use::Used),
    ("logging.format", Use::Used),
    ("logging.flushFrequency", Use::NoEffect(LOGGING)),
    ("logging.vmodule", Use::NoEffect(LOGGING)),
    ("logging.options", Use::NoEffect(LOGGING)),
    ("hostnameOverride", Use::Used),
    ("bindAddress", Use::Used),
    ("healthzBindAddress", Use::Used),
    ("metricsBindAddress", Use::Used),
    (
        "bindAddressHardFail",
        Use::NoEffect("a server that cannot bind always stops Switchyard"),
    ),
    ("enableProfiling", Use::NoEffect("there is no /debug/pprof")),
    (
        "showHiddenMetricsForVersion",
        Use::NoEffect("Switchyard hides no metrics"),
    ),
    ("mode", Use::Used),
    (
        "iptables.masqueradeAll",
        Use::MasqueradeAllOf(Section::Iptables),
    ),
    (
        "iptables.masqueradeBit",
        Use::NoEffectUnless("14", "Switchyard always marks with bit 14 (0x4000)"),
    ),
    ("iptables.localhostNodePorts", Use::Used),
    (
        "iptables.snatNodeInternalIP",
        Use::NoEffect("masquerading uses the egress interface's address"),
    ),
    ("iptables.syncPeriod", Use::ModeSection(Section::Iptables)),
    (
        "iptables.minSyncPeriod",
        Use::ModeSection(Section::Iptables),
    ),
    ("ipvs.syncPeriod", Use::ModeSection(Section::Ipvs)),
    ("ipvs.minSyncPeriod", Use::ModeSection(Section::Ipvs)),
    ("ipvs.scheduler", Use::NoEffect(IPVS)),
    ("ipvs.excludeCIDRs", Use::NoEffect(IPVS)),
    ("ipvs.strictARP", Use::NoEffect(IPVS)),
    ("ipvs.tcpTimeout", Use::NoEffect(IPVS)),
    ("ipvs.tcpFinTimeout", Use::NoEffect(IPVS)),
    ("ipvs.udpTimeout", Use::NoEffect(IPVS)),
    (
        "nftables.masqueradeAll",
        Use::MasqueradeAllOf(Section::Nftables),
    ),
    (
        "nftables.masqueradeBit",
        Use::NoEffectUnless("14", "Switchyard always marks with bit 14 (0x4000)"),
    ),
    ("nftables.syncPeriod", Use::ModeSection(Section::Nftables)),
    (
        "nftables.minSyncPeriod",
        Use::ModeSection(Section::Nftables),
    ),
    ("winkernel.networkName", Use::NoEffect(WINDOWS)),
    ("winkernel.sourceVip", Use::NoEffect(WINDOWS)),
    ("winkernel.enableDSR", Use::NoEffect(WINDOWS)),
    ("winkernel.rootHnsEndpointName", Use::NoEffect(WINDOWS)),
    ("winkernel.forwardHealthCheckVip", Use::NoEffect(WINDOWS)),
    ("windowsRunAsService", Use::NoEffect(WINDOWS)),
    (
        "detectLocalMode",
        Use::NoEffectUnless(
            "ClusterCIDR",
            "Switchyard tells local traffic by clusterCIDR only",
        ),
    ),
    (
        "detectLocal.bridgeInterface",
        Use::NoEffect("Switchyard tells local traffic by clusterCIDR only"),
    ),
    (
        "detectLocal.interfaceNamePrefix",
        Use::NoEffect("Switchyard tells local traffic by clusterCIDR only"),
    ),
    ("clusterCIDR", Use::Used),
    ("nodePortAddresses", Use::Used),
    ("oomScoreAdj", Use::Used),
    ("conntrack.maxPerCore", Use::Used),
    ("conntrack.min", Use::Used),
    (
        "conntrack.max",
        Use::NoEffect("removed from kube-proxy; use conntrack.maxPerCore and conntrack.min"),
    ),
    ("conntrack.tcpEstablishedTimeout", Use::Used),
    ("conntrack.tcpCloseWaitTimeout", Use::Used),
    ("conntrack.tcpBeLiberal", Use::Used),
    ("conntrack.udpTimeout", Use::Used),
    ("conntrack.udpStreamTimeout", Use::Used),
    (
        "configSyncPeriod",
        Use::NoEffect("the API watches run without a periodic resync"),
    ),
    (
        "portRange",
        Use::NoEffect("unused since kube-proxy's userspace mode"),
    ),
    (
        "udpIdleTimeout",
        Use::NoEffect("unused since kube-proxy's userspace mode"),
    ),
    (
        "resourceContainer",
        Use::NoEffect("removed from kube-proxy"),
    ),
    // Switchyard's extension: periods independent of the mode's section.
    ("syncPeriod", Use::Used),
    ("minSyncPeriod", Use::Used),
    // Switchyard's extension: migration from kube-proxy.
    ("cleanupKubeProxy", Use::Used),
];

/// One warning per field that is set but does nothing here, or unknown to kube-proxy.
/// `section` is the requested mode's section (its periods are used; other sections' are not).
pub fn unused_field_warnings(root: &Value, section: Section) -> Vec<String> {
    let mut warnings = Vec::new();
    let Value::Mapping(map) = root else {
        return warnings;
    };
    for (key, value) in map {
        let key = scalar_text(key);
        match value {
            Value::Mapping(inner) if SECTIONS.contains(&key.as_str()) => {
                for (sub, value) in inner {
                    let path = format!("{key}.{}", scalar_text(sub));
                    warnings.extend(check(&path, value, section));
                }
            }
            // `iptables: null` and the like: an empty section (any other value fails the
            // typed parse).
            _ if SECTIONS.contains(&key.as_str()) => {}
            _ => warnings.extend(check(&key, value, section)),
        }
    }
    warnings
}

fn check(path: &str, value: &Value, section: Section) -> Option<String> {
    let Some((_, usage)) = FIELDS.iter().find(|(name, _)| *name == path) else {
        return Some(format!(
            "config field {path}: not a KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) field; ignored"
        ));
    };
    if is_zero(value) {
        return None;
    }
    let shown = scalar_text(value);
    match *usage {
        Use::Used => None,
        Use::ModeSection(s) if s == section => None,
        Use::ModeSection(_) => Some(format!(
            "config field {path}: {shown}: has no effect in this mode (its settings are read from {}.*)",
            section.key()
        )),
        Use::MasqueradeAllOf(s) if s == section.masquerade_all() => None,
        Use::MasqueradeAllOf(_) => Some(format!(
            "config field {path}: {shown}: has no effect in this mode (masqueradeAll is read from {}.masqueradeAll)",
            section.masquerade_all().key()
        )),
        Use::NoEffectUnless(same, _) if shown == same => None,
        Use::NoEffect(reason) | Use::NoEffectUnless(_, reason) => Some(format!(
            "config field {path}: {shown}: has no effect ({reason})"
        )),
    }
}

/// Whether a value is Go's zero value as it appears in YAML: null, false, 0, "", "0s", an
/// empty list, or a mapping of zero values (kubeadm's `logging.options`).
fn is_zero(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => {
            let s = s.trim();
            s.is_empty() || humantime::parse_duration(s).is_ok_and(|d| d.is_zero())
        }
        Value::Sequence(items) => items.is_empty(),
        Value::Mapping(map) => map.values().all(is_zero),
        Value::Tagged(tagged) => is_zero(&tagged.value),
    }
}

/// A short rendering of a value for a warning.
fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => "null".into(),
        other => serde_norway::to_string(other)
            .map(|s| s.trim().replace('\n', " "))
            .unwrap_or_else(|_| "…".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warnings(yaml: &str, section: Section) -> Vec<String> {
        let value: Value = serde_norway::from_str(yaml).unwrap();
        unused_field_warnings(&value, section)
    }

    #[test]
    fn zero_values_say_nothing() {
        let yaml = "conntrack: {maxPerCore: null, min: 0, tcpBeLiberal: false, udpTimeout: 0s}\n\
                    logging: {flushFrequency: 0, options: {json: {infoBufferSize: \"0\"}}}\n\
                    featureGates: {}\nipvs: {excludeCIDRs: null, scheduler: \"\"}\n\
                    iptables: {masqueradeBit: null}\ndetectLocalMode: \"\"\nnftables: null\n";
        assert_eq!(warnings(yaml, Section::Iptables), Vec::<String>::new());
    }

    #[test]
    fn set_fields_without_effect_are_named_once() {
        let yaml = "winkernel: {networkName: cbr0}\nipvs: {scheduler: rr, syncPeriod: 10s}\n\
                    iptables: {masqueradeBit: 14, syncPeriod: 10s}\ndetectLocalMode: NodeCIDR\n\
                    clusterCIRD: 10.0.0.0/8\n";
        let w = warnings(yaml, Section::Iptables);
        assert_eq!(w.len(), 5, "{w:#?}");
        assert!(w[0].starts_with("config field winkernel.networkName: cbr0: has no effect"));
        // conntrack and oomScoreAdj are read now.
        let read = "conntrack: {maxPerCore: 0, tcpBeLiberal: true}\noomScoreAdj: -500\n\
                    logging: {format: json}\n";
        assert_eq!(warnings(read, Section::Iptables), Vec::<String>::new());
        assert!(w
            .iter()
            .any(|w| w.starts_with("config field ipvs.scheduler: rr")));
        assert!(w
            .iter()
            .any(|w| w.starts_with("config field ipvs.syncPeriod: 10s")));
        assert!(w
            .iter()
            .any(|w| w.starts_with("config field detectLocalMode: NodeCIDR")));
        assert!(w
            .iter()
            .any(|w| w.starts_with("config field clusterCIRD: not a KubeProxyConfiguration")));
        // In ipvs mode its periods are read, the iptables ones are not.
        let w = warnings(yaml, Section::Ipvs);
        assert!(w
            .iter()
            .any(|w| w.starts_with("config field iptables.syncPeriod: 10s")));
        assert!(!w.iter().any(|w| w.contains("ipvs.syncPeriod")));
    }
}
