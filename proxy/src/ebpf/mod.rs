//! ebpf mode: socket programs whose maps hold services and backends.
pub mod dataplane;
pub mod masquerade;
pub mod object;
pub mod plan;

pub use dataplane::{EbpfConfig, EbpfDataplane, EbpfError};
