//! The dataplane benchmark's results: medians and ratios to the no-proxy path of the same
//! service count, the JSON document and the Markdown tables.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::measure::{Kind, Sample, Shape};
use super::testrun::Case;

/// Every sample of one kind on one path at one service count.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    /// What was measured.
    pub kind: Kind,
    /// Unit of `samples[].value` and `median`.
    pub unit: &'static str,
    /// One per round.
    pub samples: Vec<Sample>,
    /// Rounds whose measurement failed outright, with the error.
    pub failures: Vec<String>,
    /// Median value over the rounds.
    pub median: Option<f64>,
    /// Median of the rounds' p50 latencies, µs.
    pub p50_us: Option<f64>,
    /// Median of the rounds' p99 latencies, µs.
    pub p99_us: Option<f64>,
    /// Median UDP loss, percent.
    pub lost_pct: Option<f64>,
    /// `median` over the no-proxy path's median of the same kind and service count (for
    /// pod-to-pod: of its connect series, the same traffic there).
    pub vs_no_proxy: Option<f64>,
}

impl Series {
    /// An empty series of `kind`.
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            unit: kind.unit(),
            samples: Vec::new(),
            failures: Vec::new(),
            median: None,
            p50_us: None,
            p99_us: None,
            lost_pct: None,
            vs_no_proxy: None,
        }
    }

    /// Sets the medians from the samples.
    fn summarize(&mut self) {
        let of = |f: &dyn Fn(&Sample) -> Option<f64>| median(self.samples.iter().filter_map(f));
        self.median = of(&|s| Some(s.value));
        self.p50_us = of(&|s| s.p50_us);
        self.p99_us = of(&|s| s.p99_us);
        self.lost_pct = of(&|s| s.lost_pct);
    }

    /// Failed requests over all rounds.
    pub fn errors(&self) -> usize {
        self.samples.iter().map(|s| s.errors).sum()
    }
}

/// One path at one service count.
#[derive(Debug, Clone, Serialize)]
pub struct PathRun {
    /// `no proxy`, `ebpf`, `iptables-legacy`, `iptables-nft`.
    pub path: String,
    /// Build until everything answered, seconds.
    pub ready_s: Option<f64>,
    /// Each proxy's first full sync as it reported it, seconds (node1, node2).
    pub first_sync_s: Vec<f64>,
    /// Why the sandbox could not be built or measured.
    pub error: Option<String>,
    /// The measurements.
    pub series: Vec<Series>,
    /// Mean CPU of the path's proxies (both nodes) during its own measurements, % of one
    /// core.
    pub proxy_cpu_pct: Option<f64>,
    /// netfilter conntrack entries in node1 after the rounds.
    pub node1_conntrack_entries: Option<u64>,
    /// Entries of node1's tc conntrack map after the rounds (ebpf).
    pub node1_tc_conntrack_entries: Option<usize>,
    /// Where the proxies' logs were written.
    pub logs: Vec<PathBuf>,
}

impl PathRun {
    /// A path without results yet.
    pub fn new(path: String) -> Self {
        Self {
            path,
            ready_s: None,
            first_sync_s: Vec::new(),
            error: None,
            series: Kind::ALL.iter().map(|&k| Series::new(k)).collect(),
            proxy_cpu_pct: None,
            node1_conntrack_entries: None,
            node1_tc_conntrack_entries: None,
            logs: Vec::new(),
        }
    }

    /// The series of `kind`.
    pub fn series_mut(&mut self, kind: Kind) -> &mut Series {
        let i = Kind::ALL.iter().position(|&k| k == kind).unwrap_or(0);
        &mut self.series[i]
    }

    /// The series of `kind`.
    pub fn series(&self, kind: Kind) -> &Series {
        let i = Kind::ALL.iter().position(|&k| k == kind).unwrap_or(0);
        &self.series[i]
    }
}

/// Every path at one service count; the first path is the no-proxy one.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    /// Services in each proxy sandbox (decoys + the measured ClusterIP service; the two
    /// NodePort services come on top).
    pub services: usize,
    /// Building the proxy sandboxes until all served, seconds.
    pub build_s: f64,
    /// The alternating rounds, seconds.
    pub measure_s: f64,
    /// No proxy first.
    pub paths: Vec<PathRun>,
}

impl Group {
    /// Medians and ratios to the no-proxy path.
    pub fn summarize(&mut self) {
        for path in &mut self.paths {
            for series in &mut path.series {
                series.summarize();
            }
        }
        let Some(direct) = self.paths.first() else {
            return;
        };
        // On the no-proxy path pod-to-pod traffic is exactly the connect measurement.
        let bases: Vec<Option<f64>> = Kind::ALL
            .iter()
            .map(|&kind| {
                let kind = if kind == Kind::PodToPod {
                    Kind::Connect
                } else {
                    kind
                };
                direct.series(kind).median.filter(|m| *m > 0.0)
            })
            .collect();
        for path in &mut self.paths {
            for (series, base) in path.series.iter_mut().zip(&bases) {
                series.vs_no_proxy = series.median.zip(*base).map(|(m, b)| m / b);
            }
        }
    }

    /// Sandboxes that could not be built and measurements that could not run.
    pub fn harness_failures(&self) -> usize {
        self.paths
            .iter()
            .map(|p| {
                usize::from(p.error.is_some())
                    + p.series.iter().map(|s| s.failures.len()).sum::<usize>()
            })
            .sum()
    }

    /// Requests that failed inside measurements that ran ("path kind: count" each).
    pub fn request_errors(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in &self.paths {
            for s in &p.series {
                if s.errors() > 0 {
                    let first = s.samples.iter().find_map(|x| x.first_error.as_deref());
                    out.push(format!(
                        "{} services, {} {}: {} failed requests ({})",
                        self.services,
                        p.path,
                        s.kind,
                        s.errors(),
                        first.unwrap_or("?")
                    ));
                }
            }
        }
        out
    }
}

/// Median of the values; None without any.
pub fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// The JSON document of one run.
#[derive(Serialize)]
pub struct Document<'a> {
    /// When the run started.
    pub unix_time: u64,
    /// `uname -r`.
    pub kernel: String,
    /// CPUs the benchmark saw.
    pub cpus: usize,
    /// `/proc/loadavg` when the run started (other work on the machine).
    pub load_average_at_start: String,
    /// The command line that reproduces the run.
    pub command: String,
    /// How each measurement pushed.
    pub shape: Shape,
    /// Alternating rounds per service count.
    pub rounds: usize,
    /// Ready endpoints per decoy service.
    pub endpoints: usize,
    /// One per service count.
    pub groups: &'a [Group],
    /// The tc programs' per-packet cost.
    pub testrun: &'a [Case],
    /// Why the per-packet part failed, if it did.
    pub testrun_error: Option<String>,
    /// The whole run, seconds.
    pub total_s: f64,
}

/// Writes `doc` as `dataplane-<unix time>.json` in `dir`.
pub fn write_json(dir: &Path, doc: &Document<'_>) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("dataplane-{}.json", doc.unix_time));
    std::fs::write(&path, serde_json::to_string_pretty(doc)? + "\n")?;
    Ok(path)
}

fn rate(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}"),
        None => "-".to_owned(),
    }
}

/// "value (ratio×)", with a `!` for failed requests.
fn cell(s: &Series) -> String {
    let mut text = rate(s.median);
    if let Some(r) = s.vs_no_proxy {
        let _ = write!(text, " ({r:.2}×)");
    }
    if s.errors() > 0 || !s.failures.is_empty() {
        let _ = write!(text, " ! {} failed", s.errors() + s.failures.len());
    }
    text
}

fn latency(s: &Series) -> String {
    match (s.p50_us, s.p99_us) {
        (Some(a), Some(b)) => format!("{a:.0} / {b:.0}"),
        _ => "-".to_owned(),
    }
}

/// The Markdown tables: pod -> service, then external and non-service traffic, then the tc
/// programs' per-packet cost.
pub fn markdown(groups: &[Group], testrun: &[Case], shape: &Shape, rounds: usize) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Median of {rounds} alternating round(s) of {} s per measurement, {} parallel connection(s); \
         (×) = ratio to the no-proxy path at the same service count.\n",
        shape.seconds, shape.concurrency
    );
    md.push_str(
        "Pod -> ClusterIP (no proxy: pod -> pod IP), backend on the other node:\n\n\
         | services | path | new conn/s | p50 / p99 µs | keep-alive req/s | p50 / p99 µs | bulk TCP Gbit/s | UDP datagrams/s (64 B) |\n\
         | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for g in groups {
        for p in &g.paths {
            if let Some(e) = &p.error {
                let _ = writeln!(
                    md,
                    "| {} | {} | failed: {} |||||",
                    g.services,
                    p.path,
                    first_line(e)
                );
                continue;
            }
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                g.services,
                p.path,
                cell(p.series(Kind::Connect)),
                latency(p.series(Kind::Connect)),
                cell(p.series(Kind::KeepAlive)),
                latency(p.series(Kind::KeepAlive)),
                cell(p.series(Kind::Bulk)),
                cell(p.series(Kind::Udp)),
            );
        }
    }
    md.push_str(
        "\nExternal client -> NodePort on node1 (no proxy: routed through node1 to the pod), and pod -> pod IP \
         without any service, new connections:\n\n\
         | services | path | NodePort, local backend conn/s | p50 / p99 µs | NodePort, remote backend conn/s | p50 / p99 µs | pod -> pod conn/s | p50 / p99 µs | proxy CPU % | node1 conntrack entries: netfilter / tc map |\n\
         | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for g in groups {
        for p in &g.paths {
            if p.error.is_some() {
                continue;
            }
            // The no-proxy path's pod -> pod traffic is its connect measurement.
            let pod = if p.series(Kind::PodToPod).samples.is_empty() {
                p.series(Kind::Connect)
            } else {
                p.series(Kind::PodToPod)
            };
            let conntrack = |c: Option<String>| c.unwrap_or_else(|| "-".to_owned());
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
                g.services,
                p.path,
                cell(p.series(Kind::NodePortLocal)),
                latency(p.series(Kind::NodePortLocal)),
                cell(p.series(Kind::NodePortRemote)),
                latency(p.series(Kind::NodePortRemote)),
                cell(pod),
                latency(pod),
                p.proxy_cpu_pct
                    .map_or("-".to_owned(), |c| format!("{c:.1}")),
                conntrack(p.node1_conntrack_entries.map(|c| c.to_string())),
                conntrack(p.node1_tc_conntrack_entries.map(|c| c.to_string())),
            );
        }
    }
    if !testrun.is_empty() {
        md.push_str(
            "\ntc programs, BPF_PROG_TEST_RUN (ClusterIP services with 10 backends each in the maps):\n\n\
             | services in maps | program and packet | ns/packet |\n| ---: | --- | ---: |\n",
        );
        for c in testrun {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} |",
                c.services, c.case, c.ns_per_packet
            );
        }
    }
    md
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(value: f64) -> Sample {
        Sample {
            value,
            p50_us: Some(value / 10.0),
            p99_us: Some(value / 5.0),
            lost_pct: None,
            errors: 0,
            first_error: None,
            proxy_cpu_pct: 0.0,
        }
    }

    #[test]
    fn ratios_are_to_the_no_proxy_path_and_pod_to_pod_uses_its_connect() {
        let mut direct = PathRun::new("no proxy".into());
        direct.series_mut(Kind::Connect).samples =
            vec![sample(900.0), sample(1000.0), sample(1100.0)];
        let mut ebpf = PathRun::new("ebpf".into());
        ebpf.series_mut(Kind::Connect).samples = vec![sample(500.0), sample(450.0), sample(9000.0)];
        ebpf.series_mut(Kind::PodToPod).samples = vec![sample(1000.0)];
        let mut g = Group {
            services: 10,
            build_s: 0.0,
            measure_s: 0.0,
            paths: vec![direct, ebpf],
        };
        g.summarize();
        assert_eq!(g.paths[0].series(Kind::Connect).vs_no_proxy, Some(1.0));
        assert_eq!(g.paths[1].series(Kind::Connect).median, Some(500.0));
        assert_eq!(g.paths[1].series(Kind::Connect).vs_no_proxy, Some(0.5));
        assert_eq!(g.paths[1].series(Kind::PodToPod).vs_no_proxy, Some(1.0));
        assert_eq!(g.paths[1].series(Kind::Bulk).vs_no_proxy, None);
        let shape = Shape {
            seconds: 1.0,
            concurrency: 2,
            max_requests: 10,
        };
        let md = markdown(&[g], &[], &shape, 3);
        assert!(
            md.contains("| 10 | ebpf | 500 (0.50×) | 50 / 100 |"),
            "{md}"
        );
    }

    #[test]
    fn median_of_even_counts_is_the_mean_of_the_middle_two() {
        assert_eq!(median([3.0, 1.0, 2.0, 10.0].into_iter()), Some(2.5));
        assert_eq!(median(std::iter::empty()), None);
    }
}
