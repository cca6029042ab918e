//! Backend selection shared by the socket programs and the tc programs: a random backend slot,
//! or the client's remembered one while ClientIP session affinity holds.
//!
//! Both paths share `SWY_AFFINITY`; they differ only in how they name the client (see
//! [`AffinityKey::netns_cookie`]): the socket programs use the client's network namespace
//! cookie, the tc programs the external client's address with the top bit set. IPv6 service
//! entries have their own backends and affinity maps ([`V6`]), so the IPv4 maps and their
//! lookups stay as they were; the selection itself is the same code for both ([`Family`]).
use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use switchyard_common::{
    AffinityKey, AffinityValue, AffinityValue6, Backend, Backend6, BackendKey, ServiceValue,
    SERVICE_FLAG_AFFINITY,
};

use crate::maps::{AFFINITY, AFFINITY6, BACKENDS, BACKENDS6};

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The maps one address family's selection reads and writes.
pub trait Family {
    /// A backend address and port of this family.
    type Backend: Copy + PartialEq;
    /// The backend in `key`'s slot.
    fn backend(key: BackendKey) -> Option<Self::Backend>;
    /// The remembered choice of `key`: last use, slot, backend.
    fn affinity(key: AffinityKey) -> Option<(u64, u32, Self::Backend)>;
    /// Records a choice (best effort).
    fn remember(key: AffinityKey, last_used_ns: u64, slot: u32, backend: Self::Backend);
}

/// IPv4: `SWY_BACKENDS`, `SWY_AFFINITY`.
pub struct V4;
/// IPv6: `SWY_BACKENDS6`, `SWY_AFFINITY6`.
pub struct V6;

impl Family for V4 {
    type Backend = Backend;

    #[inline(always)]
    fn backend(key: BackendKey) -> Option<Backend> {
        // SAFETY: copied out at once.
        (unsafe { BACKENDS.get(key) }).copied()
    }

    #[inline(always)]
    fn affinity(key: AffinityKey) -> Option<(u64, u32, Backend)> {
        // SAFETY: copied out at once.
        let seen = (unsafe { AFFINITY.get(key) }).copied()?;
        Some((seen.last_used_ns, seen.slot, seen.backend))
    }

    #[inline(always)]
    fn remember(key: AffinityKey, last_used_ns: u64, slot: u32, backend: Backend) {
        let value = AffinityValue {
            last_used_ns,
            slot,
            backend,
            pad: 0,
        };
        let _ = AFFINITY.insert(key, value, 0);
    }
}

impl Family for V6 {
    type Backend = Backend6;

    #[inline(always)]
    fn backend(key: BackendKey) -> Option<Backend6> {
        // SAFETY: copied out at once.
        (unsafe { BACKENDS6.get(key) }).copied()
    }

    #[inline(always)]
    fn affinity(key: AffinityKey) -> Option<(u64, u32, Backend6)> {
        // SAFETY: copied out at once.
        let seen = (unsafe { AFFINITY6.get(key) }).copied()?;
        Some((seen.last_used_ns, seen.slot, seen.backend))
    }

    #[inline(always)]
    fn remember(key: AffinityKey, last_used_ns: u64, slot: u32, backend: Backend6) {
        let value = AffinityValue6 {
            last_used_ns,
            slot,
            backend,
        };
        let _ = AFFINITY6.insert(key, value, 0);
    }
}

/// The backend slot and backend for a new connection or flow of `client`: its affine one while
/// valid, else a random slot. `None` means the service has no backend (the callers have handled
/// that case before) or its entry is being rewritten (the slot is missing).
///
/// Inlined into each program, as when every program had its own copy: the callers' checks then
/// fold into this one, and no division by a possibly zero count (a panic path the verifier
/// rejects) is left in a separate function.
#[inline(always)]
pub fn pick<F: Family>(service: &ServiceValue, client: u64) -> Option<(u32, F::Backend)> {
    let count = service.count as u32;
    if count == 0 {
        return None;
    }
    if service.flags & SERVICE_FLAG_AFFINITY != 0 {
        if let Some(found) = affine::<F>(service, client) {
            return Some(found);
        }
    }
    // SAFETY: helper without arguments.
    let slot = unsafe { bpf_get_prandom_u32() } % count;
    let backend = F::backend(BackendKey {
        service_id: service.id,
        slot,
    })?;
    Some((slot, backend))
}

/// Records `backend` (in `slot`) as `client`'s choice for `service`, last used at `now`.
/// Best effort: losing it only means the next connection may pick another backend.
#[inline(always)]
pub fn remember<F: Family>(
    service: &ServiceValue,
    client: u64,
    slot: u32,
    backend: F::Backend,
    now: u64,
) {
    F::remember(affinity_key(service, client), now, slot, backend);
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
fn affine<F: Family>(service: &ServiceValue, client: u64) -> Option<(u32, F::Backend)> {
    let (last_used_ns, seen_slot, seen_backend) = F::affinity(affinity_key(service, client))?;
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let timeout = service.affinity_timeout as u64 * NANOS_PER_SEC;
    if seen_slot >= service.count as u32 || now.saturating_sub(last_used_ns) > timeout {
        return None;
    }
    let current = F::backend(BackendKey {
        service_id: service.id,
        slot: seen_slot,
    })?;
    (current == seen_backend).then_some((seen_slot, current))
}
