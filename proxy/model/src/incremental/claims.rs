//! Which service ports share a destination with another: only those need the conflict rules
//! (module `conflicts`), so a change elsewhere does not re-resolve every port of the node.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use crate::service_port::{Protocol, ServicePort, ServicePortKey};

/// Something a service port claims that another port may claim too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Claim {
    /// A nodePort number (on every node address).
    NodePort(Protocol, u16),
    /// One frontend's address and port.
    Destination(IpAddr, u16, Protocol),
}

fn claims_of(port: &ServicePort) -> impl Iterator<Item = Claim> + '_ {
    let protocol = port.key.protocol;
    port.node_port
        .map(|number| Claim::NodePort(protocol, number))
        .into_iter()
        .chain(
            port.frontends
                .iter()
                .map(move |f| Claim::Destination(f.ip, f.port, protocol)),
        )
}

/// Every claim of every unresolved service port, with its claimants.
#[derive(Clone, Debug, Default)]
pub(super) struct Claims {
    /// Claimants per claim, one entry per claiming frontend: a port claiming the same
    /// destination twice (its cluster IP also listed as an externalIP) contests it itself.
    claimants: HashMap<Claim, Vec<ServicePortKey>>,
    /// Claims with more than one claimant.
    contested: BTreeSet<Claim>,
}

impl Claims {
    /// Records the claims of `port`.
    pub(super) fn add(&mut self, port: &ServicePort) {
        for claim in claims_of(port) {
            let claimants = self.claimants.entry(claim).or_default();
            claimants.push(port.key.clone());
            if claimants.len() > 1 {
                self.contested.insert(claim);
            }
        }
    }

    /// Forgets the claims of `port` (as it was recorded).
    pub(super) fn remove(&mut self, port: &ServicePort) {
        for claim in claims_of(port) {
            let Some(claimants) = self.claimants.get_mut(&claim) else {
                continue;
            };
            if let Some(at) = claimants.iter().position(|k| *k == port.key) {
                claimants.swap_remove(at);
            }
            match claimants.len() {
                0 => {
                    self.claimants.remove(&claim);
                    self.contested.remove(&claim);
                }
                1 => {
                    self.contested.remove(&claim);
                }
                _ => {}
            }
        }
    }

    /// Every port with at least one contested claim. No port outside this set shares
    /// anything with a port inside it, so the conflict rules can run on this set alone.
    pub(super) fn contested_ports(&self) -> BTreeSet<ServicePortKey> {
        self.contested
            .iter()
            .filter_map(|claim| self.claimants.get(claim))
            .flatten()
            .cloned()
            .collect()
    }
}
