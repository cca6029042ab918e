//! Loads the programs, attaches them, and applies planned map operations.
use std::fs::File;
use std::path::PathBuf;

use aya::maps::lpm_trie::Key as LpmKey;
use aya::maps::{MapData, MapError};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType};
use aya::{Btf, Ebpf, EbpfLoader};
use switchyard_common::{
    map_names, program_names, Backend, Backend6, BackendKey, CtKey, CtValue, ServiceKey,
    ServiceKey6, ServiceName, ServiceValue, SnatConfig, SockTermKey, SockTermKey6, SourceRangeKey,
};

use super::ipv6_maps::{NoIpv6, Sizes6};
use super::maps::{ignore_missing, Capacities, MapHandleError, Maps};
use super::metrics::EbpfMetrics;
use super::object::embedded_object;
use super::plan::names::{self, NameOp};
use super::plan::{Family, FamilyPlanner, MapWriter, Planner, Planner6, PortFailure, RangeKey};
use super::sock_term::{self, SockTermError, SockTerminator};
use crate::dataplane::{Dataplane, PortError, SyncError, SyncKind, SyncReport};
use crate::model::tc_conntrack as tc_ct;
use crate::model::{DesiredState, ServicePort, ServicePortKey, StateDiff};

/// Where and how big.
#[derive(Clone, Debug)]
pub struct EbpfConfig {
    /// cgroup v2 directory the socket programs attach to.
    pub cgroup_path: PathBuf,
    /// bpffs directory holding our pinned maps and links.
    pub bpffs_path: PathBuf,
    /// Interfaces whose external traffic the tc programs translate.
    pub devices: Vec<String>,
    /// Without `--devices`: the Node object's addresses the devices were chosen by, so that
    /// interfaces that gain one later get the tc programs too.
    pub follow_devices: Option<Vec<std::net::IpAddr>>,
    /// Entries of the services map.
    pub services_max: u32,
    /// Entries of the backends map.
    pub backends_max: u32,
    /// Entries of the packet-path conntrack map.
    pub conntrack_max: u32,
    /// Entries of the source-ranges trie.
    pub source_ranges_max: u32,
    /// Source ports the tc programs allocate for masqueraded flows (above the NodePort
    /// range); `None` turns their source NAT off (such flows are then dropped).
    pub snat_ports: Option<std::ops::RangeInclusive<u16>>,
    /// Forward the programs' aya-log events to our log (`-v 4` and up).
    pub kernel_logs: bool,
    /// How long packet-path flows may stay idle, by state (netfilter's timeouts).
    pub flow_timeouts: crate::model::tc_conntrack::FlowTimeouts,
    /// The kernel's ICMP rate limits, for the refusals the tc programs send.
    pub icmp_limits: switchyard_common::RefusalLimits,
    /// Why the node does not proxy IPv6 ([`super::ipv6_maps::decide`]); the IPv6 maps are then
    /// minimal and IPv6 service ports are not programmed. `None`: dual-stack, full sizes.
    pub no_ipv6: Option<NoIpv6>,
}

impl EbpfConfig {
    /// The IPv6 maps' sizes for this configuration.
    pub fn sizes6(&self) -> Sizes6 {
        Sizes6::new(
            self.no_ipv6,
            self.services_max,
            self.backends_max,
            self.conntrack_max,
            self.source_ranges_max,
        )
    }
}

/// The socket programs and their pin names under `<bpffs>/links/`.
const SOCKET_PROGRAMS: [&str; 8] = [
    program_names::CONNECT4,
    program_names::SENDMSG4,
    program_names::RECVMSG4,
    program_names::GETPEERNAME4,
    program_names::CONNECT6,
    program_names::SENDMSG6,
    program_names::RECVMSG6,
    program_names::GETPEERNAME6,
];

/// Every map, pinned under `<bpffs>/maps/` so a restarted controller adopts them.
pub const MAPS: [&str; 17] = [
    map_names::SERVICES,
    map_names::BACKENDS,
    map_names::SOCK_REVNAT,
    map_names::AFFINITY,
    map_names::CONNTRACK,
    map_names::SOURCE_RANGES,
    map_names::SNAT_CONFIG,
    map_names::SNAT_ADDRS,
    map_names::SERVICE_NAMES,
    map_names::SERVICES6,
    map_names::BACKENDS6,
    map_names::SOCK_REVNAT6,
    map_names::AFFINITY6,
    map_names::CONNTRACK6,
    map_names::SNAT_ADDRS6,
    map_names::SOURCE_RANGES6,
    // Pinned so its slots (the IPv6 tc programs) outlive the process with the pinned links.
    map_names::TC_V6,
];

/// A verify looks up every `VERIFY_STRIDE`-th backend set, a different share each time.
const VERIFY_STRIDE: usize = 10;

/// bpffs' magic number (statfs f_type).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

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
    /// A tc program could not be attached to a device.
    #[error("--devices {device}: cannot attach the tc program: {source}")]
    Device {
        /// Interface.
        device: String,
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
    /// The pin directory is unusable.
    #[error("--bpffs-path {path}: {message}")]
    Bpffs {
        /// Directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A link could not be pinned or an old one replaced.
    #[error("ebpf mode: pinning {path}: {message}")]
    Pin {
        /// Pin path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A map is missing or has the wrong type.
    #[error(transparent)]
    Map(#[from] MapHandleError),
    /// Reading back a map failed.
    #[error("ebpf mode: reading map {name}: {source}")]
    ReadMap {
        /// Map name.
        name: &'static str,
        /// Underlying error.
        #[source]
        source: MapError,
    },
}

/// The loaded programs and their maps.
pub struct EbpfDataplane {
    // Owns the programs; the pinned links and maps outlive the process.
    ebpf: Ebpf,
    /// Devices the tc programs are attached to.
    attached: std::collections::BTreeSet<String>,
    /// Whether tc programs attach as tcx links (kernels >= 6.6).
    tcx: bool,
    /// Which share of the backend slots the next verify looks up.
    verify_phase: usize,
    maps: Maps,
    /// `SWY_SNAT_ADDRS`: the source NAT address of each device the tc programs are on.
    snat_addrs: aya::maps::HashMap<MapData, u32, u32>,
    /// What the maps hold and which port owns what; plans and runs every write.
    planner: Planner,
    /// The same for the IPv6 maps.
    planner6: Planner6,
    /// What `SWY_SVC_NAMES` holds (fingerprints), as written or found at start-up.
    names: std::collections::BTreeMap<u32, u64>,
    /// Map and link gauges, set at full syncs and verifies.
    metrics: Option<EbpfMetrics>,
    /// Destroys connected UDP sockets whose backend a sync removed; `None` where the kernel
    /// cannot (said once at start-up).
    sock_term: Option<SockTerminator>,
    /// Whether the warning about namespaces we cannot enter was given (once per process).
    warned_unreachable: bool,
    /// Whether the warning that the node gained IPv6 after start was given.
    warned_ipv6_later: bool,
    /// `SWY_CONNTRACK`'s and `SWY_CONNTRACK6`'s entries after the last sweep (gauges).
    conntrack_entries: u64,
    conntrack6_entries: u64,
    /// What loading the programs took at start-up (gauges, set once metrics are given).
    program_load: ProgramLoad,
    config: EbpfConfig,
}

/// The start-up's program load: its time and the verifier's work per program.
#[derive(Debug, Clone, Default)]
struct ProgramLoad {
    /// From the start of [`EbpfDataplane::load`] to every program loaded, seconds.
    seconds: f64,
    /// Instructions the verifier processed, per loaded program, largest first.
    verified: Vec<(&'static str, u32)>,
}

/// The object's programs besides [`SOCKET_PROGRAMS`], for the load's figures.
const PACKET_PROGRAMS: [&str; 5] = [
    program_names::TC_INGRESS,
    program_names::TC_EGRESS,
    program_names::TC_INGRESS6,
    program_names::TC_EGRESS6,
    program_names::SOCK_TERM_UDP4,
];

impl ProgramLoad {
    /// Reads each loaded program's verified instruction count from the kernel.
    fn measure(ebpf: &Ebpf, seconds: f64) -> Self {
        let mut verified: Vec<(&'static str, u32)> = SOCKET_PROGRAMS
            .iter()
            .chain(&PACKET_PROGRAMS)
            .filter_map(|&name| {
                let info = ebpf.program(name)?.info().ok()?;
                Some((name, info.verified_instruction_count()?))
            })
            .collect();
        verified.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        Self { seconds, verified }
    }

    /// "name=count ..." for the programs of more than a thousand instructions.
    fn summary(&self) -> String {
        let listed: Vec<String> = self
            .verified
            .iter()
            .filter(|(_, count)| *count > 1000)
            .map(|(name, count)| format!("{name}={count}"))
            .collect();
        listed.join(" ")
    }
}

/// The programs loaded and the maps resolved (a previous instance's adopted), attached
/// nowhere yet: [`EbpfDataplane::load`]'s result, for [`LoadedEbpf::attach`].
pub struct LoadedEbpf {
    dataplane: EbpfDataplane,
}

impl LoadedEbpf {
    /// Attaches the socket programs to the cgroup and the tc programs to `devices`, pinning
    /// the links and replacing the previous instance's. Traffic keeps flowing throughout: the
    /// old links stay until the new ones are attached, and a socket translated by both sees
    /// the backend address the first one chose, which no service entry matches.
    /// `follow_devices`: see [`EbpfConfig::follow_devices`].
    pub fn attach(
        self,
        devices: Vec<String>,
        follow_devices: Option<Vec<std::net::IpAddr>>,
    ) -> Result<EbpfDataplane, EbpfError> {
        let mut dataplane = self.dataplane;
        dataplane.config.devices = devices;
        dataplane.config.follow_devices = follow_devices;
        let config = &dataplane.config;
        let links_dir = config.bpffs_path.join("links");
        let cgroup = File::open(&config.cgroup_path).map_err(|source| EbpfError::Cgroup {
            path: config.cgroup_path.clone(),
            source,
        })?;
        // Links pinned by this start; any other pin in links/ is a leftover (e.g. a device no
        // longer in --devices) whose program would keep translating there.
        let mut pinned = std::collections::BTreeSet::new();
        for name in SOCKET_PROGRAMS {
            let program: &mut CgroupSockAddr = program(&mut dataplane.ebpf, name)?;
            // On kernels with BPF links (>= 5.7) a link never excludes other programs on
            // the cgroup, and link_create rejects the ALLOW_MULTI flag: the default is right.
            let id = program
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(|source| EbpfError::Program { name, source })?;
            let link = program
                .take_link(id)
                .map_err(|source| EbpfError::Program { name, source })?;
            pin_link(link, &links_dir.join(name))?;
            pinned.insert(name.to_owned());
        }
        // The source NAT addresses are in place before the programs see a packet.
        super::tc_v6::write_snat_addrs(&mut dataplane.ebpf, &dataplane.config.devices)?;
        for device in &dataplane.config.devices {
            write_snat_addr(&mut dataplane.snat_addrs, device);
            pinned.extend(attach_tc(
                &mut dataplane.ebpf,
                &links_dir,
                device,
                dataplane.tcx,
            )?);
        }
        unpin_leftover_links(&links_dir, &pinned);
        dataplane.attached = dataplane.config.devices.iter().cloned().collect();
        Ok(dataplane)
    }
}

impl EbpfDataplane {
    /// Loads the embedded object with its maps pinned under `--bpffs-path` (adopting the maps
    /// a previous instance pinned) and loads every program, attaching none. This is the slow
    /// part of a start (maps, BTF, the verifier: blocking kernel work) and needs no cluster
    /// object, so it runs while the source reads them. `config.devices` and
    /// `config.follow_devices` are not read: [`LoadedEbpf::attach`] takes them.
    pub fn load(config: EbpfConfig) -> Result<LoadedEbpf, EbpfError> {
        let started = std::time::Instant::now();
        let object = embedded_object().ok_or(EbpfError::NoObject)?;
        let maps_dir = config.bpffs_path.join("maps");
        let links_dir = config.bpffs_path.join("links");
        prepare_bpffs(&config.bpffs_path, &[&maps_dir, &links_dir])?;
        drop_incompatible_pins(&maps_dir, &config);
        let sizes6 = config.sizes6();
        if let Some(reason) = config.no_ipv6 {
            tracing::info!(
                %reason,
                max_entries = sizes6.services,
                "ebpf mode: this node does not proxy IPv6 (as kube-proxy's single-stack \
                 proxier, IPv6 services are not programmed); the IPv6 maps are created minimal. \
                 Restart switchyard once the node has IPv6"
            );
        }
        let adopted = maps_dir.join(map_names::SERVICES).exists();
        let mut loader = EbpfLoader::new();
        // The loader parsed the kernel's BTF (~18 MiB) itself; one copy, parsed after that
        // one is dropped, serves it and the kfunc lookup below, so a start never holds two.
        loader.btf(None);
        let kernel_btf = Btf::from_sys_fs().map_err(SockTermError::NoBtf);
        loader
            .btf(kernel_btf.as_ref().ok())
            .map_max_entries(map_names::SERVICES, config.services_max)
            .map_max_entries(map_names::BACKENDS, config.backends_max)
            .map_max_entries(map_names::CONNTRACK, config.conntrack_max)
            .map_max_entries(map_names::SOURCE_RANGES, config.source_ranges_max)
            // At most one name per backend set, and every set is used by a service entry.
            .map_max_entries(map_names::SERVICE_NAMES, config.services_max)
            // IPv6 frontends and endpoints get the same room as IPv4 ones (an IPv6-only
            // cluster needs it) on a node that proxies IPv6, one entry elsewhere.
            .map_max_entries(map_names::SERVICES6, sizes6.services)
            .map_max_entries(map_names::BACKENDS6, sizes6.backends)
            .map_max_entries(map_names::CONNTRACK6, sizes6.conntrack)
            .map_max_entries(map_names::SOURCE_RANGES6, sizes6.source_ranges)
            .map_max_entries(map_names::SOCK_REVNAT6, sizes6.sock_revnat)
            .map_max_entries(map_names::AFFINITY6, sizes6.affinity)
            .map_max_entries(map_names::SOCK_TERM6, sizes6.sock_term);
        let pins: Vec<PathBuf> = MAPS.iter().map(|m| maps_dir.join(m)).collect();
        for (name, pin) in MAPS.iter().zip(&pins) {
            loader.map_pin_path(name, pin.as_path());
        }
        // The iterator's kfunc call resolved for this kernel (aya cannot), before aya parses it.
        let prepared = sock_term::prepare_object(object, kernel_btf.as_ref().ok());
        let mut ebpf = loader.load(prepared.bytes()).map_err(EbpfError::Load)?;
        drop(loader);
        if config.kernel_logs {
            // Before the programs load: the logger owns the log ring buffer they write to.
            forward_kernel_logs(&mut ebpf);
        }
        for name in SOCKET_PROGRAMS {
            let program: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            program
                .load()
                .map_err(|source| EbpfError::Program { name, source })?;
        }
        let tcx = aya::util::KernelVersion::current()
            .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
        for name in [program_names::TC_INGRESS, program_names::TC_EGRESS] {
            let program: &mut SchedClassifier = program(&mut ebpf, name)?;
            program
                .load()
                .map_err(|source| EbpfError::Program { name, source })?;
        }
        // The source NAT settings are in place before the programs see a packet.
        let snat_addrs = write_snat_config(&mut ebpf, config.snat_ports.as_ref())?;
        write_refusal_limits(&mut ebpf, config.icmp_limits)?;
        super::tc_v6::load(&mut ebpf)?;
        let sock_term = kernel_btf.and_then(|btf| {
            prepared.support?;
            SockTerminator::load(&mut ebpf, &btf, &config.cgroup_path)
        });
        let sock_term = match sock_term {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "ebpf mode: connected UDP sockets are not destroyed when their backend goes; \
                     they keep sending to it until the application reconnects"
                );
                None
            }
        };
        // Most of a start's load is the verifier's; its instruction counts are its own measure
        // of the work, the same on every start of one kernel and object.
        let program_load = ProgramLoad::measure(&ebpf, started.elapsed().as_secs_f64());
        tracing::info!(
            load_ms = program_load.seconds * 1000.0,
            verified = %program_load.summary(),
            "ebpf mode: programs loaded"
        );
        // Resolved once, after every program is loaded (loading relocates their references).
        let maps = Maps::take(
            &mut ebpf,
            Capacities {
                services: config.services_max,
                backends: config.backends_max,
                source_ranges: config.source_ranges_max,
            },
        )?;
        let mut dataplane = Self {
            attached: Default::default(),
            tcx,
            verify_phase: 0,
            ebpf,
            maps,
            snat_addrs,
            planner: Planner::default(),
            planner6: Planner6::default(),
            names: Default::default(),
            metrics: None,
            sock_term,
            warned_unreachable: false,
            warned_ipv6_later: false,
            conntrack_entries: 0,
            conntrack6_entries: 0,
            program_load,
            config,
        };
        if adopted {
            // A previous instance's entries stay in service until the ports that want them
            // are written; their backend-set ids are not handed out before they are unused.
            let entries = dataplane.observe_maps()?;
            // Its names stay until its sets go; an unreadable map only costs names.
            dataplane.names = dataplane
                .maps
                .names
                .iter()
                .filter_map(Result::ok)
                .map(|(id, name)| (id, names::fingerprint(&name)))
                .collect();
            tracing::info!(entries, "adopted pinned eBPF maps");
        }
        Ok(LoadedEbpf { dataplane })
    }

    /// Sets `metrics` at every full sync and verify from now on.
    pub fn with_metrics(mut self, metrics: EbpfMetrics) -> Self {
        metrics.set_program_load(self.program_load.seconds, &self.program_load.verified);
        self.metrics = Some(metrics);
        self
    }

    /// Brings the names map in line with the planner: for the sets of `touched` ports (and
    /// the sets they held `before`), or with `None` for every set, deleting the names of
    /// sets that are gone (a previous instance's keep theirs while they serve). Best effort:
    /// a failure costs a name in `switchyard status` until the next verify rewrites it.
    fn write_names(&mut self, touched: Option<(&[ServicePortKey], Vec<u32>)>) {
        let planner = &self.planner;
        let ops = match touched {
            Some((keys, before)) => {
                let planner6 = &self.planner6;
                let wanted = keys.iter().flat_map(|k| {
                    planner
                        .port_sets(k)
                        .chain(planner6.port_sets(k))
                        .map(move |(set, id)| (id, names::encode(k, set)))
                });
                names::plan(&self.names, wanted, before)
            }
            None => {
                let wanted = planner
                    .backend_sets()
                    .chain(self.planner6.backend_sets())
                    .map(|(id, k, set)| (id, names::encode(k, set)));
                let foreign: std::collections::BTreeSet<u32> = planner
                    .foreign_sets()
                    .chain(self.planner6.foreign_sets())
                    .collect();
                let stale = self
                    .names
                    .keys()
                    .filter(|id| !foreign.contains(id))
                    .copied();
                names::plan(&self.names, wanted, stale)
            }
        };
        let mut failed = 0;
        let mut first_error = None;
        for op in self.put_names_in_batches(ops) {
            let result = match op {
                NameOp::Put(id, name) => {
                    let written = self.maps.names.insert(id, name, 0);
                    if written.is_ok() {
                        self.names.insert(id, names::fingerprint(&name));
                    }
                    written.map_err(|e| e.to_string())
                }
                NameOp::Delete(id) => {
                    let removed =
                        ignore_missing(self.maps.names.remove(&id), map_names::SERVICE_NAMES);
                    if removed.is_ok() {
                        self.names.remove(&id);
                    }
                    removed.map_err(|e| e.to_string())
                }
            };
            if let Err(e) = result {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
        if let Some(error) = first_error {
            tracing::warn!(
                failed,
                %error,
                "cannot write service names for `switchyard status`; retried by the next verify"
            );
        }
    }

    /// Writes the puts among `ops` in batches (a first sync names 10,000 sets) and returns
    /// what is left for one-by-one writes: the deletes, a put the kernel refused (its error
    /// is then reported by that write), or everything where the kernel cannot batch.
    fn put_names_in_batches(&mut self, ops: Vec<NameOp>) -> Vec<NameOp> {
        let (puts, mut left): (Vec<NameOp>, Vec<NameOp>) = ops
            .into_iter()
            .partition(|op| matches!(op, NameOp::Put(..)));
        let (ids, values): (Vec<u32>, Vec<switchyard_common::ServiceName>) = puts
            .iter()
            .filter_map(|op| match op {
                NameOp::Put(id, name) => Some((*id, *name)),
                NameOp::Delete(_) => None,
            })
            .unzip();
        let mut start = 0;
        while start < ids.len() {
            let result =
                super::batch_write::update(&self.maps.names, &ids[start..], &values[start..]);
            let written = match &result {
                Ok(()) => ids.len() - start,
                Err(partial) if partial.unsupported() => 0,
                Err(partial) => partial.done,
            };
            for i in start..start + written {
                self.names.insert(ids[i], names::fingerprint(&values[i]));
            }
            start += written;
            match result {
                Ok(()) => break,
                Err(partial) if partial.unsupported() => {
                    left.extend(puts.into_iter().skip(start));
                    break;
                }
                Err(_) => {
                    left.extend(puts.get(start).cloned());
                    start += 1;
                }
            }
        }
        left
    }

    /// Sets the map and link gauges: the planner's counts for the maps it writes, the sweep's
    /// count of the conntrack map, one batched pass over the other maps the programs fill,
    /// the pins under `links/`.
    fn observe_metrics(&self) {
        use switchyard_common::{DEFAULT_AFFINITY_MAX, DEFAULT_SOCK_REVNAT_MAX, SNAT_ADDRS_MAX};
        let Some(metrics) = &self.metrics else {
            return;
        };
        let config = &self.config;
        let sizes6 = config.sizes6();
        let (services, backends, ranges) = self.planner.entry_counts();
        let (services6, backends6, ranges6) = self.planner6.entry_counts();
        use crate::ebpf::batch_read::count;
        // The sync's conntrack sweep has just read those maps.
        let (conntrack, conntrack6) = (self.conntrack_entries, self.conntrack6_entries);
        let affinity = count(&self.maps.affinity, DEFAULT_AFFINITY_MAX as usize) as u64;
        let sock_revnat = count(&self.maps.sock_revnat, DEFAULT_SOCK_REVNAT_MAX as usize) as u64;
        let affinity6 = count(&self.maps.affinity6, sizes6.affinity as usize) as u64;
        let sock_revnat6 = count(&self.maps.sock_revnat6, sizes6.sock_revnat as usize) as u64;
        let snat_addrs = count(&self.snat_addrs, SNAT_ADDRS_MAX as usize) as u64;
        for (map, entries, capacity) in [
            (map_names::SERVICES, services as u64, config.services_max),
            (map_names::BACKENDS, backends as u64, config.backends_max),
            (
                map_names::SOURCE_RANGES,
                ranges as u64,
                config.source_ranges_max,
            ),
            (
                map_names::SERVICE_NAMES,
                self.names.len() as u64,
                config.services_max,
            ),
            (map_names::CONNTRACK, conntrack, config.conntrack_max),
            (map_names::AFFINITY, affinity, DEFAULT_AFFINITY_MAX),
            (map_names::SOCK_REVNAT, sock_revnat, DEFAULT_SOCK_REVNAT_MAX),
            (map_names::SNAT_ADDRS, snat_addrs, SNAT_ADDRS_MAX),
            (map_names::SNAT_CONFIG, 1, 1),
            (map_names::SERVICES6, services6 as u64, sizes6.services),
            (map_names::BACKENDS6, backends6 as u64, sizes6.backends),
            (map_names::AFFINITY6, affinity6, sizes6.affinity),
            (map_names::SOCK_REVNAT6, sock_revnat6, sizes6.sock_revnat),
            (map_names::CONNTRACK6, conntrack6, sizes6.conntrack),
            (
                map_names::SOURCE_RANGES6,
                ranges6 as u64,
                sizes6.source_ranges,
            ),
        ] {
            metrics.set_map(map, entries, capacity);
        }
        let pins: Vec<String> = std::fs::read_dir(self.config.bpffs_path.join("links"))
            .map(|dir| {
                dir.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let links: Vec<(&'static str, u64)> = SOCKET_PROGRAMS
            .iter()
            .chain(&[program_names::TC_INGRESS, program_names::TC_EGRESS])
            .map(|program| {
                let n = pins
                    .iter()
                    .filter(|pin| link_program(pin) == Some(*program))
                    .count();
                (*program, n as u64)
            })
            .collect();
        metrics.set_links(&links);
    }

    /// Hands the planner what the services, backends and source-range maps hold (one pass
    /// each); returns the number of service entries.
    fn observe_maps(&mut self) -> Result<usize, EbpfError> {
        let read = |name| move |source| EbpfError::ReadMap { name, source };
        let services: Vec<_> = self
            .maps
            .services
            .iter()
            .collect::<Result<_, _>>()
            .map_err(read(map_names::SERVICES))?;
        let backends: Vec<_> = self
            .maps
            .backends
            .iter()
            .collect::<Result<_, _>>()
            .map_err(read(map_names::BACKENDS))?;
        let ranges: Vec<RangeKey> = self
            .maps
            .source_ranges
            .keys()
            .map(|k| k.map(|k: LpmKey<SourceRangeKey>| (k.data(), k.prefix_len())))
            .collect::<Result<_, _>>()
            .map_err(read(map_names::SOURCE_RANGES))?;
        let services6: Vec<_> = self
            .maps
            .services6
            .iter()
            .collect::<Result<_, _>>()
            .map_err(read(map_names::SERVICES6))?;
        let backends6: Vec<_> = self
            .maps
            .backends6
            .iter()
            .collect::<Result<_, _>>()
            .map_err(read(map_names::BACKENDS6))?;
        let ranges6: Vec<_> = self
            .maps
            .source_ranges6
            .keys()
            .map(|k| {
                k.map(|k: LpmKey<switchyard_common::SourceRangeKey6>| (k.data(), k.prefix_len()))
            })
            .collect::<Result<_, _>>()
            .map_err(read(map_names::SOURCE_RANGES6))?;
        let entries = services.len() + services6.len();
        self.planner.observe(services, backends, ranges);
        self.planner6.observe(services6, backends6, ranges6);
        Ok(entries)
    }

    /// Reads the node's flow timeouts and ICMP rate limits again (a dozen small sysctl files,
    /// every `syncPeriod`), so that an operator's later `sysctl -w` applies without a restart,
    /// as it does for netfilter and the kernel's own refusals.
    fn refresh_node_sysctls(&mut self) {
        let timeouts = crate::ebpf::flow_timeouts::read();
        if timeouts != self.config.flow_timeouts {
            tracing::info!(
                ?timeouts,
                "the node's netfilter timeouts changed; packet-path flows follow them"
            );
            self.config.flow_timeouts = timeouts;
        }
        let limits = crate::ebpf::icmp_limits::read();
        if limits != self.config.icmp_limits {
            match write_refusal_limits(&mut self.ebpf, limits) {
                Ok(()) => {
                    tracing::info!(?limits, "the node's ICMP rate limits changed; the tc programs' refusals follow them");
                    self.config.icmp_limits = limits;
                }
                Err(error) => {
                    tracing::warn!(%error, "writing the changed ICMP rate limits; retried at the next verify")
                }
            }
        }
    }

    /// One pass over each packet-path conntrack map ([`sweep_map`]): flows to backends in
    /// `gone` (`gone6`) and, with `expire`, idle ones. Keeps what each holds afterwards for
    /// its gauge.
    fn sweep_conntrack(
        &mut self,
        gone: &std::collections::BTreeSet<Backend>,
        gone6: &std::collections::BTreeSet<Backend6>,
        expire: bool,
    ) {
        let timeouts = expire.then_some(&self.config.flow_timeouts);
        let max = self.config.conntrack_max as usize;
        let v4 = (&mut self.maps.conntrack, map_names::CONNTRACK);
        self.conntrack_entries = sweep_map::<tc_ct::V4>(v4, max, timeouts, gone);
        let max6 = self.config.sizes6().conntrack as usize;
        let v6 = (&mut self.maps.conntrack6, map_names::CONNTRACK6);
        self.conntrack6_entries = sweep_map::<tc_ct::V6>(v6, max6, timeouts, gone6);
    }

    /// Destroys the connected UDP sockets translated through `stranded` (pairs a sync
    /// removed). Best effort: a failure is logged, the sockets then stay as before.
    fn terminate_sockets(
        &mut self,
        stranded: &std::collections::BTreeSet<SockTermKey>,
        stranded6: &std::collections::BTreeSet<SockTermKey6>,
    ) {
        let Some(terminator) = &mut self.sock_term else {
            return;
        };
        let routes = stranded.len() + stranded6.len();
        match terminator.terminate(&mut self.ebpf, stranded, stranded6) {
            Ok(done) => {
                if let Some(metrics) = &self.metrics {
                    metrics.sockets_destroyed.inc_by(done.sockets);
                }
                if done.unreachable > 0 && !self.warned_unreachable {
                    self.warned_unreachable = true;
                    tracing::warn!(
                        processes = done.unreachable,
                        "cannot enter the network namespaces of some processes in --cgroup-path; \
                         their connected UDP sockets are not destroyed when their backend goes \
                         (needs the host PID namespace, CAP_SYS_ADMIN for setns and \
                         CAP_SYS_PTRACE for other users' /proc/<pid>/ns/net)"
                    );
                }
                let level_info = done.sockets > 0 || done.failed > 0;
                if level_info {
                    tracing::info!(
                        sockets = done.sockets,
                        routes,
                        namespaces = done.namespaces,
                        failed_namespaces = done.failed,
                        "destroyed connected UDP sockets to removed backends"
                    );
                } else {
                    tracing::debug!(
                        routes,
                        namespaces = done.namespaces,
                        "no connected UDP socket to removed backends"
                    );
                }
            }
            Err(e) => tracing::warn!(
                error = %e,
                "cannot destroy connected UDP sockets to removed backends; retried at the next removal"
            ),
        }
    }

    /// One sync of the ports `keys` (and of those whose last change failed): the planner
    /// plans it as a whole and runs it op by op; a port that fails keeps serving its previous
    /// state and is reported on its own.
    /// `expire`: this sync is a full one or a verify, which also expire idle flows.
    fn sync_ports(
        &mut self,
        state: &DesiredState,
        mut keys: Vec<ServicePortKey>,
        full: bool,
        expire: bool,
    ) -> SyncReport {
        let retired = self
            .planner
            .begin_sync(&mut self.maps)
            .into_iter()
            .chain(self.planner6.begin_sync(&mut self.maps));
        for error in retired {
            tracing::warn!(%error, "deleting retired map entries; retried by the next sync");
        }
        keys.extend(self.planner.unsettled().cloned());
        keys.extend(self.planner6.unsettled().cloned());
        let sets_before: Vec<u32> = keys
            .iter()
            .flat_map(|k| {
                self.planner
                    .port_sets(k)
                    .chain(self.planner6.port_sets(k))
                    .map(|(_, id)| id)
            })
            .collect();
        let before: Vec<std::collections::BTreeSet<Backend>> = keys
            .iter()
            .map(|k| self.planner.external_backends(k))
            .collect();
        let before6: Vec<std::collections::BTreeSet<Backend6>> = keys
            .iter()
            .map(|k| self.planner6.external_backends(k))
            .collect();
        let (udp_routes_before, udp_routes6_before) = if self.sock_term.is_some() {
            (
                udp_routes(&self.planner, &keys, full),
                udp_routes(&self.planner6, &keys, full),
            )
        } else {
            Default::default()
        };
        let changes: Vec<(ServicePortKey, Option<&ServicePort>)> = keys
            .iter()
            .map(|k| (k.clone(), state.ports.get(k).map(|p| &**p)))
            .collect();
        let outcome = run_planner(&mut self.planner, &mut self.maps, &changes, full);
        // Only the ports the IPv6 maps concern: an IPv4-only node's syncs cost what they did.
        // None on a node that does not proxy IPv6 (its maps have no room), also after it
        // gained an address: that takes a restart.
        let planner6 = &self.planner6;
        let proxies_ipv6 = self.config.no_ipv6.is_none();
        let changes6: Vec<(ServicePortKey, Option<&ServicePort>)> = changes
            .iter()
            .filter(|(key, port)| {
                proxies_ipv6
                    && (planner6.concerns(key)
                        || port.is_some_and(|p| p.frontends.iter().any(|f| f.ip.is_ipv6())))
            })
            .cloned()
            .collect();
        let outcome6 = run_planner(&mut self.planner6, &mut self.maps, &changes6, full);
        let failed6: std::collections::BTreeSet<&ServicePortKey> =
            outcome6.failed.iter().map(|(k, _)| k).collect();
        let ports_written = outcome
            .written
            .iter()
            .filter(|k| !failed6.contains(k))
            .count();
        let mut gone = std::collections::BTreeSet::new();
        for (key, before) in keys.iter().zip(before) {
            gone.extend(
                before
                    .difference(&self.planner.external_backends(key))
                    .copied(),
            );
        }
        // After the entries changed, so that a destroyed socket's reconnect finds live ones.
        if !udp_routes_before.is_empty() || !udp_routes6_before.is_empty() {
            let after = udp_routes(&self.planner, &keys, full);
            let stranded: std::collections::BTreeSet<SockTermKey> =
                udp_routes_before.difference(&after).copied().collect();
            let after6 = udp_routes(&self.planner6, &keys, full);
            let stranded6: std::collections::BTreeSet<SockTermKey6> =
                udp_routes6_before.difference(&after6).copied().collect();
            if !stranded.is_empty() || !stranded6.is_empty() {
                self.terminate_sockets(&stranded, &stranded6);
            }
        }
        // One pass over the conntrack map per sync, however many ports lost backends, and
        // only at verifies (every syncPeriod) when none did.
        if expire {
            self.refresh_node_sysctls();
        }
        let mut gone6 = std::collections::BTreeSet::new();
        for (key, before) in keys.iter().zip(before6) {
            gone6.extend(
                before
                    .difference(&self.planner6.external_backends(key))
                    .copied(),
            );
        }
        if !gone.is_empty() || !gone6.is_empty() || expire {
            self.sweep_conntrack(&gone, &gone6, expire);
        }
        if full {
            self.write_names(None);
        } else {
            self.write_names(Some((&keys, sets_before)));
        }
        SyncReport {
            ports_written,
            errors: outcome
                .failed
                .into_iter()
                .chain(outcome6.failed)
                .map(|(port, failure)| PortError {
                    port,
                    full_map: match &failure {
                        PortFailure::Map(e) => e.full_map(),
                        PortFailure::Conflict(_) => None,
                    },
                    source: Box::new(failure),
                })
                .collect(),
            ..SyncReport::default()
        }
    }
}

impl EbpfDataplane {
    /// Writes the ports in `diff` (the planner orders releases before assigns itself);
    /// `expire` as for [`Self::sync_ports`].
    fn partial(&mut self, state: &DesiredState, diff: &StateDiff, expire: bool) -> SyncReport {
        let keys: Vec<ServicePortKey> = diff
            .removed
            .iter()
            .chain(&diff.changed)
            .chain(&diff.added)
            .cloned()
            .collect();
        self.sync_ports(state, keys, false, expire)
    }

    /// Brings the maps to `state` from what they really hold (read back first, so whatever
    /// changed behind our back is repaired), and removes what no port owns: entries of
    /// services deleted while no controller ran, the previous instance's sets once unused.
    fn full(&mut self, state: &DesiredState) -> Result<SyncReport, EbpfError> {
        self.observe_maps()?;
        let mut keys: Vec<ServicePortKey> = self
            .planner
            .programmed_ports()
            .chain(self.planner6.programmed_ports())
            .filter(|k| !state.ports.contains_key(*k))
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        keys.extend(state.ports.keys().cloned());
        let mut report = self.sync_ports(state, keys, true, true);
        report.full = true;
        Ok(report)
    }

    /// Reads the services map back in one pass and looks up one rotating share of the backend
    /// slots, and compares them with what was programmed. Reading the whole backends map
    /// (100,000 slots at 10,000 services) every `syncPeriod` would cost more than the rest of
    /// an idle node's control plane; drift there is found within `VERIFY_STRIDE` verifies.
    fn drift(&mut self) -> Result<super::plan::Drift, EbpfError> {
        let services: Vec<_> = self
            .maps
            .services
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|source| EbpfError::ReadMap {
                name: map_names::SERVICES,
                source,
            })?;
        let services6: Vec<_> = self
            .maps
            .services6
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|source| EbpfError::ReadMap {
                name: map_names::SERVICES6,
                source,
            })?;
        let mut drift = self.planner.check_services(services);
        let drift6 = self.planner6.check_services(services6);
        drift.missing += drift6.missing;
        drift.wrong += drift6.wrong;
        drift.unexpected += drift6.unexpected;
        let phase = self.verify_phase;
        self.verify_phase = (self.verify_phase + 1) % VERIFY_STRIDE;
        let sample = self.planner.backend_slots_sample(phase, VERIFY_STRIDE);
        let looked_up = sample
            .into_iter()
            .map(|(key, expected)| (self.maps.backends.get(&key, 0), expected));
        count_slot_drift(&mut drift, looked_up, map_names::BACKENDS)?;
        let sample6 = self.planner6.backend_slots_sample(phase, VERIFY_STRIDE);
        let looked_up6 = sample6
            .into_iter()
            .map(|(key, expected)| (self.maps.backends6.get(&key, 0), expected));
        count_slot_drift(&mut drift, looked_up6, map_names::BACKENDS6)?;
        Ok(drift)
    }
}

impl Dataplane for EbpfDataplane {
    fn sync(
        &mut self,
        kind: SyncKind,
        state: &DesiredState,
        diff: &StateDiff,
    ) -> Result<SyncReport, SyncError> {
        let report = match kind {
            SyncKind::Full => self
                .full(state)
                .map_err(|e| SyncError::new("reading the maps back", e))?,
            SyncKind::Partial => return Ok(self.partial(state, diff, false)),
            SyncKind::Verify => {
                let drift = self
                    .drift()
                    .map_err(|e| SyncError::new("reading the maps back", e))?;
                if drift.is_none() {
                    let report = self.partial(state, diff, true);
                    // Names a failed write or someone else removed come back here.
                    self.write_names(None);
                    report
                } else {
                    tracing::warn!(%drift, "eBPF maps changed behind our back; rewriting");
                    let mut report = self
                        .full(state)
                        .map_err(|e| SyncError::new("reading the maps back", e))?;
                    report.repaired = Some(drift.to_string());
                    report
                }
            }
        };
        self.observe_metrics();
        Ok(report)
    }

    fn node_addresses(&mut self, addresses: &[std::net::IpAddr]) {
        if self.config.no_ipv6 == Some(NoIpv6::NoAddress)
            && !self.warned_ipv6_later
            && crate::node_addresses::has_routable_ipv6(addresses)
        {
            self.warned_ipv6_later = true;
            tracing::warn!(
                "ebpf mode: the node has an IPv6 address now, but it had none at start, so the \
                 IPv6 maps are minimal and IPv6 services are not programmed; restart switchyard \
                 to proxy IPv6"
            );
        }
        // A device's address may have changed: new flows are NATed to its current one.
        for device in &self.attached {
            write_snat_addr(&mut self.snat_addrs, device);
        }
        let attached: Vec<String> = self.attached.iter().cloned().collect();
        if let Err(e) = super::tc_v6::write_snat_addrs(&mut self.ebpf, &attached) {
            tracing::warn!(error = %e, "cannot refresh the IPv6 source NAT addresses");
        }
        let Some(node_ips) = &self.config.follow_devices else {
            return;
        };
        let devices = match crate::node_addresses::default_devices(node_ips) {
            Ok(devices) => devices,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list interfaces; tc programs stay where they are");
                return;
            }
        };
        let links_dir = self.config.bpffs_path.join("links");
        for device in devices {
            if self.attached.contains(&device) {
                continue;
            }
            write_snat_addr(&mut self.snat_addrs, &device);
            if let Err(e) =
                super::tc_v6::write_snat_addrs(&mut self.ebpf, std::slice::from_ref(&device))
            {
                tracing::warn!(%device, error = %e, "cannot write the IPv6 source NAT address");
            }
            match attach_tc(&mut self.ebpf, &links_dir, &device, self.tcx) {
                Ok(_) => {
                    tracing::info!(%device, "ebpf mode: packet programs attached to a new device");
                    self.attached.insert(device);
                }
                Err(e) => tracing::warn!(%device, error = %e, "cannot attach the packet programs"),
            }
        }
    }

    fn cleanup(&mut self) -> Result<(), SyncError> {
        remove_pins(&self.config.bpffs_path)
            .map(drop)
            .map_err(|e| SyncError::new("unpinning our maps and links", e))
    }
}

/// Plans and runs one family's part of a sync.
/// The (frontend, backend) pairs of family `F` local connected UDP sockets may use: of
/// everything the maps hold at full syncs (a restarted controller owns no port yet), else
/// of the ports `keys` only.
fn udp_routes<F: Family>(
    planner: &FamilyPlanner<F>,
    keys: &[ServicePortKey],
    full: bool,
) -> std::collections::BTreeSet<F::TermKey> {
    if full {
        planner.all_udp_socket_routes()
    } else {
        keys.iter()
            .flat_map(|k| planner.udp_socket_routes(k))
            .collect()
    }
}

fn run_planner<F: Family>(
    planner: &mut FamilyPlanner<F>,
    maps: &mut Maps,
    changes: &[(ServicePortKey, Option<&ServicePort>)],
    full: bool,
) -> super::plan::SyncOutcome<super::maps::OpError>
where
    Maps: MapWriter<F, Error = super::maps::OpError>,
{
    let mut plan = planner.plan_sync(changes);
    if full {
        plan = plan.collecting_garbage();
    }
    let outcome = planner.run(plan, maps);
    for error in &outcome.housekeeping {
        tracing::warn!(family = F::NAME, %error, "restoring or collecting map entries");
    }
    outcome
}

/// Adds the verify's backend-slot lookups (found value or error, expected value) to `drift`.
fn count_slot_drift<B: PartialEq>(
    drift: &mut super::plan::Drift,
    looked_up: impl Iterator<Item = (Result<B, MapError>, B)>,
    name: &'static str,
) -> Result<(), EbpfError> {
    for (found, expected) in looked_up {
        match found {
            Ok(found) if found == expected => {}
            Ok(_) => drift.wrong += 1,
            Err(MapError::KeyNotFound) => drift.missing += 1,
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                drift.missing += 1
            }
            Err(source) => return Err(EbpfError::ReadMap { name, source }),
        }
    }
    Ok(())
}

/// Now on the clock the programs stamp flows with (`bpf_ktime_get_ns`: `CLOCK_MONOTONIC`).
pub(crate) fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(now) => (now.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(now.tv_nsec() as u64),
        // Cannot fail for this clock; 0 expires nothing.
        Err(_) => 0,
    }
}

/// Unpins our links (detaching the programs) and maps under `root`; returns how many pins
/// went. Only our own entries go: the directory may be shared with other tools' pins.
pub fn remove_pins(root: &std::path::Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for dir in [root.join("links"), root.join("maps")] {
        if dir.is_dir() {
            removed += std::fs::read_dir(&dir)?.count();
            std::fs::remove_dir_all(&dir)?;
        }
    }
    // The directory itself only if nothing else lives there.
    let _ = std::fs::remove_dir(root);
    Ok(removed)
}

/// Attaches both tc programs (already loaded) to `device`; returns the pin names of the
/// links (none without tcx, where the netlink filter cannot be pinned: it stays owned by this
/// process and goes with it; README: north-south traffic survives a controller restart only
/// on kernels >= 6.6).
fn attach_tc(
    ebpf: &mut Ebpf,
    links_dir: &std::path::Path,
    device: &str,
    tcx: bool,
) -> Result<Vec<String>, EbpfError> {
    let mut pins = Vec::new();
    for (name, direction) in [
        (program_names::TC_INGRESS, TcAttachType::Ingress),
        (program_names::TC_EGRESS, TcAttachType::Egress),
    ] {
        let program: &mut SchedClassifier = program(ebpf, name)?;
        if !tcx {
            // Old kernels attach through a clsact qdisc, which may already exist.
            let _ = aya::programs::tc::qdisc_add_clsact(device);
        }
        let id = program
            .attach(device, direction)
            .map_err(|source| EbpfError::Device {
                device: device.to_owned(),
                source,
            })?;
        if tcx {
            let link = program
                .take_link(id)
                .map_err(|source| EbpfError::Program { name, source })?;
            let pin_name = format!("{name}_{device}");
            pin_link(link, &links_dir.join(&pin_name))?;
            pins.push(pin_name);
        }
    }
    Ok(pins)
}

/// Creates the pin directories; the path must be on a bpffs mount.
fn prepare_bpffs(root: &std::path::Path, dirs: &[&std::path::Path]) -> Result<(), EbpfError> {
    let fail = |message: String| EbpfError::Bpffs {
        path: root.to_owned(),
        message,
    };
    for dir in dirs {
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    }
    let stat = nix::sys::statfs::statfs(root).map_err(|e| fail(e.to_string()))?;
    if stat.filesystem_type().0 as i64 != BPF_FS_MAGIC {
        return Err(fail(
            "not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)".into(),
        ));
    }
    Ok(())
}

/// Forwards the programs' aya-log records to the `log` facade (and so to our tracing
/// output) from a task that lives as long as the runtime; failures only cost the logs.
fn forward_kernel_logs(ebpf: &mut Ebpf) {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(e) => {
            tracing::warn!(error = %e, "kernel-side logs unavailable");
            return;
        }
    };
    // SAFETY: the logger owns its ring buffer's descriptor for its whole life, and the
    // AsyncFd owns the logger, so the descriptor stays open and the same while registered.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "kernel-side logs unavailable");
            return;
        }
    };
    tokio::spawn(async move {
        while let Ok(mut ready) = fd.readable_mut().await {
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    });
}

/// One pass over a packet-path conntrack map (either family's): deletes both directions of
/// the flows to backends in `gone` (otherwise a UDP client that keeps its source port stays
/// stuck on a dead backend; kube-proxy clears conntrack likewise) and, with `timeouts`, of the
/// flows idle for longer than their state allows (`switchyard_model::tc_conntrack` decides).
/// Returns how many entries the map holds afterwards.
fn sweep_map<F>(
    (conntrack, name): (
        &mut aya::maps::HashMap<MapData, F::Key, F::Value>,
        &'static str,
    ),
    max: usize,
    timeouts: Option<&crate::model::tc_conntrack::FlowTimeouts>,
    gone: &std::collections::BTreeSet<F::Backend>,
) -> u64
where
    F: tc_ct::CtFamily,
    F::Key: aya::Pod,
    F::Value: aya::Pod,
{
    let entries: Vec<(F::Key, F::Value)> = crate::ebpf::batch_read::entries(conntrack, max);
    let sweep = tc_ct::sweep_family::<F>(&entries, monotonic_ns(), timeouts, gone);
    let mut failed = 0;
    let mut changed = 0;
    let as_read = tc_ct::ByKey::<F>::new(if sweep.delete.is_empty() {
        &[]
    } else {
        &entries
    });
    for key in &sweep.delete {
        // Only an entry still of the flow that was read: since then the tc programs may
        // have given its source-NAT port to a new flow. (Its time and state bits change
        // with every packet and do not count.)
        let now = conntrack.get(key, 0).ok();
        if now.as_ref().map(F::target) != as_read.get(key).map(F::target) {
            changed += 1;
            continue;
        }
        if ignore_missing(conntrack.remove(key), name).is_err() {
            failed += 1;
        }
    }
    if !sweep.delete.is_empty() || failed > 0 {
        tracing::debug!(
            entries = entries.len(),
            expired = sweep.expired,
            to_gone_backends = sweep.to_gone_backends,
            changed,
            failed,
            "packet-path flows deleted"
        );
    }
    let deleted = sweep.delete.len().saturating_sub(changed + failed);
    entries.len().saturating_sub(deleted) as u64
}

/// Writes the source NAT port range (`SWY_SNAT_CONFIG`) and returns the per-device address
/// map for [`write_snat_addr`].
fn write_snat_config(
    ebpf: &mut Ebpf,
    ports: Option<&std::ops::RangeInclusive<u16>>,
) -> Result<aya::maps::HashMap<MapData, u32, u32>, EbpfError> {
    let handle = |name: &'static str| move |source| MapHandleError { name, source };
    let map = ebpf
        .map_mut(map_names::SNAT_CONFIG)
        .ok_or(MapError::InvalidName {
            name: map_names::SNAT_CONFIG.into(),
        })
        .map_err(handle(map_names::SNAT_CONFIG))?;
    let mut array: aya::maps::Array<&mut MapData, SnatConfig> =
        aya::maps::Array::try_from(map).map_err(handle(map_names::SNAT_CONFIG))?;
    let value = match ports {
        Some(range) => SnatConfig {
            port_min: *range.start(),
            port_max: *range.end(),
        },
        None => {
            tracing::warn!("no source ports above the NodePort range: external traffic to remote backends (externalTrafficPolicy Cluster) is dropped");
            SnatConfig::default()
        }
    };
    array
        .set(0, value, 0)
        .map_err(handle(map_names::SNAT_CONFIG))?;
    let map = ebpf
        .take_map(map_names::SNAT_ADDRS)
        .ok_or(MapError::InvalidName {
            name: map_names::SNAT_ADDRS.into(),
        })
        .map_err(handle(map_names::SNAT_ADDRS))?;
    Ok(aya::maps::HashMap::try_from(map).map_err(handle(map_names::SNAT_ADDRS))?)
}

/// Writes the ICMP rate limits the tc programs apply to their refusals.
fn write_refusal_limits(
    ebpf: &mut Ebpf,
    limits: switchyard_common::RefusalLimits,
) -> Result<(), EbpfError> {
    let name = map_names::REFUSAL_LIMITS;
    let handle = move |source| MapHandleError { name, source };
    let map = ebpf
        .map_mut(name)
        .ok_or(MapError::InvalidName { name: name.into() })
        .map_err(handle)?;
    let mut array: aya::maps::Array<&mut MapData, switchyard_common::RefusalLimits> =
        aya::maps::Array::try_from(map).map_err(handle)?;
    array.set(0, limits, 0).map_err(handle)?;
    Ok(())
}

/// Records `device`'s first IPv4 address as the source NAT address of flows leaving there
/// (the address MASQUERADE would pick for a device with one), or removes a stale one. Best
/// effort: without an entry the programs drop new masqueraded flows on that device.
fn write_snat_addr(map: &mut aya::maps::HashMap<MapData, u32, u32>, device: &str) {
    let Ok(ifindex) = nix::net::if_::if_nametoindex(device) else {
        return;
    };
    let addr = nix::ifaddrs::getifaddrs().ok().and_then(|mut addrs| {
        addrs.find_map(|ifaddr| {
            let sin = ifaddr.address?;
            let v4 = sin.as_sockaddr_in()?;
            (ifaddr.interface_name == device).then(|| v4.ip())
        })
    });
    match addr {
        Some(addr) => {
            if let Err(e) = map.insert(ifindex, u32::from(addr).to_be(), 0) {
                tracing::warn!(%device, error = %e, "cannot write the source NAT address");
            }
        }
        None => {
            tracing::warn!(%device, "no IPv4 address: external traffic to remote backends arriving there is dropped");
            let _ = ignore_missing(map.remove(&ifindex), map_names::SNAT_ADDRS);
        }
    }
}

/// The program a pin under `links/` attaches: its name (socket programs) or its name and
/// device (`swy_tc_ingress_eth0`).
fn link_program(pin: &str) -> Option<&'static str> {
    if let Some(program) = SOCKET_PROGRAMS.into_iter().find(|p| pin == *p) {
        return Some(program);
    }
    [program_names::TC_INGRESS, program_names::TC_EGRESS]
        .into_iter()
        .find(|p| {
            pin.strip_prefix(p)
                .is_some_and(|rest| rest.starts_with('_'))
        })
}

/// Key size, value size and entries each map must have for this build and configuration.
fn expected_layouts(config: &EbpfConfig) -> [(&'static str, usize, usize, u32); 17] {
    use std::mem::size_of;
    use switchyard_common::{
        AffinityKey, AffinityKey6, AffinityValue, AffinityValue6, SockRevKey, SockRevKey6,
        SockRevValue, SockRevValue6, DEFAULT_AFFINITY_MAX, DEFAULT_SOCK_REVNAT_MAX, SNAT_ADDRS_MAX,
    };
    let sizes6 = config.sizes6();
    [
        (
            map_names::SERVICES6,
            size_of::<ServiceKey6>(),
            size_of::<ServiceValue>(),
            sizes6.services,
        ),
        (
            map_names::BACKENDS6,
            size_of::<BackendKey>(),
            size_of::<Backend6>(),
            sizes6.backends,
        ),
        (
            map_names::SOCK_REVNAT6,
            size_of::<SockRevKey6>(),
            size_of::<SockRevValue6>(),
            sizes6.sock_revnat,
        ),
        (
            map_names::AFFINITY6,
            size_of::<AffinityKey6>(),
            size_of::<AffinityValue6>(),
            sizes6.affinity,
        ),
        (
            map_names::SERVICES,
            size_of::<ServiceKey>(),
            size_of::<ServiceValue>(),
            config.services_max,
        ),
        (
            map_names::BACKENDS,
            size_of::<BackendKey>(),
            size_of::<Backend>(),
            config.backends_max,
        ),
        (
            map_names::SOCK_REVNAT,
            size_of::<SockRevKey>(),
            size_of::<SockRevValue>(),
            DEFAULT_SOCK_REVNAT_MAX,
        ),
        (
            map_names::AFFINITY,
            size_of::<AffinityKey>(),
            size_of::<AffinityValue>(),
            DEFAULT_AFFINITY_MAX,
        ),
        (
            map_names::CONNTRACK,
            size_of::<CtKey>(),
            size_of::<CtValue>(),
            config.conntrack_max,
        ),
        // LPM trie keys carry a 32-bit prefix length before the data.
        (
            map_names::SOURCE_RANGES,
            4 + size_of::<SourceRangeKey>(),
            1,
            config.source_ranges_max,
        ),
        (
            map_names::SNAT_CONFIG,
            size_of::<u32>(),
            size_of::<SnatConfig>(),
            1,
        ),
        (
            map_names::CONNTRACK6,
            size_of::<switchyard_common::CtKey6>(),
            size_of::<switchyard_common::CtValue6>(),
            sizes6.conntrack,
        ),
        (
            map_names::SOURCE_RANGES6,
            4 + size_of::<switchyard_common::SourceRangeKey6>(),
            1,
            sizes6.source_ranges,
        ),
        (
            map_names::SNAT_ADDRS6,
            size_of::<u32>(),
            size_of::<[u32; 4]>(),
            SNAT_ADDRS_MAX,
        ),
        // Program fds.
        (map_names::TC_V6, size_of::<u32>(), size_of::<u32>(), 2),
        (
            map_names::SNAT_ADDRS,
            size_of::<u32>(),
            size_of::<u32>(),
            SNAT_ADDRS_MAX,
        ),
        (
            map_names::SERVICE_NAMES,
            size_of::<u32>(),
            size_of::<ServiceName>(),
            config.services_max,
        ),
    ]
}

/// Removes pinned maps whose layout or size differs from what this build and configuration
/// need (an upgrade changed a type, or a map size flag changed): adopting them would be
/// wrong, so they are recreated empty and the first full sync refills them.
fn drop_incompatible_pins(maps_dir: &std::path::Path, config: &EbpfConfig) {
    for (name, key, value, max) in expected_layouts(config) {
        let pin = maps_dir.join(name);
        let Ok(info) = aya::maps::MapInfo::from_pin(&pin) else {
            continue;
        };
        let found = (
            info.key_size() as usize,
            info.value_size() as usize,
            info.max_entries(),
        );
        if found != (key, value, max) {
            tracing::warn!(
                map = name,
                ?found,
                wanted = ?(key, value, max),
                "pinned map does not fit this version or its size flag; recreating it empty"
            );
            let _ = std::fs::remove_file(&pin);
        }
    }
}

/// Unpins (and so detaches) every link under `links_dir` not in `keep`.
fn unpin_leftover_links(links_dir: &std::path::Path, keep: &std::collections::BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(links_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if keep.contains(&name) {
            continue;
        }
        match PinnedLink::from_pin(entry.path()).map(PinnedLink::unpin) {
            Ok(Ok(link)) => {
                drop(link);
                tracing::info!(link = %name, "detached a leftover link");
            }
            Ok(Err(e)) => tracing::warn!(link = %name, error = %e, "cannot unpin a leftover link"),
            Err(e) => tracing::warn!(link = %name, error = %e, "cannot open a leftover link"),
        }
    }
}

/// The program `name`, as its concrete type.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, EbpfError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(EbpfError::MissingProgram(name))?
        .try_into()
        .map_err(|source| EbpfError::Program { name, source })
}

/// Pins a freshly attached link at `pin`, and only then releases the link a previous
/// instance pinned there, so the hook is never empty.
fn pin_link<L>(link: L, pin: &std::path::Path) -> Result<(), EbpfError>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Debug,
{
    let pin_error = |message: String| EbpfError::Pin {
        path: pin.to_owned(),
        message,
    };
    let fd_link = FdLink::try_from(link).map_err(|e| pin_error(format!("{e:?}")))?;
    // bpffs refuses names with dots.
    let mut fresh = pin.as_os_str().to_owned();
    fresh.push("_new");
    let fresh = std::path::PathBuf::from(fresh);
    let _ = std::fs::remove_file(&fresh);
    fd_link
        .pin(&fresh)
        .map_err(|e| pin_error(format!("{e:?}")))?;
    // Unpinning the old link (if any) detaches it; the new one is already live.
    if pin.exists() {
        let old = PinnedLink::from_pin(pin).map_err(|e| pin_error(e.to_string()))?;
        drop(old.unpin().map_err(|e| pin_error(e.to_string()))?);
    }
    std::fs::rename(&fresh, pin).map_err(|e| pin_error(e.to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn link_pins_name_their_program() {
        use super::link_program;
        assert_eq!(link_program("swy_connect4"), Some("swy_connect4"));
        assert_eq!(link_program("swy_tc_ingress_eth0"), Some("swy_tc_ingress"));
        assert_eq!(
            link_program("swy_tc_egress_veth-a_b"),
            Some("swy_tc_egress")
        );
        assert_eq!(
            link_program("swy_connect4_new"),
            None,
            "a pin being replaced"
        );
        assert_eq!(link_program("swy_tc_ingressX"), None);
        assert_eq!(link_program("other"), None);
    }
}
