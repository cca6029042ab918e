//! Socket-level translation (cgroup v2 sock_addr hooks): the destination is rewritten once when
//! a socket connects, so east-west flows pay no per-packet NAT cost.
use aya_ebpf::{helpers::bpf_get_prandom_u32, macros::cgroup_sock_addr, programs::SockAddrContext};
use switchyard_common::{BackendKey, ServiceKey, PROTO_TCP, PROTO_UDP};

use crate::maps::{BACKENDS, SERVICES};

/// Return value that lets the syscall proceed.
const ALLOW: i32 = 1;
/// Return value that fails the syscall with EPERM: a fast failure for services without endpoints.
const REJECT: i32 = 0;

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;

/// cgroup/connect4: TCP connect() and connected UDP to a service frontend go to one backend.
#[cgroup_sock_addr(connect4)]
pub fn swy_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands this hook a valid bpf_sock_addr for the duration of the call.
    let sa = unsafe { &mut *ctx.sock_addr };
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
        pad: 0,
    };
    // SAFETY: the value is only read and copied out immediately.
    let Some(service) = (unsafe { SERVICES.get(key) }) else {
        return ALLOW;
    };
    let count = service.count as u32;
    if count == 0 {
        return REJECT;
    }
    // SAFETY: helper without arguments.
    let slot = unsafe { bpf_get_prandom_u32() } % count;
    let backend_key = BackendKey {
        service_id: service.id,
        slot,
    };
    // SAFETY: as above.
    let Some(backend) = (unsafe { BACKENDS.get(backend_key) }) else {
        // A service entry whose slot is missing is being rewritten; refusing beats a black hole.
        return REJECT;
    };
    sa.user_ip4 = backend.addr;
    sa.user_port = backend.port as u32;
    ALLOW
}
