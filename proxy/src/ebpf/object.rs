//! The kernel object embedded at build time (see build.rs).

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/switchyard.bpf.o"));

/// The embedded eBPF object, or `None` when the binary was built without it.
pub fn embedded_object() -> Option<&'static [u8]> {
    (!OBJECT.is_empty()).then_some(OBJECT)
}
