//! Held flows: `swy-probe hold` keeps ONE socket (a TCP connection or a connected UDP
//! socket) open in a testbed place and makes one round trip per interval, so a test can
//! watch an established flow live while it changes the dataplane around it. A UDP socket
//! the kernel aborts (ECONNABORTED) or disconnects is connected again, as a resolver does,
//! so the round trip that saw the error fails and the next one goes to the new peer.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::probe_protocol::{ProbeLine, Proto, Reply, RequestError};
use crate::process::{ChildGuard, OutputMode, Place};
use crate::topology::Testbed;

/// Extra time the first round trip gets beyond the probe's own reply timeout (start-up,
/// scheduling on a loaded machine).
const FIRST_SLACK: Duration = Duration::from_secs(10);

/// How often [`Hold::wait_for_replies`] looks at the captured output.
const POLL: Duration = Duration::from_millis(10);

/// Parameters of one `swy-probe hold` run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldSpec {
    /// TCP or UDP (connected).
    pub proto: Proto,
    /// Destination address.
    pub to: SocketAddr,
    /// Time between the starts of two round trips.
    pub interval: Duration,
    /// Stop after this many round trips (`None`: until killed).
    pub count: Option<usize>,
}

impl HoldSpec {
    /// A flow that runs until killed.
    pub fn new(proto: Proto, to: SocketAddr, interval: Duration) -> Self {
        HoldSpec {
            proto,
            to,
            interval,
            count: None,
        }
    }

    /// Stops after `count` round trips.
    pub fn count(mut self, count: usize) -> Self {
        self.count = Some(count);
        self
    }

    /// How long one round trip waits for its reply (the probe's rule): the interval, but
    /// at least a second.
    pub fn reply_timeout(&self) -> Duration {
        self.interval.max(Duration::from_secs(1))
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "hold".to_owned(),
            "--proto".to_owned(),
            self.proto.to_string(),
            "--to".to_owned(),
            self.to.to_string(),
            "--interval-ms".to_owned(),
            self.interval.as_millis().max(1).to_string(),
        ];
        if let Some(count) = self.count {
            args.extend(["--count".to_owned(), count.to_string()]);
        }
        args
    }
}

/// One round trip of a held flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldReply {
    /// When it ended, since the probe started (see [`Hold::elapsed`] for the same clock).
    pub at: Duration,
    /// What it got.
    pub result: Result<Reply, RequestError>,
}

impl fmt::Display for HeldReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.at.as_secs_f64();
        match &self.result {
            Ok(r) => write!(f, "{at:.2}s {} (saw {})", r.backend, r.seen_source),
            Err(e) => write!(f, "{at:.2}s error {e}"),
        }
    }
}

/// A running `swy-probe hold`; killed on drop.
#[derive(Debug)]
pub struct Hold {
    child: ChildGuard,
    place: Place,
    spec: HoldSpec,
    started: Instant,
}

impl Hold {
    /// Where the flow starts.
    pub fn place(&self) -> Place {
        self.place
    }

    /// What was started.
    pub fn spec(&self) -> &HoldSpec {
        &self.spec
    }

    /// Time since the probe was started: the clock of [`HeldReply::at`] (a little ahead
    /// of it, by the probe's start-up time).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The underlying process.
    pub fn child(&mut self) -> &mut ChildGuard {
        &mut self.child
    }

    /// Every round trip reported so far, in order, with its time.
    pub fn timeline(&self) -> Vec<HeldReply> {
        parse_hold_output(&self.child.stdout())
    }

    /// Every round trip's result so far, in order.
    pub fn replies_so_far(&self) -> Vec<Result<Reply, RequestError>> {
        self.timeline().into_iter().map(|r| r.result).collect()
    }

    /// Waits until at least `n` round trips have been reported and returns all of them.
    /// Fails on timeout, or when the probe exits first (a TCP flow whose connect failed,
    /// or `count` reached), with what it printed.
    pub fn wait_for_replies(&mut self, n: usize, timeout: Duration) -> Result<Vec<HeldReply>> {
        let deadline = Instant::now() + timeout;
        loop {
            let timeline = self.timeline();
            if timeline.len() >= n {
                return Ok(timeline);
            }
            if let Some(status) = self.child.try_wait()? {
                // Exited: read the rest of its output once the pipes are drained.
                let finished = self.child.wait_for_output(Duration::from_secs(1))?;
                let timeline = parse_hold_output(&finished.stdout);
                if timeline.len() >= n {
                    return Ok(timeline);
                }
                return Err(Error::ChildExited {
                    what: format!(
                        "{n} round trips of {} (got {}: {})",
                        self.describe(),
                        timeline.len(),
                        summarize(&timeline)
                    ),
                    status: status.to_string(),
                    stderr: finished.stderr,
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    what: format!(
                        "{n} round trips of {} (got {}: {})",
                        self.describe(),
                        timeline.len(),
                        summarize(&timeline)
                    ),
                    after_ms: timeout.as_millis(),
                });
            }
            std::thread::sleep(POLL.min(deadline - now));
        }
    }

    /// Waits for the probe to end on its own (`count` given), up to `timeout`, and
    /// returns every round trip.
    pub fn wait_done(&mut self, timeout: Duration) -> Result<Vec<HeldReply>> {
        let finished = self.child.wait_for_output(timeout)?;
        Ok(parse_hold_output(&finished.stdout))
    }

    /// Kills the probe and returns every round trip it reported.
    pub fn stop(mut self) -> Vec<HeldReply> {
        let _ = self.child.kill();
        match self.child.wait_for_output(Duration::from_secs(1)) {
            Ok(finished) => parse_hold_output(&finished.stdout),
            Err(_) => self.timeline(),
        }
    }

    /// Checks every round trip so far: all answered, all by one backend. Returns that
    /// backend and the timeline, or what went wrong (with the timeline, for messages).
    pub fn steady(&self) -> std::result::Result<(String, Vec<HeldReply>), String> {
        let timeline = self.timeline();
        let failed: Vec<String> = timeline
            .iter()
            .filter(|r| r.result.is_err())
            .map(ToString::to_string)
            .collect();
        if !failed.is_empty() {
            return Err(format!(
                "held {} had failed round trips: {}\ntimeline: {}",
                self.describe(),
                failed.join(", "),
                summarize(&timeline)
            ));
        }
        let mut seen: Vec<&str> = timeline
            .iter()
            .filter_map(|r| r.result.as_ref().ok())
            .map(|r| r.backend.as_str())
            .collect();
        seen.sort_unstable();
        seen.dedup();
        match seen.as_slice() {
            [one] => {
                let backend = (*one).to_owned();
                Ok((backend, timeline))
            }
            [] => Err(format!("held {}: no round trip yet", self.describe())),
            _ => Err(format!(
                "held {} changed backend: {}",
                self.describe(),
                summarize(&timeline)
            )),
        }
    }

    /// Whether a round trip ended after `mark` (on the [`Hold::elapsed`] clock).
    pub fn answered_after(&self, mark: Duration) -> bool {
        self.timeline()
            .iter()
            .any(|r| r.at > mark && r.result.is_ok())
    }

    /// "tcp flow from PLACE to ADDR", for messages.
    pub fn describe(&self) -> String {
        format!(
            "{} flow from {} to {} every {:?}",
            self.spec.proto, self.place, self.spec.to, self.spec.interval
        )
    }
}

/// Parses `swy-probe hold` output: one JSON object per complete line. A line that is not
/// valid protocol output becomes an [`RequestError::Other`] round trip (at the previous
/// line's time), so nothing is silently lost.
pub fn parse_hold_output(stdout: &str) -> Vec<HeldReply> {
    // Only complete lines: the last one may still be being written.
    let complete = match stdout.rfind('\n') {
        Some(end) => &stdout[..end],
        None => "",
    };
    let mut at = Duration::ZERO;
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| match serde_json::from_str::<ProbeLine>(line) {
            Ok(parsed) => {
                if let Some(ms) = parsed.at_ms {
                    at = Duration::from_millis(ms);
                }
                HeldReply {
                    at,
                    result: parsed.into_result(),
                }
            }
            Err(e) => HeldReply {
                at,
                result: Err(RequestError::Other(format!(
                    "bad swy-probe output {line:?}: {e}"
                ))),
            },
        })
        .collect()
}

/// Runs of equal outcomes, for messages: `0.10s-2.30s node1-pod2 (saw ...) x23, ...`.
pub fn summarize(timeline: &[HeldReply]) -> String {
    let key = |r: &HeldReply| match &r.result {
        Ok(reply) => format!("{} (saw {})", reply.backend, reply.seen_source),
        Err(e) => format!("error {e}"),
    };
    let mut runs: Vec<(Duration, Duration, String, usize)> = Vec::new();
    for r in timeline {
        let k = key(r);
        match runs.last_mut() {
            Some(last) if last.2 == k => {
                last.1 = r.at;
                last.3 += 1;
            }
            _ => runs.push((r.at, r.at, k, 1)),
        }
    }
    if runs.is_empty() {
        return "nothing".into();
    }
    runs.iter()
        .map(|(from, to, k, n)| {
            format!(
                "{:.2}s-{:.2}s {k} x{n}",
                from.as_secs_f64(),
                to.as_secs_f64()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Testbed {
    /// Starts a held flow from `place` to `addr`: one socket for its whole life, one round
    /// trip per `interval`, until the returned [`Hold`] is dropped. Returns once the first
    /// round trip has been reported, whatever its result (see [`Hold::timeline`]); `Err`
    /// only if the probe cannot be run or reports nothing in time.
    pub fn hold(
        &self,
        place: impl Into<Place>,
        proto: Proto,
        addr: SocketAddr,
        interval: Duration,
    ) -> Result<Hold> {
        self.hold_with(place, &HoldSpec::new(proto, addr, interval))
    }

    /// [`Testbed::hold`] as described by `spec`.
    pub fn hold_with(&self, place: impl Into<Place>, spec: &HoldSpec) -> Result<Hold> {
        let place = place.into();
        let mut cmd = std::process::Command::new(self.probe()?);
        cmd.args(spec.args());
        let started = Instant::now();
        let child = self.spawn_with(place, cmd, OutputMode::Capture)?;
        let mut hold = Hold {
            child,
            place,
            spec: spec.clone(),
            started,
        };
        // Connect (TCP) plus the first reply, each bounded by the reply timeout.
        let first = spec.reply_timeout() * 2 + FIRST_SLACK;
        hold.wait_for_replies(1, first)?;
        Ok(hold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_output_parses_with_times() {
        let out = concat!(
            r#"{"ok":true,"backend":"a","seen_source":"198.19.1.11:4000","from":"198.18.128.1:80","at_ms":5}"#,
            "\n",
            r#"{"ok":false,"error":"timeout","detail":"recv","at_ms":1105}"#,
            "\n",
            "garbage\n",
            r#"{"ok":true,"backend":"a","#
        );
        let timeline = parse_hold_output(out);
        assert_eq!(timeline.len(), 3, "the partial last line is not counted");
        assert_eq!(timeline[0].at, Duration::from_millis(5));
        assert_eq!(timeline[0].result.as_ref().unwrap().backend, "a");
        assert_eq!(timeline[1].result, Err(RequestError::Timeout));
        assert_eq!(timeline[2].at, Duration::from_millis(1105));
        assert!(matches!(timeline[2].result, Err(RequestError::Other(_))));
        let text = summarize(&timeline);
        assert!(
            text.starts_with(
                "0.01s-0.01s a (saw 198.19.1.11:4000) x1, 1.10s-1.10s error timeout x1"
            ),
            "{text}"
        );
    }

    #[test]
    fn hold_args() {
        let spec = HoldSpec::new(
            Proto::Udp,
            "198.18.128.1:53".parse().unwrap(),
            Duration::from_millis(100),
        )
        .count(3);
        assert_eq!(
            spec.args().join(" "),
            "hold --proto udp --to 198.18.128.1:53 --interval-ms 100 --count 3"
        );
        assert_eq!(spec.reply_timeout(), Duration::from_secs(1));
    }
}
