//! The control-plane benchmark's output: a Markdown table on stdout and a JSON file.
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use super::measure::Measured;

/// One run's outcome, as reported.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// `ebpf`, `iptables-legacy`, `iptables-nft`.
    pub mode: String,
    /// `manifests` or `api`.
    pub source: String,
    /// Services loaded.
    pub services: usize,
    /// Endpoints per service.
    pub endpoints: usize,
    /// Wall time of the whole run, testbed set-up and teardown included, seconds.
    pub total_s: f64,
    /// The figures, if the run got through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measured: Option<Measured>,
    /// Why the run failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Where the proxy's stderr of this run was saved.
    pub log: Option<PathBuf>,
}

/// The whole JSON document.
#[derive(Debug, Serialize)]
pub struct Document<'a> {
    /// When the benchmark started.
    pub unix_time: u64,
    /// Kernel release (`/proc/sys/kernel/osrelease`).
    pub kernel: String,
    /// Online CPUs.
    pub cpus: usize,
    /// The switchyard binary measured.
    pub switchyard: String,
    /// Idle window asked for, seconds.
    pub idle_seconds: u64,
    /// What the iptables-restore (or program load) figure means.
    pub iptables_restore_time: &'static str,
    /// Every run, in the order they ran.
    pub runs: &'a [Outcome],
}

/// Explanation recorded in the JSON and printed under the table.
pub const RESTORE_TIME: &str = "first sync's time inside iptables-restore \
     (switchyard_iptables_restore_duration_seconds_sum): the floor a full sync cannot go below; \
     in ebpf mode the programs' load at start-up instead (switchyard_ebpf_program_load_seconds: \
     maps, BTF, the verifier), which the first sync waits for";

/// Formats the table (Markdown) of all outcomes.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "| mode | source | services | first sync s (wall / reported / in iptables-restore or program load) | one change s (wall) | one change sync ms | idle CPU % (+children) | idle syncs (full) | peak RSS MiB | run s |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for o in outcomes {
        let cells = match (&o.measured, &o.error) {
            (Some(m), _) => format!(
                "{:.2} / {:.2} / {:.2} | {} | {} | {:.2} (+{:.2}) | {} ({}) | {:.1}",
                m.first_sync.wall_s,
                m.first_sync.reported_s,
                // One of the two is 0: each mode has only its own.
                m.first_sync.metrics.restore_seconds + m.first_sync.metrics.program_load_seconds,
                opt(m.change_wall_s, 3),
                match (m.change_sync_ms, m.change_sync_ms_at_most) {
                    (None, Some(bound)) => format!("<= {bound:.1}"),
                    (ms, _) => opt(ms, 1),
                },
                m.idle.cpu_pct,
                m.idle.children_cpu_pct,
                m.idle.syncs,
                m.idle.full_syncs,
                m.peak_rss_mib,
            ),
            (None, e) => format!(
                "failed: {} | | | | | ",
                e.as_deref()
                    .and_then(|e| e.lines().next())
                    .unwrap_or("unknown")
                    .replace('|', "/")
            ),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {cells} | {:.0} |\n",
            o.mode, o.source, o.services, o.total_s
        ));
    }
    out
}

/// Formats the restart, mode-switch and cleanup steps (Markdown), one row per step; empty
/// when no run had them.
pub fn lifecycle_table(outcomes: &[Outcome]) -> String {
    let mut rows = String::new();
    for o in outcomes {
        let Some(l) = o.measured.as_ref().and_then(|m| m.lifecycle.as_ref()) else {
            continue;
        };
        for start in &l.starts {
            let handover = start
                .handover_s
                .map(|h| format!(" / {h:.2}"))
                .unwrap_or_default();
            rows.push_str(&format!(
                "| {} | {} | {} over {} | {:.2} / {:.2}{handover} | {} |\n",
                o.mode,
                o.services,
                start.mode,
                start.over,
                start.wall_s,
                start.reported_s,
                left(&start.left)
            ));
        }
        if let Some(c) = &l.cleanup {
            rows.push_str(&format!(
                "| {} | {} | --cleanup{} | {:.2} | {} |\n",
                o.mode,
                o.services,
                if c.success { "" } else { " (failed)" },
                c.seconds,
                left(&c.left)
            ));
        }
    }
    if rows.is_empty() {
        return rows;
    }
    format!(
        "| run | services | step | s (wall / reported sync / then handover) | left behind |\n\
         | --- | ---: | --- | ---: | --- |\n{rows}"
    )
}

/// Formats the idle windows with flows in ebpf mode's conntrack map (Markdown); empty when no
/// run had one.
pub fn busy_table(outcomes: &[Outcome]) -> String {
    let mut rows = String::new();
    for o in outcomes {
        let Some(b) = o.measured.as_ref().and_then(|m| m.busy.as_ref()) else {
            continue;
        };
        rows.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.2} | {} | {} | {:.1} |\n",
            o.mode,
            o.services,
            b.flows,
            b.fill_s,
            b.idle.cpu_pct,
            b.idle.syncs,
            opt(b.idle.mean_sync_ms, 1),
            b.peak_rss_mib,
        ));
    }
    if rows.is_empty() {
        return rows;
    }
    format!(
        "| mode | services | flows (2 entries each) | written in s | idle CPU % | syncs (verifies) | mean sync ms | peak RSS MiB after |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n{rows}"
    )
}

fn left(left: &[String]) -> String {
    if left.is_empty() {
        "nothing".to_owned()
    } else {
        left.join("; ")
    }
}

fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.decimals$}"))
}

/// Writes `doc` as `<dir>/controlplane-<unix_time>.json` and returns the path.
pub fn write_json(dir: &Path, doc: &Document<'_>) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("controlplane-{}.json", doc.unix_time));
    let json = serde_json::to_string_pretty(doc)?;
    std::fs::write(&path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_run_keeps_its_row_and_the_columns() {
        let outcome = Outcome {
            mode: "iptables-nft".into(),
            source: "manifests".into(),
            services: 10000,
            endpoints: 10,
            total_s: 601.0,
            measured: None,
            error: Some("no complete first sync after 600 s | x\nmore".into()),
            log: None,
        };
        let table = table(&[outcome]);
        let row = table.lines().nth(2).unwrap();
        assert!(row.starts_with(
            "| iptables-nft | manifests | 10000 | failed: no complete first sync after 600 s / x |"
        ));
        let header_cells = table.lines().next().unwrap().matches('|').count();
        assert_eq!(row.matches('|').count(), header_cells, "{row}");
    }
}
