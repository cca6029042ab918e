//! Embeds the eBPF object built by `cargo xtask build` into the binary, and records the
//! compiler's version for the build info metric.
//!
//! Without the object (plain `cargo build`, clippy) an empty file is embedded and ebpf mode
//! reports at start-up that the binary was built without it.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=SWITCHYARD_EBPF_OBJECT");
    let object = std::env::var_os("SWITCHYARD_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let manifest_dir =
                PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
            manifest_dir.join("../target/bpf/bpfel-unknown-none/release/switchyard-ebpf")
        });
    println!("cargo:rerun-if-changed={}", object.display());
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("switchyard.bpf.o");
    let bytes = std::fs::read(&object).unwrap_or_default();
    if let Err(e) = std::fs::write(&out, bytes) {
        println!("cargo:warning=cannot write {}: {e}", out.display());
        std::process::exit(1);
    }
    // Cargo reruns build scripts when the compiler changes, so this stays current.
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=SWITCHYARD_RUSTC_VERSION={version}");
}
