//! The shape of generated iptables state: which chains a service port owns, and which rules it
//! contributes to the shared dispatch chains. The writer turns these into iptables-restore input.
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// An iptables table Switchyard writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// nat: DNAT to endpoints, masquerade marking.
    Nat,
    /// filter: REJECT/DROP verdicts, health check ports, forwarding of marked traffic.
    Filter,
    /// mangle: only the canary chain.
    Mangle,
}

impl Table {
    /// The name iptables uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Nat => "nat",
            Table::Filter => "filter",
            Table::Mangle => "mangle",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A chain in a table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChainRef {
    /// Table.
    pub table: Table,
    /// Chain name (at most 28 characters, iptables' limit).
    pub chain: String,
}

impl ChainRef {
    /// A chain reference.
    pub fn new(table: Table, chain: impl Into<String>) -> Self {
        Self {
            table,
            chain: chain.into(),
        }
    }
}

/// One rule: everything after `-A CHAIN ` in iptables-restore syntax, e.g.
/// `-m comment --comment "demo/web:http cluster IP" -d 198.18.128.10/32 -p tcp -m tcp --dport 80 -j SWY-SVC-…`.
pub type Rule = String;

/// What one service port puts into iptables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortRules {
    /// Chains only this port uses (SVC, SVL, EXT, FW, SEP…), with their rules in order.
    pub chains: BTreeMap<ChainRef, Vec<Rule>>,
    /// Rules this port adds to shared chains (SWY-SERVICES, SWY-NODEPORTS, filter verdict
    /// chains…). Order inside a shared chain carries no meaning, so a partial sync can delete
    /// and append them one by one.
    pub shared: Vec<(ChainRef, Rule)>,
}

/// Rules per table, for upstream's `sync_proxy_rules_iptables_{total,last}{table}`.
pub type RuleCounts = BTreeMap<Table, usize>;

/// Adds `more` into `counts`.
pub fn add_counts(counts: &mut RuleCounts, more: &RuleCounts) {
    for (table, n) in more {
        *counts.entry(*table).or_default() += n;
    }
}

impl PortRules {
    /// Rules this port owns, per table: those in its own chains and those it adds to shared
    /// chains.
    pub fn rule_counts(&self) -> RuleCounts {
        let mut counts = RuleCounts::new();
        for (chain, rules) in &self.chains {
            *counts.entry(chain.table).or_default() += rules.len();
        }
        for (chain, _) in &self.shared {
            *counts.entry(chain.table).or_default() += 1;
        }
        counts
    }

    /// The same chains without their rules, and the same shared-chain rules: all a partial
    /// sync reads of what it replaces (a rewritten chain is declared afresh, which flushes
    /// it), at a fraction of the memory.
    pub fn skeleton(&self) -> PortRules {
        PortRules {
            chains: self
                .chains
                .keys()
                .map(|chain| (chain.clone(), Vec::new()))
                .collect(),
            shared: self.shared.clone(),
        }
    }
}

/// The IP family one rule set is written for: iptables (IPv4) or ip6tables (IPv6). As
/// upstream runs one proxier per family, every decision is made on one family's data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4: `iptables`.
    #[default]
    Ipv4,
    /// IPv6: `ip6tables`.
    Ipv6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    /// The family of `ip`.
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    /// Whether `ip` is of this family.
    pub fn has(self, ip: &IpAddr) -> bool {
        Family::of(ip) == self
    }

    /// Whether `net` is of this family.
    pub fn has_net(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::Ipv4, IpNet::V4(_)) | (Family::Ipv6, IpNet::V6(_))
        )
    }

    /// Prefix length of one address (`/32`, `/128`).
    pub fn host_prefix(self) -> u8 {
        match self {
            Family::Ipv4 => 32,
            Family::Ipv6 => 128,
        }
    }

    /// The nftables family iptables-nft keeps this family's tables in: `ip` or `ip6`.
    pub fn nft_family(self) -> &'static str {
        match self {
            Family::Ipv4 => "ip",
            Family::Ipv6 => "ip6",
        }
    }

    /// Upstream's spelling, as in the `ip_family` metric label: `IPv4` or `IPv6`.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Node-wide inputs of the generator.
#[derive(Clone, Debug, Default)]
pub struct RuleConfig {
    /// The family the rules are for; the other family's addresses, CIDRs and endpoints are
    /// ignored.
    pub family: Family,
    /// Pod CIDRs: traffic from outside them to a ClusterIP is masqueraded.
    pub cluster_cidrs: Vec<IpNet>,
    /// Masquerade all ClusterIP traffic.
    pub masquerade_all: bool,
    /// `--nodeport-addresses` CIDRs; empty means every local address (`addrtype LOCAL`).
    pub nodeport_cidrs: Vec<IpNet>,
    /// This node's addresses (a loadBalancerSourceRange containing one lets the node through).
    pub node_ips: Vec<IpAddr>,
    /// Whether NodePorts answer on 127.0.0.1 (kube-proxy iptables mode's historic default).
    pub localhost_nodeports: bool,
}

/// Rules that do not belong to any service port: the static chains and the jumps from the
/// built-in chains.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BaseRules {
    /// Static chains (SWY-MARK-MASQ, SWY-POSTROUTING, SWY-FORWARD, shared dispatch chains
    /// declared empty here…) with their fixed rules.
    pub chains: BTreeMap<ChainRef, Vec<Rule>>,
    /// Jumps from built-in chains (`PREROUTING`, `OUTPUT`, `POSTROUTING`, `INPUT`, `FORWARD`)
    /// into ours, installed with `iptables -C || iptables -I` since a restore cannot test for
    /// existing rules. Ordered as they must appear.
    pub jumps: Vec<(ChainRef, RuleArgs)>,
}

impl BaseRules {
    /// Rules in the static chains, per table (the jumps from built-in chains are not ours to
    /// count, as upstream does not count its jumps).
    pub fn rule_counts(&self) -> RuleCounts {
        let mut counts = RuleCounts::new();
        for (chain, rules) in &self.chains {
            *counts.entry(chain.table).or_default() += rules.len();
        }
        counts
    }
}

/// One rule as the argument vector of a single-rule `iptables` call (`-C`, `-I`, `-D`), so
/// it never goes through a shell-style split.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleArgs(pub Vec<String>);

impl std::fmt::Display for RuleArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render())
    }
}

impl RuleArgs {
    /// Appends arguments.
    pub fn push(&mut self, args: &[&str]) -> &mut Self {
        self.0.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// The rule as it reads in iptables-restore input (arguments with spaces quoted).
    pub fn render(&self) -> String {
        let quoted: Vec<String> = self
            .0
            .iter()
            .map(|a| {
                if a.contains(' ') || a.is_empty() {
                    format!("\"{a}\"")
                } else {
                    a.clone()
                }
            })
            .collect();
        quoted.join(" ")
    }
}
