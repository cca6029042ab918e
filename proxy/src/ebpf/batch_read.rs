//! Reads a whole hash map with `BPF_MAP_LOOKUP_BATCH` (kernel >= 5.6): a few thousand
//! entries per syscall instead of aya 0.14's iterator, which makes two syscalls per entry
//! (next key, then lookup). Reading 200,000 conntrack entries took 0.77 s with the iterator
//! and 0.17 s in batches (release build, this machine kind), every `syncPeriod` on a busy
//! node; aya has no batch operations, so this one syscall is ours.
//!
//! Where the kernel refuses the batch command (older kernels, map types without it), the
//! callers fall back to aya's iterator.
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{HashMap, IterableMap, MapData};
use aya::Pod;
use aya_obj::generated::{bpf_attr, bpf_cmd};

use super::batch_syscall;

/// Entries asked for per syscall. A hash bucket is returned whole, so this also bounds the
/// longest bucket a read can take (`ENOSPC` doubles it).
const CHUNK: usize = 4096;
/// The largest chunk tried for a long bucket before giving up.
const MAX_CHUNK: usize = 1 << 20;

/// Why a batch read failed.
#[derive(Debug, thiserror::Error)]
pub enum BatchReadError {
    /// The kernel has no batch lookup for this map (`EINVAL`, `ENOTSUPP` or `EOPNOTSUPP` on
    /// the first call).
    #[error("the kernel cannot read this map in batches")]
    Unsupported(#[source] std::io::Error),
    /// Another failure of the syscall.
    #[error("BPF_MAP_LOOKUP_BATCH")]
    Syscall(#[source] std::io::Error),
}

/// Up to `limit` entries of `map`, read in batches. The programs may change the map
/// meanwhile: the kernel walks it bucket by bucket, so an entry added or removed during the
/// read may be missed or seen, as with the iterator.
pub fn read_all<K: Pod, V: Pod>(
    map: &impl IterableMap<K, V>,
    limit: usize,
) -> Result<Vec<(K, V)>, BatchReadError> {
    let mut out = Vec::new();
    for_each_chunk(map.map(), limit, |keys: &[K], values: &[V]| {
        out.extend(keys.iter().copied().zip(values.iter().copied()));
    })?;
    Ok(out)
}

/// How many entries `map` holds (up to `limit`), read in batches of [`CHUNK`] without
/// keeping them, or with aya's key iterator where the kernel cannot batch.
pub fn count<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>, limit: usize) -> usize {
    let mut n = 0;
    let batched = for_each_chunk(map.map(), limit, |keys: &[K], _: &[V]| n += keys.len());
    match batched {
        Ok(()) => n,
        Err(error) => {
            if !matches!(error, BatchReadError::Unsupported(_)) {
                tracing::debug!(%error, "batch read failed; counting key by key");
            }
            // A key deleted while iterating restarts the kernel's walk: never past `limit`.
            map.keys().take(limit).filter(Result::is_ok).count()
        }
    }
}

/// Hands `visit` the entries of `map` a batch at a time, up to `limit` in all.
fn for_each_chunk<K: Pod, V: Pod>(
    map: &MapData,
    limit: usize,
    mut visit: impl FnMut(&[K], &[V]),
) -> Result<(), BatchReadError> {
    let fd = map.fd().as_fd().as_raw_fd();
    let mut seen = 0;
    let mut chunk = CHUNK;
    // The batch position is opaque to userspace (a bucket index for hash maps); a key's size
    // holds it for every map type.
    let token_len = size_of::<K>().max(size_of::<u64>());
    let mut token = vec![0u8; token_len];
    let mut next = vec![0u8; token_len];
    let mut first = true;
    let mut keys: Vec<MaybeUninit<K>> = Vec::new();
    let mut values: Vec<MaybeUninit<V>> = Vec::new();
    while seen < limit {
        keys.resize_with(chunk, MaybeUninit::uninit);
        values.resize_with(chunk, MaybeUninit::uninit);
        // SAFETY: a zeroed bpf_attr is its documented initial state; only the batch member
        // is set, and every pointer in it refers to a live buffer of the size given.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        let batch = unsafe { &mut attr.batch };
        batch.in_batch = if first { 0 } else { token.as_ptr() as u64 };
        batch.out_batch = next.as_mut_ptr() as u64;
        batch.keys = keys.as_mut_ptr() as u64;
        batch.values = values.as_mut_ptr() as u64;
        batch.count = chunk as u32;
        batch.map_fd = fd as u32;
        // SAFETY: the kernel reads `attr` and writes at most `count` keys and values into
        // buffers with room for `chunk` of each, and the position into `next`.
        let error = unsafe { batch_syscall::run(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr) }.err();
        // The kernel reports how many entries it copied, also with ENOENT (the end).
        // SAFETY: `batch` is the member set above.
        let copied = (unsafe { attr.batch.count } as usize).min(chunk);
        let mut end = false;
        if let Some(error) = error {
            match error.raw_os_error() {
                Some(libc::ENOENT) => end = true,
                Some(libc::ENOSPC) if copied == 0 && chunk < MAX_CHUNK => {
                    // A bucket longer than the chunk: ask again for more at once.
                    chunk *= 2;
                    continue;
                }
                _ if first && batch_syscall::is_unsupported(&error) => {
                    return Err(BatchReadError::Unsupported(error));
                }
                _ => return Err(BatchReadError::Syscall(error)),
            }
        }
        let take = copied.min(limit - seen);
        // SAFETY: the kernel initialised the first `copied` keys and values, and K and V are
        // Pod (every bit pattern is a value); MaybeUninit<T> has T's layout.
        let (k, v) = unsafe {
            (
                std::slice::from_raw_parts(keys.as_ptr().cast::<K>(), take),
                std::slice::from_raw_parts(values.as_ptr().cast::<V>(), take),
            )
        };
        visit(k, v);
        seen += take;
        if end {
            break;
        }
        std::mem::swap(&mut token, &mut next);
        first = false;
    }
    Ok(())
}

/// Up to `limit` entries of `map`: in batches, or with aya's iterator where the kernel cannot
/// batch (or the batch read failed; logged). Entries the iterator fails to read are skipped,
/// as a walk over a map the programs change may meet keys deleted meanwhile; a key deleted
/// while it walks restarts its walk, so it stops at `limit`.
pub fn entries<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>, limit: usize) -> Vec<(K, V)> {
    match read_all(map, limit) {
        Ok(entries) => entries,
        Err(error) => {
            if !matches!(error, BatchReadError::Unsupported(_)) {
                tracing::debug!(%error, "batch read failed; reading entry by entry");
            }
            map.iter().take(limit).filter_map(Result::ok).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use aya::maps::{HashMap, MapData};
    use aya_obj::generated::bpf_map_type;

    use crate::ebpf::batch_syscall::test_maps::u64_map;

    /// An LRU hash map (as `SWY_CONNTRACK` is one) holding `k -> 3k` for `k < entries`.
    fn lru_map(entries: u64) -> HashMap<MapData, u64, u64> {
        let mut map = u64_map(bpf_map_type::BPF_MAP_TYPE_LRU_HASH, 20_000);
        for k in 0..entries {
            map.insert(k, k * 3, 0).expect("insert");
        }
        map
    }

    #[test]
    fn every_entry_comes_back_over_several_batches_and_the_limit_holds() {
        let map = lru_map(10_000);
        let mut read = super::read_all(&map, usize::MAX).expect("batch read");
        read.sort_unstable();
        let expected: Vec<(u64, u64)> = (0..10_000).map(|k| (k, k * 3)).collect();
        assert_eq!(
            read, expected,
            "more than two chunks of 4096, each entry once"
        );
        assert_eq!(super::read_all(&map, 5_000).expect("read").len(), 5_000);
        assert_eq!(super::count(&map, usize::MAX), 10_000);
        assert_eq!(super::count(&map, 5_000), 5_000);
        let empty = lru_map(0);
        assert!(super::read_all(&empty, usize::MAX)
            .expect("read")
            .is_empty());
    }
}
