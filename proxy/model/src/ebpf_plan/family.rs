//! The two address families' map types. IPv6 service entries live in maps of their own
//! (`SWY_SERVICES6`, `SWY_BACKENDS6`), as Cilium keeps them, so the IPv4 maps, their key sizes
//! and everything measured on them stay as they are; the planner is the same code for both,
//! one instance per family.
use std::fmt::Debug;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use switchyard_common::{
    Backend, Backend6, ServiceKey, ServiceKey6, SockTermKey, SockTermKey6, SourceRangeKey,
    SourceRangeKey6,
};

/// One family's key and value types, and how model addresses become them.
pub trait Family:
    Clone + Copy + Debug + Default + PartialEq + Eq + PartialOrd + Ord + 'static
{
    /// Key of the services map.
    type Key: Copy + Debug + Ord;
    /// Value of the backends map.
    type Backend: Copy + Debug + Default + Ord;
    /// Key of the source-ranges trie.
    type Range: Copy + Debug + Ord;
    /// Key of the socket termination filter (`SWY_SOCK_TERM`, `SWY_SOCK_TERM6`).
    type TermKey: Copy + Debug + Ord;
    /// `IPv4` or `IPv6`, for logs.
    const NAME: &'static str;
    /// Backend-set ids of this family are handed out above this one.
    const ID_BASE: u32;
    /// Whether the packet path (tc programs) serves this family: its external frontends get
    /// entries of their own (`SCOPE_EXTERNAL`).
    const PACKET_PATH: bool;
    /// Whether NodePorts answer on the loopback address (upstream: IPv4 only).
    const LOOPBACK_NODEPORTS: bool;

    /// The service key of a frontend of this family (`None`: another family).
    fn key(ip: IpAddr, port: u16, proto: u8, scope: u8) -> Option<Self::Key>;
    /// The backend of an endpoint of this family (`None`: another family).
    fn backend(ip: IpAddr, port: u16) -> Option<Self::Backend>;
    /// A service key's address, port, protocol and scope.
    fn parts(key: &Self::Key) -> (IpAddr, u16, u8, u8);
    /// A backend's address and port.
    fn backend_parts(backend: &Self::Backend) -> (IpAddr, u16);
    /// Trie entries letting `ranges` (those of this family) reach the LoadBalancer IP `lb`.
    fn ranges(lb: &Self::Key, ranges: &[IpNet]) -> Vec<(Self::Range, u32)>;
    /// The LoadBalancer IP a trie entry is for.
    fn range_lb(range: &Self::Range) -> IpAddr;
    /// The termination filter's key of sockets translated from `frontend` to `backend`.
    fn term_key(frontend: &Self::Key, backend: &Self::Backend) -> Self::TermKey;
}

/// IPv4: `SWY_SERVICES`, `SWY_BACKENDS`, `SWY_SOURCE_RANGES`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct V4;

/// IPv6: `SWY_SERVICES6`, `SWY_BACKENDS6`, `SWY_SOURCE_RANGES6`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct V6;

impl Family for V4 {
    type Key = ServiceKey;
    type Backend = Backend;
    type Range = SourceRangeKey;
    type TermKey = SockTermKey;
    const NAME: &'static str = "IPv4";
    const ID_BASE: u32 = 0;
    const PACKET_PATH: bool = true;
    const LOOPBACK_NODEPORTS: bool = true;

    fn key(ip: IpAddr, port: u16, proto: u8, scope: u8) -> Option<ServiceKey> {
        let IpAddr::V4(ip) = ip else { return None };
        Some(ServiceKey {
            addr: u32::from(ip).to_be(),
            port: port.to_be(),
            proto,
            scope,
        })
    }

    fn backend(ip: IpAddr, port: u16) -> Option<Backend> {
        let IpAddr::V4(ip) = ip else { return None };
        Some(Backend {
            addr: u32::from(ip).to_be(),
            port: port.to_be(),
            pad: 0,
        })
    }

    fn parts(key: &ServiceKey) -> (IpAddr, u16, u8, u8) {
        (
            Ipv4Addr::from(u32::from_be(key.addr)).into(),
            u16::from_be(key.port),
            key.proto,
            key.scope,
        )
    }

    fn backend_parts(backend: &Backend) -> (IpAddr, u16) {
        (
            Ipv4Addr::from(u32::from_be(backend.addr)).into(),
            u16::from_be(backend.port),
        )
    }

    fn ranges(lb: &ServiceKey, ranges: &[IpNet]) -> Vec<(SourceRangeKey, u32)> {
        ranges
            .iter()
            .filter_map(|range| match range {
                IpNet::V4(net) => Some((
                    SourceRangeKey {
                        lb_addr: lb.addr,
                        client_addr: u32::from(net.network()).to_be(),
                    },
                    // The LoadBalancer IP is always matched whole, then the range's bits.
                    32 + u32::from(net.prefix_len()),
                )),
                IpNet::V6(_) => None,
            })
            .collect()
    }

    fn range_lb(range: &SourceRangeKey) -> IpAddr {
        Ipv4Addr::from(u32::from_be(range.lb_addr)).into()
    }

    fn term_key(frontend: &ServiceKey, backend: &Backend) -> SockTermKey {
        SockTermKey {
            frontend_addr: frontend.addr,
            backend_addr: backend.addr,
            frontend_port: frontend.port,
            backend_port: backend.port,
        }
    }
}

impl Family for V6 {
    type Key = ServiceKey6;
    type Backend = Backend6;
    type Range = SourceRangeKey6;
    type TermKey = SockTermKey6;
    const NAME: &'static str = "IPv6";
    const ID_BASE: u32 = switchyard_common::IPV6_SET_ID_BASE;
    const PACKET_PATH: bool = true;
    const LOOPBACK_NODEPORTS: bool = false;

    fn key(ip: IpAddr, port: u16, proto: u8, scope: u8) -> Option<ServiceKey6> {
        let IpAddr::V6(ip) = ip else { return None };
        Some(ServiceKey6 {
            addr: words(ip),
            port: port.to_be(),
            proto,
            scope,
        })
    }

    fn backend(ip: IpAddr, port: u16) -> Option<Backend6> {
        let IpAddr::V6(ip) = ip else { return None };
        Some(Backend6 {
            addr: words(ip),
            port: port.to_be(),
            pad: 0,
        })
    }

    fn parts(key: &ServiceKey6) -> (IpAddr, u16, u8, u8) {
        (
            from_words(key.addr).into(),
            u16::from_be(key.port),
            key.proto,
            key.scope,
        )
    }

    fn backend_parts(backend: &Backend6) -> (IpAddr, u16) {
        (from_words(backend.addr).into(), u16::from_be(backend.port))
    }

    fn ranges(lb: &ServiceKey6, ranges: &[IpNet]) -> Vec<(SourceRangeKey6, u32)> {
        ranges
            .iter()
            .filter_map(|range| match range {
                IpNet::V6(net) => Some((
                    SourceRangeKey6 {
                        lb_addr: lb.addr,
                        client_addr: words(net.network()),
                    },
                    // The LoadBalancer IP is always matched whole, then the range's bits.
                    128 + u32::from(net.prefix_len()),
                )),
                IpNet::V4(_) => None,
            })
            .collect()
    }

    fn range_lb(range: &SourceRangeKey6) -> IpAddr {
        from_words(range.lb_addr).into()
    }

    fn term_key(frontend: &ServiceKey6, backend: &Backend6) -> SockTermKey6 {
        SockTermKey6 {
            frontend_addr: frontend.addr,
            backend_addr: backend.addr,
            frontend_port: frontend.port,
            backend_port: backend.port,
        }
    }
}

/// An IPv6 address as the kernel's `user_ip6` holds it: four words whose bytes in memory are
/// the address in network order.
pub fn words(ip: Ipv6Addr) -> [u32; 4] {
    let o = ip.octets();
    let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
    [word(0), word(4), word(8), word(12)]
}

/// The address [`words`] encodes.
pub fn from_words(words: [u32; 4]) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    Ipv6Addr::from(octets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_words_are_the_address_bytes_in_memory_order() {
        let ip: Ipv6Addr = "2001:db8::a:1".parse().expect("literal");
        let w = words(ip);
        // The first word's bytes in memory are 20 01 0d b8, whatever the host's byte order.
        assert_eq!(w[0].to_ne_bytes(), [0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(w[3].to_ne_bytes(), [0, 0x0a, 0, 0x01]);
        assert_eq!(from_words(w), ip);
    }

    #[test]
    fn each_family_takes_only_its_own_addresses() {
        let v4: IpAddr = "198.18.0.1".parse().expect("literal");
        let v6: IpAddr = "2001:db8::1".parse().expect("literal");
        assert!(V4::key(v4, 80, 6, 0).is_some() && V4::key(v6, 80, 6, 0).is_none());
        assert!(V6::key(v6, 80, 6, 0).is_some() && V6::key(v4, 80, 6, 0).is_none());
        assert!(V6::backend(v4, 80).is_none());
        let key = V6::key(v6, 8080, 17, 0).expect("IPv6");
        assert_eq!(V6::parts(&key), (v6, 8080, 17, 0));
        let backend = V6::backend(v6, 8080).expect("IPv6");
        assert_eq!(V6::backend_parts(&backend), (v6, 8080));
    }
}
