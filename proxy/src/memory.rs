//! Handing freed heap memory back to the kernel at the two points of a start where it pays.
//!
//! glibc keeps what a thread frees in that thread's arena, resident, so the next peak stacks
//! on top of it:
//! - loading the eBPF programs allocates about 50 MiB for a moment (the kernel's BTF, the
//!   object, the verifier's work) on a thread of its own while the source parses the objects
//!   on others, which cannot reuse that arena: untrimmed, the two peaks add up (+20 MiB peak
//!   RSS at 10,000 services);
//! - after the first sync, what the start read, parsed and rendered is free, but the handover
//!   and a busy node's conntrack sweep (+13 MiB at 200,000 entries) would allocate on top of it.

/// Returns the free memory of every malloc arena to the kernel (glibc's `malloc_trim`).
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}
