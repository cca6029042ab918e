//! Switching a node between modes: each mode removes the other's leftovers, so traffic is
//! never translated twice and no stale chain or pin blocks the new mode's syncs.
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use switchyard_testbed::supervisor::Supervisor;
use switchyard_testbed::{
    start_switchyard, wait_for, Destination, LoadSpec, Manifests, Node, Place, Proto, Recorder,
    Testbed, TopologySpec,
};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

#[test]
fn ebpf_to_iptables_and_back() {
    let testbed = Testbed::new(TopologySpec {
        nodes: 2,
        pods_per_node: 2,
    })
    .expect("testbed");
    let _echo = testbed.start_echo_everywhere(8080, 8080).expect("echo");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/demo");
    let manifests = Manifests::copy_of(&examples).expect("manifests");
    let web: SocketAddr = "198.18.128.10:80".parse().expect("addr");
    let client = testbed.pod(1, 2);
    let node = testbed.node(1);
    let serving = |proxy: &switchyard_testbed::ChildGuard| {
        wait_for(
            "the ClusterIP to answer after a full sync and the handover",
            Duration::from_secs(20),
            || {
                let log = proxy.stderr();
                let ok = testbed
                    .request(client, Proto::Tcp, web, 5, Duration::from_secs(1))
                    .iter()
                    .all(Result::is_ok);
                // The other mode's state goes after the first sync, on its own thread.
                if ok && log.contains("full=true") && log.contains("handover: no") {
                    Ok(())
                } else {
                    Err(log)
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    };
    let save = || {
        let out = testbed
            .run(
                Place::Node(1),
                "iptables-nft-save",
                Vec::<String>::new(),
                Duration::from_secs(30),
            )
            .expect("iptables-save");
        out.stdout
    };
    // ebpf mode source-NATs in its tc programs: no nat rule of ours may exist while it runs
    // (one would register netfilter's NAT hook, and with it conntrack for every flow).
    let assert_no_nat_rules = |when: &str| {
        let out = testbed
            .run(
                Place::Node(1),
                "iptables-nft-save",
                ["-t", "nat"],
                Duration::from_secs(30),
            )
            .expect("iptables-save -t nat");
        assert!(
            !out.stdout.contains("SWITCHYARD") && !out.stdout.contains("SWY"),
            "{when}: ebpf mode left nat rules:\n{}",
            out.stdout
        );
    };

    let mut ebpf =
        start_switchyard(&testbed, node, BIN.as_ref(), "ebpf", &manifests, &[]).expect("ebpf");
    serving(&ebpf);
    assert_no_nat_rules("ebpf mode");
    ebpf.terminate().expect("stop ebpf");
    assert!(
        testbed.bpffs_dir(node).join("links").is_dir(),
        "pins outlive the process"
    );

    let mut iptables = start_switchyard(
        &testbed,
        node,
        BIN.as_ref(),
        "iptables",
        &manifests,
        &["--sync-period=1s"],
    )
    .expect("iptables");
    serving(&iptables);
    // Several resyncs (verifies) later, still no error: no stale chain of ebpf mode blocks a
    // sync. Counted from the sync-duration histogram, which every completed sync observes.
    wait_for("three more syncs", Duration::from_secs(20), || {
        let syncs = switchyard_testbed::metric(
            node,
            "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}",
        )
        .map_or(0, |v| v as u64);
        if syncs >= 4 {
            Ok(())
        } else {
            Err(syncs)
        }
    })
    .expect("resyncs");
    let log = iptables.stderr();
    assert!(!log.contains("ERROR"), "{log}");
    assert!(
        !testbed.bpffs_dir(node).join("links").exists(),
        "ebpf pins removed"
    );
    assert!(
        save().contains(":SWY-SERVICES"),
        "iptables mode's chains are there"
    );
    iptables.terminate().expect("stop iptables");
    // An older ebpf mode's masquerade chain (both names) is removed by the new one.
    let old_chains = format!(
        "*nat\n:{chain} - [0:0]\n:{old} - [0:0]\n-A POSTROUTING -j {chain}\n-A POSTROUTING -j {old}\n\
         -A {chain} -m mark --mark 0x4000/0x4000 -j MASQUERADE\nCOMMIT\n",
        chain = switchyard::ebpf::masquerade::CHAIN,
        old = switchyard::ebpf::masquerade::OLD_CHAIN,
    );
    let restore = testbed
        .run(
            Place::Node(1),
            "sh",
            [
                "-c".to_owned(),
                format!("printf '%s' '{old_chains}' | iptables-nft-restore --noflush"),
            ],
            Duration::from_secs(30),
        )
        .expect("iptables-restore");
    assert!(restore.status.success(), "{}", restore.stderr);

    let ebpf = start_switchyard(&testbed, node, BIN.as_ref(), "ebpf", &manifests, &[])
        .expect("ebpf again");
    serving(&ebpf);
    assert_no_nat_rules("ebpf mode after iptables mode and an older version");
    let rules = save();
    assert!(
        !rules.contains(":SWY-SERVICES"),
        "iptables mode's chains removed:\n{rules}"
    );
    assert!(!ebpf.stderr().contains("ERROR"), "{}", ebpf.stderr());
}

/// The service both mode-switch tests reach: ClusterIP and NodePort over every pod.
const SWITCH_CLUSTER_IP: &str = "198.18.128.40:80";
const SWITCH_NODE_PORT: &str = "198.18.0.11:30040";
/// The same NodePort on node1's IPv6 address (the service is dual-stack).
const SWITCH_NODE_PORT6: &str = "[2001:db8:0:1::11]:30040";

fn switch_service_yaml(testbed: &Testbed) -> String {
    let names: Vec<&str> = testbed.pods().iter().map(|p| p.name.as_str()).collect();
    let endpoints = testbed.ready_endpoints_yaml(&names);
    let endpoints6 = testbed.ready_endpoints6_yaml(&names);
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: switch, namespace: switch}}
spec:
  type: NodePort
  clusterIP: 198.18.128.40
  clusterIPs: [198.18.128.40, 2001:db8:5::40]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: PreferDualStack
  ports:
  - {{name: tcp, port: 80, targetPort: 8080, nodePort: 30040, protocol: TCP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: switch-1
  namespace: switch
  labels: {{kubernetes.io/service-name: switch}}
addressType: IPv4
ports: [{{name: tcp, port: 8080, protocol: TCP}}]
endpoints:
{endpoints}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: switch-2
  namespace: switch
  labels: {{kubernetes.io/service-name: switch}}
addressType: IPv6
ports: [{{name: tcp, port: 8080, protocol: TCP}}]
endpoints:
{endpoints6}"
    )
}

/// A KubeProxyConfiguration for testbed node `node` in `mode`. With `--config`, kube-proxy's
/// flags are ignored (only `--hostname-override` and the logging flags still apply), so
/// everything the testbed passes as flags is here: the node name (`hostnameOverride`), the
/// cluster CIDR, the change coalescing (`iptables.minSyncPeriod`, which ebpf mode reads too),
/// and `conntrack.maxPerCore: 0` so the machine's conntrack limit is left alone. The cgroup,
/// the pin directory and the manifest directory have no field: Switchyard's extension flags
/// (`--cgroup-path`, `--bpffs-path`, `--manifests`) always apply.
fn node_config(testbed: &Testbed, node: &Node, mode: &str) -> String {
    format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
         mode: {mode}\nhostnameOverride: {}\nclusterCIDR: {}\n\
         iptables: {{minSyncPeriod: 100ms, syncPeriod: 5s}}\nconntrack: {{maxPerCore: 0}}\n",
        node.name,
        testbed.cluster_cidr()
    )
}

/// Replaces `path` whole, as the kubelet swaps a ConfigMap volume's files.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("replace config");
}

/// Every `SWY`/`SWITCHYARD` line either iptables backend's save shows in node1, for both
/// families.
fn our_iptables_lines(testbed: &Testbed) -> Vec<String> {
    [
        "iptables-legacy-save",
        "iptables-nft-save",
        "ip6tables-legacy-save",
        "ip6tables-nft-save",
    ]
    .iter()
    .flat_map(|save| {
        let out = testbed
            .run(
                Place::Node(1),
                save,
                Vec::<String>::new(),
                Duration::from_secs(30),
            )
            .unwrap_or_else(|e| panic!("{save}: {e}"));
        out.stdout
            .lines()
            .filter(|l| l.contains("SWY") || l.contains("SWITCHYARD"))
            .map(|l| format!("{save}: {l}"))
            .collect::<Vec<_>>()
    })
    .collect()
}

/// Upstream's way to switch a node's mode: edit `mode` in the config file. The process
/// exits (status 1), a supervisor restarts it as the kubelet would, and the new mode takes
/// over from the old one's state while clients keep connecting to a ClusterIP (from a pod)
/// and a NodePort (from outside): iptables -> ebpf -> iptables without one failed
/// connection, and without the old mode's state once the new one has synced.
#[test]
fn a_config_edit_switches_modes_under_load_without_a_failed_connection() {
    const TIMEOUT: Duration = Duration::from_secs(60);
    let testbed = Testbed::new(TopologySpec {
        nodes: 2,
        pods_per_node: 2,
    })
    .expect("testbed");
    let _echo = testbed.start_echo_everywhere(8080, 0).expect("echo");
    let manifests = Manifests::new().expect("manifests");
    manifests
        .write("nodes.yaml", &testbed.nodes_yaml())
        .expect("nodes");
    manifests
        .write("svc.yaml", &switch_service_yaml(&testbed))
        .expect("service");
    let node = testbed.node(1);
    let pins = testbed.bpffs_dir(node);
    let config_dir = std::env::temp_dir().join(format!("swy-switch-{}", testbed.id()));
    std::fs::create_dir_all(&config_dir).expect("config dir");
    let _remove_config = RemoveOnDrop(config_dir.clone());
    let config = config_dir.join("config.conf");
    replace_file(&config, &node_config(&testbed, node, "iptables"));
    let args: Vec<std::ffi::OsString> = [
        format!("--config={}", config.display()),
        format!("--manifests={}", manifests.path().display()),
        format!("--cgroup-path={}", node.cgroup.display()),
        format!("--bpffs-path={}", pins.display()),
    ]
    .into_iter()
    .map(Into::into)
    .collect();
    let cluster_ip: SocketAddr = SWITCH_CLUSTER_IP.parse().expect("addr");
    let node_port: SocketAddr = SWITCH_NODE_PORT.parse().expect("addr");
    let node_port6: SocketAddr = SWITCH_NODE_PORT6.parse().expect("addr");
    let pod = testbed.pod(1, 2);

    let (recorded, marks, exits) = std::thread::scope(|scope| {
        let supervisor = Supervisor::start(scope, &testbed, node.place(), BIN.into(), args, 4)
            .expect("supervised switchyard");
        let fail = |e: switchyard_testbed::Error| -> ! { panic!("{e}\n{}", supervisor.logs()) };
        supervisor
            .wait_for_log(
                1,
                "iptables mode's first sync",
                TIMEOUT,
                &[&["synced", "full=true"]],
            )
            .unwrap_or_else(|e| fail(e));
        for (what, place, to) in [
            ("the ClusterIP", Place::from(pod), cluster_ip),
            ("the NodePort", Place::Client, node_port),
            ("the IPv6 NodePort", Place::Client, node_port6),
        ] {
            testbed
                .wait_for_answer(place, Proto::Tcp, to, TIMEOUT)
                .unwrap_or_else(|e| panic!("{what}: {e}\n{}", supervisor.logs()));
        }
        let recorder = Recorder::start(
            scope,
            &testbed,
            vec![
                Destination::new("ClusterIP from node1-pod2", pod, Proto::Tcp, cluster_ip),
                Destination::new(
                    "NodePort from the client",
                    Place::Client,
                    Proto::Tcp,
                    node_port,
                ),
                // IPv6 from outside: ip6tables, then the IPv6 tc programs, then ip6tables.
                Destination::new(
                    "IPv6 NodePort from the client",
                    Place::Client,
                    Proto::Tcp,
                    node_port6,
                ),
            ],
            LoadSpec::default(),
        );
        let mut marks = vec![Instant::now()];
        recorder
            .wait_batches_after("connections in iptables mode", marks[0], 3, TIMEOUT)
            .unwrap_or_else(|e| fail(e));

        // iptables -> ebpf.
        marks.push(Instant::now());
        replace_file(&config, &node_config(&testbed, node, "ebpf"));
        supervisor
            .wait_for_log(
                2,
                "ebpf mode's first sync and the handover",
                TIMEOUT,
                &[
                    &["mode=ebpf", "switchyard running"],
                    &["synced", "full=true"],
                    &["handover: no iptables mode state left"],
                ],
            )
            .unwrap_or_else(|e| fail(e));
        marks.push(Instant::now());
        let left = our_iptables_lines(&testbed);
        assert!(
            left.is_empty(),
            "iptables state after the switch to ebpf:\n{}",
            left.join("\n")
        );
        assert!(
            pins.join("links").is_dir() && pins.join("maps").is_dir(),
            "ebpf mode's pins"
        );
        recorder
            .wait_batches_after("connections in ebpf mode", marks[2], 3, TIMEOUT)
            .unwrap_or_else(|e| fail(e));

        // ebpf -> iptables.
        marks.push(Instant::now());
        replace_file(&config, &node_config(&testbed, node, "iptables"));
        supervisor
            .wait_for_log(
                3,
                "iptables mode's first sync and the handover",
                TIMEOUT,
                &[
                    &["mode=iptables", "switchyard running"],
                    &["synced", "full=true"],
                    &["handover: no ebpf mode state left"],
                ],
            )
            .unwrap_or_else(|e| fail(e));
        marks.push(Instant::now());
        assert!(
            !pins.join("links").exists() && !pins.join("maps").exists(),
            "ebpf pins after the switch back:\n{}",
            supervisor.logs()
        );
        assert!(
            our_iptables_lines(&testbed)
                .iter()
                .any(|l| l.contains(":SWY-SERVICES")),
            "iptables mode's chains are back"
        );
        recorder
            .wait_batches_after("connections in iptables mode again", marks[4], 3, TIMEOUT)
            .unwrap_or_else(|e| fail(e));
        let recorded = recorder.stop();
        let exits = supervisor.stop(Duration::from_secs(10));
        (recorded, marks, exits)
    });
    let logs: String = exits
        .iter()
        .map(|e| format!("--- run {} ({}) ---\n{}", e.run, e.status, e.log))
        .collect::<Vec<_>>()
        .join("\n");
    let phase = |b: &switchyard_testbed::Batch| {
        let names = [
            "iptables mode",
            "the switch to ebpf",
            "ebpf mode",
            "the switch back",
            "iptables mode again",
        ];
        let i = marks.iter().rposition(|m| b.started >= *m).unwrap_or(0);
        if b.ended > marks.get(i + 1).copied().unwrap_or(b.ended) {
            format!("from {} into {}", names[i], names[i + 1])
        } else {
            names[i].to_owned()
        }
    };
    let failures = recorded.failures(marks[1], phase);
    assert!(
        failures.is_empty(),
        "{} of {} new connections failed (times relative to the first edit):\n{}\n{logs}",
        failures.len(),
        recorded.attempts(),
        failures.join("\n")
    );
    // Each switch was under load: batches ran across it.
    for (from, to) in [(1, 2), (3, 4)] {
        let across = recorded.count(|b| b.started >= marks[from] && b.ended <= marks[to]);
        assert!(
            across >= 1,
            "no batch ran during the switch {from}..{to}\n{logs}"
        );
    }
    assert_eq!(exits.len(), 3, "{logs}");
    for exit in &exits[..2] {
        assert_eq!(
            exit.status.code(),
            Some(1),
            "run {} ends on the edit:\n{logs}",
            exit.run
        );
        assert!(exit.log.contains("was updated"), "{logs}");
    }
    for exit in &exits {
        assert!(!exit.log.contains("ERROR"), "run {}:\n{logs}", exit.run);
        assert!(
            !exit.log.contains("is ignored because --config is given"),
            "every setting is in the file or an extension flag:\n{logs}"
        );
    }
    // Back in iptables mode, ebpf mode's packet path was drained before its programs went.
    let drained = exits[2]
        .log
        .lines()
        .filter(|l| l.contains("handover:"))
        .collect::<Vec<_>>();
    assert!(
        drained.iter().any(|l| l.contains("draining ebpf mode's"))
            && drained
                .iter()
                .any(|l| l.contains("ebpf mode's flows drained")),
        "{logs}"
    );
    eprintln!(
        "{} new connections, none failed, across iptables -> ebpf -> iptables\n{}",
        recorded.attempts(),
        drained.join("\n")
    );
}

/// Removes a directory on drop.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
