//! Whether this node proxies IPv6 in ebpf mode, decided once at start, and the IPv6 maps'
//! sizes that follow from it. A node that does not proxy IPv6 gets IPv6 maps of one entry
//! each: the programs keep their IPv6 paths (the maps must exist for them to load), their
//! lookups simply miss, and the ~100 MB of kernel memory the full-size maps hold at the default
//! sizes stay free.
//!
//! kube-proxy decides the families once at start too (`platformCheckSupported`: an iptables
//! proxier runs dual-stack only where ip6tables works, else single-stack, and its service
//! tracker skips services of the other family without a word). The kernel's IPv6 support is
//! our counterpart of "ip6tables works"; Switchyard also serves IPv6 only where the node has
//! a routable IPv6 address (`NodeContext::ipv6`), so without one at start the maps stay small.
use std::net::IpAddr;

use switchyard_common::{DEFAULT_AFFINITY_MAX, DEFAULT_SOCK_REVNAT_MAX, DEFAULT_SOCK_TERM_MAX};

/// Entries of each IPv6 map on a node that does not proxy IPv6 (the kernel's minimum).
pub const UNUSED_MAX_ENTRIES: u32 = 1;

/// Where the kernel says whether IPv6 is on in our network namespace; absent when the kernel
/// was booted with `ipv6.disable=1` (or built without IPv6).
const DISABLE_IPV6: &str = "/proc/sys/net/ipv6/conf/all/disable_ipv6";

/// Why this node does not proxy IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoIpv6 {
    /// The kernel has IPv6 off (`ipv6.disable=1`, or `net.ipv6.conf.all.disable_ipv6=1`).
    KernelDisabled,
    /// The node had no routable IPv6 address at start.
    NoAddress,
}

impl std::fmt::Display for NoIpv6 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NoIpv6::KernelDisabled => "the kernel has IPv6 disabled",
            NoIpv6::NoAddress => "the node has no routable IPv6 address",
        })
    }
}

/// Whether the node proxies IPv6: `Err` says why not. `kernel_ipv6` from [`kernel_has_ipv6`],
/// `local` the node's addresses at start.
pub fn decide(kernel_ipv6: bool, local: &[IpAddr]) -> Result<(), NoIpv6> {
    if !kernel_ipv6 {
        Err(NoIpv6::KernelDisabled)
    } else if !crate::node_addresses::has_routable_ipv6(local) {
        Err(NoIpv6::NoAddress)
    } else {
        Ok(())
    }
}

/// Whether IPv6 is on in this process's network namespace.
pub fn kernel_has_ipv6() -> bool {
    std::fs::read_to_string(DISABLE_IPV6).is_ok_and(|v| v.trim() == "0")
}

/// The IPv6 maps' entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes6 {
    /// `SWY_SERVICES6`.
    pub services: u32,
    /// `SWY_BACKENDS6`.
    pub backends: u32,
    /// `SWY_CONNTRACK6`.
    pub conntrack: u32,
    /// `SWY_SOURCE_RANGES6`.
    pub source_ranges: u32,
    /// `SWY_SOCK_REVNAT6`.
    pub sock_revnat: u32,
    /// `SWY_AFFINITY6`.
    pub affinity: u32,
    /// `SWY_SOCK_TERM6`.
    pub sock_term: u32,
}

impl Sizes6 {
    /// The IPv4 maps' sizes where the node proxies IPv6 (`off` is `None`), else the minimum.
    pub fn new(
        off: Option<NoIpv6>,
        services: u32,
        backends: u32,
        conntrack: u32,
        source_ranges: u32,
    ) -> Self {
        if off.is_some() {
            let min = UNUSED_MAX_ENTRIES;
            return Self {
                services: min,
                backends: min,
                conntrack: min,
                source_ranges: min,
                sock_revnat: min,
                affinity: min,
                sock_term: min,
            };
        }
        Self {
            services,
            backends,
            conntrack,
            source_ranges,
            sock_revnat: DEFAULT_SOCK_REVNAT_MAX,
            affinity: DEFAULT_AFFINITY_MAX,
            sock_term: DEFAULT_SOCK_TERM_MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().expect("literal")).collect()
    }

    #[test]
    fn ipv6_is_proxied_with_kernel_support_and_a_routable_address() {
        let dual = ips(&["198.18.0.11", "2001:db8:0:1::11"]);
        assert_eq!(decide(true, &dual), Ok(()));
        assert_eq!(decide(false, &dual), Err(NoIpv6::KernelDisabled));
        let v4 = ips(&["127.0.0.1", "::1", "198.18.0.11"]);
        assert_eq!(decide(true, &v4), Err(NoIpv6::NoAddress));
        assert_eq!(decide(false, &v4), Err(NoIpv6::KernelDisabled));
    }

    #[test]
    fn a_node_without_ipv6_gets_minimal_ipv6_maps() {
        let full = Sizes6::new(None, 10, 20, 30, 40);
        assert_eq!((full.services, full.backends, full.conntrack), (10, 20, 30));
        assert_eq!(full.sock_revnat, DEFAULT_SOCK_REVNAT_MAX);
        let off = Sizes6::new(Some(NoIpv6::NoAddress), 10, 20, 30, 40);
        assert_eq!(off.services, UNUSED_MAX_ENTRIES);
        assert_eq!(off.sock_revnat, UNUSED_MAX_ENTRIES);
        assert_eq!(off.affinity, UNUSED_MAX_ENTRIES);
    }
}
