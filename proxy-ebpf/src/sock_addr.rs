//! Socket-level translation (cgroup v2 sock_addr hooks): the destination is rewritten when a
//! socket connects (TCP, connected UDP) or sends (unconnected UDP), and rewritten back when
//! the application asks who it talks to, so east-west flows pay no per-packet NAT cost and
//! applications only ever see the service address.
//!
//! IPv6 sockets pass the `*6` hooks. A dual-stack socket reaching an IPv4 service writes it
//! as a v4-mapped address (`::ffff:a.b.c.d`): the kernel then talks IPv4, but only the IPv6
//! hook sees the connect (and the reply's address, in the same form), so those addresses are
//! translated with the IPv4 maps and stay v4-mapped. (Unconnected UDP to a v4-mapped address
//! passes sendmsg4 instead: the kernel hands that one a plain IPv4 address.)
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext,
};
use aya_log_ebpf::debug;
use switchyard_common::{
    Backend, Backend6, ServiceKey, ServiceKey6, SockRevKey, SockRevKey6, SockRevValue,
    SockRevValue6, PROTO_TCP, PROTO_UDP, SCOPE_SOCKET, SERVICE_FLAG_AFFINITY,
};

use crate::{
    lb::{self, Family, V4, V6},
    maps::{SERVICES, SERVICES6, SOCK_REVNAT, SOCK_REVNAT6},
};

/// Return value that lets the syscall proceed.
const ALLOW: i32 = 1;
/// Return value that fails the syscall with EPERM: a fast failure for services without endpoints.
const REJECT: i32 = 0;

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
/// SCTP sockets are SOCK_STREAM or SOCK_SEQPACKET; they are left to netfilter.
const IPPROTO_SCTP: u32 = 132;

/// The third 32-bit word of a v4-mapped IPv6 address (`::ffff:0:0/96`), as it lies in memory.
const V4_MAPPED_WORD: u32 = 0x0000_ffff_u32.to_be();

/// cgroup/connect4: TCP connect() and connected UDP to a service frontend go to one backend.
#[cgroup_sock_addr(connect4)]
pub fn swy_connect4(ctx: SockAddrContext) -> i32 {
    translate4(&ctx)
}

/// cgroup/sendmsg4: each unconnected UDP datagram to a service frontend goes to one backend.
#[cgroup_sock_addr(sendmsg4)]
pub fn swy_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate4(&ctx)
}

/// cgroup/recvmsg4: a reply from a backend is shown as coming from the service.
#[cgroup_sock_addr(recvmsg4)]
pub fn swy_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse4(&ctx)
}

/// cgroup/getpeername4: a translated socket's peer is the service.
#[cgroup_sock_addr(getpeername4)]
pub fn swy_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse4(&ctx)
}

/// cgroup/connect6: as connect4, for IPv6 sockets (IPv6 and v4-mapped destinations).
#[cgroup_sock_addr(connect6)]
pub fn swy_connect6(ctx: SockAddrContext) -> i32 {
    translate6(&ctx)
}

/// cgroup/sendmsg6: as sendmsg4, for IPv6 sockets.
#[cgroup_sock_addr(sendmsg6)]
pub fn swy_sendmsg6(ctx: SockAddrContext) -> i32 {
    translate6(&ctx)
}

/// cgroup/recvmsg6: as recvmsg4, for IPv6 sockets.
#[cgroup_sock_addr(recvmsg6)]
pub fn swy_recvmsg6(ctx: SockAddrContext) -> i32 {
    reverse6(&ctx)
}

/// cgroup/getpeername6: as getpeername4, for IPv6 sockets. (Named so that the kernel's
/// 15-byte program name tells it from getpeername4.)
#[cgroup_sock_addr(getpeername6)]
pub fn swy_getpeer6(ctx: SockAddrContext) -> i32 {
    reverse6(&ctx)
}

// The context only wraps the kernel's pointer; writing through it is how these hooks answer,
// and the helpers that read the same context never see a Rust reference to it.
#[allow(clippy::mut_from_ref)]
fn sock_addr(ctx: &SockAddrContext) -> &mut bpf_sock_addr {
    // SAFETY: the kernel hands these hooks a valid bpf_sock_addr for the duration of the call.
    unsafe { &mut *ctx.sock_addr }
}

/// What to do with a destination.
enum Choice<B> {
    /// Not a service frontend: leave it.
    Pass,
    /// A frontend without usable endpoint (or being rewritten): fail the syscall.
    Refuse,
    /// Send it to this backend.
    To(B),
}

/// The IP protocol of a socket, or `None` for what is not translated. An SCTP socket must not
/// be taken for a TCP one: ebpf mode serves SCTP ports with iptables rules (its SCTP
/// fallback), which see the socket's packets untranslated.
#[inline(always)]
fn protocol(sa: &bpf_sock_addr) -> Option<u8> {
    if sa.protocol == IPPROTO_SCTP {
        return None;
    }
    match sa.type_ {
        SOCK_STREAM => Some(PROTO_TCP),
        SOCK_DGRAM => Some(PROTO_UDP),
        _ => None,
    }
}

/// Picks a backend of a found service entry for this socket's network namespace and
/// remembers it for affinity; `None` when the entry counts no (present) backend.
#[inline(always)]
fn choose<F: Family>(
    ctx: &SockAddrContext,
    service: &switchyard_common::ServiceValue,
) -> Option<F::Backend> {
    if service.count == 0 {
        return None;
    }
    // SAFETY: helper on the hook's own context.
    let client = F::socket_client(unsafe { bpf_get_netns_cookie(ctx.as_ptr()) });
    // A service entry whose slot is missing is being rewritten; refusing beats a black hole.
    let (slot, backend) = lb::pick::<F>(service, client)?;
    if service.flags & SERVICE_FLAG_AFFINITY != 0 {
        // SAFETY: helper without arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        lb::remember::<F>(service, client, slot, backend, now);
    }
    Some(backend)
}

/// The IPv4 translation of `addr:port` (network order), recorded for the reverse hooks.
#[inline(always)]
fn service4(ctx: &SockAddrContext, addr: u32, port: u16, proto: u8) -> Choice<Backend> {
    let key = ServiceKey {
        addr,
        port,
        proto,
        scope: SCOPE_SOCKET,
    };
    // SAFETY: the value is copied out at once.
    let Some(service) = (unsafe { SERVICES.get(key) }).copied() else {
        return Choice::Pass;
    };
    let Some(backend) = choose::<V4>(ctx, &service) else {
        debug!(
            ctx,
            "socket: refused {:i}:{}, no usable endpoint",
            u32::from_be(addr),
            u16::from_be(port)
        );
        return Choice::Refuse;
    };
    // SAFETY: helper on the hook's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let rev_key = SockRevKey {
        cookie,
        addr: backend.addr,
        port: backend.port,
        pad: 0,
    };
    let rev = SockRevValue { addr, port, pad: 0 };
    // Best effort: without it replies still arrive, only from the backend's address.
    let _ = SOCK_REVNAT.insert(rev_key, rev, 0);
    Choice::To(backend)
}

/// The IPv6 translation of `addr:port` (network order), recorded for the reverse hooks.
#[inline(always)]
fn service6(ctx: &SockAddrContext, addr: [u32; 4], port: u16, proto: u8) -> Choice<Backend6> {
    let key = ServiceKey6 {
        addr,
        port,
        proto,
        scope: SCOPE_SOCKET,
    };
    // SAFETY: the value is copied out at once.
    let Some(service) = (unsafe { SERVICES6.get(key) }).copied() else {
        return Choice::Pass;
    };
    let Some(backend) = choose::<V6>(ctx, &service) else {
        debug!(
            ctx,
            "socket: refused IPv6 service port {}, no usable endpoint",
            u16::from_be(port)
        );
        return Choice::Refuse;
    };
    // SAFETY: helper on the hook's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let rev_key = SockRevKey6 {
        cookie,
        addr: backend.addr,
        port: backend.port,
        pad: 0,
        pad2: 0,
    };
    let rev = SockRevValue6 { addr, port, pad: 0 };
    // Best effort: without it replies still arrive, only from the backend's address.
    let _ = SOCK_REVNAT6.insert(rev_key, rev, 0);
    Choice::To(backend)
}

fn translate4(ctx: &SockAddrContext) -> i32 {
    let sa = sock_addr(ctx);
    let Some(proto) = protocol(sa) else {
        return ALLOW;
    };
    // user_port holds the port in network order in its low 16 bits.
    match service4(ctx, sa.user_ip4, sa.user_port as u16, proto) {
        Choice::Pass => ALLOW,
        Choice::Refuse => REJECT,
        Choice::To(backend) => {
            sa.user_ip4 = backend.addr;
            sa.user_port = backend.port as u32;
            ALLOW
        }
    }
}

fn translate6(ctx: &SockAddrContext) -> i32 {
    let sa = sock_addr(ctx);
    let Some(proto) = protocol(sa) else {
        return ALLOW;
    };
    let mut ip = user_ip6(sa);
    let port = sa.user_port as u16;
    if let Some(addr) = v4_mapped(&ip) {
        return match service4(ctx, addr, port, proto) {
            Choice::Pass => ALLOW,
            Choice::Refuse => REJECT,
            Choice::To(backend) => {
                ip[3] = backend.addr;
                set_user_ip6(sa, ip, backend.port);
                ALLOW
            }
        };
    }
    match service6(ctx, ip, port, proto) {
        Choice::Pass => ALLOW,
        Choice::Refuse => REJECT,
        Choice::To(backend) => {
            set_user_ip6(sa, backend.addr, backend.port);
            ALLOW
        }
    }
}

fn reverse4(ctx: &SockAddrContext) -> i32 {
    let sa = sock_addr(ctx);
    // SAFETY: helper on the hook's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockRevKey {
        cookie,
        addr: sa.user_ip4,
        port: sa.user_port as u16,
        pad: 0,
    };
    // SAFETY: copied out at once.
    if let Some(service) = (unsafe { SOCK_REVNAT.get(key) }).copied() {
        sa.user_ip4 = service.addr;
        sa.user_port = service.port as u32;
    }
    ALLOW
}

fn reverse6(ctx: &SockAddrContext) -> i32 {
    let sa = sock_addr(ctx);
    // SAFETY: helper on the hook's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let mut ip = user_ip6(sa);
    let port = sa.user_port as u16;
    if let Some(addr) = v4_mapped(&ip) {
        let key = SockRevKey {
            cookie,
            addr,
            port,
            pad: 0,
        };
        // SAFETY: copied out at once.
        if let Some(service) = (unsafe { SOCK_REVNAT.get(key) }).copied() {
            ip[3] = service.addr;
            set_user_ip6(sa, ip, service.port);
        }
        return ALLOW;
    }
    let key = SockRevKey6 {
        cookie,
        addr: ip,
        port,
        pad: 0,
        pad2: 0,
    };
    // SAFETY: copied out at once.
    if let Some(service) = (unsafe { SOCK_REVNAT6.get(key) }).copied() {
        set_user_ip6(sa, service.addr, service.port);
    }
    ALLOW
}

/// The IPv4 address inside a v4-mapped IPv6 address.
#[inline(always)]
fn v4_mapped(ip: &[u32; 4]) -> Option<u32> {
    (ip[0] == 0 && ip[1] == 0 && ip[2] == V4_MAPPED_WORD).then_some(ip[3])
}

/// The socket address's IPv6 address, read one 32-bit word at a time (the access size the
/// verifier allows on every kernel for this field).
#[inline(always)]
fn user_ip6(sa: &bpf_sock_addr) -> [u32; 4] {
    // SAFETY: reads of the context's own field; volatile keeps them 4-byte loads.
    unsafe {
        [
            core::ptr::read_volatile(&sa.user_ip6[0]),
            core::ptr::read_volatile(&sa.user_ip6[1]),
            core::ptr::read_volatile(&sa.user_ip6[2]),
            core::ptr::read_volatile(&sa.user_ip6[3]),
        ]
    }
}

/// Rewrites the socket address to `ip` and `port` (network order), in 32-bit stores.
#[inline(always)]
fn set_user_ip6(sa: &mut bpf_sock_addr, ip: [u32; 4], port: u16) {
    // SAFETY: writes of the context's own fields; volatile keeps them 4-byte stores.
    unsafe {
        core::ptr::write_volatile(&mut sa.user_ip6[0], ip[0]);
        core::ptr::write_volatile(&mut sa.user_ip6[1], ip[1]);
        core::ptr::write_volatile(&mut sa.user_ip6[2], ip[2]);
        core::ptr::write_volatile(&mut sa.user_ip6[3], ip[3]);
    }
    sa.user_port = port as u32;
}
