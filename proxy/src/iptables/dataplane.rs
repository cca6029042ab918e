//! The iptables dataplane: full syncs at start, after failures, when someone flushed our
//! chains (canary gone) and hourly; partial syncs of only the changed service ports otherwise.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::backend::IptablesBackend;
use super::chains::CANARY;
use super::exec::{self, ExecError};
use super::restore::{self, Strategy};
use super::rule_set::{BaseRules, ChainRef, PortRules, RuleConfig, Table};
use super::rules::{base_rules, port_rules};
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
        // Our jumps go first in each built-in chain, in the given order, like upstream's `-I`
        // (rules other tools append cannot bypass services). When one is missing, ours are
        // removed and re-inserted in order, since positions past the chain's end are refused.
        let mut by_chain: BTreeMap<&ChainRef, Vec<Vec<String>>> = BTreeMap::new();
        for (chain, rule) in jumps {
            by_chain
                .entry(chain)
                .or_default()
                .push(shlex::split(rule).unwrap_or_default());
        }
        for (chain, rules) in by_chain {
            if rules
                .iter()
                .all(|r| exec::rule_exists(self.backend, chain, r))
            {
                continue;
            }
            for rule in &rules {
                while exec::rule_exists(self.backend, chain, rule) {
                    exec::delete_rule(self.backend, chain, rule)?;
                }
            }
            for rule in rules.iter().rev() {
                exec::insert_rule(self.backend, chain, 1, rule)?;
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
        // Ports that went away count too: their flows are as stale as any.
        let keys: BTreeSet<ServicePortKey> = state
            .ports
            .keys()
            .chain(self.written.keys())
            .cloned()
            .collect();
        let keys: Vec<&ServicePortKey> = keys.iter().collect();
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

    fn full_sync(&mut self, state: &DesiredState, diff: &StateDiff) -> SyncReport {
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
        // Nothing to repair; the changes that arrived with this resync still go in.
        if diff.is_empty() {
            SyncReport::default()
        } else {
            self.partial(state, diff)
        }
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
    }

    impl IptablesSystem for Fake {
        fn restore(&mut self, _input: &str) -> Result<(), ExecError> {
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
        fn our_chains(&mut self, _table: Table) -> Result<BTreeSet<ChainRef>, ExecError> {
            Ok(BTreeSet::new())
        }
        fn chain_exists(&mut self, _chain: &ChainRef) -> bool {
            *self.canary.lock().unwrap()
        }
        fn ensure_jumps(&mut self, _jumps: &[(ChainRef, String)]) -> Result<(), ExecError> {
            Ok(())
        }
        fn delete_conntrack(&mut self, _args: &[String]) {}
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

    /// Chain names that appear anywhere in a restore input.
    fn chains_in(input: &str) -> BTreeSet<String> {
        input
            .split(|c: char| c.is_whitespace() || c == ':')
            .filter(|w| w.starts_with("SWY-") && w.len() == 24)
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_partial_sync_of_one_service_among_1000_touches_only_its_chains() {
        let fake = Fake::default();
        let mut dp = dataplane(Strategy::Single, &fake);
        let mut objects = objects(1000);
        let before = state(&objects);
        let report = dp.full_sync(&before, &StateDiff::default());
        assert!(report.full && report.failure.is_none(), "{report:?}");
        let full = dp.take_recorded();
        assert_eq!(full.len(), 1);
        assert_eq!(full[0].matches(":SWY-SVC-").count(), 1000);

        // svc-500 gets a third endpoint.
        let key = crate::model::ObjectKey::new("scale", "svc-500-1");
        let mut slice = objects.endpoint_slices[&key].clone();
        slice.endpoints.push(
            serde_json::from_value(serde_json::json!({"addresses": ["198.19.3.9"]})).unwrap(),
        );
        objects.insert_slice(slice);
        let after = state(&objects);
        let diff = StateDiff::between(&before, &after);
        assert_eq!(diff.changed.len(), 1);
        let report = dp.apply(&after, &diff);
        assert!(!report.full && report.failure.is_none(), "{report:?}");
        let inputs = dp.take_recorded();
        assert_eq!(inputs.len(), 1, "one restore");
        let input = &inputs[0];

        let port = &after.ports[&diff.changed[0]];
        let old_port = &before.ports[&diff.changed[0]];
        let config = RuleConfig {
            cluster_cidrs: vec!["198.19.0.0/16".parse().unwrap()],
            ..RuleConfig::default()
        };
        let own: BTreeSet<String> = port_rules(port, &config)
            .chains
            .keys()
            .chain(port_rules(old_port, &config).chains.keys())
            .map(|c| c.chain.clone())
            .collect();
        let touched = chains_in(input);
        assert!(!touched.is_empty());
        assert!(
            touched.is_subset(&own),
            "foreign chains in partial sync: {:?}",
            touched.difference(&own)
        );
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
        dp.full_sync(&s, &StateDiff::default());
        dp.take_recorded();
        let mut objects2 = objects.clone();
        objects2
            .services
            .remove(&crate::model::ObjectKey::new("scale", "svc-1"));
        let s2 = state(&objects2);
        *fake.fail_restores.lock().unwrap() = 1;
        let report = dp.apply(&s2, &StateDiff::between(&s, &s2));
        assert!(report.full, "{report:?}");
        assert_eq!(report.restore_failures, 1);
        assert!(report.failure.is_none());
        let inputs = dp.take_recorded();
        assert_eq!(inputs.len(), 2, "failed partial, then the full rewrite");
        assert_eq!(inputs[1].matches(":SWY-SVC-").count(), 2);
    }

    #[test]
    fn a_flushed_canary_forces_a_full_sync_and_otherwise_resync_is_free() {
        let fake = Fake::default();
        let mut dp = dataplane(Strategy::Single, &fake);
        let s = state(&objects(2));
        assert!(dp.full_sync(&s, &StateDiff::default()).full);
        dp.take_recorded();
        assert!(
            !dp.full_sync(&s, &StateDiff::default()).full,
            "canary present, full sync within the hour is skipped"
        );
        assert!(dp.take_recorded().is_empty());
        *fake.canary.lock().unwrap() = false;
        assert!(dp.full_sync(&s, &StateDiff::default()).full, "canary gone");
        assert_eq!(dp.take_recorded().len(), 1);
        // A resync that needs no repair still applies the changes that came with it.
        let s3 = state(&objects(3));
        let report = dp.full_sync(&s3, &StateDiff::between(&s, &s3));
        assert!(!report.full && report.ports_written == 1, "{report:?}");
        let inputs = dp.take_recorded();
        assert_eq!(inputs.len(), 1);
        assert!(inputs[0].contains("198.18.128.3/32"), "{}", inputs[0]);
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
            let report = dp.full_sync(&s, &StateDiff::default());
            assert!(report.failure.is_none());
            let inputs = dp.take_recorded();
            assert_eq!(inputs.len(), expected_inputs, "{backend}");
            let per_input: Vec<usize> = inputs
                .iter()
                .map(|i| i.matches(":SWY-SVC-").count())
                .collect();
            assert!(per_input.iter().all(|n| *n <= 10_000), "{per_input:?}");
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

    /// The real tools, in a throwaway network namespace: 10,000 services load with each
    /// backend's strategy, a partial sync works on the big table, and cleanup leaves nothing.
    #[test]
    fn ten_thousand_services_load_into_a_real_kernel_with_both_backends() {
        let testbed = switchyard_testbed::Testbed::new(switchyard_testbed::TopologySpec {
            nodes: 1,
            pods_per_node: 0,
        })
        .expect("testbed");
        let objects = objects(10_000);
        let big = state(&objects);
        let mut smaller = objects.clone();
        smaller
            .services
            .remove(&crate::model::ObjectKey::new("scale", "svc-77"));
        let smaller = state(&smaller);
        for backend in [IptablesBackend::Legacy, IptablesBackend::Nft] {
            let ns = testbed.node(1).netns_path.clone();
            let (left, present) = switchyard_testbed::netns::run_in_netns(&ns, || {
                let mut dp = IptablesDataplane::new(
                    Box::new(SystemIptables { backend }),
                    backend.strategy(),
                    RuleConfig::default(),
                );
                let started = Instant::now();
                let full = dp.full_sync(&big, &StateDiff::default());
                let full_took = started.elapsed();
                assert!(full.failure.is_none(), "{backend}: {full:?}");
                let started = Instant::now();
                let partial = dp.apply(&smaller, &StateDiff::between(&big, &smaller));
                let partial_took = started.elapsed();
                assert!(
                    !partial.full && partial.failure.is_none(),
                    "{backend}: {partial:?}"
                );
                // Reported, not asserted: timings belong to the benchmarks.
                eprintln!(
                    "{backend}: full sync of 10,000 services in {} restore(s): {full_took:.1?}; \
                     partial sync of one: {partial_took:.2?}",
                    full.restores
                );
                let present = exec::our_chains(backend, Table::Nat)
                    .map(|c| c.len())
                    .unwrap_or(0);
                let removed = super::super::cleanup::cleanup(backend, &[]).expect("cleanup");
                assert!(removed >= present);
                let left: usize = TABLES
                    .iter()
                    .map(|t| {
                        exec::our_chains(backend, *t)
                            .map(|c| c.len())
                            .unwrap_or(usize::MAX)
                    })
                    .sum();
                Ok((left, present))
            })
            .expect("run in the namespace");
            // 9,999 services x (SVC + 2 SEP) plus the static chains.
            assert!(present >= 9_999 * 3, "{backend}: {present} chains");
            assert_eq!(left, 0, "{backend}: cleanup left chains behind");
        }
    }
}
