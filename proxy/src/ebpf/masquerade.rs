//! The one static iptables rule ebpf mode relies on: external traffic the tc program sends
//! to a remote backend carries the masquerade mark, and the kernel's MASQUERADE gives it this
//! node's address so the reply comes back through here (documented in the README).
use std::ops::RangeInclusive;

use switchyard_common::MASQUERADE_MARK;

use crate::iptables::exec::{self, ExecError};
use crate::iptables::rule_set::{ChainRef, Table};
use crate::iptables::IptablesBackend;

/// Our chain in nat, jumped to from POSTROUTING. Its prefix is not iptables mode's `SWY-`,
/// so removing iptables mode's state never touches it.
pub const CHAIN: &str = "SWITCHYARD-EBPF-MASQ";

/// Source ports MASQUERADE may pick: above the NodePort range, so a masqueraded reply never
/// arrives at a node port that the tc program would take for a new NodePort connection.
fn masquerade_ports(nodeport_range: &RangeInclusive<u16>) -> String {
    let low = nodeport_range.end().saturating_add(1).max(1024);
    format!("{low}-65535")
}

/// The restore input for the chain.
pub fn restore_input(nodeport_range: &RangeInclusive<u16>) -> String {
    let ports = masquerade_ports(nodeport_range);
    let mut input = format!("*nat\n:{CHAIN} - [0:0]\n");
    for proto in ["tcp", "udp"] {
        input.push_str(&format!(
            "-A {CHAIN} -p {proto} -m mark --mark {MASQUERADE_MARK:#x}/{MASQUERADE_MARK:#x} \
             -m comment --comment \"switchyard ebpf external traffic\" \
             -j MASQUERADE --to-ports {ports} --random-fully\n"
        ));
    }
    input.push_str("COMMIT\n");
    input
}

/// Writes the chain and the jump to it (idempotent).
pub fn install(
    backend: IptablesBackend,
    nodeport_range: &RangeInclusive<u16>,
) -> Result<(), ExecError> {
    exec::restore(backend, &restore_input(nodeport_range))?;
    let postrouting = ChainRef::new(Table::Nat, "POSTROUTING");
    let jump = vec!["-j".to_owned(), CHAIN.to_owned()];
    if !exec::rule_exists(backend, &postrouting, &jump) {
        exec::insert_rule(backend, &postrouting, 1, &jump)?;
    }
    Ok(())
}

/// Removes the chain and its jump (iptables mode start-up, `--cleanup`); absent is fine.
pub fn uninstall(backend: IptablesBackend) -> Result<(), ExecError> {
    let postrouting = ChainRef::new(Table::Nat, "POSTROUTING");
    let jump = vec!["-j".to_owned(), CHAIN.to_owned()];
    while exec::rule_exists(backend, &postrouting, &jump) {
        exec::delete_rule(backend, &postrouting, &jump)?;
    }
    let chain = ChainRef::new(Table::Nat, CHAIN);
    if exec::chain_exists(backend, &chain) {
        let chains = std::collections::BTreeSet::from([chain]);
        exec::restore(backend, &crate::iptables::restore::remove_chains(&chains))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_stay_above_the_nodeport_range() {
        let input = super::restore_input(&(30000..=32767));
        assert!(input.contains("--to-ports 32768-65535"), "{input}");
        assert!(
            input.contains("-p udp -m mark --mark 0x4000/0x4000"),
            "{input}"
        );
    }
}
