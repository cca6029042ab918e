//! Proxy health, as upstream's health server judges it (`pkg/proxy/healthcheck/proxy_health.go`).
//!
//! - `/livez` ([`Health::livez`]): healthy unless a queued change has waited longer than the
//!   timeout. It ignores the Node and the object source, so a control-plane outage never makes
//!   the liveness probe restart the proxy that keeps the last state programmed.
//! - `/healthz` ([`Health::healthz`]): the same, and the Node is eligible: it exists, has no
//!   `deletionTimestamp` and no `ToBeDeletedByClusterAutoscaler` taint (KEP-3836), so load
//!   balancers drain a node that is going away. Unlike upstream, it also needs one completed
//!   sync: a readiness probe (and a load balancer) should not see the proxy as ready before
//!   anything is programmed; upstream reports healthy from start-up.
//!
//! Everything here is pure over the `SystemTime`s passed in.
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Node;

/// Taint the cluster autoscaler puts on a node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// How Go renders a zero `time.Time`, which upstream reports before the first sync.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Tracks when changes were queued, when the dataplane last caught up, the object source's
/// failures and the Node's eligibility.
#[derive(Debug)]
pub struct Health {
    inner: Mutex<State>,
    timeout: Duration,
}

#[derive(Debug, Default, Clone, Copy)]
struct State {
    last_updated: Option<SystemTime>,
    oldest_pending: Option<SystemTime>,
    source_failing_since: Option<SystemTime>,
    /// `None` until a sync saw the snapshot (the Node is not known yet).
    node_eligible: Option<bool>,
}

/// The `/healthz` verdict and body (upstream's `ProxyHealth`, without the per-family
/// `status` map: Switchyard has one proxier for both families).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthzView {
    /// RFC 3339; the current time when healthy (as upstream, for old clients that read it
    /// as "the last sync loop"), else the last completed sync (Go's zero time if none).
    pub last_updated: String,
    /// RFC 3339.
    pub current_time: String,
    /// Whether the Node is eligible for traffic.
    pub node_eligible: bool,
    /// The verdict: 200 when true, 503 otherwise.
    pub healthy: bool,
    /// Extension (RFC 3339): since when the object source has been failing. The dataplane
    /// keeps its last state meanwhile, and the verdict does not depend on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_failing_since: Option<String>,
}

/// The `/livez` verdict and body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LivezView {
    /// RFC 3339, as in [`HealthzView::last_updated`].
    pub last_updated: String,
    /// RFC 3339.
    pub current_time: String,
    /// The verdict: 200 when true, 503 otherwise.
    pub healthy: bool,
}

impl Health {
    /// Health that turns bad when a queued change waits longer than `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            inner: Mutex::new(State::default()),
            timeout,
        }
    }

    /// A change arrived that the dataplane does not hold yet.
    pub fn queued(&self, now: SystemTime) {
        let mut t = self.lock();
        t.oldest_pending.get_or_insert(now);
    }

    /// The dataplane caught up with everything queued so far.
    pub fn updated(&self, now: SystemTime) {
        let mut t = self.lock();
        t.last_updated = Some(now);
        t.oldest_pending = None;
    }

    /// The source failed (e.g. the API server is unreachable).
    pub fn source_error(&self, now: SystemTime) {
        self.lock().source_failing_since.get_or_insert(now);
    }

    /// Whether the source is currently failing.
    pub fn source_failing(&self) -> bool {
        self.lock().source_failing_since.is_some()
    }

    /// The source delivered data again.
    pub fn source_ok(&self, _now: SystemTime) {
        self.lock().source_failing_since = None;
    }

    /// This node's Node object as the latest snapshot has it (`None`: not there).
    pub fn node(&self, node: Option<&Node>) {
        self.lock().node_eligible = Some(node_eligible(node));
    }

    /// No queued change has waited longer than the timeout (upstream's `Health().Healthy`).
    fn fresh(&self, t: &State, now: SystemTime) -> bool {
        t.oldest_pending
            .is_none_or(|p| now.duration_since(p).unwrap_or_default() < self.timeout)
    }

    /// The `/healthz` verdict.
    pub fn healthz(&self, now: SystemTime) -> HealthzView {
        let t = *self.lock();
        let node_eligible = t.node_eligible.unwrap_or(false);
        let healthy = self.fresh(&t, now) && t.last_updated.is_some() && node_eligible;
        HealthzView {
            last_updated: last_updated(healthy, t.last_updated, now),
            current_time: rfc3339(now),
            node_eligible,
            healthy,
            source_failing_since: t.source_failing_since.map(rfc3339),
        }
    }

    /// The `/livez` verdict.
    pub fn livez(&self, now: SystemTime) -> LivezView {
        let t = *self.lock();
        let healthy = self.fresh(&t, now);
        LivezView {
            last_updated: last_updated(healthy, t.last_updated, now),
            current_time: rfc3339(now),
            healthy,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the times are still meaningful.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Upstream's node eligibility: the Node exists, is not being deleted, and is not tainted
/// for deletion by the cluster autoscaler.
pub fn node_eligible(node: Option<&Node>) -> bool {
    let Some(node) = node else {
        return false;
    };
    if node.metadata.deletion_timestamp.is_some() {
        return false;
    }
    !node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|taints| taints.iter().any(|t| t.key == TO_BE_DELETED_TAINT))
}

fn last_updated(healthy: bool, last: Option<SystemTime>, now: SystemTime) -> String {
    match (healthy, last) {
        (true, _) => rfc3339(now),
        (false, Some(t)) => rfc3339(t),
        (false, None) => GO_ZERO_TIME.into(),
    }
}

/// A time as Go's `time.Time` marshals it in UTC: RFC 3339 with the fraction's trailing zeros
/// dropped.
pub fn rfc3339(t: SystemTime) -> String {
    // humantime cannot render times before the epoch; a clock that far off is clamped.
    let t = t.max(SystemTime::UNIX_EPOCH);
    let text = humantime::format_rfc3339_nanos(t).to_string();
    match text.strip_suffix('Z').and_then(|s| s.split_once('.')) {
        Some((seconds, fraction)) => {
            let fraction = fraction.trim_end_matches('0');
            if fraction.is_empty() {
                format!("{seconds}Z")
            } else {
                format!("{seconds}.{fraction}Z")
            }
        }
        None => text,
    }
}

/// Seconds since the Unix epoch.
pub fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const TIMEOUT: Duration = Duration::from_secs(60);

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + seconds)
    }

    fn node() -> Node {
        let mut node = Node::default();
        node.metadata.name = Some("node-1".into());
        node
    }

    fn tainted(key: &str) -> Node {
        let mut node = node();
        node.spec = Some(NodeSpec {
            taints: Some(vec![Taint {
                key: key.into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        node
    }

    /// Synced once at `at(0)`, with an eligible Node.
    fn synced() -> Health {
        let h = Health::new(TIMEOUT);
        h.node(Some(&node()));
        h.updated(at(0));
        h
    }

    #[test]
    fn before_the_first_sync_alive_but_not_ready() {
        let h = Health::new(TIMEOUT);
        let healthz = h.healthz(at(0));
        assert!(!healthz.healthy);
        assert!(!healthz.node_eligible, "the Node is not known yet");
        assert_eq!(healthz.last_updated, "0001-01-01T00:00:00Z");
        assert!(h.livez(at(0)).healthy, "nothing is overdue");
        h.node(Some(&node()));
        assert!(!h.healthz(at(1)).healthy, "no sync yet");
        // The first snapshot is queued; a first sync that never ends fails liveness.
        h.queued(at(1));
        assert!(h.livez(at(60)).healthy);
        assert!(!h.livez(at(61)).healthy);
        h.updated(at(62));
        assert!(h.healthz(at(62)).healthy);
        assert!(h.livez(at(62)).healthy);
    }

    #[test]
    fn a_change_waiting_too_long_fails_both() {
        let h = synced();
        h.queued(at(10));
        assert!(h.healthz(at(69)).healthy, "pending but recent");
        assert!(h.livez(at(69)).healthy);
        let (healthz, livez) = (h.healthz(at(70)), h.livez(at(70)));
        assert!(
            !healthz.healthy && !livez.healthy,
            "pending for the whole timeout"
        );
        assert_eq!(healthz.last_updated, rfc3339(at(0)), "the real last sync");
        h.updated(at(71));
        assert!(h.healthz(at(72)).healthy);
        assert!(h.livez(at(72)).healthy);
    }

    #[test]
    fn a_source_outage_fails_neither() {
        let h = synced();
        h.source_error(at(5));
        let healthz = h.healthz(at(500));
        assert!(healthz.healthy, "the last state is still programmed");
        assert!(
            h.livez(at(500)).healthy,
            "liveness must not restart us for an API outage"
        );
        assert_eq!(healthz.source_failing_since, Some(rfc3339(at(5))));
        h.source_ok(at(501));
        assert_eq!(h.healthz(at(502)).source_failing_since, None);
    }

    #[test]
    fn an_ineligible_node_fails_healthz_only() {
        let mut deleting = node();
        deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        let cases = [
            ("missing", None),
            ("deleting", Some(deleting)),
            ("autoscaler taint", Some(tainted(TO_BE_DELETED_TAINT))),
        ];
        for (what, node) in cases {
            let h = synced();
            h.node(node.as_ref());
            let healthz = h.healthz(at(1));
            assert!(!healthz.healthy, "{what}");
            assert!(!healthz.node_eligible, "{what}");
            assert!(h.livez(at(1)).healthy, "{what}: liveness ignores the Node");
        }
        let h = synced();
        h.node(Some(&tainted("node.kubernetes.io/unschedulable")));
        assert!(h.healthz(at(1)).healthy, "other taints do not matter");
        h.node(Some(&tainted(TO_BE_DELETED_TAINT)));
        assert!(!h.healthz(at(2)).healthy);
        h.node(Some(&node()));
        assert!(h.healthz(at(3)).healthy, "eligible again");
    }

    #[test]
    fn bodies_match_upstream() {
        let h = synced();
        let now = at(7) + Duration::from_millis(250);
        let body = serde_json::to_value(h.healthz(now)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "lastUpdated": "1970-01-12T13:46:47.25Z",
                "currentTime": "1970-01-12T13:46:47.25Z",
                "nodeEligible": true,
                "healthy": true,
            })
        );
        let body = serde_json::to_value(h.livez(at(7))).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "lastUpdated": "1970-01-12T13:46:47Z",
                "currentTime": "1970-01-12T13:46:47Z",
                "healthy": true,
            })
        );
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH + Duration::new(1, 120)),
            "1970-01-01T00:00:01.00000012Z"
        );
    }
}
