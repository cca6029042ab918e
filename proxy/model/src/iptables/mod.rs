//! The iptables rule renderer (pure): service ports -> kube-proxy-shaped chains and rules ->
//! iptables-restore input. Running iptables-restore is the `switchyard` crate's job.
pub mod chains;
pub mod kube_proxy;
pub mod removal;
pub mod restore;
pub mod rule_set;
pub mod rules;
pub mod sctp_fallback;
