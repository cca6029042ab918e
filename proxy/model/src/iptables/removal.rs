//! Removing a set of chains (ours on `--cleanup` and mode switches, kube-proxy's on
//! migration) in one transaction per backend: the rules of other chains that jump into them,
//! and the input that deletes those rules, flushes the chains and deletes them.
//!
//! One transaction matters at scale. iptables-legacy replaces a whole table per command, and
//! nf_tables validates the whole jump graph per transaction: removing 110,000 chains in a
//! hundred batches plus one command per jump took 25 s (legacy) and 51 s (nft) at 10,000
//! services; one transaction takes a few seconds.

use std::fmt::Write;

use super::rule_set::{Family, Table};

/// From iptables-save (or `iptables -S`) lines of `table`: every rule of a chain `removed`
/// rejects that jumps or goes to a chain it accepts, as the `-D CHAIN ARGS` line that deletes
/// it (the arguments exactly as printed, which iptables-restore parses back).
pub fn jump_deletions(
    table: Table,
    lines: &str,
    removed: impl Fn(Table, &str) -> bool,
) -> Vec<String> {
    lines
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("-A ")?;
            let (chain, args) = rest.split_once(' ')?;
            if removed(table, chain) {
                return None;
            }
            let words = shlex::split(args)?;
            let jumps = words
                .windows(2)
                .any(|w| (w[0] == "-j" || w[0] == "-g") && removed(table, &w[1]));
            jumps.then(|| format!("-D {rest}"))
        })
        .collect()
}

/// Whether a removal needs this iptables-save line of `table`: a chain declaration, or a
/// rule of a chain that stays which may jump or go to a removed one ([`jump_deletions`]
/// decides exactly). Filtering a save with it as it is read keeps a few MB of the 50 MB a
/// 10,000-service table prints, when the rules of the chains that stay are mostly not jumps
/// into the removed ones (ours, when ebpf mode's SCTP fallback chains are removed).
pub fn needed_for_removal(table: Table, line: &str, removed: impl Fn(Table, &str) -> bool) -> bool {
    if line.starts_with(':') {
        return true;
    }
    let Some((chain, args)) = line.strip_prefix("-A ").and_then(|r| r.split_once(' ')) else {
        return false;
    };
    // Chain names have no spaces and are never quoted, so a plain split finds every jump (a
    // comment that looks like one only keeps a line more).
    let words: Vec<&str> = args.split_whitespace().collect();
    !removed(table, chain)
        && words
            .windows(2)
            .any(|w| (w[0] == "-j" || w[0] == "-g") && removed(table, w[1]))
}

/// `iptables-restore --noflush` input removing `chains` from `table`: each is flushed (a
/// chain line), then `deletions` remove the jumps into them, then they are deleted. Empty
/// when there is nothing to do.
pub fn restore_removal(table: Table, chains: &[String], deletions: &[String]) -> String {
    if chains.is_empty() && deletions.is_empty() {
        return String::new();
    }
    let mut input = format!("*{}\n", table.as_str());
    for chain in chains {
        let _ = writeln!(input, ":{chain} - [0:0]");
    }
    for line in deletions {
        input.push_str(line);
        input.push('\n');
    }
    for chain in chains {
        let _ = writeln!(input, "-X {chain}");
    }
    input.push_str("COMMIT\n");
    input
}

/// A chain name nft's script syntax cannot take unquoted (its parser refuses quoted chain
/// names); iptables chain names never need it, but the names come from the kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chain name {0:?} cannot be written in an nft script")]
pub struct UnscriptableName(pub String);

/// An `nft -f` script, one transaction: delete the jump `rules` (table, chain, handle) of
/// the `ip` family, then flush and delete `chains`.
pub fn nft_removal(
    chains: &[(Table, String)],
    rules: &[(Table, String, u64)],
) -> Result<String, UnscriptableName> {
    nft_removal_of(Family::Ipv4, chains, rules)
}

/// [`nft_removal`] in the nftables family of `family` (`ip6` for ip6tables-nft's tables).
pub fn nft_removal_of(
    family: Family,
    chains: &[(Table, String)],
    rules: &[(Table, String, u64)],
) -> Result<String, UnscriptableName> {
    let nf = family.nft_family();
    let plain = |name: &str| {
        let mut chars = name.chars();
        let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            Ok(())
        } else {
            Err(UnscriptableName(name.to_owned()))
        }
    };
    let mut script = String::new();
    for (table, chain, handle) in rules {
        plain(chain)?;
        let _ = writeln!(
            script,
            "delete rule {nf} {} {chain} handle {handle}",
            table.as_str()
        );
    }
    for (table, chain) in chains {
        plain(chain)?;
        let _ = writeln!(script, "flush chain {nf} {} {chain}", table.as_str());
    }
    for (table, chain) in chains {
        let _ = writeln!(script, "delete chain {nf} {} {chain}", table.as_str());
    }
    Ok(script)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(_: Table, chain: &str) -> bool {
        chain.starts_with("SWY-")
    }

    #[test]
    fn jumps_from_every_other_chain_become_deletions_with_their_arguments_as_printed() {
        let listing = "-P PREROUTING ACCEPT\n-N OTHER-TOOL\n-N SWY-SERVICES\n\
            -A PREROUTING -m comment --comment \"switchyard service portals\" -j SWY-SERVICES\n\
            -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
            -A PREROUTING -m addrtype --dst-type LOCAL -j SWY-NODEPORTS\n\
            -A OTHER-TOOL -g SWY-SERVICES\n\
            -A OTHER-TOOL -m comment --comment \"-j SWY-X\" -j ACCEPT\n\
            -A SWY-SERVICES -d 198.18.128.10/32 -j SWY-SVC-X\n";
        assert_eq!(
            jump_deletions(Table::Nat, listing, ours),
            [
                "-D PREROUTING -m comment --comment \"switchyard service portals\" -j SWY-SERVICES",
                "-D PREROUTING -m addrtype --dst-type LOCAL -j SWY-NODEPORTS",
                "-D OTHER-TOOL -g SWY-SERVICES",
            ]
        );
    }

    #[test]
    fn a_removal_keeps_of_a_save_only_declarations_and_possible_jumps_into_removed_chains() {
        let fallback = |_: Table, chain: &str| chain.starts_with("SWYSCTP-");
        let save =
            "*nat\n:PREROUTING ACCEPT [0:0]\n:SWY-SVC-X - [0:0]\n:SWYSCTP-SERVICES - [0:0]\n\
            -A PREROUTING -j SWY-SERVICES\n\
            -A PREROUTING -p sctp -j SWYSCTP-SERVICES\n\
            -A SWY-SVC-X -m comment --comment \"demo/web:http -> 198.19.1.1:8080\" -j SWY-SEP-Y\n\
            -A SWY-SEP-Y -p tcp -m tcp -j DNAT --to-destination 198.19.1.1:8080\n\
            -A OTHER -g SWYSCTP-SERVICES\n\
            -A SWYSCTP-SERVICES -j SWYSCTP-SVC-X\nCOMMIT\n";
        let kept: Vec<&str> = save
            .lines()
            .filter(|l| needed_for_removal(Table::Nat, l, fallback))
            .collect();
        // The rules of the chains that stay are not kept unless they jump into removed ones,
        // nor are the removed chains' own rules.
        assert_eq!(
            kept,
            [
                ":PREROUTING ACCEPT [0:0]",
                ":SWY-SVC-X - [0:0]",
                ":SWYSCTP-SERVICES - [0:0]",
                "-A PREROUTING -p sctp -j SWYSCTP-SERVICES",
                "-A OTHER -g SWYSCTP-SERVICES",
            ]
        );
        // What is kept is all jump_deletions needs.
        assert_eq!(
            jump_deletions(Table::Nat, &kept.join("\n"), fallback),
            jump_deletions(Table::Nat, save, fallback)
        );
    }

    #[test]
    fn restore_input_flushes_then_removes_jumps_then_deletes() {
        let chains = ["SWY-SERVICES".to_owned(), "SWY-SVC-X".to_owned()];
        let deletions = ["-D PREROUTING -j SWY-SERVICES".to_owned()];
        assert_eq!(
            restore_removal(Table::Nat, &chains, &deletions),
            "*nat\n:SWY-SERVICES - [0:0]\n:SWY-SVC-X - [0:0]\n-D PREROUTING -j SWY-SERVICES\n\
             -X SWY-SERVICES\n-X SWY-SVC-X\nCOMMIT\n"
        );
        assert_eq!(restore_removal(Table::Filter, &[], &[]), "");
    }

    #[test]
    fn nft_script_deletes_rules_then_flushes_then_deletes_chains() {
        let chains = [
            (Table::Nat, "SWY-SERVICES".to_owned()),
            (Table::Filter, "SWY-FIREWALL".to_owned()),
        ];
        let rules = [(Table::Nat, "PREROUTING".to_owned(), 42)];
        assert_eq!(
            nft_removal(&chains, &rules).unwrap(),
            "delete rule ip nat PREROUTING handle 42\n\
             flush chain ip nat SWY-SERVICES\nflush chain ip filter SWY-FIREWALL\n\
             delete chain ip nat SWY-SERVICES\ndelete chain ip filter SWY-FIREWALL\n"
        );
        let odd = [(Table::Nat, "SWY X; flush ruleset".to_owned())];
        assert_eq!(
            nft_removal(&odd, &[]),
            Err(UnscriptableName("SWY X; flush ruleset".into()))
        );
    }
}
