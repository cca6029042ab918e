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
use core::ffi::c_void;

use aya_ebpf::{
    bindings::seq_file,
    helpers::{bpf_get_socket_cookie, bpf_seq_write},
};
use switchyard_common::{SockRevKey, SockTermKey};

use crate::maps::{SOCK_REVNAT, SOCK_TERM};

/// `AF_INET`.
const AF_INET: u16 = 2;

// Offsets in `struct sock_common`, which starts every `struct udp_sock`; unchanged since
// Linux 4.x. Without CO-RE in Rust they are written out; the verifier checks every load
// against the kernel's BTF of `udp_sock`.
/// `skc_daddr` (u32, network order).
const SKC_DADDR: usize = 0;
/// `skc_dport` (u16, network order).
const SKC_DPORT: usize = 12;
/// `skc_family` (u16).
const SKC_FAMILY: usize = 16;

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
    // Only connected sockets hold a translated peer; unconnected ones are translated per
    // datagram (sendmsg4) and pick a live backend by themselves.
    if family != AF_INET || daddr == 0 {
        return 0;
    }
    // SAFETY: helper on a socket pointer the kernel handed us.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    let rev_key = SockRevKey {
        cookie,
        addr: daddr,
        port: dport,
        pad: 0,
    };
    // Only sockets our connect4 translated; a socket that connected to the backend's own
    // address has no entry (or one from another service, which the filter tells apart).
    // SAFETY: copied out at once.
    let Some(frontend) = (unsafe { SOCK_REVNAT.get(rev_key) }).copied() else {
        return 0;
    };
    let term_key = SockTermKey {
        frontend_addr: frontend.addr,
        backend_addr: daddr,
        frontend_port: frontend.port,
        backend_port: dport,
    };
    // SAFETY: presence is the answer.
    if unsafe { SOCK_TERM.get(term_key) }.is_none() {
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
