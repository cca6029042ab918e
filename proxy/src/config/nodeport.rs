//! `nodePortAddresses` / `--nodeport-addresses`: CIDRs, or the keyword `primary` (kube-proxy
//! 1.29+), which means the node's primary IP of each family as the Node object reports it.
//!
//! As upstream, `primary` is resolved once at start-up (`cmd/kube-proxy/app/server.go`), from
//! the first snapshot's Node object: the rules then hold fixed `/32` and `/128` CIDRs.
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;

use super::ConfigError;

/// The keyword for the node's primary IPs.
pub const PRIMARY: &str = "primary";

/// Which node addresses serve NodePorts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodePortAddresses {
    /// CIDRs given literally. Empty, without `primary`: every local address.
    pub cidrs: Vec<IpNet>,
    /// Whether `primary` was given: the Node's primary IPs are added once it is known.
    pub primary: bool,
}

impl NodePortAddresses {
    /// Parses the list's entries; an entry that is neither `primary` nor a CIDR is an error
    /// naming `field`.
    pub fn parse<'a>(
        field: &'static str,
        entries: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, ConfigError> {
        let mut out = Self::default();
        for entry in entries.into_iter().map(str::trim).filter(|s| !s.is_empty()) {
            if entry == PRIMARY {
                out.primary = true;
                continue;
            }
            let cidr = entry
                .parse::<IpNet>()
                .map_err(|e| ConfigError::InvalidValue {
                    field,
                    message: format!("{entry:?}: {e} (expected a CIDR or \"{PRIMARY}\")"),
                })?;
            out.cidrs.push(cidr);
        }
        Ok(out)
    }

    /// Whether nothing was given (every local address serves NodePorts).
    pub fn is_unset(&self) -> bool {
        self.cidrs.is_empty() && !self.primary
    }

    /// `primary` alone.
    pub fn primary() -> Self {
        Self {
            cidrs: Vec::new(),
            primary: true,
        }
    }
}

/// The node's primary IPs as kube-proxy picks them: upstream's `GetNodeHostIPs` (the first
/// InternalIP, else the first ExternalIP, plus the first address of the other family in the
/// same order), then `bindAddress` overriding the IP of its own family (`detectNodeIPs`).
/// Unspecified override addresses are ignored.
pub fn primary_node_ips(node: Option<&Node>, overrides: &[IpAddr]) -> Vec<IpAddr> {
    let addresses = node
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.addresses.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let of_type = |kind: &'static str| {
        addresses
            .iter()
            .filter(move |a| a.type_ == kind)
            .filter_map(|a| a.address.trim().parse::<IpAddr>().ok())
    };
    let all: Vec<IpAddr> = of_type("InternalIP").chain(of_type("ExternalIP")).collect();
    let mut ips: Vec<IpAddr> = Vec::new();
    if let Some(first) = all.first() {
        ips.push(*first);
        if let Some(other) = all.iter().find(|ip| ip.is_ipv6() != first.is_ipv6()) {
            ips.push(*other);
        }
    }
    for ip in overrides.iter().filter(|ip| !ip.is_unspecified()) {
        match ips.iter_mut().find(|known| known.is_ipv6() == ip.is_ipv6()) {
            Some(known) => *known = *ip,
            None => ips.push(*ip),
        }
    }
    ips
}

/// Host CIDRs of the primary IPs; loopback is skipped, as upstream skips its 127.0.0.1
/// fallback for a node whose IP it could not find.
pub fn primary_cidrs(ips: &[IpAddr]) -> Vec<IpNet> {
    ips.iter()
        .filter(|ip| !ip.is_loopback())
        .map(|ip| IpNet::from(*ip))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};

    fn node(addresses: &[(&str, &str)]) -> Node {
        Node {
            status: Some(NodeStatus {
                addresses: Some(
                    addresses
                        .iter()
                        .map(|(kind, address)| NodeAddress {
                            type_: (*kind).into(),
                            address: (*address).into(),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn primary_keyword_and_cidrs_parse() {
        let npa = NodePortAddresses::parse("--nodeport-addresses", ["primary"]).unwrap();
        assert_eq!(npa, NodePortAddresses::primary());
        let mixed =
            NodePortAddresses::parse("nodePortAddresses", ["198.18.0.0/24", " primary "]).unwrap();
        assert!(mixed.primary);
        assert_eq!(mixed.cidrs, vec!["198.18.0.0/24".parse::<IpNet>().unwrap()]);
        assert!(NodePortAddresses::parse("f", Vec::<&str>::new())
            .unwrap()
            .is_unset());
        let err = NodePortAddresses::parse("nodePortAddresses", ["198.18.0.1"]).unwrap_err();
        assert!(err.to_string().contains("nodePortAddresses"), "{err}");
        assert!(
            NodePortAddresses::parse("f", ["Primary"]).is_err(),
            "keywords are exact"
        );
    }

    #[test]
    fn internal_ips_come_first_then_external() {
        let n = node(&[
            ("Hostname", "node-1"),
            ("ExternalIP", "203.0.113.7"),
            ("InternalIP", "198.18.0.11"),
            ("InternalIP", "198.18.0.99"),
        ]);
        assert_eq!(primary_node_ips(Some(&n), &[]), ips(&["198.18.0.11"]));
        let external_only = node(&[("ExternalIP", "203.0.113.7")]);
        assert_eq!(
            primary_node_ips(Some(&external_only), &[]),
            ips(&["203.0.113.7"])
        );
    }

    #[test]
    fn dual_stack_takes_one_address_per_family() {
        let n = node(&[
            ("InternalIP", "fd00::11"),
            ("InternalIP", "fd00::12"),
            ("ExternalIP", "203.0.113.7"),
            ("InternalIP", "198.18.0.11"),
        ]);
        assert_eq!(
            primary_node_ips(Some(&n), &[]),
            ips(&["fd00::11", "198.18.0.11"])
        );
    }

    #[test]
    fn bind_address_overrides_its_family() {
        let n = node(&[("InternalIP", "198.18.0.11"), ("InternalIP", "fd00::11")]);
        let unspecified = ips(&["0.0.0.0"]);
        assert_eq!(
            primary_node_ips(Some(&n), &unspecified),
            ips(&["198.18.0.11", "fd00::11"])
        );
        assert_eq!(
            primary_node_ips(Some(&n), &ips(&["198.18.0.50"])),
            ips(&["198.18.0.50", "fd00::11"])
        );
        assert_eq!(
            primary_node_ips(None, &ips(&["198.18.0.50"])),
            ips(&["198.18.0.50"])
        );
    }

    #[test]
    fn no_node_no_primary_ips() {
        assert!(primary_node_ips(None, &[]).is_empty());
        assert!(primary_node_ips(Some(&node(&[("Hostname", "x")])), &[]).is_empty());
        assert_eq!(
            primary_cidrs(&ips(&["198.18.0.11", "127.0.0.1", "fd00::11"])),
            vec![
                "198.18.0.11/32".parse::<IpNet>().unwrap(),
                "fd00::11/128".parse::<IpNet>().unwrap()
            ]
        );
    }
}
