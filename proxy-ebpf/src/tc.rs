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
//! Masquerading (externalTrafficPolicy Cluster) is left to the kernel: ingress sets
//! `MASQUERADE_MARK` and a static nat POSTROUTING rule SNATs the forwarded packet, so replies
//! return through this node, are un-SNATed by netfilter and reach egress as backend -> client.
//!
//! Scope: IPv4 over Ethernet, TCP and UDP, 20-byte IP headers, no fragments. Anything else passes
//! untouched (`TC_ACT_OK`).
//!
//! Packet reads go through `bpf_skb_load_bytes` (`ctx.load`): the helper checks the bounds itself
//! and also works when the headers are not in the linear part of the skb, and no packet pointer
//! is held across the rewriting helpers (which may invalidate them), so nothing needs re-reading.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    macros::classifier,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use aya_log_ebpf::debug;
use switchyard_common::{
    CtKey, CtValue, ServiceKey, ServiceValue, SourceRangeKey, CT_FLAG_REPLY, MASQUERADE_MARK,
    PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SERVICE_FLAG_AFFINITY, SERVICE_FLAG_DROP_EMPTY,
    SERVICE_FLAG_MASQUERADE, SERVICE_FLAG_SOURCE_RANGES,
};

use crate::{
    lb,
    maps::{CONNTRACK, SERVICES, SOURCE_RANGES},
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
/// "More fragments" flag and fragment offset, in host order of the frag_off field.
const IP_MF_OFFSET_MASK: u16 = 0x3fff;

const TCP_FLAG_SYN: u8 = 0x02;
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

/// What the programs need of one TCP/UDP packet. Addresses and ports in network order.
#[derive(Clone, Copy)]
struct Packet {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    proto: u8,
    /// TCP flags byte (0 for UDP).
    tcp_flags: u8,
    /// Offset of the L4 checksum field.
    csum_off: usize,
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
    match parse(&ctx) {
        Some(pkt) => ingress(&ctx, &pkt),
        None => PASS,
    }
}

/// tc egress of the node's external devices: replies of translated flows leave as the frontend.
#[classifier]
pub fn swy_tc_egress(ctx: TcContext) -> i32 {
    match parse(&ctx) {
        Some(pkt) => egress(&ctx, &pkt),
        None => PASS,
    }
}

/// The TCP/UDP packet this is, or None for anything the programs leave alone.
#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Packet> {
    // Every `load` is bounds-checked by the helper; a short packet is an error, hence None.
    let eth_proto: u16 = ctx.load(ETH_PROTO_OFF).ok()?;
    if u16::from_be(eth_proto) != ETH_P_IP {
        return None;
    }
    let ip: Ipv4Hdr = ctx.load(ETH_HLEN).ok()?;
    // IP options would move the L4 header; they are rare enough to pass untouched.
    if ip.version_ihl != IP_VERSION_IHL_PLAIN {
        return None;
    }
    // Only the first fragment carries ports, and rewriting it alone would break reassembly.
    if u16::from_be(ip.frag_off) & IP_MF_OFFSET_MASK != 0 {
        return None;
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
        csum_off,
        csum_flags,
    })
}

fn ingress(ctx: &TcContext, pkt: &Packet) -> i32 {
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
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = pkt.ct_key();
    let target = match CONNTRACK.get_ptr_mut(key) {
        Some(entry) => {
            // SAFETY: a valid map value pointer for the duration of the program; concurrent
            // writers only race on the timestamp, which is informational.
            let value = unsafe { *entry };
            if value.flags & CT_FLAG_REPLY != 0 {
                // This 5-tuple is the reply of another translated flow: not ours to touch.
                return PASS;
            }
            // SAFETY: as above.
            unsafe { (*entry).last_seen_ns = now };
            value
        }
        None => match new_flow(pkt, &service, key, now) {
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
    if target.flags & SERVICE_FLAG_MASQUERADE != 0 {
        // SAFETY: reading the mark of the program's own skb.
        let mark = unsafe { (*ctx.skb.skb).mark };
        ctx.set_mark(mark | MASQUERADE_MARK);
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
fn new_flow(pkt: &Packet, service: &ServiceValue, key: CtKey, now: u64) -> Result<CtValue, i32> {
    // A TCP flow starts with a SYN. Anything else without an entry belongs to a connection that
    // was never translated here (or whose entry was evicted): leave it to the kernel (for a
    // NodePort on a node address that means a RST) rather than send a mid-stream segment to a
    // random backend.
    if pkt.proto == PROTO_TCP && pkt.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) != TCP_FLAG_SYN {
        return Err(PASS);
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
        // Without DROP_EMPTY the kernel refuses the packet itself: nothing listens on the
        // frontend, so TCP gets a RST and UDP an ICMP port unreachable.
        return Err(if service.flags & SERVICE_FLAG_DROP_EMPTY != 0 {
            DROP
        } else {
            PASS
        });
    }
    // A service entry whose slot is missing is being rewritten; a dropped first packet is
    // retransmitted, a misrouted one is not.
    // External clients are identified by their address (there is no network namespace cookie).
    let client = AFFINITY_EXTERNAL_BIT | pkt.saddr as u64;
    let (slot, backend) = lb::pick(service, client).ok_or(DROP)?;
    if service.flags & SERVICE_FLAG_AFFINITY != 0 {
        lb::remember(service, client, slot, backend, now);
    }

    let forward = CtValue {
        addr: backend.addr,
        port: backend.port,
        flags: service.flags,
        last_seen_ns: now,
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
    // only race on the timestamp, which is informational.
    let frontend = unsafe { *entry };
    if frontend.flags & CT_FLAG_REPLY == 0 {
        // An original-direction entry: this packet is client -> frontend, nothing to undo.
        return PASS;
    }
    // SAFETY: as above; the helper takes no arguments.
    unsafe { (*entry).last_seen_ns = bpf_ktime_get_ns() };
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

/// Replaces one address and one port of the packet (source or destination, by offset) and
/// fixes the IP and L4 checksums incrementally. `addr` and `port` are (old, new) pairs in
/// network order, exactly as on the wire; the checksum helpers take them as raw big-endian
/// values, so no byte swapping is needed.
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
    if old_addr != new_addr {
        ctx.store(addr_off, &new_addr, 0)?;
        // The address is part of the TCP/UDP pseudo header: BPF_F_PSEUDO_HDR also keeps
        // skb->csum right for CHECKSUM_COMPLETE and the seed right for CHECKSUM_PARTIAL.
        ctx.l4_csum_replace(
            pkt.csum_off,
            old_addr as u64,
            new_addr as u64,
            BPF_F_PSEUDO_HDR as u64 | pkt.csum_flags | 4,
        )?;
        ctx.l3_csum_replace(IP_CSUM_OFF, old_addr as u64, new_addr as u64, 4)?;
    }
    if old_port != new_port {
        ctx.store(port_off, &new_port, 0)?;
        ctx.l4_csum_replace(
            pkt.csum_off,
            old_port as u64,
            new_port as u64,
            pkt.csum_flags | 2,
        )?;
    }
    Ok(())
}
