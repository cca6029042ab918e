//! ICMPv6 errors about translated IPv6 flows, translated like the flow: the IPv6 twin of
//! [`super::icmp_error`], with the same three cases (see there):
//! - ingress, an error from the client's side about a reply (quote frontend -> client) goes
//!   on to the backend (quote backend -> client, or backend -> node:port for a source-NATed
//!   flow, redirected like the flow's packets). This is how a router with a smaller MTU in
//!   front of the client gets its packet too big to the backend: PMTU discovery (which IPv6
//!   needs, routers do not fragment) works through a NodePort;
//! - ingress, an error from the backend's side about a source-NATed packet (quote
//!   node:port -> backend) goes back to the client as frontend -> client;
//! - egress, an error from a local backend about a client's packet after DNAT
//!   (quote client -> backend) leaves from the frontend, quote client -> frontend.
//!
//! Errors of types 1 to 4 (destination unreachable, packet too big, time exceeded, parameter
//! problem) quoting a TCP/UDP packet right behind its fixed IPv6 header are translated. Unlike
//! [`super::v6`], no extension headers are walked, outside or in the quote: the quoted packet
//! is one of the flow's replies or DNATed requests, and neither side of a translated flow
//! adds them in practice; such an error passes untouched.
//!
//! Checksums: IPv6 has no header checksum. The ICMPv6 checksum covers a pseudo header with
//! the outer addresses, so an outer address change goes in as a `BPF_F_PSEUDO_HDR`
//! difference (`bpf_csum_diff` over the 16 bytes), and every change inside the message (quoted
//! addresses, ports, the quoted L4 checksum) as a plain one. The quoted TCP/UDP checksum is
//! kept right for its quoted addresses and ports when the quote holds it, as in IPv4 (the
//! segment itself is usually cut, so only the incremental change can be made, and a receiver
//! does not check it).
// Keys are passed to the map calls by reference, as in `v6`: a copy per call adds to the frame.
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::{bindings::BPF_F_PSEUDO_HDR, helpers::bpf_csum_diff, programs::TcContext};
use switchyard_common::{CtKey6, CtValue6, CT_FLAG_REPLY, CT_FLAG_SNAT, PROTO_TCP, PROTO_UDP};

use super::v6::{
    redirect, Ipv6Hdr, IP6_DST_OFF, IP6_NEXT_HEADER_OFF, IP6_SRC_OFF, L4_OFF, PROTO_ICMPV6,
};
use super::{DROP, PASS};
use crate::maps::CONNTRACK6;

const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PARAMPROB: u8 = 4;
const ICMPV6_CSUM_OFF: usize = L4_OFF + 2;
/// The quoted IPv6 header, right after the 8-byte ICMPv6 header.
const INNER_IP_OFF: usize = L4_OFF + 8;
const INNER_SRC_OFF: usize = INNER_IP_OFF + 8;
const INNER_DST_OFF: usize = INNER_IP_OFF + 24;
/// The quoted TCP/UDP header.
const INNER_L4_OFF: usize = INNER_IP_OFF + 40;
const INNER_SPORT_OFF: usize = INNER_L4_OFF;
const INNER_DPORT_OFF: usize = INNER_L4_OFF + 2;
const INNER_UDP_CSUM_OFF: usize = INNER_L4_OFF + 6;
const INNER_TCP_CSUM_OFF: usize = INNER_L4_OFF + 16;
/// [`Quote6::csum_off`] when the quoted checksum is not kept (not quoted, or UDP's "none").
const NO_CSUM: usize = 0;

/// The quoted packet, addresses and ports in network order.
#[derive(Clone, Copy)]
struct Quote6 {
    saddr: [u32; 4],
    daddr: [u32; 4],
    sport: u16,
    dport: u16,
    proto: u8,
    /// Offset of the quoted TCP/UDP checksum, or [`NO_CSUM`].
    csum_off: usize,
}

impl Quote6 {
    /// The key of the flow direction opposite to the quoted packet's.
    #[inline(always)]
    fn reversed_key(&self) -> CtKey6 {
        CtKey6 {
            src_addr: self.daddr,
            dst_addr: self.saddr,
            src_port: self.dport,
            dst_port: self.sport,
            proto: self.proto,
            pad: [0; 3],
        }
    }
}

/// Ingress: errors from the client's side about replies, and from remote backends about
/// source-NATed packets; anything else passes. Not inlined: its frame is not on the stack of
/// the TCP/UDP path.
#[inline(never)]
pub(super) fn ingress(ctx: &TcContext) -> i32 {
    let Some(quote) = quote(ctx) else {
        return PASS;
    };
    // SAFETY: copied out at once.
    let Some(flow) = (unsafe { CONNTRACK6.get(&quote.reversed_key()) }).copied() else {
        return PASS;
    };
    if flow.flags & CT_FLAG_REPLY == 0 {
        towards_backend(ctx, &quote, &flow)
    } else if flow.flags & CT_FLAG_SNAT != 0 {
        towards_client(ctx, &quote, &flow)
    } else {
        // A reply entry of a DNAT-only flow: its errors leave on egress, not arrive here.
        PASS
    }
}

/// Egress: errors from a local backend (or this node) about a client's packet after DNAT.
#[inline(never)]
pub(super) fn egress(ctx: &TcContext) -> i32 {
    let Some(quote) = quote(ctx) else {
        return PASS;
    };
    // SAFETY: copied out at once.
    let Some(flow) = (unsafe { CONNTRACK6.get(&quote.reversed_key()) }).copied() else {
        return PASS;
    };
    if flow.flags & (CT_FLAG_REPLY | CT_FLAG_SNAT) != CT_FLAG_REPLY {
        return PASS;
    }
    // Quote client -> backend becomes client -> frontend, from the frontend.
    let rewritten = set_addr(ctx, INNER_DST_OFF, &flow.addr, quote.csum_off) == 0
        && set_port(ctx, &quote, INNER_DPORT_OFF, quote.dport, flow.port).is_ok()
        && set_addr(ctx, IP6_SRC_OFF, &flow.addr, NO_CSUM) == 0;
    if rewritten {
        PASS
    } else {
        DROP
    }
}

/// An error about a reply (quote frontend -> client) goes to the backend.
#[inline(always)]
fn towards_backend(ctx: &TcContext, quote: &Quote6, flow: &CtValue6) -> i32 {
    let rewritten = set_addr(ctx, INNER_SRC_OFF, &flow.addr, quote.csum_off) == 0
        && set_port(ctx, quote, INNER_SPORT_OFF, quote.sport, flow.port).is_ok()
        && set_addr(ctx, IP6_DST_OFF, &flow.addr, NO_CSUM) == 0;
    if !rewritten {
        return DROP;
    }
    if flow.flags & CT_FLAG_SNAT == 0 {
        // DNAT only: the kernel routes it to the backend, as it does the flow's packets.
        return PASS;
    }
    // The backend knows the client as node:port.
    let rewritten = set_addr(ctx, INNER_DST_OFF, &flow.nat_addr, quote.csum_off) == 0
        && set_port(ctx, quote, INNER_DPORT_OFF, quote.dport, flow.nat_port).is_ok()
        && set_addr(ctx, IP6_SRC_OFF, &flow.nat_addr, NO_CSUM) == 0;
    if !rewritten {
        return DROP;
    }
    redirect(ctx, PROTO_ICMPV6, &flow.nat_addr, &flow.addr)
}

/// An error about a source-NATed packet (quote node:port -> backend) goes to the client.
#[inline(always)]
fn towards_client(ctx: &TcContext, quote: &Quote6, flow: &CtValue6) -> i32 {
    let rewritten = set_addr(ctx, INNER_SRC_OFF, &flow.nat_addr, quote.csum_off) == 0
        && set_port(ctx, quote, INNER_SPORT_OFF, quote.sport, flow.nat_port).is_ok()
        && set_addr(ctx, INNER_DST_OFF, &flow.addr, quote.csum_off) == 0
        && set_port(ctx, quote, INNER_DPORT_OFF, quote.dport, flow.port).is_ok()
        && set_addr(ctx, IP6_SRC_OFF, &flow.addr, NO_CSUM) == 0
        && set_addr(ctx, IP6_DST_OFF, &flow.nat_addr, NO_CSUM) == 0;
    if !rewritten {
        return DROP;
    }
    redirect(ctx, PROTO_ICMPV6, &flow.addr, &flow.nat_addr)
}

/// The packet an ICMPv6 error quotes, if the packet is an error (types 1 to 4) quoting a
/// TCP/UDP packet with its ports.
#[inline(always)]
fn quote(ctx: &TcContext) -> Option<Quote6> {
    let next_header: u8 = ctx.load(IP6_NEXT_HEADER_OFF).ok()?;
    if next_header != PROTO_ICMPV6 {
        return None;
    }
    let icmp_type: u8 = ctx.load(L4_OFF).ok()?;
    if !(ICMPV6_DEST_UNREACH..=ICMPV6_PARAMPROB).contains(&icmp_type) {
        return None;
    }
    let inner: Ipv6Hdr = ctx.load(INNER_IP_OFF).ok()?;
    if inner.vtc_flow[0] >> 4 != 6 || !matches!(inner.next_header, PROTO_TCP | PROTO_UDP) {
        return None;
    }
    let ports: [u8; 4] = ctx.load(INNER_L4_OFF).ok()?;
    let csum_off = if inner.next_header == PROTO_UDP {
        INNER_UDP_CSUM_OFF
    } else {
        INNER_TCP_CSUM_OFF
    };
    // The quote may stop before the checksum; a zero UDP checksum stays as it is.
    let csum_off = match ctx.load::<u16>(csum_off) {
        Ok(csum) if !(inner.next_header == PROTO_UDP && csum == 0) => csum_off,
        _ => NO_CSUM,
    };
    Some(Quote6 {
        saddr: inner.saddr,
        daddr: inner.daddr,
        sport: u16::from_ne_bytes([ports[0], ports[1]]),
        dport: u16::from_ne_bytes([ports[2], ports[3]]),
        proto: inner.next_header,
        csum_off,
    })
}

/// The address at `off` (outer, before the ICMPv6 header, or quoted) becomes `new`; the
/// ICMPv6 checksum follows (through its pseudo header for an outer one), and so does the
/// quoted L4 checksum at `quoted_csum` (unless [`NO_CSUM`]) for a quoted one. 0 or the
/// helpers' error. Not inlined (its own small frame, called from every case).
#[inline(never)]
fn set_addr(ctx: &TcContext, off: usize, new: &[u32; 4], quoted_csum: usize) -> i64 {
    match set_addr_inner(ctx, off, new, quoted_csum) {
        Ok(()) => 0,
        Err(e) => e,
    }
}

#[inline(always)]
fn set_addr_inner(
    ctx: &TcContext,
    off: usize,
    new: &[u32; 4],
    quoted_csum: usize,
) -> Result<(), i64> {
    let mut old: [u32; 4] = ctx.load(off)?;
    let mut new = *new;
    if old == new {
        return Ok(());
    }
    ctx.store(off, &new, 0)?;
    // SAFETY: two 16-byte stack buffers, sizes given.
    let diff = unsafe { bpf_csum_diff(old.as_mut_ptr(), 16, new.as_mut_ptr(), 16, 0) };
    if diff < 0 {
        return Err(diff);
    }
    if off < L4_OFF {
        // Size 0: `to` is a difference (the helper's diff mode).
        return ctx.l4_csum_replace(ICMPV6_CSUM_OFF, 0, diff as u64, BPF_F_PSEUDO_HDR as u64);
    }
    ctx.l4_csum_replace(ICMPV6_CSUM_OFF, 0, diff as u64, 0)?;
    if quoted_csum != NO_CSUM {
        quoted_field(ctx, quoted_csum, 0, diff as u64, 0)?;
    }
    Ok(())
}

/// A quoted port becomes `new`: the quoted L4 checksum and the ICMPv6 checksum follow.
#[inline(always)]
fn set_port(ctx: &TcContext, quote: &Quote6, off: usize, old: u16, new: u16) -> Result<(), i64> {
    if old == new {
        return Ok(());
    }
    ctx.store(off, &new, 0)?;
    ctx.l4_csum_replace(ICMPV6_CSUM_OFF, old as u64, new as u64, 2)?;
    if quote.csum_off != NO_CSUM {
        quoted_field(ctx, quote.csum_off, old as u64, new as u64, 2)?;
    }
    Ok(())
}

/// Updates the quoted checksum at `csum_off` for a change (`size` 2 or 4 bytes from `from` to
/// `to`, or 0: `to` is a difference), and the ICMPv6 checksum for the change of that field.
#[inline(always)]
fn quoted_field(
    ctx: &TcContext,
    csum_off: usize,
    from: u64,
    to: u64,
    size: u64,
) -> Result<(), i64> {
    let before: u16 = ctx.load(csum_off)?;
    // The L3 helper only rewrites the 16-bit field, whatever the skb's checksum state.
    ctx.l3_csum_replace(csum_off, from, to, size)?;
    let after: u16 = ctx.load(csum_off)?;
    ctx.l4_csum_replace(ICMPV6_CSUM_OFF, before as u64, after as u64, 2)
}
