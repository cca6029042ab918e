//! ebpf mode's SCTP service ports, served by netfilter: iptables mode's rules for SCTP ports
//! only, under `SWYSCTP-*` chains whose jumps match `-p sctp` (the renderer is
//! [`crate::model::iptables::sctp_fallback`], which says why).
//!
//! The chains exist only while an SCTP service port does, so a node without one has no nat
//! rule of ebpf mode's, and netfilter's NAT hooks stay unregistered as before. A full sync
//! without SCTP ports also removes chains a previous run left (the last SCTP service deleted
//! while no controller ran).
//!
//! Both families, as iptables mode: iptables and ip6tables rules through
//! [`DualStackIptables`], the IPv6 ones once the node has an IPv6 address.
use std::net::IpAddr;
use std::sync::Arc;

use crate::dataplane::{Dataplane, PortError, SyncError, SyncKind, SyncReport};
use crate::iptables::cleanup::{remove_chains_where, CleanupError};
use crate::iptables::rule_set::{Family, RuleConfig, Table};
use crate::iptables::{
    DualStackIptables, IptablesBackend, IptablesDataplane, RuleFlavor, SystemIptables, Tools,
};
use crate::model::iptables::sctp_fallback;
use crate::model::{DesiredState, StateDiff};

/// Why ebpf mode does not translate SCTP itself; logged once, when the first SCTP port comes.
pub const REASON: &str = "the tc programs would have to recompute SCTP's CRC32c over the whole \
    packet on every translation, and the socket programs are untested with SCTP sockets";

/// Removes the fallback's chains from `backend`, iptables and ip6tables (mode switch to
/// iptables, `--cleanup`, the last SCTP port gone). On iptables-nft a family's nat table goes
/// too when nothing else is left in it: its empty built-in chains alone would keep the NAT
/// hooks, and conntrack, registered. (iptables-legacy's nat table cannot be unregistered
/// from userspace.)
pub fn remove(backend: IptablesBackend) -> Result<usize, CleanupError> {
    let mut removed = 0;
    for family in Family::ALL {
        let tools = Tools::new(backend, family);
        let chains = remove_chains_where(tools, |_, chain| sctp_fallback::is_ours(chain))?;
        if chains > 0 && backend == IptablesBackend::Nft {
            crate::iptables::exec::nft_delete_table_if_empty(family, Table::Nat)?;
        }
        removed += chains;
    }
    Ok(removed)
}

/// Another dataplane (ebpf mode's) with SCTP ports served by netfilter rules.
pub struct WithSctpFallback<D> {
    inner: D,
    /// `None` when no iptables is installed: SCTP ports then fail, loudly, every sync.
    backend: Option<IptablesBackend>,
    /// The renderer's inputs per family, IPv4 first (node addresses kept current).
    configs: [RuleConfig; 2],
    /// Present while the fallback has chains (an SCTP port exists).
    rules: Option<DualStackIptables>,
    logged: bool,
}

impl<D: Dataplane> WithSctpFallback<D> {
    /// `inner` (which leaves SCTP ports alone), with the fallback writing through `backend`
    /// with the IPv4 and IPv6 renderer inputs `ipv4` and `ipv6`.
    pub fn new(
        inner: D,
        backend: Option<IptablesBackend>,
        ipv4: RuleConfig,
        ipv6: RuleConfig,
    ) -> Self {
        Self {
            inner,
            backend,
            configs: [ipv4, ipv6],
            rules: None,
            logged: false,
        }
    }

    /// The SCTP half of a sync.
    fn sync_fallback(
        &mut self,
        kind: SyncKind,
        state: &DesiredState,
        diff: &StateDiff,
    ) -> Result<(), SyncError> {
        let sctp = DesiredState {
            ports: state
                .ports
                .iter()
                .filter(|(_, port)| sctp_fallback::applies(port))
                .map(|(key, port)| (key.clone(), Arc::clone(port)))
                .collect(),
        };
        let Some(backend) = self.backend else {
            if sctp.ports.is_empty() {
                return Ok(());
            }
            return Err(SyncError::new(
                "serving SCTP service ports",
                "no iptables found (`iptables --version` fails); ebpf mode serves SCTP through iptables rules",
            ));
        };
        if sctp.ports.is_empty() {
            // Removal lists the chains first: a full sync (start-up, hourly) with no SCTP port
            // checks for leftovers, other syncs only act when this process wrote some.
            if self.rules.take().is_some() || kind == SyncKind::Full {
                let removed = remove(backend)
                    .map_err(|e| SyncError::new("removing the SCTP fallback's chains", e))?;
                if removed > 0 {
                    tracing::info!(
                        chains = removed,
                        "no SCTP service port left: SCTP fallback rules removed"
                    );
                }
            }
            return Ok(());
        }
        let sctp_diff = StateDiff {
            added: only_sctp(&diff.added),
            changed: only_sctp(&diff.changed),
            removed: only_sctp(&diff.removed),
        };
        let (rules, kind) = match &mut self.rules {
            Some(rules) => (rules, kind),
            None => {
                if !self.logged {
                    self.logged = true;
                    tracing::info!(
                        %backend,
                        reason = REASON,
                        "ebpf mode serves SCTP service ports through iptables rules (chains SWYSCTP-*)"
                    );
                }
                (self.rules.insert(self.dual_stack(backend)), SyncKind::Full)
            }
        };
        rules.sync(kind, &sctp, &sctp_diff).map(drop)
    }
}

impl<D> WithSctpFallback<D> {
    /// The rule dataplanes of both families (no IPv6 one where ip6tables are unusable, as
    /// iptables mode).
    fn dual_stack(&self, backend: IptablesBackend) -> DualStackIptables {
        let [ipv4, ipv6] = self.configs.clone().map(|config| {
            let system = SystemIptables {
                backend,
                family: config.family,
                flavor: RuleFlavor::SctpFallback,
            };
            IptablesDataplane::new(Box::new(system), backend.strategy(), config)
                .with_flavor(RuleFlavor::SctpFallback)
        });
        let ipv6 = match crate::iptables::exec::usable(Tools::new(backend, Family::Ipv6)) {
            Ok(()) => Some(ipv6),
            Err(e) => {
                tracing::warn!(error = %e, "ip6tables unusable: IPv6 SCTP service ports are not served");
                None
            }
        };
        let local: Vec<IpAddr> = self
            .configs
            .iter()
            .flat_map(|c| c.node_ips.iter().copied())
            .collect();
        DualStackIptables::new(ipv4, ipv6, &local)
    }
}

fn only_sctp(keys: &[crate::model::ServicePortKey]) -> Vec<crate::model::ServicePortKey> {
    keys.iter()
        .filter(|k| k.protocol == crate::model::Protocol::Sctp)
        .cloned()
        .collect()
}

impl<D: Dataplane> Dataplane for WithSctpFallback<D> {
    fn sync(
        &mut self,
        kind: SyncKind,
        state: &DesiredState,
        diff: &StateDiff,
    ) -> Result<SyncReport, SyncError> {
        let mut report = self.inner.sync(kind, state, diff)?;
        if let Err(error) = self.sync_fallback(kind, state, diff) {
            // The rules dataplane rewrites everything on its next sync; reporting the SCTP
            // ports as failed makes the controller ask for one.
            tracing::warn!(error = %crate::controller::error_chain(&error), "SCTP fallback rules not written");
            let shared = Arc::new(error);
            for key in state
                .ports
                .keys()
                .filter(|k| k.protocol == crate::model::Protocol::Sctp)
            {
                report.errors.push(PortError {
                    port: key.clone(),
                    full_map: None,
                    source: Box::new(SharedError(Arc::clone(&shared))),
                });
            }
        }
        Ok(report)
    }

    fn node_addresses(&mut self, addresses: &[IpAddr]) {
        self.inner.node_addresses(addresses);
        for config in &mut self.configs {
            config.node_ips = addresses
                .iter()
                .copied()
                .filter(|ip| !ip.is_loopback() && config.family.has(ip))
                .collect();
        }
        if let Some(rules) = &mut self.rules {
            rules.node_addresses(addresses);
        }
    }

    fn cleanup(&mut self) -> Result<(), SyncError> {
        self.inner.cleanup()?;
        self.rules = None;
        let Some(backend) = self.backend else {
            return Ok(());
        };
        remove(backend)
            .map(drop)
            .map_err(|e| SyncError::new("removing the SCTP fallback's chains", e))
    }
}

/// One sync failure named by every SCTP port it failed.
#[derive(Debug, Clone)]
struct SharedError(Arc<SyncError>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SCTP fallback rules: {}", self.0)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::model::{compute_desired_state, ClusterObjects, NodeContext};

    /// Counts the syncs it is asked for.
    #[derive(Clone, Default)]
    struct Inner(Arc<Mutex<usize>>);

    impl Dataplane for Inner {
        fn sync(
            &mut self,
            _: SyncKind,
            _: &DesiredState,
            _: &StateDiff,
        ) -> Result<SyncReport, SyncError> {
            *self
                .0
                .lock()
                .map_err(|_| SyncError::new("test", "poisoned"))? += 1;
            Ok(SyncReport::default())
        }

        fn cleanup(&mut self) -> Result<(), SyncError> {
            Ok(())
        }
    }

    fn state(protocols: &[&str]) -> DesiredState {
        let ports: Vec<serde_json::Value> = protocols
            .iter()
            .enumerate()
            .map(|(i, p)| serde_json::json!({"name": format!("p{i}"), "port": 80 + i, "protocol": p}))
            .collect();
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "sig", "namespace": "demo"},
            "spec": {"clusterIP": "198.18.128.38", "ports": ports}
        }))
        .expect("service");
        let mut objects = ClusterObjects::default();
        objects
            .services
            .insert(crate::model::ObjectKey::new("demo", "sig"), Arc::new(svc));
        compute_desired_state(&objects, &NodeContext::new("node1")).state
    }

    #[test]
    fn without_iptables_sctp_ports_fail_every_sync_and_others_never_do() {
        let inner = Inner::default();
        let mut dp = WithSctpFallback::new(
            inner.clone(),
            None,
            RuleConfig::default(),
            RuleConfig::default(),
        );
        let tcp = state(&["TCP"]);
        let report = dp
            .sync(SyncKind::Full, &tcp, &StateDiff::default())
            .expect("sync");
        assert!(report.errors.is_empty());
        let mixed = state(&["TCP", "SCTP"]);
        for kind in [SyncKind::Full, SyncKind::Verify] {
            let report = dp.sync(kind, &mixed, &StateDiff::default()).expect("sync");
            let failed: Vec<String> = report.errors.iter().map(|e| e.port.to_string()).collect();
            assert_eq!(failed, ["demo/sig:p1/SCTP"]);
            let text = crate::controller::error_chain(&report.errors[0]);
            assert!(text.contains("no iptables found"), "{text}");
        }
        assert_eq!(
            *inner.0.lock().expect("count"),
            3,
            "the inner dataplane syncs every time"
        );
    }
}
