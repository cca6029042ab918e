//! Upstream kube-proxy's iptables chains, told apart from everyone else's, for removing them
//! when a node moves from kube-proxy to Switchyard (`--cleanup-kube-proxy`). The names are
//! those kube-proxy's iptables and ipvs modes create (`pkg/proxy/iptables`, `pkg/proxy/ipvs`,
//! their `CleanupLeftovers`). kubelet's own chains (`KUBE-IPTABLES-HINT`,
//! `KUBE-KUBELET-CANARY`, filter's `KUBE-FIREWALL`, and `KUBE-MARK-DROP` of older kubelets)
//! are not kube-proxy's and stay.
use super::rule_set::Table;

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

/// From `iptables -S` output of `table`: (chain, rule arguments without `-A CHAIN`) of every
/// rule in a chain that is not kube-proxy's and jumps (or goes) to one that is: the jumps
/// from the built-in chains, and from any other tool's chain, that must go before the
/// chains can.
pub fn jumps_into_kube_proxy(table: Table, listing: &str) -> Vec<(String, Vec<String>)> {
    listing
        .lines()
        .filter_map(|l| l.strip_prefix("-A "))
        .filter_map(|rest| {
            let (chain, args) = rest.split_once(' ')?;
            if is_kube_proxy_chain(table, chain) {
                return None;
            }
            let args = shlex::split(args)?;
            let jumps = args
                .windows(2)
                .any(|w| (w[0] == "-j" || w[0] == "-g") && is_kube_proxy_chain(table, &w[1]));
            jumps.then(|| (chain.to_owned(), args))
        })
        .collect()
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
    fn jumps_from_every_other_chain() {
        let listing = "-P PREROUTING ACCEPT\n-N KUBE-SERVICES\n-N KUBE-SVC-X\n-N CNI-X\n\
            -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
            -A PREROUTING -m comment --comment \"switchyard service portals\" -j SWY-SERVICES\n\
            -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
            -A CNI-X -g KUBE-MARK-MASQ\n\
            -A KUBE-FIREWALL -j KUBE-MARK-DROP\n\
            -A KUBE-SERVICES -d 198.18.128.10/32 -j KUBE-SVC-X\n";
        let jumps = jumps_into_kube_proxy(Table::Nat, listing);
        let chains: Vec<&str> = jumps.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(chains, ["PREROUTING", "OUTPUT", "CNI-X"]);
        assert_eq!(
            jumps[0].1,
            [
                "-m",
                "comment",
                "--comment",
                "kubernetes service portals",
                "-j",
                "KUBE-SERVICES"
            ]
        );
    }
}
