//! Bad input at the binary's edge: clear errors naming the flag or field, non-zero exit; and
//! kube-proxy's command lines and config files accepted. None of these starts a proxy (each
//! stops at the configuration stage), so they need no root.
use std::process::Command;

/// Flags that make a start-up write no conntrack sysctl: the tests that get that far run in
/// the root network namespace, whose values are the machine's.
const LEAVE_CONNTRACK: [&str; 3] = [
    "--conntrack-max-per-core=0",
    "--conntrack-tcp-timeout-established=0",
    "--conntrack-tcp-timeout-close-wait=0",
];

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
    let (ok, err) = switchyard(&["--proxy-mode", "warp"]);
    assert!(!ok);
    assert!(
        err.contains("invalid value 'warp' for '--proxy-mode"),
        "{err}"
    );
    assert!(err.contains("iptables") && err.contains("ebpf"), "{err}");
}

#[test]
fn unknown_flag_is_rejected() {
    let (ok, err) = switchyard(&["--no-such-flag"]);
    assert!(!ok);
    assert!(
        err.contains("unexpected argument '--no-such-flag'"),
        "{err}"
    );
}

/// kube-proxy flags without effect are accepted, each named in one warning; the missing
/// kubeconfig then stops start-up before anything is programmed.
#[test]
fn kube_proxy_flags_without_effect_warn_and_ipvs_runs_as_iptables() {
    let (ok, err) = switchyard(&[
        "--kubeconfig=/nonexistent/switchyard/kubeconfig",
        "--proxy-mode=ipvs",
        "--vmodule=proxier=4",
        "--feature-gates=SomeGate=true",
        "--ipvs-scheduler=rr",
        "--profiling",
    ]);
    assert!(!ok);
    for flag in [
        "--proxy-mode: ipvs is not implemented by Switchyard; running in iptables mode",
        "--vmodule=proxier=4: has no effect",
        "--feature-gates=SomeGate=true: has no effect",
        "--ipvs-scheduler=rr: has no effect",
        "--profiling=true: has no effect",
    ] {
        assert_eq!(err.matches(flag).count(), 1, "{flag}: {err}");
    }
    assert!(
        err.contains("--kubeconfig /nonexistent/switchyard/kubeconfig: file does not exist"),
        "{err}"
    );
}

/// kubeadm's stock ConfigMap is accepted as it is: no warning, and the kubeconfig it names
/// is the only thing missing on this machine.
#[test]
fn kubeadm_configmap_is_accepted() {
    let kubeconfig = std::path::Path::new("/var/lib/kube-proxy/kubeconfig.conf");
    if kubeconfig.exists() {
        // A real node: do not start a proxy from a test.
        eprintln!("skipped: {} exists", kubeconfig.display());
        return;
    }
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/kubeadm-kube-proxy-config.conf"
    );
    let (ok, err) = switchyard(&["--config", config, "--hostname-override=node-1"]);
    assert!(!ok);
    assert!(!err.contains("WARN"), "{err}");
    assert!(
        err.contains(
            "clientConnection.kubeconfig /var/lib/kube-proxy/kubeconfig.conf: file does not exist"
        ),
        "{err}"
    );
}

#[test]
fn init_only_exits_after_the_check() {
    // Run in the root namespace: every conntrack value, and route_localnet (which
    // --init-only sets for localhost NodePorts in iptables mode), is left alone.
    let mut args = vec![
        "--init-only",
        "--manifests",
        "/",
        "--iptables-localhost-nodeports=false",
    ];
    args.extend(LEAVE_CONNTRACK);
    let (ok, err) = switchyard(&args);
    assert!(ok, "{err}");
    assert!(err.contains("--init-only"), "{err}");
    let (ok, err) = switchyard(&["--write-config-to", "/nonexistent/switchyard/out.yaml"]);
    assert!(!ok);
    assert!(err.contains("--write-config-to"), "{err}");
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

/// An API server that does not answer keeps Switchyard waiting for its first lists; SIGTERM
/// then ends it cleanly (exit 0, not killed by the signal), and the log names the server.
#[test]
fn sigterm_while_waiting_for_the_api_server_exits_cleanly() {
    use std::time::{Duration, Instant};

    let dir = std::env::temp_dir().join(format!("swy-cli-term-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tempdir");
    let kubeconfig = dir.join("kubeconfig");
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
         clusters: [{name: c, cluster: {server: \"http://127.0.0.1:1\"}}]\n\
         contexts: [{name: c, context: {cluster: c, user: u}}]\n\
         users: [{name: u, user: {}}]\n",
    )
    .expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "--kubeconfig",
            kubeconfig.to_str().expect("utf-8 path"),
            "--healthz-bind-address=",
            "--metrics-bind-address=",
        ])
        // The root namespace's conntrack values are the machine's: leave them.
        .args(LEAVE_CONNTRACK)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run switchyard");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().expect("poll").is_none(),
        "still waiting for the lists"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll") {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut log).ok();
    std::fs::remove_dir_all(&dir).ok();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(
        log.contains("127.0.0.1:1"),
        "the failing server is named:\n{log}"
    );
}

/// `status` is a subcommand: kube-proxy takes no positional arguments, so it cannot be taken
/// for anything else, and proxy flags do not mix with it; `--config` alone still runs the
/// proxy's configuration path.
#[test]
fn status_is_a_subcommand_that_does_not_mix_with_proxy_flags() {
    let (ok, err) = switchyard(&["--config", "/nonexistent/switchyard/config.yaml", "status"]);
    assert!(!ok);
    assert!(
        err.contains("the subcommand 'status' cannot be used with '--config <CONFIG>'"),
        "{err}"
    );
    let (ok, err) = switchyard(&["status", "--output", "yaml"]);
    assert!(!ok);
    assert!(err.contains("invalid value 'yaml' for '--output"), "{err}");
    let (ok, err) = switchyard(&["--config", "/nonexistent/switchyard/config.yaml"]);
    assert!(!ok);
    assert!(err.contains("cannot read config file"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["status", "--help"])
        .output()
        .expect("run switchyard");
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["services", "backends", "maps", "--output", "--bpffs-path"] {
        assert!(help.contains(word), "{word}: {help}");
    }
}
