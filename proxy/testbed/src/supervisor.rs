//! Restarting a process when it exits, as the kubelet restarts a DaemonSet's container: a
//! scoped thread starts it, waits for it to end, records how, and starts it again with the
//! same command line, until told to stop or [`Supervisor::start`]'s bound of starts is
//! reached (a crash loop then stays down instead of spinning).
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::process::{ChildGuard, Place};
use crate::switchyard::wait_for;
use crate::topology::Testbed;

/// How often the supervisor looks whether the process ended.
const POLL: Duration = Duration::from_millis(10);

/// A run that ended.
#[derive(Debug, Clone)]
pub struct Exit {
    /// Which start it was, from 1.
    pub run: usize,
    /// How it ended.
    pub status: ExitStatus,
    /// When the supervisor noticed.
    pub at: Instant,
    /// Everything it logged on stderr.
    pub log: String,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// The running process and its run number.
    current: Mutex<Option<(usize, ChildGuard)>>,
    exits: Mutex<Vec<Exit>>,
    /// Why the supervisor gave up starting, if it did.
    failed: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A supervised process; [`Supervisor::stop`] ends it (SIGTERM) and the supervision.
pub struct Supervisor<'scope> {
    shared: Arc<Shared>,
    thread: ScopedJoinHandle<'scope, ()>,
}

impl<'scope> Supervisor<'scope> {
    /// Starts `program args` in `place` now, and again each time it exits, at most
    /// `max_starts` times in all.
    pub fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        testbed: &'env Testbed,
        place: Place,
        program: PathBuf,
        args: Vec<OsString>,
        max_starts: usize,
    ) -> Result<Self> {
        let shared = Arc::new(Shared::default());
        let first = testbed.spawn(place, &program, &args)?;
        *lock(&shared.current) = Some((1, first));
        let thread = {
            let shared = shared.clone();
            scope.spawn(move || {
                let mut started = 1;
                while !shared.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(POLL);
                    let mut current = lock(&shared.current);
                    let Some((run, child)) = current.as_mut() else {
                        return;
                    };
                    let status = match child.try_wait() {
                        Ok(Some(status)) => status,
                        Ok(None) => continue,
                        Err(e) => {
                            *lock(&shared.failed) = Some(format!("waiting for run {run}: {e}"));
                            return;
                        }
                    };
                    let exit = Exit {
                        run: *run,
                        status,
                        at: Instant::now(),
                        log: child.stderr(),
                    };
                    lock(&shared.exits).push(exit);
                    *current = None;
                    if shared.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if started >= max_starts {
                        *lock(&shared.failed) =
                            Some(format!("not restarted: {max_starts} starts already"));
                        return;
                    }
                    started += 1;
                    match testbed.spawn(place, &program, &args) {
                        Ok(child) => *current = Some((started, child)),
                        Err(e) => {
                            *lock(&shared.failed) = Some(format!("starting run {started}: {e}"));
                            return;
                        }
                    }
                }
            })
        };
        Ok(Supervisor { shared, thread })
    }

    /// The number of the run in progress (from 1), if one is.
    pub fn current_run(&self) -> Option<usize> {
        lock(&self.shared.current).as_ref().map(|(run, _)| *run)
    }

    /// What run `run` logged so far (all of it, once it ended); `None` before it started.
    pub fn log(&self, run: usize) -> Option<String> {
        if let Some((current, child)) = lock(&self.shared.current).as_ref() {
            if *current == run {
                return Some(child.stderr());
            }
        }
        lock(&self.shared.exits)
            .iter()
            .find(|e| e.run == run)
            .map(|e| e.log.clone())
    }

    /// Every log so far, run by run, for failure messages.
    pub fn logs(&self) -> String {
        let last = self
            .current_run()
            .or_else(|| lock(&self.shared.exits).last().map(|e| e.run))
            .unwrap_or(0);
        (1..=last)
            .map(|run| format!("--- run {run} ---\n{}", self.log(run).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The runs that ended so far.
    pub fn exits(&self) -> Vec<Exit> {
        lock(&self.shared.exits).clone()
    }

    /// Waits until run `run` has logged every one of `needles` (each a set of parts that
    /// must appear together on some line). Fails on `timeout`, or once that run has ended
    /// without them, or the supervisor gave up.
    pub fn wait_for_log(
        &self,
        run: usize,
        what: &str,
        timeout: Duration,
        needles: &[&[&str]],
    ) -> Result<()> {
        wait_for(what, timeout, || {
            let log = self.log(run).unwrap_or_default();
            if needles
                .iter()
                .all(|parts| log.lines().any(|l| parts.iter().all(|p| l.contains(p))))
            {
                return Ok(Ok(()));
            }
            let ended = lock(&self.shared.exits)
                .iter()
                .find(|e| e.run == run)
                .cloned();
            if let Some(exit) = ended {
                return Ok(Err(Error::ChildExited {
                    what: format!("{what} (run {run})"),
                    status: exit.status.to_string(),
                    stderr: exit.log,
                }));
            }
            if let Some(why) = lock(&self.shared.failed).clone() {
                return Ok(Err(Error::Protocol(format!("{what}: supervisor: {why}"))));
            }
            Err(format!("run {run}: {:?}", log.lines().last()))
        })?
    }

    /// Stops supervising, ends the running process with SIGTERM (SIGKILL after `grace`),
    /// and returns every run's end, that one's included.
    pub fn stop(self, grace: Duration) -> Vec<Exit> {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        if let Some((run, mut child)) = lock(&self.shared.current).take() {
            let _ = child.terminate();
            let status = match child.wait_timeout(grace) {
                Ok(Some(status)) => Some(status),
                _ => {
                    let _ = child.kill();
                    child.wait().ok()
                }
            };
            if let Some(status) = status {
                lock(&self.shared.exits).push(Exit {
                    run,
                    status,
                    at: Instant::now(),
                    log: child.stderr(),
                });
            }
        }
        lock(&self.shared.exits).clone()
    }
}
