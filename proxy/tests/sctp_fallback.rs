//! ebpf mode's SCTP fallback on a testbed node, over real SCTP INITs: its `SWYSCTP-*` chains
//! exist exactly while an SCTP service does (no nat rule of ebpf mode's otherwise), every
//! jump into them matches `-p sctp`, they survive SIGTERM like the pinned maps, the mode
//! switches hand SCTP over in both directions leaving nothing of the other mode, and
//! `--cleanup` removes them; in both families (iptables and ip6tables, a dual-stack service).
use std::net::SocketAddr;
use std::time::Duration;

use switchyard_testbed::{
    start_switchyard, wait_for, wait_for_log, ChildGuard, Manifests, Place, Proto, Testbed,
    TopologySpec,
};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const WAIT: Duration = Duration::from_secs(20);

/// A TCP service, always there.
const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 198.18.128.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
  - {addresses: [198.19.2.11], nodeName: node2}
"#;

/// A dual-stack SCTP service on another node's pod.
const SIG: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: sig, namespace: demo}
spec:
  clusterIP: 198.18.128.38
  clusterIPs: [198.18.128.38, "2001:db8:5::38"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: PreferDualStack
  selector: {app: sig}
  ports: [{name: diameter, port: 3868, targetPort: 8080, protocol: SCTP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: sig-1, namespace: demo, labels: {kubernetes.io/service-name: sig}}
addressType: IPv4
ports: [{name: diameter, port: 8080, protocol: SCTP}]
endpoints:
  - {addresses: [198.19.2.12], nodeName: node2}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: sig-6, namespace: demo, labels: {kubernetes.io/service-name: sig}}
addressType: IPv6
ports: [{name: diameter, port: 8080, protocol: SCTP}]
endpoints:
  - {addresses: ["2001:db8:1:2::12"], nodeName: node2}
"#;

/// The SCTP service's address in each family, and the source node1-pod1 is seen from there.
const SIG_TARGETS: [(&str, &str); 2] = [
    ("198.18.128.38:3868", "198.19.1.11"),
    ("[2001:db8:5::38]:3868", "2001:db8:1:1::11"),
];

struct Node {
    testbed: Testbed,
    manifests: Manifests,
    _echo: Vec<ChildGuard>,
}

impl Node {
    fn new() -> Node {
        let testbed = Testbed::new(TopologySpec {
            nodes: 2,
            pods_per_node: 2,
        })
        .expect("testbed");
        let manifests = Manifests::new().expect("manifests");
        manifests.write("web.yaml", WEB).expect("web.yaml");
        let echo = testbed
            .pods()
            .iter()
            .map(|pod| {
                testbed
                    .start_echo_sctp(pod, &pod.name, &[8080], &[], &[8080])
                    .expect("echo")
            })
            .collect();
        Node {
            testbed,
            manifests,
            _echo: echo,
        }
    }

    fn start(&self, mode: &str) -> ChildGuard {
        let proxy = start_switchyard(
            &self.testbed,
            self.testbed.node(1),
            BIN.as_ref(),
            mode,
            &self.manifests,
            &["--iptables-backend=nft"],
        )
        .expect("switchyard");
        let web: SocketAddr = "198.18.128.10:80".parse().expect("web");
        self.testbed
            .wait_for_answer(self.testbed.pod(1, 1), Proto::Tcp, web, WAIT)
            .unwrap_or_else(|e| panic!("programmed: {e}\n{}", proxy.stderr()));
        proxy
    }

    fn stop(&self, mut proxy: ChildGuard) {
        proxy.terminate().expect("SIGTERM");
        let status = proxy
            .wait_timeout(WAIT)
            .expect("wait")
            .expect("exited after SIGTERM");
        assert!(status.success(), "{status}: {}", proxy.stderr());
    }

    /// `switchyard status -o json` of node1.
    fn status_json(&self) -> serde_json::Value {
        let bpffs = format!(
            "--bpffs-path={}",
            self.testbed.bpffs_dir(self.testbed.node(1)).display()
        );
        let out = self
            .testbed
            .run(Place::Node(1), BIN, ["status", "-o", "json", &bpffs], WAIT)
            .expect("switchyard status");
        assert!(out.status.success(), "{}", out.stderr);
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
    }

    /// `iptables-nft-save` and `ip6tables-nft-save` (nat, filter, mangle) of node1.
    fn saved(&self) -> String {
        let mut text = String::new();
        for tool in ["iptables-nft-save", "ip6tables-nft-save"] {
            for table in ["nat", "filter", "mangle"] {
                let out = self
                    .testbed
                    .run(Place::Node(1), tool, ["-t", table], WAIT)
                    .expect(tool);
                text.push_str(&out.stdout);
            }
        }
        text
    }

    /// Whether the SCTP service answers in both families now.
    fn sctp_answers(&self) -> Result<(), String> {
        SIG_TARGETS
            .iter()
            .try_for_each(|(to, seen)| self.sctp_answer(to, seen))
    }

    /// Whether the SCTP service answers in neither family.
    fn sctp_answers_nowhere(&self) -> bool {
        SIG_TARGETS
            .iter()
            .all(|(to, seen)| self.sctp_answer(to, seen).is_err())
    }

    /// Whether node1-pod1 gets the SCTP service's INIT ACK from node2-pod2 now over `to`,
    /// seen from `seen`.
    fn sctp_answer(&self, to: &str, seen: &str) -> Result<(), String> {
        let to: SocketAddr = to.parse().expect("sig");
        match self
            .testbed
            .request(
                self.testbed.pod(1, 1),
                Proto::Sctp,
                to,
                1,
                Duration::from_millis(500),
            )
            .pop()
        {
            Some(Ok(reply)) if reply.backend == "node2-pod2" => {
                assert_eq!(reply.seen_source.ip().to_string(), seen);
                Ok(())
            }
            other => Err(format!("{to}: {other:?}")),
        }
    }

    fn wait_sctp(&self, what: &str) {
        wait_for(what, WAIT, || self.sctp_answers()).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Whether node1 has an `ip` or `ip6` nat nftables table (whose base chains would hook
    /// NAT).
    fn has_nat_table(&self) -> bool {
        let out = self
            .testbed
            .run(Place::Node(1), "nft", ["list", "tables"], WAIT)
            .expect("nft list tables");
        out.stdout
            .lines()
            .any(|l| matches!(l.trim(), "table ip nat" | "table ip6 nat"))
    }

    fn fallback_chains(&self) -> Vec<String> {
        chains(&self.saved(), "SWYSCTP-")
    }
}

/// Declared chains starting with `prefix`.
fn chains(saved: &str, prefix: &str) -> Vec<String> {
    saved
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split(' ').next())
        .filter(|c| c.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_fallback_exists_while_an_sctp_service_does_and_every_mode_change_hands_it_over() {
    let node = Node::new();

    // ebpf mode without an SCTP service: no nat rule of ours at all.
    let ebpf = node.start("ebpf");
    let saved = node.saved();
    assert!(!saved.contains("SWY"), "{saved}");
    assert!(!node.has_nat_table(), "{saved}");
    assert!(node.sctp_answers_nowhere());

    // An SCTP service: served through SWYSCTP-* chains entered for SCTP only.
    node.manifests.write("sig.yaml", SIG).expect("sig.yaml");
    node.wait_sctp("SCTP through ebpf mode's fallback");
    let saved = node.saved();
    // In each family: iptables and ip6tables.
    for cluster_ip in ["198.18.128.38/32", "2001:db8:5::38/128"] {
        let rule = format!("-A SWYSCTP-SERVICES -d {cluster_ip} -p sctp");
        assert!(saved.contains(&rule), "{rule}: {saved}");
    }
    assert!(chains(&saved, "SWY-").is_empty(), "{saved}");
    let jumps: Vec<&str> = saved
        .lines()
        .filter(|l| l.starts_with("-A ") && !l.starts_with("-A SWYSCTP-"))
        .collect();
    assert!(!jumps.is_empty(), "{saved}");
    for jump in jumps {
        assert!(jump.contains("-p sctp"), "{jump}");
    }
    // `switchyard status` shows the SCTP port beside the maps' ports, in each family.
    let report = node.status_json();
    let rows = report["services"].as_array().cloned().unwrap_or_default();
    for (cluster_ip, backend) in [
        ("198.18.128.38", "198.19.2.12"),
        ("2001:db8:5::38", "2001:db8:1:2::12"),
    ] {
        let sctp: Vec<&serde_json::Value> = rows
            .iter()
            .filter(|r| r["service"] == "demo/sig:diameter/SCTP" && r["address"] == cluster_ip)
            .collect();
        assert_eq!(sctp.len(), 1, "{cluster_ip}: {report:#}");
        assert_eq!(sctp[0]["backends"][0]["address"], backend, "{report:#}");
    }
    assert!(
        rows.iter().any(|r| r["service"] == "demo/web:http/TCP"),
        "{report:#}"
    );

    // The last SCTP service goes: so do the chains, and SCTP is no longer translated.
    node.manifests.remove("sig.yaml").expect("rm sig.yaml");
    wait_for("the fallback chains to go", WAIT, || {
        let left = node.fallback_chains();
        if left.is_empty() {
            Ok(())
        } else {
            Err(left)
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(node.sctp_answers_nowhere());
    assert!(!node.saved().contains("SWY"));
    // Nor does the nat table the fallback made iptables-nft create: no NAT hook is left.
    assert!(!node.has_nat_table(), "{}", node.saved());

    // Back again; SIGTERM leaves it serving, as it leaves the pinned maps.
    node.manifests.write("sig.yaml", SIG).expect("sig.yaml");
    node.wait_sctp("SCTP through the fallback again");
    node.stop(ebpf);
    node.sctp_answers().expect("SCTP after SIGTERM");

    // ebpf -> iptables: iptables mode serves SCTP with its own chains and removes the
    // fallback's after its first sync.
    let mut iptables = node.start("iptables");
    wait_for_log(
        &mut iptables,
        "handover",
        WAIT,
        &[&["handover: no ebpf mode state left"]],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(node.fallback_chains().is_empty(), "{}", node.saved());
    node.sctp_answers().expect("SCTP in iptables mode");
    node.stop(iptables);

    // iptables -> ebpf: the fallback comes back, iptables mode's chains go.
    let mut ebpf = node.start("ebpf");
    wait_for_log(
        &mut ebpf,
        "handover",
        WAIT,
        &[&["handover: no iptables mode state left"]],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let saved = node.saved();
    assert!(chains(&saved, "SWY-").is_empty(), "{saved}");
    assert!(!node.fallback_chains().is_empty(), "{saved}");
    node.sctp_answers()
        .expect("SCTP in ebpf mode after the switch");
    node.stop(ebpf);

    // --cleanup removes the fallback too.
    let bpffs = format!(
        "--bpffs-path={}",
        node.testbed.bpffs_dir(node.testbed.node(1)).display()
    );
    let out = node
        .testbed
        .run(Place::Node(1), BIN, ["--cleanup", &bpffs], WAIT)
        .expect("cleanup");
    assert!(out.status.success(), "{}", out.stderr);
    let saved = node.saved();
    assert!(!saved.contains("SWY"), "{saved}");
    assert!(node.sctp_answers_nowhere());
}
