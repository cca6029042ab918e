//! Refusing a new flow to a frontend without endpoints from the node itself, as kube-proxy's
//! REJECT rule does: TCP gets a RST, UDP an ICMP port unreachable. The request is turned into
//! the answer in place and sent back out of the device it arrived on, to the neighbour it came
//! from (Cilium answers services without backends the same way).
//!
//! The checksums are kept right for every checksum state the request's skb may be in:
//! - the RST reuses the request's TCP checksum and changes it through `bpf_l4_csum_replace`
//!   field by field, so a `CHECKSUM_PARTIAL` skb (a request from a local veth) keeps a
//!   correct pseudo-header seed for the device to finish, and any other gets a full sum;
//! - the ICMP message is summed here. A `CHECKSUM_PARTIAL` UDP request would have the device
//!   write a sum at the UDP checksum's offset, which in the answer is the second half of the
//!   ICMP header's unused word: that word is zero and the message sums to zero, so what gets
//!   written there (0 or 0xffff) leaves the ICMP checksum valid.
use aya_ebpf::{
    bindings::BPF_F_PSEUDO_HDR,
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use switchyard_common::{PROTO_ICMP, PROTO_TCP};

use super::{
    fragments, refusal_limit, Ipv4Hdr, Packet, DROP, ETH_HLEN, IP_CSUM_OFF, L4_OFF, TCP_HLEN,
    UDP_HLEN,
};

const IP_HLEN: usize = 20;
/// TTL of the answers (Linux's default).
const TTL: u8 = 64;
/// TCP header length in 32-bit words, as the data offset nibble holds it.
const TCP_DOFF_PLAIN: u8 = (TCP_HLEN / 4) as u8;
/// Longest SYN segment answered (header, options, TCP Fast Open data): a 1500-byte MTU's.
/// Its words are summed out one by one (a bounded loop the verifier walks through); a longer
/// one (jumbo frames) is dropped, and the client's retry without data refused.
const SYN_SEG_MAX: usize = 1480;
const TCP_FLAG_RST: u8 = 0x04;
const TCP_FLAG_ACK: u8 = 0x10;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMP_HLEN: usize = 8;
/// What of the request an ICMP error quotes: its IP header and the first 8 bytes after it
/// (RFC 792), which hold the UDP ports the client's socket is matched by.
const QUOTE_LEN: usize = IP_HLEN + UDP_HLEN;

/// Answers the request `pkt` (TCP SYN or UDP datagram) with a refusal; the verdict is a
/// redirect, or a drop when the answer cannot be built or an ICMP answer is over the rate
/// limits ([`refusal_limit`]).
#[inline(always)]
pub(super) fn refuse(ctx: &TcContext, pkt: &Packet, now: u64) -> i32 {
    let built = if pkt.proto == PROTO_TCP {
        if pkt.fragment != fragments::WHOLE {
            // A fragmented SYN (never sent by a Linux client: TCP sizes its segments to the
            // path) is not answered: the reset would be built from one fragment of it.
            return DROP;
        }
        tcp_reset(ctx)
    } else if refusal_limit::allow_icmp(pkt.saddr, now) {
        port_unreachable(ctx)
    } else {
        // Over the kernel's ICMP rate limits: nothing is sent, as the kernel sends nothing.
        return DROP;
    };
    send_back(ctx, built)
}

/// The verdict for an answer built in place (`built`): out of the receiving device, the way
/// the request came, or a drop when it could not be built. Either family.
#[inline(always)]
pub(super) fn send_back(ctx: &TcContext, built: Result<(), i64>) -> i32 {
    if built.is_err() {
        return DROP;
    }
    // SAFETY: reading a field of the program's own skb.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain helper call; it only records the target for after the program.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// Turns a SYN (RFC 9293 3.10.7.1: no ACK, so the RST has sequence number 0 and acknowledges
/// the SYN and any data it carries) into RST|ACK from the frontend to the client, without
/// options or payload.
#[inline(always)]
fn tcp_reset(ctx: &TcContext) -> Result<(), i64> {
    let eth: [u8; ETH_HLEN] = ctx.load(0)?;
    let ip: Ipv4Hdr = ctx.load(ETH_HLEN)?;
    let tcp: [u8; TCP_HLEN] = ctx.load(L4_OFF)?;
    let hdr_len = usize::from(tcp[12] >> 4) * 4;
    let seg_len = usize::from(u16::from_be(ip.tot_len)).wrapping_sub(IP_HLEN);
    reset_segment::<L4_OFF>(ctx, &tcp, hdr_len, seg_len)?;
    reverse_ip(ctx, &ip, (IP_HLEN + TCP_HLEN) as u16, PROTO_TCP)?;
    swap_macs(ctx, &eth)?;
    // SAFETY: the program's own skb; shrinking to the headers just written.
    let cut = unsafe { bpf_skb_change_tail(ctx.skb.skb, (L4_OFF + TCP_HLEN) as u32, 0) };
    if cut != 0 {
        return Err(cut);
    }
    Ok(())
}

/// Rewrites the SYN `tcp` (header of `hdr_len` bytes, segment of `seg_len` with a TCP Fast
/// Open payload) at offset `L4` into the RST|ACK that answers it, in place: options and
/// payload summed out of the checksum (the caller cuts them off), the fixed fields changed
/// through `bpf_l4_csum_replace` (so every checksum state of the skb stays right), the ports
/// swapped, and the pseudo header's length updated. Either family: the addresses' swap
/// changes no sum. A segment over [`SYN_SEG_MAX`] is an error (not answered).
#[inline(always)]
pub(super) fn reset_segment<const L4: usize>(
    ctx: &TcContext,
    tcp: &[u8; TCP_HLEN],
    hdr_len: usize,
    seg_len: usize,
) -> Result<(), i64> {
    let csum_off = L4 + 16;
    if hdr_len < TCP_HLEN || seg_len < hdr_len || seg_len > SYN_SEG_MAX {
        return Err(-1);
    }
    // The fixed header's words, as raw network-order values (the helpers take them so). All
    // read before the first store: the compiler reuses `tcp`'s stack for the stored values,
    // and kept its bytes in stack slots of their own otherwise (32 bytes more of the entry
    // program's stack, which is near the verifier's limit).
    let word = |at: usize| u32::from_ne_bytes([tcp[at], tcp[at + 1], tcp[at + 2], tcp[at + 3]]);
    let (seq_word, ack_word, flags_word) = (word(4), word(8), word(12));
    let urgent = u16::from_ne_bytes([tcp[18], tcp[19]]);
    let ports = u32::from_ne_bytes([tcp[2], tcp[3], tcp[0], tcp[1]]);
    let seq = u32::from_be(seq_word);
    // SEG.SEQ + SEG.LEN: the SYN and its data (as Linux's own resets).
    let ack = seq.wrapping_add(1 + (seg_len - hdr_len) as u32);
    let fields: [(usize, u32, u32); 3] = [
        (4, seq_word, 0),
        (8, ack_word, ack.to_be()),
        (
            12,
            flags_word,
            u32::from_ne_bytes([TCP_DOFF_PLAIN << 4, TCP_FLAG_RST | TCP_FLAG_ACK, 0, 0]),
        ),
    ];
    for (at, old, new) in fields {
        ctx.store(L4 + at, &new, 0)?;
        ctx.l4_csum_replace(csum_off, old as u64, new as u64, 4)?;
    }
    ctx.store(L4 + 18, &0u16, 0)?;
    ctx.l4_csum_replace(csum_off, urgent as u64, 0, 2)?;
    // Swapping the ports or the addresses changes no sum; the TCP length in the pseudo
    // header does.
    ctx.store(L4, &ports, 0)?;
    // Everything after the fixed header goes: each of its words leaves the checksum before
    // the packet is cut, a last short word padded with zeros as the checksum pads it. (The
    // skb may be longer than the segment: Ethernet padding, never summed.) The loop takes the
    // whole words only; the short one is summed out apart, at an offset from `seg_len` alone.
    // The verifier walks every iteration of a bounded loop, and with the short word inside
    // (or an exit that still needs the loop's offset) it also walked what follows once per
    // iteration (39,000 of the program's instructions verified; now the loop's exits join).
    let tail = seg_len & 3;
    if tail != 0 {
        // The segment's last four bytes (inside it: it is at least a header long), shifted
        // so that its last `tail` bytes lead and zeros follow.
        let last = u32::from_be(ctx.load::<u32>(L4 + seg_len - 4)?);
        let word = (last << (8 * (4 - tail))).to_be();
        ctx.l4_csum_replace(csum_off, word as u64, 0, 4)?;
    }
    let words_end = seg_len & !3;
    let mut off = TCP_HLEN;
    while off < SYN_SEG_MAX {
        if off >= words_end {
            break;
        }
        let word = ctx.load::<u32>(L4 + off)?;
        ctx.l4_csum_replace(csum_off, word as u64, 0, 4)?;
        off += 4;
    }
    let old_len = (seg_len as u16).to_be();
    let new_len = (TCP_HLEN as u16).to_be();
    ctx.l4_csum_replace(
        csum_off,
        old_len as u64,
        new_len as u64,
        BPF_F_PSEUDO_HDR as u64 | 2,
    )
}

/// Swaps the addresses and sets the total length, TTL and protocol of the header in place,
/// with its checksum updated (the swap itself leaves it as it is).
#[inline(always)]
fn reverse_ip(ctx: &TcContext, ip: &Ipv4Hdr, tot_len: u16, proto: u8) -> Result<(), i64> {
    let tot_len = tot_len.to_be();
    ctx.store(ETH_HLEN + 2, &tot_len, 0)?;
    ctx.l3_csum_replace(IP_CSUM_OFF, ip.tot_len as u64, tot_len as u64, 2)?;
    let old_ttl_proto = u16::from_ne_bytes([ip.ttl, ip.proto]);
    let ttl_proto = u16::from_ne_bytes([TTL, proto]);
    ctx.store(ETH_HLEN + 8, &ttl_proto, 0)?;
    ctx.l3_csum_replace(IP_CSUM_OFF, old_ttl_proto as u64, ttl_proto as u64, 2)?;
    ctx.store(ETH_HLEN + 12, &[ip.daddr, ip.saddr], 0)
}

/// The answer goes to the neighbour the request came from, from the address it was sent to.
#[inline(always)]
pub(super) fn swap_macs(ctx: &TcContext, eth: &[u8; ETH_HLEN]) -> Result<(), i64> {
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&eth[6..12]);
    swapped[6..].copy_from_slice(&eth[..6]);
    ctx.store(0, &swapped, 0)
}

/// The ICMP port unreachable answering a UDP datagram, as laid out on the wire.
#[repr(C)]
struct Unreachable {
    eth: [u8; ETH_HLEN],
    ip: [u8; IP_HLEN],
    icmp: [u8; ICMP_HLEN],
    quote: [u8; QUOTE_LEN],
}

/// Rebuilds the packet as ICMP port unreachable from the frontend to the client, quoting the
/// datagram's IP header and UDP header.
#[inline(always)]
fn port_unreachable(ctx: &TcContext) -> Result<(), i64> {
    let eth: [u8; ETH_HLEN] = ctx.load(0)?;
    let quote: [u8; QUOTE_LEN] = ctx.load(ETH_HLEN)?;
    let mut answer = Unreachable {
        eth: [0; ETH_HLEN],
        ip: [0; IP_HLEN],
        icmp: [ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0, 0, 0, 0, 0, 0],
        quote,
    };
    answer.eth[..6].copy_from_slice(&eth[6..12]);
    answer.eth[6..12].copy_from_slice(&eth[..6]);
    answer.eth[12..].copy_from_slice(&eth[12..]);
    let tot_len = ((IP_HLEN + ICMP_HLEN + QUOTE_LEN) as u16).to_be_bytes();
    // Version/IHL, the request's TOS, length; id, flags and fragment offset 0; TTL, ICMP.
    answer.ip[..4].copy_from_slice(&[0x45, quote[1], tot_len[0], tot_len[1]]);
    answer.ip[8] = TTL;
    answer.ip[9] = PROTO_ICMP;
    // From the address the client sent to, to the client.
    answer.ip[12..16].copy_from_slice(&quote[16..20]);
    answer.ip[16..20].copy_from_slice(&quote[12..16]);
    let ip_csum = !fold(sum(&answer.ip));
    answer.ip[10..12].copy_from_slice(&ip_csum.to_be_bytes());
    let icmp_csum = !fold(sum(&answer.icmp) + sum(&answer.quote));
    answer.icmp[2..4].copy_from_slice(&icmp_csum.to_be_bytes());
    let len = core::mem::size_of::<Unreachable>() as u32;
    // SAFETY: the program's own skb; the new length is that of what is written below.
    let resized = unsafe { bpf_skb_change_tail(ctx.skb.skb, len, 0) };
    if resized != 0 {
        return Err(resized);
    }
    ctx.store(0, &answer, 0)
}

/// Ones' complement sum of big-endian 16-bit words (`N` is even), not folded.
#[inline(always)]
pub(super) fn sum<const N: usize>(bytes: &[u8; N]) -> u32 {
    let mut total = 0u32;
    let mut i = 0;
    while i + 1 < N {
        total += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    total
}

/// Folds a 32-bit sum into 16 bits.
#[inline(always)]
pub(super) fn fold(mut total: u32) -> u16 {
    total = (total & 0xffff) + (total >> 16);
    total = (total & 0xffff) + (total >> 16);
    total as u16
}
