//! `cargo xtask demo`: switchyard on the bundled example manifests, in a throwaway sandbox of
//! network namespaces, balancing a ClusterIP over pods on two nodes.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use switchyard_testbed::{
    cleanup_leftovers, start_switchyard, wait_for, Manifests, Proto, Reply, RequestError, Testbed,
    TopologySpec,
};

/// Options of the demo.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Dataplane mode to run.
    #[arg(long, default_value = "ebpf")]
    mode: String,
    /// Requests per burst.
    #[arg(long, default_value_t = 60)]
    requests: usize,
}

const WEB: &str = "198.18.128.10:80";
const EMPTY: &str = "198.18.128.11:80";
const TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the demo; everything it creates is removed when it returns (or fails).
pub fn demo(root: &Path, args: DemoArgs) -> anyhow::Result<()> {
    crate::setup::setup()?;
    crate::build::build(root, false)?;
    std::env::set_var(
        switchyard_testbed::PROBE_ENV,
        root.join("target/debug/swy-probe"),
    );
    let removed = cleanup_leftovers()?;
    if removed > 0 {
        println!("removed {removed} leftovers of an interrupted earlier run");
    }

    let testbed = Testbed::new(TopologySpec {
        nodes: 2,
        pods_per_node: 2,
    })?;
    for node in testbed.nodes() {
        let pods: Vec<String> = testbed
            .pods_on(node.index)
            .map(|p| format!("{} {}", p.name, p.ip))
            .collect();
        println!(
            "sandbox {}: {} with pods {}",
            node.name,
            node.underlay_ip,
            pods.join(", ")
        );
    }
    let _echo = testbed.start_echo_everywhere(8080, 8080)?;

    let manifests = Manifests::copy_of(&root.join("deploy/examples/demo"))?;
    let mut proxy = start_switchyard(
        &testbed,
        testbed.node(1),
        &root.join("target/debug/switchyard"),
        &args.mode,
        &manifests,
        &[],
    )?;
    println!(
        "switchyard --proxy-mode {} running on node1 with deploy/examples/demo\n",
        args.mode
    );

    let client = testbed.pod(1, 2);
    let web: SocketAddr = WEB.parse()?;
    let waited = wait_for(
        "the ClusterIP to answer",
        Duration::from_secs(20),
        || match testbed.request(client, Proto::Tcp, web, 1, TIMEOUT).pop() {
            Some(Ok(reply)) => Ok(reply),
            other => Err(other),
        },
    );
    if let Err(e) = waited {
        bail!("{e}\nswitchyard log:\n{}", proxy.stderr());
    }

    println!(
        "{} TCP connections from {} to web {WEB}:",
        args.requests, client.name
    );
    show(&testbed.request(client, Proto::Tcp, web, args.requests, TIMEOUT));
    println!(
        "\n{} UDP datagrams from {} to web {WEB} (UDP port 80):",
        args.requests, client.name
    );
    show(&testbed.request(client, Proto::Udp, web, args.requests, TIMEOUT));

    println!("\nservice 'empty' {EMPTY} has no endpoints:");
    show(&testbed.request(client, Proto::Tcp, EMPTY.parse()?, 3, TIMEOUT));

    println!("\nediting the EndpointSlice: node2-pod2 (198.19.2.12) goes away...");
    let web_yaml = std::fs::read_to_string(manifests.path().join("web.yaml"))?;
    let scaled = web_yaml.replace(
        "  - addresses: [198.19.2.12]\n    nodeName: node2\n    conditions: {ready: true, serving: true, terminating: false}\n",
        "",
    );
    if scaled == web_yaml {
        bail!("deploy/examples/demo/web.yaml no longer lists 198.19.2.12 as the demo expects");
    }
    manifests.write("web.yaml", &scaled)?;
    wait_for(
        "node2-pod2 to leave the rotation",
        Duration::from_secs(10),
        || {
            let replies = testbed.request(client, Proto::Tcp, web, 20, TIMEOUT);
            let gone = replies
                .iter()
                .all(|r| r.as_ref().is_ok_and(|r| r.backend != "node2-pod2"));
            if gone {
                Ok(())
            } else {
                Err(tally(&replies))
            }
        },
    )?;
    println!("{} TCP connections after the edit:", args.requests);
    show(&testbed.request(client, Proto::Tcp, web, args.requests, TIMEOUT));

    proxy.terminate().context("stopping switchyard")?;
    println!("\nswitchyard stopped; removing the sandbox.");
    Ok(())
}

fn tally(results: &[Result<Reply, RequestError>]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for result in results {
        let label = match result {
            Ok(reply) => format!(
                "answered by {} (saw client {})",
                reply.backend,
                reply.seen_source.ip()
            ),
            Err(RequestError::Refused) => "refused (fails fast: no endpoints)".to_owned(),
            Err(e) => format!("failed: {e}"),
        };
        *counts.entry(label).or_insert(0) += 1;
    }
    counts
}

fn show(results: &[Result<Reply, RequestError>]) {
    for (label, count) in tally(results) {
        println!("  {count:>4}  {label}");
    }
}
