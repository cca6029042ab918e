//! The image recipe's parts, cheaply (the OCI writer's digests, the wrapper's choice, the
//! package list), and a built image when there is one: `cargo xtask test` builds the debug
//! image before running the tests, so there it always is (a plain `cargo test` without an
//! image says so and checks the rest).
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{contents, oci, packages, tar_c};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xtask-image-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tempdir");
    dir
}

fn config() -> oci::ImageConfig {
    oci::ImageConfig {
        entrypoint: vec!["/usr/local/bin/switchyard".into()],
        env: vec!["PATH=/usr/bin".into()],
        created: "2025-01-01T00:00:00Z".into(),
        labels: vec![],
        tag: "latest".into(),
    }
}

#[test]
fn oci_layout_digests_are_checked() {
    let dir = tempdir("oci");
    let mut layers = Vec::new();
    for (i, file) in ["usr/bin/a", "usr/local/bin/switchyard"].iter().enumerate() {
        let staging = dir.join(format!("layer{i}"));
        let path = staging.join(file);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, format!("content {i}")).expect("write");
        let tar = dir.join(format!("layer{i}.tar"));
        tar_c(&staging, &["."], &tar).expect("tar");
        layers.push(tar);
    }
    let layout = dir.join("layout");
    let manifest = oci::write_layout(&layout, &layers, &config()).expect("write");
    assert!(
        manifest.starts_with("sha256:") && manifest.len() == 71,
        "{manifest}"
    );
    let verified = oci::verify_layout(&layout).expect("a layout it wrote verifies");
    assert_eq!(verified.layers.len(), 2);
    assert_eq!(verified.config["architecture"], oci::oci_arch());
    assert_eq!(
        verified.config["rootfs"]["diff_ids"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // A layer whose content changed no longer matches its digest.
    let blob = &verified.layers[1];
    let mut bytes = std::fs::read(blob).expect("read");
    bytes[600] ^= 1;
    std::fs::write(blob, &bytes).expect("write");
    let err = oci::verify_layout(&layout)
        .err()
        .expect("tampered layer")
        .to_string();
    assert!(err.contains("digest"), "{err}");
    bytes[600] ^= 1;
    std::fs::write(blob, &bytes).expect("restore");
    oci::verify_layout(&layout).expect("restored");

    // So does an edited index (a manifest digest that names nothing).
    let index_path = layout.join("index.json");
    let index = std::fs::read_to_string(&index_path).expect("index");
    std::fs::write(&index_path, index.replace(&manifest[7..15], "00000000")).expect("write");
    assert!(oci::verify_layout(&layout).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs the wrapper (as `name`) with stub iptables tools whose save output is given.
fn wrapper(name: &str, nft_save: &str, legacy_save: &str) -> String {
    let dir = tempdir(&format!(
        "wrapper-{name}-{}",
        nft_save.len() * 7 + legacy_save.len()
    ));
    let stub = |file: &str, body: &str| {
        let path = dir.join(file);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("stub");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    };
    std::fs::write(dir.join("nft.save"), nft_save).expect("nft");
    std::fs::write(dir.join("legacy.save"), legacy_save).expect("legacy");
    stub(
        "iptables-nft-save",
        &format!("cat {}/nft.save", dir.display()),
    );
    stub("ip6tables-nft-save", "exit 1");
    stub(
        "iptables-legacy-save",
        &format!("cat {}/legacy.save", dir.display()),
    );
    stub("ip6tables-legacy-save", "exit 1");
    stub("xtables-nft-multi", "echo nft \"$@\"");
    stub("xtables-legacy-multi", "echo legacy \"$@\"");
    let link = dir.join(name);
    std::os::unix::fs::symlink(root().join("image/iptables-wrapper"), &link).expect("link");
    let out = Command::new(&link)
        .arg("-t")
        .arg("nat")
        .env("PATH", format!("{}:/usr/bin:/bin", dir.display()))
        .output()
        .expect("run the wrapper");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn wrapper_picks_the_hosts_backend_as_kube_proxys_image_does() {
    let hint = "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n";
    let canary = "*mangle\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n";
    let rules = |n: usize| {
        let mut s = String::from("*filter\n");
        for i in 0..n {
            s.push_str(&format!("-A INPUT -s 198.18.0.{i}/32 -j ACCEPT\n"));
        }
        s + "COMMIT\n"
    };
    // kubelet's hint decides, even against more rules in the other backend.
    assert_eq!(wrapper("iptables", hint, &rules(5)), "nft iptables -t nat");
    assert_eq!(
        wrapper("iptables-save", &rules(5), canary),
        "legacy iptables-save -t nat"
    );
    // Without hints, the backend with more rules; a tie is nft.
    assert_eq!(
        wrapper("iptables-restore", &rules(1), &rules(3)),
        "legacy iptables-restore -t nat"
    );
    assert_eq!(
        wrapper("ip6tables", &rules(2), &rules(2)),
        "nft ip6tables -t nat"
    );
    assert_eq!(wrapper("iptables", "", ""), "nft iptables -t nat");
}

#[test]
fn the_recipe_names_what_both_modes_need() {
    let recipe = std::fs::read_to_string(root().join("image/packages")).expect("image/packages");
    let packages = packages(&recipe);
    for needed in ["iptables", "nftables", "ipset", "mount"] {
        assert!(
            packages.contains(&needed),
            "{needed} missing from {packages:?}"
        );
    }
    assert!(packages.iter().all(|p| !p.contains(' ')), "{packages:?}");
}

#[test]
fn bpf_objects_are_recognised() {
    let mut elf = vec![0u8; 64];
    elf[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
    elf[16] = 1;
    elf[18] = 247;
    let mut binary = vec![0u8; 1000];
    binary.extend_from_slice(&elf);
    assert!(contents::embeds_bpf_object(&binary));
    // An x86-64 executable header is not one.
    elf[16] = 2;
    elf[18] = 62;
    assert!(!contents::embeds_bpf_object(&elf));
}

/// The built image (`cargo xtask image`, or the debug one `cargo xtask test` builds):
/// digests, files, links, the embedded eBPF object, and the programs running in it.
#[test]
fn built_image_holds_what_both_modes_need() {
    let candidates = [
        std::env::var_os("SWITCHYARD_IMAGE").map(PathBuf::from),
        Some(super::default_out(&root(), true)),
        Some(super::default_out(&root(), false)),
    ];
    let Some(image) = candidates.into_iter().flatten().find(|p| p.is_file()) else {
        eprintln!("no built image: run `cargo xtask image` (cargo xtask test builds one)");
        return;
    };
    let report = contents::check(&image).unwrap_or_else(|e| panic!("{}: {e:#}", image.display()));
    // An empty namespace has no rules in either backend: the tie goes to nft.
    assert_eq!(report.wrapper_backend, "nft");
    assert!(report.rootfs.join("usr/local/bin/switchyard").is_file());
}
