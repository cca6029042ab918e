//! Typed handles of the maps the controller writes, resolved once at start-up, and the one
//! place map operations turn into syscalls.
use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{HashMap, MapData, MapError};
use aya::{Ebpf, Pod};
use switchyard_common::{
    map_names, AffinityKey, AffinityKey6, AffinityValue, AffinityValue6, Backend, Backend6,
    BackendKey, CtKey, CtValue, ServiceKey, ServiceKey6, ServiceName, ServiceValue, SockRevKey,
    SockRevKey6, SockRevValue, SockRevValue6, SourceRangeKey,
};

use super::batch_write::{self, Partial};
use super::plan::{Family, FamilyOp, MapOp, MapOp6, MapWriter, V4, V6};

/// A map that is missing from the object or has another type than this build expects.
#[derive(Debug, thiserror::Error)]
#[error("ebpf mode: map {name}: {source}")]
pub struct MapHandleError {
    /// Map name.
    pub name: &'static str,
    /// Underlying error.
    #[source]
    pub source: MapError,
}

/// A failed map operation.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The map has no room for another entry.
    #[error("map {name} is full ({max} entries); raise its size")]
    Full {
        /// Map name.
        name: &'static str,
        /// Its size.
        max: u32,
    },
    /// The kernel refused the operation for another reason.
    #[error("map {name}: {source}")]
    Kernel {
        /// Map name.
        name: &'static str,
        /// Underlying error.
        #[source]
        source: MapError,
    },
}

impl OpError {
    /// The map that was full, if that was the cause.
    pub fn full_map(&self) -> Option<&'static str> {
        match self {
            OpError::Full { name, .. } => Some(name),
            OpError::Kernel { .. } => None,
        }
    }
}

/// Capacities, for the "full" error.
#[derive(Clone, Copy, Debug)]
pub struct Capacities {
    /// Entries of the services map.
    pub services: u32,
    /// Entries of the backends map.
    pub backends: u32,
    /// Entries of the source-ranges trie.
    pub source_ranges: u32,
}

/// The maps the controller writes or reads back.
pub struct Maps {
    /// `SWY_SERVICES`.
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    /// `SWY_BACKENDS`.
    pub backends: HashMap<MapData, BackendKey, Backend>,
    /// `SWY_CONNTRACK`.
    pub conntrack: HashMap<MapData, CtKey, CtValue>,
    /// `SWY_SOURCE_RANGES`.
    pub source_ranges: LpmTrie<MapData, SourceRangeKey, u8>,
    /// `SWY_SVC_NAMES`: written after each sync, for `switchyard status`.
    pub names: HashMap<MapData, u32, ServiceName>,
    /// `SWY_AFFINITY`, only counted (the programs write it).
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    /// `SWY_SOCK_REVNAT`, only counted (the programs write it).
    pub sock_revnat: HashMap<MapData, SockRevKey, SockRevValue>,
    /// `SWY_SERVICES6`.
    pub services6: HashMap<MapData, ServiceKey6, ServiceValue>,
    /// `SWY_BACKENDS6`.
    pub backends6: HashMap<MapData, BackendKey, Backend6>,
    /// `SWY_AFFINITY6`, only counted.
    pub affinity6: HashMap<MapData, AffinityKey6, AffinityValue6>,
    /// `SWY_SOCK_REVNAT6`, only counted.
    pub sock_revnat6: HashMap<MapData, SockRevKey6, SockRevValue6>,
    /// `SWY_CONNTRACK6`.
    pub conntrack6: HashMap<MapData, switchyard_common::CtKey6, switchyard_common::CtValue6>,
    /// `SWY_SOURCE_RANGES6`.
    pub source_ranges6: LpmTrie<MapData, switchyard_common::SourceRangeKey6, u8>,
    capacities: Capacities,
    /// Cleared when the kernel refuses batch writes: every op then goes alone.
    batching: bool,
}

impl Maps {
    /// Takes the maps out of the loaded object (the programs keep their own references).
    pub fn take(ebpf: &mut Ebpf, capacities: Capacities) -> Result<Self, MapHandleError> {
        Ok(Self {
            services: typed(ebpf, map_names::SERVICES, HashMap::try_from)?,
            backends: typed(ebpf, map_names::BACKENDS, HashMap::try_from)?,
            conntrack: typed(ebpf, map_names::CONNTRACK, HashMap::try_from)?,
            source_ranges: typed(ebpf, map_names::SOURCE_RANGES, LpmTrie::try_from)?,
            names: typed(ebpf, map_names::SERVICE_NAMES, HashMap::try_from)?,
            affinity: typed(ebpf, map_names::AFFINITY, HashMap::try_from)?,
            sock_revnat: typed(ebpf, map_names::SOCK_REVNAT, HashMap::try_from)?,
            services6: typed(ebpf, map_names::SERVICES6, HashMap::try_from)?,
            backends6: typed(ebpf, map_names::BACKENDS6, HashMap::try_from)?,
            affinity6: typed(ebpf, map_names::AFFINITY6, HashMap::try_from)?,
            sock_revnat6: typed(ebpf, map_names::SOCK_REVNAT6, HashMap::try_from)?,
            conntrack6: typed(ebpf, map_names::CONNTRACK6, HashMap::try_from)?,
            source_ranges6: typed(ebpf, map_names::SOURCE_RANGES6, LpmTrie::try_from)?,
            capacities,
            batching: true,
        })
    }

    /// Runs `ops` through `batch` (runs of one kind in one syscall where it can) or one by
    /// one through `single`, stopping at the first failure.
    fn run_grouped<F: Family>(
        &mut self,
        ops: &[FamilyOp<F>],
        batch: impl Fn(&Self, &[FamilyOp<F>]) -> Option<Result<(), BatchFailure>>,
        single: impl Fn(&mut Self, &FamilyOp<F>) -> Result<(), OpError>,
    ) -> (usize, Result<(), OpError>) {
        let mut done = 0;
        while let Some(first) = ops.get(done) {
            let kind = std::mem::discriminant(first);
            let len = ops[done..]
                .iter()
                .take_while(|op| std::mem::discriminant(*op) == kind)
                .count();
            let run = &ops[done..done + len];
            let batched = if len > 1 && self.batching {
                batch(self, run)
            } else {
                None
            };
            match batched {
                Some(Ok(())) => done += len,
                Some(Err((partial, _, _))) if partial.unsupported() => {
                    tracing::debug!(error = %partial.error, "the kernel cannot write maps in batches; writing entry by entry");
                    self.batching = false;
                }
                Some(Err((partial, name, max))) => {
                    let error = MapError::SyscallError(aya::sys::SyscallError {
                        call: "bpf_map_*_batch",
                        io_error: partial.error,
                    });
                    return (done + partial.done, Err(full_or(error, name, max)));
                }
                None => {
                    for op in run {
                        if let Err(e) = single(self, op) {
                            return (done, Err(e));
                        }
                        done += 1;
                    }
                }
            }
        }
        (done, Ok(()))
    }
}

/// A batch that stopped, with the map's name and size for the error.
type BatchFailure = (Partial, &'static str, u32);

/// A run of service or backend writes of one family as one batch (`None`: source ranges,
/// which live in LPM tries without batch operations), with the map's name and size for
/// the error.
fn family_batch<F: Family>(
    run: &[FamilyOp<F>],
    services: (&HashMap<MapData, F::Key, ServiceValue>, &'static str, u32),
    backends: (&HashMap<MapData, BackendKey, F::Backend>, &'static str, u32),
) -> Option<Result<(), BatchFailure>>
where
    F::Key: Pod,
    F::Backend: Pod,
{
    use FamilyOp::*;
    Some(match run.first()? {
        PutBackend(..) => put(
            backends,
            run.iter().filter_map(|op| match op {
                PutBackend(k, v) => Some((*k, *v)),
                _ => None,
            }),
        ),
        PutService(..) => put(
            services,
            run.iter().filter_map(|op| match op {
                PutService(k, v) => Some((*k, *v)),
                _ => None,
            }),
        ),
        DeleteService(..) => delete(
            services,
            run.iter().filter_map(|op| match op {
                DeleteService(k) => Some(*k),
                _ => None,
            }),
        ),
        DeleteBackend(..) => delete(
            backends,
            run.iter().filter_map(|op| match op {
                DeleteBackend(k) => Some(*k),
                _ => None,
            }),
        ),
        PutSourceRange(..) | DeleteSourceRange(..) => return None,
    })
}

/// One batch update of `map` (named, with its size, for the error).
fn put<K: Pod, V: Pod>(
    (map, name, max): (&HashMap<MapData, K, V>, &'static str, u32),
    entries: impl Iterator<Item = (K, V)>,
) -> Result<(), BatchFailure> {
    let (keys, values): (Vec<K>, Vec<V>) = entries.unzip();
    batch_write::update(map, &keys, &values).map_err(|p| (p, name, max))
}

/// One batch delete from `map`.
fn delete<K: Pod, V: Pod>(
    (map, name, max): (&HashMap<MapData, K, V>, &'static str, u32),
    keys: impl Iterator<Item = K>,
) -> Result<(), BatchFailure> {
    let keys: Vec<K> = keys.collect();
    batch_write::delete(map, &keys).map_err(|p| (p, name, max))
}

/// The kernel maps as the planner's writer: one syscall per operation, or per run of
/// operations on one map.
impl MapWriter for Maps {
    type Error = OpError;

    fn run_all(&mut self, ops: &[MapOp]) -> (usize, Result<(), OpError>) {
        let caps = self.capacities;
        self.run_grouped(
            ops,
            |maps, run| {
                family_batch(
                    run,
                    (&maps.services, map_names::SERVICES, caps.services),
                    (&maps.backends, map_names::BACKENDS, caps.backends),
                )
            },
            MapWriter::<V4>::run,
        )
    }

    fn run(&mut self, op: &MapOp) -> Result<(), OpError> {
        let caps = self.capacities;
        match op {
            MapOp::PutBackend(k, v) => self
                .backends
                .insert(k, v, 0)
                .map_err(|e| full_or(e, map_names::BACKENDS, caps.backends)),
            MapOp::PutService(k, v) => self
                .services
                .insert(k, v, 0)
                .map_err(|e| full_or(e, map_names::SERVICES, caps.services)),
            MapOp::DeleteService(k) => ignore_missing(self.services.remove(k), map_names::SERVICES),
            MapOp::PutSourceRange(k, prefix) => self
                .source_ranges
                .insert(&LpmKey::new(*prefix, *k), 1, 0)
                .map_err(|e| full_or(e, map_names::SOURCE_RANGES, caps.source_ranges)),
            MapOp::DeleteSourceRange(k, prefix) => ignore_missing(
                self.source_ranges.remove(&LpmKey::new(*prefix, *k)),
                map_names::SOURCE_RANGES,
            ),
            MapOp::DeleteBackend(k) => ignore_missing(self.backends.remove(k), map_names::BACKENDS),
        }
    }
}

/// The IPv6 maps as the IPv6 planner's writer.
impl MapWriter<V6> for Maps {
    type Error = OpError;

    fn run_all(&mut self, ops: &[MapOp6]) -> (usize, Result<(), OpError>) {
        let caps = self.capacities;
        self.run_grouped(
            ops,
            |maps, run| {
                family_batch(
                    run,
                    (&maps.services6, map_names::SERVICES6, caps.services),
                    (&maps.backends6, map_names::BACKENDS6, caps.backends),
                )
            },
            MapWriter::<V6>::run,
        )
    }

    fn run(&mut self, op: &MapOp6) -> Result<(), OpError> {
        let caps = self.capacities;
        match op {
            MapOp6::PutBackend(k, v) => self
                .backends6
                .insert(k, v, 0)
                .map_err(|e| full_or(e, map_names::BACKENDS6, caps.backends)),
            MapOp6::PutService(k, v) => self
                .services6
                .insert(k, v, 0)
                .map_err(|e| full_or(e, map_names::SERVICES6, caps.services)),
            MapOp6::DeleteService(k) => {
                ignore_missing(self.services6.remove(k), map_names::SERVICES6)
            }
            MapOp6::DeleteBackend(k) => {
                ignore_missing(self.backends6.remove(k), map_names::BACKENDS6)
            }
            MapOp6::PutSourceRange(k, prefix) => self
                .source_ranges6
                .insert(&LpmKey::new(*prefix, *k), 1, 0)
                .map_err(|e| full_or(e, map_names::SOURCE_RANGES6, caps.source_ranges)),
            MapOp6::DeleteSourceRange(k, prefix) => ignore_missing(
                self.source_ranges6.remove(&LpmKey::new(*prefix, *k)),
                map_names::SOURCE_RANGES6,
            ),
        }
    }
}

fn typed<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    convert: impl FnOnce(aya::maps::Map) -> Result<T, MapError>,
) -> Result<T, MapHandleError> {
    let map = ebpf.take_map(name).ok_or(MapHandleError {
        name,
        source: MapError::InvalidName { name: name.into() },
    })?;
    convert(map).map_err(|source| MapHandleError { name, source })
}

fn full_or(error: MapError, name: &'static str, max: u32) -> OpError {
    if let MapError::SyscallError(e) = &error {
        // Hash maps say E2BIG when full, LPM tries ENOSPC.
        if matches!(
            e.io_error.raw_os_error(),
            Some(libc::E2BIG) | Some(libc::ENOSPC)
        ) {
            return OpError::Full { name, max };
        }
    }
    OpError::Kernel {
        name,
        source: error,
    }
}

/// Deleting what is already gone is success.
pub fn ignore_missing(result: Result<(), MapError>, name: &'static str) -> Result<(), OpError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other.map_err(|source| OpError::Kernel { name, source }),
    }
}
