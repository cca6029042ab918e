//! Switchyard's kernel-side programs.
//!
//! Built for `bpfel-unknown-none` by `cargo xtask build` and embedded into the `switchyard` binary.
//! On the host target this crate compiles to an empty binary so `cargo clippy --workspace` works.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// The compare-exchange in tc::snat_reuse (no `core::sync::atomic` CAS on this target).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod lb;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod sock_addr;
#[cfg(target_arch = "bpf")]
mod tc;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach this; there is no unwinding in BPF.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
