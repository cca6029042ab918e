//! Named network namespaces (`/var/run/netns/NAME`) and running code inside them.
//!
//! Namespaces are created with `ip netns add` (so the bind mounts look exactly like the
//! ones iproute2 and `nsenter --net=` users expect) but removed directly with
//! `umount2` + `unlink`, which is what `ip netns del` does, because removal runs in
//! `Drop` and must not depend on spawning processes.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};
use nix::sched::{setns, CloneFlags};

use crate::error::{Error, Result};

/// Directory where iproute2 keeps named network namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Path of the bind mount that names network namespace `name`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Ownership of one named network namespace: removes it on drop.
///
/// The owner is created *before* the namespace itself so that a half-built testbed
/// still cleans up whatever did get created.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
}

impl NetNs {
    /// Takes ownership of the (possibly not yet created) namespace `name`.
    pub(crate) fn owned(name: String) -> Self {
        let path = netns_path(&name);
        NetNs { name, path }
    }

    /// The namespace name as understood by `ip -n` / `ip netns`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mount path, usable with `nsenter --net=PATH` or `setns`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = delete_netns(&self.path) {
            eprintln!("switchyard-testbed: removing netns {}: {e}", self.name);
        }
    }
}

/// Removes a named namespace; a missing one is not an error.
pub(crate) fn delete_netns(path: &Path) -> Result<()> {
    // MNT_DETACH like iproute2: the namespace itself lives on while any process is
    // still inside it, but the name disappears at once.
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(source) => {
            return Err(Error::Sys {
                action: format!("unmounting {}", path.display()),
                source,
            })
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            action: "removing",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Opens a namespace file so it can be passed to `setns` (e.g. in a forked child).
pub(crate) fn open_netns(path: &Path) -> Result<File> {
    File::open(path).map_err(|source| Error::Io {
        action: "opening netns",
        path: path.to_owned(),
        source,
    })
}

/// Runs `f` on a fresh thread that has joined the namespace at `path`.
///
/// Joining on a throwaway thread keeps the calling thread (and the rest of the test
/// process) in its original namespace; `/proc/sys/net` follows the calling thread's
/// namespace, so this is how per-namespace sysctls are written without `ip netns exec`.
pub fn run_in_netns<T, F>(path: &Path, f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send,
    T: Send,
{
    let ns = open_netns(path)?;
    std::thread::scope(|scope| {
        let handle = scope.spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|source| Error::Sys {
                action: format!("setns into {}", path.display()),
                source,
            })?;
            f()
        });
        handle.join().unwrap_or_else(|_| {
            Err(Error::Protocol(format!(
                "thread running inside {} panicked",
                path.display()
            )))
        })
    })
}

/// Writes `value` to `/proc/sys/<key>` (key with slashes, e.g. `net/ipv4/ip_forward`)
/// inside the namespace at `path`.
pub fn write_sysctl(path: &Path, key: &str, value: &str) -> Result<()> {
    let file = Path::new("/proc/sys").join(key);
    run_in_netns(path, || write_file(&file, value))
}

/// Writes several sysctls in one namespace switch; keys that do not exist (for example
/// IPv6 ones on a kernel without IPv6) are skipped when `optional` is set.
pub(crate) fn write_sysctls(path: &Path, settings: &[(&str, &str, bool)]) -> Result<()> {
    run_in_netns(path, || {
        for (key, value, optional) in settings {
            let file = Path::new("/proc/sys").join(key);
            match write_file(&file, value) {
                Err(Error::Io { source, .. })
                    if *optional && source.kind() == io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
        Ok(())
    })
}

fn write_file(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|source| Error::Io {
        action: "writing",
        path: path.to_owned(),
        source,
    })
}
