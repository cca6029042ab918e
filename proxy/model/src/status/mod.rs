//! `switchyard status`: what the kernel holds for this node, decoded into rows.
//!
//! The binary reads the kernel state (the pinned maps of ebpf mode, the `SWY-*` chains of
//! iptables mode) and hands it over as plain data; everything here is pure: [`ebpf`] and
//! [`iptables`] turn that data into the same [`ServiceRow`]s, [`table`] prints them. Rows
//! show what the kernel would do, not what the controller wanted: a slot that is missing, a
//! frontend without backends, an entry nothing names are shown as they are.
use std::net::IpAddr;

use serde::Serialize;

pub mod ebpf;
pub mod iptables;
pub mod table;

/// Everything `switchyard status` found for one mode.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    /// `ebpf` or `iptables`.
    pub mode: &'static str,
    /// Where the state was read: the pin directory, or the iptables backend.
    pub source: String,
    /// One row per frontend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<ServiceRow>>,
    /// One row per backend entry (ebpf: slot of a backend set; iptables: endpoint chain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<BackendEntry>>,
    /// ebpf: the pinned maps, their entries and capacity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maps: Option<Vec<MapRow>>,
    /// ebpf: the pinned links (attached programs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub links: Option<Vec<LinkRow>>,
    /// iptables: our chains and rules per table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chains: Option<Vec<ChainRow>>,
    /// What the rows cannot show: missing pieces, unnamed entries, leftovers.
    pub notes: Vec<String>,
}

/// Which kind of address a frontend is, as far as the kernel state tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum FrontendType {
    /// A cluster IP.
    #[serde(rename = "ClusterIP")]
    ClusterIp,
    /// A nodePort on the node's NodePort addresses.
    NodePort,
    /// One of `spec.externalIPs`.
    #[serde(rename = "ExternalIP")]
    ExternalIp,
    /// A LoadBalancer ingress IP.
    LoadBalancer,
    /// A NodePort, externalIP or LoadBalancer frontend the kernel state does not tell apart
    /// (ebpf mode's entries, iptables mode's verdict rules).
    External,
}

impl FrontendType {
    /// The spelling the table and JSON use.
    pub fn as_str(self) -> &'static str {
        match self {
            FrontendType::ClusterIp => "ClusterIP",
            FrontendType::NodePort => "NodePort",
            FrontendType::ExternalIp => "ExternalIP",
            FrontendType::LoadBalancer => "LoadBalancer",
            FrontendType::External => "External",
        }
    }
}

/// What happens to a new connection to a frontend without backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Refused at once (TCP reset, ICMP port unreachable, or EPERM from `connect()`).
    Reject,
    /// Dropped (a Local traffic policy without a local endpoint).
    Drop,
}

impl Verdict {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Reject => "reject",
            Verdict::Drop => "drop",
        }
    }
}

/// One frontend of one service port and where its new connections go.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServiceRow {
    /// `namespace/name:port/PROTOCOL` (`namespace/name/PROTOCOL` for an unnamed port), or
    /// `None` when the kernel state does not name it.
    pub service: Option<String>,
    /// The frontend's kind.
    #[serde(rename = "type")]
    pub kind: FrontendType,
    /// The frontend address; `None` for an iptables NodePort, which matches every NodePort
    /// address of the node.
    pub address: Option<IpAddr>,
    /// The frontend port.
    pub port: u16,
    /// `TCP` or `UDP`.
    pub protocol: String,
    /// ebpf: `socket` (entries the socket programs use, traffic from this node's sockets) or
    /// `external` (entries the tc programs use, traffic from outside).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<&'static str>,
    /// ebpf: the backend-set id the entry points at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    /// iptables: the chain the frontend's rule jumps to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// ClientIP session affinity timeout.
    pub affinity_timeout_seconds: Option<u32>,
    /// External traffic to remote backends is masqueraded (externalTrafficPolicy Cluster).
    pub masquerade: bool,
    /// loadBalancerSourceRanges admitted (empty: no restriction).
    pub source_ranges: Vec<String>,
    /// Set when there are no backends: what a new connection gets.
    pub verdict: Option<Verdict>,
    /// Where new connections go, in slot (ebpf) or rule (iptables) order.
    pub backends: Vec<BackendRow>,
}

/// One backend of a frontend.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendRow {
    /// Backend address.
    pub address: IpAddr,
    /// Backend port.
    pub port: u16,
    /// Share of new connections (0..1) sent here when no affinity applies.
    pub probability: f64,
    /// ebpf: the slot in the backend set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// iptables: the endpoint chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
}

/// One backend entry of the kernel state, used or not.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendEntry {
    /// The service port it belongs to, when named.
    pub service: Option<String>,
    /// Backend address.
    pub address: IpAddr,
    /// Backend port.
    pub port: u16,
    /// ebpf: backend-set id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    /// ebpf: slot in the set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// ebpf: which of the port's sets (`internal`, `cluster`, `external`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set: Option<&'static str>,
    /// iptables: the endpoint chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// Whether a frontend can send connections here now (ebpf: a service entry counts the
    /// slot; iptables: a balancing rule jumps to the chain). Unused entries are left for
    /// the next sync to delete.
    pub in_use: bool,
}

/// One pinned map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MapRow {
    /// Map name (its pin name).
    pub name: String,
    /// Kernel map type (`hash`, `lru_hash`, `lpm_trie`, `array`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Entries it holds; `None` when they could not be counted.
    pub entries: Option<u64>,
    /// Its `max_entries`.
    pub capacity: u64,
}

/// One pinned link: an attached program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LinkRow {
    /// Pin name under `links/` (the program, and for tc programs the device).
    pub pin: String,
    /// Link type (`cgroup`, `tcx`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Kernel link id.
    pub link_id: u32,
    /// Kernel id of the attached program.
    pub program_id: u32,
    /// Name of the attached program, when the kernel still lists it.
    pub program: Option<String>,
}

/// Our chains of one table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainRow {
    /// `nat`, `filter`, `mangle`.
    pub table: String,
    /// How many `SWY-*` chains.
    pub chains: usize,
    /// How many rules in them.
    pub rules: usize,
}

/// The name of an IP protocol number as status shows it.
pub fn protocol_name(proto: u8) -> String {
    match proto {
        switchyard_common::PROTO_TCP => "TCP".to_owned(),
        switchyard_common::PROTO_UDP => "UDP".to_owned(),
        other => format!("proto-{other}"),
    }
}

/// A share rounded to six decimals, so 1/3 prints as 0.333333 and sums stay readable.
fn share(p: f64) -> f64 {
    (p * 1e6).round() / 1e6
}

/// Rows in a stable order: by service (unnamed last), then kind, address, port, scope
/// (socket first).
fn sort_rows(rows: &mut [ServiceRow]) {
    let key = |r: &ServiceRow| {
        (
            r.service.is_none(),
            r.service.clone(),
            r.kind,
            r.address,
            r.port,
            r.protocol.clone(),
            r.scope.map(|s| s != "socket"),
        )
    };
    rows.sort_by_cached_key(key);
}
