//! Start-up of the IPv6 tc programs: the IPv4 ones tail-call them through `SWY_TC_V6`
//! (their own stack leaves no room for a function call), so they are loaded next to them and
//! put in that program array; the per-device IPv6 source NAT addresses are written here too.
use aya::maps::{MapData, MapError, ProgramArray};
use aya::programs::SchedClassifier;
use aya::Ebpf;
use switchyard_common::{map_names, program_names};

use super::dataplane::EbpfError;
use super::maps::MapHandleError;

/// Loads the IPv6 tc programs and puts them in `SWY_TC_V6` (ingress at 0, egress at 1), before
/// the IPv4 programs are attached. A slot left empty would pass IPv6 untouched.
pub fn load(ebpf: &mut Ebpf) -> Result<(), EbpfError> {
    let mut fds = Vec::new();
    for program_name in [program_names::TC_INGRESS6, program_names::TC_EGRESS6] {
        let failed = |source| EbpfError::Program {
            name: program_name,
            source,
        };
        let program: &mut SchedClassifier = ebpf
            .program_mut(program_name)
            .ok_or(EbpfError::MissingProgram(program_name))?
            .try_into()
            .map_err(failed)?;
        program.load().map_err(failed)?;
        let fd = program.fd().map_err(failed)?;
        fds.push(fd.try_clone().map_err(|e| failed(e.into()))?);
    }
    let name = map_names::TC_V6;
    let handle = move |source| MapHandleError { name, source };
    // Left in the object (not taken): a program array is emptied when its last file
    // descriptor and pin go, and the tests run it unpinned.
    let map = ebpf
        .map_mut(name)
        .ok_or(MapError::InvalidName { name: name.into() })
        .map_err(handle)?;
    let mut slots: ProgramArray<&mut MapData> = ProgramArray::try_from(map).map_err(handle)?;
    for (slot, fd) in (0u32..).zip(&fds) {
        slots.set(slot, fd, 0).map_err(handle)?;
    }
    Ok(())
}

/// Records each device's first global IPv6 address as the IPv6 source NAT address of flows
/// leaving there, or removes a stale one. Best effort, as the IPv4 addresses: without an entry
/// the IPv6 program drops new masqueraded flows to remote backends on that device.
pub fn write_snat_addrs(ebpf: &mut Ebpf, devices: &[String]) -> Result<(), EbpfError> {
    let name = map_names::SNAT_ADDRS6;
    let handle = move |source| MapHandleError { name, source };
    let map = ebpf
        .map_mut(name)
        .ok_or(MapError::InvalidName { name: name.into() })
        .map_err(handle)?;
    let mut addrs: aya::maps::HashMap<&mut MapData, u32, [u32; 4]> =
        aya::maps::HashMap::try_from(map).map_err(handle)?;
    for device in devices {
        let Ok(ifindex) = nix::net::if_::if_nametoindex(device.as_str()) else {
            continue;
        };
        match global_ipv6(device) {
            Some(addr) => {
                if let Err(e) = addrs.insert(ifindex, crate::model::ebpf_plan::words(addr), 0) {
                    tracing::warn!(%device, error = %e, "cannot write the IPv6 source NAT address");
                }
            }
            None => {
                let _ = addrs.remove(&ifindex);
            }
        }
    }
    Ok(())
}

/// The first IPv6 address of `device` that is neither link-local nor loopback.
fn global_ipv6(device: &str) -> Option<std::net::Ipv6Addr> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|ifaddr| {
        let ip = ifaddr.address?.as_sockaddr_in6()?.ip();
        let link_local = ip.segments()[0] & 0xffc0 == 0xfe80;
        (ifaddr.interface_name == device && !link_local && !ip.is_loopback()).then_some(ip)
    })
}
