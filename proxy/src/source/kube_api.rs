//! The Kubernetes API source: kube-rs watchers and reflector stores for Services,
//! EndpointSlices and this node's Node, turned into the same [`Snapshot`]s the manifest
//! source produces.
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use tokio::sync::{mpsc, watch};

use super::{Snapshot, SourceError, Trigger, TRIGGERS_KEPT};
use crate::health::Health;
use crate::model::ClusterObjects;

/// Upstream's annotation on EndpointSlices: when the change that produced this version began.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// Services for another proxy, and headless ones, are not watched at all (as upstream).
const SERVICE_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";
/// Headless slices are not watched (as upstream).
const SLICE_SELECTOR: &str = "!service.kubernetes.io/headless";
/// How often a failing source checks whether the API server answers again.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How often the same start-up error is logged again while the API server stays unreachable.
const LOG_REPEAT: Duration = Duration::from_secs(30);
/// Events arriving within this window become one snapshot.
const BATCH: Duration = Duration::from_millis(50);

/// The recent EndpointSlice change triggers, shared by the slice reflector (which records
/// each live change after the store holds it) and the snapshot publisher.
#[derive(Clone, Debug, Default)]
struct TriggerLog(Arc<Mutex<TriggerLogInner>>);

#[derive(Debug, Default)]
struct TriggerLogInner {
    last_seq: u64,
    recent: std::collections::VecDeque<Trigger>,
}

impl TriggerLog {
    fn record(&self, (at, ipv6): (SystemTime, bool)) {
        let mut log = self.lock();
        log.last_seq += 1;
        let seq = log.last_seq;
        log.recent.push_back(Trigger { seq, at, ipv6 });
        while log.recent.len() > TRIGGERS_KEPT {
            log.recent.pop_front();
        }
    }

    fn recent(&self) -> Arc<Vec<Trigger>> {
        Arc::new(self.lock().recent.iter().copied().collect())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TriggerLogInner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Which stream an event came from, and whether it kept the store complete.
enum Signal {
    Changed,
    Failed(String),
}

/// Watches the API server. The first snapshot is published only once every initial list is
/// complete, so the dataplane never programs a partial picture.
pub async fn watch_api(
    client: Client,
    server: &str,
    node_name: &str,
    health: Arc<Health>,
) -> Result<watch::Receiver<Snapshot>, SourceError> {
    let triggers = TriggerLog::default();
    let (signal_tx, mut signal_rx) = mpsc::unbounded_channel();
    // Lists at resourceVersion 0, as client-go's informers (so kube-proxy's) make them: the
    // API server answers from its watch cache in one response instead of reading etcd in
    // pages of 500 (at 10,000 services, 40 round trips per kind, for every node's proxy).
    let config = || watcher::Config::default().any_semantic();
    let services = spawn_reflector(
        Api::<Service>::all(client.clone()),
        config().labels(SERVICE_SELECTOR),
        signal_tx.clone(),
        None,
    );
    let slices = spawn_reflector(
        Api::<EndpointSlice>::all(client.clone()),
        config().labels(SLICE_SELECTOR),
        signal_tx.clone(),
        Some((triggers.clone(), slice_trigger)),
    );
    let nodes = spawn_reflector(
        Api::<Node>::all(client.clone()),
        config().fields(&format!("metadata.name={node_name}")),
        signal_tx,
        None,
    );
    tracing::info!(%server, "waiting for the initial lists of services, endpoint slices and nodes");
    // A block, so the future borrowing the stores is gone before they move on.
    {
        let ready = async {
            for ready in [
                services.wait_until_ready().await,
                slices.wait_until_ready().await,
                nodes.wait_until_ready().await,
            ] {
                ready.map_err(|e| {
                    SourceError::Client(format!("API watch ended before its first list: {e}"))
                })?;
            }
            Ok::<(), SourceError>(())
        };
        let mut ready = std::pin::pin!(ready);
        // The watchers retry with backoff meanwhile; say why, naming the server, once per
        // distinct error or per LOG_REPEAT, not once per watcher and attempt.
        let mut last_logged: Option<(String, tokio::time::Instant)> = None;
        loop {
            tokio::select! {
                result = &mut ready => break result?,
                Some(signal) = signal_rx.recv() => {
                    if let Signal::Failed(e) = signal {
                        let now = tokio::time::Instant::now();
                        let repeat = last_logged
                            .as_ref()
                            .is_some_and(|(m, at)| *m == e && now < *at + LOG_REPEAT);
                        if !repeat {
                            tracing::warn!(%server, error = %e, "API server unreachable; retrying");
                            last_logged = Some((e, now));
                        }
                    }
                }
            }
        }
    }
    let (tx, rx) = watch::channel(snapshot(&services, &slices, &nodes, &triggers));
    health.source_ok(SystemTime::now());
    let server = server.to_owned();
    tokio::spawn(async move {
        // kube-runtime reports a watch error, but not the successful re-watch after it; on a
        // quiet cluster no event would ever clear the failure. While failing, a cheap call
        // tells when the API server is back.
        let mut probe = tokio::time::interval(PROBE_INTERVAL);
        loop {
            let first = tokio::select! {
                signal = signal_rx.recv() => match signal {
                    Some(signal) => signal,
                    None => return,
                },
                _ = probe.tick() => {
                    if health.source_failing() && client.apiserver_version().await.is_ok() {
                        health.source_ok(SystemTime::now());
                    }
                    continue;
                }
            };
            // Gather a burst into one snapshot.
            let mut signals = vec![first];
            while let Ok(Some(next)) = tokio::time::timeout(BATCH, signal_rx.recv()).await {
                signals.push(next);
            }
            let mut changed = false;
            for signal in signals {
                match signal {
                    Signal::Changed => changed = true,
                    Signal::Failed(e) => {
                        // The stores keep their last state and the dataplane stays as it is;
                        // the watcher retries with backoff. /healthz reports the staleness.
                        tracing::warn!(%server, error = %e, "API watch failed; retrying");
                        health.source_error(SystemTime::now());
                    }
                }
            }
            if changed {
                health.source_ok(SystemTime::now());
                if tx
                    .send(snapshot(&services, &slices, &nodes, &triggers))
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

/// What a live change of an object records in the trigger log: its trigger time and whether
/// it is IPv6.
type TriggerOf<K> = fn(&K) -> Option<(SystemTime, bool)>;

/// Runs a watcher into a reflector store; every event or error becomes a signal.
fn spawn_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    signals: mpsc::UnboundedSender<Signal>,
    triggers: Option<(TriggerLog, TriggerOf<K>)>,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
    K: serde::de::DeserializeOwned,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
    tokio::spawn(async move {
        let mut listed = false;
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            let signal = match item {
                // A (re)list in progress changes nothing visible: the store swaps in the new
                // list at InitDone. Counting these as progress would hide a failing relist.
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
                Ok(event) => {
                    match &event {
                        watcher::Event::InitDone => listed = true,
                        watcher::Event::Apply(object) if listed => {
                            // Only live changes count: the initial list's trigger times
                            // describe changes programmed by someone before us.
                            // The reflector has already put the object into the store,
                            // so any snapshot read from now on holds this change.
                            if let Some((log, of)) = &triggers {
                                if let Some(trigger) = of(object) {
                                    log.record(trigger);
                                }
                            }
                        }
                        _ => {}
                    }
                    Signal::Changed
                }
                Err(e) => Signal::Failed(e.to_string()),
            };
            if signals.send(signal).is_err() {
                return;
            }
        }
    });
    reader
}

/// A slice's trigger time and whether its addresses are IPv6.
fn slice_trigger(slice: &EndpointSlice) -> Option<(SystemTime, bool)> {
    Some((trigger_time(slice)?, slice.address_type == "IPv6"))
}

/// The trigger-time annotation of an object, if present and valid RFC 3339.
fn trigger_time<K: Resource>(object: &K) -> Option<SystemTime> {
    let text = object
        .meta()
        .annotations
        .as_ref()?
        .get(TRIGGER_TIME_ANNOTATION)?;
    let parsed = humantime::parse_rfc3339_weak(text.trim()).ok()?;
    Some(parsed)
}

fn snapshot(
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    nodes: &Store<Node>,
    triggers: &TriggerLog,
) -> Snapshot {
    // Triggers first: each was recorded after its object reached the store, so every one
    // read here is in the objects read below.
    let triggers = triggers.recent();
    let mut objects = ClusterObjects::default();
    for service in services.state() {
        objects.insert_service_arc(service);
    }
    for slice in slices.state() {
        objects.insert_slice_arc(slice);
    }
    for node in nodes.state() {
        objects.insert_node_arc(node);
    }
    Snapshot {
        objects: Arc::new(objects),
        warnings: Vec::new(),
        triggers,
    }
}

/// A client from a kubeconfig file, or from the pod's service account when `None`, and the
/// server it talks to (for messages).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<(Client, String), SourceError> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                SourceError::Client(format!("--kubeconfig {}: {e}", path.display()))
            })?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| SourceError::Client(format!("--kubeconfig {}: {e}", path.display())))?
        }
        None => {
            tracing::warn!(
                "in-cluster config reaches the API through the `kubernetes` Service that this proxy \
                 programs; prefer a kubeconfig with the API server's own address (deploy/base/kubeconfig.conf)"
            );
            kube::Config::incluster()
                .map_err(|e| SourceError::Client(format!("in-cluster config: {e}")))?
        }
    };
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| SourceError::Client(e.to_string()))?;
    Ok((client, server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_time_is_read_from_the_annotation() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "s", "namespace": "n",
                "annotations": {TRIGGER_TIME_ANNOTATION: "2026-11-21T10:00:00Z"}},
            "addressType": "IPv4", "endpoints": []
        }))
        .unwrap();
        let at = trigger_time(&slice).expect("parsed");
        assert_eq!(
            at,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_255_200)
        );
        assert_eq!(slice_trigger(&slice), Some((at, false)));
        let mut v6 = slice.clone();
        v6.address_type = "IPv6".into();
        assert_eq!(slice_trigger(&v6), Some((at, true)));
        let mut no = slice.clone();
        no.metadata.annotations = None;
        assert_eq!(trigger_time(&no), None);
    }
}
