//! Backend selection shared by the socket programs and the tc programs: a random backend slot,
//! or the client's remembered one while ClientIP session affinity holds.
//!
//! Both paths share one affinity map per family; they differ only in how they name the client
//! ([`Family::Client`]): the socket programs by the client's network namespace cookie, the tc
//! programs by the external client's address (IPv4: with the top bit set, apart from the
//! cookies; IPv6: all 128 bits, in keys of their own). IPv6 service entries have their own
//! backends and affinity maps ([`V6`]), so the IPv4 maps and their lookups stay as they were;
//! the selection itself is the same code for both ([`Family`]).
use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use switchyard_common::{
    AffinityKey, AffinityKey6, AffinityValue, AffinityValue6, Backend, Backend6, BackendKey,
    ServiceValue, SCOPE_EXTERNAL, SCOPE_SOCKET, SERVICE_FLAG_AFFINITY,
};

use crate::maps::{AFFINITY, AFFINITY6, BACKENDS, BACKENDS6};

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The maps one address family's selection reads and writes.
pub trait Family {
    /// A backend address and port of this family.
    type Backend: Copy + PartialEq;
    /// What names a client for affinity.
    type Client: Copy;
    /// The client that is the network namespace with this cookie (the socket programs).
    fn socket_client(netns_cookie: u64) -> Self::Client;
    /// The backend in `key`'s slot.
    fn backend(key: BackendKey) -> Option<Self::Backend>;
    /// The remembered choice of `client` for the service entry `service_id`: last use,
    /// slot, backend.
    fn affinity(service_id: u32, client: Self::Client) -> Option<(u64, u32, Self::Backend)>;
    /// Records a choice (best effort).
    fn remember(
        service_id: u32,
        client: Self::Client,
        last_used_ns: u64,
        slot: u32,
        backend: Self::Backend,
    );
}

/// IPv4: `SWY_BACKENDS`, `SWY_AFFINITY`.
pub struct V4;
/// IPv6: `SWY_BACKENDS6`, `SWY_AFFINITY6`.
pub struct V6;

/// An IPv6 affinity client: a network namespace cookie or an external address (see
/// [`AffinityKey6`]).
#[derive(Clone, Copy)]
pub struct Client6 {
    /// The cookie's words, or the address.
    pub client: [u32; 4],
    /// [`SCOPE_SOCKET`] or [`SCOPE_EXTERNAL`].
    pub scope: u8,
}

impl Client6 {
    /// The external client at `addr` (network order words).
    #[inline(always)]
    pub fn external(addr: [u32; 4]) -> Self {
        Self {
            client: addr,
            scope: SCOPE_EXTERNAL,
        }
    }

    #[inline(always)]
    fn key(self, service_id: u32) -> AffinityKey6 {
        AffinityKey6 {
            client: self.client,
            service_id,
            scope: self.scope as u32,
        }
    }
}

impl Family for V4 {
    type Backend = Backend;
    /// The network namespace cookie, or the external address with the top bit set.
    type Client = u64;

    #[inline(always)]
    fn socket_client(netns_cookie: u64) -> u64 {
        netns_cookie
    }

    #[inline(always)]
    fn backend(key: BackendKey) -> Option<Backend> {
        // SAFETY: copied out at once.
        (unsafe { BACKENDS.get(key) }).copied()
    }

    #[inline(always)]
    fn affinity(service_id: u32, client: u64) -> Option<(u64, u32, Backend)> {
        // SAFETY: copied out at once.
        let seen = (unsafe { AFFINITY.get(affinity_key(service_id, client)) }).copied()?;
        Some((seen.last_used_ns, seen.slot, seen.backend))
    }

    #[inline(always)]
    fn remember(service_id: u32, client: u64, last_used_ns: u64, slot: u32, backend: Backend) {
        let value = AffinityValue {
            last_used_ns,
            slot,
            backend,
            pad: 0,
        };
        let _ = AFFINITY.insert(affinity_key(service_id, client), value, 0);
    }
}

impl Family for V6 {
    type Backend = Backend6;
    type Client = Client6;

    #[inline(always)]
    fn socket_client(netns_cookie: u64) -> Client6 {
        Client6 {
            client: [netns_cookie as u32, (netns_cookie >> 32) as u32, 0, 0],
            scope: SCOPE_SOCKET,
        }
    }

    #[inline(always)]
    fn backend(key: BackendKey) -> Option<Backend6> {
        // SAFETY: copied out at once.
        (unsafe { BACKENDS6.get(key) }).copied()
    }

    #[inline(always)]
    fn affinity(service_id: u32, client: Client6) -> Option<(u64, u32, Backend6)> {
        // SAFETY: copied out at once.
        let seen = (unsafe { AFFINITY6.get(client.key(service_id)) }).copied()?;
        Some((seen.last_used_ns, seen.slot, seen.backend))
    }

    #[inline(always)]
    fn remember(service_id: u32, client: Client6, last_used_ns: u64, slot: u32, backend: Backend6) {
        let value = AffinityValue6 {
            last_used_ns,
            slot,
            backend,
        };
        let _ = AFFINITY6.insert(client.key(service_id), value, 0);
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
pub fn pick<F: Family>(service: &ServiceValue, client: F::Client) -> Option<(u32, F::Backend)> {
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
    client: F::Client,
    slot: u32,
    backend: F::Backend,
    now: u64,
) {
    F::remember(service.id, client, now, slot, backend);
}

#[inline(always)]
fn affinity_key(service_id: u32, client: u64) -> AffinityKey {
    AffinityKey {
        netns_cookie: client,
        service_id,
        pad: 0,
    }
}

/// The remembered backend if it is recent enough and still in the same slot.
#[inline(always)]
fn affine<F: Family>(service: &ServiceValue, client: F::Client) -> Option<(u32, F::Backend)> {
    let (last_used_ns, seen_slot, seen_backend) = F::affinity(service.id, client)?;
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
