//! Small parsers for the string and integer fields of Kubernetes objects.
//!
//! They follow Go's (and so the API server's and kube-proxy's) reading of the same text where
//! Rust's standard parsers differ, and they never panic.

use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use ipnet::IpNet;

use super::service_port::Protocol;

/// Parses an IP address the way kube-proxy does (`netutils.ParseIPSloppy`).
///
/// Two differences from `IpAddr::from_str` matter for objects stored by older API servers:
/// IPv4 octets with leading zeros (`198.018.000.001`) are read as decimal, and an IPv4-mapped
/// IPv6 address (`::ffff:198.18.0.1`) is IPv4 to Go, so it is returned as IPv4 here too.
pub(crate) fn parse_ip(text: &str) -> Option<IpAddr> {
    let ip = match IpAddr::from_str(text) {
        Ok(ip) => ip,
        Err(_) => IpAddr::V4(parse_ipv4_leading_zeros(text)?),
    };
    Some(match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    })
}

/// Dotted-quad IPv4 with decimal octets that may have leading zeros.
fn parse_ipv4_leading_zeros(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        // Go accepts at most 3 digits per octet; this also keeps u8 parsing from seeing signs.
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

/// Parses a CIDR such as `198.18.0.0/15`; host bits are cleared, as Go's `ParseCIDR` does.
pub(crate) fn parse_cidr(text: &str) -> Option<IpNet> {
    IpNet::from_str(text).ok().map(|net| net.trunc())
}

/// Name of an address's family, for warnings.
pub(crate) fn family_name(ip: &IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

/// Whether `c` would forge or garble a log line: control characters (newlines, escape
/// sequences) and the Unicode line separators and bidirectional overrides. The manifest
/// parser skips objects with such names; the same goes for names inside objects.
pub(crate) fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// A port number field (the API gives `i32`); 0 and anything above 65535 are invalid.
pub(crate) fn port_number(value: i32) -> Result<u16, String> {
    match u16::try_from(value) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("{value} is not a valid port number (1-65535)")),
    }
}

/// A protocol field; missing means TCP, as the API server defaults it.
pub(crate) fn protocol(value: Option<&str>) -> Result<Protocol, String> {
    match value {
        None | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Ok(Protocol::Sctp),
        Some(other) => Err(format!(
            "unknown protocol {other:?} (expected TCP, UDP or SCTP)"
        )),
    }
}
