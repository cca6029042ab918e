//! This node's local addresses, read from the kernel (getifaddrs over netlink).
use std::net::IpAddr;

/// Every address configured on an interface that is up, sorted and deduplicated.
pub fn local_addresses() -> std::io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for ifaddr in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
        if !ifaddr.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP) {
            continue;
        }
        let Some(address) = ifaddr.address else {
            continue;
        };
        if let Some(v4) = address.as_sockaddr_in() {
            out.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = address.as_sockaddr_in6() {
            // Link-local IPv6 addresses need a zone and never serve NodePorts.
            if v6.ip().segments()[0] & 0xffc0 != 0xfe80 {
                out.push(IpAddr::V6(v6.ip()));
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Interfaces for the packet programs when `--devices` is not given: those holding one of the
/// Node object's addresses, or, without a Node object, every up interface with an IPv4
/// subnet (not loopback, not a /32 like routed pod veths carry).
pub fn default_devices(node_ips: &[IpAddr]) -> std::io::Result<Vec<String>> {
    let mut by_node_ip = Vec::new();
    let mut with_subnet = Vec::new();
    for ifaddr in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
        let flags = ifaddr.flags;
        if !flags.contains(nix::net::if_::InterfaceFlags::IFF_UP)
            || flags.contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
        {
            continue;
        }
        let Some(v4) = ifaddr.address.as_ref().and_then(|a| a.as_sockaddr_in()) else {
            continue;
        };
        let ip = IpAddr::V4(v4.ip());
        if node_ips.contains(&ip) {
            by_node_ip.push(ifaddr.interface_name.clone());
        }
        let prefix = ifaddr
            .netmask
            .as_ref()
            .and_then(|m| m.as_sockaddr_in())
            .map(|m| u32::from(m.ip()).count_ones())
            .unwrap_or(32);
        if prefix < 32 {
            with_subnet.push(ifaddr.interface_name);
        }
    }
    let mut devices = if by_node_ip.is_empty() {
        with_subnet
    } else {
        by_node_ip
    };
    devices.sort();
    devices.dedup();
    Ok(devices)
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_is_listed() {
        let addrs = super::local_addresses().expect("getifaddrs");
        assert!(addrs.contains(&"127.0.0.1".parse().unwrap()), "{addrs:?}");
    }
}
