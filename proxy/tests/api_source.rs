//! The Kubernetes API source end to end: the real `switchyard` binary watches a fake API
//! server (speaking list/watch with resource versions, bookmarks, 410 Gone and dropped
//! connections) in a node's namespace, and traffic in the testbed follows the objects.
//! Runs in both dataplane modes.
use std::net::SocketAddr;

use std::time::Duration;

#[path = "support/rbac.rs"]
mod rbac;

use switchyard_testbed::fake_apiserver::{FakeApiServer, Kind};
use switchyard_testbed::{
    backend_names, start_switchyard_from, wait_for, ObjectSource, Proto, Testbed, TopologySpec,
};

const TIMEOUT: Duration = Duration::from_millis(1500);
const WAIT: Duration = Duration::from_secs(20);

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// GET `path` from the proxy's HTTP servers inside node1's namespace.
fn http_get(testbed: &Testbed, port: u16, path: &str) -> (u16, String) {
    switchyard_testbed::http_get(testbed.node(1), port, path).expect("http request in node1")
}

fn service(name: &str, ip: &str, endpoints: &[&str], trigger: &str) -> String {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|ip| {
            let node = if ip.starts_with("198.19.1.") {
                "node1"
            } else {
                "node2"
            };
            format!("{{addresses: [{ip}], nodeName: {node}}}")
        })
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: api}}\n\
         spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-1, namespace: api, labels: {{kubernetes.io/service-name: {name}}},\n\
           annotations: {{endpoints.kubernetes.io/last-change-trigger-time: \"{trigger}\"}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{}]\n",
        endpoints.join(", ")
    )
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn run(mode: &str) {
    let testbed = Testbed::new(TopologySpec {
        nodes: 2,
        pods_per_node: 2,
    })
    .expect("testbed");
    let _echo = testbed
        .start_echo_everywhere(8080, 0)
        .expect("echo servers");
    let server = FakeApiServer::start_in_netns(&testbed.node(1).netns_path, addr("127.0.0.1:6443"))
        .expect("fake API server in node1");
    let dir = tempdir(mode);
    let kubeconfig = dir.join("kubeconfig");
    server.kubeconfig(&kubeconfig).expect("kubeconfig");
    server
        .apply_yaml(&service(
            "web",
            "198.18.128.60",
            &["198.19.1.11", "198.19.2.11"],
            &now_rfc3339(),
        ))
        .expect("apply");
    server.apply_yaml(&testbed.nodes_yaml()).expect("nodes");
    let proxy = start_switchyard_from(
        &testbed,
        testbed.node(1),
        env!("CARGO_BIN_EXE_switchyard").as_ref(),
        mode,
        ObjectSource::Kubeconfig(&kubeconfig),
        &["--sync-period=1s"],
    )
    .expect("switchyard");
    let client = testbed.pod(1, 2);
    let answered_by = |vip: &str, want: &[&str]| {
        let got = backend_names(&testbed.request(client, Proto::Tcp, addr(vip), 20, TIMEOUT));
        if got.iter().map(String::as_str).eq(want.iter().copied()) {
            Ok(())
        } else {
            Err(got)
        }
    };
    let fail = |e: switchyard_testbed::Error| -> ! { panic!("[{mode}] {e}\n{}", proxy.stderr()) };

    // Initial lists -> programmed.
    wait_for("the listed service to answer", WAIT, || {
        answered_by("198.18.128.60:80", &["node1-pod1", "node2-pod1"])
    })
    .unwrap_or_else(|e| fail(e));

    // Created, edited and deleted through the API.
    server
        .apply_yaml(&service(
            "api",
            "198.18.128.61",
            &["198.19.2.12"],
            &now_rfc3339(),
        ))
        .expect("create");
    wait_for("a created service", WAIT, || {
        answered_by("198.18.128.61:80", &["node2-pod2"])
    })
    .unwrap_or_else(|e| fail(e));
    server
        .apply_yaml(&service(
            "web",
            "198.18.128.60",
            &["198.19.2.11"],
            &now_rfc3339(),
        ))
        .expect("edit");
    wait_for("an edited slice", WAIT, || {
        answered_by("198.18.128.60:80", &["node2-pod1"])
    })
    .unwrap_or_else(|e| fail(e));
    server.delete(Kind::Service, "api", "api").expect("delete");
    wait_for("a deleted service to stop answering", WAIT, || {
        let r = testbed.request(client, Proto::Tcp, addr("198.18.128.61:80"), 1, TIMEOUT);
        if r.iter().all(Result::is_err) {
            Ok(())
        } else {
            Err(r)
        }
    })
    .unwrap_or_else(|e| fail(e));

    // Network programming latency was observed for the live slice changes.
    let (_, metrics) = http_get(&testbed, 10249, "/metrics");
    // Summed over the families' series: a dual-stack node prints both, in no fixed order.
    let count = switchyard_testbed::metric_in(
        &metrics,
        "kubeproxy_network_programming_duration_seconds_count",
    )
    .unwrap_or(0.0);
    assert!(
        count >= 2.0,
        "[{mode}] latency observations: {count}\n{metrics}"
    );

    // A cut watch plus an expired resource version: the watcher relists, and nothing is
    // flushed meanwhile (a held flow keeps its backend throughout).
    let hold = testbed
        .hold(
            client,
            Proto::Tcp,
            addr("198.18.128.60:80"),
            Duration::from_millis(100),
        )
        .expect("hold");
    let lists_before = server.lists_served(Kind::EndpointSlice);
    server.compact();
    server.drop_watches();
    server
        .apply_yaml(&service(
            "web",
            "198.18.128.60",
            &["198.19.2.11", "198.19.1.12"],
            &now_rfc3339(),
        ))
        .expect("edit after compaction");
    wait_for("the edit after a relist", WAIT, || {
        answered_by("198.18.128.60:80", &["node1-pod2", "node2-pod1"])
    })
    .unwrap_or_else(|e| fail(e));
    assert!(
        server.lists_served(Kind::EndpointSlice) > lists_before,
        "[{mode}] 410 Gone must make the watcher list again"
    );

    // API server outage: traffic keeps flowing on the last programmed state, /healthz names
    // the failing source but stays 200 (as upstream: an outage must not pull every node out
    // of load balancers), /livez stays 200 (the liveness probe must not restart us), and the
    // watch recovers afterwards.
    server.set_available(false).expect("down");
    for _ in 0..3 {
        let r = testbed.request(client, Proto::Tcp, addr("198.18.128.60:80"), 10, TIMEOUT);
        assert!(
            r.iter().all(Result::is_ok),
            "[{mode}] traffic during the outage: {r:?}"
        );
    }
    wait_for("/healthz to report the failing source", WAIT, || {
        let (code, body) = http_get(&testbed, 10256, "/healthz");
        if code == 200 && body.contains("sourceFailingSince") {
            Ok(())
        } else {
            Err((code, body))
        }
    })
    .unwrap_or_else(|e| fail(e));
    let (code, body) = http_get(&testbed, 10256, "/livez");
    assert_eq!(code, 200, "[{mode}] /livez during the outage: {body}");
    server.set_available(true).expect("up");
    server
        .apply_yaml(&service(
            "web",
            "198.18.128.60",
            &["198.19.1.12"],
            &now_rfc3339(),
        ))
        .expect("edit after the outage");
    wait_for("the edit after the outage", WAIT, || {
        answered_by("198.18.128.60:80", &["node1-pod2"])
    })
    .unwrap_or_else(|e| fail(e));
    wait_for("/healthz healthy again", WAIT, || {
        let (code, body) = http_get(&testbed, 10256, "/healthz");
        if code == 200 {
            Ok(())
        } else {
            Err((code, body))
        }
    })
    .unwrap_or_else(|e| fail(e));

    let held = hold.replies_so_far();
    assert!(!held.is_empty());
    assert!(
        held.iter().all(Result::is_ok),
        "[{mode}] held flow: {held:?}"
    );
    let first = held[0].as_ref().map(|r| r.backend.clone()).ok();
    assert!(
        held.iter()
            .all(|r| r.as_ref().map(|r| r.backend.clone()).ok() == first),
        "[{mode}] the held flow changed backend: {held:?}"
    );
    // Every request of the run (lists, watches, relists after 410 Gone, the outage's
    // probes, the start event) is one the ClusterRole grants; proxy/tests/events.rs also
    // sees the event patch, and so every grant used.
    let used = rbac::triples(&server.requests());
    let granted = switchyard::source::api_access::triples();
    let ungranted: Vec<_> = used.difference(&granted).collect();
    assert!(
        ungranted.is_empty(),
        "[{mode}] requests switchyard::source::api_access does not list: {ungranted:?}"
    );
    for (group, resource, verb) in &granted {
        if resource != "events" {
            assert!(
                used.contains(&(group.clone(), resource.clone(), verb.clone())),
                "[{mode}] {verb} {group}/{resource} never used"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("swy-api-source-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tempdir");
    dir
}

#[test]
fn api_source_iptables() {
    run("iptables");
}

#[test]
fn api_source_ebpf() {
    run("ebpf");
}
