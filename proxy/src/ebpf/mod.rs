//! ebpf mode: socket programs whose maps hold services and backends.
pub mod batch_read;
mod batch_syscall;
pub mod batch_write;
pub mod dataplane;
pub mod flow_timeouts;
pub mod icmp_limits;
pub mod ipv6_maps;
pub mod maps;
pub mod masquerade;
pub mod metrics;
pub mod object;
pub mod sctp_fallback;
pub mod sock_term;
pub mod tc_v6;

pub use dataplane::{EbpfConfig, EbpfDataplane, EbpfError, LoadedEbpf};
pub use metrics::EbpfMetrics;

/// The pure planner of map writes, from the model crate.
pub use switchyard_model::ebpf_plan as plan;
