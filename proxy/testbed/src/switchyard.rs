//! Running the real `switchyard` binary on a testbed node from a manifest directory, the way
//! the dataplane tests, the demo and the benchmarks all do.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::process::ChildGuard;
use crate::topology::{Node, Testbed};

/// Environment variable naming the `switchyard` binary for programs outside cargo's test
/// harness (the benchmarks); tests pass `CARGO_BIN_EXE_switchyard` to [`start_switchyard`].
pub const SWITCHYARD_ENV: &str = "SWITCHYARD_BIN";

/// The flag that leaves `nf_conntrack_max` and the conntrack hash size, both machine-wide,
/// as they are (kube-proxy's own way to say so).
pub const LEAVE_MACHINE_CONNTRACK: &str = "--conntrack-max-per-core=0";

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A throwaway manifest directory, removed on drop.
#[derive(Debug)]
pub struct Manifests {
    dir: PathBuf,
}

impl Manifests {
    /// An empty directory under the system temp dir, unique to this process and call.
    pub fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-manifests-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            action: "creating",
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// A directory holding copies of every YAML file in `source`.
    pub fn copy_of(source: &Path) -> Result<Self> {
        let manifests = Self::new()?;
        let entries = std::fs::read_dir(source).map_err(|e| io("reading", source, e))?;
        for entry in entries {
            let path = entry.map_err(|e| io("reading", source, e))?.path();
            if let Some(name) = path.file_name() {
                std::fs::copy(&path, manifests.dir.join(name))
                    .map_err(|e| io("copying", &path, e))?;
            }
        }
        Ok(manifests)
    }

    /// The directory to pass to `--manifests`.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes (or replaces) one file atomically, so the watcher never reads half a file.
    pub fn write(&self, name: &str, yaml: &str) -> Result<()> {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).map_err(|e| io("writing", &tmp, e))?;
        let path = self.dir.join(name);
        std::fs::rename(&tmp, &path).map_err(|e| io("renaming", &path, e))
    }

    /// Removes one file.
    pub fn remove(&self, name: &str) -> Result<()> {
        let path = self.dir.join(name);
        std::fs::remove_file(&path).map_err(|e| io("removing", &path, e))
    }
}

impl Drop for Manifests {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn io(action: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Finds the `switchyard` binary: `$SWITCHYARD_BIN`, else next to the running executable.
pub fn switchyard_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(SWITCHYARD_ENV) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|e| io("locating", Path::new("current_exe"), e))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    [dir.join("switchyard"), dir.join("../switchyard")]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::BinaryNotFound(format!(
                "switchyard binary not found next to {}; run `cargo xtask build` or set {SWITCHYARD_ENV}",
                exe.display()
            ))
        })
}

/// Where a switchyard under test reads its objects from.
#[derive(Debug, Clone, Copy)]
pub enum ObjectSource<'a> {
    /// `--manifests DIR`.
    Manifests(&'a Path),
    /// `--kubeconfig FILE` (e.g. pointing at a [`crate::fake_apiserver::FakeApiServer`]).
    Kubeconfig(&'a Path),
}

impl ObjectSource<'_> {
    fn flag(&self) -> String {
        match self {
            ObjectSource::Manifests(dir) => format!("--manifests={}", dir.display()),
            ObjectSource::Kubeconfig(file) => format!("--kubeconfig={}", file.display()),
        }
    }
}

/// Arguments that run switchyard as `node`'s proxy: its name, its cgroup, its own pin
/// directory, the testbed's cluster CIDRs (both families), and the object source. `--conntrack-max-per-core=0`
/// keeps it off the machine-wide conntrack limit and hash size (the per-namespace conntrack
/// timeouts it sets are the node namespace's own); a test that passes `--config` replaces
/// these flags and needs `conntrack: {maxPerCore: 0}` in its file.
pub fn node_args(
    testbed: &Testbed,
    node: &Node,
    mode: &str,
    source: ObjectSource<'_>,
) -> Vec<String> {
    vec![
        format!("--proxy-mode={mode}"),
        source.flag(),
        format!("--hostname-override={}", node.name),
        format!("--cgroup-path={}", node.cgroup.display()),
        format!("--bpffs-path={}", testbed.bpffs_dir(node).display()),
        format!(
            "--cluster-cidr={},{}",
            testbed.cluster_cidr(),
            testbed.cluster_cidr_v6()
        ),
        "--min-sync-period=100ms".to_owned(),
        LEAVE_MACHINE_CONNTRACK.to_owned(),
    ]
}

/// Starts the `binary` (tests: `env!("CARGO_BIN_EXE_switchyard")`) on `node` with
/// [`node_args`] plus `extra`; its log stays captured.
pub fn start_switchyard(
    testbed: &Testbed,
    node: &Node,
    binary: &Path,
    mode: &str,
    manifests: &Manifests,
    extra: &[&str],
) -> Result<ChildGuard> {
    start_switchyard_from(
        testbed,
        node,
        binary,
        mode,
        ObjectSource::Manifests(manifests.path()),
        extra,
    )
}

/// Like [`start_switchyard`], with any [`ObjectSource`].
pub fn start_switchyard_from(
    testbed: &Testbed,
    node: &Node,
    binary: &Path,
    mode: &str,
    source: ObjectSource<'_>,
    extra: &[&str],
) -> Result<ChildGuard> {
    let mut args = node_args(testbed, node, mode, source);
    args.extend(extra.iter().map(|s| s.to_string()));
    testbed.spawn(node, binary, args)
}

/// `GET path` on `127.0.0.1:port` inside `node`'s namespace (where switchyard's health and
/// metrics servers listen): the status code and the whole response.
pub fn http_get(node: &Node, port: u16, path: &str) -> Result<(u16, String)> {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    http_get_from(&node.netns_path, address, path)?
        .map_err(|e| Error::Protocol(format!("GET {path}: {e}")))
}

/// The value of one series on the metrics server of `node`'s proxy (`127.0.0.1:10249`, the
/// default bind), `None` when it cannot be scraped or has no such series. `series` is the
/// exposition's text before the value: a name with its labels as printed
/// (`switchyard_ebpf_map_entries{map="SWY_SERVICES"}`), or a bare name, which sums every series
/// of that name whatever its labels (as PromQL's `sum(name)`: a dual-stack node prints one
/// series per `ip_family`, in no fixed order).
pub fn metric(node: &Node, series: &str) -> Option<f64> {
    let (_, body) = http_get(node, 10249, "/metrics").ok()?;
    metric_in(&body, series)
}

/// [`metric`] over an exposition already scraped.
pub fn metric_in(exposition: &str, series: &str) -> Option<f64> {
    let values = exposition.lines().filter_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        let bare = name.split_once('{').map_or(name, |(bare, _)| bare);
        let matches = name == series || (!series.contains('{') && bare == series);
        // The exposition prints numbers as Go does (1048576 is `1.048576e+06`).
        matches.then(|| value.parse::<f64>().ok()).flatten()
    });
    values.reduce(|sum, v| sum + v)
}

/// `GET path` on `address` from inside the namespace at `netns` (a node's, a pod's, the
/// external client's): the status code and the whole response, or the connection's error
/// (so a caller can tell a refusal from a timeout). The outer error is the namespace's.
pub fn http_get_from(
    netns: &std::path::Path,
    address: std::net::SocketAddr,
    path: &str,
) -> Result<std::io::Result<(u16, String)>> {
    use std::io::{Read, Write};
    let path = path.to_owned();
    crate::netns::run_in_netns(netns, move || {
        Ok((|| {
            let mut stream =
                std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
            let mut text = String::new();
            stream.write_all(request.as_bytes())?;
            stream.read_to_string(&mut text)?;
            let code = text
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            Ok((code, text))
        })())
    })
}

/// Waits until `proxy` has logged every one of `needles` (each a set of parts that must
/// appear together on some line); fails on `timeout`, or at once if it exits first.
pub fn wait_for_log(
    proxy: &mut ChildGuard,
    what: &str,
    timeout: Duration,
    needles: &[&[&str]],
) -> Result<()> {
    wait_for(what, timeout, || {
        let log = proxy.stderr();
        let found = needles
            .iter()
            .all(|parts| log.lines().any(|l| parts.iter().all(|p| l.contains(p))));
        if found {
            return Ok(Ok(()));
        }
        match proxy.try_wait() {
            Ok(Some(status)) => Ok(Err(Error::ChildExited {
                what: what.to_owned(),
                status: status.to_string(),
                stderr: log,
            })),
            _ => Err(log.lines().last().map(str::to_owned)),
        }
    })?
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with `what` and the last
/// observation. For waiting on a condition instead of sleeping a guessed time.
pub fn wait_for<T, O: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> std::result::Result<T, O>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(last) if Instant::now() >= deadline => {
                return Err(Error::Timeout {
                    what: format!("{what} (last observation: {last:?})"),
                    after_ms: timeout.as_millis(),
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[cfg(test)]
mod metric_tests {
    #[test]
    fn a_series_matches_with_its_labels_or_sums_by_its_bare_name() {
        let text = "# HELP x y\nswitchyard_ebpf_map_entries{map=\"SWY_SERVICES\"} 3\n\
                    switchyard_ebpf_map_entries{map=\"SWY_BACKENDS\"} 1.048576e+06\n\
                    kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv6\"} 0\n\
                    kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 7\n\
                    switchyard_dataplane_repairs_total 2\n";
        let m = |s| super::metric_in(text, s);
        assert_eq!(
            m("switchyard_ebpf_map_entries{map=\"SWY_BACKENDS\"}"),
            Some(1_048_576.0)
        );
        assert_eq!(
            m("kubeproxy_sync_proxy_rules_duration_seconds_count"),
            Some(7.0)
        );
        assert_eq!(m("switchyard_ebpf_map_entries"), Some(1_048_579.0));
        assert_eq!(m("switchyard_dataplane_repairs_total"), Some(2.0));
        assert_eq!(
            m("switchyard_dataplane_repairs"),
            None,
            "a prefix is no match"
        );
        assert_eq!(m("switchyard_ebpf_map_entries{map=\"SWY_X\"}"), None);
    }
}
