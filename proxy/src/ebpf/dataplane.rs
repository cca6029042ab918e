//! Loads the programs, attaches them, and applies planned map operations.
use std::fs::File;
use std::path::PathBuf;

use aya::maps::{HashMap, MapData, MapError};
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use aya::{Ebpf, EbpfLoader};
use switchyard_common::{map_names, program_names, Backend, BackendKey, ServiceKey, ServiceValue};

use super::object::embedded_object;
use super::plan::{MapOp, Planner};
use crate::dataplane::{Dataplane, PortError, SyncReport};
use crate::model::{DesiredState, ServicePortKey, StateDiff};

/// Where and how big.
#[derive(Clone, Debug)]
pub struct EbpfConfig {
    /// cgroup v2 directory the socket programs attach to.
    pub cgroup_path: PathBuf,
    /// Entries of the services map.
    pub services_max: u32,
    /// Entries of the backends map.
    pub backends_max: u32,
}

/// Why ebpf mode cannot start.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// The binary was built with plain cargo, not `cargo xtask build`.
    #[error("ebpf mode: this switchyard binary was built without the eBPF object; build it with `cargo xtask build`")]
    NoObject,
    /// The kernel refused the object or a map.
    #[error("ebpf mode: the kernel cannot load Switchyard's programs (needs BPF, BTF and cgroup v2 socket hooks): {0}")]
    Load(#[source] aya::EbpfError),
    /// A program is missing from the object or failed verification.
    #[error("ebpf mode: program {name}: {source}")]
    Program {
        /// Program name.
        name: &'static str,
        /// Underlying error.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// The object lacks a program.
    #[error("ebpf mode: program {0} is missing from the object")]
    MissingProgram(&'static str),
    /// The cgroup directory cannot be opened.
    #[error("--cgroup-path {path}: {source}")]
    Cgroup {
        /// Directory.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A map is missing or has the wrong type.
    #[error("ebpf mode: map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// Underlying error.
        #[source]
        source: MapError,
    },
}

/// The loaded programs and their maps.
pub struct EbpfDataplane {
    // Owns programs, maps and the cgroup attachment; dropping it detaches everything.
    ebpf: Ebpf,
    planner: Planner,
    config: EbpfConfig,
}

impl EbpfDataplane {
    /// Loads the embedded object and attaches the socket programs to the cgroup.
    pub fn start(config: EbpfConfig) -> Result<Self, EbpfError> {
        let object = embedded_object().ok_or(EbpfError::NoObject)?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_names::SERVICES, config.services_max)
            .map_max_entries(map_names::BACKENDS, config.backends_max)
            .load(object)
            .map_err(EbpfError::Load)?;
        let cgroup = File::open(&config.cgroup_path).map_err(|source| EbpfError::Cgroup {
            path: config.cgroup_path.clone(),
            source,
        })?;
        let name = program_names::CONNECT4;
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or(EbpfError::MissingProgram(name))?
            .try_into()
            .map_err(|source| EbpfError::Program { name, source })?;
        program
            .load()
            .map_err(|source| EbpfError::Program { name, source })?;
        // On kernels with BPF links (>= 5.7) a link never excludes other programs on the
        // cgroup, and link_create rejects the ALLOW_MULTI flag, so the default mode is right.
        program
            .attach(&cgroup, CgroupAttachMode::Single)
            .map_err(|source| EbpfError::Program { name, source })?;
        // Both maps must exist with the right types before the first sync.
        services_map(&mut ebpf)?;
        backends_map(&mut ebpf)?;
        Ok(Self {
            ebpf,
            planner: Planner::default(),
            config,
        })
    }

    fn write_port(&mut self, key: &ServicePortKey, state: &DesiredState) -> Result<(), String> {
        let (ops, conflicts) = self.planner.plan_port(key, state.ports.get(key));
        for conflict in &conflicts {
            tracing::warn!("{conflict}");
        }
        let result = self.run_ops(&ops);
        if let Err(message) = &result {
            // Leave no half-written service behind: drop the port entirely; the next full sync retries.
            let (cleanup, _) = self.planner.plan_port(key, None);
            let _ = self.run_ops(&cleanup);
            return Err(message.clone());
        }
        result
    }

    fn run_ops(&mut self, ops: &[MapOp]) -> Result<(), String> {
        for op in ops {
            match op {
                MapOp::PutBackend(k, v) => {
                    let mut map = backends_map(&mut self.ebpf).map_err(|e| e.to_string())?;
                    map.insert(k, v, 0)
                        .map_err(|e| full_or(e, map_names::BACKENDS, self.config.backends_max))?;
                }
                MapOp::PutService(k, v) => {
                    let mut map = services_map(&mut self.ebpf).map_err(|e| e.to_string())?;
                    map.insert(k, v, 0)
                        .map_err(|e| full_or(e, map_names::SERVICES, self.config.services_max))?;
                }
                MapOp::DeleteService(k) => {
                    let mut map = services_map(&mut self.ebpf).map_err(|e| e.to_string())?;
                    ignore_missing(map.remove(k))?;
                }
                MapOp::DeleteBackend(k) => {
                    let mut map = backends_map(&mut self.ebpf).map_err(|e| e.to_string())?;
                    ignore_missing(map.remove(k))?;
                }
            }
        }
        Ok(())
    }

    fn write_ports<'a>(
        &mut self,
        state: &DesiredState,
        keys: impl Iterator<Item = &'a ServicePortKey>,
    ) -> SyncReport {
        let mut report = SyncReport::default();
        for key in keys {
            match self.write_port(key, state) {
                Ok(()) => report.ports_written += 1,
                Err(message) => report.errors.push(PortError {
                    port: key.clone(),
                    message,
                }),
            }
        }
        report
    }
}

impl Dataplane for EbpfDataplane {
    fn apply(&mut self, state: &DesiredState, diff: &StateDiff) -> SyncReport {
        // Removals first so a frontend moving between services is free when its new owner is written.
        let keys: Vec<ServicePortKey> = diff
            .removed
            .iter()
            .chain(&diff.changed)
            .chain(&diff.added)
            .cloned()
            .collect();
        self.write_ports(state, keys.iter())
    }

    fn full_sync(&mut self, state: &DesiredState) -> SyncReport {
        let mut keys: Vec<ServicePortKey> = self
            .planner
            .programmed_ports()
            .filter(|k| !state.ports.contains_key(*k))
            .cloned()
            .collect();
        keys.extend(state.ports.keys().cloned());
        self.write_ports(state, keys.iter())
    }
}

fn services_map(
    ebpf: &mut Ebpf,
) -> Result<HashMap<&mut MapData, ServiceKey, ServiceValue>, EbpfError> {
    let name = map_names::SERVICES;
    let map = ebpf.map_mut(name).ok_or(EbpfError::Map {
        name,
        source: MapError::InvalidName { name: name.into() },
    })?;
    HashMap::try_from(map).map_err(|source| EbpfError::Map { name, source })
}

fn backends_map(ebpf: &mut Ebpf) -> Result<HashMap<&mut MapData, BackendKey, Backend>, EbpfError> {
    let name = map_names::BACKENDS;
    let map = ebpf.map_mut(name).ok_or(EbpfError::Map {
        name,
        source: MapError::InvalidName { name: name.into() },
    })?;
    HashMap::try_from(map).map_err(|source| EbpfError::Map { name, source })
}

fn full_or(error: MapError, name: &str, max: u32) -> String {
    if let MapError::SyscallError(e) = &error {
        if e.io_error.raw_os_error() == Some(libc::E2BIG) {
            return format!("map {name} is full ({max} entries); raise its size");
        }
    }
    format!("map {name}: {error}")
}

fn ignore_missing(result: Result<(), MapError>) -> Result<(), String> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other.map_err(|e| e.to_string()),
    }
}
