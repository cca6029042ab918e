//! The server's state: objects per kind, the global resourceVersion, the event log that
//! watches replay from, and the open watches that new events are pushed to.
//!
//! Everything happens under one mutex, so a watch's replay and its registration for live
//! events are atomic: no event can fall between them, and every watch sees events in
//! resourceVersion order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::error::FakeApiError;
use super::Kind;

/// `(namespace, name)`; the namespace is empty for cluster-scoped kinds. Ordered like the
/// API server's storage keys, which is the order lists (and their pages) come in.
pub(crate) type Key = (String, String);

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change, as kept in the log and sent to watches.
#[derive(Debug)]
pub(crate) struct LogEvent {
    /// The resourceVersion the change created.
    pub rv: u64,
    pub kind: EventType,
    /// The new object (for a deletion: the last state, stamped with `rv`).
    pub object: Value,
    /// The object before a modification, so a watch whose selector the object leaves
    /// (or enters) can turn the modification into DELETED (ADDED) as the API server does.
    pub prev: Option<Value>,
}

/// What an open watch is told.
#[derive(Debug)]
pub(crate) enum WatchMsg {
    Event(Arc<LogEvent>),
    /// Send a bookmark; the value is the newest resourceVersion of any event so far.
    Bookmark(u64),
    /// End the stream abruptly: the connection is reset mid-body.
    Cut,
    /// End the stream cleanly, as at `timeoutSeconds`.
    End,
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatchStart {
    /// resourceVersion unset, "" or "0": synthetic ADDED for every current object first.
    Current,
    /// Every event after this resourceVersion.
    After(u64),
}

/// Why a watch could not be opened.
#[derive(Debug)]
pub(crate) enum SubscribeError {
    /// The start resourceVersion is older than the compaction point.
    Expired { requested: u64, oldest: u64 },
    /// An outage is being simulated.
    Unavailable,
}

/// An opened watch: what to send first, then the live channel.
pub(crate) struct Subscription {
    pub replay: Vec<Arc<LogEvent>>,
    pub rx: UnboundedReceiver<WatchMsg>,
    /// The resourceVersion the client is up to date with once `replay` is sent.
    pub cursor: u64,
}

struct Subscriber {
    kind: Kind,
    tx: UnboundedSender<WatchMsg>,
}

/// All mutable server state.
pub(crate) struct Store {
    objects: [BTreeMap<Key, Value>; 3],
    logs: [Vec<Arc<LogEvent>>; 3],
    /// The current resourceVersion (what a list reports).
    rv: u64,
    /// The newest resourceVersion that belongs to an event. Bookmarks carry this rather
    /// than `rv`: `compact` advances `rv` without an event, and a bookmark must not let a
    /// client skip past the compaction point without relisting.
    last_event_rv: u64,
    /// Watches from a resourceVersion below this get 410 Gone.
    oldest_watchable: u64,
    next_uid: u64,
    available: bool,
    subscribers: Vec<Subscriber>,
}

impl Store {
    pub(crate) fn new() -> Self {
        Store {
            objects: Default::default(),
            logs: Default::default(),
            rv: 1,
            last_event_rv: 1,
            oldest_watchable: 0,
            next_uid: 1,
            available: true,
            subscribers: Vec::new(),
        }
    }

    /// The current resourceVersion.
    pub(crate) fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Objects of `kind`, ordered by key.
    pub(crate) fn objects(&self, kind: Kind) -> &BTreeMap<Key, Value> {
        &self.objects[kind.index()]
    }

    /// Whether the simulated outage is off.
    pub(crate) fn available(&self) -> bool {
        self.available
    }

    /// Whether a list continuation issued at `rv` can still be served.
    pub(crate) fn continuable(&self, rv: u64) -> bool {
        rv >= self.oldest_watchable
    }

    /// Creates or replaces an object; returns its resourceVersion. Replacing an object
    /// with identical content is a no-op, as in the API server.
    pub(crate) fn apply(&mut self, object: Value) -> Result<u64, FakeApiError> {
        let (kind, key, mut object) = normalize(object)?;
        let prev = self.objects[kind.index()].get(&key).cloned();
        let meta = metadata_mut(&mut object);
        match prev.as_ref().map(|p| p.get("metadata")) {
            Some(Some(old)) => {
                // Identity and age survive updates; the caller cannot change them.
                for field in ["uid", "creationTimestamp", "resourceVersion"] {
                    match old.get(field) {
                        Some(v) => meta.insert(field.to_owned(), v.clone()),
                        None => meta.remove(field),
                    };
                }
                if prev.as_ref() == Some(&Value::Object(object.clone())) {
                    return Ok(rv_of(prev.as_ref()));
                }
            }
            _ => {
                if !meta.contains_key("uid") {
                    meta.insert("uid".to_owned(), Value::String(fake_uid(self.next_uid)));
                    self.next_uid += 1;
                }
                if !meta.contains_key("creationTimestamp") {
                    meta.insert("creationTimestamp".to_owned(), Value::String(now_rfc3339()));
                }
            }
        }
        let rv = self.next_rv();
        set_rv(&mut object, rv);
        let object = Value::Object(object);
        self.objects[kind.index()].insert(key, object.clone());
        let event_type = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(kind, event_type, object, prev);
        Ok(rv)
    }

    /// Deletes an object; returns the resourceVersion of the deletion.
    pub(crate) fn delete(&mut self, kind: Kind, key: Key) -> Result<u64, FakeApiError> {
        let Some(Value::Object(mut object)) = self.objects[kind.index()].remove(&key) else {
            return Err(FakeApiError::NotFound {
                kind,
                namespace: key.0,
                name: key.1,
            });
        };
        let rv = self.next_rv();
        set_rv(&mut object, rv);
        self.record(kind, EventType::Deleted, Value::Object(object), None);
        Ok(rv)
    }

    /// Forgets the event history and advances the resourceVersion, so resuming a watch
    /// from any resourceVersion handed out so far gets 410 Gone.
    pub(crate) fn compact(&mut self) {
        self.rv += 1;
        self.oldest_watchable = self.rv;
        self.logs.iter_mut().for_each(Vec::clear);
    }

    /// Opens a watch on `kind` starting at `start`.
    pub(crate) fn subscribe(
        &mut self,
        kind: Kind,
        start: WatchStart,
    ) -> Result<Subscription, SubscribeError> {
        if !self.available {
            return Err(SubscribeError::Unavailable);
        }
        let (replay, cursor) = match start {
            WatchStart::Current => {
                let added = self.objects[kind.index()].values().map(|object| {
                    Arc::new(LogEvent {
                        rv: rv_of(Some(object)),
                        kind: EventType::Added,
                        object: object.clone(),
                        prev: None,
                    })
                });
                (added.collect(), self.rv)
            }
            WatchStart::After(rv) if rv < self.oldest_watchable => {
                return Err(SubscribeError::Expired {
                    requested: rv,
                    oldest: self.oldest_watchable,
                })
            }
            WatchStart::After(rv) => {
                let log = &self.logs[kind.index()];
                let later = log.iter().filter(|e| e.rv > rv).cloned().collect();
                (later, rv)
            }
        };
        let (tx, rx) = unbounded_channel();
        self.subscribers.push(Subscriber { kind, tx });
        Ok(Subscription { replay, rx, cursor })
    }

    /// Sends a bookmark request to every open watch (each decides whether its client
    /// asked for bookmarks).
    pub(crate) fn bookmark_all(&mut self) {
        let rv = self.last_event_rv;
        self.subscribers
            .retain(|s| s.tx.send(WatchMsg::Bookmark(rv)).is_ok());
    }

    /// Ends every open watch, abruptly (`cut`) or cleanly.
    pub(crate) fn end_all(&mut self, cut: bool) {
        for s in self.subscribers.drain(..) {
            let _ = s.tx.send(if cut { WatchMsg::Cut } else { WatchMsg::End });
        }
    }

    /// Starts or ends a simulated outage; starting one cuts every open watch.
    pub(crate) fn set_available(&mut self, available: bool) {
        self.available = available;
        if !available {
            self.end_all(true);
        }
    }

    /// Watches of `kind` whose client is still connected.
    pub(crate) fn open_watches(&self, kind: Kind) -> usize {
        self.subscribers
            .iter()
            .filter(|s| s.kind == kind && !s.tx.is_closed())
            .count()
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.last_event_rv = self.rv;
        self.rv
    }

    fn record(&mut self, kind: Kind, event: EventType, object: Value, prev: Option<Value>) {
        let event = Arc::new(LogEvent {
            rv: self.rv,
            kind: event,
            object,
            prev,
        });
        self.logs[kind.index()].push(event.clone());
        // A failed send means the client went away; forget that watch.
        self.subscribers
            .retain(|s| s.kind != kind || s.tx.send(WatchMsg::Event(event.clone())).is_ok());
    }
}

/// Checks an object and fills in what the API server would: apiVersion, and the
/// namespace ("default" for namespaced kinds, none for cluster-scoped ones).
fn normalize(object: Value) -> Result<(Kind, Key, Map<String, Value>), FakeApiError> {
    let Value::Object(mut object) = object else {
        return Err(FakeApiError::InvalidObject(format!(
            "expected a JSON object, got {object}"
        )));
    };
    let kind_name = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = Kind::from_name(kind_name)
        .ok_or_else(|| FakeApiError::UnsupportedKind(kind_name.to_owned()))?;
    match object.get("apiVersion").and_then(Value::as_str) {
        None => {
            object.insert("apiVersion".to_owned(), kind.api_version().into());
        }
        Some(v) if v == kind.api_version() => {}
        Some(v) => {
            return Err(FakeApiError::InvalidObject(format!(
                "{kind} with apiVersion {v:?}; expected {:?}",
                kind.api_version()
            )))
        }
    }
    if object.get("metadata").is_some_and(|m| !m.is_object()) {
        return Err(FakeApiError::InvalidObject(format!(
            "{kind}: metadata is not an object"
        )));
    }
    let meta = metadata_mut(&mut object);
    let name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
    if name.is_empty() {
        return Err(FakeApiError::InvalidObject(format!(
            "{kind} without metadata.name"
        )));
    }
    let name = name.to_owned();
    let namespace = if kind.namespaced() {
        let ns = meta
            .get("namespace")
            .and_then(Value::as_str)
            .filter(|ns| !ns.is_empty())
            .unwrap_or("default")
            .to_owned();
        meta.insert("namespace".to_owned(), Value::String(ns.clone()));
        ns
    } else {
        meta.remove("namespace");
        String::new()
    };
    Ok((kind, (namespace, name), object))
}

fn metadata_mut(object: &mut Map<String, Value>) -> &mut Map<String, Value> {
    let slot = object
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(meta) => meta,
        _ => unreachable!("metadata was made an object just above"),
    }
}

fn set_rv(object: &mut Map<String, Value>, rv: u64) {
    metadata_mut(object).insert("resourceVersion".to_owned(), Value::String(rv.to_string()));
}

/// The resourceVersion stamped into a stored object.
pub(crate) fn rv_of(object: Option<&Value>) -> u64 {
    object
        .and_then(|o| o.pointer("/metadata/resourceVersion"))
        .and_then(Value::as_str)
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0)
}

fn fake_uid(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// The current time as RFC 3339 in UTC with second precision, like metav1.Time.
fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_000), (2024, 10, 4));
    }

    #[test]
    fn apply_stamps_and_noop_update_keeps_rv() {
        let mut store = Store::new();
        let svc = json!({"kind": "Service", "metadata": {"name": "a"}, "spec": {"clusterIP": "198.18.128.4"}});
        let rv1 = store.apply(svc.clone()).expect("create");
        let stored = store.objects(Kind::Service)[&("default".into(), "a".into())].clone();
        assert_eq!(stored["apiVersion"], "v1");
        assert_eq!(stored["metadata"]["resourceVersion"], rv1.to_string());
        assert!(stored["metadata"]["uid"].is_string());
        assert_eq!(store.apply(svc).expect("re-apply"), rv1);
        let changed = json!({"kind": "Service", "metadata": {"name": "a"}, "spec": {"clusterIP": "198.18.128.5"}});
        let rv2 = store.apply(changed).expect("update");
        assert!(rv2 > rv1);
        let updated = &store.objects(Kind::Service)[&("default".into(), "a".into())];
        assert_eq!(updated["metadata"]["uid"], stored["metadata"]["uid"]);
    }

    #[test]
    fn compaction_expires_old_watches() {
        let mut store = Store::new();
        let rv = store
            .apply(json!({"kind": "Node", "metadata": {"name": "n"}}))
            .expect("create");
        assert!(store.subscribe(Kind::Node, WatchStart::After(rv)).is_ok());
        store.compact();
        assert!(matches!(
            store.subscribe(Kind::Node, WatchStart::After(rv)),
            Err(SubscribeError::Expired { .. })
        ));
        let now = store.resource_version();
        assert!(store.subscribe(Kind::Node, WatchStart::After(now)).is_ok());
    }
}
