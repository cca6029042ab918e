//! `cargo xtask build`: the eBPF object (nightly, build-std) and the userspace binaries.
use std::path::Path;

use crate::command::{cargo, run};

/// Target directory of the kernel build, kept apart so the nightly and stable builds don't
/// invalidate each other's host artifacts.
pub const BPF_TARGET_DIR: &str = "target/bpf";

/// Builds the kernel object, then the binaries that embed and exercise it.
pub fn build(root: &Path, release: bool) -> anyhow::Result<()> {
    run(cargo(Some("nightly"))
        .current_dir(root)
        .args([
            "build",
            "--package",
            "switchyard-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .env("CARGO_TARGET_DIR", root.join(BPF_TARGET_DIR))
        // BTF lets the loader relocate against the running kernel.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf",
        ))?;
    let mut cmd = cargo(None);
    cmd.current_dir(root).args([
        "build",
        "--package",
        "switchyard",
        "--package",
        "switchyard-testbed",
        "--bins",
    ]);
    // proxy/build.rs finds the object at its default path, target/bpf/.../switchyard-ebpf.
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)
}
