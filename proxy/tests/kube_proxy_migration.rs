//! Migrating a node from kube-proxy: node1 holds kube-proxy's rules (a kube-proxy 1.33
//! iptables-save of the demo's web service, `fixtures/kube-proxy-iptables.save`, with its
//! KUBE-SERVICES jumps from PREROUTING and OUTPUT), leftovers of its nftables and ipvs modes
//! (the `ip kube-proxy` table, the `kube-ipvs0` dummy interface, its ipsets of both families,
//! one referenced by a rule in kube-proxy's chains), and kubelet's chains. Then
//! switchyard starts with `--cleanup-kube-proxy`, while a pod on node1 opens new connections
//! to the ClusterIP the whole time: before switchyard starts (kube-proxy's rules answer),
//! while both sets of rules exist, and after kube-proxy's are gone. Every connection must
//! reach one of the service's pods; afterwards no chain of kube-proxy's is left, kubelet's
//! are untouched, the other leftovers are gone, and other tools' `KUBE-*` and other ipsets
//! stay (kube-router's policy sets are named `KUBE-SRC-*`). ip6tables get kube-proxy's IPv6 service
//! chains and kubelet's IPv6 firewall chain too (and `ip6 kube-proxy`): the same holds there.
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use switchyard::iptables::rule_set::Table;
use switchyard::model::iptables::kube_proxy::is_kube_proxy_chain;
use switchyard_testbed::{
    start_switchyard, wait_for, Manifests, Place, Proto, Testbed, TopologySpec,
};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const WEB: &str = "198.18.128.10:80";
const BACKENDS: [&str; 3] = ["node1-pod1", "node2-pod1", "node2-pod2"];

/// A kube-proxy IPv6 proxier's chains for one service (as its ip6tables-save prints them)
/// and kubelet's IPv6 firewall chain.
const KUBE_PROXY_IP6TABLES: &str = "*nat
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-ABCDEFGHIJKLMNOP - [0:0]
:KUBE-SEP-ABCDEFGHIJKLMNOP - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-SERVICES -d 2001:db8:5::10/128 -p tcp -m tcp --dport 80 -j KUBE-SVC-ABCDEFGHIJKLMNOP
-A KUBE-SVC-ABCDEFGHIJKLMNOP -j KUBE-SEP-ABCDEFGHIJKLMNOP
-A KUBE-SEP-ABCDEFGHIJKLMNOP -p tcp -m tcp -j DNAT --to-destination [2001:db8:1:2::11]:8080
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
COMMIT
*filter
:KUBE-FIREWALL - [0:0]
-A INPUT -j KUBE-FIREWALL
COMMIT
";

/// Phases of the migration the prober's requests fall into.
const BEFORE: usize = 0;
const BOTH: usize = 1;
const AFTER: usize = 2;

fn sh(testbed: &Testbed, script: &str) -> String {
    let out = testbed
        .run(
            Place::Node(1),
            "sh",
            ["-c", script],
            Duration::from_secs(30),
        )
        .expect("sh in node1");
    assert!(out.status.success(), "{script}: {}", out.stderr);
    out.stdout
}

fn migrate(mode: &str, backend: &str) {
    let testbed = Testbed::new(TopologySpec {
        nodes: 2,
        pods_per_node: 2,
    })
    .expect("testbed");
    let _echo = testbed.start_echo_everywhere(8080, 0).expect("echo");
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kube-proxy-iptables.save");
    sh(
        &testbed,
        &format!(
            "iptables-{backend}-restore --noflush < {}",
            fixture.display()
        ),
    );
    // kube-proxy's IPv6 proxier's chains (the shape of its ip6tables-save) beside kubelet's.
    sh(
        &testbed,
        &format!(
            "ip6tables-{backend}-restore --noflush <<'EOF'\n{}EOF\n",
            KUBE_PROXY_IP6TABLES
        ),
    );
    // kube-proxy's nftables and ipvs mode leftovers. ipvs mode's kube-ipvs0 is a dummy
    // interface holding the ClusterIPs; a down bridge stands in for it (the test kernel may
    // lack the dummy driver, and the cleanup goes by name).
    sh(
        &testbed,
        "nft add table ip kube-proxy && nft add chain ip kube-proxy services && \
         nft add table ip6 kube-proxy && \
         ip link add kube-ipvs0 type bridge && ip addr add 198.18.128.99/32 dev kube-ipvs0",
    );
    // ipvs mode's ipsets (types as upstream creates them), one referenced from kube-proxy's
    // KUBE-SERVICES (appended after its service rules, so its rules still serve), and two
    // sets of other tools.
    sh(
        &testbed,
        &format!(
            "ipset create KUBE-CLUSTER-IP hash:ip,port family inet && \
             ipset add KUBE-CLUSTER-IP 198.18.128.10,tcp:80 && \
             ipset create KUBE-NODE-PORT-TCP bitmap:port range 0-65535 && \
             ipset create KUBE-6-LOAD-BALANCER-SOURCE-CID hash:ip,port,net family inet6 && \
             ipset create KUBE-SRC-ROUTERPOLICY hash:ip && \
             ipset create cni-allowed hash:net && \
             iptables-{backend} -t nat -A KUBE-SERVICES \
               -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN"
        ),
    );
    let web: SocketAddr = WEB.parse().expect("addr");
    let client = testbed.pod(1, 2);

    // kube-proxy's rules serve the ClusterIP before switchyard runs.
    let first = testbed.request(client, Proto::Tcp, web, 6, Duration::from_secs(2));
    assert!(
        first.iter().all(Result::is_ok),
        "[{mode}/{backend}] kube-proxy's fixture does not serve: {first:?}"
    );

    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/demo");
    let manifests = Manifests::copy_of(&examples).expect("manifests");
    let phase = AtomicUsize::new(BEFORE);
    let stop = AtomicBool::new(false);
    // (phase, result) of every request.
    let results = Mutex::new(Vec::new());
    let backend_flag = format!("--iptables-backend={backend}");
    let log = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let at = phase.load(Ordering::SeqCst);
                for r in testbed.request(client, Proto::Tcp, web, 3, Duration::from_secs(1)) {
                    results.lock().expect("results").push((at, r));
                }
            }
        });
        let wait_requests_in = |p: usize| {
            wait_for("requests in this phase", Duration::from_secs(20), || {
                let n = results
                    .lock()
                    .expect("results")
                    .iter()
                    .filter(|(at, _)| *at == p)
                    .count();
                if n >= 6 {
                    Ok(())
                } else {
                    Err(n)
                }
            })
            .expect("prober running");
        };
        wait_requests_in(BEFORE);
        let proxy = start_switchyard(
            &testbed,
            testbed.node(1),
            BIN.as_ref(),
            mode,
            &manifests,
            &[backend_flag.as_str(), "--cleanup-kube-proxy"],
        )
        .expect("switchyard");
        phase.store(BOTH, Ordering::SeqCst);
        wait_for(
            "the cleanup of kube-proxy's leftovers",
            Duration::from_secs(30),
            || {
                let log = proxy.stderr();
                if log.contains("removed kube-proxy's leftovers") {
                    Ok(())
                } else {
                    Err(log)
                }
            },
        )
        .unwrap_or_else(|e| panic!("[{mode}/{backend}] {e}"));
        phase.store(AFTER, Ordering::SeqCst);
        wait_requests_in(AFTER);
        stop.store(true, Ordering::SeqCst);
        proxy.stderr()
    });

    let results = results.into_inner().expect("results");
    for p in [BEFORE, BOTH, AFTER] {
        let n = results.iter().filter(|(at, _)| *at == p).count();
        eprintln!("[{mode}/{backend}] phase {p}: {n} connections");
    }
    for p in [BEFORE, BOTH, AFTER] {
        assert!(
            results.iter().any(|(at, _)| *at == p),
            "[{mode}/{backend}] no request in phase {p}"
        );
    }
    let failed: Vec<_> = results
        .iter()
        .filter(|(_, r)| match r {
            Ok(reply) => !BACKENDS.contains(&reply.backend.as_str()),
            Err(_) => true,
        })
        .collect();
    assert!(
        failed.is_empty(),
        "[{mode}/{backend}] {} of {} connections failed: {failed:?}\n{log}",
        failed.len(),
        results.len()
    );

    // kube-proxy's chains are gone, kubelet's and switchyard's are there.
    let save = sh(&testbed, &format!("iptables-{backend}-save"));
    let mut table = Table::Nat;
    let mut declared = Vec::new();
    for line in save.lines() {
        match line {
            "*nat" => table = Table::Nat,
            "*filter" => table = Table::Filter,
            "*mangle" => table = Table::Mangle,
            _ => {}
        }
        if let Some(chain) = line
            .strip_prefix(':')
            .and_then(|l| l.split_whitespace().next())
        {
            declared.push((table, chain.to_owned()));
        }
    }
    let left: Vec<_> = declared
        .iter()
        .filter(|(t, c)| is_kube_proxy_chain(*t, c))
        .collect();
    assert!(
        left.is_empty(),
        "[{mode}/{backend}] kube-proxy's chains left: {left:?}\n{save}"
    );
    assert!(
        !save.contains("-j KUBE-SERVICES") && !save.contains("-j KUBE-POSTROUTING"),
        "[{mode}/{backend}] jumps into kube-proxy's chains left:\n{save}"
    );
    let mut kept = vec![
        (Table::Mangle, "KUBE-IPTABLES-HINT"),
        (Table::Mangle, "KUBE-KUBELET-CANARY"),
        (Table::Nat, "KUBE-KUBELET-CANARY"),
        (Table::Filter, "KUBE-FIREWALL"),
    ];
    if mode == "iptables" {
        kept.push((Table::Nat, "SWY-SERVICES"));
    }
    for (t, chain) in kept {
        assert!(
            declared.iter().any(|(dt, c)| *dt == t && c == chain),
            "[{mode}/{backend}] {chain} in {t:?} is gone:\n{save}"
        );
    }
    assert!(
        save.contains("-A INPUT -j KUBE-FIREWALL"),
        "[{mode}/{backend}] kubelet's jump is gone:\n{save}"
    );
    let tables = sh(&testbed, "nft list tables");
    assert!(
        !tables.contains("ip kube-proxy") && !tables.contains("ip6 kube-proxy"),
        "[{mode}/{backend}] nftables table left: {tables}"
    );
    // ip6tables: kube-proxy's chains and jumps are gone, kubelet's stay.
    let save6 = sh(&testbed, &format!("ip6tables-{backend}-save"));
    for gone in [
        ":KUBE-SERVICES",
        ":KUBE-SVC-",
        ":KUBE-SEP-",
        "-j KUBE-SERVICES",
    ] {
        assert!(
            !save6.contains(gone),
            "[{mode}/{backend}] ip6tables still hold {gone}:\n{save6}"
        );
    }
    assert!(
        save6.contains(":KUBE-FIREWALL") && save6.contains("-A INPUT -j KUBE-FIREWALL"),
        "[{mode}/{backend}] kubelet's IPv6 chain is gone:\n{save6}"
    );
    let sets = sh(&testbed, "ipset list -n");
    let sets: Vec<&str> = sets.lines().collect();
    assert_eq!(
        sets,
        ["KUBE-SRC-ROUTERPOLICY", "cni-allowed"],
        "[{mode}/{backend}] ipsets after the cleanup"
    );
    let links = sh(&testbed, "ip -o link show");
    assert!(
        !links.contains("kube-ipvs0"),
        "[{mode}/{backend}] kube-ipvs0 left: {links}"
    );
}

#[test]
fn migration_from_kube_proxy_iptables_nft() {
    migrate("iptables", "nft");
}

#[test]
fn migration_from_kube_proxy_iptables_legacy() {
    migrate("iptables", "legacy");
}

/// ebpf mode translates at connect(), ahead of kube-proxy's rules; the cleanup is the same.
#[test]
fn migration_from_kube_proxy_to_ebpf() {
    migrate("ebpf", "nft");
}
