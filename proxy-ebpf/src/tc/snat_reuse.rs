//! Reuse of a source-NAT port whose flow has ended.
//!
//! A source-NATed flow holds its port (its reply entry backend -> node:port) until userspace
//! expires it, after netfilter's `time_wait` (120 s) for a closed connection. At a few hundred
//! new connections per second to one backend that is the whole port range, and new flows would
//! be dropped. netfilter meets the same in `nf_nat_used_tuple_harder`: a tuple held by a TCP
//! connection in TIME_WAIT is given to the new connection. Here the same: a port whose TCP flow
//! was closed (FIN both ways, or RST) and has been quiet since then (its last ACK and any
//! retransmitted FIN have passed) is taken over. Both families ([`take_ended`],
//! [`take_ended6`]).
use core::intrinsics::{atomic_cxchg, AtomicOrdering};

use switchyard_common::{
    CtKey, CtKey6, CtValue, CtValue6, CT_FLAG_REPLY, CT_FLAG_SNAT, CT_STATE_FIN, CT_STATE_RST,
    PROTO_TCP,
};

use crate::maps::{CONNTRACK, CONNTRACK6};

/// How long a closed flow must have been quiet before its port goes to a new flow.
const QUIET_NS: u64 = 1_000_000_000;

/// Whether both directions' `CT_STATE_*` bits say the connection is over.
#[inline(always)]
fn closed(reply_state: u16, forward_state: u16) -> bool {
    (reply_state | forward_state) & CT_STATE_RST != 0
        || (reply_state & CT_STATE_FIN != 0 && forward_state & CT_STATE_FIN != 0)
}

/// Defines `$name(reply_key, reply, now) -> bool` for one family's conntrack map: takes the
/// reply entry at `reply_key` for a new flow (`reply`) if the TCP flow holding it has ended,
/// and deletes that flow's original-direction entry. Returns whether the entry is now
/// `reply`'s. One body for both families (their keys and values have the same fields); the
/// held entry is read through its pointer rather than copied, so the frame stays small
/// (IPv6 calls it on top of its `snat_flow` frame).
macro_rules! take_ended_fn {
    ($(#[$attr:meta])* $name:ident, $map:path, $key:ident, $value:ident) => {
        $(#[$attr])*
        pub(super) fn $name(reply_key: &$key, reply: &$value, now: u64) -> bool {
            if reply_key.proto != PROTO_TCP {
                return false;
            }
            let Some(entry) = $map.get_ptr_mut(reply_key) else {
                return false;
            };
            // SAFETY: a valid map value pointer for the duration of the program; each field
            // is read once.
            let (flags, held_state, held_seen) =
                unsafe { ((*entry).flags, (*entry).state, (*entry).last_seen_ns) };
            if flags & (CT_FLAG_REPLY | CT_FLAG_SNAT) != CT_FLAG_REPLY | CT_FLAG_SNAT {
                return false;
            }
            // SAFETY: as above.
            let forward_key = unsafe {
                $key {
                    src_addr: (*entry).nat_addr,
                    dst_addr: (*entry).addr,
                    src_port: (*entry).nat_port,
                    dst_port: (*entry).port,
                    proto: PROTO_TCP,
                    pad: [0; 3],
                }
            };
            // Only the entry that translates onto this port is the flow's own: the client
            // may have opened a new flow from the same address and port since.
            // SAFETY: a valid map value pointer; its fields copied out at once.
            let forward = $map.get_ptr(&forward_key).and_then(|f| unsafe {
                ((*f).flags & (CT_FLAG_REPLY | CT_FLAG_SNAT) == CT_FLAG_SNAT
                    && (*f).nat_addr == reply_key.dst_addr
                    && (*f).nat_port == reply_key.dst_port)
                    .then(|| ((*f).state, (*f).last_seen_ns))
            });
            // A reply entry without its other direction (evicted) can no longer translate its
            // flow both ways: it has ended too.
            let (forward_state, forward_seen) = forward.unwrap_or((CT_STATE_RST, 0));
            let last = if held_seen > forward_seen {
                held_seen
            } else {
                forward_seen
            };
            if !closed(held_state, forward_state) || now.saturating_sub(last) < QUIET_NS {
                return false;
            }
            // One CPU takes the entry: another one creating a flow onto the same port at the
            // same moment, or a late packet of the old flow, changes `last_seen_ns` first.
            // (`core::sync::atomic` offers no compare-exchange on this target; the intrinsic
            // lowers to the BPF_CMPXCHG instruction.)
            // SAFETY: `last_seen_ns` is 8-byte aligned in the map value (offset 16 of
            // CtValue, 40 of CtValue6), and lives as long as the entry; every other access to
            // it is a plain store.
            let (_, won) = unsafe {
                atomic_cxchg::<u64, { AtomicOrdering::AcqRel }, { AtomicOrdering::Relaxed }>(
                    &raw mut (*entry).last_seen_ns,
                    held_seen,
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
                let _ = $map.remove(&forward_key);
            }
            true
        }
    };
}

take_ended_fn!(
    /// IPv4 (`SWY_CONNTRACK`); inlined into the entry program, which has no room for a call.
    #[inline(always)]
    take_ended,
    CONNTRACK,
    CtKey,
    CtValue
);

take_ended_fn!(
    /// IPv6 (`SWY_CONNTRACK6`), inlined into [`swy_take_ended6`].
    #[inline(always)]
    take_ended6_inner,
    CONNTRACK6,
    CtKey6,
    CtValue6
);

/// IPv6's [`take_ended`]: a global BPF function, so the verifier checks it once on its own
/// rather than once for each of `v6::snat_flow`'s 32 tries (33,000 instructions verified).
/// It has a frame of its own on top of `v6::snat_flow`'s. That chain is at the verifier's
/// 512 bytes (entry 192 + `snat_flow` 216 + this 88, rounded): a local added to any of the
/// three needs room made elsewhere. Raw pointers: the verifier takes a global function's
/// pointer arguments as possibly null, so the function checks them.
#[no_mangle]
#[inline(never)]
pub extern "C" fn swy_take_ended6(
    reply_key: *const CtKey6,
    reply: *const CtValue6,
    now: u64,
) -> u32 {
    // SAFETY: the caller passes references (or, to the verifier's mind, null).
    let (Some(reply_key), Some(reply)) = (unsafe { reply_key.as_ref() }, unsafe { reply.as_ref() })
    else {
        return 0;
    };
    u32::from(take_ended6_inner(reply_key, reply, now))
}

/// Whether [`swy_take_ended6`] took the reply entry at `reply_key` for `reply`.
#[inline(always)]
pub(super) fn take_ended6(reply_key: &CtKey6, reply: &CtValue6, now: u64) -> bool {
    swy_take_ended6(reply_key, reply, now) != 0
}
