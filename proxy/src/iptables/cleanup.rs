//! `--cleanup`: removes every jump, rule and chain Switchyard created, and nothing else.
use switchyard_model::iptables::removal::{self, UnscriptableName};

use super::backend::{IptablesBackend, Tools};
use super::dataplane::TABLES;
use super::exec::{self, ExecError};
use super::rule_set::Table;

/// What `--cleanup` could not remove.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    /// An iptables command failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A chain the kernel listed cannot be named in an nft script.
    #[error(transparent)]
    Name(#[from] UnscriptableName),
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
pub fn cleanup(tools: impl Into<Tools>) -> Result<usize, CleanupError> {
    remove_chains_where(tools, |_, chain| super::chains::is_ours(chain))
}

/// Removes the chains `wanted` accepts from `backend`'s nat, filter and mangle tables, with
/// the rules of other chains that jump (or go) to them, in one transaction per table
/// (legacy) or one for all (nft; see [`removal`]). Returns how many chains were removed;
/// fails when any is left. On iptables-legacy only tables that already exist are touched.
pub fn remove_chains_where(
    tools: impl Into<Tools>,
    wanted: impl Fn(Table, &str) -> bool + Sync,
) -> Result<usize, CleanupError> {
    let tools = tools.into();
    let removed = match tools.backend {
        IptablesBackend::Legacy => remove_legacy(tools, &wanted)?,
        IptablesBackend::Nft => remove_nft(tools, &wanted)?,
    };
    let left = match tools.backend {
        IptablesBackend::Legacy => legacy_chains(tools, &wanted)?,
        IptablesBackend::Nft => exec::nft_chains_of(tools.family)?
            .into_iter()
            .filter(|(t, c)| wanted(*t, c))
            .collect(),
    };
    if let Some((table, chain)) = left.first() {
        return Err(CleanupError::Left {
            count: left.len(),
            first: format!("{chain} in {}", table.as_str()),
        });
    }
    Ok(removed)
}

/// One save and one restore per existing legacy table.
fn remove_legacy(
    tools: Tools,
    wanted: &(impl Fn(Table, &str) -> bool + Sync),
) -> Result<usize, CleanupError> {
    let mut removed = 0;
    for table in legacy_tables(tools) {
        // The chain declarations and the jumps into removed chains: all a removal needs, out
        // of a save that is mostly rules of other chains or of the removed ones.
        let kept = exec::save_lines(tools, table, |line| {
            removal::needed_for_removal(table, line, wanted)
        })?;
        let chains: Vec<String> = declared_chains(&kept)
            .filter(|c| wanted(table, c))
            .map(str::to_owned)
            .collect();
        let deletions = removal::jump_deletions(table, &kept, wanted);
        let input = removal::restore_removal(table, &chains, &deletions);
        if !input.is_empty() {
            exec::restore(tools, &input)?;
        }
        removed += chains.len();
    }
    Ok(removed)
}

/// One listing of the chains, one of each chain that stays (for its jumps, with handles),
/// and one nft transaction.
fn remove_nft(tools: Tools, wanted: &impl Fn(Table, &str) -> bool) -> Result<usize, CleanupError> {
    let all = exec::nft_chains_of(tools.family)?;
    let (chains, others): (Vec<TableChain>, Vec<TableChain>) =
        all.into_iter().partition(|(t, c)| wanted(*t, c));
    if chains.is_empty() {
        return Ok(0);
    }
    let mut jumps = Vec::new();
    for (table, chain) in &others {
        for (handle, target) in exec::nft_jumps_of(tools.family, *table, chain)? {
            if wanted(*table, &target) {
                jumps.push((*table, chain.clone(), handle));
            }
        }
    }
    let script = removal::nft_removal_of(tools.family, &chains, &jumps)?;
    exec::nft_script(&script)?;
    Ok(chains.len())
}

/// A chain by table and name.
type TableChain = (Table, String);

fn legacy_tables(tools: Tools) -> Vec<Table> {
    let present = exec::legacy_tables_of(tools.family);
    TABLES
        .into_iter()
        .filter(|t| present.contains(t.as_str()))
        .collect()
}

fn legacy_chains(
    tools: Tools,
    wanted: &impl Fn(Table, &str) -> bool,
) -> Result<Vec<(Table, String)>, CleanupError> {
    let mut left = Vec::new();
    for table in legacy_tables(tools) {
        let declarations = exec::save_lines(tools, table, |l| l.starts_with(':'))?;
        left.extend(
            declared_chains(&declarations)
                .filter(|c| wanted(table, c))
                .map(|c| (table, c.to_owned())),
        );
    }
    Ok(left)
}

/// Chain names declared (`:NAME POLICY [p:b]`) in iptables-save lines.
fn declared_chains(save: &str) -> impl Iterator<Item = &str> {
    save.lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split(' ').next())
}

#[cfg(test)]
mod tests {
    #[test]
    fn declared_chains_are_read_from_save_lines() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:SWY-SERVICES - [0:0]\n-A PREROUTING -j SWY-SERVICES\n";
        let names: Vec<&str> = super::declared_chains(save).collect();
        assert_eq!(names, ["PREROUTING", "SWY-SERVICES"]);
    }
}
