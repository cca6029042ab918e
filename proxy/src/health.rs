//! Sync freshness, as upstream's proxier health server judges it.
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Tracks when changes were queued and when the dataplane last caught up.
#[derive(Debug)]
pub struct Health {
    inner: Mutex<Times>,
    timeout: Duration,
}

#[derive(Debug, Default, Clone, Copy)]
struct Times {
    last_updated: Option<SystemTime>,
    oldest_pending: Option<SystemTime>,
    source_failing_since: Option<SystemTime>,
}

/// A point-in-time view for the /healthz body.
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthView {
    /// Whether the dataplane is fresh.
    pub healthy: bool,
    /// Seconds since the epoch of the last sync, if any.
    pub last_updated: Option<f64>,
    /// Seconds since the epoch now.
    pub current_time: f64,
    /// Seconds since the epoch since which the object source (API watch) has been failing;
    /// the dataplane keeps its last state meanwhile.
    pub source_failing_since: Option<f64>,
}

impl Health {
    /// Unhealthy when a queued change waits longer than `timeout` or no sync ever completed.
    pub fn new(timeout: Duration) -> Self {
        Self {
            inner: Mutex::new(Times::default()),
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

    /// The current verdict: unhealthy when a change waits too long, when no sync ever
    /// completed, or when the source has been failing for longer than the timeout (the
    /// programmed state may be stale).
    pub fn view(&self, now: SystemTime) -> HealthView {
        let t = *self.lock();
        let older = |since: Option<SystemTime>| {
            since.is_some_and(|p| now.duration_since(p).unwrap_or_default() > self.timeout)
        };
        HealthView {
            healthy: t.last_updated.is_some()
                && !older(t.oldest_pending)
                && !older(t.source_failing_since),
            last_updated: t.last_updated.map(epoch_seconds),
            current_time: epoch_seconds(now),
            source_failing_since: t.source_failing_since.map(epoch_seconds),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Times> {
        // A poisoned lock only means a panic elsewhere; the times are still meaningful.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
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

    #[test]
    fn fresh_stale_and_recovered() {
        let h = Health::new(Duration::from_secs(60));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert!(!h.view(t0).healthy, "no sync yet");
        h.updated(t0);
        assert!(h.view(t0).healthy);
        h.queued(t0 + Duration::from_secs(1));
        assert!(
            h.view(t0 + Duration::from_secs(30)).healthy,
            "pending but recent"
        );
        assert!(
            !h.view(t0 + Duration::from_secs(62)).healthy,
            "pending too long"
        );
        h.updated(t0 + Duration::from_secs(63));
        assert!(h.view(t0 + Duration::from_secs(64)).healthy);
        h.source_error(t0 + Duration::from_secs(70));
        assert!(
            h.view(t0 + Duration::from_secs(100)).healthy,
            "short outage"
        );
        let stale = h.view(t0 + Duration::from_secs(140));
        assert!(!stale.healthy, "source failing longer than the timeout");
        assert_eq!(stale.source_failing_since, Some(1_070.0));
        h.source_ok(t0 + Duration::from_secs(141));
        assert!(h.view(t0 + Duration::from_secs(142)).healthy);
    }
}
