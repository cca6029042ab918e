//! Drift repair: state changed behind Switchyard's back (map entries deleted, chains flushed)
//! is found by the periodic verify and rewritten, in both modes, and counted.
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use aya::maps::{HashMap, Map, MapData};
use switchyard_common::{map_names, ServiceKey, ServiceKey6, ServiceValue};
use switchyard_testbed::{
    start_switchyard, wait_for, ChildGuard, Manifests, Place, Proto, Testbed, TopologySpec,
};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
/// Short, so the verify comes soon; the repair must come from it, not from a change.
const SYNC_PERIOD: &str = "--sync-period=2s";
const WAIT: Duration = Duration::from_secs(20);

/// Switchyard in `mode` on node1 of a fresh two-node testbed with the demo manifests, serving
/// the web ClusterIP, with nothing repaired yet.
struct Serving {
    testbed: Testbed,
    proxy: ChildGuard,
    web: SocketAddr,
    _echo: Vec<ChildGuard>,
    _manifests: Manifests,
}

fn serving(mode: &str, extra: &[&str]) -> Serving {
    let testbed = Testbed::new(TopologySpec {
        nodes: 2,
        pods_per_node: 2,
    })
    .expect("testbed");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/demo");
    let manifests = Manifests::copy_of(&examples).expect("manifests");
    let web: SocketAddr = "198.18.128.10:80".parse().expect("web");
    let echo = testbed.start_echo_everywhere(8080, 8080).expect("echo");
    let proxy = start_switchyard(
        &testbed,
        testbed.node(1),
        BIN.as_ref(),
        mode,
        &manifests,
        extra,
    )
    .expect("switchyard");
    testbed
        .wait_for_answer(testbed.pod(1, 2), Proto::Tcp, web, WAIT)
        .unwrap_or_else(|e| panic!("programmed: {e}\n{}", proxy.stderr()));
    assert_eq!(repairs(&testbed), 0, "nothing to repair yet");
    Serving {
        testbed,
        proxy,
        web,
        _echo: echo,
        _manifests: manifests,
    }
}

/// `switchyard_dataplane_repairs_total` from the node's metrics endpoint.
fn repairs(testbed: &Testbed) -> u64 {
    switchyard_testbed::metric(testbed.node(1), "switchyard_dataplane_repairs_total")
        .map_or(0, |v| v as u64)
}

fn assert_repaired(testbed: &Testbed, proxy: &ChildGuard, web: SocketAddr) {
    let client = testbed.pod(1, 2);
    testbed
        .wait_for_answer(client, Proto::Tcp, web, WAIT)
        .unwrap_or_else(|e| panic!("repaired by the verify: {e}\n{}", proxy.stderr()));
    assert!(repairs(testbed) >= 1, "repair counted\n{}", proxy.stderr());
    assert!(
        proxy.stderr().contains("repaired dataplane drift"),
        "{}",
        proxy.stderr()
    );
}

#[test]
fn ebpf_map_entries_deleted_behind_our_back_are_restored_by_the_verify() {
    let Serving {
        testbed,
        proxy,
        web,
        _echo,
        _manifests,
    } = serving("ebpf", &[SYNC_PERIOD]);

    // Someone deletes every service entry from the pinned map.
    let pin = testbed
        .bpffs_dir(testbed.node(1))
        .join("maps")
        .join(map_names::SERVICES);
    let data = MapData::from_pin(&pin).expect("open the pinned services map");
    let mut services: HashMap<MapData, ServiceKey, ServiceValue> =
        HashMap::try_from(Map::HashMap(data)).expect("a hash map");
    let keys: Vec<ServiceKey> = services.keys().filter_map(Result::ok).collect();
    assert!(!keys.is_empty());
    for key in &keys {
        services.remove(key).expect("remove");
    }
    assert_eq!(services.keys().count(), 0, "the map is empty now");

    assert_repaired(&testbed, &proxy, web);
    assert_eq!(
        services.keys().count(),
        keys.len(),
        "every entry written back"
    );
}

#[test]
fn ebpf_ipv6_map_entries_deleted_behind_our_back_are_restored_by_the_verify() {
    let Serving {
        testbed,
        proxy,
        _echo,
        _manifests: manifests,
        ..
    } = serving("ebpf", &[SYNC_PERIOD]);
    let backend = testbed.pod(2, 1);
    manifests
        .write(
            "web6.yaml",
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: web6, namespace: demo}}\n\
                 spec: {{ipFamilies: [IPv6], clusterIP: \"2001:db8:5::20\", clusterIPs: [\"2001:db8:5::20\"], \
                 ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: web6-1, namespace: demo, labels: {{kubernetes.io/service-name: web6}}}}\n\
                 addressType: IPv6\nports: [{{name: http, port: 8080}}]\n\
                 endpoints: [{{addresses: [\"{}\"], nodeName: node2}}]\n",
                backend.ipv6()
            ),
        )
        .expect("write");
    let web6: SocketAddr = "[2001:db8:5::20]:80".parse().expect("literal");
    testbed
        .wait_for_answer(testbed.pod(1, 2), Proto::Tcp, web6, WAIT)
        .unwrap_or_else(|e| panic!("IPv6 programmed: {e}\n{}", proxy.stderr()));
    assert_eq!(repairs(&testbed), 0, "nothing to repair yet");

    // Someone deletes the IPv6 service entries from their pinned map.
    let pin = testbed
        .bpffs_dir(testbed.node(1))
        .join("maps")
        .join(map_names::SERVICES6);
    let data = MapData::from_pin(&pin).expect("open the pinned IPv6 services map");
    let mut services: HashMap<MapData, ServiceKey6, ServiceValue> =
        HashMap::try_from(Map::HashMap(data)).expect("a hash map");
    let keys: Vec<ServiceKey6> = services.keys().filter_map(Result::ok).collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    services.remove(&keys[0]).expect("remove");

    assert_repaired(&testbed, &proxy, web6);
    assert_eq!(services.keys().count(), 1, "the entry written back");
}

#[test]
fn flushed_iptables_chains_are_rewritten_by_the_verify() {
    let Serving {
        testbed,
        proxy,
        web,
        _echo,
        _manifests,
    } = serving("iptables", &[SYNC_PERIOD, "--iptables-backend=nft"]);

    let client = testbed.pod(1, 2);
    // Someone flushes nat and mangle (the canary lives in mangle) in the node's namespace.
    for args in [
        ["-t", "nat", "-F"],
        ["-t", "mangle", "-F"],
        ["-t", "mangle", "-X"],
    ] {
        let out = testbed
            .run(
                Place::Node(1),
                "iptables-nft",
                args,
                Duration::from_secs(30),
            )
            .expect("iptables-nft");
        assert!(
            out.status.success(),
            "iptables-nft {args:?}: {}",
            out.stderr
        );
    }
    wait_for("the flush to break the ClusterIP", WAIT, || {
        match testbed
            .request(client, Proto::Tcp, web, 1, Duration::from_millis(500))
            .pop()
        {
            Some(Ok(reply)) => Err(reply),
            _ => Ok(()),
        }
    })
    .ok();
    assert_repaired(&testbed, &proxy, web);
}
