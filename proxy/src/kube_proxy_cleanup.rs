//! `--cleanup-kube-proxy`: removes what upstream kube-proxy left on a node that Switchyard
//! took over. It runs once, after Switchyard's first sync is complete, so its own rules
//! already serve every service when kube-proxy's go, and traffic flows throughout:
//!
//! - kube-proxy's `KUBE-*` chains ([`switchyard_model::iptables::kube_proxy`] tells them from
//!   kubelet's) on both iptables backends and both families (iptables and ip6tables): the
//!   jumps into them from every other chain, then the chains, as kube-proxy's own `--cleanup`
//!   does;
//! - the `ip kube-proxy` and `ip6 kube-proxy` nftables tables of its nftables mode;
//! - the ipsets of its ipvs mode, by their exact names
//!   ([`switchyard_model::iptables::kube_proxy::ipvs_ipsets`]), after the chains whose rules
//!   reference them (a referenced set cannot be destroyed), as upstream's cleanup orders it;
//! - the `kube-ipvs0` dummy interface of its ipvs mode, which holds every ClusterIP as a local
//!   address (IPVS serves only locally delivered packets, so without it IPVS no longer sees
//!   service traffic).
//!
//! IPVS virtual servers are left in place (other tools may use IPVS; the warning names the
//! command).
use std::collections::HashSet;
use std::io::ErrorKind;
use std::process::Command;

use crate::iptables::cleanup::{remove_chains_where, CleanupError};
use crate::iptables::rule_set::Family;
use crate::iptables::{IptablesBackend, Tools};
use switchyard_model::iptables::kube_proxy::{ipvs_ipsets, is_kube_proxy_chain};

/// kube-proxy's nftables table (both families use this name).
const NFT_TABLE: &str = "kube-proxy";
/// kube-proxy's ipvs mode dummy interface.
const IPVS_DUMMY: &str = "kube-ipvs0";

/// What one cleanup removed and what it could not.
#[derive(Debug, Default)]
pub struct Report {
    /// Chains removed, per backend and family.
    pub chains: Vec<(Tools, usize)>,
    /// nftables tables removed (`ip kube-proxy`, `ip6 kube-proxy`).
    pub nft_tables: Vec<String>,
    /// ipsets destroyed.
    pub ipsets: Vec<String>,
    /// Interfaces removed (`kube-ipvs0`).
    pub links: Vec<String>,
    /// What was left, and why: one line each.
    pub left: Vec<String>,
}

/// A failure of one step; the others still run.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The iptables chains of a backend and family.
    #[error("iptables ({backend}): {source}")]
    Iptables {
        /// Backend and family.
        backend: Tools,
        /// Underlying error.
        source: CleanupError,
    },
    /// An nft or ipset command.
    #[error("{command}: {message}")]
    Command {
        /// The command.
        command: String,
        /// What it said.
        message: String,
        /// Whether the program is not installed.
        not_found: bool,
    },
    /// The rtnetlink request removing the dummy interface.
    #[error("removing interface {IPVS_DUMMY}: {0}")]
    Link(#[source] rtnetlink::Error),
}

/// Removes kube-proxy's iptables and ip6tables chains (both backends) and its `ip` and `ip6`
/// nftables tables; blocking (it runs the iptables tools). On iptables-legacy only tables
/// that exist are touched, so a node without ip6tables-legacy tables gets none.
pub fn remove_iptables_and_nft(report: &mut Report) {
    for family in Family::ALL {
        for backend in [IptablesBackend::Legacy, IptablesBackend::Nft] {
            let tools = Tools::new(backend, family);
            match remove_chains_where(tools, is_kube_proxy_chain) {
                Ok(0) => {}
                Ok(n) => report.chains.push((tools, n)),
                Err(source) => report.left.push(
                    StepError::Iptables {
                        backend: tools,
                        source,
                    }
                    .to_string(),
                ),
            }
        }
    }
    match nft_tables() {
        Ok(tables) => {
            for nf in ["ip", "ip6"] {
                if tables.iter().any(|(f, n)| f == nf && n == NFT_TABLE) {
                    match tool("nft", &["delete", "table", nf, NFT_TABLE]) {
                        Ok(_) => report.nft_tables.push(format!("{nf} {NFT_TABLE}")),
                        Err(e) => report.left.push(e.to_string()),
                    }
                }
            }
        }
        // No nft binary, or no nf_tables: nothing of kube-proxy's nftables mode there.
        Err(e) => tracing::debug!(error = %e, "cannot list nftables tables"),
    }
}

/// Destroys the ipsets of kube-proxy's ipvs mode that exist on the node; blocking. Runs after
/// [`remove_iptables_and_nft`]: the kernel refuses to destroy a set a rule still references.
pub fn remove_ipvs_ipsets(report: &mut Report) {
    let listing = match tool("ipset", &["list", "-n"]) {
        Ok(listing) => listing,
        // No ipset tool: no ipvs mode ran with this root filesystem either.
        Err(StepError::Command {
            not_found: true, ..
        }) => {
            tracing::debug!("no ipset command: no ipsets looked for");
            return;
        }
        Err(e) => {
            report.left.push(e.to_string());
            return;
        }
    };
    let existing: HashSet<&str> = listing.lines().map(str::trim).collect();
    for name in ipvs_ipsets().filter(|n| existing.contains(n.as_str())) {
        match tool("ipset", &["destroy", &name]) {
            Ok(_) => report.ipsets.push(name),
            Err(e) => report.left.push(e.to_string()),
        }
    }
}

/// Removes `kube-ipvs0` if present.
pub async fn remove_ipvs_dummy(report: &mut Report) {
    let Ok(index) = nix::net::if_::if_nametoindex(IPVS_DUMMY) else {
        return;
    };
    let result = async {
        let (connection, handle, _) = rtnetlink::new_connection()
            .map_err(|e| rtnetlink::Error::NamespaceError(format!("rtnetlink connection: {e}")))?;
        let task = tokio::spawn(connection);
        let deleted = handle.link().del(index).execute().await;
        task.abort();
        deleted
    }
    .await;
    match result {
        Ok(()) => {
            report.links.push(IPVS_DUMMY.into());
            report.left.push(
                "IPVS virtual servers of kube-proxy's ipvs mode: kept, they no longer see \
                 service traffic (remove them with `ipvsadm --clear` if nothing else on the \
                 node uses IPVS)"
                    .into(),
            );
        }
        Err(e) => report.left.push(StepError::Link(e).to_string()),
    }
}

/// Runs every step and logs what it did.
pub async fn run() -> Report {
    let mut report = tokio::task::spawn_blocking(|| {
        let mut report = Report::default();
        remove_iptables_and_nft(&mut report);
        remove_ipvs_ipsets(&mut report);
        report
    })
    .await
    .unwrap_or_else(|e| Report {
        left: vec![format!("the iptables cleanup task failed: {e}")],
        ..Report::default()
    });
    remove_ipvs_dummy(&mut report).await;
    let chains: Vec<String> = report
        .chains
        .iter()
        .map(|(backend, n)| format!("{n} on {backend}"))
        .collect();
    tracing::info!(
        chains = ?chains,
        nft_tables = ?report.nft_tables,
        ipsets = ?report.ipsets,
        links = ?report.links,
        "--cleanup-kube-proxy: removed kube-proxy's leftovers"
    );
    for left in &report.left {
        tracing::warn!("--cleanup-kube-proxy: {left}");
    }
    report
}

/// (family, name) of every nftables table.
fn nft_tables() -> Result<Vec<(String, String)>, StepError> {
    let out = tool("nft", &["list", "tables"])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("table")).then_some(())?;
            Some((words.next()?.to_owned(), words.next()?.to_owned()))
        })
        .collect())
}

/// Runs `program args`, its standard output on success.
fn tool(program: &str, args: &[&str]) -> Result<String, StepError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| StepError::Command {
            command: command.clone(),
            not_found: e.kind() == ErrorKind::NotFound,
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(StepError::Command {
            command,
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            not_found: false,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
