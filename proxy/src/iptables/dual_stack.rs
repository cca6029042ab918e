//! iptables mode on a node that serves both families: one [`IptablesDataplane`] per family,
//! as upstream runs one proxier per family (`iptables-*` for IPv4, `ip6tables-*` for IPv6,
//! the same chain design in each). The IPv6 one writes nothing until the node has an IPv6
//! address (`NodeContext::ipv6`); from then on it syncs with the IPv4 one, every sync. Where
//! ip6tables cannot be used at all (no binary, no kernel support), the node runs IPv4 only,
//! as upstream does without a usable ip6tables.
use std::net::IpAddr;

use super::dataplane::IptablesDataplane;
use super::rule_set::Family;
use crate::dataplane::{Dataplane, SyncError, SyncKind, SyncReport};
use crate::model::{DesiredState, StateDiff};
use crate::node_addresses::has_routable_ipv6 as serves_ipv6;

/// Both families' iptables dataplanes behind one [`Dataplane`].
pub struct DualStackIptables {
    ipv4: IptablesDataplane,
    /// `None` where ip6tables are unusable.
    ipv6: Option<IptablesDataplane>,
    /// Whether the node has served IPv6 yet. Once it has, ip6tables stays programmed (an
    /// address that comes and goes must not flap the rules).
    ipv6_serving: bool,
}

impl DualStackIptables {
    /// The two families' dataplanes (no IPv6 one where ip6tables are unusable); `local` are the
    /// node's addresses at start.
    pub fn new(ipv4: IptablesDataplane, ipv6: Option<IptablesDataplane>, local: &[IpAddr]) -> Self {
        Self {
            ipv4,
            ipv6,
            ipv6_serving: serves_ipv6(local),
        }
    }

    /// The dataplanes of the families in use, IPv4 first.
    fn active(&mut self) -> impl Iterator<Item = (Family, &mut IptablesDataplane)> {
        let ipv6 = match (&mut self.ipv6, self.ipv6_serving) {
            (Some(dataplane), true) => Some((Family::Ipv6, dataplane)),
            _ => None,
        };
        std::iter::once((Family::Ipv4, &mut self.ipv4)).chain(ipv6)
    }
}

impl Dataplane for DualStackIptables {
    fn sync(
        &mut self,
        kind: SyncKind,
        state: &DesiredState,
        diff: &StateDiff,
    ) -> Result<SyncReport, SyncError> {
        let mut merged = SyncReport::default();
        for (family, dataplane) in self.active() {
            // A failure of either fails the sync, which is retried as a whole; the other
            // family's rules are rewritten again then, which is harmless.
            let report = dataplane.sync(kind, state, diff).inspect_err(|e| {
                tracing::warn!(%family, error = %crate::controller::error_chain(e), "sync failed");
            })?;
            merged.full |= report.full;
            merged.repaired = match (merged.repaired.take(), report.repaired) {
                (Some(a), Some(b)) => Some(format!("{a}; {family}: {b}")),
                (None, Some(b)) if family == Family::Ipv6 => Some(format!("{family}: {b}")),
                (a, b) => a.or(b),
            };
            // A dual-stack port is one port, written in both families.
            merged.ports_written = merged.ports_written.max(report.ports_written);
            merged.errors.extend(report.errors);
        }
        Ok(merged)
    }

    fn node_addresses(&mut self, addresses: &[IpAddr]) {
        if !self.ipv6_serving && serves_ipv6(addresses) {
            tracing::info!("the node has an IPv6 address now: ip6tables rules follow");
            self.ipv6_serving = true;
        }
        // Each family renders from its own addresses only, so a change of the other
        // family's addresses rewrites nothing.
        for (family, dataplane) in self.active() {
            let own: Vec<IpAddr> = addresses
                .iter()
                .copied()
                .filter(|ip| family.has(ip))
                .collect();
            dataplane.node_addresses(&own);
        }
    }

    fn cleanup(&mut self) -> Result<(), SyncError> {
        // Both, whether or not IPv6 was in use: an earlier run may have written it.
        let ipv4 = self.ipv4.cleanup();
        let ipv6 = self.ipv6.as_mut().map_or(Ok(()), |d| d.cleanup());
        ipv4.and(ipv6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_served_with_a_routable_ipv6_address() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("literal");
        assert!(!serves_ipv6(&[ip("198.18.0.11"), ip("::1")]));
        assert!(serves_ipv6(&[ip("198.18.0.11"), ip("2001:db8:0:1::11")]));
    }
}
