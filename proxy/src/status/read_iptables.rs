//! Reading iptables mode's chains: which backends hold them, and their rules. Thin: the rows
//! come from [`crate::model::status::iptables`].
use crate::iptables::chains::SERVICES;
use crate::iptables::exec::{self, ExecError};
use crate::iptables::rule_set::{ChainRef, Table};
use crate::iptables::IptablesBackend;
use crate::model::status::iptables::Saved;

/// The tables holding service rules.
const TABLES: [Table; 2] = [Table::Nat, Table::Filter];

/// The backends whose nat table has our `SWY-SERVICES` chain: `only`, or the one `iptables`
/// points at first, then the other. An iptables-legacy table is only looked at when it
/// exists, since any legacy command would create it.
pub fn programmed(only: Option<IptablesBackend>) -> Vec<IptablesBackend> {
    let candidates = match only {
        Some(backend) => vec![backend],
        None => {
            let first = IptablesBackend::detect().unwrap_or(IptablesBackend::Nft);
            let second = match first {
                IptablesBackend::Nft => IptablesBackend::Legacy,
                IptablesBackend::Legacy => IptablesBackend::Nft,
            };
            vec![first, second]
        }
    };
    let legacy = exec::legacy_tables();
    candidates
        .into_iter()
        .filter(|backend| *backend == IptablesBackend::Nft || legacy.contains("nat"))
        .filter(|backend| exec::chain_exists(*backend, &ChainRef::new(Table::Nat, SERVICES)))
        .collect()
}

/// Our chains in `backend`'s nat and filter tables.
pub fn read(backend: IptablesBackend) -> Result<Saved, ExecError> {
    let legacy = exec::legacy_tables();
    let mut text = String::new();
    for table in TABLES {
        if backend == IptablesBackend::Legacy && !legacy.contains(table.as_str()) {
            continue;
        }
        text.push_str(&exec::save_ours(backend, table)?);
    }
    Ok(Saved::parse(&text))
}

/// ebpf mode's SCTP fallback chains (`SWYSCTP-*`) in the backends that hold them: `only`, or
/// both (legacy only where its nat table exists).
pub fn sctp_fallback(
    only: Option<IptablesBackend>,
) -> Result<Vec<(IptablesBackend, String)>, ExecError> {
    use crate::model::iptables::sctp_fallback::{fallback_name, PREFIX};
    let candidates = match only {
        Some(backend) => vec![backend],
        None => vec![IptablesBackend::Nft, IptablesBackend::Legacy],
    };
    let legacy = exec::legacy_tables();
    let mut out = Vec::new();
    for backend in candidates {
        if backend == IptablesBackend::Legacy && !legacy.contains("nat") {
            continue;
        }
        if !exec::chain_exists(backend, &ChainRef::new(Table::Nat, fallback_name(SERVICES))) {
            continue;
        }
        let mut text = String::new();
        for table in TABLES {
            if backend == IptablesBackend::Legacy && !legacy.contains(table.as_str()) {
                continue;
            }
            text.push_str(&exec::save_prefixed(backend, table, PREFIX)?);
        }
        out.push((backend, text));
    }
    Ok(out)
}
