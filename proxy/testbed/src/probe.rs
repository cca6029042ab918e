//! Running `swy-probe` inside the testbed: echo servers and request clients.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::probe_protocol::{ProbeLine, Proto, Reply, RequestError, READY_LINE};
use crate::process::{ChildGuard, OutputMode, Place};
use crate::topology::{Pod, Testbed};

/// Environment variable naming the swy-probe binary explicitly.
pub const PROBE_ENV: &str = "SWY_PROBE_BIN";

/// File name of the probe binary.
const PROBE_NAME: &str = "swy-probe";

/// How long an echo server may take to print its readiness line.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Extra time a request process gets beyond its attempts' own timeouts (start-up,
/// scheduling on a loaded machine).
const REQUEST_SLACK: Duration = Duration::from_secs(10);

/// Finds the swy-probe binary: `$SWY_PROBE_BIN`, else next to the running executable
/// (`target/<profile>/swy-probe` seen from `target/<profile>/deps/<test>` or from
/// `target/<profile>/<bin>`).
pub fn probe_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(PROBE_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::ProbeNotFound(format!(
                "{PROBE_ENV}={} does not name a file",
                path.display()
            )))
        };
    }
    let exe = std::env::current_exe()
        .map_err(|e| Error::ProbeNotFound(format!("cannot locate the current executable: {e}")))?;
    if let Some(dir) = exe.parent() {
        for candidate in [dir.join("..").join(PROBE_NAME), dir.join(PROBE_NAME)] {
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(Error::ProbeNotFound(format!(
        "swy-probe not found next to {} and {PROBE_ENV} is unset; build it with \
         `cargo build -p switchyard-testbed --bin swy-probe` (or run `cargo xtask test`)",
        exe.display()
    )))
}

/// Parameters of one `swy-probe request` run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSpec {
    /// TCP or UDP.
    pub proto: Proto,
    /// Destination address.
    pub to: SocketAddr,
    /// Number of independent attempts, each on a new socket.
    pub count: usize,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// UDP only: use `sendto`/`recvfrom` on an unconnected socket.
    pub unconnected: bool,
    /// IPv6 only: every packet behind a destination options extension header.
    pub dest_options: bool,
    /// UDP only: requests (and their answers) padded to this many bytes; 0 for the plain one.
    pub size: u16,
}

impl RequestSpec {
    /// One attempt with a one-second timeout.
    pub fn new(proto: Proto, to: SocketAddr) -> Self {
        RequestSpec {
            proto,
            to,
            count: 1,
            timeout: Duration::from_secs(1),
            unconnected: false,
            dest_options: false,
            size: 0,
        }
    }

    /// Sets the number of attempts.
    pub fn count(mut self, count: usize) -> Self {
        self.count = count;
        self
    }

    /// Sets the per-attempt timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Uses an unconnected UDP socket.
    pub fn unconnected(mut self, unconnected: bool) -> Self {
        self.unconnected = unconnected;
        self
    }

    /// Sends every IPv6 packet behind a destination options header.
    pub fn dest_options(mut self, dest_options: bool) -> Self {
        self.dest_options = dest_options;
        self
    }

    /// Pads UDP requests and their answers to `size` bytes.
    pub fn size(mut self, size: u16) -> Self {
        self.size = size;
        self
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "request".to_owned(),
            "--proto".to_owned(),
            self.proto.to_string(),
            "--to".to_owned(),
            self.to.to_string(),
            "--count".to_owned(),
            self.count.to_string(),
            "--timeout-ms".to_owned(),
            self.timeout.as_millis().to_string(),
        ];
        if self.unconnected {
            args.push("--unconnected".to_owned());
        }
        if self.dest_options {
            args.push("--ipv6-dest-options".to_owned());
        }
        if self.size > 0 {
            args.extend(["--size".to_owned(), self.size.to_string()]);
        }
        args
    }
}

/// Parses `swy-probe request` output: one JSON object per non-empty line.
pub fn parse_request_output(stdout: &str) -> Result<Vec<Result<Reply, RequestError>>> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            serde_json::from_str::<ProbeLine>(line)
                .map(ProbeLine::into_result)
                .map_err(|e| Error::Protocol(format!("{line:?}: {e}")))
        })
        .collect()
}

impl Testbed {
    /// Starts an echo server in `pod` answering with the pod's name, on TCP port
    /// `tcp_port` and UDP port `udp_port` (0 = that protocol not served). Returns once
    /// the sockets are bound.
    pub fn start_echo(&self, pod: &Pod, tcp_port: u16, udp_port: u16) -> Result<ChildGuard> {
        let tcp: Vec<u16> = [tcp_port].into_iter().filter(|p| *p != 0).collect();
        let udp: Vec<u16> = [udp_port].into_iter().filter(|p| *p != 0).collect();
        self.start_echo_in(pod, &pod.name, &tcp, &udp)
    }

    /// Starts an echo server anywhere (e.g. a node, for host-network backends) that
    /// answers with `name`. Returns once all sockets are bound.
    pub fn start_echo_in(
        &self,
        place: impl Into<Place>,
        name: &str,
        tcp_ports: &[u16],
        udp_ports: &[u16],
    ) -> Result<ChildGuard> {
        self.start_echo_sctp(place, name, tcp_ports, udp_ports, &[])
    }

    /// [`Testbed::start_echo_in`] that also answers SCTP INITs to `sctp_ports` (over a raw
    /// socket; see [`crate::sctp`]).
    pub fn start_echo_sctp(
        &self,
        place: impl Into<Place>,
        name: &str,
        tcp_ports: &[u16],
        udp_ports: &[u16],
        sctp_ports: &[u16],
    ) -> Result<ChildGuard> {
        let mut args = vec!["serve".to_owned(), "--name".to_owned(), name.to_owned()];
        for port in tcp_ports {
            args.extend(["--tcp".to_owned(), port.to_string()]);
        }
        for port in udp_ports {
            args.extend(["--udp".to_owned(), port.to_string()]);
        }
        for port in sctp_ports {
            args.extend(["--sctp".to_owned(), port.to_string()]);
        }
        let mut child = self.spawn(place, self.probe()?, &args)?;
        child.wait_for_stdout_line(|l| l.trim() == READY_LINE, READY_TIMEOUT)?;
        Ok(child)
    }

    /// Sends `count` requests from `place` to `addr`, each on a new socket, and returns
    /// one result per attempt.
    ///
    /// If the probe itself cannot be run, every attempt is reported as
    /// [`RequestError::Other`] with the reason; use [`Testbed::request_with`] to get
    /// that as an `Err` instead.
    pub fn request(
        &self,
        place: impl Into<Place>,
        proto: Proto,
        addr: SocketAddr,
        count: usize,
        timeout: Duration,
    ) -> Vec<Result<Reply, RequestError>> {
        let spec = RequestSpec::new(proto, addr).count(count).timeout(timeout);
        match self.request_with(place, &spec) {
            Ok(results) => results,
            Err(e) => vec![Err(RequestError::Other(format!("testbed: {e}"))); count],
        }
    }

    /// Runs `swy-probe request` in `place` as described by `spec`. Always returns
    /// exactly `spec.count` results when it succeeds.
    pub fn request_with(
        &self,
        place: impl Into<Place>,
        spec: &RequestSpec,
    ) -> Result<Vec<Result<Reply, RequestError>>> {
        let place = place.into();
        let mut cmd = std::process::Command::new(self.probe()?);
        cmd.args(spec.args());
        let mut child = self.spawn_with(place, cmd, OutputMode::Capture)?;
        let budget = spec
            .timeout
            .saturating_mul(u32::try_from(spec.count).unwrap_or(u32::MAX))
            .saturating_add(REQUEST_SLACK);
        let finished = child.wait_for_output(budget)?;
        if !finished.status.success() {
            return Err(Error::ChildExited {
                what: format!("swy-probe request in {place}"),
                status: finished.status.to_string(),
                stderr: finished.stderr,
            });
        }
        let results = parse_request_output(&finished.stdout)?;
        if results.len() != spec.count {
            return Err(Error::Protocol(format!(
                "expected {} results from swy-probe in {place}, got {}: {:?} (stderr {:?})",
                spec.count,
                results.len(),
                finished.stdout,
                finished.stderr
            )));
        }
        Ok(results)
    }
}
