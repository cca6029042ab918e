//! Refusing a new IPv6 flow to a frontend without endpoints from the node, as [`super::reject`]
//! does for IPv4 (and kube-proxy's ip6tables REJECT): TCP gets a RST, UDP an ICMPv6 port
//! unreachable (type 1, code 4), sent back out of the device the request arrived on.
//!
//! - The RST is the SYN rewritten in place ([`super::reject::reset_segment`]), so its
//!   checksum stays right in every checksum state of the skb; IPv6 has no header checksum.
//! - The ICMPv6 message is built whole and summed here, pseudo header included. A
//!   `CHECKSUM_PARTIAL` UDP request would have the device write the sum of the bytes from the
//!   L4 header on at the UDP checksum's offset, which in the answer is the second half of the
//!   ICMPv6 header's unused word. That half is set to the pseudo header's sum, as the stack
//!   seeds a partial checksum, and the checksum is computed with it: the message is valid
//!   whether the device writes there or not (receivers ignore the unused word, RFC 4443 3.1).
//! - A request behind extension headers ([`super::v6`] walks them) has them removed first
//!   (`bpf_skb_adjust_room`, the fixed header's next header and payload length set to the
//!   TCP/UDP header's): the answer is then built as for a plain request, and the ICMPv6 quote
//!   is the request's fixed header and UDP header as they would be without the options.
//! - The per-client ICMP rate limit is keyed by the client's whole address, with the node's
//!   IPv4 limits ([`super::refusal_limit`]).
use aya_ebpf::{
    bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_NET, helpers::bpf_skb_change_tail,
    programs::TcContext,
};
use switchyard_common::PROTO_TCP;

use super::{
    refusal_limit,
    reject::{fold, reset_segment, send_back, sum, swap_macs},
    v6::PROTO_ICMPV6,
    DROP, ETH_HLEN, TCP_HLEN, UDP_HLEN,
};

const IP6_HLEN: usize = 40;
const L4_OFF: usize = ETH_HLEN + IP6_HLEN;
/// Hop limit of the answers (Linux's default).
const HOP_LIMIT: u8 = 64;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PORT_UNREACH: u8 = 4;
const ICMPV6_HLEN: usize = 8;
/// What the answer quotes of the request: its IPv6 header and the UDP header.
const QUOTE_LEN: usize = IP6_HLEN + UDP_HLEN;

/// Answers the IPv6 request (TCP SYN or UDP datagram of protocol `proto` from `client`, its
/// header at `l4_off`) with a refusal; the verdict is a redirect, or a drop when the answer
/// cannot be built or an ICMP answer is over the rate limits.
/// Inlined into the entry program: a frame of its own would not fit on top of the entry's and
/// the answer builder's.
#[inline(always)]
pub(super) fn refuse6(
    ctx: &TcContext,
    proto: u8,
    l4_off: usize,
    client: &[u32; 4],
    now: u64,
) -> i32 {
    if l4_off != L4_OFF && strip_extensions(ctx, proto, l4_off).is_err() {
        return DROP;
    }
    let built = if proto == PROTO_TCP {
        tcp_reset6(ctx)
    } else if icmp_allowed(client, now) {
        port_unreachable6(ctx)
    } else {
        return DROP;
    };
    send_back(ctx, built)
}

/// Removes the extension headers between the fixed header and the `proto` header at
/// `l4_off`, leaving a plain IPv6 packet of the same upper-layer bytes. Its own frame, gone
/// before the answer is built.
#[inline(never)]
fn strip_extensions(ctx: &TcContext, proto: u8, l4_off: usize) -> Result<(), i64> {
    let ext_len = l4_off.checked_sub(L4_OFF).ok_or(-1i64)?;
    let payload_len: u16 = ctx.load(ETH_HLEN + 4)?;
    let upper_len = usize::from(u16::from_be(payload_len))
        .checked_sub(ext_len)
        .ok_or(-1i64)?;
    // Bytes right behind the fixed header go; no checksum covers the extension headers.
    ctx.adjust_room(-(ext_len as i32), BPF_ADJ_ROOM_NET, 0)?;
    let len = (upper_len as u16).to_be_bytes();
    ctx.store(ETH_HLEN + 4, &[len[0], len[1], proto], 0)
}

/// [`refusal_limit::allow_icmp6`] in a frame of its own, gone before the answer is built.
#[inline(never)]
fn icmp_allowed(client: &[u32; 4], now: u64) -> bool {
    refusal_limit::allow_icmp6(client, now)
}

/// The SYN turned into RST|ACK from the frontend to the client, without options or payload.
/// Not inlined: its frame and [`port_unreachable6`]'s are never on the stack together.
#[inline(never)]
fn tcp_reset6(ctx: &TcContext) -> Result<(), i64> {
    let tcp: [u8; TCP_HLEN] = ctx.load(L4_OFF)?;
    let hdr_len = usize::from(tcp[12] >> 4) * 4;
    let payload_len: u16 = ctx.load(ETH_HLEN + 4)?;
    // Options and any TCP Fast Open data are summed out, then cut off below.
    reset_segment::<L4_OFF>(ctx, &tcp, hdr_len, usize::from(u16::from_be(payload_len)))?;
    // Payload length and hop limit (next header stays TCP), then the addresses swapped: no
    // checksum covers them but the pseudo header's, which the swap leaves as it is.
    let payload = (TCP_HLEN as u16).to_be_bytes();
    ctx.store(
        ETH_HLEN + 4,
        &[payload[0], payload[1], PROTO_TCP, HOP_LIMIT],
        0,
    )?;
    let addrs: [u8; 32] = ctx.load(ETH_HLEN + 8)?;
    let mut swapped = [0u8; 32];
    swapped[..16].copy_from_slice(&addrs[16..]);
    swapped[16..].copy_from_slice(&addrs[..16]);
    ctx.store(ETH_HLEN + 8, &swapped, 0)?;
    let eth: [u8; ETH_HLEN] = ctx.load(0)?;
    swap_macs(ctx, &eth)?;
    // SAFETY: the program's own skb; shrinking to the headers just written.
    let cut = unsafe { bpf_skb_change_tail(ctx.skb.skb, (L4_OFF + TCP_HLEN) as u32, 0) };
    if cut != 0 {
        return Err(cut);
    }
    Ok(())
}

/// Rebuilds the packet as ICMPv6 port unreachable from the frontend to the client, quoting
/// the datagram's IPv6 and UDP headers: Ethernet, IPv6 and ICMPv6 headers, then the quote,
/// each written on its own from the one copy of the quote (the frame stays small: it sits on
/// top of the entry program's).
#[inline(never)]
fn port_unreachable6(ctx: &TcContext) -> Result<(), i64> {
    let quote: [u8; QUOTE_LEN] = ctx.load(ETH_HLEN)?;
    let macs: [u8; 12] = ctx.load(0)?;
    let len = (ETH_HLEN + IP6_HLEN + ICMPV6_HLEN + QUOTE_LEN) as u32;
    // SAFETY: the program's own skb; the new length is that of what is written below.
    let resized = unsafe { bpf_skb_change_tail(ctx.skb.skb, len, 0) };
    if resized != 0 {
        return Err(resized);
    }
    // To the neighbour the datagram came from (the ethertype stays).
    ctx.store(
        0,
        &[macs[6], macs[7], macs[8], macs[9], macs[10], macs[11]],
        0,
    )?;
    ctx.store(
        6,
        &[macs[0], macs[1], macs[2], macs[3], macs[4], macs[5]],
        0,
    )?;
    let payload = (ICMPV6_HLEN + QUOTE_LEN) as u16;
    let p = payload.to_be_bytes();
    ctx.store(
        ETH_HLEN,
        &[0x60u8, 0, 0, 0, p[0], p[1], PROTO_ICMPV6, HOP_LIMIT],
        0,
    )?;
    // From the address the client sent to, to the client: the quote's destination and
    // source, stored from the quote itself.
    // SAFETY: both ranges lie inside `quote` (bytes 8..24 and 24..40 of 48).
    let (src, dst) = unsafe {
        (
            &*(quote.as_ptr().add(24) as *const [u8; 16]),
            &*(quote.as_ptr().add(8) as *const [u8; 16]),
        )
    };
    ctx.store(ETH_HLEN + 8, src, 0)?;
    ctx.store(ETH_HLEN + 24, dst, 0)?;
    // Pseudo header: both addresses (the quote's, in either order), the upper-layer length,
    // the next header.
    let mut pseudo = u32::from(payload) + u32::from(PROTO_ICMPV6);
    let mut i = 8;
    while i < 40 {
        pseudo += u32::from(u16::from_be_bytes([quote[i], quote[i + 1]]));
        i += 2;
    }
    // The seed a partial checksum would hold (see the module), where the device would write.
    let seed = fold(pseudo);
    let head = u32::from(u16::from_be_bytes([
        ICMPV6_DEST_UNREACH,
        ICMPV6_PORT_UNREACH,
    ]));
    let csum = !fold(pseudo + head + u32::from(seed) + sum(&quote));
    let c = csum.to_be_bytes();
    let s = seed.to_be_bytes();
    let icmp = [
        ICMPV6_DEST_UNREACH,
        ICMPV6_PORT_UNREACH,
        c[0],
        c[1],
        0,
        0,
        s[0],
        s[1],
    ];
    ctx.store(L4_OFF, &icmp, 0)?;
    ctx.store(L4_OFF + ICMPV6_HLEN, &quote, 0)
}
