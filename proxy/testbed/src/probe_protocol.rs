//! The text formats spoken by `swy-probe`, shared by the binary and the library.
//!
//! * `serve` answers every UDP datagram with one echo line, `NAME PEER_IP:PEER_PORT\n`, and
//!   prints [`READY_LINE`] once all sockets are bound. A TCP connection gets the echo line
//!   at once and then again for every line the client sends, until the client closes it
//!   (so one-shot clients read one line and close, and held flows keep one connection).
//! * `request` prints one JSON object per attempt ([`ProbeLine`]).
//! * `hold` keeps one socket for its whole run and prints one [`ProbeLine`] per round
//!   trip, with `at_ms` (milliseconds since the probe started) set.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Line `swy-probe serve` prints on stdout once every socket is bound.
pub const READY_LINE: &str = "ready";

/// Transport protocol of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP: connect, read one line.
    Tcp,
    /// UDP: send one datagram, receive one.
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl FromStr for Proto {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            other => Err(format!("unknown protocol {other:?} (expected tcp or udp)")),
        }
    }
}

/// A successful request: which backend answered and what it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The `--name` of the echo server that answered (a pod name for `start_echo`).
    pub backend: String,
    /// The client address as seen by the server (after any SNAT).
    pub seen_source: SocketAddr,
    /// The address the reply came from, as seen by the client. For TCP and connected
    /// UDP this is the address that was requested; for `--unconnected` UDP it exposes
    /// a missing reverse NAT.
    pub replied_from: SocketAddr,
}

/// Why one request attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Actively rejected: ECONNREFUSED (RST or ICMP port unreachable), EPERM/EACCES
    /// (a cgroup socket program said no) or ICMP host/net unreachable.
    #[error("refused")]
    Refused,
    /// No answer within the timeout.
    #[error("timeout")]
    Timeout,
    /// Anything else, with a description.
    #[error("{0}")]
    Other(String),
}

/// Failure category on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    /// See [`RequestError::Refused`].
    Refused,
    /// See [`RequestError::Timeout`].
    Timeout,
    /// See [`RequestError::Other`].
    Other,
}

/// One JSON line printed by `swy-probe request`.
///
/// Success: `{"ok":true,"backend":"...","seen_source":"ip:port","from":"ip:port"}`;
/// failure: `{"ok":false,"error":"refused"|"timeout"|"other","detail":"..."}`. Lines of
/// `hold` add `"at_ms":N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeLine {
    /// Whether the attempt got an echo line back.
    pub ok: bool,
    /// Echo server name, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Client address as seen by the server, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_source: Option<String>,
    /// Address the reply came from, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Failure category, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<FailureKind>,
    /// Human-readable failure detail (errno text etc.), on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// `hold` only: when the round trip ended, in milliseconds since the probe started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
}

impl ProbeLine {
    /// A successful attempt.
    pub fn success(backend: &str, seen_source: SocketAddr, from: SocketAddr) -> Self {
        ProbeLine {
            ok: true,
            backend: Some(backend.to_owned()),
            seen_source: Some(seen_source.to_string()),
            from: Some(from.to_string()),
            error: None,
            detail: None,
            at_ms: None,
        }
    }

    /// A failed attempt.
    pub fn failure(kind: FailureKind, detail: impl Into<String>) -> Self {
        ProbeLine {
            ok: false,
            backend: None,
            seen_source: None,
            from: None,
            error: Some(kind),
            detail: Some(detail.into()),
            at_ms: None,
        }
    }

    /// Sets [`ProbeLine::at_ms`].
    pub fn at(mut self, since_start: std::time::Duration) -> Self {
        self.at_ms = Some(u64::try_from(since_start.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Converts the wire form into the library's result type.
    pub fn into_result(self) -> Result<Reply, RequestError> {
        if !self.ok {
            return Err(match self.error {
                Some(FailureKind::Refused) => RequestError::Refused,
                Some(FailureKind::Timeout) => RequestError::Timeout,
                Some(FailureKind::Other) | None => {
                    RequestError::Other(self.detail.unwrap_or_else(|| "unknown".into()))
                }
            });
        }
        let backend = self
            .backend
            .ok_or_else(|| RequestError::Other("probe reply without backend".into()))?;
        let seen_source = parse_addr(self.seen_source.as_deref(), "seen_source")?;
        let replied_from = parse_addr(self.from.as_deref(), "from")?;
        Ok(Reply {
            backend,
            seen_source,
            replied_from,
        })
    }
}

fn parse_addr(value: Option<&str>, field: &str) -> Result<SocketAddr, RequestError> {
    let text = value.ok_or_else(|| RequestError::Other(format!("probe reply without {field}")))?;
    text.parse()
        .map_err(|e| RequestError::Other(format!("probe reply has bad {field} {text:?}: {e}")))
}

/// Formats the echo line a server sends back (including the trailing newline).
pub fn echo_line(name: &str, peer: SocketAddr) -> String {
    format!("{name} {peer}\n")
}

/// Parses an echo line into (server name, peer address as seen by the server).
pub fn parse_echo_line(line: &str) -> Option<(String, SocketAddr)> {
    let (name, peer) = line.trim_end_matches(['\r', '\n']).rsplit_once(' ')?;
    Some((name.to_owned(), peer.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_line_round_trips() {
        let peer: SocketAddr = "198.19.1.10:40000".parse().unwrap();
        let line = echo_line("node1-pod1", peer);
        assert_eq!(parse_echo_line(&line), Some(("node1-pod1".into(), peer)));
        let peer6: SocketAddr = "[2001:db8:1:1::11]:40000".parse().unwrap();
        let line = echo_line("node1-pod1", peer6);
        assert_eq!(parse_echo_line(&line), Some(("node1-pod1".into(), peer6)));
        assert_eq!(parse_echo_line("garbage"), None);
    }

    #[test]
    fn probe_lines_round_trip() {
        let a: SocketAddr = "198.19.1.10:1".parse().unwrap();
        let b: SocketAddr = "198.19.2.10:2".parse().unwrap();
        let ok = ProbeLine::success("x", a, b);
        let json = serde_json::to_string(&ok).unwrap();
        assert_eq!(
            json,
            r#"{"ok":true,"backend":"x","seen_source":"198.19.1.10:1","from":"198.19.2.10:2"}"#
        );
        let back: ProbeLine = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back.into_result(),
            Ok(Reply {
                backend: "x".into(),
                seen_source: a,
                replied_from: b
            })
        );
        let fail = ProbeLine::failure(FailureKind::Refused, "ECONNREFUSED");
        let json = serde_json::to_string(&fail).unwrap();
        assert_eq!(
            json,
            r#"{"ok":false,"error":"refused","detail":"ECONNREFUSED"}"#
        );
        let back: ProbeLine = serde_json::from_str(&json).unwrap();
        assert_eq!(back.into_result(), Err(RequestError::Refused));
    }

    #[test]
    fn hold_lines_carry_their_time() {
        let a: SocketAddr = "198.19.1.10:1".parse().unwrap();
        let line = ProbeLine::success("x", a, a).at(std::time::Duration::from_millis(1500));
        let json = serde_json::to_string(&line).unwrap();
        assert!(json.ends_with(r#","at_ms":1500}"#), "{json}");
        let back: ProbeLine = serde_json::from_str(&json).unwrap();
        assert_eq!(back.at_ms, Some(1500));
        // Request lines have no time, and old readers ignore it.
        let plain: ProbeLine = serde_json::from_str(r#"{"ok":false,"error":"timeout"}"#).unwrap();
        assert_eq!(plain.at_ms, None);
    }

    #[test]
    fn proto_parses() {
        assert_eq!("TCP".parse::<Proto>(), Ok(Proto::Tcp));
        assert_eq!(Proto::Udp.to_string(), "udp");
        assert!("sctp".parse::<Proto>().is_err());
    }
}
