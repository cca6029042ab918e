//! When to sync and which kind of sync (pure: the time is passed in).
//!
//! - A change is synced no sooner than `min_sync_period` after the previous sync, so a burst
//!   of changes becomes one sync (upstream's `minSyncPeriod`).
//! - Every `sync_period` a [`SyncKind::Verify`] checks the kernel state and repairs drift.
//! - The first sync, the sync after a failure, and one every `full_sync_period` (an hour, as
//!   upstream) are [`SyncKind::Full`] rewrites.
//! - A failed sync is retried after `retry_delay`, or sooner with the next change.
use std::time::{Duration, Instant};

use crate::dataplane::SyncKind;

/// Upstream kube-proxy forces a full rewrite hourly, to repair drift no cheap check can see
/// (a single rule deleted by hand).
pub const FULL_SYNC_PERIOD: Duration = Duration::from_secs(3600);
/// Delay before a failed sync is retried.
pub const RETRY_DELAY: Duration = Duration::from_secs(1);

/// The periods the schedule follows.
#[derive(Clone, Copy, Debug)]
pub struct Periods {
    /// Least time between two syncs.
    pub min_sync_period: Duration,
    /// Time between two verifies.
    pub sync_period: Duration,
    /// Time between two full rewrites.
    pub full_sync_period: Duration,
    /// Time before a failed sync is retried.
    pub retry_delay: Duration,
}

/// The sync schedule's state.
#[derive(Clone, Debug)]
pub struct Schedule {
    periods: Periods,
    /// A change arrived that no successful sync has applied yet.
    pending: bool,
    /// The next sync must be a full rewrite (start, or the last one failed).
    full_owed: bool,
    last_sync: Option<Instant>,
    last_verify: Instant,
    last_full: Instant,
    retry_at: Option<Instant>,
}

impl Schedule {
    /// A schedule that owes its first full sync now.
    pub fn new(periods: Periods, now: Instant) -> Self {
        Self {
            periods,
            pending: false,
            full_owed: true,
            last_sync: None,
            last_verify: now,
            last_full: now,
            retry_at: None,
        }
    }

    /// A change arrived from a source.
    pub fn changed(&mut self) {
        self.pending = true;
    }

    /// The sync to run at `now`, if any.
    pub fn due(&self, now: Instant) -> Option<SyncKind> {
        if let Some(last) = self.last_sync {
            if now < last + self.periods.min_sync_period {
                return None;
            }
        }
        if self.full_owed {
            let retry_due = self.retry_at.is_none_or(|at| now >= at);
            return (retry_due || self.pending).then_some(SyncKind::Full);
        }
        if now >= self.last_full + self.periods.full_sync_period {
            return Some(SyncKind::Full);
        }
        if now >= self.last_verify + self.periods.sync_period {
            return Some(SyncKind::Verify);
        }
        self.pending.then_some(SyncKind::Partial)
    }

    /// When [`Schedule::due`] next returns a sync without a new change arriving, or, with
    /// one pending, when it may run.
    pub fn next_wakeup(&self) -> Instant {
        let mut at = (self.last_verify + self.periods.sync_period)
            .min(self.last_full + self.periods.full_sync_period);
        if self.full_owed {
            at = at.min(self.retry_at.unwrap_or(self.last_verify));
        }
        if self.pending {
            at = at.min(self.last_sync.unwrap_or(self.last_verify));
        }
        match self.last_sync {
            Some(last) => at.max(last + self.periods.min_sync_period),
            None => at,
        }
    }

    /// A sync of `kind` that started after every change so far was read ended at `now`.
    pub fn done(&mut self, kind: SyncKind, ok: bool, now: Instant) {
        self.last_sync = Some(now);
        if !ok {
            self.full_owed = true;
            self.retry_at = Some(now + self.periods.retry_delay);
            return;
        }
        self.pending = false;
        self.retry_at = None;
        match kind {
            SyncKind::Full => {
                self.full_owed = false;
                self.last_full = now;
                self.last_verify = now;
            }
            SyncKind::Verify => self.last_verify = now,
            SyncKind::Partial => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn periods() -> Periods {
        Periods {
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
            full_sync_period: FULL_SYNC_PERIOD,
            retry_delay: RETRY_DELAY,
        }
    }

    /// Runs the schedule like the controller's driver would, from `start` to `end`, with
    /// changes at the given offsets and syncs that fail at the given offsets; returns each
    /// sync as (offset, kind).
    fn drive(
        changes: &[Duration],
        failures: &[Duration],
        end: Duration,
    ) -> Vec<(Duration, SyncKind)> {
        let start = Instant::now();
        let mut schedule = Schedule::new(periods(), start);
        let mut syncs = Vec::new();
        let mut changes = changes.to_vec();
        changes.sort();
        let mut changes = changes.into_iter().peekable();
        let mut now = start;
        while now < start + end {
            // Sleep until the next wake-up or the next change, whichever comes first.
            let wake = schedule.next_wakeup().max(now);
            match changes.peek() {
                Some(c) if start + *c <= wake => {
                    now = start + *c;
                    schedule.changed();
                    changes.next();
                }
                _ => now = wake,
            }
            if now >= start + end {
                break;
            }
            if let Some(kind) = schedule.due(now) {
                let offset = now - start;
                let ok = !failures.contains(&offset);
                syncs.push((offset, kind));
                schedule.done(kind, ok, now);
            }
        }
        syncs
    }

    #[test]
    fn the_first_sync_is_full_and_immediate() {
        let syncs = drive(&[], &[], Duration::from_secs(5));
        assert_eq!(syncs, vec![(Duration::ZERO, SyncKind::Full)]);
    }

    #[test]
    fn a_burst_inside_min_sync_period_is_one_partial_sync_at_its_end() {
        let burst: Vec<Duration> = (1..=10)
            .map(|i| Duration::from_millis(100) + 10 * i * MS)
            .collect();
        let syncs = drive(&burst, &[], Duration::from_secs(5));
        assert_eq!(
            syncs,
            vec![
                (Duration::ZERO, SyncKind::Full),
                (Duration::from_secs(1), SyncKind::Partial),
            ]
        );
    }

    #[test]
    fn a_change_long_after_the_last_sync_is_applied_at_once() {
        let syncs = drive(&[Duration::from_secs(10)], &[], Duration::from_secs(12));
        assert_eq!(syncs[1], (Duration::from_secs(10), SyncKind::Partial));
    }

    #[test]
    fn idle_means_one_verify_per_sync_period_and_nothing_else() {
        let syncs = drive(&[], &[], Duration::from_secs(95));
        assert_eq!(
            syncs,
            vec![
                (Duration::ZERO, SyncKind::Full),
                (Duration::from_secs(30), SyncKind::Verify),
                (Duration::from_secs(60), SyncKind::Verify),
                (Duration::from_secs(90), SyncKind::Verify),
            ]
        );
    }

    #[test]
    fn a_full_rewrite_comes_hourly() {
        let syncs = drive(&[], &[], FULL_SYNC_PERIOD + Duration::from_secs(1));
        let fulls: Vec<Duration> = syncs
            .iter()
            .filter(|(_, k)| *k == SyncKind::Full)
            .map(|(at, _)| *at)
            .collect();
        assert_eq!(fulls, vec![Duration::ZERO, FULL_SYNC_PERIOD]);
    }

    #[test]
    fn a_failed_sync_is_retried_as_full_after_the_retry_delay() {
        let fail_at = Duration::from_secs(5);
        let syncs = drive(&[fail_at], &[fail_at], Duration::from_secs(8));
        assert_eq!(
            syncs,
            vec![
                (Duration::ZERO, SyncKind::Full),
                (fail_at, SyncKind::Partial),
                (fail_at + RETRY_DELAY, SyncKind::Full),
            ]
        );
    }

    #[test]
    fn a_retry_that_fails_again_keeps_retrying_until_one_succeeds() {
        let failures = [
            Duration::ZERO,
            Duration::from_secs(1),
            Duration::from_secs(2),
        ];
        let syncs = drive(&[], &failures, Duration::from_secs(10));
        assert_eq!(
            syncs,
            vec![
                (Duration::ZERO, SyncKind::Full),
                (Duration::from_secs(1), SyncKind::Full),
                (Duration::from_secs(2), SyncKind::Full),
                (Duration::from_secs(3), SyncKind::Full),
            ]
        );
    }

    #[test]
    fn a_change_while_a_full_sync_is_owed_gets_the_full_sync() {
        let syncs = drive(
            &[Duration::from_millis(200)],
            &[Duration::ZERO],
            Duration::from_secs(3),
        );
        assert_eq!(
            syncs,
            vec![
                (Duration::ZERO, SyncKind::Full),
                (Duration::from_secs(1), SyncKind::Full)
            ]
        );
    }
}
