//! Backend selection shared by the socket programs and the tc programs: a random backend slot,
//! or the client's remembered one while ClientIP session affinity holds.
//!
//! Both paths share `SWY_AFFINITY`; they differ only in how they name the client (see
//! [`AffinityKey::netns_cookie`]): the socket programs use the client's network namespace
//! cookie, the tc programs the external client's address with the top bit set.
use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use switchyard_common::{
    AffinityKey, AffinityValue, Backend, BackendKey, ServiceValue, SERVICE_FLAG_AFFINITY,
};

use crate::maps::{AFFINITY, BACKENDS};

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The backend slot and backend for a new connection or flow of `client`: its affine one while
/// valid, else a random slot. `None` means the service has no backend (the callers have handled
/// that case before) or its entry is being rewritten (the slot is missing).
///
/// Inlined into each program, as when every program had its own copy: the callers' checks then
/// fold into this one, and no division by a possibly zero count (a panic path the verifier
/// rejects) is left in a separate function.
#[inline(always)]
pub fn pick(service: &ServiceValue, client: u64) -> Option<(u32, Backend)> {
    let count = service.count as u32;
    if count == 0 {
        return None;
    }
    if service.flags & SERVICE_FLAG_AFFINITY != 0 {
        if let Some(found) = affine(service, client) {
            return Some(found);
        }
    }
    // SAFETY: helper without arguments.
    let slot = unsafe { bpf_get_prandom_u32() } % count;
    // SAFETY: copied out at once.
    let backend = (unsafe {
        BACKENDS.get(BackendKey {
            service_id: service.id,
            slot,
        })
    })
    .copied()?;
    Some((slot, backend))
}

/// Records `backend` (in `slot`) as `client`'s choice for `service`, last used at `now`.
/// Best effort: losing it only means the next connection may pick another backend.
#[inline(always)]
pub fn remember(service: &ServiceValue, client: u64, slot: u32, backend: Backend, now: u64) {
    let value = AffinityValue {
        last_used_ns: now,
        slot,
        backend,
        pad: 0,
    };
    let _ = AFFINITY.insert(affinity_key(service, client), value, 0);
}

#[inline(always)]
fn affinity_key(service: &ServiceValue, client: u64) -> AffinityKey {
    AffinityKey {
        netns_cookie: client,
        service_id: service.id,
        pad: 0,
    }
}

/// The remembered backend if it is recent enough and still in the same slot.
#[inline(always)]
fn affine(service: &ServiceValue, client: u64) -> Option<(u32, Backend)> {
    // SAFETY: copied out at once.
    let seen = (unsafe { AFFINITY.get(affinity_key(service, client)) }).copied()?;
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let timeout = service.affinity_timeout as u64 * NANOS_PER_SEC;
    if seen.slot >= service.count as u32 || now.saturating_sub(seen.last_used_ns) > timeout {
        return None;
    }
    let slot_key = BackendKey {
        service_id: service.id,
        slot: seen.slot,
    };
    // SAFETY: copied out at once.
    let current = (unsafe { BACKENDS.get(slot_key) }).copied()?;
    (current == seen.backend).then_some((seen.slot, current))
}
