//! Watching the `--config` file: when its content changes, the process exits so that the
//! DaemonSet restarts it with the new configuration, as kube-proxy does (`options.go`
//! `initWatcher` / `eventHandler`; kube-proxy then exits with status 1).
//!
//! The watch is on the file's directory, not on the file: a ConfigMap volume updates by
//! swapping its `..data` symlink and an editor by renaming a new file over the old one, and a
//! watch on the old file's inode sees neither as a write (upstream 1.35 misses ConfigMap
//! updates for that reason, kubernetes/kubernetes#132877). An event on the file's name or on
//! `..data` makes the file be read again; only a content that differs from the one
//! Switchyard started with, or a file that is gone, ends the process. Other files in the
//! directory, and a `touch` of the file itself, change nothing.
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use tokio::sync::oneshot;

/// Quiet time after an event before the file is read, so a rename-then-write is read once.
const SETTLE: Duration = Duration::from_millis(100);
/// The entry a ConfigMap or Secret volume swaps on every update.
const VOLUME_DATA: &str = "..data";

/// Why the config file no longer is what the process runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChange {
    /// Its content changed.
    Changed(PathBuf),
    /// It can no longer be read (removed, or a read error).
    Unreadable(PathBuf, String),
}

impl std::fmt::Display for ConfigChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigChange::Changed(path) => {
                write!(
                    f,
                    "content of the config file {} was updated",
                    path.display()
                )
            }
            ConfigChange::Unreadable(path, error) => {
                write!(
                    f,
                    "the config file {} can no longer be read: {error}",
                    path.display()
                )
            }
        }
    }
}

/// The config watcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// notify refused the watch.
    #[error("watching the directory {dir} of the config file")]
    Watch {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: notify::Error,
    },
    /// The watcher thread could not start.
    #[error("starting the config file watcher thread")]
    Thread(#[source] std::io::Error),
}

/// Starts watching `path`, whose content at start-up was `loaded`. The receiver resolves once,
/// on the first change; it never resolves while the file stays as it was.
pub fn watch_config(
    path: &Path,
    loaded: String,
) -> Result<oneshot::Receiver<ConfigChange>, WatchError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(OsString::from).unwrap_or_default();
    let (events_tx, events) = mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match event {
            Ok(event) => {
                may_change_content(&event.kind)
                    && event.paths.iter().any(|p| {
                        p.file_name()
                            .is_some_and(|n| *n == *name || n == VOLUME_DATA)
                    })
            }
            // Events may have been lost: look again.
            Err(_) => true,
        };
        if relevant {
            let _ = events_tx.send(());
        }
    })
    .map_err(|source| WatchError::Watch {
        dir: dir.clone(),
        source,
    })?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|source| WatchError::Watch {
            dir: dir.clone(),
            source,
        })?;
    let (tx, rx) = oneshot::channel();
    let path = path.to_owned();
    std::thread::Builder::new()
        .name("swy-config-watch".into())
        .spawn(move || {
            let _watcher = watcher; // dropping it stops the events
                                    // An edit between start-up's read and the watch is caught here.
            let mut change = compare(&path, &loaded);
            while change.is_none() {
                if events.recv().is_err() {
                    return;
                }
                settle(&events);
                change = compare(&path, &loaded);
                if change.is_none() {
                    tracing::debug!(path = %path.display(), "config file event, content unchanged");
                }
            }
            if let Some(change) = change {
                let _ = tx.send(change);
            }
        })
        .map_err(WatchError::Thread)?;
    Ok(rx)
}

/// Whether an event may mean other content. Metadata changes (`touch`, `chmod`) and reads are
/// not; a ConfigMap update shows as a create and a rename of `..data`.
fn may_change_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Any | EventKind::Other => true,
    }
}

/// Waits until no event has come for [`SETTLE`] (at most a second).
fn settle(events: &mpsc::Receiver<()>) {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        match events.recv_timeout(SETTLE.min(deadline - now)) {
            Ok(()) => {}
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn compare(path: &Path, loaded: &str) -> Option<ConfigChange> {
    match std::fs::read_to_string(path) {
        Ok(text) if text == loaded => None,
        Ok(_) => Some(ConfigChange::Changed(path.to_owned())),
        Err(e) => Some(ConfigChange::Unreadable(path.to_owned(), e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("swy-config-watch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("tempdir");
        dir
    }

    fn wait(rx: &mut oneshot::Receiver<ConfigChange>, within: Duration) -> Option<ConfigChange> {
        let deadline = Instant::now() + within;
        loop {
            match rx.try_recv() {
                Ok(change) => return Some(change),
                Err(oneshot::error::TryRecvError::Closed) => return None,
                Err(oneshot::error::TryRecvError::Empty) if Instant::now() >= deadline => {
                    return None
                }
                Err(oneshot::error::TryRecvError::Empty) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
            }
        }
    }

    #[test]
    fn an_edit_is_reported_and_neighbours_and_touches_are_not() {
        let dir = dir("edit");
        let path = dir.join("config.conf");
        std::fs::write(&path, "mode: iptables\n").unwrap();
        let mut rx = watch_config(&path, "mode: iptables\n".into()).unwrap();
        std::fs::write(dir.join("other.conf"), "x").unwrap();
        // Rewritten unchanged, replaced whole as kubelet and editors do: an in-place
        // rewrite (truncate, then write) can be read between the two on a loaded machine,
        // and an empty file is a change.
        let tmp = dir.join(".config.conf.tmp");
        std::fs::write(&tmp, "mode: iptables\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        file.set_modified(std::time::SystemTime::now()).unwrap(); // touch
        assert_eq!(wait(&mut rx, Duration::from_millis(600)), None);
        std::fs::write(&path, "mode: ebpf\n").unwrap();
        assert_eq!(
            wait(&mut rx, Duration::from_secs(5)),
            Some(ConfigChange::Changed(path.clone()))
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_configmap_symlink_swap_is_reported() {
        // The layout kubelet's atomic writer keeps: config.conf -> ..data/config.conf,
        // ..data -> ..<timestamp>.
        let dir = dir("volume");
        let old = dir.join("..2025_01_01_00_00_00.1");
        std::fs::create_dir(&old).unwrap();
        std::fs::write(old.join("config.conf"), "mode: iptables\n").unwrap();
        std::os::unix::fs::symlink("..2025_01_01_00_00_00.1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/config.conf", dir.join("config.conf")).unwrap();
        let path = dir.join("config.conf");
        let mut rx = watch_config(&path, "mode: iptables\n".into()).unwrap();
        let new = dir.join("..2025_01_01_00_01_00.2");
        std::fs::create_dir(&new).unwrap();
        std::fs::write(new.join("config.conf"), "mode: ebpf\n").unwrap();
        std::os::unix::fs::symlink("..2025_01_01_00_01_00.2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        std::fs::remove_dir_all(&old).unwrap();
        assert_eq!(
            wait(&mut rx, Duration::from_secs(5)),
            Some(ConfigChange::Changed(path.clone()))
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn removal_and_a_change_before_the_watch_are_reported() {
        let dir = dir("gone");
        let path = dir.join("config.conf");
        std::fs::write(&path, "mode: ebpf\n").unwrap();
        // Started with other content than the file holds now: reported at once.
        let mut rx = watch_config(&path, "mode: iptables\n".into()).unwrap();
        assert!(matches!(
            wait(&mut rx, Duration::from_secs(5)),
            Some(ConfigChange::Changed(_))
        ));
        let mut rx = watch_config(&path, "mode: ebpf\n".into()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            wait(&mut rx, Duration::from_secs(5)),
            Some(ConfigChange::Unreadable(..))
        ));
        std::fs::remove_dir_all(&dir).ok();
    }
}
