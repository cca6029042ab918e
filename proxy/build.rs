//! Embeds the eBPF object built by `cargo xtask build` into the binary.
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
}
