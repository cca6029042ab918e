//! Prometheus metrics: upstream kube-proxy's set with its names, labels and buckets
//! (`pkg/proxy/metrics/metrics.go`, Kubernetes 1.34), the Go process collector's
//! `process_*` metrics, build info, and Switchyard's own `switchyard_*` metrics. Exposed in
//! the Prometheus text format kube-proxy's `/metrics` serves ([`exposition`]).
//!
//! As upstream registers only what its mode uses, the iptables families
//! (`sync_proxy_rules_iptables_*`) and the conntrack reconciler's exist in iptables mode only.
//! iptables mode writes IPv6 with a second rule set, as upstream's second proxier: its
//! `sync_proxy_rules_iptables_*` and conntrack reconciler series are labelled
//! `ip_family="IPv6"` (they appear once the node serves IPv6). On a node that serves IPv6
//! ([`Metrics::serve_ipv6`]) the sync's families have an `IPv6` series too, as upstream's
//! dual-stack node has two proxiers: one controller syncs both families at once, so both
//! series observe that sync's duration and timestamp; the no-local-endpoint gauges count each
//! family's ports, and a slice's network programming latency goes to its address type.
pub mod build_info;
pub mod exposition;
pub mod process;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, linear_buckets, Histogram};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::config::ProxyMode;
use crate::model::NoLocalEndpoints;

/// An IP family, as upstream's `ip_family` label spells it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum IpFamily {
    /// `IPv4`.
    IPv4,
    /// `IPv6`.
    IPv6,
}

/// The family every series is written for (see the module doc).
pub const PROGRAMMED_FAMILY: IpFamily = IpFamily::IPv4;

/// `ip_family`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabel {
    /// The IP family.
    pub ip_family: IpFamily,
}

const FAMILY: FamilyLabel = FamilyLabel {
    ip_family: PROGRAMMED_FAMILY,
};
const FAMILY6: FamilyLabel = FamilyLabel {
    ip_family: IpFamily::IPv6,
};

/// `ip_family`, `table` (iptables rule counts).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    /// The IP family.
    pub ip_family: IpFamily,
    /// `filter` or `nat`.
    pub table: &'static str,
}

/// `ip_family`, `traffic_policy` (`internal` or `external`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    /// The IP family.
    pub ip_family: IpFamily,
    /// Which policy is Local.
    pub traffic_policy: &'static str,
}

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

/// Upstream's buckets for the sync and conntrack reconciler durations: 1 ms to ~16 s.
fn sync_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Upstream's `network_programming_duration_seconds` buckets: `MergeBuckets` of 0.25 s and
/// 0.5 s, 1..59 s, 60..115 s by 5, 2..5 min by 30 s, after a leading 0.
fn network_programming_buckets() -> Histogram {
    let buckets = std::iter::once(0.0)
        .chain(linear_buckets(0.25, 0.25, 2))
        .chain(linear_buckets(1.0, 1.0, 59))
        .chain(linear_buckets(60.0, 5.0, 12))
        .chain(linear_buckets(120.0, 30.0, 7));
    Histogram::new(buckets)
}

/// A metric family labelled `ip_family` whose one series ([`PROGRAMMED_FAMILY`]) exists from
/// the start (zero), as after upstream's first sync; it derefs to that series.
#[derive(Debug, Clone)]
pub struct PerFamily<M> {
    family: Family<FamilyLabel, M, fn() -> M>,
    series: M,
}

impl<M: Clone> PerFamily<M> {
    fn new(constructor: fn() -> M) -> Self {
        let family = Family::new_with_constructor(constructor);
        let series = family.get_or_create_owned(&FAMILY);
        Self { family, series }
    }

    /// The same metric family, dereferencing to the series of `ip_family` (created now).
    pub fn for_family(&self, ip_family: IpFamily) -> Self {
        Self {
            family: self.family.clone(),
            series: self.family.get_or_create_owned(&FamilyLabel { ip_family }),
        }
    }
}

impl<M: Clone + Default> Default for PerFamily<M> {
    fn default() -> Self {
        Self::new(M::default)
    }
}

impl<M> std::ops::Deref for PerFamily<M> {
    type Target = M;
    fn deref(&self) -> &M {
        &self.series
    }
}

impl<M: EncodeMetric + TypedMetric> TypedMetric for PerFamily<M> {
    const TYPE: MetricType = M::TYPE;
}

impl<M: EncodeMetric + TypedMetric> EncodeMetric for PerFamily<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.family.encode(encoder)
    }
    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

/// iptables mode's counters and gauges (upstream's names; registered by [`Metrics`] in
/// iptables mode).
#[derive(Clone, Debug)]
pub struct IptablesMetrics {
    /// `kubeproxy_sync_proxy_rules_iptables_restore_failures_total`.
    pub restore_failures: PerFamily<Counter>,
    /// `kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total`.
    pub partial_restore_failures: PerFamily<Counter>,
    /// `kubeproxy_sync_proxy_rules_iptables_total{table}`: rules we own, after each sync.
    pub rules_total: Family<TableLabel, Gauge>,
    /// `kubeproxy_sync_proxy_rules_iptables_last{table}`: rules the last sync wrote.
    pub rules_last: Family<TableLabel, Gauge>,
    /// iptables-restore runs, for `switchyard_iptables_restores_total`.
    pub restores: Counter,
    /// Time spent inside iptables-restore, the floor of a sync's cost
    /// (`switchyard_iptables_restore_duration_seconds`).
    pub restore_duration: Histogram,
    /// The family whose series the labelled metrics count into.
    pub ip_family: IpFamily,
}

impl Default for IptablesMetrics {
    fn default() -> Self {
        Self {
            restore_failures: PerFamily::default(),
            partial_restore_failures: PerFamily::default(),
            rules_total: Family::default(),
            rules_last: Family::default(),
            restores: Counter::default(),
            restore_duration: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
            ip_family: PROGRAMMED_FAMILY,
        }
    }
}

impl IptablesMetrics {
    /// The same metrics for the proxier of `ip_family`: its series of the labelled families;
    /// the restore count and duration are shared.
    pub fn for_family(&self, ip_family: IpFamily) -> Self {
        Self {
            restore_failures: self.restore_failures.for_family(ip_family),
            partial_restore_failures: self.partial_restore_failures.for_family(ip_family),
            ip_family,
            ..self.clone()
        }
    }

    /// Sets the `filter` and `nat` rule counts (upstream reports those two tables).
    pub fn set_rule_counts(
        &self,
        total: &crate::iptables::rule_set::RuleCounts,
        last: &crate::iptables::rule_set::RuleCounts,
    ) {
        use crate::iptables::rule_set::Table;
        for table in [Table::Filter, Table::Nat] {
            let label = TableLabel {
                ip_family: self.ip_family,
                table: table.as_str(),
            };
            let get = |counts: &crate::iptables::rule_set::RuleCounts| {
                counts.get(&table).copied().unwrap_or(0) as i64
            };
            self.rules_total.get_or_create(&label).set(get(total));
            self.rules_last.get_or_create(&label).set(get(last));
        }
    }
}

/// All metrics of one process.
pub struct Metrics {
    /// The registry the /metrics endpoint encodes.
    pub registry: Registry,
    /// Duration of every sync.
    pub sync_duration: PerFamily<Histogram>,
    /// Duration of full syncs.
    pub sync_full_duration: PerFamily<Histogram>,
    /// Duration of partial syncs (partial and verify).
    pub sync_partial_duration: PerFamily<Histogram>,
    /// Unix time of the last completed sync; no series before the first one.
    pub last_sync_timestamp: Family<FamilyLabel, Gauge<f64, AtomicU64>>,
    /// Unix time a change was last queued; no series before the first one.
    pub last_queued_timestamp: Family<FamilyLabel, Gauge<f64, AtomicU64>>,
    /// Service objects added, changed or removed, as the controller saw them.
    pub service_changes_total: Counter,
    /// Services changed since the last completed sync.
    pub service_changes_pending: Gauge,
    /// EndpointSlices (and legacy Endpoints) added, changed or removed.
    pub endpoint_changes_total: Counter,
    /// Services whose endpoints changed since the last completed sync.
    pub endpoint_changes_pending: Gauge,
    /// Ports with a Local policy and no local endpoint, by policy.
    pub no_local_endpoints: Family<PolicyLabel, Gauge>,
    /// From an EndpointSlice's last-change-trigger-time to the change being in the dataplane.
    pub network_programming_duration: PerFamily<Histogram>,
    /// /healthz requests by code.
    pub healthz_total: Family<CodeLabel, Counter>,
    /// /livez requests by code.
    pub livez_total: Family<CodeLabel, Counter>,
    /// iptables mode's counters (registered in iptables mode only).
    pub iptables: IptablesMetrics,
    /// The conntrack reconciler's families (registered in iptables mode only).
    pub conntrack_reconciler: crate::conntrack::ConntrackMetrics,
    /// ebpf mode's map and link gauges (registered in ebpf mode only).
    pub ebpf: crate::ebpf::EbpfMetrics,
    /// Service ports added, changed or removed by syncs (the benchmark's "applied" signal).
    pub service_port_changes_total: Counter,
    /// Input problems currently present (objects or fields skipped).
    pub input_warnings: Gauge,
    /// Service ports the dataplane failed to program.
    pub dataplane_errors_total: Counter,
    /// Service ports in the desired state.
    pub service_ports: Gauge,
    /// Whole syncs that failed (the dataplane kept its previous state).
    pub sync_failures_total: Counter,
    /// Drift found by a periodic verify and repaired.
    pub repairs_total: Counter,
    /// Service ports not programmed because an eBPF map was full, by map.
    pub map_full_total: Family<MapLabel, Counter>,
    /// Whether the node serves IPv6: the sync's families then get `IPv6` series too.
    ipv6_served: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric of iptables mode, the fullest set (tests).
    pub fn new() -> Self {
        Self::for_mode(ProxyMode::Iptables)
    }

    /// Creates the metrics and registers those `mode` uses, as upstream's
    /// `RegisterMetrics(mode)`.
    pub fn for_mode(mode: ProxyMode) -> Self {
        let m = Metrics {
            registry: Registry::default(),
            sync_duration: PerFamily::new(sync_buckets),
            sync_full_duration: PerFamily::new(sync_buckets),
            sync_partial_duration: PerFamily::new(sync_buckets),
            last_sync_timestamp: Family::default(),
            last_queued_timestamp: Family::default(),
            service_changes_total: Counter::default(),
            service_changes_pending: Gauge::default(),
            endpoint_changes_total: Counter::default(),
            endpoint_changes_pending: Gauge::default(),
            no_local_endpoints: Family::default(),
            network_programming_duration: PerFamily::new(network_programming_buckets),
            healthz_total: Family::default(),
            livez_total: Family::default(),
            iptables: IptablesMetrics::default(),
            conntrack_reconciler: Default::default(),
            ebpf: Default::default(),
            service_port_changes_total: Counter::default(),
            input_warnings: Gauge::default(),
            dataplane_errors_total: Counter::default(),
            service_ports: Gauge::default(),
            sync_failures_total: Counter::default(),
            repairs_total: Counter::default(),
            map_full_total: Family::default(),
            ipv6_served: AtomicBool::new(false),
        };
        let mut registry = Registry::default();
        m.register_upstream(registry.sub_registry_with_prefix("kubeproxy"), mode);
        m.register_own(registry.sub_registry_with_prefix("switchyard"));
        match mode {
            ProxyMode::Iptables => m.conntrack_reconciler.register(&mut registry),
            ProxyMode::Ebpf => m.ebpf.register(&mut registry),
        }
        registry.register_collector(Box::new(process::ProcessCollector::new()));
        build_info::register(&mut registry);
        Metrics { registry, ..m }
    }

    /// Upstream's families, with upstream's help texts.
    fn register_upstream(&self, kp: &mut Registry, mode: ProxyMode) {
        kp.register(
            "sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            self.sync_duration.clone(),
        );
        kp.register(
            "sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            self.sync_full_duration.clone(),
        );
        kp.register(
            "sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            self.sync_partial_duration.clone(),
        );
        kp.register(
            "sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            self.last_sync_timestamp.clone(),
        );
        kp.register(
            "sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            self.last_queued_timestamp.clone(),
        );
        kp.register(
            "network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            self.network_programming_duration.clone(),
        );
        kp.register(
            "sync_proxy_rules_endpoint_changes_pending",
            "Pending proxy rules Endpoint changes",
            self.endpoint_changes_pending.clone(),
        );
        kp.register(
            "sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            self.endpoint_changes_total.clone(),
        );
        kp.register(
            "sync_proxy_rules_service_changes_pending",
            "Pending proxy rules Service changes",
            self.service_changes_pending.clone(),
        );
        kp.register(
            "sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            self.service_changes_total.clone(),
        );
        kp.register(
            "sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            self.no_local_endpoints.clone(),
        );
        kp.register(
            "proxy_healthz",
            "Cumulative proxy healthz HTTP status",
            self.healthz_total.clone(),
        );
        kp.register(
            "proxy_livez",
            "Cumulative proxy livez HTTP status",
            self.livez_total.clone(),
        );
        if mode != ProxyMode::Iptables {
            return;
        }
        let ipt = &self.iptables;
        kp.register(
            "sync_proxy_rules_iptables_restore_failures",
            "Cumulative proxy iptables restore failures",
            ipt.restore_failures.clone(),
        );
        kp.register(
            "sync_proxy_rules_iptables_partial_restore_failures",
            "Cumulative proxy iptables partial restore failures",
            ipt.partial_restore_failures.clone(),
        );
        kp.register(
            "sync_proxy_rules_iptables_total",
            "Total number of iptables rules owned by kube-proxy",
            ipt.rules_total.clone(),
        );
        kp.register(
            "sync_proxy_rules_iptables_last",
            "Number of iptables rules written by kube-proxy in last sync",
            ipt.rules_last.clone(),
        );
    }

    fn register_own(&self, sy: &mut Registry) {
        sy.register(
            "input_warnings",
            "Objects or fields currently skipped as invalid",
            self.input_warnings.clone(),
        );
        sy.register(
            "dataplane_errors",
            "Service ports the dataplane failed to program",
            self.dataplane_errors_total.clone(),
        );
        sy.register(
            "ebpf_map_full",
            "Service ports not programmed because an eBPF map was full",
            self.map_full_total.clone(),
        );
        sy.register(
            "sync_failures",
            "Syncs that failed as a whole; the dataplane kept its previous state",
            self.sync_failures_total.clone(),
        );
        sy.register(
            "dataplane_repairs",
            "Drift found by a periodic verify and repaired",
            self.repairs_total.clone(),
        );
        sy.register(
            "iptables_restores",
            "iptables-restore runs",
            self.iptables.restores.clone(),
        );
        sy.register(
            "iptables_restore_duration_seconds",
            "Time spent inside iptables-restore",
            self.iptables.restore_duration.clone(),
        );
        sy.register(
            "service_ports",
            "Service ports in the desired state",
            self.service_ports.clone(),
        );
        sy.register(
            "service_port_changes",
            "Service ports added, changed or removed by syncs",
            self.service_port_changes_total.clone(),
        );
    }

    /// The node serves IPv6 (decided once at start, as upstream decides its proxiers): the
    /// sync's `IPv6` series exist from now on (zero), as `IPv4`'s do from the start.
    pub fn serve_ipv6(&self) {
        self.ipv6_served.store(true, Ordering::Relaxed);
        for histogram in [
            &self.sync_duration,
            &self.sync_full_duration,
            &self.sync_partial_duration,
            &self.network_programming_duration,
        ] {
            drop(histogram.family.get_or_create(&FAMILY6));
        }
    }

    /// The families whose series a sync writes.
    fn served(&self) -> &'static [FamilyLabel] {
        if self.ipv6_served.load(Ordering::Relaxed) {
            &[FAMILY, FAMILY6]
        } else {
            &[FAMILY]
        }
    }

    /// A sync completed at `now` (Unix seconds) and took `seconds`.
    pub fn synced(&self, seconds: f64, full: bool, now: f64) {
        let kind = if full {
            &self.sync_full_duration
        } else {
            &self.sync_partial_duration
        };
        for label in self.served() {
            self.sync_duration
                .family
                .get_or_create(label)
                .observe(seconds);
            kind.family.get_or_create(label).observe(seconds);
            self.last_sync_timestamp.get_or_create(label).set(now);
        }
    }

    /// A change was queued at `now` (Unix seconds).
    pub fn queued(&self, now: f64) {
        for label in self.served() {
            self.last_queued_timestamp.get_or_create(label).set(now);
        }
    }

    /// A change of an EndpointSlice (IPv6 if `ipv6`) is in the dataplane, `seconds` after its
    /// trigger time; an IPv6 slice's only where the node serves IPv6 (upstream's single-stack
    /// proxier ignores the other family's slices).
    pub fn programmed(&self, seconds: f64, ipv6: bool) {
        let label = if ipv6 { &FAMILY6 } else { &FAMILY };
        if self.served().contains(label) {
            self.network_programming_duration
                .family
                .get_or_create(label)
                .observe(seconds);
        }
    }

    /// The ports without a local endpoint in the state just synced, per family (`ipv4`,
    /// `ipv6`); the IPv6 gauges only where the node serves IPv6.
    pub fn set_no_local_endpoints(&self, ipv4: NoLocalEndpoints, ipv6: NoLocalEndpoints) {
        for (label, counts) in self.served().iter().zip([ipv4, ipv6]) {
            for (policy, n) in [("internal", counts.internal), ("external", counts.external)] {
                let label = PolicyLabel {
                    ip_family: label.ip_family,
                    traffic_policy: policy,
                };
                self.no_local_endpoints.get_or_create(&label).set(n as i64);
            }
        }
    }

    /// The Prometheus text exposition (format 0.0.4), as kube-proxy serves it.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        exposition::to_prometheus_text(&out)
    }
}

#[cfg(test)]
mod tests;
