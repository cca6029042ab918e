//! Smoke tests of the testbed itself (no proxy): pod-to-pod (same node and across
//! nodes), node-to-pod, pod-to-node and client-to-node connectivity over both families, DNAT between
//! same-node pods, held flows, process placement, and cleanup on drop and on panic.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_testbed::netns::NETNS_DIR;
use switchyard_testbed::{
    HoldSpec, Place, Proto, RequestError, RequestSpec, Testbed, TopologySpec,
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn testbed(nodes: usize, pods_per_node: usize) -> Testbed {
    let mut tb = Testbed::new(TopologySpec {
        nodes,
        pods_per_node,
    })
    .expect("building the testbed");
    tb.set_probe_binary(env!("CARGO_BIN_EXE_swy-probe"));
    tb
}

/// Namespaces and cgroup directories of testbed `id` that still exist.
fn leftovers(id: &str, cgroup_root: &Path) -> Vec<PathBuf> {
    let mut left: Vec<PathBuf> = std::fs::read_dir(NETNS_DIR)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{id}-"))
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    if cgroup_root.exists() {
        left.push(cgroup_root.to_owned());
    }
    left
}

/// Whether `pid` is a live (not zombie) process; a killed orphan may linger as a
/// zombie until init reaps it.
fn is_running(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    match stat.rsplit_once(')') {
        Some((_, rest)) => !matches!(rest.trim_start().chars().next(), Some('Z' | 'X') | None),
        None => false,
    }
}

fn sock(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

#[test]
fn pods_reach_pods_and_client_reaches_node() {
    let tb = testbed(2, 2);
    let id = tb.id().to_owned();
    let cgroup_root = tb.cgroup_root().to_owned();
    assert_eq!(tb.netns_names().len(), 1 + 2 + 4 + 1);
    for name in tb.netns_names() {
        assert!(Path::new(NETNS_DIR).join(name).exists(), "{name} missing");
    }
    for node in tb.nodes() {
        assert!(node.cgroup.starts_with(&cgroup_root));
        assert!(node.cgroup.is_dir());
    }

    let src = tb.pod(1, 1);
    let _servers: Vec<_> = tb
        .pods()
        .iter()
        .map(|pod| tb.start_echo(pod, 8080, 8081).expect("echo server"))
        .collect();

    // Pods are routed, not bridged: the node end of each pod veth carries the gateway
    // as a /32 and the node has a /32 host route per pod.
    let routes = tb
        .run(Place::Node(1), "ip", ["-4", "route", "show"], TIMEOUT)
        .expect("ip route in node1");
    let links = tb
        .run(Place::Node(1), "ip", ["-o", "link", "show"], TIMEOUT)
        .expect("ip link in node1");
    assert!(!links.stdout.contains("bridge"), "{}", links.stdout);
    for pod in tb.pods_on(1) {
        let host_route = format!("{} dev {} ", pod.ip, pod.host_veth);
        assert!(
            routes.stdout.lines().any(|l| l.starts_with(&host_route)),
            "no {host_route:?} in {}",
            routes.stdout
        );
    }

    // node1-pod2 is the same-node case: the packets are routed through node1's stack
    // (vp1 -> vp2), and the server still sees the client pod's own address.
    for dst in [tb.pod(2, 1), tb.pod(2, 2), tb.pod(1, 2)] {
        for proto in [Proto::Tcp, Proto::Udp] {
            let port = if proto == Proto::Tcp { 8080 } else { 8081 };
            let results = tb.request(src, proto, sock(dst.ip, port), 3, TIMEOUT);
            assert_eq!(results.len(), 3);
            for r in results {
                let reply = r.unwrap_or_else(|e| panic!("{proto} to {}: {e}", dst.name));
                assert_eq!(reply.backend, dst.name);
                assert_eq!(reply.seen_source.ip(), IpAddr::from(src.ip));
                assert_eq!(reply.replied_from, sock(dst.ip, port));
            }
        }
        let spec = RequestSpec::new(Proto::Udp, sock(dst.ip, 8081)).unconnected(true);
        let results = tb.request_with(src, &spec).expect("unconnected request");
        let reply = results[0].clone().expect("unconnected udp reply");
        assert_eq!(reply.backend, dst.name);
        assert_eq!(reply.replied_from, sock(dst.ip, 8081));
    }

    // A process in node1's host network reaches its own pod (from the pod gateway
    // address on the pod veth) and a pod on node2 (from its underlay address).
    let node1 = tb.node(1);
    for (dst, seen) in [
        (tb.pod(1, 1), node1.pod_gateway),
        (tb.pod(2, 1), node1.underlay_ip),
    ] {
        for (proto, port) in [(Proto::Tcp, 8080), (Proto::Udp, 8081)] {
            for r in tb.request(Place::Node(1), proto, sock(dst.ip, port), 1, TIMEOUT) {
                let reply = r.unwrap_or_else(|e| panic!("node1 {proto} to {}: {e}", dst.name));
                assert_eq!(reply.backend, dst.name);
                assert_eq!(reply.seen_source.ip(), IpAddr::from(seen));
                assert_eq!(reply.replied_from, sock(dst.ip, port));
            }
        }
    }

    // Pods reach the underlay address of their own node and of another node, and are
    // seen with their pod address.
    let node2 = tb.node(2);
    let _host = tb
        .start_echo_in(node2, &node2.name, &[9090], &[9091])
        .expect("host-network echo server");
    for pod in [tb.pod(2, 1), tb.pod(1, 1)] {
        for (proto, port) in [(Proto::Tcp, 9090), (Proto::Udp, 9091)] {
            for r in tb.request(pod, proto, sock(node2.underlay_ip, port), 1, TIMEOUT) {
                let reply = r.unwrap_or_else(|e| panic!("{} {proto} to node2: {e}", pod.name));
                assert_eq!(reply.backend, "node2");
                assert_eq!(reply.seen_source.ip(), IpAddr::from(pod.ip));
            }
        }
    }

    // The external client reaches a server in node2's host network and is seen with
    // its real address.
    for (proto, port) in [(Proto::Tcp, 9090), (Proto::Udp, 9091)] {
        let results = tb.request(
            Place::Client,
            proto,
            sock(node2.underlay_ip, port),
            2,
            TIMEOUT,
        );
        for r in results {
            let reply = r.unwrap_or_else(|e| panic!("client {proto} to node2: {e}"));
            assert_eq!(reply.backend, "node2");
            assert_eq!(reply.seen_source.ip(), IpAddr::from(tb.client().ip));
        }
    }

    // Failure classification: closed ports are refused (RST / ICMP port unreachable),
    // an address nobody answers ARP for times out.
    let closed = sock(tb.pod(2, 1).ip, 1);
    assert_eq!(
        tb.request(src, Proto::Tcp, closed, 1, TIMEOUT),
        vec![Err(RequestError::Refused)]
    );
    assert_eq!(
        tb.request(src, Proto::Udp, closed, 1, TIMEOUT),
        vec![Err(RequestError::Refused)]
    );
    // An unassigned address in a node's pod CIDR is unreachable, from a local pod and
    // from another node's pod alike (ICMP host unreachable, no waiting).
    for from in [tb.pod(1, 1), tb.pod(2, 1)] {
        assert_eq!(
            tb.request(
                from,
                Proto::Tcp,
                sock(Ipv4Addr::new(198, 19, 1, 99), 80),
                1,
                TIMEOUT
            ),
            vec![Err(RequestError::Refused)],
            "from {}",
            from.name
        );
    }
    let nobody = sock(Ipv4Addr::new(198, 18, 0, 99), 80);
    assert_eq!(
        tb.request(
            Place::Client,
            Proto::Tcp,
            nobody,
            1,
            Duration::from_millis(300)
        ),
        vec![Err(RequestError::Timeout)]
    );

    drop(_servers);
    drop(_host);
    drop(tb);
    assert_eq!(leftovers(&id, &cgroup_root), Vec::<PathBuf>::new());
}

/// The same paths over IPv6: pod to pod (same node and across nodes), node to pod, pod to
/// node, client to node, each seen with the sender's own IPv6 address; addresses outside the
/// plan are refused at once (nothing is routed out of the sandbox).
#[test]
fn ipv6_paths_work_like_ipv4() {
    let tb = testbed(2, 2);
    let _servers: Vec<_> = tb
        .pods()
        .iter()
        .map(|pod| tb.start_echo(pod, 8080, 8081).expect("echo server"))
        .collect();
    // The plan: documentation addresses only, usable at once (no tentative addresses).
    for place in [
        Place::Node(1),
        Place::Pod { node: 2, pod: 1 },
        Place::Client,
    ] {
        let out = tb
            .run(
                place,
                "ip",
                ["-6", "-o", "addr", "show", "scope", "global"],
                TIMEOUT,
            )
            .expect("ip -6 addr");
        assert!(!out.stdout.is_empty(), "{place}: no global IPv6 address");
        for line in out.stdout.lines() {
            assert!(line.contains("inet6 2001:db8:"), "{place}: {line}");
            assert!(!line.contains("tentative"), "{place}: {line}");
        }
    }
    let src = tb.pod(1, 1);
    for dst in [tb.pod(2, 1), tb.pod(1, 2)] {
        for (proto, port) in [(Proto::Tcp, 8080), (Proto::Udp, 8081)] {
            for r in tb.request(src, proto, sock(dst.ipv6(), port), 2, TIMEOUT) {
                let reply = r.unwrap_or_else(|e| panic!("{proto} to {} over IPv6: {e}", dst.name));
                assert_eq!(reply.backend, dst.name);
                assert_eq!(reply.seen_source.ip(), IpAddr::from(src.ipv6()));
                assert_eq!(reply.replied_from, sock(dst.ipv6(), port));
            }
        }
        // Unconnected UDP: the reply comes from the address that was asked.
        let spec = RequestSpec::new(Proto::Udp, sock(dst.ipv6(), 8081)).unconnected(true);
        let reply = tb.request_with(src, &spec).expect("unconnected")[0]
            .clone()
            .expect("unconnected udp reply over IPv6");
        assert_eq!(reply.replied_from, sock(dst.ipv6(), 8081));
    }
    // IPv4 still reaches the same servers, seen with IPv4 addresses.
    let reply = tb.request(src, Proto::Udp, sock(tb.pod(2, 1).ip, 8081), 1, TIMEOUT)[0]
        .clone()
        .expect("IPv4 reply");
    assert_eq!(reply.seen_source.ip(), IpAddr::from(src.ip));

    let node1 = tb.node(1);
    for (dst, seen) in [
        (tb.pod(1, 1), node1.pod_gateway_v6),
        (tb.pod(2, 1), node1.ipv6()),
    ] {
        for r in tb.request(
            Place::Node(1),
            Proto::Tcp,
            sock(dst.ipv6(), 8080),
            1,
            TIMEOUT,
        ) {
            let reply = r.unwrap_or_else(|e| panic!("node1 to {} over IPv6: {e}", dst.name));
            assert_eq!(reply.backend, dst.name);
            assert_eq!(reply.seen_source.ip(), IpAddr::from(seen));
        }
    }
    let node2 = tb.node(2);
    let _host = tb
        .start_echo_in(node2, &node2.name, &[9090], &[9091])
        .expect("host-network echo server");
    for (place, seen) in [
        (Place::from(tb.pod(1, 1)), IpAddr::from(tb.pod(1, 1).ipv6())),
        (Place::Client, IpAddr::from(tb.client().ipv6)),
    ] {
        for (proto, port) in [(Proto::Tcp, 9090), (Proto::Udp, 9091)] {
            for r in tb.request(place, proto, sock(node2.ipv6(), port), 1, TIMEOUT) {
                let reply = r.unwrap_or_else(|e| panic!("{place} {proto} to node2 over IPv6: {e}"));
                assert_eq!(reply.backend, "node2");
                assert_eq!(reply.seen_source.ip(), seen);
            }
        }
    }
    // Closed ports, unassigned pod addresses and addresses outside the plan are refused.
    let closed = sock(tb.pod(2, 1).ipv6(), 1);
    for proto in [Proto::Tcp, Proto::Udp] {
        assert_eq!(
            tb.request(src, proto, closed, 1, TIMEOUT),
            vec![Err(RequestError::Refused)]
        );
    }
    let unassigned: IpAddr = "2001:db8:1:1::99".parse().expect("literal");
    let outside: IpAddr = "2001:db8:ffff::1".parse().expect("literal");
    // (The underlay's ICMPv6 error for a pod's packet has no way back to the pod, which
    // just gets no answer; the node's own address is on the underlay.)
    assert!(tb.request(
        tb.pod(1, 1),
        Proto::Tcp,
        sock(outside, 80),
        1,
        Duration::from_millis(300)
    )[0]
    .is_err());
    for (place, to) in [
        (Place::from(tb.pod(2, 1)), unassigned),
        (Place::Node(2), outside),
    ] {
        assert_eq!(
            tb.request(place, Proto::Tcp, sock(to, 80), 1, TIMEOUT),
            vec![Err(RequestError::Refused)],
            "{place} to {to}"
        );
    }
}

/// The reason pods are routed: DNAT on the node between two pods of the same node.
/// With a pod bridge the backend's reply would be switched straight to the client pod,
/// bypassing conntrack, and the client would see the backend's address (or a RST).
#[test]
fn dnat_between_pods_of_the_same_node() {
    let tb = testbed(1, 2);
    let vip = Ipv4Addr::new(198, 18, 128, 10);
    let backend = tb.pod(1, 2);
    for (proto, port) in [("tcp", 8080), ("udp", 8081)] {
        let dnat = [
            "-t".to_owned(),
            "nat".to_owned(),
            "-A".to_owned(),
            "PREROUTING".to_owned(),
            "-d".to_owned(),
            format!("{vip}/32"),
            "-p".to_owned(),
            proto.to_owned(),
            "--dport".to_owned(),
            "80".to_owned(),
            "-j".to_owned(),
            "DNAT".to_owned(),
            "--to-destination".to_owned(),
            format!("{}:{port}", backend.ip),
        ];
        // `cargo xtask setup` installs iptables; without it this test must fail, not pass.
        let out = tb
            .run(Place::Node(1), "iptables", dnat, TIMEOUT)
            .expect("run iptables in node1");
        assert!(out.status.success(), "iptables DNAT in node1: {out:?}");
    }
    let _echo = tb.start_echo(backend, 8080, 8081).expect("echo server");
    let client = tb.pod(1, 1);
    for proto in [Proto::Tcp, Proto::Udp] {
        for r in tb.request(client, proto, sock(vip, 80), 2, TIMEOUT) {
            let reply = r.unwrap_or_else(|e| panic!("{proto} to {vip}:80: {e}"));
            assert_eq!(reply.backend, backend.name);
            assert_eq!(reply.seen_source.ip(), IpAddr::from(client.ip));
            assert_eq!(reply.replied_from, sock(vip, 80));
        }
    }
    // Unconnected UDP shows that the reply really was reverse-NATed by the node.
    let spec = RequestSpec::new(Proto::Udp, sock(vip, 80)).unconnected(true);
    let results = tb.request_with(client, &spec).expect("unconnected request");
    let reply = results[0].clone().expect("unconnected udp reply");
    assert_eq!(reply.backend, backend.name);
    assert_eq!(reply.replied_from, sock(vip, 80));
}

/// `swy-probe hold`: one socket per flow, answered round trip after round trip by the
/// same server, seen with the same source port; one-shot requests still work meanwhile.
#[test]
fn held_flows_keep_answering_on_one_socket() {
    let tb = testbed(2, 1);
    let server = tb.pod(2, 1);
    let echo = tb.start_echo(server, 8080, 8081).expect("echo server");
    let client = tb.pod(1, 1);
    let interval = Duration::from_millis(50);
    let mut flows = Vec::new();
    for (proto, port) in [(Proto::Tcp, 8080), (Proto::Udp, 8081)] {
        let hold = tb
            .hold(client, proto, sock(server.ip, port), interval)
            .unwrap_or_else(|e| panic!("{proto} hold: {e}"));
        assert_eq!(hold.timeline().len(), 1, "returns at the first round trip");
        flows.push(hold);
    }
    // A one-shot request to the same server, while the flows are open.
    for r in tb.request(client, Proto::Tcp, sock(server.ip, 8080), 3, TIMEOUT) {
        assert_eq!(r.expect("one-shot tcp request").backend, server.name);
    }
    for hold in &mut flows {
        let what = hold.describe();
        let timeline = hold
            .wait_for_replies(10, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let first = timeline[0].result.clone().expect("first round trip");
        assert_eq!(first.backend, server.name);
        assert_eq!(first.seen_source.ip(), IpAddr::from(client.ip));
        for (i, r) in timeline.iter().enumerate() {
            let reply = r
                .result
                .as_ref()
                .unwrap_or_else(|e| panic!("{what}: round trip {i} failed: {e}"));
            assert_eq!(reply.backend, server.name, "{what}");
            // One socket: the server sees the same source port every time.
            assert_eq!(
                reply.seen_source, first.seen_source,
                "{what}: round trip {i}"
            );
            if i > 0 {
                assert!(r.at >= timeline[i - 1].at, "{what}: time runs backwards");
            }
        }
        // Paced by the interval, not flooding.
        let span = timeline[9].at - timeline[0].at;
        assert!(span >= interval * 8, "{what}: 10 round trips in {span:?}");
        assert!(hold.elapsed() >= timeline[9].at, "{what}: clocks");
    }

    // The server goes away and comes back: the UDP flow is refused meanwhile and then
    // answered again on the same socket; the TCP flow never reconnects.
    let sources: Vec<SocketAddr> = flows
        .iter()
        .map(|f| f.replies_so_far()[0].clone().unwrap().seen_source)
        .collect();
    drop(echo);
    for hold in &mut flows {
        let n = hold.timeline().len();
        let timeline = hold
            .wait_for_replies(n + 3, Duration::from_secs(10))
            .expect("keeps reporting");
        assert!(
            timeline[n + 1..].iter().all(|r| r.result.is_err()),
            "{}: {timeline:?}",
            hold.describe()
        );
    }
    let _echo = tb
        .start_echo(server, 8080, 8081)
        .expect("echo server again");
    let udp = &mut flows[1];
    let n = udp.timeline().len();
    let timeline = udp
        .wait_for_replies(n + 3, Duration::from_secs(10))
        .expect("udp keeps going");
    let last = timeline
        .last()
        .unwrap()
        .result
        .clone()
        .expect("answered again");
    assert_eq!(last.seen_source, sources[1], "the same UDP socket");
    let stopped = flows.remove(0).stop();
    let answered: Vec<SocketAddr> = stopped
        .iter()
        .filter_map(|r| r.result.as_ref().ok().map(|r| r.seen_source))
        .collect();
    assert!(answered.len() >= 10);
    assert!(answered.iter().all(|s| *s == sources[0]), "{stopped:?}");
    assert!(
        stopped.last().unwrap().result.is_err(),
        "the TCP flow does not reconnect: {stopped:?}"
    );

    // --count: the probe stops by itself after that many round trips.
    let spec = HoldSpec::new(Proto::Udp, sock(server.ip, 8081), interval).count(3);
    let mut counted = tb.hold_with(client, &spec).expect("counted hold");
    let done = counted.wait_done(Duration::from_secs(5)).expect("ends");
    assert_eq!(done.len(), 3);
    assert!(done.iter().all(|r| r.result.is_ok()), "{done:?}");

    // A TCP flow that cannot connect reports that once and ends; a UDP flow to a closed
    // port keeps its socket and reports every refusal.
    let closed = sock(server.ip, 1);
    let mut refused = tb
        .hold(client, Proto::Tcp, closed, interval)
        .expect("tcp hold to a closed port starts");
    assert_eq!(refused.replies_so_far(), vec![Err(RequestError::Refused)]);
    assert!(refused.wait_for_replies(2, Duration::from_secs(2)).is_err());
    let mut udp_refused = tb
        .hold(client, Proto::Udp, closed, interval)
        .expect("udp hold to a closed port starts");
    let timeline = udp_refused
        .wait_for_replies(3, Duration::from_secs(5))
        .expect("keeps going");
    assert!(
        timeline
            .iter()
            .all(|r| r.result == Err(RequestError::Refused)),
        "{timeline:?}"
    );
}

#[test]
fn spawned_processes_run_in_their_namespace_and_cgroup() {
    let tb = testbed(2, 1);
    let mount = tb.cgroup_root().parent().expect("cgroup mount").to_owned();
    for (place, netns_path, cgroup) in [
        (
            Place::Pod { node: 2, pod: 1 },
            tb.pod(2, 1).netns_path.clone(),
            tb.node(2).cgroup.clone(),
        ),
        (
            Place::Node(1),
            tb.node(1).netns_path.clone(),
            tb.node(1).cgroup.clone(),
        ),
        (
            Place::Client,
            tb.client().netns_path.clone(),
            tb.client().cgroup.clone(),
        ),
    ] {
        let out = tb
            .run(
                place,
                "sh",
                ["-c", "readlink /proc/self/ns/net; cat /proc/self/cgroup"],
                TIMEOUT,
            )
            .expect("run sh");
        assert!(out.status.success(), "{place}: {out:?}");
        let inode = std::fs::metadata(&netns_path).expect("netns file").ino();
        let mut lines = out.stdout.lines();
        assert_eq!(
            lines.next(),
            Some(format!("net:[{inode}]").as_str()),
            "{place}"
        );
        let rel = cgroup.strip_prefix(&mount).expect("under mount");
        let expected = format!("0::/{}", rel.display());
        assert!(
            lines.any(|l| l == expected),
            "{place}: expected {expected} in {:?}",
            out.stdout
        );
    }

    // Per-namespace sysctls: nodes forward (both families), pods and the client don't;
    // IPv6 is on but configures nothing by itself.
    let sysctl = |place: Place, key: &str| {
        let out = tb
            .run(place, "cat", [format!("/proc/sys/net/{key}")], TIMEOUT)
            .expect("run cat");
        out.stdout.trim().to_owned()
    };
    assert_eq!(sysctl(Place::Node(1), "ipv4/ip_forward"), "1");
    assert_eq!(
        sysctl(Place::Pod { node: 1, pod: 1 }, "ipv4/ip_forward"),
        "0"
    );
    assert_eq!(sysctl(Place::Client, "ipv4/ip_forward"), "0");
    assert_eq!(sysctl(Place::Node(1), "ipv6/conf/all/forwarding"), "1");
    assert_eq!(
        sysctl(Place::Pod { node: 1, pod: 1 }, "ipv6/conf/all/forwarding"),
        "0"
    );
    assert_eq!(sysctl(Place::Client, "ipv6/conf/all/forwarding"), "0");
    for place in [
        Place::Node(1),
        Place::Pod { node: 1, pod: 1 },
        Place::Client,
    ] {
        assert_eq!(sysctl(place, "ipv6/conf/eth0/disable_ipv6"), "0", "{place}");
        assert_eq!(sysctl(place, "ipv6/conf/eth0/accept_ra"), "0", "{place}");
        assert_eq!(
            sysctl(place, "ipv6/conf/eth0/router_solicitations"),
            "0",
            "{place}"
        );
    }

    // A dropped guard really kills its child.
    let mut child = tb
        .spawn(Place::Node(1), "sleep", ["60"])
        .expect("spawn sleep");
    let pid = child.pid();
    assert_eq!(child.try_wait().expect("try_wait"), None);
    drop(child);
    assert!(!is_running(pid), "sleep {pid} survived its guard");

    // SIGTERM through the guard.
    let mut child = tb
        .spawn(Place::Client, "sleep", ["60"])
        .expect("spawn sleep");
    child.terminate().expect("SIGTERM");
    let status = child
        .wait_timeout(TIMEOUT)
        .expect("wait")
        .expect("sleep should exit on SIGTERM");
    assert!(!status.success());
}

#[test]
fn drop_kills_unguarded_processes() {
    let tb = testbed(1, 1);
    let id = tb.id().to_owned();
    let cgroup_root = tb.cgroup_root().to_owned();
    // A grandchild the guard doesn't know about: only the cgroup teardown catches it.
    let mut sh = tb
        .spawn(
            Place::Pod { node: 1, pod: 1 },
            "sh",
            ["-c", "sleep 60 >/dev/null 2>&1 & echo $!"],
        )
        .expect("spawn sh");
    let pid_line = sh
        .wait_for_stdout_line(|l| !l.is_empty(), TIMEOUT)
        .expect("grandchild pid");
    let grandchild: u32 = pid_line.trim().parse().expect("pid");
    assert!(is_running(grandchild));
    drop(tb);
    assert!(
        !is_running(grandchild),
        "grandchild {grandchild} survived teardown"
    );
    drop(sh);
    assert_eq!(leftovers(&id, &cgroup_root), Vec::<PathBuf>::new());
}

#[test]
fn panic_inside_a_test_still_removes_everything() {
    let seen: Arc<Mutex<Option<(String, PathBuf)>>> = Arc::default();
    let seen_in = Arc::clone(&seen);
    let result = std::panic::catch_unwind(move || {
        let tb = testbed(2, 1);
        *seen_in.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((tb.id().to_owned(), tb.cgroup_root().to_owned()));
        let _echo = tb.start_echo(tb.pod(1, 1), 8080, 0).expect("echo server");
        panic!("deliberate panic with a live testbed");
    });
    assert!(result.is_err());
    let (id, cgroup_root) = seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .expect("testbed was built");
    assert_eq!(leftovers(&id, &cgroup_root), Vec::<PathBuf>::new());
}

#[test]
fn invalid_specs_are_rejected_without_side_effects() {
    assert!(Testbed::new(TopologySpec {
        nodes: 0,
        pods_per_node: 1
    })
    .is_err());
    assert!(Testbed::new(TopologySpec {
        nodes: 1,
        pods_per_node: 500
    })
    .is_err());
}

#[test]
fn probe_binary_is_found_next_to_the_test_executable() {
    let found = switchyard_testbed::probe_binary().expect("swy-probe located");
    assert!(found.is_file(), "{}", found.display());
}
