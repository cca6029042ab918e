//! The interface every dataplane mode implements: apply desired state, incrementally or fully.
use crate::model::{DesiredState, ServicePortKey, StateDiff};

/// A service port that could not be programmed; the others are unaffected.
#[derive(Debug, thiserror::Error)]
#[error("{port}: {message}")]
pub struct PortError {
    /// The port at fault.
    pub port: ServicePortKey,
    /// What went wrong, e.g. a full map.
    pub message: String,
}

/// What a sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Service ports written.
    pub ports_written: usize,
    /// Ports that failed; they are retried on the next full sync.
    pub errors: Vec<PortError>,
}

/// A node dataplane (iptables or eBPF).
pub trait Dataplane: Send {
    /// Applies the ports named in `diff`, reading their new state from `state`.
    fn apply(&mut self, state: &DesiredState, diff: &StateDiff) -> SyncReport;
    /// Rewrites everything from `state`, repairing anything changed behind our back.
    fn full_sync(&mut self, state: &DesiredState) -> SyncReport;
}
