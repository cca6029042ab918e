//! Removing what crashed test processes left behind.
//!
//! `Drop` covers normal exits and panics, but not SIGKILL or a Ctrl-C of the test
//! runner. Everything a testbed creates carries its creator's pid
//! (`swy<pid>x<n>`), so leftovers of dead processes can be found and removed safely
//! without touching testbeds of processes that are still running.

use std::path::Path;

use crate::cgroup::{cgroup2_mount, remove_tree, CGROUP_PREFIX};
use crate::error::Result;
use crate::netns::{delete_netns, NETNS_DIR};
use crate::topology::ID_PREFIX;

/// Extracts the creator pid from a testbed id or namespace name (`swy123x4-n1` -> 123).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(ID_PREFIX)?;
    let (pid, after) = rest.split_once('x')?;
    // The counter must follow, so unrelated names starting with "swy" don't match.
    after.chars().next()?.is_ascii_digit().then_some(())?;
    pid.parse().ok()
}

fn is_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes namespaces and cgroups of testbeds whose creating process no longer exists.
/// Returns how many namespaces and cgroup trees were removed.
pub fn cleanup_leftovers() -> Result<usize> {
    let mut removed = 0;
    if let Ok(entries) = std::fs::read_dir(NETNS_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if owner_pid(&name).is_some_and(|pid| !is_alive(pid)) {
                delete_netns(&entry.path())?;
                removed += 1;
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(crate::topology::BPFFS_ROOT) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((id, _node)) = name.split_once('-') else {
                continue;
            };
            if owner_pid(id).is_some_and(|pid| !is_alive(pid)) {
                crate::topology::remove_pins(id);
                removed += 1;
            }
        }
    }
    let mount = cgroup2_mount()?;
    if let Ok(entries) = std::fs::read_dir(&mount) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_prefix(CGROUP_PREFIX) else {
                continue;
            };
            if owner_pid(id).is_some_and(|pid| !is_alive(pid)) {
                remove_tree(&entry.path())?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn parses_owner_pids() {
        assert_eq!(owner_pid("swy123x4-n1p2"), Some(123));
        assert_eq!(owner_pid("swy123x0"), Some(123));
        assert_eq!(owner_pid("swyfoo"), None);
        assert_eq!(owner_pid("swy123x-n1"), None);
        assert_eq!(owner_pid("other"), None);
    }
}
