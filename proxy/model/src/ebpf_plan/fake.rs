//! In-memory maps for the planner's tests and the fuzz targets: the kernel's semantics that
//! ordering relies on, with optional capacities to simulate full maps and an injectable
//! one-off failure.
use std::collections::{BTreeMap, BTreeSet};

use switchyard_common::{BackendKey, ServiceValue};

use super::{Family, FamilyOp as MapOp, MapWriter, Ranged, V4, V6};

/// Why the fake refused an operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FakeError {
    /// An insert into a map at its capacity.
    #[error("map {0} is full")]
    Full(&'static str),
    /// The failure injected with [`FakeMaps::fail_op`].
    #[error("injected failure")]
    Injected,
}

/// One family's services, backends and source-range maps, as ordered maps.
#[derive(Clone, Debug, Default)]
pub struct FakeFamilyMaps<F: Family> {
    /// `SWY_SERVICES` (`SWY_SERVICES6`).
    pub services: BTreeMap<F::Key, ServiceValue>,
    /// `SWY_BACKENDS` (`SWY_BACKENDS6`).
    pub backends: BTreeMap<BackendKey, F::Backend>,
    /// `SWY_SOURCE_RANGES`.
    pub ranges: BTreeSet<Ranged<F>>,
    /// Entries each map may hold (`None`: unlimited).
    pub capacity: Capacity,
    /// Operations run so far.
    pub ops_run: usize,
    /// Fails the operation with this number (counted in `ops_run`), once.
    pub fail_at: Option<usize>,
}

/// Capacities of the fake maps.
#[derive(Clone, Copy, Debug, Default)]
pub struct Capacity {
    /// Of the services map.
    pub services: Option<usize>,
    /// Of the backends map.
    pub backends: Option<usize>,
    /// Of the source-ranges trie.
    pub ranges: Option<usize>,
}

/// The IPv4 maps.
pub type FakeMaps = FakeFamilyMaps<V4>;
/// The IPv6 maps.
pub type FakeMaps6 = FakeFamilyMaps<V6>;

impl<F: Family> FakeFamilyMaps<F> {
    /// Makes the `n`-th operation from now fail (0: the next one).
    pub fn fail_op(&mut self, n: usize) {
        self.fail_at = Some(self.ops_run + n);
    }

    /// The first slot a service entry counts that the backends map lacks: a program that
    /// read that entry would find no backend. `None` is the state every operation must keep.
    pub fn missing_slot(&self) -> Option<(F::Key, BackendKey)> {
        self.services.iter().find_map(|(key, value)| {
            (0..u32::from(value.count))
                .map(|slot| BackendKey {
                    service_id: value.id,
                    slot,
                })
                .find(|slot| !self.backends.contains_key(slot))
                .map(|slot| (*key, slot))
        })
    }
}

/// Like a `BPF_F_NO_PREALLOC` hash map: an insert needs room, replacing an existing key does
/// not (the kernel swaps elements and frees the old one after a grace period).
fn room(
    len: usize,
    exists: bool,
    capacity: Option<usize>,
    name: &'static str,
) -> Result<(), FakeError> {
    match capacity {
        Some(max) if !exists && len >= max => Err(FakeError::Full(name)),
        _ => Ok(()),
    }
}

impl<F: Family> MapWriter<F> for FakeFamilyMaps<F> {
    type Error = FakeError;

    fn run(&mut self, op: &MapOp<F>) -> Result<(), FakeError> {
        let n = self.ops_run;
        self.ops_run += 1;
        if self.fail_at == Some(n) {
            self.fail_at = None;
            return Err(FakeError::Injected);
        }
        let cap = self.capacity;
        match op {
            MapOp::PutService(k, v) => {
                room(
                    self.services.len(),
                    self.services.contains_key(k),
                    cap.services,
                    "services",
                )?;
                self.services.insert(*k, *v);
            }
            MapOp::PutBackend(k, v) => {
                room(
                    self.backends.len(),
                    self.backends.contains_key(k),
                    cap.backends,
                    "backends",
                )?;
                self.backends.insert(*k, *v);
            }
            MapOp::PutSourceRange(k, p) => {
                room(
                    self.ranges.len(),
                    self.ranges.contains(&(*k, *p)),
                    cap.ranges,
                    "ranges",
                )?;
                self.ranges.insert((*k, *p));
            }
            MapOp::DeleteService(k) => drop(self.services.remove(k)),
            MapOp::DeleteBackend(k) => drop(self.backends.remove(k)),
            MapOp::DeleteSourceRange(k, p) => drop(self.ranges.remove(&(*k, *p))),
        }
        Ok(())
    }
}
