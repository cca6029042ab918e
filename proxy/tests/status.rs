//! `switchyard status` against a programmed testbed node, in both modes: while the proxy runs,
//! after SIGTERM (ebpf mode's pinned maps and iptables mode's chains stay), after a restart
//! (ebpf mode: the new instance's names replace the old ones'), and after `--cleanup` (a clear
//! error). The JSON rows must be exactly the programmed services and backends.
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use switchyard_testbed::{
    start_switchyard, wait_for, ChildGuard, Manifests, Place, Proto, Testbed, TopologySpec,
};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const WAIT: Duration = Duration::from_secs(20);

/// A NodePort service with ClientIP affinity beside the demo's web (TCP and UDP, three ready
/// endpoints and a terminating one) and empty (no endpoints) services.
const NODEPORT: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: np, namespace: demo}
spec:
  type: NodePort
  clusterIP: 198.18.128.12
  selector: {app: web}
  sessionAffinity: ClientIP
  ports:
    - {name: http, port: 8080, targetPort: 8080, nodePort: 30080, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: np-1
  namespace: demo
  labels: {kubernetes.io/service-name: np}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
  - addresses: [198.19.1.11]
    nodeName: node1
    conditions: {ready: true, serving: true, terminating: false}
  - addresses: [198.19.2.11]
    nodeName: node2
    conditions: {ready: true, serving: true, terminating: false}
"#;

/// An IPv6 ClusterIP + NodePort service (iptables mode writes it with ip6tables).
const NODEPORT6: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: np6, namespace: demo}
spec:
  type: NodePort
  clusterIP: 2001:db8:5::12
  ipFamilies: [IPv6]
  selector: {app: web6}
  ports:
    - {name: http, port: 8080, targetPort: 8080, nodePort: 30081, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: np6-1
  namespace: demo
  labels: {kubernetes.io/service-name: np6}
addressType: IPv6
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
  - addresses: ["2001:db8:1:1::11"]
    nodeName: node1
    conditions: {ready: true, serving: true, terminating: false}
  - addresses: ["2001:db8:1:2::11"]
    nodeName: node2
    conditions: {ready: true, serving: true, terminating: false}
"#;

const NP6_BACKENDS: [&str; 2] = ["2001:db8:1:1::11:8080", "2001:db8:1:2::11:8080"];

const WEB_BACKENDS: [&str; 3] = ["198.19.1.11:8080", "198.19.2.11:8080", "198.19.2.12:8080"];
const NP_BACKENDS: [&str; 2] = ["198.19.1.11:8080", "198.19.2.11:8080"];

/// One row as the test compares it: service, type, frontend, backends, verdict, affinity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    service: String,
    kind: String,
    frontend: String,
    backends: BTreeSet<String>,
    verdict: Option<String>,
    affinity: Option<u64>,
}

fn row(service: &str, kind: &str, frontend: &str, backends: &[&str], affinity: bool) -> Row {
    Row {
        service: service.into(),
        kind: kind.into(),
        frontend: frontend.into(),
        backends: backends.iter().map(|b| b.to_string()).collect(),
        verdict: backends.is_empty().then(|| "reject".into()),
        affinity: affinity.then_some(10800),
    }
}

/// The rows of every frontend but the NodePorts, which both modes program on the node.
fn cluster_ip_rows() -> Vec<Row> {
    vec![
        row(
            "demo/empty:http/TCP",
            "ClusterIP",
            "198.18.128.11:80/TCP",
            &[],
            false,
        ),
        row(
            "demo/np:http/TCP",
            "ClusterIP",
            "198.18.128.12:8080/TCP",
            &NP_BACKENDS,
            true,
        ),
        row(
            "demo/web:echo-udp/UDP",
            "ClusterIP",
            "198.18.128.10:80/UDP",
            &WEB_BACKENDS,
            false,
        ),
        row(
            "demo/web:http/TCP",
            "ClusterIP",
            "198.18.128.10:80/TCP",
            &WEB_BACKENDS,
            false,
        ),
    ]
}

struct Node {
    testbed: Testbed,
    manifests: Manifests,
    _echo: Vec<ChildGuard>,
}

fn node() -> Node {
    let testbed = Testbed::new(TopologySpec {
        nodes: 2,
        pods_per_node: 2,
    })
    .expect("testbed");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/demo");
    let manifests = Manifests::copy_of(&examples).expect("manifests");
    manifests.write("np.yaml", NODEPORT).expect("np.yaml");
    let echo = testbed.start_echo_everywhere(8080, 8080).expect("echo");
    Node {
        testbed,
        manifests,
        _echo: echo,
    }
}

impl Node {
    fn start(&self, mode: &str, extra: &[&str]) -> ChildGuard {
        let proxy = start_switchyard(
            &self.testbed,
            self.testbed.node(1),
            BIN.as_ref(),
            mode,
            &self.manifests,
            extra,
        )
        .expect("switchyard");
        let web: SocketAddr = "198.18.128.10:80".parse().expect("web");
        self.testbed
            .wait_for_answer(self.testbed.pod(1, 2), Proto::Tcp, web, WAIT)
            .unwrap_or_else(|e| panic!("programmed: {e}\n{}", proxy.stderr()));
        proxy
    }

    /// `switchyard status ARGS` in node1's namespace: success, stdout, stderr.
    fn status(&self, args: &[&str]) -> (bool, String, String) {
        let bpffs = format!(
            "--bpffs-path={}",
            self.testbed.bpffs_dir(self.testbed.node(1)).display()
        );
        let mut all = vec!["status"];
        all.extend(args);
        all.push(&bpffs);
        let out = self
            .testbed
            .run(Place::Node(1), BIN, &all, Duration::from_secs(60))
            .expect("switchyard status");
        (out.status.success(), out.stdout, out.stderr)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-o", "json"];
        all.extend(args);
        let (ok, stdout, stderr) = self.status(&all);
        assert!(ok, "status {args:?} failed: {stderr}");
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }

    fn stop(&self, mut proxy: ChildGuard) {
        proxy.terminate().expect("SIGTERM");
        let status = proxy
            .wait_timeout(WAIT)
            .expect("wait")
            .expect("exited after SIGTERM");
        assert!(status.success(), "{status}: {}", proxy.stderr());
    }

    fn cleanup_then_nothing_is_programmed(&self) {
        let bpffs = format!(
            "--bpffs-path={}",
            self.testbed.bpffs_dir(self.testbed.node(1)).display()
        );
        let out = self
            .testbed
            .run(Place::Node(1), BIN, ["--cleanup", &bpffs], WAIT)
            .expect("cleanup");
        assert!(out.status.success(), "{}", out.stderr);
        let (ok, stdout, stderr) = self.status(&[]);
        assert!(!ok, "status must fail with nothing programmed: {stdout}");
        assert!(
            stderr.contains("nothing is programmed on this node"),
            "{stderr}"
        );
    }
}

fn text(value: &Value) -> String {
    value.as_str().map(str::to_owned).unwrap_or_default()
}

/// The services of a status report as [`Row`]s, with the rows' scope (ebpf) or `None`.
fn rows(report: &Value) -> Vec<(Row, Option<String>)> {
    let mut rows: Vec<(Row, Option<String>)> = report["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|r| {
            let address = r["address"].as_str().unwrap_or("*");
            let backends = r["backends"]
                .as_array()
                .expect("backends")
                .iter()
                .map(|b| format!("{}:{}", text(&b["address"]), b["port"]))
                .collect();
            (
                Row {
                    service: text(&r["service"]),
                    kind: text(&r["type"]),
                    frontend: format!("{address}:{}/{}", r["port"], text(&r["protocol"])),
                    backends,
                    verdict: r["verdict"].as_str().map(str::to_owned),
                    affinity: r["affinity_timeout_seconds"].as_u64(),
                },
                r["scope"].as_str().map(str::to_owned),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// Every backend appears with an equal share in both modes here (no topology, no weights).
fn assert_equal_shares(report: &Value) {
    for r in report["services"].as_array().expect("services") {
        let backends = r["backends"].as_array().expect("backends");
        let sum: f64 = backends
            .iter()
            .map(|b| b["probability"].as_f64().expect("probability"))
            .sum();
        if !backends.is_empty() {
            assert!((sum - 1.0).abs() < 1e-4, "shares sum to 1: {r}");
        }
        for b in backends {
            let p = b["probability"].as_f64().expect("probability");
            assert!((p - 1.0 / backends.len() as f64).abs() < 1e-4, "{r}");
        }
    }
}

/// A `switchyard_ebpf_*` gauge from node1's metrics endpoint.
fn gauge(testbed: &Testbed, series: &str) -> Option<u64> {
    switchyard_testbed::metric(testbed.node(1), series).map(|v| v as u64)
}

#[test]
fn ebpf_status_reads_the_pinned_maps_running_stopped_and_restarted() {
    let node = node();
    let proxy = node.start("ebpf", &[]);
    let running = node.json(&[]);
    assert_eq!(running["mode"], "ebpf");
    let found = rows(&running);

    // Socket-scope entries: the four cluster IPs, and the NodePort on each node address.
    let socket: Vec<Row> = found
        .iter()
        .filter(|(r, scope)| scope.as_deref() == Some("socket") && r.kind == "ClusterIP")
        .map(|(r, _)| r.clone())
        .collect();
    assert_eq!(socket, cluster_ip_rows(), "{running:#}");
    let nodeports: Vec<&(Row, Option<String>)> =
        found.iter().filter(|(r, _)| r.kind == "External").collect();
    assert_eq!(
        found.len(),
        socket.len() + nodeports.len(),
        "nothing else: {running:#}"
    );
    for (r, _) in &nodeports {
        assert_eq!(r.service, "demo/np:http/TCP");
        assert!(r.frontend.ends_with(":30080/TCP"), "{r:?}");
        assert_eq!(
            r.backends,
            NP_BACKENDS.iter().map(|b| b.to_string()).collect()
        );
        assert_eq!(r.affinity, Some(10800));
    }
    for scope in ["socket", "external"] {
        assert!(
            nodeports
                .iter()
                .any(|(r, s)| r.frontend == "198.18.0.11:30080/TCP" && s.as_deref() == Some(scope)),
            "the NodePort on the node's address, {scope} scope: {running:#}"
        );
    }
    assert_equal_shares(&running);
    assert_eq!(running["notes"], Value::Array(vec![]), "{running:#}");

    // Maps and links: every map with its capacity, the programs attached.
    let maps: BTreeMap<String, (u64, u64)> = running["maps"]
        .as_array()
        .expect("maps")
        .iter()
        .map(|m| {
            (
                text(&m["name"]),
                (
                    m["entries"].as_u64().unwrap_or(u64::MAX),
                    m["capacity"].as_u64().expect("capacity"),
                ),
            )
        })
        .collect();
    assert_eq!(maps["SWY_SERVICES"], (found.len() as u64, 262_144));
    let slots = running["backends"]
        .as_array()
        .expect("backend entries")
        .len() as u64;
    assert_eq!(maps["SWY_BACKENDS"].0, slots);
    let ids: BTreeSet<u64> = running["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(|r| r["id"].as_u64())
        .collect();
    assert_eq!(
        maps["SWY_SVC_NAMES"].0,
        ids.len() as u64,
        "one name per set"
    );
    assert_eq!(maps["SWY_CONNTRACK"].1, 262_144);
    let links: Vec<String> = running["links"]
        .as_array()
        .expect("links")
        .iter()
        .map(|l| format!("{} {}", text(&l["pin"]), text(&l["program"])))
        .collect();
    for program in [
        "swy_connect4",
        "swy_sendmsg4",
        "swy_recvmsg4",
        "swy_getpeername4",
        "swy_connect6",
        "swy_sendmsg6",
        "swy_recvmsg6",
        "swy_getpeer6",
    ] {
        assert!(
            links.contains(&format!("{program} {program}")),
            "{program} attached: {links:?}"
        );
    }

    // The gauges agree with what status read (set by the first sync, a full one).
    assert_eq!(
        gauge(
            &node.testbed,
            "switchyard_ebpf_map_entries{map=\"SWY_SERVICES\"}"
        ),
        Some(found.len() as u64)
    );
    assert_eq!(
        gauge(
            &node.testbed,
            "switchyard_ebpf_map_capacity{map=\"SWY_BACKENDS\"}"
        ),
        Some(1_048_576)
    );
    // The IPv6 maps are pinned and gauged beside the IPv4 ones (this testbed's services
    // are IPv4-only, so they are empty).
    assert_eq!(maps["SWY_SERVICES6"], (0, 262_144));
    assert_eq!(
        gauge(
            &node.testbed,
            "switchyard_ebpf_map_capacity{map=\"SWY_BACKENDS6\"}"
        ),
        Some(1_048_576)
    );
    assert_eq!(
        gauge(
            &node.testbed,
            "switchyard_ebpf_links{program=\"swy_connect6\"}"
        ),
        Some(1)
    );
    assert_eq!(
        gauge(
            &node.testbed,
            "switchyard_ebpf_links{program=\"swy_connect4\"}"
        ),
        Some(1)
    );
    // The start-up's load: its time, and the verifier's work on the largest program (tens of
    // thousands of instructions; a program the verifier did not walk would read 0).
    let load =
        switchyard_testbed::metric(node.testbed.node(1), "switchyard_ebpf_program_load_seconds");
    assert!(load.is_some_and(|s| s > 0.0), "program load: {load:?}");
    let verified = gauge(
        &node.testbed,
        "switchyard_ebpf_program_verified_instructions{program=\"swy_tc_ingress\"}",
    );
    assert!(
        verified.is_some_and(|n| n > 10_000),
        "verified: {verified:?}"
    );

    // The tables.
    let (ok, table, stderr) = node.status(&[]);
    assert!(ok, "{stderr}");
    assert!(table.starts_with("Mode:     ebpf ("), "{table}");
    assert!(table.contains("Services: 4 service ports"), "{table}");
    for line in [
        "1 => 198.19.1.11:8080 33.3%",
        "none (reject)",
        "affinity=10800s",
        "SWY_SERVICES",
        "swy_connect4",
    ] {
        assert!(table.contains(line), "{line} missing:\n{table}");
    }
    let (ok, services, _) = node.status(&["services"]);
    assert!(ok && services.starts_with("SERVICE "), "{services}");
    let (ok, maps_table, _) = node.status(&["maps"]);
    assert!(ok && maps_table.starts_with("MAP "), "{maps_table}");
    let backends = node.json(&["backends"]);
    assert!(backends.get("services").is_none(), "{backends}");
    assert_eq!(
        backends["backends"].as_array().map(Vec::len),
        Some(slots as usize)
    );

    // SIGTERM leaves the pinned maps: the same rows without a controller.
    node.stop(proxy);
    let stopped = node.json(&[]);
    assert_eq!(rows(&stopped), found, "after SIGTERM");

    // A restarted controller writes fresh sets; the old sets' names go with them.
    let proxy = node.start("ebpf", &[]);
    wait_for("the restart's full sync", WAIT, || {
        let log = proxy.stderr();
        if log.contains("full=true") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .expect("full sync");
    let restarted = node.json(&[]);
    assert_eq!(rows(&restarted), found, "after a restart");
    let names = restarted["maps"]
        .as_array()
        .expect("maps")
        .iter()
        .find(|m| m["name"] == "SWY_SVC_NAMES")
        .and_then(|m| m["entries"].as_u64());
    let ids: BTreeSet<u64> = restarted["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(|r| r["id"].as_u64())
        .collect();
    assert_eq!(
        names,
        Some(ids.len() as u64),
        "no stale names: {restarted:#}"
    );
    node.stop(proxy);
    node.cleanup_then_nothing_is_programmed();
}

#[test]
fn iptables_status_reads_our_chains_running_and_stopped() {
    let node = node();
    node.manifests
        .write("np6.yaml", NODEPORT6)
        .expect("np6.yaml");
    let proxy = node.start("iptables", &["--iptables-backend=nft"]);
    let running = node.json(&["--proxy-mode", "iptables"]);
    assert_eq!(running["mode"], "iptables");
    assert_eq!(running["source"], "iptables-nft");
    let found: Vec<Row> = rows(&running).into_iter().map(|(r, _)| r).collect();
    let mut expected = cluster_ip_rows();
    expected.push(row(
        "demo/np:http/TCP",
        "NodePort",
        "*:30080/TCP",
        &NP_BACKENDS,
        true,
    ));
    // The IPv6 rows, read from ip6tables (a NodePort on every IPv6 NodePort address: `::`).
    expected.push(row(
        "demo/np6:http/TCP",
        "ClusterIP",
        "2001:db8:5::12:8080/TCP",
        &NP6_BACKENDS,
        false,
    ));
    expected.push(row(
        "demo/np6:http/TCP",
        "NodePort",
        ":::30081/TCP",
        &NP6_BACKENDS,
        false,
    ));
    expected.sort();
    assert_eq!(found, expected, "{running:#}");
    assert_equal_shares(&running);
    assert_eq!(running["notes"], Value::Array(vec![]), "{running:#}");
    let nodeport = running["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|r| r["type"] == "NodePort" && r["service"] == "demo/np:http/TCP")
        .expect("NodePort row");
    assert_eq!(
        nodeport["masquerade"], true,
        "externalTrafficPolicy Cluster"
    );
    assert!(
        text(&nodeport["chain"]).starts_with("SWY-EXT-"),
        "{nodeport}"
    );
    let endpoints: BTreeSet<String> = running["backends"]
        .as_array()
        .expect("backend entries")
        .iter()
        .map(|b| {
            format!(
                "{} {}:{}",
                text(&b["service"]),
                text(&b["address"]),
                b["port"]
            )
        })
        .collect();
    assert_eq!(
        endpoints.len(),
        10,
        "3 + 3 + 2 endpoint chains, 2 in ip6tables: {endpoints:?}"
    );
    let chains = running["chains"].as_array().expect("chains");
    assert!(
        chains
            .iter()
            .any(|c| c["table"] == "nat" && c["chains"].as_u64() > Some(10)),
        "{running:#}"
    );

    // Detected without --proxy-mode too, and printed as tables.
    let (ok, table, stderr) = node.status(&[]);
    assert!(ok, "{stderr}");
    assert!(
        table.starts_with("Mode:     iptables (iptables-nft)"),
        "{table}"
    );
    for line in [
        "demo/web:http/TCP",
        "*:30080/TCP",
        "[::]:30081/TCP",
        "[2001:db8:5::12]:8080/TCP",
        "SWY-SVC-",
        "1 => 198.19.1.11:8080 33.3%",
        "none (reject)",
        "TABLE",
    ] {
        assert!(table.contains(line), "{line} missing:\n{table}");
    }
    let (ok, backends, _) = node.status(&["backends"]);
    assert!(ok && backends.starts_with("CHAIN "), "{backends}");

    // Chains stay after SIGTERM, as upstream's do.
    node.stop(proxy);
    let stopped = node.json(&[]);
    let after: Vec<Row> = rows(&stopped).into_iter().map(|(r, _)| r).collect();
    assert_eq!(after, found, "after SIGTERM");
    node.cleanup_then_nothing_is_programmed();
}
