//! Established flows written into ebpf mode's packet-path conntrack map (`SWY_CONNTRACK`),
//! so that the idle window can show what a busy node's verifies cost: each one reads the
//! whole map to expire idle flows.
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use aya::maps::{HashMap, Map, MapData};
use switchyard_common::{map_names, CtKey, CtValue, CT_FLAG_REPLY, CT_STATE_SEEN, PROTO_TCP};

/// The frontend the flows came in by (a NodePort of the node), and the backends they go to.
const FRONTEND: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 18, 0, 11), 30080);
const BACKEND_NET: [u8; 2] = [198, 19];
/// Client ports per client address: 203.0.113.1-254 times these cover 254 * 60,000 flows.
const CLIENT_PORTS: u32 = 60_000;

/// Writes `flows` answered, open TCP flows (two entries each, seen just now, so no verify
/// expires them for a day) into the conntrack map pinned under `pin_dir`; returns how long
/// the writes took.
pub fn fill(pin_dir: &Path, flows: u32) -> anyhow::Result<Duration> {
    let pin = pin_dir.join("maps").join(map_names::CONNTRACK);
    let data = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
    let mut map: HashMap<MapData, CtKey, CtValue> =
        HashMap::try_from(Map::from_map_data(data)?).context("SWY_CONNTRACK as a hash map")?;
    let now = monotonic_ns()?;
    let started = Instant::now();
    for i in 0..flows {
        let client = Ipv4Addr::new(203, 0, 113, (1 + i / CLIENT_PORTS % 254) as u8);
        let client_port = (1024 + i % CLIENT_PORTS) as u16;
        let backend = Ipv4Addr::new(BACKEND_NET[0], BACKEND_NET[1], 1 + (i % 8) as u8, 11);
        let (forward, reply) = flow(client, client_port, backend, 8080, now);
        map.insert(forward.0, forward.1, 0)
            .context("writing a flow's original direction")?;
        map.insert(reply.0, reply.1, 0)
            .context("writing a flow's reply direction")?;
    }
    Ok(started.elapsed())
}

/// Both entries of the flow client -> [`FRONTEND`], DNATed to `backend`, as the tc programs
/// record them (network byte order, `CT_STATE_SEEN` both ways: answered and open).
fn flow(
    client: Ipv4Addr,
    client_port: u16,
    backend: Ipv4Addr,
    backend_port: u16,
    now_ns: u64,
) -> ((CtKey, CtValue), (CtKey, CtValue)) {
    let be = |a: Ipv4Addr| u32::from(a).to_be();
    let entry = |addr, port, flags| CtValue {
        addr,
        port,
        flags,
        nat_addr: 0,
        nat_port: 0,
        state: CT_STATE_SEEN,
        last_seen_ns: now_ns,
    };
    let key = |src: (u32, u16), dst: (u32, u16)| CtKey {
        src_addr: src.0,
        dst_addr: dst.0,
        src_port: src.1,
        dst_port: dst.1,
        proto: PROTO_TCP,
        pad: [0; 3],
    };
    let client = (be(client), client_port.to_be());
    let frontend = (be(FRONTEND.0), FRONTEND.1.to_be());
    let backend = (be(backend), backend_port.to_be());
    (
        (key(client, frontend), entry(backend.0, backend.1, 0)),
        (
            key(backend, client),
            entry(frontend.0, frontend.1, CT_FLAG_REPLY),
        ),
    )
}

/// `CLOCK_MONOTONIC`, the programs' `bpf_ktime_get_ns`.
fn monotonic_ns() -> anyhow::Result<u64> {
    let now =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).context("clock_gettime")?;
    Ok(now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64)
}

#[cfg(test)]
mod tests {
    use switchyard_model::tc_conntrack::{flow_state, partner_key, FlowState};

    use super::*;

    #[test]
    fn the_entries_are_one_established_flow_whose_halves_find_each_other() {
        let (forward, reply) = super::flow(
            Ipv4Addr::new(203, 0, 113, 1),
            1024,
            Ipv4Addr::new(198, 19, 1, 11),
            8080,
            5,
        );
        assert_eq!(partner_key(&forward.0, &forward.1), reply.0);
        assert_eq!(partner_key(&reply.0, &reply.1), forward.0);
        assert_eq!(
            flow_state(PROTO_TCP, Some(&forward.1), Some(&reply.1)),
            FlowState::Established
        );
    }
}
