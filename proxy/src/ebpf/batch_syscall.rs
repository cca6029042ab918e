//! The `bpf(2)` call of the batch commands (`BPF_MAP_*_BATCH`, kernel >= 5.6), which aya
//! 0.14 does not wrap, and how the kernel says it has no such command for a map.
use std::mem::size_of;

use aya_obj::generated::{bpf_attr, bpf_cmd};

/// The kernel's internal "not supported" (`ENOTSUPP`), which the bpf syscall lets out.
const KERNEL_ENOTSUPP: i32 = 524;

/// Runs batch command `cmd` with `attr`; the kernel writes back `attr.batch.count` (how many
/// entries it handled, also on error) and, for lookups, the position.
///
/// # Safety
/// Every pointer in `attr.batch` must refer to a live buffer with room for `count` keys or
/// values of the map's sizes (and a position of the key's size, at least 8 bytes).
pub(super) unsafe fn run(cmd: bpf_cmd, attr: &mut bpf_attr) -> Result<(), std::io::Error> {
    // SAFETY: the caller vouches for the buffers; the size is that of the struct passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether `error`, on a batch command's first call, means the kernel cannot batch this map
/// (older kernels, map types without batch operations such as LPM tries).
pub(super) fn is_unsupported(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | KERNEL_ENOTSUPP)
    )
}

/// Maps of this process for the batch tests (unpinned: freed with it; needs root).
#[cfg(test)]
pub(super) mod test_maps {
    use aya::maps::{HashMap, Map, MapData};
    use aya_obj::generated::bpf_map_type;

    /// An empty `u64 -> u64` map of `kind` with room for `max` entries.
    pub(in crate::ebpf) fn u64_map(kind: bpf_map_type, max: u32) -> HashMap<MapData, u64, u64> {
        let obj = aya_obj::Map::new_from_params(kind as u32, 8, 8, max, 0);
        let data = MapData::create(obj, "swy_batch_test", None).expect("create a map (root)");
        HashMap::try_from(Map::from_map_data(data).expect("a map")).expect("a hash map")
    }
}
