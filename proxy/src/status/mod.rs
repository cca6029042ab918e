//! `switchyard status`: prints what is programmed on this node, read back from the kernel
//! (ebpf mode's pinned maps and links, iptables mode's `SWY-*` chains), as tables or JSON.
//! It needs no running controller: the pinned maps and the chains outlive it.
//!
//! The reading is here ([`read_ebpf`], [`read_iptables`]); turning what was read into rows
//! and tables is pure, in [`crate::model::status`].
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::config::settings::DEFAULT_BPFFS_PATH;
use crate::config::ProxyMode;
use crate::iptables::IptablesBackend;
use crate::model::status::{self, Report};

pub mod read_ebpf;
pub mod read_iptables;

/// `switchyard status [services|backends|maps] [-o table|json]`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// What to show (default: a summary, the services, and the maps or chains).
    #[command(subcommand)]
    pub view: Option<View>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    /// The mode whose state to read (default: the one programmed; ebpf first).
    #[arg(long = "proxy-mode", value_enum, global = true)]
    pub mode: Option<ProxyMode>,
    /// ebpf mode's pin directory.
    #[arg(long, default_value = DEFAULT_BPFFS_PATH, global = true)]
    pub bpffs_path: PathBuf,
    /// iptables mode's backend (default: the one `iptables` points at, then the other).
    #[arg(long, value_enum, global = true)]
    pub iptables_backend: Option<IptablesBackend>,
}

/// One part of the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum View {
    /// One row per frontend with its backends (`cilium-dbg service list`).
    Services,
    /// One row per backend entry: ebpf mode's slots, iptables mode's endpoint chains.
    Backends,
    /// ebpf: entries and capacity per map, and the attached programs; iptables: chains and
    /// rules per table.
    Maps,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned text tables.
    Table,
    /// One JSON object.
    Json,
}

/// Why there is nothing to show.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Neither mode has state on this node.
    #[error(
        "nothing is programmed on this node: no pinned maps under {bpffs}/maps (ebpf mode) \
         and no SWY-SERVICES chain in {backends} (iptables mode)"
    )]
    Nothing {
        /// The pin directory looked at.
        bpffs: String,
        /// The iptables backends looked at.
        backends: String,
    },
    /// ebpf mode was asked for and has no state.
    #[error(
        "nothing is programmed in ebpf mode: no pinned maps under {0}/maps (check --bpffs-path)"
    )]
    NoEbpf(String),
    /// iptables mode was asked for and has no state.
    #[error("nothing is programmed in iptables mode: no SWY-SERVICES chain in {0}")]
    NoIptables(String),
    /// The pinned maps cannot be read.
    #[error(transparent)]
    Ebpf(#[from] read_ebpf::ReadError),
    /// iptables-save failed.
    #[error(transparent)]
    Iptables(#[from] crate::iptables::exec::ExecError),
    /// The report cannot be encoded.
    #[error("encoding the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Reads the state and returns what to print.
pub fn run(args: &StatusArgs) -> Result<String, StatusError> {
    let bpffs = args.bpffs_path.display().to_string();
    let backends_text = |only: Option<IptablesBackend>| match only {
        Some(backend) => format!("iptables-{backend}"),
        None => "iptables-nft or iptables-legacy".to_owned(),
    };
    let ebpf = args.mode != Some(ProxyMode::Iptables) && read_ebpf::is_programmed(&args.bpffs_path);
    let iptables = if args.mode == Some(ProxyMode::Ebpf) {
        Vec::new()
    } else {
        read_iptables::programmed(args.iptables_backend)
    };
    let mut report = match (args.mode, ebpf, iptables.first()) {
        (_, true, _) => ebpf_report(args)?,
        (_, false, Some(backend)) => iptables_report(*backend)?,
        (Some(ProxyMode::Ebpf), false, None) => return Err(StatusError::NoEbpf(bpffs)),
        (Some(ProxyMode::Iptables), false, None) => {
            return Err(StatusError::NoIptables(backends_text(
                args.iptables_backend,
            )))
        }
        (None, false, None) => {
            return Err(StatusError::Nothing {
                bpffs,
                backends: backends_text(args.iptables_backend),
            })
        }
    };
    // Each mode removes the other's state when it starts; both present is worth saying.
    let shown = if ebpf { None } else { iptables.first() };
    for backend in iptables.iter().filter(|b| Some(*b) != shown) {
        report.notes.push(format!(
            "iptables-{backend} holds SWY-* chains too: `switchyard status --proxy-mode iptables \
             --iptables-backend {backend}` shows them"
        ));
    }
    Ok(render(report, args.view, args.output)?)
}

/// The report limited to `view`, as text or JSON.
fn render(
    mut report: Report,
    view: Option<View>,
    output: Output,
) -> Result<String, serde_json::Error> {
    match view {
        // JSON of the whole state holds every section; the summary table leaves the
        // backend entries (every slot once more) to `status backends`.
        None if output == Output::Table => report.backends = None,
        None => {}
        Some(View::Services) => {
            report.backends = None;
            report.maps = None;
            report.links = None;
            report.chains = None;
        }
        Some(View::Backends) => {
            report.services = None;
            report.maps = None;
            report.links = None;
            report.chains = None;
        }
        Some(View::Maps) => {
            report.services = None;
            report.backends = None;
        }
    }
    Ok(match output {
        Output::Table => status::table::render(&report, view.is_none()),
        Output::Json => serde_json::to_string_pretty(&report)? + "\n",
    })
}

fn ebpf_report(args: &StatusArgs) -> Result<Report, StatusError> {
    let pinned = read_ebpf::read(&args.bpffs_path)?;
    let decoded = status::ebpf::decode(&pinned.maps);
    let mut notes = pinned.notes;
    notes.extend(decoded.notes);
    let (mut services, mut backends) = (decoded.services, decoded.backends);
    // SCTP ports are served by iptables rules of ebpf mode's own (its SCTP fallback).
    for (tools, save) in read_iptables::sctp_fallback(args.iptables_backend)? {
        let mut fallback = status::iptables::decode_sctp_fallback(&save);
        let ipv6 = tools.family == crate::iptables::rule_set::Family::Ipv6;
        notes.push(format!(
            "{} SCTP frontends are served by ebpf mode's SCTP fallback: SWYSCTP-* chains in \
             {}tables-{}",
            fallback.services.len(),
            if ipv6 { "ip6" } else { "ip" },
            tools.backend
        ));
        if ipv6 {
            mark_ipv6_nodeports(&mut fallback.services);
        }
        notes.extend(fallback.notes);
        services.extend(fallback.services);
        backends.extend(fallback.backends);
    }
    Ok(Report {
        mode: "ebpf",
        source: args.bpffs_path.display().to_string(),
        services: Some(services),
        backends: Some(backends),
        maps: Some(pinned.map_rows),
        links: Some(pinned.links),
        chains: None,
        notes,
    })
}

/// IPv6 rows decoded from ip6tables: a NodePort row (no address: every NodePort address)
/// shows `[::]` where the IPv4 one shows `*`.
fn mark_ipv6_nodeports(rows: &mut [status::ServiceRow]) {
    for row in rows {
        row.address
            .get_or_insert(std::net::Ipv6Addr::UNSPECIFIED.into());
    }
}

fn iptables_report(backend: IptablesBackend) -> Result<Report, StatusError> {
    let saved = read_iptables::read(backend)?;
    let mut decoded = status::iptables::decode(&saved);
    // ip6tables hold the IPv6 rule set (upstream's second proxier): decoded on its own, as
    // both families use the same chain names, and listed after the IPv4 rows. An IPv6
    // NodePort row shows `[::]` (every IPv6 NodePort address) where the IPv4 one shows `*`.
    if read_iptables::programs_ipv6(backend) {
        let tools = crate::iptables::Tools::new(backend, crate::iptables::rule_set::Family::Ipv6);
        let mut v6 = status::iptables::decode(&read_iptables::read_family(tools)?);
        mark_ipv6_nodeports(&mut v6.services);
        decoded.services.extend(v6.services);
        decoded.backends.extend(v6.backends);
        decoded.notes.extend(v6.notes);
        decoded.chains.extend(v6.chains.into_iter().map(|mut row| {
            row.table = format!("{} (IPv6)", row.table);
            row
        }));
    }
    Ok(Report {
        mode: "iptables",
        source: format!("iptables-{backend}"),
        services: Some(decoded.services),
        backends: Some(decoded.backends),
        maps: None,
        links: None,
        chains: Some(decoded.chains),
        notes: decoded.notes,
    })
}
