//! iptables mode around the edges of a sync: repair after someone flushes our chains, and
//! `--cleanup` removing every rule and chain we created (and nothing else), in iptables and in
//! ip6tables (the testbed's nodes are dual-stack, so both rule sets are written).
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use switchyard_testbed::{
    start_switchyard, wait_for, Manifests, Place, Proto, Testbed, TopologySpec,
};

const TIMEOUT: Duration = Duration::from_millis(1500);

fn iptables_save(testbed: &Testbed, backend: &str) -> String {
    tool_save(testbed, "iptables", backend)
}

/// `<tool>-<backend>-save` on node1 (`tool`: `iptables` or `ip6tables`).
fn tool_save(testbed: &Testbed, tool: &str, backend: &str) -> String {
    let out = testbed
        .run(
            Place::Node(1),
            format!("{tool}-{backend}-save"),
            Vec::<String>::new(),
            Duration::from_secs(30),
        )
        .expect("iptables-save");
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

#[test]
fn flushed_rules_are_repaired_and_cleanup_removes_only_ours() {
    let testbed = Testbed::new(TopologySpec {
        nodes: 2,
        pods_per_node: 2,
    })
    .expect("testbed");
    let _echo = testbed
        .start_echo_everywhere(8080, 8080)
        .expect("echo servers");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/demo");
    let manifests = Manifests::copy_of(&examples).expect("manifests");
    // A rule of someone else's that must survive both the flush repair and the cleanup.
    let foreign = ["-t", "nat", "-N", "OTHER-TOOL"];
    let backend = "nft";
    let ok = testbed
        .run(
            Place::Node(1),
            format!("iptables-{backend}"),
            foreign,
            TIMEOUT,
        )
        .expect("iptables");
    assert!(ok.status.success(), "{ok:?}");

    let mut proxy = start_switchyard(
        &testbed,
        testbed.node(1),
        env!("CARGO_BIN_EXE_switchyard").as_ref(),
        "iptables",
        &manifests,
        &["--iptables-backend=nft", "--sync-period=1s"],
    )
    .expect("switchyard");
    let client = testbed.pod(1, 2);
    let web: SocketAddr = "198.18.128.10:80".parse().expect("addr");
    let answers = || match testbed.request(client, Proto::Tcp, web, 1, TIMEOUT).pop() {
        Some(Ok(reply)) => Ok(reply),
        other => Err(other),
    };
    wait_for("the ClusterIP to answer", Duration::from_secs(20), answers)
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.stderr()));
    wait_for(
        "the first full sync to complete",
        Duration::from_secs(20),
        || {
            let log = proxy.stderr();
            if log.contains("full=true") {
                Ok(())
            } else {
                Err(log)
            }
        },
    )
    .expect("first sync");
    assert!(!proxy.stderr().contains("ERROR"), "{}", proxy.stderr());
    let save = iptables_save(&testbed, backend);
    assert!(save.contains(":SWY-SERVICES"), "{save}");
    assert!(
        save.contains("-A PREROUTING -m comment"),
        "jump into our chains: {save}"
    );
    let save6 = tool_save(&testbed, "ip6tables", backend);
    assert!(
        save6.contains(":SWY-SERVICES") && save6.contains("-A PREROUTING -m comment"),
        "ip6tables: {save6}"
    );

    // Someone flushes the nat table: the canary in mangle is gone too after a full flush of
    // every table, and the periodic resync rewrites everything.
    for tool in ["iptables", "ip6tables"] {
        for table in ["nat", "filter", "mangle"] {
            for op in ["-F", "-X"] {
                let out = testbed
                    .run(
                        Place::Node(1),
                        format!("{tool}-{backend}"),
                        ["-t", table, op],
                        TIMEOUT,
                    )
                    .expect("flush");
                assert!(out.status.success(), "{out:?}");
            }
        }
    }
    // (Whether a request between the flush and the next resync fails is a race with the
    // 1 s resync; the canary warning below proves the flush was seen and repaired.)
    wait_for(
        "the resync to repair the rules",
        Duration::from_secs(20),
        answers,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.stderr()));
    wait_for("the canary warning", Duration::from_secs(5), || {
        let log = proxy.stderr();
        if log.contains("canary chain gone") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .expect("flush detected");
    assert!(
        proxy.stderr().contains("canary chain gone"),
        "{}",
        proxy.stderr()
    );
    // ip6tables' own canary told the IPv6 rule set's verify to rewrite it too.
    wait_for("ip6tables to be rewritten", Duration::from_secs(10), || {
        let save6 = tool_save(&testbed, "ip6tables", backend);
        if save6.contains(":SWY-SERVICES") && save6.contains("-A PREROUTING -m comment") {
            Ok(())
        } else {
            Err(save6)
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.stderr()));

    proxy.kill().expect("kill");
    let ok = testbed
        .run(
            Place::Node(1),
            format!("iptables-{backend}"),
            foreign,
            TIMEOUT,
        )
        .expect("iptables");
    assert!(
        ok.status.success(),
        "recreate the foreign chain the flush removed: {ok:?}"
    );
    // Another tool's chain jumps into one of ours: cleanup must remove that jump too, or
    // deleting our chain fails and everything of ours stays.
    let jump = testbed
        .run(
            Place::Node(1),
            format!("iptables-{backend}"),
            ["-t", "nat", "-A", "OTHER-TOOL", "-j", "SWY-SERVICES"],
            TIMEOUT,
        )
        .expect("iptables");
    assert!(jump.status.success(), "{jump:?}");
    let cleanup = testbed
        .run(
            Place::Node(1),
            env!("CARGO_BIN_EXE_switchyard"),
            ["--cleanup"],
            Duration::from_secs(60),
        )
        .expect("cleanup");
    assert!(cleanup.status.success(), "{cleanup:?}");
    // Only nft was used here: cleanup must not have created iptables-legacy tables.
    let legacy = testbed
        .run(
            Place::Node(1),
            "cat",
            ["/proc/net/ip_tables_names"],
            TIMEOUT,
        )
        .expect("cat");
    assert_eq!(legacy.stdout.trim(), "", "legacy tables created by cleanup");
    let legacy6 = testbed
        .run(
            Place::Node(1),
            "cat",
            ["/proc/net/ip6_tables_names"],
            TIMEOUT,
        )
        .expect("cat");
    assert_eq!(
        legacy6.stdout.trim(),
        "",
        "ip6tables-legacy tables created by cleanup"
    );
    for tool in ["iptables", "ip6tables"] {
        for b in ["nft", "legacy"] {
            let save = tool_save(&testbed, tool, b);
            assert!(
                !save.contains("SWY-"),
                "{tool}-{b} still has our rules:\n{save}"
            );
        }
    }
    assert!(
        iptables_save(&testbed, backend).contains(":OTHER-TOOL"),
        "foreign chain kept"
    );
    assert!(
        answers().is_err(),
        "nothing serves the ClusterIP after cleanup"
    );
}
