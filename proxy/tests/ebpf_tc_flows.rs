//! ebpf mode's packet path (tc programs) in a testbed, with the real binary on node1 and
//! clients outside the cluster:
//! - a service address without endpoints is refused from the node (RST, ICMP port
//!   unreachable) and nothing is routed on for it;
//! - PMTU discovery works through a router with a smaller MTU in front of the client, for a
//!   NodePort flow source-NATed to a backend on another node (the router's fragmentation
//!   needed, or IPv6's packet too big, is translated to the backend);
//! - closed flows leave `SWY_CONNTRACK` after their (netfilter) timeout, also one the node
//!   changed while the proxy runs; open ones stay.
//!
//! Sockets of the outside client and of the bulk backend are made in this process, inside the
//! testbed's namespaces, so their errors (ECONNREFUSED) and ports can be checked exactly.
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use aya::maps::{HashMap, Map, MapData};
use switchyard_common::{map_names, CtKey, CtValue};
use switchyard_testbed::netns::{netns_path, run_in_netns, write_sysctl};
use switchyard_testbed::{
    http_get, start_switchyard, wait_for, ChildGuard, Manifests, Node, Place, Testbed, TopologySpec,
};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// Runs `ip args` in `place`; the test fails if it does.
fn ip(testbed: &Testbed, place: Place, args: &[&str]) {
    let out = testbed
        .run(place, "ip", args, Duration::from_secs(10))
        .expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", out.stderr);
}

/// Runs `ip args` inside the namespace called `netns` (one the testbed owns).
fn ip_in(netns: &str, args: &[&str]) {
    let out = std::process::Command::new("ip")
        .arg("-n")
        .arg(netns)
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip -n {netns} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `f` inside the namespace at `path`; the sockets it makes stay there.
fn inside<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> T {
    run_in_netns(path, || Ok(f())).expect("enter the namespace")
}

/// Starts switchyard (ebpf mode) on node1 and waits for its first sync (`/healthz` answers
/// 200 only after it).
fn start(testbed: &Testbed, manifests: &Manifests, extra: &[&str]) -> ChildGuard {
    let node = testbed.node(1);
    let mut args = vec!["--devices=eth0"];
    args.extend_from_slice(extra);
    let proxy = start_switchyard(testbed, node, BIN.as_ref(), "ebpf", manifests, &args)
        .expect("start switchyard");
    wait_for(
        "the first sync",
        Duration::from_secs(30),
        || match http_get(node, 10256, "/healthz") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}; log: {}", proxy.stderr())),
        },
    )
    .expect("switchyard synced");
    proxy
}

// ---------------------------------------------------------------------------------------------
// Services without endpoints

/// An externalIP and a LoadBalancer IP (not node1's addresses), TCP and UDP, no endpoints.
const EMPTY_SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: gone, namespace: demo}
spec:
  type: LoadBalancer
  clusterIP: 198.18.128.60
  externalIPs: [198.18.200.1]
  selector: {app: gone}
  ports:
  - {name: tcp, port: 80, targetPort: 8080, nodePort: 30070, protocol: TCP}
  - {name: udp, port: 80, targetPort: 8080, nodePort: 30070, protocol: UDP}
status:
  loadBalancer:
    ingress: [{ip: 198.18.200.2}]
";

/// Packets received by `device` in the namespace at `netns` (`/proc/net/dev` of the thread's
/// namespace).
fn rx_packets(netns: &Path, device: &str) -> u64 {
    let text = inside(netns, || {
        std::fs::read_to_string("/proc/thread-self/net/dev")
    })
    .expect("read /proc/net/dev");
    text.lines()
        .find_map(|line| {
            let (name, counters) = line.split_once(':')?;
            (name.trim() == device).then(|| counters.split_whitespace().nth(1)?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {device} in {text}"))
}

#[test]
fn a_service_address_without_endpoints_is_refused_from_the_node_and_never_routed_on() {
    let testbed = Testbed::new(TopologySpec {
        nodes: 1,
        pods_per_node: 0,
    })
    .expect("testbed");
    let node = testbed.node(1);
    // node1 routes the service range to a "gateway" it can watch: a veth pair inside node1,
    // whose far end counts whatever node1 sends that way (ARP for the next hop included).
    ip(
        &testbed,
        node.place(),
        &["link", "add", "gw0", "type", "veth", "peer", "name", "gw1"],
    );
    ip(
        &testbed,
        node.place(),
        &["addr", "add", "198.18.201.1/30", "dev", "gw0"],
    );
    ip(&testbed, node.place(), &["link", "set", "gw1", "up"]);
    ip(&testbed, node.place(), &["link", "set", "gw0", "up"]);
    ip(
        &testbed,
        node.place(),
        &[
            "route",
            "add",
            "198.18.200.0/24",
            "via",
            "198.18.201.2",
            "dev",
            "gw0",
        ],
    );
    ip(
        &testbed,
        Place::Client,
        &[
            "route",
            "add",
            "198.18.200.0/24",
            "via",
            "198.18.0.11",
            "dev",
            "eth0",
        ],
    );
    let manifests = Manifests::new().expect("manifests");
    manifests
        .write("nodes.yaml", &testbed.nodes_yaml())
        .expect("write");
    manifests.write("gone.yaml", EMPTY_SERVICE).expect("write");
    let _proxy = start(&testbed, &manifests, &[]);

    let client = &testbed.client().netns_path;
    let before = rx_packets(&node.netns_path, "gw1");
    for to in [addr("198.18.200.1:80"), addr("198.18.200.2:80")] {
        // A generous bound, not a goal: a refusal arrives at once, a black hole never.
        let tcp = inside(client, || {
            TcpStream::connect_timeout(&to, Duration::from_secs(10))
        });
        match tcp {
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "TCP to {to}: {e}"),
            Ok(_) => panic!("TCP to {to} was accepted"),
        }
        let udp = inside(client, || -> std::io::Result<usize> {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.connect(to)?;
            socket.set_read_timeout(Some(Duration::from_secs(10)))?;
            socket.send(b"anyone?\n")?;
            socket.recv(&mut [0u8; 64])
        });
        match udp {
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "UDP to {to}: {e}"),
            Ok(n) => panic!("UDP to {to} got a {n}-byte answer"),
        }
    }
    assert_eq!(
        rx_packets(&node.netns_path, "gw1"),
        before,
        "nothing was routed on for a service address"
    );

    // The watch works: an address in the range that no service has is routed on.
    let stray = inside(client, || {
        TcpStream::connect_timeout(&addr("198.18.200.77:80"), Duration::from_millis(300))
    });
    assert!(stray.is_err(), "nothing answers behind the gateway");
    wait_for(
        "the stray SYN at the gateway",
        Duration::from_secs(10),
        || {
            let now = rx_packets(&node.netns_path, "gw1");
            if now > before {
                Ok(())
            } else {
                Err(now)
            }
        },
    )
    .expect("node1 routes other addresses of the range to the gateway");
}

// ---------------------------------------------------------------------------------------------
// PMTU discovery

/// NodePort 30080 of one family (`IPv4`, `IPv6`) whose only endpoint is node2-pod1's address
/// of that family: source-NATed by node1.
fn remote_backend(family: &str, cluster_ip: &str, pod: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: bulk, namespace: demo}}
spec:
  type: NodePort
  clusterIP: {cluster_ip}
  clusterIPs: [{cluster_ip}]
  ipFamilies: [{family}]
  ipFamilyPolicy: SingleStack
  selector: {{app: bulk}}
  ports:
  - {{name: tcp, port: 80, targetPort: 8080, nodePort: 30080, protocol: TCP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: bulk-1, namespace: demo, labels: {{kubernetes.io/service-name: bulk}}}}
addressType: {family}
ports: [{{name: tcp, port: 8080, protocol: TCP}}]
endpoints:
- {{addresses: [\"{pod}\"], nodeName: node2}}
"
    )
}

/// What bytes the backend sends: more than any window, so the transfer needs full-sized
/// segments.
const BULK_BYTES: usize = 512 * 1024;

/// One family's addresses for [`pmtu_discovery_through_a_smaller_mtu_router`].
struct PmtuPlan {
    /// The router's address on the small-MTU link, with its prefix.
    router: &'static str,
    /// The client's address there (with prefix, and alone).
    client: (&'static str, &'static str),
    /// node1's address, the NodePort's.
    node: &'static str,
    /// The client's network and node1's gateway towards it (the underlay's address).
    client_route: (&'static str, &'static str),
    /// The MSS the client advertises: a 1500-byte MTU's.
    advmss: &'static str,
    /// The router's forwarding sysctl.
    forwarding: &'static str,
    /// The backend's listening address.
    listen: &'static str,
    /// The service's family, cluster IP and endpoint ([`remote_backend`]).
    service: (&'static str, &'static str, &'static str),
}

const PMTU_V4: PmtuPlan = PmtuPlan {
    router: "192.0.2.1/24",
    client: ("192.0.2.10/24", "192.0.2.10"),
    node: "198.18.0.11",
    client_route: ("192.0.2.0/24", "198.18.0.1"),
    advmss: "1460",
    forwarding: "net/ipv4/ip_forward",
    listen: "0.0.0.0:8080",
    service: ("IPv4", "198.18.128.61", "198.19.2.11"),
};

const PMTU_V6: PmtuPlan = PmtuPlan {
    router: "2001:db8:e::1/64",
    client: ("2001:db8:e::10/64", "2001:db8:e::10"),
    node: "2001:db8:0:1::11",
    client_route: ("2001:db8:e::/64", "2001:db8:0:1::1"),
    advmss: "1440",
    forwarding: "net/ipv6/conf/all/forwarding",
    listen: "[::]:8080",
    service: ("IPv6", "2001:db8:5::61", "2001:db8:1:2::11"),
};

#[test]
fn pmtu_discovery_reaches_a_source_natted_backend_through_a_smaller_mtu_router() {
    pmtu_discovery_through_a_smaller_mtu_router(&PMTU_V4);
}

/// The same over IPv6, where routers never fragment: the router's ICMPv6 packet too big must
/// reach the backend (`proxy-ebpf/src/tc/icmp_error6.rs`).
#[test]
fn ipv6_pmtu_discovery_reaches_a_source_natted_backend_through_a_smaller_mtu_router() {
    pmtu_discovery_through_a_smaller_mtu_router(&PMTU_V6);
}

fn pmtu_discovery_through_a_smaller_mtu_router(plan: &PmtuPlan) {
    let testbed = Testbed::new(TopologySpec {
        nodes: 2,
        pods_per_node: 1,
    })
    .expect("testbed");
    // The client sits behind the underlay namespace, which routes for it over a link of MTU
    // 1280. The client advertises an MSS for 1500 (as it would behind a tunnel or a PPPoE
    // hop it does not know about), so full-sized segments only fit once the backend
    // learns the path MTU from the router's ICMP error (fragmentation needed, packet too big).
    let underlay = testbed.underlay_netns().to_owned();
    let client_ns = testbed.client().netns.clone();
    ip_in(
        &underlay,
        &[
            "link", "add", "vr", "type", "veth", "peer", "name", "eth1", "netns", &client_ns,
        ],
    );
    ip_in(&underlay, &["link", "set", "vr", "mtu", "1280"]);
    let v6 = plan.node.contains(':');
    // IPv6 addresses without duplicate address detection, usable at once (as the testbed's).
    let addr_add = |netns: &str, addr: &str, dev: &str| {
        let mut args = vec!["addr", "add", addr, "dev", dev];
        if v6 {
            args.push("nodad");
        }
        ip_in(netns, &args);
    };
    addr_add(&underlay, plan.router, "vr");
    ip_in(&underlay, &["link", "set", "vr", "up"]);
    write_sysctl(&netns_path(&underlay), plan.forwarding, "1").expect("forwarding");
    ip_in(&client_ns, &["link", "set", "eth1", "mtu", "1280"]);
    addr_add(&client_ns, plan.client.0, "eth1");
    ip_in(&client_ns, &["link", "set", "eth1", "up"]);
    let router = plan.router.split('/').next().expect("router address");
    let node_host = format!("{}/{}", plan.node, if v6 { 128 } else { 32 });
    ip_in(
        &client_ns,
        &[
            "route",
            "add",
            &node_host,
            "via",
            router,
            "dev",
            "eth1",
            "src",
            plan.client.1,
            "advmss",
            plan.advmss,
        ],
    );
    let node1 = testbed.node(1);
    let (client_net, gateway) = plan.client_route;
    ip(
        &testbed,
        node1.place(),
        &["route", "add", client_net, "via", gateway, "dev", "eth0"],
    );

    // The backend: one connection, BULK_BYTES, then close.
    let backend = testbed.pod(2, 1);
    let listener = inside(&backend.netns_path, || TcpListener::bind(plan.listen))
        .expect("listen in node2-pod1");
    listener.set_nonblocking(true).expect("nonblocking");
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(e),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        let chunk: Vec<u8> = (0..BULK_BYTES).map(|i| (i % 251) as u8).collect();
        stream.write_all(&chunk)?;
        stream.shutdown(Shutdown::Write)
    });

    let manifests = Manifests::new().expect("manifests");
    manifests
        .write("nodes.yaml", &testbed.nodes_yaml())
        .expect("write");
    let (family, cluster_ip, pod) = plan.service;
    manifests
        .write("bulk.yaml", &remote_backend(family, cluster_ip, pod))
        .expect("write");
    let proxy = start(&testbed, &manifests, &[]);

    let node_port = SocketAddr::new(plan.node.parse().expect("node address"), 30080);
    let received = inside(
        &testbed.client().netns_path,
        || -> std::io::Result<usize> {
            let mut stream = TcpStream::connect_timeout(&node_port, Duration::from_secs(10))?;
            // A bound for a stalled transfer, not a goal: each read waits at most this long.
            stream.set_read_timeout(Some(Duration::from_secs(15)))?;
            let mut total = 0;
            let mut buf = [0u8; 16 * 1024];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => return Ok(total),
                    Ok(n) => total += n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(std::io::Error::new(
                            e.kind(),
                            format!("after {total} bytes: {e}"),
                        ))
                    }
                }
            }
        },
    );
    match received {
        Ok(n) => assert_eq!(n, BULK_BYTES, "the whole transfer"),
        Err(e) => panic!(
            "the transfer stalled ({e}): the router's ICMP error did not reach the backend; \
             log: {}",
            proxy.stderr()
        ),
    }
    server
        .join()
        .expect("server thread")
        .expect("the backend sent everything");
    // It was PMTU discovery (segments sent with DF, or IPv6, the MTU learned from the ICMP
    // error), not fragmentation: the backend's route to the node address carries the MTU.
    let route = testbed
        .run(
            backend.place(),
            "ip",
            ["route", "get", plan.node],
            Duration::from_secs(10),
        )
        .expect("ip route get");
    assert!(
        route.stdout.contains("mtu 1280"),
        "the backend learned the path MTU: {}",
        route.stdout
    );
}

// ---------------------------------------------------------------------------------------------
// Flow lifetimes

/// NodePort 30080 whose only endpoint is node1-pod1 (DNAT only).
const LOCAL_BACKEND: &str = "apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec:
  type: NodePort
  clusterIP: 198.18.128.62
  selector: {app: echo}
  ports:
  - {name: tcp, port: 80, targetPort: 8080, nodePort: 30080, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-1, namespace: demo, labels: {kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{name: tcp, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [198.19.1.11], nodeName: node1}
";

/// node1's `SWY_CONNTRACK` entries that belong to the client's port `port` (either direction).
fn flow_entries(testbed: &Testbed, node: &Node, port: u16) -> Vec<(CtKey, CtValue)> {
    let pin = testbed
        .bpffs_dir(node)
        .join("maps")
        .join(map_names::CONNTRACK);
    let map = MapData::from_pin(&pin).expect("open the pinned conntrack map");
    let map: HashMap<MapData, CtKey, CtValue> =
        HashMap::try_from(Map::from_map_data(map).expect("a map")).expect("a hash map");
    let port = port.to_be();
    map.iter()
        .filter_map(Result::ok)
        .filter(|(k, _)| k.src_port == port || k.dst_port == port)
        .collect()
}

/// A connection from the client to `to`, greeted by the echo server: its local port.
fn connect(testbed: &Testbed, to: SocketAddr) -> (TcpStream, u16) {
    let stream = inside(&testbed.client().netns_path, || {
        TcpStream::connect_timeout(&to, Duration::from_secs(10))
    })
    .expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut greeting = String::new();
    BufReader::new(&stream)
        .read_line(&mut greeting)
        .expect("greeting");
    assert!(greeting.contains("node1-pod1"), "greeted: {greeting:?}");
    let port = stream.local_addr().expect("local address").port();
    (stream, port)
}

#[test]
fn a_closed_flow_leaves_the_conntrack_map_after_its_timeout_and_an_open_one_stays() {
    let testbed = Testbed::new(TopologySpec {
        nodes: 1,
        pods_per_node: 1,
    })
    .expect("testbed");
    let node = testbed.node(1);
    let _echo = testbed
        .start_echo(testbed.pod(1, 1), 8080, 0)
        .expect("echo server");
    let manifests = Manifests::new().expect("manifests");
    manifests
        .write("nodes.yaml", &testbed.nodes_yaml())
        .expect("write");
    manifests.write("echo.yaml", LOCAL_BACKEND).expect("write");
    // A verify (and so a pass over the map) every second.
    let proxy = start(&testbed, &manifests, &["--sync-period=1s"]);
    // ebpf mode follows the node's netfilter timeouts, also when they change while it runs:
    // TIME_WAIT shortened in node1's own namespace after start-up (the default, 120 s, would
    // outlast the wait below; the `conntrack` section's values get there the same way).
    write_sysctl(
        &node.netns_path,
        "net/netfilter/nf_conntrack_tcp_timeout_time_wait",
        "1",
    )
    .expect("nf_conntrack_tcp_timeout_time_wait in node1");
    let frontend = addr("198.18.0.11:30080");

    let (mut open, open_port) = connect(&testbed, frontend);
    let (closing, closing_port) = connect(&testbed, frontend);
    assert_eq!(
        flow_entries(&testbed, node, closing_port).len(),
        2,
        "an open flow has both its entries"
    );
    let conntrack_gauge =
        |want: f64| {
            let series = "switchyard_ebpf_map_entries{map=\"SWY_CONNTRACK\"}";
            wait_for("the conntrack gauge", Duration::from_secs(30), || {
                match switchyard_testbed::metric(node, series) {
                    Some(v) if v == want => Ok(()),
                    other => Err(format!("{other:?}, want {want}")),
                }
            })
            .expect("the gauge counts the map's entries");
        };
    // Set by the verify's sweep, which has read the map anyway.
    conntrack_gauge(4.0);
    // Close both ways: the client's FIN, the server's FIN in answer.
    closing.shutdown(Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    (&closing).read_to_end(&mut rest).expect("read to the end");
    drop(closing);

    wait_for("the closed flow to expire", Duration::from_secs(30), || {
        let left = flow_entries(&testbed, node, closing_port);
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}; log: {}", proxy.stderr()))
        }
    })
    .expect("both entries of the closed flow deleted");
    assert_eq!(
        flow_entries(&testbed, node, open_port).len(),
        2,
        "the idle open flow keeps both entries"
    );
    conntrack_gauge(2.0);
    // And it still works.
    open.write_all(b"again\n").expect("write");
    let mut line = String::new();
    BufReader::new(&open).read_line(&mut line).expect("answer");
    assert!(line.contains("node1-pod1"), "answered: {line:?}");
}
