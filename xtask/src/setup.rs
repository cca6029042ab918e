//! `cargo xtask setup`: installs what a fresh machine lacks, idempotently.
use std::process::Command;

use anyhow::Context;

use crate::command::{output, run, succeeds};

/// Debian packages the build, the tests and the demo need.
const PACKAGES: &[&str] = &[
    "iptables",
    "iproute2",
    // Only for a test's failure report (ebpf_restart lists flows); switchyard itself
    // talks ctnetlink.
    "conntrack",
    // The dataplane benchmark's bulk TCP and small-packet UDP measurements.
    "iperf3",
    "nftables",
    "util-linux",
    "llvm-22-dev",
    "libpolly-22-dev",
];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// The cargo-fuzz release `cargo xtask fuzz` drives; it builds with the stable toolchain
/// (installed with its own lock file).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Installs missing pieces and prints what it did.
pub fn setup() -> anyhow::Result<()> {
    let mut did = Vec::new();

    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if !missing.is_empty() {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        did.push(format!("installed {}", missing.join(" ")));
    }

    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
        did.push("installed the nightly toolchain".into());
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
        did.push("added rust-src to nightly".into());
    }

    if !succeeds(Command::new("bpf-linker").arg("--version")) {
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX))?;
        did.push("built bpf-linker against LLVM 22".into());
    }

    let fuzz_version = output(Command::new("cargo").args(["fuzz", "--version"]));
    if fuzz_version.is_none_or(|v| v.trim() != format!("cargo-fuzz {CARGO_FUZZ_VERSION}")) {
        run(Command::new("cargo").args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
        ]))?;
        did.push(format!("installed cargo-fuzz {CARGO_FUZZ_VERSION}"));
    }

    if !bpffs_mounted()? {
        std::fs::create_dir_all("/sys/fs/bpf").ok();
        run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
        did.push("mounted bpffs at /sys/fs/bpf".into());
    }

    if did.is_empty() {
        eprintln!("setup: everything is already in place");
    } else {
        for line in did {
            eprintln!("setup: {line}");
        }
    }
    Ok(())
}

fn bpffs_mounted() -> anyhow::Result<bool> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    Ok(mounts.lines().any(|l| {
        let mut fields = l.split_whitespace();
        let _device = fields.next();
        fields.next() == Some("/sys/fs/bpf") && fields.next() == Some("bpf")
    }))
}
