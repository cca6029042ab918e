//! The invariants checked after every change: objects -> desired state (incremental and
//! fresh) -> diff -> iptables rules and eBPF map writes.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::ebpf_plan::fake::FakeMaps;
use crate::ebpf_plan::{MapOp, MapWriter, Planner};
use crate::iptables::chains::MAX_CHAIN_NAME_LEN;
use crate::iptables::restore::{full_sync_inputs, partial_sync, Strategy};
use crate::iptables::rule_set::{ChainRef, PortRules, RuleConfig};
use crate::iptables::rules::{base_rules, port_rules};
use crate::{
    compute_desired_state, ClusterObjects, DesiredState, InputWarning, ModelCache, NodeContext,
    Protocol, ServicePort, ServicePortKey, StateDiff,
};

/// Every this many steps the eBPF sync is a full one (maps re-read, garbage collected).
const FULL_SYNC_EVERY: usize = 4;

/// What one step saw, for tests that want to know an input reached the model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepReport {
    /// Service ports in the desired state.
    pub ports: usize,
    /// The model's warnings.
    pub warnings: Vec<InputWarning>,
    /// Service entries in the (fake) eBPF maps after the sync.
    pub ebpf_services: usize,
}

/// The model and both dataplane renderings, carried across the steps of one input.
#[derive(Debug, Default)]
pub struct Pipeline {
    cache: ModelCache,
    last: DesiredState,
    rules: BTreeMap<ServicePortKey, PortRules>,
    planner: Planner,
    maps: FakeMaps,
    steps: usize,
}

impl Pipeline {
    /// Brings everything up to date with `objects` seen from `node` and checks it (panics
    /// showing `what` changed when an invariant fails):
    /// - [`ModelCache::update`] gives the same state and warnings as a fresh
    ///   [`compute_desired_state`], and the changes it reports are exactly
    ///   [`StateDiff::between`] the last state and this one;
    /// - every warning names a field and holds no control character (it is logged as is);
    /// - every frontend (address, port, protocol) has one owner;
    /// - the iptables-restore input (full and partial) is well formed: known line kinds,
    ///   balanced quotes, no control characters, chain names within iptables' limit;
    /// - the eBPF planner's sync on fake maps fails nothing, every service entry counts only
    ///   slots that exist after every single operation, and the planner knows exactly what
    ///   the maps hold afterwards.
    pub fn step(
        &mut self,
        objects: &ClusterObjects,
        node: &NodeContext,
        what: &dyn std::fmt::Debug,
    ) -> StepReport {
        let before = self.cache.update(objects, node);
        let fresh = compute_desired_state(objects, node);
        let state = self.cache.state().clone();
        assert_eq!(state, fresh.state, "cache vs fresh state after {what:?}");
        let warnings = self.cache.warnings();
        assert_eq!(
            warnings, fresh.warnings,
            "cache vs fresh warnings after {what:?}"
        );
        let diff = StateDiff::from_before(&before, &state);
        assert_eq!(
            diff,
            StateDiff::between(&self.last, &state),
            "reported changes after {what:?}"
        );
        for warning in &warnings {
            check_warning(warning);
        }
        check_owners(&state);
        self.iptables(node, &state, &diff);
        self.ebpf(&state, &diff);
        self.last = state;
        self.steps += 1;
        StepReport {
            ports: self.last.ports.len(),
            warnings,
            ebpf_services: self.maps.services.len(),
        }
    }

    fn iptables(&mut self, node: &NodeContext, state: &DesiredState, diff: &StateDiff) {
        let config = RuleConfig {
            cluster_cidrs: vec!["198.19.0.0/16".parse().expect("literal")],
            masquerade_all: self.steps % 2 == 1,
            nodeport_cidrs: Vec::new(),
            node_ips: node.nodeport_addresses.clone(),
            localhost_nodeports: self.steps % 3 == 1,
            ..RuleConfig::default()
        };
        let mut changes = Vec::new();
        for key in diff.added.iter().chain(&diff.changed).chain(&diff.removed) {
            let new = state.ports.get(key).map(|p| port_rules(p, &config));
            let old = match &new {
                Some(rules) => self.rules.insert(key.clone(), rules.clone()),
                None => self.rules.remove(key),
            };
            changes.push((old, new));
        }
        check_restore(&partial_sync(
            changes
                .iter()
                .map(|(old, new)| (old.as_ref(), new.as_ref())),
        ));
        let existing: BTreeSet<ChainRef> = self
            .rules
            .values()
            .flat_map(|r| r.chains.keys().cloned())
            .collect();
        let base = base_rules(&config);
        for strategy in [Strategy::Single, Strategy::Batched { ports_per_batch: 2 }] {
            let ports = self.rules.iter().map(|(key, rules)| (key, rules.clone()));
            for input in full_sync_inputs(&base, ports, &existing, strategy, &[], |_, _| {}) {
                check_restore(&input);
            }
        }
    }

    fn ebpf(&mut self, state: &DesiredState, diff: &StateDiff) {
        let full = self.steps % FULL_SYNC_EVERY == FULL_SYNC_EVERY - 1;
        if full {
            self.planner.observe(
                self.maps.services.clone(),
                self.maps.backends.clone(),
                self.maps.ranges.clone(),
            );
        }
        let errors = self.planner.begin_sync(&mut Checked(&mut self.maps));
        assert!(errors.is_empty(), "begin_sync: {errors:?}");
        let mut keys: BTreeSet<&ServicePortKey> = if full {
            state.ports.keys().collect()
        } else {
            diff.added
                .iter()
                .chain(&diff.changed)
                .chain(&diff.removed)
                .collect()
        };
        let programmed: Vec<ServicePortKey> = self.planner.programmed_ports().cloned().collect();
        if full {
            keys.extend(&programmed);
        }
        let changes: Vec<(ServicePortKey, Option<&ServicePort>)> = keys
            .into_iter()
            .map(|k| (k.clone(), state.ports.get(k).map(|p| &**p)))
            .collect();
        let mut plan = self.planner.plan_sync(&changes);
        if full {
            plan = plan.collecting_garbage();
        }
        let outcome = self.planner.run(plan, &mut Checked(&mut self.maps));
        // The maps have room and nothing is injected: nothing may fail, in particular no
        // frontend may be refused as held by another port.
        assert!(outcome.failed.is_empty(), "failed: {:?}", outcome.failed);
        assert!(
            outcome.housekeeping.is_empty(),
            "housekeeping: {:?}",
            outcome.housekeeping
        );
        let drift = self.planner.check_drift(
            self.maps.services.iter().map(|(k, v)| (*k, *v)),
            self.maps.backends.iter().map(|(k, v)| (*k, *v)),
        );
        assert!(drift.is_none(), "planner vs maps: {drift}");
    }
}

/// The fake maps, checked after every operation as a concurrently reading program sees them.
struct Checked<'a>(&'a mut FakeMaps);

impl MapWriter for Checked<'_> {
    type Error = crate::ebpf_plan::fake::FakeError;

    fn run(&mut self, op: &MapOp) -> Result<(), Self::Error> {
        let result = self.0.run(op);
        if let Some((service, slot)) = self.0.missing_slot() {
            panic!("after {op:?}: {service:?} counts slot {slot:?}, which does not exist");
        }
        result
    }
}

/// Control characters, line separators, bidirectional overrides.
pub(super) fn has_control(text: &str) -> bool {
    text.chars().any(crate::parse::is_unsafe_char)
}

fn check_warning(warning: &InputWarning) {
    assert!(!warning.field.is_empty(), "no field named: {warning:?}");
    assert!(!warning.message.is_empty(), "no message: {warning:?}");
    // Names are free of control characters by the time they reach the model (the API
    // server validates them, the manifest source skips such objects); the decoder draws
    // names without them, so the whole line must be clean.
    assert!(
        !has_control(&warning.to_string()),
        "control character in a warning: {warning:?}"
    );
}

fn check_owners(state: &DesiredState) {
    let mut owners: BTreeMap<(IpAddr, u16, Protocol), &ServicePortKey> = BTreeMap::new();
    for (key, port) in &state.ports {
        for f in &port.frontends {
            if let Some(other) = owners.insert((f.ip, f.port, key.protocol), key) {
                panic!(
                    "{}:{} ({:?}) is served by {other} and {key}",
                    f.ip, f.port, f.kind
                );
            }
        }
    }
}

/// iptables-restore input: table headers, chain declarations, rules, deletions and COMMIT,
/// nothing else; a rule's quotes balanced (a stray quote or newline would change the meaning
/// of the rest of the transaction).
fn check_restore(input: &str) {
    for line in input.lines() {
        assert!(!has_control(line), "control character in {line:?}");
        let ok = match line.split_once(' ') {
            None => line.starts_with('*') || line == "COMMIT",
            Some((":", _)) => false,
            Some((first, rest)) if first.starts_with(':') => {
                first.len() - 1 <= MAX_CHAIN_NAME_LEN && rest == "- [0:0]"
            }
            Some(("-A" | "-D", rest)) => {
                let chain = rest.split(' ').next().unwrap_or_default();
                chain.len() <= MAX_CHAIN_NAME_LEN && line.matches('"').count() % 2 == 0
            }
            Some(("-X", chain)) => chain.len() <= MAX_CHAIN_NAME_LEN && !chain.contains(' '),
            Some(_) => false,
        };
        assert!(ok, "malformed iptables-restore line {line:?}");
    }
}
