//! ICMP errors about translated flows, translated like the flow (netfilter's
//! `nf_nat_icmp_reply_translation`, Cilium's handling of fragmentation needed).
//!
//! An error quotes the IP header and the first bytes of the packet it is about. That packet
//! went one way of a tracked flow, so the quote's reversed 5-tuple is the key of the flow's
//! other direction:
//! - on ingress, an error from the client's side about a reply (quote: frontend -> client) is
//!   found by the flow's original entry and goes on to the backend: quote backend -> client
//!   (source NAT: backend -> node:port), outer destination the backend (source NAT: outer
//!   source the node address, redirected like the flow's packets). This is how a router
//!   with a smaller MTU in front of the client reaches the backend, so PMTU discovery works;
//! - on ingress, an error from the backend's side about a source-NATed packet (quote:
//!   node:port -> backend) is found by the reply entry and goes back to the client as
//!   frontend -> client;
//! - on egress, an error from a local backend (or this node) about a client's packet after
//!   DNAT (quote: client -> backend) is found by the reply entry and leaves as coming from
//!   the frontend, quote client -> frontend.
//!
//! Like netfilter, the outer header is rewritten to the flow's addresses whoever sent the
//! error (a router on the way appears as the frontend or the backend), so the receiver's
//! stack matches it to its socket. The outer IP checksum, the quoted IP header's checksum,
//! the quoted TCP/UDP checksum when the quote holds it and the ICMP checksum are all kept right
//! through the checksum helpers (ICMP has no pseudo header).
use aya_ebpf::programs::TcContext;
use switchyard_common::{
    CtKey, CtValue, CT_FLAG_REPLY, CT_FLAG_SNAT, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
};

use super::{fragments, Ipv4Hdr, DROP, IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF, L4_OFF, PASS};
use crate::maps::CONNTRACK;

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETERPROB: u8 = 12;
const ICMP_CSUM_OFF: usize = L4_OFF + 2;
/// The quoted IP header, right after the 8-byte ICMP header.
const INNER_IP_OFF: usize = L4_OFF + 8;
const INNER_IP_CSUM_OFF: usize = INNER_IP_OFF + 10;
const INNER_SRC_OFF: usize = INNER_IP_OFF + 12;
const INNER_DST_OFF: usize = INNER_IP_OFF + 16;
/// The quoted TCP/UDP header (only quoted IP headers without options are translated).
const INNER_L4_OFF: usize = INNER_IP_OFF + 20;
const INNER_SPORT_OFF: usize = INNER_L4_OFF;
const INNER_DPORT_OFF: usize = INNER_L4_OFF + 2;
const INNER_UDP_CSUM_OFF: usize = INNER_L4_OFF + 6;
const INNER_TCP_CSUM_OFF: usize = INNER_L4_OFF + 16;

/// The quoted packet, addresses and ports in network order.
#[derive(Clone, Copy)]
struct Quote {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    proto: u8,
    /// Offset of the quoted TCP/UDP checksum, if the quote holds it and it is in use.
    csum_off: Option<usize>,
}

impl Quote {
    /// The key of the flow direction opposite to the quoted packet's.
    fn reversed_key(&self) -> CtKey {
        CtKey {
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
/// source-NATed packets.
#[inline(always)]
pub(super) fn ingress(ctx: &TcContext) -> i32 {
    let Some(quote) = quote(ctx) else {
        return PASS;
    };
    // SAFETY: copied out at once.
    let Some(flow) = (unsafe { CONNTRACK.get(quote.reversed_key()) }).copied() else {
        return PASS;
    };
    let translated = if flow.flags & CT_FLAG_REPLY == 0 {
        towards_backend(ctx, &quote, &flow)
    } else if flow.flags & CT_FLAG_SNAT != 0 {
        towards_client(ctx, &quote, &flow)
    } else {
        // A reply entry of a DNAT-only flow: its errors leave on egress, not arrive here.
        return PASS;
    };
    translated.unwrap_or(DROP)
}

/// Egress: errors from a local backend (or this node) about a client's packet after DNAT.
#[inline(always)]
pub(super) fn egress(ctx: &TcContext) -> i32 {
    let Some(quote) = quote(ctx) else {
        return PASS;
    };
    // SAFETY: copied out at once.
    let Some(flow) = (unsafe { CONNTRACK.get(quote.reversed_key()) }).copied() else {
        return PASS;
    };
    if flow.flags & (CT_FLAG_REPLY | CT_FLAG_SNAT) != CT_FLAG_REPLY {
        return PASS;
    }
    // Quote client -> backend becomes client -> frontend, from the frontend.
    let rewritten = inner_addr(ctx, &quote, INNER_DST_OFF, quote.daddr, flow.addr)
        .and_then(|()| inner_port(ctx, &quote, INNER_DPORT_OFF, quote.dport, flow.port))
        .and_then(|()| outer_addr(ctx, IP_SRC_OFF, flow.addr));
    if rewritten.is_err() {
        return DROP;
    }
    PASS
}

/// An error about a reply (quote frontend -> client) goes to the backend.
#[inline(always)]
fn towards_backend(ctx: &TcContext, quote: &Quote, flow: &CtValue) -> Result<i32, i64> {
    inner_addr(ctx, quote, INNER_SRC_OFF, quote.saddr, flow.addr)?;
    inner_port(ctx, quote, INNER_SPORT_OFF, quote.sport, flow.port)?;
    outer_addr(ctx, IP_DST_OFF, flow.addr)?;
    if flow.flags & CT_FLAG_SNAT == 0 {
        // DNAT only: the kernel routes it to the backend, as it does the flow's packets.
        return Ok(PASS);
    }
    // The backend knows the client as node:port.
    inner_addr(ctx, quote, INNER_DST_OFF, quote.daddr, flow.nat_addr)?;
    inner_port(ctx, quote, INNER_DPORT_OFF, quote.dport, flow.nat_port)?;
    outer_addr(ctx, IP_SRC_OFF, flow.nat_addr)?;
    Ok(super::redirect(ctx, PROTO_ICMP, flow.nat_addr, flow.addr))
}

/// An error about a source-NATed packet (quote node:port -> backend) goes to the client.
#[inline(always)]
fn towards_client(ctx: &TcContext, quote: &Quote, flow: &CtValue) -> Result<i32, i64> {
    inner_addr(ctx, quote, INNER_SRC_OFF, quote.saddr, flow.nat_addr)?;
    inner_port(ctx, quote, INNER_SPORT_OFF, quote.sport, flow.nat_port)?;
    inner_addr(ctx, quote, INNER_DST_OFF, quote.daddr, flow.addr)?;
    inner_port(ctx, quote, INNER_DPORT_OFF, quote.dport, flow.port)?;
    outer_addr(ctx, IP_SRC_OFF, flow.addr)?;
    outer_addr(ctx, IP_DST_OFF, flow.nat_addr)?;
    Ok(super::redirect(ctx, PROTO_ICMP, flow.addr, flow.nat_addr))
}

/// The packet an ICMP error quotes, if it is an error quoting a plain IPv4 TCP/UDP packet
/// with its ports.
#[inline(always)]
fn quote(ctx: &TcContext) -> Option<Quote> {
    let icmp_type: u8 = ctx.load(L4_OFF).ok()?;
    if !matches!(
        icmp_type,
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETERPROB
    ) {
        return None;
    }
    let inner: Ipv4Hdr = ctx.load(INNER_IP_OFF).ok()?;
    // A quoted later fragment has no ports to match (a quoted first fragment has them).
    if !inner.is_plain()
        || fragments::kind(&inner) == fragments::LATER
        || !matches!(inner.proto, PROTO_TCP | PROTO_UDP)
    {
        return None;
    }
    let ports: [u8; 4] = ctx.load(INNER_L4_OFF).ok()?;
    let csum_off = if inner.proto == PROTO_UDP {
        INNER_UDP_CSUM_OFF
    } else {
        INNER_TCP_CSUM_OFF
    };
    // A quote may stop after the 8 bytes with the ports (RFC 792); a UDP checksum of 0 is
    // "none" and stays so.
    let csum_off = match ctx.load::<u16>(csum_off) {
        Ok(csum) if !(inner.proto == PROTO_UDP && csum == 0) => Some(csum_off),
        _ => None,
    };
    Some(Quote {
        saddr: inner.saddr,
        daddr: inner.daddr,
        sport: u16::from_ne_bytes([ports[0], ports[1]]),
        dport: u16::from_ne_bytes([ports[2], ports[3]]),
        proto: inner.proto,
        csum_off,
    })
}

/// An outer address becomes `new` (the outer IP checksum follows).
#[inline(always)]
fn outer_addr(ctx: &TcContext, off: usize, new: u32) -> Result<(), i64> {
    let old: u32 = ctx.load(off)?;
    if old == new {
        return Ok(());
    }
    ctx.store(off, &new, 0)?;
    ctx.l3_csum_replace(IP_CSUM_OFF, old as u64, new as u64, 4)
}

/// A quoted address becomes `new`: the quoted IP header's checksum, the quoted L4
/// checksum (the address is in its pseudo header) and the ICMP checksum follow.
#[inline(always)]
fn inner_addr(ctx: &TcContext, quote: &Quote, off: usize, old: u32, new: u32) -> Result<(), i64> {
    if old == new {
        return Ok(());
    }
    ctx.store(off, &new, 0)?;
    icmp_csum(ctx, old as u64, new as u64, 4)?;
    quoted_csum(ctx, INNER_IP_CSUM_OFF, old as u64, new as u64, 4)?;
    if let Some(csum_off) = quote.csum_off {
        quoted_csum(ctx, csum_off, old as u64, new as u64, 4)?;
    }
    Ok(())
}

/// A quoted port becomes `new`: the quoted L4 checksum and the ICMP checksum follow.
#[inline(always)]
fn inner_port(ctx: &TcContext, quote: &Quote, off: usize, old: u16, new: u16) -> Result<(), i64> {
    if old == new {
        return Ok(());
    }
    ctx.store(off, &new, 0)?;
    icmp_csum(ctx, old as u64, new as u64, 2)?;
    if let Some(csum_off) = quote.csum_off {
        quoted_csum(ctx, csum_off, old as u64, new as u64, 2)?;
    }
    Ok(())
}

/// Updates a checksum field inside the quote for a change of `size` bytes from `old` to `new`,
/// and the ICMP checksum for the change of that field.
#[inline(always)]
fn quoted_csum(ctx: &TcContext, csum_off: usize, old: u64, new: u64, size: u64) -> Result<(), i64> {
    let before: u16 = ctx.load(csum_off)?;
    // The L3 helper only rewrites the 16-bit field, whatever the skb's checksum state.
    ctx.l3_csum_replace(csum_off, old, new, size)?;
    let after: u16 = ctx.load(csum_off)?;
    icmp_csum(ctx, before as u64, after as u64, 2)
}

/// The ICMP checksum for a change inside the message (no pseudo header). On a
/// `CHECKSUM_PARTIAL` skb the helper leaves the field to the device, which sums it anyway.
#[inline(always)]
fn icmp_csum(ctx: &TcContext, old: u64, new: u64, size: u64) -> Result<(), i64> {
    ctx.l4_csum_replace(ICMP_CSUM_OFF, old, new, size)
}
