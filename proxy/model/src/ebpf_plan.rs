//! Pure planning of eBPF map writes: desired service ports -> ordered map operations.
//!
//! Ordering is what keeps concurrent lookups safe: backend slots are written before the service
//! entry whose count covers them, and on shrink or removal the service entry changes first and
//! the slots it no longer covers are deleted after.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use switchyard_common::{
    Backend, BackendKey, ServiceKey, ServiceValue, SourceRangeKey, PROTO_TCP, PROTO_UDP,
    SCOPE_EXTERNAL, SCOPE_SOCKET, SERVICE_FLAG_AFFINITY, SERVICE_FLAG_DROP_EMPTY,
    SERVICE_FLAG_MASQUERADE, SERVICE_FLAG_SOURCE_RANGES,
};

use crate::{Endpoint, FrontendKind, Protocol, ServicePort, ServicePortKey, TrafficPolicy};

/// One write to the maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapOp {
    /// Insert or replace a backend slot.
    PutBackend(BackendKey, Backend),
    /// Insert or replace a loadBalancerSourceRanges entry (key, prefix length in bits).
    PutSourceRange(SourceRangeKey, u32),
    /// Insert or replace a service entry.
    PutService(ServiceKey, ServiceValue),
    /// Remove a service entry.
    DeleteService(ServiceKey),
    /// Remove a backend slot.
    DeleteBackend(BackendKey),
    /// Remove a loadBalancerSourceRanges entry.
    DeleteSourceRange(SourceRangeKey, u32),
}

/// Which endpoint set a frontend uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SetKind {
    /// ClusterIP from local sockets: internalTrafficPolicy applies.
    Internal,
    /// NodePort, externalIPs, LoadBalancer IPs reached from a local socket: upstream sends
    /// node-local traffic to the cluster set even with externalTrafficPolicy Local.
    Cluster,
    /// NodePort, externalIPs, LoadBalancer IPs reached from outside the node (tc path):
    /// externalTrafficPolicy applies.
    External,
}

/// What is in the maps for one service port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Programmed {
    /// Backend sets: kind -> (id, backend of each slot).
    sets: BTreeMap<SetKind, (u32, Vec<Backend>)>,
    /// Service entries written.
    frontends: BTreeMap<ServiceKey, ServiceValue>,
    /// Source-range entries written (key, prefix length).
    ranges: BTreeSet<(SourceRangeKey, u32)>,
}

/// A frontend another service port already owns; the later one is not programmed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{port}: frontend {addr}:{port_number} is already used by {owner}; not programmed")]
pub struct FrontendConflict {
    /// The port that lost.
    pub port: ServicePortKey,
    /// The conflicting address.
    pub addr: IpAddr,
    /// The conflicting port number.
    pub port_number: u16,
    /// The port that owns it.
    pub owner: ServicePortKey,
}

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

/// The planner's memory of what is programmed, and the id allocator for backend sets.
#[derive(Debug, Default)]
pub struct Planner {
    programmed: BTreeMap<ServicePortKey, Programmed>,
    owners: BTreeMap<ServiceKey, ServicePortKey>,
    free_ids: Vec<u32>,
    next_id: u32,
    reserved: BTreeSet<u32>,
    /// Ids retired in this sync, reusable from the next one.
    cooling: Vec<u32>,
    /// What the last planned port had before, for [`Planner::rollback`].
    last_old: Option<(ServicePortKey, Programmed)>,
}

/// One service entry to write: where, which set, which flags.
struct Entry {
    key: ServiceKey,
    ip: IpAddr,
    set: SetKind,
    flags: u16,
}

impl Planner {
    /// Ops that make the maps hold `desired` for `key` (`None` removes the port), and the
    /// frontend conflicts met. The planner records the result as programmed.
    pub fn plan_port(
        &mut self,
        key: &ServicePortKey,
        desired: Option<&ServicePort>,
    ) -> (Vec<MapOp>, Vec<FrontendConflict>) {
        let old = self.programmed.remove(key).unwrap_or_default();
        for frontend in old.frontends.keys() {
            self.owners.remove(frontend);
        }
        let mut conflicts = Vec::new();
        let mut new = Programmed::default();
        if let Some(port) = desired {
            for entry in entries(port) {
                if let Some(owner) = self.owners.get(&entry.key) {
                    let conflict = FrontendConflict {
                        port: key.clone(),
                        addr: entry.ip,
                        port_number: u16::from_be(entry.key.port),
                        owner: owner.clone(),
                    };
                    // One report per frontend, though both its paths collide.
                    if !conflicts.contains(&conflict) {
                        conflicts.push(conflict);
                    }
                    continue;
                }
                if let std::collections::btree_map::Entry::Vacant(slot) = new.sets.entry(entry.set)
                {
                    let endpoints = match entry.set {
                        SetKind::Internal => port.internal_endpoints(),
                        SetKind::Cluster => port.cluster_endpoints(),
                        SetKind::External => port.external_endpoints(),
                    };
                    let wanted: Vec<Backend> =
                        endpoints.into_iter().filter_map(backend_of).collect();
                    let (id, previous) = match old.sets.get(&entry.set) {
                        Some((id, previous)) => (*id, previous.as_slice()),
                        None => (self.allocate_id(), &[][..]),
                    };
                    slot.insert((id, stable_slots(previous, wanted)));
                }
                let (set_id, count) = new
                    .sets
                    .get(&entry.set)
                    .map(|(id, backends)| (*id, backends.len()))
                    .unwrap_or_default();
                let value = ServiceValue {
                    id: set_id,
                    count: count.min(u16::MAX as usize) as u16,
                    flags: entry.flags,
                    affinity_timeout: port.session_affinity_timeout.unwrap_or(0),
                    pad: 0,
                };
                if entry.flags & SERVICE_FLAG_SOURCE_RANGES != 0 {
                    new.ranges.extend(source_ranges(
                        entry.key.addr,
                        &port.load_balancer_source_ranges,
                    ));
                }
                new.frontends.insert(entry.key, value);
                self.owners.insert(entry.key, key.clone());
            }
        }
        let ops = ordered_ops(&old, &new);
        for (set, (id, _)) in &old.sets {
            if !new.sets.contains_key(set) {
                // Not reusable before the next sync: a program that read the old service
                // entry just before it changed may still look up this id's slots.
                self.cooling.push(*id);
            }
        }
        self.last_old = Some((key.clone(), old));
        if !new.frontends.is_empty() {
            self.programmed.insert(key.clone(), new);
        }
        (ops, conflicts)
    }

    /// After the ops of the last [`Planner::plan_port`] failed half-way: ops that remove
    /// everything the port had before *and* was to have now, and forgets the port, so no
    /// entry is left pointing at an id that is handed out again.
    pub fn rollback(&mut self, key: &ServicePortKey) -> Vec<MapOp> {
        let old = match self.last_old.take() {
            Some((k, old)) if &k == key => old,
            _ => Programmed::default(),
        };
        let new = self.programmed.remove(key).unwrap_or_default();
        let mut ops = Vec::new();
        let frontends: BTreeSet<&ServiceKey> =
            old.frontends.keys().chain(new.frontends.keys()).collect();
        for frontend in frontends {
            if self.owners.get(frontend) == Some(key) {
                self.owners.remove(frontend);
            }
            ops.push(MapOp::DeleteService(*frontend));
        }
        let mut ids = BTreeSet::new();
        for (id, backends) in old.sets.values().chain(new.sets.values()) {
            for slot in 0..backends.len() {
                ops.push(MapOp::DeleteBackend(BackendKey {
                    service_id: *id,
                    slot: slot as u32,
                }));
            }
            ids.insert(*id);
        }
        for range in old.ranges.union(&new.ranges) {
            ops.push(MapOp::DeleteSourceRange(range.0, range.1));
        }
        for id in ids {
            if !self.cooling.contains(&id) {
                self.cooling.push(id);
            }
        }
        ops
    }

    /// Starts a sync: ids retired during the previous one may be handed out again.
    pub fn begin_sync(&mut self) {
        self.free_ids.append(&mut self.cooling);
    }

    /// Ports currently programmed.
    pub fn programmed_ports(&self) -> impl Iterator<Item = &ServicePortKey> {
        self.programmed.keys()
    }

    /// Frontends currently programmed.
    pub fn owned_frontends(&self) -> impl Iterator<Item = &ServiceKey> {
        self.owners.keys()
    }

    /// Backend-set ids in use.
    pub fn live_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.programmed
            .values()
            .flat_map(|p| p.sets.values().map(|(id, _)| *id))
    }

    /// Backends external traffic of `key` may currently be sent to.
    pub fn external_backends(&self, key: &ServicePortKey) -> BTreeSet<Backend> {
        self.programmed
            .get(key)
            .and_then(|p| p.sets.get(&SetKind::External))
            .map(|(_, backends)| backends.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Source-range entries in use.
    pub fn live_ranges(&self) -> impl Iterator<Item = &(SourceRangeKey, u32)> {
        self.programmed.values().flat_map(|p| p.ranges.iter())
    }

    /// Compares what the kernel maps hold with what was programmed, for the periodic verify.
    /// Stray backend slots are not drift: deletions of retired slots are deferred by a sync.
    pub fn check_drift(
        &self,
        services: impl IntoIterator<Item = (ServiceKey, ServiceValue)>,
        backends: impl IntoIterator<Item = (BackendKey, Backend)>,
    ) -> Drift {
        let mut drift = Drift::default();
        let mut seen_services = 0;
        for (key, value) in services {
            match self.expected_service(&key) {
                Some(expected) if *expected == value => seen_services += 1,
                Some(_) => drift.wrong += 1,
                None => drift.unexpected += 1,
            }
        }
        let sets: BTreeMap<u32, &Vec<Backend>> = self
            .programmed
            .values()
            .flat_map(|p| p.sets.values().map(|(id, b)| (*id, b)))
            .collect();
        let mut seen_backends = 0;
        for (key, backend) in backends {
            let expected = sets
                .get(&key.service_id)
                .and_then(|b| b.get(key.slot as usize));
            match expected {
                Some(expected) if *expected == backend => seen_backends += 1,
                Some(_) => drift.wrong += 1,
                None => {}
            }
        }
        let expected_services: usize = self.programmed.values().map(|p| p.frontends.len()).sum();
        let expected_backends: usize = sets.values().map(|b| b.len()).sum();
        drift.missing = expected_services.saturating_sub(seen_services + drift.wrong)
            + expected_backends.saturating_sub(seen_backends);
        drift
    }

    /// Compares the kernel's service entries alone with what was programmed.
    pub fn check_services(
        &self,
        services: impl IntoIterator<Item = (ServiceKey, ServiceValue)>,
    ) -> Drift {
        self.check_drift(services, self.backend_slots_sample(0, 1))
    }

    /// The backend slots programmed for every `stride`-th backend set (ordered by id),
    /// starting with the `phase`-th: a verify that looks up one share of the backends map
    /// per run covers all of it every `stride` runs, at a fraction of a full read's cost.
    pub fn backend_slots_sample(&self, phase: usize, stride: usize) -> Vec<(BackendKey, Backend)> {
        let sets: BTreeMap<u32, &Vec<Backend>> = self
            .programmed
            .values()
            .flat_map(|p| p.sets.values().map(|(id, b)| (*id, b)))
            .collect();
        sets.into_iter()
            .skip(phase % stride.max(1))
            .step_by(stride.max(1))
            .flat_map(|(id, backends)| {
                backends.iter().enumerate().map(move |(slot, backend)| {
                    let key = BackendKey {
                        service_id: id,
                        slot: slot as u32,
                    };
                    (key, *backend)
                })
            })
            .collect()
    }

    /// Ops that write every programmed entry again, in the safe order (backend slots, source
    /// ranges, then the service entries counting them): the repair after drift, which a
    /// diff against the planner's memory would never produce.
    pub fn rewrite_all(&self) -> Vec<MapOp> {
        let mut slots = Vec::new();
        let mut ranges = Vec::new();
        let mut services = Vec::new();
        for programmed in self.programmed.values() {
            for (id, backends) in programmed.sets.values() {
                for (slot, backend) in backends.iter().enumerate() {
                    let key = BackendKey {
                        service_id: *id,
                        slot: slot as u32,
                    };
                    slots.push(MapOp::PutBackend(key, *backend));
                }
            }
            ranges.extend(
                programmed
                    .ranges
                    .iter()
                    .map(|(key, prefix)| MapOp::PutSourceRange(*key, *prefix)),
            );
            services.extend(
                programmed
                    .frontends
                    .iter()
                    .map(|(key, value)| MapOp::PutService(*key, *value)),
            );
        }
        slots.extend(ranges);
        slots.extend(services);
        slots
    }

    fn expected_service(&self, key: &ServiceKey) -> Option<&ServiceValue> {
        let owner = self.owners.get(key)?;
        self.programmed.get(owner)?.frontends.get(key)
    }

    /// Keeps ids found in adopted maps from being handed out.
    pub fn reserve(&mut self, ids: impl IntoIterator<Item = u32>) {
        self.reserved.extend(ids);
    }

    /// Makes reserved ids that turned out unused available again.
    pub fn release(&mut self, ids: impl IntoIterator<Item = u32>) {
        for id in ids {
            self.reserved.remove(&id);
        }
    }

    fn allocate_id(&mut self) -> u32 {
        loop {
            let id = self.free_ids.pop().unwrap_or_else(|| {
                self.next_id += 1;
                self.next_id
            });
            if !self.reserved.contains(&id) {
                return id;
            }
        }
    }
}

/// The service entries of one port: every IPv4 frontend for local sockets, and the
/// NodePort, externalIP and LoadBalancer frontends once more for traffic from outside.
fn entries(port: &ServicePort) -> Vec<Entry> {
    let proto = match port.key.protocol {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    };
    let affinity = if port.session_affinity_timeout.is_some() {
        SERVICE_FLAG_AFFINITY
    } else {
        0
    };
    let local_policy = port.external_traffic_policy == TrafficPolicy::Local;
    let mut out = Vec::new();
    for frontend in &port.frontends {
        let IpAddr::V4(ip) = frontend.ip else {
            continue; // IPv4 programs only
        };
        let key = |scope| ServiceKey {
            addr: u32::from(ip).to_be(),
            port: frontend.port.to_be(),
            proto,
            scope,
        };
        let socket_set = if frontend.kind == FrontendKind::ClusterIp {
            SetKind::Internal
        } else {
            SetKind::Cluster
        };
        out.push(Entry {
            key: key(SCOPE_SOCKET),
            ip: frontend.ip,
            set: socket_set,
            flags: affinity,
        });
        if frontend.kind == FrontendKind::ClusterIp {
            continue;
        }
        let mut flags = affinity;
        flags |= if local_policy {
            // Local policy keeps the client address and drops when no local endpoint.
            SERVICE_FLAG_DROP_EMPTY
        } else {
            SERVICE_FLAG_MASQUERADE
        };
        if frontend.kind == FrontendKind::LoadBalancer
            && !port.load_balancer_source_ranges.is_empty()
        {
            flags |= SERVICE_FLAG_SOURCE_RANGES;
        }
        out.push(Entry {
            key: key(SCOPE_EXTERNAL),
            ip: frontend.ip,
            set: SetKind::External,
            flags,
        });
    }
    out
}

/// LPM entries allowing `ranges` (IPv4 ones) to reach the LoadBalancer IP `lb_addr`.
fn source_ranges(lb_addr: u32, ranges: &[IpNet]) -> Vec<(SourceRangeKey, u32)> {
    ranges
        .iter()
        .filter_map(|range| match range {
            IpNet::V4(net) => Some((
                SourceRangeKey {
                    lb_addr,
                    client_addr: u32::from(net.network()).to_be(),
                },
                // The LoadBalancer IP is always matched whole, then the range's bits.
                32 + u32::from(net.prefix_len()),
            )),
            IpNet::V6(_) => None,
        })
        .collect()
}

/// The ops turning `old` into `new`, ordered so that a concurrent lookup never sees a service
/// entry counting a slot (or flagging ranges) that is not written yet.
fn ordered_ops(old: &Programmed, new: &Programmed) -> Vec<MapOp> {
    let mut ops = Vec::new();
    // 1. Backend slots whose backend changed; unchanged slots stay (that keeps affinity).
    for (set, (id, backends)) in &new.sets {
        let before = old
            .sets
            .get(set)
            .map(|(_, b)| b.as_slice())
            .unwrap_or_default();
        for (slot, backend) in backends.iter().enumerate() {
            if before.get(slot) != Some(backend) {
                let key = BackendKey {
                    service_id: *id,
                    slot: slot as u32,
                };
                ops.push(MapOp::PutBackend(key, *backend));
            }
        }
    }
    // 2. Source ranges a new entry may rely on.
    for range in new.ranges.difference(&old.ranges) {
        ops.push(MapOp::PutSourceRange(range.0, range.1));
    }
    // 3. Service entries that are new or changed.
    for (key, value) in &new.frontends {
        if old.frontends.get(key) != Some(value) {
            ops.push(MapOp::PutService(*key, *value));
        }
    }
    // 4. Service entries that went away.
    for key in old.frontends.keys() {
        if !new.frontends.contains_key(key) {
            ops.push(MapOp::DeleteService(*key));
        }
    }
    // 5. Slots no longer covered, whole sets no longer used, ranges no longer wanted.
    for (set, (id, before)) in &old.sets {
        let new_count = new.sets.get(set).map(|(_, b)| b.len()).unwrap_or(0);
        for slot in new_count..before.len() {
            ops.push(MapOp::DeleteBackend(BackendKey {
                service_id: *id,
                slot: slot as u32,
            }));
        }
    }
    for range in old.ranges.difference(&new.ranges) {
        ops.push(MapOp::DeleteSourceRange(range.0, range.1));
    }
    ops
}

/// Slot assignment that keeps every backend still wanted in its old slot when that slot
/// still exists, and fills the holes with the new ones (in their given order).
fn stable_slots(previous: &[Backend], wanted: Vec<Backend>) -> Vec<Backend> {
    let count = wanted.len();
    let mut slots: Vec<Option<Backend>> = vec![None; count];
    let mut placed = Vec::new();
    for (slot, backend) in previous.iter().enumerate().take(count) {
        if wanted.contains(backend) {
            slots[slot] = Some(*backend);
            placed.push(*backend);
        }
    }
    let mut rest = wanted.into_iter().filter(|b| !placed.contains(b));
    slots
        .into_iter()
        .map(|slot| slot.or_else(|| rest.next()).unwrap_or_default())
        .collect()
}

fn backend_of(endpoint: &Endpoint) -> Option<Backend> {
    match endpoint.ip {
        IpAddr::V4(ip) => Some(Backend {
            addr: u32::from(ip).to_be(),
            port: endpoint.port.to_be(),
            pad: 0,
        }),
        IpAddr::V6(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Frontend, TrafficPolicy};

    fn key(name: &str) -> ServicePortKey {
        ServicePortKey {
            namespace: "demo".into(),
            name: name.into(),
            port_name: String::new(),
            protocol: Protocol::Tcp,
        }
    }

    fn endpoint(ip: &str, local: bool) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port: 8080,
            ready: true,
            serving: true,
            terminating: false,
            local,
            node_name: None,
        }
    }

    fn port(
        name: &str,
        frontends: &[(FrontendKind, &str)],
        endpoints: Vec<Endpoint>,
    ) -> ServicePort {
        ServicePort {
            key: key(name),
            port: 80,
            cluster_ips: vec![],
            node_port: None,
            external_ips: vec![],
            load_balancer_ips: vec![],
            load_balancer_source_ranges: vec![],
            session_affinity_timeout: None,
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            endpoints,
            frontends: frontends
                .iter()
                .map(|(kind, ip)| Frontend {
                    kind: *kind,
                    ip: ip.parse().unwrap(),
                    port: 80,
                })
                .collect(),
        }
    }

    fn position(ops: &[MapOp], pred: impl Fn(&MapOp) -> bool) -> Vec<usize> {
        ops.iter()
            .enumerate()
            .filter(|(_, op)| pred(op))
            .map(|(i, _)| i)
            .collect()
    }

    fn is_put_backend(op: &MapOp) -> bool {
        matches!(op, MapOp::PutBackend(..))
    }
    fn is_put_service(op: &MapOp) -> bool {
        matches!(op, MapOp::PutService(..))
    }
    fn is_delete_backend(op: &MapOp) -> bool {
        matches!(op, MapOp::DeleteBackend(..))
    }
    fn is_delete_service(op: &MapOp) -> bool {
        matches!(op, MapOp::DeleteService(..))
    }

    /// The maps a kernel would hold after running `ops` in order.
    fn apply_ops(
        ops: &[MapOp],
        services: &mut BTreeMap<ServiceKey, ServiceValue>,
        backends: &mut BTreeMap<BackendKey, Backend>,
    ) {
        for op in ops {
            match op {
                MapOp::PutService(k, v) => drop(services.insert(*k, *v)),
                MapOp::DeleteService(k) => drop(services.remove(k)),
                MapOp::PutBackend(k, v) => drop(backends.insert(*k, *v)),
                MapOp::DeleteBackend(k) => drop(backends.remove(k)),
                MapOp::PutSourceRange(..) | MapOp::DeleteSourceRange(..) => {}
            }
        }
    }

    #[test]
    fn drift_is_none_for_what_was_written_and_counts_what_changed_behind_our_back() {
        let mut planner = Planner::default();
        let (mut services, mut backends) = (BTreeMap::new(), BTreeMap::new());
        for (name, ip) in [("web", "198.18.128.10"), ("api", "198.18.128.11")] {
            let p = port(
                name,
                &[(FrontendKind::ClusterIp, ip)],
                vec![
                    endpoint("198.19.1.10", true),
                    endpoint("198.19.2.10", false),
                ],
            );
            let (ops, _) = planner.plan_port(&p.key, Some(&p));
            apply_ops(&ops, &mut services, &mut backends);
        }
        let check = |s: &BTreeMap<ServiceKey, ServiceValue>, b: &BTreeMap<BackendKey, Backend>| {
            planner.check_drift(
                s.iter().map(|(k, v)| (*k, *v)),
                b.iter().map(|(k, v)| (*k, *v)),
            )
        };
        assert!(
            check(&services, &backends).is_none(),
            "{}",
            check(&services, &backends)
        );

        let mut gone = services.clone();
        let first = *gone.keys().next().unwrap();
        gone.remove(&first);
        assert_eq!(check(&gone, &backends).missing, 1);

        let mut changed = backends.clone();
        let slot = *changed.keys().next().unwrap();
        changed.get_mut(&slot).unwrap().port ^= 1;
        assert_eq!(check(&services, &changed).wrong, 1);

        let mut emptied = backends.clone();
        emptied.clear();
        assert_eq!(check(&services, &emptied).missing, 4);

        let mut extra = services.clone();
        let mut stray = first;
        stray.port ^= 1;
        extra.insert(stray, services[&first]);
        assert_eq!(check(&extra, &backends).unexpected, 1);

        // A rotating sample covers every slot once per `stride` phases.
        let stride = 2;
        let mut sampled: Vec<BackendKey> = (0..stride)
            .flat_map(|phase| planner.backend_slots_sample(phase, stride))
            .map(|(k, _)| k)
            .collect();
        sampled.sort();
        assert_eq!(sampled, backends.keys().copied().collect::<Vec<_>>());
        assert!(planner.check_services(services.clone()).is_none());
        assert_eq!(planner.check_services(gone.clone()).missing, 1);

        // The repair writes everything back, whatever was lost.
        let (mut repaired_services, mut repaired_backends) = (gone.clone(), emptied.clone());
        let ops = planner.rewrite_all();
        apply_ops(&ops, &mut repaired_services, &mut repaired_backends);
        assert!(check(&repaired_services, &repaired_backends).is_none());
        let first_service = ops
            .iter()
            .position(|op| matches!(op, MapOp::PutService(..)));
        let last_backend = ops
            .iter()
            .rposition(|op| matches!(op, MapOp::PutBackend(..)));
        assert!(
            last_backend < first_service,
            "slots before the entries counting them"
        );
    }

    #[test]
    fn backends_are_written_before_the_service_entry() {
        let mut planner = Planner::default();
        let web = port(
            "web",
            &[(FrontendKind::ClusterIp, "198.18.128.10")],
            vec![
                endpoint("198.19.1.10", true),
                endpoint("198.19.2.10", false),
            ],
        );
        let (ops, conflicts) = planner.plan_port(&web.key, Some(&web));
        assert!(conflicts.is_empty());
        let backends = position(&ops, is_put_backend);
        let services = position(&ops, is_put_service);
        assert_eq!((backends.len(), services.len()), (2, 1));
        assert!(backends.iter().all(|b| *b < services[0]), "{ops:?}");
        let MapOp::PutService(k, v) = ops[services[0]] else {
            unreachable!()
        };
        assert_eq!(
            k.addr,
            u32::from(std::net::Ipv4Addr::new(198, 18, 128, 10)).to_be()
        );
        assert_eq!(k.port, 80u16.to_be());
        assert_eq!(k.proto, PROTO_TCP);
        assert_eq!(v.count, 2);
    }

    #[test]
    fn shrinking_updates_the_count_before_deleting_slots() {
        let mut planner = Planner::default();
        let two = port(
            "web",
            &[(FrontendKind::ClusterIp, "198.18.128.10")],
            vec![
                endpoint("198.19.1.10", true),
                endpoint("198.19.2.10", false),
            ],
        );
        planner.plan_port(&two.key, Some(&two));
        let one = port(
            "web",
            &[(FrontendKind::ClusterIp, "198.18.128.10")],
            vec![endpoint("198.19.1.10", true)],
        );
        let (ops, _) = planner.plan_port(&one.key, Some(&one));
        let services = position(&ops, is_put_service);
        let deletes = position(&ops, is_delete_backend);
        assert_eq!((services.len(), deletes.len()), (1, 1), "{ops:?}");
        assert!(services[0] < deletes[0]);
        assert!(matches!(
            ops[deletes[0]],
            MapOp::DeleteBackend(BackendKey { slot: 1, .. })
        ));
    }

    #[test]
    fn removal_deletes_the_service_entry_first_and_frees_the_id() {
        let mut planner = Planner::default();
        let web = port(
            "web",
            &[(FrontendKind::ClusterIp, "198.18.128.10")],
            vec![endpoint("198.19.1.10", true)],
        );
        planner.plan_port(&web.key, Some(&web));
        let (ops, _) = planner.plan_port(&web.key, None);
        assert_eq!(position(&ops, is_delete_service), vec![0], "{ops:?}");
        assert_eq!(position(&ops, is_delete_backend), vec![1]);
        assert_eq!(planner.programmed_ports().count(), 0);
        // Within the same sync the retired id is not handed out again (a program may still
        // be reading its slots); from the next sync on it is.
        let (ops, _) = planner.plan_port(&web.key, Some(&web));
        let MapOp::PutBackend(k, _) = ops[0] else {
            unreachable!()
        };
        assert_eq!(k.service_id, 2);
        planner.plan_port(&web.key, None);
        planner.begin_sync();
        let (ops, _) = planner.plan_port(&web.key, Some(&web));
        let MapOp::PutBackend(k, _) = ops[0] else {
            unreachable!()
        };
        assert!(k.service_id == 1 || k.service_id == 2, "{k:?}");
    }

    #[test]
    fn a_failed_write_rolls_back_old_and_new_entries() {
        let mut planner = Planner::default();
        let old = port(
            "web",
            &[(FrontendKind::ClusterIp, "198.18.128.10")],
            vec![endpoint("198.19.1.10", true)],
        );
        planner.plan_port(&old.key, Some(&old));
        let moved = port(
            "web",
            &[(FrontendKind::ClusterIp, "198.18.128.99")],
            vec![endpoint("198.19.1.10", true)],
        );
        planner.plan_port(&moved.key, Some(&moved));
        let ops = planner.rollback(&moved.key);
        let deleted: Vec<u32> = ops
            .iter()
            .filter_map(|op| match op {
                MapOp::DeleteService(k) => Some(u32::from_be(k.addr) & 0xff),
                _ => None,
            })
            .collect();
        assert_eq!(
            deleted,
            vec![10, 99],
            "both the old and the new frontend go: {ops:?}"
        );
        assert_eq!(planner.programmed_ports().count(), 0);
        assert_eq!(planner.owned_frontends().count(), 0);
    }

    #[test]
    fn internal_policy_local_applies_to_cluster_ip_only() {
        let mut planner = Planner::default();
        let mut web = port(
            "web",
            &[
                (FrontendKind::ClusterIp, "198.18.128.10"),
                (FrontendKind::NodePort, "198.18.0.11"),
            ],
            vec![
                endpoint("198.19.1.10", true),
                endpoint("198.19.2.10", false),
            ],
        );
        web.internal_traffic_policy = TrafficPolicy::Local;
        let (ops, _) = planner.plan_port(&web.key, Some(&web));
        let counts: BTreeMap<u32, u16> = ops
            .iter()
            .filter_map(|op| match op {
                MapOp::PutService(k, v) => Some((k.addr, v.count)),
                _ => None,
            })
            .collect();
        let cluster_ip = u32::from(std::net::Ipv4Addr::new(198, 18, 128, 10)).to_be();
        let node_ip = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 11)).to_be();
        assert_eq!(counts[&cluster_ip], 1, "ClusterIP uses the local set");
        assert_eq!(
            counts[&node_ip], 2,
            "local sockets to a NodePort use the cluster set"
        );
    }

    #[test]
    fn no_endpoints_programs_a_zero_count_entry_that_rejects() {
        let mut planner = Planner::default();
        let empty = port(
            "empty",
            &[(FrontendKind::ClusterIp, "198.18.128.11")],
            vec![],
        );
        let (ops, _) = planner.plan_port(&empty.key, Some(&empty));
        assert!(
            matches!(ops.as_slice(), [MapOp::PutService(_, v)] if v.count == 0),
            "{ops:?}"
        );
    }

    #[test]
    fn a_frontend_owned_by_another_port_is_reported_not_overwritten() {
        let mut planner = Planner::default();
        let a = port(
            "a",
            &[(FrontendKind::ExternalIp, "198.18.200.1")],
            vec![endpoint("198.19.1.10", true)],
        );
        let b = port(
            "b",
            &[(FrontendKind::ExternalIp, "198.18.200.1")],
            vec![endpoint("198.19.2.10", true)],
        );
        planner.plan_port(&a.key, Some(&a));
        let (ops, conflicts) = planner.plan_port(&b.key, Some(&b));
        assert!(ops.is_empty(), "{ops:?}");
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].owner, a.key);
        assert!(conflicts[0]
            .to_string()
            .contains("already used by demo/a/TCP"));
    }

    #[test]
    fn backends_keep_their_slots_across_changes() {
        let mut planner = Planner::default();
        let with = |ips: &[&str]| {
            port(
                "web",
                &[(FrontendKind::ClusterIp, "198.18.128.10")],
                ips.iter().map(|ip| endpoint(ip, true)).collect(),
            )
        };
        let abc = with(&["198.19.1.11", "198.19.1.12", "198.19.1.13"]);
        planner.plan_port(&abc.key, Some(&abc));
        // Scale up: only the new slot is written, then the count.
        let abcd = with(&["198.19.1.11", "198.19.1.12", "198.19.1.13", "198.19.1.14"]);
        let (ops, _) = planner.plan_port(&abcd.key, Some(&abcd));
        assert!(
            matches!(ops.as_slice(), [MapOp::PutBackend(k, _), MapOp::PutService(_, v)] if k.slot == 3 && v.count == 4),
            "{ops:?}"
        );
        // Scale down by one in the middle: the last backend fills the hole, the others stay.
        let acd = with(&["198.19.1.11", "198.19.1.13", "198.19.1.14"]);
        let (ops, _) = planner.plan_port(&acd.key, Some(&acd));
        let d = backend_of(&endpoint("198.19.1.14", true)).unwrap();
        assert!(
            matches!(ops.as_slice(),
                [MapOp::PutBackend(k, b), MapOp::PutService(_, v), MapOp::DeleteBackend(gone)]
                if k.slot == 1 && *b == d && v.count == 3 && gone.slot == 3),
            "{ops:?}"
        );
    }
}
