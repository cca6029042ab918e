//! Scraping switchyard's `/metrics` from inside the node's network namespace, and the few
//! samples the benchmark reads (names as registered in `proxy/src/metrics.rs`).
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use switchyard_testbed::netns::run_in_netns;

/// Time to connect; the server binds at start-up, before the first sync.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time to read a response. Generous: during a multi-second sync the proxy's runtime still
/// serves HTTP, but on a loaded 2-core machine a reply may lag.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// The sync-related samples of one scrape. Histograms are read as their `_sum` (seconds)
/// and `_count`; counters as their `_total`.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct SyncMetrics {
    /// `kubeproxy_sync_proxy_rules_last_timestamp_seconds`: unix time the last sync
    /// completed; 0 before the first one.
    pub last_sync: f64,
    /// Every sync (`kubeproxy_sync_proxy_rules_duration_seconds`): count.
    pub syncs: f64,
    /// Every sync: sum of durations, seconds.
    pub sync_seconds: f64,
    /// Syncs that rewrote everything (`kubeproxy_sync_full_proxy_rules_duration_seconds`).
    pub full_syncs: f64,
    /// Full syncs: sum of durations, seconds.
    pub full_sync_seconds: f64,
    /// `switchyard_service_port_changes_total`: service ports changed by syncs (upstream's
    /// `sync_proxy_rules_service_changes_total` counts Service objects, which an
    /// EndpointSlice edit does not move).
    pub service_changes: f64,
    /// `kubeproxy_sync_proxy_rules_iptables_restore_failures_total` (iptables mode only;
    /// 0 in ebpf mode, whose failed writes count in `switchyard_dataplane_errors_total`).
    pub restore_failures: f64,
    /// Time inside iptables-restore, summed (`switchyard_iptables_restore_duration_seconds`);
    /// 0 in ebpf mode.
    pub restore_seconds: f64,
    /// `switchyard_ebpf_program_load_seconds`: ebpf mode's program load at start-up (maps,
    /// BTF, the verifier), before the first sync could start; 0 in iptables mode.
    pub program_load_seconds: f64,
    /// `switchyard_dataplane_errors_total`: service ports that could not be programmed.
    pub dataplane_errors: f64,
    /// `switchyard_service_ports`: service ports in the desired state.
    pub service_ports: f64,
    /// `switchyard_input_warnings`: objects or fields currently skipped.
    pub input_warnings: f64,
}

impl SyncMetrics {
    /// Picks the samples out of a text exposition; a missing one reads as 0 (prometheus-client
    /// leaves unobserved histograms at 0 too).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let samples = parse_samples(text);
        if !samples.contains_key("kubeproxy_sync_proxy_rules_last_timestamp_seconds") {
            bail!("no kubeproxy_sync_proxy_rules_last_timestamp_seconds in /metrics");
        }
        let get = |name: &str| samples.get(name).copied().unwrap_or(0.0);
        Ok(Self {
            last_sync: get("kubeproxy_sync_proxy_rules_last_timestamp_seconds"),
            syncs: get("kubeproxy_sync_proxy_rules_duration_seconds_count"),
            sync_seconds: get("kubeproxy_sync_proxy_rules_duration_seconds_sum"),
            full_syncs: get("kubeproxy_sync_full_proxy_rules_duration_seconds_count"),
            full_sync_seconds: get("kubeproxy_sync_full_proxy_rules_duration_seconds_sum"),
            service_changes: get("switchyard_service_port_changes_total"),
            restore_failures: get("kubeproxy_sync_proxy_rules_iptables_restore_failures_total"),
            restore_seconds: get("switchyard_iptables_restore_duration_seconds_sum"),
            program_load_seconds: get("switchyard_ebpf_program_load_seconds"),
            dataplane_errors: get("switchyard_dataplane_errors_total"),
            service_ports: get("switchyard_service_ports"),
            input_warnings: get("switchyard_input_warnings"),
        })
    }
}

/// Samples of a text exposition by name. A labelled series counts under its name when its
/// only label is `ip_family="IPv4"`: one sync programs both families and observes the same
/// duration in each family's series, so summing them would count every sync twice on a
/// dual-stack node. Other labelled series (buckets, maps) are skipped, the benchmark needs
/// none of them.
fn parse_samples(text: &str) -> HashMap<&str, f64> {
    let mut samples = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, rest)) = line.split_once(' ') else {
            continue;
        };
        let name = match series.split_once('{') {
            None => series,
            Some((name, labels)) => {
                if labels.trim_end_matches('}') != "ip_family=\"IPv4\"" {
                    continue;
                }
                name
            }
        };
        // A sample may carry a timestamp after the value.
        let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        *samples.entry(name).or_insert(0.0) += value;
    }
    samples
}

/// Reads `/metrics` at an address that only exists inside one network namespace.
pub struct Scraper {
    netns: PathBuf,
    addr: SocketAddr,
}

impl Scraper {
    /// A scraper for `addr` inside the namespace at `netns` (`/var/run/netns/NAME`).
    pub fn new(netns: PathBuf, addr: SocketAddr) -> Self {
        Self { netns, addr }
    }

    /// One scrape. The connection is made on a short-lived thread that joined the
    /// namespace (the testbed's `run_in_netns`), so the benchmark itself stays in the root
    /// namespace and needs no `nsenter` child per poll.
    pub fn scrape(&self) -> anyhow::Result<SyncMetrics> {
        let addr = self.addr;
        let body = run_in_netns(&self.netns, || Ok(http_get(addr, "/metrics")))?
            .with_context(|| format!("GET http://{addr}/metrics"))?;
        SyncMetrics::parse(&body)
    }
}

/// A minimal HTTP/1.0 GET: the server closes the connection after the response, so the
/// body is everything after the header (no chunked encoding with 1.0).
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(READ_TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("response without a header end")?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("unexpected status {status:?}");
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sync_samples_of_a_dual_stack_exposition_once() {
        let text = "# HELP kubeproxy_sync_proxy_rules_duration_seconds SyncProxyRules latency\n\
            # TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram\n\
            kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family=\"IPv4\"} 2.5\n\
            kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 3\n\
            kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family=\"IPv6\"} 2.5\n\
            kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv6\"} 3\n\
            kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.001\",ip_family=\"IPv4\"} 0\n\
            kubeproxy_sync_full_proxy_rules_duration_seconds_sum{ip_family=\"IPv4\"} 2.25\n\
            kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 1\n\
            kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"} 1.71234567825e+09\n\
            kubeproxy_sync_proxy_rules_service_changes_total 7\n\
            switchyard_service_port_changes_total 10001\n\
            switchyard_ebpf_map_full_total{map=\"SWY_SERVICES\"} 1\n\
            switchyard_service_ports 10000\n\
            ";
        let m = SyncMetrics::parse(text).unwrap();
        assert_eq!(m.last_sync, 1712345678.25);
        assert_eq!((m.syncs, m.sync_seconds), (3.0, 2.5));
        assert_eq!((m.full_syncs, m.full_sync_seconds), (1.0, 2.25));
        assert_eq!(m.service_changes, 10001.0);
        assert_eq!(m.service_ports, 10000.0);
        assert_eq!(m.dataplane_errors, 0.0);
    }

    #[test]
    fn a_page_without_the_sync_timestamp_is_an_error() {
        assert!(SyncMetrics::parse("# EOF\n").is_err());
    }
}
