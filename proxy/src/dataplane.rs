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
    /// The map that was full, when that was the cause.
    pub full_map: Option<&'static str>,
}

/// What a sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Whether everything was rewritten.
    pub full: bool,
    /// Service ports written.
    pub ports_written: usize,
    /// Ports that failed; they are retried on the next full sync.
    pub errors: Vec<PortError>,
    /// Number of iptables-restore runs.
    pub restores: usize,
    /// iptables-restore runs that failed (and were retried as a full sync).
    pub restore_failures: u64,
    /// The sync as a whole failed; the dataplane keeps its previous state and wants a retry.
    pub failure: Option<String>,
}

/// A node dataplane (iptables or eBPF).
pub trait Dataplane: Send {
    /// Applies the ports named in `diff`, reading their new state from `state`.
    fn apply(&mut self, state: &DesiredState, diff: &StateDiff) -> SyncReport;
    /// The periodic resync: repairs anything changed behind our back (each dataplane decides
    /// how much to rewrite) and, either way, applies `diff`, the changes since the last sync.
    fn full_sync(&mut self, state: &DesiredState, diff: &StateDiff) -> SyncReport;
}
