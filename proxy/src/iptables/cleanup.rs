//! `--cleanup`: removes every jump, rule and chain Switchyard created, and nothing else.
use std::collections::BTreeSet;

use super::backend::IptablesBackend;
use super::dataplane::TABLES;
use super::exec::{self, ExecError};
use super::restore;
use super::rule_set::{ChainRef, Table};

/// Built-in chains we hook into.
const BUILTIN: &[(Table, &str)] = &[
    (Table::Nat, "PREROUTING"),
    (Table::Nat, "OUTPUT"),
    (Table::Nat, "POSTROUTING"),
    (Table::Filter, "INPUT"),
    (Table::Filter, "FORWARD"),
    (Table::Filter, "OUTPUT"),
];

/// Removes iptables mode's state from `backend`. Returns how many chains were removed.
pub fn cleanup(backend: IptablesBackend) -> Result<usize, ExecError> {
    // 1. Jumps from built-in chains into ours, found by their target.
    for (table, chain) in BUILTIN {
        let chain = ChainRef::new(*table, *chain);
        for rule in jumps_into_ours(backend, &chain) {
            exec::delete_rule(backend, &chain, &rule)?;
        }
    }
    // 2. Our chains, flushed then deleted, batched as the backend's full syncs are.
    let mut ours = BTreeSet::new();
    for table in TABLES {
        ours.extend(exec::our_chains(backend, table)?);
    }
    for input in restore::remove_chains_in(&ours, backend.strategy()) {
        exec::restore(backend, &input)?;
    }
    Ok(ours.len())
}

/// Rules of a built-in chain whose target is one of our chains, as `iptables` arguments.
fn jumps_into_ours(backend: IptablesBackend, chain: &ChainRef) -> Vec<Vec<String>> {
    // A chain (or table) missing on this backend holds nothing of ours.
    exec::list_rules(backend, chain)
        .map(|listing| rules_jumping_to_ours(&listing, &chain.chain))
        .unwrap_or_default()
}

/// From `iptables -S CHAIN` output, the rule arguments (without `-A CHAIN`) of rules that jump
/// to a chain of ours.
fn rules_jumping_to_ours(listing: &str, chain: &str) -> Vec<Vec<String>> {
    let prefix = format!("-A {chain} ");
    listing
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(shlex::split)
        .filter(|args| {
            args.windows(2)
                .any(|w| w[0] == "-j" && super::chains::is_ours(&w[1]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_only_jumps_into_our_chains() {
        let listing = "-P PREROUTING ACCEPT\n\
            -A PREROUTING -m comment --comment \"switchyard service portals\" -j SWY-SERVICES\n\
            -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
            -A PREROUTING -m addrtype --dst-type LOCAL -j SWY-NODEPORTS\n";
        let rules = super::rules_jumping_to_ours(listing, "PREROUTING");
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rules[0],
            [
                "-m",
                "comment",
                "--comment",
                "switchyard service portals",
                "-j",
                "SWY-SERVICES"
            ]
        );
    }
}
