//! The rules ebpf mode writes for SCTP service ports: iptables mode's own rules (so SCTP is
//! served exactly as there: ClusterIP, NodePort, externalIPs, LoadBalancer IPs, affinity,
//! traffic policies, REJECT), restricted to SCTP and under chains of their own.
//!
//! Why a fallback: the tc programs would have to recompute SCTP's CRC32c over the whole
//! packet on every NAT (SCTP has no incremental checksum), and the socket programs cannot be
//! tested on a kernel without SCTP sockets. netfilter already does both, so ebpf mode lets it.
//!
//! Every chain name is iptables mode's with [`PREFIX`] instead of `SWY-` (`SWY-SVC-…` becomes
//! `SWYSCTP-SVC-…`, still within iptables' 28 characters), so:
//! - ebpf mode's removal of iptables mode's state (`SWY-*`, after a mode switch) and
//!   iptables mode's own full syncs never touch these chains, and iptables mode removes them
//!   as ebpf mode's leftovers;
//! - `switchyard status` reads them with iptables mode's decoder, after [`to_iptables_name`].
//!
//! Every jump from a built-in chain matches `-p sctp`, so no other packet ever enters these
//! chains (their `FORWARD` and masquerade rules only see SCTP), and they are written only while
//! an SCTP service port exists: otherwise ebpf mode registers no netfilter NAT hook.
use super::chains;
use super::rule_set::{BaseRules, ChainRef, PortRules, Rule, RuleArgs, RuleConfig};
use super::rules;
use crate::{Protocol, ServicePort};

/// Prefix of the fallback's chains (never starts with iptables mode's `SWY-`).
pub const PREFIX: &str = "SWYSCTP-";

/// Whether `chain` is one of the fallback's.
pub fn is_ours(chain: &str) -> bool {
    chain.starts_with(PREFIX)
}

/// Whether ebpf mode serves `port` through this fallback.
pub fn applies(port: &ServicePort) -> bool {
    port.key.protocol == Protocol::Sctp
}

/// iptables mode's chain name as the fallback's; other names (built-in chains) unchanged.
pub fn fallback_name(name: &str) -> String {
    match name.strip_prefix(chains::PREFIX) {
        Some(rest) => format!("{PREFIX}{rest}"),
        None => name.to_owned(),
    }
}

/// The fallback's chain name as iptables mode's (for reading them back with its decoder).
pub fn to_iptables_name(name: &str) -> String {
    match name.strip_prefix(PREFIX) {
        Some(rest) => format!("{}{rest}", chains::PREFIX),
        None => name.to_owned(),
    }
}

/// Renames every word of `text` that is one of iptables mode's chain names: jump targets,
/// `recent` list names, chain names quoted in comments.
fn rename_words(text: &str, rename: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut word_start = true;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if word_start {
            let end = rest.find([' ', '"']).unwrap_or(rest.len());
            if end > 0 {
                out.push_str(&rename(&rest[..end]));
                rest = &rest[end..];
                word_start = false;
                continue;
            }
        }
        word_start = c == ' ' || c == '"';
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// A rule of iptables mode's as the fallback writes it.
pub fn fallback_rule(rule: &str) -> Rule {
    rename_words(rule, fallback_name)
}

/// A fallback rule as iptables mode's (for its decoder).
pub fn to_iptables_rule(rule: &str) -> Rule {
    rename_words(rule, to_iptables_name)
}

fn rename_chain(chain: &ChainRef) -> ChainRef {
    ChainRef::new(chain.table, fallback_name(&chain.chain))
}

/// The static chains and jumps, renamed, every jump restricted to SCTP.
pub fn base_rules(cfg: &RuleConfig) -> BaseRules {
    let base = rules::base_rules(cfg);
    BaseRules {
        chains: base
            .chains
            .iter()
            .map(|(chain, rules)| {
                let rules = rules.iter().map(|r| fallback_rule(r)).collect();
                (rename_chain(chain), rules)
            })
            .collect(),
        jumps: base
            .jumps
            .iter()
            .map(|(chain, args)| {
                let mut sctp = RuleArgs(vec!["-p".into(), "sctp".into()]);
                sctp.0.extend(args.0.iter().map(|a| fallback_name(a)));
                (chain.clone(), sctp)
            })
            .collect(),
    }
}

/// One SCTP port's rules, renamed; nothing for another protocol.
pub fn port_rules(port: &ServicePort, cfg: &RuleConfig) -> PortRules {
    if !applies(port) {
        return PortRules::default();
    }
    let rules = rules::port_rules(port, cfg);
    PortRules {
        chains: rules
            .chains
            .iter()
            .map(|(chain, rules)| {
                let rules = rules.iter().map(|r| fallback_rule(r)).collect();
                (rename_chain(chain), rules)
            })
            .collect(),
        shared: rules
            .shared
            .iter()
            .map(|(chain, rule)| (rename_chain(chain), fallback_rule(rule)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::iptables::chains::MAX_CHAIN_NAME_LEN;
    use crate::{Endpoint, Frontend, FrontendKind, ServicePortKey, TrafficPolicy};

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    fn port(protocol: Protocol) -> ServicePort {
        let long = "x".repeat(63);
        ServicePort {
            key: ServicePortKey {
                namespace: long.clone(),
                name: long,
                port_name: "diameter".into(),
                protocol,
            },
            port: 3868,
            cluster_ips: vec![ip("198.18.128.38")],
            node_port: Some(30868),
            external_ips: vec![],
            load_balancer_ips: vec![ip("203.0.113.38")],
            load_balancer_source_ranges: vec!["192.0.2.0/24".parse().expect("test CIDR")],
            session_affinity_timeout: Some(60),
            external_traffic_policy: TrafficPolicy::Local,
            internal_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            endpoints: vec![Endpoint {
                ip: ip("198.19.1.5"),
                port: 13868,
                ready: true,
                serving: true,
                terminating: false,
                local: true,
                node_name: Some("this".into()),
                hints: None,
            }],
            topology: Default::default(),
            frontends: vec![Frontend {
                kind: FrontendKind::ClusterIp,
                ip: ip("198.18.128.38"),
                port: 3868,
            }],
        }
    }

    fn cfg() -> RuleConfig {
        RuleConfig {
            cluster_cidrs: vec!["198.19.0.0/16".parse().expect("test CIDR")],
            node_ips: vec![ip("198.18.0.10")],
            ..RuleConfig::default()
        }
    }

    /// Every word of a rule that names a chain.
    fn chain_words(rule: &str) -> Vec<String> {
        rule.split([' ', '"'])
            .filter(|w| w.starts_with(chains::PREFIX) || is_ours(w))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn every_chain_and_reference_is_renamed_and_fits() {
        let p = port(Protocol::Sctp);
        let r = port_rules(&p, &cfg());
        let base = base_rules(&cfg());
        assert!(!r.chains.is_empty() && !r.shared.is_empty());
        let chains = r.chains.keys().chain(base.chains.keys());
        for chain in chains.chain(r.shared.iter().map(|(c, _)| c)) {
            assert!(is_ours(&chain.chain), "{chain:?}");
            assert!(chain.chain.len() <= MAX_CHAIN_NAME_LEN, "{chain:?}");
            assert!(!chains::is_ours(&chain.chain), "{chain:?}");
        }
        let rules = r.chains.values().chain(base.chains.values()).flatten();
        let mut names = 0;
        for rule in rules.chain(r.shared.iter().map(|(_, rule)| rule)) {
            for word in chain_words(rule) {
                assert!(is_ours(&word), "{word} in {rule}");
                names += 1;
            }
        }
        assert!(names > 5, "the port's rules reference chains");
    }

    #[test]
    fn every_jump_from_a_builtin_chain_is_sctp_only_and_targets_ours() {
        let base = base_rules(&cfg());
        assert!(!base.jumps.is_empty());
        for (chain, args) in &base.jumps {
            assert!(!is_ours(&chain.chain) && !chains::is_ours(&chain.chain));
            assert_eq!(args.0[..2], ["-p", "sctp"], "{args}");
            let target = args.0.iter().skip_while(|a| *a != "-j").nth(1);
            assert!(target.is_some_and(|t| is_ours(t)), "{args}");
        }
    }

    #[test]
    fn the_rules_are_iptables_modes_renamed() {
        let p = port(Protocol::Sctp);
        let ours = port_rules(&p, &cfg());
        let theirs = rules::port_rules(&p, &cfg());
        for (chain, rules) in &theirs.chains {
            let back: Vec<Rule> = ours.chains[&rename_chain(chain)]
                .iter()
                .map(|r| to_iptables_rule(r))
                .collect();
            assert_eq!(&back, rules);
        }
        assert_eq!(ours.chains.len(), theirs.chains.len());
        assert_eq!(ours.shared.len(), theirs.shared.len());
    }

    #[test]
    fn other_protocols_get_nothing() {
        assert_eq!(
            port_rules(&port(Protocol::Tcp), &cfg()),
            PortRules::default()
        );
        assert_eq!(
            port_rules(&port(Protocol::Udp), &cfg()),
            PortRules::default()
        );
    }

    #[test]
    fn words_are_renamed_only_where_a_chain_name_starts() {
        assert_eq!(
            fallback_rule("-m comment --comment \"x by SWY-PROXY-FIREWALL\" -j SWY-SVC-A"),
            "-m comment --comment \"x by SWYSCTP-PROXY-FIREWALL\" -j SWYSCTP-SVC-A"
        );
        assert_eq!(
            fallback_rule("-j NOTSWY-A --x=SWY-B"),
            "-j NOTSWY-A --x=SWY-B"
        );
        assert_eq!(to_iptables_name("SWYSCTP-SEP-X"), "SWY-SEP-X");
        assert_eq!(fallback_name("PREROUTING"), "PREROUTING");
    }
}
