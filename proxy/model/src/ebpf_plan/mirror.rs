//! The planner's copy of what the maps hold, kept exact by applying each operation only once
//! the kernel (or the fake) has accepted it.
use std::collections::{BTreeMap, BTreeSet};

use switchyard_common::{BackendKey, ServiceValue};

use super::{Family, FamilyOp as MapOp, Ranged};

/// Map contents as the planner knows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Mirror<F: Family> {
    pub(super) services: BTreeMap<F::Key, ServiceValue>,
    pub(super) backends: BTreeMap<BackendKey, F::Backend>,
    pub(super) ranges: BTreeSet<Ranged<F>>,
}

impl<F: Family> Mirror<F> {
    /// Records an operation the maps accepted.
    pub(super) fn apply(&mut self, op: &MapOp<F>) {
        match op {
            MapOp::PutBackend(k, v) => drop(self.backends.insert(*k, *v)),
            MapOp::PutSourceRange(k, prefix) => drop(self.ranges.insert((*k, *prefix))),
            MapOp::PutService(k, v) => drop(self.services.insert(*k, *v)),
            MapOp::DeleteService(k) => drop(self.services.remove(k)),
            MapOp::DeleteBackend(k) => drop(self.backends.remove(k)),
            MapOp::DeleteSourceRange(k, prefix) => drop(self.ranges.remove(&(*k, *prefix))),
        }
    }

    /// The operation that puts back what `op` is about to overwrite, when a failed change
    /// must restore it: the previous service entry (or its absence), the previous backend of
    /// a slot. New slots and source ranges are not undone here: deleting them at once could
    /// pull them from under a program that read the failed change's entries, so they are
    /// collected, one sync later, like every slot nothing covers.
    pub(super) fn undo(&self, op: &MapOp<F>) -> Option<MapOp<F>> {
        match op {
            MapOp::PutService(k, _) | MapOp::DeleteService(k) => Some(match self.services.get(k) {
                Some(v) => MapOp::PutService(*k, *v),
                None => MapOp::DeleteService(*k),
            }),
            MapOp::PutBackend(k, _) => self.backends.get(k).map(|v| MapOp::PutBackend(*k, *v)),
            MapOp::DeleteBackend(_) | MapOp::PutSourceRange(..) | MapOp::DeleteSourceRange(..) => {
                None
            }
        }
    }

    /// The slots of backend set `id` from `first` on.
    pub(super) fn slots_from(
        &self,
        id: u32,
        first: u32,
    ) -> impl Iterator<Item = (&BackendKey, &F::Backend)> {
        let from = BackendKey {
            service_id: id,
            slot: first,
        };
        let to = BackendKey {
            service_id: id,
            slot: u32::MAX,
        };
        self.backends.range(from..=to)
    }
}
