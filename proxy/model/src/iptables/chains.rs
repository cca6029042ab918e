//! Names of the chains Switchyard owns: the static chains and the per-service-port chains,
//! named exactly like upstream kube-proxy's (`pkg/proxy/iptables/proxier.go`) with `SWY-`
//! instead of `KUBE-`, so operators can read them with the same habits.
use std::net::IpAddr;

use data_encoding::BASE32;
use sha2::{Digest, Sha256};

use crate::ServicePortKey;

/// Prefix of every chain Switchyard creates; nothing else in the kernel starts with it.
pub const PREFIX: &str = "SWY-";

/// nat and filter: entry point for traffic to service addresses (cluster, external and
/// LoadBalancer IPs). In nat it dispatches to per-port chains, in filter it holds verdicts.
pub const SERVICES: &str = "SWY-SERVICES";
/// filter: REJECT/DROP verdicts for traffic from outside to external destinations.
pub const EXTERNAL_SERVICES: &str = "SWY-EXTERNAL-SERVICES";
/// nat: NodePort dispatch; filter: health check node ports accepted.
pub const NODEPORTS: &str = "SWY-NODEPORTS";
/// nat: masquerades the traffic marked with [`MASQ_MARK`].
pub const POSTROUTING: &str = "SWY-POSTROUTING";
/// nat: marks a packet for masquerading.
pub const MARK_MASQ: &str = "SWY-MARK-MASQ";
/// nat: marks for masquerading what does not come from a cluster CIDR; only used when there
/// is more than one cluster CIDR (one CIDR fits in a single `! -s` match, like upstream).
pub const MASQ_OFF_CLUSTER: &str = "SWY-MASQ-OFF-CLUSTER";
/// filter: forwarding of service traffic even when the FORWARD policy is DROP.
pub const FORWARD: &str = "SWY-FORWARD";
/// filter: drops LoadBalancer traffic that `loadBalancerSourceRanges` did not admit.
pub const PROXY_FIREWALL: &str = "SWY-PROXY-FIREWALL";
/// filter: blocks martian connections to 127.0.0.0/8 when localhost NodePorts are on
/// (upstream's copy of kubelet's KUBE-FIREWALL, closing the `route_localnet` hole).
pub const FIREWALL: &str = "SWY-FIREWALL";
/// mangle, nat, filter: empty chain whose disappearance shows someone flushed the tables.
pub const CANARY: &str = "SWY-PROXY-CANARY";

/// The masquerade mark bit (upstream's default `--iptables-masquerade-bit` 14).
pub const MASQ_MARK_BIT: u32 = 0x4000;
/// [`MASQ_MARK_BIT`] as iptables writes it.
pub const MASQ_MARK: &str = "0x4000";

/// Built-in chain `PREROUTING`.
pub const BUILTIN_PREROUTING: &str = "PREROUTING";
/// Built-in chain `INPUT`.
pub const BUILTIN_INPUT: &str = "INPUT";
/// Built-in chain `FORWARD`.
pub const BUILTIN_FORWARD: &str = "FORWARD";
/// Built-in chain `OUTPUT`.
pub const BUILTIN_OUTPUT: &str = "OUTPUT";
/// Built-in chain `POSTROUTING`.
pub const BUILTIN_POSTROUTING: &str = "POSTROUTING";

/// Per-port chain prefix: endpoints for Cluster traffic policy.
pub const SVC_PREFIX: &str = "SWY-SVC-";
/// Per-port chain prefix: endpoints for Local traffic policy.
pub const SVL_PREFIX: &str = "SWY-SVL-";
/// Per-port chain prefix: external destinations (NodePort, externalIPs, LoadBalancer IPs).
pub const EXT_PREFIX: &str = "SWY-EXT-";
/// Per-port chain prefix: `loadBalancerSourceRanges` filter.
pub const FW_PREFIX: &str = "SWY-FW-";
/// Per-endpoint chain prefix: masquerade hairpin traffic, DNAT.
pub const SEP_PREFIX: &str = "SWY-SEP-";

/// iptables' limit on chain names.
pub const MAX_CHAIN_NAME_LEN: usize = 28;

/// Whether `chain` is one of ours (by prefix), e.g. when listing what to clean up.
pub fn is_ours(chain: &str) -> bool {
    chain.starts_with(PREFIX)
}

/// Whether `chain` belongs to one service port (SVC, SVL, EXT, FW or SEP), as opposed to the
/// static chains.
pub fn is_port_chain(chain: &str) -> bool {
    [SVC_PREFIX, SVL_PREFIX, EXT_PREFIX, FW_PREFIX, SEP_PREFIX]
        .iter()
        .any(|p| chain.starts_with(p))
}

/// Upstream's `ServicePortName.String()`: `ns/name:port`, or `ns/name` for an unnamed port.
/// It is both the hash input and the text of rule comments.
pub fn port_name(key: &ServicePortKey) -> String {
    if key.port_name.is_empty() {
        format!("{}/{}", key.namespace, key.name)
    } else {
        format!("{}/{}:{}", key.namespace, key.name, key.port_name)
    }
}

/// Lower-case protocol, as upstream appends it to the hash input.
fn protocol(key: &ServicePortKey) -> String {
    key.protocol.as_str().to_ascii_lowercase()
}

/// First 16 characters of base32(sha256(input)), upstream's `portProtoHash`: short enough for
/// iptables' 28-character limit, long enough that collisions do not happen in practice.
fn hash16(input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    let mut encoded = BASE32.encode(&digest);
    encoded.truncate(16);
    encoded
}

/// The hash part shared by a port's SVC, SVL, EXT and FW chains.
pub fn port_hash(key: &ServicePortKey) -> String {
    hash16(&format!("{}{}", port_name(key), protocol(key)))
}

/// `SWY-SVC-…`: the port's endpoints for Cluster traffic policy.
pub fn svc_chain(key: &ServicePortKey) -> String {
    format!("{SVC_PREFIX}{}", port_hash(key))
}

/// `SWY-SVL-…`: the port's local endpoints for Local traffic policy.
pub fn svl_chain(key: &ServicePortKey) -> String {
    format!("{SVL_PREFIX}{}", port_hash(key))
}

/// `SWY-EXT-…`: where traffic to the port's external destinations goes.
pub fn ext_chain(key: &ServicePortKey) -> String {
    format!("{EXT_PREFIX}{}", port_hash(key))
}

/// `SWY-FW-…`: the port's `loadBalancerSourceRanges` filter.
pub fn fw_chain(key: &ServicePortKey) -> String {
    format!("{FW_PREFIX}{}", port_hash(key))
}

/// Upstream's endpoint string: `ip:port`, with brackets around an IPv6 address.
pub fn endpoint_string(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// `SWY-SEP-…`: one endpoint of the port (upstream's `servicePortEndpointChainName`).
pub fn sep_chain(key: &ServicePortKey, ip: IpAddr, port: u16) -> String {
    let input = format!(
        "{}{}{}",
        port_name(key),
        protocol(key),
        endpoint_string(ip, port)
    );
    format!("{SEP_PREFIX}{}", hash16(&input))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Protocol;

    fn key(ns: &str, name: &str, port: &str, protocol: Protocol) -> ServicePortKey {
        ServicePortKey {
            namespace: ns.into(),
            name: name.into(),
            port_name: port.into(),
            protocol,
        }
    }

    #[test]
    fn names_match_upstream_test_vectors() {
        // Upstream's proxier_test.go: ns1/svc1:p80 TCP. The port-chain hash has no address in
        // its input, so it is upstream's own vector, unchanged. The SEP endpoint is a
        // documentation-range address instead of upstream's, and its expected hash was
        // recomputed with the same algorithm: base32(sha256("ns1/svc1:p80tcp198.18.0.1:80")),
        // first 16 characters.
        let k = key("ns1", "svc1", "p80", Protocol::Tcp);
        assert_eq!(svc_chain(&k), "SWY-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(svl_chain(&k), "SWY-SVL-XPGD46QRK7WJZT7O");
        assert_eq!(ext_chain(&k), "SWY-EXT-XPGD46QRK7WJZT7O");
        assert_eq!(fw_chain(&k), "SWY-FW-XPGD46QRK7WJZT7O");
        let ip: IpAddr = [198, 18, 0, 1].into();
        assert_eq!(sep_chain(&k, ip, 80), "SWY-SEP-OS5W3LOP4DIEV5NE");
    }

    #[test]
    fn hash_depends_on_protocol_port_name_and_endpoint() {
        let tcp = key("ns", "svc", "dns", Protocol::Tcp);
        let udp = key("ns", "svc", "dns", Protocol::Udp);
        let unnamed = key("ns", "svc", "", Protocol::Tcp);
        assert_ne!(svc_chain(&tcp), svc_chain(&udp));
        assert_ne!(svc_chain(&tcp), svc_chain(&unnamed));
        let ip: IpAddr = [198, 18, 0, 1].into();
        assert_ne!(sep_chain(&tcp, ip, 53), sep_chain(&tcp, ip, 54));
        assert_ne!(sep_chain(&tcp, ip, 53), sep_chain(&udp, ip, 53));
        // Stable across calls (no per-process seed).
        assert_eq!(svc_chain(&tcp), svc_chain(&tcp.clone()));
    }

    #[test]
    fn unnamed_port_name_has_no_colon() {
        assert_eq!(port_name(&key("a", "b", "", Protocol::Udp)), "a/b");
        assert_eq!(port_name(&key("a", "b", "p", Protocol::Udp)), "a/b:p");
    }

    #[test]
    fn every_name_fits_iptables_limit_and_is_ours() {
        let long = "x".repeat(63);
        let k = key(&long, &long, "abcdefghijklmno", Protocol::Udp);
        let ip: IpAddr = "2001:db8::1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let names = [
            svc_chain(&k),
            svl_chain(&k),
            ext_chain(&k),
            fw_chain(&k),
            sep_chain(&k, ip, 65535),
        ];
        for name in names {
            assert!(name.len() <= MAX_CHAIN_NAME_LEN, "{name}");
            assert!(is_ours(&name) && is_port_chain(&name), "{name}");
        }
        for name in [
            SERVICES,
            EXTERNAL_SERVICES,
            NODEPORTS,
            POSTROUTING,
            MARK_MASQ,
            MASQ_OFF_CLUSTER,
            FORWARD,
            PROXY_FIREWALL,
            FIREWALL,
            CANARY,
        ] {
            assert!(name.len() <= MAX_CHAIN_NAME_LEN, "{name}");
            assert!(is_ours(name) && !is_port_chain(name), "{name}");
        }
        assert!(!is_ours("KUBE-SERVICES") && !is_ours("PREROUTING"));
    }

    #[test]
    fn endpoint_string_brackets_ipv6() {
        let v6: IpAddr = "2001:db8::1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        assert_eq!(endpoint_string(v6, 80), "[2001:db8::1]:80");
        assert_eq!(endpoint_string([198, 18, 0, 1].into(), 80), "198.18.0.1:80");
    }
}
