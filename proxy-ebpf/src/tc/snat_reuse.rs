//! Reuse of a source-NAT port whose flow has ended.
//!
//! A source-NATed flow holds its port (its reply entry backend -> node:port) until userspace
//! expires it, after netfilter's `time_wait` (120 s) for a closed connection. At a few hundred
//! new connections per second to one backend that is the whole port range, and new flows would
//! be dropped. netfilter meets the same in `nf_nat_used_tuple_harder`: a tuple held by a TCP
//! connection in TIME_WAIT is given to the new connection. Here the same: a port whose TCP flow
//! was closed (FIN both ways, or RST) and has been quiet since then (its last ACK and any
//! retransmitted FIN have passed) is taken over.
use core::intrinsics::{atomic_cxchg, AtomicOrdering};

use switchyard_common::{
    CtKey, CtValue, CT_FLAG_REPLY, CT_FLAG_SNAT, CT_STATE_FIN, CT_STATE_RST, PROTO_TCP,
};

use crate::maps::CONNTRACK;

/// How long a closed flow must have been quiet before its port goes to a new flow.
const QUIET_NS: u64 = 1_000_000_000;

/// Whether both directions' `CT_STATE_*` bits say the connection is over.
#[inline(always)]
fn closed(reply_state: u16, forward_state: u16) -> bool {
    (reply_state | forward_state) & CT_STATE_RST != 0
        || (reply_state & CT_STATE_FIN != 0 && forward_state & CT_STATE_FIN != 0)
}

/// Takes the reply entry at `reply_key` for a new flow (`reply`) if the TCP flow holding it
/// has ended, and deletes that flow's original-direction entry. Returns whether the entry is
/// now `reply`'s.
#[inline(always)]
pub(super) fn take_ended(reply_key: &CtKey, reply: &CtValue, now: u64) -> bool {
    if reply_key.proto != PROTO_TCP {
        return false;
    }
    let Some(entry) = CONNTRACK.get_ptr_mut(*reply_key) else {
        return false;
    };
    // SAFETY: a valid map value pointer for the duration of the program; copied out at once.
    let held = unsafe { *entry };
    if held.flags & (CT_FLAG_REPLY | CT_FLAG_SNAT) != CT_FLAG_REPLY | CT_FLAG_SNAT {
        return false;
    }
    let forward_key = CtKey {
        src_addr: held.nat_addr,
        dst_addr: held.addr,
        src_port: held.nat_port,
        dst_port: held.port,
        proto: PROTO_TCP,
        pad: [0; 3],
    };
    // SAFETY: copied out at once.
    let forward = (unsafe { CONNTRACK.get(forward_key) })
        .copied()
        .filter(|f| {
            // Only the entry that translates onto this port is the flow's own: the client may
            // have opened a new flow from the same address and port since.
            f.flags & (CT_FLAG_REPLY | CT_FLAG_SNAT) == CT_FLAG_SNAT
                && f.nat_addr == reply_key.dst_addr
                && f.nat_port == reply_key.dst_port
        });
    // A reply entry without its other direction (evicted) can no longer translate its flow
    // both ways: it has ended too.
    let (forward_state, forward_seen) =
        forward.map_or((CT_STATE_RST, 0), |f| (f.state, f.last_seen_ns));
    let last = if held.last_seen_ns > forward_seen {
        held.last_seen_ns
    } else {
        forward_seen
    };
    if !closed(held.state, forward_state) || now.saturating_sub(last) < QUIET_NS {
        return false;
    }
    // One CPU takes the entry: another one creating a flow onto the same port at the same
    // moment, or a late packet of the old flow, changes `last_seen_ns` first.
    // SAFETY: `last_seen_ns` is 8-byte aligned in the map value (offset 16, see CtValue),
    // and lives as long as the entry; every other access to it is a plain store.
    // (`core::sync::atomic` offers no compare-exchange on this target; the intrinsic
    // lowers to the BPF_CMPXCHG instruction.)
    // SAFETY: `last_seen_ns` is 8-byte aligned in the map value (offset 16, see CtValue),
    // and lives as long as the entry; every other access to it is a plain store.
    let (_, won) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::AcqRel }, { AtomicOrdering::Relaxed }>(
            &raw mut (*entry).last_seen_ns,
            held.last_seen_ns,
            now,
        )
    };
    if !won {
        return false;
    }
    // SAFETY: as above; this CPU owns the entry now.
    unsafe {
        (*entry).addr = reply.addr;
        (*entry).port = reply.port;
        (*entry).flags = reply.flags;
        (*entry).nat_addr = reply.nat_addr;
        (*entry).nat_port = reply.nat_port;
        (*entry).state = reply.state;
    }
    if forward.is_some() {
        let _ = CONNTRACK.remove(forward_key);
    }
    true
}
