//! Leftovers of older ebpf mode versions, which had the kernel masquerade external traffic to
//! remote backends with a static iptables rule (a nat POSTROUTING jump to a chain of
//! MASQUERADE rules on mark 0x4000). The tc programs now source-NAT those flows themselves, so
//! ebpf mode writes no iptables rule; this module only removes the old chain, and computes the
//! port range the programs allocate from.
use std::ops::RangeInclusive;

use crate::iptables::exec::{self, ExecError};
use crate::iptables::rule_set::{ChainRef, Table};
use crate::iptables::IptablesBackend;

/// The chain older versions wrote in nat, jumped to from POSTROUTING.
pub const CHAIN: &str = "SWITCHYARD-EBPF-MASQ";

/// The same chain under the name of even older versions.
pub const OLD_CHAIN: &str = "SWY-EBPF-MASQ";

/// Source ports of flows the tc programs source-NAT: above the NodePort range, so a reply to
/// a NATed flow never arrives at a node port that the tc program would take for a new NodePort
/// connection, and never below 1024. `None` when nothing is left above the range.
pub fn snat_ports(nodeport_range: &RangeInclusive<u16>) -> Option<RangeInclusive<u16>> {
    let low = nodeport_range.end().checked_add(1)?.max(1024);
    Some(low..=u16::MAX)
}

/// Removes both chain names and their jumps (start-up of either mode, `--cleanup`); absent
/// is fine.
pub fn uninstall(backend: IptablesBackend) -> Result<(), ExecError> {
    // A legacy command would create the nat table where there is none (and nothing of ours).
    if backend == IptablesBackend::Legacy && !exec::legacy_tables().contains(Table::Nat.as_str()) {
        return Ok(());
    }
    let postrouting = ChainRef::new(Table::Nat, "POSTROUTING");
    for name in [CHAIN, OLD_CHAIN] {
        let jump = vec!["-j".to_owned(), name.to_owned()];
        while exec::rule_exists(backend, &postrouting, &jump) {
            exec::delete_rule(backend, &postrouting, &jump)?;
        }
        let chain = ChainRef::new(Table::Nat, name);
        if exec::chain_exists(backend, &chain) {
            let chains = std::collections::BTreeSet::from([chain]);
            exec::restore(backend, &crate::iptables::restore::remove_chains(&chains))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_stay_above_the_nodeport_range() {
        assert_eq!(super::snat_ports(&(30000..=32767)), Some(32768..=65535));
        assert_eq!(super::snat_ports(&(80..=100)), Some(1024..=65535));
        assert_eq!(super::snat_ports(&(30000..=65535)), None);
    }
}
