//! Socket termination: a BPF socket iterator over the UDP sockets of one network namespace
//! that destroys the connected ones whose translated peer left its service.
//!
//! connect4 rewrites a connected UDP socket's peer once, so the socket keeps sending to that
//! backend after the backend is gone. Userspace fills `SWY_SOCK_TERM` with the (frontend,
//! backend) pairs a sync removed and runs this iterator in every network namespace (an
//! iterator only walks the sockets of the namespace it was created in); each matching socket
//! is destroyed with `bpf_sock_destroy` (kernels >= 6.5), so the application's next call
//! fails with ECONNABORTED and a new connect() is translated again. Its cookie is written to
//! the iterator's output, which userspace counts.
//!
//! The kernel's UDP table holds IPv4 and IPv6 sockets alike, so one program serves both. An
//! IPv6 socket connected to an IPv6 service is looked up in `SWY_SOCK_REVNAT6` and
//! `SWY_SOCK_TERM6`; a dual-stack one connected to a v4-mapped address was translated by
//! connect6 with the IPv4 maps (`sock_addr.rs`), so it is looked up in those.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::seq_file,
    helpers::{bpf_get_socket_cookie, bpf_seq_write},
};
use switchyard_common::{SockRevKey, SockRevKey6, SockTermKey, SockTermKey6};

use crate::maps::{SOCK_REVNAT, SOCK_REVNAT6, SOCK_TERM, SOCK_TERM6};

/// `AF_INET`.
const AF_INET: u16 = 2;
/// `AF_INET6`.
const AF_INET6: u16 = 10;
/// The third 32-bit word of a v4-mapped IPv6 address (`::ffff:0:0/96`), as it lies in memory.
const V4_MAPPED_WORD: u32 = 0x0000_ffff_u32.to_be();

// Offsets in `struct sock_common`, which starts every `struct udp_sock`; unchanged since
// Linux 4.x. Without CO-RE in Rust they are written out; the verifier checks every load
// against the kernel's BTF of `udp_sock`.
/// `skc_daddr` (u32, network order).
const SKC_DADDR: usize = 0;
/// `skc_dport` (u16, network order).
const SKC_DPORT: usize = 12;
/// `skc_family` (u16).
const SKC_FAMILY: usize = 16;
/// `skc_v6_daddr` (struct in6_addr; kernels with IPv6, after `skc_net`).
const SKC_V6_DADDR: usize = 56;

/// `struct bpf_iter_meta` (only the first field is read).
#[repr(C)]
pub struct IterMeta {
    seq: *mut seq_file,
}

/// `struct bpf_iter__udp`: the context of iter/udp programs.
#[repr(C)]
pub struct IterUdp {
    meta: *mut IterMeta,
    udp_sk: *mut c_void,
}

extern "C" {
    /// The kernel function (kfunc) that aborts a socket with ECONNABORTED. Userspace turns
    /// the call into a kfunc call (BTF id of the running kernel) before loading.
    fn bpf_sock_destroy(sk: *mut c_void) -> i32;
}

/// iter/udp: called once per UDP socket of the iterator's network namespace (and once more
/// with a null socket at the end).
#[no_mangle]
#[link_section = "iter/udp"]
pub extern "C" fn swy_sock_term_udp4(ctx: *mut IterUdp) -> i32 {
    // SAFETY: the kernel hands iterator programs a valid context.
    let ctx = unsafe { &*ctx };
    let sk = ctx.udp_sk;
    if sk.is_null() {
        return 0;
    }
    // SAFETY: the verifier turns these loads into checked kernel reads (BTF pointer).
    let (family, daddr, dport) = unsafe {
        let base = sk as *const u8;
        (
            *(base.add(SKC_FAMILY) as *const u16),
            *(base.add(SKC_DADDR) as *const u32),
            *(base.add(SKC_DPORT) as *const u16),
        )
    };
    // SAFETY: helper on a socket pointer the kernel handed us.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    // Only connected sockets hold a translated peer; unconnected ones are translated per
    // datagram (sendmsg4/6) and pick a live backend by themselves.
    let stranded = match family {
        AF_INET => daddr != 0 && stranded4(cookie, daddr, dport),
        AF_INET6 => {
            // SAFETY: as above, four 4-byte loads inside skc_v6_daddr.
            let ip: [u32; 4] = unsafe {
                let at = (sk as *const u8).add(SKC_V6_DADDR) as *const u32;
                [*at, *at.add(1), *at.add(2), *at.add(3)]
            };
            if ip[0] == 0 && ip[1] == 0 && ip[2] == V4_MAPPED_WORD {
                ip[3] != 0 && stranded4(cookie, ip[3], dport)
            } else {
                (ip[0] | ip[1] | ip[2] | ip[3]) != 0 && stranded6(cookie, ip, dport)
            }
        }
        _ => false,
    };
    if !stranded {
        return 0;
    }
    // SAFETY: kfunc on the trusted socket pointer of the iterator context.
    if unsafe { bpf_sock_destroy(sk) } == 0 {
        // SAFETY: the context's seq_file; writing 8 bytes of the stack.
        unsafe {
            let meta = &*ctx.meta;
            let _ = bpf_seq_write(meta.seq, &cookie as *const u64 as *const c_void, 8);
        }
    }
    0
}

/// Whether the IPv4 peer `daddr:dport` of socket `cookie` is a backend our connect hooks
/// translated it to from a frontend whose pair is in the filter. A socket that connected to
/// the backend's own address has no entry (or one from another service, which the filter
/// tells apart).
#[inline(always)]
fn stranded4(cookie: u64, daddr: u32, dport: u16) -> bool {
    let rev_key = SockRevKey {
        cookie,
        addr: daddr,
        port: dport,
        pad: 0,
    };
    // SAFETY: copied out at once.
    let Some(frontend) = (unsafe { SOCK_REVNAT.get(rev_key) }).copied() else {
        return false;
    };
    let term_key = SockTermKey {
        frontend_addr: frontend.addr,
        backend_addr: daddr,
        frontend_port: frontend.port,
        backend_port: dport,
    };
    // SAFETY: presence is the answer.
    unsafe { SOCK_TERM.get(term_key) }.is_some()
}

/// [`stranded4`] for an IPv6 peer and the IPv6 maps.
#[inline(always)]
fn stranded6(cookie: u64, daddr: [u32; 4], dport: u16) -> bool {
    let rev_key = SockRevKey6 {
        cookie,
        addr: daddr,
        port: dport,
        pad: 0,
        pad2: 0,
    };
    // SAFETY: copied out at once.
    let Some(frontend) = (unsafe { SOCK_REVNAT6.get(rev_key) }).copied() else {
        return false;
    };
    let term_key = SockTermKey6 {
        frontend_addr: frontend.addr,
        backend_addr: daddr,
        frontend_port: frontend.port,
        backend_port: dport,
    };
    // SAFETY: presence is the answer.
    unsafe { SOCK_TERM6.get(term_key) }.is_some()
}
