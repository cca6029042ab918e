//! Running iproute2 in batch mode.
//!
//! All link, address and route setup goes through `ip -n NS -batch -`, so every
//! change happens inside a test namespace and never in the root namespace.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// Runs `ip [-n netns] -batch -` with `script` (one command per line) on stdin.
///
/// `netns == None` is only used for `netns add`, which creates namespaces and does not
/// touch the root namespace's network configuration.
pub(crate) fn batch(netns: Option<&str>, script: &str) -> Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let describe = || match netns {
        Some(ns) => format!("ip -n {ns} -batch - <<EOF\n{script}EOF"),
        None => format!("ip -batch - <<EOF\n{script}EOF"),
    };
    let mut child = cmd.spawn().map_err(|e| Error::Command {
        command: describe(),
        detail: format!("cannot start ip: {e}"),
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        // Dropping stdin afterwards sends EOF, which ends the batch.
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| Error::Command {
                command: describe(),
                detail: format!("writing batch to ip: {e}"),
            })?;
    }
    let output = child.wait_with_output().map_err(|e| Error::Command {
        command: describe(),
        detail: format!("waiting for ip: {e}"),
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            command: describe(),
            detail: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        })
    }
}
