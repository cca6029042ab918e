//! Bad input at the binary's edge: clear errors naming the flag or field, non-zero exit.
use std::process::Command;

fn switchyard(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .expect("run switchyard");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_kubeconfig_is_named() {
    let (ok, err) = switchyard(&["--kubeconfig", "/nonexistent/switchyard/kubeconfig"]);
    assert!(!ok);
    assert!(
        err.contains("--kubeconfig /nonexistent/switchyard/kubeconfig: file does not exist"),
        "{err}"
    );
}

#[test]
fn missing_manifest_dir_is_named() {
    let (ok, err) = switchyard(&["--manifests", "/nonexistent/switchyard/manifests"]);
    assert!(!ok);
    assert!(
        err.contains("--manifests /nonexistent/switchyard/manifests: not a directory"),
        "{err}"
    );
}

#[test]
fn unknown_mode_is_rejected_with_the_choices() {
    let (ok, err) = switchyard(&["--proxy-mode", "ipvs"]);
    assert!(!ok);
    assert!(
        err.contains("invalid value 'ipvs' for '--proxy-mode"),
        "{err}"
    );
    assert!(err.contains("iptables") && err.contains("ebpf"), "{err}");
}

#[test]
fn invalid_config_file_field_is_named() {
    let dir = std::env::temp_dir().join(format!("swy-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tempdir");
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        "kind: KubeProxyConfiguration\nclusterCIDR: 198.19.0.0/99\n",
    )
    .expect("write");
    let (ok, err) = switchyard(&["--config", config.to_str().expect("utf-8 path")]);
    std::fs::remove_dir_all(&dir).ok();
    assert!(!ok);
    assert!(err.contains("clusterCIDR"), "{err}");
}
