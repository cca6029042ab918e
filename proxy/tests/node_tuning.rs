//! What start-up does to the node besides the dataplane, checked on the real binary in a
//! testbed node: `oom_score_adj`, the conntrack sysctls of the node's namespace (never the
//! machine-wide ones: the testbed passes `--conntrack-max-per-core=0`, and this test checks
//! that the root namespace's values and the machine's limit stay as they were), JSON logs,
//! and the `--config` watch that ends the process when the file changes.
use std::path::{Path, PathBuf};
use std::time::Duration;

use switchyard_testbed::netns::run_in_netns;
use switchyard_testbed::{
    start_switchyard, wait_for, ChildGuard, Manifests, Testbed, TopologySpec,
};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const START: Duration = Duration::from_secs(30);

/// Everything a start-up might write; the first two are machine-wide.
const KNOBS: &[&str] = &[
    "/proc/sys/net/netfilter/nf_conntrack_max",
    "/sys/module/nf_conntrack/parameters/hashsize",
    "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established",
    "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_close_wait",
    "/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal",
    "/proc/sys/net/netfilter/nf_conntrack_udp_timeout",
    "/proc/sys/net/netfilter/nf_conntrack_udp_timeout_stream",
];

fn read_knobs() -> Vec<(String, String)> {
    KNOBS
        .iter()
        .map(|p| {
            let value = std::fs::read_to_string(p).unwrap_or_else(|e| format!("unreadable: {e}"));
            ((*p).to_owned(), value.trim().to_owned())
        })
        .collect()
}

/// The knobs as the node's namespace shows them.
fn node_knobs(netns: &Path) -> Vec<(String, String)> {
    run_in_netns(netns, || Ok(read_knobs())).expect("read sysctls in the node namespace")
}

fn knob(values: &[(String, String)], name: &str) -> String {
    values
        .iter()
        .find(|(p, _)| p.ends_with(name))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("{name} not read"))
}

fn oom_score_adj(proxy: &ChildGuard) -> String {
    std::fs::read_to_string(format!("/proc/{}/oom_score_adj", proxy.pid()))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("unreadable: {e}"))
}

/// Whether this process holds CAP_SYS_RESOURCE, which lowering `oom_score_adj` needs (the
/// proxy started by the testbed inherits it).
fn may_lower_oom_score() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

fn testbed() -> Testbed {
    Testbed::new(TopologySpec {
        nodes: 1,
        pods_per_node: 0,
    })
    .expect("testbed")
}

/// Waits for the log line that says the dataplane runs.
fn wait_running(proxy: &mut ChildGuard) {
    wait_for("switchyard running", START, || {
        if let Some(status) = proxy.try_wait().expect("poll") {
            panic!("switchyard exited ({status}):\n{}", proxy.stderr());
        }
        let log = proxy.stderr();
        if log.contains("switchyard running") {
            Ok(())
        } else {
            Err(log.lines().last().map(str::to_owned))
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.stderr()));
}

#[test]
fn oom_score_and_conntrack_sysctls_are_applied_to_the_node_only() {
    let testbed = testbed();
    let node = testbed.node(1);
    let manifests = Manifests::new().expect("manifests");
    let root_before = read_knobs();
    let fresh = node_knobs(&node.netns_path);
    assert_eq!(knob(&fresh, "tcp_be_liberal"), "0", "a fresh namespace");

    // iptables mode with kube-proxy's defaults and a few flags.
    let mut proxy = start_switchyard(
        &testbed,
        node,
        BIN.as_ref(),
        "iptables",
        &manifests,
        &[
            "--conntrack-tcp-timeout-established=3h",
            "--conntrack-tcp-be-liberal",
            "--conntrack-udp-timeout=17s",
            "--conntrack-udp-timeout-stream=97s",
        ],
    )
    .expect("switchyard");
    wait_running(&mut proxy);
    if may_lower_oom_score() {
        assert_eq!(
            oom_score_adj(&proxy),
            "-999",
            "kube-proxy's default:\n{}",
            proxy.stderr()
        );
    } else {
        // Lowering it takes CAP_SYS_RESOURCE, which a container (this machine's too) may not
        // grant: a warning, and start-up goes on, as in kube-proxy.
        assert_eq!(oom_score_adj(&proxy), "0");
        let log = proxy.stderr();
        assert!(
            log.contains("cannot set oom_score_adj") && log.contains("oom_score_adj=-999"),
            "{log}"
        );
    }
    let set = node_knobs(&node.netns_path);
    assert_eq!(knob(&set, "tcp_timeout_established"), "10800");
    assert_eq!(
        knob(&set, "tcp_timeout_close_wait"),
        "3600",
        "the default 1h"
    );
    assert_eq!(knob(&set, "tcp_be_liberal"), "1");
    assert_eq!(knob(&set, "udp_timeout"), "17");
    assert_eq!(knob(&set, "udp_timeout_stream"), "97");
    let log = proxy.stderr();
    assert!(
        log.contains("net.netfilter.nf_conntrack_udp_timeout_stream"),
        "each write is logged:\n{log}"
    );
    proxy.terminate().expect("SIGTERM");
    proxy.wait_timeout(Duration::from_secs(10)).expect("wait");

    // ebpf mode applies them too (node processes still go through netfilter conntrack); a
    // value equal to the current one is not written again.
    let mut proxy = start_switchyard(
        &testbed,
        node,
        BIN.as_ref(),
        "ebpf",
        &manifests,
        &["--oom-score-adj=250", "--conntrack-udp-timeout=23s"],
    )
    .expect("switchyard");
    wait_running(&mut proxy);
    assert_eq!(
        oom_score_adj(&proxy),
        "250",
        "--oom-score-adj:\n{}",
        proxy.stderr()
    );
    let set = node_knobs(&node.netns_path);
    assert_eq!(knob(&set, "udp_timeout"), "23");
    assert_eq!(
        knob(&set, "tcp_timeout_established"),
        "86400",
        "the default 24h"
    );
    let log = proxy.stderr();
    assert!(
        !log.contains("nf_conntrack_tcp_timeout_close_wait"),
        "unchanged, not written:\n{log}"
    );
    proxy.terminate().expect("SIGTERM");
    proxy.wait_timeout(Duration::from_secs(10)).expect("wait");

    // The machine's limit, its hash size and the root namespace's values are untouched, and
    // the node's namespace shows the machine's limit (it is not a per-namespace value).
    assert_eq!(read_knobs(), root_before, "root namespace");
    assert_eq!(
        knob(&set, "nf_conntrack_max"),
        knob(&root_before, "nf_conntrack_max")
    );
}

/// A config file in a directory of the test's own: the file switchyard runs with.
struct ConfigDir {
    dir: PathBuf,
}

impl ConfigDir {
    fn new(testbed: &Testbed) -> Self {
        let dir = std::env::temp_dir().join(format!("swy-config-{}", testbed.id()));
        std::fs::create_dir_all(&dir).expect("config dir");
        Self { dir }
    }

    fn file(&self) -> PathBuf {
        self.dir.join("config.conf")
    }
}

impl Drop for ConfigDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(testbed: &Testbed, mode: &str) -> String {
    // conntrack.maxPerCore 0: a testbed run leaves the machine's limit alone.
    format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
         mode: {mode}\nclusterCIDR: {}\nconntrack: {{maxPerCore: 0}}\n\
         iptables: {{minSyncPeriod: 100ms}}\nlogging: {{format: json}}\n",
        testbed.cluster_cidr()
    )
}

/// Every stderr line as JSON, failing on one that is not.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{log}")))
        .collect()
}

#[test]
fn config_file_logs_json_and_a_change_ends_the_process() {
    let testbed = testbed();
    let node = testbed.node(1);
    let manifests = Manifests::new().expect("manifests");
    let dir = ConfigDir::new(&testbed);
    let path = dir.file();
    std::fs::write(&path, config(&testbed, "iptables")).expect("write config");
    let flag = format!("--config={}", path.display());
    let mut proxy = start_switchyard(
        &testbed,
        node,
        BIN.as_ref(),
        "iptables",
        &manifests,
        &[&flag],
    )
    .expect("switchyard");
    wait_running(&mut proxy);

    // logging.format json: every line parses, with a level, a message and the fields.
    let lines = json_lines(&proxy.stderr());
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["message"].is_string()));
    let running = lines
        .iter()
        .find(|l| l["message"] == "switchyard running")
        .expect("the start line");
    assert_eq!(running["level"], "INFO");
    assert_eq!(running["mode"], "iptables");
    assert_eq!(running["node"], node.name.as_str());

    // A neighbour written, the file rewritten unchanged, a touch: still running.
    std::fs::write(dir.dir.join("other.conf"), "unrelated").expect("write");
    std::fs::write(&path, config(&testbed, "iptables")).expect("rewrite");
    std::fs::File::open(&path)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()))
        .expect("touch");
    assert_eq!(
        proxy
            .wait_timeout(Duration::from_millis(1500))
            .expect("wait"),
        None,
        "exited without a change:\n{}",
        proxy.stderr()
    );

    // An edit (the mode) ends it with kube-proxy's status, naming the file.
    std::fs::write(&path, config(&testbed, "ebpf")).expect("edit");
    let status = proxy
        .wait_timeout(Duration::from_secs(10))
        .expect("wait")
        .unwrap_or_else(|| panic!("still running after the edit:\n{}", proxy.stderr()));
    assert_eq!(status.code(), Some(1), "{}", proxy.stderr());
    let lines = json_lines(&proxy.stderr());
    let last = lines.last().expect("a last line");
    assert_eq!(last["level"], "ERROR", "{last}");
    let error = last["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&path.display().to_string()) && error.contains("was updated"),
        "{last}"
    );
}
