//! `swy-probe`: the echo server, request client and held-flow client that testbed tests
//! run inside the namespaces. It is started many times per test, so it stays small: std
//! sockets, one thread per listening socket (plus one per open TCP connection), no async
//! runtime.

use std::io::{self, Read, Write};
use std::net::{
    Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[path = "swy-probe/sctp_raw.rs"]
mod sctp_raw;
use switchyard_testbed::probe_protocol::{
    echo_line, parse_echo_line, FailureKind, ProbeLine, Proto, READY_LINE,
};

/// Echo server and request client for the Switchyard testbed.
#[derive(Debug, Parser)]
#[command(name = "swy-probe", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Answer every UDP datagram with "NAME PEER_IP:PEER_PORT"; TCP connections get that
    /// line at once and again for every line the client sends, until the client closes.
    Serve {
        /// Name to answer with (the pod name).
        #[arg(long)]
        name: String,
        /// TCP port to listen on (repeatable).
        #[arg(long = "tcp")]
        tcp: Vec<u16>,
        /// UDP port to listen on (repeatable).
        #[arg(long = "udp")]
        udp: Vec<u16>,
        /// SCTP port to answer INITs on (repeatable), over a raw socket.
        #[arg(long = "sctp")]
        sctp: Vec<u16>,
    },
    /// Make N independent requests and print one JSON line per attempt.
    Request {
        /// tcp, udp or sctp (an INIT, answered by an INIT ACK).
        #[arg(long)]
        proto: Proto,
        /// Destination IP:PORT.
        #[arg(long)]
        to: SocketAddr,
        /// Number of attempts, each on a new socket.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Per-attempt timeout in milliseconds.
        #[arg(long = "timeout-ms", default_value_t = 1000)]
        timeout_ms: u64,
        /// UDP: use sendto/recvfrom on an unconnected socket.
        #[arg(long)]
        unconnected: bool,
        /// IPv6 TCP/UDP: send every packet behind a destination options extension header.
        #[arg(long = "ipv6-dest-options")]
        dest_options: bool,
        /// UDP: pad each request to this many bytes (at most 65507); the server pads its
        /// answer to the same length. Longer than the path's MTU, both are fragmented.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(..=65507))]
        size: u16,
    },
    /// Hold one flow: ONE socket (a TCP connection or a connected UDP socket) for the
    /// whole run, one round trip per interval, one JSON line per round trip (flushed, with
    /// "at_ms"). Runs until killed or --count round trips.
    Hold {
        /// tcp or udp.
        #[arg(long)]
        proto: Proto,
        /// Destination IP:PORT.
        #[arg(long)]
        to: SocketAddr,
        /// Time between the starts of two round trips, in milliseconds.
        #[arg(long = "interval-ms")]
        interval_ms: u64,
        /// Stop after this many round trips.
        #[arg(long)]
        count: Option<usize>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Serve {
            name,
            tcp,
            udp,
            sctp,
        } => serve(&name, &tcp, &udp, &sctp),
        Cmd::Request {
            proto,
            to,
            count,
            timeout_ms,
            unconnected,
            dest_options,
            size,
        } => {
            // A zero timeout would make connect_timeout reject its argument.
            let timeout = Duration::from_millis(timeout_ms.max(1));
            let options = Options {
                unconnected,
                dest_options,
                size: usize::from(size),
            };
            request(proto, to, count, timeout, options);
            ExitCode::SUCCESS
        }
        Cmd::Hold {
            proto,
            to,
            interval_ms,
            count,
        } => hold(proto, to, Duration::from_millis(interval_ms.max(1)), count),
    }
}

// ---------------------------------------------------------------------------------
// serve

fn serve(name: &str, tcp_ports: &[u16], udp_ports: &[u16], sctp_ports: &[u16]) -> ExitCode {
    if tcp_ports.is_empty() && udp_ports.is_empty() && sctp_ports.is_empty() {
        eprintln!("swy-probe serve: give at least one --tcp, --udp or --sctp port");
        return ExitCode::from(2);
    }
    // Bind everything before announcing readiness, so a caller that saw "ready" can
    // connect at once. Every port is served on both families by two sockets, an IPv4 one
    // and an IPv6-only one: IPv4 clients keep talking to a plain AF_INET socket (a
    // dual-stack socket would see them as v4-mapped addresses and go through the IPv6
    // socket hooks of an eBPF proxy).
    let mut listeners = Vec::new();
    for &port in tcp_ports {
        let v4 = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port));
        let v6 = bind_v6only(libc::SOCK_STREAM, port).map(|fd| fd.map(TcpListener::from));
        match (v4, v6) {
            (Ok(l4), Ok(l6)) => listeners.extend(std::iter::once(l4).chain(l6)),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("swy-probe serve: binding tcp port {port}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut udp_sockets = Vec::new();
    for &port in udp_ports {
        match bind_udp_with_pktinfo(port) {
            Ok(s) => udp_sockets.extend(s),
            Err(e) => {
                eprintln!("swy-probe serve: binding udp port {port}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }

    let responders = if sctp_ports.is_empty() {
        Vec::new()
    } else {
        match sctp_raw::bind() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("swy-probe serve: opening the raw SCTP sockets: {e}");
                return ExitCode::FAILURE;
            }
        }
    };

    let mut threads = Vec::new();
    for responder in responders {
        let (name, ports) = (name.to_owned(), sctp_ports.to_vec());
        threads.push(std::thread::spawn(move || {
            let e = sctp_raw::serve(&responder, &name, &ports);
            eprintln!("swy-probe serve: sctp: {e}");
        }));
    }
    for listener in listeners {
        let name = name.to_owned();
        threads.push(std::thread::spawn(move || serve_tcp(&listener, &name)));
    }
    for socket in udp_sockets {
        let name = name.to_owned();
        threads.push(std::thread::spawn(move || serve_udp(&socket, &name)));
    }

    let mut stdout = io::stdout().lock();
    if writeln!(stdout, "{READY_LINE}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        eprintln!("swy-probe serve: cannot announce readiness on stdout");
    }
    drop(stdout);
    for t in threads {
        // The loops never return; a join error means a thread panicked.
        if t.join().is_err() {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// TCP connections served at once. The tests hold few; past this a connection gets its
/// echo line and is closed, so a flood of one-shot requests cannot exhaust threads.
const MAX_OPEN_CONNECTIONS: usize = 256;

fn serve_tcp(listener: &TcpListener, name: &str) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                let line = echo_line(name, peer);
                if open.fetch_add(1, Ordering::SeqCst) >= MAX_OPEN_CONNECTIONS {
                    open.fetch_sub(1, Ordering::SeqCst);
                    greet(&mut stream, peer, &line);
                    continue; // dropped: closed after one line
                }
                let open_in = Arc::clone(&open);
                let spawned = std::thread::Builder::new()
                    .name(format!("conn {peer}"))
                    .spawn(move || {
                        serve_connection(stream, peer, &line);
                        open_in.fetch_sub(1, Ordering::SeqCst);
                    });
                if let Err(e) = spawned {
                    // The closure (and with it the connection) is gone.
                    open.fetch_sub(1, Ordering::SeqCst);
                    eprintln!("swy-probe serve: no thread for {peer}: {e}");
                }
            }
            Err(e) => {
                eprintln!("swy-probe serve: accept: {e}");
                // Avoid spinning on persistent errors such as EMFILE.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Writes the echo line; false if the connection is unusable.
fn greet(stream: &mut TcpStream, peer: SocketAddr, line: &str) -> bool {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    match stream.write_all(line.as_bytes()) {
        Ok(()) => true,
        Err(e) => {
            // A one-shot client may well be gone already (it has its line or gave up).
            if !matches!(
                e.raw_os_error(),
                Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN)
            ) {
                eprintln!("swy-probe serve: writing to {peer}: {e}");
            }
            false
        }
    }
}

/// One connection: the echo line now, then one per line received, until the client
/// closes (or resets) the connection.
fn serve_connection(mut stream: TcpStream, peer: SocketAddr, line: &str) {
    if !greet(&mut stream, peer, line) {
        return;
    }
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                // Lines may arrive split or batched: answer each newline once.
                for _ in buf[..n].iter().filter(|b| **b == b'\n') {
                    if !greet(&mut stream, peer, line) {
                        return;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Binds an IPv6-only socket of `kind` (`SOCK_STREAM` listens) to `[::]:port`; `None`
/// where the kernel has no IPv6 at all.
fn bind_v6only(kind: libc::c_int, port: u16) -> io::Result<Option<OwnedFd>> {
    // SAFETY: plain socket(2); the result is checked and owned at once.
    let raw = unsafe { libc::socket(libc::AF_INET6, kind | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAFNOSUPPORT) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_int_option(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)?;
    if kind == libc::SOCK_STREAM {
        // As std's TcpListener::bind does, so restarts don't wait for TIME_WAIT.
        set_int_option(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR)?;
    }
    // SAFETY: all-zero is a valid sockaddr_in6 (the unspecified address).
    let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    addr.sin6_port = port.to_be();
    // SAFETY: pointer and length describe `addr`.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        // A namespace with IPv6 switched off has no usable IPv6 address.
        return match e.raw_os_error() {
            Some(libc::EADDRNOTAVAIL) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: listen(2) on our own bound socket.
    if kind == libc::SOCK_STREAM && unsafe { libc::listen(fd.as_raw_fd(), 1024) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Some(fd))
}

/// Sets an integer socket option to 1.
fn set_int_option(fd: &impl AsRawFd, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    let on: libc::c_int = 1;
    set_option(fd, level, name, &on.to_ne_bytes())
}

/// Sets a socket option to the bytes of `value`.
fn set_option(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &[u8],
) -> io::Result<()> {
    // SAFETY: valid fd and a pointer/length pair describing `value`.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Binds the UDP sockets of one port (IPv4, and IPv6-only where the kernel has IPv6) with
/// the packet-info option on, so replies can be sent from exactly the address the request
/// was sent to (not whatever the route lookup prefers).
fn bind_udp_with_pktinfo(port: u16) -> io::Result<Vec<UdpSocket>> {
    let v4 = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?;
    set_int_option(&v4, libc::IPPROTO_IP, libc::IP_PKTINFO)?;
    let mut sockets = vec![v4];
    if let Some(fd) = bind_v6only(libc::SOCK_DGRAM, port)? {
        set_int_option(&fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)?;
        sockets.push(UdpSocket::from(fd));
    }
    Ok(sockets)
}

fn serve_udp(socket: &UdpSocket, name: &str) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match recv_with_local(socket, &mut buf) {
            Ok((len, peer, local)) => {
                let reply = padded(echo_line(name, peer).into_bytes(), len);
                if let Err(e) = send_from(socket, &reply, peer, local) {
                    eprintln!("swy-probe serve: replying to {peer}: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("swy-probe serve: udp recv: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// 8-byte aligned buffer for control messages.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

/// The local address a datagram was sent to, from its packet-info control message.
#[derive(Clone, Copy)]
enum LocalAddr {
    V4(libc::in_addr),
    V6(libc::in6_addr),
}

/// A socket address in the C layout, for recvmsg/sendmsg.
fn to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage; the family-specific view written
    // below fits inside it.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The Rust view of a socket address the kernel filled in.
fn from_sockaddr(storage: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            Ok(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        family => Err(io::Error::other(format!(
            "datagram from address family {family}"
        ))),
    }
}

/// Receives one datagram into `buf`: its length, sender and the local address it was sent to.
fn recv_with_local(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<LocalAddr>)> {
    // SAFETY: all-zero is a valid sockaddr_storage / msghdr.
    let mut peer: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = CmsgBuf([0; 64]);
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut peer as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len();
    // SAFETY: msg points at live buffers of the stated sizes.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let peer = from_sockaddr(&peer)?;
    let mut local = None;
    // SAFETY: walking the control buffer the kernel just filled, with libc's macros.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let (level, kind) = ((*cmsg).cmsg_level, (*cmsg).cmsg_type);
            if level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO {
                let info: libc::in_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                // ipi_spec_dst is the local address the datagram was addressed to (or
                // a suitable one for broadcasts): the right source for the reply.
                local = Some(LocalAddr::V4(info.ipi_spec_dst));
            } else if level == libc::IPPROTO_IPV6 && kind == libc::IPV6_PKTINFO {
                let info: libc::in6_pktinfo =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                local = Some(LocalAddr::V6(info.ipi6_addr));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, peer, local))
}

/// Sends `data` to `peer` with source address `local` when known, falling back to a
/// plain send if the kernel refuses that source (e.g. a non-local address).
fn send_from(
    socket: &UdpSocket,
    data: &[u8],
    peer: SocketAddr,
    local: Option<LocalAddr>,
) -> io::Result<()> {
    if let Some(local) = local {
        match send_with_pktinfo(socket, data, peer, local) {
            Ok(()) => return Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL) | Some(libc::EADDRNOTAVAIL)
                ) => {}
            Err(e) => return Err(e),
        }
    }
    socket.send_to(data, peer).map(|_| ())
}

fn send_with_pktinfo(
    socket: &UdpSocket,
    data: &[u8],
    peer: SocketAddr,
    local: LocalAddr,
) -> io::Result<()> {
    let (mut dst, dst_len) = to_sockaddr(peer);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut control = CmsgBuf([0; 64]);
    // SAFETY: a zeroed msghdr is valid; fields are filled in below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut dst as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = dst_len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    // SAFETY: the control buffer (64 bytes) is larger than CMSG_SPACE of either pktinfo.
    unsafe {
        match local {
            LocalAddr::V4(addr) => {
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: addr,
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                let info_len = std::mem::size_of::<libc::in_pktinfo>() as libc::c_uint;
                msg.msg_controllen = libc::CMSG_SPACE(info_len) as _;
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::IPPROTO_IP;
                (*cmsg).cmsg_type = libc::IP_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(info_len) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), info);
            }
            LocalAddr::V6(addr) => {
                let info = libc::in6_pktinfo {
                    ipi6_addr: addr,
                    ipi6_ifindex: 0,
                };
                let info_len = std::mem::size_of::<libc::in6_pktinfo>() as libc::c_uint;
                msg.msg_controllen = libc::CMSG_SPACE(info_len) as _;
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(info_len) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), info);
            }
        }
    }
    // SAFETY: msg points at live buffers of the stated sizes.
    let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// request

/// How `request` sends.
#[derive(Clone, Copy, Debug)]
struct Options {
    /// UDP: `sendto`/`recvfrom` on an unconnected socket.
    unconnected: bool,
    /// IPv6 TCP/UDP: [`DEST_OPTIONS`] on every packet.
    dest_options: bool,
    /// UDP: the datagram's length (at least the plain request's).
    size: usize,
}

/// The largest UDP datagram (over IPv4; IPv6 jumbograms are not sent).
const MAX_DATAGRAM: usize = 65_507;

/// `line` followed by newlines up to `len` bytes: the echo line stays parsable (trailing
/// newlines are trimmed) and a long request gets an answer as long, fragmented alike.
fn padded(mut line: Vec<u8>, len: usize) -> Vec<u8> {
    if line.len() < len {
        line.resize(len, b'\n');
    }
    line
}

/// The destination options header `--ipv6-dest-options` puts in front of TCP/UDP: 8 bytes,
/// one PadN option (the kernel fills in the next header).
const DEST_OPTIONS: [u8; 8] = [0, 0, 1, 4, 0, 0, 0, 0];

/// Makes the IPv6 socket send [`DEST_OPTIONS`] on every packet (needs CAP_NET_RAW).
fn set_dest_options(fd: &impl AsRawFd) -> io::Result<()> {
    set_option(fd, libc::IPPROTO_IPV6, libc::IPV6_DSTOPTS, &DEST_OPTIONS)
}

fn request(proto: Proto, to: SocketAddr, count: usize, timeout: Duration, options: Options) {
    let mut stdout = io::stdout().lock();
    for _ in 0..count {
        let line = match proto {
            Proto::Tcp => tcp_attempt(to, timeout, options.dest_options),
            Proto::Udp => udp_attempt(to, timeout, options),
            Proto::Sctp => sctp_raw::attempt(to, timeout),
        };
        let json = serde_json::to_string(&line).unwrap_or_else(|e| {
            format!(r#"{{"ok":false,"error":"other","detail":"serializing result: {e}"}}"#)
        });
        // Flush per line so a caller that kills us still gets the finished attempts.
        if writeln!(stdout, "{json}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return;
        }
    }
}

/// Maps a socket error to the wire categories.
fn classify(stage: &str, e: &io::Error) -> ProbeLine {
    let kind = match e.raw_os_error() {
        // RST / ICMP port unreachable, a cgroup socket program's verdict, or ICMP
        // host/net unreachable: all active rejections.
        Some(
            libc::ECONNREFUSED
            | libc::EPERM
            | libc::EACCES
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH,
        ) => FailureKind::Refused,
        Some(libc::ETIMEDOUT | libc::EAGAIN) => FailureKind::Timeout,
        _ if matches!(
            e.kind(),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
        ) =>
        {
            FailureKind::Timeout
        }
        _ => FailureKind::Other,
    };
    ProbeLine::failure(kind, format!("{stage}: {e}"))
}

fn parse_reply(data: &[u8], from: SocketAddr) -> ProbeLine {
    let text = String::from_utf8_lossy(data);
    match parse_echo_line(&text) {
        Some((backend, seen)) => ProbeLine::success(&backend, seen, from),
        None => ProbeLine::failure(FailureKind::Other, format!("unparsable reply {text:?}")),
    }
}

/// [`parse_reply`] of an answer that must be `size` bytes long (the server pads it as the
/// request), so that a long answer is known to have arrived whole.
fn sized_reply(data: &[u8], from: SocketAddr, size: usize) -> ProbeLine {
    if data.len() < size {
        return ProbeLine::failure(
            FailureKind::Other,
            format!("an answer of {} bytes to a request of {size}", data.len()),
        );
    }
    parse_reply(data, from)
}

fn tcp_attempt(to: SocketAddr, timeout: Duration, dest_options: bool) -> ProbeLine {
    let deadline = Instant::now() + timeout;
    let connected = if dest_options {
        connect_with_dest_options(to, timeout)
    } else {
        TcpStream::connect_timeout(&to, timeout)
    };
    let mut stream = match connected {
        Ok(s) => s,
        Err(e) => return classify("connect", &e),
    };
    let from = stream.peer_addr().unwrap_or(to);
    let mut data = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return ProbeLine::failure(FailureKind::Timeout, "read: no complete reply in time");
        }
        if let Err(e) = stream.set_read_timeout(Some(remaining)) {
            return classify("set_read_timeout", &e);
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                data.extend_from_slice(&buf[..n]);
                if data.contains(&b'\n') {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return classify("read", &e),
        }
    }
    if data.is_empty() {
        return ProbeLine::failure(FailureKind::Other, "connection closed without a reply");
    }
    parse_reply(&data, from)
}

/// A TCP connection whose every segment, the SYN first, carries [`DEST_OPTIONS`].
fn connect_with_dest_options(to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    set_dest_options(&socket)?;
    socket.connect_timeout(&to.into(), timeout)?;
    Ok(socket.into())
}

fn udp_attempt(to: SocketAddr, timeout: Duration, options: Options) -> ProbeLine {
    let bind: SocketAddr = if to.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => return classify("bind", &e),
    };
    if let Err(e) = socket.set_read_timeout(Some(timeout)) {
        return classify("set_read_timeout", &e);
    }
    if options.dest_options {
        if let Err(e) = set_dest_options(&socket) {
            return classify("setsockopt IPV6_DSTOPTS", &e);
        }
    }
    let payload = padded(b"swy-probe\n".to_vec(), options.size);
    let payload = payload.as_slice();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    if options.unconnected {
        if let Err(e) = socket.send_to(payload, to) {
            return classify("sendto", &e);
        }
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => sized_reply(&buf[..n], from, options.size),
            Err(e) => classify("recvfrom", &e),
        }
    } else {
        if let Err(e) = socket.connect(to) {
            return classify("connect", &e);
        }
        if let Err(e) = socket.send(payload) {
            return classify("send", &e);
        }
        let from = socket.peer_addr().unwrap_or(to);
        match socket.recv(&mut buf) {
            Ok(n) => sized_reply(&buf[..n], from, options.size),
            Err(e) => classify("recv", &e),
        }
    }
}

// ---------------------------------------------------------------------------------
// hold

/// What a held flow sends per round trip.
const HOLD_PAYLOAD: &[u8] = b"swy-probe\n";

fn hold(proto: Proto, to: SocketAddr, interval: Duration, count: Option<usize>) -> ExitCode {
    let started = Instant::now();
    // Round trips wait for their reply this long: an interval, but at least a second, so
    // a slow answer on a loaded machine is not mistaken for a lost one.
    let timeout = interval.max(Duration::from_secs(1));
    let mut stdout = io::stdout().lock();
    let mut emit = |line: ProbeLine| -> bool {
        let json = serde_json::to_string(&line.at(started.elapsed())).unwrap_or_else(|e| {
            format!(r#"{{"ok":false,"error":"other","detail":"serializing result: {e}"}}"#)
        });
        // Flushed per line: the caller watches the flow live.
        writeln!(stdout, "{json}")
            .and_then(|()| stdout.flush())
            .is_ok()
    };
    let opened = match proto {
        Proto::Tcp => TcpFlow::open(to, timeout).map(Flow::Tcp),
        Proto::Udp => UdpFlow::open(to).map(Flow::Udp),
        Proto::Sctp => Err(ProbeLine::failure(
            FailureKind::Other,
            "hold: sctp flows are not supported (the probe speaks INIT / INIT ACK only)",
        )),
    };
    let mut flow = match opened {
        Ok(flow) => flow,
        Err(line) => {
            // No socket, no flow: report why once and stop.
            emit(line);
            return ExitCode::FAILURE;
        }
    };
    let mut next = Instant::now();
    let mut done = 0usize;
    while count.is_none_or(|c| done < c) {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        let line = match &mut flow {
            Flow::Tcp(f) => f.round_trip(timeout),
            Flow::Udp(f) => f.round_trip(timeout),
        };
        if !emit(line) {
            return ExitCode::FAILURE;
        }
        done += 1;
        // Fixed rate; a round trip that overran an interval delays the next one instead
        // of causing a burst.
        next = (next + interval).max(Instant::now());
    }
    ExitCode::SUCCESS
}

enum Flow {
    Tcp(TcpFlow),
    Udp(UdpFlow),
}

/// One TCP connection, a line out and a line back per round trip.
struct TcpFlow {
    stream: TcpStream,
    from: SocketAddr,
    /// Bytes read but not yet consumed as a reply line.
    pending: Vec<u8>,
    /// Replies still due for round trips that timed out: discarded when they arrive, so
    /// a late reply is never taken for the current one.
    owed: usize,
    /// Why the connection is unusable, once it is.
    dead: Option<String>,
}

impl TcpFlow {
    fn open(to: SocketAddr, timeout: Duration) -> Result<Self, ProbeLine> {
        let stream =
            TcpStream::connect_timeout(&to, timeout).map_err(|e| classify("connect", &e))?;
        let _ = stream.set_nodelay(true);
        let from = stream.peer_addr().unwrap_or(to);
        Ok(TcpFlow {
            stream,
            from,
            pending: Vec::new(),
            owed: 1, // the greeting the server sends on accept
            dead: None,
        })
    }

    fn round_trip(&mut self, timeout: Duration) -> ProbeLine {
        if let Some(why) = &self.dead {
            return ProbeLine::failure(FailureKind::Other, format!("connection gone: {why}"));
        }
        let deadline = Instant::now() + timeout;
        if let Err(e) = self.stream.write_all(HOLD_PAYLOAD) {
            self.dead = Some(format!("write: {e}"));
            return classify("write", &e);
        }
        let mut buf = [0u8; 1024];
        loop {
            while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                if self.owed > 0 {
                    self.owed -= 1;
                    continue;
                }
                return parse_reply(&line, self.from);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                self.owed += 1;
                return ProbeLine::failure(FailureKind::Timeout, "read: no reply in time");
            }
            if let Err(e) = self.stream.set_read_timeout(Some(remaining)) {
                return classify("set_read_timeout", &e);
            }
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.dead = Some("closed by the peer".into());
                    return ProbeLine::failure(FailureKind::Other, "connection closed by the peer");
                }
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.owed += 1;
                    return classify("read", &e);
                }
                Err(e) => {
                    self.dead = Some(format!("read: {e}"));
                    return classify("read", &e);
                }
            }
        }
    }
}

/// One connected UDP socket, a datagram out and one back per round trip.
struct UdpFlow {
    socket: UdpSocket,
    to: SocketAddr,
    from: SocketAddr,
    /// Cleared when the kernel aborted the socket (ECONNABORTED: ebpf mode destroys
    /// connected UDP sockets whose backend went away) or disconnected it; the next round trip
    /// connects again first, as a resolver does on such an error.
    connected: bool,
}

/// Whether `e` says the socket was aborted or lost its peer.
fn lost_peer(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EDESTADDRREQ | libc::ENOTCONN)
    )
}

impl UdpFlow {
    fn open(to: SocketAddr) -> Result<Self, ProbeLine> {
        let bind: SocketAddr = if to.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(bind).map_err(|e| classify("bind", &e))?;
        socket.connect(to).map_err(|e| classify("connect", &e))?;
        let from = socket.peer_addr().unwrap_or(to);
        Ok(UdpFlow {
            socket,
            to,
            from,
            connected: true,
        })
    }

    fn round_trip(&mut self, timeout: Duration) -> ProbeLine {
        let mut buf = [0u8; 2048];
        if !self.connected {
            // Same socket, same local port: only the peer is chosen again.
            if let Err(e) = self.socket.connect(self.to) {
                return classify("reconnect", &e);
            }
            self.from = self.socket.peer_addr().unwrap_or(self.to);
            self.connected = true;
        }
        // Replies that came after their round trip timed out (and errors queued meanwhile)
        // belong to no one now.
        if self.socket.set_nonblocking(true).is_ok() {
            // Bounded: each queued datagram or error is consumed by one call.
            for _ in 0..64 {
                match self.socket.recv(&mut buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if lost_peer(&e) => {
                        self.connected = false;
                        let _ = self.socket.set_nonblocking(false);
                        return classify("recv", &e);
                    }
                    _ => {}
                }
            }
            if let Err(e) = self.socket.set_nonblocking(false) {
                return classify("set_nonblocking", &e);
            }
        }
        if let Err(e) = self.socket.set_read_timeout(Some(timeout)) {
            return classify("set_read_timeout", &e);
        }
        if let Err(e) = self.socket.send(HOLD_PAYLOAD) {
            self.connected &= !lost_peer(&e);
            return classify("send", &e);
        }
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => return parse_reply(&buf[..n], self.from),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.connected &= !lost_peer(&e);
                    return classify("recv", &e);
                }
            }
        }
    }
}
