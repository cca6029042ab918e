//! iptables mode's conntrack reconciler against the real kernel, in testbed namespaces:
//! - a held UDP flow to a serving endpoint survives a controller restart (the first sync
//!   after a restart used to delete every UDP entry of every service), and leaves its
//!   endpoint once that endpoint is removed;
//! - ctnetlink lists UDP entries (filtered in the kernel) and deletes exactly the entry named,
//!   never a newer one with the same tuple.
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use switchyard::conntrack::netlink::NetlinkTable;
use switchyard::conntrack::{ConntrackTable, Entry};
use switchyard_testbed::netns::run_in_netns;
use switchyard_testbed::{
    start_switchyard, wait_for, Hold, Manifests, Pod, Proto, Testbed, TopologySpec,
};

/// The binary under test; `SWITCHYARD_BIN` runs these tests against another build (how the
/// restart test was shown to fail before the reconciler).
fn binary() -> PathBuf {
    std::env::var_os("SWITCHYARD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_switchyard").into())
}

const DNS: &str = "198.18.128.120:53";
const HOLD_INTERVAL: Duration = Duration::from_millis(200);
const PROXY_TIMEOUT: Duration = Duration::from_secs(30);
/// Round trips of the held flow checked after each step.
const CHECKED: usize = 5;

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test address")
}

/// Endpoint conditions as the slice states them.
#[derive(Clone, Copy)]
enum State {
    Ready,
    /// Terminating but still serving: keeps its flows, gets no new ones while another is
    /// ready.
    Terminating,
}

/// A UDP service `dns` (53 -> 8080) whose slice lists `endpoints`.
fn dns_yaml(endpoints: &[(&Pod, State)]) -> String {
    let list: String = endpoints
        .iter()
        .map(|(pod, state)| {
            let conditions = match state {
                State::Ready => "{ready: true, serving: true, terminating: false}",
                State::Terminating => "{ready: false, serving: true, terminating: true}",
            };
            format!(
                "  - addresses: [{}]\n    nodeName: node{}\n    conditions: {conditions}\n",
                pod.ip, pod.node
            )
        })
        .collect();
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: dns, namespace: ct}}
spec:
  clusterIP: 198.18.128.120
  ports:
  - {{name: dns, port: 53, targetPort: 8080, protocol: UDP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dns-1
  namespace: ct
  labels: {{kubernetes.io/service-name: dns}}
addressType: IPv4
ports:
- {{name: dns, port: 8080, protocol: UDP}}
endpoints:
{list}"
    )
}

/// Who answered each of the held flow's round trips from `from` on (errors as `error`).
fn answers_since(hold: &mut Hold, from: usize) -> Vec<String> {
    hold.wait_for_replies(from + CHECKED, HOLD_INTERVAL * 40)
        .expect("held flow keeps reporting")
        .into_iter()
        .skip(from)
        .map(|r| match r.result {
            Ok(reply) => reply.backend,
            Err(e) => format!("error {e}"),
        })
        .collect()
}

/// One metric's value from the node's /metrics, 0 when absent.
fn metric(testbed: &Testbed, name: &str) -> f64 {
    switchyard_testbed::metric(testbed.node(1), name).unwrap_or(0.0)
}

#[test]
fn a_udp_flow_to_a_serving_endpoint_survives_a_restart_and_leaves_with_its_endpoint() {
    let testbed = Testbed::new(TopologySpec {
        nodes: 1,
        pods_per_node: 3,
    })
    .expect("testbed");
    let _echo = testbed.start_echo_everywhere(8080, 8080).expect("echo");
    let (pod1, pod2, client) = (testbed.pod(1, 1), testbed.pod(1, 2), testbed.pod(1, 3));
    let (name1, name2) = (pod1.name.clone(), pod2.name.clone());
    let manifests = Manifests::new().expect("manifests");
    manifests
        .write("dns.yaml", &dns_yaml(&[(pod1, State::Ready)]))
        .expect("write");
    let args = ["--iptables-backend=nft"];
    let start = || {
        start_switchyard(
            &testbed,
            testbed.node(1),
            &binary(),
            "iptables",
            &manifests,
            &args,
        )
        .expect("switchyard")
    };
    let mut proxy = start();
    let fresh = || -> Vec<String> {
        testbed
            .request(client, Proto::Udp, addr(DNS), 4, Duration::from_secs(1))
            .into_iter()
            .map(|r| {
                r.map(|r| r.backend)
                    .unwrap_or_else(|e| format!("error {e}"))
            })
            .collect()
    };
    wait_for("the service to answer", PROXY_TIMEOUT, || {
        let got = fresh();
        if got.iter().all(|b| *b == name1) {
            Ok(())
        } else {
            Err(got)
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.stderr()));
    let mut held = testbed
        .hold(client, Proto::Udp, addr(DNS), HOLD_INTERVAL)
        .expect("hold");
    assert_eq!(answers_since(&mut held, 0), vec![name1.clone(); CHECKED]);

    // While no controller runs, pod1 starts terminating and pod2 becomes ready: the new
    // process's first sync sends new flows to pod2, and must leave the held one alone.
    proxy.kill().expect("kill");
    proxy.wait().expect("reap switchyard");
    manifests
        .write(
            "dns.yaml",
            &dns_yaml(&[(pod1, State::Terminating), (pod2, State::Ready)]),
        )
        .expect("write");
    proxy = start();
    wait_for("new flows to go to pod2", PROXY_TIMEOUT, || {
        let got = fresh();
        if got.iter().all(|b| *b == name2) {
            Ok(())
        } else {
            Err(got)
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.stderr()));
    // Logged once the whole sync (the rules, then the conntrack reconcile) returned.
    wait_for("the first full sync", PROXY_TIMEOUT, || {
        let log = proxy.stderr();
        if log.contains("full=true") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .expect("first sync");
    let mark = held.timeline().len();
    assert_eq!(
        answers_since(&mut held, mark),
        vec![name1.clone(); CHECKED],
        "the held flow stays on its serving endpoint across the restart\n{}",
        proxy.stderr()
    );

    // pod1 goes away: its entry is deleted and the next datagram reaches pod2.
    manifests
        .write("dns.yaml", &dns_yaml(&[(pod2, State::Ready)]))
        .expect("write");
    wait_for(
        "the held flow to move to pod2",
        Duration::from_secs(10),
        || match held.timeline().last() {
            Some(r) if r.result.as_ref().is_ok_and(|r| r.backend == name2) => Ok(()),
            last => Err(last.cloned()),
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.stderr()));
    let mark = held.timeline().len();
    assert_eq!(answers_since(&mut held, mark), vec![name2.clone(); CHECKED]);
    let reconciles = metric(
        &testbed,
        "kubeproxy_conntrack_reconciler_sync_duration_seconds_count{ip_family=\"IPv4\"}",
    );
    assert!(reconciles >= 2.0, "reconciles timed: {reconciles}");
    let deleted = metric(
        &testbed,
        "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv4\"}",
    );
    assert!(deleted >= 1.0, "deleted entries counted: {deleted}");
    assert!(
        !proxy.stderr().contains("conntrack: reconcile failed"),
        "{}",
        proxy.stderr()
    );
}

/// The entries of `listed` from the node to `to`.
fn to(listed: &[Entry], to: SocketAddr) -> Vec<Entry> {
    listed
        .iter()
        .filter(|e| e.flow.original.dst == to)
        .cloned()
        .collect()
}

#[test]
fn ctnetlink_lists_udp_in_the_kernel_and_deletes_exactly_the_entry_named() {
    let testbed = Testbed::new(TopologySpec {
        nodes: 1,
        pods_per_node: 1,
    })
    .expect("testbed");
    let _echo = testbed.start_echo_everywhere(8080, 8080).expect("echo");
    let node = testbed.node(1);
    let pod = SocketAddr::new(IpAddr::V4(testbed.pod(1, 1).ip), 8080);
    // A namespace tracks connections only once a rule needs it (as our chains do).
    let rule = testbed
        .run(
            node,
            "iptables-nft",
            [
                "-A",
                "OUTPUT",
                "-m",
                "conntrack",
                "--ctstate",
                "NEW",
                "-j",
                "ACCEPT",
            ],
            Duration::from_secs(10),
        )
        .expect("iptables-nft");
    assert!(rule.status.success(), "{rule:?}");
    // One UDP and one TCP flow from the node to the pod, not translated.
    let _udp = testbed
        .hold(node, Proto::Udp, pod, HOLD_INTERVAL)
        .expect("udp hold");
    let _tcp = testbed
        .hold(node, Proto::Tcp, pod, HOLD_INTERVAL)
        .expect("tcp hold");
    run_in_netns(&node.netns_path, || {
        let deadline = || Instant::now() + Duration::from_secs(5);
        let mut table = NetlinkTable::default();
        let listed = table.list_udp(deadline()).expect("list");
        assert_eq!(
            table.last_listing_non_udp(),
            0,
            "the kernel filtered the TCP entry out"
        );
        let udp = to(&listed, pod);
        assert_eq!(udp.len(), 1, "{listed:#?}");
        let entry = udp[0].clone();
        assert_eq!(entry.flow.reply.src, pod, "not translated: the pod answers");
        let id = entry.id.expect("the kernel reports entry ids");

        // Unfiltered, the TCP entry is listed (and dropped here): the filter above did work.
        let mut unfiltered = NetlinkTable::unfiltered();
        let all = unfiltered.list_udp(deadline()).expect("list");
        assert!(unfiltered.last_listing_non_udp() >= 1);
        assert_eq!(to(&all, pod), udp);

        // Another id (a newer entry of the same tuple) is not deleted.
        let other = Entry {
            id: Some(id.wrapping_add(1)),
            ..entry.clone()
        };
        let done = table.delete(&[other], deadline()).expect("delete");
        assert_eq!((done.deleted, done.already_gone), (0, 1), "{done:?}");
        let still = table.list_udp(deadline()).expect("list");
        assert!(
            to(&still, pod).iter().any(|e| e.id == Some(id)),
            "{still:#?}"
        );
        // Its own id is.
        let done = table.delete(&[entry], deadline()).expect("delete");
        assert_eq!((done.deleted, done.failed), (1, 0), "{done:?}");
        let after = table.list_udp(deadline()).expect("list");
        assert!(
            !to(&after, pod).iter().any(|e| e.id == Some(id)),
            "{after:#?}"
        );
        Ok(())
    })
    .expect("in the node's namespace");
}
