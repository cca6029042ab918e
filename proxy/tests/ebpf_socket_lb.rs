//! The eBPF socket-level load balancer, loaded and attached by the real `switchyard` binary in a
//! two-node testbed, driven by the bundled example manifests and edits to them; and the
//! destruction of connected UDP sockets whose backend leaves.
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use switchyard_testbed::{
    backend_names, http_get, start_switchyard, wait_for, wait_for_log, ChildGuard, Hold, Manifests,
    Proto, RequestError, Testbed, TopologySpec,
};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const TIMEOUT: Duration = Duration::from_millis(1500);

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// switchyard in ebpf mode on node1, with `extra` flags.
fn start_ebpf(
    testbed: &Testbed,
    manifests: &Manifests,
    extra: &[&str],
) -> switchyard_testbed::Result<ChildGuard> {
    start_switchyard(
        testbed,
        testbed.node(1),
        BIN.as_ref(),
        "ebpf",
        manifests,
        extra,
    )
}

fn setup() -> (Testbed, Manifests) {
    let testbed = Testbed::new(TopologySpec {
        nodes: 2,
        pods_per_node: 2,
    })
    .expect("testbed");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/demo");
    let manifests = Manifests::copy_of(&examples).expect("manifests");
    (testbed, manifests)
}

#[test]
fn cluster_ip_is_balanced_by_connect4_and_follows_manifest_edits() {
    let (testbed, manifests) = setup();
    let _echo = testbed
        .start_echo_everywhere(8080, 8080)
        .expect("echo servers");
    let broken = "apiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: demo}\n\
                  spec: {clusterIP: 198.18.128.12, ports: [{name: http, port: 0}]}\n";
    manifests.write("broken.yaml", broken).expect("write");
    // -v 4 forwards the programs' aya-log events.
    let proxy = start_ebpf(&testbed, &manifests, &["--v=4"]).expect("switchyard");

    let client = testbed.pod(1, 2);
    let web = addr("198.18.128.10:80");
    testbed
        .wait_for_answer(client, Proto::Tcp, web, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("switchyard programs the ClusterIP: {e}\n{}", proxy.stderr()));

    // Every ready endpoint answers, the terminating one (nothing listens there) never gets
    // traffic, and backends see the client pod's own address: socket-level translation.
    let tcp = testbed.request(client, Proto::Tcp, web, 60, TIMEOUT);
    assert_eq!(
        backend_names(&tcp),
        BTreeSet::from([
            "node1-pod1".into(),
            "node2-pod1".into(),
            "node2-pod2".into()
        ]),
        "{tcp:?}"
    );
    for reply in tcp.iter().flatten() {
        assert_eq!(reply.seen_source.ip(), std::net::IpAddr::V4(client.ip));
    }

    // UDP on the same port number is its own service port, served by connected UDP.
    let udp = testbed.request(client, Proto::Udp, web, 60, TIMEOUT);
    assert_eq!(backend_names(&udp).len(), 3, "{udp:?}");
    assert!(udp.iter().all(Result::is_ok), "{udp:?}");

    // No endpoints: refused at once, not a timeout.
    let empty = testbed.request(client, Proto::Tcp, addr("198.18.128.11:80"), 3, TIMEOUT);
    assert!(
        empty
            .iter()
            .all(|r| matches!(r, Err(RequestError::Refused))),
        "{empty:?}"
    );
    wait_for("the kernel's log event", Duration::from_secs(5), || {
        let log = proxy.stderr();
        if log.contains("socket: refused 198.18.128.11:80, no usable endpoint") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .expect("aya-log events reach the log with -v 4");

    // The malformed service is skipped with one warning naming it and its field.
    let log = proxy.stderr();
    assert!(
        log.contains("Service demo/broken: spec.ports[0].port"),
        "warning about demo/broken missing from the log:\n{log}"
    );

    // A process outside this node's cgroup (a pod on node2, which runs no proxy) is not
    // translated: the programs are scoped to --cgroup-path.
    let other = testbed.request(testbed.pod(2, 1), Proto::Tcp, web, 1, TIMEOUT);
    assert!(other.iter().all(Result::is_err), "{other:?}");

    // Edits: node2-pod2 leaves the slice; a new service appears.
    let web_yaml = std::fs::read_to_string(manifests.path().join("web.yaml")).expect("read");
    let scaled = web_yaml.replace(
        "  - addresses: [198.19.2.12]\n    nodeName: node2\n    conditions: {ready: true, serving: true, terminating: false}\n",
        "",
    );
    assert_ne!(scaled, web_yaml, "example manifest changed shape");
    manifests.write("web.yaml", &scaled).expect("write");
    manifests
        .write(
            "api.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: demo}\n\
             spec: {clusterIP: 198.18.128.20, ports: [{name: http, port: 8000}]}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: api-1, namespace: demo, labels: {kubernetes.io/service-name: api}}\n\
             addressType: IPv4\nports: [{name: http, port: 8080}]\n\
             endpoints: [{addresses: [198.19.2.11], nodeName: node2}]\n",
        )
        .expect("write");
    wait_for(
        "the edits to reach the dataplane",
        Duration::from_secs(10),
        || {
            let api = testbed.request(client, Proto::Tcp, addr("198.18.128.20:8000"), 1, TIMEOUT);
            let web = testbed.request(client, Proto::Tcp, web, 20, TIMEOUT);
            let web_set = backend_names(&web);
            if backend_names(&api) == BTreeSet::from(["node2-pod1".to_string()])
                && web_set == BTreeSet::from(["node1-pod1".to_string(), "node2-pod1".to_string()])
            {
                Ok(())
            } else {
                Err((api, web_set))
            }
        },
    )
    .expect("edits applied");
    let after = testbed.request(client, Proto::Tcp, web, 40, TIMEOUT);
    assert!(!backend_names(&after).contains("node2-pod2"), "{after:?}");
    assert!(after.iter().all(Result::is_ok), "{after:?}");
}

#[test]
fn a_full_map_fails_only_the_service_that_does_not_fit() {
    let (testbed, manifests) = setup();
    let _echo = testbed
        .start_echo_everywhere(8080, 0)
        .expect("echo servers");
    let service = |name: &str, ip: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: full}}\n\
             spec: {{clusterIP: {ip}, {extra}ports: [{{name: http, port: 80, targetPort: 8080{np}}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}-1, namespace: full, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080}}]\n\
             endpoints: [{{addresses: [198.19.2.11], nodeName: node2}}]\n",
            np = if extra.is_empty() { "" } else { ", nodePort: 30090" }
        )
    };
    // a and b need one socket entry each; c's NodePort needs two per node address.
    manifests
        .write("a.yaml", &service("a", "198.18.128.40", ""))
        .expect("write");
    manifests
        .write("b.yaml", &service("b", "198.18.128.41", ""))
        .expect("write");
    manifests
        .write("c.yaml", &service("c", "198.18.128.42", "type: NodePort, "))
        .expect("write");
    for name in ["web.yaml", "empty.yaml"] {
        manifests.remove(name).expect("remove example");
    }
    let proxy =
        start_ebpf(&testbed, &manifests, &["--ebpf-services-map-size=3"]).expect("switchyard");
    let client = testbed.pod(1, 2);
    wait_for(
        "the services that fit to answer",
        Duration::from_secs(20),
        || {
            let a = testbed.request(client, Proto::Tcp, addr("198.18.128.40:80"), 1, TIMEOUT);
            let b = testbed.request(client, Proto::Tcp, addr("198.18.128.41:80"), 1, TIMEOUT);
            if a.iter().chain(&b).all(Result::is_ok) {
                Ok(())
            } else {
                Err((a, b, proxy.stderr()))
            }
        },
    )
    .expect("a and b programmed");
    let log = proxy.stderr();
    assert!(
        log.contains("full/c:http/TCP: map SWY_SERVICES is full (3 entries); raise its size"),
        "{log}"
    );
    assert!(
        !log.contains("full/a:http") && !log.contains("full/b:http"),
        "{log}"
    );
    // Nothing of c half-programmed: its ClusterIP is not translated at all.
    let c = testbed.request(client, Proto::Tcp, addr("198.18.128.42:80"), 1, TIMEOUT);
    assert!(c.iter().all(Result::is_err), "{c:?}");
}

#[test]
fn a_changed_map_size_recreates_the_pinned_map_instead_of_adopting_it() {
    let (testbed, manifests) = setup();
    let _echo = testbed.start_echo_everywhere(8080, 8080).expect("echo");
    let client = testbed.pod(1, 2);
    let web = addr("198.18.128.10:80");
    let serving = |proxy: &switchyard_testbed::ChildGuard| {
        testbed
            .wait_for_answer(client, Proto::Tcp, web, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("served: {e}\n{}", proxy.stderr()));
    };
    let mut first = start_ebpf(&testbed, &manifests, &[]).expect("switchyard");
    serving(&first);
    first.terminate().expect("stop");
    let mut second = start_ebpf(&testbed, &manifests, &["--ebpf-services-map-size=1000"])
        .expect("switchyard again");
    // The old instance's pinned programs keep serving meanwhile, so wait for the new one's
    // first full sync before judging it.
    wait_for_full_sync(&mut second);
    serving(&second);
    let log = second.stderr();
    assert!(
        log.contains("pinned map does not fit this version or its size flag")
            && log.contains("SWY_SERVICES"),
        "{log}"
    );
    assert!(!log.contains("ERROR"), "{log}");
}

/// A UDP service 198.18.128.120:53 -> 9090 with endpoints at `ips` (pods of node2).
fn dns_service(ips: &[&str]) -> String {
    let endpoints: String = ips
        .iter()
        .map(|ip| format!("- {{addresses: [{ip}], nodeName: node2}}\n"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: dns, namespace: term}}\n\
         spec: {{clusterIP: 198.18.128.120, ports: [{{name: dns, port: 53, targetPort: 9090, protocol: UDP}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: dns-1, namespace: term, labels: {{kubernetes.io/service-name: dns}}}}\n\
         addressType: IPv4\nports: [{{name: dns, port: 9090, protocol: UDP}}]\n\
         endpoints:\n{endpoints}"
    )
}

/// The testbed with echo servers on UDP 9090 in every pod, the demo's services replaced by
/// [`dns_service`] on node2-pod1, and switchyard (ebpf) on node1 serving it.
fn dns_setup() -> (Testbed, Manifests, Vec<ChildGuard>, ChildGuard) {
    let (testbed, manifests) = setup();
    let echo = testbed
        .start_echo_everywhere(0, 9090)
        .expect("echo servers");
    for name in ["web.yaml", "empty.yaml"] {
        manifests.remove(name).expect("remove example");
    }
    manifests
        .write("dns.yaml", &dns_service(&["198.19.2.11"]))
        .expect("write");
    let proxy = start_dns_proxy(&testbed, &manifests);
    testbed
        .wait_for_answer(testbed.pod(1, 1), Proto::Udp, DNS, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("switchyard programs the ClusterIP: {e}\n{}", proxy.stderr()));
    (testbed, manifests, echo, proxy)
}

const DNS: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::new(198, 18, 128, 120),
    53,
));

fn start_dns_proxy(testbed: &Testbed, manifests: &Manifests) -> ChildGuard {
    start_ebpf(testbed, manifests, &[]).expect("switchyard")
}

/// Waits for three replies to the held flow and checks that node2-pod1 sent them.
fn assert_first_replies_from_pod1(held: &mut Hold) {
    let first = held
        .wait_for_replies(3, Duration::from_secs(10))
        .expect("replies");
    for r in &first {
        let reply = r.result.as_ref().expect("answered before the change");
        assert_eq!(reply.backend, "node2-pod1", "{first:?}");
    }
}

/// Waits for the held flow to be answered by node2-pod2 three times, and checks its timeline:
/// node2-pod1 only, then ECONNABORTED (the socket was destroyed), then node2-pod2 only (the
/// same socket, connected again).
fn assert_destroyed_and_moved(held: &Hold, proxy: &ChildGuard) {
    let moved = wait_for(
        "the held flow to be answered by node2-pod2",
        Duration::from_secs(15),
        || {
            let timeline = held.timeline();
            let answered_new = timeline
                .iter()
                .filter(|r| matches!(&r.result, Ok(reply) if reply.backend == "node2-pod2"))
                .count();
            if answered_new >= 3 {
                Ok(timeline)
            } else {
                Err((timeline, proxy.stderr()))
            }
        },
    )
    .expect("the connected socket left the removed backend");
    let aborted = moved
        .iter()
        .position(
            |r| matches!(&r.result, Err(RequestError::Other(d)) if d.contains("os error 103")),
        )
        .unwrap_or_else(|| panic!("no ECONNABORTED in {moved:?}"));
    assert!(
        moved[..aborted]
            .iter()
            .all(|r| !matches!(&r.result, Ok(reply) if reply.backend != "node2-pod1")),
        "{moved:?}"
    );
    assert!(
        moved[aborted + 1..]
            .iter()
            .all(|r| matches!(&r.result, Ok(reply) if reply.backend == "node2-pod2")),
        "{moved:?}"
    );
}

#[test]
fn a_connected_udp_socket_is_destroyed_when_its_backend_leaves_and_reconnects_to_a_serving_one() {
    let (testbed, manifests, _echo, proxy) = dns_setup();
    let client = testbed.pod(1, 1);
    let interval = Duration::from_millis(100);
    // One connected socket through the service, and one connected to the pod's own address,
    // which no service translated and which must be left alone.
    let mut held = testbed
        .hold(client, Proto::Udp, DNS, interval)
        .expect("held flow");
    let mut direct = testbed
        .hold(client, Proto::Udp, addr("198.19.2.11:9090"), interval)
        .expect("direct flow");
    assert_first_replies_from_pod1(&mut held);

    // node2-pod1 leaves the service (it keeps running, so a stale socket would still be
    // answered by it); node2-pod2 serves instead.
    manifests
        .write("dns.yaml", &dns_service(&["198.19.2.12"]))
        .expect("write");
    assert_destroyed_and_moved(&held, &proxy);

    // The untranslated socket kept its peer and never saw an error.
    let seen = direct.timeline().len();
    let direct_timeline = direct
        .wait_for_replies(seen + 1, Duration::from_secs(5))
        .expect("direct flow replies");
    assert!(
        direct_timeline
            .iter()
            .all(|r| matches!(&r.result, Ok(reply) if reply.backend == "node2-pod1")),
        "{direct_timeline:?}"
    );

    let (_, metrics) = http_get(testbed.node(1), 10249, "/metrics").expect("scrape");
    assert!(
        metrics.contains("switchyard_ebpf_sockets_destroyed_total 1\n"),
        "{metrics}"
    );
    assert!(
        proxy
            .stderr()
            .contains("destroyed connected UDP sockets to removed backends"),
        "{}",
        proxy.stderr()
    );
}

#[test]
fn a_backend_removed_while_no_controller_ran_has_its_sockets_destroyed_at_the_first_sync() {
    let (testbed, manifests, _echo, mut proxy) = dns_setup();
    let held = testbed
        .hold(
            testbed.pod(1, 1),
            Proto::Udp,
            DNS,
            Duration::from_millis(100),
        )
        .expect("held flow");
    // Killed: the pinned maps (and the translation they hold) stay; the change happens
    // while nothing runs, and the new process only sees the maps and the new manifests.
    proxy.kill().expect("SIGKILL switchyard");
    let _ = proxy.wait().expect("reap switchyard");
    manifests
        .write("dns.yaml", &dns_service(&["198.19.2.12"]))
        .expect("write");
    let proxy = start_dns_proxy(&testbed, &manifests);
    assert_destroyed_and_moved(&held, &proxy);
}

/// IPv6 on the socket path: an IPv6 ClusterIP (TCP, connected and unconnected UDP), a
/// dual-stack service whose two cluster IPs each reach their own family's endpoints,
/// ClientIP affinity, a v4-mapped address from a dual-stack socket, refusal without
/// endpoints, and no warning for an IPv6 NodePort (the packet path serves it too).
#[test]
fn ipv6_and_dual_stack_services_are_balanced_by_the_socket_programs() {
    use std::net::IpAddr;
    let (testbed, manifests) = setup();
    let _echo = testbed
        .start_echo_everywhere(8080, 8080)
        .expect("echo servers");
    let v6 = |node, pod| testbed.pod(node, pod).ipv6();
    let slice = |name: &str, family: &str, ips: &[(String, usize)]| {
        let endpoints: Vec<String> = ips
            .iter()
            .map(|(ip, node)| format!("{{addresses: [\"{ip}\"], nodeName: node{node}}}"))
            .collect();
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}-{family}, namespace: v6, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: {family}\n\
             ports: [{{name: http, port: 8080, protocol: TCP}}, {{name: udp, port: 8080, protocol: UDP}}]\n\
             endpoints: [{}]\n",
            endpoints.join(", ")
        )
    };
    let ports = "ports: [{name: http, port: 80, targetPort: 8080}, \
                 {name: udp, port: 80, targetPort: 8080, protocol: UDP}]";
    let v6_endpoints = [(v6(1, 1).to_string(), 1), (v6(2, 1).to_string(), 2)];
    // dual: IPv6 first; its IPv4 endpoint is another pod, so each family's answer shows
    // which endpoints it used.
    let dual = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: dual, namespace: v6}}\n\
         spec: {{ipFamilyPolicy: RequireDualStack, ipFamilies: [IPv6, IPv4], \
         clusterIP: \"2001:db8:5::10\", clusterIPs: [\"2001:db8:5::10\", 198.18.128.30], {ports}}}\n---\n{}---\n{}",
        slice("dual", "IPv6", &v6_endpoints),
        slice("dual", "IPv4", &[(testbed.pod(2, 2).ip.to_string(), 2)]),
    );
    let sticky = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: sticky, namespace: v6}}\n\
         spec: {{ipFamilies: [IPv6], clusterIP: \"2001:db8:5::11\", clusterIPs: [\"2001:db8:5::11\"], \
         sessionAffinity: ClientIP, {ports}}}\n---\n{}",
        slice("sticky", "IPv6", &v6_endpoints),
    );
    let empty = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: empty, namespace: v6}}\n\
         spec: {{ipFamilies: [IPv6], clusterIP: \"2001:db8:5::12\", clusterIPs: [\"2001:db8:5::12\"], {ports}}}\n"
    );
    let nodeport = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: np, namespace: v6}}\n\
         spec: {{type: NodePort, ipFamilies: [IPv6], clusterIP: \"2001:db8:5::13\", clusterIPs: [\"2001:db8:5::13\"], \
         ports: [{{name: http, port: 80, targetPort: 8080, nodePort: 30080}}]}}\n---\n{}",
        slice("np", "IPv6", &v6_endpoints),
    );
    for (file, text) in [
        ("dual.yaml", &dual),
        ("sticky.yaml", &sticky),
        ("empty6.yaml", &empty),
        ("np6.yaml", &nodeport),
    ] {
        manifests.write(file, text).expect("write");
    }
    let mut proxy = start_ebpf(&testbed, &manifests, &[]).expect("switchyard");

    let client = testbed.pod(1, 2);
    let dual6: SocketAddr = "[2001:db8:5::10]:80".parse().expect("literal");
    testbed
        .wait_for_answer(client, Proto::Tcp, dual6, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("the IPv6 cluster IP is served: {e}\n{}", proxy.stderr()));
    let v6_names = BTreeSet::from(["node1-pod1".to_string(), "node2-pod1".to_string()]);

    // TCP (connect6, getpeername6) and connected UDP: every IPv6 endpoint answers, sees the
    // client pod's own IPv6 address, and the socket's peer is the service.
    for proto in [Proto::Tcp, Proto::Udp] {
        let replies = testbed.request(client, proto, dual6, 40, TIMEOUT);
        assert_eq!(backend_names(&replies), v6_names, "{proto}: {replies:?}");
        for reply in replies.iter().flatten() {
            assert_eq!(
                reply.seen_source.ip(),
                IpAddr::V6(client.ipv6()),
                "{reply:?}"
            );
            assert_eq!(reply.replied_from, dual6, "{proto}: {reply:?}");
        }
    }
    // Unconnected UDP (sendmsg6): the reply is shown as coming from the service (recvmsg6).
    let spec = switchyard_testbed::RequestSpec::new(Proto::Udp, dual6).unconnected(true);
    let reply = testbed.request_with(client, &spec).expect("probe")[0]
        .clone()
        .expect("unconnected UDP over IPv6");
    assert!(v6_names.contains(&reply.backend), "{reply:?}");
    assert_eq!(reply.replied_from, dual6);

    // The same service over IPv4 reaches its IPv4 endpoint only.
    let dual4 = addr("198.18.128.30:80");
    let replies = testbed.request(client, Proto::Tcp, dual4, 10, TIMEOUT);
    assert_eq!(
        backend_names(&replies),
        BTreeSet::from(["node2-pod2".to_string()]),
        "{replies:?}"
    );
    // A dual-stack socket writes the IPv4 service as ::ffff:198.18.128.30 (connect6 sees it,
    // the kernel then talks IPv4): translated with the IPv4 maps, peer shown v4-mapped.
    let mapped = SocketAddr::new(
        IpAddr::V6(Ipv4Addr::new(198, 18, 128, 30).to_ipv6_mapped()),
        80,
    );
    for proto in [Proto::Tcp, Proto::Udp] {
        let replies = testbed.request(client, proto, mapped, 10, TIMEOUT);
        assert_eq!(
            backend_names(&replies),
            BTreeSet::from(["node2-pod2".to_string()]),
            "{proto} to {mapped}: {replies:?}"
        );
        for reply in replies.iter().flatten() {
            assert_eq!(reply.seen_source.ip(), IpAddr::V4(client.ip), "{reply:?}");
            assert_eq!(reply.replied_from, mapped, "{proto}: {reply:?}");
        }
    }
    let spec = switchyard_testbed::RequestSpec::new(Proto::Udp, mapped).unconnected(true);
    let reply = testbed.request_with(client, &spec).expect("probe")[0]
        .clone()
        .expect("unconnected UDP to a v4-mapped address");
    assert_eq!(reply.backend, "node2-pod2");
    assert_eq!(
        reply.replied_from, mapped,
        "recvmsg6 shows the service v4-mapped"
    );

    // ClientIP affinity over IPv6: one backend for every connection of this pod.
    let sticky6: SocketAddr = "[2001:db8:5::11]:80".parse().expect("literal");
    let replies = testbed.request(client, Proto::Tcp, sticky6, 20, TIMEOUT);
    assert!(replies.iter().all(Result::is_ok), "{replies:?}");
    assert_eq!(backend_names(&replies).len(), 1, "{replies:?}");

    // No endpoints: refused at once.
    let empty6: SocketAddr = "[2001:db8:5::12]:80".parse().expect("literal");
    let refused = testbed.request(client, Proto::Tcp, empty6, 2, TIMEOUT);
    assert!(
        refused
            .iter()
            .all(|r| matches!(r, Err(RequestError::Refused))),
        "{refused:?}"
    );

    // The IPv6 NodePort serves this node's own sockets (the tc programs serve it from outside,
    // so nothing is warned about).
    let np6 = SocketAddr::new(IpAddr::V6(testbed.node(1).ipv6()), 30080);
    // 20 connections over two backends (random picks): one backend taking all of them has a
    // chance of 2 in a million; with 10, 2 in a thousand, which CI met once.
    let replies = testbed.request(client, Proto::Tcp, np6, 20, TIMEOUT);
    assert_eq!(backend_names(&replies), v6_names, "{replies:?}");
    let log = proxy.stderr();
    assert!(!log.contains("IPv6 traffic from outside the node"), "{log}");

    // A restart: the pinned IPv6 programs and maps serve while no controller runs, and the
    // next instance adopts them (its first full sync finds nothing to repair).
    proxy.terminate().expect("stop");
    let replies = testbed.request(client, Proto::Tcp, dual6, 20, TIMEOUT);
    assert_eq!(
        backend_names(&replies),
        v6_names,
        "no controller: {replies:?}"
    );
    let second = start_ebpf(&testbed, &manifests, &[]).expect("switchyard again");
    wait_for(
        "the new instance's first sync",
        Duration::from_secs(20),
        || {
            let log = second.stderr();
            if log.contains("full=true") {
                Ok(())
            } else {
                Err(log)
            }
        },
    )
    .expect("synced");
    let log = second.stderr();
    // 5 IPv4 entries (demo's three, dual's two) and 11 IPv6 ones (none on ::1; two of them the
    // NodePort's entries for the packet path) were pinned.
    assert!(log.contains("adopted pinned eBPF maps entries=16"), "{log}");
    assert!(
        !log.contains("ERROR") && !log.contains("behind our back"),
        "{log}"
    );
    for proto in [Proto::Tcp, Proto::Udp] {
        let replies = testbed.request(client, proto, dual6, 20, TIMEOUT);
        assert_eq!(backend_names(&replies), v6_names, "{proto}: {replies:?}");
    }

    // The service becomes IPv4-only: its IPv6 entries go, its IPv4 ones stay.
    let single = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: dual, namespace: v6}}\n\
         spec: {{ipFamilies: [IPv4], clusterIP: 198.18.128.30, clusterIPs: [198.18.128.30], {ports}}}\n---\n{}",
        slice("dual", "IPv4", &[(testbed.pod(2, 2).ip.to_string(), 2)]),
    );
    manifests.write("dual.yaml", &single).expect("write");
    wait_for("the IPv6 entries to go", Duration::from_secs(10), || {
        let replies = testbed.request(client, Proto::Tcp, dual6, 1, TIMEOUT);
        if replies.iter().all(Result::is_err) {
            Ok(())
        } else {
            Err(replies)
        }
    })
    .expect("IPv6 cluster IP removed");
    let replies = testbed.request(client, Proto::Tcp, dual4, 5, TIMEOUT);
    assert_eq!(
        backend_names(&replies),
        BTreeSet::from(["node2-pod2".to_string()]),
        "{replies:?}"
    );
}

/// [`dns_service`] as a dual-stack service (198.18.128.120 and 2001:db8:5::120) with the
/// endpoints of node2's pods `pods` in both families.
fn dns_service_dual(testbed: &Testbed, pods: &[usize]) -> String {
    let slice = |family: &str, ips: Vec<String>| {
        let endpoints: String = ips
            .iter()
            .map(|ip| format!("- {{addresses: [\"{ip}\"], nodeName: node2}}\n"))
            .collect();
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: dns-{family}, namespace: term, labels: {{kubernetes.io/service-name: dns}}}}\n\
             addressType: {family}\nports: [{{name: dns, port: 9090, protocol: UDP}}]\n\
             endpoints:\n{endpoints}"
        )
    };
    let v4 = pods
        .iter()
        .map(|p| testbed.pod(2, *p).ip.to_string())
        .collect();
    let v6 = pods
        .iter()
        .map(|p| testbed.pod(2, *p).ipv6().to_string())
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: dns, namespace: term}}\n\
         spec: {{ipFamilies: [IPv4, IPv6], clusterIP: 198.18.128.120, \
         clusterIPs: [198.18.128.120, \"2001:db8:5::120\"], \
         ports: [{{name: dns, port: 53, targetPort: 9090, protocol: UDP}}]}}\n---\n{}---\n{}",
        slice("IPv4", v4),
        slice("IPv6", v6)
    )
}

#[test]
fn ipv6_and_v4_mapped_connected_udp_sockets_are_destroyed_when_their_backend_leaves() {
    let (testbed, manifests, _echo, proxy) = dns_setup();
    manifests
        .write("dns.yaml", &dns_service_dual(&testbed, &[1]))
        .expect("write");
    let client = testbed.pod(1, 1);
    let dns6: SocketAddr = "[2001:db8:5::120]:53".parse().expect("literal");
    // A dual-stack socket to the IPv4 service: connect6 translates it with the IPv4 maps.
    let mapped = SocketAddr::new(
        std::net::IpAddr::V6(Ipv4Addr::new(198, 18, 128, 120).to_ipv6_mapped()),
        53,
    );
    testbed
        .wait_for_answer(client, Proto::Udp, dns6, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("switchyard programs the IPv6 ClusterIP: {e}"));
    let interval = Duration::from_millis(100);
    let mut held: Vec<Hold> = [dns6, mapped]
        .into_iter()
        .map(|to| {
            testbed
                .hold(client, Proto::Udp, to, interval)
                .expect("held flow")
        })
        .collect();
    for flow in &mut held {
        assert_first_replies_from_pod1(flow);
    }

    manifests
        .write("dns.yaml", &dns_service_dual(&testbed, &[2]))
        .expect("write");
    for flow in &held {
        assert_destroyed_and_moved(flow, &proxy);
    }
    let (_, metrics) = http_get(testbed.node(1), 10249, "/metrics").expect("scrape");
    assert!(
        metrics.contains("switchyard_ebpf_sockets_destroyed_total 2\n"),
        "{metrics}"
    );
}

/// The IPv6 maps, pinned under the node's bpffs directory.
const IPV6_MAPS: [&str; 6] = [
    "SWY_SERVICES6",
    "SWY_BACKENDS6",
    "SWY_SOCK_REVNAT6",
    "SWY_AFFINITY6",
    "SWY_CONNTRACK6",
    "SWY_SOURCE_RANGES6",
];

/// Each IPv6 map's `max_entries` and the kernel memory it holds (its fd's `memlock` in
/// `pid`'s fdinfo), read through its pin; printed with the sum over all of `pid`'s maps.
fn ipv6_maps(testbed: &Testbed, pid: u32) -> Vec<(&'static str, u32, u64)> {
    let mut memlock_by_id = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("fdinfo") {
        let Ok(info) = std::fs::read_to_string(entry.expect("fdinfo entry").path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:")) {
            memlock_by_id.insert(id as u32, memlock);
        }
    }
    let all: u64 = memlock_by_id.values().sum();
    eprintln!(
        "all {} maps of the process: {all} bytes",
        memlock_by_id.len()
    );
    let maps = testbed.bpffs_dir(testbed.node(1)).join("maps");
    IPV6_MAPS
        .iter()
        .map(|name| {
            let info = aya::maps::MapInfo::from_pin(maps.join(name)).expect("pinned IPv6 map");
            let memlock = memlock_by_id.get(&info.id()).copied().unwrap_or(0);
            (*name, info.max_entries(), memlock)
        })
        .collect()
}

/// Waits for `proxy`'s first full sync (an earlier instance's pinned programs may still
/// serve before it).
fn wait_for_full_sync(proxy: &mut ChildGuard) {
    wait_for_log(
        proxy,
        "the first full sync",
        Duration::from_secs(20),
        &[&["full=true"]],
    )
    .expect("synced");
}

#[test]
fn an_ipv4_only_node_gets_minimal_ipv6_maps_and_full_ones_once_restarted_dual_stack() {
    let (testbed, manifests) = setup();
    let _echo = testbed.start_echo_everywhere(8080, 0).expect("echo");
    let pod = |node, pod| testbed.pod(node, pod);
    manifests
        .write(
            "dual.yaml",
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: dual, namespace: demo}}\n\
                 spec: {{ipFamilyPolicy: RequireDualStack, ipFamilies: [IPv4, IPv6], \
                 clusterIP: 198.18.128.31, clusterIPs: [198.18.128.31, \"2001:db8:5::31\"], \
                 ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: dual-4, namespace: demo, labels: {{kubernetes.io/service-name: dual}}}}\n\
                 addressType: IPv4\nports: [{{name: http, port: 8080}}]\n\
                 endpoints: [{{addresses: [{}], nodeName: node1}}]\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: dual-6, namespace: demo, labels: {{kubernetes.io/service-name: dual}}}}\n\
                 addressType: IPv6\nports: [{{name: http, port: 8080}}]\n\
                 endpoints: [{{addresses: [\"{}\"], nodeName: node1}}]\n",
                pod(1, 1).ip,
                pod(1, 1).ipv6(),
            ),
        )
        .expect("write");
    let client = pod(1, 2);
    let dual4 = addr("198.18.128.31:80");
    let dual6: SocketAddr = "[2001:db8:5::31]:80".parse().expect("literal");
    let one = BTreeSet::from(["node1-pod1".to_string()]);

    // IPv4-only: no IPv6 address on node1 when switchyard starts.
    testbed
        .set_node_ipv6(1, false)
        .expect("IPv6 addresses removed");
    let mut first = start_ebpf(&testbed, &manifests, &[]).expect("switchyard");
    wait_for_full_sync(&mut first);
    let replies = testbed.request(client, Proto::Tcp, dual4, 5, TIMEOUT);
    assert_eq!(
        backend_names(&replies),
        one,
        "{replies:?}\n{}",
        first.stderr()
    );
    let small = ipv6_maps(&testbed, first.pid());
    let small_total: u64 = small.iter().map(|(_, _, m)| m).sum();
    eprintln!("IPv4-only node, IPv6 maps: {small:?}, {small_total} bytes");
    assert!(small.iter().all(|(_, max, _)| *max == 1), "{small:?}");
    let log = first.stderr();
    assert!(
        log.contains("this node does not proxy IPv6")
            && log.contains("the node has no routable IPv6 address"),
        "{log}"
    );

    // The node gains IPv6 while running: said once, and the IPv6 ports are left alone (no
    // map-full errors) until a restart.
    testbed.set_node_ipv6(1, true).expect("IPv6 addresses back");
    wait_for_log(
        &mut first,
        "the warning that IPv6 needs a restart",
        Duration::from_secs(20),
        &[&["restart switchyard to proxy IPv6"]],
    )
    .expect("warned");
    // Once a later edit is served, the address change has been synced too.
    manifests
        .write(
            "later.yaml",
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: later, namespace: demo}}\n\
                 spec: {{clusterIP: 198.18.128.32, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: later-1, namespace: demo, labels: {{kubernetes.io/service-name: later}}}}\n\
                 addressType: IPv4\nports: [{{name: http, port: 8080}}]\n\
                 endpoints: [{{addresses: [{}], nodeName: node1}}]\n",
                pod(1, 1).ip,
            ),
        )
        .expect("write");
    testbed
        .wait_for_answer(
            client,
            Proto::Tcp,
            addr("198.18.128.32:80"),
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("the later service is served: {e}\n{}", first.stderr()));
    let unserved = testbed.request(client, Proto::Tcp, dual6, 2, TIMEOUT);
    assert!(unserved.iter().all(Result::is_err), "{unserved:?}");
    first.terminate().expect("stop");
    let _ = first.wait_for_output(Duration::from_secs(10));
    let log = first.stderr();
    assert!(!log.contains("ERROR"), "{log}");

    // Restarted on a dual-stack node: the pinned IPv6 maps are recreated at full size and
    // the IPv6 cluster IP is served.
    let mut second = start_ebpf(&testbed, &manifests, &[]).expect("switchyard again");
    wait_for_full_sync(&mut second);
    testbed
        .wait_for_answer(client, Proto::Tcp, dual6, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("the IPv6 cluster IP is served: {e}\n{}", second.stderr()));
    let replies = testbed.request(client, Proto::Tcp, dual6, 5, TIMEOUT);
    assert_eq!(backend_names(&replies), one, "{replies:?}");
    let full = ipv6_maps(&testbed, second.pid());
    let full_total: u64 = full.iter().map(|(_, _, m)| m).sum();
    eprintln!("dual-stack node, IPv6 maps: {full:?}, {full_total} bytes");
    let max = |name: &str| full.iter().find(|(n, ..)| *n == name).map(|(_, m, _)| *m);
    assert_eq!(
        max("SWY_SOCK_REVNAT6"),
        Some(switchyard_common::DEFAULT_SOCK_REVNAT_MAX)
    );
    assert_eq!(
        max("SWY_AFFINITY6"),
        Some(switchyard_common::DEFAULT_AFFINITY_MAX)
    );
    assert_eq!(
        max("SWY_SERVICES6"),
        Some(switchyard_common::DEFAULT_SERVICES_MAX)
    );
    assert!(full_total > 100 * small_total, "{full:?} vs {small:?}");
}

#[test]
fn a_node_whose_kernel_has_ipv6_disabled_gets_minimal_ipv6_maps() {
    let (testbed, manifests) = setup();
    let _echo = testbed.start_echo_everywhere(8080, 0).expect("echo");
    // `all` reaches every interface of node1's namespace and drops their IPv6 addresses.
    let off = testbed
        .run(
            testbed.node(1),
            "sysctl",
            ["-w", "net.ipv6.conf.all.disable_ipv6=1"],
            Duration::from_secs(5),
        )
        .expect("sysctl");
    assert!(off.status.success(), "{off:?}");
    let mut proxy = start_ebpf(&testbed, &manifests, &[]).expect("switchyard");
    wait_for_full_sync(&mut proxy);
    let replies = testbed.request(
        testbed.pod(1, 2),
        Proto::Tcp,
        addr("198.18.128.10:80"),
        5,
        TIMEOUT,
    );
    assert!(
        replies.iter().all(Result::is_ok),
        "{replies:?}\n{}",
        proxy.stderr()
    );
    let maps = ipv6_maps(&testbed, proxy.pid());
    assert!(maps.iter().all(|(_, max, _)| *max == 1), "{maps:?}");
    let log = proxy.stderr();
    assert!(log.contains("the kernel has IPv6 disabled"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
}
