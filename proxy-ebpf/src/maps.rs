//! The maps the programs share with userspace. Userspace sizes them before load.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap},
};
use switchyard_common::{
    AffinityKey, AffinityKey6, AffinityValue, AffinityValue6, Backend, Backend6, BackendKey, CtKey,
    CtKey6, CtValue, CtValue6, ServiceKey, ServiceKey6, ServiceName, ServiceValue, SnatConfig,
    SockRevKey, SockRevKey6, SockRevValue, SockRevValue6, SockTermKey, SockTermKey6,
    SourceRangeKey, SourceRangeKey6, DEFAULT_AFFINITY_MAX, DEFAULT_BACKENDS_MAX,
    DEFAULT_CONNTRACK_MAX, DEFAULT_SERVICES_MAX, DEFAULT_SOCK_REVNAT_MAX, DEFAULT_SOCK_TERM_MAX,
    DEFAULT_SOURCE_RANGES_MAX, SNAT_ADDRS_MAX,
};

/// Frontends of every service port this node serves.
///
/// Not preallocated: a preallocated element is recycled for the next insert without waiting
/// for readers, so a program could read a value while userspace overwrites it. Without
/// preallocation an update swaps in a new element and frees the old one after an RCU grace
/// period (Cilium's LB maps do the same); a large size then costs only the bucket array.
///
/// The userspace planner (`switchyard_model::ebpf_plan`) relies on this too: replacing an
/// existing key never needs room, even in a full map, so a change writes everything new first
/// (which may fail with the map full, before anything in service was touched) and the
/// in-place switch of the service entries last.
#[map(name = "SWY_SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(DEFAULT_SERVICES_MAX, BPF_F_NO_PREALLOC);

/// Backend slots of every service entry (not preallocated, as [`SERVICES`]).
#[map(name = "SWY_BACKENDS")]
pub static BACKENDS: HashMap<BackendKey, Backend> =
    HashMap::with_max_entries(DEFAULT_BACKENDS_MAX, BPF_F_NO_PREALLOC);

/// Which service a translated socket really talks to, for recvmsg4 and getpeername4.
#[map(name = "SWY_SOCK_REVNAT")]
pub static SOCK_REVNAT: LruHashMap<SockRevKey, SockRevValue> =
    LruHashMap::with_max_entries(DEFAULT_SOCK_REVNAT_MAX, 0);

/// Session affinity per client network namespace and service.
#[map(name = "SWY_AFFINITY")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(DEFAULT_AFFINITY_MAX, 0);

/// Packet-path connection tracking of the tc programs: both directions of every translated
/// external flow. LRU, so idle flows are evicted under pressure instead of failing inserts.
#[map(name = "SWY_CONNTRACK")]
pub static CONNTRACK: LruHashMap<CtKey, CtValue> =
    LruHashMap::with_max_entries(DEFAULT_CONNTRACK_MAX, 0);

/// loadBalancerSourceRanges: key prefix = 32 bits of LoadBalancer IP + the range's prefix
/// length over the client address. The value is unused (presence is the answer).
/// LPM tries must be created with BPF_F_NO_PREALLOC.
#[map(name = "SWY_SOURCE_RANGES")]
pub static SOURCE_RANGES: LpmTrie<SourceRangeKey, u8> =
    LpmTrie::with_max_entries(DEFAULT_SOURCE_RANGES_MAX, BPF_F_NO_PREALLOC);

/// Source NAT settings (index 0): the port range of NATed flows. An array, so the lookup
/// every ingress packet makes is a direct load.
#[map(name = "SWY_SNAT_CONFIG")]
pub static SNAT_CONFIG: Array<SnatConfig> = Array::with_max_entries(1, 0);

/// The source address of NATed flows per device (ifindex -> IPv4 address, network order): the
/// device's own address, as MASQUERADE would pick for a packet leaving there.
#[map(name = "SWY_SNAT_ADDRS")]
pub static SNAT_ADDRS: HashMap<u32, u32> = HashMap::with_max_entries(SNAT_ADDRS_MAX, 0);

/// Which service port each backend-set id belongs to, for `switchyard status` (the service
/// entries hold ids only). No program reads it; it lives here so that it is created, pinned,
/// adopted and removed with the other maps. Sized like [`SERVICES`] by userspace.
#[map(name = "SWY_SVC_NAMES")]
pub static SERVICE_NAMES: HashMap<u32, ServiceName> =
    HashMap::with_max_entries(DEFAULT_SERVICES_MAX, BPF_F_NO_PREALLOC);

/// The (frontend, backend) pairs whose connected UDP sockets the socket iterator destroys
/// (`sock_term`); userspace fills it just before a run and empties it after.
#[map(name = "SWY_SOCK_TERM")]
pub static SOCK_TERM: HashMap<SockTermKey, u8> =
    HashMap::with_max_entries(DEFAULT_SOCK_TERM_MAX, BPF_F_NO_PREALLOC);

// IPv6: maps of their own (as Cilium's LB maps), so the IPv4 entries, their key size and their
// lookups stay as they are. Service entries for v4-mapped addresses (`::ffff:a.b.c.d`) on
// dual-stack sockets are the IPv4 ones; these maps hold only real IPv6 frontends.

/// IPv6 frontends (not preallocated, as [`SERVICES`]). Values as in [`SERVICES`]; backend-set
/// ids are shared with the IPv4 maps' id space (userspace keeps them apart).
#[map(name = "SWY_SERVICES6")]
pub static SERVICES6: HashMap<ServiceKey6, ServiceValue> =
    HashMap::with_max_entries(DEFAULT_SERVICES_MAX, BPF_F_NO_PREALLOC);

/// Backend slots of every IPv6 service entry (not preallocated, as [`SERVICES`]).
#[map(name = "SWY_BACKENDS6")]
pub static BACKENDS6: HashMap<BackendKey, Backend6> =
    HashMap::with_max_entries(DEFAULT_BACKENDS_MAX, BPF_F_NO_PREALLOC);

/// Which IPv6 service a translated socket really talks to, for recvmsg6 and getpeername6.
#[map(name = "SWY_SOCK_REVNAT6")]
pub static SOCK_REVNAT6: LruHashMap<SockRevKey6, SockRevValue6> =
    LruHashMap::with_max_entries(DEFAULT_SOCK_REVNAT_MAX, 0);

/// Session affinity to IPv6 services per client (network namespace, or an external client's
/// whole address) and service.
#[map(name = "SWY_AFFINITY6")]
pub static AFFINITY6: LruHashMap<AffinityKey6, AffinityValue6> =
    LruHashMap::with_max_entries(DEFAULT_AFFINITY_MAX, 0);

/// Packet-path connection tracking of IPv6 flows (as [`CONNTRACK`], which keeps its 16-byte
/// keys for IPv4).
#[map(name = "SWY_CONNTRACK6")]
pub static CONNTRACK6: LruHashMap<CtKey6, CtValue6> =
    LruHashMap::with_max_entries(DEFAULT_CONNTRACK_MAX, 0);

/// The IPv6 source address of NATed flows per device (ifindex -> address), as [`SNAT_ADDRS`].
#[map(name = "SWY_SNAT_ADDRS6")]
pub static SNAT_ADDRS6: HashMap<u32, [u32; 4]> = HashMap::with_max_entries(SNAT_ADDRS_MAX, 0);

/// loadBalancerSourceRanges of IPv6 LoadBalancer IPs: prefix = 128 bits of LoadBalancer IP +
/// the range's prefix length (as [`SOURCE_RANGES`]).
#[map(name = "SWY_SOURCE_RANGES6")]
pub static SOURCE_RANGES6: LpmTrie<SourceRangeKey6, u8> =
    LpmTrie::with_max_entries(DEFAULT_SOURCE_RANGES_MAX, BPF_F_NO_PREALLOC);

/// The (frontend, backend) pairs of IPv6 services whose connected UDP sockets the socket
/// iterator destroys, as [`SOCK_TERM`] (which v4-mapped destinations use).
#[map(name = "SWY_SOCK_TERM6")]
pub static SOCK_TERM6: HashMap<SockTermKey6, u8> =
    HashMap::with_max_entries(DEFAULT_SOCK_TERM_MAX, BPF_F_NO_PREALLOC);
