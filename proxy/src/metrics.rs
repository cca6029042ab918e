//! Prometheus metrics, named as upstream kube-proxy names them where the meaning is shared.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Label for the health endpoints' counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// HTTP status code.
    pub code: u16,
}

/// Label naming an eBPF map.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabel {
    /// Map name.
    pub map: String,
}

/// All metrics of one process.
pub struct Metrics {
    /// The registry the /metrics endpoint encodes.
    pub registry: Registry,
    /// Duration of every sync.
    pub sync_duration: Histogram,
    /// Duration of full syncs.
    pub sync_full_duration: Histogram,
    /// Duration of partial syncs.
    pub sync_partial_duration: Histogram,
    /// Unix time of the last completed sync.
    pub last_sync_timestamp: Gauge<f64, AtomicU64>,
    /// Unix time a change was last queued.
    pub last_queued_timestamp: Gauge<f64, AtomicU64>,
    /// Service port changes applied.
    pub service_changes_total: Counter,
    /// Input problems currently present (objects or fields skipped).
    pub input_warnings: Gauge,
    /// Service ports the dataplane failed to program.
    pub dataplane_errors_total: Counter,
    /// Service ports in the desired state.
    pub service_ports: Gauge,
    /// iptables mode's counters (iptables-restore runs and failed partial restores).
    pub iptables: crate::iptables::dataplane::IptablesMetrics,
    /// The conntrack reconciler's (iptables mode); registers itself.
    pub conntrack: crate::conntrack::ConntrackMetrics,
    /// ebpf mode's map and link gauges; registers itself.
    pub ebpf: crate::ebpf::EbpfMetrics,
    /// Whole syncs that failed (the dataplane kept its previous state).
    pub sync_failures_total: Counter,
    /// Drift found by a periodic verify and repaired.
    pub repairs_total: Counter,
    /// From an EndpointSlice's last-change-trigger-time to the change being in the dataplane.
    pub network_programming_duration: Histogram,
    /// Service ports not programmed because an eBPF map was full, by map.
    pub map_full_total: Family<MapLabel, Counter>,
    /// /healthz requests by code.
    pub healthz_total: Family<CodeLabel, Counter>,
    /// /livez requests by code.
    pub livez_total: Family<CodeLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let buckets = || Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let m = Metrics {
            registry: Registry::default(),
            sync_duration: buckets(),
            sync_full_duration: buckets(),
            sync_partial_duration: buckets(),
            last_sync_timestamp: Gauge::default(),
            last_queued_timestamp: Gauge::default(),
            service_changes_total: Counter::default(),
            input_warnings: Gauge::default(),
            dataplane_errors_total: Counter::default(),
            service_ports: Gauge::default(),
            iptables: Default::default(),
            conntrack: Default::default(),
            ebpf: Default::default(),
            sync_failures_total: Counter::default(),
            repairs_total: Counter::default(),
            map_full_total: Family::default(),
            network_programming_duration: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            healthz_total: Family::default(),
            livez_total: Family::default(),
        };
        let mut registry = Registry::default();
        let kp = registry.sub_registry_with_prefix("kubeproxy");
        kp.register(
            "sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency",
            m.sync_duration.clone(),
        );
        kp.register(
            "sync_full_proxy_rules_duration_seconds",
            "Full sync latency",
            m.sync_full_duration.clone(),
        );
        kp.register(
            "sync_partial_proxy_rules_duration_seconds",
            "Partial sync latency",
            m.sync_partial_duration.clone(),
        );
        kp.register(
            "sync_proxy_rules_last_timestamp_seconds",
            "The last time the rules were synced",
            m.last_sync_timestamp.clone(),
        );
        kp.register(
            "sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync was queued",
            m.last_queued_timestamp.clone(),
        );
        kp.register(
            "sync_proxy_rules_service_changes",
            "Service port changes applied",
            m.service_changes_total.clone(),
        );
        kp.register(
            "proxy_healthz",
            "/healthz requests",
            m.healthz_total.clone(),
        );
        kp.register("proxy_livez", "/livez requests", m.livez_total.clone());
        kp.register(
            "sync_proxy_rules_iptables_restore_failures",
            "Cumulative proxy iptables restore failures",
            m.iptables.restore_failures.clone(),
        );
        kp.register(
            "sync_proxy_rules_iptables_partial_restore_failures",
            "Cumulative proxy iptables partial restore failures",
            m.iptables.partial_restore_failures.clone(),
        );
        kp.register(
            "network_programming_duration_seconds",
            "In-cluster network programming latency",
            m.network_programming_duration.clone(),
        );
        let sy = registry.sub_registry_with_prefix("switchyard");
        sy.register(
            "input_warnings",
            "Objects or fields currently skipped as invalid",
            m.input_warnings.clone(),
        );
        sy.register(
            "dataplane_errors",
            "Service ports the dataplane failed to program",
            m.dataplane_errors_total.clone(),
        );
        sy.register(
            "ebpf_map_full",
            "Service ports not programmed because an eBPF map was full",
            m.map_full_total.clone(),
        );
        sy.register(
            "sync_failures",
            "Syncs that failed as a whole; the dataplane kept its previous state",
            m.sync_failures_total.clone(),
        );
        sy.register(
            "dataplane_repairs",
            "Drift found by a periodic verify and repaired",
            m.repairs_total.clone(),
        );
        sy.register(
            "iptables_restores",
            "iptables-restore runs",
            m.iptables.restores.clone(),
        );
        sy.register(
            "iptables_restore_duration_seconds",
            "Time spent inside iptables-restore",
            m.iptables.restore_duration.clone(),
        );
        sy.register(
            "service_ports",
            "Service ports in the desired state",
            m.service_ports.clone(),
        );
        m.conntrack.register(&mut registry);
        m.ebpf.register(&mut registry);
        Metrics { registry, ..m }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_follow_upstream() {
        let m = super::Metrics::new();
        m.service_changes_total.inc();
        let text = m.encode();
        assert!(
            text.contains("kubeproxy_sync_proxy_rules_duration_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains("kubeproxy_sync_proxy_rules_service_changes_total 1"),
            "{text}"
        );
        assert!(text.contains("switchyard_input_warnings"), "{text}");
        m.map_full_total
            .get_or_create(&super::MapLabel {
                map: "SWY_SERVICES".into(),
            })
            .inc();
        let text = m.encode();
        for name in [
            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
            "kubeproxy_network_programming_duration_seconds_count",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "switchyard_ebpf_map_full_total{map=\"SWY_SERVICES\"} 1",
            "switchyard_service_ports",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
    }
}
