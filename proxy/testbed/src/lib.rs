//! Network-namespace testbed for Switchyard.
//!
//! [`Testbed::new`] builds an underlay bridge, nodes (each with a pod CIDR, routed pods
//! — a veth per pod and a /32 host route, no pod bridge — routes to the other nodes'
//! pods and its own cgroup v2 directory), pods and an external client, all in fresh
//! network namespaces; dropping the testbed removes
//! everything again, also when a test panics. Processes are started in a
//! [`Place`] with [`Testbed::spawn`]; the `swy-probe` helper binary provides echo
//! servers ([`Testbed::start_echo`]), request clients ([`Testbed::request`]) and held
//! flows, one long-lived socket each ([`Testbed::hold`]).
//!
//! Address plan (only benchmark and documentation ranges are used):
//! node i `198.18.0.(10+i)/24`, its pods `198.19.i.(10+j)/32` behind gateway
//! `198.19.i.1` (a /32 on each pod veth's node end), cluster CIDR `198.19.0.0/16`, suggested service CIDR
//! `198.18.128.0/20`, external client `203.0.113.10/24`.

pub mod cgroup;
pub mod cleanup;
pub mod error;
pub mod fake_apiserver;
mod fixtures;
pub use fixtures::{backend_names, node_yaml, node_zone};
pub mod hold;
mod ip;
pub mod load;
pub mod netns;
pub mod probe;
pub mod probe_protocol;
pub mod process;
pub mod sctp;
pub mod supervisor;
pub mod switchyard;
pub mod topology;

pub use cleanup::cleanup_leftovers;
pub use error::{Error, Result};
pub use hold::{HeldReply, Hold, HoldSpec};
pub use load::{Batch, Destination, LoadSpec, Recorded, Recorder, RestartTimes};
pub use probe::{parse_request_output, probe_binary, RequestSpec, PROBE_ENV};
pub use probe_protocol::{Proto, Reply, RequestError};
pub use process::{ChildGuard, Finished, OutputMode, Place};
pub use switchyard::{
    http_get, http_get_from, metric, metric_in, start_switchyard, start_switchyard_from,
    switchyard_binary, wait_for, wait_for_log, Manifests, ObjectSource,
};
pub use topology::{Cidr, Cidr6, Client, Node, Pod, Testbed, TopologySpec};

/// Re-exported so callers can name signals for [`ChildGuard::signal`] without adding nix.
pub use nix::sys::signal::Signal;
