//! The iptables dataplane: full syncs when the controller asks (start, failures, hourly) and
//! when someone flushed our chains (canary gone); partial syncs of only the changed service
//! ports otherwise. After every sync the conntrack reconciler deletes stale UDP entries.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::backend::{IptablesBackend, Tools};
use super::chains::CANARY;
use super::exec::{self, ExecError};
use super::restore::{self, Piece, Strategy};
use super::rule_set::{
    add_counts, BaseRules, ChainRef, Family, PortRules, RuleArgs, RuleConfig, RuleCounts, Table,
};
use super::rules;
use crate::conntrack::Reconciler;
use crate::dataplane::{Dataplane, SyncError, SyncKind, SyncReport};
pub use crate::metrics::IptablesMetrics;
use crate::model::iptables::sctp_fallback;
use crate::model::{DesiredState, ServicePort, ServicePortKey, StateDiff};

/// The tables we own chains in.
pub const TABLES: [Table; 3] = [Table::Mangle, Table::Nat, Table::Filter];

/// Which rules a dataplane writes, under which chain names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RuleFlavor {
    /// iptables mode: every port, `SWY-*` chains.
    #[default]
    Iptables,
    /// ebpf mode's SCTP fallback: SCTP ports only, `SWYSCTP-*` chains, SCTP-only jumps
    /// (see [`sctp_fallback`]).
    SctpFallback,
}

impl RuleFlavor {
    /// Whether `chain` is one this flavor writes (and a full sync may delete).
    pub fn is_ours(self, chain: &str) -> bool {
        match self {
            RuleFlavor::Iptables => super::chains::is_ours(chain),
            RuleFlavor::SctpFallback => sctp_fallback::is_ours(chain),
        }
    }

    fn base_rules(self, config: &RuleConfig) -> BaseRules {
        match self {
            RuleFlavor::Iptables => rules::base_rules(config),
            RuleFlavor::SctpFallback => sctp_fallback::base_rules(config),
        }
    }

    fn port_rules(self, port: &ServicePort, config: &RuleConfig) -> PortRules {
        match self {
            RuleFlavor::Iptables => rules::port_rules(port, config),
            RuleFlavor::SctpFallback => sctp_fallback::port_rules(port, config),
        }
    }

    /// The canary chain whose disappearance shows a flush.
    fn canary(self) -> ChainRef {
        match self {
            RuleFlavor::Iptables => ChainRef::new(Table::Mangle, CANARY),
            RuleFlavor::SctpFallback => {
                ChainRef::new(Table::Mangle, sctp_fallback::fallback_name(CANARY))
            }
        }
    }
}

/// One iptables-restore --noflush run being fed its input.
pub trait RestoreInput: Send {
    /// Hands the tool more input.
    fn write(&mut self, text: &str) -> Result<(), ExecError>;
    /// Ends the input and waits for the tool's verdict.
    fn finish(self: Box<Self>) -> Result<(), ExecError>;
}

impl RestoreInput for exec::RestoreRun {
    fn write(&mut self, text: &str) -> Result<(), ExecError> {
        exec::RestoreRun::write(self, text)
    }

    fn finish(self: Box<Self>) -> Result<(), ExecError> {
        exec::RestoreRun::finish(*self)
    }
}

/// What the dataplane needs from the system; faked in unit tests.
pub trait IptablesSystem: Send {
    /// Starts one iptables-restore --noflush run, for input written while it runs.
    fn start_restore(&mut self) -> Result<Box<dyn RestoreInput>, ExecError>;
    /// Our chains present in `table`.
    fn our_chains(&mut self, table: Table) -> Result<BTreeSet<ChainRef>, ExecError>;
    /// Whether `chain` exists.
    fn chain_exists(&mut self, chain: &ChainRef) -> bool;
    /// Makes sure the jump rules from built-in chains exist, in order.
    fn ensure_jumps(&mut self, jumps: &[(ChainRef, RuleArgs)]) -> Result<(), ExecError>;
    /// Restore lines (table, line) that put the jumps in place, read from the kernel now, for
    /// a full sync to end its last transaction with; `None` when the backend checks the jumps
    /// with [`IptablesSystem::ensure_jumps`] after the sync instead.
    fn jump_lines(
        &mut self,
        _jumps: &[(ChainRef, RuleArgs)],
    ) -> Result<Option<Vec<(Table, String)>>, ExecError> {
        Ok(None)
    }
    /// Removes all our chains and the jumps into them; returns how many chains went.
    fn remove_all(&mut self) -> Result<usize, super::cleanup::CleanupError>;
}

/// The real system: iptables tools of one backend, for one IP family.
pub struct SystemIptables {
    /// Backend in use.
    pub backend: IptablesBackend,
    /// `iptables` or `ip6tables`.
    pub family: Family,
    /// Whose chains it lists and removes.
    pub flavor: RuleFlavor,
}

impl SystemIptables {
    /// `backend`'s IPv4 tools (`iptables-*`), for iptables mode's chains.
    pub fn ipv4(backend: IptablesBackend) -> Self {
        Self::new(backend, Family::Ipv4)
    }

    /// `backend`'s tools for `family`, for iptables mode's chains.
    pub fn new(backend: IptablesBackend, family: Family) -> Self {
        Self {
            backend,
            family,
            flavor: RuleFlavor::Iptables,
        }
    }

    fn tools(&self) -> Tools {
        Tools::new(self.backend, self.family)
    }
}

impl IptablesSystem for SystemIptables {
    fn remove_all(&mut self) -> Result<usize, super::cleanup::CleanupError> {
        let flavor = self.flavor;
        super::cleanup::remove_chains_where(self.tools(), |_, chain| flavor.is_ours(chain))
    }

    fn start_restore(&mut self) -> Result<Box<dyn RestoreInput>, ExecError> {
        Ok(Box::new(exec::RestoreRun::start(self.tools())?))
    }

    fn our_chains(&mut self, table: Table) -> Result<BTreeSet<ChainRef>, ExecError> {
        let flavor = self.flavor;
        exec::chains_where(self.tools(), table, |chain| flavor.is_ours(chain))
    }

    fn chain_exists(&mut self, chain: &ChainRef) -> bool {
        exec::chain_exists(self.tools(), chain)
    }

    fn jump_lines(
        &mut self,
        jumps: &[(ChainRef, RuleArgs)],
    ) -> Result<Option<Vec<(Table, String)>>, ExecError> {
        // iptables-legacy rewrites the whole table for every restore (seconds at 10,000
        // services): the jump fix rides in the full sync's last transaction instead of a
        // save and a restore of its own after it.
        if self.backend != IptablesBackend::Legacy {
            return Ok(None);
        }
        self.legacy_jump_lines(&jumps_by_chain(jumps)).map(Some)
    }

    fn ensure_jumps(&mut self, jumps: &[(ChainRef, RuleArgs)]) -> Result<(), ExecError> {
        // Our jumps go first in each built-in chain, in the given order, like upstream's `-I`
        // (rules other tools append cannot bypass services). When one is missing, ours are
        // removed and re-inserted in order, since positions past the chain's end are refused.
        let by_chain = jumps_by_chain(jumps);
        if self.backend == IptablesBackend::Legacy {
            return self.ensure_jumps_legacy(&by_chain);
        }
        // iptables-nft: one cheap check per rule (nft reads only what it is asked for).
        let tools = self.tools();
        for (chain, rules) in by_chain {
            if rules.iter().all(|r| exec::rule_exists(tools, chain, r)) {
                continue;
            }
            for rule in &rules {
                while exec::rule_exists(tools, chain, rule) {
                    exec::delete_rule(tools, chain, rule)?;
                }
            }
            for rule in rules.iter().rev() {
                exec::insert_rule(tools, chain, 1, rule)?;
            }
        }
        Ok(())
    }
}

impl SystemIptables {
    /// iptables-legacy reads and rewrites the whole table for every command (about a second
    /// each at 10,000 services), so the jumps are read with one iptables-save per table and
    /// fixed with one restore: `-D` of ours that are there, then `-I 1` of all in reverse.
    /// Rules are compared as sets of arguments, since iptables-save may print matches in
    /// another order than we wrote them.
    fn ensure_jumps_legacy(
        &mut self,
        by_chain: &BTreeMap<&ChainRef, Vec<&[String]>>,
    ) -> Result<(), ExecError> {
        let lines = self.legacy_jump_lines(by_chain)?;
        let tables: BTreeSet<Table> = lines.iter().map(|(t, _)| *t).collect();
        let mut input = String::new();
        for table in tables {
            input.push_str(&format!("*{}\n", table.as_str()));
            for (_, line) in lines.iter().filter(|(t, _)| *t == table) {
                input.push_str(line);
                input.push('\n');
            }
            input.push_str("COMMIT\n");
        }
        if input.is_empty() {
            return Ok(());
        }
        exec::restore(self.tools(), &input)
    }

    /// The `-D`/`-I` lines that fix the jumps, from one iptables-save per table.
    fn legacy_jump_lines(
        &mut self,
        by_chain: &BTreeMap<&ChainRef, Vec<&[String]>>,
    ) -> Result<Vec<(Table, String)>, ExecError> {
        let tables: BTreeSet<Table> = by_chain.keys().map(|c| c.table).collect();
        let mut lines = Vec::new();
        for table in tables {
            let chains: Vec<&str> = by_chain
                .keys()
                .filter(|c| c.table == table)
                .map(|c| c.chain.as_str())
                .collect();
            let listed = exec::saved_rules(self.tools(), table, &chains)?;
            for (chain, rules) in by_chain.iter().filter(|(c, _)| c.table == table) {
                lines.extend(
                    jump_fix(&listed, &chain.chain, rules)
                        .into_iter()
                        .map(|line| (table, line)),
                );
            }
        }
        Ok(lines)
    }
}

/// The jump rules grouped by built-in chain, in order.
fn jumps_by_chain(jumps: &[(ChainRef, RuleArgs)]) -> BTreeMap<&ChainRef, Vec<&[String]>> {
    let mut by_chain: BTreeMap<&ChainRef, Vec<&[String]>> = BTreeMap::new();
    for (chain, rule) in jumps {
        by_chain.entry(chain).or_default().push(&rule.0);
    }
    by_chain
}

/// Restore lines that make our `rules` the first rules of built-in `chain`, in order, given
/// what iptables-save listed (`chain`, arguments); none when they already are.
fn jump_fix(listed: &[(String, Vec<String>)], chain: &str, rules: &[&[String]]) -> Vec<String> {
    let sorted = |args: &[String]| {
        let mut args = args.to_vec();
        args.sort();
        args
    };
    let ours: BTreeSet<Vec<String>> = rules.iter().map(|r| sorted(r)).collect();
    let in_chain: Vec<&Vec<String>> = listed
        .iter()
        .filter(|(c, _)| c == chain)
        .map(|(_, args)| args)
        .collect();
    let in_order = in_chain.len() >= rules.len()
        && in_chain
            .iter()
            .zip(rules)
            .all(|(listed, rule)| sorted(listed) == sorted(rule));
    let present: Vec<&&Vec<String>> = in_chain
        .iter()
        .filter(|args| ours.contains(&sorted(args)))
        .collect();
    if in_order && present.len() == rules.len() {
        return Vec::new();
    }
    let mut lines: Vec<String> = present
        .iter()
        .map(|args| format!("-D {chain} {}", RuleArgs((**args).clone()).render()))
        .collect();
    lines.extend(
        rules
            .iter()
            .rev()
            .map(|rule| format!("-I {chain} 1 {}", RuleArgs(rule.to_vec()).render())),
    );
    lines
}

/// What a later partial sync needs of one written service port: the names of its own
/// chains (to delete those it no longer has) and its rules in shared chains (to delete them
/// one by one); not the rules inside its chains, which a rewrite declares afresh.
struct Written {
    rules: PortRules,
    /// Its rules per table, for the rule count metrics.
    counts: RuleCounts,
}

impl Written {
    fn new(rules: &PortRules) -> Self {
        Self {
            rules: rules.skeleton(),
            counts: rules.rule_counts(),
        }
    }
}

/// The restores of one sync, one at a time, with their metrics and recording: an input's
/// run starts with its first text and ends with [`Restoring::end`].
struct Restoring<'a> {
    system: &'a mut dyn IptablesSystem,
    metrics: &'a IptablesMetrics,
    recorded: &'a mut Option<Vec<String>>,
    /// The run being fed, and when it started.
    current: Option<(Box<dyn RestoreInput>, std::time::Instant)>,
}

impl<'a> Restoring<'a> {
    /// The restores of `dataplane`, borrowing only the fields they use.
    fn of(
        system: &'a mut Box<dyn IptablesSystem>,
        metrics: &'a IptablesMetrics,
        recorded: &'a mut Option<Vec<String>>,
    ) -> Self {
        Self {
            system: system.as_mut(),
            metrics,
            recorded,
            current: None,
        }
    }

    fn write(&mut self, text: &str) -> Result<(), ExecError> {
        let run = match &mut self.current {
            Some((run, _)) => run,
            None => {
                if let Some(rec) = self.recorded {
                    rec.push(String::new());
                }
                self.metrics.restores.inc();
                let started = std::time::Instant::now();
                let run = self.system.start_restore().inspect_err(|_| self.failed())?;
                &mut self.current.insert((run, started)).0
            }
        };
        if let Some(rec) = self.recorded.as_mut().and_then(|r| r.last_mut()) {
            rec.push_str(text);
        }
        let result = run.write(text);
        if result.is_err() {
            // The run is over; its error says why.
            self.current = None;
            self.failed();
        }
        result
    }

    /// Ends the current input (none yet: nothing to run).
    fn end(&mut self) -> Result<(), ExecError> {
        let Some((run, started)) = self.current.take() else {
            return Ok(());
        };
        let result = run.finish();
        self.metrics
            .restore_duration
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.failed();
        }
        result
    }

    fn failed(&self) {
        self.metrics.restore_failures.inc();
    }
}

/// iptables mode.
pub struct IptablesDataplane {
    system: Box<dyn IptablesSystem>,
    flavor: RuleFlavor,
    strategy: Strategy,
    config: RuleConfig,
    base: BaseRules,
    written: BTreeMap<ServicePortKey, Written>,
    needs_full: bool,
    metrics: IptablesMetrics,
    /// Deletes stale UDP conntrack entries after each sync; none in tests that have no
    /// namespace of their own.
    conntrack: Option<Reconciler>,
    /// Every restore input, kept only when recording (tests assert on them).
    recorded: Option<Vec<String>>,
}

impl IptablesDataplane {
    /// A dataplane writing through `system` with `strategy`.
    pub fn new(system: Box<dyn IptablesSystem>, strategy: Strategy, config: RuleConfig) -> Self {
        let flavor = RuleFlavor::Iptables;
        let base = flavor.base_rules(&config);
        Self {
            system,
            flavor,
            strategy,
            config,
            base,
            written: BTreeMap::new(),
            needs_full: true,
            metrics: IptablesMetrics::default(),
            conntrack: None,
            recorded: None,
        }
    }

    /// Writes `flavor`'s rules instead of iptables mode's (`system` must list and remove
    /// that flavor's chains).
    pub fn with_flavor(mut self, flavor: RuleFlavor) -> Self {
        self.flavor = flavor;
        self.base = flavor.base_rules(&self.config);
        self
    }

    /// Reconciles the conntrack table through `reconciler` after every sync.
    pub fn with_conntrack(mut self, reconciler: Reconciler) -> Self {
        self.conntrack = Some(reconciler);
        self
    }

    /// Counts into `metrics` from now on.
    pub fn with_metrics(mut self, metrics: IptablesMetrics) -> Self {
        self.metrics = metrics;
        self
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
        let mut restoring = Restoring::of(&mut self.system, &self.metrics, &mut self.recorded);
        restoring.write(input)?;
        restoring.end()
    }

    fn full(&mut self, state: &DesiredState) -> Result<SyncReport, SyncError> {
        // Until this succeeds, our idea of the kernel's state is unknown.
        self.needs_full = true;
        let mut existing = BTreeSet::new();
        for table in TABLES {
            let chains = self
                .system
                .our_chains(table)
                .map_err(|e| SyncError::new("listing our chains", e))?;
            existing.extend(chains);
        }
        let jump_lines = self
            .system
            .jump_lines(&self.base.jumps)
            .map_err(|e| SyncError::new("reading the jumps from built-in chains", e))?;
        // Each port's rules are rendered as they are generated and then reduced to what a
        // partial sync needs: the rules of 10,000 ports never exist twice.
        let (config, flavor) = (&self.config, self.flavor);
        let ports = state
            .ports
            .iter()
            .map(|(key, port)| (key, flavor.port_rules(port, config)));
        let mut written: BTreeMap<ServicePortKey, Written> = BTreeMap::new();
        // Each input goes to its iptables-restore as it is rendered (see `restore::Last`).
        let mut restoring = Restoring::of(&mut self.system, &self.metrics, &mut self.recorded);
        restore::full_sync(
            &self.base,
            ports,
            &existing,
            self.strategy,
            jump_lines.as_deref().unwrap_or_default(),
            |key, rules| drop(written.insert(key.clone(), Written::new(&rules))),
            |piece| match piece {
                Piece::Text(text) => restoring.write(text),
                Piece::End => restoring.end(),
            },
        )
        .map_err(|e| SyncError::new("full sync", e))?;
        let ports_written = written.len();
        // Jumps last (unless they were in the last transaction): by now every chain they point
        // at exists and is filled.
        if jump_lines.is_none() {
            self.system
                .ensure_jumps(&self.base.jumps)
                .map_err(|e| SyncError::new("inserting the jumps from built-in chains", e))?;
        }
        let report = SyncReport {
            full: true,
            ports_written,
            ..SyncReport::default()
        };
        self.written = written;
        self.needs_full = false;
        let total = self.rule_counts();
        self.metrics.set_rule_counts(&total, &total);
        Ok(report)
    }

    /// The rules we own now, per table.
    fn rule_counts(&self) -> RuleCounts {
        let mut counts = self.base.rule_counts();
        for written in self.written.values() {
            add_counts(&mut counts, &written.counts);
        }
        counts
    }

    fn partial(&mut self, state: &DesiredState, diff: &StateDiff) -> Result<SyncReport, SyncError> {
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
                    .map(|p| (*k, self.flavor.port_rules(p, &self.config)))
            })
            .collect();
        let input = restore::partial_sync(
            keys.iter()
                .map(|k| (self.written.get(*k).map(|w| &w.rules), new_rules.get(*k))),
        );
        // Changes of ports this family has no rules for (an IPv4-only service, in ip6tables)
        // leave nothing to write: no restore at all.
        let result = if input.is_empty() {
            Ok(())
        } else {
            self.restore(&input)
        };
        if let Err(e) = result {
            // Our idea of the kernel's state is wrong (e.g. a rule deleted by hand): rewrite all.
            tracing::warn!(error = %e, "partial sync failed; falling back to a full sync");
            self.metrics.partial_restore_failures.inc();
            return self.full(state);
        }
        for key in &keys {
            match new_rules.get(*key) {
                Some(rules) => {
                    self.written.insert((*key).clone(), Written::new(rules));
                }
                None => {
                    self.written.remove(*key);
                }
            }
        }
        self.metrics
            .set_rule_counts(&self.rule_counts(), &restore::written_rules(&input));
        Ok(SyncReport {
            ports_written: keys.len(),
            ..SyncReport::default()
        })
    }

    /// The rules part of a sync.
    fn sync_rules(
        &mut self,
        kind: SyncKind,
        state: &DesiredState,
        diff: &StateDiff,
    ) -> Result<SyncReport, SyncError> {
        if kind == SyncKind::Full || self.needs_full {
            return self.full(state);
        }
        if kind == SyncKind::Verify {
            // One cheap check per resync; a flush behind our back removes the canary too.
            // Drift it cannot see (one rule deleted by hand) waits for the hourly full sync.
            let canary = self.flavor.canary();
            if !self.system.chain_exists(&canary) {
                tracing::warn!(
                    "canary chain gone: iptables were flushed behind our back; rewriting"
                );
                let mut report = self.full(state)?;
                report.repaired = Some(format!("chain {} missing", canary.chain));
                return Ok(report);
            }
        }
        if diff.is_empty() {
            return Ok(SyncReport::default());
        }
        self.partial(state, diff)
    }
}

impl Dataplane for IptablesDataplane {
    fn sync(
        &mut self,
        kind: SyncKind,
        state: &DesiredState,
        diff: &StateDiff,
    ) -> Result<SyncReport, SyncError> {
        let report = self.sync_rules(kind, state, diff)?;
        // Every sync, as upstream: entries created while a change was on its way (DNATed by
        // the old rules after the listing) are caught by the next one.
        if let Some(conntrack) = &mut self.conntrack {
            conntrack.reconcile(state);
        }
        Ok(report)
    }

    fn node_addresses(&mut self, addresses: &[IpAddr]) {
        let node_ips: Vec<IpAddr> = addresses
            .iter()
            .copied()
            .filter(|ip| !ip.is_loopback())
            .collect();
        if node_ips != self.config.node_ips {
            // Firewall chains admit the node's own addresses: every port's rules may change.
            tracing::info!(?node_ips, "node addresses changed; rewriting the rules");
            self.config.node_ips = node_ips;
            self.base = self.flavor.base_rules(&self.config);
            self.needs_full = true;
        }
    }

    fn cleanup(&mut self) -> Result<(), SyncError> {
        self.system
            .remove_all()
            .map(drop)
            .map_err(|e| SyncError::new("removing our chains", e))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::model::{compute_desired_state, ClusterObjects, NodeContext};

    /// Pretends to be the kernel: remembers nothing, fails restores on request.
    #[derive(Clone, Default)]
    struct Fake {
        fail_restores: Arc<Mutex<usize>>,
        canary: Arc<Mutex<bool>>,
        /// Jump lines to fold into the full sync (legacy), and how often ensure_jumps ran.
        jump_lines: Option<Vec<(Table, String)>>,
        ensured: Arc<Mutex<usize>>,
    }

    /// A run of the fake: takes any input, then fails or succeeds as asked.
    impl RestoreInput for Fake {
        fn write(&mut self, _text: &str) -> Result<(), ExecError> {
            Ok(())
        }
        fn finish(self: Box<Self>) -> Result<(), ExecError> {
            let mut fail = self.fail_restores.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                return Err(ExecError::Parse {
                    program: "fake".into(),
                    message: "line 3 failed".into(),
                });
            }
            *self.canary.lock().unwrap() = true;
            Ok(())
        }
    }

    impl IptablesSystem for Fake {
        fn start_restore(&mut self) -> Result<Box<dyn RestoreInput>, ExecError> {
            Ok(Box::new(self.clone()))
        }
        fn our_chains(&mut self, _table: Table) -> Result<BTreeSet<ChainRef>, ExecError> {
            Ok(BTreeSet::new())
        }
        fn chain_exists(&mut self, _chain: &ChainRef) -> bool {
            *self.canary.lock().unwrap()
        }
        fn ensure_jumps(&mut self, _jumps: &[(ChainRef, RuleArgs)]) -> Result<(), ExecError> {
            *self.ensured.lock().unwrap() += 1;
            Ok(())
        }
        fn jump_lines(
            &mut self,
            _jumps: &[(ChainRef, RuleArgs)],
        ) -> Result<Option<Vec<(Table, String)>>, ExecError> {
            Ok(self.jump_lines.clone())
        }
        fn remove_all(&mut self) -> Result<usize, crate::iptables::cleanup::CleanupError> {
            Ok(0)
        }
    }

    #[test]
    fn legacy_jump_fixes_ride_in_the_full_syncs_transaction() {
        let line = "-I PREROUTING 1 -j SWY-SERVICES".to_owned();
        let fake = Fake {
            jump_lines: Some(vec![(Table::Nat, line.clone())]),
            ..Fake::default()
        };
        let mut dp = dataplane(Strategy::Single, &fake);
        let state = state(&objects(3));
        dp.sync(SyncKind::Full, &state, &StateDiff::default())
            .unwrap();
        let inputs = dp.take_recorded();
        assert_eq!(inputs.len(), 1, "one transaction, jumps included");
        let nat = inputs[0].split("*nat\n").nth(1).unwrap_or_default();
        assert!(nat.contains(&format!("{line}\nCOMMIT")), "{nat}");
        assert_eq!(
            *fake.ensured.lock().unwrap(),
            0,
            "no save and restore after it"
        );

        // nft (no jump lines): the jumps are checked after the sync.
        let fake = Fake::default();
        let mut dp = dataplane(Strategy::Single, &fake);
        dp.sync(SyncKind::Full, &state, &StateDiff::default())
            .unwrap();
        assert_eq!(*fake.ensured.lock().unwrap(), 1);
    }

    /// `count` services `svc-N`, each with a ClusterIP and two endpoints.
    fn objects(count: usize) -> ClusterObjects {
        let mut objects = ClusterObjects::default();
        for i in 0..count {
            let name = format!("svc-{i}");
            let ip = format!("198.18.{}.{}", 128 + i / 250, 1 + i % 250);
            let service = serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "scale"},
                "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}
            });
            let slice = serde_json::json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-1"), "namespace": "scale",
                             "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": [{"addresses": [format!("198.19.1.{}", 1 + i % 250)]},
                              {"addresses": [format!("198.19.2.{}", 1 + i % 250)]}]
            });
            objects.insert_service(serde_json::from_value(service).unwrap());
            objects.insert_slice(serde_json::from_value(slice).unwrap());
        }
        objects
    }

    fn state(objects: &ClusterObjects) -> DesiredState {
        let computed = compute_desired_state(objects, &NodeContext::new("node1"));
        assert!(computed.warnings.is_empty(), "{:?}", computed.warnings);
        computed.state
    }

    fn dataplane(strategy: Strategy, fake: &Fake) -> IptablesDataplane {
        let mut dp = IptablesDataplane::new(
            Box::new(fake.clone()),
            strategy,
            RuleConfig {
                cluster_cidrs: vec!["198.19.0.0/16".parse().unwrap()],
                ..RuleConfig::default()
            },
        );
        dp.record();
        dp
    }

    /// Chain names of ours that appear anywhere in a restore input.
    fn chains_in(input: &str) -> BTreeSet<String> {
        input
            .split(|c: char| c.is_whitespace() || c == ':')
            .filter(|w| super::super::chains::is_ours(w))
            .map(str::to_owned)
            .collect()
    }

    /// The shared chains every port's rules go into.
    fn shared_chains() -> BTreeSet<String> {
        rules::base_rules(&RuleConfig::default())
            .chains
            .keys()
            .map(|c| c.chain.clone())
            .collect()
    }

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn legacy_jumps_are_left_alone_when_first_and_in_order_however_save_orders_matches() {
        let a = args("-m comment --comment x -j SWY-SERVICES");
        let b = args("-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j SWY-NODEPORTS");
        // iptables-save prints the address match first.
        let listed = vec![
            ("PREROUTING".to_owned(), a.clone()),
            (
                "PREROUTING".to_owned(),
                args("! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j SWY-NODEPORTS"),
            ),
            ("PREROUTING".to_owned(), args("-j OTHER-TOOL")),
        ];
        assert!(jump_fix(&listed, "PREROUTING", &[&a, &b]).is_empty());
    }

    #[test]
    fn legacy_jumps_missing_or_out_of_place_are_deleted_and_inserted_in_order() {
        let a = args("-j SWY-SERVICES");
        let b = args("-j SWY-NODEPORTS");
        // One missing: the present one goes, both are inserted, first rule first.
        let listed = vec![("OUTPUT".to_owned(), b.clone())];
        assert_eq!(
            jump_fix(&listed, "OUTPUT", &[&a, &b]),
            [
                "-D OUTPUT -j SWY-NODEPORTS",
                "-I OUTPUT 1 -j SWY-NODEPORTS",
                "-I OUTPUT 1 -j SWY-SERVICES"
            ]
        );
        // Both there but behind another tool's rule: moved to the front.
        let listed = vec![
            ("OUTPUT".to_owned(), args("-j OTHER-TOOL")),
            ("OUTPUT".to_owned(), a.clone()),
            ("OUTPUT".to_owned(), b.clone()),
        ];
        let fix = jump_fix(&listed, "OUTPUT", &[&a, &b]);
        assert_eq!(fix.len(), 4, "{fix:?}");
        assert!(
            fix[0].starts_with("-D ") && fix[3] == "-I OUTPUT 1 -j SWY-SERVICES",
            "{fix:?}"
        );
        // Another chain's rules do not count.
        let listed = vec![("INPUT".to_owned(), a.clone())];
        assert_eq!(
            jump_fix(&listed, "OUTPUT", &[&a]),
            ["-I OUTPUT 1 -j SWY-SERVICES"]
        );
    }

    #[test]
    fn a_partial_sync_of_one_service_among_1000_touches_only_its_chains() {
        let fake = Fake::default();
        let mut dp = dataplane(Strategy::Single, &fake);
        let mut objects = objects(1000);
        let before = state(&objects);
        let report = dp
            .sync(SyncKind::Full, &before, &StateDiff::default())
            .unwrap();
        assert!(report.full, "{report:?}");
        let full = dp.take_recorded();
        assert_eq!(full.len(), 1);
        assert_eq!(full[0].matches(":SWY-SVC-").count(), 1000);

        // svc-500 gets a third endpoint.
        let key = crate::model::ObjectKey::new("scale", "svc-500-1");
        let mut slice = (*objects.endpoint_slices[&key]).clone();
        slice.endpoints.push(
            serde_json::from_value(serde_json::json!({"addresses": ["198.19.3.9"]})).unwrap(),
        );
        objects.insert_slice(slice);
        let after = state(&objects);
        let diff = StateDiff::between(&before, &after);
        assert_eq!(diff.changed.len(), 1);
        let report = dp.sync(SyncKind::Partial, &after, &diff).unwrap();
        assert!(!report.full, "{report:?}");
        let inputs = dp.take_recorded();
        assert_eq!(inputs.len(), 1, "one restore");
        let input = &inputs[0];

        let port = &after.ports[&diff.changed[0]];
        let old_port = &before.ports[&diff.changed[0]];
        let config = RuleConfig {
            cluster_cidrs: vec!["198.19.0.0/16".parse().unwrap()],
            ..RuleConfig::default()
        };
        let own: BTreeSet<String> = rules::port_rules(port, &config)
            .chains
            .keys()
            .chain(rules::port_rules(old_port, &config).chains.keys())
            .map(|c| c.chain.clone())
            .collect();
        let shared = shared_chains();
        let touched: BTreeSet<String> = chains_in(input).difference(&shared).cloned().collect();
        assert!(!touched.is_empty());
        assert!(
            touched.is_subset(&own),
            "foreign chains in partial sync: {:?}",
            touched.difference(&own)
        );
        // Shared chains appear only in rule lines, never declared (which would flush them).
        for chain in &shared {
            assert!(
                !input.contains(&format!(":{chain} ")),
                "{chain} flushed: {input}"
            );
        }
        // Shared dispatch chains are edited rule by rule, never flushed.
        assert!(!input.contains(":SWY-SERVICES "), "{input}");
        // Every rule written or deleted is in one of its chains, or is a shared-chain rule
        // about it (its ClusterIP, or a jump into one of its chains).
        for line in input
            .lines()
            .filter(|l| l.starts_with("-A ") || l.starts_with("-D "))
        {
            let chain = line.split_whitespace().nth(1).unwrap_or_default();
            let about_it =
                line.contains("198.18.130.1/32") || own.iter().any(|c| line.contains(c.as_str()));
            assert!(
                own.contains(chain) || about_it,
                "line of another service: {line}"
            );
        }
        assert!(
            !input.contains("198.18.130.2/32"),
            "svc-501's ClusterIP is not touched"
        );
    }

    #[test]
    fn a_failed_partial_sync_is_retried_as_a_full_sync() {
        let fake = Fake::default();
        let mut dp = dataplane(Strategy::Single, &fake);
        let objects = objects(3);
        let s = state(&objects);
        dp.sync(SyncKind::Verify, &s, &StateDiff::default())
            .unwrap();
        dp.take_recorded();
        let mut objects2 = objects.clone();
        objects2
            .services
            .remove(&crate::model::ObjectKey::new("scale", "svc-1"));
        let s2 = state(&objects2);
        *fake.fail_restores.lock().unwrap() = 1;
        let report = dp
            .sync(SyncKind::Partial, &s2, &StateDiff::between(&s, &s2))
            .unwrap();
        assert!(report.full, "{report:?}");
        assert_eq!(dp.metrics.partial_restore_failures.get(), 1);
        assert_eq!(dp.metrics.restore_failures.get(), 1);
        let inputs = dp.take_recorded();
        assert_eq!(inputs.len(), 2, "failed partial, then the full rewrite");
        assert_eq!(inputs[1].matches(":SWY-SVC-").count(), 2);
    }

    #[test]
    fn a_flushed_canary_forces_a_full_sync_and_otherwise_resync_is_free() {
        let fake = Fake::default();
        let mut dp = dataplane(Strategy::Single, &fake);
        let s = state(&objects(2));
        assert!(
            dp.sync(SyncKind::Verify, &s, &StateDiff::default())
                .unwrap()
                .full
        );
        dp.take_recorded();
        assert!(
            !dp.sync(SyncKind::Verify, &s, &StateDiff::default())
                .unwrap()
                .full,
            "canary present, full sync within the hour is skipped"
        );
        assert!(dp.take_recorded().is_empty());
        *fake.canary.lock().unwrap() = false;
        assert!(
            dp.sync(SyncKind::Verify, &s, &StateDiff::default())
                .unwrap()
                .full,
            "canary gone"
        );
        assert_eq!(dp.take_recorded().len(), 1);
        // A resync that needs no repair still applies the changes that came with it.
        let s3 = state(&objects(3));
        let report = dp
            .sync(SyncKind::Verify, &s3, &StateDiff::between(&s, &s3))
            .unwrap();
        assert!(!report.full && report.ports_written == 1, "{report:?}");
        let inputs = dp.take_recorded();
        assert_eq!(inputs.len(), 1);
        assert!(inputs[0].contains("198.18.128.3/32"), "{}", inputs[0]);
    }

    /// `svc-0` of [`objects`] as a UDP service.
    fn udp_objects() -> ClusterObjects {
        let mut objects = objects(1);
        let key = crate::model::ObjectKey::new("scale", "svc-0");
        let mut service = (*objects.services[&key]).clone();
        if let Some(spec) = service.spec.as_mut() {
            for port in spec.ports.iter_mut().flatten() {
                port.protocol = Some("UDP".into());
            }
        }
        objects.insert_service(service);
        let key = crate::model::ObjectKey::new("scale", "svc-0-1");
        let mut slice = (*objects.endpoint_slices[&key]).clone();
        for port in slice.ports.iter_mut().flatten() {
            port.protocol = Some("UDP".into());
        }
        objects.insert_slice(slice);
        objects
    }

    #[test]
    fn every_sync_reconciles_conntrack_once_and_a_failure_does_not_fail_it() {
        use crate::conntrack::{ConntrackMetrics, FakeTable, Reconciler};
        let fake = Fake::default();
        let table = FakeTable::default();
        let metrics = ConntrackMetrics::default();
        let mut dp = dataplane(Strategy::Single, &fake)
            .with_conntrack(Reconciler::new(Box::new(table.clone()), metrics.clone()));
        let s = state(&udp_objects());
        assert_eq!(s.ports.len(), 1);
        for kind in [SyncKind::Full, SyncKind::Verify, SyncKind::Partial] {
            dp.sync(kind, &s, &StateDiff::default()).unwrap();
        }
        assert_eq!(table.with(|t| t.listings), 3, "full, verify, partial");
        table.with(|t| t.fail_listings = 1);
        let report = dp.sync(SyncKind::Verify, &s, &StateDiff::default());
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(metrics.failures.get(), 1);
        // A failed rules sync reconciles nothing: the rules are not what the state says.
        *fake.fail_restores.lock().unwrap() = 2;
        assert!(dp.sync(SyncKind::Full, &s, &StateDiff::default()).is_err());
        assert_eq!(table.with(|t| t.listings), 4);
    }

    #[test]
    fn ten_thousand_services_use_the_strategy_of_each_backend() {
        let s = state(&objects(10_000));
        for (backend, expected_inputs) in [
            (IptablesBackend::Legacy, 1),
            // static chains + 10 batches of 1,000 + dispatch
            (IptablesBackend::Nft, 12),
        ] {
            let fake = Fake::default();
            let mut dp = dataplane(backend.strategy(), &fake);
            let report = dp
                .sync(SyncKind::Verify, &s, &StateDiff::default())
                .unwrap();
            assert!(report.full);
            let inputs = dp.take_recorded();
            assert_eq!(inputs.len(), expected_inputs, "{backend}");
            let per_input: Vec<usize> = inputs
                .iter()
                .map(|i| i.matches(":SWY-SVC-").count())
                .collect();
            assert_eq!(
                per_input.iter().sum::<usize>(),
                10_000,
                "every port once: {per_input:?}"
            );
            if backend == IptablesBackend::Nft {
                assert!(
                    per_input.iter().all(|n| *n <= restore::NFT_PORTS_PER_BATCH),
                    "{per_input:?}"
                );
                let last = inputs.last().unwrap();
                assert!(
                    last.contains(":SWY-SERVICES - [0:0]"),
                    "dispatch written last"
                );
                assert_eq!(last.matches("-A SWY-SERVICES ").count(), 10_000);
                assert!(inputs[..inputs.len() - 1]
                    .iter()
                    .all(|i| !i.contains("-A SWY-SERVICES ")));
            }
        }
    }
}
