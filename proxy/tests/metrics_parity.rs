//! `/metrics` of the real binary against upstream kube-proxy's metric set
//! (`fixtures/kube-proxy-metrics.txt`): every family a kube-proxy dashboard reads is there,
//! with upstream's type, label names and bucket bounds, in the Prometheus text format; the
//! iptables-only families exist in iptables mode only, as upstream registers them per mode.
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use switchyard_testbed::{
    http_get, start_switchyard, wait_for, ChildGuard, Manifests, Testbed, TopologySpec,
};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const FIXTURE: &str = include_str!("fixtures/kube-proxy-metrics.txt");

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: metrics}
spec:
  clusterIP: 198.18.128.80
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: metrics, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [198.19.1.11], nodeName: node1, conditions: {ready: true}}
";

/// One row of the fixture.
#[derive(Debug)]
struct Expected {
    name: String,
    kind: String,
    labels: BTreeSet<String>,
    buckets: Option<Vec<String>>,
    iptables_only: bool,
}

fn expected() -> Vec<Expected> {
    FIXTURE
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split(' ').collect();
            assert_eq!(cols.len(), 5, "fixture row {l:?}");
            let list = |c: &str| -> Vec<String> {
                if c == "-" {
                    Vec::new()
                } else {
                    c.split(',').map(str::to_owned).collect()
                }
            };
            Expected {
                name: cols[0].to_owned(),
                kind: cols[1].to_owned(),
                labels: list(cols[2]).into_iter().collect(),
                buckets: (cols[3] != "-").then(|| list(cols[3])),
                iptables_only: match cols[4] {
                    "all" => false,
                    "iptables" => true,
                    other => panic!("fixture row {l:?}: mode {other}"),
                },
            }
        })
        .collect()
}

/// One family of a scrape.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    /// Each series' labels (without `le`), by sample name suffix.
    series: Vec<(String, BTreeMap<String, String>)>,
}

/// A sample line's name and labels (values unescaped).
fn parse_series(series: &str) -> (String, BTreeMap<String, String>) {
    let Some((name, rest)) = series.split_once('{') else {
        return (series.to_owned(), BTreeMap::new());
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "{series}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.extend(chars.next()),
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        if chars.peek() == Some(&'}') {
            break;
        }
    }
    (name.to_owned(), labels)
}

/// The families of a text exposition, by name.
fn parse(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            families.entry(name.to_owned()).or_default().kind = kind.to_owned();
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        assert!(
            value.parse::<f64>().is_ok() || value.ends_with("Inf") || value == "NaN",
            "{line}"
        );
        let (name, labels) = parse_series(series);
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                families
                    .get(base)
                    .is_some_and(|f| f.kind == "histogram")
                    .then(|| (base.to_owned(), suffix.to_string()))
            })
            .unwrap_or((name.clone(), String::new()));
        families
            .entry(family.0)
            .or_default()
            .series
            .push((family.1, labels));
    }
    families
}

/// Everything in `families` that differs from the fixture, for `mode`.
fn differences(families: &BTreeMap<String, Family>, iptables_mode: bool) -> Vec<String> {
    let mut problems = Vec::new();
    for e in expected() {
        let family = families.get(&e.name);
        if e.iptables_only && !iptables_mode {
            if family.is_some() {
                problems.push(format!("{}: only iptables mode registers it", e.name));
            }
            continue;
        }
        let Some(family) = family else {
            problems.push(format!("{}: missing", e.name));
            continue;
        };
        if family.kind != e.kind {
            problems.push(format!(
                "{}: type {} instead of {}",
                e.name, family.kind, e.kind
            ));
        }
        if family.series.is_empty() {
            problems.push(format!("{}: no series", e.name));
        }
        let mut buckets: BTreeMap<Vec<(String, String)>, Vec<String>> = BTreeMap::new();
        for (suffix, labels) in &family.series {
            let names: BTreeSet<String> = labels.keys().filter(|k| *k != "le").cloned().collect();
            if names != e.labels {
                problems.push(format!(
                    "{}: labels {names:?} instead of {:?}",
                    e.name, e.labels
                ));
            }
            if suffix == "_bucket" {
                let key = labels
                    .iter()
                    .filter(|(k, _)| *k != "le")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                buckets
                    .entry(key)
                    .or_default()
                    .push(labels.get("le").cloned().unwrap_or_default());
            }
        }
        if let Some(expected) = &e.buckets {
            let mut expected = expected.clone();
            expected.push("+Inf".to_owned());
            if buckets.is_empty() {
                problems.push(format!("{}: no buckets", e.name));
            }
            for (series, got) in buckets {
                if got != expected {
                    problems.push(format!(
                        "{} {series:?}: buckets {got:?} instead of {expected:?}",
                        e.name
                    ));
                }
            }
        }
    }
    problems
}

/// Switchyard in `mode` on a one-node testbed, after its first sync and one request to each
/// health endpoint: the scrape's headers and body.
fn scrape(mode: &str) -> (String, ChildGuard, Testbed) {
    let testbed = Testbed::new(TopologySpec {
        nodes: 1,
        pods_per_node: 1,
    })
    .expect("testbed");
    let manifests = Manifests::new().expect("manifests");
    manifests
        .write("nodes.yaml", &testbed.nodes_yaml())
        .expect("nodes");
    manifests.write("web.yaml", SERVICE).expect("service");
    let node = testbed.node(1);
    let proxy =
        start_switchyard(&testbed, node, BIN.as_ref(), mode, &manifests, &[]).expect("switchyard");
    wait_for(
        "the first sync",
        Duration::from_secs(20),
        || match http_get(node, 10249, "/metrics") {
            Ok((200, text))
                if text.contains("kubeproxy_sync_proxy_rules_last_timestamp_seconds{") =>
            {
                Ok(())
            }
            other => Err(other.map(|(code, _)| code)),
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.stderr()));
    for path in ["/healthz", "/livez"] {
        let (code, _) = http_get(node, 10256, path).expect(path);
        assert!(code == 200 || code == 503, "{path}: {code}");
    }
    let (code, raw) = http_get(node, 10249, "/metrics").expect("scrape");
    assert_eq!(code, 200, "{raw}");
    drop(manifests);
    (raw, proxy, testbed)
}

fn metrics_match_upstream(mode: &str) {
    let (raw, proxy, _testbed) = scrape(mode);
    let (head, body) = raw.split_once("\r\n\r\n").expect("headers");
    assert!(
        head.to_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    assert!(
        !body.contains("# EOF"),
        "Prometheus text format, not OpenMetrics"
    );
    // The testbed's node is dual-stack, so it proxies IPv6 in both modes: the sync has IPv6
    // series too, as upstream's dual-stack node with a proxier per family.
    for family in ["IPv4", "IPv6"] {
        let prefix =
            format!("kubeproxy_sync_proxy_rules_duration_seconds_count{{ip_family=\"{family}\"}} ");
        let synced = body.lines().find_map(|l| l.strip_prefix(prefix.as_str()));
        assert!(
            synced.is_some_and(|n| n.parse::<u64>().is_ok_and(|n| n >= 1)),
            "no synced {family} series:\n{body}"
        );
    }
    let families = parse(body);
    let problems = differences(&families, mode == "iptables");
    assert!(
        problems.is_empty(),
        "{mode} mode differs from upstream's metrics:\n  {}\n\n{body}\n{}",
        problems.join("\n  "),
        proxy.stderr()
    );
}

#[test]
fn metrics_match_upstream_iptables() {
    metrics_match_upstream("iptables");
}

#[test]
fn metrics_match_upstream_ebpf() {
    metrics_match_upstream("ebpf");
}

/// The comparison itself fails on a missing family, a wrong label or a changed bucket.
#[test]
fn the_comparison_catches_differences() {
    let good = "# TYPE kubeproxy_proxy_healthz_total counter\n\
        kubeproxy_proxy_healthz_total{code=\"200\"} 1\n";
    let families = parse(good);
    let problems = differences(&families, true);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("kubeproxy_sync_proxy_rules_duration_seconds: missing")),
        "{problems:?}"
    );
    assert!(
        !problems
            .iter()
            .any(|p| p.starts_with("kubeproxy_proxy_healthz_total")),
        "{problems:?}"
    );
    let wrong = "# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram\n\
        kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.001\"} 0\n\
        kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\",le=\"+Inf\"} 0\n\
        kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family=\"IPv4\"} 0\n\
        kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 0\n\
        # TYPE kubeproxy_proxy_livez_total counter\n\
        kubeproxy_proxy_livez_total{status=\"200\"} 1\n";
    let problems = differences(&parse(wrong), false);
    assert!(
        problems.iter().any(
            |p| p.contains("kubeproxy_sync_proxy_rules_duration_seconds") && p.contains("buckets")
        ),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("kubeproxy_proxy_livez_total: labels")),
        "{problems:?}"
    );
}
