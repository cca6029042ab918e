//! `cargo xtask lint`: formatting and clippy, for userspace and the kernel crate.
use std::path::Path;

use crate::command::{cargo, run};

/// Fails on unformatted code or any clippy warning.
pub fn lint(root: &Path) -> anyhow::Result<()> {
    run(cargo(None)
        .current_dir(root)
        .args(["fmt", "--all", "--check"]))?;
    // The fuzz crate is outside the workspace; formatting it needs no build.
    run(cargo(None).current_dir(root).args([
        "fmt",
        "--manifest-path",
        "proxy/fuzz/Cargo.toml",
        "--check",
    ]))?;
    run(cargo(None).current_dir(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo(Some("nightly"))
        .current_dir(root)
        .args([
            "clippy",
            "--package",
            "switchyard-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .env("CARGO_TARGET_DIR", root.join(crate::build::BPF_TARGET_DIR)))
}
