//! The contract every dataplane mode implements: apply desired state partially, verify and
//! repair it, rewrite it in full, and remove it.
//!
//! The controller decides *when* and *which kind* of sync runs ([`SyncKind`]); the dataplane
//! decides how to do it cheaply. Mode-specific counters (iptables-restore runs, map-full
//! events) go to the mode's own metrics, not into [`SyncReport`].
use crate::model::{DesiredState, ServicePortKey, StateDiff};

/// A boxed error with its source chain kept.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Which sync the controller asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncKind {
    /// Apply the ports named in the diff, nothing else.
    Partial,
    /// The periodic resync (`syncPeriod`): check cheaply that the kernel still holds what was
    /// written, repair what drifted, and apply the diff. Must not rewrite what is intact.
    Verify,
    /// Rewrite everything: the first sync, after a failure, and hourly (as upstream).
    Full,
}

impl std::fmt::Display for SyncKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncKind::Partial => "partial",
            SyncKind::Verify => "verify",
            SyncKind::Full => "full",
        })
    }
}

/// A service port that could not be programmed; the others are unaffected.
#[derive(Debug, thiserror::Error)]
#[error("{port}: {source}")]
pub struct PortError {
    /// The port at fault.
    pub port: ServicePortKey,
    /// The map that was full, when that was the cause.
    pub full_map: Option<&'static str>,
    /// What went wrong.
    #[source]
    pub source: BoxError,
}

/// The sync as a whole failed; the dataplane keeps its previous state and wants a retry.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {source}")]
pub struct SyncError {
    /// What the dataplane was doing, e.g. "listing our chains".
    pub action: &'static str,
    /// Why it failed.
    #[source]
    pub source: BoxError,
}

impl SyncError {
    /// A failure while doing `action`.
    pub fn new(action: &'static str, source: impl Into<BoxError>) -> Self {
        Self {
            action,
            source: source.into(),
        }
    }
}

/// What a sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Whether everything was rewritten (asked for, or forced by drift or a failed partial).
    pub full: bool,
    /// Drift found by a verify and repaired: what was missing or different.
    pub repaired: Option<String>,
    /// Service ports written.
    pub ports_written: usize,
    /// Ports that failed; they are retried by a later sync.
    pub errors: Vec<PortError>,
}

/// A node dataplane (iptables or eBPF). Start-up and adoption of a previous instance's state
/// are each mode's constructor; everything after goes through this trait.
pub trait Dataplane: Send {
    /// Brings the kernel to `state`; `diff` names the ports changed since the last
    /// successful sync. See [`SyncKind`] for what each kind must do.
    fn sync(
        &mut self,
        kind: SyncKind,
        state: &DesiredState,
        diff: &StateDiff,
    ) -> Result<SyncReport, SyncError>;

    /// This node's local addresses, before every sync that reads them. A dataplane whose
    /// rendering depends on them (beyond the NodePort frontends the model already derives)
    /// takes note and rewrites what they affect in that sync.
    fn node_addresses(&mut self, addresses: &[std::net::IpAddr]) {
        let _ = addresses;
    }

    /// Removes everything this dataplane programmed (rules, maps, programs).
    fn cleanup(&mut self) -> Result<(), SyncError>;
}
