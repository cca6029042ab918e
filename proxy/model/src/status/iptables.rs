//! iptables mode: `iptables-save` output of our chains -> rows.
//!
//! The chains have upstream kube-proxy's shapes (see [`crate::iptables::rules`]): a frontend
//! rule in nat `SWY-SERVICES` (cluster, external and LoadBalancer IPs, named by its comment)
//! or `SWY-NODEPORTS` jumps to the port's `SWY-SVC-`/`SWY-SVL-` policy chain, through
//! `SWY-EXT-` (masquerade, traffic policy) and `SWY-FW-` (source ranges) for external ones;
//! the policy chain picks an endpoint chain `SWY-SEP-` with `statistic` rules (rule i of n
//! with probability 1/(n-i)), which DNATs. Frontends without endpoints have a REJECT or DROP
//! rule in filter instead. Options are read by name, not position, since iptables-save
//! reorders them (and the legacy and nft backends print them differently).
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{
    share, sort_rows, BackendEntry, BackendRow, ChainRow, FrontendType, ServiceRow, Verdict,
};
use crate::iptables::chains::{
    BUILTIN_OUTPUT, BUILTIN_PREROUTING, EXTERNAL_SERVICES, EXT_PREFIX, FW_PREFIX, MARK_MASQ,
    NODEPORTS, PREFIX, SEP_PREFIX, SERVICES, SVC_PREFIX, SVL_PREFIX,
};

/// One rule's arguments after `-A CHAIN`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Rule {
    args: Vec<String>,
}

impl Rule {
    /// The argument after the first `option`.
    fn value(&self, option: &str) -> Option<&str> {
        let at = self.args.iter().position(|a| a == option)?;
        self.args.get(at + 1).map(String::as_str)
    }

    fn has(&self, option: &str) -> bool {
        self.args.iter().any(|a| a == option)
    }

    fn target(&self) -> Option<&str> {
        self.value("-j")
    }

    fn comment(&self) -> Option<&str> {
        self.value("--comment")
    }

    /// `-p tcp` as `TCP`.
    fn protocol(&self) -> Option<String> {
        self.value("-p").map(str::to_ascii_uppercase)
    }

    fn dport(&self) -> Option<u16> {
        self.value("--dport")?.parse().ok()
    }

    /// `-d a.b.c.d[/32]` (ip6tables: `-d x::y[/128]`) as an address.
    fn destination(&self) -> Option<IpAddr> {
        let text = self.value("-d")?;
        let host = text
            .strip_suffix("/32")
            .or_else(|| text.strip_suffix("/128"))
            .unwrap_or(text);
        host.parse().ok()
    }
}

/// `iptables-save` output of some tables, parsed.
#[derive(Clone, Debug, Default)]
pub struct Saved {
    /// (table, chain) -> rules in order.
    rules: BTreeMap<(String, String), Vec<Rule>>,
    /// Our chains declared (`:SWY-... - [0:0]`), by table.
    declared: BTreeSet<(String, String)>,
    /// Lines that could not be split into arguments.
    unreadable: usize,
}

impl Saved {
    /// Parses `iptables-save` output (any number of `*table` sections; other chains' rules
    /// are kept too, so the jumps from the built-in chains can be checked).
    pub fn parse(save: &str) -> Self {
        let mut saved = Saved::default();
        let mut table = String::new();
        for line in save.lines() {
            if let Some(name) = line.strip_prefix('*') {
                table = name.trim().to_owned();
            } else if let Some(declaration) = line.strip_prefix(':') {
                if let Some(chain) = declaration.split_whitespace().next() {
                    if chain.starts_with(PREFIX) {
                        saved.declared.insert((table.clone(), chain.to_owned()));
                    }
                }
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let Some((chain, args)) = rest.split_once(' ') else {
                    continue;
                };
                match shlex::split(args) {
                    Some(args) => saved
                        .rules
                        .entry((table.clone(), chain.to_owned()))
                        .or_default()
                        .push(Rule { args }),
                    None => saved.unreadable += 1,
                }
            }
        }
        saved
    }

    /// Whether any chain of ours is declared.
    pub fn has_our_chains(&self) -> bool {
        !self.declared.is_empty()
    }

    fn rules(&self, table: &str, chain: &str) -> &[Rule] {
        self.rules
            .get(&(table.to_owned(), chain.to_owned()))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    fn declared(&self, table: &str, chain: &str) -> bool {
        self.declared
            .contains(&(table.to_owned(), chain.to_owned()))
    }
}

/// The rows of the chains.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decoded {
    /// One row per frontend.
    pub services: Vec<ServiceRow>,
    /// One row per endpoint chain.
    pub backends: Vec<BackendEntry>,
    /// Our chains and rules per table.
    pub chains: Vec<ChainRow>,
    /// What the rows cannot show.
    pub notes: Vec<String>,
}

/// Where a frontend's traffic ends up, following its chains.
#[derive(Default)]
struct Target {
    backends: Vec<BackendRow>,
    affinity: Option<u32>,
    masquerade: bool,
    source_ranges: Vec<String>,
}

/// Decodes parsed chains into rows.
pub fn decode(saved: &Saved) -> Decoded {
    let mut notes = Vec::new();
    let mut rows: Vec<ServiceRow> = Vec::new();
    for rule in saved.rules("nat", SERVICES) {
        let Some((name, kind)) = rule.comment().and_then(frontend_comment) else {
            continue;
        };
        let Some(chain) = rule.target() else { continue };
        let target = resolve(saved, chain, &mut notes);
        rows.push(frontend_row(
            rule,
            Some(name),
            kind,
            rule.destination(),
            chain,
            target,
        ));
    }
    for rule in saved.rules("nat", NODEPORTS) {
        let (Some(name), Some(chain)) = (rule.comment(), rule.target()) else {
            continue;
        };
        let target = resolve(saved, chain, &mut notes);
        rows.push(frontend_row(
            rule,
            Some(name),
            FrontendType::NodePort,
            None,
            chain,
            target,
        ));
    }
    for (chain, default_kind) in [
        (SERVICES, FrontendType::ClusterIp),
        (EXTERNAL_SERVICES, FrontendType::External),
    ] {
        for rule in saved.rules("filter", chain) {
            add_verdict(&mut rows, rule, default_kind);
        }
    }
    sort_rows(&mut rows);

    let used: BTreeSet<&str> = saved
        .rules
        .iter()
        .filter(|((table, chain), _)| {
            table == "nat" && (chain.starts_with(SVC_PREFIX) || chain.starts_with(SVL_PREFIX))
        })
        .flat_map(|(_, rules)| rules.iter().filter_map(Rule::target))
        .collect();
    let mut backends: Vec<BackendEntry> = saved
        .declared
        .iter()
        .filter(|(table, chain)| table == "nat" && chain.starts_with(SEP_PREFIX))
        .filter_map(|(_, chain)| {
            let rule = dnat_rule(saved, chain)?;
            let (address, port) = dnat_destination(rule)?;
            Some(BackendEntry {
                service: rule.comment().map(|name| service_name(name, rule)),
                address,
                port,
                id: None,
                slot: None,
                set: None,
                chain: Some(chain.clone()),
                in_use: used.contains(chain.as_str()),
            })
        })
        .collect();
    backends.sort_by(|a, b| {
        (&a.service, a.address, a.port, &a.chain).cmp(&(&b.service, b.address, b.port, &b.chain))
    });

    let mut chains: BTreeMap<&str, ChainRow> = BTreeMap::new();
    for (table, chain) in &saved.declared {
        let row = chains.entry(table).or_insert_with(|| ChainRow {
            table: table.clone(),
            chains: 0,
            rules: 0,
        });
        row.chains += 1;
        row.rules += saved.rules(table, chain).len();
    }
    if saved.declared("nat", SERVICES) {
        for builtin in [BUILTIN_PREROUTING, BUILTIN_OUTPUT] {
            let jumps = saved
                .rules("nat", builtin)
                .iter()
                .any(|r| r.target() == Some(SERVICES));
            if !jumps {
                notes.push(format!(
                    "nat {builtin} does not jump to {SERVICES}: its rules are not in use there"
                ));
            }
        }
    }
    if saved.unreadable > 0 {
        notes.push(format!(
            "{} rules could not be read (unbalanced quotes)",
            saved.unreadable
        ));
    }
    notes.sort();
    notes.dedup();
    Decoded {
        services: rows,
        backends,
        chains: chains.into_values().collect(),
        notes,
    }
}

/// `NAME cluster IP` and its kin: the service port's name and the frontend's kind.
fn frontend_comment(comment: &str) -> Option<(&str, FrontendType)> {
    [
        (" cluster IP", FrontendType::ClusterIp),
        (" external IP", FrontendType::ExternalIp),
        (" loadbalancer IP", FrontendType::LoadBalancer),
    ]
    .into_iter()
    .find_map(|(suffix, kind)| comment.strip_suffix(suffix).map(|name| (name, kind)))
}

/// `ns/name:port` (upstream's port name, as in the comments) with the rule's protocol.
fn service_name(name: &str, rule: &Rule) -> String {
    match rule.protocol() {
        Some(protocol) => format!("{name}/{protocol}"),
        None => name.to_owned(),
    }
}

fn frontend_row(
    rule: &Rule,
    name: Option<&str>,
    kind: FrontendType,
    address: Option<IpAddr>,
    chain: &str,
    target: Target,
) -> ServiceRow {
    ServiceRow {
        service: name.map(|n| service_name(n, rule)),
        kind,
        address,
        port: rule.dport().unwrap_or(0),
        protocol: rule.protocol().unwrap_or_default(),
        scope: None,
        id: None,
        chain: Some(chain.to_owned()),
        affinity_timeout_seconds: target.affinity,
        masquerade: target.masquerade,
        source_ranges: target.source_ranges,
        verdict: None,
        backends: target.backends,
    }
}

/// A filter REJECT/DROP rule: sets the verdict of the frontend's row, or adds a row for a
/// frontend that has no nat rule (a service without any endpoint).
fn add_verdict(rows: &mut Vec<ServiceRow>, rule: &Rule, default_kind: FrontendType) {
    let verdict = match rule.target() {
        Some("REJECT") => Verdict::Reject,
        Some("DROP") => Verdict::Drop,
        _ => return,
    };
    let Some(comment) = rule.comment() else {
        return;
    };
    let Some(name) = comment
        .strip_suffix(" has no endpoints")
        .or_else(|| comment.strip_suffix(" has no local endpoints"))
    else {
        return;
    };
    let address = rule.destination();
    // `-m addrtype --dst-type LOCAL --dport N` without `-d`: the NodePort.
    let kind = if address.is_none() && rule.value("--dst-type") == Some("LOCAL") {
        FrontendType::NodePort
    } else {
        default_kind
    };
    let port = rule.dport().unwrap_or(0);
    let protocol = rule.protocol().unwrap_or_default();
    let same = |row: &&mut ServiceRow| {
        row.address == address
            && row.port == port
            && row.protocol == protocol
            && (row.kind == FrontendType::ClusterIp) == (kind == FrontendType::ClusterIp)
    };
    if let Some(row) = rows.iter_mut().find(same) {
        row.verdict = Some(verdict);
        return;
    }
    let mut row = frontend_row(rule, Some(name), kind, address, "", Target::default());
    row.chain = None;
    row.verdict = Some(verdict);
    rows.push(row);
}

/// Follows a frontend's jump to where its connections go.
fn resolve(saved: &Saved, chain: &str, notes: &mut Vec<String>) -> Target {
    if !saved.declared("nat", chain) {
        notes.push(format!("{chain} is jumped to but does not exist"));
        return Target::default();
    }
    if chain.starts_with(FW_PREFIX) {
        let mut ext = None;
        let mut ranges = Vec::new();
        for rule in saved.rules("nat", chain) {
            if let (Some(range), Some(to)) = (rule.value("-s"), rule.target()) {
                ranges.push(range.to_owned());
                ext = Some(to.to_owned());
            }
        }
        let mut target = match ext {
            Some(ext) => resolve(saved, &ext, notes),
            None => Target::default(),
        };
        ranges.sort();
        target.source_ranges = ranges;
        return target;
    }
    if chain.starts_with(EXT_PREFIX) {
        let mut masquerade = false;
        let mut policy = None;
        for rule in saved.rules("nat", chain) {
            // Rules for pods' and the node's own traffic carry a source condition.
            if rule.has("-s") || rule.has("--src-type") {
                continue;
            }
            match rule.target() {
                Some(MARK_MASQ) => masquerade = true,
                Some(to) if to.starts_with(SVC_PREFIX) || to.starts_with(SVL_PREFIX) => {
                    policy = Some(to.to_owned())
                }
                _ => {}
            }
        }
        let mut target = match policy {
            Some(policy) => resolve(saved, &policy, notes),
            None => Target::default(),
        };
        target.masquerade = masquerade;
        return target;
    }
    let mut target = Target::default();
    let mut remaining = 1.0;
    for rule in saved.rules("nat", chain) {
        let Some(sep) = rule.target().filter(|t| t.starts_with(SEP_PREFIX)) else {
            continue;
        };
        if rule.has("--rcheck") {
            target.affinity = rule.value("--seconds").and_then(|s| s.parse().ok());
            continue;
        }
        let p = rule
            .value("--probability")
            .and_then(|p| p.parse::<f64>().ok())
            .unwrap_or(1.0);
        let this = remaining * p;
        remaining -= this;
        match dnat_rule(saved, sep).and_then(dnat_destination) {
            Some((address, port)) => target.backends.push(BackendRow {
                address,
                port,
                probability: share(this),
                slot: None,
                chain: Some(sep.to_owned()),
            }),
            None => notes.push(format!("{chain} jumps to {sep}, which has no DNAT rule")),
        }
    }
    target
}

fn dnat_rule<'a>(saved: &'a Saved, sep: &str) -> Option<&'a Rule> {
    saved
        .rules("nat", sep)
        .iter()
        .find(|r| r.target() == Some("DNAT"))
}

fn dnat_destination(rule: &Rule) -> Option<(IpAddr, u16)> {
    let (address, port) = rule.value("--to-destination")?.rsplit_once(':')?;
    // ip6tables writes `[address]:port`.
    let address = address.trim_start_matches('[').trim_end_matches(']');
    Some((address.parse().ok()?, port.parse().ok()?))
}

/// ebpf mode's SCTP fallback chains (`SWYSCTP-*`, see
/// [`crate::iptables::sctp_fallback`]) from `iptables-save` lines of those chains and the
/// jumps into them: read with iptables mode's decoder under iptables mode's names, then the
/// rows name the fallback's chains again.
pub fn decode_sctp_fallback(save: &str) -> Decoded {
    use crate::iptables::sctp_fallback::{fallback_name, to_iptables_name, to_iptables_rule};
    let renamed: String = save
        .lines()
        .map(|line| match line.strip_prefix(':') {
            Some(rest) => {
                let (chain, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                format!(":{} {tail}\n", to_iptables_name(chain))
            }
            None => format!("{}\n", to_iptables_rule(line)),
        })
        .collect();
    let mut decoded = decode(&Saved::parse(&renamed));
    let rename = |chain: &mut Option<String>| {
        if let Some(c) = chain {
            *c = fallback_name(c);
        }
    };
    for row in &mut decoded.services {
        rename(&mut row.chain);
        for backend in &mut row.backends {
            rename(&mut backend.chain);
        }
    }
    for entry in &mut decoded.backends {
        rename(&mut entry.chain);
    }
    decoded
}

#[cfg(test)]
#[path = "iptables_tests.rs"]
mod tests;
