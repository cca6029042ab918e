//! Switchyard's shared dataplane scenario table, run against the real binary in a two-node
//! network-namespace testbed, once per dataplane mode and object source (a manifest
//! directory, or the Kubernetes API through a fake API server per node).
//!
//! - `scenarios/model.rs`: what a scenario, step, check and expected outcome are;
//! - `scenarios/table.rs`: the scenarios, as data (manifests + steps);
//! - `scenarios/runner.rs`: builds a testbed per scenario, starts echo servers and
//!   switchyard, runs the steps, and reports failures with the proxies' logs;
//! - `scenarios/api.rs`: the API source: fake API servers fed the manifests' objects,
//!   edits turned into applies and deletes.
//!
//! Every scenario runs in iptables mode; in ebpf mode those marked `iptables only` are
//! skipped (listed on stderr). Knobs: `SWY_SCENARIOS=name,...` (substring filter),
//! `SWY_SCENARIOS_JOBS=N`, `SWY_SCENARIOS_PENDING=1` (run the iptables-only ones in ebpf
//! mode too). Needs root, like the other dataplane tests.
#[path = "scenarios/api.rs"]
mod api;
#[path = "scenarios/model.rs"]
mod model;
#[path = "scenarios/runner.rs"]
mod runner;
#[path = "scenarios/table.rs"]
mod table;

use std::collections::BTreeSet;

use model::{At, Check, FileEdit, Held, Mode, Outcome, Step, Via, ECHO_PORTS, NODES};

#[test]
fn scenarios_iptables() {
    runner::run_table(Mode::Iptables, Via::Manifests, table::all());
}

#[test]
fn scenarios_iptables_legacy() {
    runner::run_table(Mode::IptablesLegacy, Via::Manifests, table::all());
}

#[test]
fn scenarios_ebpf() {
    runner::run_table(Mode::Ebpf, Via::Manifests, table::all());
}

/// The same table with switchyard watching the Kubernetes API (`--kubeconfig`) instead of
/// a manifest directory.
#[test]
fn scenarios_iptables_api() {
    runner::run_table(Mode::Iptables, Via::Api, table::all());
}

#[test]
fn scenarios_ebpf_api() {
    runner::run_table(Mode::Ebpf, Via::Api, table::all());
}

/// The table itself is consistent (no root needed): unique names, parseable manifests
/// that the API source can feed too (kinds the API serves, or mirrored Endpoints), places and backends that exist, a positive first check to wait on, and held flows that
/// are started once, before they are judged, and moved only after an edit.
#[test]
fn scenario_table_is_well_formed() {
    let table = table::all();
    let mut names = BTreeSet::new();
    for s in &table {
        let ctx = |what: String| format!("scenario {}: {what}", s.name);
        assert!(names.insert(s.name), "{}", ctx("duplicate name".into()));
        assert!(
            !s.proxies.is_empty() && s.proxies.iter().all(|n| (1..=NODES).contains(n)),
            "{}",
            ctx(format!("proxies {:?}", s.proxies))
        );
        assert!(s.pods_per_node >= 1, "{}", ctx("needs pods".into()));
        for (cidr, node) in &s.client_routes {
            assert!(
                (1..=NODES).contains(node),
                "{}",
                ctx(format!("client route {cidr} via node{node}"))
            );
        }
        let mut files: Vec<(&str, &str)> =
            s.manifests.iter().map(|(n, y)| (*n, y.as_str())).collect();
        for step in &s.steps {
            if let Step::Edit { edits, .. } = step {
                for e in edits {
                    if let FileEdit::Write(n, y) = e {
                        files.push((n, y.as_str()));
                    }
                }
            }
        }
        for (file, yaml) in files {
            assert_ne!(
                file,
                "nodes.yaml",
                "{}",
                ctx("nodes.yaml is the runner's".into())
            );
            for doc in serde_norway::Deserializer::from_str(yaml) {
                let value = <serde_norway::Value as serde::Deserialize>::deserialize(doc)
                    .unwrap_or_else(|e| panic!("{}", ctx(format!("{file}: {e}"))));
                assert!(
                    value.get("apiVersion").is_some() && value.get("kind").is_some(),
                    "{}",
                    ctx(format!("{file}: a document without apiVersion/kind"))
                );
            }
            if let Err(e) = api::api_objects(yaml) {
                panic!("{}", ctx(format!("{file}: not for the API source: {e}")));
            }
        }
        match s.steps.first() {
            Some(Step::Check(c)) => {
                for mode in [Mode::Iptables, Mode::Ebpf] {
                    assert!(
                        c.outcome.get(mode).is_positive(),
                        "{}",
                        ctx("the first step must be a positive check".into())
                    );
                }
            }
            _ => panic!("{}", ctx("the first step must be a check".into())),
        }
        let mut checks: Vec<&Check> = Vec::new();
        let mut flows = BTreeSet::new();
        let mut edited = false;
        let mut moved_to: Vec<&String> = Vec::new();
        for step in &s.steps {
            match step {
                Step::Check(c) => checks.push(c),
                Step::Edit { until, steady, .. } => {
                    edited = true;
                    assert!(
                        !until.is_empty(),
                        "{}",
                        ctx("an edit needs a condition".into())
                    );
                    checks.extend(until.iter().chain(steady));
                }
                Step::AffinityExpires { check, rounds, .. } => {
                    assert!(*rounds > 0);
                    checks.push(check);
                }
                Step::Hold(flow) => {
                    assert!(
                        flows.insert(flow.name),
                        "{}",
                        ctx(format!("held flow {} started twice", flow.name))
                    );
                    assert!(
                        !flow.check.unconnected,
                        "{}",
                        ctx(format!("held flow {} must be connected", flow.name))
                    );
                    for mode in [Mode::Iptables, Mode::Ebpf] {
                        assert!(
                            flow.check.outcome.get(mode).is_positive(),
                            "{}",
                            ctx(format!("held flow {} must expect answers", flow.name))
                        );
                    }
                    checks.push(&flow.check);
                }
                Step::Held { flow, expect } => {
                    assert!(
                        flows.contains(flow),
                        "{}",
                        ctx(format!("held flow {flow} is judged before it is started"))
                    );
                    if let Held::Moved { backends, within } = expect {
                        assert!(
                            edited,
                            "{}",
                            ctx(format!("held flow {flow} moves without an edit"))
                        );
                        assert!(!backends.is_empty() && !within.is_zero());
                        moved_to.extend(backends);
                    }
                }
            }
        }
        for b in moved_to {
            assert!(
                backend_exists(b, s.pods_per_node),
                "{}",
                ctx(format!("{b:?} is no echo server (want nodeI-podJ:PORT)"))
            );
        }
        for c in checks {
            let place_ok = match c.from {
                At::Pod(n, p) => (1..=NODES).contains(&n) && (1..=s.pods_per_node).contains(&p),
                At::Node(n) => (1..=NODES).contains(&n),
                At::Client => true,
            };
            assert!(place_ok, "{}", ctx(format!("no place {}", c.from)));
            assert!(!c.unconnected || c.proto == model::Proto::Udp);
            for mode in [Mode::Iptables, Mode::Ebpf] {
                assert!(c.attempts_in(mode) > 0, "{}", ctx("zero attempts".into()));
                if let Outcome::Backends(set) | Outcome::Sticky(set) = c.outcome.get(mode) {
                    assert!(!set.is_empty(), "{}", ctx("empty backend set".into()));
                    for b in set {
                        assert!(
                            backend_exists(b, s.pods_per_node),
                            "{}",
                            ctx(format!("{b:?} is no echo server (want nodeI-podJ:PORT)"))
                        );
                    }
                }
            }
        }
    }
}

/// Whether `name` is an echo server the runner starts: `node<i>-pod<j>:<port>`.
fn backend_exists(name: &str, pods_per_node: usize) -> bool {
    let Some((pod, port)) = name.split_once(':') else {
        return false;
    };
    let Ok(port) = port.parse::<u16>() else {
        return false;
    };
    let Some((node, pod)) = pod
        .strip_prefix("node")
        .and_then(|rest| rest.split_once("-pod"))
    else {
        return false;
    };
    matches!(
        (node.parse::<usize>(), pod.parse::<usize>()),
        (Ok(n), Ok(p)) if (1..=NODES).contains(&n) && (1..=pods_per_node).contains(&p)
    ) && ECHO_PORTS.contains(&port)
}
