//! Upstream kube-proxy's iptables chains, told apart from everyone else's, for removing them
//! when a node moves from kube-proxy to Switchyard (`--cleanup-kube-proxy`). The names are
//! those kube-proxy's iptables and ipvs modes create (`pkg/proxy/iptables`, `pkg/proxy/ipvs`,
//! their `CleanupLeftovers`). kubelet's own chains (`KUBE-IPTABLES-HINT`,
//! `KUBE-KUBELET-CANARY`, filter's `KUBE-FIREWALL`, and `KUBE-MARK-DROP` of older kubelets)
//! are not kube-proxy's and stay. The ipsets of its ipvs mode are named exactly
//! ([`ipvs_ipsets`]), as other tools (kube-router's network policies) also create `KUBE-*` sets.
use super::rule_set::Table;

/// The ipsets kube-proxy's ipvs mode creates for IPv4 (`pkg/proxy/ipvs/ipset.go`).
const IPVS_IPSETS: &[&str] = &[
    "KUBE-LOOP-BACK",
    "KUBE-CLUSTER-IP",
    "KUBE-EXTERNAL-IP",
    "KUBE-EXTERNAL-IP-LOCAL",
    "KUBE-LOAD-BALANCER",
    "KUBE-LOAD-BALANCER-LOCAL",
    "KUBE-LOAD-BALANCER-FW",
    "KUBE-LOAD-BALANCER-SOURCE-IP",
    "KUBE-LOAD-BALANCER-SOURCE-CIDR",
    "KUBE-NODE-PORT-TCP",
    "KUBE-NODE-PORT-LOCAL-TCP",
    "KUBE-NODE-PORT-UDP",
    "KUBE-NODE-PORT-LOCAL-UDP",
    "KUBE-NODE-PORT-SCTP-HASH",
    "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
    "KUBE-HEALTH-CHECK-NODE-PORT",
    "KUBE-IPVS-IPS",
];

/// ipset's limit on a set name's length.
const IPSET_NAME_MAX: usize = 31;

/// Every ipset name kube-proxy's ipvs mode uses, both families: the IPv6 set of each is
/// `KUBE-6-...`, cut to ipset's 31 characters as upstream's `NewIPSet` does.
pub fn ipvs_ipsets() -> impl Iterator<Item = String> {
    let v6 = IPVS_IPSETS.iter().map(|name| {
        let mut v6 = name.replacen("KUBE-", "KUBE-6-", 1);
        v6.truncate(IPSET_NAME_MAX);
        v6
    });
    IPVS_IPSETS.iter().map(|n| (*n).to_owned()).chain(v6)
}

/// Per-service chains: service, local, external, firewall and endpoint chains (`KUBE-XLB-` is
/// the external-local chain of kube-proxy before 1.24).
const PORT_PREFIXES: &[&str] = &[
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
    "KUBE-XLB-",
];

/// The static chains of kube-proxy, per table.
const NAT: &[&str] = &[
    "KUBE-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
    "KUBE-PROXY-CANARY",
    // ipvs mode.
    "KUBE-LOAD-BALANCER",
    "KUBE-NODE-PORT",
    "KUBE-FIREWALL",
    "KUBE-SOURCE-RANGES-FIREWALL",
];
const FILTER: &[&str] = &[
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-FORWARD",
    "KUBE-NODEPORTS",
    "KUBE-PROXY-FIREWALL",
    "KUBE-PROXY-CANARY",
    // ipvs mode.
    "KUBE-IPVS-FILTER",
    "KUBE-IPVS-OUT-FILTER",
    "KUBE-SOURCE-RANGES-FIREWALL",
];
const MANGLE: &[&str] = &["KUBE-PROXY-CANARY"];

/// Whether `chain` in `table` is one kube-proxy creates.
pub fn is_kube_proxy_chain(table: Table, chain: &str) -> bool {
    let names = match table {
        Table::Nat => NAT,
        Table::Filter => FILTER,
        Table::Mangle => MANGLE,
    };
    names.contains(&chain)
        || (table == Table::Nat && PORT_PREFIXES.iter().any(|p| chain.starts_with(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_proxys_chains_and_not_kubelets() {
        for chain in [
            "KUBE-SERVICES",
            "KUBE-NODEPORTS",
            "KUBE-POSTROUTING",
            "KUBE-MARK-MASQ",
            "KUBE-SVC-TCOU7JCQXEZGVUNU",
            "KUBE-SEP-ABCDEFGHIJKLMNOP",
            "KUBE-EXT-X",
            "KUBE-FW-X",
            "KUBE-SVL-X",
            "KUBE-XLB-X",
            "KUBE-PROXY-CANARY",
            "KUBE-LOAD-BALANCER",
        ] {
            assert!(is_kube_proxy_chain(Table::Nat, chain), "{chain}");
        }
        for chain in [
            "KUBE-FORWARD",
            "KUBE-EXTERNAL-SERVICES",
            "KUBE-PROXY-FIREWALL",
        ] {
            assert!(is_kube_proxy_chain(Table::Filter, chain), "{chain}");
        }
        // kubelet's, and anything else's.
        for (table, chain) in [
            (Table::Mangle, "KUBE-IPTABLES-HINT"),
            (Table::Mangle, "KUBE-KUBELET-CANARY"),
            (Table::Nat, "KUBE-KUBELET-CANARY"),
            (Table::Filter, "KUBE-KUBELET-CANARY"),
            (Table::Filter, "KUBE-FIREWALL"),
            (Table::Nat, "KUBE-MARK-DROP"),
            (Table::Filter, "KUBE-SVC-X"),
            (Table::Nat, "SWY-SERVICES"),
            (Table::Nat, "CNI-HOSTPORT-DNAT"),
            (Table::Nat, "PREROUTING"),
        ] {
            assert!(!is_kube_proxy_chain(table, chain), "{chain} in {table:?}");
        }
    }

    #[test]
    fn ipvs_ipsets_of_both_families_cut_to_ipsets_limit() {
        let names: Vec<String> = ipvs_ipsets().collect();
        assert_eq!(names.len(), 2 * IPVS_IPSETS.len());
        for name in [
            "KUBE-CLUSTER-IP",
            "KUBE-6-CLUSTER-IP",
            "KUBE-LOAD-BALANCER-SOURCE-CIDR",
            // 32 characters before the cut.
            "KUBE-6-LOAD-BALANCER-SOURCE-CID",
            "KUBE-6-NODE-PORT-LOCAL-SCTP-HAS",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
        assert!(names.iter().all(|n| n.len() <= IPSET_NAME_MAX));
        // kube-router's policy sets are no kube-proxy's.
        assert!(!names.iter().any(|n| n.starts_with("KUBE-SRC-")));
    }

    #[test]
    fn jumps_from_every_other_chain() {
        let listing = "-P PREROUTING ACCEPT\n-N KUBE-SERVICES\n-N KUBE-SVC-X\n-N CNI-X\n\
            -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
            -A PREROUTING -m comment --comment \"switchyard service portals\" -j SWY-SERVICES\n\
            -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
            -A CNI-X -g KUBE-MARK-MASQ\n\
            -A KUBE-FIREWALL -j KUBE-MARK-DROP\n\
            -A KUBE-SERVICES -d 198.18.128.10/32 -j KUBE-SVC-X\n";
        let jumps =
            crate::iptables::removal::jump_deletions(Table::Nat, listing, is_kube_proxy_chain);
        assert_eq!(
            jumps,
            [
                "-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
                "-D OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
                "-D CNI-X -g KUBE-MARK-MASQ",
            ]
        );
    }
}
