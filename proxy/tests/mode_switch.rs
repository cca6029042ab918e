//! Switching a node between modes: each mode removes the other's leftovers, so traffic is
//! never translated twice and no stale chain or pin blocks the new mode's syncs.
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use switchyard_testbed::{
    start_switchyard, wait_for, Manifests, Place, Proto, Testbed, TopologySpec,
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
            "the ClusterIP to answer after a full sync",
            Duration::from_secs(20),
            || {
                let log = proxy.stderr();
                let ok = testbed
                    .request(client, Proto::Tcp, web, 5, Duration::from_secs(1))
                    .iter()
                    .all(Result::is_ok);
                if ok && log.contains("full=true") {
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
        let syncs = switchyard_testbed::http_get(node, 10249, "/metrics")
            .ok()
            .and_then(|(_, body)| {
                body.lines()
                    .find(|l| l.starts_with("kubeproxy_sync_proxy_rules_duration_seconds_count"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .unwrap_or(0);
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
