//! Rate limits of the ICMP port unreachable answers ([`super::reject`]), as the kernel limits
//! the ones it sends itself (kube-proxy's REJECT rule has the kernel answer), with the node
//! namespace's sysctls as userspace wrote them into `SWY_REFUSAL_LIMITS`:
//! - per client address, `icmp_ratelimit` (default 1 s): a burst of 6, then one per interval
//!   (`inet_peer_xrlim_allow`, `XRLIM_BURST_FACTOR`), kept in an LRU map per family, keyed by
//!   the whole address (as the kernel's inet_peer is), so no two clients share a bucket;
//! - for all clients, `icmp_msgs_per_sec` / `icmp_msgs_burst` (1000 per second, burst 50,
//!   `icmp_global_allow`), kept per CPU: the node's total may reach that per CPU.
//!
//! An answer over a limit is dropped, as the kernel then sends nothing. TCP resets are not
//! limited, as the kernel's reset for a closed port is not.
use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
};
use switchyard_common::RefusalLimits;

/// Clients whose buckets are kept; a client evicted under pressure starts with a full burst.
const CLIENTS_MAX: u32 = 8192;

/// A token bucket, as `xrlim_allow` keeps one: credit in nanoseconds, one interval per answer.
#[repr(C)]
#[derive(Clone, Copy)]
struct Bucket {
    credit_ns: u64,
    last_ns: u64,
}

#[map(name = "SWY_REFUSAL_LIMITS")]
static LIMITS: Array<RefusalLimits> = Array::with_max_entries(1, 0);

#[map(name = "SWY_REFUSAL_CLIENTS")]
static CLIENTS: LruHashMap<u32, Bucket> = LruHashMap::with_max_entries(CLIENTS_MAX, 0);

#[map(name = "SWY_REFUSAL_CLIENTS6")]
static CLIENTS6: LruHashMap<[u32; 4], Bucket> = LruHashMap::with_max_entries(CLIENTS_MAX, 0);

#[map(name = "SWY_REFUSAL_GLOBAL")]
static GLOBAL: PerCpuArray<Bucket> = PerCpuArray::with_max_entries(1, 0);

/// Takes one answer's credit from `bucket` if it has it; credit accrues with time up to `burst`.
#[inline(always)]
fn take(bucket: *mut Bucket, now: u64, interval: u64, burst: u64) -> bool {
    // SAFETY: a valid map value pointer for the duration of the program.
    unsafe {
        let mut credit = (*bucket).credit_ns + now.saturating_sub((*bucket).last_ns);
        if credit > burst {
            credit = burst;
        }
        (*bucket).last_ns = now;
        let allowed = credit >= interval;
        (*bucket).credit_ns = if allowed { credit - interval } else { credit };
        allowed
    }
}

/// Whether an ICMP answer to the IPv4 `client` (network order) may be sent now.
#[inline(always)]
pub(super) fn allow_icmp(client: u32, now: u64) -> bool {
    allow_icmp_from(&CLIENTS, &client, now)
}

/// Whether an ICMPv6 answer to the IPv6 `client` (as the maps hold addresses) may be sent now.
#[inline(always)]
pub(super) fn allow_icmp6(client: &[u32; 4], now: u64) -> bool {
    allow_icmp_from(&CLIENTS6, client, now)
}

/// The global limit, then `client`'s bucket in `clients`.
#[inline(always)]
fn allow_icmp_from<K>(clients: &LruHashMap<K, Bucket>, client: &K, now: u64) -> bool {
    let Some(limits) = LIMITS.get(0).copied() else {
        return true;
    };
    if limits.global_interval_ns != 0 {
        let Some(global) = GLOBAL.get_ptr_mut(0) else {
            return false;
        };
        if !take(
            global,
            now,
            limits.global_interval_ns,
            limits.global_burst_ns,
        ) {
            return false;
        }
    }
    let interval = limits.client_interval_ns;
    if interval == 0 {
        return true;
    }
    let burst = limits.client_burst_ns;
    if let Some(bucket) = clients.get_ptr_mut(client) {
        return take(bucket, now, interval, burst);
    }
    // A new client starts with a full burst, this answer taken from it.
    let fresh = Bucket {
        credit_ns: burst.saturating_sub(interval),
        last_ns: now,
    };
    // Another CPU may insert the same client at once; either bucket is as good.
    let _ = clients.insert(client, fresh, 0);
    true
}
