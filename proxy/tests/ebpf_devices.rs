//! Without `--devices`, ebpf mode attaches its packet programs to interfaces that appear (or
//! gain an address) after start-up: the node's addresses are followed through rtnetlink.
use std::time::Duration;

use switchyard_common::program_names;
use switchyard_testbed::{start_switchyard, wait_for, Manifests, Place, Testbed, TopologySpec};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A service without Node objects, so the devices are chosen by their subnets.
const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\n\
spec: {type: NodePort, clusterIP: 198.18.128.10, ports: [{port: 80, nodePort: 30080}]}\n";

#[test]
fn a_new_interface_gets_the_packet_programs() {
    let testbed = Testbed::new(TopologySpec {
        nodes: 1,
        pods_per_node: 0,
    })
    .expect("testbed");
    let manifests = Manifests::new().expect("manifests");
    manifests.write("web.yaml", SERVICE).expect("write");
    let node = testbed.node(1);
    let proxy =
        start_switchyard(&testbed, node, BIN.as_ref(), "ebpf", &manifests, &[]).expect("start");
    let links = testbed.bpffs_dir(node).join("links");
    let pin = |device: &str| links.join(format!("{}_{device}", program_names::TC_INGRESS));
    wait_for(
        "the underlay device's link",
        Duration::from_secs(20),
        || {
            if pin("eth0").exists() {
                Ok(())
            } else {
                Err(proxy.stderr())
            }
        },
    )
    .expect("eth0 attached at start-up");
    assert!(!pin("swydev0").exists());

    // A new interface with a subnet, inside the node's namespace only.
    for args in [
        vec![
            "link", "add", "swydev0", "type", "veth", "peer", "name", "swydev1",
        ],
        vec!["addr", "add", "198.18.99.1/24", "dev", "swydev0"],
        vec!["link", "set", "swydev1", "up"],
        vec!["link", "set", "swydev0", "up"],
    ] {
        let out = testbed
            .run(Place::Node(1), "ip", &args, Duration::from_secs(10))
            .expect("ip");
        assert!(out.status.success(), "ip {args:?}: {}", out.stderr);
    }
    wait_for("the new device's link", Duration::from_secs(20), || {
        if pin("swydev0").exists() {
            Ok(())
        } else {
            Err(proxy.stderr())
        }
    })
    .expect("the packet programs follow the new interface");
}
