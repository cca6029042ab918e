//! The scenario table: one entry per dataplane behaviour, as data.
//!
//! Address plan (fixed by the testbed): node i is 198.18.0.(10+i) (pod gateway 198.19.i.1),
//! pod j on node i is 198.19.i.(10+j) and is called `node<i>-pod<j>`, services live in
//! 198.18.128.0/20, the external client is 203.0.113.10 and reaches only node addresses plus
//! what a scenario routes to a node with `client_route` (198.18.200.0/24 below: external
//! and LoadBalancer IPs). Every pod runs echo servers on TCP+UDP+SCTP 8080 and 9090; the one on
//! port P of pod X answers `X:P`, so a check names exactly which pod *and* target port must
//! answer.
//!
//! To add a scenario: append a `Scenario::new("name")` below with its manifests and steps.
//! The first step must be a positive check (it doubles as the "programmed" condition). Mark
//! it `.iptables_only("issue N: why")` if the eBPF dataplane cannot do it yet. Established
//! flows are held flows: `hold(name, check)` opens one socket that keeps making round trips
//! for the rest of the scenario, `kept(name)` / `moves_to(name, ...)` judge it later.
use super::model::{
    check, edit, edit_steady, hold, kept, moves_to, remove, sctp, tcp, udp, write, At, Check,
    Outcome, Scenario, Source, Step,
};
use std::net::Ipv4Addr;
use std::time::Duration;

const P11: At = At::Pod(1, 1);
const P12: At = At::Pod(1, 2);
const P21: At = At::Pod(2, 1);
const P22: At = At::Pod(2, 2);
const N1: At = At::Node(1);
const N2: At = At::Node(2);
const CLIENT: At = At::Client;

/// Every scenario.
pub fn all() -> Vec<Scenario> {
    vec![
        clusterip_multiport(),
        named_target_port(),
        tcp_udp_same_port(),
        udp_unconnected(),
        hairpin(),
        spread(),
        masquerade_all(),
        session_affinity(),
        nodeport_from_node(),
        nodeport_from_outside(),
        nodeport_of_another_node(),
        nodeport_addresses(),
        external_ip_from_pod(),
        external_ip_from_outside(),
        external_without_endpoints_from_outside(),
        loadbalancer_from_pod(),
        loadbalancer_source_ranges(),
        no_endpoints(),
        etp_local_from_outside(),
        etp_local_short_circuit(),
        itp_local(),
        itp_local_without_local_endpoint(),
        terminating_fallback(),
        selectorless_endpoints(),
        headless_and_externalname_ignored(),
        edit_port(),
        edit_endpoints(),
        edit_type(),
        udp_stale_flows(),
        topology_same_zone(),
        topology_hints_ignored(),
        topology_same_node(),
        sctp_services(),
        ipv6_clusterip(),
        dual_stack_service(),
        dual_stack_nodeport_from_outside(),
        ipv6_etp_local(),
        ipv6_udp_stale_flows(),
        ipv6_itp_local(),
        ipv6_loadbalancer(),
        ipv6_external_ip(),
        ipv6_sctp(),
        terminating_fallback_of(Family::V6),
    ]
}

/// The three non-client pods most scenarios use as endpoints, so the requester (node1-pod1)
/// never hits itself unless a scenario means it to.
const THREE_ENDPOINTS: &str = "\
endpoints:
- {addresses: [198.19.1.12], nodeName: node1}
- {addresses: [198.19.2.11], nodeName: node2}
- {addresses: [198.19.2.12], nodeName: node2}
";

fn slice(service: &str, ports: &str, endpoints: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {service}-1, namespace: scen, labels: {{kubernetes.io/service-name: {service}}}}}
addressType: IPv4
ports: {ports}
{endpoints}"
    )
}

// ---------------------------------------------------------------------------------------
// ClusterIP basics

fn clusterip_multiport() -> Scenario {
    let yaml = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: multi, namespace: scen}}
spec:
  clusterIP: 198.18.128.10
  selector: {{app: multi}}
  ports:
  - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}
  - {{name: alt, port: 8000, targetPort: 9090, protocol: TCP}}
  - {{name: dns, port: 53, targetPort: 9090, protocol: UDP}}
---
{}",
        slice(
            "multi",
            "[{name: http, port: 8080, protocol: TCP}, {name: alt, port: 9090, protocol: TCP}, \
             {name: dns, port: 9090, protocol: UDP}]",
            THREE_ENDPOINTS
        )
    );
    Scenario::new("clusterip-multiport")
        .manifest("multi.yaml", &yaml)
        .steps(vec![
            // port != targetPort, one service, several ports each with its own target.
            check(
                tcp(P11, "198.18.128.10:80")
                    .answers(&["node1-pod2:8080", "node2-pod1:8080", "node2-pod2:8080"])
                    .source(Source::Own),
            ),
            check(
                tcp(P11, "198.18.128.10:8000")
                    .answers(&["node1-pod2:9090", "node2-pod1:9090", "node2-pod2:9090"])
                    .source(Source::Own),
            ),
            check(
                udp(P11, "198.18.128.10:53")
                    .answers(&["node1-pod2:9090", "node2-pod1:9090", "node2-pod2:9090"])
                    .source(Source::Own),
            ),
            // A port the service does not declare is no service.
            check(tcp(P11, "198.18.128.10:8080").no_answer()),
            check(udp(P11, "198.18.128.10:80").no_answer()),
        ])
}

fn named_target_port() -> Scenario {
    // targetPort by name: the EndpointSlice controller writes each pod's number under the
    // service port's name, and the numbers differ between pods (slices) here.
    let yaml = "apiVersion: v1
kind: Service
metadata: {name: named, namespace: scen}
spec:
  clusterIP: 198.18.128.11
  selector: {app: named}
  ports:
  - {name: web, port: 80, targetPort: web-port, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: named-a, namespace: scen, labels: {kubernetes.io/service-name: named}}
addressType: IPv4
ports: [{name: web, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [198.19.1.12], nodeName: node1}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: named-b, namespace: scen, labels: {kubernetes.io/service-name: named}}
addressType: IPv4
ports: [{name: web, port: 9090, protocol: TCP}, {name: other, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [198.19.2.11], nodeName: node2}
- {addresses: [198.19.2.12], nodeName: node2}
";
    Scenario::new("named-target-port")
        .manifest("named.yaml", yaml)
        .steps(vec![check(
            tcp(P11, "198.18.128.11:80")
                .answers(&["node1-pod2:8080", "node2-pod1:9090", "node2-pod2:9090"])
                .source(Source::Own),
        )])
}

fn tcp_udp_same_port() -> Scenario {
    let yaml = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: dual, namespace: scen}}
spec:
  clusterIP: 198.18.128.12
  selector: {{app: dual}}
  ports:
  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP}}
  - {{name: udp, port: 80, targetPort: 9090, protocol: UDP}}
---
{}",
        slice(
            "dual",
            "[{name: tcp, port: 8080, protocol: TCP}, {name: udp, port: 9090, protocol: UDP}]",
            THREE_ENDPOINTS
        )
    );
    Scenario::new("tcp-udp-same-port")
        .manifest("dual.yaml", &yaml)
        .steps(vec![
            check(
                tcp(P11, "198.18.128.12:80")
                    .answers(&["node1-pod2:8080", "node2-pod1:8080", "node2-pod2:8080"])
                    .source(Source::Own),
            ),
            check(
                udp(P11, "198.18.128.12:80")
                    .answers(&["node1-pod2:9090", "node2-pod1:9090", "node2-pod2:9090"])
                    .source(Source::Own),
            ),
            // From a node's host network too (masqueraded in iptables mode: the node is
            // outside the cluster CIDR; in ebpf mode the node's own address; both are node
            // addresses).
            check(
                udp(N2, "198.18.128.12:80")
                    .answers(&["node1-pod2:9090", "node2-pod1:9090", "node2-pod2:9090"])
                    .source(Source::Node),
            ),
            check(
                tcp(N2, "198.18.128.12:80")
                    .answers(&["node1-pod2:8080", "node2-pod1:8080", "node2-pod2:8080"])
                    .source(Source::Node),
            ),
        ])
}

fn udp_unconnected() -> Scenario {
    let yaml = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: dgram, namespace: scen}}
spec:
  clusterIP: 198.18.128.13
  selector: {{app: dgram}}
  ports:
  - {{name: udp, port: 53, targetPort: 9090, protocol: UDP}}
---
{}",
        slice(
            "dgram",
            "[{name: udp, port: 9090, protocol: UDP}]",
            THREE_ENDPOINTS
        )
    );
    Scenario::new("udp-unconnected")
        .manifest("dgram.yaml", &yaml)
        .steps(vec![
            // sendto/recvfrom: the reply must come back from the ClusterIP (reverse NAT).
            check(
                udp(P11, "198.18.128.13:53")
                    .unconnected()
                    .answers(&["node1-pod2:9090", "node2-pod1:9090", "node2-pod2:9090"])
                    .source(Source::Own),
            ),
            check(
                udp(N1, "198.18.128.13:53")
                    .unconnected()
                    .answers(&["node1-pod2:9090", "node2-pod1:9090", "node2-pod2:9090"])
                    .source(Source::Node),
            ),
        ])
}

fn hairpin() -> Scenario {
    let yaml = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: self, namespace: scen}}
spec:
  clusterIP: 198.18.128.14
  selector: {{app: self}}
  ports:
  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP}}
  - {{name: udp, port: 80, targetPort: 8080, protocol: UDP}}
---
{}",
        slice(
            "self",
            "[{name: tcp, port: 8080, protocol: TCP}, {name: udp, port: 8080, protocol: UDP}]",
            "endpoints:\n- {addresses: [198.19.1.11], nodeName: node1}\n"
        )
    );
    Scenario::new("hairpin")
        .manifest("self.yaml", &yaml)
        .steps(vec![
            // The pod reaches its own service and gets itself. iptables masquerades the
            // hairpin (the backend sees the node); the socket path never hairpins a packet,
            // so in ebpf mode the pod sees its own address (README: Differences).
            check(
                tcp(P11, "198.18.128.14:80")
                    .answers(&["node1-pod1:8080"])
                    .source_by_mode(Source::Node, Source::Own),
            ),
            check(
                udp(P11, "198.18.128.14:80")
                    .answers(&["node1-pod1:8080"])
                    .source_by_mode(Source::Node, Source::Own),
            ),
            // Another pod reaching the same endpoint is not a hairpin: no masquerade.
            check(
                tcp(P12, "198.18.128.14:80")
                    .answers(&["node1-pod1:8080"])
                    .source(Source::Own),
            ),
            check(
                tcp(P21, "198.18.128.14:80")
                    .answers(&["node1-pod1:8080"])
                    .source(Source::Own),
            ),
        ])
}

fn spread() -> Scenario {
    let yaml = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: spread, namespace: scen}}
spec:
  clusterIP: 198.18.128.15
  selector: {{app: spread}}
  ports:
  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP}}
  - {{name: udp, port: 80, targetPort: 8080, protocol: UDP}}
---
{}",
        slice(
            "spread",
            "[{name: tcp, port: 8080, protocol: TCP}, {name: udp, port: 8080, protocol: UDP}]",
            "endpoints:
- {addresses: [198.19.1.11], nodeName: node1}
- {addresses: [198.19.1.12], nodeName: node1}
- {addresses: [198.19.2.11], nodeName: node2}
- {addresses: [198.19.2.12], nodeName: node2}
"
        )
    );
    let all = [
        "node1-pod1:8080",
        "node1-pod2:8080",
        "node2-pod1:8080",
        "node2-pod2:8080",
    ];
    Scenario::new("spread")
        .manifest("spread.yaml", &yaml)
        .steps(vec![
            // Every endpoint answers within a bounded number of tries, from a node and from
            // a pod (which also hits itself sometimes, so its sources are not checked).
            check(
                tcp(N1, "198.18.128.15:80")
                    .answers(&all)
                    .source(Source::Node),
            ),
            check(
                udp(N2, "198.18.128.15:80")
                    .answers(&all)
                    .source(Source::Node),
            ),
            check(tcp(P22, "198.18.128.15:80").answers(&all)),
            check(udp(P12, "198.18.128.15:80").answers(&all)),
        ])
}

fn masquerade_all() -> Scenario {
    let yaml = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: masq, namespace: scen}}
spec:
  clusterIP: 198.18.128.17
  selector: {{app: masq}}
  ports:
  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP}}
---
{}",
        slice(
            "masq",
            "[{name: tcp, port: 8080, protocol: TCP}]",
            THREE_ENDPOINTS
        )
    );
    Scenario::new("masquerade-all")
        .flags(&["--masquerade-all"])
        .manifest("masq.yaml", &yaml)
        .steps(vec![
            // iptables: even pod-to-ClusterIP traffic is masqueraded. ebpf translates at the
            // socket, so no packet is NATed and the backend sees the pod (README, Differences).
            check(
                tcp(P11, "198.18.128.17:80")
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::Own),
            ),
            check(
                tcp(P21, "198.18.128.17:80")
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::Own),
            ),
        ])
}

fn session_affinity() -> Scenario {
    let yaml = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: sticky, namespace: scen}}
spec:
  clusterIP: 198.18.128.16
  selector: {{app: sticky}}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 2}}}}
  ports:
  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP}}
  - {{name: udp, port: 80, targetPort: 8080, protocol: UDP}}
---
{}",
        slice(
            "sticky",
            "[{name: tcp, port: 8080, protocol: TCP}, {name: udp, port: 8080, protocol: UDP}]",
            THREE_ENDPOINTS
        )
    );
    let three = ["node1-pod2:8080", "node2-pod1:8080", "node2-pod2:8080"];
    Scenario::new("session-affinity")
        .manifest("sticky.yaml", &yaml)
        .steps(vec![
            // The same client sticks to one backend across 20 new connections.
            check(tcp(P11, "198.18.128.16:80").sticks_to_one_of(&three)),
            check(tcp(P21, "198.18.128.16:80").sticks_to_one_of(&three)),
            check(udp(P12, "198.18.128.16:80").sticks_to_one_of(&three)),
            // Idle past timeoutSeconds, the client may move: it reaches another backend
            // within a bounded number of expiry rounds (each pick is random again).
            Step::AffinityExpires {
                check: tcp(P11, "198.18.128.16:80"),
                timeout: Duration::from_secs(2),
                rounds: 8,
            },
        ])
}

// ---------------------------------------------------------------------------------------
// NodePort, externalIPs, LoadBalancer

fn nodeport_service(name: &str, ip: &str, node_port: u16, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: scen}}
spec:
  type: NodePort
  clusterIP: {ip}
  selector: {{app: {name}}}
{extra_spec}  ports:
  - {{name: tcp, port: 80, targetPort: 8080, nodePort: {node_port}, protocol: TCP}}
  - {{name: udp, port: 80, targetPort: 8080, nodePort: {node_port}, protocol: UDP}}
---
{}",
        slice(
            name,
            "[{name: tcp, port: 8080, protocol: TCP}, {name: udp, port: 8080, protocol: UDP}]",
            THREE_ENDPOINTS
        )
    )
}

const THREE_8080: [&str; 3] = ["node1-pod2:8080", "node2-pod1:8080", "node2-pod2:8080"];

fn nodeport_from_node() -> Scenario {
    Scenario::new("nodeport-from-node")
        .manifest(
            "np.yaml",
            &nodeport_service("np", "198.18.128.20", 30080, ""),
        )
        .steps(vec![
            check(
                tcp(N1, "198.18.0.11:30080")
                    .answers(&THREE_8080)
                    .source(Source::Node),
            ),
            check(
                udp(N1, "198.18.0.11:30080")
                    .answers(&THREE_8080)
                    .source(Source::Node),
            ),
            check(
                tcp(N2, "198.18.0.12:30080")
                    .answers(&THREE_8080)
                    .source(Source::Node),
            ),
            // Localhost NodePorts, as upstream's iptables mode documents (route_localnet with
            // masquerade of the 127/8 source); the socket path translates 127.0.0.1 too.
            check(
                tcp(N1, "127.0.0.1:30080")
                    .answers(&THREE_8080)
                    .source(Source::Node),
            ),
            // From a pod to its own node's NodePort: iptables masquerades
            // external-policy-Cluster traffic; the socket path keeps the pod's address.
            check(
                tcp(P11, "198.18.0.11:30080")
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::Own),
            ),
            check(
                udp(P22, "198.18.0.12:30080")
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::Own),
            ),
            // The ClusterIP of a NodePort service works as usual.
            check(
                tcp(P11, "198.18.128.20:80")
                    .answers(&THREE_8080)
                    .source(Source::Own),
            ),
        ])
}

fn nodeport_from_outside() -> Scenario {
    let empty = "apiVersion: v1
kind: Service
metadata: {name: np-empty, namespace: scen}
spec:
  type: NodePort
  clusterIP: 198.18.128.22
  selector: {app: gone}
  ports:
  - {name: tcp, port: 80, targetPort: 8080, nodePort: 30090, protocol: TCP}
";
    Scenario::new("nodeport-etp-cluster-from-outside")
        .manifest(
            "np.yaml",
            &nodeport_service("np", "198.18.128.21", 30080, ""),
        )
        .manifest("np-empty.yaml", empty)
        .steps(vec![
            // externalTrafficPolicy Cluster: any endpoint, masqueraded (the backend sees a
            // node address, so replies return through the node that did the DNAT). ebpf mode
            // masquerades only for backends on other nodes, as Cilium does: a backend on the
            // translating node sees the client (its replies pass that node anyway).
            check(
                tcp(CLIENT, "198.18.0.11:30080")
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::NodeUnlessLocal),
            ),
            check(
                tcp(CLIENT, "198.18.0.12:30080")
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::NodeUnlessLocal),
            ),
            check(
                udp(CLIENT, "198.18.0.11:30080")
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::NodeUnlessLocal),
            ),
            // Datagrams longer than the links' MTU, fragmented both ways: every fragment
            // follows the flow, to a local backend and (source-NATed) to the remote ones.
            check(
                udp(CLIENT, "198.18.0.11:30080")
                    .size(4000)
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::NodeUnlessLocal),
            ),
            // No endpoints: rejected, not black-holed.
            check(tcp(CLIENT, "198.18.0.11:30090").refused()),
        ])
}

fn nodeport_of_another_node() -> Scenario {
    Scenario::new("nodeport-of-another-node")
        // A local socket's connect() only knows this node's NodePorts; the other node has to
        // translate the packets when they arrive.
        .manifest(
            "np.yaml",
            &nodeport_service("np", "198.18.128.24", 30080, ""),
        )
        .steps(vec![
            check(
                tcp(N1, "198.18.0.12:30080")
                    .answers(&THREE_8080)
                    .source(Source::Node),
            ),
            check(
                tcp(P11, "198.18.0.12:30080")
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::NodeUnlessLocal),
            ),
            check(
                udp(P21, "198.18.0.11:30080")
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::NodeUnlessLocal),
            ),
        ])
}

fn nodeport_addresses() -> Scenario {
    Scenario::new("nodeport-addresses")
        .flags(&["--nodeport-addresses=198.18.0.0/24"])
        .manifest(
            "np.yaml",
            &nodeport_service("np", "198.18.128.23", 30081, ""),
        )
        .steps(vec![
            check(tcp(P11, "198.18.0.11:30081").answers(&THREE_8080)),
            check(tcp(N1, "198.18.0.11:30081").answers(&THREE_8080)),
            check(tcp(P21, "198.18.0.12:30081").answers(&THREE_8080)),
            // node1's other addresses (the pod gateway, loopback) are outside the CIDR:
            // nothing is programmed there, and nothing listens.
            check(tcp(P11, "198.19.1.1:30081").refused()),
            check(tcp(N1, "198.19.1.1:30081").refused()),
            check(tcp(N1, "127.0.0.1:30081").refused()),
        ])
}

fn external_ip_service(name: &str, cluster_ip: &str, external_ip: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: scen}}
spec:
  clusterIP: {cluster_ip}
  externalIPs: [{external_ip}]
  selector: {{app: {name}}}
  ports:
  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP}}
  - {{name: udp, port: 80, targetPort: 8080, protocol: UDP}}
---
{}",
        slice(
            name,
            "[{name: tcp, port: 8080, protocol: TCP}, {name: udp, port: 8080, protocol: UDP}]",
            THREE_ENDPOINTS
        )
    )
}

fn external_ip_from_pod() -> Scenario {
    Scenario::new("external-ip-from-pod")
        .manifest(
            "ext.yaml",
            &external_ip_service("ext", "198.18.128.30", "198.18.200.1"),
        )
        .steps(vec![
            check(
                tcp(P11, "198.18.200.1:80")
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::Own),
            ),
            check(
                udp(P21, "198.18.200.1:80")
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::Own),
            ),
            // Only the service port is taken over on the external IP.
            check(tcp(P11, "198.18.200.1:81").no_answer()),
        ])
}

fn external_ip_from_outside() -> Scenario {
    Scenario::new("external-ip-from-outside")
        .client_route("198.18.200.0/24", 1)
        .manifest(
            "ext.yaml",
            &external_ip_service("ext", "198.18.128.31", "198.18.200.1"),
        )
        .steps(vec![
            check(
                tcp(CLIENT, "198.18.200.1:80")
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::NodeUnlessLocal),
            ),
            check(
                udp(CLIENT, "198.18.200.1:80")
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::NodeUnlessLocal),
            ),
        ])
}

fn external_without_endpoints_from_outside() -> Scenario {
    let empty = "apiVersion: v1
kind: Service
metadata: {name: ext-empty, namespace: scen}
spec:
  type: LoadBalancer
  clusterIP: 198.18.128.33
  externalIPs: [198.18.200.5]
  selector: {app: gone}
  ports:
  - {name: tcp, port: 80, targetPort: 8080, nodePort: 30095, protocol: TCP}
  - {name: udp, port: 80, targetPort: 8080, nodePort: 30095, protocol: UDP}
status:
  loadBalancer:
    ingress: [{ip: 198.18.200.6}]
";
    Scenario::new("external-without-endpoints-from-outside")
        .client_route("198.18.200.0/24", 1)
        .manifest(
            "ext.yaml",
            &external_ip_service("ext", "198.18.128.32", "198.18.200.4"),
        )
        .manifest("ext-empty.yaml", empty)
        .steps(vec![
            check(
                tcp(CLIENT, "198.18.200.4:80")
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::NodeUnlessLocal),
            ),
            // Addresses that are not the node's: refused by the node at once (kube-proxy's
            // REJECT; ebpf mode answers from its tc program), not routed on.
            check(tcp(CLIENT, "198.18.200.5:80").refused()),
            check(udp(CLIENT, "198.18.200.5:80").refused()),
            check(tcp(CLIENT, "198.18.200.6:80").refused()),
            check(udp(CLIENT, "198.18.200.6:80").refused()),
            check(tcp(CLIENT, "198.18.0.11:30095").refused()),
            check(udp(CLIENT, "198.18.0.11:30095").refused()),
            // Fragmented: the first fragment is refused, the others never leave the node.
            check(udp(CLIENT, "198.18.200.5:80").size(4000).refused()),
            check(udp(CLIENT, "198.18.0.11:30095").size(4000).refused()),
        ])
}

fn lb_service(name: &str, cluster_ip: &str, node_port: u16, spec: &str, ingress: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: scen}}
spec:
  type: LoadBalancer
  clusterIP: {cluster_ip}
  selector: {{app: {name}}}
{spec}  ports:
  - {{name: tcp, port: 80, targetPort: 8080, nodePort: {node_port}, protocol: TCP}}
status:
  loadBalancer:
    ingress: {ingress}
---
{}",
        slice(
            name,
            "[{name: tcp, port: 8080, protocol: TCP}]",
            THREE_ENDPOINTS
        )
    )
}

fn loadbalancer_from_pod() -> Scenario {
    Scenario::new("loadbalancer-from-pod")
        .manifest(
            "lb.yaml",
            &lb_service(
                "lb",
                "198.18.128.40",
                30085,
                "",
                "[{ip: 198.18.200.10}, {ip: 198.18.200.11, ipMode: Proxy}]",
            ),
        )
        .steps(vec![
            check(
                tcp(P11, "198.18.200.10:80")
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::Own),
            ),
            // An ingress with ipMode Proxy is the load balancer's to handle: not programmed.
            check(tcp(P11, "198.18.200.11:80").no_answer()),
            check(tcp(N1, "198.18.0.11:30085").answers(&THREE_8080)),
        ])
}

fn loadbalancer_source_ranges() -> Scenario {
    Scenario::new("loadbalancer-source-ranges")
        .client_route("198.18.200.0/24", 1)
        .manifest(
            "lb-open.yaml",
            &lb_service(
                "lb-open",
                "198.18.128.41",
                30086,
                // Upstream trims whitespace around the ranges.
                "  loadBalancerSourceRanges: [\" 203.0.113.0/24 \"]\n",
                "[{ip: 198.18.200.20}]",
            ),
        )
        .manifest(
            "lb-closed.yaml",
            &lb_service(
                "lb-closed",
                "198.18.128.42",
                30087,
                "  loadBalancerSourceRanges: [192.0.2.0/24]\n",
                "[{ip: 198.18.200.21}]",
            ),
        )
        .steps(vec![
            check(
                tcp(CLIENT, "198.18.200.20:80")
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::NodeUnlessLocal),
            ),
            // The client is outside the allowed range: dropped.
            check(tcp(CLIENT, "198.18.200.21:80").dropped().attempts(2)),
            // Source ranges guard the LoadBalancer IP only, not the NodePort.
            check(
                tcp(CLIENT, "198.18.0.11:30087")
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::NodeUnlessLocal),
            ),
        ])
}

// ---------------------------------------------------------------------------------------
// Endpoint selection and traffic policies

fn no_endpoints() -> Scenario {
    let yaml = "apiVersion: v1
kind: Service
metadata: {name: none, namespace: scen}
spec:
  clusterIP: 198.18.128.50
  selector: {app: gone}
  ports:
  - {name: tcp, port: 80, targetPort: 8080, protocol: TCP}
  - {name: udp, port: 80, targetPort: 8080, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: empty-slice, namespace: scen}
spec:
  clusterIP: 198.18.128.51
  selector: {app: empty}
  ports:
  - {name: tcp, port: 80, targetPort: 8080, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: empty-slice-1, namespace: scen, labels: {kubernetes.io/service-name: empty-slice}}
addressType: IPv4
ports: [{name: tcp, port: 8080, protocol: TCP}]
endpoints: []
---
apiVersion: v1
kind: Service
metadata: {name: not-serving, namespace: scen}
spec:
  clusterIP: 198.18.128.52
  selector: {app: not-serving}
  ports:
  - {name: tcp, port: 80, targetPort: 8080, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: not-serving-1, namespace: scen, labels: {kubernetes.io/service-name: not-serving}}
addressType: IPv4
ports: [{name: tcp, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [198.19.1.12], nodeName: node1, conditions: {ready: false, serving: false, terminating: true}}
- {addresses: [198.19.2.11], nodeName: node2, conditions: {ready: false, serving: false, terminating: false}}
---
apiVersion: v1
kind: Service
metadata: {name: control, namespace: scen}
spec:
  clusterIP: 198.18.128.53
  selector: {app: control}
  ports:
  - {name: tcp, port: 80, targetPort: 8080, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: control-1, namespace: scen, labels: {kubernetes.io/service-name: control}}
addressType: IPv4
ports: [{name: tcp, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [198.19.2.12], nodeName: node2}
";
    Scenario::new("no-endpoints")
        .manifest("none.yaml", yaml)
        .steps(vec![
            check(tcp(P11, "198.18.128.53:80").answers(&["node2-pod2:8080"])),
            // Refused at once (the probe tells a refusal from a timeout).
            check(tcp(P11, "198.18.128.50:80").refused()),
            check(udp(P11, "198.18.128.50:80").refused()),
            check(tcp(N1, "198.18.128.50:80").refused()),
            check(tcp(P21, "198.18.128.51:80").refused()),
            check(tcp(P11, "198.18.128.52:80").refused()),
        ])
}

fn etp_local_yaml() -> String {
    // local: endpoints on both nodes; remote-only: endpoints on node2 only.
    let local = nodeport_service(
        "local",
        "198.18.128.60",
        30082,
        "  externalTrafficPolicy: Local\n",
    );
    let remote_only = "apiVersion: v1
kind: Service
metadata: {name: remote-only, namespace: scen}
spec:
  type: NodePort
  clusterIP: 198.18.128.61
  selector: {app: remote-only}
  externalTrafficPolicy: Local
  ports:
  - {name: tcp, port: 80, targetPort: 8080, nodePort: 30083, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: remote-only-1, namespace: scen, labels: {kubernetes.io/service-name: remote-only}}
addressType: IPv4
ports: [{name: tcp, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [198.19.2.11], nodeName: node2}
";
    format!("{local}---\n{remote_only}")
}

fn etp_local_from_outside() -> Scenario {
    Scenario::new("etp-local-from-outside")
        .manifest("local.yaml", &etp_local_yaml())
        .steps(vec![
            // Only the endpoints on the node that was hit, and the client address is kept.
            check(
                tcp(CLIENT, "198.18.0.11:30082")
                    .answers(&["node1-pod2:8080"])
                    .source(Source::Ip(Ipv4Addr::new(203, 0, 113, 10))),
            ),
            check(
                tcp(CLIENT, "198.18.0.12:30082")
                    .answers(&["node2-pod1:8080", "node2-pod2:8080"])
                    .source(Source::Own),
            ),
            check(
                udp(CLIENT, "198.18.0.12:30082")
                    .answers(&["node2-pod1:8080", "node2-pod2:8080"])
                    .source(Source::Own),
            ),
            // No local endpoint on the node hit: dropped (health checks steer LBs away).
            check(tcp(CLIENT, "198.18.0.11:30083").dropped().attempts(2)),
            check(
                tcp(CLIENT, "198.18.0.12:30083")
                    .answers(&["node2-pod1:8080"])
                    .source(Source::Own),
            ),
        ])
}

fn etp_local_short_circuit() -> Scenario {
    Scenario::new("etp-local-short-circuit")
        .manifest("local.yaml", &etp_local_yaml())
        .steps(vec![
            // Pods and the node itself reaching an ETP-Local service's NodePort use the
            // cluster-wide set (upstream short-circuit); pods are not masqueraded.
            check(
                tcp(P11, "198.18.0.11:30082")
                    .answers(&THREE_8080)
                    .source(Source::Own),
            ),
            check(
                tcp(N1, "198.18.0.11:30082")
                    .answers(&THREE_8080)
                    .source(Source::Node),
            ),
            // Even without any local endpoint.
            check(
                tcp(P11, "198.18.0.11:30083")
                    .answers(&["node2-pod1:8080"])
                    .source(Source::Own),
            ),
            check(
                tcp(N1, "198.18.0.11:30083")
                    .answers(&["node2-pod1:8080"])
                    .source(Source::Node),
            ),
            // The ClusterIP is not affected by externalTrafficPolicy.
            check(tcp(P11, "198.18.128.60:80").answers(&THREE_8080)),
        ])
}

fn itp_local() -> Scenario {
    let yaml = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: itp, namespace: scen}}
spec:
  clusterIP: 198.18.128.70
  selector: {{app: itp}}
  internalTrafficPolicy: Local
  ports:
  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP}}
  - {{name: udp, port: 80, targetPort: 8080, protocol: UDP}}
---
{}",
        slice(
            "itp",
            "[{name: tcp, port: 8080, protocol: TCP}, {name: udp, port: 8080, protocol: UDP}]",
            THREE_ENDPOINTS
        )
    );
    Scenario::new("itp-local")
        .manifest("itp.yaml", &yaml)
        .steps(vec![
            // A pod reaches only its own node's endpoints.
            check(
                tcp(P11, "198.18.128.70:80")
                    .answers(&["node1-pod2:8080"])
                    .source(Source::Own),
            ),
            check(
                udp(P11, "198.18.128.70:80")
                    .answers(&["node1-pod2:8080"])
                    .source(Source::Own),
            ),
            check(tcp(P21, "198.18.128.70:80").answers(&["node2-pod1:8080", "node2-pod2:8080"])),
            check(
                tcp(N2, "198.18.128.70:80")
                    .answers(&["node2-pod1:8080", "node2-pod2:8080"])
                    .source(Source::Node),
            ),
        ])
}

fn itp_local_without_local_endpoint() -> Scenario {
    let yaml = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: itp-remote, namespace: scen}}
spec:
  clusterIP: 198.18.128.71
  selector: {{app: itp-remote}}
  internalTrafficPolicy: Local
  ports:
  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP}}
---
{}",
        slice(
            "itp-remote",
            "[{name: tcp, port: 8080, protocol: TCP}]",
            "endpoints:\n- {addresses: [198.19.2.11], nodeName: node2}\n"
        )
    );
    Scenario::new("itp-local-without-local-endpoint")
        // Upstream DROPs ClusterIP traffic of an ITP-Local service on a node without a local
        // endpoint; connect4 refuses it at once instead (EPERM), a deliberate difference
        // listed in the README.
        .manifest("itp-remote.yaml", &yaml)
        .steps(vec![
            check(tcp(P22, "198.18.128.71:80").answers(&["node2-pod1:8080"])),
            check(tcp(P11, "198.18.128.71:80").outcome_by_mode(Outcome::Dropped, Outcome::Refused)),
            check(tcp(N1, "198.18.128.71:80").outcome_by_mode(Outcome::Dropped, Outcome::Refused)),
        ])
}

fn terminating_fallback() -> Scenario {
    terminating_fallback_of(Family::V4)
}

/// An IP family of a scenario's services, with the addresses of its pods.
#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

impl Family {
    /// `spec.ipFamilies` and the EndpointSlice `addressType`.
    fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// Pod `pod` of node `node` (as the testbed numbers them).
    fn pod(self, node: u8, pod: u8) -> String {
        match self {
            Family::V4 => format!("198.19.{node}.{}", 10 + pod),
            Family::V6 => format!("\"2001:db8:1:{node}::{}\"", 10 + pod),
        }
    }

    /// Service address `n` of the scenario range (the last byte, printed in hex for IPv6), as
    /// YAML and as the host part of a socket address.
    fn service(self, n: u8) -> (String, String) {
        match self {
            Family::V4 => (format!("198.18.128.{n}"), format!("198.18.128.{n}")),
            Family::V6 => (
                format!("\"2001:db8:5::{n:x}\""),
                format!("[2001:db8:5::{n:x}]"),
            ),
        }
    }
}

fn terminating_fallback_of(family: Family) -> Scenario {
    // all-terminating: nothing ready, two serving-and-terminating endpoints (they serve) and
    // one terminating but not serving (never). mixed: two ready endpoints, so the serving
    // terminating one gets nothing; every listed pod runs an echo server, so a wrong pick
    // would be seen.
    let (v, (draining_ip, draining), (rolling_ip, rolling)) = match family {
        Family::V4 => ("", family.service(80), family.service(81)),
        Family::V6 => ("6", family.service(0x90), family.service(0x91)),
    };
    let service = |name: &str, ip: &str, conditions: [&str; 3]| {
        format!(
            "apiVersion: v1
kind: Service
metadata: {{name: {name}{v}, namespace: scen}}
spec:
  clusterIP: {ip}
  ipFamilies: [{family}]
  selector: {{app: {name}}}
  ports:
  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}{v}-1, namespace: scen, labels: {{kubernetes.io/service-name: {name}{v}}}}}
addressType: {family}
ports: [{{name: tcp, port: 8080, protocol: TCP}}]
endpoints:
- {{addresses: [{p12}], nodeName: node1, conditions: {c0}}}
- {{addresses: [{p21}], nodeName: node2, conditions: {c1}}}
- {{addresses: [{p22}], nodeName: node2, conditions: {c2}}}
",
            family = family.name(),
            p12 = family.pod(1, 2),
            p21 = family.pod(2, 1),
            p22 = family.pod(2, 2),
            c0 = conditions[0],
            c1 = conditions[1],
            c2 = conditions[2],
        )
    };
    const SERVING_TERMINATING: &str = "{ready: false, serving: true, terminating: true}";
    const READY: &str = "{ready: true, serving: true, terminating: false}";
    let all_terminating = service(
        "draining",
        &draining_ip,
        [
            SERVING_TERMINATING,
            SERVING_TERMINATING,
            "{ready: false, serving: false, terminating: true}",
        ],
    );
    let mixed = |pod21_ready: bool| {
        let c = if pod21_ready {
            READY
        } else {
            SERVING_TERMINATING
        };
        service("rolling", &rolling_ip, [c, c, SERVING_TERMINATING])
    };
    let name = match family {
        Family::V4 => "terminating-fallback",
        Family::V6 => "ipv6-terminating-fallback",
    };
    Scenario::new(name)
        .manifest("draining.yaml", &all_terminating)
        .manifest("rolling.yaml", &mixed(true))
        .steps(vec![
            check(
                tcp(P11, &format!("{draining}:80"))
                    .answers(&["node1-pod2:8080", "node2-pod1:8080"])
                    .source(Source::Own),
            ),
            check(
                tcp(P11, &format!("{rolling}:80")).answers(&["node1-pod2:8080", "node2-pod1:8080"]),
            ),
            // The ready ones start terminating too: now all serving-terminating ones serve.
            edit(
                vec![write("rolling.yaml", &mixed(false))],
                vec![tcp(P11, &format!("{rolling}:80")).answers(&THREE_8080)],
            ),
        ])
}

fn selectorless_endpoints() -> Scenario {
    let service = "apiVersion: v1
kind: Service
metadata: {name: manual, namespace: scen}
spec:
  clusterIP: 198.18.128.90
  ports:
  - {name: http, port: 80, targetPort: 9090, protocol: TCP}
";
    let endpoints = |extra: &str| {
        format!(
            "apiVersion: v1
kind: Endpoints
metadata: {{name: manual, namespace: scen}}
subsets:
- addresses:
  - {{ip: 198.19.1.12, nodeName: node1}}
{extra}  notReadyAddresses:
  - {{ip: 198.19.2.12, nodeName: node2}}
  ports:
  - {{name: http, port: 9090, protocol: TCP}}
"
        )
    };
    Scenario::new("selectorless-endpoints")
        .manifest("manual-svc.yaml", service)
        .manifest("manual-ep.yaml", &endpoints(""))
        .steps(vec![
            check(
                tcp(P11, "198.18.128.90:80")
                    .answers(&["node1-pod2:9090"])
                    .source(Source::Own),
            ),
            edit(
                vec![write(
                    "manual-ep.yaml",
                    &endpoints("  - {ip: 198.19.2.11, nodeName: node2}\n"),
                )],
                vec![tcp(P11, "198.18.128.90:80").answers(&["node1-pod2:9090", "node2-pod1:9090"])],
            ),
        ])
}

fn headless_and_externalname_ignored() -> Scenario {
    let yaml = "apiVersion: v1
kind: Service
metadata: {name: control, namespace: scen}
spec:
  clusterIP: 198.18.128.100
  selector: {app: control}
  ports:
  - {name: tcp, port: 80, targetPort: 8080, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: control-1, namespace: scen, labels: {kubernetes.io/service-name: control}}
addressType: IPv4
ports: [{name: tcp, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [198.19.1.12], nodeName: node1}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: scen}
spec:
  clusterIP: None
  selector: {app: headless}
  ports:
  - {name: tcp, port: 80, targetPort: 8080, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: headless-1
  namespace: scen
  labels: {kubernetes.io/service-name: headless, service.kubernetes.io/headless: ''}
addressType: IPv4
ports: [{name: tcp, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [198.19.2.11], nodeName: node2}
---
apiVersion: v1
kind: Service
metadata: {name: external-name, namespace: scen}
spec:
  type: ExternalName
  externalName: db.example.invalid
  clusterIP: 198.18.128.101
  ports:
  - {name: tcp, port: 80, targetPort: 8080, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: external-name-1, namespace: scen, labels: {kubernetes.io/service-name: external-name}}
addressType: IPv4
ports: [{name: tcp, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [198.19.2.12], nodeName: node2}
---
apiVersion: v1
kind: Service
metadata:
  name: labelled-headless
  namespace: scen
  labels: {service.kubernetes.io/headless: ''}
spec:
  clusterIP: 198.18.128.102
  selector: {app: labelled}
  ports:
  - {name: tcp, port: 80, targetPort: 8080, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata:
  name: other-proxy
  namespace: scen
  labels: {service.kubernetes.io/service-proxy-name: someone-else}
spec:
  clusterIP: 198.18.128.103
  selector: {app: other}
  ports:
  - {name: tcp, port: 80, targetPort: 8080, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: other-proxy-1
  namespace: scen
  labels: {kubernetes.io/service-name: other-proxy, service.kubernetes.io/service-proxy-name: someone-else}
addressType: IPv4
ports: [{name: tcp, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [198.19.2.12], nodeName: node2}
";
    Scenario::new("headless-and-externalname-ignored")
        .manifest("ignored.yaml", yaml)
        .steps(vec![
            check(tcp(P11, "198.18.128.100:80").answers(&["node1-pod2:8080"])),
            // The headless service's pod is reached directly, on its own port, untouched...
            check(
                tcp(P11, "198.19.2.11:8080")
                    .answers(&["node2-pod1:8080"])
                    .source(Source::Own),
            ),
            // ...and its service port is not redirected anywhere on the pod IP.
            check(tcp(P11, "198.19.2.11:80").refused()),
            // ExternalName, a service labelled headless, and one for another proxy: no rules
            // even though they carry cluster-IP-looking addresses (and endpoints).
            check(tcp(P11, "198.18.128.101:80").no_answer()),
            check(tcp(P11, "198.18.128.102:80").no_answer()),
            check(tcp(P11, "198.18.128.103:80").no_answer()),
        ])
}

// ---------------------------------------------------------------------------------------
// Edits taken up live while another service keeps working

const STEADY_YAML: &str = "apiVersion: v1
kind: Service
metadata: {name: steady, namespace: scen}
spec:
  clusterIP: 198.18.128.111
  selector: {app: steady}
  ports:
  - {name: tcp, port: 80, targetPort: 8080, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: steady-1, namespace: scen, labels: {kubernetes.io/service-name: steady}}
addressType: IPv4
ports: [{name: tcp, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [198.19.2.12], nodeName: node2}
";

/// The check that must keep passing while another service is edited.
fn steady() -> Vec<Check> {
    vec![tcp(P11, "198.18.128.111:80")
        .answers(&["node2-pod2:8080"])
        .attempts(3)]
}

/// A service whose established flows must survive edits of *other* services: TCP and UDP
/// on port 80 over three endpoints, so a flow re-balanced by an edit shows up as a changed
/// backend (or a new source port), not only as a failure.
fn held_yaml() -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: held, namespace: scen}}
spec:
  clusterIP: 198.18.128.112
  selector: {{app: held}}
  ports:
  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP}}
  - {{name: udp, port: 80, targetPort: 9090, protocol: UDP}}
---
{}",
        slice(
            "held",
            "[{name: tcp, port: 8080, protocol: TCP}, {name: udp, port: 9090, protocol: UDP}]",
            THREE_ENDPOINTS
        )
    )
}

/// Starts the held flows to `held`: TCP from a pod, connected UDP from node2's host network
/// (masqueraded in iptables mode).
fn hold_flows() -> Vec<Step> {
    vec![
        hold(
            "held-tcp",
            tcp(P11, "198.18.128.112:80")
                .answers(&THREE_8080)
                .source(Source::Own),
        ),
        hold(
            "held-udp",
            udp(N2, "198.18.128.112:80")
                .answers(&["node1-pod2:9090", "node2-pod1:9090", "node2-pod2:9090"])
                .source(Source::Node),
        ),
    ]
}

/// `edit_steady` with the steady checks, followed by: the held flows kept their backend and
/// socket throughout.
fn edit_keeping_flows(edits: Vec<super::model::FileEdit>, until: Vec<Check>) -> Vec<Step> {
    vec![
        edit_steady(edits, until, steady()),
        kept("held-tcp"),
        kept("held-udp"),
    ]
}

fn web_service(port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: scen}}
spec:
  clusterIP: 198.18.128.110
  selector: {{app: web}}
  ports:
  - {{name: tcp, port: {port}, targetPort: 8080, protocol: TCP}}
"
    )
}

fn web_slice(target_port: u16, endpoints: &str) -> String {
    slice(
        "web",
        &format!("[{{name: tcp, port: {target_port}, protocol: TCP}}]"),
        endpoints,
    )
}

fn edit_port() -> Scenario {
    let two = "endpoints:
- {addresses: [198.19.1.12], nodeName: node1}
- {addresses: [198.19.2.11], nodeName: node2}
";
    Scenario::new("edit-port")
        .manifest("steady.yaml", STEADY_YAML)
        .manifest("held.yaml", &held_yaml())
        .manifest("web-svc.yaml", &web_service(80))
        .manifest("web-slice.yaml", &web_slice(8080, two))
        .steps(
            [
                vec![check(
                    tcp(P11, "198.18.128.110:80").answers(&["node1-pod2:8080", "node2-pod1:8080"]),
                )],
                hold_flows(),
                // Service port 80 -> 81.
                edit_keeping_flows(
                    vec![write("web-svc.yaml", &web_service(81))],
                    vec![
                        tcp(P11, "198.18.128.110:81")
                            .answers(&["node1-pod2:8080", "node2-pod1:8080"]),
                        tcp(P11, "198.18.128.110:80").no_answer(),
                    ],
                ),
                // Target port 8080 -> 9090 (the pods moved their port).
                edit_keeping_flows(
                    vec![write("web-slice.yaml", &web_slice(9090, two))],
                    vec![tcp(P11, "198.18.128.110:81")
                        .answers(&["node1-pod2:9090", "node2-pod1:9090"])],
                ),
            ]
            .concat(),
        )
}

fn edit_endpoints() -> Scenario {
    Scenario::new("edit-endpoints")
        .manifest("steady.yaml", STEADY_YAML)
        .manifest("held.yaml", &held_yaml())
        .manifest("web-svc.yaml", &web_service(80))
        .manifest(
            "web-slice.yaml",
            &web_slice(
                8080,
                "endpoints:\n- {addresses: [198.19.1.12], nodeName: node1}\n",
            ),
        )
        .steps(
            [
                vec![check(
                    tcp(P11, "198.18.128.110:80").answers(&["node1-pod2:8080"]),
                )],
                hold_flows(),
                // Scale up.
                edit_keeping_flows(
                    vec![write(
                        "web-slice.yaml",
                        &web_slice(
                            8080,
                            "endpoints:
- {addresses: [198.19.1.12], nodeName: node1}
- {addresses: [198.19.2.11], nodeName: node2}
",
                        ),
                    )],
                    vec![tcp(P11, "198.18.128.110:80")
                        .answers(&["node1-pod2:8080", "node2-pod1:8080"])],
                ),
                // The first one goes away.
                edit_keeping_flows(
                    vec![write(
                        "web-slice.yaml",
                        &web_slice(
                            8080,
                            "endpoints:\n- {addresses: [198.19.2.11], nodeName: node2}\n",
                        ),
                    )],
                    vec![tcp(P11, "198.18.128.110:80").answers(&["node2-pod1:8080"])],
                ),
                // The slice goes away: no endpoints, refused.
                edit_keeping_flows(
                    vec![remove("web-slice.yaml")],
                    vec![tcp(P11, "198.18.128.110:80").refused()],
                ),
            ]
            .concat(),
        )
}

fn edit_type() -> Scenario {
    let endpoints = "endpoints:
- {addresses: [198.19.1.12], nodeName: node1}
- {addresses: [198.19.2.11], nodeName: node2}
";
    let two = ["node1-pod2:8080", "node2-pod1:8080"];
    let as_nodeport = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: scen}
spec:
  type: NodePort
  clusterIP: 198.18.128.110
  selector: {app: web}
  ports:
  - {name: tcp, port: 80, targetPort: 8080, nodePort: 30084, protocol: TCP}
";
    Scenario::new("edit-type")
        .manifest("steady.yaml", STEADY_YAML)
        .manifest("held.yaml", &held_yaml())
        .manifest("web-svc.yaml", &web_service(80))
        .manifest("web-slice.yaml", &web_slice(8080, endpoints))
        .steps(
            [
                vec![
                    check(tcp(P11, "198.18.128.110:80").answers(&two)),
                    check(tcp(N1, "198.18.0.11:30084").refused()),
                ],
                hold_flows(),
                // ClusterIP -> NodePort.
                edit_keeping_flows(
                    vec![write("web-svc.yaml", as_nodeport)],
                    vec![
                        tcp(N1, "198.18.0.11:30084").answers(&two),
                        tcp(P21, "198.18.0.12:30084").answers(&two),
                    ],
                ),
                vec![check(tcp(P11, "198.18.128.110:80").answers(&two))],
                // NodePort -> ClusterIP: the NodePort is gone again, the ClusterIP stays.
                edit_keeping_flows(
                    vec![write("web-svc.yaml", &web_service(80))],
                    vec![
                        tcp(N1, "198.18.0.11:30084").refused(),
                        tcp(P21, "198.18.0.12:30084").refused(),
                    ],
                ),
                vec![check(tcp(P11, "198.18.128.110:80").answers(&two))],
            ]
            .concat(),
        )
}

fn udp_stale_flows() -> Scenario {
    let dns = |endpoints: &str| {
        format!(
            "apiVersion: v1
kind: Service
metadata: {{name: dns, namespace: scen}}
spec:
  clusterIP: 198.18.128.120
  selector: {{app: dns}}
  ports:
  - {{name: dns, port: 53, targetPort: 9090, protocol: UDP}}
---
{}",
            slice("dns", "[{name: dns, port: 9090, protocol: UDP}]", endpoints)
        )
    };
    let pod21 = "- {addresses: [198.19.2.11], nodeName: node2}\n";
    let pod22 = "- {addresses: [198.19.2.12], nodeName: node2}\n";
    // Upstream deletes the conntrack entries of UDP flows whose endpoint went away (and of
    // a service that gets endpoints again); without that, a connected UDP client keeps
    // talking to the old endpoint, or into a black hole, until the entry times out (never,
    // while the client keeps sending). Here the removed pod still runs, so a stale flow
    // shows as answers from the old endpoint. ebpf mode destroys the connected socket
    // instead (its peer was chosen once, at connect()): the held flow sees ECONNABORTED,
    // connects again and lands on a serving endpoint.
    Scenario::new("udp-stale-flows")
        .manifest("dns.yaml", &dns(&format!("endpoints:\n{pod21}")))
        .steps(vec![
            check(udp(P11, "198.18.128.120:53").answers(&["node2-pod1:9090"])),
            hold(
                "dns",
                udp(P11, "198.18.128.120:53")
                    .answers(&["node2-pod1:9090"])
                    .source(Source::Own),
            ),
            // A new endpoint leaves the established flow alone.
            edit(
                vec![write("dns.yaml", &dns(&format!("endpoints:\n{pod21}{pod22}")))],
                vec![udp(P11, "198.18.128.120:53").answers(&["node2-pod1:9090", "node2-pod2:9090"])],
            ),
            kept("dns"),
            // Its endpoint goes away: the flow moves to the remaining one.
            edit(
                vec![write("dns.yaml", &dns(&format!("endpoints:\n{pod22}")))],
                vec![udp(P11, "198.18.128.120:53").answers(&["node2-pod2:9090"])],
            ),
            moves_to("dns", &["node2-pod2:9090"], Duration::from_secs(5)),
            // No endpoints at all: refused. When one comes back, the flow is answered again.
            edit(
                vec![write("dns.yaml", &dns("endpoints: []\n"))],
                vec![udp(P11, "198.18.128.120:53").refused()],
            ),
            edit(
                vec![write("dns.yaml", &dns(&format!("endpoints:\n{pod21}")))],
                vec![udp(P11, "198.18.128.120:53").answers(&["node2-pod1:9090"])],
            ),
            moves_to("dns", &["node2-pod1:9090"], Duration::from_secs(5)),
        ])
}

// ---------------------------------------------------------------------------------------
// Topology: EndpointSlice hints against the node's zone label (node1 is in zone-a, node2 in
// zone-b: the runner's Node objects). As kube-proxy, switchyard follows the hints; the
// service's trafficDistribution is what makes the EndpointSlice controller write them.
// Three pods per node: pod1 of each node is the client, pods 2 and 3 are the endpoints.

/// A service `name` on `ip` (TCP 80 -> 8080, UDP 53 -> 9090) with trafficDistribution
/// `distribution`, and one slice with `endpoints`.
fn topology_service(name: &str, ip: &str, distribution: &str, endpoints: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: scen}}
spec:
  clusterIP: {ip}
  selector: {{app: {name}}}
  trafficDistribution: {distribution}
  ports:
  - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}
  - {{name: dns, port: 53, targetPort: 9090, protocol: UDP}}
---
{}",
        slice(
            name,
            "[{name: http, port: 8080, protocol: TCP}, {name: dns, port: 9090, protocol: UDP}]",
            endpoints
        )
    )
}

/// Endpoint node`n`-pod`p` in its node's zone, with these hints (YAML flow map, or empty).
fn zoned_endpoint(n: usize, p: usize, hints: &str) -> String {
    let hints = if hints.is_empty() {
        String::new()
    } else {
        format!(", hints: {hints}")
    };
    format!(
        "- {{addresses: [198.19.{n}.{}], nodeName: node{n}, zone: {}{hints}}}\n",
        10 + p,
        switchyard_testbed::node_zone(n)
    )
}

/// What the EndpointSlice controller writes for PreferClose / PreferSameZone: every
/// endpoint hinted for its own zone; `unhinted` names one endpoint (node, pod) without.
fn same_zone_endpoints(unhinted: Option<(usize, usize)>) -> String {
    let mut out = String::from("endpoints:\n");
    for (n, p) in [(1, 2), (1, 3), (2, 2), (2, 3)] {
        let hints = if unhinted == Some((n, p)) {
            String::new()
        } else {
            format!(
                "{{forZones: [{{name: {}}}]}}",
                switchyard_testbed::node_zone(n)
            )
        };
        out.push_str(&zoned_endpoint(n, p, &hints));
    }
    out
}

const ZONE_A: [&str; 2] = ["node1-pod2:8080", "node1-pod3:8080"];
const ZONE_B: [&str; 2] = ["node2-pod2:8080", "node2-pod3:8080"];
const BOTH_ZONES: [&str; 4] = [
    "node1-pod2:8080",
    "node1-pod3:8080",
    "node2-pod2:8080",
    "node2-pod3:8080",
];

fn topology_same_zone() -> Scenario {
    // PreferClose is PreferSameZone's deprecated alias: the controller writes the same hints.
    let yaml = |unhinted| {
        topology_service(
            "zonal",
            "198.18.128.130",
            "PreferClose",
            &same_zone_endpoints(unhinted),
        )
    };
    // node1 moves to zone-b: a later file than the runner's nodes.yaml, so it wins in the
    // manifest directory, and an update of the Node through the API.
    let moved = switchyard_testbed::node_yaml(
        "node1",
        Ipv4Addr::new(198, 18, 0, 11),
        &switchyard_testbed::node_zone(2),
    );
    Scenario::new("topology-same-zone")
        .pods(3)
        .manifest("zonal.yaml", &yaml(None))
        .steps(vec![
            // Each node's clients reach only their own zone's endpoints.
            check(
                tcp(P11, "198.18.128.130:80")
                    .answers(&ZONE_A)
                    .source(Source::Own),
            ),
            check(
                tcp(P21, "198.18.128.130:80")
                    .answers(&ZONE_B)
                    .source(Source::Own),
            ),
            check(udp(P11, "198.18.128.130:53").answers(&["node1-pod2:9090", "node1-pod3:9090"])),
            check(tcp(N1, "198.18.128.130:80").answers(&ZONE_A)),
            // The zone label of node1's Node changes: node1 re-syncs to zone-b's endpoints.
            edit(
                vec![write("zz-node1-zone.yaml", &moved)],
                vec![tcp(P11, "198.18.128.130:80").answers(&ZONE_B)],
            ),
            check(tcp(P21, "198.18.128.130:80").answers(&ZONE_B)),
        ])
}

fn topology_hints_ignored() -> Scenario {
    // One endpoint without a hint (a controller that could not hint it): every node ignores
    // all the hints and uses every endpoint. Once it has its hint, zones apply again.
    let yaml = |unhinted| {
        topology_service(
            "partial",
            "198.18.128.131",
            "PreferSameZone",
            &same_zone_endpoints(unhinted),
        )
    };
    Scenario::new("topology-hints-ignored")
        .pods(3)
        .manifest("partial.yaml", &yaml(Some((2, 3))))
        .steps(vec![
            check(tcp(P11, "198.18.128.131:80").answers(&BOTH_ZONES)),
            check(tcp(P21, "198.18.128.131:80").answers(&BOTH_ZONES)),
            edit(
                vec![write("partial.yaml", &yaml(None))],
                vec![
                    tcp(P11, "198.18.128.131:80").answers(&ZONE_A),
                    tcp(P21, "198.18.128.131:80").answers(&ZONE_B),
                ],
            ),
        ])
}

fn topology_same_node() -> Scenario {
    // PreferSameNode: forNodes names the endpoint's node. node2-pod2 is also hinted for
    // zone-a, so zone hints alone would send node1's clients there too: they do not, while
    // node1 has endpoints of its own. Once it has none, node1 falls back to the zone hints.
    let endpoint = |n: usize, p: usize, zone: &str| {
        zoned_endpoint(
            n,
            p,
            &format!("{{forNodes: [{{name: node{n}}}], forZones: [{{name: {zone}}}]}}"),
        )
    };
    let remote = format!("{}{}", endpoint(2, 2, "zone-a"), endpoint(2, 3, "zone-b"));
    let with_node1 = format!(
        "endpoints:\n{}{}{remote}",
        endpoint(1, 2, "zone-a"),
        endpoint(1, 3, "zone-a")
    );
    let yaml =
        |endpoints: &str| topology_service("nodal", "198.18.128.132", "PreferSameNode", endpoints);
    Scenario::new("topology-same-node")
        .pods(3)
        .manifest("nodal.yaml", &yaml(&with_node1))
        .steps(vec![
            check(tcp(P11, "198.18.128.132:80").answers(&ZONE_A)),
            check(tcp(P21, "198.18.128.132:80").answers(&ZONE_B)),
            edit(
                vec![write("nodal.yaml", &yaml(&format!("endpoints:\n{remote}")))],
                vec![tcp(P11, "198.18.128.132:80").answers(&["node2-pod2:8080"])],
            ),
            check(tcp(P21, "198.18.128.132:80").answers(&ZONE_B)),
        ])
}

// ---------------------------------------------------------------------------------------
// SCTP (ebpf mode: through its SCTP fallback, iptables rules of their own)

const SCTP_8080: &str = "[{name: diameter, port: 8080, protocol: SCTP}]";

fn sctp_services() -> Scenario {
    let yaml = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: sig, namespace: scen}}
spec:
  type: NodePort
  clusterIP: 198.18.128.38
  selector: {{app: sig}}
  ports:
  - {{name: diameter, port: 3868, targetPort: 8080, nodePort: 30868, protocol: SCTP}}
---
{}
---
apiVersion: v1
kind: Service
metadata: {{name: sig-sticky, namespace: scen}}
spec:
  clusterIP: 198.18.128.39
  selector: {{app: sig-sticky}}
  sessionAffinity: ClientIP
  ports:
  - {{name: diameter, port: 3868, targetPort: 8080, protocol: SCTP}}
---
{}
---
apiVersion: v1
kind: Service
metadata: {{name: sig-empty, namespace: scen}}
spec:
  clusterIP: 198.18.128.40
  selector: {{app: gone}}
  ports:
  - {{name: diameter, port: 3868, targetPort: 8080, protocol: SCTP}}
",
        slice("sig", SCTP_8080, THREE_ENDPOINTS),
        slice("sig-sticky", SCTP_8080, THREE_ENDPOINTS),
    );
    Scenario::new("sctp")
        .manifest("sig.yaml", &yaml)
        .steps(vec![
            // ClusterIP from a pod: every backend, the pod's own address seen.
            check(
                sctp(P11, "198.18.128.38:3868")
                    .answers(&THREE_8080)
                    .source(Source::Own),
            ),
            // NodePort from outside, externalTrafficPolicy Cluster: masqueraded in both modes
            // (ebpf mode's SCTP rules are iptables mode's).
            check(
                sctp(CLIENT, "198.18.0.12:30868")
                    .answers(&THREE_8080)
                    .source(Source::Node),
            ),
            // ClientIP affinity: every new association of one client to one backend.
            check(sctp(P21, "198.18.128.39:3868").sticks_to_one_of(&THREE_8080)),
            // No endpoints: REJECTed (ICMP port unreachable, as upstream), not black-holed.
            check(sctp(P11, "198.18.128.40:3868").refused()),
        ])
}

// ---------------------------------------------------------------------------------------
// IPv6 and dual-stack (issue 12). Pod j of node i is also 2001:db8:1:i::(0x10+j), node i
// 2001:db8:0:1::(0x10+i), the client 2001:db8:c::10, services live in 2001:db8:5::/112.

/// The IPv6 addresses of [`THREE_ENDPOINTS`]' pods.
const THREE_ENDPOINTS_V6: &str = "\
endpoints:
- {addresses: [\"2001:db8:1:1::12\"], nodeName: node1}
- {addresses: [\"2001:db8:1:2::11\"], nodeName: node2}
- {addresses: [\"2001:db8:1:2::12\"], nodeName: node2}
";

/// An `addressType: IPv6` EndpointSlice of `service` (named `<service>-6`).
fn slice6(service: &str, ports: &str, endpoints: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {service}-6, namespace: scen, labels: {{kubernetes.io/service-name: {service}}}}}
addressType: IPv6
ports: {ports}
{endpoints}"
    )
}

const TCP_UDP_8080: &str =
    "[{name: tcp, port: 8080, protocol: TCP}, {name: udp, port: 8080, protocol: UDP}]";

fn ipv6_clusterip() -> Scenario {
    let yaml = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web6, namespace: scen}}
spec:
  clusterIP: 2001:db8:5::10
  clusterIPs: [2001:db8:5::10]
  ipFamilies: [IPv6]
  ipFamilyPolicy: SingleStack
  selector: {{app: web6}}
  ports:
  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP}}
  - {{name: udp, port: 53, targetPort: 8080, protocol: UDP}}
---
{}
---
apiVersion: v1
kind: Service
metadata: {{name: sticky6, namespace: scen}}
spec:
  clusterIP: 2001:db8:5::16
  ipFamilies: [IPv6]
  selector: {{app: sticky6}}
  sessionAffinity: ClientIP
  ports:
  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP}}
  - {{name: udp, port: 80, targetPort: 8080, protocol: UDP}}
---
{}
---
apiVersion: v1
kind: Service
metadata: {{name: none6, namespace: scen}}
spec:
  clusterIP: 2001:db8:5::20
  ipFamilies: [IPv6]
  selector: {{app: gone}}
  ports:
  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP}}
  - {{name: udp, port: 80, targetPort: 8080, protocol: UDP}}
",
        slice6(
            "web6",
            "[{name: tcp, port: 8080, protocol: TCP}, {name: udp, port: 8080, protocol: UDP}]",
            THREE_ENDPOINTS_V6
        ),
        slice6("sticky6", TCP_UDP_8080, THREE_ENDPOINTS_V6),
    );
    Scenario::new("ipv6-clusterip")
        .manifest("web6.yaml", &yaml)
        .steps(vec![
            // An IPv6-only service from pods (source kept) and from a node (masqueraded).
            check(
                tcp(P11, "[2001:db8:5::10]:80")
                    .answers(&THREE_8080)
                    .source(Source::Own),
            ),
            check(
                udp(P11, "[2001:db8:5::10]:53")
                    .answers(&THREE_8080)
                    .source(Source::Own),
            ),
            check(
                udp(P21, "[2001:db8:5::10]:53")
                    .unconnected()
                    .answers(&THREE_8080),
            ),
            check(
                tcp(N1, "[2001:db8:5::10]:80")
                    .answers(&THREE_8080)
                    .source(Source::Node),
            ),
            // ClientIP affinity over IPv6.
            check(tcp(P11, "[2001:db8:5::16]:80").sticks_to_one_of(&THREE_8080)),
            check(udp(P21, "[2001:db8:5::16]:80").sticks_to_one_of(&THREE_8080)),
            // No endpoints: rejected at once (TCP reset, ICMPv6 port unreachable).
            check(tcp(P11, "[2001:db8:5::20]:80").refused()),
            check(udp(P11, "[2001:db8:5::20]:80").refused()),
            check(tcp(N2, "[2001:db8:5::20]:80").refused()),
        ])
}

fn dual_stack_service() -> Scenario {
    let yaml = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: ds, namespace: scen}}
spec:
  type: NodePort
  clusterIP: 198.18.128.70
  clusterIPs: [198.18.128.70, 2001:db8:5::70]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: PreferDualStack
  selector: {{app: ds}}
  ports:
  - {{name: tcp, port: 80, targetPort: 8080, nodePort: 30090, protocol: TCP}}
  - {{name: udp, port: 80, targetPort: 8080, nodePort: 30090, protocol: UDP}}
---
{}
---
{}
---
apiVersion: v1
kind: Service
metadata: {{name: ds6first, namespace: scen}}
spec:
  clusterIP: 2001:db8:5::71
  clusterIPs: [2001:db8:5::71, 198.18.128.71]
  ipFamilies: [IPv6, IPv4]
  ipFamilyPolicy: RequireDualStack
  selector: {{app: ds6first}}
  ports:
  - {{name: tcp, port: 80, targetPort: 9090, protocol: TCP}}
---
{}
---
{}",
        slice("ds", TCP_UDP_8080, THREE_ENDPOINTS),
        slice6("ds", TCP_UDP_8080, THREE_ENDPOINTS_V6),
        slice(
            "ds6first",
            "[{name: tcp, port: 9090, protocol: TCP}]",
            "endpoints:\n- {addresses: [198.19.2.11], nodeName: node2}\n"
        ),
        slice6(
            "ds6first",
            "[{name: tcp, port: 9090, protocol: TCP}]",
            "endpoints:\n- {addresses: [\"2001:db8:1:2::11\"], nodeName: node2}\n"
        ),
    );
    Scenario::new("dual-stack-service")
        .manifest("ds.yaml", &yaml)
        .steps(vec![
            // One service, reached over both families, each family's endpoints.
            check(
                tcp(P11, "[2001:db8:5::70]:80")
                    .answers(&THREE_8080)
                    .source(Source::Own),
            ),
            check(
                tcp(P11, "198.18.128.70:80")
                    .answers(&THREE_8080)
                    .source(Source::Own),
            ),
            check(udp(P12, "[2001:db8:5::70]:80").answers(&THREE_8080)),
            // A dual-stack socket writes the IPv4 cluster IP v4-mapped; the kernel then
            // talks IPv4 (ebpf mode: connect6 translates it with the IPv4 maps).
            check(tcp(P11, "[::ffff:198.18.128.70]:80").answers(&THREE_8080)),
            check(udp(P12, "[::ffff:198.18.128.70]:80").answers(&THREE_8080)),
            // The NodePort on the node's IPv6 address from a pod of the node, and still on
            // its IPv4 address.
            check(tcp(P11, "[2001:db8:0:1::11]:30090").answers(&THREE_8080)),
            check(tcp(CLIENT, "198.18.0.11:30090").answers(&THREE_8080)),
            // Not on loopback over IPv6 (upstream: localhost NodePorts are IPv4 only).
            check(tcp(N1, "[::1]:30090").no_answer()),
            // IPv6 first, RequireDualStack: both cluster IPs.
            check(tcp(P21, "[2001:db8:5::71]:80").answers(&["node2-pod1:9090"])),
            check(tcp(P21, "198.18.128.71:80").answers(&["node2-pod1:9090"])),
        ])
}

/// The dual-stack NodePort of `dual-stack-service` on the nodes' IPv6 addresses, from
/// outside (masqueraded: ETP Cluster).
fn dual_stack_nodeport_from_outside() -> Scenario {
    let yaml = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: ds, namespace: scen}}
spec:
  type: NodePort
  clusterIP: 198.18.128.70
  clusterIPs: [198.18.128.70, 2001:db8:5::70]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: PreferDualStack
  selector: {{app: ds}}
  ports:
  - {{name: tcp, port: 80, targetPort: 8080, nodePort: 30090, protocol: TCP}}
  - {{name: udp, port: 80, targetPort: 8080, nodePort: 30090, protocol: UDP}}
---
{}
---
{}",
        slice("ds", TCP_UDP_8080, THREE_ENDPOINTS),
        slice6("ds", TCP_UDP_8080, THREE_ENDPOINTS_V6),
    );
    Scenario::new("dual-stack-nodeport-from-outside")
        .manifest("ds.yaml", &yaml)
        .steps(vec![
            check(
                tcp(CLIENT, "[2001:db8:0:1::11]:30090")
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::NodeUnlessLocal),
            ),
            check(
                udp(CLIENT, "[2001:db8:0:1::12]:30090")
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::NodeUnlessLocal),
            ),
            // Longer than the links' MTU: fragmented by the client and by the backends.
            check(
                udp(CLIENT, "[2001:db8:0:1::12]:30090")
                    .size(4000)
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::NodeUnlessLocal),
            ),
            check(tcp(CLIENT, "198.18.0.11:30090").answers(&THREE_8080)),
        ])
}

fn ipv6_etp_local() -> Scenario {
    let yaml = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: local6, namespace: scen}}
spec:
  type: NodePort
  clusterIP: 2001:db8:5::80
  ipFamilies: [IPv6]
  externalTrafficPolicy: Local
  selector: {{app: local6}}
  ports:
  - {{name: tcp, port: 80, targetPort: 8080, nodePort: 30092, protocol: TCP}}
  - {{name: udp, port: 80, targetPort: 8080, nodePort: 30092, protocol: UDP}}
---
{}
---
apiVersion: v1
kind: Service
metadata: {{name: remote6, namespace: scen}}
spec:
  type: NodePort
  clusterIP: 2001:db8:5::81
  ipFamilies: [IPv6]
  externalTrafficPolicy: Local
  selector: {{app: remote6}}
  ports:
  - {{name: tcp, port: 80, targetPort: 8080, nodePort: 30093, protocol: TCP}}
---
{}",
        slice6("local6", TCP_UDP_8080, THREE_ENDPOINTS_V6),
        slice6(
            "remote6",
            "[{name: tcp, port: 8080, protocol: TCP}]",
            "endpoints:\n- {addresses: [\"2001:db8:1:2::11\"], nodeName: node2}\n"
        ),
    );
    Scenario::new("ipv6-etp-local")
        .manifest("local6.yaml", &yaml)
        .steps(vec![
            // Only the endpoints of the node hit, and the client's IPv6 address is kept.
            check(
                tcp(CLIENT, "[2001:db8:0:1::11]:30092")
                    .answers(&["node1-pod2:8080"])
                    .source(Source::Own),
            ),
            check(
                tcp(CLIENT, "[2001:db8:0:1::12]:30092")
                    .answers(&["node2-pod1:8080", "node2-pod2:8080"])
                    .source(Source::Own),
            ),
            check(
                udp(CLIENT, "[2001:db8:0:1::12]:30092")
                    .answers(&["node2-pod1:8080", "node2-pod2:8080"])
                    .source(Source::Own),
            ),
            // No local endpoint on the node hit: dropped.
            check(
                tcp(CLIENT, "[2001:db8:0:1::11]:30093")
                    .dropped()
                    .attempts(2),
            ),
            check(
                tcp(CLIENT, "[2001:db8:0:1::12]:30093")
                    .answers(&["node2-pod1:8080"])
                    .source(Source::Own),
            ),
        ])
}

fn ipv6_udp_stale_flows() -> Scenario {
    let dns = |endpoints: &str| {
        format!(
            "apiVersion: v1
kind: Service
metadata: {{name: dns6, namespace: scen}}
spec:
  clusterIP: 2001:db8:5::120
  ipFamilies: [IPv6]
  selector: {{app: dns6}}
  ports:
  - {{name: dns, port: 53, targetPort: 9090, protocol: UDP}}
---
{}",
            slice6(
                "dns6",
                "[{name: dns, port: 9090, protocol: UDP}]",
                endpoints
            )
        )
    };
    let pod21 = "- {addresses: [\"2001:db8:1:2::11\"], nodeName: node2}\n";
    let pod22 = "- {addresses: [\"2001:db8:1:2::12\"], nodeName: node2}\n";
    // The IPv6 conntrack reconciler (AF_INET6 dumps) in iptables mode, the socket iterator
    // (AF_INET6 sockets, `SWY_SOCK_TERM6`) in ebpf mode: an established UDP flow leaves an
    // endpoint that went away, as in `udp-stale-flows`.
    Scenario::new("ipv6-udp-stale-flows")
        .manifest("dns6.yaml", &dns(&format!("endpoints:\n{pod21}")))
        .steps(vec![
            check(udp(P11, "[2001:db8:5::120]:53").answers(&["node2-pod1:9090"])),
            hold(
                "dns6",
                udp(P11, "[2001:db8:5::120]:53")
                    .answers(&["node2-pod1:9090"])
                    .source(Source::Own),
            ),
            edit(
                vec![write("dns6.yaml", &dns(&format!("endpoints:\n{pod22}")))],
                vec![udp(P11, "[2001:db8:5::120]:53").answers(&["node2-pod2:9090"])],
            ),
            moves_to("dns6", &["node2-pod2:9090"], Duration::from_secs(5)),
        ])
}

/// An IPv6 LoadBalancer service of the three pods, with `spec` lines and `ingress`.
fn lb6_service(name: &str, cluster_ip: &str, node_port: u16, spec: &str, ingress: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: scen}}
spec:
  type: LoadBalancer
  clusterIP: {cluster_ip}
  ipFamilies: [IPv6]
  selector: {{app: {name}}}
{spec}  ports:
  - {{name: tcp, port: 80, targetPort: 8080, nodePort: {node_port}, protocol: TCP}}
status:
  loadBalancer:
    ingress: {ingress}
---
{}",
        slice6(
            name,
            "[{name: tcp, port: 8080, protocol: TCP}]",
            THREE_ENDPOINTS_V6
        )
    )
}

/// internalTrafficPolicy Local over IPv6, from pods (the socket level in ebpf mode).
fn ipv6_itp_local() -> Scenario {
    let itp = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: itp6, namespace: scen}}
spec:
  clusterIP: 2001:db8:5::72
  ipFamilies: [IPv6]
  selector: {{app: itp6}}
  internalTrafficPolicy: Local
  ports:
  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP}}
---
{}",
        slice6(
            "itp6",
            "[{name: tcp, port: 8080, protocol: TCP}]",
            THREE_ENDPOINTS_V6
        )
    );
    Scenario::new("ipv6-itp-local")
        .manifest("itp6.yaml", &itp)
        .steps(vec![
            // Only the own node's endpoints.
            check(
                tcp(P11, "[2001:db8:5::72]:80")
                    .answers(&["node1-pod2:8080"])
                    .source(Source::Own),
            ),
            check(tcp(P21, "[2001:db8:5::72]:80").answers(&["node2-pod1:8080", "node2-pod2:8080"])),
        ])
}

/// [`sctp_services`] over IPv6 (ebpf mode: its SCTP fallback's ip6tables rules), and a
/// dual-stack SCTP service.
fn ipv6_sctp() -> Scenario {
    let yaml = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: sig6, namespace: scen}}
spec:
  type: NodePort
  clusterIP: 2001:db8:5::38
  ipFamilies: [IPv6]
  selector: {{app: sig6}}
  ports:
  - {{name: diameter, port: 3868, targetPort: 8080, nodePort: 30869, protocol: SCTP}}
---
{}
---
apiVersion: v1
kind: Service
metadata: {{name: sig6-sticky, namespace: scen}}
spec:
  clusterIP: 2001:db8:5::39
  ipFamilies: [IPv6]
  externalIPs: [\"2001:db8:f::38\"]
  selector: {{app: sig6-sticky}}
  sessionAffinity: ClientIP
  ports:
  - {{name: diameter, port: 3868, targetPort: 8080, protocol: SCTP}}
---
{}
---
apiVersion: v1
kind: Service
metadata: {{name: sig6-empty, namespace: scen}}
spec:
  clusterIP: 2001:db8:5::40
  ipFamilies: [IPv6]
  selector: {{app: gone}}
  ports:
  - {{name: diameter, port: 3868, targetPort: 8080, protocol: SCTP}}
---
apiVersion: v1
kind: Service
metadata: {{name: sig-ds, namespace: scen}}
spec:
  clusterIP: 198.18.128.41
  clusterIPs: [198.18.128.41, 2001:db8:5::41]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: PreferDualStack
  selector: {{app: sig-ds}}
  ports:
  - {{name: diameter, port: 3868, targetPort: 8080, protocol: SCTP}}
---
{}
---
{}",
        slice6("sig6", SCTP_8080, THREE_ENDPOINTS_V6),
        slice6("sig6-sticky", SCTP_8080, THREE_ENDPOINTS_V6),
        slice("sig-ds", SCTP_8080, THREE_ENDPOINTS),
        slice6("sig-ds", SCTP_8080, THREE_ENDPOINTS_V6),
    );
    Scenario::new("ipv6-sctp")
        .client_route("2001:db8:f::/64", 1)
        .manifest("sig6.yaml", &yaml)
        .steps(vec![
            check(
                sctp(P11, "[2001:db8:5::38]:3868")
                    .answers(&THREE_8080)
                    .source(Source::Own),
            ),
            // NodePort from outside, externalTrafficPolicy Cluster: masqueraded in both modes.
            check(
                sctp(CLIENT, "[2001:db8:0:1::12]:30869")
                    .answers(&THREE_8080)
                    .source(Source::Node),
            ),
            // ClientIP affinity over IPv6: every new association of one client to one backend.
            check(sctp(P21, "[2001:db8:5::39]:3868").sticks_to_one_of(&THREE_8080)),
            // The same service's IPv6 externalIP from outside (externalTrafficPolicy Cluster:
            // masqueraded), its affinity keyed by the client's whole address.
            check(
                sctp(CLIENT, "[2001:db8:f::38]:3868")
                    .sticks_to_one_of(&THREE_8080)
                    .source(Source::Node),
            ),
            // No endpoints: REJECTed (ICMPv6 port unreachable).
            check(sctp(P11, "[2001:db8:5::40]:3868").refused()),
            // One dual-stack service, each family's endpoints.
            check(
                sctp(P11, "[2001:db8:5::41]:3868")
                    .answers(&THREE_8080)
                    .source(Source::Own),
            ),
            check(
                sctp(P11, "198.18.128.41:3868")
                    .answers(&THREE_8080)
                    .source(Source::Own),
            ),
        ])
}

/// IPv6 externalIPs, from a pod and from outside, and one without endpoints: refused by the
/// node (ICMPv6 / RST), not routed on.
fn ipv6_external_ip() -> Scenario {
    // Service `name` at 2001:db8:5::`n` with the externalIP 2001:db8:f::`n`, TCP and UDP 80,
    // with `spec` added and, if `slice`, the three IPv6 endpoints.
    let service = |name: &str, n: u8, spec: &str, slice: bool| {
        let endpoints = if slice {
            format!("---\n{}", slice6(name, TCP_UDP_8080, THREE_ENDPOINTS_V6))
        } else {
            String::new()
        };
        format!(
            "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: scen}}
spec:
  clusterIP: 2001:db8:5::{n}
  ipFamilies: [IPv6]
  externalIPs: [\"2001:db8:f::{n}\"]
  selector: {{app: {name}}}
{spec}  ports:
  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP}}
  - {{name: udp, port: 80, targetPort: 8080, protocol: UDP}}
{endpoints}"
        )
    };
    let ext6 = service("ext6", 30, "", true);
    let empty = service("ext6-empty", 31, "", false);
    let sticky = service("ext6-sticky", 32, "  sessionAffinity: ClientIP\n", true);
    Scenario::new("ipv6-external-ip")
        .client_route("2001:db8:f::/64", 1)
        .manifest("ext6.yaml", &ext6)
        .manifest("ext6-sticky.yaml", &sticky)
        .manifest("ext6-empty.yaml", &empty)
        .steps(vec![
            check(
                tcp(P11, "[2001:db8:f::30]:80")
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::Own),
            ),
            check(
                udp(P21, "[2001:db8:f::30]:80")
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::Own),
            ),
            // Only the service port is taken over on the external IP.
            check(tcp(P11, "[2001:db8:f::30]:81").no_answer()),
            check(
                tcp(CLIENT, "[2001:db8:f::30]:80")
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::NodeUnlessLocal),
            ),
            check(
                udp(CLIENT, "[2001:db8:f::30]:80")
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::NodeUnlessLocal),
            ),
            // ClientIP affinity of an external IPv6 client (ebpf mode: the tc programs, keyed
            // by the client's whole address).
            check(tcp(CLIENT, "[2001:db8:f::32]:80").sticks_to_one_of(&THREE_8080)),
            check(udp(CLIENT, "[2001:db8:f::32]:80").sticks_to_one_of(&THREE_8080)),
            check(tcp(CLIENT, "[2001:db8:f::31]:80").refused()),
            check(udp(CLIENT, "[2001:db8:f::31]:80").refused()),
            // Behind a destination options header: served, and refused, as without it.
            check(
                tcp(CLIENT, "[2001:db8:f::30]:80")
                    .dest_options()
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::NodeUnlessLocal),
            ),
            check(
                udp(CLIENT, "[2001:db8:f::30]:80")
                    .dest_options()
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::NodeUnlessLocal),
            ),
            check(tcp(CLIENT, "[2001:db8:f::31]:80").dest_options().refused()),
            check(udp(CLIENT, "[2001:db8:f::31]:80").dest_options().refused()),
            // Longer than the links' MTU: fragmented both ways (the destination options then
            // behind the fragment header), served; the first fragment of a datagram to the
            // service without endpoints refused.
            check(
                udp(CLIENT, "[2001:db8:f::30]:80")
                    .size(4000)
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::NodeUnlessLocal),
            ),
            check(
                udp(CLIENT, "[2001:db8:f::30]:80")
                    .size(4000)
                    .dest_options()
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::NodeUnlessLocal),
            ),
            check(udp(CLIENT, "[2001:db8:f::31]:80").size(4000).refused()),
        ])
}

/// IPv6 LoadBalancer IPs with source ranges, from outside the node.
fn ipv6_loadbalancer() -> Scenario {
    Scenario::new("ipv6-loadbalancer")
        .client_route("2001:db8:f::/64", 1)
        .manifest(
            "lb6-open.yaml",
            &lb6_service(
                "lb6-open",
                "2001:db8:5::41",
                30096,
                "  loadBalancerSourceRanges: [\"2001:db8:c::/64\"]\n",
                "[{ip: \"2001:db8:f::20\"}]",
            ),
        )
        .manifest(
            "lb6-closed.yaml",
            &lb6_service(
                "lb6-closed",
                "2001:db8:5::42",
                30097,
                "  loadBalancerSourceRanges: [\"2001:db8:ffff::/48\"]\n",
                "[{ip: \"2001:db8:f::21\"}]",
            ),
        )
        .steps(vec![
            // An IPv6 LoadBalancer IP the client's range admits, routed to node1.
            check(
                tcp(CLIENT, "[2001:db8:f::20]:80")
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::NodeUnlessLocal),
            ),
            // Outside the allowed range: dropped; the NodePort is not guarded by it.
            check(tcp(CLIENT, "[2001:db8:f::21]:80").dropped().attempts(2)),
            check(
                tcp(CLIENT, "[2001:db8:0:1::11]:30097")
                    .answers(&THREE_8080)
                    .source_by_mode(Source::Node, Source::NodeUnlessLocal),
            ),
        ])
}
