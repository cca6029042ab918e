//! What changed between two desired states, per service port.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::incremental::Before;
use super::objects::ObjectKey;
use super::service_port::{DesiredState, ServicePortKey};

/// What changed between two desired states, per service port. Each list is sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateDiff {
    /// Ports only in the new state.
    pub added: Vec<ServicePortKey>,
    /// Ports only in the old state.
    pub removed: Vec<ServicePortKey>,
    /// Ports in both states whose contents differ (any field, endpoints included).
    pub changed: Vec<ServicePortKey>,
}

impl StateDiff {
    /// Compares two states; the result is deterministic (keys in sorted order).
    pub fn between(old: &DesiredState, new: &DesiredState) -> StateDiff {
        let mut diff = StateDiff::default();
        for (key, new_port) in &new.ports {
            match old.ports.get(key) {
                None => diff.added.push(key.clone()),
                Some(old_port) if !Arc::ptr_eq(old_port, new_port) && old_port != new_port => {
                    diff.changed.push(key.clone())
                }
                Some(_) => {}
            }
        }
        diff.removed = old
            .ports
            .keys()
            .filter(|key| !new.ports.contains_key(*key))
            .cloned()
            .collect();
        diff
    }

    /// The diff of an incremental update: `before` holds what each touched port held
    /// ([`crate::ModelCache::update`]), `now` the state after it.
    pub fn from_before(before: &Before, now: &DesiredState) -> StateDiff {
        let mut diff = StateDiff::default();
        for (key, old) in before {
            match (old, now.ports.get(key)) {
                (None, Some(_)) => diff.added.push(key.clone()),
                (Some(_), None) => diff.removed.push(key.clone()),
                (Some(old), Some(new)) if !Arc::ptr_eq(old, new) && old != new => {
                    diff.changed.push(key.clone())
                }
                _ => {}
            }
        }
        diff
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// Whether `key` is in any of the lists.
    pub fn touches(&self, key: &ServicePortKey) -> bool {
        [&self.added, &self.removed, &self.changed]
            .iter()
            .any(|list| list.binary_search(key).is_ok())
    }

    /// Services (namespace/name) touched by this diff.
    pub fn services(&self) -> BTreeSet<ObjectKey> {
        self.added
            .iter()
            .chain(&self.removed)
            .chain(&self.changed)
            .map(ServicePortKey::service)
            .collect()
    }
}
