//! Fragments of translated datagrams (a UDP datagram larger than the path's MTU, as
//! iptables mode serves them after netfilter's reassembly), IPv4 and IPv6.
//!
//! Only the first fragment carries the TCP/UDP header, so a later one cannot be matched to a
//! flow by itself. When a first fragment is matched (to an external frontend, or as a reply
//! of a tracked flow), its ports are recorded under the datagram's identity, the fields
//! reassembly matches fragments by (addresses, protocol and IP id, RFC 791; for IPv6 the
//! addresses and the fragment header's id, RFC 8200 4.5, with the upper-layer protocol kept
//! in the value, since a later fragment does not name it), and the later
//! fragments take them from there: they follow the flow's entry like any packet of it, with
//! only their IP header rewritten (the first fragment's TCP/UDP checksum covers the whole
//! datagram and is updated there). Cilium's IPv4 fragment tracking works the same way. IPv6
//! first fragments are recorded as they are parsed, matched or not (see `v6::parse`).
//!
//! A later fragment that arrives before its first fragment (reordered on the way, or on
//! another CPU at the same moment) finds nothing and passes untouched, so that datagram is
//! lost, as when one of its fragments is. Entries are not deleted: the last fragment may not
//! arrive last, and the LRU map drops the oldest datagrams under pressure.
// Keys and values go to the map calls by reference, as in `v6`: built once on the stack, not
// copied per call into frames that have little room.
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::{macros::map, maps::LruHashMap};

use super::{v6::Packet6, Ipv4Hdr};

/// Datagrams whose ports are kept (Cilium's default for its IPv4 fragment map).
const DATAGRAMS_MAX: u32 = 8192;

/// `frag_off` (host order) bits: more fragments, and the offset in 8-byte units.
const MORE_FRAGMENTS: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// Not a fragment: the whole datagram.
pub(super) const WHOLE: u8 = 0;
/// The first fragment of a datagram: its TCP/UDP header, ports recorded once it is matched.
pub(super) const FIRST: u8 = 1;
/// A later fragment: no TCP/UDP header, ports from the first fragment.
pub(super) const LATER: u8 = 2;

/// What identifies the fragments of one datagram; addresses as on the wire.
#[repr(C)]
#[derive(Clone, Copy)]
struct DatagramKey {
    src_addr: u32,
    dst_addr: u32,
    /// The IP id, network order.
    id: u16,
    proto: u8,
    pad: u8,
}

/// The ports of a datagram's first fragment, network order.
#[repr(C)]
#[derive(Clone, Copy)]
struct DatagramPorts {
    sport: u16,
    dport: u16,
}

#[map(name = "SWY_FRAGMENTS")]
static DATAGRAMS: LruHashMap<DatagramKey, DatagramPorts> =
    LruHashMap::with_max_entries(DATAGRAMS_MAX, 0);

/// What identifies the fragments of one IPv6 datagram; as on the wire.
#[repr(C)]
#[derive(Clone, Copy)]
struct DatagramKey6 {
    src_addr: [u32; 4],
    dst_addr: [u32; 4],
    /// The fragment header's identification.
    id: u32,
}

/// The ports and upper-layer protocol of an IPv6 datagram's first fragment.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct DatagramPorts6 {
    pub(super) sport: u16,
    pub(super) dport: u16,
    pub(super) proto: u8,
    pad: [u8; 3],
}

#[map(name = "SWY_FRAGMENTS6")]
static DATAGRAMS6: LruHashMap<DatagramKey6, DatagramPorts6> =
    LruHashMap::with_max_entries(DATAGRAMS_MAX, 0);

/// Which part of a datagram the packet is: [`WHOLE`], [`FIRST`] or [`LATER`].
#[inline(always)]
pub(super) fn kind(ip: &Ipv4Hdr) -> u8 {
    let frag_off = u16::from_be(ip.frag_off);
    if frag_off & OFFSET_MASK != 0 {
        LATER
    } else if frag_off & MORE_FRAGMENTS != 0 {
        FIRST
    } else {
        WHOLE
    }
}

#[inline(always)]
fn key(saddr: u32, daddr: u32, id: u16, proto: u8) -> DatagramKey {
    DatagramKey {
        src_addr: saddr,
        dst_addr: daddr,
        id,
        proto,
        pad: 0,
    }
}

/// The ports of the datagram whose later fragment `ip` heads, if its first fragment was
/// matched.
#[inline(always)]
pub(super) fn ports(ip: &Ipv4Hdr) -> Option<(u16, u16)> {
    // SAFETY: copied out at once.
    let ports = unsafe { DATAGRAMS.get(&key(ip.saddr, ip.daddr, ip.id, ip.proto)) }?;
    Some((ports.sport, ports.dport))
}

/// Records the ports of a first fragment that was matched, for the datagram's later
/// fragments; nothing for a whole datagram or a later fragment.
#[inline(always)]
pub(super) fn remember(pkt: &super::Packet) {
    if pkt.fragment != FIRST {
        return;
    }
    let ports = DatagramPorts {
        sport: pkt.sport,
        dport: pkt.dport,
    };
    // A failed insert (never for an LRU map with room to evict) costs the datagram only.
    let _ = DATAGRAMS.insert(&key(pkt.saddr, pkt.daddr, pkt.ip_id, pkt.proto), &ports, 0);
}

/// The ports and protocol of the IPv6 datagram `id` from `saddr` to `daddr`, whose later
/// fragment this is, if its first fragment was seen.
#[inline(always)]
pub(super) fn ports6(saddr: &[u32; 4], daddr: &[u32; 4], id: u32) -> Option<DatagramPorts6> {
    let key = DatagramKey6 {
        src_addr: *saddr,
        dst_addr: *daddr,
        id,
    };
    // SAFETY: copied out at once.
    unsafe { DATAGRAMS6.get(&key) }.copied()
}

/// Records the ports of the IPv6 datagram `id` whose first fragment `pkt` is.
#[inline(always)]
pub(super) fn remember6(pkt: &Packet6, id: u32) {
    let key = DatagramKey6 {
        src_addr: pkt.saddr,
        dst_addr: pkt.daddr,
        id,
    };
    let ports = DatagramPorts6 {
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        pad: [0; 3],
    };
    let _ = DATAGRAMS6.insert(&key, &ports, 0);
}
