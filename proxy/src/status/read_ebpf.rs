//! Reading ebpf mode's pinned state: the maps' entries, their sizes, the links. Thin: the
//! rows come from [`crate::model::status::ebpf`].
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{HashMap, Map, MapData, MapError, MapInfo, MapType};
use aya::programs::links::{FdLink, LinkType, PinnedLink};
use aya::Pod;
use switchyard_common::{
    map_names, AffinityKey, AffinityKey6, AffinityValue, AffinityValue6, Backend6, BackendKey,
    CtKey, CtValue, ServiceKey, ServiceKey6, ServiceName, ServiceValue, SockRevKey, SockRevKey6,
    SockRevValue, SockRevValue6, SourceRangeKey,
};

use crate::ebpf::dataplane::MAPS;
use crate::model::status::ebpf::EbpfMaps;
use crate::model::status::{LinkRow, MapRow};

/// Why the pinned state cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A map we need cannot be opened or read.
    #[error("pinned map {path}: {source}")]
    Map {
        /// Its pin.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: MapError,
    },
}

/// What is pinned under one `--bpffs-path`.
pub struct Pinned {
    /// The maps' entries.
    pub maps: EbpfMaps,
    /// Sizes of every pinned map.
    pub map_rows: Vec<MapRow>,
    /// The pinned links.
    pub links: Vec<LinkRow>,
    /// What could not be read.
    pub notes: Vec<String>,
}

/// Whether anything of ebpf mode is pinned under `root`.
pub fn is_programmed(root: &Path) -> bool {
    root.join("maps").join(map_names::SERVICES).exists()
}

/// Reads everything pinned under `root`.
pub fn read(root: &Path) -> Result<Pinned, ReadError> {
    let dir = root.join("maps");
    let pin = |name: &str| dir.join(name);
    let mut notes = Vec::new();
    let services: Vec<(ServiceKey, ServiceValue)> = entries(&pin(map_names::SERVICES))?;
    let backends: Vec<(BackendKey, switchyard_common::Backend)> =
        entries(&pin(map_names::BACKENDS))?;
    // The IPv6 maps are missing from state an older version left.
    let (mut services6, mut backends6) = (Vec::new(), Vec::new());
    if pin(map_names::SERVICES6).exists() {
        services6 = entries::<ServiceKey6, ServiceValue>(&pin(map_names::SERVICES6))?;
        backends6 = entries::<BackendKey, Backend6>(&pin(map_names::BACKENDS6))?;
    }
    let names = if pin(map_names::SERVICE_NAMES).exists() {
        Some(entries::<u32, ServiceName>(&pin(map_names::SERVICE_NAMES))?)
    } else {
        None
    };
    let source_ranges = match source_ranges(&pin(map_names::SOURCE_RANGES)) {
        Ok(ranges) => ranges,
        Err(e) => {
            notes.push(format!(
                "{}: {e}; source ranges are not shown",
                map_names::SOURCE_RANGES
            ));
            Vec::new()
        }
    };
    let counts = |name: &str| -> Option<u64> {
        let path = pin(name);
        let n = match name {
            map_names::SERVICES => services.len(),
            map_names::BACKENDS => backends.len(),
            map_names::SOURCE_RANGES => source_ranges.len(),
            map_names::SERVICE_NAMES => names.as_ref().map_or(0, Vec::len),
            map_names::CONNTRACK => count::<CtKey, CtValue>(&path)?,
            map_names::AFFINITY => count::<AffinityKey, AffinityValue>(&path)?,
            map_names::SOCK_REVNAT => count::<SockRevKey, SockRevValue>(&path)?,
            map_names::SNAT_ADDRS => count::<u32, u32>(&path)?,
            map_names::SERVICES6 => services6.len(),
            map_names::BACKENDS6 => backends6.len(),
            map_names::AFFINITY6 => count::<AffinityKey6, AffinityValue6>(&path)?,
            map_names::SOCK_REVNAT6 => count::<SockRevKey6, SockRevValue6>(&path)?,
            map_names::CONNTRACK6 => {
                count::<switchyard_common::CtKey6, switchyard_common::CtValue6>(&path)?
            }
            map_names::SNAT_ADDRS6 => count::<u32, [u32; 4]>(&path)?,
            // An array holds every index.
            _ => return None,
        };
        Some(n as u64)
    };
    let mut map_rows = Vec::new();
    for name in MAPS {
        let path = pin(name);
        if !path.exists() {
            notes.push(format!("map {name} is not pinned"));
            continue;
        }
        let info = match MapInfo::from_pin(&path) {
            Ok(info) => info,
            Err(e) => {
                notes.push(format!("map {name}: {e}"));
                continue;
            }
        };
        let kind = info.map_type().map(type_name).unwrap_or("unknown");
        let entries = match kind {
            "array" => Some(u64::from(info.max_entries())),
            _ => counts(name),
        };
        map_rows.push(MapRow {
            name: name.to_owned(),
            kind: kind.to_owned(),
            entries,
            capacity: u64::from(info.max_entries()),
        });
    }
    if let Ok(found) = std::fs::read_dir(&dir) {
        for entry in found.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !MAPS.contains(&name.as_str()) {
                notes.push(format!("unknown pin maps/{name} (another version's?)"));
            }
        }
    }
    let (links, link_notes) = links(&root.join("links"));
    notes.extend(link_notes);
    Ok(Pinned {
        maps: EbpfMaps {
            services,
            backends,
            names,
            source_ranges,
            services6,
            backends6,
        },
        map_rows,
        links,
        notes,
    })
}

fn hash_map<K: Pod, V: Pod>(path: &Path) -> Result<HashMap<MapData, K, V>, MapError> {
    HashMap::try_from(Map::from_map_data(MapData::from_pin(path)?)?)
}

/// Every entry of a pinned hash map, in one pass.
fn entries<K: Pod, V: Pod>(path: &Path) -> Result<Vec<(K, V)>, ReadError> {
    let error = |source| ReadError::Map {
        path: path.to_owned(),
        source,
    };
    let map = hash_map::<K, V>(path).map_err(error)?;
    map.iter().collect::<Result<_, _>>().map_err(error)
}

/// The keys of a pinned (LRU) hash map, counted; `None` if it cannot be read.
fn count<K: Pod, V: Pod>(path: &Path) -> Option<usize> {
    let map = hash_map::<K, V>(path).ok()?;
    let capacity = MapInfo::from_pin(path).ok()?.max_entries();
    // A key the programs delete while we walk restarts the kernel's walk: stop at capacity.
    Some(
        map.keys()
            .take(capacity as usize)
            .filter(Result::is_ok)
            .count(),
    )
}

fn source_ranges(path: &Path) -> Result<Vec<(SourceRangeKey, u32)>, MapError> {
    let trie: LpmTrie<MapData, SourceRangeKey, u8> =
        LpmTrie::try_from(Map::from_map_data(MapData::from_pin(path)?)?)?;
    trie.keys()
        .map(|k| k.map(|k: LpmKey<SourceRangeKey>| (k.data(), k.prefix_len())))
        .collect()
}

fn type_name(kind: MapType) -> &'static str {
    match kind {
        MapType::Hash => "hash",
        MapType::LruHash => "lru_hash",
        MapType::LpmTrie => "lpm_trie",
        MapType::Array => "array",
        _ => "other",
    }
}

/// The pins under `links/`: which program each attaches. Opening a pin does not change it;
/// the link stays attached as long as the pin exists.
fn links(dir: &Path) -> (Vec<LinkRow>, Vec<String>) {
    let mut notes = Vec::new();
    let Ok(found) = std::fs::read_dir(dir) else {
        notes.push(format!("no pinned links under {}", dir.display()));
        return (Vec::new(), notes);
    };
    let programs: std::collections::BTreeMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| Some((p.id(), full_program_name(p.name_as_str()?))))
        .collect();
    let mut rows = Vec::new();
    let mut pins: Vec<_> = found.flatten().map(|e| e.path()).collect();
    pins.sort();
    for path in pins {
        let pin = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let info = PinnedLink::from_pin(&path)
            .map(FdLink::from)
            .and_then(|l| l.info());
        match info {
            Ok(info) => rows.push(LinkRow {
                kind: info
                    .link_type()
                    .map(link_type_name)
                    .unwrap_or_else(|_| "unknown".into()),
                link_id: info.id(),
                program_id: info.program_id(),
                program: programs.get(&info.program_id()).cloned(),
                pin,
            }),
            Err(e) => notes.push(format!("link {pin}: {e}")),
        }
    }
    (rows, notes)
}

/// The kernel keeps 15 bytes of a program's name (`swy_getpeername` of `swy_getpeername4`);
/// ours are given back whole.
fn full_program_name(kernel: &str) -> String {
    use switchyard_common::program_names::*;
    [
        CONNECT4,
        SENDMSG4,
        RECVMSG4,
        GETPEERNAME4,
        CONNECT6,
        SENDMSG6,
        RECVMSG6,
        GETPEERNAME6,
        TC_INGRESS,
        TC_EGRESS,
    ]
    .into_iter()
    .find(|ours| *ours == kernel || (kernel.len() == 15 && ours.starts_with(kernel)))
    .unwrap_or(kernel)
    .to_owned()
}

fn link_type_name(kind: LinkType) -> String {
    match kind {
        LinkType::Cgroup => "cgroup".into(),
        LinkType::Tcx => "tcx".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}
