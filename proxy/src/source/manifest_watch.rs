//! Watching the `--manifests` directory: which file events call for a scan, and when.
//!
//! Scans run on a thread of their own, so file I/O and YAML parsing never hold an async
//! worker (and with it `/healthz`).
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::watch;

use super::manifest_dir::ManifestDir;
use super::{Snapshot, SourceError};

/// Quiet time after a file event before re-reading, so an editor's burst of writes is read once.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Upper bound of the debounce: a file rewritten every 50 ms still gets read once a second.
const MAX_DELAY: Duration = Duration::from_secs(1);
/// Safety-net rescan for what events do not show: a missed event, a chmod (metadata events are
/// ignored). Cheap: unchanged files are only stat'ed, and an unchanged result is not published.
const RESCAN: Duration = Duration::from_secs(10);

impl ManifestDir {
    /// Loads once, publishes, then re-publishes after every change under the directory until
    /// the receiver side is gone. Returns the receiver of snapshots. A scan that changes
    /// neither objects nor warnings publishes nothing.
    ///
    /// The first load happens before this returns (its errors are this call's); on a
    /// multi-threaded runtime it runs under `block_in_place`, so other tasks keep running.
    pub fn watch(mut self) -> Result<watch::Receiver<Snapshot>, SourceError> {
        // Watch before the first load, so that an edit during the load is not missed.
        let (events, watcher) = start_watcher(&self.root)?;
        let first = off_async_workers(|| self.load())?;
        let (tx, rx) = watch::channel(first);
        std::thread::Builder::new()
            .name("swy-manifests".into())
            .spawn(move || watch_loop(self, watcher, events, tx))
            .map_err(SourceError::Thread)?;
        Ok(rx)
    }
}

/// Paths of one event that may have changed contents (none for a watcher error).
type Trigger = Vec<PathBuf>;

fn start_watcher(root: &Path) -> Result<(Receiver<Trigger>, RecommendedWatcher), SourceError> {
    let watch_error = |source| SourceError::Watch {
        path: root.to_owned(),
        source,
    };
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let paths = match event {
            Ok(event) if can_change_contents(&event.kind) => event.paths,
            Ok(_) => return,
            // Events may have been lost: look again.
            Err(e) => {
                tracing::debug!(error = %e, "manifest directory watcher");
                e.paths
            }
        };
        let _ = tx.send(paths);
    })
    .map_err(watch_error)?;
    watcher
        .watch(root, RecursiveMode::Recursive)
        .map_err(watch_error)?;
    Ok((rx, watcher))
}

/// Whether an event can mean new contents. Opening, reading and closing a file unwritten are
/// not (they are what every scan does itself: acting on them made the source re-read the
/// tree forever). Metadata changes (touch, chmod) are left to the periodic rescan.
fn can_change_contents(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        // Includes notify's "rescan" for an overflowed inotify queue.
        EventKind::Any | EventKind::Other => true,
    }
}

fn watch_loop(
    mut dir: ManifestDir,
    watcher: RecommendedWatcher,
    events: Receiver<Trigger>,
    tx: watch::Sender<Snapshot>,
) {
    let _watcher = watcher; // dropping it stops the events
    let mut last_error = None;
    let mut watching = true;
    loop {
        if watching {
            match events.recv_timeout(RESCAN) {
                Ok(_) => settle(&events, Instant::now()),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // The watcher's thread is gone: the periodic rescan still sees edits.
                    tracing::warn!(
                        "manifest directory watcher stopped; rescanning every {RESCAN:?}"
                    );
                    watching = false;
                }
            }
        } else {
            std::thread::sleep(RESCAN);
        }
        if tx.is_closed() {
            return;
        }
        match dir.refresh() {
            Ok(published) => {
                if last_error.take().is_some() {
                    tracing::info!("manifest directory readable again");
                }
                if let Some(snapshot) = published {
                    if tx.send(snapshot).is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                // Logged when it starts or changes, not at every rescan.
                let message = e.to_string();
                if last_error.as_ref() != Some(&message) {
                    tracing::warn!(error = %message, "manifest directory unreadable; keeping the last objects");
                    last_error = Some(message);
                }
            }
        }
    }
}

/// A burst of events: it is over after [`DEBOUNCE`] without one, or [`MAX_DELAY`] after its
/// first, whichever comes first, so that a steady stream of writes cannot hold updates back.
#[derive(Clone, Copy, Debug)]
struct Burst {
    first: Instant,
    last: Instant,
}

impl Burst {
    fn new(at: Instant) -> Self {
        Self {
            first: at,
            last: at,
        }
    }

    fn event(&mut self, at: Instant) {
        self.last = at;
    }

    fn deadline(&self) -> Instant {
        (self.last + DEBOUNCE).min(self.first + MAX_DELAY)
    }
}

/// Waits until the burst that started at `first` is over.
fn settle(events: &Receiver<Trigger>, first: Instant) {
    let mut burst = Burst::new(first);
    loop {
        let wait = burst.deadline().saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return;
        }
        match events.recv_timeout(wait) {
            Ok(_) => burst.event(Instant::now()),
            Err(_) => return,
        }
    }
}

/// Runs blocking `f` so that it holds no async worker the runtime needs: on a multi-threaded
/// runtime through `block_in_place`. Outside a runtime nothing is held; a current-thread
/// runtime (tests) has no way around blocking, and `block_in_place` would panic there.
fn off_async_workers<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::source::manifest_dir::tests::{tempdir, SVC};
    use crate::source::manifest_parse::MAX_FILE_SIZE;

    /// Waits (at most 10 s) until a published snapshot satisfies `done`.
    async fn wait_for(rx: &mut watch::Receiver<Snapshot>, done: impl Fn(&Snapshot) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done(&rx.borrow_and_update()) {
            tokio::time::timeout_at(deadline, rx.changed())
                .await
                .expect("a matching snapshot within 10 s")
                .expect("the source is running");
        }
    }

    #[tokio::test]
    async fn edits_are_published() {
        let dir = tempdir("watch");
        let mut rx = ManifestDir::new(&dir).watch().unwrap();
        assert_eq!(rx.borrow().objects.services.len(), 0);
        std::fs::write(dir.join("web.yaml"), SVC).unwrap();
        wait_for(&mut rx, |s| s.objects.services.len() == 1).await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_events_that_can_change_contents_call_for_a_scan() {
        let dir = tempdir("events");
        std::fs::write(dir.join("web.yaml"), SVC).unwrap();
        let (events, _watcher) = start_watcher(&dir).unwrap();
        // What a scan does (walk, stat, open, read, close), and other readers too.
        ManifestDir::new(&dir).load().unwrap();
        for _ in 0..10 {
            std::fs::read(dir.join("web.yaml")).unwrap();
            assert!(std::fs::read_dir(&dir).unwrap().count() > 0);
        }
        // inotify keeps order, so the first event let through must be this write's.
        std::fs::write(dir.join("sentinel.yaml"), SVC).unwrap();
        let first = events
            .recv_timeout(Duration::from_secs(30))
            .expect("an event for the write");
        assert!(
            first.iter().all(|p| p.ends_with("sentinel.yaml")) && !first.is_empty(),
            "first event let through: {first:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_watcher_reads_only_changed_files() {
        let dir = tempdir("idle");
        std::fs::write(dir.join("a.yaml"), SVC.replace("web", "a")).unwrap();
        std::fs::write(dir.join("b.yaml"), SVC.replace("web", "b")).unwrap();
        let source = ManifestDir::new(&dir).with_limits(MAX_FILE_SIZE, Duration::ZERO);
        let reads = source.read_counter();
        let mut rx = source.watch().unwrap();
        assert_eq!(reads.load(Ordering::Relaxed), 2);
        for _ in 0..20 {
            std::fs::read(dir.join("a.yaml")).unwrap();
            std::fs::read(dir.join("b.yaml")).unwrap();
        }
        std::fs::write(dir.join("c.yaml"), SVC.replace("web", "c")).unwrap();
        wait_for(&mut rx, |s| s.objects.services.len() == 3).await;
        assert_eq!(
            reads.load(Ordering::Relaxed),
            3,
            "only c.yaml was read again"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_burst_is_over_after_a_quiet_time_or_a_second_after_it_began() {
        let t0 = Instant::now();
        let mut burst = Burst::new(t0);
        assert_eq!(burst.deadline(), t0 + DEBOUNCE);
        burst.event(t0 + Duration::from_millis(30));
        assert_eq!(burst.deadline(), t0 + Duration::from_millis(130));
        // A write every 50 ms for two seconds.
        for i in 1..=40 {
            burst.event(t0 + Duration::from_millis(50 * i));
        }
        assert_eq!(burst.deadline(), t0 + MAX_DELAY);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_rewritten_every_50ms_is_still_published() {
        let dir = tempdir("busy");
        let mut rx = ManifestDir::new(&dir).watch().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (stop, path) = (stop.clone(), dir.join("busy.yaml"));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::fs::write(&path, SVC).unwrap();
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        wait_for(&mut rx, |s| s.objects.services.len() == 1).await;
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
