//! Taking a node over from the other mode (a mode switch) or from an older version: what of
//! their state goes, and when.
//!
//! The other mode's state keeps translating until this mode's first successful sync, and is
//! removed right after it, so a switch never leaves a moment without translation. Both
//! modes programmed at once never translate a connection twice, path by path:
//!
//! - **iptables -> ebpf.** The programs attach before the first sync with empty maps, which
//!   translate nothing, so iptables still serves everything. Once the maps are written:
//!   - ClusterIP (and any service address reached from this node's sockets): `connect4` /
//!     `sendmsg4` rewrite the destination to a backend before the first packet exists, so
//!     netfilter only ever sees the backend's address, which no `SWY-SERVICES` rule
//!     matches; nothing is marked, so nothing is masqueraded either.
//!   - NodePort and external addresses from outside: tc ingress rewrites a new flow's SYN
//!     before netfilter (a local backend then reaches PREROUTING with the pod's address,
//!     which no rule of ours matches; a remote one is redirected past the stack).
//!   - A connection that iptables translated before the maps were written keeps its
//!     netfilter conntrack entry: tc leaves a TCP segment to a node address without an entry
//!     of its own and without SYN alone (one to an externalIP or LoadBalancer IP it drops,
//!     so such a connection from outside ends at the switch), and a connected socket is not
//!     connected again, so netfilter goes on translating it, also after our chains are gone
//!     (the built-in nat chains stay, and with them the NAT hooks).
//! - **ebpf -> iptables.** The programs stay attached until iptables' first sync has
//!   written every rule: until then they translate everything first (as above, iptables
//!   sees no service address). Then, in this order:
//!   1. the `connect4` / `sendmsg4` (and `connect6` / `sendmsg6`) links go: new sockets
//!      meet the rules. A socket already connected to a backend needs nothing more (there
//!      is no per-packet state); `recvmsg4` / `getpeername4` stay for the replies of sends
//!      made before;
//!   2. every packet-path service entry (both families) gets `SERVICE_FLAG_HANDOVER`: tc
//!      ingress starts no new flow and leaves everything without an entry of its own to
//!      netfilter, so new NodePort connections meet the rules, while the flows tc
//!      translates keep their entries both ways (ingress and egress) to the end;
//!   3. once no translated flow has passed a packet for [`DRAIN_QUIET`] (at most
//!      [`DRAIN_MAX`]), every pin goes, which detaches the rest. A flow still busy then
//!      breaks (its packets meet netfilter mid-stream).
//! - Older ebpf versions' masquerade chains (`SWITCHYARD-EBPF-MASQ`, `SWY-EBPF-MASQ`): ebpf
//!   mode removes them with the iptables state, after its first sync (its tc programs
//!   source-NAT themselves). iptables mode must remove them *before* its first sync: a full
//!   sync deletes every `SWY-` chain it does not want, and fails while POSTROUTING still
//!   jumps there.
//!
//! - ebpf mode's SCTP fallback chains (`SWYSCTP-*`, see [`crate::ebpf::sctp_fallback`]) are
//!   named apart from iptables mode's, so ebpf mode's removal of `SWY-*` leaves them, and
//!   iptables mode's full syncs never see them. An SCTP port is translated by both sets of
//!   rules alike during the overlap (a packet is DNATed by the first nat rule it meets, once);
//!   iptables mode removes the fallback chains with the pins, after its first sync.
//!
//! Upstream (KEP-2448) leaves the other mode's state behind; Switchyard removes it.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::maps::{HashMap, Map, MapData, MapError, MapInfo};
use aya::Pod;
use switchyard_common::{
    map_names, program_names, ServiceKey, ServiceKey6, ServiceValue, SCOPE_EXTERNAL,
    SERVICE_FLAG_HANDOVER,
};

use crate::ebpf::dataplane::monotonic_ns;
use crate::iptables::IptablesBackend;
use crate::model::tc_conntrack::{recently_active_family, CtFamily, V4, V6};

/// What the mode starting now removes once its first sync has succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leftovers {
    /// ebpf mode takes over: iptables mode's chains (both backends) and older ebpf versions'
    /// masquerade chains.
    Iptables,
    /// iptables mode takes over: ebpf mode's pinned links (detaching its programs) and maps,
    /// and its SCTP fallback chains (`SWYSCTP-*`, both backends).
    Ebpf {
        /// The pin directory (`--bpffs-path`).
        bpffs_path: PathBuf,
    },
}

impl Leftovers {
    /// Removes them, logging what went; failures are logged, never fatal (the node is
    /// served by the new mode by now, and `--cleanup` reports what is left).
    pub fn remove(&self) {
        match self {
            Leftovers::Iptables => {
                let incomplete = remove_iptables_state();
                remove_old_masquerade_rules();
                if incomplete.is_empty() {
                    tracing::info!("handover: no iptables mode state left");
                }
            }
            Leftovers::Ebpf { bpffs_path } => {
                if let Err(e) = drain_ebpf(bpffs_path) {
                    tracing::warn!(error = %e, "handover: cannot drain ebpf mode's flows; removing it at once");
                }
                let pins = remove_ebpf_state(bpffs_path);
                if let Err(e) = &pins {
                    tracing::warn!(
                        path = %bpffs_path.display(),
                        error = %e,
                        "handover: cannot remove ebpf mode's pins"
                    );
                }
                // iptables mode's own SCTP rules are written by now (its first sync).
                let chains = remove_sctp_fallback_state();
                if pins.is_ok() && chains.is_empty() {
                    tracing::info!("handover: no ebpf mode state left");
                }
            }
        }
    }
}

/// How long ebpf mode's translated flows must be quiet before its programs go.
pub const DRAIN_QUIET: Duration = Duration::from_secs(1);
/// The longest a handover waits for them.
pub const DRAIN_MAX: Duration = Duration::from_secs(10);
/// How often the drain reads the conntrack map.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// Why ebpf mode's flows could not be drained (its pins then go at once).
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// A pinned map is missing, of another version's layout, or cannot be read or written.
    #[error("pinned map {path}: {source}")]
    Map {
        /// Its pin.
        path: PathBuf,
        /// What failed.
        #[source]
        source: MapError,
    },
    /// A link pin cannot be removed.
    #[error("unpinning {path}: {source}")]
    Unpin {
        /// The pin.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// Steps 1 to 3 of the ebpf -> iptables handover (see the module documentation), short of
/// removing the pins.
fn drain_ebpf(root: &Path) -> Result<(), DrainError> {
    let maps = root.join("maps");
    let services_pin = maps.join(map_names::SERVICES);
    if !services_pin.exists() {
        return Ok(());
    }
    // 1. No new socket is translated.
    for name in [
        program_names::CONNECT4,
        program_names::SENDMSG4,
        program_names::CONNECT6,
        program_names::SENDMSG6,
    ] {
        let pin = root.join("links").join(name);
        match std::fs::remove_file(&pin) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(DrainError::Unpin { path: pin, source }),
        }
    }
    // 2. No new packet-path flow, in either family.
    let external = mark_handover::<ServiceKey>(&services_pin, |k| k.scope)?
        + mark_handover::<ServiceKey6>(&maps.join(map_names::SERVICES6), |k| k.scope)?;
    // 3. Until the flows it translates are quiet.
    let conntrack = FlowsOf::<V4>::open(&maps.join(map_names::CONNTRACK))?;
    let conntrack6 = FlowsOf::<V6>::open(&maps.join(map_names::CONNTRACK6))?;
    let started = Instant::now();
    let mut logged = false;
    loop {
        let active = conntrack.active() + conntrack6.active();
        let waited = started.elapsed();
        if !logged {
            logged = true;
            tracing::info!(
                frontends = external,
                active,
                "handover: iptables mode starts new flows; draining ebpf mode's"
            );
        }
        if active == 0 {
            tracing::info!(
                waited_ms = waited.as_millis() as u64,
                "handover: ebpf mode's flows drained"
            );
            return Ok(());
        }
        if waited >= DRAIN_MAX {
            tracing::warn!(
                active,
                "handover: ebpf mode's flows still busy after {DRAIN_MAX:?}; they end with its programs"
            );
            return Ok(());
        }
        std::thread::sleep(DRAIN_POLL);
    }
}

/// Sets `SERVICE_FLAG_HANDOVER` on the packet-path (external) entries of the services map
/// pinned at `pin` (a family's; absent: none); returns how many it marked.
fn mark_handover<K: Pod>(pin: &Path, scope: impl Fn(&K) -> u8) -> Result<usize, DrainError> {
    if !pin.exists() {
        return Ok(0);
    }
    let error = |source| DrainError::Map {
        path: pin.to_owned(),
        source,
    };
    let mut services: HashMap<MapData, K, ServiceValue> = pinned_hash_map(pin).map_err(error)?;
    let external: Vec<(K, ServiceValue)> = services
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, v)| scope(k) == SCOPE_EXTERNAL && v.flags & SERVICE_FLAG_HANDOVER == 0)
        .collect();
    for (key, value) in &external {
        let handed = ServiceValue {
            flags: value.flags | SERVICE_FLAG_HANDOVER,
            ..*value
        };
        // In place: a lookup sees the old value or the new one, never a missing entry.
        services.insert(key, handed, 0).map_err(error)?;
    }
    Ok(external.len())
}

/// One family's pinned packet-path conntrack map, for the drain (absent: no flows).
struct FlowsOf<F: CtFamily> {
    /// The map and its capacity.
    map: Option<(FlowMap<F>, usize)>,
}

type FlowMap<F> = HashMap<MapData, <F as CtFamily>::Key, <F as CtFamily>::Value>;

impl<F: CtFamily> FlowsOf<F>
where
    F::Key: Pod,
    F::Value: Pod,
{
    fn open(pin: &Path) -> Result<Self, DrainError> {
        if !pin.exists() {
            return Ok(Self { map: None });
        }
        let error = |source| DrainError::Map {
            path: pin.to_owned(),
            source,
        };
        let map = pinned_hash_map(pin).map_err(error)?;
        let capacity = MapInfo::from_pin(pin)
            .map(|i| i.max_entries() as usize)
            .map_err(error)?;
        Ok(Self {
            map: Some((map, capacity)),
        })
    }

    /// Flows that passed a packet within [`DRAIN_QUIET`].
    fn active(&self) -> usize {
        let Some((map, capacity)) = &self.map else {
            return 0;
        };
        let entries = crate::ebpf::batch_read::entries(map, *capacity);
        recently_active_family::<F>(&entries, monotonic_ns(), DRAIN_QUIET)
    }
}

fn pinned_hash_map<K: Pod, V: Pod>(path: &Path) -> Result<HashMap<MapData, K, V>, MapError> {
    HashMap::try_from(Map::from_map_data(MapData::from_pin(path)?)?)
}

/// Removes the masquerade chain older ebpf mode versions wrote, from both backends.
pub fn remove_old_masquerade_rules() {
    for backend in [IptablesBackend::Legacy, IptablesBackend::Nft] {
        if let Err(e) = crate::ebpf::masquerade::uninstall(backend) {
            tracing::warn!(%backend, error = %e, "cannot remove an older ebpf mode's masquerade rule");
        }
    }
}

/// Removes iptables mode's chains and jumps from both backends, iptables and ip6tables.
/// Returns what could not be removed.
pub fn remove_iptables_state() -> Vec<String> {
    let mut incomplete = Vec::new();
    for family in crate::iptables::rule_set::Family::ALL {
        for backend in [IptablesBackend::Legacy, IptablesBackend::Nft] {
            let tools = crate::iptables::Tools::new(backend, family);
            match crate::iptables::cleanup::cleanup(tools) {
                Ok(0) => {}
                Ok(chains) => tracing::info!(%tools, chains, "removed iptables state"),
                Err(e) => {
                    tracing::warn!(%tools, error = %e, "iptables cleanup incomplete");
                    incomplete.push(format!("{tools}: {e}"));
                }
            }
        }
    }
    incomplete
}

/// Removes ebpf mode's SCTP fallback chains (`SWYSCTP-*`) from both backends. Returns what
/// could not be removed.
pub fn remove_sctp_fallback_state() -> Vec<String> {
    let mut incomplete = Vec::new();
    for backend in [IptablesBackend::Legacy, IptablesBackend::Nft] {
        match crate::ebpf::sctp_fallback::remove(backend) {
            Ok(0) => {}
            Ok(chains) => {
                tracing::info!(%backend, chains, "removed ebpf mode's SCTP fallback chains")
            }
            Err(e) => {
                tracing::warn!(%backend, error = %e, "ebpf mode's SCTP fallback cleanup incomplete");
                incomplete.push(format!("{backend} (SCTP fallback): {e}"));
            }
        }
    }
    incomplete
}

/// Why ebpf mode's pins could not be removed.
#[derive(Debug, thiserror::Error)]
#[error("removing pinned eBPF state under {path}: {source}")]
pub struct RemovePinsError {
    /// The pin directory.
    pub path: PathBuf,
    /// What failed.
    #[source]
    pub source: std::io::Error,
}

/// Unpins our links (detaching the programs) and maps. Only our own entries go: the
/// directory may be shared with other tools' pins.
pub fn remove_ebpf_state(root: &Path) -> Result<(), RemovePinsError> {
    let removed = crate::ebpf::dataplane::remove_pins(root).map_err(|source| RemovePinsError {
        path: root.to_owned(),
        source,
    })?;
    if removed > 0 {
        tracing::info!(path = %root.display(), pins = removed, "removed pinned eBPF state");
    }
    Ok(())
}
