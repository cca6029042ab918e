//! Bulk TCP throughput and small-packet UDP rate with Debian's `iperf3` (installed by
//! `cargo xtask setup`), run inside the testbed: the server in the backend pod, the client
//! in the client pod, each bounded by `-t` and by the spawn's own timeout.
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;
use switchyard_testbed::{ChildGuard, OutputMode, Place, Testbed};

/// The program (from `PATH`).
const IPERF3: &str = "iperf3";

/// UDP payload of the small-packet test, bytes (a DNS-sized datagram).
pub const UDP_PAYLOAD: usize = 64;

/// How long the client may take beyond its `-t` (connect, parameter exchange, results).
const SLACK: Duration = Duration::from_secs(10);

/// A server answers one test at a time; one that just finished may still refuse for a
/// moment.
const BUSY_RETRIES: usize = 5;

/// Starts `iperf3 -s` in `place` on `port`; it runs until the guard (or the testbed) goes.
pub fn start_server(testbed: &Testbed, place: Place, port: u16) -> anyhow::Result<ChildGuard> {
    let mut cmd = std::process::Command::new(IPERF3);
    // Its stdout is a pipe: without --forceflush the listening line stays in its buffer.
    cmd.args(["-s", "-p", &port.to_string(), "--forceflush"]);
    let mut server = testbed
        .spawn_with(place, cmd, OutputMode::Capture)
        .context("starting iperf3 (installed by `cargo xtask setup`)")?;
    server
        .wait_for_stdout_line(|l| l.contains("Server listening"), Duration::from_secs(10))
        .with_context(|| format!("iperf3 -s in {place}: {}", server.stderr()))?;
    Ok(server)
}

/// Bulk TCP from `place` to `to` for `seconds` (whole seconds, at least one): Gbit/s
/// received.
pub fn tcp(testbed: &Testbed, place: Place, to: SocketAddr, seconds: u64) -> anyhow::Result<f64> {
    let report = client(testbed, place, to, seconds, &[])?;
    let bits = report
        .pointer("/end/sum_received/bits_per_second")
        .and_then(Value::as_f64)
        .context("iperf3 report without end.sum_received.bits_per_second")?;
    Ok(bits / 1e9)
}

/// What the UDP test measured.
#[derive(Debug, Clone, Copy)]
pub struct Udp {
    /// Datagrams that reached the server, per second.
    pub received_per_s: f64,
    /// Share of the sent datagrams lost on the way, percent.
    pub lost_pct: f64,
}

/// Small datagrams from `place` to `to` as fast as the sender can go, for `seconds`.
pub fn udp(testbed: &Testbed, place: Place, to: SocketAddr, seconds: u64) -> anyhow::Result<Udp> {
    let len = UDP_PAYLOAD.to_string();
    let report = client(testbed, place, to, seconds, &["-u", "-b", "0", "-l", &len])?;
    udp_from_report(&report)
}

fn udp_from_report(report: &Value) -> anyhow::Result<Udp> {
    let field = |name: &str| {
        report
            .pointer(&format!("/end/sum/{name}"))
            .and_then(Value::as_f64)
            .with_context(|| format!("iperf3 UDP report without end.sum.{name}"))
    };
    let (packets, lost, seconds) = (field("packets")?, field("lost_packets")?, field("seconds")?);
    if seconds <= 0.0 || packets <= 0.0 {
        bail!("iperf3 UDP report: {packets} packets in {seconds} s");
    }
    Ok(Udp {
        received_per_s: (packets - lost).max(0.0) / seconds,
        lost_pct: 100.0 * lost / packets,
    })
}

/// Runs one client test and returns its JSON report.
fn client(
    testbed: &Testbed,
    place: Place,
    to: SocketAddr,
    seconds: u64,
    extra: &[&str],
) -> anyhow::Result<Value> {
    let seconds = seconds.max(1);
    let mut args = vec![
        "-c".to_owned(),
        to.ip().to_string(),
        "-p".to_owned(),
        to.port().to_string(),
        "-t".to_owned(),
        seconds.to_string(),
        "-J".to_owned(),
        "--connect-timeout".to_owned(),
        "2000".to_owned(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut last = String::new();
    for attempt in 0..BUSY_RETRIES {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
        let done = testbed.run(place, IPERF3, &args, Duration::from_secs(seconds) + SLACK)?;
        let report: Value = serde_json::from_str(&done.stdout)
            .with_context(|| format!("iperf3 -c {to} printed no JSON: {}", done.stderr))?;
        match report.pointer("/error").and_then(Value::as_str) {
            None if done.status.success() => return Ok(report),
            // "the server is busy running a test. try again later"
            Some(e) if e.contains("busy") => last = e.to_owned(),
            Some(e) => bail!("iperf3 -c {to} from {place}: {e}"),
            None => bail!("iperf3 -c {to} from {place} exited {}", done.status),
        }
    }
    bail!("iperf3 -c {to} from {place}: {last} ({BUSY_RETRIES} attempts)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_rate_counts_what_arrived() {
        let report = serde_json::json!({
            "end": {"sum": {"packets": 100000, "lost_packets": 25000, "seconds": 2.0}}
        });
        let udp = udp_from_report(&report).unwrap();
        assert_eq!(udp.received_per_s, 37500.0);
        assert_eq!(udp.lost_pct, 25.0);
        assert!(udp_from_report(&serde_json::json!({"end": {}})).is_err());
    }
}
