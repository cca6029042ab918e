//! The objects a dataplane sandbox's proxies load: the measured services, and decoys from
//! the control-plane benchmark's generator ([`crate::controlplane::cluster`]) so that the
//! measured ones sit among N services with real endpoints (iptables mode then has a real
//! SWY-SERVICES chain with one rule per service, and SVC/SEP chains behind each).
//!
//! The measured services are named to sort in the middle of the decoys (`svc-<N/2>-...`),
//! where a rule of kube-proxy's randomly ordered KUBE-SERVICES chain is on average.
use std::net::{Ipv4Addr, SocketAddr};

use switchyard_testbed::Manifests;

use crate::controlplane::cluster;

/// ClusterIP of the measured service (pods reach the backend on node2 through it).
pub const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 10);
/// Port of the request/answer server behind every measured service.
pub const APP_PORT: u16 = 8080;
/// Service port in front of [`APP_PORT`].
pub const SERVICE_PORT: u16 = 80;
/// iperf3's port, TCP and UDP, the same on the service and on the pod.
pub const IPERF_PORT: u16 = 5201;
/// NodePort of the service whose backend is a pod of node1 (the node the client hits).
pub const NODE_PORT_LOCAL: u16 = 30080;
/// NodePort of the service whose backend is node2's pod.
pub const NODE_PORT_REMOTE: u16 = 30081;
/// ClusterIPs of the two NodePort services (unused by the measurements).
const NODE_PORT_LOCAL_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 11);
const NODE_PORT_REMOTE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 12);

/// Service ports of the measured services (the proxy reports ports, not services).
pub const MEASURED_PORTS: usize = 5;

/// The measured addresses of a sandbox.
#[derive(Debug, Clone, Copy)]
pub struct Targets {
    /// Where pods connect for service traffic.
    pub service: SocketAddr,
    /// Where pods run iperf3 against (TCP and UDP).
    pub iperf: SocketAddr,
    /// Where the external client connects for the local backend.
    pub node_port_local: SocketAddr,
    /// Where the external client connects for the remote backend.
    pub node_port_remote: SocketAddr,
    /// The backend pod itself (non-service traffic).
    pub pod: SocketAddr,
}

impl Targets {
    /// Through the proxy: ClusterIP and NodePorts on node1's address.
    pub fn via_proxy(node1: Ipv4Addr, backend: Ipv4Addr) -> Self {
        Self {
            service: SocketAddr::from((CLUSTER_IP, SERVICE_PORT)),
            iperf: SocketAddr::from((CLUSTER_IP, IPERF_PORT)),
            node_port_local: SocketAddr::from((node1, NODE_PORT_LOCAL)),
            node_port_remote: SocketAddr::from((node1, NODE_PORT_REMOTE)),
            pod: SocketAddr::from((backend, APP_PORT)),
        }
    }

    /// No proxy: straight to the pods (the external client is routed through node1).
    pub fn direct(local_backend: Ipv4Addr, backend: Ipv4Addr) -> Self {
        Self {
            service: SocketAddr::from((backend, APP_PORT)),
            iperf: SocketAddr::from((backend, IPERF_PORT)),
            node_port_local: SocketAddr::from((local_backend, APP_PORT)),
            node_port_remote: SocketAddr::from((backend, APP_PORT)),
            pod: SocketAddr::from((backend, APP_PORT)),
        }
    }
}

/// Decoys for a sandbox of `services` services: all but the measured ClusterIP service.
pub fn decoys(services: usize) -> usize {
    services.saturating_sub(1)
}

/// Writes the decoys and the measured services; returns the service ports the proxy must
/// end up with.
pub fn write(
    manifests: &Manifests,
    services: usize,
    endpoints: usize,
    backend: Ipv4Addr,
    local_backend: Ipv4Addr,
) -> anyhow::Result<usize> {
    let decoys = decoys(services);
    // Decoy ClusterIPs count up from 198.18.128.1 and must stay below the measured ones.
    if decoys > 0 && u32::from(cluster::service_ip(decoys - 1)) >= u32::from(CLUSTER_IP) {
        anyhow::bail!(
            "--services {services}: the decoys' ClusterIPs would reach the measured services' {CLUSTER_IP}"
        );
    }
    if decoys > 0 {
        for (name, yaml) in cluster::files(decoys, endpoints)? {
            manifests.write(&name, &yaml)?;
        }
    }
    manifests.write(
        "measured.yaml",
        &measured_yaml(decoys / 2, backend, local_backend),
    )?;
    Ok(decoys + MEASURED_PORTS)
}

fn slice(name: &str, ports: &str, ip: Ipv4Addr, node: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-1, namespace: bench, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{ports}]\n\
         endpoints:\n- {{addresses: [{ip}], nodeName: {node}, conditions: {{ready: true, serving: true, terminating: false}}}}\n"
    )
}

fn node_port(name: &str, ip: Ipv4Addr, node_port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: bench}}\n\
         spec: {{type: NodePort, clusterIP: {ip}, ports: [{{name: http, port: {SERVICE_PORT}, targetPort: {APP_PORT}, nodePort: {node_port}, protocol: TCP}}]}}\n"
    )
}

/// The three measured services, named after decoy `middle` so they sort next to it.
fn measured_yaml(middle: usize, backend: Ipv4Addr, local_backend: Ipv4Addr) -> String {
    let base = format!("svc-{middle:05}");
    let cluster = format!("{base}-measured");
    let local = format!("{base}-nodeport-local");
    let remote = format!("{base}-nodeport-remote");
    let http = format!("{{name: http, port: {APP_PORT}, protocol: TCP}}");
    [
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {cluster}, namespace: bench}}\n\
             spec: {{type: ClusterIP, clusterIP: {CLUSTER_IP}, ports: [\
             {{name: http, port: {SERVICE_PORT}, targetPort: {APP_PORT}, protocol: TCP}}, \
             {{name: iperf, port: {IPERF_PORT}, targetPort: {IPERF_PORT}, protocol: TCP}}, \
             {{name: iperf-udp, port: {IPERF_PORT}, targetPort: {IPERF_PORT}, protocol: UDP}}]}}\n"
        ),
        slice(
            &cluster,
            &format!(
                "{http}, {{name: iperf, port: {IPERF_PORT}, protocol: TCP}}, \
                 {{name: iperf-udp, port: {IPERF_PORT}, protocol: UDP}}"
            ),
            backend,
            "node2",
        ),
        node_port(&local, NODE_PORT_LOCAL_IP, NODE_PORT_LOCAL),
        slice(&local, &http, local_backend, "node1"),
        node_port(&remote, NODE_PORT_REMOTE_IP, NODE_PORT_REMOTE),
        slice(&remote, &http, backend, "node2"),
    ]
    .join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(yaml: &str) -> Vec<serde_norway::Value> {
        serde_norway::Deserializer::from_str(yaml)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect()
    }

    #[test]
    fn measured_services_have_five_ports_and_one_ready_endpoint_each() {
        let backend = Ipv4Addr::new(198, 19, 2, 11);
        let local = Ipv4Addr::new(198, 19, 1, 12);
        let all = docs(&measured_yaml(4999, backend, local));
        assert_eq!(all.len(), 6);
        let ports: usize = all
            .iter()
            .filter(|d| d["kind"] == "Service")
            .map(|d| d["spec"]["ports"].as_sequence().unwrap().len())
            .sum();
        assert_eq!(ports, MEASURED_PORTS);
        assert_eq!(all[0]["metadata"]["name"], "svc-04999-measured");
        assert_eq!(all[0]["spec"]["clusterIP"], CLUSTER_IP.to_string());
        assert_eq!(all[3]["endpoints"][0]["addresses"][0], local.to_string());
        assert_eq!(all[3]["endpoints"][0]["nodeName"], "node1");
        assert_eq!(all[4]["spec"]["ports"][0]["nodePort"], NODE_PORT_REMOTE);
        for slice in [&all[1], &all[3], &all[5]] {
            assert_eq!(slice["endpoints"][0]["conditions"]["ready"], true);
        }
    }

    #[test]
    fn measured_addresses_are_outside_the_decoys_range() {
        // Decoy ClusterIPs run from 198.18.128.1 upwards, at most 30,000 of them in the
        // default run.
        let last_decoy = cluster::service_ip(30_000);
        for ip in [CLUSTER_IP, NODE_PORT_LOCAL_IP, NODE_PORT_REMOTE_IP] {
            assert!(u32::from(ip) > u32::from(last_decoy), "{ip}");
        }
        assert_eq!(decoys(1), 0);
        assert_eq!(decoys(10_000), 9_999);
    }
}
