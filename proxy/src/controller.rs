//! The sync loop: source snapshots -> desired state -> diff -> dataplane, coalesced by
//! minSyncPeriod, with a periodic full resync.
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::watch;

use crate::config::Settings;
use crate::dataplane::Dataplane;
use crate::health::{epoch_seconds, Health};
use crate::metrics::Metrics;
use crate::model::{
    compute_desired_state, select_nodeport_addresses, DesiredState, NodeContext, StateDiff,
};
use crate::node_addresses::local_addresses;
use crate::source::kube_api::ChangeTriggers;
use crate::source::Snapshot;

/// Delay before a failed sync is retried.
const RETRY_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Owns the dataplane and the last state it was given.
pub struct Controller {
    settings: Settings,
    dataplane: Box<dyn Dataplane>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    applied: DesiredState,
    reported: BTreeSet<String>,
    triggers: Option<ChangeTriggers>,
}

impl Controller {
    /// A controller that has programmed nothing yet.
    pub fn new(
        settings: Settings,
        dataplane: Box<dyn Dataplane>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        Self {
            settings,
            dataplane,
            metrics,
            health,
            applied: DesiredState::default(),
            reported: BTreeSet::new(),
            triggers: None,
        }
    }

    /// Observes network programming latency for the EndpointSlice changes in `triggers`.
    pub fn with_triggers(mut self, triggers: ChangeTriggers) -> Self {
        self.triggers = Some(triggers);
        self
    }

    /// Runs until the source goes away. The first sync is a full one; a failed sync is
    /// retried as a full sync after `RETRY_DELAY`.
    pub async fn run(mut self, mut source: watch::Receiver<Snapshot>) {
        let mut last_sync: Option<tokio::time::Instant> = None;
        let mut last_full = tokio::time::Instant::now();
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut full = true;
        source.mark_changed();
        loop {
            let retry = retry_at.unwrap_or_else(|| last_full + self.settings.sync_period);
            tokio::select! {
                changed = source.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = SystemTime::now();
                    self.health.queued(now);
                    self.metrics.last_queued_timestamp.set(epoch_seconds(now));
                }
                _ = tokio::time::sleep_until(last_full + self.settings.sync_period) => full = true,
                _ = tokio::time::sleep_until(retry), if retry_at.is_some() => full = true,
            }
            // Coalesce: a burst of changes inside minSyncPeriod produces one sync.
            if let Some(previous) = last_sync {
                tokio::time::sleep_until(previous + self.settings.min_sync_period).await;
            }
            // Triggers first: every change they stand for is in the snapshot read after.
            let triggers = self
                .triggers
                .as_ref()
                .map(ChangeTriggers::drain)
                .unwrap_or_default();
            let snapshot = source.borrow_and_update().clone();
            // Writes shell out to iptables-restore or make map syscalls, seconds on a big
            // node: keep the runtime's other tasks (health, metrics, watches) running.
            let multi_thread = tokio::runtime::Handle::current().runtime_flavor()
                == tokio::runtime::RuntimeFlavor::MultiThread;
            let ok = if multi_thread {
                tokio::task::block_in_place(|| self.sync(&snapshot, full))
            } else {
                self.sync(&snapshot, full)
            };
            if ok {
                let now = SystemTime::now();
                for at in triggers {
                    let latency = now.duration_since(at).unwrap_or_default();
                    self.metrics
                        .network_programming_duration
                        .observe(latency.as_secs_f64());
                }
            } else if let Some(t) = &self.triggers {
                t.restore(triggers);
            }
            let now = tokio::time::Instant::now();
            last_sync = Some(now);
            if full {
                last_full = now;
            }
            full = !ok;
            retry_at = (!ok).then(|| now + RETRY_DELAY);
        }
    }

    /// One sync from a snapshot; `full` asks for a full resync. Returns false when the
    /// dataplane could not be written (it keeps its previous state).
    pub fn sync(&mut self, snapshot: &Snapshot, full: bool) -> bool {
        let started = Instant::now();
        let node = self.node_context();
        let computed = compute_desired_state(&snapshot.objects, &node);
        let mut problems: BTreeSet<String> = snapshot.warnings.iter().cloned().collect();
        problems.extend(computed.warnings.iter().map(ToString::to_string));
        // Each problem is logged once, when it appears, not on every sync.
        for problem in problems.difference(&self.reported) {
            tracing::warn!("{problem}");
        }
        self.metrics.input_warnings.set(problems.len() as i64);
        self.reported = problems;

        let diff = StateDiff::between(&self.applied, &computed.state);
        if !full && diff.is_empty() {
            self.finish(started, false);
            return true;
        }
        let report = if full {
            self.dataplane.full_sync(&computed.state, &diff)
        } else {
            self.dataplane.apply(&computed.state, &diff)
        };
        self.metrics
            .restore_failures_total
            .inc_by(report.restore_failures);
        if let Some(failure) = &report.failure {
            tracing::error!("dataplane sync failed, keeping the previous state: {failure}");
            self.metrics.restore_failures_total.inc();
            return false;
        }
        for error in &report.errors {
            tracing::error!("dataplane: {error}");
            if let Some(map) = error.full_map {
                self.metrics
                    .map_full_total
                    .get_or_create(&crate::metrics::MapLabel {
                        map: map.to_owned(),
                    })
                    .inc();
            }
        }
        self.metrics
            .dataplane_errors_total
            .inc_by(report.errors.len() as u64);
        self.metrics
            .service_changes_total
            .inc_by((diff.added.len() + diff.removed.len() + diff.changed.len()) as u64);
        self.metrics
            .service_ports
            .set(computed.state.ports.len() as i64);
        tracing::info!(
            full = report.full,
            ports = computed.state.ports.len(),
            added = diff.added.len(),
            changed = diff.changed.len(),
            removed = diff.removed.len(),
            written = report.ports_written,
            restores = report.restores,
            errors = report.errors.len(),
            "synced"
        );
        self.applied = computed.state;
        self.finish(started, report.full);
        true
    }

    fn finish(&self, started: Instant, full: bool) {
        let elapsed = started.elapsed().as_secs_f64();
        self.metrics.sync_duration.observe(elapsed);
        if full {
            self.metrics.sync_full_duration.observe(elapsed);
        } else {
            self.metrics.sync_partial_duration.observe(elapsed);
        }
        let now = SystemTime::now();
        self.metrics.last_sync_timestamp.set(epoch_seconds(now));
        self.health.updated(now);
    }

    fn node_context(&self) -> NodeContext {
        let local = local_addresses().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot list local addresses; serving no NodePorts");
            Vec::new()
        });
        let routable = |ip: &&std::net::IpAddr| !ip.is_loopback();
        let mut node = NodeContext::new(self.settings.node_name.clone());
        node.ipv4 = local.iter().filter(routable).any(|ip| ip.is_ipv4());
        node.ipv6 = local.iter().filter(routable).any(|ip| ip.is_ipv6());
        node.nodeport_addresses = select_nodeport_addresses(&local, &self.settings.nodeport_cidrs);
        node.nodeport_range = self.settings.nodeport_range.clone();
        node
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::config::Cli;
    use crate::dataplane::SyncReport;
    use crate::model::ClusterObjects;

    /// Records each call: (full, number of service ports in the state).
    #[derive(Clone, Default)]
    struct Counting(Arc<Mutex<Vec<(bool, usize)>>>);

    impl Dataplane for Counting {
        fn apply(&mut self, state: &DesiredState, _diff: &StateDiff) -> SyncReport {
            self.0.lock().unwrap().push((false, state.ports.len()));
            SyncReport::default()
        }
        fn full_sync(&mut self, state: &DesiredState, _diff: &StateDiff) -> SyncReport {
            self.0.lock().unwrap().push((true, state.ports.len()));
            SyncReport {
                full: true,
                ..SyncReport::default()
            }
        }
    }

    fn snapshot(services: usize) -> Snapshot {
        let mut objects = ClusterObjects::default();
        for i in 0..services {
            let service = serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("svc-{i}"), "namespace": "burst"},
                "spec": {"clusterIP": format!("198.18.128.{}", i + 1), "ports": [{"port": 80}]}
            });
            objects.insert_service(serde_json::from_value(service).unwrap());
        }
        Snapshot {
            objects: Arc::new(objects),
            warnings: Vec::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_changes_inside_min_sync_period_is_one_sync() {
        let cli = <Cli as clap::Parser>::parse_from(["switchyard"]);
        let mut settings = Settings::resolve(cli, || "node1".into()).unwrap();
        settings.min_sync_period = Duration::from_secs(1);
        settings.sync_period = Duration::from_secs(3600);
        let calls = Counting::default();
        let controller = Controller::new(
            settings,
            Box::new(calls.clone()),
            Arc::new(Metrics::new()),
            Arc::new(Health::new(Duration::from_secs(60))),
        );
        let (tx, rx) = watch::channel(snapshot(1));
        let task = tokio::spawn(controller.run(rx));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            *calls.0.lock().unwrap(),
            vec![(true, 1)],
            "first sync is full"
        );

        // Ten changes 10 ms apart: all inside one minSyncPeriod.
        for n in 2..=11 {
            tx.send(snapshot(n)).unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let recorded = calls.0.lock().unwrap().clone();
        assert_eq!(
            recorded,
            vec![(true, 1), (false, 11)],
            "one coalesced sync with the last state"
        );
        task.abort();
    }
}
