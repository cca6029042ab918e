//! Kubernetes Events as kube-proxy records them, against the fake API server in node1: on
//! start, `Starting` regarding the Node; when a health check node port cannot be opened
//! (another process in the node holds it), `FailedToStartServiceHealthcheck` regarding the
//! Service with upstream's note, repeated (a series, through a patch) while the port stays
//! taken. The requests of the run are exactly what the ClusterRole grants.
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use switchyard_testbed::fake_apiserver::FakeApiServer;
use switchyard_testbed::{start_switchyard_from, wait_for, ObjectSource, Testbed, TopologySpec};

#[path = "support/rbac.rs"]
mod rbac;

const HC_PORT: u16 = 32101;

const OBJECTS: &str = "apiVersion: v1
kind: Service
metadata: {name: lb, namespace: hc}
spec:
  type: LoadBalancer
  clusterIP: 198.18.128.71
  externalTrafficPolicy: Local
  healthCheckNodePort: 32101
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30091, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: lb-1, namespace: hc, labels: {kubernetes.io/service-name: lb}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [198.19.1.11], nodeName: node1, conditions: {ready: true}}
";

fn find<'a>(events: &'a [Value], reason: &str) -> Option<&'a Value> {
    events.iter().find(|e| e["reason"] == reason)
}

#[test]
fn events_on_start_and_for_a_health_check_port_that_cannot_be_opened() {
    let testbed = Testbed::new(TopologySpec {
        nodes: 2,
        pods_per_node: 1,
    })
    .expect("testbed");
    let node = testbed.node(1);
    let server =
        FakeApiServer::start_in_netns(&node.netns_path, "127.0.0.1:6443".parse().expect("addr"))
            .expect("fake API server");
    server.apply_yaml(&testbed.nodes_yaml()).expect("nodes");
    server.apply_yaml(OBJECTS).expect("objects");
    // Someone else holds the health check node port in node1's namespace.
    let taken = switchyard_testbed::netns::run_in_netns(&node.netns_path, || {
        Ok(std::net::TcpListener::bind(SocketAddr::from((
            [0, 0, 0, 0],
            HC_PORT,
        ))))
    })
    .expect("netns")
    .expect("bind the port first");
    let dir = std::env::temp_dir().join(format!("swy-events-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tempdir");
    let kubeconfig = dir.join("kubeconfig");
    server.kubeconfig(&kubeconfig).expect("kubeconfig");
    let proxy = start_switchyard_from(
        &testbed,
        node,
        env!("CARGO_BIN_EXE_switchyard").as_ref(),
        "iptables",
        ObjectSource::Kubeconfig(&kubeconfig),
        &[],
    )
    .expect("switchyard");
    let fail = |e: switchyard_testbed::Error| -> ! { panic!("{e}\n{}", proxy.stderr()) };

    let starting = wait_for("the Starting event", Duration::from_secs(20), || {
        find(&server.events(), "Starting").cloned().ok_or(())
    })
    .unwrap_or_else(|e| fail(e));
    assert_eq!(starting["type"], "Normal", "{starting:#}");
    assert_eq!(starting["action"], "StartKubeProxy");
    assert_eq!(starting["regarding"]["kind"], "Node");
    assert_eq!(starting["regarding"]["name"], "node1");
    assert_eq!(starting["metadata"]["namespace"], "default");
    assert_eq!(starting["reportingController"], "switchyard");
    assert_eq!(starting["reportingInstance"], "node1");

    // The first attempt, then the retry 5 s later folded into the same event's series.
    let failed = wait_for(
        "a repeated FailedToStartServiceHealthcheck event",
        Duration::from_secs(30),
        || {
            let events = server.events();
            let event = find(&events, "FailedToStartServiceHealthcheck").cloned();
            match event {
                Some(e) if e["series"]["count"].as_i64().unwrap_or(0) >= 2 => Ok(e),
                other => Err(other),
            }
        },
    )
    .unwrap_or_else(|e| fail(e));
    assert_eq!(failed["type"], "Warning", "{failed:#}");
    assert_eq!(failed["action"], "Listen");
    assert_eq!(failed["regarding"]["kind"], "Service");
    assert_eq!(failed["regarding"]["namespace"], "hc");
    assert_eq!(failed["regarding"]["name"], "lb");
    assert_eq!(failed["metadata"]["namespace"], "hc");
    let note = failed["note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("node node1 failed to start healthcheck \"hc/lb\" on port 32101: ")
            && note.to_lowercase().contains("in use"),
        "{note}"
    );

    // Once the port is free, the retry opens it: the events were about a real failure.
    drop(taken);
    wait_for(
        "the health check port to answer",
        Duration::from_secs(20),
        || switchyard_testbed::http_get(node, HC_PORT, "/").map_err(|e| e.to_string()),
    )
    .unwrap_or_else(|e| fail(e));

    let used = rbac::triples(&server.requests());
    let granted = switchyard::source::api_access::triples();
    assert_eq!(
        used, granted,
        "requests made (as RBAC sees them) vs switchyard::source::api_access"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
