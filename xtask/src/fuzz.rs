//! `cargo xtask fuzz`: runs each fuzz target of `proxy/fuzz/` for a bounded time, starting from
//! the committed corpus, and reports executions per target.
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};

use crate::command::{cargo, run};

/// The targets, with the libFuzzer options each needs.
const TARGETS: &[(&str, &[&str])] = &[
    // Manifests: room for the seeds (a few KB each) and then some.
    ("manifest", &["-max_len=16384"]),
    // Object changes: a few bytes each; 512 bytes reach the 64-change cap.
    ("model", &["-max_len=512"]),
];

/// Options for `cargo xtask fuzz`.
#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Targets to run (default: all).
    targets: Vec<String>,
}

/// What libFuzzer's final statistics said.
#[derive(Default)]
struct Stats {
    executions: u64,
    per_second: u64,
    new_units: u64,
    peak_rss_mb: u64,
}

/// Builds the targets (nightly, AddressSanitizer), then runs each for `--seconds`. New
/// inputs go to a scratch corpus under `proxy/fuzz/target/`, so the committed one changes
/// only when someone copies a finding in; a crash fails the task naming its input.
pub fn fuzz(root: &Path, args: &FuzzArgs) -> anyhow::Result<()> {
    let known: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    let chosen: Vec<&(&str, &[&str])> = if args.targets.is_empty() {
        TARGETS.iter().collect()
    } else {
        args.targets
            .iter()
            .map(|t| {
                TARGETS
                    .iter()
                    .find(|(name, _)| name == t)
                    .with_context(|| format!("unknown fuzz target {t:?} (known: {known:?})"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    crate::setup::setup()?;
    let dir = root.join("proxy/fuzz");
    let started = Instant::now();
    let mut build = cargo(Some("nightly"));
    build.current_dir(&dir).args(["fuzz", "build"]);
    if let [only] = chosen.as_slice() {
        build.arg(only.0);
    }
    run(&mut build)?;
    eprintln!(
        "fuzz: targets built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let mut crashed = Vec::new();
    for (name, options) in chosen {
        match run_target(&dir, name, options, args.seconds)? {
            Ok(stats) => eprintln!(
                "fuzz {name}: {} s, {} executions ({}/s), {} new inputs, peak RSS {} MB",
                args.seconds,
                stats.executions,
                stats.per_second,
                stats.new_units,
                stats.peak_rss_mb
            ),
            Err(log) => crashed.push((name, log)),
        }
    }
    if !crashed.is_empty() {
        for (name, log) in &crashed {
            eprintln!(
                "fuzz {name} found a failure (log: {}); the input is under proxy/fuzz/artifacts/{name}/: \
                 fix it, add a regression test, and keep the input in proxy/fuzz/corpus/{name}/",
                log.display()
            );
        }
        bail!("{} fuzz target(s) failed", crashed.len());
    }
    Ok(())
}

/// Runs one target; `Err(log)` when it found a failure.
fn run_target(
    dir: &Path,
    name: &str,
    options: &[&str],
    seconds: u64,
) -> anyhow::Result<Result<Stats, PathBuf>> {
    let scratch = dir.join("target/corpus").join(name);
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let log_path = dir.join(format!("target/fuzz-{name}.log"));
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = cargo(Some("nightly"));
    cmd.current_dir(dir)
        .args(["fuzz", "run", name])
        .arg(&scratch)
        .arg(dir.join("corpus").join(name))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // An input that takes seconds or a GB is a finding too (the source must stay
        // responsive and bounded on hostile files).
        .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"])
        .args(options)
        .stdout(log.try_clone()?)
        .stderr(log);
    let result = run(&mut cmd);
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    if result.is_err() {
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        for line in tail.iter().rev() {
            eprintln!("{line}");
        }
        return Ok(Err(log_path));
    }
    Ok(Ok(stats(&text)))
}

fn stats(log: &str) -> Stats {
    let mut stats = Stats::default();
    for line in log.lines() {
        let Some((key, value)) = line.strip_prefix("stat::").and_then(|l| l.split_once(':')) else {
            continue;
        };
        let value = value.trim().parse().unwrap_or(0);
        match key {
            "number_of_executed_units" => stats.executions = value,
            "average_exec_per_sec" => stats.per_second = value,
            "new_units_added" => stats.new_units = value,
            "peak_rss_mb" => stats.peak_rss_mb = value,
            _ => {}
        }
    }
    stats
}
