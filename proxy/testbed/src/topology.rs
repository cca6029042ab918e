//! The testbed topology: an underlay bridge, nodes with routed pods, pods and one
//! external client, plus the address plan.
//!
//! ```text
//!   client 203.0.113.10 ──┐
//!                         ├── br0 (underlay netns) ──┬── node1 eth0 198.18.0.11 ──┬── vp1 198.19.1.1/32 ── pod1 eth0 198.19.1.11/32
//!                         │                          │                            └── vp2 198.19.1.1/32 ── pod2 eth0 198.19.1.12/32
//!                         │                          └── node2 eth0 198.18.0.12 ──── vp<j> ... pods 198.19.2.(10+j)/32
//! ```
//!
//! Pods are *routed*, not bridged (the way Calico and Cilium do it): every pod veth's
//! node end `vp<j>` carries the gateway address `198.19.i.1/32` and the node has a host
//! route `198.19.i.(10+j)/32 dev vp<j>`; the pod has `198.19.i.(10+j)/32` on `eth0`, an
//! on-link route to the gateway and a default route via it. So all pod traffic, also
//! between two pods of the same node, passes the node's IP stack (forwarding,
//! netfilter, conntrack), and iptables-style DNAT works between same-node pods without
//! `br_netfilter`. The rest of the node's pod CIDR is an `unreachable` route, so
//! traffic to unassigned pod addresses fails at once instead of leaving the node.
//!
//! The testbed is dual-stack: every node, pod and the client also has an IPv6 address
//! from the documentation prefix 2001:db8::/32, wired the same way (see [`Node::underlay_ipv6`],
//! [`Node::pod_cidr_v6`], [`Pod::ipv6`], [`Client::ipv6`]): underlay 2001:db8:0:1::/64 (node i
//! is `2001:db8:0:1::1i` in hex, so node1 is `::11` like 198.18.0.11), pods 2001:db8:1:i::/64
//! (pod j is `::1j`, gateway `::1`), the client 2001:db8:c::10. Addresses are added with
//! `nodad` so they are usable at once; router solicitations and router advertisements are
//! off, so nothing configures itself.
//!
//! Only 198.18.0.0/15, TEST-NET and 2001:db8::/32 addresses are used, and every link is
//! created from inside a test namespace, so the machine's root namespace is never touched.

use std::ffi::OsStr;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::cgroup::{cgroup2_mount, CgroupTree, CGROUP_PREFIX};
use crate::error::{Error, Result};
use crate::ip;
use crate::netns::{netns_path, write_sysctls, NetNs};
use crate::process::{self, ChildGuard, Finished, OutputMode, Place, Target};

/// Prefix of every testbed id (and so of every namespace name): `swy<pid>x<counter>`.
pub const ID_PREFIX: &str = "swy";

/// Interface name of a node's (or pod's, or the client's) uplink.
pub const UPLINK: &str = "eth0";

/// Name of the bridge in the underlay namespace.
pub const UNDERLAY_BRIDGE: &str = "br0";
/// The nodes' default gateway, on the underlay bridge: a dead end that answers ICMP
/// unreachable for every destination outside the sandbox.
pub const UNDERLAY_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The nodes' IPv6 default gateway on the underlay bridge, a dead end like
/// [`UNDERLAY_GATEWAY`] (IPv6 forwarding is off in the underlay namespace).
pub const UNDERLAY_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 1);

/// Largest supported node count (node i uses 198.18.0.(10+i) and 198.19.i.0/24).
pub const MAX_NODES: usize = 244;

/// Largest supported pod count per node (pod j uses 198.19.i.(10+j)).
pub const MAX_PODS_PER_NODE: usize = 244;

/// Counter making ids unique within one process (the pid makes them unique across).
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// An IPv4 prefix such as `198.19.1.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: Ipv4Addr,
    prefix_len: u8,
}

impl Cidr {
    /// Builds a prefix; host bits of `addr` are cleared. `prefix_len` is capped at 32.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Self {
        let prefix_len = prefix_len.min(32);
        Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & Self::mask(prefix_len)),
            prefix_len,
        }
    }

    fn mask(prefix_len: u8) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(prefix_len))
            .unwrap_or(0)
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` lies inside the prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix_len) == u32::from(self.addr)
    }

    /// The `n`-th address of the prefix (`n = 1` is the first host address); `None` if
    /// it falls outside.
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        let ip = Ipv4Addr::from(u32::from(self.addr).checked_add(n)?);
        self.contains(ip).then_some(ip)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not ADDR/LEN"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let len: u8 = len.parse().map_err(|e| format!("{s:?}: {e}"))?;
        if len > 32 {
            return Err(format!("{s:?}: prefix length above 32"));
        }
        Ok(Cidr::new(addr, len))
    }
}

/// An IPv6 prefix such as `2001:db8:1:1::/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr6 {
    addr: Ipv6Addr,
    prefix_len: u8,
}

impl Cidr6 {
    /// Builds a prefix; host bits of `addr` are cleared. `prefix_len` is capped at 128.
    pub fn new(addr: Ipv6Addr, prefix_len: u8) -> Self {
        let prefix_len = prefix_len.min(128);
        Cidr6 {
            addr: Ipv6Addr::from(u128::from(addr) & Self::mask(prefix_len)),
            prefix_len,
        }
    }

    fn mask(prefix_len: u8) -> u128 {
        u128::MAX
            .checked_shl(128 - u32::from(prefix_len))
            .unwrap_or(0)
    }

    /// The network address.
    pub fn addr(&self) -> Ipv6Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` lies inside the prefix.
    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & Self::mask(self.prefix_len) == u128::from(self.addr)
    }

    /// The `n`-th address of the prefix; `None` if it falls outside.
    pub fn nth(&self, n: u128) -> Option<Ipv6Addr> {
        let ip = Ipv6Addr::from(u128::from(self.addr).checked_add(n)?);
        self.contains(ip).then_some(ip)
    }
}

impl fmt::Display for Cidr6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Size of the testbed to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopologySpec {
    /// Number of nodes (1..=244).
    pub nodes: usize,
    /// Pods on every node (0..=244).
    pub pods_per_node: usize,
}

/// One node: a namespace on the underlay with routed pods and a cgroup.
///
/// A process in the node's host network reaches its own pods from [`Node::pod_gateway`]
/// (the address on the pod veths) and other nodes' pods from [`Node::underlay_ip`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// 1-based index.
    pub index: usize,
    /// `node<index>`.
    pub name: String,
    /// Network namespace name (`ip -n`).
    pub netns: String,
    /// `/var/run/netns/<netns>`, for `nsenter --net=` or `setns`.
    pub netns_path: PathBuf,
    /// Address on the underlay, 198.18.0.(10+index), on `eth0`.
    pub underlay_ip: Ipv4Addr,
    /// The node's pod CIDR, 198.19.index.0/24. No interface carries it: the node has
    /// a /32 route per pod and an `unreachable` route for the rest of it.
    pub pod_cidr: Cidr,
    /// The pods' default gateway, 198.19.index.1; it is on every pod veth's node end
    /// (`vp<j>`) as a /32.
    pub pod_gateway: Ipv4Addr,
    /// IPv6 address on the underlay, 2001:db8:0:1::(0x10+index), a /64 on `eth0`.
    pub underlay_ipv6: Ipv6Addr,
    /// The node's IPv6 pod CIDR, 2001:db8:1:index::/64, routed like [`Node::pod_cidr`].
    pub pod_cidr_v6: Cidr6,
    /// The pods' IPv6 default gateway, 2001:db8:1:index::1, a /128 on every pod veth.
    pub pod_gateway_v6: Ipv6Addr,
    /// The node's cgroup v2 directory; the node's and its pods' processes run in it.
    pub cgroup: PathBuf,
}

impl Node {
    /// Where to run a process in this node's host network.
    pub fn place(&self) -> Place {
        Place::Node(self.index)
    }

    /// The node's underlay IPv4 address ([`Node::underlay_ip`]).
    pub fn ipv4(&self) -> Ipv4Addr {
        self.underlay_ip
    }

    /// The node's underlay IPv6 address ([`Node::underlay_ipv6`]).
    pub fn ipv6(&self) -> Ipv6Addr {
        self.underlay_ipv6
    }
}

impl From<&Node> for Place {
    fn from(node: &Node) -> Place {
        node.place()
    }
}

/// One pod: its own namespace, routed by its node over a veth pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// `node<i>-pod<j>`; also what its echo server answers with.
    pub name: String,
    /// 1-based index of the pod's node.
    pub node: usize,
    /// 1-based index of the pod within its node.
    pub index: usize,
    /// Pod address, 198.19.node.(10+index), a /32 on the pod's `eth0`.
    pub ip: Ipv4Addr,
    /// Pod IPv6 address, 2001:db8:1:node::(0x10+index), a /128 on the pod's `eth0`.
    pub ip6: Ipv6Addr,
    /// Network namespace name.
    pub netns: String,
    /// `/var/run/netns/<netns>`.
    pub netns_path: PathBuf,
    /// Name of the host-side veth in the node's namespace (`vp<index>`); it carries the
    /// node's pod gateway address and the node's host route to the pod.
    pub host_veth: String,
}

impl Pod {
    /// The pod's IPv4 address ([`Pod::ip`]).
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ip
    }

    /// The pod's IPv6 address ([`Pod::ip6`]).
    pub fn ipv6(&self) -> Ipv6Addr {
        self.ip6
    }

    /// Where to run a process in this pod.
    pub fn place(&self) -> Place {
        Place::Pod {
            node: self.node,
            pod: self.index,
        }
    }
}

impl From<&Pod> for Place {
    fn from(pod: &Pod) -> Place {
        pod.place()
    }
}

/// The external client on the underlay; it only reaches node addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// 203.0.113.10 (TEST-NET-3).
    pub ip: Ipv4Addr,
    /// 2001:db8:c::10, a /64 on its `eth0`.
    pub ipv6: Ipv6Addr,
    /// Network namespace name.
    pub netns: String,
    /// `/var/run/netns/<netns>`.
    pub netns_path: PathBuf,
    /// cgroup its processes run in (a sibling of the node cgroups).
    pub cgroup: PathBuf,
}

/// Everything that must be removed again, in teardown order: the cgroups first (which
/// kills every process the testbed started), then the namespaces.
#[derive(Debug)]
struct Resources {
    cgroups: Option<CgroupTree>,
    // Held only for its Drop.
    _pins: BpffsPins,
    namespaces: Vec<NetNs>,
}

/// Where the testbed's proxies pin eBPF state: `/sys/fs/bpf/<testbed id>-<node>`.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Removes the pin directories of one testbed's proxies on drop (after the cgroups, so
/// the proxies are gone); unpinning detaches their programs and frees their maps.
#[derive(Debug)]
struct BpffsPins {
    prefix: String,
}

impl Drop for BpffsPins {
    fn drop(&mut self) {
        remove_pins(&self.prefix);
    }
}

/// Removes every `/sys/fs/bpf/<prefix>-*` directory.
pub(crate) fn remove_pins(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(BPFFS_ROOT) else {
        return;
    };
    let prefix = format!("{prefix}-");
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A complete testbed. Dropping it (also while unwinding from a panic) kills its
/// processes and removes its namespaces and cgroups.
#[derive(Debug)]
pub struct Testbed {
    id: String,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    client: Client,
    underlay_netns: String,
    cgroup_root: PathBuf,
    probe: Option<PathBuf>,
    resources: Resources,
}

/// The cluster CIDR (all pod CIDRs).
pub fn cluster_cidr() -> Cidr {
    Cidr::new(Ipv4Addr::new(198, 19, 0, 0), 16)
}

/// A suggested service CIDR for the proxy under test.
pub fn service_cidr() -> Cidr {
    Cidr::new(Ipv4Addr::new(198, 18, 128, 0), 20)
}

/// The underlay (node) network.
pub fn underlay_cidr() -> Cidr {
    Cidr::new(Ipv4Addr::new(198, 18, 0, 0), 24)
}

/// The external client's network.
pub fn client_cidr() -> Cidr {
    Cidr::new(Ipv4Addr::new(203, 0, 113, 0), 24)
}

/// The IPv6 cluster CIDR (all IPv6 pod CIDRs).
pub fn cluster_cidr_v6() -> Cidr6 {
    Cidr6::new(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0), 48)
}

/// A suggested IPv6 service CIDR for the proxy under test.
pub fn service_cidr_v6() -> Cidr6 {
    Cidr6::new(Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, 0), 112)
}

/// The IPv6 underlay (node) network.
pub fn underlay_cidr_v6() -> Cidr6 {
    Cidr6::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0), 64)
}

/// The external client's IPv6 network.
pub fn client_cidr_v6() -> Cidr6 {
    Cidr6::new(Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0), 64)
}

fn node_ipv6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0x10 + i as u16)
}

fn pod_cidr_v6(i: usize) -> Cidr6 {
    Cidr6::new(Ipv6Addr::new(0x2001, 0xdb8, 1, i as u16, 0, 0, 0, 0), 64)
}

fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 10 + i as u8)
}

fn pod_cidr(i: usize) -> Cidr {
    Cidr::new(Ipv4Addr::new(198, 19, i as u8, 0), 24)
}

impl Testbed {
    /// Builds the topology. On error everything created so far is removed again.
    pub fn new(spec: TopologySpec) -> Result<Testbed> {
        if spec.nodes == 0 || spec.nodes > MAX_NODES {
            return Err(Error::InvalidSpec(format!(
                "nodes must be in 1..={MAX_NODES}, got {}",
                spec.nodes
            )));
        }
        if spec.pods_per_node > MAX_PODS_PER_NODE {
            return Err(Error::InvalidSpec(format!(
                "pods_per_node must be in 0..={MAX_PODS_PER_NODE}, got {}",
                spec.pods_per_node
            )));
        }
        let id = format!(
            "{ID_PREFIX}{}x{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        let mut resources = Resources {
            cgroups: None,
            _pins: BpffsPins { prefix: id.clone() },
            namespaces: Vec::new(),
        };

        // The cgroups come first so that an unusable cgroup mount fails fast.
        let cgroups = CgroupTree::create(cgroup2_mount()?.join(format!("{CGROUP_PREFIX}{id}")))?;
        let cgroups = resources.cgroups.insert(cgroups);
        let cgroup_root = cgroups.root().to_owned();

        let underlay_netns = format!("{id}-u");
        let mut nodes = Vec::with_capacity(spec.nodes);
        let mut pods = Vec::with_capacity(spec.nodes * spec.pods_per_node);
        for i in 1..=spec.nodes {
            let name = format!("node{i}");
            let netns = format!("{id}-n{i}");
            let cidr = pod_cidr(i);
            nodes.push(Node {
                index: i,
                cgroup: cgroups.add_leaf(&name)?,
                name,
                netns_path: netns_path(&netns),
                netns,
                underlay_ip: node_ip(i),
                pod_cidr: cidr,
                pod_gateway: Ipv4Addr::new(198, 19, i as u8, 1),
                underlay_ipv6: node_ipv6(i),
                pod_cidr_v6: pod_cidr_v6(i),
                pod_gateway_v6: Ipv6Addr::new(0x2001, 0xdb8, 1, i as u16, 0, 0, 0, 1),
            });
            for j in 1..=spec.pods_per_node {
                let netns = format!("{id}-n{i}p{j}");
                pods.push(Pod {
                    name: format!("node{i}-pod{j}"),
                    node: i,
                    index: j,
                    ip: Ipv4Addr::new(198, 19, i as u8, 10 + j as u8),
                    ip6: Ipv6Addr::new(0x2001, 0xdb8, 1, i as u16, 0, 0, 0, 0x10 + j as u16),
                    netns_path: netns_path(&netns),
                    netns,
                    host_veth: format!("vp{j}"),
                });
            }
        }
        let client_netns = format!("{id}-c");
        let client = Client {
            ip: Ipv4Addr::new(203, 0, 113, 10),
            ipv6: Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0x10),
            netns_path: netns_path(&client_netns),
            netns: client_netns,
            cgroup: cgroups.add_leaf("client")?,
        };

        // Take ownership of every name before creating anything, so a failure half-way
        // through the batch still removes the namespaces that were created.
        let all_netns: Vec<String> = std::iter::once(underlay_netns.clone())
            .chain(nodes.iter().map(|n| n.netns.clone()))
            .chain(pods.iter().map(|p| p.netns.clone()))
            .chain(std::iter::once(client.netns.clone()))
            .collect();
        resources
            .namespaces
            .extend(all_netns.iter().cloned().map(NetNs::owned));
        let mut script = String::new();
        for ns in &all_netns {
            script.push_str(&format!("netns add {ns}\n"));
        }
        ip::batch(None, &script)?;

        let testbed = Testbed {
            id,
            nodes,
            pods,
            client,
            underlay_netns,
            cgroup_root,
            probe: None,
            resources,
        };
        // If wiring fails, `testbed` is dropped here and cleans up after itself.
        testbed.wire()?;
        Ok(testbed)
    }

    /// Sets sysctls and creates links, addresses and routes inside the namespaces.
    fn wire(&self) -> Result<()> {
        // IPv6 is on (the address plan is dual-stack) but configures nothing by itself:
        // no router solicitations or advertisements, no DAD (addresses also carry
        // `nodad`), so no autoconfiguration traffic shows up in the proxy's datapath and
        // every address is usable at once.
        // Forwarding is explicitly off everywhere but on nodes (new namespaces would
        // otherwise inherit whatever the root namespace has).
        for ns in &self.resources.namespaces {
            write_sysctls(
                ns.path(),
                &[
                    ("net/ipv6/conf/all/disable_ipv6", "0", false),
                    ("net/ipv6/conf/default/disable_ipv6", "0", false),
                    ("net/ipv6/conf/all/forwarding", "0", false),
                    ("net/ipv6/conf/default/accept_ra", "0", false),
                    ("net/ipv6/conf/default/router_solicitations", "0", false),
                    ("net/ipv6/conf/default/accept_dad", "0", false),
                    ("net/ipv6/conf/default/dad_transmits", "0", false),
                    ("net/ipv6/icmp/ratelimit", "0", false),
                    ("net/ipv4/ip_forward", "0", false),
                    // No ICMP error rate limit, so a burst of requests to an unreachable
                    // or rejected destination is refused every time rather than partly
                    // timing out; tests count refusals, not the kernel's token bucket.
                    ("net/ipv4/icmp_ratelimit", "0", false),
                ],
            )?;
        }
        for node in &self.nodes {
            // rp_filter off like on typical Kubernetes nodes: a proxy that DNATs or
            // redirects traffic must not have it dropped by strict reverse-path checks
            // (new namespaces inherit the root namespace's setting otherwise).
            write_sysctls(
                &node.netns_path,
                &[
                    ("net/ipv4/ip_forward", "1", false),
                    ("net/ipv6/conf/all/forwarding", "1", false),
                    // Forwarding would otherwise make the node accept nothing from RAs
                    // anyway; explicit so no RA ever configures a node.
                    ("net/ipv6/conf/default/accept_ra", "0", false),
                    ("net/ipv4/conf/all/rp_filter", "0", false),
                    ("net/ipv4/conf/default/rp_filter", "0", false),
                ],
            )?;
        }

        let u = &self.underlay_netns;
        write_sysctls(
            &netns_path(u),
            &[("net/ipv6/conf/all/forwarding", "1", false)],
        )?;
        ip::batch(
            Some(u),
            &format!(
                "link set lo up\n\
                 link add {UNDERLAY_BRIDGE} type bridge\n\
                 link set {UNDERLAY_BRIDGE} up\n"
            ),
        )?;
        for node in &self.nodes {
            ip::batch(
                Some(&node.netns),
                &format!(
                    "link set lo up\n\
                     link add {UPLINK} type veth peer name vn{i} netns {u}\n\
                     addr add {ip}/24 dev {UPLINK}\n\
                     addr add {ip6}/64 dev {UPLINK} nodad\n\
                     link set {UPLINK} up\n",
                    i = node.index,
                    ip = node.underlay_ip,
                    ip6 = node.underlay_ipv6,
                ),
            )?;
        }
        ip::batch(
            Some(&self.client.netns),
            &format!(
                "link set lo up\n\
                 link add {UPLINK} type veth peer name vc netns {u}\n\
                 addr add {ip}/24 dev {UPLINK}\n\
                 addr add {ip6}/64 dev {UPLINK} nodad\n\
                 link set {UPLINK} up\n",
                ip = self.client.ip,
                ip6 = self.client.ipv6,
            ),
        )?;
        for pod in &self.pods {
            ip::batch(
                Some(&pod.netns),
                &format!(
                    "link set lo up\n\
                     link add {UPLINK} type veth peer name {veth} netns {node_ns}\n\
                     addr add {ip}/32 dev {UPLINK}\n\
                     addr add {ip6}/128 dev {UPLINK} nodad\n\
                     link set {UPLINK} up\n",
                    veth = pod.host_veth,
                    node_ns = self.node(pod.node).netns,
                    ip = pod.ip,
                    ip6 = pod.ip6,
                ),
            )?;
        }

        // Attach the far ends now that they exist, then add routes over live links.
        let mut script = String::new();
        for node in &self.nodes {
            let i = node.index;
            script.push_str(&format!(
                "link set vn{i} master {UNDERLAY_BRIDGE}\nlink set vn{i} up\n"
            ));
        }
        script.push_str(&format!(
            "link set vc master {UNDERLAY_BRIDGE}\nlink set vc up\n"
        ));
        // The nodes' default gateway lives on the bridge. With forwarding off and no
        // other links it routes nothing anywhere: packets for unknown destinations are
        // answered with ICMP unreachable at once, and nothing leaves the sandbox.
        script.push_str(&format!(
            "addr add {UNDERLAY_GATEWAY}/24 dev {UNDERLAY_BRIDGE}\n\
             addr add {UNDERLAY_GATEWAY_V6}/64 dev {UNDERLAY_BRIDGE} nodad\n"
        ));
        // IPv6 does not answer ICMP for foreign destinations with forwarding off (it
        // drops them silently), so here IPv6 forwards, but only into an `unreachable`
        // default route: unknown destinations are refused at once, and nothing leaves.
        script.push_str("route add unreachable ::/0\n");
        ip::batch(Some(u), &script)?;

        for node in &self.nodes {
            let mut script = String::new();
            // Routed pods: the gateway /32 on every pod veth (so the node answers ARP
            // for it on each of them) and a host route per pod.
            for pod in self.pods_on(node.index) {
                script.push_str(&format!(
                    "addr add {gw}/32 dev {v}\n\
                     addr add {gw6}/128 dev {v} nodad\n\
                     link set {v} up\n\
                     route add {ip}/32 dev {v}\n\
                     route add {ip6}/128 dev {v}\n",
                    gw = node.pod_gateway,
                    gw6 = node.pod_gateway_v6,
                    v = pod.host_veth,
                    ip = pod.ip,
                    ip6 = pod.ip6,
                ));
            }
            // Unassigned addresses of the own pod CIDR fail fast (ICMP host unreachable)
            // instead of following some less specific route.
            script.push_str(&format!("route add unreachable {}\n", node.pod_cidr));
            script.push_str(&format!("route add unreachable {}\n", node.pod_cidr_v6));
            // Replies to the external client go straight back over the underlay.
            script.push_str(&format!("route add {} dev {UPLINK}\n", client_cidr()));
            script.push_str(&format!("route add {} dev {UPLINK}\n", client_cidr_v6()));
            // Like a real node, a default route: node-originated traffic to a service
            // address needs some route before the nat OUTPUT chain can rewrite it.
            script.push_str(&format!(
                "route add default via {UNDERLAY_GATEWAY} dev {UPLINK}\n\
                 route add ::/0 via {UNDERLAY_GATEWAY_V6} dev {UPLINK}\n"
            ));
            for other in self.nodes.iter().filter(|o| o.index != node.index) {
                script.push_str(&format!(
                    "route add {} via {} dev {UPLINK}\n\
                     route add {} via {} dev {UPLINK}\n",
                    other.pod_cidr, other.underlay_ip, other.pod_cidr_v6, other.underlay_ipv6
                ));
            }
            ip::batch(Some(&node.netns), &script)?;
        }
        // A /32 pod address has no connected route: reach the gateway on-link first.
        for pod in &self.pods {
            ip::batch(
                Some(&pod.netns),
                &format!(
                    "route add {gw} dev {UPLINK} scope link\n\
                     route add default via {gw} dev {UPLINK}\n\
                     route add {gw6} dev {UPLINK}\n\
                     route add ::/0 via {gw6} dev {UPLINK}\n",
                    gw = self.node(pod.node).pod_gateway,
                    gw6 = self.node(pod.node).pod_gateway_v6,
                ),
            )?;
        }
        // The client reaches node addresses on-link and nothing else.
        ip::batch(
            Some(&self.client.netns),
            &format!(
                "route add {} dev {UPLINK}\n\
                 route add {} dev {UPLINK}\n",
                underlay_cidr(),
                underlay_cidr_v6()
            ),
        )?;
        Ok(())
    }

    /// The unique id (`swy<pid>x<n>`) that prefixes every namespace name.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The pin directory for `node`'s proxy (`--bpffs-path`), removed with the testbed.
    pub fn bpffs_dir(&self, node: &Node) -> PathBuf {
        Path::new(BPFFS_ROOT).join(format!("{}-{}", self.id, node.name))
    }

    /// All nodes, in index order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `index` (1-based).
    ///
    /// # Panics
    /// If there is no such node: that is a bug in the calling test.
    pub fn node(&self, index: usize) -> &Node {
        match self.try_node(index) {
            Some(node) => node,
            None => panic!("testbed has no node{index} (it has {})", self.nodes.len()),
        }
    }

    /// Node `index` (1-based), if it exists.
    pub fn try_node(&self, index: usize) -> Option<&Node> {
        index.checked_sub(1).and_then(|i| self.nodes.get(i))
    }

    /// The node names, `node1`...
    pub fn node_names(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.name.as_str()).collect()
    }

    /// All pods, grouped by node.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Takes node `node`'s IPv6 addresses away (`on == false`: its underlay address and the
    /// pod gateway on every pod veth), making it an IPv4-only node, or gives them back. Its
    /// IPv6 routes stay (the kernel drops only the connected prefix route with the address).
    pub fn set_node_ipv6(&self, node: usize, on: bool) -> Result<()> {
        let node = self.node(node);
        let (verb, flags) = if on { ("add", " nodad") } else { ("del", "") };
        let mut script = format!(
            "addr {verb} {}/64 dev {UPLINK}{flags}\n",
            node.underlay_ipv6
        );
        for pod in self.pods_on(node.index) {
            script.push_str(&format!(
                "addr {verb} {}/128 dev {}{flags}\n",
                node.pod_gateway_v6, pod.host_veth
            ));
        }
        ip::batch(Some(&node.netns), &script)
    }

    /// The pods of node `node` (1-based).
    pub fn pods_on(&self, node: usize) -> impl Iterator<Item = &Pod> + '_ {
        self.pods.iter().filter(move |p| p.node == node)
    }

    /// Pod `pod` of node `node` (both 1-based).
    ///
    /// # Panics
    /// If there is no such pod: that is a bug in the calling test.
    pub fn pod(&self, node: usize, pod: usize) -> &Pod {
        match self.try_pod(node, pod) {
            Some(p) => p,
            None => panic!("testbed has no node{node}-pod{pod}"),
        }
    }

    /// Pod `pod` of node `node`, if it exists.
    pub fn try_pod(&self, node: usize, pod: usize) -> Option<&Pod> {
        self.pods.iter().find(|p| p.node == node && p.index == pod)
    }

    /// The pod called `name` (`node1-pod2`), if any.
    pub fn pod_by_name(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// The external client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Name of the underlay namespace holding the bridge `br0`.
    pub fn underlay_netns(&self) -> &str {
        &self.underlay_netns
    }

    /// Names of all namespaces this testbed owns.
    pub fn netns_names(&self) -> Vec<&str> {
        self.resources.namespaces.iter().map(|n| n.name()).collect()
    }

    /// The testbed's top-level cgroup directory (parent of the node cgroups).
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    /// The cluster CIDR, 198.19.0.0/16.
    pub fn cluster_cidr(&self) -> Cidr {
        cluster_cidr()
    }

    /// A service CIDR to configure the proxy with, 198.18.128.0/20.
    pub fn service_cidr(&self) -> Cidr {
        service_cidr()
    }

    /// The IPv6 cluster CIDR, 2001:db8:1::/48.
    pub fn cluster_cidr_v6(&self) -> Cidr6 {
        cluster_cidr_v6()
    }

    /// An IPv6 service CIDR, 2001:db8:5::/112.
    pub fn service_cidr_v6(&self) -> Cidr6 {
        service_cidr_v6()
    }

    /// Uses `path` as the swy-probe binary instead of [`crate::probe_binary`]'s search.
    pub fn set_probe_binary(&mut self, path: impl Into<PathBuf>) {
        self.probe = Some(path.into());
    }

    /// The swy-probe binary this testbed runs.
    pub fn probe(&self) -> Result<PathBuf> {
        match &self.probe {
            Some(p) => Ok(p.clone()),
            None => crate::probe::probe_binary(),
        }
    }

    /// Resolves a place to the namespace and cgroup a child must join.
    pub(crate) fn target(&self, place: Place) -> Result<Target> {
        let missing = || Error::NoSuchPlace(place.to_string());
        let (netns_path, cgroup) = match place {
            Place::Node(i) => {
                let node = self.try_node(i).ok_or_else(missing)?;
                (node.netns_path.clone(), node.cgroup.clone())
            }
            Place::Pod { node, pod } => {
                let p = self.try_pod(node, pod).ok_or_else(missing)?;
                (p.netns_path.clone(), self.node(node).cgroup.clone())
            }
            Place::Client => (self.client.netns_path.clone(), self.client.cgroup.clone()),
        };
        Ok(Target {
            label: place.to_string(),
            netns_path,
            cgroup,
        })
    }

    /// Starts `program args...` in `place` with captured output.
    pub fn spawn<I, S>(
        &self,
        place: impl Into<Place>,
        program: impl AsRef<OsStr>,
        args: I,
    ) -> Result<ChildGuard>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.spawn_with(place, process::command(program, args), OutputMode::Capture)
    }

    /// Starts a prepared `Command` (env, cwd... are kept; stdin is `/dev/null`) in
    /// `place` with the given output handling.
    pub fn spawn_with(
        &self,
        place: impl Into<Place>,
        cmd: Command,
        output: OutputMode,
    ) -> Result<ChildGuard> {
        process::spawn(&self.target(place.into())?, cmd, output)
    }

    /// Runs `program args...` in `place` to completion (killed after `timeout`) and
    /// returns its status and output.
    pub fn run<I, S>(
        &self,
        place: impl Into<Place>,
        program: impl AsRef<OsStr>,
        args: I,
        timeout: Duration,
    ) -> Result<Finished>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.spawn(place, program, args)?.wait_for_output(timeout)
    }
}
