//! `cargo xtask bench -- model`: the pure model's cost at scale, in process: a fresh
//! computation of the desired state, and the incremental update after one EndpointSlice
//! changed (what a one-service change costs the controller before any dataplane write), and
//! ebpf mode's first sync planned and run against in-memory maps (the planner's own cost,
//! without the map syscalls).
//!
//! The objects are the control-plane benchmark's synthetic cluster, parsed once.
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use switchyard_model::ebpf_plan::{fake::FakeMaps, Planner};
use switchyard_model::{
    compute_desired_state, ClusterObjects, DesiredState, ModelCache, NodeContext, ServicePort,
    ServicePortKey, StateDiff,
};

use crate::controlplane::cluster;

/// Options of the model benchmark.
#[derive(clap::Args)]
pub struct Args {
    /// Service counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub services: Vec<usize>,
    /// Ready endpoints per service, all in one EndpointSlice.
    #[arg(long, default_value_t = 10)]
    pub endpoints: usize,
    /// One-slice changes measured per count (the median is reported).
    #[arg(long, default_value_t = 21)]
    pub changes: usize,
}

fn parse<T: serde::de::DeserializeOwned>(yaml: &str) -> anyhow::Result<T> {
    Ok(serde_norway::from_str(yaml)?)
}

fn objects(services: usize, endpoints: usize) -> anyhow::Result<ClusterObjects> {
    let mut objects = ClusterObjects::default();
    for i in 0..services {
        objects.insert_service(parse::<Service>(&cluster::service_yaml(i))?);
        objects.insert_slice(parse::<EndpointSlice>(&cluster::slice_yaml(
            i, endpoints, 0,
        ))?);
    }
    Ok(objects)
}

/// Rounds of the fresh computation and of the cold cache update (their medians are reported).
const FIRST_ROUNDS: usize = 3;

/// Runs `work` [`FIRST_ROUNDS`] times: the last result and the median time. One round moves by
/// up to 2x on a shared 2-core VM. Each result is dropped before the next round starts, so the
/// rounds do not add up in memory.
fn median_of_rounds<T>(mut work: impl FnMut() -> T) -> (T, Duration) {
    let mut times = Vec::with_capacity(FIRST_ROUNDS);
    let mut result = None;
    for _ in 0..FIRST_ROUNDS {
        drop(result.take());
        let started = Instant::now();
        result = Some(work());
        times.push(started.elapsed());
    }
    let result = result.unwrap_or_else(work);
    (result, median(times))
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Plans and runs ebpf mode's first sync of `state` on in-memory maps: the time to plan and
/// the time to run the plan.
fn ebpf_first_sync(state: &DesiredState) -> anyhow::Result<(Duration, Duration)> {
    let mut planner = Planner::default();
    let mut maps = FakeMaps::default();
    let changes: Vec<(ServicePortKey, Option<&ServicePort>)> = state
        .ports
        .iter()
        .map(|(k, p)| (k.clone(), Some(&**p)))
        .collect();
    let started = Instant::now();
    let plan = planner.plan_sync(&changes).collecting_garbage();
    let planned = started.elapsed();
    let started = Instant::now();
    let outcome = planner.run(plan, &mut maps);
    let ran = started.elapsed();
    anyhow::ensure!(
        outcome.failed.is_empty() && outcome.written.len() == state.ports.len(),
        "every port written"
    );
    Ok((planned, ran))
}

/// Measures each service count and prints one table row per count.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let node = NodeContext::new("node1");
    println!(
        "Model, {} ready endpoints per service, one slice changed per round\n",
        args.endpoints
    );
    println!("| services | fresh computation ms | first update of an empty cache ms | incremental update after one change ms | diff ms | ports changed | ebpf first sync: plan ms | run on in-memory maps ms |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &services in &args.services {
        let mut objects = objects(services, args.endpoints)?;
        let (fresh, fresh_time) = median_of_rounds(|| compute_desired_state(&objects, &node));
        anyhow::ensure!(
            fresh.state.ports.len() == services,
            "every service has a port"
        );

        let (plan_time, run_time) = ebpf_first_sync(&fresh.state)?;
        drop(fresh);

        // The controller's first sync: the incremental cache's update from empty.
        let (mut cache, cold_time) = median_of_rounds(|| {
            let mut cache = ModelCache::default();
            cache.update(&objects, &node);
            cache
        });
        let (mut updates, mut diffs, mut changed) = (Vec::new(), Vec::new(), 0);
        for round in 1..=args.changes.max(1) {
            let slice: EndpointSlice = parse(&cluster::slice_yaml(0, args.endpoints, round))?;
            objects.insert_slice_arc(Arc::new(slice));
            let started = Instant::now();
            let before = cache.update(&objects, &node);
            updates.push(started.elapsed());
            let started = Instant::now();
            let diff = StateDiff::from_before(&before, cache.state());
            diffs.push(started.elapsed());
            changed = diff.changed.len() + diff.added.len() + diff.removed.len();
        }
        println!(
            "| {services} | {:.1} | {:.1} | {:.3} | {:.3} | {changed} | {:.1} | {:.1} |",
            ms(fresh_time),
            ms(cold_time),
            ms(median(updates)),
            ms(median(diffs)),
            ms(plan_time),
            ms(run_time),
        );
    }
    println!(
        "\nReproduce: cargo xtask bench -- model --services {}",
        args.services
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    Ok(())
}
