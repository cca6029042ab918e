//! The text tables `switchyard status` prints, in the manner of `cilium-dbg service list`:
//! one row per frontend, its backends one per line (`1 => address:port share`).
use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::{BackendEntry, ChainRow, LinkRow, MapRow, Report, ServiceRow};

/// A cell: one or more lines.
type Cell = Vec<String>;

/// The report as text: a summary when `summary` is set, then every section it holds.
pub fn render(report: &Report, summary: bool) -> String {
    let mut out = String::new();
    if summary {
        let _ = writeln!(out, "Mode:     {} ({})", report.mode, report.source);
        if let Some(rows) = &report.services {
            let ports: BTreeSet<&str> = rows.iter().filter_map(|r| r.service.as_deref()).collect();
            let _ = writeln!(
                out,
                "Services: {} service ports, {} frontends",
                ports.len(),
                rows.len()
            );
        }
        out.push('\n');
    }
    let mut section = |title: &str, table: String| {
        if summary {
            let _ = writeln!(out, "{title}:");
        }
        out.push_str(&table);
        out.push('\n');
    };
    if let Some(rows) = &report.services {
        section("Services", services(rows));
    }
    if let Some(entries) = &report.backends {
        section("Backends", backends(entries));
    }
    if let Some(maps) = &report.maps {
        section("Maps", self::maps(maps));
    }
    if let Some(links) = &report.links {
        section("Links", self::links(links));
    }
    if let Some(chains) = &report.chains {
        section("Chains", self::chains(chains));
    }
    for note in &report.notes {
        let _ = writeln!(out, "Note: {note}");
    }
    out
}

/// One row per frontend, backends one per line.
pub fn services(rows: &[ServiceRow]) -> String {
    let ebpf = rows.iter().any(|r| r.id.is_some());
    let iptables = rows.iter().any(|r| r.chain.is_some());
    let mut headers = vec!["SERVICE", "TYPE", "FRONTEND"];
    if ebpf {
        headers.extend(["SCOPE", "ID"]);
    }
    if iptables {
        headers.push("CHAIN");
    }
    headers.extend(["FLAGS", "BACKENDS"]);
    let cells = rows
        .iter()
        .map(|r| {
            let mut row = vec![
                line(r.service.as_deref().unwrap_or("-")),
                line(r.kind.as_str()),
                line(&frontend(r)),
            ];
            if ebpf {
                row.push(line(r.scope.unwrap_or("-")));
                row.push(line(&opt(r.id)));
            }
            if iptables {
                row.push(line(r.chain.as_deref().unwrap_or("-")));
            }
            row.push(flags(r));
            row.push(backend_lines(r));
            row
        })
        .collect();
    grid(&headers, cells)
}

/// One row per backend entry.
pub fn backends(entries: &[BackendEntry]) -> String {
    let ebpf = entries.iter().any(|e| e.id.is_some());
    let headers: &[&str] = if ebpf {
        &["ID", "SLOT", "BACKEND", "SET", "SERVICE", "IN USE"]
    } else {
        &["CHAIN", "BACKEND", "SERVICE", "IN USE"]
    };
    let cells = entries
        .iter()
        .map(|e| {
            let backend = line(&std::net::SocketAddr::new(e.address, e.port).to_string());
            let service = line(e.service.as_deref().unwrap_or("-"));
            let used = line(if e.in_use { "yes" } else { "no" });
            if ebpf {
                vec![
                    line(&opt(e.id)),
                    line(&opt(e.slot)),
                    backend,
                    line(e.set.unwrap_or("-")),
                    service,
                    used,
                ]
            } else {
                vec![
                    line(e.chain.as_deref().unwrap_or("-")),
                    backend,
                    service,
                    used,
                ]
            }
        })
        .collect();
    grid(headers, cells)
}

/// Entries and capacity per map.
pub fn maps(maps: &[MapRow]) -> String {
    let cells = maps
        .iter()
        .map(|m| {
            let used = match m.entries {
                Some(n) if m.capacity > 0 => {
                    format!("{:.1}%", n as f64 * 100.0 / m.capacity as f64)
                }
                _ => "-".into(),
            };
            vec![
                line(&m.name),
                line(&m.kind),
                line(&opt(m.entries)),
                line(&m.capacity.to_string()),
                line(&used),
            ]
        })
        .collect();
    grid(&["MAP", "TYPE", "ENTRIES", "CAPACITY", "USED"], cells)
}

/// The pinned links.
pub fn links(links: &[LinkRow]) -> String {
    let cells = links
        .iter()
        .map(|l| {
            let program = match &l.program {
                Some(name) => format!("{name} (id {})", l.program_id),
                None => format!("id {}", l.program_id),
            };
            vec![
                line(&l.pin),
                line(&l.kind),
                line(&l.link_id.to_string()),
                line(&program),
            ]
        })
        .collect();
    grid(&["LINK", "TYPE", "LINK ID", "PROGRAM"], cells)
}

/// Our chains per table.
pub fn chains(chains: &[ChainRow]) -> String {
    let cells = chains
        .iter()
        .map(|c| {
            vec![
                line(&c.table),
                line(&c.chains.to_string()),
                line(&c.rules.to_string()),
            ]
        })
        .collect();
    grid(&["TABLE", "CHAINS", "RULES"], cells)
}

fn line(text: &str) -> Cell {
    vec![text.to_owned()]
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// `address:port/PROTOCOL`, `*` for a NodePort on every NodePort address.
fn frontend(row: &ServiceRow) -> String {
    match row.address {
        Some(address) => format!(
            "{}/{}",
            std::net::SocketAddr::new(address, row.port),
            row.protocol
        ),
        None => format!("*:{}/{}", row.port, row.protocol),
    }
}

fn flags(row: &ServiceRow) -> Cell {
    let mut out = Vec::new();
    if let Some(timeout) = row.affinity_timeout_seconds {
        out.push(format!("affinity={timeout}s"));
    }
    if row.masquerade {
        out.push("masquerade".into());
    }
    if !row.source_ranges.is_empty() {
        out.push(format!("ranges={}", row.source_ranges.join(",")));
    }
    if out.is_empty() {
        out.push("-".into());
    }
    out
}

fn backend_lines(row: &ServiceRow) -> Cell {
    if row.backends.is_empty() {
        return line(&match row.verdict {
            Some(verdict) => format!("none ({})", verdict.as_str()),
            None => "none".into(),
        });
    }
    row.backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            format!(
                "{} => {} {:.1}%",
                i + 1,
                std::net::SocketAddr::new(b.address, b.port),
                b.probability * 100.0
            )
        })
        .collect()
}

/// Left-aligned columns two spaces apart; a row is as high as its highest cell.
fn grid(headers: &[&str], rows: Vec<Vec<Cell>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            let widest = cell.iter().map(|l| l.chars().count()).max().unwrap_or(0);
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(widest);
            }
        }
    }
    let mut out = String::new();
    let mut emit = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let width = widths.get(i).copied().unwrap_or(0);
            let _ = write!(text, "{cell:width$}  ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    emit(headers.to_vec());
    for row in &rows {
        let height = row.iter().map(Vec::len).max().unwrap_or(1);
        for i in 0..height {
            emit(
                row.iter()
                    .map(|cell| cell.get(i).map(String::as_str).unwrap_or(""))
                    .collect(),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::status::{BackendRow, FrontendType, Verdict};

    fn row(service: &str, backends: &[(&str, f64)]) -> ServiceRow {
        ServiceRow {
            service: Some(service.into()),
            kind: FrontendType::ClusterIp,
            address: Some(Ipv4Addr::new(198, 18, 128, 10).into()),
            port: 80,
            protocol: "TCP".into(),
            scope: Some("socket"),
            id: Some(1),
            chain: None,
            affinity_timeout_seconds: Some(10800),
            masquerade: false,
            source_ranges: vec![],
            verdict: backends.is_empty().then_some(Verdict::Reject),
            backends: backends
                .iter()
                .enumerate()
                .map(|(i, (a, p))| BackendRow {
                    address: a.parse().expect("ip"),
                    port: 8080,
                    probability: *p,
                    slot: Some(i as u32),
                    chain: None,
                })
                .collect(),
        }
    }

    #[test]
    fn services_table_lists_backends_one_per_line() {
        let text = services(&[
            row(
                "demo/web:http/TCP",
                &[("198.19.1.11", 0.5), ("198.19.2.11", 0.5)],
            ),
            row("demo/empty:http/TCP", &[]),
        ]);
        let expected = "\
SERVICE              TYPE       FRONTEND              SCOPE   ID  FLAGS            BACKENDS
demo/web:http/TCP    ClusterIP  198.18.128.10:80/TCP  socket  1   affinity=10800s  1 => 198.19.1.11:8080 50.0%
                                                                                   2 => 198.19.2.11:8080 50.0%
demo/empty:http/TCP  ClusterIP  198.18.128.10:80/TCP  socket  1   affinity=10800s  none (reject)
";
        assert_eq!(text, expected);
    }

    #[test]
    fn maps_table_shows_use_of_capacity() {
        let text = maps(&[MapRow {
            name: "SWY_SERVICES".into(),
            kind: "hash".into(),
            entries: Some(3),
            capacity: 262_144,
        }]);
        assert_eq!(
            text,
            "MAP           TYPE  ENTRIES  CAPACITY  USED\nSWY_SERVICES  hash  3        262144    0.0%\n"
        );
    }

    #[test]
    fn report_prints_summary_sections_and_notes() {
        let report = Report {
            mode: "iptables",
            source: "iptables-nft".into(),
            services: Some(vec![row("demo/web:http/TCP", &[("198.19.1.11", 1.0)])]),
            chains: Some(vec![ChainRow {
                table: "nat".into(),
                chains: 4,
                rules: 9,
            }]),
            notes: vec!["something".into()],
            ..Report::default()
        };
        let text = render(&report, true);
        assert!(text.starts_with("Mode:     iptables (iptables-nft)\nServices: 1 service ports, 1 frontends\n\nServices:\nSERVICE"), "{text}");
        assert!(
            text.contains("\nChains:\nTABLE  CHAINS  RULES\nnat    4       9\n"),
            "{text}"
        );
        assert!(text.ends_with("Note: something\n"), "{text}");
        let bare = render(&report, false);
        assert!(bare.starts_with("SERVICE"), "{bare}");
    }
}
