//! Switchyard: a kube-proxy replacement with iptables and eBPF dataplanes.
//!
//! The pure core ([`model`]) turns Kubernetes objects into the desired dataplane state for
//! this node and diffs it; [`source`] feeds it, [`controller`] drives it, and the dataplane
//! modes ([`ebpf`]) apply the diffs.
pub mod config;
pub mod conntrack;
pub mod controller;
pub mod dataplane;
pub mod ebpf;
pub mod events;
pub mod handover;
pub mod health;
pub mod iptables;
pub mod kube_proxy_cleanup;
pub mod memory;
pub mod metrics;
/// The pure core, re-exported under its old path.
pub use switchyard_model as model;
pub mod node_addresses;
pub mod oom_score;
pub mod run;
pub mod server;
pub mod service_health;
pub mod source;
pub mod status;
