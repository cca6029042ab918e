//! Set-up shared by the tests that run switchyard on a testbed: the testbed's Node objects and
//! an echo server in every pod.
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use crate::error::Result;
use crate::probe_protocol::{Proto, Reply, RequestError};
use crate::process::{ChildGuard, Place};
use crate::switchyard::wait_for;
use crate::topology::Testbed;

/// The `topology.kubernetes.io/zone` label of testbed node `index` (1-based) in
/// [`Testbed::nodes_yaml`]: `zone-a` for node1, `zone-b` for node2, and so on.
pub fn node_zone(index: usize) -> String {
    let letter = char::from(b'a' + u8::try_from(index.saturating_sub(1) % 26).unwrap_or(0));
    format!("zone-{letter}")
}

/// A Node object named `name` with `address` as its `InternalIP`, in zone `zone`.
pub fn node_yaml(name: &str, address: std::net::Ipv4Addr, zone: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\n\
         metadata: {{name: {name}, labels: {{topology.kubernetes.io/zone: {zone}}}}}\n\
         status: {{addresses: [{{type: InternalIP, address: {address}}}]}}\n"
    )
}

/// A dual-stack Node object named `name` with `ipv4` and `ipv6` as its `InternalIP`s, in zone
/// `zone`.
pub fn node_yaml_dual(
    name: &str,
    ipv4: std::net::Ipv4Addr,
    ipv6: std::net::Ipv6Addr,
    zone: &str,
) -> String {
    format!(
        "apiVersion: v1\nkind: Node\n\
         metadata: {{name: {name}, labels: {{topology.kubernetes.io/zone: {zone}}}}}\n\
         status: {{addresses: [{{type: InternalIP, address: {ipv4}}}, \
         {{type: InternalIP, address: \"{ipv6}\"}}]}}\n"
    )
}

/// The names of the backends that answered, and `error: …` for each kind of failure.
pub fn backend_names(results: &[std::result::Result<Reply, RequestError>]) -> BTreeSet<String> {
    results
        .iter()
        .map(|r| match r {
            Ok(reply) => reply.backend.clone(),
            Err(e) => format!("error: {e}"),
        })
        .collect()
}

impl Testbed {
    /// A Node object for every testbed node, as multi-document YAML: named like the node, with
    /// its underlay addresses (IPv4 first, then IPv6) as the `InternalIP`s (the addresses that
    /// serve NodePorts) and the zone label of [`node_zone`], so that every node is in a zone of
    /// its own.
    pub fn nodes_yaml(&self) -> String {
        self.nodes()
            .iter()
            .map(|n| node_yaml_dual(&n.name, n.ipv4(), n.ipv6(), &node_zone(n.index)))
            .collect::<Vec<_>>()
            .join("---\n")
    }

    /// The `endpoints:` items of an EndpointSlice for the pods named (`node1-pod2`...), each
    /// ready and serving, on its node, as YAML lines indented for a top-level `endpoints:` key.
    pub fn ready_endpoints_yaml(&self, pods: &[&str]) -> String {
        pods.iter()
            .map(|name| {
                let pod = self.pod_by_name(name).expect("a testbed pod name");
                format!(
                    "  - addresses: [{}]\n    nodeName: node{}\n    \
                     conditions: {{ready: true, serving: true, terminating: false}}\n",
                    pod.ip, pod.node
                )
            })
            .collect()
    }

    /// Like [`Testbed::ready_endpoints_yaml`], with the pods' IPv6 addresses (for an
    /// `addressType: IPv6` slice).
    pub fn ready_endpoints6_yaml(&self, pods: &[&str]) -> String {
        pods.iter()
            .map(|name| {
                let pod = self.pod_by_name(name).expect("a testbed pod name");
                format!(
                    "  - addresses: [\"{}\"]\n    nodeName: node{}\n    \
                     conditions: {{ready: true, serving: true, terminating: false}}\n",
                    pod.ip6, pod.node
                )
            })
            .collect()
    }

    /// Waits until one request from `place` to `addr` is answered (e.g. until a proxy has
    /// programmed a service); the error carries the last observation.
    pub fn wait_for_answer(
        &self,
        place: impl Into<Place>,
        proto: Proto,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Reply> {
        let place = place.into();
        wait_for(&format!("{addr} to answer {place}"), timeout, || match self
            .request(place, proto, addr, 1, Duration::from_millis(1500))
            .pop()
        {
            Some(Ok(reply)) => Ok(reply),
            other => Err(other),
        })
    }

    /// Starts an echo server in every pod, as [`Testbed::start_echo`] does for one (port 0 =
    /// that protocol not served). The servers stop when the returned guards are dropped.
    pub fn start_echo_everywhere(&self, tcp_port: u16, udp_port: u16) -> Result<Vec<ChildGuard>> {
        self.pods()
            .iter()
            .map(|pod| self.start_echo(pod, tcp_port, udp_port))
            .collect()
    }
}
