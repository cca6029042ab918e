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
}

/// IP protocol number for TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number for UDP.
pub const PROTO_UDP: u8 = 17;

/// Default number of entries of the services map.
pub const DEFAULT_SERVICES_MAX: u32 = 65_536;
/// Default number of entries of the backends map.
pub const DEFAULT_BACKENDS_MAX: u32 = 262_144;
/// Default number of entries of the socket reverse-translation map.
pub const DEFAULT_SOCK_REVNAT_MAX: u32 = 262_144;
/// Default number of entries of the affinity map.
pub const DEFAULT_AFFINITY_MAX: u32 = 65_536;

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
    /// Explicit padding; always zero so keys hash identically on both sides.
    pub pad: u8,
}

/// The service entry has `sessionAffinity: ClientIP`.
pub const SERVICE_FLAG_AFFINITY: u16 = 1 << 0;

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
}

/// Key of the backends map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct BackendKey {
    /// [`ServiceValue::id`] of the owning service entry.
    pub service_id: u32,
    /// Slot, `0..count`.
    pub slot: u32,
}

/// Value of the backends map: where a connection is sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    /// IPv4 address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    /// Explicit padding.
    pub pad: u16,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] structs of integers with explicit padding fields.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::BackendKey {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::SockRevKey {}
    unsafe impl aya::Pod for super::SockRevValue {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::AffinityValue {}
}
