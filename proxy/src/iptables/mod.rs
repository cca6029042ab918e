//! iptables mode: kube-proxy-compatible chains written atomically with iptables-restore.
pub mod backend;
pub mod cleanup;
pub mod dataplane;
pub mod dual_stack;
pub mod exec;

pub use backend::{IptablesBackend, Tools};
pub use dataplane::{IptablesDataplane, SystemIptables};
pub use dual_stack::DualStackIptables;

// The pure renderer lives in the model crate; these paths keep the mode's modules together.
pub use switchyard_model::iptables::{chains, restore, rule_set, rules};
