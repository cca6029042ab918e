//! The DaemonSet's security settings work: in a testbed node, the init container's step
//! (`--init-only`, all privileges) runs first, then the proxy with exactly the capabilities
//! the overlay's container adds (`kubectl kustomize`, bounding set via `setpriv`) and with
//! `/proc/sys` and `/sys` read-only, as a container runtime mounts them for a non-privileged
//! container. The ClusterIP must answer, and in ebpf mode a second such process must adopt
//! the first one's pinned state. A capability the mode needs but the overlay lacks, or a
//! sysctl write the proxy still makes, fails the test. Without `SYS_ADMIN` (setns) a pod's
//! connected UDP socket whose backend goes is not destroyed: the proxy says so once and the
//! socket keeps its backend, as before socket termination existed.
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use serde::Deserialize;
use switchyard_testbed::switchyard::node_args;
use switchyard_testbed::{
    backend_names, wait_for, ChildGuard, Manifests, ObjectSource, Proto, Testbed, TopologySpec,
};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// The capabilities the overlay's proxy container adds.
fn capabilities(overlay: &str) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/overlays")
        .join(overlay);
    let out = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("kubectl (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    for document in serde_norway::Deserializer::from_str(&text) {
        let value = serde_json::Value::deserialize(document).expect("YAML");
        if value["kind"] != "DaemonSet" {
            continue;
        }
        let ds: DaemonSet = serde_json::from_value(value).expect("DaemonSet");
        let spec = ds.spec.and_then(|s| s.template.spec).expect("pod spec");
        let proxy = spec
            .containers
            .into_iter()
            .find(|c| c.name == "switchyard")
            .expect("switchyard container");
        let security = proxy.security_context.expect("securityContext");
        assert_ne!(security.privileged, Some(true));
        return security
            .capabilities
            .and_then(|c| c.add)
            .expect("capabilities.add");
    }
    panic!("{overlay}: no DaemonSet");
}

/// Starts the proxy as the container would run: its own mount namespace with `/proc/sys`
/// and `/sys` read-only, and only `caps` in its bounding set (so in its permitted and
/// effective sets, as root).
fn start_restricted(testbed: &Testbed, args: &[String], caps: &[String]) -> ChildGuard {
    let bounding: String = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{}", c.to_lowercase())))
        .collect::<Vec<_>>()
        .join(",");
    let mut script = String::from(
        "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && \
         mount -o remount,bind,ro /sys && exec setpriv --inh-caps=-all",
    );
    script.push_str(&format!(" --bounding-set={bounding} -- {BIN}"));
    for arg in args {
        script.push(' ');
        script.push_str(&shell_quote(arg));
    }
    testbed
        .spawn(
            testbed.node(1),
            "unshare",
            [
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                &script,
            ],
        )
        .expect("restricted switchyard")
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn serving(testbed: &Testbed, proxy: &ChildGuard, what: &str) {
    let web: SocketAddr = "198.18.128.10:80".parse().expect("addr");
    let client = testbed.pod(1, 2);
    wait_for(what, Duration::from_secs(30), || {
        // This process's own first (full) sync, not only pins a previous one left.
        if !proxy.stderr().contains("full=true") {
            return Err((Default::default(), proxy.stderr()));
        }
        let got =
            backend_names(&testbed.request(client, Proto::Tcp, web, 6, Duration::from_secs(1)));
        if got.iter().all(|b| b.starts_with("node")) {
            Ok(())
        } else {
            Err((got, proxy.stderr()))
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let log = proxy.stderr();
    assert!(!log.contains("ERROR"), "{what}:\n{log}");
    assert!(!log.contains("Operation not permitted"), "{what}:\n{log}");
}

fn run(mode: &str, overlay: &str, extra: &[&str]) {
    let caps = capabilities(overlay);
    let testbed = Testbed::new(TopologySpec {
        nodes: 2,
        pods_per_node: 2,
    })
    .expect("testbed");
    let _echo = testbed.start_echo_everywhere(8080, 8080).expect("echo");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/demo");
    let manifests = Manifests::copy_of(&examples).expect("manifests");
    let mut args = node_args(
        &testbed,
        testbed.node(1),
        mode,
        ObjectSource::Manifests(manifests.path()),
    );
    args.extend(extra.iter().map(|a| a.to_string()));
    // The privileged init container.
    let mut init = args.clone();
    init.push("--init-only".into());
    let out = testbed
        .run(testbed.node(1), BIN, &init, Duration::from_secs(30))
        .expect("--init-only");
    assert!(out.status.success(), "--init-only: {}", out.stderr);

    let mut proxy = start_restricted(&testbed, &args, &caps);
    serving(&testbed, &proxy, &format!("{mode} with {caps:?}"));
    if mode == "ebpf" {
        // A restart (a new container) adopts the pinned maps and links.
        proxy.terminate().expect("stop");
        let again = start_restricted(&testbed, &args, &caps);
        serving(&testbed, &again, &format!("{mode} restarted with {caps:?}"));
        assert!(
            again.stderr().contains("adopt"),
            "the restart adopted the pins:\n{}",
            again.stderr()
        );
        pod_sockets_stay_without_setns(&testbed, &manifests, &again);
    }
}

/// A pod's connected UDP socket to web's UDP port; its backend leaves the slice. The proxy
/// cannot enter the pod's namespace with the overlay's capabilities: one warning, and the
/// socket keeps its (still running) backend.
fn pod_sockets_stay_without_setns(testbed: &Testbed, manifests: &Manifests, proxy: &ChildGuard) {
    let web: SocketAddr = "198.18.128.10:80".parse().expect("addr");
    let mut held = testbed
        .hold(
            testbed.pod(1, 2),
            Proto::Udp,
            web,
            Duration::from_millis(100),
        )
        .expect("held UDP flow");
    let first = held
        .wait_for_replies(1, Duration::from_secs(10))
        .expect("first reply");
    let backend = match &first[0].result {
        Ok(reply) => reply.backend.clone(),
        Err(e) => panic!("held flow: {e}"),
    };
    // Pod j of node i is 198.19.i.(10+j) (the testbed's and the demo's plan).
    let (node, pod) = backend
        .strip_prefix("node")
        .and_then(|rest| rest.split_once("-pod"))
        .expect("backend named nodeI-podJ");
    let ip = format!(
        "198.19.{node}.{}",
        10 + pod.parse::<u8>().expect("pod number")
    );
    let yaml = std::fs::read_to_string(manifests.path().join("web.yaml")).expect("read");
    let entry = format!(
        "  - addresses: [{ip}]\n    nodeName: node{node}\n    conditions: {{ready: true, serving: true, terminating: false}}\n"
    );
    assert!(yaml.contains(&entry), "{entry:?} not in web.yaml");
    manifests
        .write("web.yaml", &yaml.replace(&entry, ""))
        .expect("write");
    wait_for(
        "the warning about pods' namespaces",
        Duration::from_secs(15),
        || {
            let log = proxy.stderr();
            if log.contains("cannot enter the network namespaces of some processes") {
                Ok(())
            } else {
                Err(log)
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let seen = held.timeline().len();
    let timeline = held
        .wait_for_replies(seen + 3, Duration::from_secs(10))
        .expect("the held flow goes on");
    assert!(
        timeline
            .iter()
            .all(|r| matches!(&r.result, Ok(reply) if reply.backend == backend)),
        "{timeline:?}"
    );
}

#[test]
fn iptables_overlay_capabilities_suffice_on_nft() {
    run("iptables", "iptables", &["--iptables-backend=nft"]);
}

/// iptables-legacy talks to the kernel through a raw socket: NET_RAW.
#[test]
fn iptables_overlay_capabilities_suffice_on_legacy() {
    run("iptables", "iptables", &["--iptables-backend=legacy"]);
}

#[test]
fn ebpf_overlay_capabilities_suffice() {
    run("ebpf", "ebpf", &[]);
}
