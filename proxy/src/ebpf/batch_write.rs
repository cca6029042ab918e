//! Writes runs of entries into a hash map with `BPF_MAP_UPDATE_BATCH` and
//! `BPF_MAP_DELETE_BATCH` (kernel >= 5.6): one syscall per run instead of one per entry. A
//! first sync at 10,000 services writes 110,000 entries; aya 0.14 has no batch operations.
//!
//! The kernel applies a batch entry by entry, in order, and stops at the first failure, so a
//! batch is seen by the programs exactly as the same writes made one at a time.
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{HashMap, IterableMap, MapData};
use aya::Pod;
use aya_obj::generated::{bpf_attr, bpf_cmd};

use super::batch_syscall;

/// A batch that stopped early: the first `done` entries were written, the next one failed.
#[derive(Debug, thiserror::Error)]
#[error("batch stopped after {done} entries")]
pub struct Partial {
    /// Entries written before the failure.
    pub done: usize,
    /// Why the next one failed; see [`Partial::unsupported`].
    #[source]
    pub error: std::io::Error,
}

impl Partial {
    /// Whether the kernel has no batch command for this map at all (nothing was written).
    pub fn unsupported(&self) -> bool {
        self.done == 0 && batch_syscall::is_unsupported(&self.error)
    }
}

/// Inserts or replaces `keys[i]` -> `values[i]` in `map`, in order (`BPF_ANY`). The typed
/// handle is what makes the kernel's reads safe: aya checked the map's key and value sizes
/// against `K` and `V`.
pub fn update<K: Pod, V: Pod>(
    map: &HashMap<MapData, K, V>,
    keys: &[K],
    values: &[V],
) -> Result<(), Partial> {
    let count = keys.len().min(values.len());
    batch(
        map.map(),
        bpf_cmd::BPF_MAP_UPDATE_BATCH,
        keys,
        Some(values),
        count,
    )
}

/// Deletes `keys` from `map`, in order; a key already gone is skipped, as a single delete of
/// it counts as success.
pub fn delete<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>, keys: &[K]) -> Result<(), Partial> {
    let mut start = 0;
    while start < keys.len() {
        let rest = &keys[start..];
        match batch::<K, V>(
            map.map(),
            bpf_cmd::BPF_MAP_DELETE_BATCH,
            rest,
            None,
            rest.len(),
        ) {
            Ok(()) => return Ok(()),
            // The kernel stops at a missing key: skip it and go on.
            Err(p) if p.error.raw_os_error() == Some(libc::ENOENT) => start += p.done + 1,
            Err(p) => {
                return Err(Partial {
                    done: start + p.done,
                    error: p.error,
                })
            }
        }
    }
    Ok(())
}

fn batch<K: Pod, V: Pod>(
    map: &MapData,
    cmd: bpf_cmd,
    keys: &[K],
    values: Option<&[V]>,
    count: usize,
) -> Result<(), Partial> {
    if count == 0 {
        return Ok(());
    }
    let Ok(count32) = u32::try_from(count) else {
        // Never this many in one run; split rather than truncate.
        let half = count / 2;
        batch(map, cmd, &keys[..half], values.map(|v| &v[..half]), half)?;
        return batch(
            map,
            cmd,
            &keys[half..],
            values.map(|v| &v[half..]),
            count - half,
        )
        .map_err(|p| Partial {
            done: half + p.done,
            error: p.error,
        });
    };
    // SAFETY: a zeroed bpf_attr is its documented initial state; only the batch member is
    // set, and every pointer in it refers to a live slice of at least `count` elements.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    let b = unsafe { &mut attr.batch };
    b.keys = keys.as_ptr() as u64;
    b.values = values.map_or(0, |v| v.as_ptr() as u64);
    b.count = count32;
    b.map_fd = map.fd().as_fd().as_raw_fd() as u32;
    // SAFETY: the kernel only reads `count` keys (and values) from the slices above.
    let result = unsafe { batch_syscall::run(cmd, &mut attr) };
    result.map_err(|error| Partial {
        // SAFETY: `batch` is the member set above; the kernel wrote back how many it did.
        done: (unsafe { attr.batch.count } as usize).min(count),
        error,
    })
}

#[cfg(test)]
mod tests {
    use aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_HASH;

    use crate::ebpf::batch_syscall::test_maps::u64_map;

    #[test]
    fn a_batch_writes_in_order_and_a_full_map_stops_it_where_a_single_write_would() {
        let map = u64_map(BPF_MAP_TYPE_HASH, 5);
        // Key 1 twice: the later value wins, as with two single writes.
        let keys = [1u64, 2, 1, 3];
        super::update(&map, &keys, &[10u64, 20, 11, 30]).expect("batch update");
        let mut entries: Vec<(u64, u64)> = map.iter().map(|e| e.expect("entry")).collect();
        entries.sort_unstable();
        assert_eq!(entries, [(1, 11), (2, 20), (3, 30)]);

        let partial = super::update(&map, &[4, 5, 6, 7], &[40u64, 50, 60, 70])
            .expect_err("two entries do not fit");
        assert_eq!(partial.done, 2, "{partial:?}");
        assert_eq!(partial.error.raw_os_error(), Some(libc::E2BIG));
        assert!(!partial.unsupported());
        assert_eq!(map.get(&5, 0).expect("written before the failure"), 50);
        assert!(map.get(&6, 0).is_err(), "nothing after the failure");

        // Missing keys (first, middle, last) are skipped; the rest go.
        super::delete(&map, &[9, 1, 8, 2, 3, 7]).expect("batch delete");
        let mut left: Vec<u64> = map.keys().map(|k| k.expect("key")).collect();
        left.sort_unstable();
        assert_eq!(left, [4, 5]);
        super::delete(&map, &[]).expect("nothing to delete");
    }
}
