//! The conntrack reconciler's metrics: upstream's two (`pkg/proxy/metrics`), labelled by IP
//! family as there, plus a count of reconciles that failed.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Upstream's `ip_family` label (`IPv4`, `IPv6`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IpFamilyLabel {
    /// `IPv4` or `IPv6`.
    pub ip_family: &'static str,
}

/// The label of the family iptables mode programs.
pub const IPV4: IpFamilyLabel = IpFamilyLabel { ip_family: "IPv4" };
/// The label of the IPv6 reconciler's series.
pub const IPV6: IpFamilyLabel = IpFamilyLabel { ip_family: "IPv6" };

/// A histogram with upstream's buckets (1 ms doubling 15 times, as its sync latencies).
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The reconciler's counters; clones share them.
#[derive(Clone, Debug)]
pub struct ConntrackMetrics {
    /// `kubeproxy_conntrack_reconciler_sync_duration_seconds`: one listing plus deletes.
    pub sync_duration: Family<IpFamilyLabel, Histogram, fn() -> Histogram>,
    /// `kubeproxy_conntrack_reconciler_deleted_entries_total`.
    pub deleted_entries: Family<IpFamilyLabel, Counter>,
    /// `switchyard_conntrack_reconciler_failures_total`: reconciles that could not list or
    /// delete (the rules sync itself succeeded; the next sync tries again).
    pub failures: Counter,
}

impl Default for ConntrackMetrics {
    fn default() -> Self {
        Self {
            sync_duration: Family::new_with_constructor(duration_histogram),
            deleted_entries: Family::default(),
            failures: Counter::default(),
        }
    }
}

impl ConntrackMetrics {
    /// Registers under `kubeproxy_` (upstream's) and `switchyard_` (the failure count).
    pub fn register(&self, registry: &mut Registry) {
        // The IPv4 series exist from the start, as upstream's do (a scrape before the first
        // reconcile shows zeros, not nothing).
        drop(self.sync_duration.get_or_create(&IPV4));
        drop(self.deleted_entries.get_or_create(&IPV4));
        let kp = registry.sub_registry_with_prefix("kubeproxy");
        kp.register(
            "conntrack_reconciler_sync_duration_seconds",
            "ReconcileConntrackFlowsLatency latency in seconds",
            self.sync_duration.clone(),
        );
        kp.register(
            "conntrack_reconciler_deleted_entries",
            "Cumulative conntrack flows deleted by conntrack reconciler",
            self.deleted_entries.clone(),
        );
        let sy = registry.sub_registry_with_prefix("switchyard");
        sy.register(
            "conntrack_reconciler_failures",
            "Conntrack reconciles that failed to list or delete entries",
            self.failures.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_are_upstreams() {
        let metrics = ConntrackMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.sync_duration.get_or_create(&IPV4).observe(0.003);
        metrics.deleted_entries.get_or_create(&IPV4).inc_by(2);
        metrics.failures.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "kubeproxy_conntrack_reconciler_sync_duration_seconds_bucket{le=\"0.004\",ip_family=\"IPv4\"} 1",
            "kubeproxy_conntrack_reconciler_sync_duration_seconds_bucket{le=\"16.384\",ip_family=\"IPv4\"} 1",
            "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv4\"} 2",
            "switchyard_conntrack_reconciler_failures_total 1",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }
}
