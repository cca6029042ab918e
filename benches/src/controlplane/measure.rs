//! One control-plane run: switchyard on a fresh one-node testbed with N services, through
//! first sync, one-service changes, an idle window, and the final memory reading.
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use serde::Serialize;
use switchyard_testbed::{
    start_switchyard_from, switchyard_binary, ChildGuard, Testbed, TopologySpec,
};

use super::lifecycle::{Lifecycle, Start, Steps};
use super::metrics::{Scraper, SyncMetrics};
use super::procfs::{clock_ticks, CpuTimes, Memory};
use super::source::{Objects, SourceKind};
use super::Mode;

/// Port of the metrics server; bound on the node's underlay address, as kube-proxy's
/// 10249 would be with `--metrics-bind-address=<node IP>:10249`.
const METRICS_PORT: u16 = 10249;

/// Poll interval while waiting for a sync: short against the seconds being measured, long
/// enough that scraping costs the proxy next to nothing.
const POLL: Duration = Duration::from_millis(50);

/// After a sync is seen to have applied a change, wait this long before reading the final
/// samples, so the sync's histogram update and timestamp (written right after the change
/// counter) are in. The next sync cannot end this soon: `node_args` sets
/// `--min-sync-period=100ms`.
const SETTLE: Duration = Duration::from_millis(30);

/// How many attempts a change round gets before the benchmark stops retrying rounds that
/// were disturbed by another sync.
const ATTEMPTS_PER_CHANGE: usize = 3;

/// Longest wait for an unrelated sync to end before a change is written (see
/// [`Run::after_a_sync`]); a proxy that stays quiet this long needs no alignment.
const ALIGN_TIMEOUT: Duration = Duration::from_secs(5);

/// Poll interval while aligning: the write should follow the sync's end closely.
const ALIGN_POLL: Duration = Duration::from_millis(10);

/// What one run asks for.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Dataplane and backend.
    pub mode: Mode,
    /// Where the proxy reads the objects.
    pub source: SourceKind,
    /// Also restart, switch modes and clean up at the end ([`Lifecycle`]).
    pub lifecycle: bool,
    /// Services (one TCP port each).
    pub services: usize,
    /// Ready endpoints per service.
    pub endpoints: usize,
    /// One-service change rounds.
    pub changes: usize,
    /// Length of the idle window.
    pub idle: Duration,
    /// Longest wait for the first sync (and for any one change).
    pub sync_timeout: Duration,
    /// ebpf mode: established flows written into the packet-path conntrack map for a second
    /// idle window ([`Busy`]); 0 skips it.
    pub flows: u32,
}

/// The first complete sync.
#[derive(Debug, Clone, Serialize)]
pub struct FirstSync {
    /// From spawning the process to the sync's completion time as the proxy reports it.
    pub wall_s: f64,
    /// The sync's own duration from the full-sync histogram (the proxy's clock: desired
    /// state, diff and dataplane write, not process start-up or manifest parsing).
    pub reported_s: f64,
    /// Failed dataplane writes before it succeeded.
    pub restore_failures: f64,
    /// The samples when the first sync was seen.
    pub metrics: SyncMetrics,
}

/// One one-service change: the slice file rewritten, until the sync that applied it.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeRound {
    /// From the file write to the sync's completion (proxy's timestamp); includes the
    /// watcher's debounce and re-reading every manifest file.
    pub wall_s: f64,
    /// Sum of sync durations over the round, ms: the one sync when `clean`.
    pub sync_ms: f64,
    /// Syncs that completed during the round.
    pub syncs: f64,
    /// Of them, full syncs.
    pub full_syncs: f64,
    /// Exactly one partial sync ran, so `sync_ms` is that sync alone.
    pub clean: bool,
}

/// The window without changes.
#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    /// Measured length, seconds.
    pub seconds: f64,
    /// utime + stime of the proxy, % of one core.
    pub cpu_pct: f64,
    /// cutime + cstime (reaped child processes), % of one core.
    pub children_cpu_pct: f64,
    /// Syncs that ran anyway: manifest rescans and periodic resyncs.
    pub syncs: f64,
    /// Of them, full syncs.
    pub full_syncs: f64,
    /// Their summed duration, seconds.
    pub sync_s: f64,
    /// Their mean duration, ms: what an unrelated sync adds to a disturbed change round.
    pub mean_sync_ms: Option<f64>,
}

/// A second idle window with [`Plan::flows`] established flows in `SWY_CONNTRACK`: what a
/// busy node's verifies cost (each reads the whole map to expire idle flows).
#[derive(Debug, Clone, Serialize)]
pub struct Busy {
    /// Flows written (two entries each).
    pub flows: u32,
    /// How long the benchmark took to write them, seconds.
    pub fill_s: f64,
    /// The window, extended (up to three times) until it held a verify.
    pub idle: Idle,
    /// VmHWM after it, MiB.
    pub peak_rss_mib: f64,
}

/// Everything measured in one run.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// Bytes of YAML generated.
    pub manifest_bytes: usize,
    /// First complete sync.
    pub first_sync: FirstSync,
    /// Every change round, disturbed ones included.
    pub changes: Vec<ChangeRound>,
    /// Median wall time of all rounds, seconds (another sync in the way is part of the
    /// latency a change really sees).
    pub change_wall_s: Option<f64>,
    /// Median sync duration of the clean rounds, ms.
    pub change_sync_ms: Option<f64>,
    /// Without a clean round: the least summed sync time of a disturbed round, ms, an
    /// upper bound of the change's own sync.
    pub change_sync_ms_at_most: Option<f64>,
    /// The idle window.
    pub idle: Idle,
    /// The idle window with flows in the packet-path conntrack map (ebpf mode).
    pub busy: Option<Busy>,
    /// VmHWM after the idle window (before the window with flows), MiB.
    pub peak_rss_mib: f64,
    /// VmRSS at the end, MiB.
    pub rss_mib: f64,
    /// Restart, mode switches and cleanup, when asked for.
    pub lifecycle: Option<Lifecycle>,
    /// Things worth a second look (disturbed rounds, errors the proxy counted...).
    pub notes: Vec<String>,
}

/// Runs `plan` on its own testbed and removes everything again. `log` receives the proxy's
/// stderr, also when the run fails, so a failure can be read afterwards.
pub fn measure(plan: &Plan, log: &mut String) -> anyhow::Result<Measured> {
    let testbed = Testbed::new(TopologySpec {
        nodes: 1,
        pods_per_node: 0,
    })?;
    let node = testbed.node(1).clone();
    let objects = Objects::load(plan.source, &node, plan.services, plan.endpoints)?;
    let metrics_addr = SocketAddr::from((node.underlay_ip, METRICS_PORT));
    let bind = format!("--metrics-bind-address={metrics_addr}");
    let mut extra = vec![bind.as_str()];
    extra.extend(plan.mode.extra_flags());
    let binary = switchyard_binary()?;
    let scraper = Scraper::new(node.netns_path.clone(), metrics_addr);

    let spawned_at = SystemTime::now();
    // Declared after the testbed and the objects, so it is killed before they go.
    let mut proxy = start_switchyard_from(
        &testbed,
        &node,
        &binary,
        plan.mode.proxy_mode(),
        objects.flag(),
        &extra,
    )?;
    let result = Run {
        plan,
        proxy: &mut proxy,
        scraper: &scraper,
        objects: &objects,
        pin_dir: testbed.bpffs_dir(&node),
        notes: Vec::new(),
    }
    .all(spawned_at, objects.bytes);
    *log = proxy.stderr();
    let mut measured = result?;
    if plan.lifecycle {
        let steps = Steps {
            testbed: &testbed,
            node: &node,
            binary: &binary,
            source: objects.flag(),
            extra: std::slice::from_ref(&bind),
        };
        steps.stop(proxy)?;
        let lifecycle = lifecycle(plan, &steps, &scraper, &objects, log)?;
        measured.lifecycle = Some(lifecycle);
    }
    Ok(measured)
}

/// Restarts the node's proxy over its own state, over the other mode's and back (iptables
/// runs only: ebpf has one other mode's state to meet, two backends), then cleans up.
fn lifecycle(
    plan: &Plan,
    steps: &Steps<'_>,
    scraper: &Scraper,
    objects: &Objects,
    log: &mut String,
) -> anyhow::Result<Lifecycle> {
    let mut wait = |proxy: &mut ChildGuard, spawned_at: SystemTime| {
        let first = Run {
            plan,
            proxy,
            scraper,
            objects,
            pin_dir: steps.testbed.bpffs_dir(steps.node),
            notes: Vec::new(),
        }
        .first_sync(spawned_at)?;
        Ok((first.wall_s, first.reported_s))
    };
    let mut done = Lifecycle::default();
    let mut order = vec![("own".to_owned(), plan.mode)];
    if plan.mode != Mode::Ebpf {
        order.push((plan.mode.to_string(), Mode::Ebpf));
        order.push(("ebpf".to_owned(), plan.mode));
    }
    for (over, mode) in order {
        let (mut proxy, wall_s, reported_s) = steps.start(mode, &mut wait)?;
        let handover_s = match over.as_str() {
            "own" => None,
            _ => Some(steps.handover(&mut proxy)?),
        };
        let left = match (over.as_str(), mode) {
            ("own", _) => Vec::new(),
            (_, Mode::Ebpf) => steps.iptables_left()?,
            _ => steps.pins_left()?,
        };
        log.push_str(&format!("\n--- {mode} over {over} ---\n{}", proxy.stderr()));
        done.starts.push(Start {
            over,
            mode: mode.to_string(),
            wall_s,
            reported_s,
            handover_s,
            left,
        });
        steps.stop(proxy)?;
    }
    done.cleanup = Some(steps.cleanup(plan.mode)?);
    Ok(done)
}

/// The state one run's steps share.
struct Run<'a> {
    plan: &'a Plan,
    proxy: &'a mut ChildGuard,
    scraper: &'a Scraper,
    objects: &'a Objects,
    /// The proxy's `--bpffs-path`.
    pin_dir: std::path::PathBuf,
    notes: Vec<String>,
}

impl Run<'_> {
    fn all(mut self, spawned_at: SystemTime, manifest_bytes: usize) -> anyhow::Result<Measured> {
        let first_sync = self.first_sync(spawned_at)?;
        let changes = self.changes()?;
        let change_wall_s = median(changes.iter().map(|r| r.wall_s).collect());
        let change_sync_ms = median(
            changes
                .iter()
                .filter(|r| r.clean)
                .map(|r| r.sync_ms)
                .collect(),
        );
        let change_sync_ms_at_most = match change_sync_ms {
            Some(_) => None,
            None => changes.iter().map(|r| r.sync_ms).min_by(f64::total_cmp),
        };
        let idle = self.idle()?;
        self.check_alive()?;
        // Before the window with flows, which reads a full conntrack map (its own figure).
        let memory = Memory::of(self.proxy.pid())?;
        let busy = self.busy()?;
        self.check_alive()?;
        let last = self.scraper.scrape()?;
        if last.dataplane_errors > 0.0 || last.restore_failures > 0.0 {
            self.notes.push(format!(
                "at the end: {} dataplane errors, {} failed dataplane writes",
                last.dataplane_errors, last.restore_failures
            ));
        }
        Ok(Measured {
            manifest_bytes,
            first_sync,
            changes,
            change_wall_s,
            change_sync_ms,
            change_sync_ms_at_most,
            idle,
            busy,
            peak_rss_mib: memory.peak_kib as f64 / 1024.0,
            rss_mib: memory.now_kib as f64 / 1024.0,
            lifecycle: None,
            notes: self.notes,
        })
    }

    /// Polls `/metrics` until the first sync has completed. Metrics rather than the log:
    /// the timestamp is the proxy's own completion time, independent of the poll interval.
    fn first_sync(&mut self, spawned_at: SystemTime) -> anyhow::Result<FirstSync> {
        let started = Instant::now();
        let mut next_progress = Duration::from_secs(30);
        let m = loop {
            self.check_alive()?;
            let last = match self.scraper.scrape() {
                Ok(m) if m.last_sync > 0.0 => break m,
                Ok(m) => format!("no sync yet ({m:?})"),
                // Refused until the metrics server has bound.
                Err(e) => format!("{e:#}"),
            };
            let waited = started.elapsed();
            if waited >= self.plan.sync_timeout {
                bail!(
                    "no complete first sync after {} s (last observation: {last})",
                    waited.as_secs(),
                );
            }
            if waited >= next_progress {
                eprintln!(
                    "  {} at {} services: still waiting for the first sync ({} s)",
                    self.plan.mode,
                    self.plan.services,
                    waited.as_secs()
                );
                next_progress += Duration::from_secs(30);
            }
            std::thread::sleep(POLL);
        };
        if m.full_syncs != 1.0 || m.syncs != 1.0 {
            self.notes.push(format!(
                "first sync: {} syncs ({} full) had completed when first seen; the figures may include the later ones",
                m.syncs, m.full_syncs
            ));
        }
        let expected = self.plan.services as f64;
        if m.service_ports != expected || m.dataplane_errors > 0.0 || m.input_warnings > 0.0 {
            self.notes.push(format!(
                "first sync: {} service ports (expected {expected}), {} dataplane errors, {} input warnings",
                m.service_ports, m.dataplane_errors, m.input_warnings
            ));
        }
        if m.restore_failures > 0.0 {
            self.notes.push(format!(
                "first sync: {} failed dataplane writes before it succeeded",
                m.restore_failures
            ));
        }
        Ok(FirstSync {
            wall_s: m.last_sync - unix(spawned_at),
            reported_s: m.full_sync_seconds,
            restore_failures: m.restore_failures,
            metrics: m,
        })
    }

    /// Change rounds, each one retried (bounded) while another sync got in its way.
    fn changes(&mut self) -> anyhow::Result<Vec<ChangeRound>> {
        let mut rounds = Vec::new();
        let mut clean = 0;
        let attempts = self.plan.changes * ATTEMPTS_PER_CHANGE;
        for variant in 1..=attempts {
            if clean == self.plan.changes {
                break;
            }
            let round = self.change(variant)?;
            clean += usize::from(round.clean);
            rounds.push(round);
        }
        let disturbed = rounds.len() - clean;
        if disturbed > 0 {
            self.notes.push(format!(
                "{disturbed} of {} change rounds overlapped another sync (manifest reload or periodic resync); their sync time is left out of the median",
                rounds.len()
            ));
        }
        Ok(rounds)
    }

    fn change(&mut self, variant: usize) -> anyhow::Result<ChangeRound> {
        let before = self.after_a_sync()?;
        let written_at = SystemTime::now();
        self.objects.change(variant)?;
        let started = Instant::now();
        // The change counter moves only with a sync that applied a diff, and nothing else
        // changes; the timestamp check guards against a sync that ended before the write.
        loop {
            self.check_alive()?;
            let m = self.scraper.scrape()?;
            if m.service_changes > before.service_changes
                && m.syncs > before.syncs
                && m.last_sync >= unix(written_at)
            {
                break;
            }
            if started.elapsed() >= self.plan.sync_timeout {
                bail!(
                    "change {variant} not applied after {} s",
                    started.elapsed().as_secs()
                );
            }
            std::thread::sleep(POLL);
        }
        std::thread::sleep(SETTLE);
        let after = self.scraper.scrape()?;
        let syncs = after.syncs - before.syncs;
        let full_syncs = after.full_syncs - before.full_syncs;
        // Space the rounds out by more than min-sync-period, so each starts from rest.
        std::thread::sleep(Duration::from_millis(300));
        Ok(ChangeRound {
            wall_s: after.last_sync - unix(written_at),
            sync_ms: (after.sync_seconds - before.sync_seconds) * 1000.0,
            syncs,
            full_syncs,
            clean: syncs == 1.0 && full_syncs == 0.0,
        })
    }

    /// The samples right after a sync has ended, or after [`ALIGN_TIMEOUT`] without one.
    ///
    /// A proxy that keeps syncing without changes (the manifest source re-reading its
    /// directory, periodic resyncs) would otherwise often slip an unrelated sync into a
    /// change round, and the round's histogram delta would not be the change's alone.
    /// Writing just after a sync ended leaves the most room before the next one.
    fn after_a_sync(&mut self) -> anyhow::Result<SyncMetrics> {
        let first = self.scraper.scrape()?;
        let started = Instant::now();
        while started.elapsed() < ALIGN_TIMEOUT {
            std::thread::sleep(ALIGN_POLL);
            let m = self.scraper.scrape()?;
            if m.syncs > first.syncs {
                return Ok(m);
            }
        }
        self.scraper.scrape()
    }

    /// CPU over a window without changes. Scrapes happen outside the window so their cost
    /// is not counted.
    fn idle(&mut self) -> anyhow::Result<Idle> {
        let pid = self.proxy.pid();
        let before = self.scraper.scrape()?;
        let cpu_before = CpuTimes::of(pid)?;
        let started = Instant::now();
        std::thread::sleep(self.plan.idle);
        let cpu_after = CpuTimes::of(pid)?;
        let seconds = started.elapsed().as_secs_f64();
        let after = self.scraper.scrape()?;
        let pct = |ticks: u64| ticks as f64 / clock_ticks() as f64 / seconds * 100.0;
        let syncs = after.syncs - before.syncs;
        let sync_s = after.sync_seconds - before.sync_seconds;
        Ok(Idle {
            seconds,
            cpu_pct: pct(cpu_after.own - cpu_before.own),
            children_cpu_pct: pct(cpu_after.children - cpu_before.children),
            syncs,
            full_syncs: after.full_syncs - before.full_syncs,
            sync_s,
            mean_sync_ms: (syncs > 0.0).then(|| sync_s / syncs * 1000.0),
        })
    }

    /// ebpf mode with [`Plan::flows`]: the flows written, then idle windows until one held a
    /// verify (the proxy's `syncPeriod` is the default 30 s), at most three.
    fn busy(&mut self) -> anyhow::Result<Option<Busy>> {
        if self.plan.mode != Mode::Ebpf || self.plan.flows == 0 {
            return Ok(None);
        }
        let fill = super::flows::fill(&self.pin_dir, self.plan.flows)?;
        let mut idle = self.idle()?;
        for _ in 1..3 {
            if idle.syncs > 0.0 {
                break;
            }
            idle = self.idle()?;
        }
        if idle.syncs == 0.0 {
            self.notes
                .push("the idle window with flows held no verify".to_owned());
        }
        let memory = Memory::of(self.proxy.pid())?;
        Ok(Some(Busy {
            flows: self.plan.flows,
            fill_s: fill.as_secs_f64(),
            idle,
            peak_rss_mib: memory.peak_kib as f64 / 1024.0,
        }))
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.proxy.try_wait()? {
            bail!(
                "switchyard exited with {status}; stderr:\n{}",
                tail(&self.proxy.stderr(), 20)
            );
        }
        Ok(())
    }
}

/// Seconds since the epoch, the unit of the proxy's timestamps.
fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(median(Vec::new()), None);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
