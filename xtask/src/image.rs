//! `cargo xtask image`: the Switchyard container image as an OCI image layout archive,
//! built on this machine without a container engine or registry:
//!
//! 1. the root filesystem: Debian 12's `essential` set plus `image/packages` (iptables with
//!    both backends, nftables, ipset, mount), made by mmdebstrap from Debian's archive, with
//!    `SOURCE_DATE_EPOCH` fixed. It is cached under `/var/cache/switchyard-image/`, keyed by
//!    the recipe's hash, so later builds (and CI runs on the same machine) reuse it;
//! 2. a second layer: `/usr/local/bin/switchyard` (the eBPF object embedded), the iptables
//!    wrapper (`image/iptables-wrapper`) and the links that make it `iptables`;
//! 3. the config (entrypoint, PATH), manifest and index, every blob named by its SHA-256;
//!    then the layout is tarred and checked ([`contents::check`]).
//!
//! Load it with `ctr -n k8s.io images import --base-name switchyard target/image/switchyard.oci.tar`
//! or push it with `skopeo copy oci-archive:target/image/switchyard.oci.tar docker://REGISTRY/switchyard:TAG`.
pub mod contents;
pub mod oci;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::command::run;

/// The Debian release and archive the root filesystem comes from.
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// Every timestamp in the image (2025-01-01T00:00:00Z).
const SOURCE_DATE_EPOCH: u64 = 1_735_689_600;
const CREATED: &str = "2025-01-01T00:00:00Z";
/// Cached root filesystems.
const CACHE: &str = "/var/cache/switchyard-image";
/// Links to the wrapper under usr/sbin.
const WRAPPED: &[&str] = contents::WRAPPED;

/// Options of `cargo xtask image`.
#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// Use the debug build (what `cargo xtask test` checks) instead of a release build.
    #[arg(long)]
    pub debug: bool,
    /// Where to write the OCI archive (default `target/image/switchyard.oci.tar`, or
    /// `switchyard-debug.oci.tar` with `--debug`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The default archive path.
pub fn default_out(root: &Path, debug: bool) -> PathBuf {
    root.join("target/image").join(if debug {
        "switchyard-debug.oci.tar"
    } else {
        "switchyard.oci.tar"
    })
}

/// Builds the binaries (unless `prebuilt`), then the image; returns its path.
pub fn image(root: &Path, args: &ImageArgs, prebuilt: bool) -> anyhow::Result<PathBuf> {
    if !prebuilt {
        crate::setup::setup()?;
        crate::build::build(root, !args.debug)?;
    }
    let binary = root
        .join("target")
        .join(if args.debug { "debug" } else { "release" })
        .join("switchyard");
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| default_out(root, args.debug));
    let work = root.join("target/image/work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;

    let recipe = std::fs::read_to_string(root.join("image/packages"))?;
    let rootfs = rootfs_layer(&recipe)?;
    let app = app_layer(root, &binary, &work)?;
    let layout = work.join("layout");
    let version = env!("CARGO_PKG_VERSION");
    oci::write_layout(
        &layout,
        &[rootfs, app],
        &oci::ImageConfig {
            entrypoint: vec!["/usr/local/bin/switchyard".into()],
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            created: CREATED.into(),
            labels: vec![
                ("org.opencontainers.image.title".into(), "switchyard".into()),
                ("org.opencontainers.image.version".into(), version.into()),
                (
                    "org.opencontainers.image.base.name".into(),
                    format!("debian:{SUITE} (mmdebstrap, essential + image/packages)"),
                ),
            ],
            tag: "latest".into(),
        },
    )?;
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    tar_c(&layout, &["oci-layout", "index.json", "blobs"], &out)?;
    let _ = std::fs::remove_dir_all(&work);
    let report = contents::check(&out).with_context(|| format!("checking {}", out.display()))?;
    eprintln!(
        "image: {} ({}; the wrapper picks {} in an empty namespace)",
        out.display(),
        report.version.trim(),
        report.wrapper_backend
    );
    Ok(out)
}

/// The package list without comments, in order.
pub fn packages(recipe: &str) -> Vec<&str> {
    recipe
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The cached root filesystem layer for `recipe`, made with mmdebstrap when missing.
fn rootfs_layer(recipe: &str) -> anyhow::Result<PathBuf> {
    let packages = packages(recipe);
    let key = {
        let mut h = Sha256::new();
        h.update(format!(
            "{SUITE}\n{MIRROR}\n{SOURCE_DATE_EPOCH}\n{}\n",
            packages.join(",")
        ));
        let digest = h.finalize();
        digest
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let cached = Path::new(CACHE).join(format!("rootfs-{SUITE}-{key}.tar"));
    if cached.is_file() {
        return Ok(cached);
    }
    std::fs::create_dir_all(CACHE)?;
    let partial = cached.with_extension("partial");
    eprintln!(
        "image: building the root filesystem with mmdebstrap (cached as {})",
        cached.display()
    );
    run(Command::new("mmdebstrap")
        .args(["--quiet", "--variant=essential"])
        .arg(format!("--include={}", packages.join(",")))
        // Documentation, manual pages and translations are of no use in the image.
        .args([
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-exclude=/usr/share/info/*",
            "--format=tar",
            SUITE,
        ])
        .arg(&partial)
        .arg(MIRROR)
        .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH.to_string()))?;
    std::fs::rename(&partial, &cached)?;
    Ok(cached)
}

/// The layer with the binary and the wrapper.
fn app_layer(root: &Path, binary: &Path, work: &Path) -> anyhow::Result<PathBuf> {
    let staging = work.join("app");
    let bin = staging.join("usr/local/bin");
    let sbin = staging.join("usr/sbin");
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(&sbin)?;
    std::fs::copy(binary, bin.join("switchyard"))
        .with_context(|| format!("{} (build it first)", binary.display()))?;
    // Debug information is most of a debug build's size; symbols stay for backtraces. The
    // embedded eBPF object is data, untouched.
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg(bin.join("switchyard")))?;
    std::fs::copy(
        root.join("image/iptables-wrapper"),
        sbin.join("iptables-wrapper"),
    )?;
    for name in WRAPPED {
        std::os::unix::fs::symlink("iptables-wrapper", sbin.join(name))?;
    }
    use std::os::unix::fs::PermissionsExt;
    for file in [bin.join("switchyard"), sbin.join("iptables-wrapper")] {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755))?;
    }
    let layer = work.join("app.tar");
    tar_c(&staging, &["."], &layer)?;
    Ok(layer)
}

/// A reproducible tar of `entries` under `dir`: sorted, fixed times, owner root.
pub fn tar_c(dir: &Path, entries: &[&str], out: &Path) -> anyhow::Result<()> {
    run(Command::new("tar")
        .args([
            "--sort=name",
            &format!("--mtime=@{SOURCE_DATE_EPOCH}"),
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--format=gnu",
            "-cf",
        ])
        .arg(out)
        .arg("-C")
        .arg(dir)
        .args(entries))
}
