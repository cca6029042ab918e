//! New connections while the dataplane changes: a recorder thread opens short connections
//! (`swy-probe request`, one socket each) to a few destinations, batch after batch, until it
//! is stopped, and keeps each batch's results with when it ran. A test then sorts the batches
//! into the phases of what it did (a kill, a restart, a mode switch, a removal applied) and
//! reports every failure with its phase.
//!
//! Load is bounded: a recorder stops on its own after [`LoadSpec::max`], and every attempt
//! has its own timeout.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::probe_protocol::{Proto, Reply, RequestError};
use crate::process::Place;
use crate::switchyard::wait_for;
use crate::topology::Testbed;

/// Where a recorder connects to, and from.
#[derive(Debug, Clone)]
pub struct Destination {
    /// For messages, e.g. "ClusterIP from node1-pod2".
    pub label: String,
    /// Where the client runs.
    pub from: Place,
    /// TCP or UDP.
    pub proto: Proto,
    /// The address connected to.
    pub to: SocketAddr,
}

impl Destination {
    /// A destination named `label`.
    pub fn new(
        label: impl Into<String>,
        from: impl Into<Place>,
        proto: Proto,
        to: SocketAddr,
    ) -> Self {
        Destination {
            label: label.into(),
            from: from.into(),
            proto,
            to,
        }
    }
}

/// How a recorder runs.
#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    /// New connections per destination in one batch.
    pub per_batch: usize,
    /// Timeout of one attempt: generous, a loaded machine is no failure.
    pub attempt: Duration,
    /// The recorder stops on its own after this long, whatever the test does.
    pub max: Duration,
}

impl Default for LoadSpec {
    fn default() -> Self {
        LoadSpec {
            per_batch: 3,
            attempt: Duration::from_secs(3),
            max: Duration::from_secs(300),
        }
    }
}

/// One recorder round: a few new connections to each destination, and when they ran.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Before the first attempt started.
    pub started: Instant,
    /// After the last attempt ended.
    pub ended: Instant,
    /// Each attempt: the index of its destination, and what it got.
    pub results: Vec<(usize, std::result::Result<Reply, RequestError>)>,
}

impl Batch {
    /// The attempts that failed, as (destination index, error).
    pub fn failures(&self) -> impl Iterator<Item = (usize, &RequestError)> + '_ {
        self.results
            .iter()
            .filter_map(|(i, r)| r.as_ref().err().map(|e| (*i, e)))
    }

    /// The backends that answered attempts to destination `index`.
    pub fn backends_of(&self, index: usize) -> impl Iterator<Item = &str> + '_ {
        self.results
            .iter()
            .filter(move |(i, _)| *i == index)
            .filter_map(|(_, r)| r.as_ref().ok().map(|r| r.backend.as_str()))
    }
}

/// When a controller restart happened, as a restart test saw it.
#[derive(Debug, Clone, Copy)]
pub struct RestartTimes {
    /// The old process was killed.
    pub killed: Instant,
    /// It had exited: no controller ran from here.
    pub down_since: Instant,
    /// The new process was started.
    pub restarted: Instant,
    /// The new process's first sync had completed.
    pub synced: Instant,
}

impl RestartTimes {
    /// Which phase of the restart `batch` ran in, for failure reports.
    pub fn phase_of(&self, batch: &Batch) -> String {
        if batch.ended < self.killed {
            "before the kill"
        } else if batch.started >= self.down_since && batch.ended <= self.restarted {
            "while no controller ran"
        } else if batch.started >= self.synced {
            "after the new process synced"
        } else if batch.ended <= self.restarted {
            "overlapping the kill"
        } else {
            "overlapping the new process's start-up"
        }
        .to_owned()
    }
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    batches: Mutex<Vec<Batch>>,
}

impl Shared {
    fn batches(&self) -> std::sync::MutexGuard<'_, Vec<Batch>> {
        self.batches.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running recorder (a scoped thread); [`Recorder::stop`] ends it and hands over the
/// batches.
pub struct Recorder<'scope> {
    shared: Arc<Shared>,
    destinations: Vec<Destination>,
    thread: ScopedJoinHandle<'scope, ()>,
}

impl<'scope> Recorder<'scope> {
    /// Starts recording in `scope`: batch after batch, each with `spec.per_batch` new
    /// connections to every destination in turn.
    pub fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        testbed: &'env Testbed,
        destinations: Vec<Destination>,
        spec: LoadSpec,
    ) -> Self {
        let shared = Arc::new(Shared::default());
        let thread = {
            let shared = shared.clone();
            let destinations = destinations.clone();
            scope.spawn(move || {
                let began = Instant::now();
                while !shared.stop.load(Ordering::Relaxed) && began.elapsed() < spec.max {
                    let started = Instant::now();
                    let mut results = Vec::with_capacity(spec.per_batch * destinations.len());
                    for (i, d) in destinations.iter().enumerate() {
                        for r in
                            testbed.request(d.from, d.proto, d.to, spec.per_batch, spec.attempt)
                        {
                            results.push((i, r));
                        }
                    }
                    shared.batches().push(Batch {
                        started,
                        ended: Instant::now(),
                        results,
                    });
                }
            })
        };
        Recorder {
            shared,
            destinations,
            thread,
        }
    }

    /// Whether the recorder still runs (it stops on its own after [`LoadSpec::max`]).
    pub fn alive(&self) -> bool {
        !self.thread.is_finished()
    }

    /// Batches completed so far.
    pub fn batches_done(&self) -> usize {
        self.shared.batches().len()
    }

    /// Completed batches that started at or after `t`.
    pub fn batches_started_after(&self, t: Instant) -> usize {
        self.shared
            .batches()
            .iter()
            .filter(|b| b.started >= t)
            .count()
    }

    /// Waits until `n` batches that started at or after `t` are complete; fails on
    /// `timeout` or when the recorder stopped first.
    pub fn wait_batches_after(
        &self,
        what: &str,
        t: Instant,
        n: usize,
        timeout: Duration,
    ) -> Result<()> {
        wait_for(what, timeout, || {
            let done = self.batches_started_after(t);
            if done >= n {
                Ok(Ok(()))
            } else if !self.alive() {
                Ok(Err(Error::Timeout {
                    what: format!("{what}: the recorder stopped with {done} of {n} batches"),
                    after_ms: 0,
                }))
            } else {
                Err(done)
            }
        })?
    }

    /// Stops the recorder, waits for its last batch and returns every batch with the
    /// destinations their indices refer to.
    pub fn stop(self) -> Recorded {
        self.shared.stop.store(true, Ordering::Relaxed);
        // A panic in the thread (none is expected) loses only what it did not record.
        let _ = self.thread.join();
        let batches = std::mem::take(&mut *self.shared.batches());
        Recorded {
            destinations: self.destinations,
            batches,
        }
    }
}

/// What a stopped recorder saw.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The destinations, by index.
    pub destinations: Vec<Destination>,
    /// Every batch, in order.
    pub batches: Vec<Batch>,
}

impl Recorded {
    /// Attempts in all.
    pub fn attempts(&self) -> usize {
        self.batches.iter().map(|b| b.results.len()).sum()
    }

    /// Every failed attempt, one line each: its destination, the phase `phase` puts its batch
    /// in, the batch's times relative to `origin`, and the error.
    pub fn failures(&self, origin: Instant, phase: impl Fn(&Batch) -> String) -> Vec<String> {
        self.batches
            .iter()
            .flat_map(|b| {
                let when = format!(
                    "batch {}..{}",
                    relative(b.started, origin),
                    relative(b.ended, origin)
                );
                let phase = phase(b);
                b.failures()
                    .map(|(i, e)| format!("{}, {phase} ({when}): {e}", self.destinations[i].label))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Where `backend` answered in the batches `select` picks: one destination label per
    /// attempt it answered, with the batch's start relative to the first batch.
    pub fn reached(&self, backend: &str, select: impl Fn(&Batch) -> bool) -> Vec<String> {
        let origin = self.batches.first().map(|b| b.started);
        let mut found = Vec::new();
        for b in self.batches.iter().filter(|b| select(b)) {
            for (i, r) in &b.results {
                if r.as_ref().is_ok_and(|r| r.backend == backend) {
                    let at = origin.map(|o| relative(b.started, o)).unwrap_or_default();
                    found.push(format!("{} (batch {at})", self.destinations[*i].label));
                }
            }
        }
        found
    }

    /// The batches `select` picks.
    pub fn count(&self, select: impl Fn(&Batch) -> bool) -> usize {
        self.batches.iter().filter(|b| select(b)).count()
    }
}

/// `t` relative to `origin`, signed, for messages: `+1.234s`, `-0.020s`.
pub fn relative(t: Instant, origin: Instant) -> String {
    match t.checked_duration_since(origin) {
        Some(d) => format!("+{:.3}s", d.as_secs_f64()),
        None => format!("-{:.3}s", (origin - t).as_secs_f64()),
    }
}
