//! Per-testbed cgroup v2 directories.
//!
//! Layout: `<cgroup2 mount>/switchyard-testbed-<unique>/<node-name>` for each node plus
//! `.../client` for the external client. The proxy attaches its cgroup socket programs
//! to a node's directory; every process the testbed starts lands in one of these
//! directories, which also lets teardown kill everything with one `cgroup.kill`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{Error, Result};

/// Prefix of every testbed's top-level cgroup directory name.
pub const CGROUP_PREFIX: &str = "switchyard-testbed-";

/// How long teardown waits for killed processes to leave their cgroups.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Finds the cgroup v2 mount to use.
///
/// `SWY_CGROUP2_MOUNT` wins; otherwise the hybrid-layout `/sys/fs/cgroup/unified` is
/// preferred, falling back to a pure-v2 `/sys/fs/cgroup`.
pub fn cgroup2_mount() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SWY_CGROUP2_MOUNT") {
        return Ok(PathBuf::from(p));
    }
    for candidate in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        let p = Path::new(candidate);
        // cgroup.subtree_control only exists on cgroup v2 hierarchies.
        if p.join("cgroup.subtree_control").exists() {
            return Ok(p.to_owned());
        }
    }
    Err(Error::Io {
        action: "finding a cgroup v2 mount under",
        path: PathBuf::from("/sys/fs/cgroup"),
        source: io::Error::new(io::ErrorKind::NotFound, "no cgroup2 hierarchy mounted"),
    })
}

/// Ownership of one testbed's cgroup subtree: kills its processes and removes it on drop.
#[derive(Debug)]
pub(crate) struct CgroupTree {
    root: PathBuf,
}

impl CgroupTree {
    /// Creates the top-level directory; it must not exist yet (names are unique).
    pub(crate) fn create(root: PathBuf) -> Result<Self> {
        std::fs::create_dir(&root).map_err(|source| Error::Io {
            action: "creating cgroup",
            path: root.clone(),
            source,
        })?;
        Ok(CgroupTree { root })
    }

    /// The top-level directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Creates a leaf directory `name` below the root and returns its path.
    pub(crate) fn add_leaf(&self, name: &str) -> Result<PathBuf> {
        let path = self.root.join(name);
        std::fs::create_dir(&path).map_err(|source| Error::Io {
            action: "creating cgroup",
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.root) {
            eprintln!("switchyard-testbed: {e}");
        }
    }
}

/// Kills every process in the cgroup subtree at `root`, waits until it is empty and
/// removes all its directories (leaves first). A missing `root` is not an error.
pub(crate) fn remove_tree(root: &Path) -> Result<()> {
    if !root.exists() {
        return Ok(());
    }
    let deadline = Instant::now() + TEARDOWN_TIMEOUT;
    loop {
        kill_all(root);
        if !populated(root)? {
            break;
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("processes in {} to exit", root.display()),
                after_ms: TEARDOWN_TIMEOUT.as_millis(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // rmdir can briefly fail with EBUSY right after the last task left, so retry.
    loop {
        match rmdir_recursive(root) {
            Ok(()) => return Ok(()),
            Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sends SIGKILL to every process below `root`: via `cgroup.kill` (Linux >= 5.14),
/// which also catches processes forked concurrently, else pid by pid.
fn kill_all(root: &Path) {
    if std::fs::write(root.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    for pid in procs_recursive(root) {
        // ESRCH just means it already exited.
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

fn procs_recursive(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for sub in subdirs(dir) {
        pids.extend(procs_recursive(&sub));
    }
    pids
}

/// Whether any live process remains in the subtree (`populated` in `cgroup.events`).
fn populated(root: &Path) -> Result<bool> {
    let events_path = root.join("cgroup.events");
    match std::fs::read_to_string(&events_path) {
        Ok(events) => Ok(events.lines().any(|l| l.trim() == "populated 1")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(Error::Io {
            action: "reading",
            path: events_path,
            source,
        }),
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

fn rmdir_recursive(dir: &Path) -> Result<()> {
    for sub in subdirs(dir) {
        rmdir_recursive(&sub)?;
    }
    // cgroupfs directories are removed with rmdir even though they contain the
    // interface files; remove_dir is exactly rmdir(2).
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            action: "removing cgroup",
            path: dir.to_owned(),
            source,
        }),
    }
}
