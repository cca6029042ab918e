//! `--cleanup`: removes every jump, rule and chain Switchyard created, and nothing else.
use std::collections::BTreeSet;

use super::backend::IptablesBackend;
use super::dataplane::TABLES;
use super::exec::{self, ExecError};
use super::restore;
use super::rule_set::{ChainRef, Table};

/// What `--cleanup` could not remove.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    /// An iptables command failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// Chains to remove are still there after the removal.
    #[error("{count} chains are still there, e.g. {first}")]
    Left {
        /// How many.
        count: usize,
        /// One of them, for the message.
        first: String,
    },
}

/// Removes iptables mode's state from `backend`. Returns how many chains were removed; fails
/// when any chain of ours is left. Jumps into our chains are removed from every chain that is
/// not ours (the built-in ones, and any another tool added), so nothing references ours when
/// they go. On iptables-legacy only tables that already exist are touched: a legacy command
/// would create the table.
pub fn cleanup(backend: IptablesBackend) -> Result<usize, CleanupError> {
    remove_chains_where(
        backend,
        |_, chain| super::chains::is_ours(chain),
        |_, listing| jumps_into_ours(listing),
    )
}

/// Removes the chains `wanted` accepts from `backend`'s nat, filter and mangle tables, and
/// first the rules `jumps` finds in an `iptables -S` listing of a table (the jumps into
/// them from other chains). Returns how many chains were removed; fails when any is left.
/// On iptables-legacy only tables that already exist are touched.
pub fn remove_chains_where(
    backend: IptablesBackend,
    wanted: impl Fn(Table, &str) -> bool,
    jumps: impl Fn(Table, &str) -> Vec<(String, Vec<String>)>,
) -> Result<usize, CleanupError> {
    let tables: Vec<Table> = match backend {
        IptablesBackend::Legacy => {
            let present = exec::legacy_tables();
            TABLES
                .into_iter()
                .filter(|t| present.contains(t.as_str()))
                .collect()
        }
        IptablesBackend::Nft => TABLES.to_vec(),
    };
    for table in &tables {
        let Some(listing) = exec::list_table_rules(backend, *table) else {
            continue;
        };
        for (chain, rule) in jumps(*table, &listing) {
            exec::delete_rule(backend, &ChainRef::new(*table, &chain), &rule)?;
        }
    }
    // The chains, flushed then deleted, batched as the backend's full syncs are.
    let mut ours = BTreeSet::new();
    for table in &tables {
        ours.extend(exec::chains_where(backend, *table, |c| wanted(*table, c))?);
    }
    for input in restore::remove_chains_in(&ours, backend.strategy()) {
        exec::restore(backend, &input)?;
    }
    let mut left = BTreeSet::new();
    for table in &tables {
        left.extend(exec::chains_where(backend, *table, |c| wanted(*table, c))?);
    }
    if let Some(first) = left.iter().next() {
        return Err(CleanupError::Left {
            count: left.len(),
            first: format!("{} in {}", first.chain, first.table.as_str()),
        });
    }
    Ok(ours.len())
}

/// From `iptables -S` output of a table: (chain, rule arguments without `-A CHAIN`) of every
/// rule in a chain that is not ours and jumps to one that is.
fn jumps_into_ours(listing: &str) -> Vec<(String, Vec<String>)> {
    listing
        .lines()
        .filter_map(|l| l.strip_prefix("-A "))
        .filter_map(|rest| {
            let (chain, args) = rest.split_once(' ')?;
            (!super::chains::is_ours(chain))
                .then(|| Some((chain.to_owned(), shlex::split(args)?)))?
        })
        .filter(|(_, args)| {
            args.windows(2)
                .any(|w| (w[0] == "-j" || w[0] == "-g") && super::chains::is_ours(&w[1]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_jumps_into_our_chains_from_every_chain_that_is_not_ours() {
        let listing = "-P PREROUTING ACCEPT\n-N OTHER-TOOL\n-N SWY-SERVICES\n\
            -A PREROUTING -m comment --comment \"switchyard service portals\" -j SWY-SERVICES\n\
            -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
            -A PREROUTING -m addrtype --dst-type LOCAL -j SWY-NODEPORTS\n\
            -A OTHER-TOOL -j SWY-SERVICES\n\
            -A SWY-SERVICES -d 198.18.128.10/32 -j SWY-SVC-X\n";
        let rules = super::jumps_into_ours(listing);
        let chains: Vec<&str> = rules.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(chains, ["PREROUTING", "PREROUTING", "OTHER-TOOL"]);
        assert_eq!(
            rules[0].1,
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
