//! The testbed's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while building, using or tearing down a testbed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested topology cannot be expressed in the fixed address plan.
    #[error("invalid topology: {0}")]
    InvalidSpec(String),

    /// An external command (normally `ip`) could not be run or exited non-zero.
    #[error("command `{command}` failed: {detail}")]
    Command {
        /// The command line, for the reader of a failing test.
        command: String,
        /// Exit status and stderr, or the spawn error.
        detail: String,
    },

    /// A filesystem operation on a namespace, cgroup or proc file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, e.g. "writing".
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A system call (setns, kill, ...) failed.
    #[error("{action}: {source}")]
    Sys {
        /// What was being done.
        action: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },

    /// A child process could not be started.
    #[error("spawning {program} in {place}: {source}")]
    Spawn {
        /// The program that was started.
        program: String,
        /// Where it was to run.
        place: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The swy-probe helper binary could not be found.
    #[error("{0}")]
    ProbeNotFound(String),

    /// The switchyard binary could not be found.
    #[error("{0}")]
    BinaryNotFound(String),

    /// A child did not reach the expected state in time.
    #[error("timed out after {after_ms} ms waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long we waited.
        after_ms: u128,
    },

    /// A child exited before producing what we waited for.
    #[error("{what}: process exited early ({status}); stderr: {stderr}")]
    ChildExited {
        /// What was awaited.
        what: String,
        /// Its exit status, if known.
        status: String,
        /// Whatever it printed on stderr.
        stderr: String,
    },

    /// swy-probe printed something that is not valid protocol output.
    #[error("bad swy-probe output: {0}")]
    Protocol(String),

    /// A place (node or pod index) does not exist in this testbed.
    #[error("no such place: {0}")]
    NoSuchPlace(String),
}

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
