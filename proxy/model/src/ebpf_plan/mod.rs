//! Pure planning of eBPF map writes: desired service ports -> ordered map operations, run
//! through a [`MapWriter`] one at a time.
//!
//! The kernel programs read a service entry (`SWY_SERVICES`: backend-set id and count), then
//! one slot `0..count` of that set (`SWY_BACKENDS`), and for a LoadBalancer IP with source
//! ranges the `SWY_SOURCE_RANGES` trie. None of these reads is atomic with the others, so the
//! planner orders the writes so that every state between two operations is one a program may
//! see:
//!
//! - A sync is planned as a whole, in two phases: first every port releases the service
//!   entries it no longer wants, then every port writes its new state. A frontend moving
//!   between two ports changed in the same sync is therefore free when its new owner writes
//!   it, whatever the order of the ports.
//! - Within a port, everything that needs room in a map comes first (new slots, new source
//!   ranges, new service entries), then what replaces an existing entry in place (changed
//!   slots, then changed service entries), so a full map fails the change before anything
//!   the port already serves was touched. Replacing an existing key needs no room in a
//!   `BPF_F_NO_PREALLOC` hash map (the kernel allocates the new element and frees the old one
//!   after an RCU grace period, also when the map is full), which is what lets the in-place
//!   part come last.
//! - A failed change puts back the service entries and slots it overwrote; the port keeps
//!   serving its previous state, and the planner's copy of the maps ([`Mirror`]) says exactly
//!   what is there, so the next sync retries from the truth.
//! - Slots and source ranges nothing covers any more are deleted at the start of the next
//!   sync, not at once: a program that read a service entry just before it changed may still
//!   look them up. Their ids are handed out again only after that.
//!
//! The model gives every frontend exactly one owner (`conflicts` in the model), so the
//! planner never has to choose between two ports.
//!
//! Each address family has maps of its own and a planner of its own ([`Planner`] for IPv4,
//! [`Planner6`] for IPv6, the same code over [`Family`]); a dual-stack port is planned by
//! both, each taking its family's frontends and endpoints.
use std::collections::{BTreeMap, BTreeSet};

use switchyard_common::{BackendKey, ServiceValue, SourceRangeKey, PROTO_UDP, SCOPE_SOCKET};

use crate::{ServicePort, ServicePortKey};

mod entries;
mod exec;
mod family;
mod ids;
mod mirror;
pub mod names;
mod writer;

#[cfg(any(test, feature = "fuzzing"))]
pub mod fake;

/// Socket termination, per family: the UDP socket iterator visits IPv4 and IPv6 sockets, and
/// each family's pairs go to that family's filter map.
impl<F: Family> FamilyPlanner<F> {
    /// The (frontend, backend) pairs a local UDP socket of `key` may currently be connected
    /// through: each socket-scope UDP frontend with every backend of its set. A pair that a
    /// sync removes (the backend left, or the frontend went) strands the sockets connect4 (or
    /// connect6) translated through it; the dataplane destroys them.
    pub fn udp_socket_routes(&self, key: &ServicePortKey) -> BTreeSet<F::TermKey> {
        let Some(port) = self.ports.get(key) else {
            return BTreeSet::new();
        };
        port.frontends
            .iter()
            .filter_map(|k| self.maps.services.get(k).map(|v| (k, v)))
            .flat_map(|(k, v)| self.routes_of(k, v))
            .collect()
    }

    /// [`Self::udp_socket_routes`] of every socket-scope UDP entry the maps hold, ours or a
    /// previous instance's (full syncs: the first one after a restart knows no port yet,
    /// and a backend removed while no controller ran strands sockets too).
    pub fn all_udp_socket_routes(&self) -> BTreeSet<F::TermKey> {
        self.maps
            .services
            .iter()
            .flat_map(|(k, v)| self.routes_of(k, v))
            .collect()
    }

    /// The pairs of one service entry: none unless it is a socket-scope UDP frontend.
    fn routes_of<'a>(
        &'a self,
        key: &'a F::Key,
        value: &ServiceValue,
    ) -> impl Iterator<Item = F::TermKey> + 'a {
        let (_, _, proto, scope) = F::parts(key);
        let socket_udp = scope == SCOPE_SOCKET && proto == PROTO_UDP;
        let backends = if socket_udp {
            self.layout(value.id)
        } else {
            Vec::new()
        };
        backends.into_iter().map(move |b| F::term_key(key, &b))
    }
}

#[cfg(test)]
mod tests;

use entries::{entries, stable_slots, wanted_backends};

pub use entries::SetKind;
pub use family::{from_words, words, Family, V4, V6};
use ids::Ids;
use mirror::Mirror;

pub use exec::SyncOutcome;
pub use writer::{FrontendConflict, MapWriter, PortFailure};

/// A loadBalancerSourceRanges entry: key and prefix length in bits.
pub type RangeKey = (SourceRangeKey, u32);

/// A source-ranges entry of family `F`: key and prefix length in bits.
type Ranged<F> = (<F as Family>::Range, u32);

/// One write to the maps of family `F`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FamilyOp<F: Family> {
    /// Insert or replace a backend slot.
    PutBackend(BackendKey, F::Backend),
    /// Insert or replace a loadBalancerSourceRanges entry (key, prefix length in bits).
    PutSourceRange(F::Range, u32),
    /// Insert or replace a service entry.
    PutService(F::Key, ServiceValue),
    /// Remove a service entry.
    DeleteService(F::Key),
    /// Remove a backend slot.
    DeleteBackend(BackendKey),
    /// Remove a loadBalancerSourceRanges entry.
    DeleteSourceRange(F::Range, u32),
}

/// One write to the IPv4 maps.
pub type MapOp = FamilyOp<V4>;
/// One write to the IPv6 maps.
pub type MapOp6 = FamilyOp<V6>;

/// How far the kernel maps have drifted from what was programmed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drift {
    /// Programmed entries the maps lack.
    pub missing: usize,
    /// Entries whose value differs from what was written.
    pub wrong: usize,
    /// Service entries nothing programmed.
    pub unexpected: usize,
}

impl Drift {
    /// Whether the maps hold exactly what was programmed.
    pub fn is_none(&self) -> bool {
        *self == Drift::default()
    }
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} entries missing, {} different, {} unexpected",
            self.missing, self.wrong, self.unexpected
        )
    }
}

/// An entry waiting to be deleted at the start of the next sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Doomed<F: Family> {
    Backend(BackendKey),
    Range(Ranged<F>),
}

impl<F: Family> Doomed<F> {
    fn op(self) -> FamilyOp<F> {
        match self {
            Doomed::Backend(k) => FamilyOp::DeleteBackend(k),
            Doomed::Range((k, prefix)) => FamilyOp::DeleteSourceRange(k, prefix),
        }
    }
}

/// Which entries of the maps belong to one service port.
#[derive(Clone, Debug)]
struct PortState<F: Family> {
    /// Its backend sets by kind (the slots are in the mirror).
    sets: BTreeMap<SetKind, u32>,
    /// Its service entries (the values are in the mirror).
    frontends: BTreeSet<F::Key>,
    /// The source ranges its entries rely on; shared ranges are kept while any port wants
    /// them (the trie key holds the LoadBalancer IP, not the port).
    ranges: BTreeSet<Ranged<F>>,
}

/// What one port is to hold after its change.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target<F: Family> {
    sets: BTreeMap<SetKind, (u32, Vec<F::Backend>)>,
    frontends: BTreeMap<F::Key, ServiceValue>,
    ranges: BTreeSet<Ranged<F>>,
}

// By hand: a derive would ask the key types for `Default` too.
impl<F: Family> Default for PortState<F> {
    fn default() -> Self {
        Self {
            sets: BTreeMap::new(),
            frontends: BTreeSet::new(),
            ranges: BTreeSet::new(),
        }
    }
}

impl<F: Family> Default for Target<F> {
    fn default() -> Self {
        Self {
            sets: BTreeMap::new(),
            frontends: BTreeMap::new(),
            ranges: BTreeSet::new(),
        }
    }
}

/// The two phases of a sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Deleting the service entries a port no longer wants.
    Release,
    /// Writing a port's new state.
    Assign,
}

/// One port's operations in one phase.
#[derive(Debug)]
pub struct Step<F: Family = V4> {
    port: ServicePortKey,
    phase: Phase,
    ops: Vec<FamilyOp<F>>,
    /// For [`Phase::Assign`]: what the port is to hold (`None`: nothing).
    target: Option<Target<F>>,
}

impl<F: Family> Step<F> {
    /// The port this step changes.
    pub fn port(&self) -> &ServicePortKey {
        &self.port
    }

    /// Which phase it belongs to.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Its operations, in the order they run.
    pub fn ops(&self) -> &[FamilyOp<F>] {
        &self.ops
    }
}

/// A whole sync: every release step, then every assign step. Run it with [`Planner::run`].
#[derive(Debug)]
#[must_use = "a plan does nothing until it is run"]
pub struct Plan<F: Family = V4> {
    steps: Vec<Step<F>>,
    collect_garbage: bool,
}

impl<F: Family> Default for Plan<F> {
    fn default() -> Self {
        Self {
            steps: Vec::new(),
            collect_garbage: false,
        }
    }
}

impl<F: Family> Plan<F> {
    /// Also removes, after the steps, service entries no port owns: the plan covers every
    /// desired port (a full sync), so such entries are leftovers of a previous instance or of
    /// someone else.
    pub fn collecting_garbage(mut self) -> Self {
        self.collect_garbage = true;
        self
    }

    /// The steps in the order they run.
    pub fn steps(&self) -> &[Step<F>] {
        &self.steps
    }

    /// Every operation in the order it runs, if nothing fails.
    pub fn ops(&self) -> impl Iterator<Item = &FamilyOp<F>> {
        self.steps.iter().flat_map(|s| s.ops.iter())
    }
}

/// The planner's memory of one family's maps: what they hold, which port owns what, and the
/// id allocator.
#[derive(Debug, Default)]
pub struct FamilyPlanner<F: Family> {
    maps: Mirror<F>,
    ports: BTreeMap<ServicePortKey, PortState<F>>,
    owners: BTreeMap<F::Key, ServicePortKey>,
    ids: Ids,
    doomed: BTreeSet<Doomed<F>>,
    /// Backend-set ids found in the maps that no port of ours uses (a previous instance's).
    foreign_ids: BTreeSet<u32>,
    /// Source ranges found in the maps that no port of ours wanted.
    foreign_ranges: BTreeSet<Ranged<F>>,
    /// Ports whose last change failed.
    unsettled: BTreeSet<ServicePortKey>,
}

/// The planner of the IPv4 maps.
pub type Planner = FamilyPlanner<V4>;
/// The planner of the IPv6 maps.
pub type Planner6 = FamilyPlanner<V6>;

impl<F: Family> FamilyPlanner<F> {
    /// Plans a sync of the ports in `changes` (`None` removes a port; a key given twice counts
    /// once, with its last value). Call [`Planner::begin_sync`] before and run the plan with
    /// [`Planner::run`] right after, before anything else changes the planner.
    pub fn plan_sync(&mut self, changes: &[(ServicePortKey, Option<&ServicePort>)]) -> Plan<F> {
        let mut last: BTreeMap<&ServicePortKey, usize> = BTreeMap::new();
        for (i, (key, _)) in changes.iter().enumerate() {
            last.insert(key, i);
        }
        let mut steps = Vec::new();
        let mut assigns = Vec::new();
        let mut released = BTreeSet::new();
        for (i, (key, desired)) in changes.iter().enumerate() {
            if last.get(key) != Some(&i) {
                continue;
            }
            let old = self.ports.get(key).cloned().unwrap_or_default();
            let target = desired.map(|port| self.target(&old, port));
            let wanted = |k: &F::Key| target.as_ref().is_some_and(|t| t.frontends.contains_key(k));
            let ops: Vec<FamilyOp<F>> = old
                .frontends
                .iter()
                .filter(|k| !wanted(k))
                .map(|k| FamilyOp::DeleteService(*k))
                .collect();
            released.extend(old.frontends.iter().filter(|k| !wanted(k)).copied());
            if !ops.is_empty() {
                steps.push(Step {
                    port: key.clone(),
                    phase: Phase::Release,
                    ops,
                    target: None,
                });
            }
            assigns.push((key.clone(), old, target));
        }
        for (port, old, target) in assigns {
            let ops = match &target {
                Some(t) => self.assign_ops(&old, t, &released),
                None => Vec::new(),
            };
            steps.push(Step {
                port,
                phase: Phase::Assign,
                ops,
                target,
            });
        }
        Plan {
            steps,
            collect_garbage: false,
        }
    }

    /// What `port` is to hold: its entries, each set under its old id (so unchanged slots and
    /// ClientIP affinity stay) or a new one.
    fn target(&mut self, old: &PortState<F>, port: &ServicePort) -> Target<F> {
        let mut t = Target::default();
        for entry in entries::<F>(port) {
            // The model leaves one frontend per destination; should two entries still meet,
            // the first is kept.
            if t.frontends.contains_key(&entry.key) {
                continue;
            }
            if let std::collections::btree_map::Entry::Vacant(slot) = t.sets.entry(entry.set) {
                slot.insert(self.set(old, port, entry.set));
            }
            let (id, count) = t
                .sets
                .get(&entry.set)
                .map(|(id, layout)| (*id, layout.len()))
                .unwrap_or_default();
            let value = ServiceValue {
                id,
                // wanted_backends() caps the layout at u16::MAX.
                count: u16::try_from(count).unwrap_or(u16::MAX),
                flags: entry.flags,
                affinity_timeout: port.session_affinity_timeout.unwrap_or(0),
                pad: 0,
            };
            if entry.flags & switchyard_common::SERVICE_FLAG_SOURCE_RANGES != 0 {
                t.ranges
                    .extend(F::ranges(&entry.key, &port.load_balancer_source_ranges));
            }
            t.frontends.insert(entry.key, value);
        }
        for range in &t.ranges {
            self.doomed.remove(&Doomed::Range(*range));
        }
        t
    }

    /// Set `kind` of `port`: its old id and the backends laid out so that those still wanted
    /// keep their slots, or a new id.
    fn set(
        &mut self,
        old: &PortState<F>,
        port: &ServicePort,
        kind: SetKind,
    ) -> (u32, Vec<F::Backend>) {
        let wanted = wanted_backends::<F>(port, kind);
        let (id, previous) = match old.sets.get(&kind) {
            Some(id) => (*id, self.layout(*id)),
            None => (self.ids.allocate(F::ID_BASE), Vec::new()),
        };
        let layout = stable_slots(&previous, wanted);
        for slot in 0..layout.len() {
            // Wanted again: a pending delete must not take it away.
            self.doomed.remove(&Doomed::Backend(BackendKey {
                service_id: id,
                slot: slot as u32,
            }));
        }
        (id, layout)
    }

    /// The slots `0..` of set `id` that are in the maps and stay there.
    fn layout(&self, id: u32) -> Vec<F::Backend> {
        let mut out = Vec::new();
        for (key, backend) in self.maps.slots_from(id, 0) {
            if key.slot as usize != out.len() || self.doomed.contains(&Doomed::Backend(*key)) {
                break;
            }
            out.push(*backend);
        }
        out
    }

    /// The operations of an assign step: inserts (which need room) before in-place
    /// replacements, slots before the service entries that count them.
    fn assign_ops(
        &self,
        old: &PortState<F>,
        t: &Target<F>,
        released: &BTreeSet<F::Key>,
    ) -> Vec<FamilyOp<F>> {
        let (mut new_slots, mut changed_slots) = (Vec::new(), Vec::new());
        for (id, layout) in t.sets.values() {
            for (slot, backend) in layout.iter().enumerate() {
                let key = BackendKey {
                    service_id: *id,
                    slot: slot as u32,
                };
                match self.maps.backends.get(&key) {
                    None => new_slots.push(FamilyOp::PutBackend(key, *backend)),
                    Some(current) if current != backend => {
                        changed_slots.push(FamilyOp::PutBackend(key, *backend))
                    }
                    Some(_) => {}
                }
            }
        }
        let new_ranges = t
            .ranges
            .iter()
            .filter(|r| !self.maps.ranges.contains(r))
            .map(|(k, prefix)| FamilyOp::PutSourceRange(*k, *prefix));
        let (mut new_services, mut changed_services) = (Vec::new(), Vec::new());
        for (key, value) in &t.frontends {
            let current = self
                .maps
                .services
                .get(key)
                .filter(|_| !released.contains(key));
            match current {
                None => new_services.push(FamilyOp::PutService(*key, *value)),
                Some(current) if current != value => {
                    changed_services.push(FamilyOp::PutService(*key, *value))
                }
                Some(_) => {}
            }
        }
        // Normally released in the first phase already.
        let gone = old
            .frontends
            .iter()
            .filter(|k| !t.frontends.contains_key(k) && !released.contains(k))
            .map(|k| FamilyOp::DeleteService(*k));
        let mut ops = new_slots;
        ops.extend(new_ranges);
        ops.append(&mut new_services);
        ops.append(&mut changed_slots);
        ops.append(&mut changed_services);
        ops.extend(gone);
        ops
    }

    /// Takes what the maps hold as the truth: at start-up (a previous instance's pinned maps)
    /// and before a full sync (whatever changed behind our back is then repaired, and what no
    /// port owns is removed). Ids and source ranges no port of ours uses become foreign: kept
    /// while a service entry still relies on them.
    pub fn observe(
        &mut self,
        services: impl IntoIterator<Item = (F::Key, ServiceValue)>,
        backends: impl IntoIterator<Item = (BackendKey, F::Backend)>,
        ranges: impl IntoIterator<Item = Ranged<F>>,
    ) {
        self.maps = Mirror {
            services: services.into_iter().collect(),
            backends: backends.into_iter().collect(),
            ranges: ranges.into_iter().collect(),
        };
        let ours: BTreeSet<u32> = self
            .ports
            .values()
            .flat_map(|p| p.sets.values().copied())
            .collect();
        let found: BTreeSet<u32> = self
            .maps
            .services
            .values()
            .map(|v| v.id)
            .chain(self.maps.backends.keys().map(|k| k.service_id))
            .collect();
        for id in found {
            if !ours.contains(&id) && !self.ids.is_cooling(id) {
                self.foreign_ids.insert(id);
                self.ids.reserve(id);
            }
        }
        let claimed: BTreeSet<Ranged<F>> = self
            .ports
            .values()
            .flat_map(|p| p.ranges.iter().copied())
            .collect();
        self.foreign_ranges
            .extend(self.maps.ranges.iter().filter(|r| !claimed.contains(r)));
        let maps = &self.maps;
        self.doomed.retain(|d| match d {
            Doomed::Backend(k) => maps.backends.contains_key(k),
            Doomed::Range(r) => maps.ranges.contains(r),
        });
    }

    /// Ports whose last change failed: the next sync must retry them with what they want by
    /// then, even when that equals what the controller last saw applied (a failed change may
    /// have released frontends of the old state already).
    pub fn unsettled(&self) -> impl Iterator<Item = &ServicePortKey> {
        self.unsettled.iter()
    }

    /// Ports currently programmed (wholly, or partly after a failure).
    pub fn programmed_ports(&self) -> impl Iterator<Item = &ServicePortKey> {
        self.ports.keys()
    }

    /// Whether a sync must hand `key` to this planner even if it has nothing of this family
    /// now: it holds entries, or its last change failed.
    pub fn concerns(&self, key: &ServicePortKey) -> bool {
        self.ports.contains_key(key) || self.unsettled.contains(key)
    }

    /// The backend sets `key` currently holds, with their ids.
    pub fn port_sets(&self, key: &ServicePortKey) -> impl Iterator<Item = (SetKind, u32)> + '_ {
        self.ports
            .get(key)
            .into_iter()
            .flat_map(|p| p.sets.iter().map(|(kind, id)| (*kind, *id)))
    }

    /// Every backend set of our ports: id, owner, kind.
    pub fn backend_sets(&self) -> impl Iterator<Item = (u32, &ServicePortKey, SetKind)> + '_ {
        self.ports
            .iter()
            .flat_map(|(key, p)| p.sets.iter().map(move |(kind, id)| (*id, key, *kind)))
    }

    /// Backend-set ids found in the maps that no port of ours uses (a previous instance's,
    /// still in service until their entries are replaced).
    pub fn foreign_sets(&self) -> impl Iterator<Item = u32> + '_ {
        self.foreign_ids.iter().copied()
    }

    /// How many entries the services, backends and source-ranges maps hold, as the planner
    /// knows them (exact but for drift, which the next verify finds).
    pub fn entry_counts(&self) -> (usize, usize, usize) {
        (
            self.maps.services.len(),
            self.maps.backends.len(),
            self.maps.ranges.len(),
        )
    }

    /// Backends external traffic of `key` may currently be sent to.
    pub fn external_backends(&self, key: &ServicePortKey) -> BTreeSet<F::Backend> {
        self.ports
            .get(key)
            .and_then(|p| p.sets.get(&SetKind::External))
            .map(|id| self.layout(*id).into_iter().collect())
            .unwrap_or_default()
    }

    /// Compares the kernel's service entries alone with what the planner knows they hold.
    pub fn check_services(
        &self,
        services: impl IntoIterator<Item = (F::Key, ServiceValue)>,
    ) -> Drift {
        let expected = self.backend_slots_sample(0, 1);
        self.check_drift(services, expected)
    }

    /// The backend slots the maps should hold for every `stride`-th backend set (ordered by
    /// id), starting with the `phase`-th, leaving out slots due for deletion: a verify that
    /// looks up one share of the backends map per run covers all of it every `stride` runs, at
    /// a fraction of a full read's cost.
    pub fn backend_slots_sample(
        &self,
        phase: usize,
        stride: usize,
    ) -> Vec<(BackendKey, F::Backend)> {
        let stride = stride.max(1);
        let mut ids: Vec<u32> = self.maps.backends.keys().map(|k| k.service_id).collect();
        ids.dedup();
        let chosen: BTreeSet<u32> = ids
            .into_iter()
            .skip(phase % stride)
            .step_by(stride)
            .collect();
        self.maps
            .backends
            .iter()
            .filter(|(k, _)| chosen.contains(&k.service_id))
            .filter(|(k, _)| !self.doomed.contains(&Doomed::Backend(**k)))
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// Compares what the kernel maps hold with what the planner knows they hold, for the
    /// periodic verify. Backend slots the planner does not know of are not drift (nothing
    /// covers them), nor are missing slots already due for deletion.
    pub fn check_drift(
        &self,
        services: impl IntoIterator<Item = (F::Key, ServiceValue)>,
        backends: impl IntoIterator<Item = (BackendKey, F::Backend)>,
    ) -> Drift {
        let mut drift = Drift::default();
        let mut seen = 0;
        for (key, value) in services {
            match self.maps.services.get(&key) {
                Some(expected) if *expected == value => seen += 1,
                Some(_) => drift.wrong += 1,
                None => drift.unexpected += 1,
            }
        }
        drift.missing = self.maps.services.len().saturating_sub(seen + drift.wrong);
        let (mut seen, mut wrong) = (0, 0);
        for (key, backend) in backends {
            if self.doomed.contains(&Doomed::Backend(key)) {
                continue;
            }
            match self.maps.backends.get(&key) {
                Some(expected) if *expected == backend => seen += 1,
                Some(_) => wrong += 1,
                None => {}
            }
        }
        let expected = self
            .maps
            .backends
            .keys()
            .filter(|k| !self.doomed.contains(&Doomed::Backend(**k)))
            .count();
        drift.wrong += wrong;
        drift.missing += expected.saturating_sub(seen + wrong);
        drift
    }
}
