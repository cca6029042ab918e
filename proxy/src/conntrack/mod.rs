//! iptables mode's conntrack reconciler (upstream `pkg/proxy/conntrack`): after every sync,
//! one listing of the UDP entries and a delete of those the model calls stale
//! ([`crate::model::conntrack`]). It replaces per-change `conntrack -D` runs, which deleted
//! every UDP flow of every service after a restart.
//!
//! A reconcile is bounded in time and never fails the sync: an error is logged, counted in
//! `switchyard_conntrack_reconciler_failures_total`, and the next sync tries again.
pub mod metrics;
pub mod netlink;
pub mod sysctls;

use std::io;
use std::time::{Duration, Instant};

use crate::model::conntrack::{Flow, ServingEndpoints};
use crate::model::DesiredState;
pub use metrics::ConntrackMetrics;

/// The most one reconcile may take (listing and deletes together). Upstream has no bound;
/// a UDP-heavy node lists about a million entries a second.
pub const RECONCILE_BUDGET: Duration = Duration::from_secs(10);

/// One conntrack entry as listed, with what deleting exactly it takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Protocol and tuples.
    pub flow: Flow,
    /// `CTA_ID`: the delete only hits this entry, not a newer one with the same tuple.
    pub id: Option<u32>,
    /// `CTA_ZONE`, when the entry is in a zone other than the default.
    pub zone: Option<u16>,
}

/// What a batch of deletes did.
#[derive(Debug, Default)]
pub struct Deleted {
    /// Entries deleted.
    pub deleted: u64,
    /// Entries that were gone already (expired, or replaced since the listing).
    pub already_gone: u64,
    /// Deletes the kernel refused.
    pub failed: u64,
    /// The first refusal's error.
    pub first_error: Option<io::Error>,
}

/// Why a reconcile did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// No ctnetlink socket.
    #[error("opening a ctnetlink socket")]
    Open(#[source] io::Error),
    /// A request could not be sent.
    #[error("sending to ctnetlink")]
    Send(#[source] io::Error),
    /// Reading the answer failed.
    #[error("receiving from ctnetlink")]
    Receive(#[source] io::Error),
    /// The kernel did not finish within the budget.
    #[error("ctnetlink did not answer within the reconcile's budget (waited {0:?})")]
    Timeout(Duration),
    /// The kernel refused a request.
    #[error("ctnetlink refused the {request}")]
    Refused {
        /// Which request.
        request: &'static str,
        /// The kernel's errno.
        #[source]
        source: io::Error,
    },
}

/// The conntrack table; the kernel's ([`netlink::NetlinkTable`]) or a fake in tests.
pub trait ConntrackTable: Send {
    /// Lists the UDP entries of its family by `deadline` (other entries may be listed too).
    fn list_udp(&mut self, deadline: Instant) -> Result<Vec<Entry>, ConntrackError>;
    /// Deletes each of `entries` if it still exists, by `deadline`.
    fn delete(&mut self, entries: &[Entry], deadline: Instant) -> Result<Deleted, ConntrackError>;
}

/// What one reconcile found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Entries listed.
    pub listed: usize,
    /// Entries the model called stale.
    pub stale: usize,
    /// Entries deleted.
    pub deleted: u64,
}

/// Reconciles the conntrack table with the desired state, once per sync.
pub struct Reconciler {
    table: Box<dyn ConntrackTable>,
    metrics: ConntrackMetrics,
    /// The family series this reconciler counts into.
    label: metrics::IpFamilyLabel,
    budget: Duration,
}

impl Reconciler {
    /// A reconciler over `table`, counting into `metrics`.
    pub fn new(table: Box<dyn ConntrackTable>, metrics: ConntrackMetrics) -> Self {
        Self {
            table,
            metrics,
            label: metrics::IPV4,
            budget: RECONCILE_BUDGET,
        }
    }

    /// The kernel's table in the calling thread's network namespace.
    pub fn netlink(metrics: ConntrackMetrics) -> Self {
        Self::new(Box::<netlink::NetlinkTable>::default(), metrics)
    }

    /// The kernel's table of `family`'s entries (ctnetlink dumps of that family), counting
    /// into the `ip_family` series of it: the reconciler of ip6tables' rules for IPv6.
    pub fn netlink_for(
        metrics: ConntrackMetrics,
        family: switchyard_model::iptables::rule_set::Family,
    ) -> Self {
        let mut reconciler =
            Self::new(Box::new(netlink::NetlinkTable::for_family(family)), metrics);
        if family == switchyard_model::iptables::rule_set::Family::Ipv6 {
            reconciler.label = metrics::IPV6;
        }
        reconciler
    }

    /// Deletes the stale UDP entries of `state`. `None` when nothing could be stale (no UDP
    /// port has serving endpoints), so the table was not read; failures are logged and
    /// counted, never returned: the rules are in place either way.
    pub fn reconcile(&mut self, state: &DesiredState) -> Option<Reconciled> {
        let serving = ServingEndpoints::new(state);
        if serving.is_empty() {
            return None;
        }
        let started = Instant::now();
        let result = self.run(&serving, started + self.budget);
        self.metrics
            .sync_duration
            .get_or_create(&self.label)
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok((reconciled, deleted)) => {
                self.metrics
                    .deleted_entries
                    .get_or_create(&self.label)
                    .inc_by(deleted.deleted);
                if let Some(error) = &deleted.first_error {
                    self.metrics.failures.inc();
                    tracing::warn!(
                        error = %error,
                        refused = deleted.failed,
                        "conntrack: the kernel refused to delete stale UDP entries; \
                         the next sync tries again"
                    );
                }
                if reconciled.stale > 0 {
                    tracing::debug!(
                        listed = reconciled.listed,
                        stale = reconciled.stale,
                        deleted = deleted.deleted,
                        already_gone = deleted.already_gone,
                        took = ?started.elapsed(),
                        "conntrack: deleted stale UDP entries"
                    );
                }
                Some(reconciled)
            }
            Err(error) => {
                self.metrics.failures.inc();
                tracing::warn!(
                    error = %crate::controller::error_chain(&error),
                    "conntrack: reconcile failed; stale UDP flows stay until the next sync"
                );
                None
            }
        }
    }

    fn run(
        &mut self,
        serving: &ServingEndpoints,
        deadline: Instant,
    ) -> Result<(Reconciled, Deleted), ConntrackError> {
        let listed = self.table.list_udp(deadline)?;
        let stale: Vec<Entry> = listed
            .iter()
            .filter(|e| serving.is_stale(&e.flow))
            .cloned()
            .collect();
        let deleted = if stale.is_empty() {
            Deleted::default()
        } else {
            self.table.delete(&stale, deadline)?
        };
        Ok((
            Reconciled {
                listed: listed.len(),
                stale: stale.len(),
                deleted: deleted.deleted,
            },
            deleted,
        ))
    }
}

/// A table in memory, for tests of what uses the reconciler.
#[cfg(test)]
#[derive(Clone, Default)]
pub struct FakeTable {
    inner: std::sync::Arc<std::sync::Mutex<FakeState>>,
}

/// What a [`FakeTable`] holds and saw.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct FakeState {
    /// The entries.
    pub entries: Vec<Entry>,
    /// Listings so far.
    pub listings: usize,
    /// Every entry a delete asked for.
    pub deletes: Vec<Entry>,
    /// Fail the next listings with a receive error.
    pub fail_listings: usize,
}

#[cfg(test)]
impl FakeTable {
    /// Runs `f` on the table's state.
    pub fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        let mut state = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut state)
    }
}

#[cfg(test)]
impl ConntrackTable for FakeTable {
    fn list_udp(&mut self, _deadline: Instant) -> Result<Vec<Entry>, ConntrackError> {
        self.with(|s| {
            s.listings += 1;
            if s.fail_listings > 0 {
                s.fail_listings -= 1;
                return Err(ConntrackError::Receive(io::Error::from_raw_os_error(
                    libc::ENOBUFS,
                )));
            }
            Ok(s.entries.clone())
        })
    }

    fn delete(&mut self, entries: &[Entry], _deadline: Instant) -> Result<Deleted, ConntrackError> {
        self.with(|s| {
            let mut done = Deleted::default();
            for entry in entries {
                s.deletes.push(entry.clone());
                let before = s.entries.len();
                s.entries.retain(|e| e != entry);
                if s.entries.len() < before {
                    done.deleted += 1;
                } else {
                    done.already_gone += 1;
                }
            }
            Ok(done)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::conntrack::{FlowTuple, IPPROTO_TCP, IPPROTO_UDP};
    use crate::model::{
        Endpoint, Frontend, FrontendKind, Protocol, ServicePort, ServicePortKey, TrafficPolicy,
    };

    fn udp_port(cluster_ip: &str, endpoints: &[&str]) -> ServicePort {
        let ip = cluster_ip.parse().unwrap();
        ServicePort {
            key: ServicePortKey {
                namespace: "t".into(),
                name: "dns".into(),
                port_name: String::new(),
                protocol: Protocol::Udp,
            },
            port: 53,
            cluster_ips: vec![ip],
            node_port: None,
            external_ips: vec![],
            load_balancer_ips: vec![],
            load_balancer_source_ranges: vec![],
            session_affinity_timeout: None,
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            endpoints: endpoints
                .iter()
                .map(|e| Endpoint {
                    ip: e.parse().unwrap(),
                    port: 9090,
                    ready: true,
                    serving: true,
                    terminating: false,
                    local: false,
                    node_name: None,
                    hints: None,
                })
                .collect(),
            topology: Default::default(),
            frontends: vec![Frontend {
                kind: FrontendKind::ClusterIp,
                ip,
                port: 53,
            }],
        }
    }

    fn state(endpoints: &[&str]) -> DesiredState {
        let port = udp_port("198.18.128.10", endpoints);
        DesiredState {
            ports: [(port.key.clone(), std::sync::Arc::new(port))].into(),
        }
    }

    fn entry(protocol: u8, reply_src: &str, id: u32) -> Entry {
        let client = "198.19.1.10:40000".parse().unwrap();
        Entry {
            flow: Flow {
                protocol,
                original: FlowTuple {
                    src: client,
                    dst: "198.18.128.10:53".parse().unwrap(),
                },
                reply: FlowTuple {
                    src: format!("{reply_src}:9090").parse().unwrap(),
                    dst: client,
                },
            },
            id: Some(id),
            zone: None,
        }
    }

    #[test]
    fn only_stale_entries_are_deleted_and_counted() {
        let table = FakeTable::default();
        let kept = entry(IPPROTO_UDP, "198.19.2.11", 1);
        let stale = entry(IPPROTO_UDP, "198.19.2.12", 2);
        let tcp = entry(IPPROTO_TCP, "198.19.2.12", 3);
        table.with(|s| s.entries = vec![kept.clone(), stale.clone(), tcp.clone()]);
        let metrics = ConntrackMetrics::default();
        let mut reconciler = Reconciler::new(Box::new(table.clone()), metrics.clone());
        let done = reconciler.reconcile(&state(&["198.19.2.11"])).unwrap();
        assert_eq!(
            done,
            Reconciled {
                listed: 3,
                stale: 1,
                deleted: 1
            }
        );
        table.with(|s| {
            assert_eq!(s.deletes, vec![stale.clone()]);
            assert_eq!(s.entries, vec![kept.clone(), tcp.clone()]);
        });
        assert_eq!(
            metrics.deleted_entries.get_or_create(&metrics::IPV4).get(),
            1
        );
        assert_eq!(metrics.failures.get(), 0);
        // The next sync finds nothing more to do.
        let again = reconciler.reconcile(&state(&["198.19.2.11"])).unwrap();
        assert_eq!(again.deleted, 0);
    }

    #[test]
    fn without_udp_endpoints_the_table_is_not_read() {
        let table = FakeTable::default();
        let mut reconciler = Reconciler::new(Box::new(table.clone()), ConntrackMetrics::default());
        assert_eq!(reconciler.reconcile(&state(&[])), None);
        assert_eq!(reconciler.reconcile(&DesiredState::default()), None);
        assert_eq!(table.with(|s| s.listings), 0);
    }

    #[test]
    fn a_failed_listing_is_counted_and_retried_by_the_next_sync() {
        let table = FakeTable::default();
        table.with(|s| {
            s.entries = vec![entry(IPPROTO_UDP, "198.19.2.12", 2)];
            s.fail_listings = 1;
        });
        let metrics = ConntrackMetrics::default();
        let mut reconciler = Reconciler::new(Box::new(table.clone()), metrics.clone());
        assert_eq!(reconciler.reconcile(&state(&["198.19.2.11"])), None);
        assert_eq!(metrics.failures.get(), 1);
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                "kubeproxy_conntrack_reconciler_sync_duration_seconds_count{ip_family=\"IPv4\"} 1"
            ),
            "the failed reconcile is timed too:\n{text}"
        );
        assert_eq!(
            reconciler
                .reconcile(&state(&["198.19.2.11"]))
                .map(|r| r.deleted),
            Some(1)
        );
    }
}
