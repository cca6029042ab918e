//! iptables mode: kube-proxy-compatible chains written atomically with iptables-restore.
pub mod backend;
pub mod chains;
pub mod cleanup;
pub mod dataplane;
pub mod exec;
pub mod restore;
pub mod rule_set;
pub mod rules;

pub use backend::IptablesBackend;
pub use dataplane::{IptablesDataplane, SystemIptables};
