//! Map layouts shared by the kernel programs (`switchyard-ebpf`) and the userspace controller.
//!
//! Every type is `#[repr(C)]`, padded explicitly and `Copy`, so the same bytes mean the same thing
//! on both sides. Addresses and ports are stored in network byte order, exactly as the kernel hands
//! them to the programs, so the hot path never swaps bytes.
#![no_std]

/// Map names, shared so userspace and kernel cannot drift apart.
pub mod map_names {
    /// Frontends: (address, port, protocol) -> [`ServiceValue`](super::ServiceValue).
    pub const SERVICES: &str = "SWY_SERVICES";
    /// Backends: (service id, slot) -> [`Backend`](super::Backend).
    pub const BACKENDS: &str = "SWY_BACKENDS";
    /// Socket reverse translation: (socket cookie, backend) -> service address (LRU).
    pub const SOCK_REVNAT: &str = "SWY_SOCK_REVNAT";
    /// Session affinity: (client netns cookie, service id) -> chosen backend (LRU).
    pub const AFFINITY: &str = "SWY_AFFINITY";
    /// Packet-path connection tracking: [`CtKey`](super::CtKey) -> [`CtValue`](super::CtValue) (LRU).
    pub const CONNTRACK: &str = "SWY_CONNTRACK";
    /// loadBalancerSourceRanges: LPM trie over (LoadBalancer IP, client address).
    pub const SOURCE_RANGES: &str = "SWY_SOURCE_RANGES";
    /// Source NAT settings of the tc programs: one [`SnatConfig`](super::SnatConfig) (array).
    pub const SNAT_CONFIG: &str = "SWY_SNAT_CONFIG";
    /// Source NAT address per device: ifindex -> IPv4 address, network byte order (hash).
    pub const SNAT_ADDRS: &str = "SWY_SNAT_ADDRS";
    /// Names for `switchyard status`: backend-set id -> [`ServiceName`](super::ServiceName)
    /// (hash). Written by userspace only; no program reads it.
    pub const SERVICE_NAMES: &str = "SWY_SVC_NAMES";
    /// Rate limits of the tc programs' ICMP refusals: one
    /// [`RefusalLimits`](super::RefusalLimits) (array), written by userspace at start.
    /// Not pinned: each load gets the node's current sysctls.
    pub const REFUSAL_LIMITS: &str = "SWY_REFUSAL_LIMITS";
    /// Socket termination filter: [`SockTermKey`](super::SockTermKey) -> unused byte (hash).
    /// Filled by userspace just before it runs the UDP socket iterator, emptied after; not
    /// pinned (each controller instance has its own).
    pub const SOCK_TERM: &str = "SWY_SOCK_TERM";
    /// Socket termination filter of IPv6 sockets to IPv6 services:
    /// [`SockTermKey6`](super::SockTermKey6) -> unused byte (hash); not pinned, as
    /// [`SOCK_TERM`] (which also serves dual-stack sockets to v4-mapped addresses).
    pub const SOCK_TERM6: &str = "SWY_SOCK_TERM6";
    /// IPv6 frontends: [`ServiceKey6`](super::ServiceKey6) -> [`ServiceValue`](super::ServiceValue).
    pub const SERVICES6: &str = "SWY_SERVICES6";
    /// IPv6 backends: (service id, slot) -> [`Backend6`](super::Backend6).
    pub const BACKENDS6: &str = "SWY_BACKENDS6";
    /// Socket reverse translation of IPv6 sockets to IPv6 services (LRU).
    pub const SOCK_REVNAT6: &str = "SWY_SOCK_REVNAT6";
    /// Session affinity to IPv6 services (LRU).
    pub const AFFINITY6: &str = "SWY_AFFINITY6";
    /// Packet-path connection tracking of IPv6 flows: [`CtKey6`](super::CtKey6) ->
    /// [`CtValue6`](super::CtValue6) (LRU).
    pub const CONNTRACK6: &str = "SWY_CONNTRACK6";
    /// IPv6 source NAT address per device: ifindex -> IPv6 address (hash).
    pub const SNAT_ADDRS6: &str = "SWY_SNAT_ADDRS6";
    /// loadBalancerSourceRanges of IPv6 LoadBalancer IPs: LPM trie over
    /// [`SourceRangeKey6`](super::SourceRangeKey6).
    pub const SOURCE_RANGES6: &str = "SWY_SOURCE_RANGES6";
    /// The IPv6 tc programs the IPv4 ones tail-call (program array: 0 ingress, 1 egress),
    /// filled by userspace at load.
    pub const TC_V6: &str = "SWY_TC_V6";
}

/// Program names as they appear in the object file.
pub mod program_names {
    /// cgroup/connect4: TCP connect() and connected UDP.
    pub const CONNECT4: &str = "swy_connect4";
    /// cgroup/sendmsg4: unconnected UDP sends.
    pub const SENDMSG4: &str = "swy_sendmsg4";
    /// cgroup/recvmsg4: unconnected UDP replies, shown as coming from the service.
    pub const RECVMSG4: &str = "swy_recvmsg4";
    /// cgroup/getpeername4: the peer of a translated socket is the service.
    pub const GETPEERNAME4: &str = "swy_getpeername4";
    /// cgroup/connect6: as connect4 for IPv6 sockets (IPv6 and v4-mapped destinations).
    pub const CONNECT6: &str = "swy_connect6";
    /// cgroup/sendmsg6: as sendmsg4 for IPv6 sockets.
    pub const SENDMSG6: &str = "swy_sendmsg6";
    /// cgroup/recvmsg6: as recvmsg4 for IPv6 sockets.
    pub const RECVMSG6: &str = "swy_recvmsg6";
    /// cgroup/getpeername6: as getpeername4 for IPv6 sockets. Shorter than its IPv4 twin, so
    /// that the kernel's 15-byte program names tell the two apart.
    pub const GETPEERNAME6: &str = "swy_getpeer6";
    /// tc ingress on node devices: DNAT of external traffic to service frontends.
    pub const TC_INGRESS: &str = "swy_tc_ingress";
    /// tc egress on node devices: reverse translation of replies to external clients.
    pub const TC_EGRESS: &str = "swy_tc_egress";
    /// IPv6 packets of [`TC_INGRESS`], tail-called from it (not attached itself).
    pub const TC_INGRESS6: &str = "swy_tc_ingress6";
    /// IPv6 packets of [`TC_EGRESS`], tail-called from it (not attached itself).
    pub const TC_EGRESS6: &str = "swy_tc_egress6";
    /// iter/udp: destroys connected UDP sockets translated to a backend that left the
    /// frontend they were sent to (`bpf_sock_destroy`, kernels >= 6.5). IPv4 and IPv6
    /// sockets alike (the kernel's UDP table holds both); the name is from IPv4-only days.
    pub const SOCK_TERM_UDP4: &str = "swy_sock_term_udp4";
}

/// IP protocol number for TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number for UDP.
pub const PROTO_UDP: u8 = 17;
/// IP protocol number for ICMP (errors about translated flows are translated too).
pub const PROTO_ICMP: u8 = 1;
/// IPv6 next-header number of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;

/// Default number of entries of the services map: 30,000 service ports with several
/// frontends each (maps are not preallocated, so room costs only the bucket array).
pub const DEFAULT_SERVICES_MAX: u32 = 262_144;
/// Default number of entries of the backends map: 30,000 services x 10 endpoints, with room
/// for a second set per service (external traffic policy) or for the fresh sets a restarted
/// controller writes before the old ones go. Sizing rule: at least twice the number of
/// endpoints summed over every backend set.
pub const DEFAULT_BACKENDS_MAX: u32 = 1_048_576;
/// Default number of entries of the socket reverse-translation map.
pub const DEFAULT_SOCK_REVNAT_MAX: u32 = 262_144;
/// Default number of entries of the affinity map.
pub const DEFAULT_AFFINITY_MAX: u32 = 65_536;
/// Default number of entries of the connection-tracking map.
pub const DEFAULT_CONNTRACK_MAX: u32 = 262_144;
/// Default number of entries of the source-ranges trie.
pub const DEFAULT_SOURCE_RANGES_MAX: u32 = 16_384;
/// Entries of the per-device source NAT address map (devices the tc programs attach to).
pub const SNAT_ADDRS_MAX: u32 = 256;

/// [`ServiceName::set`]: the set of ClusterIP entries (internalTrafficPolicy applies).
pub const NAME_SET_INTERNAL: u8 = 0;
/// [`ServiceName::set`]: the set of external frontends reached from local sockets.
pub const NAME_SET_CLUSTER: u8 = 1;
/// [`ServiceName::set`]: the set of external frontends reached from outside the node
/// (externalTrafficPolicy applies).
pub const NAME_SET_EXTERNAL: u8 = 2;

/// [`ServiceKey::scope`] of entries used by the socket programs (traffic from local sockets).
pub const SCOPE_SOCKET: u8 = 0;
/// [`ServiceKey::scope`] of entries used by the tc programs (traffic from outside the node).
pub const SCOPE_EXTERNAL: u8 = 1;

/// Key of the services map: one frontend of one service port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ServiceKey {
    /// IPv4 address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    /// IP protocol number ([`PROTO_TCP`] or [`PROTO_UDP`]).
    pub proto: u8,
    /// [`SCOPE_SOCKET`] or [`SCOPE_EXTERNAL`]: the two paths choose endpoints differently
    /// (externalTrafficPolicy applies only to traffic from outside the node).
    pub scope: u8,
}

/// The service entry has `sessionAffinity: ClientIP`.
pub const SERVICE_FLAG_AFFINITY: u16 = 1 << 0;
/// External traffic must be masqueraded (externalTrafficPolicy Cluster): flows to a backend
/// behind the device the packet arrived on get this node's address as source (tc SNAT).
pub const SERVICE_FLAG_MASQUERADE: u16 = 1 << 1;
/// The frontend is a LoadBalancer IP with loadBalancerSourceRanges: check [`SourceRangeKey`].
pub const SERVICE_FLAG_SOURCE_RANGES: u16 = 1 << 2;
/// With no endpoint in the set, drop (Local policy) instead of letting the kernel refuse.
pub const SERVICE_FLAG_DROP_EMPTY: u16 = 1 << 3;
/// iptables mode is taking the node over: the packet path starts no new flow for this entry
/// and leaves everything it does not already translate to the kernel (netfilter and the
/// rules iptables mode has written), until the programs go. Set only by that handover.
pub const SERVICE_FLAG_HANDOVER: u16 = 1 << 4;
/// [`CtValue::flags`] bit of reply-direction conntrack entries: the two directions' keys have
/// the same shape, and only reply entries may rewrite a packet's source on egress.
pub const CT_FLAG_REPLY: u16 = 1 << 15;
/// [`CtValue::flags`] bit of flows the tc programs source-NAT themselves: the packet's source
/// is rewritten too ([`CtValue::nat_addr`], [`CtValue::nat_port`]) and the packet is
/// redirected out of the device instead of going up the stack.
pub const CT_FLAG_SNAT: u16 = 1 << 14;

/// [`CtValue::state`] bit: a packet of this direction passed after the flow was created. On
/// the reply entry it means the flow was answered.
pub const CT_STATE_SEEN: u16 = 1 << 0;
/// [`CtValue::state`] bit: a TCP FIN passed in this direction.
pub const CT_STATE_FIN: u16 = 1 << 1;
/// [`CtValue::state`] bit: a TCP RST passed in this direction.
pub const CT_STATE_RST: u16 = 1 << 2;

/// Value of the services map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// Identifier of the backend set in the backends map.
    pub id: u32,
    /// Number of filled backend slots (0 = no usable endpoint: the connection is refused).
    pub count: u16,
    /// `SERVICE_FLAG_*` bits.
    pub flags: u16,
    /// Session affinity timeout in seconds (0 when affinity is off).
    pub affinity_timeout: u32,
    /// Explicit padding.
    pub pad: u32,
}

/// Key of the socket reverse-translation map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockRevKey {
    /// Socket cookie of the translated socket.
    pub cookie: u64,
    /// Backend address the socket was sent to, network byte order.
    pub addr: u32,
    /// Backend port, network byte order.
    pub port: u16,
    /// Explicit padding.
    pub pad: u16,
}

/// Value of the socket reverse-translation map: the service address the application used.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockRevValue {
    /// Service address, network byte order.
    pub addr: u32,
    /// Service port, network byte order.
    pub port: u16,
    /// Explicit padding.
    pub pad: u16,
}

/// Key of the socket termination filter: a connected UDP socket that was translated from
/// `frontend` to `backend` (as `SWY_SOCK_REVNAT` records it) is to be destroyed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SockTermKey {
    /// Service address the socket connected to, network byte order.
    pub frontend_addr: u32,
    /// Backend address it was translated to, network byte order.
    pub backend_addr: u32,
    /// Service port, network byte order.
    pub frontend_port: u16,
    /// Backend port, network byte order.
    pub backend_port: u16,
}

/// Key of the IPv6 socket termination filter, as [`SockTermKey`] (`SWY_SOCK_REVNAT6`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SockTermKey6 {
    /// Service address the socket connected to, words in network order (as [`Backend6::addr`]).
    pub frontend_addr: [u32; 4],
    /// Backend address it was translated to.
    pub backend_addr: [u32; 4],
    /// Service port, network byte order.
    pub frontend_port: u16,
    /// Backend port, network byte order.
    pub backend_port: u16,
}

/// Default number of entries of the socket termination filter: the (frontend, backend) pairs
/// one sync may end; a sync that ends more runs the iterator once per batch.
pub const DEFAULT_SOCK_TERM_MAX: u32 = 4_096;

/// Key of the affinity map. The client is its network namespace: at connect() time a
/// socket has no source address yet, and a pod's sockets all share its one address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AffinityKey {
    /// Network namespace cookie of the client.
    pub netns_cookie: u64,
    /// Service entry id.
    pub service_id: u32,
    /// Explicit padding.
    pub pad: u32,
}

/// Value of the affinity map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityValue {
    /// Boot-time nanoseconds of the last use.
    pub last_used_ns: u64,
    /// Slot the client was sent to.
    pub slot: u32,
    /// Backend in that slot then; a different backend there now means the affinity is void.
    pub backend: Backend,
    /// Explicit tail padding (the u64 aligns the struct to 8 bytes).
    pub pad: u32,
}

/// Key of the backends map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BackendKey {
    /// [`ServiceValue::id`] of the owning service entry.
    pub service_id: u32,
    /// Slot, `0..count`.
    pub slot: u32,
}

/// Value of the backends map: where a connection is sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Backend {
    /// IPv4 address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    /// Explicit padding.
    pub pad: u16,
}

/// Key of the packet-path conntrack map. One flow has two entries: the original direction as
/// it arrives on ingress (client -> frontend), mapping to the backend; and the reply direction
/// as it leaves on egress (backend -> client), mapping back to the frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    /// Source address, network byte order.
    pub src_addr: u32,
    /// Destination address, network byte order.
    pub dst_addr: u32,
    /// Source port, network byte order.
    pub src_port: u16,
    /// Destination port, network byte order.
    pub dst_port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Explicit padding.
    pub pad: [u8; 3],
}

/// Value of the conntrack map: the address and port to rewrite to (the backend for the
/// original direction, destination rewrite; the frontend for replies, source rewrite).
///
/// Source-NATed flows ([`CT_FLAG_SNAT`]) rewrite the other end too: the original direction's
/// source becomes `nat_addr:nat_port` (this node's address and an allocated port), the
/// reply's destination becomes `nat_addr:nat_port` (the client). The reply entry's key is
/// backend -> node:port, so it is found on ingress, where the backend's replies arrive.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtValue {
    /// Address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    /// `SERVICE_FLAG_*` bits of the service entry at the time, plus `CT_FLAG_*` bits.
    pub flags: u16,
    /// Source NAT only: the other address to rewrite (see above), network byte order.
    pub nat_addr: u32,
    /// Source NAT only: the other port to rewrite, network byte order.
    pub nat_port: u16,
    /// What this direction has seen: `CT_STATE_*` bits, set by the programs, cleared when a
    /// SYN reopens a closed flow. Userspace reads both directions' bits to pick the flow's
    /// timeout (`switchyard_model::tc_conntrack`).
    pub state: u16,
    /// Monotonic (`CLOCK_MONOTONIC`) nanoseconds of this direction's last packet: the flow's
    /// idle time is measured from the later of its two entries.
    pub last_seen_ns: u64,
}

/// Value of the refusal rate limits map (one entry, index 0): the kernel's ICMP rate limits
/// of the node namespace, as the tc programs apply them to the port unreachable answers they
/// send themselves. All zero (not written): no limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RefusalLimits {
    /// `icmp_ratelimit` in nanoseconds: per client address, one answer per this interval;
    /// 0 = no per-client limit.
    pub client_interval_ns: u64,
    /// The per-client burst: six intervals (`XRLIM_BURST_FACTOR`).
    pub client_burst_ns: u64,
    /// 1 s / `icmp_msgs_per_sec`: for all clients, one answer per this interval; 0 = none.
    pub global_interval_ns: u64,
    /// `icmp_msgs_burst` intervals.
    pub global_burst_ns: u64,
}

/// Value of the source NAT settings map (one entry, index 0), written by userspace at start.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SnatConfig {
    /// Lowest source port of source-NATed flows, host byte order; 0 = source NAT off.
    pub port_min: u16,
    /// Highest source port, host byte order. The range lies above the NodePort range, so a
    /// reply to a NATed flow is never taken for a new NodePort connection.
    pub port_max: u16,
}

/// Key of the source-ranges LPM trie: the LoadBalancer IP is matched exactly (its 32 bits are
/// always part of the prefix), the client address by the range's prefix length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SourceRangeKey {
    /// LoadBalancer IP, network byte order.
    pub lb_addr: u32,
    /// Client address (range base), network byte order.
    pub client_addr: u32,
}

/// Value of the service names map: which service port a backend-set id belongs to, so
/// `switchyard status` can name what the kernel holds also when no controller runs. Each
/// text field is UTF-8, NUL-padded (Kubernetes limits namespaces and names to 63 bytes, port
/// names to 15, so a NUL always ends them; longer text is cut).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceName {
    /// The Service's namespace.
    pub namespace: [u8; 64],
    /// The Service's name.
    pub name: [u8; 64],
    /// The port's name (empty for an unnamed port).
    pub port_name: [u8; 16],
    /// IP protocol number ([`PROTO_TCP`] or [`PROTO_UDP`]).
    pub proto: u8,
    /// Which of the port's sets: `NAME_SET_*`.
    pub set: u8,
    /// Explicit padding.
    pub pad: [u8; 6],
}

impl Default for ServiceName {
    fn default() -> Self {
        Self {
            namespace: [0; 64],
            name: [0; 64],
            port_name: [0; 16],
            proto: 0,
            set: 0,
            pad: [0; 6],
        }
    }
}

/// Backend-set ids of IPv6 service entries start here: both families' sets share one id
/// space (the names map is keyed by id), and userspace hands out the IPv4 ones below it.
pub const IPV6_SET_ID_BASE: u32 = 1 << 31;

/// Key of the IPv6 services map: one IPv6 frontend of one service port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ServiceKey6 {
    /// IPv6 address as the kernel's `user_ip6` holds it: four 32-bit words in network order.
    pub addr: [u32; 4],
    /// Port, network byte order.
    pub port: u16,
    /// IP protocol number ([`PROTO_TCP`] or [`PROTO_UDP`]).
    pub proto: u8,
    /// [`SCOPE_SOCKET`] or [`SCOPE_EXTERNAL`], as in [`ServiceKey`].
    pub scope: u8,
}

/// Value of the IPv6 backends map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Backend6 {
    /// IPv6 address, words in network order (as [`ServiceKey6::addr`]).
    pub addr: [u32; 4],
    /// Port, network byte order.
    pub port: u16,
    /// Explicit padding.
    pub pad: u16,
}

/// Key of the IPv6 socket reverse-translation map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockRevKey6 {
    /// Socket cookie of the translated socket.
    pub cookie: u64,
    /// Backend address the socket was sent to.
    pub addr: [u32; 4],
    /// Backend port, network byte order.
    pub port: u16,
    /// Explicit padding.
    pub pad: u16,
    /// Explicit tail padding (the u64 aligns the struct to 8 bytes).
    pub pad2: u32,
}

/// Value of the IPv6 socket reverse-translation map: the service address the application used.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockRevValue6 {
    /// Service address.
    pub addr: [u32; 4],
    /// Service port, network byte order.
    pub port: u16,
    /// Explicit padding.
    pub pad: u16,
}

/// Key of the IPv6 affinity map. The client is a network namespace (the socket programs:
/// `scope` [`SCOPE_SOCKET`], the cookie's low and high words in `client[0]` and `client[1]`)
/// or an external client's whole address (the tc programs: [`SCOPE_EXTERNAL`]), so no two
/// IPv6 clients share an entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AffinityKey6 {
    /// The network namespace cookie, or the client's address (network order words).
    pub client: [u32; 4],
    /// Service entry id.
    pub service_id: u32,
    /// [`SCOPE_SOCKET`] or [`SCOPE_EXTERNAL`], widened: what `client` holds.
    pub scope: u32,
}

/// Value of the IPv6 affinity map (its key is an [`AffinityKey6`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityValue6 {
    /// Boot-time nanoseconds of the last use.
    pub last_used_ns: u64,
    /// Slot the client was sent to.
    pub slot: u32,
    /// Backend in that slot then; a different backend there now means the affinity is void.
    pub backend: Backend6,
}

/// Key of the IPv6 packet-path conntrack map: as [`CtKey`], with IPv6 addresses (words in
/// network order, as [`ServiceKey6::addr`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKey6 {
    /// Source address.
    pub src_addr: [u32; 4],
    /// Destination address.
    pub dst_addr: [u32; 4],
    /// Source port, network byte order.
    pub src_port: u16,
    /// Destination port, network byte order.
    pub dst_port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Explicit padding.
    pub pad: [u8; 3],
}

/// Value of the IPv6 conntrack map: the fields of [`CtValue`], with IPv6 addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtValue6 {
    /// Address to rewrite to (see [`CtValue::addr`]).
    pub addr: [u32; 4],
    /// Port, network byte order.
    pub port: u16,
    /// `SERVICE_FLAG_*` and `CT_FLAG_*` bits.
    pub flags: u16,
    /// Source NAT only: the other address to rewrite.
    pub nat_addr: [u32; 4],
    /// Source NAT only: the other port to rewrite, network byte order.
    pub nat_port: u16,
    /// `CT_STATE_*` bits of this direction.
    pub state: u16,
    /// `CLOCK_MONOTONIC` nanoseconds of this direction's last packet.
    pub last_seen_ns: u64,
}

/// Key of the IPv6 source-ranges LPM trie: the LoadBalancer IP's 128 bits are always part of
/// the prefix, then the range's prefix over the client address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SourceRangeKey6 {
    /// LoadBalancer IP.
    pub lb_addr: [u32; 4],
    /// Client address (range base).
    pub client_addr: [u32; 4],
}

/// Compile-time layout check of a map type shared with the kernel: its size is the sum of its
/// fields' sizes (no implicit padding, which the kernel would hash or compare as garbage and
/// which `aya::Pod` forbids), and equals the size the other side was built with.
macro_rules! assert_no_padding {
    ($ty:ty, $size:expr, [$($field:ty),+ $(,)?]) => {
        const _: () = {
            assert!(core::mem::size_of::<$ty>() == $size);
            assert!(core::mem::size_of::<$ty>() == 0 $(+ core::mem::size_of::<$field>())+);
        };
    };
}

assert_no_padding!(ServiceKey, 8, [u32, u16, u8, u8]);
assert_no_padding!(ServiceValue, 16, [u32, u16, u16, u32, u32]);
assert_no_padding!(SockRevKey, 16, [u64, u32, u16, u16]);
assert_no_padding!(SockRevValue, 8, [u32, u16, u16]);
assert_no_padding!(SockTermKey, 12, [u32, u32, u16, u16]);
assert_no_padding!(SockTermKey6, 36, [[u32; 4], [u32; 4], u16, u16]);
assert_no_padding!(AffinityKey, 16, [u64, u32, u32]);
assert_no_padding!(AffinityValue, 24, [u64, u32, Backend, u32]);
assert_no_padding!(BackendKey, 8, [u32, u32]);
assert_no_padding!(Backend, 8, [u32, u16, u16]);
assert_no_padding!(CtKey, 16, [u32, u32, u16, u16, u8, [u8; 3]]);
assert_no_padding!(CtValue, 24, [u32, u16, u16, u32, u16, u16, u64]);
assert_no_padding!(SnatConfig, 4, [u16, u16]);
assert_no_padding!(SourceRangeKey, 8, [u32, u32]);
assert_no_padding!(ServiceKey6, 20, [[u32; 4], u16, u8, u8]);
assert_no_padding!(Backend6, 20, [[u32; 4], u16, u16]);
assert_no_padding!(SockRevKey6, 32, [u64, [u32; 4], u16, u16, u32]);
assert_no_padding!(SockRevValue6, 20, [[u32; 4], u16, u16]);
assert_no_padding!(AffinityKey6, 24, [[u32; 4], u32, u32]);
assert_no_padding!(AffinityValue6, 32, [u64, u32, Backend6]);
assert_no_padding!(CtKey6, 40, [[u32; 4], [u32; 4], u16, u16, u8, [u8; 3]]);
assert_no_padding!(CtValue6, 48, [[u32; 4], u16, u16, [u32; 4], u16, u16, u64]);
assert_no_padding!(SourceRangeKey6, 32, [[u32; 4], [u32; 4]]);
assert_no_padding!(
    ServiceName,
    152,
    [[u8; 64], [u8; 64], [u8; 16], u8, u8, [u8; 6]]
);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] structs of integers with explicit padding fields.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::BackendKey {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::SockRevKey {}
    unsafe impl aya::Pod for super::SockRevValue {}
    unsafe impl aya::Pod for super::SockTermKey {}
    unsafe impl aya::Pod for super::SockTermKey6 {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::AffinityValue {}
    unsafe impl aya::Pod for super::AffinityKey6 {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtValue {}
    unsafe impl aya::Pod for super::RefusalLimits {}
    unsafe impl aya::Pod for super::SourceRangeKey {}
    unsafe impl aya::Pod for super::SnatConfig {}
    unsafe impl aya::Pod for super::ServiceName {}
    unsafe impl aya::Pod for super::ServiceKey6 {}
    unsafe impl aya::Pod for super::Backend6 {}
    unsafe impl aya::Pod for super::SockRevKey6 {}
    unsafe impl aya::Pod for super::SockRevValue6 {}
    unsafe impl aya::Pod for super::AffinityValue6 {}
    unsafe impl aya::Pod for super::CtKey6 {}
    unsafe impl aya::Pod for super::CtValue6 {}
    unsafe impl aya::Pod for super::SourceRangeKey6 {}
}
