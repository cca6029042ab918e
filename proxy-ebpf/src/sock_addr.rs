//! Socket-level translation (cgroup v2 sock_addr hooks): the destination is rewritten when a
//! socket connects (TCP, connected UDP) or sends (unconnected UDP), and rewritten back when
//! the application asks who it talks to, so east-west flows pay no per-packet NAT cost and
//! applications only ever see the service address.
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext,
};
use aya_log_ebpf::debug;
use switchyard_common::{
    ServiceKey, SockRevKey, SockRevValue, PROTO_TCP, PROTO_UDP, SCOPE_SOCKET, SERVICE_FLAG_AFFINITY,
};

use crate::{
    lb,
    maps::{SERVICES, SOCK_REVNAT},
};

/// Return value that lets the syscall proceed.
const ALLOW: i32 = 1;
/// Return value that fails the syscall with EPERM: a fast failure for services without endpoints.
const REJECT: i32 = 0;

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
/// SCTP sockets are SOCK_STREAM or SOCK_SEQPACKET; they are left to netfilter.
const IPPROTO_SCTP: u32 = 132;

/// cgroup/connect4: TCP connect() and connected UDP to a service frontend go to one backend.
#[cgroup_sock_addr(connect4)]
pub fn swy_connect4(ctx: SockAddrContext) -> i32 {
    translate(&ctx)
}

/// cgroup/sendmsg4: each unconnected UDP datagram to a service frontend goes to one backend.
#[cgroup_sock_addr(sendmsg4)]
pub fn swy_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate(&ctx)
}

/// cgroup/recvmsg4: a reply from a backend is shown as coming from the service.
#[cgroup_sock_addr(recvmsg4)]
pub fn swy_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx)
}

/// cgroup/getpeername4: a translated socket's peer is the service.
#[cgroup_sock_addr(getpeername4)]
pub fn swy_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx)
}

// The context only wraps the kernel's pointer; writing through it is how these hooks answer,
// and the helpers that read the same context never see a Rust reference to it.
#[allow(clippy::mut_from_ref)]
fn sock_addr(ctx: &SockAddrContext) -> &mut bpf_sock_addr {
    // SAFETY: the kernel hands these hooks a valid bpf_sock_addr for the duration of the call.
    unsafe { &mut *ctx.sock_addr }
}

fn translate(ctx: &SockAddrContext) -> i32 {
    let sa = sock_addr(ctx);
    // An SCTP socket must not be taken for a TCP one: ebpf mode serves SCTP ports with
    // iptables rules (its SCTP fallback), which see the socket's packets untranslated.
    if sa.protocol == IPPROTO_SCTP {
        return ALLOW;
    }
    let proto = match sa.type_ {
        SOCK_STREAM => PROTO_TCP,
        SOCK_DGRAM => PROTO_UDP,
        _ => return ALLOW,
    };
    let key = ServiceKey {
        addr: sa.user_ip4,
        // user_port holds the port in network order in its low 16 bits.
        port: sa.user_port as u16,
        proto,
        scope: SCOPE_SOCKET,
    };
    // SAFETY: the value is copied out at once.
    let Some(service) = (unsafe { SERVICES.get(key) }).copied() else {
        return ALLOW;
    };
    if service.count == 0 {
        debug!(
            ctx,
            "socket: refused {:i}:{}, no usable endpoint",
            u32::from_be(key.addr),
            u16::from_be(key.port)
        );
        return REJECT;
    }
    // SAFETY: helper on the hook's own context.
    let client = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let Some((slot, backend)) = lb::pick(&service, client) else {
        // A service entry whose slot is missing is being rewritten; refusing beats a black hole.
        return REJECT;
    };
    // SAFETY: helper on the hook's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let rev_key = SockRevKey {
        cookie,
        addr: backend.addr,
        port: backend.port,
        pad: 0,
    };
    let rev = SockRevValue {
        addr: key.addr,
        port: key.port,
        pad: 0,
    };
    // Best effort: without it replies still arrive, only from the backend's address.
    let _ = SOCK_REVNAT.insert(rev_key, rev, 0);
    if service.flags & SERVICE_FLAG_AFFINITY != 0 {
        // SAFETY: helper without arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        lb::remember(&service, client, slot, backend, now);
    }
    sa.user_ip4 = backend.addr;
    sa.user_port = backend.port as u32;
    ALLOW
}

fn reverse(ctx: &SockAddrContext) -> i32 {
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
