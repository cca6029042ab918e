//! One owner per frontend: when service ports claim the same destination, the model decides
//! which one serves it, so both dataplanes resolve the conflict identically and the eBPF
//! planner never meets one.
//!
//! The API server keeps cluster IPs and nodePorts unique, but not externalIPs or
//! LoadBalancer IPs, and hand-written manifests keep nothing unique. Upstream kube-proxy has
//! no rule for this: whichever rule its sync wrote first wins, which differs between nodes and
//! between syncs (kubernetes/kubernetes#69599). Switchyard decides deterministically:
//!
//! 1. A claim's *class* first: a cluster IP beats an externalIP or LoadBalancer IP, which
//!    beats a NodePort on a node address. This is also what the iptables chain layout does on
//!    its own (SWY-SERVICES is traversed before SWY-NODEPORTS, whose rules match every local
//!    address and so cannot give up a single one), and it keeps an externalIP from hijacking
//!    a cluster IP (CVE-2020-8554).
//! 2. Within a class, the older Service by `metadata.creationTimestamp`, then the one first by
//!    namespace/name, as Kubernetes APIs resolve conflicting claims (e.g. Gateway API). A
//!    Service without a timestamp (manifests) counts as younger than any with one.
//! 3. Then the port name, then the kind (an externalIP before a LoadBalancer IP, upstream's
//!    rule order within a service).
//!
//! The loser loses only the contested frontend, reported by one [`InputWarning`] naming both
//! services. Two exceptions, so that the iptables rendering can follow: a port losing its
//! cluster IP is not served at all (its rules hang off the cluster IP), and a port losing its
//! nodePort number to another port's loses it on every address (the NodePort rule matches all
//! of them).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::objects::ObjectKey;
use super::service_port::{DesiredState, FrontendKind, Protocol, ServicePort, ServicePortKey};
use super::warnings::{kinds, InputWarning};

/// Creation timestamps of the services the state was built from.
pub(crate) type CreationTimes = BTreeMap<ObjectKey, Option<Time>>;

/// Who wins a contested frontend: smaller is stronger.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    class: u8,
    /// `false` sorts first: a known timestamp beats an unknown one.
    no_timestamp: bool,
    created: Option<Time>,
    port: ServicePortKey,
    kind: u8,
}

fn class(kind: FrontendKind) -> u8 {
    match kind {
        FrontendKind::ClusterIp => 0,
        FrontendKind::ExternalIp | FrontendKind::LoadBalancer => 1,
        FrontendKind::NodePort => 2,
    }
}

fn kind_order(kind: FrontendKind) -> u8 {
    match kind {
        FrontendKind::ClusterIp => 0,
        FrontendKind::ExternalIp => 1,
        FrontendKind::LoadBalancer => 2,
        FrontendKind::NodePort => 3,
    }
}

fn rank(created: &CreationTimes, port: &ServicePortKey, kind: FrontendKind) -> Rank {
    let time = created.get(&port.service()).cloned().flatten();
    Rank {
        class: class(kind),
        no_timestamp: time.is_none(),
        created: time,
        port: port.clone(),
        kind: kind_order(kind),
    }
}

/// What a frontend is, for the warning: the field it comes from and how to say it.
fn describe(kind: FrontendKind) -> (&'static str, &'static str) {
    match kind {
        FrontendKind::ClusterIp => ("spec.clusterIPs", "cluster IP"),
        FrontendKind::ExternalIp => ("spec.externalIPs", "external IP"),
        FrontendKind::LoadBalancer => ("status.loadBalancer.ingress", "LoadBalancer IP"),
        FrontendKind::NodePort => ("spec.ports[].nodePort", "NodePort"),
    }
}

fn destination(ip: IpAddr, port: u16, protocol: Protocol) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}:{port}/{protocol}"),
        IpAddr::V6(_) => format!("[{ip}]:{port}/{protocol}"),
    }
}

/// The warning for `loser`, whose `what` went to `winner`'s `winner_kind`.
fn lost(
    loser: &ServicePortKey,
    kind: FrontendKind,
    what: &str,
    winner: &ServicePortKey,
    winner_kind: FrontendKind,
    consequence: &str,
) -> InputWarning {
    let (field, _) = describe(kind);
    let (_, winner_says) = describe(winner_kind);
    let owner = if winner == loser {
        format!("this port's own {winner_says}")
    } else {
        format!(
            "the {winner_says} of Service {} (port {winner})",
            winner.service()
        )
    };
    InputWarning::new(
        kinds::SERVICE,
        &loser.service(),
        field,
        format!("{what} is also {owner}, which takes precedence; {consequence} for {loser}"),
    )
}

/// Removes every contested frontend from all but its owner (see the module docs) and reports
/// each loss.
pub(crate) fn resolve(
    state: &mut DesiredState,
    created: &CreationTimes,
    warnings: &mut Vec<InputWarning>,
) {
    resolve_node_ports(state, created, warnings);
    resolve_cluster_ips(state, created, warnings);
    resolve_addresses(state, created, warnings);
}

/// One nodePort number per protocol: the losers keep no NodePort at all.
fn resolve_node_ports(
    state: &mut DesiredState,
    created: &CreationTimes,
    warnings: &mut Vec<InputWarning>,
) {
    let mut claims: BTreeMap<(Protocol, u16), Vec<Rank>> = BTreeMap::new();
    for port in state.ports.values() {
        if let Some(number) = port.node_port {
            claims
                .entry((port.key.protocol, number))
                .or_default()
                .push(rank(created, &port.key, FrontendKind::NodePort));
        }
    }
    for ((protocol, number), mut ranks) in claims {
        ranks.sort();
        let Some((winner, losers)) = ranks.split_first() else {
            continue;
        };
        for loser in losers {
            let Some(port) = state.ports.get_mut(&loser.port) else {
                continue;
            };
            let port = Arc::make_mut(port);
            port.node_port = None;
            port.frontends.retain(|f| f.kind != FrontendKind::NodePort);
            warnings.push(lost(
                &loser.port,
                FrontendKind::NodePort,
                &format!("nodePort {number}/{protocol}"),
                &winner.port,
                FrontendKind::NodePort,
                "no NodePort is served",
            ));
        }
    }
}

/// One port per cluster IP destination: the losers are not served at all.
fn resolve_cluster_ips(
    state: &mut DesiredState,
    created: &CreationTimes,
    warnings: &mut Vec<InputWarning>,
) {
    let mut claims: BTreeMap<(IpAddr, u16, Protocol), Vec<Rank>> = BTreeMap::new();
    for port in state.ports.values() {
        for f in port.frontends_of(FrontendKind::ClusterIp) {
            claims
                .entry((f.ip, f.port, port.key.protocol))
                .or_default()
                .push(rank(created, &port.key, f.kind));
        }
    }
    for ((ip, number, protocol), mut ranks) in claims {
        ranks.sort();
        ranks.dedup_by(|a, b| a.port == b.port);
        let Some((winner, losers)) = ranks.split_first() else {
            continue;
        };
        for loser in losers {
            if state.ports.remove(&loser.port).is_some() {
                warnings.push(lost(
                    &loser.port,
                    FrontendKind::ClusterIp,
                    &destination(ip, number, protocol),
                    &winner.port,
                    FrontendKind::ClusterIp,
                    "the port is not served",
                ));
            }
        }
    }
}

/// One owner per remaining (address, port, protocol): the losers drop that frontend.
fn resolve_addresses(
    state: &mut DesiredState,
    created: &CreationTimes,
    warnings: &mut Vec<InputWarning>,
) {
    let mut claims: BTreeMap<(IpAddr, u16, Protocol), Vec<Rank>> = BTreeMap::new();
    for port in state.ports.values() {
        for f in &port.frontends {
            claims
                .entry((f.ip, f.port, port.key.protocol))
                .or_default()
                .push(rank(created, &port.key, f.kind));
        }
    }
    for ((ip, number, protocol), mut ranks) in claims {
        ranks.sort();
        let Some((winner, losers)) = ranks.split_first() else {
            continue;
        };
        let winner_kind = kind_of(winner);
        for loser in losers {
            let kind = kind_of(loser);
            let Some(port) = state.ports.get_mut(&loser.port) else {
                continue;
            };
            drop_frontend(Arc::make_mut(port), kind, ip, number);
            warnings.push(lost(
                &loser.port,
                kind,
                &destination(ip, number, protocol),
                &winner.port,
                winner_kind,
                "it is not served there",
            ));
        }
    }
}

fn kind_of(rank: &Rank) -> FrontendKind {
    match rank.kind {
        0 => FrontendKind::ClusterIp,
        1 => FrontendKind::ExternalIp,
        2 => FrontendKind::LoadBalancer,
        _ => FrontendKind::NodePort,
    }
}

/// Takes one frontend away from a port, also from the address list the iptables rendering
/// reads. A lost NodePort address stays in the NodePort rule, which the owner's rule in
/// SWY-SERVICES shadows.
fn drop_frontend(port: &mut ServicePort, kind: FrontendKind, ip: IpAddr, number: u16) {
    port.frontends
        .retain(|f| !(f.kind == kind && f.ip == ip && f.port == number));
    match kind {
        FrontendKind::ExternalIp => port.external_ips.retain(|a| *a != ip),
        FrontendKind::LoadBalancer => port.load_balancer_ips.retain(|a| *a != ip),
        FrontendKind::ClusterIp | FrontendKind::NodePort => {}
    }
}
