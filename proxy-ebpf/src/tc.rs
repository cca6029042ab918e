//! Packet-level (north-south) translation on the node's external devices.
//!
//! Traffic that does not come from a local socket (clients outside the node hitting a NodePort,
//! an externalIP or a LoadBalancer IP) never passes the socket hooks, so it is translated per
//! packet here:
//!
//! - tc ingress DNATs a packet for an external frontend (`SCOPE_EXTERNAL` service entry) to a
//!   backend and records the flow in `SWY_CONNTRACK`, once per direction;
//! - tc egress rewrites the source of the flow's replies back to the frontend.
//!
//! Masquerading (externalTrafficPolicy Cluster) is done here too, without netfilter: a new
//! flow of a `SERVICE_FLAG_MASQUERADE` frontend whose backend is reached through the device
//! the packet arrived on (a remote backend) also gets its source rewritten to the device's
//! address (`SWY_SNAT_ADDRS`) and a port from `SWY_SNAT_CONFIG`'s range (above the NodePort
//! range). Both rewritten directions leave by `bpf_redirect` to the device found by
//! `bpf_fib_lookup`, never up the stack: a forwarded packet with a local source address
//! would be a martian, and bypassing the stack keeps netfilter (and its conntrack) out of
//! these flows. The backend's replies come back on ingress addressed to node:port, are found
//! by their reply entry before the service lookup, and are rewritten to frontend -> client.
//! Backends behind another device (local pods) are not source-NATed: their replies pass this
//! node anyway (the pod's route), so the client address is kept, as Cilium does.
//!
//! A service without endpoints is answered from here ([`reject`]): a TCP RST or an ICMP port
//! unreachable leaves by the device the request came in on, so nothing is routed on for a
//! service address. ICMP errors about translated flows (fragmentation needed, port
//! unreachable...) are translated like the flow they quote ([`icmp_error`], and
//! [`icmp_error6`] for ICMPv6's packet too big and the others).
//!
//! Each entry records what its direction saw (`CT_STATE_*`: answered, FIN, RST); entries have
//! no lifetime of their own here: userspace expires idle and closed flows, both directions at
//! once, from those bits and `last_seen_ns` (`switchyard_model::tc_conntrack`). A SYN on a
//! tuple whose connection ended (RST, or FIN both ways) starts a new flow with a backend chosen
//! anew, as netfilter replaces a TIME_WAIT entry, and the source-NAT port of a closed, quiet
//! flow goes to a new flow ([`snat_reuse`]).
//!
//! Scope: IPv4 over Ethernet, TCP and UDP (and ICMP errors quoting them), 20-byte IP headers,
//! fragmented datagrams included ([`fragments`]); IPv6 over Ethernet, TCP and UDP behind the
//! extension headers [`v6`] walks (and ICMPv6 errors quoting them; [`v6`] lists what it does
//! not do). Anything else passes untouched (`TC_ACT_OK`).
//!
//! Packet reads go through `bpf_skb_load_bytes` (`ctx.load`): the helper checks the bounds itself
//! and also works when the headers are not in the linear part of the skb, and no packet pointer
//! is held across the rewriting helpers (which may invalidate them), so nothing needs re-reading.
mod fragments;
mod icmp_error;
mod icmp_error6;
mod refusal_limit;
mod reject;
mod reject6;
mod snat_reuse;
mod v6;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, bpf_redir_neigh, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST, TC_ACT_OK,
        TC_ACT_SHOT,
    },
    helpers::{
        bpf_fib_lookup as fib_lookup_helper, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect,
        bpf_redirect_neigh,
    },
    macros::classifier,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use aya_log_ebpf::debug;
use switchyard_common::{
    Backend, CtKey, CtValue, ServiceKey, ServiceValue, SourceRangeKey, CT_FLAG_REPLY, CT_FLAG_SNAT,
    CT_STATE_FIN, CT_STATE_RST, CT_STATE_SEEN, PROTO_ICMP, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL,
    SERVICE_FLAG_AFFINITY, SERVICE_FLAG_DROP_EMPTY, SERVICE_FLAG_HANDOVER, SERVICE_FLAG_MASQUERADE,
    SERVICE_FLAG_SOURCE_RANGES,
};

use crate::{
    lb,
    maps::{CONNTRACK, SERVICES, SNAT_ADDRS, SNAT_CONFIG, SOURCE_RANGES},
};

/// Let the packet continue, possibly rewritten.
const PASS: i32 = TC_ACT_OK;
/// Drop the packet.
const DROP: i32 = TC_ACT_SHOT;

// Fixed offsets: Ethernet header (14 bytes, no VLAN tag in the payload) and an IPv4 header
// without options (20 bytes; other lengths are passed untouched), so L4 starts at 34.
const ETH_HLEN: usize = 14;
const ETH_PROTO_OFF: usize = 12;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IP_CSUM_OFF: usize = ETH_HLEN + 10;
const IP_SRC_OFF: usize = ETH_HLEN + 12;
const IP_DST_OFF: usize = ETH_HLEN + 16;
const L4_OFF: usize = ETH_HLEN + 20;
const L4_SRC_PORT_OFF: usize = L4_OFF;
const L4_DST_PORT_OFF: usize = L4_OFF + 2;
const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const TCP_FLAGS_OFF: usize = L4_OFF + 13;
const TCP_CSUM_OFF: usize = L4_OFF + 16;
const UDP_CSUM_OFF: usize = L4_OFF + 6;

/// Version 4, header length 5 words: the only header layout translated.
const IP_VERSION_IHL_PLAIN: u8 = 0x45;

const ETH_DST_OFF: usize = 0;
const ETH_SRC_OFF: usize = 6;
const AF_INET: u8 = 2;

/// Source ports tried for a new source-NATed flow before it is dropped. Each try is one
/// insert (or the takeover of an ended flow's port, [`snat_reuse`]), with a random candidate
/// each time. At ~10k new connections/s to one backend, about a third of the range holds
/// flows that closed within the last second (not yet reusable): 8 tries then dropped a few
/// SYNs in every 12 s of load, 32 tries none (`cargo xtask bench -- dataplane`). 32 failures
/// in a row mean the range is full of live flows, where a dropped SYN (retransmitted,
/// picking again) is the answer.
const SNAT_PORT_TRIES: u32 = 32;

const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_RST: u8 = 0x04;
const TCP_FLAG_ACK: u8 = 0x10;

/// Affinity entries of external clients share the map with the socket programs, whose keys are
/// network namespace cookies; the top bit set keeps a client address from colliding with one.
const AFFINITY_EXTERNAL_BIT: u64 = 1 << 63;

/// The 20-byte IPv4 header as it is on the wire (multi-byte fields in network order).
#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
}

impl Ipv4Hdr {
    /// Whether the header has the one layout translated: version 4, no options.
    #[inline(always)]
    fn is_plain(&self) -> bool {
        self.version_ihl == IP_VERSION_IHL_PLAIN
    }
}

/// What the programs need of one TCP/UDP packet. Addresses and ports in network order.
#[derive(Clone, Copy)]
struct Packet {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    proto: u8,
    /// TCP flags byte (0 for UDP and for a later fragment).
    tcp_flags: u8,
    /// The IP id (network order): with the addresses and protocol, what identifies the
    /// fragments of one datagram.
    ip_id: u16,
    /// Offset of the L4 checksum field.
    csum_off: u16,
    /// Which part of its datagram the packet is (`fragments::WHOLE`, `FIRST` or `LATER`;
    /// a later fragment has no TCP/UDP header, its ports are its first fragment's).
    fragment: u8,
    /// Extra `bpf_l4_csum_replace` flags: for UDP, `BPF_F_MARK_MANGLED_0` leaves a zero
    /// ("no checksum") field alone and writes a computed zero as 0xffff.
    csum_flags: u64,
}

impl Packet {
    /// The conntrack key of this packet as it is seen on the wire.
    fn ct_key(&self) -> CtKey {
        CtKey {
            src_addr: self.saddr,
            dst_addr: self.daddr,
            src_port: self.sport,
            dst_port: self.dport,
            proto: self.proto,
            pad: [0; 3],
        }
    }
}

/// tc ingress of the node's external devices: DNAT to a backend.
#[classifier]
pub fn swy_tc_ingress(ctx: TcContext) -> i32 {
    let Ok(eth_proto) = ctx.load::<u16>(ETH_PROTO_OFF) else {
        return PASS;
    };
    if u16::from_be(eth_proto) == ETH_P_IPV6 {
        return v6::enter(&ctx, v6::INGRESS);
    }
    let Some(ip) = ipv4(&ctx, eth_proto) else {
        return PASS;
    };
    if ip.proto == PROTO_ICMP {
        // An ICMP error is never fragmented by its sender (RFC 1812 4.3.2.3 keeps it short).
        if fragments::kind(&ip) != fragments::WHOLE {
            return PASS;
        }
        return icmp_error::ingress(&ctx);
    }
    match parse(&ctx, &ip) {
        Some(pkt) => ingress(&ctx, &pkt),
        None => PASS,
    }
}

/// tc egress of the node's external devices: replies of translated flows leave as the frontend.
#[classifier]
pub fn swy_tc_egress(ctx: TcContext) -> i32 {
    let Ok(eth_proto) = ctx.load::<u16>(ETH_PROTO_OFF) else {
        return PASS;
    };
    if u16::from_be(eth_proto) == ETH_P_IPV6 {
        return v6::enter(&ctx, v6::EGRESS);
    }
    let Some(ip) = ipv4(&ctx, eth_proto) else {
        return PASS;
    };
    if ip.proto == PROTO_ICMP {
        // An ICMP error is never fragmented by its sender (RFC 1812 4.3.2.3 keeps it short).
        if fragments::kind(&ip) != fragments::WHOLE {
            return PASS;
        }
        return icmp_error::egress(&ctx);
    }
    match parse(&ctx, &ip) {
        Some(pkt) => egress(&ctx, &pkt),
        None => PASS,
    }
}

/// The packet's IPv4 header if it is one the programs handle: IP options would move the L4
/// header (rare enough to pass untouched).
#[inline(always)]
fn ipv4(ctx: &TcContext, eth_proto: u16) -> Option<Ipv4Hdr> {
    // Every `load` is bounds-checked by the helper; a short packet is an error, hence None.
    if u16::from_be(eth_proto) != ETH_P_IP {
        return None;
    }
    let ip: Ipv4Hdr = ctx.load(ETH_HLEN).ok()?;
    ip.is_plain().then_some(ip)
}

/// The TCP/UDP packet this is, or None for anything the programs leave alone.
#[inline(always)]
fn parse(ctx: &TcContext, ip: &Ipv4Hdr) -> Option<Packet> {
    let fragment = fragments::kind(ip);
    if fragment == fragments::LATER {
        // Only TCP/UDP first fragments are recorded; no checksum field to name (`rewrite`
        // leaves a later fragment's payload alone).
        let (sport, dport) = fragments::ports(ip)?;
        return Some(Packet {
            saddr: ip.saddr,
            daddr: ip.daddr,
            sport,
            dport,
            proto: ip.proto,
            tcp_flags: 0,
            ip_id: ip.id,
            csum_off: 0,
            fragment,
            csum_flags: 0,
        });
    }
    // The whole fixed L4 header is loaded, so a truncated one passes untouched instead of
    // failing half-way through the rewrite (the checksum fields are at its end).
    let (l4, tcp_flags, csum_off, csum_flags) = match ip.proto {
        PROTO_TCP => {
            let tcp: [u8; TCP_HLEN] = ctx.load(L4_OFF).ok()?;
            (tcp, tcp[TCP_FLAGS_OFF - L4_OFF], TCP_CSUM_OFF, 0)
        }
        PROTO_UDP => {
            let udp: [u8; UDP_HLEN] = ctx.load(L4_OFF).ok()?;
            let mut l4 = [0u8; TCP_HLEN];
            l4[..UDP_HLEN].copy_from_slice(&udp);
            (l4, 0, UDP_CSUM_OFF, BPF_F_MARK_MANGLED_0 as u64)
        }
        _ => return None,
    };
    Some(Packet {
        saddr: ip.saddr,
        daddr: ip.daddr,
        // Kept in network order, as the maps store ports.
        sport: u16::from_ne_bytes([l4[0], l4[1]]),
        dport: u16::from_ne_bytes([l4[2], l4[3]]),
        proto: ip.proto,
        tcp_flags,
        ip_id: ip.id,
        csum_off: csum_off as u16,
        fragment,
        csum_flags,
    })
}

fn ingress(ctx: &TcContext, pkt: &Packet) -> i32 {
    if let Some(verdict) = snat_reply(ctx, pkt) {
        return verdict;
    }
    let service_key = ServiceKey {
        addr: pkt.daddr,
        port: pkt.dport,
        proto: pkt.proto,
        scope: SCOPE_EXTERNAL,
    };
    // SAFETY: copied out at once.
    let Some(service) = (unsafe { SERVICES.get(service_key) }).copied() else {
        return PASS;
    };
    // The datagram's later fragments follow whatever becomes of this one (translated,
    // refused or dropped), never routed on by themselves.
    fragments::remember(pkt);
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = pkt.ct_key();
    let mut existing = CONNTRACK.get_ptr_mut(key);
    if let Some(entry) = existing {
        // SAFETY: as below.
        let value = unsafe { *entry };
        if value.flags & CT_FLAG_REPLY == 0
            && opens(pkt.proto, pkt.tcp_flags)
            && pkt.proto == PROTO_TCP
            && ended(pkt, &value)
        {
            // A new connection on the tuple of one that ended: as netfilter kills the old
            // entry and decides anew, the flow gets a backend of the service as it is now
            // (the old one may have left it).
            forget(pkt, &value);
            existing = None;
        }
    }
    let target = match existing {
        Some(entry) => {
            // SAFETY: a valid map value pointer for the duration of the program. Concurrent
            // writers race only on the timestamp and the state bits: a lost bit costs at
            // most a longer idle timeout for the flow.
            let value = unsafe { *entry };
            if value.flags & CT_FLAG_REPLY != 0 {
                // This 5-tuple is the reply of another translated flow: not ours to touch.
                return PASS;
            }
            if opens(pkt.proto, pkt.tcp_flags) && pkt.proto == PROTO_TCP {
                // A new connection on the tuple of an old one: whatever the old one saw
                // (FIN, RST) no longer shortens this one's life.
                reopen(entry, pkt, &value, now);
            } else {
                touch(entry, pkt, value.state, now);
            }
            value
        }
        None => match new_flow(ctx, pkt, &service, key, now) {
            Ok(value) => value,
            Err(verdict) => {
                if verdict == DROP {
                    debug!(
                        ctx,
                        "tc: dropped a new flow {:i}:{} -> {:i}:{} (source range or no local endpoint)",
                        u32::from_be(pkt.saddr),
                        u16::from_be(pkt.sport),
                        u32::from_be(pkt.daddr),
                        u16::from_be(pkt.dport)
                    );
                }
                return verdict;
            }
        },
    };
    if target.flags & CT_FLAG_SNAT != 0 {
        return forward_snat(ctx, pkt, &target);
    }
    let rewritten = rewrite(
        ctx,
        pkt,
        IP_DST_OFF,
        L4_DST_PORT_OFF,
        (pkt.daddr, target.addr),
        (pkt.dport, target.port),
    );
    // A failure half-way leaves a packet with a wrong checksum or address: drop it instead.
    if rewritten.is_err() {
        return DROP;
    }
    PASS
}

/// Chooses the backend of a new flow and records both directions. `Err` is the verdict for a
/// packet that must not be translated.
fn new_flow(
    ctx: &TcContext,
    pkt: &Packet,
    service: &ServiceValue,
    key: CtKey,
    now: u64,
) -> Result<CtValue, i32> {
    // iptables mode owns new flows (and any segment of one it translated) until these
    // programs go; the flows with an entry above keep theirs to the end.
    if service.flags & SERVICE_FLAG_HANDOVER != 0 {
        return Err(PASS);
    }
    // A TCP flow starts with a SYN. Anything else without an entry belongs to a connection that
    // was never translated here (or whose entry expired): rather than send a mid-stream
    // segment to a random backend, the kernel gets it if the address is the node's (no socket
    // there means a RST; a node process's own connection from that port keeps working), and
    // it is dropped if the kernel would route it on: a service address never leaves the node.
    // The same goes for a later fragment whose first fragment started no flow.
    if pkt.fragment == fragments::LATER || !opens(pkt.proto, pkt.tcp_flags) {
        return Err(if forwarded(ctx, pkt) { DROP } else { PASS });
    }
    if service.flags & SERVICE_FLAG_SOURCE_RANGES != 0 {
        // The LoadBalancer IP is always matched in full, the client address up to the range's
        // prefix: the lookup asks for all 64 bits and the trie returns the longest match.
        let range_key = Key::new(
            64,
            SourceRangeKey {
                lb_addr: pkt.daddr,
                client_addr: pkt.saddr,
            },
        );
        if SOURCE_RANGES.get(range_key).is_none() {
            return Err(DROP);
        }
    }
    if service.count == 0 {
        // Refused from here, as kube-proxy's REJECT does, whether the frontend is a node
        // address or not (the kernel would route an externalIP or LoadBalancer IP on).
        // DROP_EMPTY (externalTrafficPolicy Local) drops instead, as upstream.
        return Err(if service.flags & SERVICE_FLAG_DROP_EMPTY != 0 {
            DROP
        } else {
            reject::refuse(ctx, pkt, now)
        });
    }
    // A service entry whose slot is missing is being rewritten; a dropped first packet is
    // retransmitted, a misrouted one is not.
    // External clients are identified by their address (there is no network namespace cookie).
    let client = AFFINITY_EXTERNAL_BIT | pkt.saddr as u64;
    let (slot, backend) = lb::pick::<lb::V4>(service, client).ok_or(DROP)?;
    if service.flags & SERVICE_FLAG_AFFINITY != 0 {
        lb::remember::<lb::V4>(service, client, slot, backend, now);
    }
    if service.flags & SERVICE_FLAG_MASQUERADE != 0 {
        if let Some(forward) = snat_flow(ctx, pkt, key, backend, service.flags, now)? {
            return Ok(forward);
        }
        // A backend behind another device (a pod of this node): DNAT only, below.
    }

    let forward = CtValue {
        addr: backend.addr,
        port: backend.port,
        flags: service.flags,
        state: seen(pkt.proto, pkt.tcp_flags),
        last_seen_ns: now,
        ..CtValue::default()
    };
    // BPF_NOEXIST: another CPU may be creating the same flow right now (a retransmitted SYN,
    // a UDP burst). The first writer wins and every packet follows its choice.
    if CONNTRACK.insert(key, forward, BPF_NOEXIST as u64).is_err() {
        // SAFETY: copied out at once.
        let winner = (unsafe { CONNTRACK.get(key) }).copied().ok_or(DROP)?;
        return if winner.flags & CT_FLAG_REPLY != 0 {
            Err(PASS)
        } else {
            Ok(winner)
        };
    }
    let reply_key = CtKey {
        src_addr: backend.addr,
        dst_addr: pkt.saddr,
        src_port: backend.port,
        dst_port: pkt.sport,
        proto: pkt.proto,
        pad: [0; 3],
    };
    let reply = CtValue {
        addr: pkt.daddr,
        port: pkt.dport,
        flags: service.flags | CT_FLAG_REPLY,
        last_seen_ns: now,
        ..CtValue::default()
    };
    // BPF_NOEXIST: another flow may already own this reply tuple (the same client address
    // and port reaching the same backend through another frontend). Overwriting it would send
    // that flow's replies back from the wrong frontend; the newcomer is dropped instead and
    // its retransmission picks again. Without the reply entry the client would see answers
    // from the backend's address and reset them.
    if CONNTRACK
        .insert(reply_key, reply, BPF_NOEXIST as u64)
        .is_err()
    {
        // SAFETY: copied out at once.
        let owner = (unsafe { CONNTRACK.get(reply_key) }).copied();
        let ours = owner.is_some_and(|o| o.addr == reply.addr && o.port == reply.port);
        if !ours {
            let _ = CONNTRACK.remove(key);
            return Err(DROP);
        }
    }
    Ok(forward)
}

fn egress(ctx: &TcContext, pkt: &Packet) -> i32 {
    let key = pkt.ct_key();
    let Some(entry) = CONNTRACK.get_ptr_mut(key) else {
        return PASS;
    };
    // SAFETY: a valid map value pointer for the duration of the program; concurrent writers
    // only race on the timestamp and the state bits (see `ingress`).
    let frontend = unsafe { *entry };
    if frontend.flags & (CT_FLAG_REPLY | CT_FLAG_SNAT) != CT_FLAG_REPLY {
        // An original-direction entry (this packet is client -> frontend, nothing to undo),
        // or a source-NATed flow's reply entry, which ingress handles.
        return PASS;
    }
    fragments::remember(pkt);
    // SAFETY: helper without arguments.
    touch(entry, pkt, frontend.state, unsafe { bpf_ktime_get_ns() });
    let rewritten = rewrite(
        ctx,
        pkt,
        IP_SRC_OFF,
        L4_SRC_PORT_OFF,
        (pkt.saddr, frontend.addr),
        (pkt.sport, frontend.port),
    );
    if rewritten.is_err() {
        return DROP;
    }
    PASS
}

/// Whether the packet may start a flow: any UDP datagram, a TCP SYN without ACK.
#[inline(always)]
fn opens(proto: u8, tcp_flags: u8) -> bool {
    proto != PROTO_TCP || tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
}

/// The `CT_STATE_*` bits a packet sets on its direction's entry.
#[inline(always)]
fn seen(proto: u8, tcp_flags: u8) -> u16 {
    let mut bits = CT_STATE_SEEN;
    if proto == PROTO_TCP {
        if tcp_flags & TCP_FLAG_FIN != 0 {
            bits |= CT_STATE_FIN;
        }
        if tcp_flags & TCP_FLAG_RST != 0 {
            bits |= CT_STATE_RST;
        }
    }
    bits
}

/// Records a packet of a tracked flow on its direction's entry: the time always, the state
/// bits only when they add something (most packets write one field).
#[inline(always)]
fn touch(entry: *mut CtValue, pkt: &Packet, state: u16, now: u64) {
    let bits = seen(pkt.proto, pkt.tcp_flags);
    // SAFETY: a valid map value pointer for the duration of the program (see `ingress`).
    unsafe {
        (*entry).last_seen_ns = now;
        if state & bits != bits {
            (*entry).state = state | bits;
        }
    }
}

/// The reply-direction key of a tracked flow whose original direction is `pkt`'s.
#[inline(always)]
fn reply_key_of(pkt: &Packet, flow: &CtValue) -> CtKey {
    if flow.flags & CT_FLAG_SNAT != 0 {
        CtKey {
            src_addr: flow.addr,
            dst_addr: flow.nat_addr,
            src_port: flow.port,
            dst_port: flow.nat_port,
            proto: pkt.proto,
            pad: [0; 3],
        }
    } else {
        CtKey {
            src_addr: flow.addr,
            dst_addr: pkt.saddr,
            src_port: flow.port,
            dst_port: pkt.sport,
            proto: pkt.proto,
            pad: [0; 3],
        }
    }
}

/// Whether the TCP connection of a tracked flow is over: a RST either way, or a FIN both ways.
#[inline(always)]
fn ended(pkt: &Packet, flow: &CtValue) -> bool {
    // SAFETY: copied out at once.
    let reply_state =
        (unsafe { CONNTRACK.get(reply_key_of(pkt, flow)) }).map_or(0, |reply| reply.state);
    (flow.state | reply_state) & CT_STATE_RST != 0
        || (flow.state & CT_STATE_FIN != 0 && reply_state & CT_STATE_FIN != 0)
}

/// Deletes both directions of a tracked flow.
#[inline(always)]
fn forget(pkt: &Packet, flow: &CtValue) {
    let _ = CONNTRACK.remove(reply_key_of(pkt, flow));
    let _ = CONNTRACK.remove(pkt.ct_key());
}

/// A SYN on a tracked tuple whose connection has not ended: a retransmitted SYN, or a client
/// opening anew on a live tuple. Both directions start over, so a FIN or RST seen does not give
/// the connection the short lifetime of a closed flow; the backend is kept.
#[inline(always)]
fn reopen(entry: *mut CtValue, pkt: &Packet, flow: &CtValue, now: u64) {
    // SAFETY: as in `touch`.
    unsafe {
        (*entry).last_seen_ns = now;
        (*entry).state = CT_STATE_SEEN;
    }
    if let Some(reply) = CONNTRACK.get_ptr_mut(reply_key_of(pkt, flow)) {
        // SAFETY: as above. Only the flow's own reply entry (it names this frontend) is reset.
        unsafe {
            if (*reply).addr == pkt.daddr && (*reply).port == pkt.dport {
                (*reply).state = 0;
            }
        }
    }
}

/// Whether the kernel would route the packet on (its destination is not an address of this
/// node). Forwarding off, or no route, count as not: the kernel does not send it anywhere.
#[inline(always)]
fn forwarded(ctx: &TcContext, pkt: &Packet) -> bool {
    // SAFETY: reading a field of the program's own skb.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let mut route = fib_params(ifindex, pkt.proto, pkt.saddr, pkt.daddr);
    let found = fib_lookup(ctx, &mut route);
    found == BPF_FIB_LKUP_RET_SUCCESS as i64
        || found == BPF_FIB_LKUP_RET_NO_NEIGH as i64
        || found == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64
}

/// A new masquerade flow: if `backend` is reached through the device the packet arrived on
/// (so its replies come back there, to this program), records a source-NATed flow and returns
/// its forward entry. `Ok(None)`: the backend is elsewhere (or unroutable) and the flow is
/// translated as a DNAT-only one. `Err` is the verdict for a flow that cannot be NATed.
#[inline(always)]
fn snat_flow(
    ctx: &TcContext,
    pkt: &Packet,
    key: CtKey,
    backend: Backend,
    flags: u16,
    now: u64,
) -> Result<Option<CtValue>, i32> {
    // SAFETY: reading a field of the program's own skb.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let mut route = fib_params(ifindex, pkt.proto, pkt.saddr, backend.addr);
    let found = fib_lookup(ctx, &mut route);
    // A failed lookup (no route, forwarding off) leaves the packet to the kernel as before:
    // nothing has been source-NATed yet, so the kernel forwards or refuses it normally.
    if !(found == BPF_FIB_LKUP_RET_SUCCESS as i64 || found == BPF_FIB_LKUP_RET_NO_NEIGH as i64)
        || route.ifindex != ifindex
    {
        return Ok(None);
    }
    let config = SNAT_CONFIG.get(0).copied().ok_or(DROP)?;
    // Without an address for this device (userspace has not written it) the replies could
    // not be recognised: dropping beats an un-NATed packet whose reply bypasses this node.
    // SAFETY: copied out at once.
    let snat_addr = (unsafe { SNAT_ADDRS.get(ifindex) }).copied().ok_or(DROP)?;
    if config.port_min == 0 || config.port_max < config.port_min {
        return Err(DROP);
    }
    let span = u32::from(config.port_max - config.port_min) + 1;
    let reply = CtValue {
        addr: pkt.daddr,
        port: pkt.dport,
        flags: flags | CT_FLAG_REPLY | CT_FLAG_SNAT,
        nat_addr: pkt.saddr,
        nat_port: pkt.sport,
        state: 0,
        last_seen_ns: now,
    };
    let mut reply_key = CtKey {
        src_addr: backend.addr,
        dst_addr: snat_addr,
        src_port: backend.port,
        dst_port: 0,
        proto: pkt.proto,
        pad: [0; 3],
    };
    // The loop only finds the port, and what follows is written once after it: the verifier
    // walks every try of a bounded loop, and with the flow's recording inside the loop it
    // walked that (and the rest of the program) once per try too (13,000 more instructions
    // verified; now the tries' exits join). The inlined takeover is still walked per try,
    // about 68,000 of the program's 100,000 (see `snat_reuse::take_ended`).
    let mut found = false;
    for _ in 0..SNAT_PORT_TRIES {
        // SAFETY: helper without arguments.
        let port = (config.port_min as u32 + unsafe { bpf_get_prandom_u32() } % span) as u16;
        reply_key.dst_port = port.to_be();
        // BPF_NOEXIST on the reply key is the port allocation: a taken (backend, node
        // address, port) triple belongs to another flow, whose replies must stay its own.
        // A port whose TCP flow has ended is taken over, as netfilter reuses TIME_WAIT.
        if CONNTRACK
            .insert(reply_key, reply, BPF_NOEXIST as u64)
            .is_ok()
            || snat_reuse::take_ended(&reply_key, &reply, now)
        {
            found = true;
            break;
        }
    }
    if !found {
        return Err(DROP);
    }
    let forward = CtValue {
        addr: backend.addr,
        port: backend.port,
        flags: flags | CT_FLAG_SNAT,
        nat_addr: snat_addr,
        nat_port: reply_key.dst_port,
        state: seen(pkt.proto, pkt.tcp_flags),
        last_seen_ns: now,
    };
    // Another CPU may be creating the same flow: the first writer wins, as in new_flow.
    if CONNTRACK.insert(key, forward, BPF_NOEXIST as u64).is_err() {
        let _ = CONNTRACK.remove(reply_key);
        // SAFETY: copied out at once.
        let winner = (unsafe { CONNTRACK.get(key) }).copied().ok_or(DROP)?;
        return if winner.flags & CT_FLAG_REPLY != 0 {
            Err(PASS)
        } else {
            Ok(Some(winner))
        };
    }
    Ok(Some(forward))
}

/// Every packet of a source-NATed flow, client -> frontend: becomes node:port -> backend and
/// leaves through the backend's device.
#[inline(always)]
fn forward_snat(ctx: &TcContext, pkt: &Packet, target: &CtValue) -> i32 {
    let dst = rewrite(
        ctx,
        pkt,
        IP_DST_OFF,
        L4_DST_PORT_OFF,
        (pkt.daddr, target.addr),
        (pkt.dport, target.port),
    );
    let src = rewrite(
        ctx,
        pkt,
        IP_SRC_OFF,
        L4_SRC_PORT_OFF,
        (pkt.saddr, target.nat_addr),
        (pkt.sport, target.nat_port),
    );
    if dst.is_err() || src.is_err() {
        return DROP;
    }
    redirect(ctx, pkt.proto, target.nat_addr, target.addr)
}

/// A reply of a source-NATed flow (backend -> node:port, the port in the NAT range) becomes
/// frontend -> client and leaves towards the client. `None` for every other packet: one array
/// load and a compare for packets outside the range, plus one conntrack lookup inside it.
#[inline(always)]
fn snat_reply(ctx: &TcContext, pkt: &Packet) -> Option<i32> {
    let config = SNAT_CONFIG.get(0)?;
    let dport = u16::from_be(pkt.dport);
    if config.port_min == 0 || dport < config.port_min || dport > config.port_max {
        return None;
    }
    let entry = CONNTRACK.get_ptr_mut(pkt.ct_key())?;
    // SAFETY: a valid map value pointer for the duration of the program; concurrent writers
    // only race on the timestamp and the state bits (see `ingress`).
    let flow = unsafe { *entry };
    if flow.flags & (CT_FLAG_REPLY | CT_FLAG_SNAT) != CT_FLAG_REPLY | CT_FLAG_SNAT {
        return None;
    }
    fragments::remember(pkt);
    // SAFETY: helper without arguments.
    touch(entry, pkt, flow.state, unsafe { bpf_ktime_get_ns() });
    let src = rewrite(
        ctx,
        pkt,
        IP_SRC_OFF,
        L4_SRC_PORT_OFF,
        (pkt.saddr, flow.addr),
        (pkt.sport, flow.port),
    );
    let dst = rewrite(
        ctx,
        pkt,
        IP_DST_OFF,
        L4_DST_PORT_OFF,
        (pkt.daddr, flow.nat_addr),
        (pkt.dport, flow.nat_port),
    );
    if src.is_err() || dst.is_err() {
        return Some(DROP);
    }
    Some(redirect(ctx, pkt.proto, flow.addr, flow.nat_addr))
}

/// Lookup parameters for a packet `src` -> `dst` as if forwarded from the device `ifindex`.
/// `tot_len` stays 0 so the kernel checks the skb itself against the egress MTU (which
/// handles GRO-merged packets).
#[inline(always)]
fn fib_params(ifindex: u32, proto: u8, src: u32, dst: u32) -> bpf_fib_lookup {
    // SAFETY: a plain C struct of integers and unions of integers; all zero is valid.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = proto;
    params.ifindex = ifindex;
    params.__bindgen_anon_3.ipv4_src = src;
    params.__bindgen_anon_4.ipv4_dst = dst;
    params
}

#[inline(always)]
fn fib_lookup(ctx: &TcContext, params: &mut bpf_fib_lookup) -> i64 {
    // SAFETY: the skb is the program's own, the params a valid struct of the size given.
    unsafe {
        fib_lookup_helper(
            ctx.skb.skb as *mut _,
            params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    }
}

/// Sends the (already rewritten) packet `src` -> `dst` out of the device the routing table
/// picks, with the neighbour's MAC address; if the neighbour is not resolved yet,
/// `bpf_redirect_neigh` resolves it (queueing the packet like the stack would).
///
/// A failed lookup drops: the packet has a rewritten source that may be a local address, and
/// up the stack it would be a martian (or leave un-NATed state behind in netfilter); the
/// sender retransmits. The lookup is a forwarding lookup, so the device needs IPv4
/// forwarding on (any Kubernetes node has it); without it the flow is never NATed, since
/// `snat_flow` makes the same lookup first.
#[inline(always)]
fn redirect(ctx: &TcContext, proto: u8, src: u32, dst: u32) -> i32 {
    // SAFETY: reading a field of the program's own skb.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let mut route = fib_params(ifindex, proto, src, dst);
    let found = fib_lookup(ctx, &mut route);
    if found == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        if ctx.store(ETH_DST_OFF, &route.dmac, 0).is_err()
            || ctx.store(ETH_SRC_OFF, &route.smac, 0).is_err()
        {
            return DROP;
        }
        // SAFETY: plain helper call; it only records the target for after the program.
        return unsafe { bpf_redirect(route.ifindex, 0) } as i32;
    }
    if found == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        let mut next_hop: bpf_redir_neigh = bpf_redir_neigh {
            nh_family: AF_INET as u32,
            // SAFETY: zero is a valid value of the union.
            ..unsafe { core::mem::zeroed() }
        };
        // The lookup put the next hop (the gateway, or dst itself when on-link) in ipv4_dst.
        // SAFETY: the union was filled as IPv4 by the IPv4 lookup.
        next_hop.__bindgen_anon_1.ipv4_nh = unsafe { route.__bindgen_anon_4.ipv4_dst };
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
    debug!(
        ctx,
        "tc: dropped a source-NATed packet to {:i}: no route ({})",
        u32::from_be(dst),
        found
    );
    DROP
}

/// Replaces one address and one port of the packet (source or destination, by offset) and
/// fixes the IP and L4 checksums incrementally. `addr` and `port` are (old, new) pairs in
/// network order, exactly as on the wire; the checksum helpers take them as raw big-endian
/// values, so no byte swapping is needed. A later fragment has no TCP/UDP header: only its
/// address changes (its first fragment's checksum covers the pseudo header).
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    pkt: &Packet,
    addr_off: usize,
    port_off: usize,
    addr: (u32, u32),
    port: (u16, u16),
) -> Result<(), i64> {
    let (old_addr, new_addr) = addr;
    let (old_port, new_port) = port;
    if pkt.fragment == fragments::LATER {
        if old_addr != new_addr {
            ctx.store(addr_off, &new_addr, 0)?;
            ctx.l3_csum_replace(IP_CSUM_OFF, old_addr as u64, new_addr as u64, 4)?;
        }
        return Ok(());
    }
    let csum_off = usize::from(pkt.csum_off);
    if old_addr != new_addr {
        ctx.store(addr_off, &new_addr, 0)?;
        // The address is part of the TCP/UDP pseudo header: BPF_F_PSEUDO_HDR also keeps
        // skb->csum right for CHECKSUM_COMPLETE and the seed right for CHECKSUM_PARTIAL.
        ctx.l4_csum_replace(
            csum_off,
            old_addr as u64,
            new_addr as u64,
            BPF_F_PSEUDO_HDR as u64 | pkt.csum_flags | 4,
        )?;
        ctx.l3_csum_replace(IP_CSUM_OFF, old_addr as u64, new_addr as u64, 4)?;
    }
    if old_port != new_port {
        ctx.store(port_off, &new_port, 0)?;
        ctx.l4_csum_replace(
            csum_off,
            old_port as u64,
            new_port as u64,
            pkt.csum_flags | 2,
        )?;
    }
    Ok(())
}
