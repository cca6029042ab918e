//! SCTP over raw IP sockets (protocol 132), IPv4 and IPv6: the responder `serve --sctp` runs
//! and the INIT / INIT ACK exchange `request --proto sctp` makes. The kernel has no SCTP
//! stack, and while a raw socket takes the packets it sends no ICMP protocol unreachable (nor
//! ICMPv6 parameter problem) for them. The SCTP packet is the same in both families (its
//! CRC32c has no pseudo-header); only IPv4 raw sockets read the IP header with it.
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use switchyard_testbed::probe_protocol::{echo_line, parse_echo_line, FailureKind, ProbeLine};
use switchyard_testbed::sctp::{self, CHUNK_INIT, CHUNK_INIT_ACK, IPPROTO_SCTP};

use super::{from_sockaddr, to_sockaddr};

/// A raw socket of protocol SCTP, of one family.
struct RawSctp {
    fd: OwnedFd,
    ipv6: bool,
}

impl RawSctp {
    fn open(ipv6: bool) -> io::Result<Self> {
        let family = if ipv6 { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, IPPROTO_SCTP) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(RawSctp { fd, ipv6 })
    }

    /// Only packets from `ip` are received from now on, and ICMP errors about packets to it
    /// (a REJECT's port unreachable) fail the next receive.
    fn connect(&self, ip: IpAddr) -> io::Result<()> {
        // Port 0: a raw socket's "port" is its protocol, 0 meaning its own.
        let (sa, len) = to_sockaddr(SocketAddr::new(ip, 0));
        // SAFETY: sa is a valid socket address of the stated length.
        let rc = unsafe {
            libc::connect(
                self.fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_storage).cast(),
                len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: libc::suseconds_t::from(timeout.subsec_micros().max(1)),
        };
        // SAFETY: tv is a valid timeval of the stated length.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn send_to(&self, data: &[u8], ip: IpAddr) -> io::Result<()> {
        let (sa, len) = to_sockaddr(SocketAddr::new(ip, 0));
        // SAFETY: data and sa are valid for the stated lengths.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                0,
                (&sa as *const libc::sockaddr_storage).cast(),
                len,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One SCTP packet into `buf`, as (its source, the packet); `Ok(None)` for a datagram
    /// too short for its IPv4 header.
    fn recv<'b>(&self, buf: &'b mut [u8]) -> io::Result<Option<(IpAddr, &'b [u8])>> {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: buf is valid for writes of its length, from and len describe `from`.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_storage).cast(),
                &mut len,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let datagram = &buf[..n as usize];
        if self.ipv6 {
            return Ok(Some((from_sockaddr(&from)?.ip(), datagram)));
        }
        Ok(sctp::strip_ipv4(datagram).map(|(src, packet)| (IpAddr::V4(src), packet)))
    }
}

/// A random 32-bit value (std's per-process hash keys, mixed with the time): tags and ports
/// need to differ between attempts, not to be unpredictable.
fn random_u32() -> u32 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    (h.finish() >> 16) as u32
}

/// One of the responder's sockets, opened before readiness is announced.
pub struct Responder(RawSctp);

/// Opens the responder's sockets: IPv4, and IPv6 where the kernel has it.
pub fn bind() -> io::Result<Vec<Responder>> {
    let mut sockets = vec![Responder(RawSctp::open(false)?)];
    match RawSctp::open(true) {
        Ok(socket) => sockets.push(Responder(socket)),
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {}
        Err(e) => return Err(e),
    }
    Ok(sockets)
}

/// Answers every INIT to one of `ports` with an INIT ACK whose State Cookie is the echo line
/// (`name` and the source address and port the INIT came from). Returns only on an error.
pub fn serve(responder: &Responder, name: &str, ports: &[u16]) -> io::Error {
    let socket = &responder.0;
    let mut buf = [0u8; 2048];
    loop {
        let (src, packet) = match socket.recv(&mut buf) {
            Ok(Some(received)) => received,
            Ok(None) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return e,
        };
        let Some(init) = sctp::parse(packet) else {
            continue;
        };
        if init.chunk != CHUNK_INIT || !ports.contains(&init.dst_port) {
            continue;
        }
        let cookie = echo_line(name, SocketAddr::new(src, init.src_port));
        let ack = sctp::init_ack(&init, random_u32() | 1, cookie.as_bytes());
        if let Err(e) = socket.send_to(&ack, src) {
            eprintln!("swy-probe serve: sctp reply to {src}: {e}");
        }
    }
}

/// Maps a receive error: ICMP port unreachable (a REJECT) is a refusal; protocol unreachable
/// means nothing answers SCTP there (no responder), which is no refusal of the proxy's.
fn classify(stage: &str, e: &io::Error) -> ProbeLine {
    let kind = match e.raw_os_error() {
        Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EPERM) => {
            FailureKind::Refused
        }
        Some(libc::EAGAIN | libc::ETIMEDOUT) => FailureKind::Timeout,
        _ => FailureKind::Other,
    };
    ProbeLine::failure(kind, format!("{stage}: {e}"))
}

/// One INIT to `to` from a fresh socket and source port; the INIT ACK's cookie names the
/// backend and the source it saw.
pub fn attempt(to: SocketAddr, timeout: Duration) -> ProbeLine {
    // An IPv6 raw socket cannot send to a v4-mapped address; such a target is IPv4.
    let to = SocketAddr::new(to.ip().to_canonical(), to.port());
    let deadline = Instant::now() + timeout;
    let socket = match RawSctp::open(to.is_ipv6()) {
        Ok(s) => s,
        Err(e) => return classify("socket", &e),
    };
    if let Err(e) = socket.connect(to.ip()) {
        return classify("connect", &e);
    }
    let tag = random_u32() | 1;
    let src_port = 32768 + (random_u32() % 28000) as u16;
    if let Err(e) = socket.send_to(&sctp::init(src_port, to.port(), tag), to.ip()) {
        return classify("send", &e);
    }
    let mut buf = [0u8; 2048];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return ProbeLine::failure(FailureKind::Timeout, "no INIT ACK in time");
        }
        if let Err(e) = socket.set_read_timeout(remaining) {
            return classify("set_read_timeout", &e);
        }
        let (src, packet) = match socket.recv(&mut buf) {
            Ok(Some(received)) => received,
            Ok(None) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return classify("recv", &e),
        };
        let Some(ack) = sctp::parse(packet) else {
            continue;
        };
        if ack.chunk != CHUNK_INIT_ACK
            || ack.vtag != tag
            || ack.dst_port != src_port
            || ack.src_port != to.port()
        {
            continue;
        }
        let from = SocketAddr::new(src, ack.src_port);
        let text = String::from_utf8_lossy(ack.cookie.as_deref().unwrap_or_default()).into_owned();
        return match parse_echo_line(&text) {
            Some((backend, seen)) => ProbeLine::success(&backend, seen, from),
            None => ProbeLine::failure(FailureKind::Other, format!("unparsable cookie {text:?}")),
        };
    }
}
