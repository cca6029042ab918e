//! What is measured on each path, one sample per call.
use std::fmt;

use serde::Serialize;
use switchyard_testbed::Place;

use super::iperf;
use super::sandbox::{client, Sandbox, CLIENT_POD};

/// One kind of measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Pod -> service: new TCP connections (connect, one line each way, close).
    Connect,
    /// Pod -> service: requests on open connections.
    KeepAlive,
    /// Pod -> service: bulk TCP (iperf3).
    Bulk,
    /// Pod -> service: small UDP datagrams as fast as the sender goes (iperf3).
    Udp,
    /// External client -> NodePort whose backend is on the node it hits: new connections.
    NodePortLocal,
    /// External client -> NodePort whose backend is on the other node: new connections.
    NodePortRemote,
    /// Pod -> pod IP, no service: new connections (on the direct path this is `Connect`).
    PodToPod,
}

impl Kind {
    /// Every kind, in measurement order.
    pub const ALL: [Kind; 7] = [
        Kind::Connect,
        Kind::KeepAlive,
        Kind::Bulk,
        Kind::Udp,
        Kind::NodePortLocal,
        Kind::NodePortRemote,
        Kind::PodToPod,
    ];

    /// Unit of the sample's value.
    pub fn unit(self) -> &'static str {
        match self {
            Kind::Connect | Kind::NodePortLocal | Kind::NodePortRemote | Kind::PodToPod => {
                "connections/s"
            }
            Kind::KeepAlive => "requests/s",
            Kind::Bulk => "Gbit/s",
            Kind::Udp => "datagrams/s",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Connect => "connect",
            Kind::KeepAlive => "keep-alive",
            Kind::Bulk => "bulk",
            Kind::Udp => "udp",
            Kind::NodePortLocal => "nodeport-local",
            Kind::NodePortRemote => "nodeport-remote",
            Kind::PodToPod => "pod-to-pod",
        })
    }
}

/// How hard and how long each measurement pushes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Shape {
    /// Length of one measurement, seconds (iperf3 rounds up to whole seconds).
    pub seconds: f64,
    /// Parallel connections of the TCP request clients.
    pub concurrency: usize,
    /// Upper bound of requests per measurement (the time bound normally ends it first).
    pub max_requests: usize,
}

/// One measurement's result.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// In the kind's unit.
    pub value: f64,
    /// Median latency, microseconds (request kinds).
    pub p50_us: Option<f64>,
    /// 99th percentile latency, microseconds (request kinds).
    pub p99_us: Option<f64>,
    /// UDP: share of the datagrams sent that did not arrive, percent.
    pub lost_pct: Option<f64>,
    /// Requests that failed.
    pub errors: usize,
    /// The first failure.
    pub first_error: Option<String>,
    /// CPU the path's proxies used meanwhile, % of one core.
    pub proxy_cpu_pct: f64,
}

/// Measures `kind` on `sandbox` once.
pub fn measure(sandbox: &Sandbox, kind: Kind, shape: &Shape) -> anyhow::Result<Sample> {
    let t = sandbox.targets;
    let (place, to, keep_alive) = match kind {
        Kind::Connect => (CLIENT_POD, t.service, false),
        Kind::KeepAlive => (CLIENT_POD, t.service, true),
        Kind::NodePortLocal => (Place::Client, t.node_port_local, false),
        Kind::NodePortRemote => (Place::Client, t.node_port_remote, false),
        Kind::PodToPod => (CLIENT_POD, t.pod, false),
        Kind::Bulk | Kind::Udp => {
            let seconds = shape.seconds.ceil().max(1.0) as u64;
            let (value, lost_pct) = if kind == Kind::Bulk {
                (
                    iperf::tcp(sandbox.testbed(), CLIENT_POD, t.iperf, seconds)?,
                    None,
                )
            } else {
                let udp = iperf::udp(sandbox.testbed(), CLIENT_POD, t.iperf, seconds)?;
                (udp.received_per_s, Some(udp.lost_pct))
            };
            return Ok(Sample {
                value,
                p50_us: None,
                p99_us: None,
                lost_pct,
                errors: 0,
                first_error: None,
                proxy_cpu_pct: 0.0,
            });
        }
    };
    let role = if keep_alive { "keep-alive" } else { "connect" };
    let shape = client(to, shape.concurrency, shape.seconds, shape.max_requests);
    let o = sandbox.load(place, role, &shape)?;
    Ok(Sample {
        value: if o.seconds > 0.0 {
            o.done as f64 / o.seconds
        } else {
            0.0
        },
        p50_us: Some(o.p50_us),
        p99_us: Some(o.p99_us),
        lost_pct: None,
        errors: o.errors,
        first_error: o.first_error,
        proxy_cpu_pct: 0.0,
    })
}
