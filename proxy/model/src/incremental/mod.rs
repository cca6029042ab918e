//! The desired state kept up to date object by object: [`ModelCache`].
//!
//! A sync on a node with 10,000 services used to rebuild every service port from its
//! objects and compare all of them with the last state, about 150 ms of one core for a
//! one-endpoint change. The cache recomputes only the services whose objects the source
//! replaced (sources hand out `Arc`s and replace them on change, so "unchanged" is a
//! pointer comparison), re-runs the frontend conflict rules only on ports that share a
//! destination, and reports which ports' values changed. Its result is the same as a
//! fresh [`compute_desired_state`](crate::compute_desired_state) (a property test checks it).

mod claims;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::build::{service_ports, slice_owner, ServiceResult};
use crate::conflicts::{self, CreationTimes};
use crate::map_diff::differing_keys;
use crate::node::{self, NodeContext};
use crate::objects::{ClusterObjects, ObjectKey};
use crate::service_port::{DesiredState, ServicePort, ServicePortKey};
use crate::warnings::InputWarning;
use claims::Claims;

/// What the ports an update touched held before it: `None` for a port that did not exist.
/// Ports not listed kept the very same value.
pub type Before = BTreeMap<ServicePortKey, Option<Arc<ServicePort>>>;

/// A Service as last read, and what it yielded.
#[derive(Debug)]
struct CachedService {
    object: Arc<Service>,
    result: ServiceResult,
}

/// An EndpointSlice as last read, and whom it belongs to.
#[derive(Debug)]
struct CachedSlice {
    object: Arc<EndpointSlice>,
    owner: Option<ObjectKey>,
    warning: Option<InputWarning>,
}

/// The desired state of one node, updated incrementally from successive [`ClusterObjects`].
#[derive(Debug, Default)]
pub struct ModelCache {
    /// The node context and zone label the cached results were computed for.
    node: Option<(NodeContext, String)>,
    services: BTreeMap<ObjectKey, CachedService>,
    slices: BTreeMap<ObjectKey, CachedSlice>,
    /// Slice keys per owning service.
    slices_of: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
    endpoints: BTreeMap<ObjectKey, Arc<Endpoints>>,
    claims: Claims,
    /// Ports the conflict rules ran on in the last update.
    contested: BTreeSet<ServicePortKey>,
    conflict_warnings: Vec<InputWarning>,
    /// Bumped whenever an update may have changed [`ModelCache::warnings`].
    warnings_generation: u64,
    state: DesiredState,
}

impl ModelCache {
    /// Brings the state up to date with `objects` as seen from `node`; returns what the
    /// changed ports held before.
    pub fn update(&mut self, objects: &ClusterObjects, node: &NodeContext) -> Before {
        let mut dirty: BTreeSet<ObjectKey> = BTreeSet::new();
        let zone = node::zone_label(objects, node);
        if self
            .node
            .as_ref()
            .is_none_or(|(n, z)| n != node || z != zone)
        {
            // Every result depends on the node (its name, addresses, families, zone).
            dirty.extend(self.services.keys().cloned());
            dirty.extend(objects.services.keys().cloned());
            self.node = Some((node.clone(), zone.to_owned()));
        }
        self.read_slices(objects, &mut dirty);
        for key in changed_keys(&objects.endpoints, &self.endpoints, |e| e) {
            match objects.endpoints.get(&key) {
                Some(e) => drop(self.endpoints.insert(key.clone(), e.clone())),
                None => drop(self.endpoints.remove(&key)),
            }
            dirty.insert(key);
        }
        dirty.extend(changed_keys(&objects.services, &self.services, |c| {
            &c.object
        }));

        let mut before = Before::new();
        for key in &dirty {
            self.recompute(key, objects, node, &mut before);
        }
        self.resolve_conflicts(&mut before);
        // A port rewritten to an equal value did not change.
        before.retain(|key, old| {
            let now = self.state.ports.get(key);
            match (old.as_ref(), now) {
                (None, None) => false,
                (Some(old), Some(now)) => !Arc::ptr_eq(old, now) && old != now,
                _ => true,
            }
        });
        before
    }

    /// Follows the source's slices: a changed slice dirties the service it belonged to and
    /// the one it belongs to now.
    fn read_slices(&mut self, objects: &ClusterObjects, dirty: &mut BTreeSet<ObjectKey>) {
        for key in changed_keys(&objects.endpoint_slices, &self.slices, |c| &c.object) {
            if let Some(old) = self.slices.remove(&key) {
                self.note_warnings(old.warning.is_some());
                if let Some(owner) = old.owner {
                    if let Some(set) = self.slices_of.get_mut(&owner) {
                        set.remove(&key);
                        if set.is_empty() {
                            self.slices_of.remove(&owner);
                        }
                    }
                    dirty.insert(owner);
                }
            }
            let Some(object) = objects.endpoint_slices.get(&key) else {
                continue;
            };
            let (owner, warning) = slice_owner(&key, object);
            self.note_warnings(warning.is_some());
            if let Some(owner) = &owner {
                self.slices_of
                    .entry(owner.clone())
                    .or_default()
                    .insert(key.clone());
                dirty.insert(owner.clone());
            }
            self.slices.insert(
                key,
                CachedSlice {
                    object: object.clone(),
                    owner,
                    warning,
                },
            );
        }
    }

    /// Recomputes one service from its objects (or drops it), replacing its unresolved ports
    /// in the state and in the claims.
    fn recompute(
        &mut self,
        key: &ObjectKey,
        objects: &ClusterObjects,
        node: &NodeContext,
        before: &mut Before,
    ) {
        if let Some(old) = self.services.remove(key) {
            self.note_warnings(!old.result.warnings.is_empty());
            for port in &old.result.ports {
                self.claims.remove(port);
                let held = self.state.ports.remove(&port.key);
                before.entry(port.key.clone()).or_insert(held);
            }
        }
        let Some(object) = objects.services.get(key) else {
            return;
        };
        let slices: Vec<(&ObjectKey, &EndpointSlice)> = self
            .slices_of
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k).map(|c| (k, &*c.object)))
            .collect();
        let legacy = self.endpoints.get(key).map(|e| &**e);
        let zone = self.node.as_ref().map_or("", |(_, zone)| zone.as_str());
        let result = service_ports(key, object, &slices, legacy, node, zone);
        self.note_warnings(!result.warnings.is_empty());
        for port in &result.ports {
            self.claims.add(port);
            let held = self.state.ports.insert(port.key.clone(), port.clone());
            before.entry(port.key.clone()).or_insert(held);
        }
        self.services.insert(
            key.clone(),
            CachedService {
                object: object.clone(),
                result,
            },
        );
    }

    /// The unresolved port of `key`, as its service yielded it.
    fn unresolved(&self, key: &ServicePortKey) -> Option<&Arc<ServicePort>> {
        self.services
            .get(&key.service())?
            .result
            .ports
            .iter()
            .find(|p| p.key == *key)
    }

    /// Runs the conflict rules on the ports that share a claim (and restores the ports that
    /// no longer do), writing the outcome into the state.
    fn resolve_conflicts(&mut self, before: &mut Before) {
        let contested = self.claims.contested_ports();
        let mut subset = DesiredState::default();
        let mut created = CreationTimes::new();
        for key in &contested {
            if let Some(port) = self.unresolved(key) {
                subset.ports.insert(key.clone(), port.clone());
                let service = key.service();
                let time = self
                    .services
                    .get(&service)
                    .and_then(|s| s.result.created.clone());
                created.insert(service, time);
            }
        }
        let mut warnings = Vec::new();
        conflicts::resolve(&mut subset, &created, &mut warnings);
        if warnings != self.conflict_warnings {
            self.conflict_warnings = warnings;
            self.note_warnings(true);
        }

        let previous = std::mem::replace(&mut self.contested, contested);
        for key in previous.union(&self.contested) {
            let now = if self.contested.contains(key) {
                subset.ports.get(key).cloned()
            } else {
                self.unresolved(key).cloned()
            };
            let held = match now {
                Some(port) => self.state.ports.insert(key.clone(), port),
                None => self.state.ports.remove(key),
            };
            before.entry(key.clone()).or_insert(held);
        }
    }

    /// The desired state as of the last update.
    pub fn state(&self) -> &DesiredState {
        &self.state
    }

    /// The desired state, consuming the cache.
    pub fn into_state(self) -> DesiredState {
        self.state
    }

    /// Changes whenever [`ModelCache::warnings`] may have changed, so that a caller can skip
    /// collecting them after an update that touched no object with a warning.
    pub fn warnings_generation(&self) -> u64 {
        self.warnings_generation
    }

    fn note_warnings(&mut self, touched: bool) {
        if touched {
            self.warnings_generation += 1;
        }
    }

    /// Problems found in the input of the last update (sorted, deduplicated); each object
    /// named was skipped in whole or in the part the warning names.
    pub fn warnings(&self) -> Vec<InputWarning> {
        let mut warnings: Vec<InputWarning> = self
            .services
            .values()
            .flat_map(|s| s.result.warnings.iter().cloned())
            .chain(self.slices.values().filter_map(|s| s.warning.clone()))
            .chain(self.conflict_warnings.iter().cloned())
            .collect();
        warnings.sort();
        warnings.dedup();
        warnings
    }
}

/// Keys whose entry in the source's map is not the object the cache last read (`held`
/// returns it from a cached entry): sources replace the `Arc` of a changed object.
fn changed_keys<K: Ord + Clone, V, C>(
    now: &BTreeMap<K, Arc<V>>,
    cached: &BTreeMap<K, C>,
    held: impl Fn(&C) -> &Arc<V>,
) -> Vec<K> {
    let shared = |object: &Arc<V>, entry: &C| Arc::ptr_eq(object, held(entry));
    differing_keys(now, cached, shared, shared)
        .into_iter()
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests;
