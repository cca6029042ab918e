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
//! problem) quoting a TCP/UDP packet are translated. Extension headers are walked as
//! [`super::v6`] walks them, before the ICMPv6 header and in the quote: a packet too big about
//! the first fragment of a backend's long datagram quotes its fragment header. An error
//! quoting a later fragment (no ports) passes untouched, as one behind headers that are not
//! walked does; so does a fragmented error.
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

use super::v6::{redirect, upper_layer, Ipv6Hdr, IP6_DST_OFF, IP6_SRC_OFF, L4_OFF, PROTO_ICMPV6};
use super::{fragments, DROP, ETH_HLEN, PASS};
use crate::maps::CONNTRACK6;

const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PARAMPROB: u8 = 4;
/// Offsets from the ICMPv6 header: its checksum, the quoted IPv6 header (right after the
/// 8-byte ICMPv6 header) and the quoted addresses.
const ICMPV6_CSUM: usize = 2;
const INNER_IP: usize = 8;
const INNER_SRC: usize = INNER_IP + 8;
const INNER_DST: usize = INNER_IP + 24;
const IP6_HLEN: usize = 40;
/// Offsets inside the quoted TCP/UDP header.
const UDP_CSUM: usize = 6;
const TCP_CSUM: usize = 16;
/// [`Quote6::csum_off`] when the quoted checksum is not kept (not quoted, or UDP's "none").
const NO_CSUM: usize = 0;

/// The quoted packet, addresses and ports in network order, and where the error's parts are.
#[derive(Clone, Copy)]
struct Quote6 {
    saddr: [u32; 4],
    daddr: [u32; 4],
    sport: u16,
    dport: u16,
    proto: u8,
    /// Offset of the ICMPv6 header ([`L4_OFF`] unless extension headers precede it).
    icmp_off: u16,
    /// Offset of the quoted TCP/UDP header.
    inner_l4_off: u16,
    /// Offset of the quoted TCP/UDP checksum, or [`NO_CSUM`].
    csum_off: usize,
}

impl Quote6 {
    #[inline(always)]
    fn icmp_off(&self) -> usize {
        usize::from(self.icmp_off)
    }

    /// Where the quoted source address is.
    #[inline(always)]
    fn inner_src(&self) -> usize {
        self.icmp_off() + INNER_SRC
    }

    /// Where the quoted destination address is.
    #[inline(always)]
    fn inner_dst(&self) -> usize {
        self.icmp_off() + INNER_DST
    }

    /// Where the quoted source port is.
    #[inline(always)]
    fn inner_sport(&self) -> usize {
        usize::from(self.inner_l4_off)
    }

    /// Where the quoted destination port is.
    #[inline(always)]
    fn inner_dport(&self) -> usize {
        usize::from(self.inner_l4_off) + 2
    }

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
    let rewritten = set_addr(ctx, &quote, quote.inner_dst(), &flow.addr) == 0
        && set_port(ctx, &quote, quote.inner_dport(), quote.dport, flow.port).is_ok()
        && set_addr(ctx, &quote, IP6_SRC_OFF, &flow.addr) == 0;
    if rewritten {
        PASS
    } else {
        DROP
    }
}

/// An error about a reply (quote frontend -> client) goes to the backend.
#[inline(always)]
fn towards_backend(ctx: &TcContext, quote: &Quote6, flow: &CtValue6) -> i32 {
    let rewritten = set_addr(ctx, quote, quote.inner_src(), &flow.addr) == 0
        && set_port(ctx, quote, quote.inner_sport(), quote.sport, flow.port).is_ok()
        && set_addr(ctx, quote, IP6_DST_OFF, &flow.addr) == 0;
    if !rewritten {
        return DROP;
    }
    if flow.flags & CT_FLAG_SNAT == 0 {
        // DNAT only: the kernel routes it to the backend, as it does the flow's packets.
        return PASS;
    }
    // The backend knows the client as node:port.
    let rewritten = set_addr(ctx, quote, quote.inner_dst(), &flow.nat_addr) == 0
        && set_port(ctx, quote, quote.inner_dport(), quote.dport, flow.nat_port).is_ok()
        && set_addr(ctx, quote, IP6_SRC_OFF, &flow.nat_addr) == 0;
    if !rewritten {
        return DROP;
    }
    redirect(ctx, PROTO_ICMPV6, &flow.nat_addr, &flow.addr)
}

/// An error about a source-NATed packet (quote node:port -> backend) goes to the client.
#[inline(always)]
fn towards_client(ctx: &TcContext, quote: &Quote6, flow: &CtValue6) -> i32 {
    let rewritten = set_addr(ctx, quote, quote.inner_src(), &flow.nat_addr) == 0
        && set_port(ctx, quote, quote.inner_sport(), quote.sport, flow.nat_port).is_ok()
        && set_addr(ctx, quote, quote.inner_dst(), &flow.addr) == 0
        && set_port(ctx, quote, quote.inner_dport(), quote.dport, flow.port).is_ok()
        && set_addr(ctx, quote, IP6_SRC_OFF, &flow.addr) == 0
        && set_addr(ctx, quote, IP6_DST_OFF, &flow.nat_addr) == 0;
    if !rewritten {
        return DROP;
    }
    redirect(ctx, PROTO_ICMPV6, &flow.addr, &flow.nat_addr)
}

/// The packet an ICMPv6 error quotes, if the packet is a whole error (types 1 to 4) quoting
/// a TCP/UDP packet (or its first fragment) with its ports.
#[inline(always)]
fn quote(ctx: &TcContext) -> Option<Quote6> {
    let outer: Ipv6Hdr = ctx.load(ETH_HLEN).ok()?;
    let icmp = upper_layer(ctx, outer.next_header, L4_OFF)?;
    if icmp.proto != PROTO_ICMPV6 || icmp.fragment != fragments::WHOLE {
        return None;
    }
    let icmp_type: u8 = ctx.load(icmp.off).ok()?;
    if !(ICMPV6_DEST_UNREACH..=ICMPV6_PARAMPROB).contains(&icmp_type) {
        return None;
    }
    let inner: Ipv6Hdr = ctx.load(icmp.off + INNER_IP).ok()?;
    if inner.vtc_flow[0] >> 4 != 6 {
        return None;
    }
    let quoted = upper_layer(ctx, inner.next_header, icmp.off + INNER_IP + IP6_HLEN)?;
    if quoted.fragment == fragments::LATER || !matches!(quoted.proto, PROTO_TCP | PROTO_UDP) {
        return None;
    }
    let ports: [u8; 4] = ctx.load(quoted.off).ok()?;
    let csum_off = quoted.off
        + if quoted.proto == PROTO_UDP {
            UDP_CSUM
        } else {
            TCP_CSUM
        };
    // The quote may stop before the checksum; a zero UDP checksum stays as it is.
    let csum_off = match ctx.load::<u16>(csum_off) {
        Ok(csum) if !(quoted.proto == PROTO_UDP && csum == 0) => csum_off,
        _ => NO_CSUM,
    };
    Some(Quote6 {
        saddr: inner.saddr,
        daddr: inner.daddr,
        sport: u16::from_ne_bytes([ports[0], ports[1]]),
        dport: u16::from_ne_bytes([ports[2], ports[3]]),
        proto: quoted.proto,
        icmp_off: u16::try_from(icmp.off).ok()?,
        inner_l4_off: u16::try_from(quoted.off).ok()?,
        csum_off,
    })
}

/// The address at `off` (outer, before the ICMPv6 header, or quoted) becomes `new`; the
/// ICMPv6 checksum follows (through its pseudo header for an outer one), and so does the
/// quoted L4 checksum (unless [`NO_CSUM`]) for a quoted one. 0 or the helpers' error. Not
/// inlined (its own small frame, called from every case).
#[inline(never)]
fn set_addr(ctx: &TcContext, quote: &Quote6, off: usize, new: &[u32; 4]) -> i64 {
    match set_addr_inner(ctx, quote, off, new) {
        Ok(()) => 0,
        Err(e) => e,
    }
}

#[inline(always)]
fn set_addr_inner(ctx: &TcContext, quote: &Quote6, off: usize, new: &[u32; 4]) -> Result<(), i64> {
    let icmp_csum = quote.icmp_off() + ICMPV6_CSUM;
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
    if off < quote.icmp_off() {
        // Size 0: `to` is a difference (the helper's diff mode).
        return ctx.l4_csum_replace(icmp_csum, 0, diff as u64, BPF_F_PSEUDO_HDR as u64);
    }
    ctx.l4_csum_replace(icmp_csum, 0, diff as u64, 0)?;
    if quote.csum_off != NO_CSUM {
        quoted_field(ctx, quote, 0, diff as u64, 0)?;
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
    ctx.l4_csum_replace(quote.icmp_off() + ICMPV6_CSUM, old as u64, new as u64, 2)?;
    if quote.csum_off != NO_CSUM {
        quoted_field(ctx, quote, old as u64, new as u64, 2)?;
    }
    Ok(())
}

/// Updates the quoted checksum for a change (`size` 2 or 4 bytes from `from` to `to`, or 0:
/// `to` is a difference), and the ICMPv6 checksum for the change of that field.
#[inline(always)]
fn quoted_field(ctx: &TcContext, quote: &Quote6, from: u64, to: u64, size: u64) -> Result<(), i64> {
    let csum_off = quote.csum_off;
    let before: u16 = ctx.load(csum_off)?;
    // The L3 helper only rewrites the 16-bit field, whatever the skb's checksum state.
    ctx.l3_csum_replace(csum_off, from, to, size)?;
    let after: u16 = ctx.load(csum_off)?;
    ctx.l4_csum_replace(
        quote.icmp_off() + ICMPV6_CSUM,
        before as u64,
        after as u64,
        2,
    )
}
