//! This node's local addresses: read from the kernel (getifaddrs over netlink), and
//! followed through rtnetlink address and link events so NodePorts follow the node's
//! addresses without polling.
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rtnetlink::constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK};
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use tokio::sync::watch;

/// Events arriving within this window are read as one change (an interface coming up
/// brings several).
const SETTLE: Duration = Duration::from_millis(50);

/// The address watch could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    /// Listing the addresses failed.
    #[error("listing local addresses: {0}")]
    List(#[source] std::io::Error),
    /// The rtnetlink socket could not be opened or subscribed.
    #[error("subscribing to rtnetlink address events: {0}")]
    Subscribe(#[source] std::io::Error),
}

/// Publishes this node's addresses now and after every address or link change, until the
/// receiver is dropped.
pub fn watch_addresses() -> Result<watch::Receiver<Arc<Vec<IpAddr>>>, AddressError> {
    let first = local_addresses().map_err(AddressError::List)?;
    let (tx, rx) = watch::channel(Arc::new(first));
    let (mut connection, _handle, mut events) =
        rtnetlink::new_connection().map_err(AddressError::Subscribe)?;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(
            0,
            RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR,
        ))
        .map_err(AddressError::Subscribe)?;
    tokio::spawn(connection);
    tokio::spawn(async move {
        while events.next().await.is_some() {
            while let Ok(Some(_)) = tokio::time::timeout(SETTLE, events.next()).await {}
            match local_addresses() {
                Ok(now) if now != **tx.borrow() => {
                    tracing::info!(addresses = ?now, "local addresses changed");
                    if tx.send(Arc::new(now)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot list local addresses"),
            }
        }
        tracing::warn!("rtnetlink event stream ended; local addresses are no longer followed");
    });
    Ok(rx)
}

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

/// Whether `addresses` give the node IPv6 (a global or unique-local address; the address
/// watch already leaves link-local ones out).
pub fn has_routable_ipv6(addresses: &[IpAddr]) -> bool {
    addresses
        .iter()
        .any(|ip| ip.is_ipv6() && !ip.is_loopback() && !ip.is_unspecified())
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
