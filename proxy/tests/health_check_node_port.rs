//! healthCheckNodePort, as a cloud load balancer probes it: from the external client's
//! namespace, the node with a local endpoint of an `externalTrafficPolicy: Local` service
//! answers 200 and the node without one 503, the answers follow the endpoints, and the port
//! closes with the service; in both modes.
use std::net::SocketAddr;
use std::time::Duration;

use switchyard_testbed::{
    http_get_from, start_switchyard, wait_for, ChildGuard, Manifests, Testbed, TopologySpec,
};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const HC_PORT: u16 = 32100;
const WAIT: Duration = Duration::from_secs(20);

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: lb, namespace: hc}
spec:
  type: LoadBalancer
  clusterIP: 198.18.128.70
  externalTrafficPolicy: Local
  healthCheckNodePort: 32100
  selector: {app: lb}
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30090, protocol: TCP}
";

/// The service's EndpointSlice with one ready endpoint, pod 1 of node `node`.
fn slice(node: usize) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: lb-1, namespace: hc, labels: {{kubernetes.io/service-name: lb}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
- {{addresses: [198.19.{node}.11], nodeName: node{node}, conditions: {{ready: true}}}}
"
    )
}

/// What a probe of one node's health check port got.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    /// Status code and the `localEndpoints` of the body.
    Answer(u16, u64),
    Refused,
    Other(String),
}

struct Cluster {
    testbed: Testbed,
    manifests: Manifests,
    proxies: Vec<ChildGuard>,
}

impl Cluster {
    fn start(mode: &str) -> Self {
        let testbed = Testbed::new(TopologySpec {
            nodes: 2,
            pods_per_node: 1,
        })
        .expect("testbed");
        let manifests = Manifests::new().expect("manifests");
        manifests
            .write("nodes.yaml", &testbed.nodes_yaml())
            .expect("nodes");
        manifests
            .write("lb.yaml", &format!("{SERVICE}---\n{}", slice(1)))
            .expect("service");
        let proxies = testbed
            .nodes()
            .iter()
            .map(|node| {
                start_switchyard(&testbed, node, BIN.as_ref(), mode, &manifests, &[])
                    .expect("switchyard")
            })
            .collect();
        Self {
            testbed,
            manifests,
            proxies,
        }
    }

    /// GET of node `node`'s health check port from the external client, checking upstream's
    /// headers and body on every answer.
    fn probe(&self, node: usize) -> Probe {
        let address = SocketAddr::new(self.testbed.node(node).underlay_ip.into(), HC_PORT);
        let netns = &self.testbed.client().netns_path;
        match http_get_from(netns, address, "/").expect("client namespace") {
            Ok((code, raw)) => {
                let head = raw.to_lowercase();
                assert!(head.contains("x-content-type-options: nosniff"), "{raw}");
                assert!(head.contains("content-type: application/json"), "{raw}");
                let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
                let json: serde_json::Value = match serde_json::from_str(body) {
                    Ok(json) => json,
                    Err(e) => return Probe::Other(format!("{e}: {raw}")),
                };
                assert_eq!(json["service"]["namespace"], "hc", "{raw}");
                assert_eq!(json["service"]["name"], "lb", "{raw}");
                assert_eq!(json["serviceProxyHealthy"], true, "{raw}");
                Probe::Answer(code, json["localEndpoints"].as_u64().unwrap_or(u64::MAX))
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Probe::Refused,
            Err(e) => Probe::Other(e.to_string()),
        }
    }

    /// Waits until node 1 and node 2 answer as `expected`.
    fn expect(&self, what: &str, expected: [Probe; 2]) {
        wait_for(what, WAIT, || {
            let got = [self.probe(1), self.probe(2)];
            if got == expected {
                Ok(())
            } else {
                Err(got)
            }
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
    }

    fn logs(&self) -> String {
        self.proxies
            .iter()
            .enumerate()
            .map(|(i, p)| format!("--- node{} ---\n{}", i + 1, p.stderr()))
            .collect()
    }
}

fn health_check_node_port(mode: &str) {
    let cluster = Cluster::start(mode);
    cluster.expect(
        "200 from the node with the local endpoint, 503 from the other",
        [Probe::Answer(200, 1), Probe::Answer(503, 0)],
    );
    assert!(
        cluster.proxies[0]
            .stderr()
            .contains("serving health check node port"),
        "{}",
        cluster.logs()
    );

    // The endpoint moves to node 2: the answers follow, without a restart.
    cluster
        .manifests
        .write("lb.yaml", &format!("{SERVICE}---\n{}", slice(2)))
        .expect("edit");
    cluster.expect(
        "the endpoint moved to node 2",
        [Probe::Answer(503, 0), Probe::Answer(200, 1)],
    );

    // The service goes: so does the port, on both nodes.
    cluster.manifests.remove("lb.yaml").expect("remove");
    cluster.expect("the service is gone", [Probe::Refused, Probe::Refused]);
}

#[test]
fn health_check_node_port_iptables() {
    health_check_node_port("iptables");
}

#[test]
fn health_check_node_port_ebpf() {
    health_check_node_port("ebpf");
}
