//! Set-up shared by the tests that run switchyard on a testbed: the testbed's Node objects and
//! an echo server in every pod.
use crate::error::Result;
use crate::process::ChildGuard;
use crate::topology::Testbed;

impl Testbed {
    /// A Node object for every testbed node, as multi-document YAML: named like the node, with
    /// its underlay address as the `InternalIP` (the addresses that serve NodePorts).
    pub fn nodes_yaml(&self) -> String {
        self.nodes()
            .iter()
            .map(|n| {
                format!(
                    "apiVersion: v1\nkind: Node\nmetadata: {{name: {}}}\n\
                     status: {{addresses: [{{type: InternalIP, address: {}}}]}}\n",
                    n.name, n.underlay_ip
                )
            })
            .collect::<Vec<_>>()
            .join("---\n")
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
