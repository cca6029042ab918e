//! The sync loop: node snapshots (objects + this node's addresses) -> desired state -> diff ->
//! dataplane, on the [`Schedule`] of partial syncs, verifies and full rewrites.
//!
//! [`Controller`] is driven from outside and never reads the clock itself: the async driver
//! ([`run`]) passes a [`Clock`], and the unit tests pass a fake one, so coalescing, retries
//! and periodic syncs are tested without waiting.
pub mod schedule;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::watch;

use crate::config::Settings;
use crate::dataplane::{Dataplane, SyncKind};
use crate::health::{epoch_seconds, Health};
use crate::metrics::Metrics;
use crate::model::{
    health_check_services, select_nodeport_addresses, Before, ClusterObjects, HealthCheckBind,
    HealthChecks, ModelCache, NoLocalEndpoints, NodeContext, ObjectChanges, ServicePort, StateDiff,
};
use crate::source::Snapshot;
pub use schedule::{Periods, Schedule};

/// Where the controller gets the time from.
pub trait Clock: Send {
    /// Monotonic time, for the schedule and durations.
    fn now(&self) -> Instant;
    /// Wall-clock time, for timestamps and latencies against API server times.
    fn wall(&self) -> SystemTime;
}

/// The system's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        // tokio's clock, so a paused test runtime pauses the driver too.
        tokio::time::Instant::now().into_std()
    }
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Everything one sync reads: the source's objects and this node's local addresses.
#[derive(Clone, Debug, Default)]
pub struct NodeSnapshot {
    /// Objects, source warnings and trigger times.
    pub objects: Snapshot,
    /// Addresses on this node's up interfaces (from rtnetlink).
    pub addresses: Arc<Vec<IpAddr>>,
}

/// Owns the dataplane and the last state it was given.
pub struct Controller {
    settings: Settings,
    dataplane: Box<dyn Dataplane>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    clock: Box<dyn Clock>,
    schedule: Schedule,
    /// The desired state, kept up to date service by service.
    model: ModelCache,
    /// Ports whose last write failed, with what the dataplane still holds for them (`None`:
    /// nothing); every other port holds the model's state as of the last sync.
    unapplied: Before,
    /// The node addresses the dataplane was last told about.
    addresses: Option<Arc<Vec<IpAddr>>>,
    reported: BTreeSet<String>,
    /// The model's warnings generation and the source's warnings `reported` was built from.
    problems_seen: Option<(u64, Vec<String>)>,
    /// Highest trigger sequence number whose latency was observed.
    observed_trigger: u64,
    /// The objects of the latest snapshot seen, and of the last one synced: upstream's
    /// change counters count what differs.
    seen_objects: Arc<ClusterObjects>,
    synced_objects: Arc<ClusterObjects>,
    /// The snapshot `synced_objects` replaced, freed once the sync is recorded.
    retired: Option<Arc<ClusterObjects>>,
    /// Where the health check node port servers learn what to serve, after each sync.
    health_checks: Option<watch::Sender<HealthChecks>>,
    /// Told once, when the first sync has completed.
    first_sync: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Controller {
    /// A controller that has programmed nothing yet; its first sync is a full one.
    pub fn new(
        settings: Settings,
        dataplane: Box<dyn Dataplane>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        clock: Box<dyn Clock>,
    ) -> Self {
        let periods = Periods {
            min_sync_period: settings.min_sync_period,
            sync_period: settings.sync_period,
            full_sync_period: schedule::FULL_SYNC_PERIOD,
            retry_delay: schedule::RETRY_DELAY,
        };
        let schedule = Schedule::new(periods, clock.now());
        // The first snapshot is a change the dataplane does not hold yet: a first sync that
        // never completes must fail /livez, as kube-proxy's queued initial events do.
        health.queued(clock.wall());
        metrics.queued(epoch_seconds(clock.wall()));
        Self {
            settings,
            dataplane,
            metrics,
            health,
            clock,
            schedule,
            model: ModelCache::default(),
            unapplied: Before::new(),
            addresses: None,
            reported: BTreeSet::new(),
            problems_seen: None,
            observed_trigger: 0,
            seen_objects: Arc::default(),
            synced_objects: Arc::default(),
            retired: None,
            health_checks: None,
            first_sync: None,
        }
    }

    /// Publishes the health check node ports the applied state asks for to `sender` after
    /// every successful sync (the servers are mode-independent; see `service_health`).
    pub fn with_health_checks(mut self, sender: watch::Sender<HealthChecks>) -> Self {
        self.health_checks = Some(sender);
        self
    }

    /// Tells `done` once the first sync has completed (what `--cleanup-kube-proxy` waits for).
    pub fn with_first_sync(mut self, done: tokio::sync::oneshot::Sender<()>) -> Self {
        self.first_sync = Some(done);
        self
    }

    /// The source delivered `objects`: counts the Services and endpoint objects that changed
    /// since the last snapshot seen (`sync_proxy_rules_*_changes_total`) and those that
    /// differ from what was last synced (`*_changes_pending`).
    pub fn observe(&mut self, objects: &Arc<ClusterObjects>) {
        if Arc::ptr_eq(objects, &self.seen_objects) {
            return;
        }
        let new = ObjectChanges::between(&self.seen_objects, objects);
        self.metrics
            .service_changes_total
            .inc_by(new.services.len() as u64);
        self.metrics
            .endpoint_changes_total
            .inc_by(new.endpoint_objects as u64);
        self.seen_objects = objects.clone();
        self.update_pending();
    }

    fn update_pending(&self) {
        let pending = if Arc::ptr_eq(&self.synced_objects, &self.seen_objects) {
            ObjectChanges::default()
        } else {
            ObjectChanges::between(&self.synced_objects, &self.seen_objects)
        };
        self.metrics
            .service_changes_pending
            .set(pending.services.len() as i64);
        self.metrics
            .endpoint_changes_pending
            .set(pending.endpoint_services.len() as i64);
    }

    /// A source or the node's addresses changed.
    pub fn changed(&mut self) {
        let now = self.clock.wall();
        self.health.queued(now);
        self.metrics.queued(epoch_seconds(now));
        self.schedule.changed();
    }

    /// The sync due now, if any.
    pub fn due(&self) -> Option<SyncKind> {
        self.schedule.due(self.clock.now())
    }

    /// When a sync may next be due without a new change.
    pub fn next_wakeup(&self) -> Instant {
        self.schedule.next_wakeup()
    }

    /// Runs the sync of `kind` from `input`. Returns false when the dataplane could not be
    /// written (it keeps its previous state; the schedule retries with a full sync).
    pub fn sync(&mut self, kind: SyncKind, input: &NodeSnapshot) -> bool {
        let started = self.clock.now();
        let ok = self.sync_inner(kind, input, started);
        self.schedule.done(kind, ok, self.clock.now());
        // Freeing the previous snapshot (tens of thousands of allocations at 10,000 services,
        // when the controller held its last reference) is no part of programming the change:
        // it happens after the sync's duration and latency are recorded.
        drop(self.retired.take());
        ok
    }

    fn sync_inner(&mut self, kind: SyncKind, input: &NodeSnapshot, started: Instant) -> bool {
        self.observe(&input.objects.objects);
        // /healthz follows the Node (deleted, or tainted by the autoscaler) from the snapshot
        // each sync reads; a Node change triggers a sync.
        let own_node = input.objects.objects.nodes.get(&self.settings.node_name);
        self.health.node(own_node.map(|n| n.as_ref()));
        let node = self.node_context(&input.addresses);
        // Devices and their addresses are re-read only when the address watch reported a
        // change, or on a verify or full sync: a one-service change need not list links.
        let addresses_seen = self
            .addresses
            .as_ref()
            .is_some_and(|seen| Arc::ptr_eq(seen, &input.addresses));
        if !addresses_seen || kind != SyncKind::Partial {
            self.dataplane.node_addresses(&input.addresses);
            self.addresses = Some(input.addresses.clone());
        }
        let mut before = self.model.update(&input.objects.objects, &node);
        self.report_problems(&input.objects.warnings);

        // For a port whose last write failed, the dataplane holds what it held before that.
        before.extend(std::mem::take(&mut self.unapplied));
        let state = self.model.state();
        let diff = StateDiff::from_before(&before, state);
        before.retain(|key, _| diff.touches(key));
        if kind == SyncKind::Partial && diff.is_empty() {
            self.finish(started, false, input);
            return true;
        }
        let modelled = self.clock.now();
        let report = match self.dataplane.sync(kind, state, &diff) {
            Ok(report) => report,
            Err(error) => {
                tracing::error!(%kind, error = %error_chain(&error), "dataplane sync failed, keeping the previous state");
                self.metrics.sync_failures_total.inc();
                self.unapplied = before;
                return false;
            }
        };
        if let Some(drift) = &report.repaired {
            tracing::warn!(%drift, "repaired dataplane drift");
            self.metrics.repairs_total.inc();
        }
        report_port_errors(&self.metrics, &report.errors);
        self.metrics
            .service_port_changes_total
            .inc_by((diff.added.len() + diff.removed.len() + diff.changed.len()) as u64);
        self.metrics.service_ports.set(state.ports.len() as i64);
        if report.full || report.ports_written > 0 || !report.errors.is_empty() {
            tracing::info!(
                %kind,
                full = report.full,
                ports = state.ports.len(),
                added = diff.added.len(),
                changed = diff.changed.len(),
                removed = diff.removed.len(),
                written = report.ports_written,
                errors = report.errors.len(),
                model_ms = millis(modelled.duration_since(started)),
                dataplane_ms = millis(self.clock.now().duration_since(modelled)),
                "synced"
            );
        } else {
            tracing::debug!(%kind, ports = state.ports.len(), "verified");
        }
        // A port that failed keeps what it held: the next diff holds it again, so a later
        // sync (the next change, or the next verify) retries it without a full rewrite.
        for error in &report.errors {
            let held = match before.get(&error.port) {
                Some(held) => held.clone(),
                None => state.ports.get(&error.port).cloned(),
            };
            self.unapplied.insert(error.port.clone(), held);
        }
        self.finish(started, report.full, input);
        true
    }

    /// Logs each input problem once, when it appears, not on every sync. The model's
    /// warnings are collected again only when an update may have changed them.
    fn report_problems(&mut self, source_warnings: &[String]) {
        let generation = self.model.warnings_generation();
        if self
            .problems_seen
            .as_ref()
            .is_some_and(|(g, w)| *g == generation && w.as_slice() == source_warnings)
        {
            return;
        }
        self.problems_seen = Some((generation, source_warnings.to_vec()));
        let mut problems: BTreeSet<String> = source_warnings.iter().cloned().collect();
        problems.extend(self.model.warnings().iter().map(ToString::to_string));
        for problem in problems.difference(&self.reported) {
            tracing::warn!("{problem}");
        }
        self.metrics.input_warnings.set(problems.len() as i64);
        self.reported = problems;
    }

    fn finish(&mut self, started: Instant, full: bool, input: &NodeSnapshot) {
        let previous = std::mem::replace(&mut self.synced_objects, input.objects.objects.clone());
        self.retired = Some(previous);
        self.update_pending();
        self.metrics.set_no_local_endpoints(
            NoLocalEndpoints::of_family(self.applied_ports(), false),
            NoLocalEndpoints::of_family(self.applied_ports(), true),
        );
        self.publish_health_checks(&input.addresses);
        let elapsed = self.clock.now().duration_since(started).as_secs_f64();
        let now = self.clock.wall();
        self.metrics.synced(elapsed, full, epoch_seconds(now));
        self.health.updated(now);
        if let Some(done) = self.first_sync.take() {
            let _ = done.send(());
        }
        // Every change the snapshot holds is now programmed, however many snapshots the
        // watch channel skipped on the way.
        let observed = self.observed_trigger;
        for trigger in input.objects.triggers.iter().filter(|t| t.seq > observed) {
            let latency = now.duration_since(trigger.at).unwrap_or_default();
            self.metrics.programmed(latency.as_secs_f64(), trigger.ipv6);
            self.observed_trigger = trigger.seq;
        }
    }

    /// The ports as the dataplane holds them: the model's state, except the ports whose last
    /// write failed, which hold what they held before.
    fn applied_ports(&self) -> impl Iterator<Item = &ServicePort> {
        let unapplied = &self.unapplied;
        self.model
            .state()
            .ports
            .iter()
            .filter(move |(key, _)| !unapplied.contains_key(*key))
            .map(|(_, port)| port.as_ref())
            .chain(unapplied.values().filter_map(|held| held.as_deref()))
    }

    /// Hands the applied state's health check node ports to their servers; unchanged ones
    /// wake nothing.
    fn publish_health_checks(&self, local: &[IpAddr]) {
        let Some(sender) = &self.health_checks else {
            return;
        };
        let checks = HealthChecks {
            services: health_check_services(self.applied_ports()),
            bind: HealthCheckBind::from_nodeport_addresses(&self.settings.nodeport_cidrs, local),
        };
        sender.send_if_modified(|current| {
            let changed = *current != checks;
            if changed {
                *current = checks;
            }
            changed
        });
    }

    fn node_context(&self, local: &[IpAddr]) -> NodeContext {
        let routable = |ip: &&IpAddr| !ip.is_loopback();
        let mut node = NodeContext::new(self.settings.node_name.clone());
        node.ipv4 = local.iter().filter(routable).any(|ip| ip.is_ipv4());
        node.ipv6 = local.iter().filter(routable).any(|ip| ip.is_ipv6());
        node.nodeport_addresses = select_nodeport_addresses(local, &self.settings.nodeport_cidrs);
        node.nodeport_range = self.settings.nodeport_range.clone();
        node
    }
}

/// A duration in milliseconds with microsecond resolution, for log fields.
fn millis(d: std::time::Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// Logs each failed port once per sync as a summary, and counts full maps.
fn report_port_errors(metrics: &Metrics, errors: &[crate::dataplane::PortError]) {
    if errors.is_empty() {
        return;
    }
    for error in errors {
        if let Some(map) = error.full_map {
            metrics
                .map_full_total
                .get_or_create(&crate::metrics::MapLabel {
                    map: map.to_owned(),
                })
                .inc();
        }
    }
    const SHOWN: usize = 5;
    let first: Vec<String> = errors.iter().take(SHOWN).map(|e| error_chain(e)).collect();
    tracing::error!(
        failed = errors.len(),
        first = ?first,
        "dataplane: service ports not programmed; retried by the next sync"
    );
    metrics.dataplane_errors_total.inc_by(errors.len() as u64);
}

/// An error and its sources, joined.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// Drives `controller` from the object source and the node's address watch until the object
/// source goes away.
pub async fn run(
    mut controller: Controller,
    mut objects: watch::Receiver<Snapshot>,
    mut addresses: watch::Receiver<Arc<Vec<IpAddr>>>,
) {
    let multi_thread = tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread;
    loop {
        if let Some(kind) = controller.due() {
            let input = NodeSnapshot {
                objects: objects.borrow_and_update().clone(),
                addresses: addresses.borrow_and_update().clone(),
            };
            // Writes shell out to iptables-restore or make map syscalls, seconds on a big
            // node: keep the runtime's other tasks (health, metrics, watches) running.
            if multi_thread {
                tokio::task::block_in_place(|| controller.sync(kind, &input));
            } else {
                controller.sync(kind, &input);
            }
            continue;
        }
        let wake = tokio::time::Instant::from_std(controller.next_wakeup());
        tokio::select! {
            changed = objects.changed() => {
                if changed.is_err() {
                    return;
                }
                controller.changed();
                let latest = objects.borrow().objects.clone();
                controller.observe(&latest);
            }
            changed = addresses.changed(), if addresses.has_changed().is_ok() => {
                if changed.is_ok() {
                    controller.changed();
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

#[cfg(test)]
mod tests;
