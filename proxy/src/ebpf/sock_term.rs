//! Socket termination: connected UDP sockets follow the removal of their backend.
//!
//! connect4 translates a connected UDP socket once, so without this the socket keeps sending
//! to a backend that left its service, forever. After a sync that removed (frontend, backend)
//! pairs of UDP ports, [`SockTerminator::terminate`] writes them to `SWY_SOCK_TERM` and runs
//! the `iter/udp` program (kernel side: `proxy-ebpf/src/sock_term.rs`), which destroys every
//! connected socket that `SWY_SOCK_REVNAT` says was translated through one of them
//! (`bpf_sock_destroy`: the application's next call fails with ECONNABORTED, and its next
//! connect() is translated to a live backend). Cilium does the same. IPv6 sockets to IPv6
//! services have their own pairs (`SWY_SOCK_TERM6`, checked against `SWY_SOCK_REVNAT6`);
//! dual-stack sockets to v4-mapped addresses use the IPv4 ones, as connect6 does.
//!
//! A socket iterator walks only the sockets of the network namespace that created it (the
//! kernel binds the iterator to `current`'s namespace at `BPF_ITER_CREATE`, and its UDP walk
//! skips sockets of other namespaces), so one iterator is created in our own namespace and
//! one in each namespace of the processes in our cgroup subtree (the only ones whose sockets
//! connect4 translates), entered with setns(2) on a thread of its own.
//!
//! The object's call to the kfunc is an undefined symbol (bpf-linker emits no `.ksyms` BTF
//! for it, and aya 0.14 resolves no kfunc calls: it would fail the whole object as a call to
//! an unknown function). [`prepare_object`] turns it into a kfunc call to the running
//! kernel's `bpf_sock_destroy` (its BTF id) before the object is loaded, as libbpf does.
//! On kernels without that kfunc (< 6.5) the call is neutralised, the program is never
//! loaded, and connected UDP sockets behave as before (a warning says so once).
use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ::object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};
use aya::maps::{HashMap, MapData, MapError};
use aya::programs::{Iter, ProgramError};
use aya::{Btf, Ebpf};
use aya_obj::btf::BtfKind;
use switchyard_common::{
    map_names, program_names, SockTermKey, SockTermKey6, DEFAULT_SOCK_TERM_MAX,
};

/// The kernel function the iterator calls.
const KFUNC: &str = "bpf_sock_destroy";
/// `BPF_JMP | BPF_CALL`.
const CALL_OPCODE: u8 = 0x85;
/// `BPF_PSEUDO_KFUNC_CALL`: the call's imm is a BTF id of the kernel (src_reg 2).
const PSEUDO_KFUNC_CALL: u8 = 2;

/// Why sockets cannot be destroyed here, or a run failed.
#[derive(Debug, thiserror::Error)]
pub enum SockTermError {
    /// No kernel BTF to find the kfunc in.
    #[error("the kernel exposes no BTF (/sys/kernel/btf/vmlinux): {0}")]
    NoBtf(#[source] aya::BtfError),
    /// The kernel predates the kfunc.
    #[error("the kernel has no bpf_sock_destroy kfunc (Linux >= 6.5 has it)")]
    NoKfunc,
    /// The object is not what this build expects.
    #[error("eBPF object: {0}")]
    Object(String),
    /// The iterator program could not be loaded or attached.
    #[error("program {}: {source}", program_names::SOCK_TERM_UDP4)]
    Program {
        /// Underlying error.
        #[source]
        source: ProgramError,
    },
    /// A filter map is missing or refused a write.
    #[error("map {name}: {source}")]
    Map {
        /// The map's name.
        name: &'static str,
        /// Underlying error.
        #[source]
        source: MapError,
    },
    /// The iterator's thread died.
    #[error("the socket iterator's thread panicked")]
    Thread,
}

/// The embedded object with its kfunc call resolved for this kernel (or neutralised), in
/// 8-byte aligned memory as the ELF parser needs, and what that means for termination.
pub struct PreparedObject {
    words: Vec<u64>,
    len: usize,
    /// Whether the kfunc was found in the kernel's BTF (`Ok` too when there was no BTF to
    /// look in: the caller holds that error).
    pub support: Result<(), SockTermError>,
}

impl PreparedObject {
    /// The object's bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: a u64 buffer of at least `len` bytes viewed as bytes (u8 has no alignment).
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

/// Copies `object` and points its calls to `bpf_sock_destroy` at the running kernel's kfunc,
/// found in `btf` (the kernel's, parsed once for this and the loader: ~18 MiB each).
pub fn prepare_object(object: &[u8], btf: Option<&Btf>) -> PreparedObject {
    let mut words = vec![0u64; object.len().div_ceil(8)];
    let len = object.len();
    // SAFETY: as in `bytes`, mutably; the buffer is ours.
    let bytes = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), len) };
    bytes.copy_from_slice(object);
    let found = btf.map(kfunc_btf_id).unwrap_or(Ok(0));
    // With no kfunc the call still has to become something aya does not try to link; the
    // program holding it is then never loaded.
    let id = found.as_ref().copied().unwrap_or(0);
    let support = match patch_kfunc_calls(bytes, id) {
        Ok(0) => Err(SockTermError::Object(format!("no call to {KFUNC}"))),
        Ok(_) => found.map(|_| ()),
        Err(e) => Err(e),
    };
    PreparedObject {
        words,
        len,
        support,
    }
}

/// The id of the kfunc in the kernel's `btf`.
fn kfunc_btf_id(btf: &Btf) -> Result<u32, SockTermError> {
    btf.id_by_type_name_kind(KFUNC, BtfKind::Func)
        .map_err(|_| SockTermError::NoKfunc)
}

/// Rewrites every call instruction relocated against [`KFUNC`] into a kfunc call to BTF id
/// `id`; returns how many it rewrote.
fn patch_kfunc_calls(bytes: &mut [u8], id: u32) -> Result<usize, SockTermError> {
    let offsets: Vec<usize> = {
        let file =
            ::object::File::parse(&*bytes).map_err(|e| SockTermError::Object(e.to_string()))?;
        let mut offsets = Vec::new();
        for section in file.sections() {
            let Some((start, _)) = section.file_range() else {
                continue;
            };
            for (offset, relocation) in section.relocations() {
                let RelocationTarget::Symbol(index) = relocation.target() else {
                    continue;
                };
                let is_kfunc = file
                    .symbol_by_index(index)
                    .ok()
                    .and_then(|s| s.name().ok().map(|n| n == KFUNC))
                    .unwrap_or(false);
                if is_kfunc {
                    offsets.push((start + offset) as usize);
                }
            }
        }
        offsets
    };
    for &at in &offsets {
        let insn = bytes
            .get_mut(at..at + 8)
            .filter(|insn| insn[0] == CALL_OPCODE)
            .ok_or_else(|| {
                SockTermError::Object(format!("relocation of {KFUNC} at byte {at} is no call"))
            })?;
        // dst_reg in the low nibble stays 0; src_reg (high nibble) says "kernel function".
        insn[1] = (PSEUDO_KFUNC_CALL << 4) | (insn[1] & 0x0f);
        insn[4..8].copy_from_slice(&id.to_le_bytes());
    }
    Ok(offsets.len())
}

/// What one termination run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Terminated {
    /// Sockets destroyed.
    pub sockets: u64,
    /// Network namespaces walked.
    pub namespaces: usize,
    /// Namespaces that could not be entered or walked (e.g. gone meanwhile).
    pub failed: usize,
    /// Processes of the cgroup whose namespace we may not open or enter (no CAP_SYS_PTRACE
    /// for another user's `/proc/<pid>/ns/net`, no CAP_SYS_ADMIN for setns) or cannot see
    /// (outside our PID namespace: `cgroup.procs` shows them as 0). Their sockets stay.
    pub unreachable: usize,
}

/// The loaded iterator and its filter maps.
pub struct SockTerminator {
    filter: HashMap<MapData, SockTermKey, u8>,
    filter6: HashMap<MapData, SockTermKey6, u8>,
    cgroup: PathBuf,
}

/// The filter map `name`, taken out of `ebpf`.
fn filter_map<K: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, u8>, SockTermError> {
    let map = ebpf.take_map(name).ok_or(SockTermError::Map {
        name,
        source: MapError::InvalidName {
            name: name.to_owned(),
        },
    })?;
    HashMap::try_from(map).map_err(|source| SockTermError::Map { name, source })
}

/// Writes `batch` into `filter`.
fn fill<K: aya::Pod>(
    filter: &mut HashMap<MapData, K, u8>,
    name: &'static str,
    batch: &[K],
) -> Result<(), SockTermError> {
    batch
        .iter()
        .try_for_each(|k| filter.insert(k, 0, 0))
        .map_err(|source| SockTermError::Map { name, source })
}

/// Removes `batch` from `filter`. Best effort: a leftover pair only matches sockets of a
/// backend that is gone.
fn drain<K: aya::Pod>(filter: &mut HashMap<MapData, K, u8>, batch: &[K]) {
    for key in batch {
        let _ = filter.remove(key);
    }
}

impl SockTerminator {
    /// Loads the iterator program against `btf` and takes the filter map out of `ebpf`.
    pub fn load(ebpf: &mut Ebpf, btf: &Btf, cgroup: &Path) -> Result<Self, SockTermError> {
        let program = iter_program(ebpf)?;
        program
            .load("udp", btf)
            .map_err(|source| SockTermError::Program { source })?;
        Ok(Self {
            filter: filter_map(ebpf, map_names::SOCK_TERM)?,
            filter6: filter_map(ebpf, map_names::SOCK_TERM6)?,
            cgroup: cgroup.to_owned(),
        })
    }

    /// Destroys the connected UDP sockets translated through any of `pairs` (IPv4 services,
    /// also reached through v4-mapped addresses) or `pairs6` (IPv6 services), in our network
    /// namespace and in every namespace of our cgroup's processes. The filters are emptied
    /// again afterwards, also when a run fails.
    pub fn terminate(
        &mut self,
        ebpf: &mut Ebpf,
        pairs: &BTreeSet<SockTermKey>,
        pairs6: &BTreeSet<SockTermKey6>,
    ) -> Result<Terminated, SockTermError> {
        let pairs: Vec<SockTermKey> = pairs.iter().copied().collect();
        let pairs6: Vec<SockTermKey6> = pairs6.iter().copied().collect();
        let batch = DEFAULT_SOCK_TERM_MAX as usize;
        let mut batches = pairs.chunks(batch);
        let mut batches6 = pairs6.chunks(batch);
        let mut total = Terminated::default();
        // One run per batch of each family at once: a sync ending IPv4 and IPv6 pairs walks
        // the namespaces once.
        loop {
            let (b4, b6) = (
                batches.next().unwrap_or(&[]),
                batches6.next().unwrap_or(&[]),
            );
            if b4.is_empty() && b6.is_empty() {
                break;
            }
            let written = fill(&mut self.filter, map_names::SOCK_TERM, b4)
                .and_then(|()| fill(&mut self.filter6, map_names::SOCK_TERM6, b6));
            let run = written.and_then(|()| walk_namespaces(iter_program(ebpf)?, &self.cgroup));
            drain(&mut self.filter, b4);
            drain(&mut self.filter6, b6);
            let run = run?;
            total.sockets += run.sockets;
            total.namespaces = total.namespaces.max(run.namespaces);
            total.failed = total.failed.max(run.failed);
            total.unreachable = total.unreachable.max(run.unreachable);
        }
        Ok(total)
    }
}

fn iter_program(ebpf: &mut Ebpf) -> Result<&mut Iter, SockTermError> {
    ebpf.program_mut(program_names::SOCK_TERM_UDP4)
        .ok_or(SockTermError::Program {
            source: ProgramError::UnexpectedProgramType,
        })?
        .try_into()
        .map_err(|source| SockTermError::Program { source })
}

/// Runs the iterator once in our namespace and once in each other namespace of `cgroup`'s
/// processes, on a thread of its own: setns(2) changes the calling thread only, and that
/// thread ends with the run instead of going back.
fn walk_namespaces(program: &mut Iter, cgroup: &Path) -> Result<Terminated, SockTermError> {
    let (namespaces, unreachable) = cgroup_namespaces(cgroup);
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let mut done = Terminated {
                    unreachable,
                    ..Terminated::default()
                };
                let mut run = |done: &mut Terminated| match iterate(program) {
                    Ok(n) => {
                        done.sockets += n;
                        done.namespaces += 1;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "socket iterator run failed");
                        done.failed += 1;
                    }
                };
                run(&mut done);
                for (pid, ns) in namespaces {
                    match nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET) {
                        Ok(()) => {}
                        Err(nix::errno::Errno::EPERM) => {
                            done.unreachable += 1;
                            continue;
                        }
                        Err(e) => {
                            tracing::debug!(pid, error = %e, "cannot enter a network namespace");
                            done.failed += 1;
                            continue;
                        }
                    }
                    run(&mut done);
                }
                done
            })
            .join()
            .map_err(|_| SockTermError::Thread)
    })
}

/// One iterator over the current thread's namespace: the number of sockets destroyed (the
/// program writes each one's 8-byte cookie).
fn iterate(program: &mut Iter) -> Result<u64, String> {
    let id = program.attach().map_err(|e| e.to_string())?;
    let link = program.take_link(id).map_err(|e| e.to_string())?;
    let mut file = link.into_file().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    file.read_to_end(&mut out).map_err(|e| e.to_string())?;
    Ok(out.len() as u64 / 8)
}

/// One open handle (and a pid, for logs) per network namespace of the processes in `cgroup`
/// and below, other than our own, and how many processes we could not see or open.
/// Processes and cgroups that vanish meanwhile are skipped.
fn cgroup_namespaces(cgroup: &Path) -> (Vec<(u32, File)>, usize) {
    let id = |path: &Path| std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    let mut seen: HashSet<(u64, u64)> = id(Path::new("/proc/thread-self/ns/net"))
        .into_iter()
        .collect();
    let mut out = Vec::new();
    let mut unreachable = 0;
    for dir in walkdir::WalkDir::new(cgroup)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_dir())
    {
        let Ok(procs) = std::fs::read_to_string(dir.path().join("cgroup.procs")) else {
            continue;
        };
        for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            if pid == 0 {
                unreachable += 1;
                continue;
            }
            let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
            let ns = match std::fs::metadata(&path) {
                Ok(m) => (m.dev(), m.ino()),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    unreachable += 1;
                    continue;
                }
                Err(_) => continue,
            };
            if !seen.insert(ns) {
                continue;
            }
            match File::open(&path) {
                Ok(file) => out.push((pid, file)),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => unreachable += 1,
                Err(_) => {}
            }
        }
    }
    (out, unreachable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_object_has_one_kfunc_call_to_patch() {
        let Some(object) = crate::ebpf::object::embedded_object() else {
            // Built without the object (plain cargo build): nothing to check.
            return;
        };
        let mut copy = object.to_vec();
        // A Vec<u8> from the allocator is 8-byte aligned in practice; the ELF parser checks.
        let patched = patch_kfunc_calls(&mut copy, 4242).expect("patch");
        assert_eq!(patched, 1, "one call to {KFUNC} in iter/udp");
        let again = patch_kfunc_calls(&mut copy, 4242).expect("patch");
        assert_eq!(again, 1);
        let differs: Vec<usize> = (0..copy.len()).filter(|i| copy[*i] != object[*i]).collect();
        // src_reg and the 4 imm bytes of one instruction (imm -1 -> 4242 changes all four).
        assert_eq!(differs.len(), 5, "{differs:?}");
        let at = differs[0] - 1;
        assert_eq!(copy[at], CALL_OPCODE);
        assert_eq!(copy[at + 1] >> 4, PSEUDO_KFUNC_CALL);
        assert_eq!(&copy[at + 4..at + 8], &4242u32.to_le_bytes());
    }
}
