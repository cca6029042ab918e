//! The pure rule generator of iptables mode: static chains, jumps from the built-in chains, and
//! everything one service port needs. Semantics and rule shapes follow upstream kube-proxy's
//! `syncProxyRules` (`pkg/proxy/iptables/proxier.go`, `topology.go`) with `SWY-` chains.
//!
//! Differences from upstream, each on purpose:
//! - The NodePort dispatch is a second jump from PREROUTING/OUTPUT placed after the
//!   SWY-SERVICES jump instead of the last rule of SWY-SERVICES, so every rule of SWY-SERVICES
//!   belongs to a service port and a partial sync may append there freely.
//! - `--nodeport-addresses` CIDRs are matched as `-d <cidr> -m addrtype --dst-type LOCAL`
//!   rather than by resolving node IPs, so address changes need no resync.
//! - More than one cluster CIDR of a family masquerades through SWY-MASQ-OFF-CLUSTER (a single
//!   `! -s` cannot express "in none of them").
//! - `loadBalancerSourceRanges` with no IPv4 range admits no IPv4 source (upstream filters
//!   ranges per family and would then admit every source).
//! - Comments are never dropped for large clusters.
//!
//! One rule set is for one family ([`RuleConfig::family`]), as upstream runs one proxier per
//! family: ip6tables gets the same chains from the IPv6 addresses, CIDRs and endpoints, and
//! never serves NodePorts on loopback (`! -d ::1/128`, as upstream).
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::chains::{
    self, BUILTIN_FORWARD, BUILTIN_INPUT, BUILTIN_OUTPUT, BUILTIN_POSTROUTING, BUILTIN_PREROUTING,
    CANARY, EXTERNAL_SERVICES, FIREWALL, FORWARD, MARK_MASQ, MASQ_MARK, MASQ_OFF_CLUSTER,
    NODEPORTS, POSTROUTING, PROXY_FIREWALL, SERVICES,
};
use super::rule_set::{BaseRules, ChainRef, Family, PortRules, Rule, RuleArgs, RuleConfig, Table};
use crate::{Endpoint, Protocol, ServicePort, TrafficPolicy};

/// xt_comment stores at most 255 bytes; iptables-restore rejects longer comments.
const MAX_COMMENT_BYTES: usize = 255;

/// Loopback destinations, excluded from NodePorts unless localhost NodePorts are on.
const LOOPBACK: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8);
/// [`LOOPBACK`] as rule text.
const LOOPBACK_CIDR: &str = "127.0.0.0/8";
/// IPv6 loopback, never a NodePort address (upstream: localhost NodePorts are IPv4 only).
const LOOPBACK_V6: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128);
/// [`LOOPBACK_V6`] as rule text.
const LOOPBACK_V6_CIDR: &str = "::1/128";

/// The loopback network of `family`.
fn loopback(family: Family) -> IpNet {
    match family {
        Family::Ipv4 => IpNet::V4(LOOPBACK),
        Family::Ipv6 => IpNet::V6(LOOPBACK_V6),
    }
}

/// `-m comment --comment "<text>"`, safe to paste into iptables-restore input.
///
/// Kubernetes names cannot contain quotes, backslashes or control characters, but the text
/// ends up between double quotes, so anything that could end the quote is replaced rather
/// than trusted; it is also cut to what the kernel stores.
fn comment(text: &str) -> String {
    format!("-m comment --comment \"{}\"", comment_text(text))
}

/// The text of a comment, cleaned and cut as [`comment`] describes.
fn comment_text(text: &str) -> String {
    let mut clean = String::with_capacity(text.len());
    for c in text.chars() {
        let c = if c == '"' || c == '\\' || c.is_control() {
            '_'
        } else {
            c
        };
        if clean.len() + c.len_utf8() > MAX_COMMENT_BYTES {
            break;
        }
        clean.push(c);
    }
    clean
}

/// `tcp` or `udp`, as used by `-p` and `-m`.
fn proto(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// `-p tcp -m tcp` (the port match needs its protocol).
fn proto_match(protocol: Protocol) -> String {
    let p = proto(protocol);
    format!("-p {p} -m {p}")
}

/// `-d <ip>/32 -p tcp -m tcp --dport <port>` (`/128` for IPv6): one service address.
fn dst_match(ip: IpAddr, protocol: Protocol, port: u16) -> String {
    format!(
        "-d {ip}/{} {} --dport {port}",
        Family::of(&ip).host_prefix(),
        proto_match(protocol)
    )
}

/// Networks of `family` in a list, normalized (host bits cleared) and deduplicated in order,
/// so the same network written two ways yields one rule that `-D` finds again.
fn family_nets(family: Family, nets: &[IpNet]) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = Vec::new();
    for net in nets.iter().filter(|n| family.has_net(n)) {
        let net = net.trunc();
        if !out.contains(&net) {
            out.push(net);
        }
    }
    out
}

/// Addresses of `family` in a list, deduplicated in order.
fn family_addrs(family: Family, ips: &[IpAddr]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in ips.iter().filter(|ip| family.has(ip)) {
        if !out.contains(ip) {
            out.push(*ip);
        }
    }
    out
}

/// Whether NodePorts answer on 127.0.0.0/8: asked for, IPv4, and the NodePort addresses
/// include loopback (upstream turns the option off otherwise, and never has it on IPv6).
fn localhost_nodeports(cfg: &RuleConfig) -> bool {
    if cfg.family != Family::Ipv4 {
        return false;
    }
    let nets = family_nets(Family::Ipv4, &cfg.nodeport_cidrs);
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    cfg.localhost_nodeports
        && (cfg.nodeport_cidrs.is_empty() || nets.iter().any(|n| n.contains(&localhost)))
}

/// `net` minus the loopback network of its family, as a list of CIDRs. Upstream drops
/// loopback node IPs when localhost NodePorts are off; matching CIDRs we must cut loopback
/// out of them instead.
fn without_loopback(net: IpNet) -> Vec<IpNet> {
    let lo = loopback(Family::of(&net.addr()));
    if lo.contains(&net) {
        return Vec::new();
    }
    if !net.contains(&lo) {
        return vec![net];
    }
    // Walk down from `net` to the loopback network keeping, at each level, the half without it.
    let mut out = Vec::new();
    let mut cur = net;
    while cur.prefix_len() < lo.prefix_len() {
        let Ok(mut halves) = cur.subnets(cur.prefix_len() + 1) else {
            break;
        };
        let (Some(low), Some(high)) = (halves.next(), halves.next()) else {
            break;
        };
        let (keep, next) = if low.contains(&lo) {
            (high, low)
        } else {
            (low, high)
        };
        out.push(keep);
        cur = next;
    }
    out.sort();
    out
}

fn chain(table: Table, name: &str) -> ChainRef {
    ChainRef::new(table, name)
}

// ---------------------------------------------------------------------------------------------
// Static chains and jumps.
// ---------------------------------------------------------------------------------------------

/// SWY-POSTROUTING: masquerade marked packets once, clearing the mark so a packet that
/// traverses the stack again is not masqueraded twice.
fn postrouting_rules() -> Vec<Rule> {
    vec![
        format!("-m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"),
        format!("-j MARK --xor-mark {MASQ_MARK}"),
        format!(
            "{} -j MASQUERADE --random-fully",
            comment("switchyard service traffic requiring SNAT")
        ),
    ]
}

/// SWY-MASQ-OFF-CLUSTER: sources in a cluster CIDR return unmarked, everything else is
/// marked. Used from SVC chains only with several cluster CIDRs.
fn masq_off_cluster_rules(cfg: &RuleConfig) -> Vec<Rule> {
    let mut rules: Vec<Rule> = family_nets(cfg.family, &cfg.cluster_cidrs)
        .into_iter()
        .map(|cidr| format!("-s {cidr} -j RETURN"))
        .collect();
    rules.push(format!("-j {MARK_MASQ}"));
    rules
}

/// SWY-FORWARD: lets service traffic through a FORWARD policy of DROP.
fn forward_rules() -> Vec<Rule> {
    vec![
        // Out-of-window packets conntrack calls INVALID would otherwise reach the pod
        // un-DNATed and be answered with a RST that kills the connection (upstream #74839).
        "-m conntrack --ctstate INVALID -j DROP".to_owned(),
        format!(
            "{} -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT",
            comment("switchyard forwarding rules")
        ),
        format!(
            "{} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            comment("switchyard forwarding conntrack rule")
        ),
    ]
}

/// SWY-FIREWALL: with `route_localnet` on (localhost NodePorts), packets from elsewhere to
/// 127.0.0.0/8 would reach services bound to loopback; drop them unless they were DNATed.
fn localnet_firewall_rules(cfg: &RuleConfig) -> Vec<Rule> {
    if !localhost_nodeports(cfg) {
        return Vec::new();
    }
    vec![format!(
        "{} -d {LOOPBACK_CIDR} ! -s {LOOPBACK_CIDR} -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
        comment("block incoming localnet connections")
    )]
}

/// The static chains with their fixed rules. Dispatch chains that service ports fill are
/// declared without rules; chains used only under some configurations are still declared,
/// so a configuration change never leaves a jump to a chain a sync deleted.
fn base_chains(cfg: &RuleConfig) -> BTreeMap<ChainRef, Vec<Rule>> {
    let mut chains = BTreeMap::new();
    let mut add = |table, name: &str, rules: Vec<Rule>| {
        chains.insert(chain(table, name), rules);
    };
    add(Table::Nat, SERVICES, Vec::new());
    add(Table::Nat, NODEPORTS, Vec::new());
    add(Table::Nat, POSTROUTING, postrouting_rules());
    add(
        Table::Nat,
        MARK_MASQ,
        vec![format!("-j MARK --or-mark {MASQ_MARK}")],
    );
    add(Table::Nat, MASQ_OFF_CLUSTER, masq_off_cluster_rules(cfg));
    add(Table::Filter, SERVICES, Vec::new());
    add(Table::Filter, EXTERNAL_SERVICES, Vec::new());
    add(Table::Filter, NODEPORTS, Vec::new());
    add(Table::Filter, PROXY_FIREWALL, Vec::new());
    add(Table::Filter, FORWARD, forward_rules());
    add(Table::Filter, FIREWALL, localnet_firewall_rules(cfg));
    for table in [Table::Mangle, Table::Nat, Table::Filter] {
        add(table, CANARY, Vec::new());
    }
    chains
}

/// Jumps from PREROUTING/OUTPUT to SWY-NODEPORTS for traffic to node addresses.
fn nodeport_jumps(cfg: &RuleConfig) -> Vec<RuleArgs> {
    let localhost = localhost_nodeports(cfg);
    // Upstream's shapes: `[-d NET] -m addrtype --dst-type LOCAL [! -d 127.0.0.0/8]`.
    let rule = |before: &[&str], after: &[&str]| {
        let mut args = RuleArgs::default();
        args.push(&["-m", "comment", "--comment", "switchyard service nodeports"])
            .push(before)
            .push(&["-m", "addrtype", "--dst-type", "LOCAL"])
            .push(after)
            .push(&["-j", NODEPORTS]);
        args.clone()
    };
    if cfg.nodeport_cidrs.is_empty() {
        // Block localhost NodePorts unless enabled: they only work with route_localnet, and
        // never on IPv6.
        let loopback: &[&str] = match cfg.family {
            Family::Ipv6 => &["!", "-d", LOOPBACK_V6_CIDR],
            Family::Ipv4 if localhost => &[],
            Family::Ipv4 => &["!", "-d", LOOPBACK_CIDR],
        };
        return vec![rule(&[], loopback)];
    }
    let mut nets: Vec<IpNet> = Vec::new();
    for net in family_nets(cfg.family, &cfg.nodeport_cidrs) {
        let parts = if localhost {
            vec![net]
        } else {
            without_loopback(net)
        };
        for part in parts {
            if !nets.contains(&part) {
                nets.push(part);
            }
        }
    }
    // `addrtype LOCAL` keeps traffic forwarded to other hosts inside a CIDR out of NodePorts.
    nets.into_iter()
        .map(|net| rule(&["-d", &net.to_string()], &[]))
        .collect()
}

/// A jump from a built-in chain, optionally only for new connections.
fn jump(new_only: bool, note: &str, target: &str) -> RuleArgs {
    let mut args = RuleArgs::default();
    if new_only {
        args.push(&["-m", "conntrack", "--ctstate", "NEW"]);
    }
    args.push(&[
        "-m",
        "comment",
        "--comment",
        &comment_text(note),
        "-j",
        target,
    ]);
    args
}

/// The jumps from the built-in chains, grouped by chain, each group in the order the rules
/// must appear (first = topmost). Upstream's order after its `-I` of every jump.
fn base_jumps(cfg: &RuleConfig) -> Vec<(ChainRef, RuleArgs)> {
    let portals = "switchyard service portals";
    let external = "switchyard externally-visible service portals";
    let lb_firewall = "switchyard load balancer firewall";
    let localnet = localhost_nodeports(cfg);
    let mut jumps = Vec::new();

    for builtin in [BUILTIN_PREROUTING, BUILTIN_OUTPUT] {
        let c = chain(Table::Nat, builtin);
        jumps.push((c.clone(), jump(false, portals, SERVICES)));
        jumps.extend(nodeport_jumps(cfg).into_iter().map(|r| (c.clone(), r)));
    }
    jumps.push((
        chain(Table::Nat, BUILTIN_POSTROUTING),
        jump(false, "switchyard postrouting rules", POSTROUTING),
    ));

    let input = chain(Table::Filter, BUILTIN_INPUT);
    if localnet {
        jumps.push((
            input.clone(),
            jump(false, "switchyard localnet firewall", FIREWALL),
        ));
    }
    jumps.push((input.clone(), jump(true, lb_firewall, PROXY_FIREWALL)));
    jumps.push((
        input.clone(),
        jump(false, "switchyard health check service ports", NODEPORTS),
    ));
    jumps.push((input, jump(true, external, EXTERNAL_SERVICES)));

    let forward = chain(Table::Filter, BUILTIN_FORWARD);
    jumps.push((forward.clone(), jump(true, lb_firewall, PROXY_FIREWALL)));
    jumps.push((
        forward.clone(),
        jump(false, "switchyard forwarding rules", FORWARD),
    ));
    jumps.push((forward.clone(), jump(true, portals, SERVICES)));
    jumps.push((forward, jump(true, external, EXTERNAL_SERVICES)));

    let output = chain(Table::Filter, BUILTIN_OUTPUT);
    if localnet {
        jumps.push((
            output.clone(),
            jump(false, "switchyard localnet firewall", FIREWALL),
        ));
    }
    jumps.push((output.clone(), jump(true, lb_firewall, PROXY_FIREWALL)));
    jumps.push((output, jump(true, portals, SERVICES)));
    jumps
}

/// The static chains (with their fixed rules) and the jumps from the built-in chains.
pub fn base_rules(cfg: &RuleConfig) -> BaseRules {
    BaseRules {
        chains: base_chains(cfg),
        jumps: base_jumps(cfg),
    }
}

// ---------------------------------------------------------------------------------------------
// Service ports.
// ---------------------------------------------------------------------------------------------

/// One family's half of a port. Upstream runs one proxier per family, so every decision
/// (endpoint sets and their terminating fallback included) is made on one family's data.
/// Source ranges keep both families: a list with only IPv6 ranges still restricts the IPv4
/// LoadBalancer IPs (to nobody), and the other way round, as the model documents.
fn family_view(port: &ServicePort, family: Family) -> ServicePort {
    let mut v = port.clone();
    v.cluster_ips.retain(|ip| family.has(ip));
    v.external_ips.retain(|ip| family.has(ip));
    v.load_balancer_ips.retain(|ip| family.has(ip));
    v.endpoints.retain(|ep| family.has(&ep.ip));
    v.frontends.retain(|f| family.has(&f.ip));
    v
}

/// Names of one port's chains.
struct PortChains {
    svc: String,
    svl: String,
    ext: String,
    fw: String,
}

/// What one port needs, decided before any rule is written (upstream's booleans of the same
/// names in `syncProxyRules`).
struct Plan<'a> {
    port: &'a ServicePort,
    cfg: &'a RuleConfig,
    /// `ns/name:port`, for comments.
    name: String,
    cluster_ip: IpAddr,
    chains: PortChains,
    cluster_eps: Vec<&'a Endpoint>,
    local_eps: Vec<&'a Endpoint>,
    /// Some usable endpoint exists anywhere: otherwise only REJECT rules are written.
    has_endpoints: bool,
    /// Cluster IP traffic has endpoints (internalTrafficPolicy applied).
    has_internal: bool,
    /// Traffic from outside to external destinations has endpoints (externalTrafficPolicy).
    has_external: bool,
    uses_cluster_chain: bool,
    uses_local_chain: bool,
    uses_ext_chain: bool,
    uses_fw_chain: bool,
}

impl<'a> Plan<'a> {
    fn new(port: &'a ServicePort, cfg: &'a RuleConfig, cluster_ip: IpAddr) -> Self {
        let itp_local = port.internal_traffic_policy == TrafficPolicy::Local;
        let etp_local = port.external_traffic_policy == TrafficPolicy::Local;
        let external = port.externally_accessible();
        // Cluster endpoints are also needed by ETP Local services, for the short-circuit of
        // traffic from this node (upstream UsesClusterEndpoints / UsesLocalEndpoints).
        let uses_cluster = port.uses_cluster_endpoints();
        let uses_local = port.uses_local_endpoints();
        // Topology-filtered (cluster) and unfiltered (local), as upstream CategorizeEndpoints.
        let cluster_eps = port.cluster_endpoints();
        let local_eps = port.local_endpoints();
        let has_endpoints = port.has_any_endpoints();
        let has_internal = has_endpoints && (!itp_local || !local_eps.is_empty());
        let has_external = has_endpoints && (!etp_local || !local_eps.is_empty());
        let key = &port.key;
        Plan {
            port,
            cfg,
            name: chains::port_name(key),
            cluster_ip,
            chains: PortChains {
                svc: chains::svc_chain(key),
                svl: chains::svl_chain(key),
                ext: chains::ext_chain(key),
                fw: chains::fw_chain(key),
            },
            uses_cluster_chain: uses_cluster && !cluster_eps.is_empty(),
            uses_local_chain: uses_local && !local_eps.is_empty(),
            uses_ext_chain: has_endpoints && external,
            uses_fw_chain: has_endpoints
                && !port.load_balancer_ips.is_empty()
                && !port.load_balancer_source_ranges.is_empty(),
            cluster_eps,
            local_eps,
            has_endpoints,
            has_internal,
            has_external,
        }
    }

    fn protocol(&self) -> Protocol {
        self.port.key.protocol
    }

    /// The chain cluster IP traffic goes to.
    fn internal_chain(&self) -> &str {
        match self.port.internal_traffic_policy {
            TrafficPolicy::Cluster => &self.chains.svc,
            TrafficPolicy::Local => &self.chains.svl,
        }
    }

    /// The chain external traffic ends in, after the EXT chain's special cases.
    fn external_policy_chain(&self) -> &str {
        match self.port.external_traffic_policy {
            TrafficPolicy::Cluster => &self.chains.svc,
            TrafficPolicy::Local => &self.chains.svl,
        }
    }

    /// Where LoadBalancer IP traffic goes: through the source-range filter when there is one.
    fn load_balancer_chain(&self) -> &str {
        if self.uses_fw_chain {
            &self.chains.fw
        } else {
            &self.chains.ext
        }
    }

    /// The REJECT target. TCP gets a reset instead of upstream's ICMP port unreachable: the
    /// kernel rate-limits ICMP errors per client (a burst of connects would then partly time
    /// out), while a reset refuses every attempt at once.
    fn reject(&self) -> &'static str {
        match self.port.key.protocol {
            Protocol::Tcp => "REJECT --reject-with tcp-reset",
            Protocol::Udp => "REJECT",
        }
    }

    /// Verdict for cluster IP traffic without endpoints: REJECT when the service has none
    /// at all (clients fail fast), DROP when only internalTrafficPolicy Local finds none.
    fn internal_verdict(&self) -> Option<(&'static str, String)> {
        if !self.has_endpoints {
            Some((self.reject(), format!("{} has no endpoints", self.name)))
        } else if !self.has_internal {
            Some(("DROP", format!("{} has no local endpoints", self.name)))
        } else {
            None
        }
    }

    /// Verdict for external traffic without endpoints (externalTrafficPolicy applied).
    fn external_verdict(&self) -> Option<(&'static str, String)> {
        if !self.has_endpoints {
            Some((self.reject(), format!("{} has no endpoints", self.name)))
        } else if !self.has_external {
            Some(("DROP", format!("{} has no local endpoints", self.name)))
        } else {
            None
        }
    }
}

/// Collects one port's output.
#[derive(Default)]
struct Out {
    rules: PortRules,
}

impl Out {
    /// Appends to one of the port's own chains (all in nat), creating it.
    fn own(&mut self, name: &str, rule: Rule) {
        self.rules
            .chains
            .entry(chain(Table::Nat, name))
            .or_default()
            .push(rule);
    }

    /// Adds a rule to a shared chain, once: a partial sync deletes shared rules with `-D`,
    /// which removes one copy per delete.
    fn shared(&mut self, table: Table, name: &str, rule: Rule) {
        let entry = (chain(table, name), rule);
        if !self.rules.shared.contains(&entry) {
            self.rules.shared.push(entry);
        }
    }
}

/// Cluster IP: dispatch in nat SWY-SERVICES, or a verdict in filter SWY-SERVICES.
fn cluster_ip_rules(plan: &Plan<'_>, out: &mut Out) {
    let dst = dst_match(plan.cluster_ip, plan.protocol(), plan.port.port);
    if plan.has_internal {
        let note = comment(&format!("{} cluster IP", plan.name));
        let rule = format!("{note} {dst} -j {}", plan.internal_chain());
        out.shared(Table::Nat, SERVICES, rule);
    } else if let Some((target, text)) = plan.internal_verdict() {
        let rule = format!("{} {dst} -j {target}", comment(&text));
        out.shared(Table::Filter, SERVICES, rule);
    }
}

/// The filter verdict for one external destination without (local) endpoints.
fn external_verdict_rule(plan: &Plan<'_>, out: &mut Out, dst: &str) {
    if let Some((target, text)) = plan.external_verdict() {
        let rule = format!("{} {dst} -j {target}", comment(&text));
        out.shared(Table::Filter, EXTERNAL_SERVICES, rule);
    }
}

/// externalIPs: dispatch to the EXT chain, verdicts when external traffic has no endpoint.
fn external_ip_rules(plan: &Plan<'_>, out: &mut Out) {
    for ip in family_addrs(plan.cfg.family, &plan.port.external_ips) {
        let dst = dst_match(ip, plan.protocol(), plan.port.port);
        if plan.has_endpoints {
            let note = comment(&format!("{} external IP", plan.name));
            let rule = format!("{note} {dst} -j {}", plan.chains.ext);
            out.shared(Table::Nat, SERVICES, rule);
        }
        external_verdict_rule(plan, out, &dst);
    }
}

/// LoadBalancer IPs: dispatch (through the FW chain with source ranges), the firewall drop
/// for what the FW chain did not accept, and verdicts without endpoints.
fn load_balancer_rules(plan: &Plan<'_>, out: &mut Out) {
    for ip in family_addrs(plan.cfg.family, &plan.port.load_balancer_ips) {
        let dst = dst_match(ip, plan.protocol(), plan.port.port);
        if plan.has_endpoints {
            let note = comment(&format!("{} loadbalancer IP", plan.name));
            let rule = format!("{note} {dst} -j {}", plan.load_balancer_chain());
            out.shared(Table::Nat, SERVICES, rule);
        }
        if plan.uses_fw_chain {
            // Accepted traffic was DNATed in nat PREROUTING; what still goes to the LB IP
            // fell through the FW chain and is dropped here.
            let text = format!("{} traffic not accepted by {}", plan.name, plan.chains.fw);
            let rule = format!("{} {dst} -j DROP", comment(&text));
            out.shared(Table::Filter, PROXY_FIREWALL, rule);
        }
        external_verdict_rule(plan, out, &dst);
    }
}

/// NodePort: dispatch in nat SWY-NODEPORTS (never subject to source ranges, like upstream),
/// and verdicts on local addresses without endpoints.
fn node_port_rules(plan: &Plan<'_>, out: &mut Out) {
    let Some(node_port) = plan.port.node_port else {
        return;
    };
    let ports = format!("{} --dport {node_port}", proto_match(plan.protocol()));
    if plan.has_endpoints {
        let rule = format!("{} {ports} -j {}", comment(&plan.name), plan.chains.ext);
        out.shared(Table::Nat, NODEPORTS, rule);
    }
    external_verdict_rule(plan, out, &format!("-m addrtype --dst-type LOCAL {ports}"));
}

/// The health check node port is accepted whether or not there are local endpoints: the
/// answer (200 or 503) is what tells the load balancer.
fn health_check_rules(plan: &Plan<'_>, out: &mut Out) {
    let Some(hc) = plan.port.health_check_node_port else {
        return;
    };
    let note = comment(&format!("{} health check node port", plan.name));
    let rule = format!(
        "{note} {} --dport {hc} -j ACCEPT",
        proto_match(Protocol::Tcp)
    );
    out.shared(Table::Filter, NODEPORTS, rule);
}

/// Masquerade cluster IP traffic that does not come from a pod (off-cluster or node
/// traffic may be answered by a pod on another node, which must reply through us).
fn internal_masquerade_rule(plan: &Plan<'_>, out: &mut Out) {
    if !plan.has_internal {
        return;
    }
    let note = comment(&format!("{} cluster IP", plan.name));
    let dst = dst_match(plan.cluster_ip, plan.protocol(), plan.port.port);
    let cidrs = family_nets(plan.cfg.family, &plan.cfg.cluster_cidrs);
    let rule = if plan.cfg.masquerade_all {
        format!("{note} {dst} -j {MARK_MASQ}")
    } else {
        match cidrs.as_slice() {
            // No way to tell pods from the rest: upstream does not masquerade either.
            [] => return,
            [cidr] => format!("{note} {dst} ! -s {cidr} -j {MARK_MASQ}"),
            _ => format!("{note} {dst} -j {MASQ_OFF_CLUSTER}"),
        }
    };
    out.own(plan.internal_chain(), rule);
}

/// The EXT chain: masquerade and special cases, then the external policy chain.
fn external_chain_rules(plan: &Plan<'_>, out: &mut Out) {
    if !plan.uses_ext_chain {
        return;
    }
    let ext = &plan.chains.ext;
    let svc = &plan.chains.svc;
    let name = &plan.name;
    match plan.port.external_traffic_policy {
        TrafficPolicy::Cluster => {
            // The endpoint may be on another node: masquerade so replies come back here.
            let note = comment(&format!(
                "masquerade traffic for {name} external destinations"
            ));
            out.own(ext, format!("{note} -j {MARK_MASQ}"));
        }
        TrafficPolicy::Local => {
            // Pods of this node reaching an external address behave as if they went out to
            // the load balancer and back: any endpoint, source kept.
            let note = comment(&format!("pod traffic for {name} external destinations"));
            for cidr in family_nets(plan.cfg.family, &plan.cfg.cluster_cidrs) {
                out.own(ext, format!("{note} -s {cidr} -j {svc}"));
            }
            // The node itself picks the external address as source; masquerade it and let
            // it use any endpoint too.
            let note = comment(&format!(
                "masquerade LOCAL traffic for {name} external destinations"
            ));
            out.own(
                ext,
                format!("{note} -m addrtype --src-type LOCAL -j {MARK_MASQ}"),
            );
            let note = comment(&format!(
                "route LOCAL traffic for {name} external destinations"
            ));
            out.own(ext, format!("{note} -m addrtype --src-type LOCAL -j {svc}"));
        }
    }
    if plan.has_external {
        out.own(ext, format!("-j {}", plan.external_policy_chain()));
    }
}

/// The FW chain: admitted sources go on to EXT; the rest falls through, stays addressed to
/// the LB IP and is dropped by SWY-PROXY-FIREWALL.
fn firewall_chain_rules(plan: &Plan<'_>, out: &mut Out) {
    if !plan.uses_fw_chain {
        return;
    }
    let fw = &plan.chains.fw;
    let ext = &plan.chains.ext;
    let note = comment(&format!("{} loadbalancer IP", plan.name));
    let family = plan.cfg.family;
    let ranges = family_nets(family, &plan.port.load_balancer_source_ranges);
    let node_ips = family_addrs(family, &plan.cfg.node_ips);
    for range in &ranges {
        out.own(fw, format!("{note} -s {range} -j {ext}"));
    }
    // A VIP the node also holds locally makes the node's own requests loop back with the
    // VIP as source; admit them when a range admits the node.
    let node_admitted = ranges
        .iter()
        .any(|r| node_ips.iter().any(|ip| r.contains(ip)));
    if node_admitted {
        for lb_ip in family_addrs(family, &plan.port.load_balancer_ips) {
            let len = family.host_prefix();
            out.own(fw, format!("{note} -s {lb_ip}/{len} -j {ext}"));
        }
    }
    let text = format!(
        "other traffic to {} will be dropped by {PROXY_FIREWALL}",
        plan.name
    );
    out.own(fw, comment(&text));
}

/// One policy chain (SVC or SVL): affinity checks first, then random balancing where rule
/// i of n matches with probability 1/(n-i), so each endpoint gets 1/n overall.
fn policy_chain_rules(plan: &Plan<'_>, out: &mut Out, chain_name: &str, eps: &[&Endpoint]) {
    let key = &plan.port.key;
    let note = |ep: &Endpoint| {
        let text = format!(
            "{} -> {}",
            plan.name,
            chains::endpoint_string(ep.ip, ep.port)
        );
        comment(&text)
    };
    if let Some(timeout) = plan.port.session_affinity_timeout {
        for ep in eps {
            let sep = chains::sep_chain(key, ep.ip, ep.port);
            out.own(
                chain_name,
                format!(
                    "{} -m recent --name {sep} --rcheck --seconds {timeout} --reap -j {sep}",
                    note(ep)
                ),
            );
        }
    }
    let n = eps.len();
    for (i, ep) in eps.iter().enumerate() {
        let sep = chains::sep_chain(key, ep.ip, ep.port);
        let statistic = if i + 1 < n {
            format!(
                " -m statistic --mode random --probability {}",
                probability(n - i)
            )
        } else {
            String::new()
        };
        out.own(chain_name, format!("{}{statistic} -j {sep}", note(ep)));
    }
}

/// Upstream's `computeProbability`: `%0.10f` of 1/n.
fn probability(n: usize) -> String {
    // Endpoint counts are far below 2^52, so the conversion is exact.
    format!("{:.10}", 1.0 / n as f64)
}

/// One SEP chain: hairpin masquerade, affinity record, DNAT.
fn endpoint_chain_rules(plan: &Plan<'_>, out: &mut Out, ep: &Endpoint) {
    let sep = chains::sep_chain(&plan.port.key, ep.ip, ep.port);
    let note = comment(&plan.name);
    // An endpoint reaching its own service would get its reply straight from itself and
    // drop it; masquerading makes the reply come back through us.
    let len = Family::of(&ep.ip).host_prefix();
    out.own(&sep, format!("{note} -s {}/{len} -j {MARK_MASQ}", ep.ip));
    let affinity = if plan.port.session_affinity_timeout.is_some() {
        format!(" -m recent --name {sep} --set")
    } else {
        String::new()
    };
    out.own(
        &sep,
        format!(
            "{note}{affinity} {} -j DNAT --to-destination {}",
            proto_match(plan.protocol()),
            chains::endpoint_string(ep.ip, ep.port)
        ),
    );
}

/// SVC, SVL and SEP chains.
fn endpoint_rules(plan: &Plan<'_>, out: &mut Out) {
    if plan.uses_cluster_chain {
        policy_chain_rules(plan, out, &plan.chains.svc, &plan.cluster_eps);
    }
    if plan.uses_local_chain {
        policy_chain_rules(plan, out, &plan.chains.svl, &plan.local_eps);
    }
    // One SEP chain per endpoint either chain uses (upstream allLocallyReachableEndpoints),
    // in chain-name order.
    let reachable: BTreeMap<String, &Endpoint> = plan
        .port
        .reachable_endpoints()
        .into_iter()
        .map(|ep| (chains::sep_chain(&plan.port.key, ep.ip, ep.port), ep))
        .collect();
    for ep in reachable.values() {
        endpoint_chain_rules(plan, out, ep);
    }
}

/// Everything one service port puts into the tables of [`RuleConfig::family`]: its own
/// chains (SVC, SVL, EXT, FW, SEP, in nat) and its rules in the shared chains. Deterministic
/// for equal inputs; a port without a cluster IP of the family yields nothing.
pub fn port_rules(port: &ServicePort, cfg: &RuleConfig) -> PortRules {
    let view = family_view(port, cfg.family);
    let Some(cluster_ip) = view.cluster_ips.first().copied() else {
        return PortRules::default();
    };
    let plan = Plan::new(&view, cfg, cluster_ip);
    let mut out = Out::default();
    // Shared chains, in upstream's order.
    cluster_ip_rules(&plan, &mut out);
    external_ip_rules(&plan, &mut out);
    load_balancer_rules(&plan, &mut out);
    node_port_rules(&plan, &mut out);
    health_check_rules(&plan, &mut out);
    // The port's own chains; the masquerade rule must precede the balancing rules.
    internal_masquerade_rule(&plan, &mut out);
    external_chain_rules(&plan, &mut out);
    firewall_chain_rules(&plan, &mut out);
    endpoint_rules(&plan, &mut out);
    out.rules
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
