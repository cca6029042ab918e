//! The connection benchmark (the default of `cargo xtask bench`): new-connection cost from a
//! pod to a backend on another node, through each dataplane's ClusterIP and directly to the
//! pod IP, measured in one run so the ratios compare like with like on the same machine.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use switchyard_testbed::{
    start_switchyard, switchyard_binary, wait_for, Manifests, Proto, RequestSpec, Testbed,
    TopologySpec,
};

/// Options of the connection benchmark.
#[derive(clap::Args)]
pub struct Args {
    /// Connections per round.
    #[arg(long, default_value_t = 2000)]
    pub connections: usize,
    /// Rounds per path (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Modes to measure besides the direct path.
    #[arg(long, value_delimiter = ',', default_value = "iptables,ebpf")]
    pub modes: Vec<String>,
}

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: bench, namespace: bench}\n\
spec: {clusterIP: 198.18.128.50, ports: [{name: http, port: 80, targetPort: 8080}]}\n---\n\
apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
metadata: {name: bench-1, namespace: bench, labels: {kubernetes.io/service-name: bench}}\n\
addressType: IPv4\nports: [{name: http, port: 8080}]\n\
endpoints: [{addresses: [198.19.2.11], nodeName: node2}]\n";

/// Runs the connection benchmark and prints its table.
pub fn run(args: &Args) -> anyhow::Result<()> {
    // Every path gets its own sandbox, all built up front; rounds then alternate between the
    // paths so drift on the machine hits them all alike.
    let mut paths = vec![Path::new(args, None)?];
    for mode in &args.modes {
        paths.push(Path::new(args, Some(mode))?);
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); paths.len()];
    for _ in 0..args.rounds.max(1) {
        for (path, samples) in paths.iter().zip(&mut times) {
            samples.push(path.round()?);
        }
    }
    let medians: Vec<Duration> = times
        .iter_mut()
        .map(|t| {
            t.sort();
            t[t.len() / 2]
        })
        .collect();
    let direct = medians[0].as_secs_f64();
    println!(
        "\n{} TCP connections (connect, one reply line, close) from node1-pod1 to a backend on node2; median of {} alternating rounds",
        args.connections, args.rounds
    );
    println!(
        "{:<22} {:>12} {:>12} {:>10}",
        "path", "conn/s", "us/conn", "vs direct"
    );
    for (path, took) in paths.iter().zip(&medians) {
        let secs = took.as_secs_f64();
        println!(
            "{:<22} {:>12.0} {:>12.1} {:>9.2}x",
            path.name,
            args.connections as f64 / secs,
            secs * 1e6 / args.connections as f64,
            secs / direct
        );
    }
    Ok(())
}

/// One measured path: a sandbox, its proxies, and the address the client connects to.
struct Path {
    name: String,
    spec: RequestSpec,
    // Field order is drop order: proxies and servers stop before the sandbox goes.
    _proxies: Vec<switchyard_testbed::ChildGuard>,
    _echo: switchyard_testbed::ChildGuard,
    _manifests: Manifests,
    testbed: Testbed,
}

impl Path {
    /// Builds the sandbox for `mode` (None: straight to the pod IP) and waits until it serves.
    fn new(args: &Args, mode: Option<&str>) -> anyhow::Result<Self> {
        let testbed = Testbed::new(TopologySpec {
            nodes: 2,
            pods_per_node: 1,
        })?;
        let backend = testbed.pod(2, 1).clone();
        let echo = testbed.start_echo(&backend, 8080, 0)?;
        let manifests = Manifests::new()?;
        manifests.write("bench.yaml", SERVICE)?;
        let client = testbed.pod(1, 1).clone();
        let (name, target, proxies) = match mode {
            None => (
                "direct (pod IP)".to_owned(),
                SocketAddr::from((backend.ip, 8080)),
                Vec::new(),
            ),
            Some(mode) => {
                let binary = switchyard_binary()?;
                let proxies = testbed
                    .nodes()
                    .iter()
                    .map(|node| start_switchyard(&testbed, node, &binary, mode, &manifests, &[]))
                    .collect::<Result<Vec<_>, _>>()?;
                let vip: SocketAddr = "198.18.128.50:80".parse()?;
                wait_for(
                    "the ClusterIP to answer",
                    Duration::from_secs(20),
                    || match testbed
                        .request(&client, Proto::Tcp, vip, 1, Duration::from_secs(1))
                        .pop()
                    {
                        Some(Ok(_)) => Ok(()),
                        other => Err(other),
                    },
                )
                .with_context(|| format!("{mode}: {}", proxies[0].stderr()))?;
                (format!("{mode} (ClusterIP)"), vip, proxies)
            }
        };
        Ok(Self {
            name,
            spec: RequestSpec::new(Proto::Tcp, target)
                .count(args.connections)
                .timeout(Duration::from_secs(2)),
            _proxies: proxies,
            _echo: echo,
            _manifests: manifests,
            testbed,
        })
    }

    /// One round: all connections, timed; any failure fails the benchmark.
    fn round(&self) -> anyhow::Result<Duration> {
        let client = self.testbed.pod(1, 1);
        let started = Instant::now();
        let results = self.testbed.request_with(client, &self.spec)?;
        let took = started.elapsed();
        let failed = results.iter().filter(|r| r.is_err()).count();
        if failed > 0 {
            bail!(
                "{failed} of {} connections failed via {}",
                results.len(),
                self.name
            );
        }
        Ok(took)
    }
}
