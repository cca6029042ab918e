use super::*;

/// The `le` values of `family`'s buckets, in order, from an exposition.
fn buckets(text: &str, family: &str) -> Vec<String> {
    let prefix = format!("{family}_bucket{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let at = l.find("le=\"")? + 4;
            Some(l[at..at + l[at..].find('"')?].to_owned())
        })
        .collect()
}

#[test]
fn names_labels_and_buckets_follow_upstream() {
    let m = Metrics::new();
    m.synced(0.02, true, 1_712_345_678.0);
    m.set_no_local_endpoints(
        NoLocalEndpoints {
            internal: 1,
            external: 2,
        },
        NoLocalEndpoints::default(),
    );
    m.map_full_total
        .get_or_create(&MapLabel {
            map: "SWY_SERVICES".into(),
        })
        .inc();
    let text = m.encode();
    for line in [
        "# TYPE kubeproxy_sync_proxy_rules_service_changes_total counter",
        "kubeproxy_sync_proxy_rules_service_changes_total 0",
        "kubeproxy_sync_proxy_rules_endpoint_changes_pending 0",
        "kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 1",
        "kubeproxy_sync_partial_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 0",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"} 1.712345678e+09",
        "kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family=\"IPv4\"} 0",
        "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv4\"} 0",
        "switchyard_ebpf_map_full_total{map=\"SWY_SERVICES\"} 1",
        "# TYPE process_cpu_seconds_total counter",
        "# TYPE kubernetes_build_info gauge",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    assert!(
        text.contains("traffic_policy=\"external\"") && text.contains("} 2\n"),
        "{text}"
    );
    assert!(!text.contains("# EOF"), "Prometheus text, not OpenMetrics");
    let sync = buckets(&text, "kubeproxy_sync_proxy_rules_duration_seconds");
    assert_eq!(sync.first().map(String::as_str), Some("0.001"));
    assert_eq!(sync[14], "16.384");
    assert_eq!(sync.len(), 16, "15 bounds and +Inf");
    let npl = buckets(&text, "kubeproxy_network_programming_duration_seconds");
    assert_eq!(npl.len(), 82, "81 bounds and +Inf: {npl:?}");
    assert_eq!(&npl[..5], ["0", "0.25", "0.5", "1", "2"]);
    assert_eq!(&npl[61..64], ["59", "60", "65"]);
    assert_eq!(&npl[78..], ["240", "270", "300", "+Inf"]);
}

#[test]
fn a_node_serving_ipv6_has_ipv6_series_of_the_sync() {
    let m = Metrics::new();
    let counts = |external| NoLocalEndpoints {
        internal: 0,
        external,
    };
    let ipv6_series = [
        "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv6\"} 1",
        "kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=\"IPv6\"} 1",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv6\"} 1.712345678e+09",
        "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv6\",traffic_policy=\"external\"} 3",
        "kubeproxy_network_programming_duration_seconds_count{ip_family=\"IPv6\"} 1",
    ];
    // Single-stack: an IPv6 slice's latency and IPv6 counts are not written.
    m.synced(0.02, true, 1_712_345_678.0);
    m.set_no_local_endpoints(counts(1), counts(3));
    m.programmed(0.5, true);
    let text = m.encode();
    assert!(!text.contains("ip_family=\"IPv6\""), "{text}");
    assert!(
        text.contains("kubeproxy_network_programming_duration_seconds_count{ip_family=\"IPv4\"} 0")
    );
    m.serve_ipv6();
    assert!(m
        .encode()
        .contains("kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv6\"} 0"));
    m.synced(0.02, true, 1_712_345_678.0);
    m.set_no_local_endpoints(counts(1), counts(3));
    m.programmed(0.5, true);
    let text = m.encode();
    for line in ipv6_series {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    for line in [
        "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 2",
        "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv4\",traffic_policy=\"external\"} 1",
        "kubeproxy_network_programming_duration_seconds_count{ip_family=\"IPv4\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
}

#[test]
fn ebpf_mode_registers_no_iptables_or_conntrack_reconciler_families() {
    let text = Metrics::for_mode(ProxyMode::Ebpf).encode();
    assert!(text.contains("kubeproxy_sync_proxy_rules_duration_seconds_count"));
    assert!(
        !text.contains("kubeproxy_sync_proxy_rules_iptables"),
        "{text}"
    );
    assert!(!text.contains("kubeproxy_conntrack_reconciler"), "{text}");
}

#[test]
fn the_conntrack_reconciler_handle_feeds_both_families() {
    let m = Metrics::new();
    let handle = m.conntrack_reconciler.clone();
    let ipv4 = crate::conntrack::metrics::IPV4;
    handle.sync_duration.get_or_create(&ipv4).observe(0.003);
    handle.deleted_entries.get_or_create(&ipv4).inc_by(18);
    let text = m.encode();
    assert!(
        text.contains(
            "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv4\"} 18"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "kubeproxy_conntrack_reconciler_sync_duration_seconds_count{ip_family=\"IPv4\"} 1"
        ),
        "{text}"
    );
}

#[test]
fn iptables_rule_counts_are_reported_for_filter_and_nat() {
    use crate::iptables::rule_set::{RuleCounts, Table};
    let m = Metrics::new();
    let total = RuleCounts::from([(Table::Nat, 40), (Table::Filter, 7), (Table::Mangle, 0)]);
    let last = RuleCounts::from([(Table::Nat, 3)]);
    m.iptables.set_rule_counts(&total, &last);
    let text = m.encode();
    for (name, table, value) in [
        ("total", "nat", 40),
        ("total", "filter", 7),
        ("last", "nat", 3),
        ("last", "filter", 0),
    ] {
        let found = text.lines().any(|l| {
            l.starts_with(&format!("kubeproxy_sync_proxy_rules_iptables_{name}{{"))
                && l.contains(&format!("table=\"{table}\""))
                && l.contains("ip_family=\"IPv4\"")
                && l.ends_with(&format!(" {value}"))
        });
        assert!(found, "{name} {table} {value}:\n{text}");
    }
    assert!(
        !text.contains("table=\"mangle\""),
        "upstream reports filter and nat"
    );
}

#[test]
fn the_ipv6_rule_set_counts_into_ipv6_series() {
    use crate::iptables::rule_set::{RuleCounts, Table};
    let m = Metrics::for_mode(crate::config::ProxyMode::Iptables);
    let v6 = m.iptables.for_family(IpFamily::IPv6);
    v6.set_rule_counts(&RuleCounts::from([(Table::Nat, 9)]), &RuleCounts::new());
    v6.restore_failures.inc();
    m.iptables.restore_failures.inc();
    m.iptables.restore_failures.inc();
    let text = m.encode();
    for line in [
        "kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family=\"IPv6\"} 1",
        "kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family=\"IPv4\"} 2",
    ] {
        assert!(text.lines().any(|l| l == line), "{line}:\n{text}");
    }
    assert!(
        text.lines().any(
            |l| l.starts_with("kubeproxy_sync_proxy_rules_iptables_total{")
                && l.contains("ip_family=\"IPv6\"")
                && l.contains("table=\"nat\"")
                && l.ends_with(" 9")
        ),
        "{text}"
    );
}
