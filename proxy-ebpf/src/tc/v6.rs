//! The IPv6 twin of the tc path (ethertype 0x86DD): DNAT of IPv6 external frontends
//! (`SWY_SERVICES6` entries of `SCOPE_EXTERNAL`), reverse translation of replies on egress,
//! source NAT of masqueraded flows to remote backends and loadBalancerSourceRanges, with maps of
//! its own (`SWY_CONNTRACK6`, `SWY_SNAT_ADDRS6`, `SWY_SOURCE_RANGES6`) so that the IPv4 keys
//! and their lookups stay as they were. The flow logic is the IPv4 path's (see [`super`]).
//!
//! Differences from IPv4:
//! - no IP header checksum; the TCP/UDP checksum covers the 128-bit addresses through the
//!   pseudo header, updated with `bpf_csum_diff` over the old and new address and one
//!   `bpf_l4_csum_replace` (`BPF_F_PSEUDO_HDR`) with the difference;
//! - extension headers are walked ([`upper_layer`]): hop-by-hop and destination options, a
//!   routing header with no segments left and a fragment header are skipped to the TCP/UDP
//!   header, which is then translated as without them (the headers stay as they were: none
//!   covers the addresses or ports). The later fragments of a datagram follow its first one
//!   ([`super::fragments`]). A routing header with segments left (the destination is a
//!   waypoint, not the frontend), AH/ESP (translation would break or cannot see them) and
//!   chains longer than [`MAX_EXTENSIONS`] pass untouched, as ICMPv6 errors quoting them do;
//! - services without endpoints are refused from here, as IPv4's ([`super::reject6`]);
//! - ICMPv6 errors about translated flows (packet too big...) are translated as IPv4's
//!   ICMP errors are ([`super::icmp_error6`]), and the source-NAT port of an ended flow is
//!   taken over as IPv4's ([`super::snat_reuse`]).
// Keys and values are passed to the map calls by reference: they are built once on the
// stack, and a copy per call would add to a frame that has little room (see `track`).
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, bpf_redir_neigh, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST,
    },
    helpers::{
        bpf_csum_diff, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect, bpf_redirect_neigh,
    },
    macros::{classifier, map},
    maps::{lpm_trie::Key, ProgramArray},
    programs::TcContext,
};
use switchyard_common::{
    CtKey6, CtValue6, ServiceKey6, ServiceValue, SourceRangeKey6, CT_FLAG_REPLY, CT_FLAG_SNAT,
    CT_STATE_FIN, CT_STATE_RST, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SERVICE_FLAG_AFFINITY,
    SERVICE_FLAG_DROP_EMPTY, SERVICE_FLAG_HANDOVER, SERVICE_FLAG_MASQUERADE,
    SERVICE_FLAG_SOURCE_RANGES,
};

use super::{
    fib_lookup, fragments, opens, seen, DROP, ETH_DST_OFF, ETH_HLEN, ETH_SRC_OFF, PASS,
    SNAT_PORT_TRIES, TCP_HLEN, UDP_HLEN,
};
use crate::{
    lb,
    maps::{CONNTRACK6, SERVICES6, SNAT_ADDRS6, SNAT_CONFIG, SOURCE_RANGES6},
};

const IP6_HLEN: usize = 40;
pub(super) const IP6_SRC_OFF: usize = ETH_HLEN + 8;
pub(super) const IP6_DST_OFF: usize = ETH_HLEN + 24;
pub(super) const L4_OFF: usize = ETH_HLEN + IP6_HLEN;
/// Offsets inside the TCP/UDP header, which extension headers may put anywhere.
const L4_DST_PORT: usize = 2;
const TCP_FLAGS: usize = 13;
const TCP_CSUM: usize = 16;
const UDP_CSUM: usize = 6;
/// Most extension headers walked before the TCP/UDP header: RFC 8200's recommended order
/// has hop-by-hop, destination options, routing, destination options.
const MAX_EXTENSIONS: usize = 4;
/// Next header values of the extension headers that are walked (RFC 8200 4).
const NEXT_HOP_BY_HOP: u8 = 0;
const NEXT_ROUTING: u8 = 43;
const NEXT_FRAGMENT: u8 = 44;
/// Fragment header: the offset (13 bits, in 8-byte units) and "more fragments" bits of its
/// third and fourth bytes.
const FRAGMENT_OFFSET_MASK: u16 = 0xfff8;
const MORE_FRAGMENTS: u16 = 0x0001;
const NEXT_DEST_OPTIONS: u8 = 60;
const AF_INET6: u8 = 10;
/// Next header of ICMPv6.
pub(super) const PROTO_ICMPV6: u8 = 58;

/// The fixed IPv6 header as it is on the wire.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct Ipv6Hdr {
    /// Version (4 bits), traffic class, flow label.
    pub(super) vtc_flow: [u8; 4],
    pub(super) payload_len: u16,
    pub(super) next_header: u8,
    pub(super) hop_limit: u8,
    pub(super) saddr: [u32; 4],
    pub(super) daddr: [u32; 4],
}

/// What the programs need of one IPv6 TCP/UDP packet (addresses as the maps hold them).
#[derive(Clone, Copy)]
pub(super) struct Packet6 {
    pub(super) saddr: [u32; 4],
    pub(super) daddr: [u32; 4],
    pub(super) sport: u16,
    pub(super) dport: u16,
    pub(super) proto: u8,
    /// TCP flags byte (0 for UDP and for a later fragment).
    tcp_flags: u8,
    /// Where the TCP/UDP header starts: [`L4_OFF`] unless extension headers precede it
    /// (at most [`MAX_EXTENSIONS`] of at most 2 KiB each); 0 for a later fragment, which has
    /// none ([`Packet6::later_fragment`]). Narrow, and the checksum's place and flags derived
    /// from it, and no fragment fields: the struct sits in the deepest frames, whose stack is
    /// at its limit.
    l4_off: u16,
}

impl Packet6 {
    /// Whether this is a later fragment of a datagram (no TCP/UDP header; the ports are its
    /// first fragment's).
    #[inline(always)]
    fn later_fragment(&self) -> bool {
        self.l4_off == 0
    }

    /// Where the TCP/UDP checksum is.
    #[inline(always)]
    fn csum_off(&self) -> usize {
        usize::from(self.l4_off)
            + if self.proto == PROTO_UDP {
                UDP_CSUM
            } else {
                TCP_CSUM
            }
    }

    /// `BPF_F_MARK_MANGLED_0` for UDP: a computed zero becomes 0xffff (zero means "no
    /// checksum", which IPv6 forbids; a zero field is left alone, the packet is invalid
    /// anyway).
    #[inline(always)]
    fn csum_flags(&self) -> u64 {
        if self.proto == PROTO_UDP {
            BPF_F_MARK_MANGLED_0 as u64
        } else {
            0
        }
    }

    fn ct_key(&self) -> CtKey6 {
        CtKey6 {
            src_addr: self.saddr,
            dst_addr: self.daddr,
            src_port: self.sport,
            dst_port: self.dport,
            proto: self.proto,
            pad: [0; 3],
        }
    }
}

/// [`TC_V6`] slot of [`swy_tc_ingress6`].
pub(super) const INGRESS: u32 = 0;
/// [`TC_V6`] slot of [`swy_tc_egress6`].
pub(super) const EGRESS: u32 = 1;

/// The IPv6 programs, tail-called from the IPv4 ones (userspace fills the slots at load): the
/// IPv4 path's stack (440 bytes) leaves no room for a call to another function with frames of
/// its own, and the tail call costs the IPv4 path nothing but the ethertype branch.
#[map(name = "SWY_TC_V6")]
static TC_V6: ProgramArray = ProgramArray::with_max_entries(2, 0);

/// Continues an IPv6 packet in its program; an empty slot (not filled yet) passes it.
#[inline(always)]
pub(super) fn enter(ctx: &TcContext, slot: u32) -> i32 {
    // SAFETY: a tail call into a program of the same type; on failure it returns here.
    unsafe { TC_V6.tail_call(ctx, slot) };
    PASS
}

/// tc ingress for an IPv6 packet (tail-called by `swy_tc_ingress`).
#[classifier]
pub fn swy_tc_ingress6(ctx: TcContext) -> i32 {
    match parse(&ctx) {
        Some(pkt) => ingress_packet(&ctx, &pkt),
        None => super::icmp_error6::ingress(&ctx),
    }
}

/// tc egress for an IPv6 packet (tail-called by `swy_tc_egress`).
#[classifier]
pub fn swy_tc_egress6(ctx: TcContext) -> i32 {
    match parse(&ctx) {
        Some(pkt) => egress_packet(&ctx, &pkt),
        None => super::icmp_error6::egress(&ctx),
    }
}

/// The TCP/UDP packet behind the fixed header and any extension headers [`upper_layer`]
/// walks, or None (ICMPv6, truncated headers, a later fragment of a datagram not matched...:
/// passed untouched, but for ICMPv6 errors, [`super::icmp_error6`]).
#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Packet6> {
    let ip: Ipv6Hdr = ctx.load(ETH_HLEN).ok()?;
    if ip.vtc_flow[0] >> 4 != 6 {
        return None;
    }
    let upper = upper_layer(ctx, ip.next_header, L4_OFF)?;
    if upper.fragment == fragments::LATER {
        let first = fragments::ports6(&ip.saddr, &ip.daddr, upper.frag_id)?;
        return Some(Packet6 {
            saddr: ip.saddr,
            daddr: ip.daddr,
            sport: first.sport,
            dport: first.dport,
            proto: first.proto,
            tcp_flags: 0,
            l4_off: 0,
        });
    }
    let (proto, l4_off) = (upper.proto, upper.off);
    let (l4, tcp_flags) = match proto {
        PROTO_TCP => {
            let tcp: [u8; TCP_HLEN] = ctx.load(l4_off).ok()?;
            (tcp, tcp[TCP_FLAGS])
        }
        PROTO_UDP => {
            let udp: [u8; UDP_HLEN] = ctx.load(l4_off).ok()?;
            let mut l4 = [0u8; TCP_HLEN];
            l4[..UDP_HLEN].copy_from_slice(&udp);
            (l4, 0)
        }
        _ => return None,
    };
    let pkt = Packet6 {
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport: u16::from_ne_bytes([l4[0], l4[1]]),
        dport: u16::from_ne_bytes([l4[2], l4[3]]),
        proto,
        tcp_flags,
        l4_off: u16::try_from(l4_off).ok()?,
    };
    if upper.fragment == fragments::FIRST {
        // Recorded for every first fragment of a TCP/UDP datagram, not only once matched as
        // IPv4's: the fragment's identity does not fit the programs' stack to the match. IPv6
        // routers never fragment, so these are rare (a sender's own datagrams over its MTU).
        fragments::remember6(&pkt, upper.frag_id);
    }
    Some(pkt)
}

/// Where [`upper_layer`] found the upper-layer header, and whether it walked a fragment header.
pub(super) struct UpperLayer {
    pub(super) proto: u8,
    pub(super) off: usize,
    /// `fragments::WHOLE`, `FIRST`, or `LATER` (then `proto` and `off` are meaningless: the
    /// fragment holds no upper-layer header).
    pub(super) fragment: u8,
    frag_id: u32,
}

/// The upper-layer protocol behind a fixed header (whose next header is `next`, and whose end
/// is at `start`: a packet's, or a quoted one's) and the offset of its header, past hop-by-hop
/// options (only right behind the fixed header, RFC 8200 4.3), destination options, routing
/// headers with no segments left and a fragment header (a later fragment ends the walk); None
/// for a routing header with segments left, misplaced hop-by-hop options, or a chain longer
/// than [`MAX_EXTENSIONS`]. Any other header ends the walk as the upper layer: the caller
/// takes the protocols it handles (TCP, UDP, ICMPv6), and AH/ESP, which hide the ports or
/// would break, are none of them.
#[inline(always)]
pub(super) fn upper_layer(ctx: &TcContext, mut next: u8, start: usize) -> Option<UpperLayer> {
    let mut off = start;
    let mut fragment = fragments::WHOLE;
    let mut frag_id = 0;
    for _ in 0..MAX_EXTENSIONS {
        match next {
            NEXT_FRAGMENT => {
                // Next header, reserved, offset and flags, identification.
                let header: [u8; 8] = ctx.load(off).ok()?;
                let offset_flags = u16::from_be_bytes([header[2], header[3]]);
                frag_id = u32::from_ne_bytes([header[4], header[5], header[6], header[7]]);
                next = header[0];
                if offset_flags & FRAGMENT_OFFSET_MASK != 0 {
                    fragment = fragments::LATER;
                    break;
                }
                // Offset 0 without more fragments is an atomic fragment (RFC 8021): whole.
                if offset_flags & MORE_FRAGMENTS != 0 {
                    fragment = fragments::FIRST;
                }
                off += 8;
            }
            NEXT_HOP_BY_HOP | NEXT_DEST_OPTIONS | NEXT_ROUTING => {
                // Next header, length in 8-byte units past the first 8, and (routing) the
                // routing type and segments left.
                let ext: [u8; 4] = ctx.load(off).ok()?;
                if (next == NEXT_HOP_BY_HOP && off != start)
                    || (next == NEXT_ROUTING && ext[3] != 0)
                {
                    return None;
                }
                next = ext[0];
                off += (usize::from(ext[1]) + 1) * 8;
            }
            _ => break,
        }
    }
    // Still at an extension header after MAX_EXTENSIONS: the chain is too long.
    let too_long = fragment != fragments::LATER
        && matches!(
            next,
            NEXT_HOP_BY_HOP | NEXT_DEST_OPTIONS | NEXT_ROUTING | NEXT_FRAGMENT
        );
    (!too_long).then_some(UpperLayer {
        proto: next,
        off,
        fragment,
        frag_id,
    })
}

fn ingress_packet(ctx: &TcContext, pkt: &Packet6) -> i32 {
    if let Some(verdict) = snat_reply(ctx, pkt) {
        return verdict;
    }
    let service_key = ServiceKey6 {
        addr: pkt.daddr,
        port: pkt.dport,
        proto: pkt.proto,
        scope: SCOPE_EXTERNAL,
    };
    // SAFETY: copied out at once.
    let Some(service) = (unsafe { SERVICES6.get(service_key) }).copied() else {
        return PASS;
    };
    let mut flow = CtValue6::default();
    let tracked = track(pkt, &mut flow);
    match tracked {
        FLOW_READY => {}
        FLOW_NEW => {
            // A new flow, in steps of their own frames (the combined stack stays in bounds).
            let chosen = choose(ctx, pkt, &service, &mut flow);
            if chosen == FLOW_REFUSE {
                // From this frame: choose's is gone, so the answer's fits the stack.
                // SAFETY: helper without arguments.
                let now = unsafe { bpf_ktime_get_ns() };
                return super::reject6::refuse6(
                    ctx,
                    pkt.proto,
                    usize::from(pkt.l4_off),
                    &pkt.saddr,
                    now,
                );
            }
            if chosen != FLOW_READY {
                return chosen;
            }
            let mut recorded = SNAT_DNAT_ONLY;
            if service.flags & SERVICE_FLAG_MASQUERADE != 0
                && behind_ingress_device(ctx, pkt, &flow.addr)
            {
                recorded = snat_flow(ctx, pkt, &mut flow);
            }
            if recorded == SNAT_DNAT_ONLY {
                recorded = dnat_flow(pkt, &mut flow);
            }
            if recorded != FLOW_READY {
                return recorded;
            }
        }
        verdict => return verdict,
    }
    if flow.flags & CT_FLAG_SNAT != 0 {
        return forward_snat(ctx, pkt, &flow);
    }
    let rewritten = rewrite(ctx, pkt, true, &flow.addr, flow.port);
    if rewritten != 0 {
        return DROP;
    }
    PASS
}

/// The step results of a new flow: [`FLOW_READY`] (go on with `flow`), or a verdict.
const FLOW_READY: i32 = -101;
/// [`track`]: no live entry, a new flow starts.
const FLOW_NEW: i32 = -102;
/// [`choose`]: no endpoints, the request is refused.
const FLOW_REFUSE: i32 = -103;

/// The tracked flow of the packet (as IPv4's `ingress`): [`FLOW_READY`] with its entry in
/// `flow`, [`FLOW_NEW`] if there is none (or its TCP connection ended and a SYN starts a new
/// one), or the verdict for a packet of another flow's reply tuple.
#[inline(never)]
fn track(pkt: &Packet6, flow: &mut CtValue6) -> i32 {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = pkt.ct_key();
    let Some(entry) = CONNTRACK6.get_ptr_mut(&key) else {
        return FLOW_NEW;
    };
    // SAFETY: a valid map value pointer for the duration of the program; writers race only
    // on the timestamp and the state bits (as IPv4's `ingress`).
    let value = unsafe { &*entry };
    if value.flags & CT_FLAG_REPLY != 0 {
        // This 5-tuple is the reply of another translated flow: not ours to touch.
        return PASS;
    }
    let syn = opens(pkt.proto, pkt.tcp_flags) && pkt.proto == PROTO_TCP;
    if syn && ended(pkt, value) {
        // A new connection on the tuple of one that ended: a backend chosen anew.
        let _ = CONNTRACK6.remove(&reply_key_of(pkt, value));
        let _ = CONNTRACK6.remove(&key);
        return FLOW_NEW;
    }
    *flow = *value;
    if syn {
        reopen(entry, pkt, flow, now);
    } else {
        touch(entry, pkt, flow.state, now);
    }
    FLOW_READY
}

/// As the first half of IPv4's `new_flow`: whether the packet may start a flow, and its
/// backend (written to `flow.addr`, `flow.port`, with the service's flags). [`FLOW_READY`] or
/// the verdict for the packet.
#[inline(never)]
fn choose(ctx: &TcContext, pkt: &Packet6, service: &ServiceValue, flow: &mut CtValue6) -> i32 {
    if service.flags & SERVICE_FLAG_HANDOVER != 0 {
        return PASS;
    }
    // Nor does a later fragment whose first fragment started no flow (as IPv4's).
    if pkt.later_fragment() || !opens(pkt.proto, pkt.tcp_flags) {
        return if forwarded(ctx, pkt) { DROP } else { PASS };
    }
    if service.flags & SERVICE_FLAG_SOURCE_RANGES != 0 {
        // The LoadBalancer IP's 128 bits, then the client's up to the range's prefix.
        let range_key = Key::new(
            256,
            SourceRangeKey6 {
                lb_addr: pkt.daddr,
                client_addr: pkt.saddr,
            },
        );
        if SOURCE_RANGES6.get(range_key).is_none() {
            return DROP;
        }
    }
    if service.count == 0 {
        // Refused from here, as IPv4 (and kube-proxy's REJECT), whether the frontend is a
        // node address or one the kernel would route on; DROP_EMPTY (externalTrafficPolicy
        // Local) drops instead, as upstream.
        return if service.flags & SERVICE_FLAG_DROP_EMPTY != 0 {
            DROP
        } else {
            FLOW_REFUSE
        };
    }
    // External clients are named by their whole address (keys of their own, apart from the
    // socket programs' network namespaces).
    let client = lb::Client6::external(pkt.saddr);
    let Some((slot, backend)) = lb::pick::<lb::V6>(service, client) else {
        return DROP;
    };
    if service.flags & SERVICE_FLAG_AFFINITY != 0 {
        // SAFETY: helper without arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        lb::remember::<lb::V6>(service, client, slot, backend, now);
    }
    flow.addr = backend.addr;
    flow.port = backend.port;
    flow.flags = service.flags;
    FLOW_READY
}

/// As the second half of IPv4's `new_flow`: records both directions of a DNAT-only flow to
/// the backend `flow` names; `flow` becomes the entry the packet follows.
#[inline(never)]
fn dnat_flow(pkt: &Packet6, flow: &mut CtValue6) -> i32 {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = pkt.ct_key();
    let forward = CtValue6 {
        addr: flow.addr,
        port: flow.port,
        flags: flow.flags,
        state: seen(pkt.proto, pkt.tcp_flags),
        last_seen_ns: now,
        ..CtValue6::default()
    };
    if CONNTRACK6
        .insert(&key, &forward, BPF_NOEXIST as u64)
        .is_err()
    {
        // SAFETY: a valid map value pointer for the duration of the program.
        let Some(winner) = (unsafe { CONNTRACK6.get(&key) }) else {
            return DROP;
        };
        if winner.flags & CT_FLAG_REPLY != 0 {
            return PASS;
        }
        *flow = *winner;
        return FLOW_READY;
    }
    let reply_key = CtKey6 {
        src_addr: forward.addr,
        dst_addr: pkt.saddr,
        src_port: forward.port,
        dst_port: pkt.sport,
        proto: pkt.proto,
        pad: [0; 3],
    };
    let reply = CtValue6 {
        addr: pkt.daddr,
        port: pkt.dport,
        flags: forward.flags | CT_FLAG_REPLY,
        last_seen_ns: now,
        ..CtValue6::default()
    };
    if CONNTRACK6
        .insert(&reply_key, &reply, BPF_NOEXIST as u64)
        .is_err()
    {
        // SAFETY: as above.
        let ours = (unsafe { CONNTRACK6.get(&reply_key) })
            .is_some_and(|o| o.addr == pkt.daddr && o.port == pkt.dport);
        if !ours {
            let _ = CONNTRACK6.remove(&key);
            return DROP;
        }
    }
    *flow = forward;
    FLOW_READY
}

fn egress_packet(ctx: &TcContext, pkt: &Packet6) -> i32 {
    let Some(entry) = CONNTRACK6.get_ptr_mut(&pkt.ct_key()) else {
        return PASS;
    };
    // SAFETY: as in `ingress_packet`.
    let frontend = unsafe { *entry };
    if frontend.flags & (CT_FLAG_REPLY | CT_FLAG_SNAT) != CT_FLAG_REPLY {
        return PASS;
    }
    // SAFETY: helper without arguments.
    touch(entry, pkt, frontend.state, unsafe { bpf_ktime_get_ns() });
    let rewritten = rewrite(ctx, pkt, false, &frontend.addr, frontend.port);
    if rewritten != 0 {
        return DROP;
    }
    PASS
}

#[inline(always)]
fn touch(entry: *mut CtValue6, pkt: &Packet6, state: u16, now: u64) {
    let bits = seen(pkt.proto, pkt.tcp_flags);
    // SAFETY: a valid map value pointer for the duration of the program.
    unsafe {
        (*entry).last_seen_ns = now;
        if state & bits != bits {
            (*entry).state = state | bits;
        }
    }
}

#[inline(always)]
fn reply_key_of(pkt: &Packet6, flow: &CtValue6) -> CtKey6 {
    let (dst_addr, dst_port) = if flow.flags & CT_FLAG_SNAT != 0 {
        (flow.nat_addr, flow.nat_port)
    } else {
        (pkt.saddr, pkt.sport)
    };
    CtKey6 {
        src_addr: flow.addr,
        dst_addr,
        src_port: flow.port,
        dst_port,
        proto: pkt.proto,
        pad: [0; 3],
    }
}

#[inline(always)]
fn ended(pkt: &Packet6, flow: &CtValue6) -> bool {
    // SAFETY: copied out at once.
    let reply_state =
        (unsafe { CONNTRACK6.get(reply_key_of(pkt, flow)) }).map_or(0, |reply| reply.state);
    (flow.state | reply_state) & CT_STATE_RST != 0
        || (flow.state & CT_STATE_FIN != 0 && reply_state & CT_STATE_FIN != 0)
}

#[inline(always)]
fn reopen(entry: *mut CtValue6, pkt: &Packet6, flow: &CtValue6, now: u64) {
    // SAFETY: as in `touch`.
    unsafe {
        (*entry).last_seen_ns = now;
        (*entry).state = switchyard_common::CT_STATE_SEEN;
    }
    if let Some(reply) = CONNTRACK6.get_ptr_mut(reply_key_of(pkt, flow)) {
        // SAFETY: as above; only the flow's own reply entry is reset.
        unsafe {
            if (*reply).addr == pkt.daddr && (*reply).port == pkt.dport {
                (*reply).state = 0;
            }
        }
    }
}

/// Whether the kernel would route the packet on (see IPv4's `forwarded`).
#[inline(always)]
fn forwarded(ctx: &TcContext, pkt: &Packet6) -> bool {
    // SAFETY: reading a field of the program's own skb.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let mut route = fib_params(ifindex, pkt.proto, pkt.saddr, pkt.daddr);
    let found = fib_lookup(ctx, &mut route);
    found == BPF_FIB_LKUP_RET_SUCCESS as i64
        || found == BPF_FIB_LKUP_RET_NO_NEIGH as i64
        || found == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64
}

#[inline(always)]
fn fib_params(ifindex: u32, proto: u8, src: [u32; 4], dst: [u32; 4]) -> bpf_fib_lookup {
    // SAFETY: a plain C struct of integers and unions of integers; all zero is valid.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET6;
    params.l4_protocol = proto;
    params.ifindex = ifindex;
    params.__bindgen_anon_3.ipv6_src = src;
    params.__bindgen_anon_4.ipv6_dst = dst;
    params
}

/// [`snat_flow`]: the backend is not behind the receiving device, translate DNAT only.
const SNAT_DNAT_ONLY: i32 = -100;

/// As IPv4's `snat_flow`: a source-NATed flow to the backend `flow` names, behind the
/// receiving device, with the device's IPv6 address (`SWY_SNAT_ADDRS6`) and a port of
/// `SWY_SNAT_CONFIG`'s range (the caller has checked the device, [`behind_ingress_device`]);
/// `flow` becomes its forward entry. Returns [`FLOW_READY`] or the verdict for a flow that cannot be NATed. Not inlined (its own
/// frame), with at most five arguments and no struct returned, as BPF-to-BPF calls need.
#[inline(never)]
fn snat_flow(ctx: &TcContext, pkt: &Packet6, flow: &mut CtValue6) -> i32 {
    match snat_flow_inner(ctx, pkt, flow) {
        Ok(()) => FLOW_READY,
        Err(verdict) => verdict,
    }
}

/// Whether `backend` is reached through the device the packet arrived on (so its replies come
/// back there, to this program). A failed lookup (no route, forwarding off) counts as not: the
/// flow is then DNAT-only, left to the kernel as before. Not inlined, and called before
/// [`snat_flow`] rather than by it: the frames stay side by side, in the stack limit.
#[inline(never)]
fn behind_ingress_device(ctx: &TcContext, pkt: &Packet6, backend: &[u32; 4]) -> bool {
    // SAFETY: reading a field of the program's own skb.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let mut route = fib_params(ifindex, pkt.proto, pkt.saddr, *backend);
    let found = fib_lookup(ctx, &mut route);
    (found == BPF_FIB_LKUP_RET_SUCCESS as i64 || found == BPF_FIB_LKUP_RET_NO_NEIGH as i64)
        && route.ifindex == ifindex
}

#[inline(always)]
fn snat_flow_inner(ctx: &TcContext, pkt: &Packet6, flow: &mut CtValue6) -> Result<(), i32> {
    let (backend_addr, backend_port, flags) = (flow.addr, flow.port, flow.flags);
    let key = pkt.ct_key();
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: reading a field of the program's own skb.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let config = SNAT_CONFIG.get(0).copied().ok_or(DROP)?;
    // SAFETY: copied out at once.
    let snat_addr = (unsafe { SNAT_ADDRS6.get(ifindex) }).copied().ok_or(DROP)?;
    if config.port_min == 0 || config.port_max < config.port_min {
        return Err(DROP);
    }
    let span = u32::from(config.port_max - config.port_min) + 1;
    let reply = CtValue6 {
        addr: pkt.daddr,
        port: pkt.dport,
        flags: flags | CT_FLAG_REPLY | CT_FLAG_SNAT,
        nat_addr: pkt.saddr,
        nat_port: pkt.sport,
        state: 0,
        last_seen_ns: now,
    };
    let mut reply_key = CtKey6 {
        src_addr: backend_addr,
        dst_addr: snat_addr,
        src_port: backend_port,
        dst_port: 0,
        proto: pkt.proto,
        pad: [0; 3],
    };
    // The loop only finds the port, as IPv4's: the tries' exits join before the flow is
    // recorded, so the verifier walks what follows once rather than once per try.
    let mut found = false;
    for _ in 0..SNAT_PORT_TRIES {
        // SAFETY: helper without arguments.
        let port = (config.port_min as u32 + unsafe { bpf_get_prandom_u32() } % span) as u16;
        reply_key.dst_port = port.to_be();
        // BPF_NOEXIST on the reply key is the port allocation (as IPv4), and a port whose
        // TCP flow has ended is taken over (IPv4's `snat_reuse`).
        if CONNTRACK6
            .insert(&reply_key, &reply, BPF_NOEXIST as u64)
            .is_ok()
            || super::snat_reuse::take_ended6(&reply_key, &reply, now)
        {
            found = true;
            break;
        }
    }
    if !found {
        return Err(DROP);
    }
    // Written in place: a local copy would add to this frame, which the takeover's sits on.
    *flow = CtValue6 {
        addr: backend_addr,
        port: backend_port,
        flags: flags | CT_FLAG_SNAT,
        nat_addr: snat_addr,
        nat_port: reply_key.dst_port,
        state: seen(pkt.proto, pkt.tcp_flags),
        last_seen_ns: now,
    };
    if CONNTRACK6.insert(&key, &*flow, BPF_NOEXIST as u64).is_err() {
        let _ = CONNTRACK6.remove(&reply_key);
        // SAFETY: a valid map value pointer for the duration of the program.
        let winner = (unsafe { CONNTRACK6.get(&key) }).ok_or(DROP)?;
        if winner.flags & CT_FLAG_REPLY != 0 {
            return Err(PASS);
        }
        *flow = *winner;
    }
    Ok(())
}

#[inline(always)]
fn forward_snat(ctx: &TcContext, pkt: &Packet6, target: &CtValue6) -> i32 {
    let dst = rewrite(ctx, pkt, true, &target.addr, target.port);
    let src = rewrite(ctx, pkt, false, &target.nat_addr, target.nat_port);
    if dst != 0 || src != 0 {
        return DROP;
    }
    redirect(ctx, pkt.proto, &target.nat_addr, &target.addr)
}

/// As IPv4's `snat_reply`: a reply to a source-NATed flow becomes frontend -> client. Not
/// inlined: its frame is not on the stack while a new flow is created.
#[inline(never)]
fn snat_reply(ctx: &TcContext, pkt: &Packet6) -> Option<i32> {
    let config = SNAT_CONFIG.get(0)?;
    let dport = u16::from_be(pkt.dport);
    if config.port_min == 0 || dport < config.port_min || dport > config.port_max {
        return None;
    }
    let entry = CONNTRACK6.get_ptr_mut(&pkt.ct_key())?;
    // SAFETY: as in `ingress_packet`.
    let flow = unsafe { *entry };
    if flow.flags & (CT_FLAG_REPLY | CT_FLAG_SNAT) != CT_FLAG_REPLY | CT_FLAG_SNAT {
        return None;
    }
    // SAFETY: helper without arguments.
    touch(entry, pkt, flow.state, unsafe { bpf_ktime_get_ns() });
    let src = rewrite(ctx, pkt, false, &flow.addr, flow.port);
    let dst = rewrite(ctx, pkt, true, &flow.nat_addr, flow.nat_port);
    if src != 0 || dst != 0 {
        return Some(DROP);
    }
    Some(redirect(ctx, pkt.proto, &flow.addr, &flow.nat_addr))
}

/// As IPv4's `redirect`: out of the device the IPv6 route picks, to the neighbour's MAC (or
/// through `bpf_redirect_neigh` while it is unresolved). Needs IPv6 forwarding on the device.
/// Not inlined (its own frame).
#[inline(never)]
pub(super) fn redirect(ctx: &TcContext, proto: u8, src: &[u32; 4], dst: &[u32; 4]) -> i32 {
    // SAFETY: reading a field of the program's own skb.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let mut route = fib_params(ifindex, proto, *src, *dst);
    let found = fib_lookup(ctx, &mut route);
    if found == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        if ctx.store(ETH_DST_OFF, &route.dmac, 0).is_err()
            || ctx.store(ETH_SRC_OFF, &route.smac, 0).is_err()
        {
            return DROP;
        }
        // SAFETY: plain helper call.
        return unsafe { bpf_redirect(route.ifindex, 0) } as i32;
    }
    if found == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        let mut next_hop: bpf_redir_neigh = bpf_redir_neigh {
            nh_family: AF_INET6 as u32,
            // SAFETY: zero is a valid value of the union.
            ..unsafe { core::mem::zeroed() }
        };
        // SAFETY: the union was filled as IPv6 by the IPv6 lookup.
        next_hop.__bindgen_anon_1.ipv6_nh = unsafe { route.__bindgen_anon_4.ipv6_dst };
        // SAFETY: valid pointer and size.
        return unsafe {
            bpf_redirect_neigh(
                route.ifindex,
                &mut next_hop,
                core::mem::size_of::<bpf_redir_neigh>() as i32,
                0,
            )
        } as i32;
    }
    DROP
}

/// Replaces the packet's source (`dst` false) or destination address and port with `addr` and
/// `port` and fixes the L4 checksum: the address through the pseudo header, by the difference
/// `bpf_csum_diff` computes over the 16 bytes. Not inlined (its own frame, five arguments).
#[inline(never)]
fn rewrite(ctx: &TcContext, pkt: &Packet6, dst: bool, addr: &[u32; 4], port: u16) -> i64 {
    match rewrite_inner(ctx, pkt, dst, addr, port) {
        Ok(()) => 0,
        Err(e) => e,
    }
}

#[inline(always)]
fn rewrite_inner(
    ctx: &TcContext,
    pkt: &Packet6,
    dst: bool,
    addr: &[u32; 4],
    port: u16,
) -> Result<(), i64> {
    let (addr_off, port_off, mut old_addr, old_port) = if dst {
        (
            IP6_DST_OFF,
            usize::from(pkt.l4_off) + L4_DST_PORT,
            pkt.daddr,
            pkt.dport,
        )
    } else {
        (IP6_SRC_OFF, usize::from(pkt.l4_off), pkt.saddr, pkt.sport)
    };
    let mut new_addr = *addr;
    if pkt.later_fragment() {
        // No upper-layer header: the first fragment's checksum covers the pseudo header.
        if old_addr != new_addr {
            ctx.store(addr_off, &new_addr, 0)?;
        }
        return Ok(());
    }
    if old_addr != new_addr {
        ctx.store(addr_off, &new_addr, 0)?;
        // SAFETY: two 16-byte stack buffers, sizes given.
        let diff =
            unsafe { bpf_csum_diff(old_addr.as_mut_ptr(), 16, new_addr.as_mut_ptr(), 16, 0) };
        if diff < 0 {
            return Err(diff);
        }
        // Size 0: `to` is a checksum difference already (the helper's diff mode).
        ctx.l4_csum_replace(
            pkt.csum_off(),
            0,
            diff as u64,
            BPF_F_PSEUDO_HDR as u64 | pkt.csum_flags(),
        )?;
    }
    if old_port != port {
        ctx.store(port_off, &port, 0)?;
        ctx.l4_csum_replace(
            pkt.csum_off(),
            old_port as u64,
            port as u64,
            pkt.csum_flags() | 2,
        )?;
    }
    Ok(())
}
