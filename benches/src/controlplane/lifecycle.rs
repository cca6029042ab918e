//! After a run: the same node restarted over its own programmed state, switched to the other
//! mode and back (iptables runs), and `--cleanup`, each timed, with what was left behind
//! read from the kernel (our chains in either iptables backend, our pins).
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use switchyard_testbed::switchyard::node_args;
use switchyard_testbed::{ChildGuard, Node, Place, Testbed};

use super::Mode;

/// Longest a `--cleanup` may take before the benchmark gives up on it.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(300);

/// One start of the proxy over state someone left on the node.
#[derive(Debug, Clone, Serialize)]
pub struct Start {
    /// What was on the node: `own` (the same mode's state) or the other mode's.
    pub over: String,
    /// The mode started.
    pub mode: String,
    /// From spawning the process to its first complete sync, seconds.
    pub wall_s: f64,
    /// That sync's own duration, seconds.
    pub reported_s: f64,
    /// Over the other mode's state: from the first complete sync until that state was
    /// removed (the handover runs after the first sync, on its own thread), seconds.
    pub handover_s: Option<f64>,
    /// The other mode's state still present after the handover (none expected).
    pub left: Vec<String>,
}

/// `switchyard --cleanup` on the programmed node.
#[derive(Debug, Clone, Serialize)]
pub struct Cleanup {
    /// Wall time of the command, seconds.
    pub seconds: f64,
    /// It exited 0.
    pub success: bool,
    /// State of either mode still present afterwards (none expected).
    pub left: Vec<String>,
}

/// Everything after the main run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Lifecycle {
    /// Starts, in order.
    pub starts: Vec<Start>,
    /// The cleanup at the end.
    pub cleanup: Option<Cleanup>,
}

/// Waits for a started proxy's first complete sync: (seconds from `spawned_at`, the sync's
/// own seconds).
pub type FirstSyncWait<'w> =
    dyn FnMut(&mut ChildGuard, std::time::SystemTime) -> anyhow::Result<(f64, f64)> + 'w;

/// What each step needs from the run.
pub struct Steps<'a> {
    /// The run's testbed.
    pub testbed: &'a Testbed,
    /// The measured node.
    pub node: &'a Node,
    /// The switchyard binary.
    pub binary: &'a Path,
    /// The run's source flag (`--manifests=...` or `--kubeconfig=...`).
    pub source: switchyard_testbed::ObjectSource<'a>,
    /// Flags besides `node_args` and the mode's own (the metrics address).
    pub extra: &'a [String],
}

impl Steps<'_> {
    /// Starts `mode` and returns it with the times of its first complete sync.
    pub fn start(
        &self,
        mode: Mode,
        wait: &mut FirstSyncWait<'_>,
    ) -> anyhow::Result<(ChildGuard, f64, f64)> {
        let mut args = node_args(self.testbed, self.node, mode.proxy_mode(), self.source);
        args.extend(self.extra.iter().cloned());
        args.extend(mode.extra_flags().iter().map(|s| s.to_string()));
        let spawned_at = std::time::SystemTime::now();
        let mut proxy = self.testbed.spawn(self.node, self.binary, args)?;
        let (wall, reported) = wait(&mut proxy, spawned_at)?;
        Ok((proxy, wall, reported))
    }

    /// Waits for `proxy`'s handover (the other mode's state removed after its first sync)
    /// to end; returns how long it took from now.
    pub fn handover(&self, proxy: &mut ChildGuard) -> anyhow::Result<f64> {
        let started = Instant::now();
        while started.elapsed() < CLEANUP_TIMEOUT {
            let log = proxy.stderr();
            if log.lines().any(|l| {
                l.contains("handover: no iptables mode state left")
                    || l.contains("handover: no ebpf mode state left")
                    || l.contains("handover: cannot")
            }) {
                return Ok(started.elapsed().as_secs_f64());
            }
            if let Some(status) = proxy.try_wait()? {
                bail!("switchyard exited ({status}) before its handover ended");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the handover did not end within {CLEANUP_TIMEOUT:?} of the first sync")
    }

    /// Stops `proxy` as the kubelet would (SIGTERM), leaving its state programmed.
    pub fn stop(&self, mut proxy: ChildGuard) -> anyhow::Result<()> {
        proxy.terminate()?;
        if proxy.wait_timeout(Duration::from_secs(30))?.is_none() {
            bail!("switchyard did not stop within 30 s of SIGTERM");
        }
        Ok(())
    }

    /// Runs `--cleanup` for `mode`'s flags and reads what is left.
    pub fn cleanup(&self, mode: Mode) -> anyhow::Result<Cleanup> {
        let mut args = node_args(self.testbed, self.node, mode.proxy_mode(), self.source);
        args.push("--cleanup".to_owned());
        let started = Instant::now();
        let done = self.testbed.run(
            Place::Node(self.node.index),
            self.binary,
            args,
            CLEANUP_TIMEOUT,
        )?;
        let seconds = started.elapsed().as_secs_f64();
        let mut left = self.iptables_left()?;
        left.extend(self.pins_left()?);
        Ok(Cleanup {
            seconds,
            success: done.status.success(),
            left,
        })
    }

    /// Our chains (`SWY-*`) in either backend, as `backend: N chains`.
    pub fn iptables_left(&self) -> anyhow::Result<Vec<String>> {
        let mut left = Vec::new();
        for backend in ["legacy", "nft"] {
            let save = self.testbed.run(
                Place::Node(self.node.index),
                format!("iptables-{backend}-save"),
                std::iter::empty::<&str>(),
                Duration::from_secs(120),
            )?;
            let chains = save
                .stdout
                .lines()
                .filter(|l| l.starts_with(":SWY-"))
                .count();
            if chains > 0 {
                left.push(format!("iptables-{backend}: {chains} SWY chains"));
            }
        }
        Ok(left)
    }

    /// Our pins under the node's pin directory, as `N pins`.
    pub fn pins_left(&self) -> anyhow::Result<Vec<String>> {
        let dir = self.testbed.bpffs_dir(self.node);
        let pins = match std::fs::read_dir(&dir) {
            Ok(entries) => entries.count(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        Ok(if pins > 0 {
            vec![format!("{pins} pins in {}", dir.display())]
        } else {
            Vec::new()
        })
    }
}
