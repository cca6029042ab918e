//! What the image must hold for both modes, checked on a built image: the layout's digests,
//! then the files of the unpacked root filesystem, then the programs run in it (chrooted, in
//! a throwaway network namespace, so the wrapper's probing reads an empty ruleset).
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context};

use super::oci;

/// Files both modes need, relative to the root (Debian 12 is merged-/usr: /bin is usr/bin).
pub const REQUIRED: &[(&str, &str)] = &[
    (
        "usr/local/bin/switchyard",
        "the proxy (the eBPF object is embedded in it)",
    ),
    (
        "usr/sbin/iptables-wrapper",
        "picks the host's iptables backend",
    ),
    ("usr/sbin/xtables-legacy-multi", "iptables-legacy"),
    ("usr/sbin/xtables-nft-multi", "iptables-nft"),
    (
        "usr/sbin/iptables-legacy-restore",
        "iptables mode, legacy backend",
    ),
    (
        "usr/sbin/iptables-legacy-save",
        "iptables mode, legacy backend",
    ),
    ("usr/sbin/iptables-legacy", "iptables mode, legacy backend"),
    (
        "usr/sbin/iptables-nft-restore",
        "iptables mode, nft backend",
    ),
    ("usr/sbin/iptables-nft-save", "iptables mode, nft backend"),
    ("usr/sbin/iptables-nft", "iptables mode, nft backend"),
    (
        "usr/sbin/nft",
        "listing chains on nft; --cleanup-kube-proxy",
    ),
    (
        "usr/sbin/ipset",
        "--cleanup-kube-proxy (ipvs mode's ipsets)",
    ),
    ("usr/bin/sh", "the bpffs init container"),
    ("usr/bin/stat", "the bpffs init container"),
    ("usr/bin/mount", "the bpffs init container"),
];

/// Names under usr/sbin that must be links to the wrapper.
pub const WRAPPED: &[&str] = &[
    "iptables",
    "iptables-save",
    "iptables-restore",
    "ip6tables",
    "ip6tables-save",
    "ip6tables-restore",
];

/// A checked image.
#[derive(Debug)]
pub struct Report {
    /// The unpacked root filesystem (removed with the report's directory).
    #[allow(dead_code)] // the tests look into it
    pub rootfs: PathBuf,
    /// The backend the wrapper picked in an empty network namespace.
    pub wrapper_backend: String,
    /// `switchyard --version`.
    pub version: String,
    work: PathBuf,
}

impl Drop for Report {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// Unpacks the OCI archive at `image` and checks it.
pub fn check(image: &Path) -> anyhow::Result<Report> {
    let work = std::env::temp_dir().join(format!(
        "switchyard-image-check-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ));
    let layout = work.join("layout");
    let rootfs = work.join("rootfs");
    std::fs::create_dir_all(&layout)?;
    std::fs::create_dir_all(&rootfs)?;
    let mut report = Report {
        rootfs: rootfs.clone(),
        wrapper_backend: String::new(),
        version: String::new(),
        work,
    };
    tar_x(image, &layout)?;
    let verified = oci::verify_layout(&layout)?;
    let entrypoint = &verified.config["config"]["Entrypoint"];
    ensure!(
        entrypoint[0] == "/usr/local/bin/switchyard",
        "Entrypoint is {entrypoint}"
    );
    for layer in &verified.layers {
        tar_x(layer, &rootfs)?;
    }
    for (path, why) in REQUIRED {
        let full = rootfs.join(path);
        ensure!(full.exists(), "{path} is missing ({why})");
    }
    for name in WRAPPED {
        let link = std::fs::read_link(rootfs.join("usr/sbin").join(name))
            .with_context(|| format!("usr/sbin/{name} is not a link"))?;
        ensure!(
            link == Path::new("iptables-wrapper"),
            "usr/sbin/{name} points at {}",
            link.display()
        );
    }
    let binary = std::fs::read(rootfs.join("usr/local/bin/switchyard"))?;
    ensure!(
        embeds_bpf_object(&binary),
        "usr/local/bin/switchyard embeds no eBPF object (built without `cargo xtask build`?)"
    );
    report.version = chroot(&rootfs, &["/usr/local/bin/switchyard", "--version"])?;
    ensure!(
        report.version.starts_with("switchyard "),
        "{}",
        report.version
    );
    let iptables = chroot(&rootfs, &["/usr/sbin/iptables", "--version"])?;
    report.wrapper_backend = if iptables.contains("nf_tables") {
        "nft".into()
    } else if iptables.contains("legacy") {
        "legacy".into()
    } else {
        anyhow::bail!("iptables --version through the wrapper: {iptables}");
    };
    for program in [
        "/usr/sbin/iptables-legacy-save",
        "/usr/sbin/iptables-nft-save",
    ] {
        chroot(&rootfs, &[program, "--version"])?;
    }
    chroot(&rootfs, &["/usr/sbin/nft", "--version"])?;
    chroot(
        &rootfs,
        &["/usr/bin/sh", "-c", "stat -f -c %T / && mount --version"],
    )?;
    Ok(report)
}

/// Whether `binary` holds an ELF relocatable object for the BPF machine (what
/// `proxy/build.rs` embeds from `target/bpf/`; empty when built without it).
pub fn embeds_bpf_object(binary: &[u8]) -> bool {
    // e_ident: ELF, 64-bit, little endian, version 1; then e_type ET_REL (1), e_machine
    // EM_BPF (247), both little endian, at offsets 16 and 18.
    const MAGIC: &[u8] = b"\x7fELF\x02\x01\x01";
    binary
        .windows(20)
        .any(|w| w.starts_with(MAGIC) && w[16..18] == [1, 0] && w[18..20] == [247, 0])
}

fn tar_x(archive: &Path, into: &Path) -> anyhow::Result<()> {
    let out = Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(into)
        .arg("--no-same-owner")
        .output()
        .context("tar")?;
    ensure!(
        out.status.success(),
        "tar -xf {}: {}",
        archive.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Runs `args` chrooted into `rootfs`, in a new network namespace (nothing of the host's
/// rules is read or touched); its stdout and stderr.
fn chroot(rootfs: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("unshare")
        .args(["--net", "--"])
        .arg("chroot")
        .arg(rootfs)
        .args(args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .output()
        .with_context(|| format!("unshare --net chroot {args:?}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "{args:?} in the image: {text}");
    Ok(text)
}
