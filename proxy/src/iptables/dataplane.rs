//! The iptables dataplane: full syncs at start, after failures, when someone flushed our
//! chains (canary gone) and hourly; partial syncs of only the changed service ports otherwise.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::backend::IptablesBackend;
use super::exec::{self, ExecError};
use super::generator_shim::CANARY;
use super::generator_shim::{base_rules, port_rules};
use super::restore::{self, Strategy};
use super::rule_set::{BaseRules, ChainRef, PortRules, RuleConfig, Table};
use crate::dataplane::{Dataplane, SyncReport};
use crate::model::{DesiredState, Protocol, ServicePort, ServicePortKey, StateDiff};

/// Upstream kube-proxy also forces a full sync at most hourly, to repair drift that the canary
/// cannot see (a single rule deleted by hand).
const FULL_SYNC_INTERVAL: Duration = Duration::from_secs(3600);

/// The tables we own chains in.
pub const TABLES: [Table; 3] = [Table::Mangle, Table::Nat, Table::Filter];

/// What the dataplane needs from the system; faked in unit tests.
pub trait IptablesSystem: Send {
    /// Runs one iptables-restore --noflush input.
    fn restore(&mut self, input: &str) -> Result<(), ExecError>;
    /// Our chains present in `table`.
    fn our_chains(&mut self, table: Table) -> Result<BTreeSet<ChainRef>, ExecError>;
    /// Whether `chain` exists.
    fn chain_exists(&mut self, chain: &ChainRef) -> bool;
    /// Makes sure the jump rules from built-in chains exist, in order.
    fn ensure_jumps(&mut self, jumps: &[(ChainRef, String)]) -> Result<(), ExecError>;
    /// Deletes UDP conntrack entries matching the arguments (`conntrack -D ...`).
    fn delete_conntrack(&mut self, args: &[String]);
}

/// The real system: iptables tools of one backend.
pub struct SystemIptables {
    /// Backend in use.
    pub backend: IptablesBackend,
}

impl IptablesSystem for SystemIptables {
    fn restore(&mut self, input: &str) -> Result<(), ExecError> {
        exec::restore(self.backend, input)
    }

    fn our_chains(&mut self, table: Table) -> Result<BTreeSet<ChainRef>, ExecError> {
        exec::our_chains(self.backend, table)
    }

    fn chain_exists(&mut self, chain: &ChainRef) -> bool {
        exec::chain_exists(self.backend, chain)
    }

    fn ensure_jumps(&mut self, jumps: &[(ChainRef, String)]) -> Result<(), ExecError> {
        // Position within each built-in chain: our jumps go first, in the given order, like
        // upstream's `-I` (other tools appending after us do not bypass services).
        let mut position: BTreeMap<&ChainRef, usize> = BTreeMap::new();
        for (chain, rule) in jumps {
            let args = shlex::split(rule).unwrap_or_default();
            let pos = position.entry(chain).or_insert(0);
            *pos += 1;
            if !exec::rule_exists(self.backend, chain, &args) {
                exec::insert_rule(self.backend, chain, *pos, &args)?;
            }
        }
        Ok(())
    }

    fn delete_conntrack(&mut self, args: &[String]) {
        // Exit status 1 means "nothing matched"; a missing tool only costs the UDP cleanup.
        if let Err(e) = std::process::Command::new("conntrack")
            .arg("-D")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
        {
            tracing::warn!(error = %e, "cannot run conntrack; stale UDP flows are not cleared");
        }
    }
}

/// What was written for one service port.
struct Written {
    port: ServicePort,
    rules: PortRules,
}

/// iptables mode.
pub struct IptablesDataplane {
    system: Box<dyn IptablesSystem>,
    strategy: Strategy,
    config: RuleConfig,
    base: BaseRules,
    written: BTreeMap<ServicePortKey, Written>,
    needs_full: bool,
    last_full: Option<Instant>,
    /// Every restore input, kept only when recording (tests assert on them).
    recorded: Option<Vec<String>>,
}

impl IptablesDataplane {
    /// A dataplane writing through `system` with `strategy`.
    pub fn new(system: Box<dyn IptablesSystem>, strategy: Strategy, config: RuleConfig) -> Self {
        let base = base_rules(&config);
        Self {
            system,
            strategy,
            config,
            base,
            written: BTreeMap::new(),
            needs_full: true,
            last_full: None,
            recorded: None,
        }
    }

    /// Keeps every restore input from now on, for [`IptablesDataplane::take_recorded`].
    pub fn record(&mut self) {
        self.recorded = Some(Vec::new());
    }

    /// The restore inputs since the last call.
    pub fn take_recorded(&mut self) -> Vec<String> {
        self.recorded
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn restore(&mut self, input: &str) -> Result<(), ExecError> {
        if let Some(rec) = &mut self.recorded {
            rec.push(input.to_owned());
        }
        self.system.restore(input)
    }

    fn full(&mut self, state: &DesiredState) -> SyncReport {
        let mut report = SyncReport {
            full: true,
            ..SyncReport::default()
        };
        let ports: BTreeMap<&ServicePortKey, PortRules> = state
            .ports
            .iter()
            .map(|(key, port)| (key, port_rules(port, &self.config)))
            .collect();
        let mut existing = BTreeSet::new();
        for table in TABLES {
            match self.system.our_chains(table) {
                Ok(chains) => existing.extend(chains),
                Err(e) => {
                    report.failure = Some(format!("listing chains: {e}"));
                    return report;
                }
            }
        }
        let inputs = restore::full_sync(&self.base, &ports, &existing, self.strategy);
        for input in &inputs {
            if let Err(e) = self.restore(input) {
                report.failure = Some(e.to_string());
                self.needs_full = true;
                return report;
            }
        }
        // Jumps last: by now every chain they point at exists and is filled.
        if let Err(e) = self.system.ensure_jumps(&self.base.jumps) {
            report.failure = Some(e.to_string());
            self.needs_full = true;
            return report;
        }
        self.flush_stale_udp(state);
        report.ports_written = ports.len();
        report.restores = inputs.len();
        self.written = ports
            .into_iter()
            .filter_map(|(key, rules)| {
                let port = state.ports.get(key)?.clone();
                Some((key.clone(), Written { port, rules }))
            })
            .collect();
        self.needs_full = false;
        self.last_full = Some(Instant::now());
        report
    }

    fn partial(&mut self, state: &DesiredState, diff: &StateDiff) -> SyncReport {
        let keys: Vec<&ServicePortKey> = diff
            .removed
            .iter()
            .chain(&diff.changed)
            .chain(&diff.added)
            .collect();
        let new_rules: BTreeMap<&ServicePortKey, PortRules> = keys
            .iter()
            .filter_map(|k| {
                state
                    .ports
                    .get(*k)
                    .map(|p| (*k, port_rules(p, &self.config)))
            })
            .collect();
        let input = restore::partial_sync(
            keys.iter()
                .map(|k| (self.written.get(*k).map(|w| &w.rules), new_rules.get(*k))),
        );
        if let Err(e) = self.restore(&input) {
            // Our idea of the kernel's state is wrong (e.g. a rule deleted by hand): rewrite all.
            tracing::warn!(error = %e, "partial sync failed; falling back to a full sync");
            self.needs_full = true;
            let mut report = self.full(state);
            report.restore_failures += 1;
            return report;
        }
        self.flush_stale_udp_of(state, &keys);
        for key in &keys {
            match (state.ports.get(*key), new_rules.get(*key)) {
                (Some(port), Some(rules)) => {
                    self.written.insert(
                        (*key).clone(),
                        Written {
                            port: port.clone(),
                            rules: rules.clone(),
                        },
                    );
                }
                _ => {
                    self.written.remove(*key);
                }
            }
        }
        SyncReport {
            ports_written: keys.len(),
            restores: 1,
            ..SyncReport::default()
        }
    }

    fn flush_stale_udp(&mut self, state: &DesiredState) {
        let keys: Vec<&ServicePortKey> = state.ports.keys().collect();
        self.flush_stale_udp_of(state, &keys);
    }

    /// UDP has no connection end: a conntrack entry pointing at a gone endpoint (or cached
    /// while the service had none) black-holes the flow until it expires, so delete them.
    fn flush_stale_udp_of(&mut self, state: &DesiredState, keys: &[&ServicePortKey]) {
        for key in keys {
            if key.protocol != Protocol::Udp {
                continue;
            }
            let old = self.written.get(*key).map(|w| &w.port);
            let new = state.ports.get(*key);
            for args in stale_udp_flows(old, new) {
                self.system.delete_conntrack(&args);
            }
        }
    }
}

/// `conntrack -D` arguments for the UDP flows a change leaves stale.
fn stale_udp_flows(old: Option<&ServicePort>, new: Option<&ServicePort>) -> Vec<Vec<String>> {
    let serving = |p: Option<&ServicePort>| -> BTreeSet<IpAddr> {
        p.map(|p| p.cluster_endpoints().into_iter().map(|e| e.ip).collect())
            .unwrap_or_default()
    };
    let (before, after) = (serving(old), serving(new));
    let mut flows = Vec::new();
    let frontends: Vec<(IpAddr, u16)> = old
        .into_iter()
        .chain(new)
        .flat_map(|p| p.frontends.iter().map(|f| (f.ip, f.port)))
        .filter(|(ip, _)| ip.is_ipv4())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for (ip, port) in frontends {
        let base = vec![
            "-p".to_owned(),
            "udp".to_owned(),
            "--orig-dst".to_owned(),
            ip.to_string(),
            "--dport".to_owned(),
            port.to_string(),
        ];
        if before.is_empty() && !after.is_empty() {
            // Flows that hit REJECT while there were no endpoints.
            flows.push(base.clone());
        }
        for gone in before.difference(&after).filter(|ip| ip.is_ipv4()) {
            let mut args = base.clone();
            args.extend(["--dst-nat".to_owned(), gone.to_string()]);
            flows.push(args);
        }
    }
    flows
}

impl Dataplane for IptablesDataplane {
    fn apply(&mut self, state: &DesiredState, diff: &StateDiff) -> SyncReport {
        if self.needs_full {
            return self.full(state);
        }
        self.partial(state, diff)
    }

    fn full_sync(&mut self, state: &DesiredState) -> SyncReport {
        let canary = ChainRef::new(Table::Mangle, CANARY);
        let flushed = !self.system.chain_exists(&canary);
        let hourly = self
            .last_full
            .is_none_or(|t| t.elapsed() >= FULL_SYNC_INTERVAL);
        if flushed && !self.needs_full {
            tracing::warn!("canary chain gone: iptables were flushed behind our back; rewriting");
        }
        if self.needs_full || flushed || hourly {
            return self.full(state);
        }
        SyncReport::default()
    }
}
