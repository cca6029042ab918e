//! Rendering iptables-restore input: full syncs (one transaction, or batches on iptables-nft)
//! and partial syncs that touch only the changed service ports' chains and rules.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::rule_set::{BaseRules, ChainRef, PortRules, Rule, RuleCounts, Table};

/// How a full sync is split into iptables-restore runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// One `--noflush` transaction per table. iptables-legacy loads 10,000 services x 10
    /// endpoints this way in seconds.
    Single,
    /// iptables-nft's `--noflush` cost grows faster than linearly with the size of one
    /// transaction (minutes at 10,000 services), while small transactions stay cheap even on a
    /// large table; so service chains are written in batches of this many service ports, and
    /// the shared dispatch chains that make them reachable are written last.
    Batched {
        /// Service ports per transaction.
        ports_per_batch: usize,
    },
}

/// Service ports per iptables-nft transaction: measured on 2 cores, 10 batches of 1,000
/// kube-proxy-shaped service ports load in ~19 s, against > 300 s as one transaction.
pub const NFT_PORTS_PER_BATCH: usize = 1_000;

/// Chains whose contents never depend on services: safe to flush and refill in the first
/// batch of a batched full sync, since the refill is atomic and identical.
fn is_fixed_content(chain: &ChainRef, base: &BaseRules) -> bool {
    base.chains
        .get(chain)
        .is_some_and(|rules| !rules.is_empty())
}

/// One iptables-restore input under construction, per table.
#[derive(Default)]
struct Input {
    tables: BTreeMap<Table, TableInput>,
}

#[derive(Default)]
struct TableInput {
    declare: BTreeSet<String>,
    /// Rule lines, each ending in a newline, in one buffer: a 10,000-service full sync has
    /// 400,000 of them, and one String per line would double the input's memory.
    lines: String,
    delete: BTreeSet<String>,
}

impl TableInput {
    fn is_empty(&self) -> bool {
        self.declare.is_empty() && self.lines.is_empty() && self.delete.is_empty()
    }

    /// The table's section, built in the lines buffer itself: the header is inserted in
    /// front rather than the lines copied behind it (a large buffer is grown by the
    /// allocator's remapping, not copied, so the input exists once in memory).
    fn render(self, table: Table) -> String {
        let mut head = format!("*{table}\n");
        for chain in &self.declare {
            let _ = writeln!(head, ":{chain} - [0:0]");
        }
        let mut out = self.lines;
        out.reserve(head.len() + self.delete.iter().map(|c| c.len() + 4).sum::<usize>() + 8);
        out.insert_str(0, &head);
        for chain in &self.delete {
            let _ = writeln!(out, "-X {chain}");
        }
        out.push_str("COMMIT\n");
        out
    }
}

impl Input {
    fn table(&mut self, table: Table) -> &mut TableInput {
        self.tables.entry(table).or_default()
    }

    /// Declares (creating or flushing) `chain` and appends its rules.
    fn chain(&mut self, chain: &ChainRef, rules: &[Rule]) {
        let t = self.table(chain.table);
        t.declare.insert(chain.chain.clone());
        for rule in rules {
            let _ = writeln!(t.lines, "-A {} {rule}", chain.chain);
        }
    }

    fn append(&mut self, chain: &ChainRef, rule: &str) {
        let _ = writeln!(self.table(chain.table).lines, "-A {} {rule}", chain.chain);
    }

    fn delete_rule(&mut self, chain: &ChainRef, rule: &str) {
        let _ = writeln!(self.table(chain.table).lines, "-D {} {rule}", chain.chain);
    }

    /// Flushes and deletes a chain (after every rule that referenced it is gone).
    fn remove_chain(&mut self, chain: &ChainRef) {
        let t = self.table(chain.table);
        t.declare.insert(chain.chain.clone());
        t.delete.insert(chain.chain.clone());
    }

    fn render(self) -> String {
        let mut sections: Vec<String> = self
            .tables
            .into_iter()
            .filter(|(_, t)| !t.is_empty())
            .map(|(table, t)| t.render(table))
            .collect();
        // The largest section (nat, at scale) takes the others in place, as above.
        let Some(largest) = (0..sections.len()).max_by_key(|i| sections[*i].len()) else {
            return String::new();
        };
        let after: String = sections.split_off(largest + 1).concat();
        let mut out = sections.pop().unwrap_or_default();
        let before = sections.concat();
        out.reserve(before.len() + after.len());
        out.insert_str(0, &before);
        out.push_str(&after);
        out
    }
}

/// One piece of what a full sync writes, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// More text of the current iptables-restore input.
    Text(&'a str),
    /// The current input is complete: it runs before the next one begins.
    End,
}

/// A streamed nat section is handed on in pieces of about this many bytes.
const PIECE_BYTES: usize = 256 * 1024;

/// The last input of a full sync. On [`Strategy::Single`] it holds every service chain, and
/// its nat section (nearly all of it: 50 MB at 10,000 services x 10 endpoints) is handed on
/// as it is written instead of being built whole, so the caller can feed it to
/// iptables-restore while the rest is rendered. Its chains are declared up front, sorted
/// ([`Last::declare_nat`]): iptables-legacy-restore spends 3 s more CPU on 110,000 chains
/// declared in hash order next to their rules. Stale chains are flushed at the end, all
/// before any is deleted.
struct Last {
    input: Input,
    /// The nat section written so far and not yet handed on, when streaming.
    nat: Option<String>,
}

impl Last {
    fn new(streamed: bool) -> Self {
        Self {
            input: Input::default(),
            nat: streamed.then(|| String::from("*nat\n")),
        }
    }

    /// The streamed nat text, when `table` is nat and it is streamed.
    fn streamed(&mut self, table: Table) -> Option<&mut String> {
        self.nat.as_mut().filter(|_| table == Table::Nat)
    }

    /// Declares the streamed section's chains, `names`, in order; the other tables' chains
    /// are declared as they come.
    fn declare_nat<E>(
        &mut self,
        names: &[String],
        emit: &mut impl FnMut(Piece<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        for name in names {
            if let Some(nat) = &mut self.nat {
                let _ = writeln!(nat, ":{name} - [0:0]");
            }
            self.pass_on(emit)?;
        }
        Ok(())
    }

    /// Appends the rules of `chains`, declaring those of tables that are not streamed (the
    /// streamed ones are declared by [`Last::declare_nat`]).
    fn chains<'c>(&mut self, chains: impl IntoIterator<Item = (&'c ChainRef, &'c Vec<Rule>)>) {
        for (chain, rules) in chains {
            match self.streamed(chain.table) {
                Some(nat) => {
                    for rule in rules {
                        let _ = writeln!(nat, "-A {} {rule}", chain.chain);
                    }
                }
                None => self.input.chain(chain, rules),
            }
        }
    }

    fn line(&mut self, table: Table, line: std::fmt::Arguments<'_>) {
        let lines = match self.streamed(table) {
            Some(nat) => nat,
            None => &mut self.input.table(table).lines,
        };
        let _ = lines.write_fmt(line);
        lines.push('\n');
    }

    /// Flushes, then deletes `chains`.
    fn remove_chains(&mut self, chains: &[&ChainRef]) {
        for chain in chains {
            match self.streamed(chain.table) {
                Some(nat) => drop(writeln!(nat, ":{} - [0:0]", chain.chain)),
                None => self.input.remove_chain(chain),
            }
        }
        for chain in chains {
            if let Some(nat) = self.streamed(chain.table) {
                let _ = writeln!(nat, "-X {}", chain.chain);
            }
        }
    }

    /// Hands on the streamed text once there is enough of it.
    fn pass_on<E>(&mut self, emit: &mut impl FnMut(Piece<'_>) -> Result<(), E>) -> Result<(), E> {
        match &mut self.nat {
            Some(nat) if nat.len() >= PIECE_BYTES => {
                emit(Piece::Text(nat))?;
                nat.clear();
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Hands on the rest of the input and ends it.
    fn end<E>(self, emit: &mut impl FnMut(Piece<'_>) -> Result<(), E>) -> Result<(), E> {
        if let Some(mut nat) = self.nat {
            nat.push_str("COMMIT\n");
            emit(Piece::Text(&nat))?;
        }
        let rest = self.input.render();
        if !rest.is_empty() {
            emit(Piece::Text(&rest))?;
        }
        emit(Piece::End)
    }
}

/// Writes a full sync through `emit`, input by input in the order they must run, each as
/// [`Piece::Text`]s followed by [`Piece::End`]. `existing` are the chains of ours that are in
/// the kernel now; those not wanted any more are deleted in the last input. `last_lines`
/// (table, line) end the last input: the jumps from built-in chains, when the caller folds
/// them into the same transaction. The first error of `emit` stops the sync and is returned.
///
/// Ports are consumed one at a time: each port's rules are written into the input and then
/// handed to `rendered` (which keeps what it needs, e.g. a skeleton), so the rules of all
/// ports never exist twice, as rules and as input.
pub fn full_sync<K, E, P>(
    base: &BaseRules,
    ports: P,
    existing: &BTreeSet<ChainRef>,
    strategy: Strategy,
    last_lines: &[(Table, String)],
    mut rendered: impl FnMut(K, PortRules),
    mut emit: impl FnMut(Piece<'_>) -> Result<(), E>,
) -> Result<(), E>
where
    P: IntoIterator<Item = (K, PortRules)> + Clone,
{
    let mut stale: BTreeSet<&ChainRef> = existing
        .iter()
        .filter(|chain| !base.chains.contains_key(*chain))
        .collect();
    let mut shared: Vec<(ChainRef, Rule)> = Vec::new();
    let per_batch = match strategy {
        Strategy::Single => None,
        Strategy::Batched { ports_per_batch } => Some(ports_per_batch.max(1)),
    };
    let mut last = Last::new(per_batch.is_none());
    match strategy {
        Strategy::Single => {
            // A first pass over the ports for their chain names only (rendering them twice
            // costs a fraction of what unsorted declarations cost the tool).
            let mut names: Vec<String> = base
                .chains
                .keys()
                .filter(|c| c.table == Table::Nat)
                .map(|c| c.chain.clone())
                .collect();
            for (_, port) in ports.clone() {
                names.extend(
                    port.chains
                        .into_keys()
                        .filter(|c| c.table == Table::Nat)
                        .map(|c| c.chain),
                );
            }
            names.sort_unstable();
            names.dedup();
            last.declare_nat(&names, &mut emit)?;
            drop(names);
            last.chains(&base.chains);
        }
        Strategy::Batched { .. } => {
            // First: static chains, so service chains can jump to them. Dispatch chains
            // (no fixed rules) are only created when missing: flushing them now would cut
            // every service off until the last batch.
            let mut first = Input::default();
            for (chain, rules) in &base.chains {
                if is_fixed_content(chain, base) || !existing.contains(chain) {
                    first.chain(chain, rules);
                }
            }
            emit_input(first, &mut emit)?;
        }
    }
    let mut batch = Input::default();
    let mut in_batch = 0;
    for (key, port) in ports {
        if per_batch.is_some() {
            for (chain, rules) in &port.chains {
                batch.chain(chain, rules);
            }
        } else {
            last.chains(&port.chains);
            last.pass_on(&mut emit)?;
        }
        for chain in port.chains.keys() {
            stale.remove(chain);
        }
        shared.extend(port.shared.iter().cloned());
        rendered(key, port);
        in_batch += 1;
        if per_batch.is_some_and(|n| in_batch == n) {
            emit_input(std::mem::take(&mut batch), &mut emit)?;
            in_batch = 0;
        }
    }
    if in_batch > 0 {
        emit_input(batch, &mut emit)?;
    }
    if per_batch.is_some() {
        // Last: the dispatch chains, rewritten whole.
        last.chains(
            base.chains
                .iter()
                .filter(|(chain, _)| !is_fixed_content(chain, base)),
        );
    }
    for (chain, rule) in &shared {
        last.line(chain.table, format_args!("-A {} {rule}", chain.chain));
        last.pass_on(&mut emit)?;
    }
    last.remove_chains(&stale.into_iter().collect::<Vec<_>>());
    for (table, line) in last_lines {
        last.line(*table, format_args!("{line}"));
    }
    last.end(&mut emit)
}

/// Renders `input` and hands it on whole, unless it is empty.
fn emit_input<E>(input: Input, emit: &mut impl FnMut(Piece<'_>) -> Result<(), E>) -> Result<(), E> {
    let text = input.render();
    if text.is_empty() {
        return Ok(());
    }
    emit(Piece::Text(&text))?;
    emit(Piece::End)
}

/// [`full_sync`]'s inputs collected as whole strings (tests, small syncs).
pub fn full_sync_inputs<K>(
    base: &BaseRules,
    ports: impl IntoIterator<Item = (K, PortRules)> + Clone,
    existing: &BTreeSet<ChainRef>,
    strategy: Strategy,
    last_lines: &[(Table, String)],
    rendered: impl FnMut(K, PortRules),
) -> Vec<String> {
    let mut inputs = vec![String::new()];
    let collect = |piece: Piece<'_>| {
        match piece {
            Piece::Text(text) => inputs
                .last_mut()
                .map(|i| i.push_str(text))
                .unwrap_or_default(),
            Piece::End => inputs.push(String::new()),
        }
        Ok::<(), std::convert::Infallible>(())
    };
    let Ok(()) = full_sync(
        base, ports, existing, strategy, last_lines, rendered, collect,
    );
    inputs.retain(|i| !i.is_empty());
    inputs
}

/// The input of a partial sync: for each changed port, its chains are rewritten, its shared
/// rules are deleted and appended one by one, and chains it no longer has are removed.
/// Nothing of any other port appears in it.
pub fn partial_sync<'a>(
    changes: impl IntoIterator<Item = (Option<&'a PortRules>, Option<&'a PortRules>)>,
) -> String {
    let empty = PortRules::default();
    let mut input = Input::default();
    let mut deletes = Vec::new();
    let mut appends = Vec::new();
    for (old, new) in changes {
        let old = old.unwrap_or(&empty);
        let new = new.unwrap_or(&empty);
        for (chain, rules) in &new.chains {
            input.chain(chain, rules);
        }
        let old_shared: BTreeSet<&(ChainRef, Rule)> = old.shared.iter().collect();
        let new_shared: BTreeSet<&(ChainRef, Rule)> = new.shared.iter().collect();
        deletes.extend(old_shared.difference(&new_shared).copied());
        appends.extend(new_shared.difference(&old_shared).copied());
        for chain in old.chains.keys() {
            if !new.chains.contains_key(chain) {
                input.remove_chain(chain);
            }
        }
    }
    // Deletes first: a rule can move between ports in one sync.
    for (chain, rule) in deletes {
        input.delete_rule(chain, rule);
    }
    for (chain, rule) in appends {
        input.append(chain, rule);
    }
    input.render()
}

/// The rules an iptables-restore input writes (`-A` and `-I` lines), per table.
pub fn written_rules(input: &str) -> RuleCounts {
    let mut counts = RuleCounts::new();
    let mut table = None;
    for line in input.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = [Table::Nat, Table::Filter, Table::Mangle]
                .into_iter()
                .find(|t| t.as_str() == name);
        } else if line.starts_with("-A ") || line.starts_with("-I ") {
            if let Some(table) = table {
                *counts.entry(table).or_default() += 1;
            }
        }
    }
    counts
}

/// Input that flushes and deletes the given chains (used by `--cleanup`).
pub fn remove_chains(chains: &BTreeSet<ChainRef>) -> String {
    let mut input = Input::default();
    for chain in chains {
        input.remove_chain(chain);
    }
    input.render()
}

/// Inputs that flush and delete the given chains, split as `strategy` says. Batched: every
/// chain is flushed first (a batch at a time), so no chain of ours is referenced any more when
/// the deletion batches run; iptables-nft then never sees one huge transaction.
pub fn remove_chains_in(chains: &BTreeSet<ChainRef>, strategy: Strategy) -> Vec<String> {
    let per_batch = match strategy {
        Strategy::Single => return vec![remove_chains(chains)],
        // About three chains per service port.
        Strategy::Batched { ports_per_batch } => (ports_per_batch * 3).max(1),
    };
    let all: Vec<&ChainRef> = chains.iter().collect();
    let mut inputs = Vec::new();
    for batch in all.chunks(per_batch) {
        let mut input = Input::default();
        for chain in batch {
            input.table(chain.table).declare.insert(chain.chain.clone());
        }
        inputs.push(input.render());
    }
    for batch in all.chunks(per_batch) {
        let mut input = Input::default();
        for chain in batch {
            input.remove_chain(chain);
        }
        inputs.push(input.render());
    }
    inputs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batched_removal_flushes_everything_before_deleting_anything() {
        let chains: BTreeSet<ChainRef> = (0..7)
            .map(|i| chain(Table::Nat, &format!("SWY-SEP-{i}")))
            .collect();
        let single = remove_chains_in(&chains, Strategy::Single);
        assert_eq!(single, vec![remove_chains(&chains)]);
        let inputs = remove_chains_in(&chains, Strategy::Batched { ports_per_batch: 1 });
        // Batches of three chains: three flush inputs, then three delete inputs.
        assert_eq!(inputs.len(), 6, "{inputs:?}");
        let first_delete = inputs.iter().position(|i| i.contains("-X ")).unwrap();
        assert_eq!(first_delete, 3, "{inputs:?}");
        for (n, input) in inputs.iter().enumerate() {
            let declared = input.matches(":SWY-SEP-").count();
            let deleted = input.matches("-X SWY-SEP-").count();
            assert!(declared <= 3, "{input}");
            assert_eq!(deleted, if n < 3 { 0 } else { declared }, "{input}");
        }
        let flushed: usize = inputs[..3]
            .iter()
            .map(|i| i.matches(":SWY-SEP-").count())
            .sum();
        let deleted: usize = inputs[3..]
            .iter()
            .map(|i| i.matches("-X SWY-SEP-").count())
            .sum();
        assert_eq!((flushed, deleted), (7, 7));
    }

    fn chain(table: Table, name: &str) -> ChainRef {
        ChainRef::new(table, name)
    }

    #[test]
    fn rule_counts_agree_with_what_the_inputs_write() {
        let base = base();
        let ports: BTreeMap<&str, PortRules> = [("a", port("a")), ("bb", port("bb"))].into();
        let mut expected = base.rule_counts();
        for p in ports.values() {
            super::super::rule_set::add_counts(&mut expected, &p.rule_counts());
        }
        assert_eq!(
            expected.get(&Table::Nat),
            Some(&(1 + 2 * 3)),
            "{expected:?}"
        );
        let mut written = RuleCounts::new();
        for input in full_sync_inputs(
            &base,
            ports.clone(),
            &BTreeSet::new(),
            Strategy::Batched { ports_per_batch: 1 },
            &[],
            |_, _| {},
        ) {
            super::super::rule_set::add_counts(&mut written, &written_rules(&input));
        }
        assert_eq!(written, expected, "a full sync writes every rule once");
        let partial = partial_sync([(Some(&ports["a"]), Some(&port("a")))]);
        assert_eq!(
            written_rules(&partial),
            RuleCounts::from([(Table::Nat, 2)]),
            "the port's chains are rewritten; its unchanged shared rule is not"
        );
    }

    fn port(id: &str) -> PortRules {
        let svc = chain(Table::Nat, &format!("SWY-SVC-{id}"));
        let sep = chain(Table::Nat, &format!("SWY-SEP-{id}"));
        PortRules {
            chains: BTreeMap::from([
                (svc.clone(), vec![format!("-j SWY-SEP-{id}")]),
                (
                    sep,
                    vec!["-p tcp -m tcp -j DNAT --to-destination 198.19.1.11:8080".into()],
                ),
            ]),
            shared: vec![(
                chain(Table::Nat, "SWY-SERVICES"),
                format!(
                    "-d 198.18.128.{}/32 -p tcp -m tcp --dport 80 -j SWY-SVC-{id}",
                    id.len()
                ),
            )],
        }
    }

    fn base() -> BaseRules {
        BaseRules {
            chains: BTreeMap::from([
                (
                    chain(Table::Nat, "SWY-MARK-MASQ"),
                    vec!["-j MARK --or-mark 0x4000".into()],
                ),
                (chain(Table::Nat, "SWY-SERVICES"), vec![]),
            ]),
            jumps: vec![],
        }
    }

    #[test]
    fn single_strategy_is_one_input_that_removes_stale_chains_last() {
        let ports = BTreeMap::from([("a", port("A")), ("b", port("BB"))]);
        let existing = BTreeSet::from([chain(Table::Nat, "SWY-SVC-OLD")]);
        let inputs = full_sync_inputs(
            &base(),
            ports.clone(),
            &existing,
            Strategy::Single,
            &[],
            |_, _| {},
        );
        assert_eq!(inputs.len(), 1);
        let text = &inputs[0];
        assert!(text.starts_with("*nat\n"));
        assert!(text.contains(":SWY-SVC-A - [0:0]\n"));
        assert!(
            text.contains(":SWY-SVC-OLD - [0:0]\n"),
            "stale chain flushed before -X"
        );
        assert!(text.ends_with("-X SWY-SVC-OLD\nCOMMIT\n"), "{text}");
        assert!(text.contains("-A SWY-SERVICES -d 198.18.128.2/32"));
    }

    #[test]
    fn batched_strategy_writes_dispatch_last_and_bounds_batches() {
        let ports: BTreeMap<usize, PortRules> =
            (0..5).map(|i| (i, port(&format!("P{i}")))).collect();
        let existing = BTreeSet::from([chain(Table::Nat, "SWY-SERVICES")]);
        let inputs = full_sync_inputs(
            &base(),
            ports.clone(),
            &existing,
            Strategy::Batched { ports_per_batch: 2 },
            &[],
            |_, _| {},
        );
        // static chains, 3 batches of service chains, dispatch.
        assert_eq!(inputs.len(), 5, "{inputs:#?}");
        assert!(inputs[0].contains(":SWY-MARK-MASQ"));
        assert!(
            !inputs[0].contains(":SWY-SERVICES"),
            "existing dispatch not flushed early"
        );
        for batch in &inputs[1..4] {
            assert!(batch.matches(":SWY-SVC-").count() <= 2);
            assert!(!batch.contains("SWY-SERVICES"));
        }
        assert!(inputs[4].contains(":SWY-SERVICES - [0:0]"));
        assert_eq!(inputs[4].matches("-A SWY-SERVICES").count(), 5);
    }

    #[test]
    fn partial_sync_touches_only_the_changed_port() {
        let old = port("A");
        let mut new = port("A");
        new.shared[0].1 = "-d 198.18.128.99/32 -p tcp -m tcp --dport 80 -j SWY-SVC-A".into();
        new.chains.remove(&chain(Table::Nat, "SWY-SEP-A"));
        let text = partial_sync([(Some(&old), Some(&new))]);
        assert_eq!(
            text,
            "*nat\n:SWY-SEP-A - [0:0]\n:SWY-SVC-A - [0:0]\n-A SWY-SVC-A -j SWY-SEP-A\n\
             -D SWY-SERVICES -d 198.18.128.1/32 -p tcp -m tcp --dport 80 -j SWY-SVC-A\n\
             -A SWY-SERVICES -d 198.18.128.99/32 -p tcp -m tcp --dport 80 -j SWY-SVC-A\n\
             -X SWY-SEP-A\nCOMMIT\n"
        );
    }

    #[test]
    fn removing_a_port_deletes_its_rules_then_its_chains() {
        let old = port("A");
        let text = partial_sync([(Some(&old), None)]);
        let delete_rule = text.find("-D SWY-SERVICES").expect("rule deleted");
        let delete_chain = text.find("-X SWY-SVC-A").expect("chain deleted");
        assert!(delete_rule < delete_chain);
        assert!(!text.lines().any(|l| l.starts_with("-A ")), "{text}");
    }
}
